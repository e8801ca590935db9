"""The one per-image runner of the toolkit, and the one stage ending.

Every per-image job (pseudo-labels, observer initialisation, FROQ inference, every comparison
method, evaluation's embedding pass) is ``run_images(root, batch_fn, columns, ...)``: it reads the
images of a folder (or an explicit list of relative paths) in order, skips the ones a previous,
interrupted run already finished, lists the unreadable ones, calls ``batch_fn`` on each batch of
readable images and returns one row of numbers per image, in list order.

Resume: with ``resume_path`` (the stage's final output), finished rows are appended to
``<resume_path>.partial`` after every batch. A row is reused only when **both** hold:

- the partial file was written with the same settings (model identity, stage options: a
  fingerprint in its first line; a partial from other settings is discarded), and
- the image file is the same: its size and modification time (nanoseconds) are stored with the
  row and compared with the file on disk now, so an image replaced under the same name is
  recomputed.

``finish_stage`` is the single stage ending: meta JSON beside the output (model, config, images,
unreadable files, seconds), the resume log dropped once the output is written, one summary line.
"""

from __future__ import annotations

import logging
import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator, Mapping, Sequence

import numpy as np
import torch
from tqdm import tqdm

from froq.core.errors import FroqError
from froq.core.images import (FailureLog, ImageFolder, Preprocess, image_loader, list_images,
                              printable, valid_utf8)
from froq.core.io import RowLog, discard_partial, write_json

log = logging.getLogger(__name__)

# (relative paths of the batch, the batch on the device) -> (B, C) numbers, one column per output
BatchFn = Callable[[list[str], torch.Tensor], "np.ndarray | torch.Tensor"]

PROGRESS_EVERY_S = 30.0  # progress log interval when stderr is not a terminal


def file_identity(path: str | os.PathLike) -> str:
    """``"<size>:<mtime_ns>"`` of a file (``"missing"`` when it cannot be stat'ed): what ties a
    resumed row to the very image it was computed from."""
    try:
        st = os.stat(path)
    except OSError:
        return "missing"
    return f"{st.st_size}:{st.st_mtime_ns}"


@dataclass
class RunResult:
    """Rows of a per-image job: ``paths`` (readable images, in the order asked for), ``values``
    (N, C) float64 with one column per name of ``columns``, and the unreadable images."""

    paths: list[str]
    values: np.ndarray
    columns: list[str]
    failures: FailureLog = field(default_factory=lambda: FailureLog("images"))

    def column(self, name: str) -> np.ndarray:
        """One column as an (N,) float64 array."""
        return self.values[:, self.columns.index(name)]

    def rows(self) -> Iterator[list]:
        """``[path, value, ...]`` per image (CSV rows under ``["path", *columns]``)."""
        for path, row in zip(self.paths, self.values.tolist()):
            yield [path, *row]

    def __len__(self) -> int:
        return len(self.paths)


def iterate_folder(root: str | Path, preprocess: Preprocess, batch_size: int, *,
                   paths: Sequence[str] | None = None, done: set[str] | frozenset = frozenset(),
                   failures: FailureLog | None = None, num_workers: int = 0,
                   device: torch.device | None = None, raw: bool = False,
                   desc: str = "images") -> Iterator[tuple[list[str], torch.Tensor]]:
    """Yield ``(relative paths, batch on device)`` for the readable images of ``root``.

    In: the folder, the model's preprocessing, batch size; optionally an explicit path list, paths
    already ``done`` (skipped), a FailureLog that receives unreadable files, DataLoader workers,
    the device, ``raw`` for uint8 RGB tensors instead of model inputs, a progress label.
    Out: an iterator over batches in list order; a progress bar on a terminal, a progress log line
    every ``PROGRESS_EVERY_S`` seconds otherwise.
    """
    all_paths = list(paths) if paths is not None else list_images(root)
    todo = [p for p in all_paths if p not in done]
    if done and len(todo) < len(all_paths):
        log.info("%s: %d of %d images already done, %d to go", desc, len(all_paths) - len(todo),
                 len(all_paths), len(todo))
    if not todo:
        return
    # workers only decode and resize; normalisation runs once per batch (on the device), which is
    # cheaper than per image and gives the same numbers
    dataset = ImageFolder(root, preprocess, paths=todo, raw=True)
    loader = image_loader(dataset, batch_size, num_workers=num_workers, device=device)
    terminal = sys.stderr.isatty()
    started = last_log = time.monotonic()
    seen = 0
    with tqdm(total=len(todo), desc=desc, unit="img", dynamic_ncols=True, leave=False,
              disable=not terminal) as bar:  # no bar in logs: progress lines instead
        for batch in loader:
            for index, reason in batch.failures:
                if failures is not None:
                    failures.add(todo[index], reason)
                else:
                    log.warning("%s: skipped unreadable image %s (%s)", desc, todo[index], reason)
            if batch.images is not None:
                images = batch.images.to(device, non_blocking=True) if device is not None else batch.images
                if not raw:
                    images = preprocess.normalize(images)
                yield [todo[i] for i in batch.indices], images
            step = len(batch.indices) + len(batch.failures)
            seen += step
            bar.update(step)
            now = time.monotonic()
            if not terminal and now - last_log >= PROGRESS_EVERY_S and seen < len(todo):
                rate = seen / max(now - started, 1e-9)
                log.info("%s: %d/%d images (%.1f img/s, ~%.0f s left)", desc, seen, len(todo), rate,
                         (len(todo) - seen) / max(rate, 1e-9))
                last_log = now


