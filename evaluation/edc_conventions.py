"""The EDC under the evaluation conventions of other papers' code, with optional pair weights.

``evaluation/edc.py`` holds the default (ISO/IEC 29794-1) convention: the threshold is fixed once
on all impostor pairs and only mated (genuine) pairs are discarded. This module computes the same
step-function EDC under every combination of

* ``threshold``: ``fixed`` (once, on all impostor pairs; default) or ``per_step`` (recomputed on the
  impostor pairs that remain at every discard step, as CR-FIQA's ``ERC/erc.py`` does);
* ``discard_over``: ``mated`` (genuine pairs only; default) or ``all`` (genuine and impostor pairs,
  ordered by pair quality together, as CR-FIQA's script does);

and integer pair ``weights`` (how many times each pair is in the set: a bootstrap resample; 0 =
absent). With ``threshold: fixed``, ``discard_over: mated`` and unit weights it equals
``edc.evaluate_edc`` exactly (tested).

Rules shared with ``edc.py``: a match is ``score > t``; ``t`` at FMR ``f`` over ``M`` impostor
comparisons is the ``(floor(f·M)+1)``-th highest impostor score (``-inf`` when ``floor(f·M) >= M``);
pairs of equal quality are discarded together; ``FNMR(d)`` is the value at the largest point
``c_j <= d·N`` (``N`` = pairs that can be discarded), and the pAUC is its exact integral. When no
genuine pair remains, the FNMR is 0.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from froq.core.errors import FroqError

THRESHOLD_MODES = ("fixed", "per_step")
DISCARD_SETS = ("mated", "all")
NORMALISATIONS = ("start", "raw", "best")
_EPS = 1e-12


def allowed_impostors(fmr: float, total_weight) -> np.ndarray:
    """``floor(fmr · M)`` (with the tolerance of ``edc.fmr_threshold``) for impostor weight(s) ``M``."""
    return np.floor(fmr * np.asarray(total_weight, dtype=np.float64) + 1e-9)


def weighted_threshold(impostor_scores, weights, fmr: float) -> float:
    """Impostor scores, their integer weights and a target FMR → the threshold of the weighted
    multiset (equal to ``edc.fmr_threshold(...).threshold`` for unit weights)."""
    s = np.asarray(impostor_scores, dtype=np.float64).ravel()
    w = np.asarray(weights, dtype=np.float64).ravel()
    keep = w > 0
    s, w = s[keep], w[keep]
    total = w.sum()
    if total <= 0:
        raise FroqError("cannot fix a decision threshold: the benchmark has no impostor pairs")
    k = allowed_impostors(fmr, total)
    if k >= total:
        return -math.inf
    order = np.argsort(-s, kind="stable")
    cum = np.cumsum(w[order])
    return float(s[order][np.argmax(cum > k)])


@dataclass(frozen=True)
class ConventionCurve:
    """An EDC as a step function: the value ``fnmr[j]`` holds from ``discard_fractions[j]`` to the
    next point (the last point holds to the end). ``thresholds[j]``: the decision threshold at that
    point. Only points up to the largest limit asked for are kept, plus the next point's position
    (``next_fraction``) so that areas are exact."""

    discard_fractions: np.ndarray
    fnmr: np.ndarray
    thresholds: np.ndarray
    next_fraction: float

    @property
    def fnmr0(self) -> float:
        """FNMR with nothing discarded."""
        return float(self.fnmr[0])

    def fnmr_at(self, d: float) -> float:
        """The step function's value at discard fraction ``d``."""
        j = int(np.searchsorted(self.discard_fractions, d + _EPS, side="right")) - 1
        return float(self.fnmr[j])

    def pauc(self, limit: float) -> float:
        """Exact area under the step function over ``[0, limit]``."""
        x = self.discard_fractions
        right = np.append(x[1:], self.next_fraction)
        widths = np.clip(np.minimum(right, limit) - x, 0.0, None)
        return float(np.sum(self.fnmr * widths))

    def points(self, limit: float) -> tuple[np.ndarray, np.ndarray]:
        """``(x, y)`` of the step points within ``[0, limit]`` plus the value at ``limit``."""
        keep = self.discard_fractions <= limit + _EPS
        x, y = self.discard_fractions[keep], self.fnmr[keep]
        if x[-1] < limit:
            x, y = np.append(x, limit), np.append(y, y[-1])
        return x, y


