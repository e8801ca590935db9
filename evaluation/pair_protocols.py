"""Verification benchmarks as image lists + pairs: LFW-style ``pairs.txt``, XQLFW, insightface
``.bin`` and a generic CSV.

Every reader returns a ``PairProtocol``: the image folder, the relative image paths (each image once,
in order of first use), the pairs as indices into that list, the genuine flags and the fold id of
each pair (or None). A missing image file is an error naming the protocol file.
"""

from __future__ import annotations

import logging
import os
import posixpath
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np

from froq.core.errors import FroqError
from froq.core.images import IMAGE_EXTENSIONS
from froq.core.io import read_csv

log = logging.getLogger(__name__)


@dataclass
class PairProtocol:
    """A verification benchmark.

    image_root: folder the image paths are relative to. images: relative POSIX paths, unique.
    pairs: (P, 2) int indices into ``images``. genuine: (P,) bool. folds: (P,) int or None.
    source: the protocol file (for messages). identities: each image's identity label, or None when
    the protocol does not tell (bootstrap intervals then resample pairs, not identities).
    info: provenance of a generated protocol (seed, counts), written to run.json.
    """

    name: str
    image_root: Path
    images: list[str]
    pairs: np.ndarray
    genuine: np.ndarray
    folds: np.ndarray | None
    source: str
    identities: list[str] | None = None
    info: dict = field(default_factory=dict)

    @property
    def n_pairs(self) -> int:
        return len(self.genuine)

    @property
    def n_genuine(self) -> int:
        return int(self.genuine.sum())

    @property
    def n_impostor(self) -> int:
        return self.n_pairs - self.n_genuine

    def summary(self) -> str:
        """One line: pairs, genuine/impostor counts, images, folds."""
        folds = f", {len(np.unique(self.folds))} folds" if self.folds is not None else ""
        return (f"{self.name}: {self.n_pairs} pairs ({self.n_genuine} genuine, {self.n_impostor} "
                f"impostor) over {len(self.images)} images{folds}")


def _index_pairs(path_pairs: Sequence[tuple[str, str]]) -> tuple[list[str], np.ndarray]:
    images: list[str] = []
    index: dict[str, int] = {}
    out = np.empty((len(path_pairs), 2), dtype=np.int64)
    for row, pair in enumerate(path_pairs):
        for col, p in enumerate(pair):
            if p not in index:
                index[p] = len(images)
                images.append(p)
            out[row, col] = index[p]
    return images, out


def outside_root(rel: str) -> bool:
    """Whether a path as written (after ``normalise_rel_path``) points outside the image root:
    absolute, or climbing out with ``..``."""
    return rel.startswith("/") or rel == ".." or rel.startswith("../")


def _check_images_exist(root: Path, images: Sequence[str], source: str,
                        allow_outside_root: bool = False) -> None:
    outside = [p for p in images if outside_root(p)]
    if outside and not allow_outside_root:
        raise FroqError(f"{source}: {len(outside)} image path(s) point outside the image folder {root} "
                        f"(e.g. {outside[0]}): fix the pairs, or set allow_outside_root: true in the "
                        "benchmark entry if that is intended")
    missing = [p for p in images if not (root / p).is_file()]
    if missing:
        raise FroqError(f"{source}: {len(missing)} of {len(images)} image(s) not found under {root} "
                        f"(e.g. {', '.join(missing[:3])}) — check the benchmark's images folder")


def _lfw_name(name: str, number: int, ext: str) -> str:
    return f"{name}/{name}_{number:04d}{ext}"


def _number(value: str, path, line_no: int) -> int:
    try:
        return int(value)
    except ValueError:
        raise FroqError(f"{path}:{line_no}: image number {value!r} is not an integer") from None


def _detect_extension(root: Path, name: str, number: int, source: str) -> str:
    for ext in IMAGE_EXTENSIONS + tuple(e.upper() for e in IMAGE_EXTENSIONS):
        if (root / _lfw_name(name, number, ext)).is_file():
            return ext
    raise FroqError(f"{source}: no image file {name}/{name}_{number:04d}.<ext> under {root} "
                    f"(tried {', '.join(IMAGE_EXTENSIONS)}) — check the benchmark's images folder")


