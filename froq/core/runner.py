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

Scale-out (``froq.core.distributed``): under ``torchrun`` every process runs the same stage; the
images still to do are cut into batches on one fixed grid of the whole list (``[0, B)``,
``[B, 2B)``, ...: a row's numbers never depend on the number of processes or on what an earlier
run finished) and the batches are split into contiguous runs, one per process, without padding.
Each process appends to its own ``<resume_path>.partial.<rank>-of-<world>``; on every (re)start all
resume files of the output, from runs of any size, are read (streaming, one row at a time; in
memory only a done flag and the numbers per row), and after the work every process reads the
others' new rows from their files, so ``run_images`` returns the whole result everywhere and rank 0
writes the output. ``AFTER_BATCH`` callbacks run after each batch (the tests stop a process there).

``finish_stage`` is the single stage ending: meta JSON beside the output (model, config, images,
unreadable files, seconds), the resume log dropped once the output is written, one summary line.
"""

from __future__ import annotations

import bisect
import csv
import glob
import io
import logging
import os
import re
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator, Mapping, Sequence

import numpy as np
import torch
from tqdm import tqdm

from froq.core import distributed
from froq.core.distributed import Rank
from froq.core.errors import FroqError
from froq.core.images import (FailureLog, ImageFolder, Preprocess, image_loader, list_images,
                              NOT_UTF8, printable, valid_utf8)
from froq.core.io import discard_partial, fingerprint, write_json
from froq.core.recordio import RecordDataset, RecordFile, is_record_file

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
    for indices, images in iterate_dataset(dataset, todo, preprocess, batch_size, failures=failures,
                                           num_workers=num_workers, device=device, raw=raw, desc=desc):
        yield [todo[i] for i in indices], images


def iterate_dataset(dataset, names: Sequence[str], preprocess: Preprocess, batch_size: int, *,
                    failures: FailureLog | None = None, num_workers: int = 0,
                    device: torch.device | None = None, raw: bool = False, desc: str = "images",
                    batches: Sequence[Sequence[int]] | None = None
                    ) -> Iterator[tuple[list[int], torch.Tensor]]:
    """The batch loop under ``iterate_folder`` for any dataset of ``(i, uint8 tensor or None,
    error)`` items (an ``ImageFolder`` with ``raw=True``, a ``RecordDataset``): yields ``(dataset
    indices, batch on device)``, unreadable items to ``failures`` under ``names[i]``; ``batches``
    fixes the members of each batch (default: consecutive runs of ``batch_size``)."""
    loader = image_loader(dataset, batch_size, num_workers=num_workers, device=device, batches=batches)
    terminal = sys.stderr.isatty()
    started = last_log = time.monotonic()
    seen = 0
    total = len(dataset)
    with tqdm(total=total, desc=desc, unit="img", dynamic_ncols=True, leave=False,
              disable=not terminal) as bar:  # no bar in logs: progress lines instead
        for batch in loader:
            for index, reason in batch.failures:
                if failures is not None:
                    failures.add(names[index], reason)
                else:
                    log.warning("%s: skipped unreadable image %s (%s)", desc, names[index], reason)
            if batch.images is not None:
                images = batch.images.to(device, non_blocking=True) if device is not None else batch.images
                if not raw:
                    images = preprocess.normalize(images)
                yield list(batch.indices), images
            step = len(batch.indices) + len(batch.failures)
            seen += step
            bar.update(step)
            now = time.monotonic()
            if not terminal and now - last_log >= PROGRESS_EVERY_S and seen < total:
                rate = seen / max(now - started, 1e-9)
                log.info("%s: %d/%d images (%.1f img/s, ~%.0f s left)", desc, seen, total, rate,
                         (total - seen) / max(rate, 1e-9))
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


# -- what is read: a folder (or a list of paths under it), or a RecordIO set -------------------------

class FolderSource:
    """Images of a folder: ``keys`` are the relative paths (in the order asked for), a row's
    identity is its file's ``size:mtime_ns``."""

    def __init__(self, root: Path, keys: list[str]) -> None:
        self.root = root
        self.keys = keys
        self.labels = False
        ordered = all(a < b for a, b in zip(keys, keys[1:]))
        self._index = None if ordered else {k: i for i, k in enumerate(keys)}

    def position(self, key: str) -> int | None:
        """Index of ``key`` in ``keys`` (bisection on a sorted list: no per-row dictionary)."""
        if self._index is not None:
            return self._index.get(key)
        i = bisect.bisect_left(self.keys, key)
        return i if i < len(self.keys) and self.keys[i] == key else None

    def identity(self, i: int) -> str:
        """``size:mtime_ns`` of the ``i``-th image file."""
        return file_identity(self.root / self.keys[i])

    def dataset(self, positions: Sequence[int], preprocess: Preprocess):
        """A torch Dataset of raw uint8 images at ``positions``."""
        return ImageFolder(self.root, preprocess, paths=[self.keys[i] for i in positions], raw=True)


