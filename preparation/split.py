"""Identity split of aligned photos and evenly spaced subsampling of a calibration set.

The rules behind ``./run.sh --photos`` (``froq.pipeline``), as plain functions:

``identity_of(rel)`` (from ``froq.core.images``)
    The identity of an image = its parent folder, relative and POSIX (``'Ann/Ann_0001.png'`` →
    ``'Ann'``, ``'a/b/x.png'`` → ``'a/b'``); ``''`` for an image at the top level. The calibration
    builder (``preparation.calibration``) maps the same identities to ``id_XXXX`` folders.
``choose_calibration(rels, mode, every, ids)``
    Which images become calibration sources: ``mode='split'`` takes the identities listed in the
    ``ids`` file (one folder name a line) when given; otherwise 1 in ``every`` identities (sorted by
    name, starting with the first) when there are at least two named identities, else 1 in
    ``every`` images (sorted). ``'all-target'``: none; ``'all-calibration'``: all.
``evenly_spaced(items, cap)``
    At most ``cap`` items, evenly spaced over the list: ``items[(i * n) // cap]`` for
    ``i < cap`` (all of them when ``n <= cap``). Sorted input gives sorted output.
``split_aligned(aligned, split, ...)``
    Symlinks the images of ``aligned`` into ``split/calibration`` (capped by ``evenly_spaced``;
    sources over the cap are neither calibrated on nor scored) and ``split/target``.
``subsample_folder(src, n, dst)``
    A view of at most ``n`` evenly spaced images of ``src`` as symlinks in ``dst``.

Paths are the relative POSIX paths of ``froq.core.images.list_images`` (sorted, recursive).
"""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Sequence, TypeVar

from froq.core.errors import FroqError
from froq.core.images import identity_of, list_images

T = TypeVar("T")

MODES = ("split", "all-target", "all-calibration")
PARTS = ("calibration", "target")


def read_identity_list(path: str | os.PathLike) -> set[str]:
    """Identity folder names of a text file, one a line (blank lines ignored, spaces stripped)."""
    try:
        with open(path, encoding="utf-8") as fh:
            return {line.strip() for line in fh if line.strip()}
    except FileNotFoundError:
        raise FroqError(f"calibration identities file not found: {path}") from None
    except UnicodeDecodeError:
        raise FroqError(f"{path}: not UTF-8 text: expected identity folder names, one a line") from None


def evenly_spaced(items: Sequence[T], cap: int) -> list[T]:
    """At most ``cap`` of ``items``, evenly spaced: ``items[(i * len(items)) // cap]``, i < cap.

    All items (in order) when there are no more than ``cap``. Raises FroqError for ``cap < 1``.
    """
    if cap < 1:
        raise FroqError(f"the calibration cap must be at least 1 (got {cap})")
    n = len(items)
    if n <= cap:
        return list(items)
    return [items[(i * n) // cap] for i in range(cap)]


def choose_calibration(rels: Sequence[str], mode: str = "split", every: int = 4,
                       ids: str | os.PathLike | None = None) -> tuple[set[str], str]:
    """The calibration sources among ``rels`` (sorted relative paths) and the rule, in words.

    Out: ``(set of rels, rule)``; the other images are targets (see the module docstring).
    """
    if mode not in MODES:
        raise FroqError(f"unknown split mode {mode!r}: use one of {', '.join(MODES)}")
    if mode == "all-target":
        return set(), "all photos are targets (--calibration given)"
    if mode == "all-calibration":
        return set(rels), "all photos are calibration sources (--target given)"
    if ids:
        wanted = read_identity_list(ids)
        return {r for r in rels if identity_of(r) in wanted}, f"identities listed in {ids}"
    if every < 1:
        raise FroqError(f"--every must be at least 1 (got {every})")
    names = sorted({identity_of(r) for r in rels})
    if len([n for n in names if n]) >= 2:
        chosen = {n for i, n in enumerate(names) if i % every == 0}
        return ({r for r in rels if identity_of(r) in chosen},
                f"1 in {every} identity folders (sorted by name) to calibration")
    return {r for i, r in enumerate(rels) if i % every == 0}, f"1 in {every} images (sorted) to calibration"


@dataclass
class SplitResult:
    """What ``split_aligned`` did: the folders, the counts and the rule."""

    calibration_dir: Path
    target_dir: Path
    calibration: int        # calibration sources linked (after the cap)
    target: int             # target images linked
    pool: int               # calibration sources before the cap
    cap: int
    rule: str

    def summary_line(self) -> str:
        """One human line, e.g. ``split (1 in 4 identity folders ...): 3 calibration sources, 9 targets``."""
        capped = (f" ({self.cap} of {self.pool}, evenly spaced: --max-calibration)"
                  if self.pool > self.cap else "")
        return (f"split ({self.rule}): {self.calibration} calibration sources{capped}, "
                f"{self.target} targets")


def link_images(src_root: str | os.PathLike, rels: Iterable[str], dst_root: str | os.PathLike) -> int:
    """Symlink ``src_root/rel`` (resolved) to ``dst_root/rel`` for every rel. Out: the count."""
    src_root, dst_root = Path(src_root), Path(dst_root)
    n = 0
    for rel in rels:
        dst = dst_root / rel
        dst.parent.mkdir(parents=True, exist_ok=True)
        os.symlink((src_root / rel).resolve(), dst)
        n += 1
    return n


def split_aligned(aligned: str | os.PathLike, split: str | os.PathLike, mode: str = "split",
                  every: int = 4, ids: str | os.PathLike | None = None, cap: int = 300) -> SplitResult:
    """Symlink the aligned photos into ``split/calibration`` (at most ``cap``, evenly spaced) and
    ``split/target``; earlier contents of those two folders are removed first.

    Raises FroqError when ``aligned`` holds no image, and in ``mode='split'`` when the split gives
    fewer than 3 calibration sources or no target (the links made are left in place).
    """
    aligned, split = Path(aligned), Path(split)
    try:
        rels = list_images(aligned)
    except FroqError as exc:
        raise FroqError(f"no aligned face to use: {exc} (no face found in the photos?)") from None
    calib, rule = choose_calibration(rels, mode, every, ids)
    pool = [r for r in rels if r in calib]
    kept = set(evenly_spaced(pool, cap))
    for part in PARTS:
        if (split / part).exists():
            shutil.rmtree(split / part)
    # sources over the cap are neither calibrated on nor scored
    n_cal = link_images(aligned, [r for r in rels if r in kept], split / "calibration")
    n_target = link_images(aligned, [r for r in rels if r not in calib], split / "target")
    if mode == "split" and (n_cal < 3 or n_target == 0):
        raise FroqError(f"splitting {aligned} ({rule}) gives {n_cal} calibration and {n_target} "
                        "target images: pass more photos, --calibration-ids or --every")
    return SplitResult(split / "calibration", split / "target", n_cal, n_target, len(pool), cap, rule)


def subsample_folder(src: str | os.PathLike, n: int, dst: str | os.PathLike) -> tuple[Path, int]:
    """At most ``n`` evenly spaced images of ``src``: ``src`` itself when it has no more than ``n``,
    else a fresh folder ``dst`` of symlinks (its earlier contents are removed).

    Out: ``(folder to use, number of images in src)``. Raises FroqError when ``src`` has no image.
    """
    src, dst = Path(src), Path(dst)
    rels = list_images(src)
    if len(rels) <= n:
        return src, len(rels)
    pick = evenly_spaced(rels, n)
    if dst.exists():
        shutil.rmtree(dst)
    link_images(src, pick, dst)
    return dst, len(rels)
