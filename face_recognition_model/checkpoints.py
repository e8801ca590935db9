"""Safe checkpoint reading and strict state-dict matching shared by the model families."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Mapping

import torch

from froq.core.errors import FroqError, first_line


def read_checkpoint(path: str | os.PathLike, hint: str = "") -> Mapping[str, torch.Tensor]:
    """Load a ``.ckpt``/``.pth``/``.pt`` with ``weights_only=True`` (never arbitrary unpickling).

    In: the file. Out: the raw loaded object's state dict: ``obj["state_dict"]`` for Lightning
    checkpoints, ``obj["model"]``/``obj["state_dict"]`` wrappers unwrapped, else ``obj`` itself.
    Raises FroqError (with ``hint`` on where to get the weights) if missing or unreadable.
    """
    path = Path(path)
    if not path.is_file():
        raise FroqError(f"weights file not found: {path}" + (f" — {hint}" if hint else ""))
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises many types for a bad file
        raise FroqError(f"{path}: cannot be read as a PyTorch checkpoint with weights_only=True "
                        f"({first_line(exc)})") from None
    for wrapper in ("state_dict", "model", "model_state_dict"):
        if isinstance(obj, Mapping) and wrapper in obj and isinstance(obj[wrapper], Mapping):
            obj = obj[wrapper]
            break
    if not isinstance(obj, Mapping):
        raise FroqError(f"{path}: expected a state dict (mapping of tensors), got {type(obj).__name__}")
    return obj


def strip_prefix(state: Mapping[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    """State dict → a copy with ``prefix`` removed from every key when every key has it (e.g. the
    ``module.`` of a DataParallel checkpoint), else unchanged."""
    if state and all(k.startswith(prefix) for k in state):
        return {k[len(prefix):]: v for k, v in state.items()}
    return dict(state)


def load_matching(model: torch.nn.Module, state: Mapping[str, torch.Tensor], source: str,
                  ignore_prefixes: tuple[str, ...] = (), expected: str = "") -> None:
    """Copy ``state`` into ``model`` requiring identical keys and shapes.

    Keys starting with any of ``ignore_prefixes`` are dropped first. On any mismatch raises
    FroqError naming ``source``, the first few missing / unexpected / wrongly shaped keys and
    (when given) ``expected``, what the model wants.
    """
    state = {k: v for k, v in state.items() if not k.startswith(ignore_prefixes)}
    own = model.state_dict()
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    shape = [f"{k} {tuple(state[k].shape)} vs expected {tuple(own[k].shape)}"
             for k in own if k in state and hasattr(state[k], "shape") and tuple(state[k].shape) != tuple(own[k].shape)]
    if missing or unexpected or shape:
        parts = []
        if missing:
            parts.append(f"{len(missing)} missing (e.g. {', '.join(missing[:3])})")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected (e.g. {', '.join(unexpected[:3])})")
        if shape:
            parts.append(f"{len(shape)} wrong shape (e.g. {'; '.join(shape[:3])})")
        raise FroqError(f"{source}: checkpoint does not match the architecture: " + "; ".join(parts)
                        + (f" — expected {expected}" if expected else ""))
    model.load_state_dict(dict(state), strict=True)
