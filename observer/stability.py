"""How stable is an observer's layer selection? A bootstrap of the calibration set on the per-image
layer norms already collected by initialisation — no forward pass.

Each resample draws the calibration **identities** with replacement (an image's identity is its
parent folder, as for the calibration builder; every image of a drawn identity comes along, once
per draw), or the **images** when the set has fewer than ``MIN_IDENTITIES`` identity folders (a flat
folder, a handful of people). On every resample the selection of spec §3.2–3.5 runs again
(``observer.selection``: utilities, top-n candidates, greedy set), and two numbers are kept:

- which layers it selects → ``layer_frequency`` (share of resamples that select each layer) and
  ``same_selection`` (share that select exactly the observer's set);
- the observer's own Spearman ρ (its selected layers' mean norm against the pseudo-labels) on the
  resample → ``rho`` (median and the 2.5–97.5 % percentile interval): how much ρ depends on which
  calibration images happened to be drawn.

The record goes into ``observer.json`` as ``stability`` (README, "Output formats").
"""

from __future__ import annotations

import time
from typing import Sequence

import numpy as np

from froq.core.images import identity_of
from observer.selection import set_score, spearman, top_candidates

RESAMPLES = 100      # bootstrap resamples in an initialisation (cost: README, "Calibration stability")
MIN_IDENTITIES = 10  # fewer identity folders than this: resample images instead
SEED = 0


def identity_groups(paths: Sequence[str]) -> list[np.ndarray]:
    """Row indices of ``paths`` grouped by identity (parent folder; the files at the top are one
    group), in order of first appearance."""
    groups: dict[str, list[int]] = {}
    for i, p in enumerate(paths):
        groups.setdefault(identity_of(p), []).append(i)
    return [np.array(g) for g in groups.values()]


def resample_indices(groups: Sequence[np.ndarray], rng: np.random.Generator, unit: str) -> np.ndarray:
    """``identity_groups`` → row indices of one bootstrap resample: identities (``unit='identity'``)
    or images (``'image'``) drawn with replacement, as many as there are."""
    if unit == "image":
        n = sum(len(g) for g in groups)
        return rng.integers(0, n, n)
    drawn = rng.integers(0, len(groups), len(groups))
    return np.concatenate([groups[g] for g in drawn])


def average_ranks(x: np.ndarray) -> np.ndarray:
    """Ranks (1-based, ties get their average rank) of each column of ``x`` (N, K): the values of
    ``scipy.stats.rankdata(x, axis=0)``, vectorised over the columns."""
    n, k = x.shape
    order = np.argsort(x, axis=0, kind="stable")
    xs = np.take_along_axis(x, order, axis=0)
    first = np.ones((n, k), dtype=bool)
    first[1:] = xs[1:] != xs[:-1]
    last = np.ones((n, k), dtype=bool)
    last[:-1] = first[1:]
    pos = np.broadcast_to(np.arange(n)[:, None], (n, k))
    start = np.maximum.accumulate(np.where(first, pos, 0), axis=0)
    end = np.minimum.accumulate(np.where(last, pos, n)[::-1], axis=0)[::-1]
    ranks = np.empty((n, k))
    np.put_along_axis(ranks, order, (start + end) / 2.0 + 1.0, axis=0)
    return ranks


def _rank_correlations(x: np.ndarray, ranked_labels: np.ndarray) -> np.ndarray:
    """Spearman ρ of every column of ``x`` (N, K) with labels already ranked (average ranks) and
    centred: Pearson of the columns' average ranks, as ``scipy.stats.spearmanr``. NaN where a
    column is constant or holds a non-finite value."""
    finite = np.all(np.isfinite(x), axis=0)
    out = np.full(x.shape[1], np.nan)
    if not finite.any():
        return out
    r = average_ranks(x[:, finite])
    r -= r.mean(axis=0)
    den = np.sqrt((r * r).sum(axis=0) * (ranked_labels * ranked_labels).sum())
    with np.errstate(invalid="ignore", divide="ignore"):
        out[finite] = np.where(den > 0, ranked_labels @ r / den, np.nan)
    return out


