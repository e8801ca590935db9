"""Atomic writes of CSV/JSON/NPY outputs and a resumable row log for long stages.

Outputs are written to a temporary file beside the target and renamed into place, so a crash
never leaves a half-written result. Long stages append finished rows to ``<out>.partial`` and
resume from it when run again with the same settings.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import logging
import os
import shlex
import socket
import stat
import sys
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Iterable, Iterator, Sequence

import numpy as np

from froq.core.errors import FroqError

log = logging.getLogger(__name__)


def _umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


@contextmanager
def atomic_open(path: str | os.PathLike, mode: str = "w", **kwargs) -> Iterator:
    """Open a temporary file beside ``path``; on success rename it to ``path``.

    In: target path, open mode ('w' or 'wb'). Out: a file object (context manager).
    On an exception the temporary file is removed and the target is left untouched. The file gets
    the permissions of any new file of the user (0666 minus the umask), not mkstemp's 0600.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        os.fchmod(fd, 0o666 & ~_umask())
        with os.fdopen(fd, mode, **kwargs) as fh:
            yield fh
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise


def write_csv(path: str | os.PathLike, header: Sequence[str], rows: Iterable[Sequence]) -> None:
    """Write ``rows`` under ``header`` to ``path`` atomically. Floats keep full precision (repr)."""
    with atomic_open(path, "w", newline="", encoding="utf-8") as fh:
        writer = csv.writer(fh)
        writer.writerow(header)
        for row in rows:
            writer.writerow([_fmt(v) for v in row])


def _fmt(value):
    if isinstance(value, (float, np.floating)):
        return repr(float(value))
    return value


def read_csv(path: str | os.PathLike, required: Sequence[str] = ()) -> list[dict[str, str]]:
    """Read a CSV with a header into a list of dicts.

    In: path and the columns that must be present. Out: rows as dicts of strings.
    Raises FroqError naming the file when it is missing or lacks a required column.
    """
    path = Path(path)
    if not path.is_file():
        raise FroqError(f"{path}: file not found")
    try:
        with open(path, newline="", encoding="utf-8-sig") as fh:  # -sig: tolerate a BOM (Excel)
            reader = csv.DictReader(fh)
            missing = [c for c in required if c not in (reader.fieldnames or [])]
            if missing:
                raise FroqError(f"{path}: missing column(s) {', '.join(missing)} "
                                f"(found {', '.join(reader.fieldnames or []) or 'no header'})")
            return list(reader)
    except (UnicodeDecodeError, csv.Error) as exc:
        raise FroqError(f"{path}: not a readable CSV text file ({str(exc).splitlines()[0][:120]})") from None


def read_quality_csv(path: str | os.PathLike, column: str = "quality") -> dict[str, float]:
    """Read a per-image CSV (``path,<column>,...``) into ``{relative path: float}``.

    Raises FroqError naming the file and line for a non-numeric value or a duplicate path.
    """
    out: dict[str, float] = {}
    for i, row in enumerate(read_csv(path, required=("path", column)), start=2):
        key = row["path"]
        try:
            value = float(row[column])
        except (TypeError, ValueError):
            raise FroqError(f"{path}:{i}: '{column}' is not a number ({row[column]!r})") from None
        if key in out:
            raise FroqError(f"{path}:{i}: duplicate path {key!r}")
        out[key] = value
    return out


def write_json(path: str | os.PathLike, obj) -> None:
    """Write ``obj`` as indented JSON atomically (NaN is written as null)."""
    with atomic_open(path, "w", encoding="utf-8") as fh:
        json.dump(_json_safe(obj), fh, indent=1, allow_nan=False)
        fh.write("\n")


def _json_safe(obj):
    if isinstance(obj, dict):
        return {str(k): _json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_json_safe(v) for v in obj]
    if isinstance(obj, (np.floating, float)):
        f = float(obj)
        return f if np.isfinite(f) else None
    if isinstance(obj, np.integer):
        return int(obj)
    if isinstance(obj, np.ndarray):
        return _json_safe(obj.tolist())
    if isinstance(obj, Path):
        return str(obj)
    return obj


