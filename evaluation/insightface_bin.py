"""insightface verification ``.bin`` files (LFW, CFP-FP, CFP-FF, AgeDB-30, CALFW, CPLFW, VGG2-FP).

Such a file is a pickle of ``(images, issame)``: ``images`` a list of encoded JPEG/PNG bytes,
``issame`` a list of bools, one per consecutive image pair (0, 1), (2, 3), ... The pairs are split
into 10 folds in file order. The files come from third parties, so they are read with an unpickler
that refuses to load any class or function: only built-in containers, bytes, strings, numbers and
bools can be built, and nothing can be executed. The images are decoded in memory; ``export_images``
writes the original encoded bytes (no re-encoding) to ``images/%05d.jpg`` so every other stage can
read them as a plain image folder.
"""

from __future__ import annotations

import io
import logging
import os
import pickle
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from froq.core.errors import FroqError
from froq.core.images import decode_rgb
from froq.core.io import atomic_open

log = logging.getLogger(__name__)

N_FOLDS = 10


class _RefuseGlobals(pickle.Unpickler):
    """An unpickler that builds only pickle's native types and refuses every global lookup."""

    def find_class(self, module: str, name: str):  # noqa: D401 - pickle API
        raise _RefusedGlobal(module, name)

    def persistent_load(self, pid):
        raise pickle.UnpicklingError(f"persistent id {pid!r} is not supported")


class _RefusedGlobal(pickle.UnpicklingError):
    def __init__(self, module: str, name: str) -> None:
        super().__init__(f"{module}.{name}")
        self.module = module
        self.name = name


def _describe_global(module: str, name: str) -> str:
    if module.startswith("numpy"):
        return f"a numpy object ({module}.{name}, e.g. a numpy array or numpy bool)"
    if module in ("_codecs", "codecs") and name == "encode":
        return "bytes pickled by Python 3 with protocol < 3 (_codecs.encode)"
    return f"the class/function {module}.{name}"


def safe_unpickle(path: str | os.PathLike):
    """Unpickle ``path`` without loading any class or function; return the object.

    Raises FroqError naming the file when the pickle refers to any global (a class, a function such
    as ``os.system``, a numpy array...), or is not a readable pickle. Python-2 strings are returned
    as bytes (``encoding='bytes'``).
    """
    path = Path(path)
    if not path.is_file():
        raise FroqError(f"insightface .bin file not found: {path}")
    try:
        with open(path, "rb") as fh:
            return _RefuseGlobals(fh, encoding="bytes").load()
    except _RefusedGlobal as exc:
        raise FroqError(
            f"{path}: refused to unpickle: the file contains {_describe_global(exc.module, exc.name)}; "
            "a verification .bin must hold only a tuple (list of encoded image bytes, list of bools) — "
            "re-create it with plain Python types (pickle protocol >= 3)") from None
    except Exception as exc:  # a damaged or non-pickle file raises many types
        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise FroqError(f"{path}: not a readable insightface .bin pickle ({first[:200]})") from None


@dataclass
class BinData:
    """The content of a ``.bin``: encoded images, pair labels and fold ids (one per pair)."""

    path: Path
    images: list[bytes]
    issame: np.ndarray
    folds: np.ndarray

    @property
    def n_pairs(self) -> int:
        return int(self.issame.size)

    def decode(self, index: int) -> Image.Image:
        """Image ``index`` decoded in memory as 8-bit RGB (FroqError naming the file if undecodable)."""
        return decode_image(self.images[index], f"{self.path} image {index}")


def decode_image(data: bytes, what: str) -> Image.Image:
    """Encoded image bytes → PIL RGB image, decoded in memory; FroqError naming ``what`` on failure."""
    try:
        return decode_rgb(io.BytesIO(data))
    except Exception as exc:
        raise FroqError(f"{what}: cannot decode the image bytes ({exc})") from None


