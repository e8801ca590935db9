"""Bootstrap confidence intervals of the EDC metrics by resampling identities (or pairs).

A resample draws the benchmark's clusters with replacement; a cluster drawn ``c`` times puts each
of its pairs ``c`` times in the resample. With ``unit='identities'`` the clusters are identities: a
genuine pair of identity A gets weight ``c_A``, an impostor pair of A and B gets ``c_A · c_B`` (the
pairs between the copies of A and of B). With ``unit='pairs'`` (identities unknown) genuine and
impostor pairs are resampled separately, so their counts stay fixed. Every method of a benchmark is
scored on the same resamples (paired comparisons), and per resample everything is recomputed: the
threshold, the EDC, the pAUC (raw, normalised, minus the oracle's) and the FNMR at each limit.
The interval is the percentile interval of the resampled values.

The ISO convention (``discard_over: mated``, where ``per_step`` equals ``fixed``) is vectorised
over blocks of resamples: the genuine pairs are sorted once per method and a resample only changes
their weights; of the impostors only the total weight and the highest scores are needed (see
``_IsoBlocks``), so millions of impostor pairs cost little. ``discard_over: all`` with a fixed
threshold is vectorised over (resamples × all pairs) blocks. ``threshold: per_step`` with
``discard_over: all`` recomputes the threshold at every step and is done one resample at a time
(``edc_conventions.convention_curve`` with weights): much slower.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from functools import partial
from typing import Mapping, Sequence

import numpy as np

from evaluation.edc import fmr_key
from evaluation.edc_conventions import allowed_impostors, convention_curve

log = logging.getLogger(__name__)

METRICS = ("pauc", "pauc_norm", "pauc_minus_best", "fnmr_at_limit")
_BLOCK_CELLS = 4_000_000


@dataclass(frozen=True)
class Clusters:
    """What a resample draws. unit: ``identities`` or ``pairs``. first/second: the cluster index of
    each pair's two images (equal for genuine pairs; None for ``pairs``). n: number of clusters."""

    unit: str
    first: np.ndarray | None
    second: np.ndarray | None
    n: int


def identity_clusters(image_identities: Sequence[str] | None, pairs: np.ndarray) -> Clusters:
    """Per-image identity labels (or None) and the (P, 2) image-index pairs → ``Clusters``
    (``pairs`` unit when the identities are unknown)."""
    if image_identities is None:
        return Clusters("pairs", None, None, len(pairs))
    names, inverse = np.unique(np.asarray(list(image_identities), dtype=object).astype(str), return_inverse=True)
    return Clusters("identities", inverse[pairs[:, 0]], inverse[pairs[:, 1]], len(names))


def interval(values: np.ndarray, level: float = 0.95) -> list[float | None]:
    """Percentile interval ``[lo, hi]`` of the finite resampled values (None when there are none)."""
    v = np.asarray(values, dtype=np.float64)
    v = v[np.isfinite(v)]
    if v.size == 0:
        return [None, None]
    lo, hi = np.percentile(v, [50 * (1 - level), 100 - 50 * (1 - level)])
    return [float(lo), float(hi)]


def _counts(draws: np.ndarray, n: int) -> np.ndarray:
    """Rows of draws in [0, n) → (rows, n) float counts of each value."""
    rows = draws.shape[0]
    flat = (np.arange(rows)[:, None] * n + draws).ravel()
    return np.bincount(flat, minlength=rows * n).reshape(rows, n).astype(np.float64)


