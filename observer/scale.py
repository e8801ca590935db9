"""A readable 0–100 quality scale from the calibration set (stored in the observer file).

FROQ's raw quality (a mean of layer norms) has no fixed range: 12–18 with one model, 42–66 with
another. ``percentile`` maps it onto 0–100 by the calibration images' own qualities: a face scoring
like the median calibration image gets 50, like the best 1 % about 99. The map is strictly
increasing — piecewise linear through the calibration points, exponential tails below the worst
and above the best calibration image that approach 0 and 100 without reaching them — so the
ranking (and every EDC) is exactly that of the raw quality.
"""

from __future__ import annotations

from typing import Mapping, Sequence

import numpy as np

FORMAT = "calibration-percentile/1"


def scale_record(calibration_qualities: Sequence[float]) -> dict:
    """The observer file's ``scale`` entry from the raw qualities of the calibration images.

    Out: ``{format, qualities (sorted), images}``; empty qualities are refused by the caller's
    checks (initialisation needs at least 3 images)."""
    q = np.sort(np.asarray(calibration_qualities, dtype=np.float64))
    q = q[np.isfinite(q)]
    return {"format": FORMAT, "images": int(q.size), "qualities": q.tolist()}


def percentile(raw: np.ndarray, scale: Mapping) -> np.ndarray:
    """Raw FROQ qualities → 0–100 against the calibration qualities of ``scale`` (see module doc).

    In: (N,) raw qualities and an observer's ``scale`` record. Out: (N,) float64 in (0, 100),
    strictly increasing in the raw quality."""
    q = np.asarray(scale["qualities"], dtype=np.float64)
    raw = np.asarray(raw, dtype=np.float64)
    n = q.size
    xs, counts = np.unique(q, return_counts=True)
    below = np.concatenate([[0], np.cumsum(counts)[:-1]])
    ys = 100.0 * (below + counts / 2.0) / n  # mid-rank of each distinct value, in (0, 100)
    spread = float(np.std(q)) or float(abs(xs[-1])) or 1.0
    out = np.interp(raw, xs, ys) if xs.size > 1 else np.full(raw.shape, ys[0])
    low, high = raw < xs[0], raw > xs[-1]
    out[low] = ys[0] * np.exp((raw[low] - xs[0]) / spread)
    out[high] = 100.0 - (100.0 - ys[-1]) * np.exp(-(raw[high] - xs[-1]) / spread)
    return out
