"""What the FIQA methods share: the per-image loop, column order, per-image seeds, an input hook.

The per-image loop itself is ``froq.core.runner.run_images`` (through ``score_images``); there is no other.
"""

from __future__ import annotations

import hashlib
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator, Sequence

import torch

from face_recognition_model.loading import FRModel
from froq.core.runner import RunResult, run_images


def score_images(fr: FRModel, root: str | Path, method: str, options: dict, batch_fn, columns: Sequence[str],
                 **loop) -> RunResult:
    """``batch_fn(paths, images)`` over ``fr``-preprocessed batches of ``root`` → the ``RunResult`` of
    ``columns``; ``loop``: the batch_size, num_workers, paths, failures and resume_path of a method's
    ``score``. Partial rows are resumed only for the same method, ``options`` (with anything it
    resolved, e.g. SER-FIQ's p), model identity and folder."""
    settings = {"stage": "score", "method": method, "options": dict(options), "model": fr.identity(),
                "root": str(root)}
    return run_images(root, batch_fn, list(columns), preprocess=fr.preprocess, device=fr.device, desc=method,
                      settings=settings, **loop)


def in_columns(result: RunResult, columns: Sequence[str]) -> RunResult:
    """``result`` with its columns reordered (or selected) as ``columns``."""
    columns = list(columns)
    if columns == result.columns:
        return result
    index = [result.columns.index(c) for c in columns]
    return RunResult(paths=result.paths, values=result.values[:, index], columns=columns,
                     failures=result.failures)


def image_seed(seed: int, path: str) -> int:
    """A 63-bit seed for one image from the run's ``seed`` and the image's relative path, so its
    random draws do not depend on the batch size, the order or the other images."""
    digest = hashlib.sha256(f"{seed}:{path}".encode()).digest()
    return int.from_bytes(digest[:8], "little") & ((1 << 63) - 1)


class StopForward(Exception):
    """Raised by a hook to end a forward pass once the wanted tensor is captured."""


@contextmanager
def capture_input(module: torch.nn.Module, stop: bool = True) -> Iterator[dict]:
    """Within the context, every call of ``module`` stores its first input in ``box['x']`` and
    (``stop``) aborts the forward with ``StopForward``. Out: the dict ``box``."""
    box: dict = {}

    def hook(_mod, inputs):
        box["x"] = inputs[0]
        if stop:
            raise StopForward

    handle = module.register_forward_pre_hook(hook)
    try:
        yield box
    finally:
        handle.remove()