def fold_ids(n_pairs: int, n_folds: int = N_FOLDS) -> np.ndarray:
    """Fold id of each pair for ``n_folds`` consecutive folds in file order (the first
    ``n_pairs % n_folds`` folds get one pair more, as an unshuffled k-fold split does)."""
    sizes = [n_pairs // n_folds + (1 if i < n_pairs % n_folds else 0) for i in range(n_folds)]
    return np.repeat(np.arange(n_folds), sizes)


EXPANSION_BOUND = 2  # the exported images may add up to at most this × the .bin's size (+ 1 MiB)


def read_bin(path: str | os.PathLike) -> BinData:
    """Read and check an insightface ``.bin``; return ``BinData``.

    Raises FroqError naming the file if it is not ``(list of bytes, list of bools)`` with two
    images per label, or if it contains anything but plain Python types.
    """
    path = Path(path)
    obj = safe_unpickle(path)
    if not isinstance(obj, (tuple, list)) or len(obj) != 2:
        raise FroqError(f"{path}: expected a pickled pair (images, issame), found "
                        f"{type(obj).__name__}" + (f" of length {len(obj)}" if isinstance(obj, (tuple, list)) else ""))
    images, issame = obj
    if not isinstance(images, (list, tuple)):
        raise FroqError(f"{path}: the images entry must be a list of encoded image bytes, found {type(images).__name__}")
    if not isinstance(issame, (list, tuple)):
        raise FroqError(f"{path}: the issame entry must be a list of bools, found {type(issame).__name__}")
    bad = next((i for i, b in enumerate(images) if not isinstance(b, (bytes, bytearray))), None)
    if bad is not None:
        raise FroqError(f"{path}: image {bad} is a {type(images[bad]).__name__}, expected encoded image bytes")
    bad = next((i for i, v in enumerate(issame) if not (isinstance(v, bool) or (type(v) is int and v in (0, 1)))), None)
    if bad is not None:
        raise FroqError(f"{path}: issame[{bad}] is {issame[bad]!r} ({type(issame[bad]).__name__}), expected a bool")
    if len(images) != 2 * len(issame):
        raise FroqError(f"{path}: {len(images)} images for {len(issame)} pair labels "
                        "(expected exactly two consecutive images per pair)")
    if not issame:
        raise FroqError(f"{path}: holds no pairs")
    total, on_disk = sum(len(b) for b in images), path.stat().st_size
    if total > EXPANSION_BOUND * on_disk + (1 << 20):
        raise FroqError(f"{path}: its {len(images)} images add up to {total / 1e6:.1f} MB from a "
                        f"{on_disk / 1e6:.1f} MB file (repeated references to the same bytes): refused, "
                        f"an export may be at most {EXPANSION_BOUND}x the file size")
    labels = np.array([bool(v) for v in issame], dtype=bool)
    return BinData(path=path, images=[bytes(b) for b in images], issame=labels,
                   folds=fold_ids(labels.size))


def image_names(n_images: int) -> list[str]:
    """Relative file names of the exported images: ``00000.jpg`` ... (at least 5 digits)."""
    width = max(5, len(str(max(n_images - 1, 0))))
    return [f"{i:0{width}d}.jpg" for i in range(n_images)]


def export_images(data: BinData, out_dir: str | os.PathLike) -> list[str]:
    """Write every image of ``data`` to ``out_dir/<index>.jpg`` (the original encoded bytes).

    Files already there with the same bytes are kept; a file with other content raises FroqError
    (the folder belongs to another benchmark). Every image is decoded in memory first so a damaged
    one is reported by index. Out: the relative names, in image order.
    """
    out_dir = Path(out_dir)
    names = image_names(len(data.images))
    written = 0
    for i, (name, blob) in enumerate(zip(names, data.images)):
        target = out_dir / name
        if target.is_file():
            if target.stat().st_size == len(blob) and target.read_bytes() == blob:
                continue
            raise FroqError(f"{target} exists with other content than image {i} of {data.path}: "
                            "export each .bin into its own empty folder")
        decode_image(blob, f"{data.path} image {i}")
        with atomic_open(target, "wb") as fh:
            fh.write(blob)
        written += 1
    if written:
        log.info("%s: exported %d image(s) to %s", data.path.name, written, out_dir)
    return names
