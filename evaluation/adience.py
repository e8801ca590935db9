"""Adience as used for FIQA: every pair of its face images, mated when both show the same face id.

Dataset layout (``root``)::

    fold_0_data.txt ... fold_4_data.txt    tab-separated, header: user_id, original_image, face_id,
                                           age, gender, x, y, dx, dy, tilt_ang, fiducial_yaw_angle,
                                           fiducial_score
    faces/<user_id>/coarse_tilt_aligned_face.<face_id>.<original_image>

Protocol (CR-FIQA, Boutros et al., CVPR 2023: its released evaluation code
``evaluation/extract_adience.py``): the images are compared all against all (every unordered
pair once) and a pair is mated when the two images carry the same ``face_id`` (the id in the file
name). With the 19,370 images of the fold files that is about 187.6 million pairs: beyond
``evaluation.streaming.STREAM_PAIRS`` pairs the protocol is an ``AllPairsProtocol`` that lists only
its mated pairs, and the evaluation streams the impostor scores (``evaluation.streaming``).
``impostors: N`` keeps all mated pairs and a seeded uniform sample of N non-mated pairs instead
(a convenience for small machines, not a published protocol).

The images must first be aligned for the FR model (``preparation/align.py --input <root>/faces``);
``images`` is that aligned folder (same relative layout; the extension may differ).
"""

from __future__ import annotations

import csv
import logging
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from froq.core.errors import FroqError
from froq.core.images import IMAGE_EXTENSIONS

from evaluation.pair_protocols import PairProtocol
from evaluation import streaming

log = logging.getLogger(__name__)

FOLD_FILES = tuple(f"fold_{i}_data.txt" for i in range(5))
REQUIRED_COLUMNS = ("user_id", "original_image", "face_id")
IDENTITIES = ("face_id", "user_face")
PAIR_BLOCK = 2048  # rows of the upper triangle generated at once


def adience_path(user_id: str, face_id: str, original_image: str) -> str:
    """Relative path of a face image: ``<user_id>/coarse_tilt_aligned_face.<face_id>.<original_image>``."""
    return f"{user_id}/coarse_tilt_aligned_face.{face_id}.{original_image}"


def read_folds(root: str | os.PathLike) -> list[tuple[str, str, int]]:
    """The five fold files of ``root`` → ``(relative image path, user_id, face_id)`` per listed face,
    in file order, each image once. FroqError naming file and line for a missing file, a missing
    column, a non-integer face id, or one image listed with two face ids."""
    root = Path(root)
    out: dict[str, tuple[str, str, int]] = {}
    for name in FOLD_FILES:
        path = root / name
        if not path.is_file():
            raise FroqError(f"Adience fold file not found: {path} — give 'root' as the folder holding "
                            f"{', '.join(FOLD_FILES)} and faces/")
        with open(path, newline="", encoding="utf-8", errors="replace") as fh:
            reader = csv.reader(fh, delimiter="\t")
            header = [h.strip() for h in next(reader, [])]
            lacking = [c for c in REQUIRED_COLUMNS if c not in header]
            if lacking:
                raise FroqError(f"{path}:1: header lacks {', '.join(lacking)} (a tab-separated header "
                                f"starting {chr(9).join(REQUIRED_COLUMNS)} is expected)")
            col = {c: header.index(c) for c in REQUIRED_COLUMNS}
            for no, row in enumerate(reader, start=2):
                if not any(v.strip() for v in row):
                    continue
                if len(row) <= max(col.values()):
                    raise FroqError(f"{path}:{no}: expected at least {max(col.values()) + 1} tab-separated "
                                    f"fields, found {len(row)}")
                user, image, face = (row[col[c]].strip() for c in REQUIRED_COLUMNS)
                try:
                    face_id = int(face)
                except ValueError:
                    raise FroqError(f"{path}:{no}: face_id must be an integer (found {face!r})") from None
                rel = adience_path(user, face, image)
                if rel in out and out[rel][2] != face_id:
                    raise FroqError(f"{path}:{no}: {rel} is listed again with another face_id")
                out.setdefault(rel, (rel, user, face_id))
    if not out:
        raise FroqError(f"{root}: the fold files list no face")
    return list(out.values())