def parse_lfw_pairs(path: str | os.PathLike) -> tuple[list[tuple[str, int, str, int]], list[bool], np.ndarray | None]:
    """Parse an LFW-format pairs file without touching images.

    In: a file whose first line is ``F<TAB>N`` (F folds of N matched then N mismatched lines) or a
    bare count ``N`` (one block), then matched lines ``name i j`` and mismatched lines
    ``name1 i name2 j`` (tabs or spaces). Out: ``(pairs as (name1, i, name2, j), genuine flags,
    fold ids or None for a bare count)``. FroqError naming file and line for a malformed file.
    """
    path = Path(path)
    if not path.is_file():
        raise FroqError(f"pairs file not found: {path}")
    with open(path, encoding="utf-8") as fh:
        lines = [(no, ln.split()) for no, ln in enumerate(fh, start=1)]
    lines = [(no, f) for no, f in lines if f]
    if not lines:
        raise FroqError(f"{path}: empty pairs file")
    head_no, head = lines[0]
    try:
        numbers = [int(v) for v in head]
    except ValueError:
        raise FroqError(f"{path}:{head_no}: expected a header 'folds<TAB>pairs per fold' or a pair count, "
                        f"found {' '.join(head)!r}") from None
    if len(numbers) == 2:
        n_folds, per_fold = numbers
        expected = n_folds * 2 * per_fold
    elif len(numbers) == 1:
        n_folds, per_fold = None, numbers[0]
        expected = 2 * per_fold
    else:
        raise FroqError(f"{path}:{head_no}: header must be 'folds<TAB>pairs per fold' or a pair count")
    body = lines[1:]
    if len(body) != expected:
        raise FroqError(f"{path}: header {' '.join(head)!r} announces {expected} pair lines, found {len(body)}")
    pairs, genuine = [], []
    for no, f in body:
        if len(f) == 3:
            pairs.append((f[0], _number(f[1], path, no), f[0], _number(f[2], path, no)))
            genuine.append(True)
        elif len(f) == 4:
            pairs.append((f[0], _number(f[1], path, no), f[2], _number(f[3], path, no)))
            genuine.append(False)
        else:
            raise FroqError(f"{path}:{no}: expected 'name i j' or 'name1 i name2 j', found {len(f)} fields")
    folds = None
    if n_folds is not None:
        folds = np.repeat(np.arange(n_folds), 2 * per_fold)
    return pairs, genuine, folds


def read_lfw_pairs(images_dir: str | os.PathLike, pairs_file: str | os.PathLike, name: str = "lfw") -> PairProtocol:
    """LFW-format ``pairs.txt`` over a folder ``name/name_%04d.<ext>`` → ``PairProtocol``.

    The extension is the one found for the first image (all must share it). FroqError naming the
    pairs file if the format is wrong or an image is missing.
    """
    root = Path(images_dir)
    source = str(pairs_file)
    if not root.is_dir():
        raise FroqError(f"{source}: image folder not found: {root}")
    raw, genuine, folds = parse_lfw_pairs(pairs_file)
    ext = _detect_extension(root, raw[0][0], raw[0][1], source)
    path_pairs = [(_lfw_name(n1, i, ext), _lfw_name(n2, j, ext)) for n1, i, n2, j in raw]
    images, idx = _index_pairs(path_pairs)
    _check_images_exist(root, images, source)
    return PairProtocol(name=name, image_root=root, images=images, pairs=idx,
                        genuine=np.asarray(genuine, dtype=bool), folds=folds, source=source,
                        identities=[p.split("/", 1)[0] for p in images])


