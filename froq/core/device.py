"""Device selection: ``auto`` picks CUDA when present, otherwise CPU. Never hard-coded."""

from __future__ import annotations

import torch

from froq.core.distributed import local_cuda_device
from froq.core.errors import FroqError


def resolve_device(name: str | None = "auto") -> torch.device:
    """Map a config value (``auto``, ``cpu``, ``cuda``, ``cuda:1``, ``mps``) to a ``torch.device``.

    In: the config string (None means ``auto``). Out: a usable device; ``auto`` and ``cuda`` give
    ``cuda:LOCAL_RANK`` in a torchrun process on a machine with CUDA.
    Raises FroqError when CUDA is requested but not available.
    """
    name = (name or "auto").strip().lower()
    if name in ("auto", "cuda"):
        # under torchrun each process takes the GPU of its LOCAL_RANK (docs/scaling.md)
        local = local_cuda_device()
        if local is not None:
            return local
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        return torch.device("cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise FroqError(f"device '{name}' was requested but CUDA is not available here; "
                        "set device: auto or device: cpu")
    if name.startswith("cuda:") and int(name[5:] or 0) >= torch.cuda.device_count():
        raise FroqError(f"device '{name}' was requested but this machine has "
                        f"{torch.cuda.device_count()} CUDA device(s); use cuda:0 .. "
                        f"cuda:{torch.cuda.device_count() - 1} or auto")
    if name == "mps" and not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
        raise FroqError("device 'mps' was requested but Apple's MPS is not available here; "
                        "set device: auto or device: cpu")
    try:
        return torch.device(name)
    except RuntimeError as exc:
        raise FroqError(f"unknown device '{name}': use auto, cpu or cuda[:N]") from exc


def autocast_context(device: torch.device, enabled: bool = True):
    """fp16 autocast on CUDA only (the official run's setting); a no-op context on CPU.

    In: the device and whether mixed precision is wanted. Out: a context manager.
    """
    if enabled and device.type == "cuda":
        return torch.autocast(device_type="cuda", dtype=torch.float16)
    return torch.autocast(device_type=device.type, enabled=False)


#: precisions of the forwards that observe no activation (the pseudo-labels): ``auto`` = the
#: official run's (fp16 autocast on CUDA, fp32 on CPU), or one for every device
PRECISIONS = ("auto", "fp32", "bf16", "fp16")


def cpu_has_fast_bf16() -> bool | None:
    """Does this CPU compute bfloat16 natively (AMX tiles or AVX-512 BF16)? From torch's own CPU
    probes; None when this torch build has none. Without either, bf16 autocast is emulated and
    much slower than fp32 (docs/results.md#no-amx: 8.6x slower for dlib's labels on an AVX2 EPYC)."""
    probes = [getattr(torch.cpu, name, None) for name in ("_is_amx_tile_supported", "_is_avx512_bf16_supported")]
    if not all(callable(probe) for probe in probes):
        return None
    try:
        return any(probe() for probe in probes)
    except Exception:  # a private probe that changed: say nothing rather than something wrong
        return None


def precision_context(device: torch.device, precision: str = "auto"):
    """A context manager running the forwards inside it at ``precision``.

    In: the device and one of ``PRECISIONS`` (``bf16``: bfloat16 autocast, on CPU fast where the
    processor has AMX / AVX-512 BF16; ``fp16``: float16 autocast, CUDA only). Out: a context
    manager. FroqError for an unknown precision or fp16 on a CPU.
    """
    if precision == "auto":
        return autocast_context(device, True)
    if precision == "fp32":
        return torch.autocast(device_type=device.type, enabled=False)
    if precision == "bf16":
        return torch.autocast(device_type=device.type, dtype=torch.bfloat16)
    if precision == "fp16" and device.type == "cuda":
        return torch.autocast(device_type="cuda", dtype=torch.float16)
    if precision == "fp16":
        raise FroqError(f"precision fp16 needs CUDA (device is {device.type}): use bf16 or fp32 on a CPU")
    raise FroqError(f"precision {precision!r}: use one of {', '.join(PRECISIONS)}")
