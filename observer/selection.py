"""Layer utilities and the greedy layer set (spec §3.2–3.5), as plain functions on numbers.

In: an (N images × L layers) matrix of per-image L2 norms and N pseudo-labels.
Out: per-layer Spearman utilities (None where undefined), the top-n candidates, the greedy order
with ρ per step, the selected set, and groups of layers whose norms are identical (aliases).
"""

from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass
from typing import Sequence

import numpy as np
from scipy.stats import spearmanr

log = logging.getLogger(__name__)


def spearman(x: np.ndarray, y: np.ndarray) -> float | None:
    """Spearman ρ of two equal-length vectors (scipy's ``spearmanr``); None when it is undefined
    (fewer than 3 values, a non-finite value, or a constant vector)."""
    x = np.asarray(x, dtype=np.float64)
    y = np.asarray(y, dtype=np.float64)
    if x.shape[0] < 3 or not (np.all(np.isfinite(x)) and np.all(np.isfinite(y))):
        return None
    if np.all(x == x[0]) or np.all(y == y[0]):
        return None
    rho = float(spearmanr(x, y).statistic)
    return rho if np.isfinite(rho) else None


def layer_utilities(norms: np.ndarray, labels: np.ndarray) -> list[float | None]:
    """Utility of each layer = Spearman ρ between its column of ``norms`` (N, L) and ``labels`` (N,).

    A column that is constant, holds a non-finite value (NaN = the layer did not fire or gave no
    tensor) gets None: it has no utility and is never selected.
    """
    norms = np.asarray(norms, dtype=np.float64)
    labels = np.asarray(labels, dtype=np.float64)
    if norms.ndim != 2 or norms.shape[0] != labels.shape[0]:
        raise ValueError(f"norms {norms.shape} and labels {labels.shape} do not match")
    return [spearman(norms[:, j], labels) for j in range(norms.shape[1])]


def top_candidates(utilities: Sequence[float | None], top_n: int) -> list[int]:
    """Indices of the ``top_n`` layers with the highest utility (ties: lower index first)."""
    scored = [(-u, j) for j, u in enumerate(utilities) if u is not None]
    scored.sort()
    return [j for _, j in scored[:top_n]]


@dataclass
class GreedyResult:
    """Greedy order (layer indices), ρ after each step, and how many steps form the selected set."""

    order: list[int]
    rhos: list[float | None]
    selected_count: int

    @property
    def selected(self) -> list[int]:
        return self.order[:self.selected_count]


def set_score(norms: np.ndarray, layers: Sequence[int]) -> np.ndarray:
    """Per-image score of a layer set: the arithmetic mean of its layers' raw L2 norms."""
    return np.asarray(norms, dtype=np.float64)[:, list(layers)].mean(axis=1)


def greedy_selection(norms: np.ndarray, labels: np.ndarray, candidates: Sequence[int]) -> GreedyResult:
    """Spec §3.4–3.5: start from the best candidate; at each step add the unused candidate (in
    candidate order, first wins ties) whose addition maximises ρ(set score, labels); record ρ.
    The selected set is the order truncated after the first step with the highest ρ."""
    candidates = list(candidates)
    if not candidates:
        return GreedyResult([], [], 0)
    labels = np.asarray(labels, dtype=np.float64)
    order = [candidates[0]]
    rhos = [spearman(set_score(norms, order), labels)]
    unused = candidates[1:]
    while unused:
        best_j, best_rho = None, None
        for j in unused:
            rho = spearman(set_score(norms, order + [j]), labels)
            if rho is not None and (best_rho is None or rho > best_rho):
                best_j, best_rho = j, rho
        if best_j is None:  # every remaining addition is undefined: take the next in order
            best_j = unused[0]
        order.append(best_j)
        rhos.append(best_rho)
        unused.remove(best_j)
    finite = [(r, -k) for k, r in enumerate(rhos) if r is not None]
    best_step = -max(finite)[1] if finite else 0
    return GreedyResult(order, rhos, best_step + 1)


def alias_groups(norms: np.ndarray, names: Sequence[str]) -> list[list[str]]:
    """Groups (≥ 2) of layers whose norm columns are bit-identical on every image — e.g. a
    container and its last child, or an identity shortcut and the previous block's output.
    Selecting any member of a group is the same selection. Columns with NaN are ignored."""
    norms = np.ascontiguousarray(np.asarray(norms, dtype=np.float64).T)
    groups: dict[bytes, list[str]] = {}
    for j, name in enumerate(names):
        col = norms[j]
        if not np.all(np.isfinite(col)):
            continue
        groups.setdefault(hashlib.sha1(col.tobytes()).digest(), []).append(name)
    return [g for g in groups.values() if len(g) > 1]
