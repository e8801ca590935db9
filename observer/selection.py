"""Layer utilities and the greedy layer set (spec §3.2–3.5), as plain functions on numbers.

In: an (N images × L layers) matrix of per-image L2 norms and N pseudo-labels.
Out: per-layer Spearman utilities (None where undefined), the top-n candidates, the greedy order
with ρ per step, the selected set, and groups of layers whose norms are identical (aliases).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Sequence

import numpy as np
from scipy.stats import spearmanr

from observer.combination import fit_standardisation, standardise, weighted_mean


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


def set_score(norms: np.ndarray, layers: Sequence[int],
              weights: np.ndarray | None = None) -> np.ndarray:
    """Per-image score of a layer set: the arithmetic mean of its columns of ``norms`` (the paper:
    raw L2 norms), or with ``weights`` (one per column of ``norms``) their weighted mean."""
    cols = list(layers)
    return weighted_mean(np.asarray(norms, dtype=np.float64)[:, cols],
                         None if weights is None else np.asarray(weights)[cols])


def greedy_selection(norms: np.ndarray, labels: np.ndarray, candidates: Sequence[int],
                     weights: np.ndarray | None = None) -> GreedyResult:
    """Spec §3.4–3.5: start from the best candidate; at each step add the unused candidate (in
    candidate order, first wins ties) whose addition maximises ρ(set score, labels); record ρ.
    The selected set is the order truncated after the first step with the highest ρ.
    ``weights`` (one per column, FROQ+): the set score is their weighted mean (``set_score``)."""
    candidates = list(candidates)
    if not candidates:
        return GreedyResult([], [], 0)
    labels = np.asarray(labels, dtype=np.float64)
    order = [candidates[0]]
    rhos = [spearman(set_score(norms, order, weights), labels)]
    unused = candidates[1:]
    while unused:
        best_j, best_rho = None, None
        for j in unused:
            rho = spearman(set_score(norms, order + [j], weights), labels)
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


# -- FROQ+ (issue 12): signs, standardisation, weights, identity-grouped cross-validation ---------

@dataclass
class FeatureFit:
    """A selection on one set of images: utilities (ρ per feature), the ranking key (ρ, or |ρ|
    when signed), candidates, per-feature sign, weight and standardisation parameters (candidates
    only), and the greedy result on the signed, standardised candidate columns."""

    utilities: list[float | None]
    candidates: list[int]
    signs: dict[int, int]
    weights: dict[int, float]
    params: dict[int, dict]
    greedy: GreedyResult


def fit_features(values: np.ndarray, labels: np.ndarray, top_n: int, standardisation: str = "none",
                 signed: bool = False, weighting: str = "equal",
                 allowed: np.ndarray | None = None) -> FeatureFit:
    """Utilities, candidates and greedy set of the (N, F) feature ``values`` against ``labels``.

    ``signed``: candidates are the top-n by |ρ| and a feature with ρ < 0 enters with sign −1;
    otherwise (the paper) the top-n by ρ, all with sign +1. ``standardisation`` (``none``,
    ``zscore``, ``rank``) is fitted on these images; ``weighting`` ``rho`` weights a feature by its
    |ρ|, ``equal`` by 1. ``allowed`` (optional (F,) bool, e.g. the depth budget): only these
    features may be candidates (utilities are still computed for all). With none / unsigned /
    equal and no mask this is exactly the paper's selection.
    """
    values = np.asarray(values, dtype=np.float64)
    utilities = layer_utilities(values, labels)
    key = [None if u is None or (allowed is not None and not allowed[j]) else (abs(u) if signed else u)
           for j, u in enumerate(utilities)]
    candidates = top_candidates(key, top_n)
    signs = {j: (-1 if signed and utilities[j] < 0 else 1) for j in candidates}
    params = {j: fit_standardisation(values[:, j], standardisation) for j in candidates}
    weights = {j: (abs(utilities[j]) if weighting == "rho" else 1.0) for j in candidates}
    if standardisation == "none" and not signed and weighting == "equal":
        greedy = greedy_selection(values, labels, candidates)  # the paper's arithmetic, exactly
    else:
        matrix, w = np.zeros_like(values), np.ones(values.shape[1])
        for j in candidates:
            matrix[:, j] = signs[j] * standardise(values[:, j], params[j], standardisation)
            w[j] = weights[j]
        greedy = greedy_selection(matrix, labels, candidates, None if weighting == "equal" else w)
    return FeatureFit(utilities, candidates, signs, weights, params, greedy)


def score_prefixes(fit: FeatureFit, values: np.ndarray, standardisation: str,
                   weighting: str) -> list[np.ndarray]:
    """Scores of the images ``values`` (N, F) for each prefix 1..len(order) of ``fit``'s greedy
    order, with ``fit``'s signs, weights and standardisation parameters (fitted elsewhere)."""
    values = np.asarray(values, dtype=np.float64)
    columns, weights, out = [], [], []
    for j in fit.greedy.order:
        columns.append(fit.signs[j] * standardise(values[:, j], fit.params[j], standardisation))
        weights.append(fit.weights[j])
        stacked = np.stack(columns, axis=1)
        out.append(weighted_mean(stacked, None if weighting == "equal" else np.array(weights)))
    return out