def _as_matrix(out, rows: int, width: int, desc: str) -> np.ndarray:
    if isinstance(out, torch.Tensor):
        out = out.detach().to("cpu", torch.float64).numpy()
    arr = np.asarray(out, dtype=np.float64)
    if arr.ndim == 1 and width == 1:
        arr = arr[:, None]
    if arr.shape != (rows, width):
        raise RuntimeError(f"{desc}: batch function returned shape {arr.shape}, expected {(rows, width)}")
    return arr


def run_images(root: str | Path, batch_fn: BatchFn, columns: Sequence[str], *,
               preprocess: Preprocess, device: torch.device | None = None, batch_size: int = 32,
               paths: Sequence[str] | None = None, num_workers: int = 0,
               resume_path: str | Path | None = None, settings: Mapping | None = None,
               failures: FailureLog | None = None, desc: str = "images", raw: bool = False,
               allow_empty: bool = False) -> RunResult:
    """Run ``batch_fn`` over the readable images of ``root``; resumable, ordered, failures listed.

    In: the folder (or explicit relative ``paths`` under it), the batch function
    ``(paths, images) -> (B, len(columns))`` numbers, the column names, the model's preprocessing
    and device, batch size, DataLoader workers; optionally ``resume_path`` (the final output: rows
    are kept in ``<it>.partial`` and reused on a rerun with equal ``settings`` for unchanged image
    files), a FailureLog, a progress label, ``raw`` (uint8 RGB batches instead of model inputs).
    Out: ``RunResult`` in the order of ``paths`` (default: the folder's sorted images), readable
    images only. FroqError when no image could be read (unless ``allow_empty``).
    """
    columns = list(columns)
    failures = failures if failures is not None else FailureLog(desc)
    paths = list(paths) if paths is not None else list_images(root, failures)
    for p in paths:
        if not valid_utf8(p):  # its row could not be written: listed, never lost silently
            failures.add(printable(p), "file name is not valid UTF-8: rename the file")
    paths = [p for p in paths if valid_utf8(p)]
    root = Path(root)
    done: dict[str, np.ndarray] = {}
    identity: dict[str, str] = {}
    rowlog = None
    if resume_path is not None:
        identity = {p: file_identity(root / p) for p in paths}
        rowlog = RowLog(resume_path, ["path", "file", *columns], dict(settings or {}))
        stale = 0
        for p, row in rowlog.done.items():
            if p not in identity:
                continue
            if row[1] != identity[p]:
                stale += 1
                continue
            try:
                done[p] = np.array([float(v) for v in row[2:]], dtype=np.float64)
            except ValueError:
                log.warning("%s: dropping a corrupt row for %s; it is recomputed", rowlog.path, p)
        if stale:
            log.warning("%s: %d image(s) changed on disk since their rows were written; "
                        "they are recomputed", desc, stale)
    for batch_paths, images in iterate_folder(root, preprocess, batch_size, paths=paths,
                                              done=set(done), failures=failures,
                                              num_workers=num_workers, device=device, raw=raw,
                                              desc=desc):
        values = _as_matrix(batch_fn(batch_paths, images), len(batch_paths), len(columns), desc)
        if rowlog is not None:
            rowlog.append([[p, identity[p], *values[i].tolist()] for i, p in enumerate(batch_paths)])
        for i, p in enumerate(batch_paths):
            done[p] = values[i]
    read = [p for p in paths if p in done]
    if not read and not allow_empty:
        example = f" (e.g. {failures.items[0][0]}: {failures.items[0][1]})" if failures.items else ""
        raise FroqError(f"{root}: none of the {len(paths)} image(s) could be read{example}; "
                        "nothing was written: check the folder holds image files")
    matrix = np.stack([done[p] for p in read]) if read else np.zeros((0, len(columns)))
    return RunResult(paths=read, values=matrix, columns=columns, failures=failures)


def finish_stage(out: str | Path, stage: str, *, images: int, failures: FailureLog,
                 started: float, meta: Mapping | None = None, meta_path: str | Path | None = None,
                 label: str | None = None, extra: str = "", line: str | None = None) -> None:
    """The stage ending, after the stage wrote its output ``out`` (atomically).

    In: the output path, the stage's name (``stage`` in the meta JSON; ``label`` starts the summary
    line, default the name), how many images it used, its FailureLog, the
    ``time.perf_counter()`` of its start, and provenance ``meta`` (model identity, config, ...)
    written with the common fields to ``meta_path`` (default ``<out>.meta.json``; ``meta=None``
    writes none, for outputs that carry their own provenance). Drops ``<out>.partial``, logs the
    timing and prints one summary line ``<label>: <out> (N images; unreadable ...)<extra>``
    (or ``line``, a stage's own summary).
    """
    out = Path(out)
    seconds = time.perf_counter() - started
    if meta is not None:
        write_json(meta_path or out.with_suffix(".meta.json"), {
            "stage": stage, **meta, "images": images, "seconds": round(seconds, 3),
            "unreadable": [{"path": p, "reason": r} for p, r in failures.items]})
    discard_partial(out)
    label = label or stage
    log.info("%s: %d images in %.1f s (%.1f img/s); %s", label, images, seconds,
             images / max(seconds, 1e-9), failures.summary())
    print(line or f"{label}: {out} ({images} images; {failures.summary()}){extra}")