def _check(threshold: str, discard_over: str) -> None:
    if threshold not in THRESHOLD_MODES:
        raise FroqError(f"threshold must be one of {', '.join(THRESHOLD_MODES)} (got {threshold!r})")
    if discard_over not in DISCARD_SETS:
        raise FroqError(f"discard_over must be one of {', '.join(DISCARD_SETS)} (got {discard_over!r})")


def convention_curve(scores, genuine, quality, fmr: float, max_limit: float, threshold: str = "fixed",
                     discard_over: str = "mated", weights=None) -> ConventionCurve:
    """The EDC of one quality method under a convention.

    In: comparison scores, genuine flags and pair qualities of *all* pairs (impostor qualities are
    only read with ``discard_over='all'``; they may be NaN otherwise), the target FMR, the largest
    discard limit of interest, the convention, and optional integer pair weights (default 1).
    Out: a ``ConventionCurve``. FroqError when there is no genuine or no impostor pair or a
    discardable pair's quality is NaN.
    """
    _check(threshold, discard_over)
    s = np.asarray(scores, dtype=np.float64).ravel()
    g = np.asarray(genuine, dtype=bool).ravel()
    q = np.asarray(quality, dtype=np.float64).ravel()
    w = np.ones_like(s) if weights is None else np.asarray(weights, dtype=np.float64).ravel()
    if not (s.shape == g.shape == q.shape == w.shape):
        raise ValueError("scores, genuine, quality and weights differ in length")
    present = w > 0
    if not np.any(g & present):
        raise FroqError("cannot compute an EDC: the benchmark has no genuine pairs")
    in_d = present & (g if discard_over == "mated" else np.ones_like(g))
    idx = np.flatnonzero(in_d)
    if np.isnan(q[idx]).any():
        raise FroqError(f"{int(np.isnan(q[idx]).sum())} pair qualities are NaN")
    order = idx[np.argsort(q[idx], kind="stable")]
    qs = q[order]
    starts = np.concatenate(([0], np.flatnonzero(qs[1:] != qs[:-1]) + 1))
    w_d, g_d = w[order], g[order]
    group_w = np.add.reduceat(w_d, starts)
    before = np.concatenate(([0.0], np.cumsum(group_w)))
    n_d = before[-1]
    x_all = before[:-1] / n_d
    n_points = int(np.count_nonzero(x_all <= max_limit + _EPS))
    x = x_all[:n_points]
    next_fraction = float(x_all[n_points]) if n_points < len(x_all) else math.inf
    group_of = np.empty(len(s), dtype=np.int64)
    group_of[:] = len(starts)                    # pairs that are never discarded: after every point
    group_of[order] = np.repeat(np.arange(len(starts)), np.diff(np.append(starts, len(order))))

    gen_w = np.where(g & present, w, 0.0)
    gen_before = np.concatenate(([0.0], np.cumsum(np.add.reduceat(w_d * g_d, starts))))[:n_points]
    remaining_gen = gen_w.sum() - gen_before

    imp = ~g & present
    if not np.any(imp):
        raise FroqError("cannot fix a decision threshold: the benchmark has no impostor pairs")
    if threshold == "fixed" or discard_over == "mated":
        t = weighted_threshold(s[imp], w[imp], fmr)
        thresholds = np.full(n_points, t)
    else:
        thresholds = _per_step_thresholds(s[imp], w[imp], group_of[imp], n_points, fmr)
    errors = _remaining_errors_below(s[g & present], w[g & present], group_of[g & present], thresholds)
    with np.errstate(invalid="ignore", divide="ignore"):
        fnmr = np.where(remaining_gen > 0, errors / np.where(remaining_gen > 0, remaining_gen, 1.0), 0.0)
    return ConventionCurve(discard_fractions=x, fnmr=fnmr, thresholds=thresholds, next_fraction=next_fraction)