def identity_folds(groups: Sequence[str], folds: int, seed: int = 0) -> np.ndarray:
    """Fold index (0..folds−1) of every image, whole identities per fold: the sorted distinct
    identities are shuffled with ``seed`` and dealt round-robin. Out: (N,) int array."""
    names = sorted(set(groups))
    if len(names) < folds:
        raise ValueError(f"{len(names)} identities cannot fill {folds} cross-validation folds")
    order = np.random.default_rng(seed).permutation(len(names))
    fold_of = {names[i]: k % folds for k, i in enumerate(order)}
    return np.array([fold_of[g] for g in groups], dtype=np.int64)


@dataclass
class CrossValidation:
    """Mean held-out Spearman ρ per set size (index 0 = size 1; None where no fold had that size),
    per fold, and the chosen size (the first size with the highest mean)."""

    folds: int
    spearman_by_size: list[float | None]
    per_fold: list[list[float | None]]
    size: int


def cross_validate_size(values: np.ndarray, labels: np.ndarray, groups: Sequence[str], top_n: int,
                        folds: int = 5, seed: int = 0, standardisation: str = "none",
                        signed: bool = False, weighting: str = "equal",
                        allowed: np.ndarray | None = None) -> CrossValidation:
    """Choose the set size by identity-grouped cross-validation (issue 12, point 2).

    For each fold: ``fit_features`` on the other folds (utilities, candidates, signs, weights,
    standardisation, greedy order — nothing from the held-out images), then ρ between the held-out
    images' labels and the score of every prefix of that greedy order. The size with the highest
    mean held-out ρ wins (the first on ties). ``allowed``: the candidate mask of ``fit_features``,
    the same on every fold."""
    values = np.asarray(values, dtype=np.float64)
    labels = np.asarray(labels, dtype=np.float64)
    fold = identity_folds(groups, folds, seed)
    per_fold = []
    for k in range(folds):
        train, test = fold != k, fold == k
        fit = fit_features(values[train], labels[train], top_n, standardisation, signed, weighting,
                           allowed)
        scores = score_prefixes(fit, values[test], standardisation, weighting)
        per_fold.append([spearman(s, labels[test]) for s in scores])
    longest = max((len(r) for r in per_fold), default=0)
    means: list[float | None] = []
    for m in range(longest):
        got = [r[m] for r in per_fold if m < len(r) and r[m] is not None]
        means.append(float(np.mean(got)) if got else None)
    finite = [(r, -m) for m, r in enumerate(means) if r is not None]
    size = (-max(finite)[1] + 1) if finite else 1
    return CrossValidation(folds, means, per_fold, size)
