"""Deterministic generated weights in an official key layout (for tests and benchmarks only).

Official AdaFace checkpoints cannot be downloaded here; the conformance target
(``shared/reference/froq-golden``) was produced with a checkpoint built by a fixed rule from a
key/shape manifest (``shared/reference/adaface/<arch>.state_dict.tsv``). ``generated_state_dict``
implements that rule; ``write_generated_checkpoint`` saves it as a Lightning-style ``.ckpt``.
``generated_like`` applies the same rule to any module's own state dict (no manifest needed).
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Iterable, Mapping

import torch

from froq.core.errors import FroqError
from froq.core.io import atomic_open


def read_manifest(path: str | os.PathLike) -> list[tuple[str, tuple[int, ...]]]:
    """A ``key<TAB>shape`` manifest (``#`` header, shape like ``64x3x3x3``; ``scalar`` or empty = 0-d) →
    ``[(key, shape), ...]`` in file order."""
    out = []
    with open(path, encoding="utf-8") as fh:
        for line_no, line in enumerate(fh, 1):
            line = line.rstrip("\n")
            if not line or line.startswith("#"):
                continue
            key, _, shape = line.partition("\t")
            try:
                dims = (tuple(int(d) for d in shape.split("x"))
                        if shape.strip() not in ("", "scalar") else ())
            except ValueError:
                raise FroqError(f"{path}:{line_no}: cannot read shape {shape!r}") from None
            out.append((key, dims))
    if not out:
        raise FroqError(f"{path}: no key lines")
    return out


def generated_tensor(index: int, key: str, shape: tuple[int, ...]) -> torch.Tensor:
    """The rule's tensor for the ``index``-th manifest line (generator seeded with ``index``)."""
    if key.endswith("num_batches_tracked"):
        return torch.tensor(0)
    g = torch.Generator().manual_seed(index)
    if key.endswith("running_mean"):
        return 0.1 * torch.randn(shape, generator=g)
    if key.endswith("running_var"):
        return 0.5 + torch.rand(shape, generator=g)
    if len(shape) >= 2:
        return torch.randn(shape, generator=g) / math.sqrt(math.prod(shape[1:]))
    if key.endswith(".bias"):
        return 0.1 * torch.randn(shape, generator=g)
    return 1 + 0.1 * torch.randn(shape, generator=g)


def generated_state_dict(entries: Iterable[tuple[str, tuple[int, ...]]]) -> dict[str, torch.Tensor]:
    """``[(key, shape), ...]`` → ``{key: tensor}`` by the rule, keys unchanged."""
    return {key: generated_tensor(i, key, tuple(shape)) for i, (key, shape) in enumerate(entries)}


def generated_like(state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The rule applied to an existing state dict's keys and shapes (in its order)."""
    return generated_state_dict((k, tuple(v.shape)) for k, v in state.items())


def write_generated_checkpoint(manifest: str | os.PathLike, out: str | os.PathLike) -> Path:
    """Build the rule's checkpoint for ``manifest`` and save ``{"state_dict": ...}`` to ``out``."""
    state = generated_state_dict(read_manifest(manifest))
    out = Path(out)
    with atomic_open(out, "wb") as fh:
        torch.save({"state_dict": state}, fh)
    return out
