"""Error-versus-discard characteristic (EDC, ISO/IEC 29794-1) and its partial area (pAUC).

Conventions (documented in docs/evaluation.md#what-is-computed):

* **Threshold.** Comparison scores are similarities (higher = more alike); a comparison is a
  *match* when ``score > t``. For ``m`` impostor scores and a target FMR ``f`` let
  ``k = floor(f·m)`` (the most impostors that may be accepted). The threshold is the smallest
  ``t`` with ``#{impostor > t} / m <= f``, which is exactly the ``(k+1)``-th highest impostor
  score (``-inf`` when ``k >= m``). Ties can only make fewer than ``k`` impostors accepted, never
  more. It is fixed on all impostor pairs before anything is discarded.
* **Errors.** A genuine pair is a false non-match when ``score <= t``.
* **Discarding.** Genuine pairs are ordered by pair quality, lowest first. Pairs with equal
  quality are discarded together (a quality threshold cannot separate them), so the curve has a
  point only where the quality changes: at discard counts ``c_0 = 0 < c_1 < ...``. The order of
  pairs in the protocol never matters.
* **Curve.** ``FNMR(d)`` for a discard fraction ``d`` is the FNMR at the largest point
  ``c_j <= d·n`` (a step function that never discards more than asked), i.e. the value at
  ``c_j / n`` holds until the next point.
* **pAUC.** The exact integral of that step function over ``[0, limit]``; normalised by
  ``limit · FNMR(0)`` (1.0 = no better than keeping everything; lower is better).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from froq.core.errors import FroqError

PAIR_QUALITY_RULES = ("min", "mean", "product")


@dataclass(frozen=True)
class Threshold:
    """A decision threshold fixed at a target FMR on impostor scores, with its counts.

    threshold: matches are ``score > threshold``. n_impostor: impostor comparisons used.
    n_allowed: ``floor(fmr · n_impostor)``. n_accepted: impostors above the threshold (<= n_allowed).
    fmr_achieved: ``n_accepted / n_impostor``.
    """

    fmr: float
    threshold: float
    n_impostor: int
    n_allowed: int
    n_accepted: int

    @property
    def fmr_achieved(self) -> float:
        return self.n_accepted / self.n_impostor


def fmr_threshold(impostor_scores, fmr: float) -> Threshold:
    """Impostor similarity scores and a target FMR in (0, 1] → the ``Threshold`` (see module doc).

    Raises FroqError when there is no impostor score, a score is not finite, or ``fmr`` is outside (0, 1].
    """
    scores = np.asarray(impostor_scores, dtype=np.float64).ravel()
    if scores.size == 0:
        raise FroqError("cannot fix a decision threshold: the benchmark has no impostor pairs")
    if not np.all(np.isfinite(scores)):
        raise FroqError(f"{int((~np.isfinite(scores)).sum())} impostor score(s) are not finite")
    if not (0.0 < fmr <= 1.0):
        raise FroqError(f"target FMR must be in (0, 1] (got {fmr})")
    m = scores.size
    # floor with a tolerance so that e.g. 1e-3 * 3000 (= 3.0000000000000004 or 2.9999999999999996) is 3
    allowed = min(m, int(math.floor(fmr * m + 1e-9)))
    if allowed >= m:
        t = -math.inf
    else:
        desc = np.sort(scores)[::-1]
        t = float(desc[allowed])
    accepted = int(np.count_nonzero(scores > t))
    return Threshold(fmr=float(fmr), threshold=t, n_impostor=m, n_allowed=allowed, n_accepted=accepted)


def pair_quality(q1, q2, rule: str = "min") -> np.ndarray:
    """Per-pair quality from the two images' qualities: ``min`` (default), ``mean`` or ``product``."""
    q1 = np.asarray(q1, dtype=np.float64)
    q2 = np.asarray(q2, dtype=np.float64)
    if rule == "min":
        return np.minimum(q1, q2)
    if rule == "mean":
        return (q1 + q2) / 2.0
    if rule == "product":
        return q1 * q2
    raise FroqError(f"unknown pair quality rule '{rule}': use one of {', '.join(PAIR_QUALITY_RULES)}")


