"""The IWBF'23 label optimisation (Babnik, Damer, Štruc, "Optimization-Based Improvement of Face
Image Quality Assessment Techniques", IWBF 2023): refine initial quality scores with the
similarities of mated (same-identity) pairs.

As published (paper and the authors' code, facts only):

1. Rank the N images by initial quality, ascending: rank r_i ∈ {0, …, N−1} (0 = lowest quality).
2. Genuine pairs: the images of each identity are split into clusters (k-means on the L2-normalised
   embeddings, 20 clusters per identity in the original); every image draws **one random partner
   from each other cluster** of its identity. (A pair drawn from both sides is listed twice.)
3. Sort all pairs by the FR cosine similarity, ascending: pair position p ∈ {0, …, P−1}. Each pair's
   position goes to its **lower-quality** image (the lower rank). m_i = mean position of the pairs
   image i holds.
4. New rank r'_i = r_i + ε·(m_i − r_i) (ε = 0.001); an image that holds no pair keeps r_i.
5. Steps 2–4 are repeated for ``draws`` = 10 random draws of the partners and r' is averaged.
6. Re-sort by the averaged r' and map the new order back onto the original score distribution: the
   image with the j-th smallest r' gets the j-th smallest initial score.

Identity = the image's parent folder (as the calibration builder); an image at the folder's top
level has none and gets no pairs. Who keeps its rank: an image of an identity with one image (no
partner) or at the top level, and an image that is the
better one of all its pairs (it holds none). Their r' equals r, but their final rank can still
change as the others move past them.

Options beyond the publication (the publication is the default):

- ``pairing='all'``: every unordered pair of images of an identity, once (no clustering, no
  random draws: one deterministic draw);
- ``clusters``: clusters per identity (an identity with no more images than that has one image per
  cluster, i.e. one partner per other image — the original needs ≥ 20 images per identity);
- ``positions='fraction'``: r and p are divided by N−1 and P−1 before the step, so ε is a fraction
  of the quality range whatever the number of pairs per image. In the published form (``index``)
  the two are on different scales (P ≈ (k−1)·N), so the step is not a step *toward* m_i in the
  quality ranking but mostly ε·m_i, and the effect of ε depends on N and P.

Ties are resolved deterministically: equal initial scores by input order (a stable sort, as the
original's sort of its score list), equal similarities by the order pairs are built (identities
sorted, images in input order, clusters by label), equal r' by the initial rank.
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass
from typing import Sequence

import numpy as np

from froq.core.errors import FroqError
from froq.core.images import identity_of

log = logging.getLogger(__name__)

PAIRINGS = ("clusters", "all")
POSITIONS = ("index", "fraction")


@dataclass
class OptimisationSettings:
    """The optimisation's constants: step ε, random draws of partners, pairing (``clusters`` = the
    publication, ``all``), clusters per identity (20 as published), position scale (``index`` = the
    publication, ``fraction``), seed."""

    epsilon: float = 0.001
    draws: int = 10
    pairing: str = "clusters"
    clusters: int = 20
    positions: str = "index"
    seed: int = 0

    def check(self) -> None:
        """FroqError (one line) for a setting out of range; nothing otherwise."""
        if not (np.isfinite(self.epsilon) and 0 < self.epsilon <= 1):
            raise FroqError(f"epsilon={self.epsilon}: must be in (0, 1] (published: 0.001)")
        if self.draws < 1:
            raise FroqError(f"draws={self.draws}: must be >= 1 (published: 10)")
        if self.clusters < 1:
            raise FroqError(f"clusters={self.clusters}: must be >= 1 (published: 20)")
        if self.pairing not in PAIRINGS:
            raise FroqError(f"pairing={self.pairing!r}: use one of {', '.join(PAIRINGS)}")
        if self.positions not in POSITIONS:
            raise FroqError(f"positions={self.positions!r}: use one of {', '.join(POSITIONS)}")


@dataclass
class OptimisationResult:
    """Per image (input order): ``quality`` (optimised, a permutation of the initial scores),
    ``initial`` scores, ``initial_rank`` (0 = lowest), ``mean_rank`` (r' averaged over the draws),
    ``held_pairs`` (pairs held per draw, averaged); and ``summary`` (counts for the meta file)."""

    quality: np.ndarray
    initial: np.ndarray
    initial_rank: np.ndarray
    mean_rank: np.ndarray
    held_pairs: np.ndarray
    summary: dict


def ranks(values: np.ndarray) -> np.ndarray:
    """0-based ascending ranks of ``values``; equal values keep their input order."""
    order = np.argsort(values, kind="stable")
    out = np.empty(len(values), dtype=np.int64)
    out[order] = np.arange(len(values))
    return out


def kmeans(points: np.ndarray, k: int, rng: np.random.Generator, iterations: int = 100) -> np.ndarray:
    """Cluster labels (n,) of ``points`` (n, d) into ``min(k, n)`` clusters: k-means++ seeding from
    ``rng``, then Lloyd iterations until the labels stop changing. With k ≥ n every point is its
    own cluster. Labels are renumbered by first appearance (0, 1, …)."""
    n = len(points)
    if k >= n:
        return np.arange(n)
    centres = [points[rng.integers(n)]]
    for _ in range(1, k):
        d2 = np.min(((points[:, None, :] - np.array(centres)[None]) ** 2).sum(-1), axis=1)
        total = d2.sum()
        pick = rng.choice(n, p=d2 / total) if total > 0 else rng.integers(n)
        centres.append(points[pick])
    centres = np.array(centres)
    labels = np.full(n, -1)
    for _ in range(iterations):
        new = np.argmin(((points[:, None, :] - centres[None]) ** 2).sum(-1), axis=1)
        if np.array_equal(new, labels):
            break
        labels = new
        for c in range(k):
            if np.any(labels == c):
                centres[c] = points[labels == c].mean(axis=0)
    _, first = np.unique(labels, return_index=True)
    renumber = {old: i for i, old in enumerate(labels[np.sort(first)])}
    return np.array([renumber[v] for v in labels])


def identity_groups(paths: Sequence[str]) -> dict[str, np.ndarray]:
    """{identity: indices of its images in input order}, identities sorted. An image at the top
    level of the folder has no identity folder: it forms a group of its own (no pairs), never a
    genuine pair with another top-level image (a flat folder holds unknown people)."""
    groups: dict[str, list[int]] = {}
    loose = 0
    for i, p in enumerate(paths):
        ident = identity_of(p)
        if ident == "":
            ident, loose = f"\0top-level {i}", loose + 1
        groups.setdefault(ident, []).append(i)
    if loose:
        log.warning("label optimisation: %d image(s) at the top level have no identity folder: "
                    "they get no genuine pairs", loose)
    return {k: np.array(groups[k]) for k in sorted(groups)}


def cluster_members(groups: dict[str, np.ndarray], unit: np.ndarray, settings: OptimisationSettings
                    ) -> list[list[np.ndarray]]:
    """Per identity with ≥ 2 images: its clusters as lists of global image indices (computed once,
    seeded, as the original clusters once before its draws). ``pairing='all'`` or k ≥ n: one image
    per cluster."""
    rng = np.random.default_rng([settings.seed, 1])
    out = []
    for members in groups.values():
        if len(members) < 2:
            continue
        if settings.pairing == "all":
            labels = np.arange(len(members))
        else:
            labels = kmeans(unit[members], settings.clusters, rng)
        out.append([members[labels == c] for c in range(labels.max() + 1)])
    return out


def draw_pairs(clusters: list[list[np.ndarray]], rng: np.random.Generator | None) -> np.ndarray:
    """Genuine pairs (P, 2) of global indices: per identity, every image with one random partner
    from each other cluster (``rng``); with ``rng=None`` (pairing 'all') every unordered pair once."""
    pairs = []
    for groups in clusters:
        if rng is None:
            flat = np.concatenate(groups)
            for a in range(len(flat)):
                for b in range(a + 1, len(flat)):
                    pairs.append((flat[a], flat[b]))
            continue
        for ci, group in enumerate(groups):
            for sample in group:
                for cj, other in enumerate(groups):
                    if cj != ci:
                        pairs.append((sample, other[rng.integers(len(other))]))
    return np.array(pairs, dtype=np.int64).reshape(-1, 2)


def one_draw(rank: np.ndarray, unit: np.ndarray, pairs: np.ndarray, settings: OptimisationSettings
             ) -> tuple[np.ndarray, np.ndarray]:
    """One draw of steps 3–4: the new ranks r' (N,) and the pairs each image holds (N,)."""
    n = len(rank)
    r = rank.astype(np.float64)
    if len(pairs) == 0:
        return r, np.zeros(n, dtype=np.int64)
    sim = np.einsum("ij,ij->i", unit[pairs[:, 0]], unit[pairs[:, 1]])
    position = np.empty(len(pairs), dtype=np.float64)
    position[np.argsort(sim, kind="stable")] = np.arange(len(pairs))
    lower = np.where(rank[pairs[:, 0]] < rank[pairs[:, 1]], pairs[:, 0], pairs[:, 1])
    total = np.bincount(lower, weights=position, minlength=n)
    held = np.bincount(lower, minlength=n)
    if settings.positions == "fraction":
        r = r / max(n - 1, 1)
        total = total / max(len(pairs) - 1, 1)
    has = held > 0
    mean_position = np.zeros(n)
    mean_position[has] = total[has] / held[has]
    moved = r.copy()
    moved[has] = r[has] + settings.epsilon * (mean_position[has] - r[has])
    if settings.positions == "fraction":
        moved = moved * max(n - 1, 1)  # back to rank units (only the order matters)
    return moved, held


def optimise_labels(paths: Sequence[str], initial: Sequence[float], embeddings: np.ndarray,
                    settings: OptimisationSettings = OptimisationSettings(),
                    source: str = "labels") -> OptimisationResult:
    """The IWBF'23 optimisation of ``initial`` scores (module doc).

    In: relative image paths (identity = parent folder), their initial scores (higher = better),
    their FR embeddings (N, D) in the same order, the settings, and a name for messages.
    Out: ``OptimisationResult`` in input order. FroqError (one line) for mismatched lengths,
    non-finite values, duplicate paths, or no identity with two images (nothing to pair).
    """
    settings.check()
    q = np.asarray(initial, dtype=np.float64)
    emb = np.asarray(embeddings, dtype=np.float64)
    n = len(paths)
    if n == 0:
        raise FroqError(f"{source}: no images to optimise")
    if q.shape != (n,) or emb.ndim != 2 or emb.shape[0] != n:
        raise FroqError(f"{source}: {n} paths, {q.size} scores and {emb.shape[0] if emb.ndim else 0} "
                        "embeddings: they must be the same images in the same order")
    if len(set(paths)) != n:
        raise FroqError(f"{source}: a path is listed twice; give each image once")
    if not np.isfinite(q).all():
        raise FroqError(f"{source}: {int((~np.isfinite(q)).sum())} initial score(s) are not finite numbers")
    norms = np.linalg.norm(emb, axis=1)
    if not np.isfinite(emb).all() or np.any(norms == 0):
        raise FroqError(f"{source}: an embedding is zero or not finite: cosine similarity is undefined")
    unit = emb / norms[:, None]
    groups = identity_groups(paths)
    paired = [k for k, v in groups.items() if len(v) >= 2]
    if not paired:
        raise FroqError(f"{source}: every identity has a single image, so there are no genuine pairs: "
                        "put the images of one person in one folder (identity = parent folder)")
    rank = ranks(q)
    clusters = cluster_members(groups, unit, settings)
    deterministic = settings.pairing == "all"
    draws = 1 if deterministic else settings.draws
    new_sum = np.zeros(n)
    held_sum = np.zeros(n)
    pair_counts = []
    for d in range(draws):
        rng = None if deterministic else np.random.default_rng([settings.seed, 2, d])
        pairs = draw_pairs(clusters, rng)
        moved, held = one_draw(rank, unit, pairs, settings)
        new_sum += moved
        held_sum += held
        pair_counts.append(len(pairs))
    mean_rank = new_sum / draws
    # re-sort (ties: initial rank) and map the order back onto the sorted initial scores
    order = np.lexsort((rank, mean_rank))
    quality = np.empty(n)
    quality[order] = np.sort(q, kind="stable")
    singles = sum(1 for v in groups.values() if len(v) == 1)
    summary = {"images": n, "identities": len(groups), "single_image_identities": singles,
               "images_without_pairs": int((held_sum == 0).sum()),
               "pairs_per_draw": pair_counts, "draws": draws,
               "clusters_per_identity": {"min": min(len(c) for c in clusters),
                                         "max": max(len(c) for c in clusters)},
               "settings": asdict(settings)}
    return OptimisationResult(quality=quality, initial=q, initial_rank=rank, mean_rank=mean_rank,
                              held_pairs=held_sum / draws, summary=summary)
