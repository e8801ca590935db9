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

The record goes into ``observer.json`` as ``stability`` (docs/output-formats.md#observer-json).
"""

from __future__ import annotations

import time
from typing import Sequence

import numpy as np

from froq.core.images import identity_of
from observer.selection import set_score, spearman, top_candidates

RESAMPLES = 100      # bootstrap resamples in an initialisation (cost: docs/output-formats.md#observer-json)
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
    same = "same features" if "feature_frequency" in stability else "same layers"  # plus: features
    return (f"bootstrap ({stability['resamples']} {stability['unit']} resamples): {interval}, "
            f"{same} {100 * stability['same_selection']:.0f} %, selected layers chosen in {span}")


# -- FROQ+ (issue 22): the plus selection on resamples, its stability record, the stable rule ------

#: features re-ranked on a resample: the ``max(SCREEN_FACTOR · top_n, SCREEN_MIN)`` allowed
#: features with the highest ranking key (ρ, or |ρ| when signed) on all calibration images
SCREEN_FACTOR, SCREEN_MIN = 4, 40
#: ``selection: stable`` keeps the features chosen in at least this share of the resamples
STABLE_THRESHOLD = 0.5


def _ranked_labels(labels: np.ndarray) -> np.ndarray:
    y = average_ranks(np.asarray(labels, dtype=np.float64)[:, None])[:, 0]
    return y - y.mean()


def quick_fit(values: np.ndarray, labels: np.ndarray, top_n: int, standardisation: str,
              signed: bool, weighting: str, allowed: np.ndarray | None = None):
    """``observer.selection.fit_features`` vectorised (the Spearman ρ of all columns of a step at
    once, as ``reselect``), for the resamples.

    In: (N, F) values, N labels, the options, and an optional (F,) bool mask of the features that
    may be candidates. Out: ``(order, rhos, selected_count, signs, params, weights)``: the greedy
    order (column indices), ρ per step, the greedy set size, and per candidate its sign,
    standardisation parameters and weight (dicts by column)."""
    from observer.combination import fit_standardisation, standardise

    y = _ranked_labels(labels)
    if not np.any(y):
        return [], [], 0, {}, {}, {}
    util = _rank_correlations(values, y)
    key = np.abs(util) if signed else util.copy()
    if allowed is not None:
        key[~allowed] = np.nan
    scored = sorted((-float(key[j]), j) for j in np.flatnonzero(np.isfinite(key)))
    candidates = [j for _, j in scored[:top_n]]
    if not candidates:
        return [], [], 0, {}, {}, {}
    signs = {j: (-1 if signed and util[j] < 0 else 1) for j in candidates}
    params = {j: fit_standardisation(values[:, j], standardisation) for j in candidates}
    weights = {j: (abs(float(util[j])) if weighting == "rho" else 1.0) for j in candidates}
    cols = {j: signs[j] * standardise(values[:, j], params[j], standardisation) for j in candidates}
    order = [candidates[0]]
    rhos = [float(_rank_correlations(cols[order[0]][:, None], y)[0])]
    unused = candidates[1:]
    total, wsum = weights[order[0]] * cols[order[0]], weights[order[0]]
    while unused:
        trial = np.stack([(total + weights[j] * cols[j]) / (wsum + weights[j]) for j in unused], axis=1)
        r = _rank_correlations(trial, y)
        best = int(np.nanargmax(r)) if np.any(np.isfinite(r)) else 0  # first wins ties
        j = unused.pop(best)
        order.append(j)
        rhos.append(float(r[best]))
        total, wsum = total + weights[j] * cols[j], wsum + weights[j]
    finite = np.isfinite(rhos)
    count = int(np.nanargmax(np.where(finite, rhos, np.nan))) + 1 if finite.any() else 1
    return order, rhos, count, signs, params, weights


def quick_select(values: np.ndarray, labels: np.ndarray, groups: Sequence[str], options: dict,
                 top_n: int, cv_folds: int = 5, seed: int = 0,
                 allowed: np.ndarray | None = None) -> list[int]:
    """The selected columns of ``observer.initialization.select_features`` for ``options``
    (``selection`` greedy, or cv: the size of the best mean held-out ρ over identity folds, as
    ``observer.selection.cross_validate_size``), vectorised. ``selection: stable`` is treated as
    its base rule ``cv``. With fewer identities than folds the greedy size is used.

    In: (N, F) values, N labels, N identities, the resolved options, top-n, folds, fold seed,
    optional (F,) candidate mask. Out: the selected column indices, in greedy order."""
    from observer.combination import standardise, weighted_mean
    from observer.selection import identity_folds

    method, signed, weighting = options["standardise"], options["signed"], options["weights"]
    order, _, count, *_ = quick_fit(values, labels, top_n, method, signed, weighting, allowed)
    if not order or options["selection"] == "greedy":
        return order[:count]
    try:
        fold = identity_folds(groups, cv_folds, seed)
    except ValueError:
        return order[:count]
    sums: dict[int, list[float]] = {}
    for k in range(cv_folds):
        train, test = fold != k, fold == k
        o, _, _, s, p, w = quick_fit(values[train], labels[train], top_n, method, signed, weighting, allowed)
        if not o or test.sum() < 3:
            continue
        cols = np.stack([s[j] * standardise(values[test][:, j], p[j], method) for j in o], axis=1)
        wts = np.array([w[j] for j in o])
        prefixes = np.stack([weighted_mean(cols[:, :m], None if weighting == "equal" else wts[:m])
                             for m in range(1, len(o) + 1)], axis=1)
        r = _rank_correlations(prefixes, _ranked_labels(labels[test]))
        for m, value in enumerate(r):
            if np.isfinite(value):
                sums.setdefault(m, []).append(float(value))
    if not sums:
        return order[:count]
    means = [np.mean(sums[m]) if m in sums else -np.inf for m in range(max(sums) + 1)]
    return order[:min(int(np.argmax(means)) + 1, len(order))]


def screen_features(values: np.ndarray, labels: np.ndarray, top_n: int, signed: bool,
                    allowed: np.ndarray | None = None) -> np.ndarray:
    """Column indices re-ranked on resamples (``SCREEN_FACTOR``, ``SCREEN_MIN``): the allowed
    features with the highest ranking key on all images, best first."""
    util = _rank_correlations(np.asarray(values, dtype=np.float64), _ranked_labels(labels))
    key = np.abs(util) if signed else util
    if allowed is not None:
        key = np.where(allowed, key, np.nan)
    finite = np.flatnonzero(np.isfinite(key))
    best = finite[np.lexsort((finite, -key[finite]))]
    return best[:max(SCREEN_FACTOR * top_n, SCREEN_MIN)]


def resampled_selections(values: np.ndarray, labels: np.ndarray, paths: Sequence[str], options: dict,
                         top_n: int, cv_folds: int = 5, fold_seed: int = 0,
                         allowed: np.ndarray | None = None, resamples: int = RESAMPLES,
                         seed: int = SEED) -> dict:
    """The FROQ+ selection (``quick_select``) re-run on bootstrap resamples of the calibration
    identities (``resample_indices``; images when fewer than ``MIN_IDENTITIES`` folders).

    In: (N, F) feature values, N labels, the images' relative paths, the resolved options, top-n,
    CV folds and fold seed, optional candidate mask, resamples and seed. Only the
    ``screen_features`` columns are re-ranked. Out: ``{draws: [row indices per resample],
    selections: [tuple of column indices per resample], unit, units, screened}``."""
    values = np.asarray(values, dtype=np.float64)
    labels = np.asarray(labels, dtype=np.float64)
    screen = screen_features(values, labels, top_n, options["signed"], allowed)
    groups = identity_groups(paths)
    unit = "identity" if len(groups) >= MIN_IDENTITIES else "image"
    names = np.array([identity_of(p) for p in paths])
    rng = np.random.default_rng(seed)
    sub = values[:, screen]
    draws, selections = [], []
    for _ in range(resamples):
        idx = resample_indices(groups, rng, unit)
        picked = quick_select(sub[idx], labels[idx], list(names[idx]), options, top_n, cv_folds,
                              fold_seed) if screen.size else []
        draws.append(idx)
        selections.append(tuple(int(screen[j]) for j in picked))
    return {"draws": draws, "selections": selections, "unit": unit,
            "units": len(groups) if unit == "identity" else len(paths), "screened": int(screen.size)}


def stable_features(selections: Sequence[Sequence[int]], key: Sequence[float | None],
                    threshold: float = STABLE_THRESHOLD) -> list[int]:
    """``selection: stable``: the features chosen in at least ``threshold`` of the resampled
    ``selections``, most frequent first (ties: higher ranking ``key`` on all images, then lower
    index); when none reaches it, the most frequent one. [] when no resample selected anything."""
    counts: dict[int, int] = {}
    for sel in selections:
        for j in set(sel):
            counts[j] = counts.get(j, 0) + 1
    if not counts:
        return []
    k = [(-counts[j], -(key[j] if key[j] is not None else -np.inf), j) for j in counts]
    k.sort()
    kept = [j for c, _, j in k if -c >= threshold * len(selections)]
    return kept or [k[0][2]]


def plus_stability(feature_names: Sequence[str], feature_layers: Sequence[str], resampled: dict,
                   labels: np.ndarray, quality: np.ndarray, chosen: Sequence[int], rule: str,
                   seconds: float, seed: int = SEED) -> dict:
    """The ``stability`` record of a FROQ+ observer from ``resampled_selections``.

    In: the name (``layer:statistic``) and layer of every feature column, the resampled
    selections, the labels, the observer's calibration qualities (its own combination, fixed
    parameters), its chosen columns, the selection rule, the seconds spent and the seed. Out: as
    ``selection_stability`` (``layer_frequency`` = share of resamples using each layer) plus
    ``feature_frequency``, ``rule`` and ``screened``."""
    sels = resampled["selections"]
    n = len(sels)
    mine = frozenset(chosen)
    feat: dict[int, int] = {}
    lay: dict[str, int] = {}
    for sel in sels:
        for j in set(sel):
            feat[j] = feat.get(j, 0) + 1
        for name in {feature_layers[j] for j in sel}:
            lay[name] = lay.get(name, 0) + 1
    rhos = [r for r in (spearman(quality[idx], labels[idx]) for idx in resampled["draws"]) if r is not None]
    r = np.array(rhos)
    return {"resamples": n, "unit": resampled["unit"], "units": resampled["units"], "seed": seed,
            "rule": rule, "screened": resampled["screened"],
            "rho": {"observer": spearman(quality, labels),
                    "median": float(np.median(r)) if r.size else None,
                    "low": float(np.percentile(r, 2.5)) if r.size else None,
                    "high": float(np.percentile(r, 97.5)) if r.size else None},
            "same_selection": (sum(frozenset(s) == mine for s in sels) / n) if n else None,
            "feature_frequency": {feature_names[j]: c / n for j, c in
                                  sorted(feat.items(), key=lambda t: (-t[1], t[0]))},
            "layer_frequency": {k: c / n for k, c in sorted(lay.items(), key=lambda t: -t[1])},
            "seconds": round(seconds, 3)}