def reselect(norms: np.ndarray, labels: np.ndarray, top_n: int) -> list[int]:
    """The selected layer indices of spec §3.2–3.5 on these norms and labels ([] when no layer
    has a defined utility): ``observer.selection``'s utilities, candidates and greedy search,
    with the Spearman ρ of all columns of a step computed at once (same ranks and formula; the
    selection itself is ``select_layers``' — the tests compare the two)."""
    y = average_ranks(np.asarray(labels, dtype=np.float64)[:, None])[:, 0]
    y = y - y.mean()
    if not np.any(y):
        return []
    util = _rank_correlations(norms, y)
    candidates = top_candidates([None if np.isnan(u) else float(u) for u in util], top_n)
    if not candidates:
        return []
    order, rhos = [candidates[0]], [util[candidates[0]]]
    unused = candidates[1:]
    total = norms[:, order[0]].copy()
    while unused:
        trial = (total[:, None] + norms[:, unused]) / (len(order) + 1)
        r = _rank_correlations(trial, y)
        best = int(np.nanargmax(r)) if np.any(np.isfinite(r)) else 0  # first wins ties
        j = unused.pop(best)
        order.append(j)
        rhos.append(r[best])
        total += norms[:, j]
    best_step = int(np.nanargmax(rhos)) if np.any(np.isfinite(rhos)) else 0
    return order[:best_step + 1]


def selection_stability(layers: Sequence[str], norms: np.ndarray, labels: np.ndarray, paths: Sequence[str],
                        selected: Sequence[str], top_n: int = 10, resamples: int = RESAMPLES,
                        seed: int = SEED) -> dict:
    """The ``stability`` record of an observer (module doc).

    In: layer names, the (N, L) norms and (N,) labels the selection was made on, the images'
    relative paths (for the identities), the observer's selected layer names, its ``top_n``, the
    number of resamples and the seed. Out: ``{resamples, unit, units, seed, rho: {observer,
    median, low, high}, same_selection, layer_frequency: {layer: share} (most frequent first),
    seconds}``.
    """
    started = time.perf_counter()
    norms = np.asarray(norms, dtype=np.float64)
    labels = np.asarray(labels, dtype=np.float64)
    groups = identity_groups(paths)
    n_ids = len(groups)
    unit = "identity" if n_ids >= MIN_IDENTITIES else "image"
    rng = np.random.default_rng(seed)
    chosen = [list(layers).index(name) for name in selected]
    mine = frozenset(chosen)
    counts = np.zeros(len(layers), dtype=np.int64)
    rhos, same = [], 0
    for _ in range(resamples):
        idx = resample_indices(groups, rng, unit)
        x, y = norms[idx], labels[idx]
        picked = reselect(x, y, top_n)
        counts[picked] += 1
        same += frozenset(picked) == mine
        rho = spearman(set_score(x, chosen), y) if chosen else None
        if rho is not None:
            rhos.append(rho)
    order = np.argsort(-counts, kind="stable")
    frequency = {layers[j]: counts[j] / resamples for j in order if counts[j]}
    r = np.array(rhos)
    return {"resamples": resamples, "unit": unit, "units": n_ids if unit == "identity" else len(paths),
            "seed": seed,
            "rho": {"observer": spearman(set_score(norms, chosen), labels) if chosen else None,
                    "median": float(np.median(r)) if r.size else None,
                    "low": float(np.percentile(r, 2.5)) if r.size else None,
                    "high": float(np.percentile(r, 97.5)) if r.size else None},
            "same_selection": same / resamples if resamples else None,
            "layer_frequency": frequency,
            "seconds": round(time.perf_counter() - started, 3)}


def stability_text(stability: dict, selected: Sequence[str]) -> str:
    """One phrase for a summary line, e.g. ``bootstrap (100 identity resamples): rho 0.410 [0.330,
    0.480], same layers 62 %, selected layers chosen in 62-100 %``."""
    if not stability or not stability.get("resamples"):
        return "no bootstrap"
    rho = stability["rho"]
    freq = stability["layer_frequency"]
    chosen = [freq.get(name, 0.0) for name in selected]
    interval = (f"rho {rho['median']:.3f} [{rho['low']:.3f}, {rho['high']:.3f}]"
                if rho.get("median") is not None else "rho undefined")
    span = (f"{100 * min(chosen):.0f}-{100 * max(chosen):.0f} %" if len(chosen) > 1
            else f"{100 * chosen[0]:.0f} %" if chosen else "-")
    return (f"bootstrap ({stability['resamples']} {stability['unit']} resamples): {interval}, "
            f"same layers {100 * stability['same_selection']:.0f} %, selected layers chosen in {span}")
