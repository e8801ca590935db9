"""Session-scoped LFW fixtures shared by the whole test suite (made available by conftest.py).

All of them skip the requesting test (with the reason) when ``../shared/data/lfw`` is absent.
The names and return types are stable; other test files rely on them.

``lfw_root`` → ``Path``
    The LFW folder of the shared data (``images/``, ``pairs.txt``, ``calibration_pool.txt``).
``lfw_pairs`` → ``list[LFWPair]``
    The 1,800 pairs of folds 1–3 of ``pairs.txt`` in file order. ``LFWPair`` is a named tuple
    ``(path1, path2, is_genuine, fold)``: paths relative to the aligned folders below (e.g.
    ``'Abel_Pacheco/Abel_Pacheco_0001.png'``), ``is_genuine`` a bool, ``fold`` 1, 2 or 3.
``lfw_dlib150`` → ``Path``
    A folder of dlib150 chips (150×150 PNG, ``dlib.get_face_chip`` with padding 0.25) of every image
    referenced by ``lfw_pairs``, same relative layout. Made once per session by
    ``preparation.align.align_folder`` with ``select='center'`` (LFW's labelled person
    is the centred face) and ``fallback='center-box'`` (so every pair image has a chip), on up to
    2 processes; ``<folder>/landmarks.csv`` tells which images needed the fallback.
``lfw_calibration_pool_dlib150`` → ``Path``
    The same kind of folder for every image of the people of ``calibration_pool.txt``
    (disjoint from the pairs; 1,549 images).

The aligned folders live in pytest's session temporary folder, or — when the environment
variable ``FROQ_TEST_CACHE`` names a folder — in ``$FROQ_TEST_CACHE/lfw_pairs_dlib150`` and
``$FROQ_TEST_CACHE/lfw_pool_dlib150``, reused across runs (alignment resumes, so a complete
cache costs only a file-existence check; a file lock makes concurrent sessions safe).

Helpers usable without pytest: ``read_lfw_pairs(pairs_txt, ext)`` and ``pair_images(pairs)``.
"""

from __future__ import annotations

import fcntl
import os
from contextlib import contextmanager
from pathlib import Path
from typing import NamedTuple, Sequence

import pytest

from conftest import shared_path

ALIGNED_EXT = ".png"
LFW_ALIGN = {"template": "dlib150", "select": "center", "fallback": "center-box", "ext": "png"}

__all__ = ["LFWPair", "read_lfw_pairs", "pair_images", "lfw_root", "lfw_pairs", "lfw_dlib150",
           "lfw_calibration_pool_dlib150", "lfw_embedding_cache"]


class LFWPair(NamedTuple):
    """One verification pair: two relative image paths, same person or not, fold (1-based)."""

    path1: str
    path2: str
    is_genuine: bool
    fold: int


def _image_name(name: str, number: str, ext: str) -> str:
    return f"{name}/{name}_{int(number):04d}{ext}"


def read_lfw_pairs(pairs_txt: str | os.PathLike, ext: str = ALIGNED_EXT) -> list[LFWPair]:
    """Parse an LFW ``pairs.txt`` (header ``folds<TAB>n``, then per fold n matched and n
    mismatched lines) into ``LFWPair``s with paths ``Name/Name_NNNN<ext>``. Raises ValueError for
    a malformed line."""
    lines = [ln.split() for ln in Path(pairs_txt).read_text().splitlines() if ln.strip()]
    folds, per_fold = int(lines[0][0]), int(lines[0][1])
    body = lines[1:]
    if len(body) != folds * 2 * per_fold:
        raise ValueError(f"{pairs_txt}: expected {folds * 2 * per_fold} pair lines, found {len(body)}")
    pairs = []
    for i, parts in enumerate(body):
        fold = i // (2 * per_fold) + 1
        if len(parts) == 3:
            pairs.append(LFWPair(_image_name(parts[0], parts[1], ext),
                                 _image_name(parts[0], parts[2], ext), True, fold))
        elif len(parts) == 4:
            pairs.append(LFWPair(_image_name(parts[0], parts[1], ext),
                                 _image_name(parts[2], parts[3], ext), False, fold))
        else:
            raise ValueError(f"{pairs_txt}: line {i + 2}: expected 3 or 4 fields, got {parts}")
    return pairs


def pair_images(pairs: Sequence[LFWPair]) -> list[str]:
    """The distinct relative image paths of ``pairs``, sorted."""
    return sorted({p for pair in pairs for p in (pair.path1, pair.path2)})


@contextmanager
def _locked(folder: Path):
    """Exclusive lock on ``<folder>.lock`` (other test sessions wait) for the block's duration."""
    folder.parent.mkdir(parents=True, exist_ok=True)
    with open(str(folder) + ".lock", "w") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def _aligned_folder(tmp_path_factory, name: str, images_dir: Path, rel_sources: list[str]) -> Path:
    """Align ``rel_sources`` of ``images_dir`` with ``LFW_ALIGN`` into a cached or temporary folder."""
    from preparation.align import align_folder

    cache = os.environ.get("FROQ_TEST_CACHE")
    folder = Path(cache) / name if cache else tmp_path_factory.mktemp(name)
    workers = max(1, min(2, os.cpu_count() or 1))
    with _locked(folder):
        summary = align_folder(images_dir, folder, paths=rel_sources, workers=workers,
                               progress=False, **LFW_ALIGN)
    assert summary["unreadable"] == 0, f"unreadable LFW images: {summary['unreadable_files']}"
    return folder


@pytest.fixture(scope="session")
def lfw_root() -> Path:
    """The shared LFW folder (skips the test when ../shared is absent)."""
    return shared_path("data", "lfw")


@pytest.fixture(scope="session")
def lfw_pairs(lfw_root) -> list[LFWPair]:
    """The 1,800 pairs of folds 1–3, paths relative to the aligned folders (``.png``)."""
    return read_lfw_pairs(lfw_root / "pairs.txt", ALIGNED_EXT)


@pytest.fixture(scope="session")
def lfw_dlib150(lfw_root, lfw_pairs, tmp_path_factory) -> Path:
    """Folder of dlib150 chips of every image of ``lfw_pairs`` (made once per session/cache)."""
    sources = [str(Path(p).with_suffix(".jpg").as_posix()) for p in pair_images(lfw_pairs)]
    return _aligned_folder(tmp_path_factory, "lfw_pairs_dlib150", lfw_root / "images", sources)


@pytest.fixture(scope="session")
def lfw_embedding_cache(tmp_path_factory) -> Path:
    """The evaluation's embedding-cache folder shared by the LFW tests of a session (or of every
    session with FROQ_TEST_CACHE): the pair chips are embedded by dlib's ResNet once, not per test."""
    cache = os.environ.get("FROQ_TEST_CACHE")
    return Path(cache) / "evaluation_dlib" if cache else tmp_path_factory.getbasetemp() / "evaluation_dlib"


@pytest.fixture(scope="session")
def lfw_calibration_pool_dlib150(lfw_root, tmp_path_factory) -> Path:
    """Folder of dlib150 chips of every image of the calibration-pool people."""
    from froq.core.images import list_images

    images = lfw_root / "images"
    names = [n.strip() for n in (lfw_root / "calibration_pool.txt").read_text().splitlines() if n.strip()]
    sources = [f"{n}/{rel}" for n in names for rel in list_images(images / n)]
    return _aligned_folder(tmp_path_factory, "lfw_pool_dlib150", images, sources)
