"""Finished pseudo-labels, found again: a content-addressed cache shared by every run of the machine.

Pseudo-labels are the slow stage (~76 forward passes per image). Once computed, they are stored
under ``${FROQ_CACHE:-~/.cache/froq}/labels/<fingerprint>.csv`` with ``<fingerprint>.meta.json``
beside it, and any later run — ``./run.sh`` again, another ``--out``, the labels stage on its own —
that asks for the labels of the same images with the same model and settings copies them instead
of computing them.

The fingerprint (sha256) covers everything the labels depend on:

- the images: every relative path under the calibration folder with the **sha256 of the file's
  bytes** (a rebuilt but identical calibration set hits; a changed, added, removed or renamed image
  misses; the folder's own location does not matter);
- the FR model: architecture, model kwargs, weights sha256 and preprocessing
  (``face_recognition_model.loading.network_identity``, the part of ``FRModel.identity`` that the
  stages compare); a model without a weights file (random or generated weights) is never cached;
- the label settings: noise strengths α, noise draws K, occlusion cell, seed, the channels-last
  memory format and fp16 autocast (both change numbers in the last digits), as the stage's own
  resume key. ``forward_batch`` and ``batch_size`` are speed knobs and are not part of it.

A hit is verified before use: the meta file must carry the same fingerprint inputs and the sha256 of
the CSV, so a torn or edited entry is ignored (and recomputed). Entries are written atomically
(CSV first, then the meta that vouches for it); concurrent runs at worst compute the same labels
twice. ``FROQ_CACHE=`` (empty) or ``FROQ_CACHE=off`` disables the cache.
"""

from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Mapping, Sequence

import numpy as np

from face_recognition_model.loading import network_identity
from froq.core.errors import FroqError
from froq.core.images import FailureLog, list_images
from froq.core.io import fingerprint, read_csv, read_json, sha256_file, write_csv, write_json
from froq.core.runner import RunResult

log = logging.getLogger(__name__)

FORMAT = "froq-labels-cache/1"
CACHE_ENV = "FROQ_CACHE"


def cache_folder() -> Path | None:
    """``$FROQ_CACHE/labels`` (default ``~/.cache/froq/labels``); None when the cache is switched
    off (``FROQ_CACHE`` set to '' or ``off``)."""
    value = os.environ.get(CACHE_ENV)
    if value is None:
        return Path.home() / ".cache" / "froq" / "labels"
    if value.strip() in ("", "off"):
        return None
    return Path(value) / "labels"


@dataclass
class LabelsKey:
    """What a set of pseudo-labels depends on (module doc) and its fingerprint (hex sha256)."""

    model: dict
    settings: dict
    images: list[list[str]]   # [relative path, sha256 of the file's bytes] in folder order
    fingerprint: str

    def record(self) -> dict:
        """The JSON-able inputs (written to the meta file and compared on a hit)."""
        return {"model": self.model, "settings": self.settings,
                "images": len(self.images), "images_sha256": fingerprint(self.images)}


def labels_key(fr, root: str | os.PathLike, settings: Mapping) -> LabelsKey | None:
    """The cache key of the labels of every image of ``root`` with model ``fr`` (an ``FRModel``)
    and ``settings`` (a JSON-able mapping of the label settings, e.g. ``LabelSettings`` fields
    without ``forward_batch``). Out: None when the model has no weights identity or the folder
    cannot be listed (then nothing is cached)."""
    if cache_folder() is None:  # switched off: no file is hashed
        return None
    identity = fr.identity()
    if not identity.get("weights_sha256"):
        log.debug("labels cache: model without a weights file; not cached")
        return None
    model = network_identity(identity)
    root = Path(root)
    try:
        images = [[p, _content_identity(root / p)] for p in list_images(root)]
    except (OSError, FroqError) as exc:
        log.debug("labels cache: %s cannot be listed (%s); not cached", root, exc)
        return None
    settings = dict(settings)
    return LabelsKey(model, settings, images,
                     fingerprint({"format": FORMAT, "model": model, "settings": settings, "images": images}))


def _content_identity(path: Path) -> str:
    """sha256 of an image file's bytes, or ``unreadable`` for a file that is not a regular readable
    file (a pipe, a device, a symlink loop: never opened, and its row is an unreadable one)."""
    try:
        return sha256_file(path)
    except OSError:
        return "unreadable"


def _entry(key: LabelsKey) -> tuple[Path, Path] | None:
    folder = cache_folder()
    if folder is None:
        return None
    return folder / f"{key.fingerprint}.csv", folder / f"{key.fingerprint}.meta.json"