class RecordSource:
    """Images of an insightface RecordIO set: ``keys`` are the record indices (as text), a row's
    identity is the ``.rec`` file's ``size:mtime_ns``, and each row carries its identity label."""

    def __init__(self, records: RecordFile) -> None:
        self.records = records
        self.keys = [str(int(k)) for k in records.keys]
        self.labels = True
        self._identity = file_identity(records.path)

    def position(self, key: str) -> int | None:
        """Index of record ``key`` (text) among the image records."""
        try:
            return self.records.position(int(key))
        except ValueError:
            return None

    def identity(self, i: int) -> str:
        """The ``.rec`` file's ``size:mtime_ns``."""
        return self._identity

    def dataset(self, positions: Sequence[int], preprocess: Preprocess):
        """A torch Dataset of raw uint8 images of the records at ``positions``."""
        return RecordDataset(self.records, preprocess, positions, raw=True)


def open_source(root: str | Path, paths: Sequence[str] | None, failures: FailureLog):
    """The images a run reads: a RecordIO set when ``root`` is a ``.rec`` file (``paths``, if
    given, are record indices), else the folder ``root`` (its sorted images, or ``paths``)."""
    if is_record_file(root):
        records = RecordFile(root)
        if paths is not None:
            records.keep_only(int(p) for p in paths if str(p).isdigit())
        return RecordSource(records)
    keys = list(paths) if paths is not None else list_images(root, failures)
    for p in keys:
        if not valid_utf8(p):  # its row could not be written: listed, never lost silently
            failures.add(printable(p), NOT_UTF8)
    return FolderSource(Path(root), [p for p in keys if valid_utf8(p)])


# -- resume files: one per process, all of them read on every (re)start --------------------------------

def partial_path(out: str | Path, me: Rank) -> Path:
    """The resume file this process appends to: ``<out>.partial`` for a one-process run,
    ``<out>.partial.<rank>-of-<world>`` for one of several."""
    return Path(f"{out}.partial") if not me.active else Path(f"{out}.partial.{me.rank}-of-{me.world}")


def partial_files(out: str | Path) -> list[Path]:
    """Every resume file of ``out`` on disk, from a run of any number of processes."""
    out = Path(out)
    found = [p for p in out.parent.glob(f"{glob.escape(out.name)}.partial.*-of-*")
             if re.fullmatch(r"\d+-of-\d+", p.name[len(out.name) + len(".partial."):])]
    single = Path(f"{out}.partial")
    return ([single] if single.is_file() else []) + sorted(found, key=lambda p: p.name)


def discard_partials(out: str | Path) -> None:
    """Remove every resume file of ``out`` (``.partial`` and ``.partial.<rank>-of-<world>``), once
    ``out`` is written."""
    discard_partial(out)
    for path in partial_files(out):
        path.unlink(missing_ok=True)