@dataclass(kw_only=True)
class AllPairsProtocol(PairProtocol):
    """Every unordered pair of ``images``, never listed: ``pairs`` and ``genuine`` are None;
    ``image_ids`` (N,) identity codes, ``mated`` (G, 2) the pairs of equal codes (row-major)."""

    image_ids: np.ndarray
    mated: np.ndarray

    @property
    def n_pairs(self) -> int:
        return len(self.images) * (len(self.images) - 1) // 2

    @property
    def n_genuine(self) -> int:
        return len(self.mated)


def mated_pairs(ids: np.ndarray) -> np.ndarray:
    """Identity codes (N,) → every pair ``i < j`` of equal code as int64 (G, 2), row-major."""
    order = np.argsort(ids, kind="stable")
    bounds = np.flatnonzero(np.r_[True, ids[order][1:] != ids[order][:-1], True])
    parts = [np.zeros((0, 2), np.int64)]
    for a, b in zip(bounds[:-1], bounds[1:]):
        i, j = np.triu_indices(b - a, 1)
        parts.append(np.column_stack([order[a:b][i], order[a:b][j]]))
    p = np.concatenate(parts).astype(np.int64)
    return p[np.lexsort((p[:, 1], p[:, 0]))]


def with_sampled_impostors(ids: np.ndarray, mated: np.ndarray, count: int, seed: int) -> np.ndarray:
    """Identity codes (N,), their mated pairs (G, 2), a count and a seed → the mated pairs plus
    ``count`` impostor pairs drawn uniformly without replacement, as (G + count, 2) int64 in
    row-major order. The draw is ``rng.choice`` over the row-major list of all impostor pairs, but
    that list (1.5 GB for full Adience) is never built: each drawn ordinal is mapped to its pair."""
    n = len(ids)
    order = np.argsort(ids, kind="stable")
    starts = np.flatnonzero(np.r_[True, ids[order][1:] != ids[order][:-1]])
    size = np.diff(np.r_[starts, n])
    group = np.repeat(np.arange(len(starts)), size)
    later_mated = np.empty(n, dtype=np.int64)
    later_mated[order] = size[group] - 1 - (np.arange(n) - starts[group])   # same id, larger index
    per_row = (n - 1 - np.arange(n)) - later_mated                          # impostors (i, j > i) per row i
    row_end = np.cumsum(per_row)
    pick = np.sort(np.random.default_rng(seed).choice(int(row_end[-1]), size=count, replace=False))
    rows = np.searchsorted(row_end, pick, side="right")
    within = pick - (row_end - per_row)[rows]
    cols = np.empty(count, dtype=np.int64)
    heads = np.flatnonzero(np.r_[True, rows[1:] != rows[:-1]]) if count else []
    for a, b in zip(heads, np.r_[heads[1:], count]):
        r = rows[a]
        later = np.arange(r + 1, n)
        cols[a:b] = later[ids[later] != ids[r]][within[a:b]]
    p = np.concatenate([mated, np.column_stack([rows, cols])]).astype(np.int64)
    return p[np.lexsort((p[:, 1], p[:, 0]))]


def _locate(images: Path, rel: str) -> str | None:
    if (images / rel).is_file():
        return rel
    stem = rel[: -len(Path(rel).suffix)] if Path(rel).suffix else rel
    for ext in IMAGE_EXTENSIONS + tuple(e.upper() for e in IMAGE_EXTENSIONS):
        if (images / (stem + ext)).is_file():
            return stem + ext
    return None


def all_pairs(n: int) -> np.ndarray:
    """Every unordered pair (i < j) of ``n`` items as an int32 (n(n-1)/2, 2) array, row-major."""
    total = n * (n - 1) // 2
    if n >= 2 ** 31:
        raise FroqError(f"{n} images are too many for int32 pair indices")
    out = np.empty((total, 2), dtype=np.int32)
    pos = 0
    for start in range(0, n, PAIR_BLOCK):
        rows = np.arange(start, min(start + PAIR_BLOCK, n), dtype=np.int64)
        counts = n - 1 - rows
        k = int(counts.sum())
        first = np.repeat(rows, counts)
        offsets = np.arange(k) - np.repeat(np.cumsum(counts) - counts, counts)
        out[pos:pos + k, 0] = first
        out[pos:pos + k, 1] = first + 1 + offsets
        pos += k
    return out