def find_labels(key: LabelsKey | None, columns: Sequence[str]) -> tuple[RunResult, Path] | None:
    """The cached labels of ``key`` as a ``RunResult`` (rows in folder order, the unreadable images
    of the run that computed them in its FailureLog) and the cache CSV, or None on a miss. An
    entry whose meta or CSV does not verify is ignored with a warning."""
    where = _entry(key) if key is not None else None
    if where is None or not (where[0].is_file() and where[1].is_file()):
        return None
    csv_path, meta_path = where
    try:
        meta = read_json(meta_path)
        if (meta.get("format") != FORMAT or meta.get("fingerprint") != key.fingerprint
                or meta.get("key") != key.record() or meta.get("csv_sha256") != sha256_file(csv_path)):
            raise FroqError("meta does not vouch for this entry")
        rows = read_csv(csv_path, required=("path", *columns))
        paths = [r["path"] for r in rows]
        values = np.array([[float(r[c]) for c in columns] for r in rows], dtype=np.float64).reshape(
            len(rows), len(columns))
        known = {p for p, _ in key.images}
        if not set(paths) <= known or not np.all(np.isfinite(values)):
            raise FroqError("rows do not match the images")
    except (FroqError, OSError, ValueError, TypeError, AttributeError) as exc:
        log.warning("labels cache: ignoring the damaged entry %s (%s); computing the labels", csv_path, exc)
        return None
    failures = FailureLog("pseudo-labels (cached)")
    failures.items = [(str(u.get("path")), str(u.get("reason"))) for u in meta.get("unreadable") or []]
    return RunResult(paths=paths, values=values, columns=list(columns), failures=failures), csv_path


def store_labels(key: LabelsKey | None, result: RunResult) -> Path | None:
    """Put finished labels into the cache (CSV, then the meta that vouches for it; atomic). Out: the
    cache CSV, or None when not cached. A cache that cannot be written is only a warning."""
    where = _entry(key) if key is not None else None
    if where is None:
        return None
    csv_path, meta_path = where
    try:
        write_csv(csv_path, ["path", *result.columns], result.rows())
        write_json(meta_path, {"format": FORMAT, "fingerprint": key.fingerprint, "key": key.record(),
                               "csv_sha256": sha256_file(csv_path), "rows": len(result),
                               "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                               "unreadable": [{"path": p, "reason": r} for p, r in result.failures.items]})
    except OSError as exc:
        log.warning("labels cache: could not store the labels in %s (%s)", csv_path.parent, exc)
        return None
    return csv_path


def cached_pseudo_labels(fr, root: str | os.PathLike, settings: Mapping, columns: Sequence[str],
                         compute: Callable[[], RunResult],
                         failures: FailureLog | None = None) -> tuple[RunResult, Path | None]:
    """The labels of ``root``: from the cache when an entry matches (module doc), else
    ``compute()`` and store the result. In: the FR model, the calibration folder, the label
    settings (the key's), the label columns, the computing function, and the stage's FailureLog
    (receives a hit's unreadable images). Out: (the ``RunResult``, the cache CSV it was reused
    from or None when computed)."""
    started = time.perf_counter()
    key = labels_key(fr, root, settings)
    hit = find_labels(key, columns)
    if hit is not None:
        result, csv_path = hit
        if failures is not None:
            for p, r in result.failures.items:
                failures.items.append((p, r))
            result.failures = failures
        log.info("pseudo-labels: reusing %d finished labels of the same images, model and settings "
                 "from %s (fingerprint checked in %.1f s)", len(result), csv_path, time.perf_counter() - started)
        return result, csv_path
    result = compute()
    stored = store_labels(key, result)
    if stored is not None:
        log.info("pseudo-labels: stored in the labels cache %s (reused by later runs on the same images)", stored)
    return result, None


def label_settings_key(fr, alphas: Sequence[float], noise_count: int, mpx: int | Sequence[int], seed: int,
                       channels_last: bool | str = "auto", weights: Sequence[float] = (1.0, 1.0, 1.0),
                       noise_model: str = "mix", occlusion: str = "incremental", fold: bool = True,
                       precision: str = "auto") -> dict:
    """The label settings that change the numbers, as the cache key takes them (the one key of the
    stage and the API): α, K, cell size(s), seed, the channels-last format (``auto`` resolved as the
    stage does), fp16 autocast (on CUDA), the device type (CPU and CUDA round differently), and the
    options beyond the paper only where they differ from it (weights, noise model, several cells,
    the incremental occlusion path, folded affines, a precision other than ``auto``, ONNX Runtime),
    so entries of paper runs made before an option existed stay valid."""
    from baselineFIQA.labels import PAPER_WEIGHTS, auto_channels_last, uses_onnx_runtime

    if channels_last in (None, "auto"):
        channels_last = auto_channels_last(fr.device)
    cells = [int(mpx)] if isinstance(mpx, int) else [int(c) for c in mpx]
    key = {"alphas": [float(a) for a in alphas], "noise_count": int(noise_count), "mpx": cells[0],
           "seed": int(seed), "channels_last": bool(channels_last),
           "autocast_fp16": fr.device.type == "cuda", "device": fr.device.type}
    if len(cells) > 1:
        key["mpx"] = cells
    if tuple(float(w) for w in weights) != PAPER_WEIGHTS:
        key["component_weights"] = [float(w) for w in weights]
    if noise_model != "mix":
        key["noise_model"] = noise_model
    if occlusion != "full":
        key["occlusion"] = occlusion
    if fold:
        key["fold_affine"] = True
    if precision != "auto":
        key["precision"] = precision
    if uses_onnx_runtime(fr, precision):
        key["runtime"] = "onnxruntime"
    return key