def _records(fh, offset: int) -> Iterator[tuple[int, list[str]]]:
    """``(byte offset, row)`` of the complete CSV records of a binary file from ``offset`` on; a
    last line without its newline (torn by an interruption) is not returned."""
    pending: list[int] = []
    position = [offset]

    def lines():
        while True:
            line = fh.readline()
            if not line.endswith(b"\n"):
                return
            pending.append(position[0])
            position[0] += len(line)
            yield line.decode("utf-8", "replace")

    for row in csv.reader(lines()):
        yield pending[0], row
        pending.clear()


@dataclass
class _Scan:
    """Rows found in resume files: ``have`` (a flag per list position), ``values`` (N, C)."""

    have: np.ndarray
    values: np.ndarray


def _header_end(fh, stamp: str, header: list[str]) -> int | None:
    """Byte offset after the stamp and header lines, or None when they are not ours."""
    first = fh.readline()
    second = fh.readline()
    if first.decode("utf-8", "replace").rstrip("\r\n") != stamp:
        return None
    try:
        if next(csv.reader([second.decode("utf-8")])) != header:
            return None
    except (UnicodeDecodeError, StopIteration, csv.Error):
        return None
    return len(first) + len(second)


def scan_rows(path: Path, stamp: str, header: list[str], source, scan: _Scan, *,
              offset: int | None = None, check: bool = True,
              desc: str = "images") -> tuple[int, int, int | None]:
    """Read the rows of one resume file into ``scan`` (streaming; later rows win).

    In: the file, the settings stamp and header it must carry, the image source (row keys →
    positions, file identities), ``offset`` to read only rows appended after it (this run's, not
    re-checked), ``check`` to compare each row's file identity with the image on disk now.
    Out: (rows taken, rows of changed images, byte offset where its complete rows end, None for
    a file of other settings). A file of other settings is skipped with a warning;
    a malformed or non-numeric row is dropped (its image is recomputed).
    """
    taken = stale = 0
    width = scan.values.shape[1]
    try:
        fh = open(path, "rb")
    except FileNotFoundError:
        return 0, 0, None
    with fh:
        start = _header_end(fh, stamp, header)
        if start is None:
            log.warning("%s was written with other settings; starting over", path)
            return 0, 0, None
        if offset is not None:
            fh.seek(offset)
            start = offset
        end = start
        for at, row in _records(fh, start):
            end = fh.tell()
            if len(row) != width + 2:
                continue
            i = source.position(row[0])
            if i is None:
                continue
            if check and row[1] != source.identity(i):
                stale += 1
                continue
            try:
                scan.values[i] = [float(v) for v in row[2:]]
            except ValueError:
                log.warning("%s: dropping a corrupt row for %s; it is recomputed", path, row[0])
                continue
            scan.have[i] = True
            taken += 1
    return taken, stale, end


class PartialWriter:
    """This process's resume file: appends finished rows (``path, file identity, values``) and
    flushes after every batch. Continues a file of the same settings (cutting a torn last line),
    starts one afresh otherwise."""

    def __init__(self, path: Path, stamp: str, header: list[str], keep_until: int | None) -> None:
        self.path = path
        path.parent.mkdir(parents=True, exist_ok=True)
        if keep_until is not None and path.is_file():
            self.fh = open(path, "r+b")
            self.fh.truncate(keep_until)
            self.fh.seek(keep_until)
        else:
            self.fh = open(path, "wb")
            self.fh.write((stamp + "\n").encode())
            self._write([header])
        self.fh.flush()
        self.start = self.fh.tell()

    def _write(self, rows) -> None:
        text = io.StringIO(newline="")
        csv.writer(text).writerows(rows)
        self.fh.write(text.getvalue().encode("utf-8"))

    def append(self, rows: Sequence[Sequence]) -> None:
        """Append finished rows (floats written with ``repr``: read back exactly)."""
        self._write([[_fmt(v) for v in r] for r in rows])
        self.fh.flush()

    def close(self) -> None:
        """Close the file (rows stay on disk until the stage's output is written)."""
        self.fh.close()


