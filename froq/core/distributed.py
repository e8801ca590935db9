"""Scale-out under ``torchrun``: which process this is, the shard of images it scores, and the few
collective steps the runner needs (a barrier with a time limit, gathering small Python objects).

``torchrun`` (``python -m torch.distributed.run``) starts one process per GPU (or CPU slot) and sets
``RANK``, ``WORLD_SIZE`` and ``LOCAL_RANK`` in their environment; Slurm's ``srun`` + ``torchrun``
does the same on several machines. A process started without them (``WORLD_SIZE`` unset or 1) is
the usual one-process run: nothing here initialises ``torch.distributed`` then, and every helper
is a no-op.

The process group is created on first use: gloo on CPU; on CUDA ``cpu:gloo,cuda:nccl`` (NCCL for
any tensor on a GPU, gloo for the small CPU-side objects the runner exchanges, so a barrier can
have a time limit and name the rank that did not arrive). The limit is ``FROQ_DIST_TIMEOUT``
seconds (default 3600): longer than the slowest shard may take to finish after the fastest.
"""

from __future__ import annotations

import atexit
import json
import logging
import os
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, Callable, Iterator

import torch

from froq.core.errors import FroqError, first_line
from froq.core.io import output_lock

log = logging.getLogger(__name__)

DEFAULT_TIMEOUT_S = 3600.0


@dataclass(frozen=True)
class Rank:
    """Where this process stands: ``rank`` in ``0 .. world-1``, ``world`` processes in all,
    ``local_rank`` on this machine (the GPU it uses)."""

    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def active(self) -> bool:
        """True when several processes share the job (``torchrun`` with more than one)."""
        return self.world > 1

    @property
    def main(self) -> bool:
        """True for the process that merges and writes the outputs (rank 0)."""
        return self.rank == 0

    def __str__(self) -> str:
        return f"rank {self.rank} of {self.world}"


def _env_int(name: str, default: int) -> int:
    value = os.environ.get(name)
    if value is None or value.strip() == "":
        return default
    try:
        return int(value)
    except ValueError:
        raise FroqError(f"environment variable {name}={value!r} is not an integer: it is set by "
                        "torchrun; unset it for a one-process run") from None


def current() -> Rank:
    """This process's ``Rank`` from the environment torchrun sets (``RANK``, ``WORLD_SIZE``,
    ``LOCAL_RANK``); ``Rank(0, 1, 0)`` when they are absent. FroqError when they are inconsistent."""
    world = _env_int("WORLD_SIZE", 1)
    rank = _env_int("RANK", 0)
    local = _env_int("LOCAL_RANK", 0)
    if world < 1 or not 0 <= rank < world or local < 0:
        raise FroqError(f"inconsistent torchrun environment RANK={rank} WORLD_SIZE={world} "
                        f"LOCAL_RANK={local}: start the job with torchrun (docs/scaling.md)")
    return Rank(rank, world, local)


def timeout_s() -> float:
    """Seconds a rank waits at a barrier for the others (``FROQ_DIST_TIMEOUT``, default 3600)."""
    value = os.environ.get("FROQ_DIST_TIMEOUT", "")
    try:
        seconds = float(value) if value.strip() else DEFAULT_TIMEOUT_S
    except ValueError:
        raise FroqError(f"FROQ_DIST_TIMEOUT={value!r} is not a number of seconds") from None
    if seconds <= 0:
        raise FroqError(f"FROQ_DIST_TIMEOUT={value!r} must be a positive number of seconds")
    return seconds


def local_cuda_device() -> torch.device | None:
    """``cuda:LOCAL_RANK`` when this is one of several torchrun processes and CUDA is present
    (the GPU ``device: auto`` picks); None otherwise (the one-process default applies)."""
    if "LOCAL_RANK" not in os.environ or not torch.cuda.is_available():
        return None
    local = current().local_rank
    count = torch.cuda.device_count()
    if local >= count:
        raise FroqError(f"{current()}: LOCAL_RANK={local} but this machine has {count} CUDA "
                        f"device(s): start at most {count} processes per machine (--nproc_per_node)")
    return torch.device(f"cuda:{local}")


def init(device: torch.device | None = None) -> Rank:
    """Join the process group (once) when several processes run; a no-op for one process.

    In: the device this rank computes on (CUDA selects NCCL for GPU tensors and makes it the
    current device). Out: this process's ``Rank``.
    """
    me = current()
    if not me.active or torch.distributed.is_initialized():
        return me
    if not torch.distributed.is_available():  # pragma: no cover - torch built without it
        raise FroqError("this torch build has no torch.distributed: run one process")
    backend = "gloo"
    if device is not None and device.type == "cuda":
        torch.cuda.set_device(device)
        backend = "cpu:gloo,cuda:nccl"
    try:
        torch.distributed.init_process_group(backend=backend, timeout=timedelta(seconds=timeout_s()))
    except (RuntimeError, ValueError) as exc:
        raise FroqError(f"{me}: could not join the other processes ({first_line(exc)}); check "
                        "MASTER_ADDR/MASTER_PORT or the torchrun rendezvous options") from None
    atexit.register(_leave)
    log.info("%s joined the process group (%s)", me, backend)
    return me


