"""The dense verification protocol over any folder of identity folders (``type: identity_folders``).

``images/<identity>/<file>`` → every genuine pair (each two images of one identity) and ``N``
impostor pairs drawn uniformly, without repetition, from all pairs of images of two different
identities (seeded). The pairs are listed deterministically: genuine pairs by identity name and
image name, then impostor pairs sorted by their two image indices (images in sorted path order).
The same folder, ``N`` and seed always give the same list; ``evaluate.py`` writes it to
``<outdir>/protocols/<name>.csv`` (``path1,path2,genuine``: a ``csv`` benchmark as it stands).

Why ``N = 100,000`` by default: the threshold at FMR 10⁻³ then rests on the 101st-highest impostor
score (100 accepted impostors, so the achieved FMR has a relative binomial error of about 10 %;
at FMR 10⁻⁴, 10 accepted), instead of on the single highest of LFW's 900 or the 4th of 3,000.
Scoring cached embeddings of 100,000 pairs is a matrix product; the bootstrap's cost grows with N.
"""

from __future__ import annotations

import logging
import math
import os
from pathlib import Path

import numpy as np

from froq.core.errors import FroqError
from froq.core.images import list_images

from evaluation.pair_protocols import PairProtocol

log = logging.getLogger(__name__)

DEFAULT_IMPOSTORS = 100_000


def _select_images(paths: list[str], max_per_identity: int | None, seed: int) -> list[str]:
    """Sorted ``<identity>/<image>`` paths → at most ``max_per_identity`` of each identity (seeded), sorted."""
    if max_per_identity is None:
        return paths
    rng = np.random.default_rng([seed, 1])
    by_id: dict[str, list[str]] = {}
    for p in paths:
        by_id.setdefault(p.split("/", 1)[0], []).append(p)
    kept = []
    for ident in sorted(by_id):
        group = by_id[ident]
        if len(group) > max_per_identity:
            pick = np.sort(rng.choice(len(group), size=max_per_identity, replace=False))
            group = [group[i] for i in pick]
        kept += group
    return sorted(kept)


def sample_impostor_pairs(labels: np.ndarray, n_pairs: int, seed: int) -> np.ndarray:
    """Identity label (int) of each image and a count → ``(K, 2)`` image-index pairs ``i < j`` of two
    different identities, ``K = min(n_pairs, all such pairs)``, drawn uniformly without repetition
    (seeded) and sorted. All of them when ``n_pairs`` reaches their number."""
    n = len(labels)
    possible = _impostor_pair_count(np.bincount(labels))
    if possible == 0:
        raise FroqError("an identity_folders benchmark needs at least two identities")
    if n_pairs >= possible:
        i, j = np.triu_indices(n, k=1)
        keep = labels[i] != labels[j]
        return np.stack([i[keep], j[keep]], axis=1).astype(np.int64)
    rng = np.random.default_rng([seed, 2])
    keys = np.empty(0, dtype=np.int64)
    order = np.empty(0, dtype=np.int64)           # draw position of each distinct key
    drawn = 0
    while len(keys) < n_pairs:
        batch = max(1024, int(1.3 * (n_pairs - len(keys)) * (n * n) / (2 * possible)))
        a = rng.integers(0, n, size=batch)
        b = rng.integers(0, n, size=batch)
        ok = labels[a] != labels[b]
        a, b = a[ok], b[ok]
        new = np.minimum(a, b).astype(np.int64) * n + np.maximum(a, b)
        allkeys = np.concatenate([keys, new])
        allpos = np.concatenate([order, drawn + np.arange(len(new))])
        drawn += len(new)
        keys, first = np.unique(allkeys, return_index=True)   # keeps each key's first draw
        order = allpos[first]
    chosen = np.sort(keys[np.argsort(order, kind="stable")[:n_pairs]])
    return np.stack([chosen // n, chosen % n], axis=1)


def _impostor_pair_count(sizes: np.ndarray) -> int:
    """Images per identity → the number of pairs of images of two different identities."""
    n = int(np.sum(sizes))
    return n * (n - 1) // 2 - int(np.sum(sizes * (sizes - 1) // 2))


def read_identity_folders(images_dir: str | os.PathLike, name: str = "identity_folders",
                          impostors: int = DEFAULT_IMPOSTORS, seed: int = 0,
                          max_images_per_identity: int | None = None) -> PairProtocol:
    """A folder ``<identity>/<image>`` → the dense ``PairProtocol`` (see module doc).

    In: the folder, the benchmark name, the number of impostor pairs, the seed, and optionally a cap
    on images per identity (a seeded subsample, so one identity with hundreds of photos does not
    hold most genuine pairs). Out: the protocol with per-image identities and its provenance in
    ``info``. FroqError for a folder without identity sub-folders, images directly in it, or fewer
    than two identities / no genuine pair.
    """
    root = Path(images_dir)
    if not root.is_dir():
        raise FroqError(f"identity_folders benchmark {name}: image folder not found: {root}")
    paths = list_images(root)
    loose = [p for p in paths if "/" not in p]
    if loose:
        raise FroqError(f"{root}: {len(loose)} image(s) lie directly in the folder (e.g. {loose[0]}); an "
                        "identity_folders benchmark needs one sub-folder per identity: <identity>/<image>")
    paths = _select_images(paths, max_images_per_identity, seed)
    identities = [p.split("/", 1)[0] for p in paths]
    names, labels = np.unique(np.asarray(identities), return_inverse=True)
    sizes = np.bincount(labels)
    gen = []
    for ident in range(len(names)):
        members = np.flatnonzero(labels == ident)
        if len(members) > 1:
            i, j = np.triu_indices(len(members), k=1)
            gen.append(np.stack([members[i], members[j]], axis=1))
    if not gen:
        raise FroqError(f"{root}: no identity folder holds two images, so there is no genuine pair")
    gen_pairs = np.concatenate(gen).astype(np.int64)
    imp_pairs = sample_impostor_pairs(labels, int(impostors), seed)
    if len(imp_pairs) < impostors:
        log.warning("%s: only %d impostor pairs exist (asked for %d): using all of them",
                    name, len(imp_pairs), impostors)
    pairs = np.concatenate([gen_pairs, imp_pairs])
    genuine = np.r_[np.ones(len(gen_pairs), bool), np.zeros(len(imp_pairs), bool)]
    k_at_1e3 = math.floor(1e-3 * len(imp_pairs) + 1e-9)
    info = {"type": "identity_folders", "seed": int(seed), "impostors_requested": int(impostors),
            "impostors_possible": _impostor_pair_count(sizes), "n_identities": int(len(names)),
            "n_identities_with_genuine_pairs": int(np.sum(sizes > 1)),
            "max_images_per_identity": max_images_per_identity,
            "largest_identity_share_of_genuine_pairs": float(np.max(sizes * (sizes - 1) // 2) / len(gen_pairs)),
            "impostors_accepted_at_fmr_1e-3": k_at_1e3}
    return PairProtocol(name=name, image_root=root, images=paths, pairs=pairs, genuine=genuine, folds=None,
                        source=str(root), identities=identities, info=info)