@dataclass(frozen=True)
class EdcCurve:
    """An EDC as a step function over the ``n`` genuine pairs.

    discard_counts: the curve's points ``c_j`` (ascending, first 0) — numbers of discarded pairs at
    which the quality changes. error_counts: false non-matches among the remaining pairs at each
    point. n: number of genuine pairs.
    """

    discard_counts: np.ndarray
    error_counts: np.ndarray
    n: int

    @property
    def discard_fractions(self) -> np.ndarray:
        """``c_j / n`` for every point."""
        return self.discard_counts / self.n

    @property
    def fnmr(self) -> np.ndarray:
        """FNMR at every point: errors remaining / pairs remaining."""
        return self.error_counts / (self.n - self.discard_counts)

    @property
    def fnmr0(self) -> float:
        """FNMR with nothing discarded."""
        return float(self.error_counts[0] / self.n)

    def fnmr_at_count(self, k) -> np.ndarray:
        """FNMR of the step function after asking to discard ``k`` pairs (int or int array):
        the value at the largest point ``c_j <= k``."""
        k = np.asarray(k)
        j = np.searchsorted(self.discard_counts, k, side="right") - 1
        return self.fnmr[j]


def edc_curve(errors, quality) -> EdcCurve:
    """Genuine-pair error flags (True = false non-match) and pair qualities → ``EdcCurve``.

    Lowest quality is discarded first; equal qualities are discarded together. Qualities must be
    finite or -inf (NaN raises FroqError).
    """
    errors = np.asarray(errors, dtype=bool).ravel()
    quality = np.asarray(quality, dtype=np.float64).ravel()
    if errors.shape != quality.shape:
        raise ValueError(f"errors ({errors.size}) and qualities ({quality.size}) differ in length")
    n = errors.size
    if n == 0:
        raise FroqError("cannot compute an EDC: the benchmark has no genuine pairs")
    if np.isnan(quality).any():
        raise FroqError(f"{int(np.isnan(quality).sum())} pair qualities are NaN")
    order = np.argsort(quality, kind="stable")
    q_sorted = quality[order]
    e_sorted = errors[order].astype(np.int64)
    # errors remaining after discarding the first c pairs, for c = 0..n-1
    remaining_errors = np.cumsum(e_sorted[::-1])[::-1]
    starts = np.concatenate(([0], np.flatnonzero(q_sorted[1:] != q_sorted[:-1]) + 1))
    return EdcCurve(discard_counts=starts.astype(np.int64), error_counts=remaining_errors[starts], n=n)


def pauc(curve: EdcCurve, limit: float) -> float:
    """Exact area under the step function ``FNMR(d)`` for ``d`` in ``[0, limit]``, ``0 < limit < 1``."""
    if not (0.0 < limit < 1.0):
        raise FroqError(f"discard limit must be in (0, 1) (got {limit})")
    x = curve.discard_fractions
    y = curve.fnmr
    right = np.append(x[1:], np.inf)  # each value holds until the next point
    widths = np.clip(np.minimum(right, limit) - x, 0.0, None)
    return float(np.sum(y * widths))


def theoretical_best_fnmr(fnmr0: float, d) -> np.ndarray:
    """The lowest possible EDC: every error discarded first, ``max(0, fnmr0 − d) / (1 − d)``."""
    d = np.asarray(d, dtype=np.float64)
    return np.maximum(0.0, fnmr0 - d) / (1.0 - d)


@dataclass(frozen=True)
class EdcResult:
    """EDC metrics of one quality method at one threshold, plus its curve."""

    pauc: float
    pauc_norm: float
    fnmr0: float
    n_false_nonmatch: int
    n_genuine: int
    curve: EdcCurve

    def metrics(self) -> dict:
        """JSON-able metrics (no curve)."""
        return {"pauc": self.pauc, "pauc_norm": self.pauc_norm, "fnmr0": self.fnmr0,
                "n_false_nonmatch": self.n_false_nonmatch, "n_genuine": self.n_genuine}


def evaluate_edc(genuine_scores, threshold: float, genuine_quality, limit: float) -> EdcResult:
    """Genuine similarity scores, the fixed threshold, the genuine pairs' qualities and the
    discard limit → ``EdcResult`` (pAUC raw and normalised by ``limit · FNMR(0)``; the normalised
    value is NaN when FNMR(0) is 0)."""
    scores = np.asarray(genuine_scores, dtype=np.float64).ravel()
    errors = scores <= threshold
    curve = edc_curve(errors, genuine_quality)
    area = pauc(curve, limit)
    f0 = curve.fnmr0
    norm = area / (limit * f0) if f0 > 0 else float("nan")
    return EdcResult(pauc=area, pauc_norm=norm, fnmr0=f0, n_false_nonmatch=int(errors.sum()),
                     n_genuine=int(scores.size), curve=curve)


def fmr_key(fmr: float) -> str:
    """The key of an FMR in ``by_fmr`` and file names, e.g. ``0.001``."""
    return format(fmr, "g")
