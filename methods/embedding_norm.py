"""Embedding norm (MagFace-style): quality = ‖e(x)‖₂ of the un-normalised FR embedding.

MagFace trains the norm to grow with quality; for other models the norm is a training-free proxy.
Every FR model of this toolkit returns its un-normalised embedding from ``forward``, so this is the
L2 norm of the forward's output. Higher = better.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Sequence

import torch

from face_recognition_model.loading import FRModel
from froq.core.device import autocast_context
from froq.core.images import FailureLog
from froq.core.runner import RunResult
from methods.common import score_images

log = logging.getLogger(__name__)

NAME = "embedding_norm"
DESCRIPTION = "MagFace-style: L2 norm of the un-normalised embedding; higher = better"
OPTIONS: dict = {}


def components(options: dict) -> tuple[str, ...]:
    """No extra columns."""
    return ()


def check(fr: FRModel, options: dict) -> None:
    """Applies to every model."""


def score(fr: FRModel, root: str | Path, *, batch_size: int = 32, num_workers: int = 0,
          paths: Sequence[str] | None = None, failures: FailureLog | None = None,
          resume_path: str | Path | None = None, options: dict) -> RunResult:
    """‖forward(x)‖₂ of every readable image of ``root``."""
    warned = []

    @torch.no_grad()
    def batch_fn(_paths, images):
        with autocast_context(fr.device, enabled=False):
            norms = fr.network(images).float().norm(dim=1)
        if not warned and torch.allclose(norms, torch.ones_like(norms), atol=1e-4):
            warned.append(True)
            log.warning("embedding_norm: model '%s' returns unit-norm embeddings: the norm carries "
                        "no quality information for it", fr.arch)
        return norms

    return score_images(fr, root, NAME, options, batch_fn, ["quality"],
                        batch_size=batch_size, paths=paths, num_workers=num_workers, resume_path=resume_path,
                        failures=failures)