def _leave() -> None:
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        try:
            torch.distributed.destroy_process_group()
        except Exception:  # noqa: BLE001 - at exit, a peer may already be gone
            pass


def collective(what: str, fn: Callable[[], Any]) -> Any:
    """Run one collective step ``fn``; a peer that died or did not arrive in time becomes one
    FroqError line naming this rank and the step (finished rows stay on disk for a rerun)."""
    me = current()
    try:
        return fn()
    except (RuntimeError, ValueError, ConnectionError) as exc:
        raise FroqError(f"{me}: {what}: another process stopped or did not arrive within "
                        f"{timeout_s():.0f} s ({first_line(exc)}); finished rows are kept: run the "
                        "same command again (with any number of processes) to finish") from None


def barrier(what: str) -> None:
    """Wait until every rank gets here (at most ``timeout_s()``); no-op for one process."""
    me = current()
    if not me.active:
        return

    def step():
        try:  # names the rank that did not arrive
            torch.distributed.monitored_barrier(timeout=timedelta(seconds=timeout_s()),
                                                wait_all_ranks=True)
        except ValueError:  # an older torch: monitored_barrier on a pure gloo group only
            torch.distributed.all_gather([torch.zeros(1) for _ in range(me.world)], torch.zeros(1))

    collective(what, step)


def gather_objects(obj: Any, what: str) -> list:
    """Every rank's ``obj`` (JSON-able: dicts, lists, strings, numbers), in rank order; ``[obj]``
    for one process. Sent as JSON text in CPU tensors, so nothing received is ever unpickled."""
    me = current()
    if not me.active:
        return [obj]

    def step():
        blob = torch.frombuffer(bytearray(json.dumps(obj).encode("utf-8")), dtype=torch.uint8)
        sizes = [torch.zeros(1, dtype=torch.int64) for _ in range(me.world)]
        torch.distributed.all_gather(sizes, torch.tensor([blob.numel()], dtype=torch.int64))
        longest = int(max(int(t) for t in sizes))
        padded = torch.zeros(longest, dtype=torch.uint8)
        padded[:blob.numel()] = blob
        parts = [torch.empty(longest, dtype=torch.uint8) for _ in range(me.world)]
        torch.distributed.all_gather(parts, padded)
        return [json.loads(p[:int(n)].numpy().tobytes().decode("utf-8")) for p, n in zip(parts, sizes)]

    return collective(what, step)


def agree(ok_or_error: str | None, what: str) -> None:
    """Make all ranks stop together: each passes None (fine) or its error line; when any rank
    has one, every rank raises FroqError with the first such line (rank 0's output lock refused,
    say). One process: raises its own error, if any."""
    errors = [e for e in gather_objects(ok_or_error, what) if e]
    if errors:
        raise FroqError(errors[0])


def shard_range(n: int, rank: int, world: int) -> tuple[int, int]:
    """The contiguous slice ``[start, stop)`` of ``n`` items that ``rank`` of ``world`` takes:
    every item exactly once, sizes differ by at most one, no padding duplicates."""
    return n * rank // world, n * (rank + 1) // world


def is_main() -> bool:
    """True for the process that writes a stage's outputs: rank 0, or the only process."""
    return current().main


@contextmanager
def stage_lock(out: str | os.PathLike, device: torch.device | None = None) -> Iterator[Rank]:
    """A stage's ``froq.core.io.output_lock`` on ``out`` for a job of any number of processes.

    One process: exactly ``output_lock``. Several: joins the process group (``device`` picks the
    backend), rank 0 holds the lock for the whole job, and when it is refused (another run
    writes ``out``) every rank stops with the same one-line FroqError; at the end of the block
    every rank waits until rank 0 has written the output. Out: this process's Rank.
    """
    me = init(device)
    if not me.active:
        with output_lock(out):
            yield me
        return
    with ExitStack() as stack:
        error = None
        if me.main:
            try:
                stack.enter_context(output_lock(out))
            except FroqError as exc:
                error = str(exc)
        agree(error, "taking the output lock")
        yield me
        # the others wait until rank 0 has written: a next stage in the same job may read it
        barrier("waiting for rank 0 to write the output")