def read_adience(root: str | os.PathLike, images: str | os.PathLike | None = None, name: str = "adience",
                 identity: str = "face_id", impostors: str | int = "all", seed: int = 0,
                 missing_images: str = "error") -> PairProtocol:
    """Adience → ``PairProtocol`` (see module doc).

    In: ``root`` (fold files + ``faces/``), ``images`` (the aligned folder; default
    ``<root>/faces``), ``identity`` (``face_id`` as CR-FIQA, or ``user_face`` = user_id and
    face_id together), ``impostors`` (``all`` or a count), ``seed``, ``missing_images``
    (``error``, or ``drop``: leave out listed faces with no file in ``images``, e.g. no face found
    by the aligner — CR-FIQA skipped those too). Pairs are in row-major order of the upper triangle
    over the listed images (fold-file order); ``folds`` is None. All pairs of more than
    ``STREAM_PAIRS`` give an ``AllPairsProtocol`` (mated pairs listed, impostors implicit); a
    sample is drawn without listing all pairs.
    """
    root = Path(root)
    if identity not in IDENTITIES:
        raise FroqError(f"{name}: identity must be one of {', '.join(IDENTITIES)} (got {identity!r})")
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise FroqError(f"{name}: seed must be an integer (got {seed!r})")
    if missing_images not in ("error", "drop"):
        raise FroqError(f"{name}: missing_images must be error or drop (got {missing_images!r})")
    if impostors != "all" and (isinstance(impostors, bool) or not isinstance(impostors, int) or impostors < 1):
        raise FroqError(f"{name}: impostors must be 'all' or a positive count (got {impostors!r})")
    faces = read_folds(root)
    image_dir = Path(images) if images is not None else root / "faces"
    if not image_dir.is_dir():
        raise FroqError(f"{name}: image folder not found: {image_dir}")
    kept, absent = [], []
    for rel, user, face in faces:
        found = _locate(image_dir, rel)
        if found is None:
            absent.append(rel)
        else:
            kept.append((found, user, face))
    if absent:
        msg = (f"{image_dir}: {len(absent)} of {len(faces)} face(s) of the fold files have no image "
               f"(e.g. {', '.join(absent[:3])})")
        if missing_images == "error":
            raise FroqError(msg + " — align the whole faces/ folder, or set missing_images: drop")
        log.warning("%s; left out (missing_images: drop)", msg)
    if len(kept) < 2:
        raise FroqError(f"{name}: fewer than two images to compare")
    paths = [k[0] for k in kept]
    if identity == "face_id":
        ids = np.array([k[2] for k in kept], dtype=np.int64)
    else:
        _, ids = np.unique(np.array([f"{k[1]}\t{k[2]}" for k in kept]), return_inverse=True)
    mated = mated_pairs(ids)
    if not len(mated):
        raise FroqError(f"{name}: no two images share a {identity}: no mated pair")
    info = {"protocol": "all pairs, mated = same " + identity + " (CR-FIQA)", "impostors": impostors,
            "seed": seed, "dropped_images": len(absent)}
    common = dict(name=name, image_root=image_dir, images=paths, folds=None, source=str(root / FOLD_FILES[0]),
                  identities=[str(i) for i in ids.tolist()], info=info)
    n_pairs = len(paths) * (len(paths) - 1) // 2
    if impostors != "all" and impostors < n_pairs - len(mated):
        pairs = with_sampled_impostors(ids, mated, impostors, seed)
        return PairProtocol(pairs=pairs, genuine=ids[pairs[:, 0]] == ids[pairs[:, 1]], **common)
    if n_pairs > streaming.STREAM_PAIRS:
        return AllPairsProtocol(pairs=None, genuine=None, image_ids=ids, mated=mated, **common)
    pairs = all_pairs(len(paths))
    return PairProtocol(pairs=pairs, genuine=ids[pairs[:, 0]] == ids[pairs[:, 1]], **common)