def _fmt(value):
    return repr(float(value)) if isinstance(value, (float, np.floating)) else value


#: callbacks ``hook(rank, batches_done)`` run after each batch a process writes (empty in production;
#: the tests put one there to stop a process abruptly mid-run, see tests/stop_after_batches.py)
AFTER_BATCH: list[Callable[[Rank, int], None]] = []


@dataclass
class RunPlan:
    """What a run computes: the source and its keys, the rows already done (``scan``), the resume
    file format (``header``, ``stamp``) and this process's file, and the batches of this process."""

    source: "FolderSource | RecordSource"
    keys: list[str]
    columns: list[str]
    scan: "_Scan"
    header: list[str]
    stamp: str
    own: Path | None
    keep_until: int | None
    todo: np.ndarray
    batches: list[np.ndarray]

    @property
    def mine(self) -> np.ndarray:
        """Positions (in ``keys``) of the images this process computes, in order."""
        return np.concatenate(self.batches) if self.batches else np.zeros(0, dtype=np.int64)


def plan_run(root: str | Path, columns: Sequence[str], paths: Sequence[str] | None, batch_size: int,
             resume_path: str | Path | None, settings: Mapping | None, failures: FailureLog, me: Rank,
             desc: str) -> RunPlan:
    """Read what earlier runs finished (every resume file of the output) and cut the rest into
    batches on the grid of the whole list ([0, B), [B, 2B), ...), split in contiguous runs over the
    processes: a row's numbers never depend on what was done before or on the number of processes."""
    source = open_source(root, paths, failures)
    keys = source.keys
    scan = _Scan(have=np.zeros(len(keys), dtype=bool), values=np.full((len(keys), len(columns)), np.nan))
    header = ["path", "file", *columns]
    stamp = f"# froq-partial {fingerprint(dict(settings or {}))}"
    own = partial_path(resume_path, me) if resume_path is not None else None
    keep_until = None  # where this process's own resume file's complete rows end
    if resume_path is not None:
        stale = 0
        for path in partial_files(resume_path):
            _, changed, end = scan_rows(path, stamp, header, source, scan, desc=desc)
            stale += changed
            if path == own:
                keep_until = end
        if stale:
            log.warning("%s: %d image(s) changed on disk since their rows were written; "
                        "they are recomputed", desc, stale)
        if scan.have.any() and me.main:
            log.info("resuming: %d rows already done in %s", int(scan.have.sum()),
                     ", ".join(p.name for p in partial_files(resume_path)))
    distributed.barrier("reading the finished rows")  # nobody writes before everyone has read
    todo = np.flatnonzero(~scan.have)
    grid = np.split(todo, np.flatnonzero(np.diff(todo // batch_size)) + 1) if len(todo) else []
    lo, hi = distributed.shard_range(len(grid), me.rank, me.world)
    plan = RunPlan(source, keys, list(columns), scan, header, stamp, own, keep_until, todo, grid[lo:hi])
    if len(todo) < len(keys) and me.main:
        log.info("%s: %d of %d images already done, %d to go", desc, len(keys) - len(todo), len(keys), len(todo))
    if me.active:
        log.info("%s: %s computes %d of the %d images to go (%d batches)", desc, me, len(plan.mine),
                 len(todo), len(plan.batches))
    return plan


def compute_batches(plan: RunPlan, batch_fn: BatchFn, preprocess: Preprocess, device, batch_size: int,
                    num_workers: int, failures: FailureLog, me: Rank, raw: bool, desc: str) -> tuple[list, int | None]:
    """Run ``batch_fn`` over this process's batches: each batch's rows go to ``plan.scan`` and to
    this process's resume file as soon as they are computed. Out: (the rows kept in memory for the
    other processes when there is no resume file, the offset where this run's rows start in it)."""
    writer = PartialWriter(plan.own, plan.stamp, plan.header, plan.keep_until) if plan.own is not None else None
    own_rows: list[tuple[int, np.ndarray]] = []
    mine, keys = plan.mine, plan.keys
    try:
        if len(mine):
            dataset = plan.source.dataset(mine.tolist(), preprocess)
            bounds = np.cumsum([0, *(len(b) for b in plan.batches)])
            members = [range(int(a), int(b)) for a, b in zip(bounds[:-1], bounds[1:])]
            for done, (indices, images) in enumerate(iterate_dataset(
                    dataset, [keys[i] for i in mine], preprocess, batch_size, failures=failures,
                    num_workers=num_workers, device=device, raw=raw, desc=desc, batches=members), start=1):
                batch_pos = [int(mine[i]) for i in indices]
                batch_keys = [keys[i] for i in batch_pos]
                values = _as_matrix(batch_fn(batch_keys, images), len(batch_pos), len(plan.columns), desc)
                if writer is not None:
                    writer.append([[k, plan.source.identity(i), *values[j].tolist()]
                                   for j, (i, k) in enumerate(zip(batch_pos, batch_keys))])
                plan.scan.values[batch_pos] = values
                plan.scan.have[batch_pos] = True
                if me.active and writer is None:
                    own_rows.extend(zip(batch_pos, values))
                for hook in AFTER_BATCH:
                    hook(me, done)
    finally:
        if writer is not None:
            writer.close()
    return own_rows, None if writer is None else writer.start


def merge_processes(plan: RunPlan, own_rows: list, start: int | None, failures: FailureLog, first_local: int,
                    me: Rank, resume_path, desc: str) -> None:
    """Under torchrun: every process takes the others' rows (from their resume files, or as objects
    when there are none) and unreadable images, in list order; FroqError on every process (one line)
    when another process's rows did not arrive."""
    shared = distributed.gather_objects(
        {"file": None if plan.own is None else str(plan.own), "start": start,
         "failures": failures.items[first_local:], "rows": [(i, v.tolist()) for i, v in own_rows]},
        "collecting the finished rows")
    del failures.items[first_local:]
    for part in shared:
        failures.items.extend((p, r) for p, r in part["failures"])
        if part["file"] is not None and part["file"] != str(plan.own):
            scan_rows(Path(part["file"]), plan.stamp, plan.header, plan.source, plan.scan,
                      offset=part["start"], check=False, desc=desc)
        for i, v in part["rows"]:
            plan.scan.values[i] = v
            plan.scan.have[i] = True
    tail = sorted(failures.items[first_local:], key=lambda item: plan.source.position(item[0]) or 0)
    failures.items[first_local:] = tail
    accounted = plan.scan.have.copy()
    accounted[[i for i in (plan.source.position(p) for p, _ in tail) if i is not None]] = True
    lost = plan.todo[~accounted[plan.todo]]
    error = None
    if len(lost):  # another rank's rows did not reach this one: its file is not visible here
        error = (f"{me}: {len(lost)} finished row(s) of other processes (e.g. {plan.keys[lost[0]]}) "
                 f"are not in their partial files next to {resume_path}: the output folder "
                 "must be on a file system that every process (every machine) sees")
    distributed.agree(error, "checking that every process's rows arrived")


def run_images(root: str | Path, batch_fn: BatchFn, columns: Sequence[str], *,
               preprocess: Preprocess, device: torch.device | None = None, batch_size: int = 32,
               paths: Sequence[str] | None = None, num_workers: int = 0,
               resume_path: str | Path | None = None, settings: Mapping | None = None,
               failures: FailureLog | None = None, desc: str = "images", raw: bool = False,
               allow_empty: bool = False) -> RunResult:
    """Run ``batch_fn`` over the readable images of ``root``; resumable, ordered, failures listed;
    sharded over the processes of a ``torchrun`` job: ``plan_run``, ``compute_batches``,
    ``merge_processes``, then the rows in list order.

    In: the folder (or explicit relative ``paths`` under it; or a RecordIO ``train.rec``), the
    batch function ``(paths, images) -> (B, len(columns))`` numbers, the column names, the model's
    preprocessing and device, batch size, DataLoader workers; optionally ``resume_path`` (the final
    output: rows are kept in ``<it>.partial`` (``.partial.<rank>-of-<world>`` per process under
    torchrun) and reused on a rerun with equal ``settings`` for unchanged image files, whatever the
    number of processes), a FailureLog, a progress label, ``raw`` (uint8 RGB batches instead of
    model inputs).
    Out: ``RunResult`` in the order of ``paths`` (default: the folder's sorted images), readable
    images only, the same on every process; a RecordIO set adds a first column ``label``.
    FroqError when no image could be read (unless ``allow_empty``), or when another process of the
    job died (one line; a rerun finishes the job).
    """
    failures = failures if failures is not None else FailureLog(desc)
    me = distributed.init(device)
    plan = plan_run(root, columns, paths, batch_size, resume_path, settings, failures, me, desc)
    first_local = len(failures.items)
    own_rows, start = compute_batches(plan, batch_fn, preprocess, device, batch_size, num_workers,
                                      failures, me, raw, desc)
    if me.active:
        merge_processes(plan, own_rows, start, failures, first_local, me, resume_path, desc)
    read = np.flatnonzero(plan.scan.have)
    if not len(read) and not allow_empty:
        distributed.barrier("finishing")
        example = f" (e.g. {failures.items[0][0]}: {failures.items[0][1]})" if failures.items else ""
        raise FroqError(f"{root}: none of the {len(plan.keys)} image(s) could be read{example}; "
                        "nothing was written: check the folder holds image files")
    values = plan.scan.values[read]
    out_columns = list(columns)
    if plan.source.labels:  # RecordIO: the identity label of each record, first
        labels = np.array([plan.source.records.label(int(i)) for i in read], dtype=np.float64)
        values = np.concatenate([labels[:, None], values], axis=1) if len(read) else np.zeros((0, len(columns) + 1))
        out_columns = ["label", *columns]
    distributed.barrier("reading the merged rows")  # rank 0 may now write and drop the partials
    return RunResult(paths=[plan.keys[i] for i in read], values=values, columns=out_columns,
                     failures=failures)


def finish_stage(out: str | Path, stage: str, *, images: int, failures: FailureLog,
                 started: float, meta: Mapping | None = None, meta_path: str | Path | None = None,
                 label: str | None = None, extra: str = "", line: str | None = None) -> None:
    """The stage ending, after the stage wrote its output ``out`` (atomically).

    In: the output path, the stage's name (``stage`` in the meta JSON; ``label`` starts the summary
    line, default the name), how many images it used, its FailureLog, the
    ``time.perf_counter()`` of its start, and provenance ``meta`` (model identity, config, ...)
    written with the common fields to ``meta_path`` (default ``<out>.meta.json``; ``meta=None``
    writes none, for outputs that carry their own provenance). Drops ``<out>.partial`` (and the
    per-process ``.partial.<rank>-of-<world>`` of a torchrun job), logs the
    timing and prints one summary line ``<label>: <out> (N images; unreadable ...)<extra>``
    (or ``line``, a stage's own summary).
    """
    out = Path(out)
    seconds = time.perf_counter() - started
    if meta is not None:
        write_json(meta_path or out.with_suffix(".meta.json"), {
            "stage": stage, **meta, "images": images, "seconds": round(seconds, 3),
            "unreadable": [{"path": p, "reason": r} for p, r in failures.items]})
    discard_partials(out)
    label = label or stage
    log.info("%s: %d images in %.1f s (%.1f img/s); %s", label, images, seconds,
             images / max(seconds, 1e-9), failures.summary())
    print(line or f"{label}: {out} ({images} images; {failures.summary()}){extra}")