def weight_blocks(clusters: Clusters, genuine: np.ndarray, resamples: int, seed: int):
    """Yield blocks of pair weights, each ``(block, P)`` float64, ``resamples`` rows in all
    (reproducible by ``seed``)."""
    n_pairs = len(genuine)
    block = max(1, _BLOCK_CELLS // max(1, n_pairs))
    rng = np.random.default_rng(seed)
    if clusters.unit == "identities":
        counts = _counts(rng.integers(0, clusters.n, size=(resamples, clusters.n)), clusters.n)
        imp = ~genuine
        for start in range(0, resamples, block):
            c = counts[start:start + block]
            w = c[:, clusters.first]
            w[:, imp] *= c[:, clusters.second[imp]]
            yield w
        return
    gen_idx, imp_idx = np.flatnonzero(genuine), np.flatnonzero(~genuine)
    for start in range(0, resamples, block):
        rows = min(block, resamples - start)
        w = np.zeros((rows, n_pairs))
        for idx in (gen_idx, imp_idx):
            if idx.size:
                w[:, idx] = _counts(rng.integers(0, idx.size, size=(rows, idx.size)), idx.size)
        yield w


@dataclass
class _Sorted:
    """A method's discardable pairs in discard order, with their tie groups."""

    order: np.ndarray
    starts: np.ndarray
    scores: np.ndarray
    genuine: np.ndarray


def _sort_method(scores, genuine, quality, discard_over) -> _Sorted:
    """Pair scores, genuine flags and one quality array → the discardable pairs, lowest quality first."""
    idx = np.flatnonzero(genuine) if discard_over == "mated" else np.arange(len(scores))
    order = idx[np.argsort(quality[idx], kind="stable")]
    qs = quality[order]
    starts = np.concatenate(([0], np.flatnonzero(qs[1:] != qs[:-1]) + 1))
    return _Sorted(order, starts, scores[order], genuine[order])


def _fixed_thresholds(imp_desc_scores, w_imp_desc, fmr) -> np.ndarray:
    """Per-row threshold of weighted impostors sorted by descending score."""
    total = w_imp_desc.sum(axis=1)
    k = allowed_impostors(fmr, total)
    cum = np.cumsum(w_imp_desc, axis=1)
    t = imp_desc_scores[np.argmax(cum > k[:, None], axis=1)]
    return np.where(k >= total, -np.inf, t)


def _block_metrics(m: _Sorted, w: np.ndarray, t: np.ndarray, limits: Sequence[float]) -> dict:
    """pAUC and FNMR at each limit for every row of a weight block at thresholds ``t``."""
    wd = w[:, m.order]
    if m.genuine.all():
        return _mated_block_metrics(m, wd, t, limits)
    gw = wd * m.genuine[None, :]
    errw = gw * (m.scores[None, :] <= t[:, None])
    group_w = np.add.reduceat(wd, m.starts, axis=1)
    group_g = np.add.reduceat(gw, m.starts, axis=1)
    group_e = np.add.reduceat(errw, m.starts, axis=1)
    n_d = group_w.sum(axis=1, keepdims=True)
    x = np.divide(np.cumsum(group_w, axis=1) - group_w, n_d, out=np.full_like(group_w, np.nan), where=n_d > 0)
    rem_g = group_g.sum(axis=1, keepdims=True) - (np.cumsum(group_g, axis=1) - group_g)
    rem_e = group_e.sum(axis=1, keepdims=True) - (np.cumsum(group_e, axis=1) - group_e)
    return _curve_metrics(x, rem_g, rem_e, limits)


def _mated_block_metrics(m: _Sorted, wd: np.ndarray, t: np.ndarray, limits: Sequence[float]) -> dict:
    """``_block_metrics`` when every discardable pair is genuine; the work after the tie groups is
    cut at the largest limit (only the error total needs every pair)."""
    group_w = np.add.reduceat(wd, m.starts, axis=1)
    cw = np.cumsum(group_w, axis=1)
    total = cw[:, -1:]
    # a resample that drew no genuine pair has no curve: NaN, left out of the interval
    x = np.divide(cw - group_w, total, out=np.full_like(cw, np.nan), where=total > 0)
    n_groups = len(m.starts)
    cut = min(n_groups, int(np.max(np.sum(x <= max(limits) + 1e-12, axis=1))) + 1)
    end = int(m.starts[cut]) if cut < n_groups else wd.shape[1]
    errors = m.scores[None, :] <= t[:, None]
    err_total = np.sum(wd * errors, axis=1, keepdims=True)
    group_e = np.add.reduceat(wd[:, :end] * errors[:, :end], m.starts[:cut], axis=1)
    x, group_w, cw = x[:, :cut], group_w[:, :cut], cw[:, :cut]
    rem_g = total - (cw - group_w)
    rem_e = err_total - (np.cumsum(group_e, axis=1) - group_e)
    # the last kept point lies beyond every limit, so it bounds the one before it
    return _curve_metrics(x, rem_g, rem_e, limits)


def _curve_metrics(x: np.ndarray, rem_g: np.ndarray, rem_e: np.ndarray, limits: Sequence[float]) -> dict:
    """Per (row, tie group): the fraction discarded before it and the genuine and error weight left
    from it on → ``fnmr0`` and, per limit, the pAUC and the FNMR at the limit (one value a row)."""
    fnmr = np.divide(rem_e, rem_g, out=np.zeros_like(rem_e), where=rem_g > 0)
    right = np.concatenate([x[:, 1:], np.full((len(x), 1), np.inf)], axis=1)
    out = {"fnmr0": fnmr[:, 0]}
    for lim in limits:
        out[("pauc", lim)] = np.sum(fnmr * np.clip(np.minimum(right, lim) - x, 0.0, None), axis=1)
        last = np.sum(x <= lim + 1e-12, axis=1) - 1
        out[("fnmr_at_limit", lim)] = np.where(last >= 0, fnmr[np.arange(len(x)), last], np.nan)
    return out


def _row_metrics(scores, genuine, quality, w, fmr, limits, threshold, discard_over) -> dict:
    """``_block_metrics`` by ``edc_conventions.convention_curve``, one weight row at a time (any convention)."""
    curves = [convention_curve(scores, genuine, quality, fmr, max(limits), threshold, discard_over, row) for row in w]
    out = {"fnmr0": np.array([c.fnmr0 for c in curves])}
    for lim in limits:
        out[("pauc", lim)] = np.array([c.pauc(lim) for c in curves])
        out[("fnmr_at_limit", lim)] = np.array([c.fnmr_at(lim) for c in curves])
    return out


class _IsoBlocks:
    """Resample weights for the ISO convention without a (resamples × all pairs) matrix.

    Only mated pairs are discarded, so a resample needs the weights of every genuine pair, the total
    impostor weight and the weights of the *highest-scoring* impostors (enough of them to hold the
    threshold). For identities the impostor total is ``c · C · c`` (``C``: impostor pairs between
    each two identities); for pairs it is fixed, and the counts of the top impostors are drawn
    from the multinomial marginals, segment by segment (exact). Same identity draws as
    ``weight_blocks``."""

    def __init__(self, clusters: Clusters, genuine: np.ndarray, imp_desc_idx: np.ndarray, resamples: int,
                 seed: int) -> None:
        self.clusters, self.resamples = clusters, resamples
        self.gen_idx = np.flatnonzero(genuine)
        self.imp = imp_desc_idx
        self.rng = np.random.default_rng(seed)
        self.block = max(1, min(32, _BLOCK_CELLS // max(1, len(self.gen_idx))))
        if clusters.unit == "identities":
            n = clusters.n
            self.counts = _counts(self.rng.integers(0, n, size=(resamples, n)), n)
            self.imp_first, self.imp_second = clusters.first[self.imp], clusters.second[self.imp]
            self.pair_matrix = np.bincount(self.imp_first * n + self.imp_second,
                                           minlength=n * n).reshape(n, n).astype(np.float64)

    def __iter__(self):
        for start in range(0, self.resamples, self.block):
            rows = min(self.block, self.resamples - start)
            if self.clusters.unit == "identities":
                c = self.counts[start:start + rows]
                gen_w = c[:, self.clusters.first[self.gen_idx]]
                total = np.sum((c @ self.pair_matrix) * c, axis=1)
                yield gen_w, total, _IdentityTop(c, self.imp_first, self.imp_second)
            else:
                n_gen = len(self.gen_idx)
                gen_w = _counts(self.rng.integers(0, n_gen, size=(rows, n_gen)), n_gen)
                m = len(self.imp)
                yield gen_w, np.full(rows, float(m)), _PairTop(self.rng, rows, m)


class _IdentityTop:
    """Weights ``c_A · c_B`` of the first ``n`` impostors (highest score first)."""

    def __init__(self, counts, first, second):
        self.c, self.first, self.second = counts, first, second

    def __call__(self, n: int) -> np.ndarray:
        return self.c[:, self.first[:n]] * self.c[:, self.second[:n]]


class _PairTop:
    """Multinomial counts (``m`` draws over ``m`` impostors) of the first ``n`` impostors, drawn
    segment by segment from the marginals and kept, so a longer prefix extends a shorter one."""

    def __init__(self, rng, rows: int, m: int):
        self.rng, self.m = rng, m
        self.drawn = np.zeros((rows, 0))
        self.left = np.full(rows, m, dtype=np.int64)   # draws not yet placed in the prefix

    def __call__(self, n: int) -> np.ndarray:
        have = self.drawn.shape[1]
        if n > have:
            seg, rest = n - have, self.m - have
            p = np.full(seg + 1, 1.0 / rest)
            p[-1] = max(0.0, 1.0 - seg / rest)
            new = np.stack([self.rng.multinomial(k, p) for k in self.left])
            self.drawn = np.concatenate([self.drawn, new[:, :seg].astype(np.float64)], axis=1)
            self.left = new[:, -1]
        return self.drawn[:, :n]


def _top_thresholds(imp_desc_scores, total, top, fmr) -> np.ndarray:
    """Per-row threshold from the weights of the highest impostors (``top(n)``), widening ``n``
    until each row's threshold lies inside."""
    m = len(imp_desc_scores)
    k = allowed_impostors(fmr, total)
    n = int(min(m, 2 * (np.max(k, initial=0) + 1) + 64))
    while True:
        cum = np.cumsum(top(n), axis=1)
        hit = cum > k[:, None]
        if n == m or np.all(hit[:, -1] | (k >= total)):
            break
        n = min(m, 4 * n)
    t = imp_desc_scores[:n][np.argmax(hit, axis=1)]
    return np.where((k >= total) | ~hit[:, -1], -np.inf, t)


def _seed_mean(runs: list[dict], limits) -> dict:
    """Mean over seeds per resample; the normalised pAUC is the mean of the seeds' normalised pAUCs."""
    mean = {k: np.mean([r[k] for r in runs], axis=0) for k in runs[0]}
    for lim in limits:
        norms = [np.divide(r[("pauc", lim)], lim * r["fnmr0"], out=np.full_like(r["fnmr0"], np.nan),
                           where=r["fnmr0"] > 0) for r in runs]
        mean[("pauc_norm", lim)] = np.mean(norms, axis=0)
    return mean


def _collect(acc, qualities, limits) -> dict:
    """Per method and FMR, the blocks' metrics → ``bootstrap_samples``' nested dict of arrays."""
    out: dict = {}
    for m in qualities:
        out[m] = {}
        for key, blocks in acc[m].items():
            merged = {k: np.concatenate([b[k] for b in blocks]) for k in blocks[0]}
            out[m][key] = {lim: {"pauc": merged[("pauc", lim)], "pauc_norm": merged[("pauc_norm", lim)],
                                 "fnmr_at_limit": merged[("fnmr_at_limit", lim)]} for lim in limits}
    for m in qualities:
        for key in out[m]:
            for lim in limits:
                out[m][key][lim]["pauc_minus_best"] = out[m][key][lim]["pauc"] - out["perfect"][key][lim]["pauc"]
    return out


def bootstrap_samples(scores, genuine, qualities: Mapping[str, Sequence[np.ndarray]], fmrs: Sequence[float],
                      limits: Sequence[float], clusters: Clusters, resamples: int, seed: int = 0,
                      threshold: str = "fixed", discard_over: str = "mated") -> dict:
    """Resampled metrics of every method.

    In: all pair scores and genuine flags; ``qualities`` maps a method to a list of all-pair quality
    arrays (one per seed; the method's value per resample is the mean over them, as the ``random``
    reference) and must hold ``perfect`` (the oracle, used for ``pauc_minus_best``); FMRs, discard
    limits, the clusters, the number of resamples, the seed and the convention.
    Out: ``{method: {fmr_key: {limit: {metric: array (resamples,)}}}}`` with the metrics of
    ``METRICS``.
    """
    scores = np.asarray(scores, dtype=np.float64)
    genuine = np.asarray(genuine, dtype=bool)
    imp_idx = np.flatnonzero(~genuine)
    imp_idx = imp_idx[np.argsort(-scores[imp_idx], kind="stable")]
    # ISO: only the mated pairs are discarded and weighted per pair; the impostors set the threshold
    kept = np.flatnonzero(genuine) if discard_over == "mated" else slice(None)
    sorted_q = {m: [_sort_method(scores[kept], genuine[kept], np.asarray(q, dtype=np.float64)[kept], discard_over)
                    for q in qs] for m, qs in qualities.items()}
    per_step = threshold == "per_step" and discard_over == "all"
    if per_step:
        arrays = sum(len(qs) for qs in qualities.values()) * len(fmrs)
        log.warning("bootstrap with threshold: per_step over all pairs is computed one resample at a time: "
                    "%d resamples x %d quality arrays (about 0.2 s each for 100k pairs); lower 'bootstrap' "
                    "if that is too slow", resamples, arrays)
    acc = {m: {fmr_key(f): [] for f in fmrs} for m in qualities}
    for w, thresholds in _weight_blocks_and_thresholds(clusters, genuine, imp_idx, scores[imp_idx], resamples, seed,
                                                       discard_over):
        for f in fmrs:
            t = None if per_step else thresholds(f)
            for m, qs in qualities.items():
                runs = [_row_metrics(scores, genuine, q, w, f, limits, threshold, discard_over) if per_step
                        else _block_metrics(srt, w, t, limits) for q, srt in zip(qs, sorted_q[m])]
                acc[m][fmr_key(f)].append(_seed_mean(runs, limits))
    return _collect(acc, qualities, limits)


def _weight_blocks_and_thresholds(clusters, genuine, imp_idx, imp_desc, resamples, seed, discard_over):
    """Yield per block of resamples the weights of the discardable pairs, ``(block, pairs)``, and a
    function of the FMR giving each row's threshold (impostors ``imp_idx``, scores ``imp_desc``)."""
    if discard_over == "mated":
        for gen_w, total, top in _IsoBlocks(clusters, genuine, imp_idx, resamples, seed):
            yield gen_w, partial(_top_thresholds, imp_desc, total, top)
    else:
        for w in weight_blocks(clusters, genuine, resamples, seed):
            yield w, partial(_fixed_thresholds, imp_desc, w[:, imp_idx])