def _per_step_thresholds(imp_s, imp_w, imp_group, n_points: int, fmr: float) -> np.ndarray:
    """Threshold at every point ``j`` on the impostors not yet discarded (group >= j). Exact: only
    the highest impostors can hold the threshold, so the search starts with the top few and widens
    until every point's threshold lies among them."""
    order = np.argsort(-imp_s, kind="stable")
    s, w, grp = imp_s[order], imp_w[order], imp_group[order]
    total = w.sum()
    discarded_w = np.zeros(n_points)
    # impostor weight discarded before point j: groups < j
    in_range = grp < n_points
    np.add.at(discarded_w, grp[in_range], w[in_range])
    remaining = total - np.concatenate(([0.0], np.cumsum(discarded_w)))[:n_points]
    k = allowed_impostors(fmr, remaining)
    out = np.full(n_points, -math.inf)
    todo = np.flatnonzero(k < remaining)
    top = int(min(len(s), max(64, 4 * (np.max(k, initial=0) + 1))))
    j_all = np.arange(n_points)
    while todo.size:
        for chunk in np.array_split(todo, max(1, (todo.size * top) // 4_000_000 + 1)):
            alive = grp[None, :top] >= j_all[chunk, None]
            cum = np.cumsum(alive * w[None, :top], axis=1)
            hit = cum > k[chunk, None]
            found = hit[:, -1]
            out[chunk[found]] = s[np.argmax(hit[found], axis=1)]
        todo = todo[~np.isfinite(out[todo])]
        if top >= len(s):
            break                                # cannot happen: k < remaining guarantees a hit
        top = min(len(s), top * 4)
    return out


def _remaining_errors_below(gen_s, gen_w, gen_group, thresholds) -> np.ndarray:
    """Weight of genuine pairs still present at point ``j`` (group >= j) with ``score <= t_j``."""
    n_points = len(thresholds)
    j_all = np.arange(n_points)
    lo, hi = float(np.min(thresholds)), float(np.max(thresholds))

    def suffix_weight(mask):
        per_group = np.zeros(n_points)
        sel = mask & (gen_group < n_points)
        np.add.at(per_group, gen_group[sel], gen_w[sel])
        return gen_w[mask].sum() - np.concatenate(([0.0], np.cumsum(per_group)))[:n_points]

    out = suffix_weight(gen_s <= lo)
    if hi > lo:
        band = np.flatnonzero((gen_s > lo) & (gen_s <= hi))
        if band.size:
            bs, bw, bg = gen_s[band], gen_w[band], gen_group[band]
            for chunk in np.array_split(j_all, max(1, (n_points * band.size) // 4_000_000 + 1)):
                hit = (bs[None, :] <= thresholds[chunk, None]) & (bg[None, :] >= chunk[:, None])
                out[chunk] += hit @ bw
    return out


def normalised(pauc: float, fnmr0: float, limit: float, best: float | None, how: str) -> float:
    """The pAUC reported under normalisation ``how``: ``start`` → ``pauc / (limit · FNMR(0))`` (NaN
    when FNMR(0) = 0), ``raw`` → ``pauc``, ``best`` → ``pauc − best`` (``best``: the perfect
    oracle's pAUC under the same convention)."""
    if how == "start":
        return pauc / (limit * fnmr0) if fnmr0 > 0 else math.nan
    if how == "raw":
        return pauc
    if how == "best":
        return pauc - best if best is not None else math.nan
    raise FroqError(f"pauc_normalisation must be one of {', '.join(NORMALISATIONS)} (got {how!r})")