def read_xqlfw(root: str | os.PathLike | None = None, images_dir=None, pairs_file=None,
               name: str = "xqlfw") -> PairProtocol:
    """XQLFW: ``xqlfw_pairs.txt`` (LFW format) over ``xqlfw_aligned_112/``; both default to inside ``root``."""
    if root is not None:
        root = Path(root)
        images_dir = images_dir or root / "xqlfw_aligned_112"
        pairs_file = pairs_file or root / "xqlfw_pairs.txt"
    if images_dir is None or pairs_file is None:
        raise FroqError("xqlfw benchmark: give 'root' (holding xqlfw_aligned_112/ and xqlfw_pairs.txt) "
                        "or both 'images' and 'pairs'")
    return read_lfw_pairs(images_dir, pairs_file, name=name)


_TRUE = {"1", "true", "yes", "genuine", "same", "mated"}
_FALSE = {"0", "false", "no", "impostor", "different", "nonmated"}


def read_pairs_csv(images_dir: str | os.PathLike, csv_file: str | os.PathLike, name: str = "pairs",
                   allow_outside_root: bool = False, identity_from_folder: bool = False) -> PairProtocol:
    """Generic CSV ``path1,path2,genuine[,fold]`` (paths relative to ``images_dir``; genuine 1/0 or
    true/false) → ``PairProtocol``. With ``identity_from_folder`` each image's identity is the first
    folder of its path (``Name/x.jpg`` → ``Name``). FroqError naming file and line for a bad row or
    missing image."""
    root = Path(images_dir)
    source = str(csv_file)
    if not root.is_dir():
        raise FroqError(f"{source}: image folder not found: {root}")
    rows = read_csv(csv_file, required=("path1", "path2", "genuine"))
    if not rows:
        raise FroqError(f"{source}: no pairs")
    has_fold = "fold" in rows[0]
    path_pairs, genuine, folds = [], [], []
    for line_no, row in enumerate(rows, start=2):
        g = str(row["genuine"]).strip().lower()
        if g in _TRUE:
            genuine.append(True)
        elif g in _FALSE:
            genuine.append(False)
        else:
            raise FroqError(f"{source}:{line_no}: genuine must be 1/0 or true/false (found {row['genuine']!r})")
        path_pairs.append((normalise_rel_path(row["path1"]), normalise_rel_path(row["path2"])))
        if has_fold:
            try:
                folds.append(int(row["fold"]))
            except (TypeError, ValueError):
                raise FroqError(f"{source}:{line_no}: fold must be an integer (found {row['fold']!r})") from None
    images, idx = _index_pairs(path_pairs)
    _check_images_exist(root, images, source, allow_outside_root)
    identities = None
    if identity_from_folder:
        flat = [p for p in images if "/" not in p]
        if flat:
            raise FroqError(f"{source}: identity: folder needs paths 'Identity/file', but {flat[0]!r} has no folder")
        identities = [p.split("/", 1)[0] for p in images]
    return PairProtocol(name=name, image_root=root, images=images, pairs=idx,
                        genuine=np.asarray(genuine, dtype=bool),
                        folds=np.asarray(folds, dtype=np.int64) if has_fold else None, source=source,
                        identities=identities)


def read_insightface_bin(bin_file: str | os.PathLike, export_dir: str | os.PathLike, name: str = "bin") -> PairProtocol:
    """insightface ``.bin`` → ``PairProtocol`` over its images exported to ``export_dir`` (written
    if absent; see ``evaluation.insightface_bin.export_images``). Pairs are images (2i, 2i+1)."""
    from evaluation.insightface_bin import export_images, read_bin

    data = read_bin(bin_file)
    names = export_images(data, export_dir)
    pairs = np.arange(len(names), dtype=np.int64).reshape(-1, 2)
    return PairProtocol(name=name, image_root=Path(export_dir), images=names, pairs=pairs,
                        genuine=data.issame.copy(), folds=data.folds.copy(), source=str(bin_file))


def normalise_rel_path(p: str) -> str:
    """A path as written in a CSV → the key that names its image: exactly as written (spaces and
    backslashes are part of a POSIX file name) except redundant ``./`` and ``//`` (``./a//b.jpg``
    → ``a/b.jpg``). Two spellings of one image in one file are an error where they are read."""
    p = str(p)
    return posixpath.normpath(p) if p else p
