"""The one image-folder reader of the toolkit, and the per-model preprocessing.

``list_images`` finds images recursively in a deterministic order; ``ImageFolder`` is the torch
Dataset every stage uses: it turns each file into a preprocessed tensor, and an unreadable file into
a recorded failure (never a crash, never silently dropped). ``collate_images`` batches the readable
ones and carries the failures along so the stage can warn and list them in its summary.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Sequence

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

from froq.core.errors import FroqError, first_line
from froq.core.io import require_regular_file

log = logging.getLogger(__name__)

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".webp")
# the only decoders ever used: a file is opened by Pillow only when its bytes are one of these
# (whatever its extension says); anything else is unreadable (skipped and listed)
ALLOWED_FORMATS = ("JPEG", "PNG", "BMP", "WEBP")
# decompression-bomb bound: width × height above this is refused before any pixel is decoded
MAX_PIXELS = 64_000_000


def printable(name: str) -> str:
    """A file name as text that can always be printed and written (undecodable bytes as \\xNN)."""
    return name.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")


#: the reason given for an image whose file name cannot go into a UTF-8 CSV row (listed, not read)
NOT_UTF8 = "file name is not valid UTF-8: rename the file"


def valid_utf8(name: str) -> bool:
    """Whether a file name (as the OS gave it) is valid UTF-8 and so can go into a CSV row."""
    try:
        name.encode("utf-8")
        return True
    except UnicodeEncodeError:
        return False


def list_images(root: str | os.PathLike, failures: "FailureLog | None" = None) -> list[str]:
    """Relative POSIX paths of every image below ``root`` (recursive, sorted, any-case extension).

    In: a folder, and optionally a FailureLog that receives each sub-folder that cannot be read
    (permissions, a path longer than the OS allows). Out: e.g. ``['Name/Name_0001.jpg', ...]``.
    Hidden files and folders are skipped; symlinked folders are followed, but a folder reached
    twice (a symlink loop) is searched once. Raises FroqError if ``root`` is not a folder or holds
    no image.
    """
    root = Path(root)
    if not root.is_dir():
        raise FroqError(f"image folder not found: {root}")
    found = []
    seen: set[str] = set()  # real paths of visited folders: a symlink loop is walked only once

    def unreadable_folder(exc: OSError) -> None:
        where = printable(os.path.relpath(exc.filename, root)) if exc.filename else str(root)
        reason = f"folder cannot be read ({exc.strerror or exc}); its images are not scored"
        if failures is not None:
            failures.add(where + "/", reason)
        else:
            log.warning("%s: %s: %s", root, where, reason)

    for dirpath, dirnames, filenames in os.walk(root, followlinks=True, onerror=unreadable_folder):
        real = os.path.realpath(dirpath)
        if real in seen:
            log.warning("%s: skipping %s (a symlink to a folder already searched)", root,
                        Path(dirpath).relative_to(root).as_posix())
            dirnames[:] = []
            continue
        seen.add(real)
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        for name in filenames:
            if name.startswith(".") or not name.lower().endswith(IMAGE_EXTENSIONS):
                continue
            found.append(Path(dirpath, name).relative_to(root).as_posix())
    found.sort()
    if not found:
        raise FroqError(f"no images ({', '.join(IMAGE_EXTENSIONS)}) found in {root}: "
                        "point the config at a folder of aligned face images")
    return found


def identity_of(rel: str) -> str:
    """The identity of an image = its parent folder (relative, POSIX; '' at the top level)."""
    parent = PurePosixPath(rel).parent.as_posix()
    return "" if parent == "." else parent


def read_image_list(list_file: str | os.PathLike) -> list[str]:
    """Relative image paths from a list file (one per line, relative to the images' root), sorted:
    the input of a stage at scale instead of walking a tree (``dataset.list`` / ``target_list``).

    In: the text file (UTF-8; blank lines and ``#`` comments skipped). Out: sorted POSIX paths.
    FroqError naming the file and line for an absolute path, a path leaving the root (``..``), a
    repeated path, or a file without any path.
    """
    list_file = Path(list_file)
    if not list_file.is_file():
        raise FroqError(f"image list not found: {list_file}")
    seen: set[str] = set()
    try:
        with open(list_file, encoding="utf-8") as fh:
            for number, line in enumerate(fh, start=1):
                rel = line.strip()
                if not rel or rel.startswith("#"):
                    continue
                rel = rel.replace("\\", "/")
                parts = rel.split("/")
                if rel.startswith("/") or ".." in parts or (len(rel) > 1 and rel[1] == ":"):
                    raise FroqError(f"{list_file}:{number}: {rel!r} is not a path relative to the "
                                    "images' root (absolute or with '..'): list paths below the root")
                rel = "/".join(p for p in parts if p not in ("", "."))
                if rel in seen:
                    raise FroqError(f"{list_file}:{number}: {rel!r} is listed twice")
                seen.add(rel)
    except UnicodeDecodeError:
        raise FroqError(f"{list_file}: not a UTF-8 text file of image paths") from None
    if not seen:
        raise FroqError(f"{list_file}: lists no image path (one relative path per line)")
    return sorted(seen)


# what any read of an image file can raise; every reader turns these into an "unreadable" row
READ_ERRORS = (OSError, ValueError, UnidentifiedImageError, Image.DecompressionBombError)


def load_rgb(path: str | os.PathLike) -> Image.Image:
    """Open an image as 8-bit RGB (grayscale, RGBA, palette, 16-bit and CMYK are converted).

    Only regular files whose content is JPEG, PNG, BMP or WebP are opened (``ALLOWED_FORMATS``;
    never a pipe, device or socket, never another decoder), and only up to ``MAX_PIXELS``.
    Raises OSError/ValueError for anything else; the reader records those as unreadable.
    """
    require_regular_file(path)
    return decode_rgb(path)


def read_image_size(path: str | os.PathLike) -> tuple[int, int] | None:
    """(width, height) of an image file from its header, without decoding its pixels; None when it
    cannot be read (not a regular file, not one of ``ALLOWED_FORMATS``)."""
    try:
        require_regular_file(path)
        with Image.open(path, formats=ALLOWED_FORMATS) as img:
            return img.size
    except READ_ERRORS:
        return None


def decode_rgb(source) -> Image.Image:
    """``load_rgb``'s decoding of an opened image: a path or a binary file object (e.g. the bytes
    of a RecordIO record in ``io.BytesIO``) → 8-bit RGB, with the same allowed formats and pixel
    limit. Raises OSError/ValueError for anything else."""
    with Image.open(source, formats=ALLOWED_FORMATS) as img:
        if img.width * img.height > MAX_PIXELS:
            raise ValueError(f"{img.width}x{img.height} pixels is above the {MAX_PIXELS:,}-pixel "
                             "limit (a decompression bomb or not a face photo): not decoded")
        img.load()
        if img.mode in ("I;16", "I;16B", "I;16L", "I;16N", "I"):
            arr = np.asarray(img, dtype=np.float64)
            top = 65535.0 if arr.max() > 255 else 255.0
            img = Image.fromarray(np.clip(arr / top * 255.0 + 0.5, 0, 255).astype(np.uint8))
        elif img.mode == "F":
            arr = np.asarray(img, dtype=np.float64)
            top = 1.0 if arr.max() <= 1.0 else 255.0
            img = Image.fromarray(np.clip(arr / top * 255.0 + 0.5, 0, 255).astype(np.uint8))
        if img.mode in ("RGBA", "LA", "PA") or (img.mode == "P" and "transparency" in img.info):
            rgba = img.convert("RGBA")
            background = Image.new("RGB", rgba.size, (0, 0, 0))
            background.paste(rgba, mask=rgba.getchannel("A"))
            return background
        return img.convert("RGB")


@dataclass(frozen=True)
class Preprocess:
    """How an FR model wants its input: ``x = (pixel/255 − mean) / std``, then a channel permutation.

    size: (height, width) the image is resized to (bilinear) if it differs.
    mean, std: per RGB channel, in [0, 1] units (torchvision's convention), applied before the
      permutation. channels: the permutation of RGB, e.g. [2, 1, 0] = BGR; [2, 0, 1] = the
      official FROQ quirk.
    """

    size: tuple[int, int] = (112, 112)
    mean: tuple[float, float, float] = (0.5, 0.5, 0.5)
    std: tuple[float, float, float] = (0.5, 0.5, 0.5)
    channels: tuple[int, int, int] = (0, 1, 2)

    @staticmethod
    def from_config(cfg: dict, source: str = "preprocess") -> "Preprocess":
        """Build from a config mapping ``{size, mean, std, channels}`` (scalars broadcast to 3)."""
        def triple(key, default, kind=float):
            v = cfg.get(key, default)
            if isinstance(v, (int, float)) and not isinstance(v, bool):
                v = [v] * 3
            if not isinstance(v, (list, tuple)) or len(v) != 3:
                raise FroqError(f"{source}: preprocess.{key}: expected 3 numbers (got {v!r})")
            try:
                return tuple(kind(x) for x in v)
            except (TypeError, ValueError):
                raise FroqError(f"{source}: preprocess.{key}: expected 3 numbers (got {v!r})") from None

        size = cfg.get("size", 112)
        if isinstance(size, int) and not isinstance(size, bool):
            size = (size, size)
        if not (isinstance(size, (list, tuple)) and len(size) == 2 and all(isinstance(s, int) and s > 0 for s in size)):
            raise FroqError(f"{source}: preprocess.size: expected an integer or [height, width] (got {size!r})")
        channels = triple("channels", (0, 1, 2), int)
        if sorted(channels) != [0, 1, 2]:
            raise FroqError(f"{source}: preprocess.channels: must be a permutation of [0, 1, 2] (got {list(channels)})")
        std = triple("std", (0.5, 0.5, 0.5))
        if any(s == 0 for s in std):
            raise FroqError(f"{source}: preprocess.std: must not be 0")
        return Preprocess(size=tuple(size), mean=triple("mean", (0.5, 0.5, 0.5)), std=std,
                          channels=channels)

    def to_config(self) -> dict:
        """The inverse of ``from_config`` (for saving provenance)."""
        return {"size": list(self.size), "mean": list(self.mean), "std": list(self.std),
                "channels": list(self.channels)}

    def to_uint8(self, img: Image.Image) -> torch.Tensor:
        """PIL RGB image → resized uint8 tensor (3, H, W) in RGB order (no normalisation).

        A resize that changes the aspect ratio (faces squashed, e.g. 112×112 chips for a 96×112
        model) is warned about once per process and model input size."""
        h, w = self.size
        if img.size != (w, h):
            if abs(img.width * h - w * img.height) > 0.01 * img.width * h:
                _warn_aspect_once(img.size, (w, h))
            img = img.resize((w, h), Image.BILINEAR)
        arr = np.asarray(img, dtype=np.uint8)
        return torch.from_numpy(arr.copy()).permute(2, 0, 1)

    def normalize(self, rgb_uint8: torch.Tensor) -> torch.Tensor:
        """uint8 RGB tensor (..., 3, H, W) → float32 model input (mean/std, then permutation)."""
        x = rgb_uint8.to(torch.float32) / 255.0
        mean = torch.tensor(self.mean, dtype=torch.float32, device=x.device).view(3, 1, 1)
        std = torch.tensor(self.std, dtype=torch.float32, device=x.device).view(3, 1, 1)
        x = (x - mean) / std
        return x[..., list(self.channels), :, :]

    def __call__(self, img: Image.Image) -> torch.Tensor:
        """PIL RGB image → float32 model input (3, H, W)."""
        return self.normalize(self.to_uint8(img))

    def black_value(self) -> torch.Tensor:
        """The model-input value of a black pixel, shape (3, 1, 1) in model channel order."""
        mean = torch.tensor(self.mean, dtype=torch.float32).view(3, 1, 1)
        std = torch.tensor(self.std, dtype=torch.float32).view(3, 1, 1)
        return ((0.0 - mean) / std)[list(self.channels)]


_ASPECT_WARNED: set[tuple[int, int]] = set()


def _warn_aspect_once(image_size: tuple[int, int], model_size: tuple[int, int]) -> None:
    """One warning per model input size (width, height) that images of another aspect ratio are
    squashed to it."""
    if model_size in _ASPECT_WARNED:
        return
    _ASPECT_WARNED.add(model_size)
    log.warning("images of %dx%d (width x height) are resized to the model's %dx%d, which changes "
                "their aspect ratio (faces are squashed): align them for this model (its FR config's "
                "'alignment'; preparation/align.py --fr CONFIG) (said once)", *image_size, *model_size)


class ImageFolder(torch.utils.data.Dataset):
    """Images of a folder (or an explicit list of relative paths) as preprocessed tensors.

    ``dataset[i]`` → ``(i, tensor or None, error message or None)``; pass ``collate_images`` as
    the DataLoader's ``collate_fn``. ``raw=True`` yields uint8 RGB tensors (resized, not
    normalised) for methods that perturb pixels themselves.
    """

    def __init__(self, root: str | os.PathLike, preprocess: Preprocess,
                 paths: Sequence[str] | None = None, raw: bool = False) -> None:
        self.root = Path(root)
        self.paths = list(paths) if paths is not None else list_images(self.root)
        self.preprocess = preprocess
        self.raw = raw

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int):
        path = self.root / self.paths[index]
        try:
            img = load_rgb(path)
            tensor = self.preprocess.to_uint8(img)
            if not self.raw:
                tensor = self.preprocess.normalize(tensor)
            return index, tensor, None
        except READ_ERRORS as exc:
            return index, None, first_line(exc, limit=None)


@dataclass
class Batch:
    """A batch from ``ImageFolder``: dataset indices and tensors of the readable images, and the
    ``(index, reason)`` of the unreadable ones."""

    indices: list[int]
    images: torch.Tensor | None
    failures: list[tuple[int, str]] = field(default_factory=list)


def collate_images(items) -> Batch:
    """DataLoader collate_fn for ``ImageFolder``: stack readable images, keep failures aside."""
    good = [(i, t) for i, t, err in items if err is None]
    bad = [(i, err) for i, t, err in items if err is not None]
    images = torch.stack([t for _, t in good]) if good else None
    return Batch(indices=[i for i, _ in good], images=images, failures=bad)


def image_loader(dataset: ImageFolder, batch_size: int, num_workers: int = 0,
                 device: torch.device | None = None,
                 batches: Sequence[Sequence[int]] | None = None) -> torch.utils.data.DataLoader:
    """A DataLoader over ``dataset`` in file order, with ``collate_images`` and pinned memory on CUDA;
    ``batches`` (lists of dataset indices) fixes each batch's members instead of ``batch_size``."""
    pin = bool(device is not None and device.type == "cuda")
    if batches is not None:
        return torch.utils.data.DataLoader(
            dataset, batch_sampler=[list(b) for b in batches], num_workers=num_workers,
            collate_fn=collate_images, pin_memory=pin, persistent_workers=False)
    return torch.utils.data.DataLoader(
        dataset, batch_size=batch_size, shuffle=False, num_workers=num_workers,
        collate_fn=collate_images, pin_memory=pin, persistent_workers=False)


class FailureLog:
    """Collects unreadable images of a stage: warns about each of the first ``WARN_EACH`` files, then
    once that the rest are only counted (the stage's summary line gives the count, its meta file or
    rows list every one), and summarises at the end."""

    WARN_EACH = 20

    def __init__(self, stage: str) -> None:
        self.stage = stage
        self.items: list[tuple[str, str]] = []

    def add(self, path: str, reason: str) -> None:
        """Record one unreadable file (warned about while fewer than ``WARN_EACH`` were)."""
        path = printable(path)
        self.items.append((path, reason))
        if len(self.items) <= self.WARN_EACH:
            log.warning("%s: skipped unreadable image %s (%s)", self.stage, path, reason)
        if len(self.items) == self.WARN_EACH:
            log.warning("%s: %d unreadable images so far; further ones are not warned about one by one "
                        "(the summary counts them; the output's meta file or rows list each with its "
                        "reason)", self.stage, self.WARN_EACH)

    def summary(self) -> str:
        """One line: how many were skipped, and which (first few)."""
        if not self.items:
            return "no unreadable images"
        names = ", ".join(p for p, _ in self.items[:5]) + (" ..." if len(self.items) > 5 else "")
        return f"{len(self.items)} unreadable image(s) skipped: {names}"


JPEG_QUALITY = 95  # every JPEG the toolkit writes (aligned chips, calibration variants)


def save_rgb(arr: np.ndarray, path: str | os.PathLike) -> None:
    """The one image writer: an RGB uint8 array (H, W, 3) to ``path``, atomically (temporary file +
    rename; no fsync, for speed). The format follows the suffix: JPEG at quality ``JPEG_QUALITY``,
    PNG (lossless, compression level 1), BMP, WebP (lossless); another suffix gets PNG content.
    """
    path = Path(path)
    fmt = {".jpg": "JPEG", ".jpeg": "JPEG", ".png": "PNG", ".bmp": "BMP", ".webp": "WEBP"}.get(
        path.suffix.lower(), "PNG")
    kwargs = {"JPEG": {"quality": JPEG_QUALITY}, "WEBP": {"lossless": True},
              "PNG": {"compress_level": 1}}.get(fmt, {})
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        Image.fromarray(arr).save(tmp, format=fmt, **kwargs)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