def read_json(path: str | os.PathLike):
    """Read a JSON file; a missing or malformed file raises FroqError naming it."""
    path = Path(path)
    if not path.is_file():
        raise FroqError(f"{path}: file not found")
    try:
        with open(path, encoding="utf-8") as fh:
            return json.load(fh)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise FroqError(f"{path}: not valid JSON ({str(exc).splitlines()[0][:120]})") from None
    except RecursionError:
        raise FroqError(f"{path}: JSON nested too deeply to be a FROQ file") from None


def write_npy(path: str | os.PathLike, array: np.ndarray) -> None:
    """Save an array as ``.npy`` atomically (no pickle)."""
    with atomic_open(path, "wb") as fh:
        np.save(fh, np.asarray(array), allow_pickle=False)


def require_regular_file(path: str | os.PathLike) -> None:
    """Raise OSError unless ``path`` (symlinks followed) is a regular file: a pipe would block its
    reader forever, a device (``/dev/zero``) never ends, a symlink loop or a folder cannot be read.
    Every open of an input file (images through ``froq.core.images``, hashed inputs) asks this first."""
    st = os.stat(path)  # OSError for a missing file, a dangling link or a symlink loop
    if not stat.S_ISREG(st.st_mode):
        raise OSError("not a regular file (a pipe, device, socket or folder): not opened")


def sha256_file(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    """Hex sha256 of a regular file's bytes; OSError for anything else (``require_regular_file``)."""
    require_regular_file(path)
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(chunk), b""):
            h.update(block)
    return h.hexdigest()


def fingerprint(obj) -> str:
    """Short stable hash of a JSON-able object (used to tie a partial file to its settings)."""
    blob = json.dumps(_json_safe(obj), sort_keys=True).encode()
    return hashlib.sha256(blob).hexdigest()[:16]


def discard_partial(final_path: str | os.PathLike) -> None:
    """Remove the ``<final_path>.partial`` resume log of a finished stage (if any)."""
    Path(str(final_path) + ".partial").unlink(missing_ok=True)


class RowLog:
    """Append-only log of finished rows for a long stage, so an interrupted run resumes.

    Lives at ``<final output>.partial`` (CSV). Its first line records a fingerprint of the
    settings; a log written under other settings is discarded with a warning. ``done`` maps the
    key (first column) of every row already written to the row. Call ``append`` after each batch
    and ``discard`` once the final output is written.
    """

    def __init__(self, final_path: str | os.PathLike, header: Sequence[str], settings) -> None:
        self.path = Path(str(final_path) + ".partial")
        self.header = list(header)
        self.stamp = f"# froq-partial {fingerprint(settings)}"
        self.done: dict[str, list[str]] = {}
        if self.path.is_file():
            self._load()
        if not self.path.is_file():
            self.path.parent.mkdir(parents=True, exist_ok=True)
            with open(self.path, "w", newline="", encoding="utf-8") as fh:
                fh.write(self.stamp + "\n")
                csv.writer(fh).writerow(self.header)

    def _load(self) -> None:
        try:
            with open(self.path, newline="", encoding="utf-8") as fh:
                text = fh.read()
            first, _, body = text.partition("\n")
            if first != self.stamp:
                log.warning("%s was written with other settings; starting over", self.path)
                self.path.unlink()
                return
            if not body.endswith("\n"):  # the last line was torn by an interruption: recompute it
                body = body[:body.rfind("\n") + 1]
            rows = list(csv.reader(io.StringIO(body, newline="")))
        except (UnicodeDecodeError, csv.Error) as exc:
            log.warning("%s is unreadable (%s); starting over", self.path, exc)
            self.path.unlink()
            return
        if not rows or rows[0] != self.header:
            self.path.unlink()
            return
        for row in rows[1:]:
            if len(row) == len(self.header):  # a malformed line is dropped and recomputed
                self.done[row[0]] = row
        if self.done:
            log.info("resuming: %d rows already done in %s", len(self.done), self.path)
        # rewrite without any torn line
        with open(self.path, "w", newline="", encoding="utf-8") as fh:
            fh.write(self.stamp + "\n")
            w = csv.writer(fh)
            w.writerow(self.header)
            w.writerows(self.done.values())

    def append(self, rows: Iterable[Sequence]) -> None:
        """Append finished rows (first column = key) and flush them to disk."""
        rows = [[str(_fmt(v)) for v in r] for r in rows]
        with open(self.path, "a", newline="", encoding="utf-8") as fh:
            csv.writer(fh).writerows(rows)
            fh.flush()
        for r in rows:
            self.done[r[0]] = r

    def discard(self) -> None:
        """Remove the partial log (after the final output has been written)."""
        try:
            self.path.unlink()
        except FileNotFoundError:
            pass


