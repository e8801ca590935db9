"""What the FIQA methods share: their result type, the folder loop, per-image seeds, hooks."""

from __future__ import annotations

import hashlib
import logging
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator, Sequence

import numpy as np
import torch

from face_recognition_model.loading import FRModel
from froq.core.batches import iterate_folder
from froq.core.images import FailureLog, list_images
from froq.core.io import RowLog

log = logging.getLogger(__name__)

# batch function: (relative paths, preprocessed images on the model's device) -> {column: (B,)}
BatchFn = Callable[[list[str], torch.Tensor], dict[str, torch.Tensor]]


@dataclass
class MethodResult:
    """Per-image output of a FIQA method, in file order, readable images only.

    paths: relative image paths; quality: (N,) float64, higher = better; components: extra
    per-image columns (N,) in CSV order; failures: the unreadable images that were skipped.
    """

    paths: list[str]
    quality: np.ndarray
    components: dict[str, np.ndarray] = field(default_factory=dict)
    failures: FailureLog = field(default_factory=lambda: FailureLog("scores"))

    def columns(self) -> list[str]:
        """CSV header: path, quality, then the components."""
        return ["path", "quality", *self.components]

    def rows(self) -> Iterator[list]:
        """CSV rows matching ``columns()``."""
        for i, p in enumerate(self.paths):
            yield [p, float(self.quality[i]), *(float(v[i]) for v in self.components.values())]


def score_folder(fr: FRModel, root: str | Path, batch_fn: BatchFn, components: Sequence[str] = (),
                 *, batch_size: int = 32, num_workers: int = 0, paths: Sequence[str] | None = None,
                 failures: FailureLog | None = None, desc: str = "scores",
                 resume_path: str | Path | None = None, settings: dict | None = None) -> MethodResult:
    """Run ``batch_fn`` over the readable images of ``root`` (read with ``froq.core.images``).

    In: the FR model (its preprocessing and device are used), the folder or explicit relative
    ``paths``, the batch function returning ``quality`` and every name of ``components`` as (B,)
    tensors; optionally ``resume_path`` (final CSV: finished rows are kept in ``<it>.partial`` and
    reused when run again with the same ``settings``). Out: ``MethodResult`` in file order.
    """
    failures = failures if failures is not None else FailureLog(desc)
    paths = list(paths) if paths is not None else list_images(root)
    header = ["path", "quality", *components]
    rowlog = RowLog(resume_path, header, {"desc": desc, "model": fr.identity(), "root": str(root),
                                          "settings": settings or {}}) if resume_path else None
    done: dict[str, list] = {k: v[1:] for k, v in rowlog.done.items()} if rowlog else {}
    for batch_paths, images in iterate_folder(root, fr.preprocess, batch_size, paths=paths,
                                              done=set(done), failures=failures,
                                              num_workers=num_workers, device=fr.device, desc=desc):
        out = batch_fn(batch_paths, images)
        cols = [out[c].detach().double().cpu().numpy() for c in header[1:]]
        rows = [[p, *(float(c[i]) for c in cols)] for i, p in enumerate(batch_paths)]
        if rowlog:
            rowlog.append(rows)
        for r in rows:
            done[r[0]] = r[1:]
    kept = [p for p in paths if p in done]
    table = np.array([[float(v) for v in done[p]] for p in kept], dtype=np.float64).reshape(len(kept), len(header) - 1)
    return MethodResult(paths=kept, quality=table[:, 0],
                        components={c: table[:, j + 1] for j, c in enumerate(components)},
                        failures=failures)


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
