"""How FROQ+ combines the selected (layer, statistic) features into one quality (issue 12, point 1).

The paper averages the raw L2 norms of the selected layers, so the layer with the largest norms
dominates. FROQ+ can first put every feature on a common scale with statistics of the calibration
set — ``zscore``: (x − mean) / std; ``rank``: the calibration set's empirical distribution
function through 101 stored quantiles (0 … 1) — give it the sign of its Spearman ρ with the
pseudo-labels (a feature that falls with quality enters flipped), and weight it (``rho``: |ρ| on
the calibration set). Quality = Σ wₖ·sₖ·tₖ(xₖ) / Σ wₖ. Everything needed is stored per feature in
the observer file, so inference applies exactly this function to the features of one pass.
"""

from __future__ import annotations

from typing import Mapping, Sequence

import numpy as np

from froq.core.errors import FroqError

#: standardisations of a feature before averaging
STANDARDISATIONS = ("none", "zscore", "rank")
#: weightings of the selected features
WEIGHTINGS = ("equal", "rho")
QUANTILES = 101


def fit_standardisation(values: np.ndarray, method: str) -> dict:
    """Calibration parameters of one feature's standardisation.

    In: (N,) finite calibration values and the method. Out: ``{}`` (none), ``{mean, std}``
    (zscore; population std) or ``{quantiles: [101 values]}`` (rank)."""
    values = np.asarray(values, dtype=np.float64)
    if method == "none":
        return {}
    if method == "zscore":
        return {"mean": float(values.mean()), "std": float(values.std())}
    if method == "rank":
        return {"quantiles": np.quantile(values, np.linspace(0.0, 1.0, QUANTILES)).tolist()}
    raise FroqError(f"unknown standardisation {method!r}; known: {', '.join(STANDARDISATIONS)}")


def standardise(values: np.ndarray, params: Mapping, method: str) -> np.ndarray:
    """One feature's values on the common scale of ``fit_standardisation``'s ``params``.

    In: (N,) values. Out: (N,) float64 — unchanged (none), z-scores (zscore; a zero std gives 0),
    or the calibration distribution function in [0, 1] (rank; linear between quantiles, clipped
    outside the calibration range)."""
    values = np.asarray(values, dtype=np.float64)
    if method == "none":
        return values
    if method == "zscore":
        std = float(params["std"])
        return (values - float(params["mean"])) / std if std > 0 else np.zeros_like(values)
    if method == "rank":
        q = np.asarray(params["quantiles"], dtype=np.float64)
        return np.interp(values, q, np.linspace(0.0, 1.0, q.size))
    raise FroqError(f"unknown standardisation {method!r}; known: {', '.join(STANDARDISATIONS)}")


def signed_standardised(values: np.ndarray, features: Sequence[Mapping], method: str) -> np.ndarray:
    """(N, F) feature values → (N, F) ``sign · standardise(value)`` per feature column."""
    values = np.asarray(values, dtype=np.float64)
    cols = [float(f.get("sign", 1)) * standardise(values[:, k], f, method)
            for k, f in enumerate(features)]
    return np.stack(cols, axis=1) if cols else np.zeros((values.shape[0], 0))


def weighted_mean(columns: np.ndarray, weights: np.ndarray | None) -> np.ndarray:
    """Row-wise mean of (N, F) ``columns``: plain ``mean`` when ``weights`` is None, else
    Σ wₖ·cₖ / Σ wₖ."""
    columns = np.asarray(columns, dtype=np.float64)
    if weights is None:
        return columns.mean(axis=1)
    weights = np.asarray(weights, dtype=np.float64)
    return (columns * weights).sum(axis=1) / weights.sum()


def combined_quality(values: np.ndarray, features: Sequence[Mapping], method: str) -> np.ndarray:
    """FROQ+ quality of images from their (N, F) feature values (columns in ``features`` order).

    In: the values and the observer's ``features`` (each with ``sign``, ``weight`` and the
    standardisation parameters) and its standardisation method. Out: (N,) float64, higher = better.
    """
    weights = np.array([float(f.get("weight", 1.0)) for f in features])
    return weighted_mean(signed_standardised(values, features, method), weights)