def require_file(path: str | os.PathLike, what: str, hint: str = "") -> Path:
    """Return ``Path(path)`` if it is a file, else raise FroqError naming ``what`` and a hint."""
    p = Path(path)
    if not p.is_file():
        raise FroqError(f"{what} not found: {p}" + (f" — {hint}" if hint else ""))
    return p


@contextmanager
def output_lock(path: str | os.PathLike) -> Iterator[None]:
    """Hold ``<path>.lock`` while a run writes ``path`` (and its ``.partial``): a second run on the
    same output stops with FroqError naming the holder (pid, host, start, command).

    The lock is a POSIX ``flock`` on the lock file, so the kernel releases it when its process
    dies in any way (SIGKILL included); a lock file left behind by a dead run is taken over with
    a warning. The lock file is removed when the run ends. (No-op where ``fcntl`` is missing.)
    """
    try:
        import fcntl
    except ImportError:  # pragma: no cover - not POSIX
        yield
        return
    lock = Path(str(path) + ".lock")
    lock.parent.mkdir(parents=True, exist_ok=True)
    while True:
        fh = open(lock, "a+", encoding="utf-8")
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _read_holder(fh)
            fh.close()
            raise FroqError(f"{path} is being written by another run ({holder}); wait for it to "
                            f"finish, or use another output path") from None
        try:  # the file may have been removed and re-created by a run that just finished
            same = os.fstat(fh.fileno()).st_ino == os.stat(lock).st_ino
        except FileNotFoundError:
            same = False
        if same:
            break
        fh.close()
    fh.seek(0)
    previous = fh.read()
    if previous.strip():
        log.warning("%s: taking over a lock left by a run that is gone (%s)", lock, _lock_holder(previous))
    fh.seek(0)
    fh.truncate()
    fh.write(json.dumps({"pid": os.getpid(), "host": socket.gethostname(),
                         "started": time.strftime("%Y-%m-%d %H:%M:%S"),
                         "command": shlex.join(sys.argv)}))
    fh.flush()
    try:
        yield
    finally:
        try:
            lock.unlink()
        except FileNotFoundError:
            pass
        fh.close()  # releases the flock


def _read_holder(fh, wait: float = 1.0) -> str:
    """The holder described in an open, held lock file. The holder writes its record just after it
    takes the lock, so an empty or half-written file is re-read for up to ``wait`` seconds."""
    deadline = time.monotonic() + wait
    while True:
        fh.seek(0)
        holder = _lock_holder(fh.read())
        if holder != UNKNOWN_HOLDER or time.monotonic() >= deadline:
            return holder
        time.sleep(0.02)


UNKNOWN_HOLDER = "holder unknown"


def _lock_holder(text: str) -> str:
    try:
        info = json.loads(text)
        return (f"pid {info['pid']} on {info['host']}, started {info['started']}: "
                f"{shorten_command(str(info.get('command', '?')))}")
    except (ValueError, KeyError, TypeError):
        return UNKNOWN_HOLDER


def shorten_command(command: str, limit: int = 300) -> str:
    """A shell command line cut to at most about ``limit`` characters at an argument boundary, never
    inside an argument or between an option and its value; says how many arguments were left out."""
    if len(command) <= limit:
        return command
    try:
        words = shlex.split(command)
    except ValueError:
        words = command.split()
    kept: list[str] = []
    for i, word in enumerate(words):
        if len(shlex.join(kept + [word])) > limit:
            if kept and kept[-1].startswith("-") and not word.startswith("-"):
                kept.pop()  # an option whose value does not fit goes with its value
            break
        kept.append(word)
    return f"{shlex.join(kept)} ... ({len(words) - len(kept)} more argument(s))"
