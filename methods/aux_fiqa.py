"""The auxiliary training-free FIQA of ``baselineFIQA`` (stage 1, spec §2) as a comparison method.

quality = (flip + noise + occlusion) / 3, each the mean cosine similarity between the embedding of
the image and of its perturbed copies (horizontal flip; K seeded noise draws per α; one occluded
grid cell of ``mpx`` pixels at a time). Higher = better. The three components are written as
columns. This wraps ``baselineFIQA.labels.compute_pseudo_labels`` (the FROQ pseudo-labels).
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

from baselineFIQA.labels import compute_pseudo_labels
from baselineFIQA.settings import LABEL_OPTIONS, compute_arguments, resolve_mpx
from face_recognition_model.loading import FRModel
from froq.core.images import FailureLog
from froq.core.runner import RunResult
from methods.common import in_columns

NAME = "aux_fiqa"
DESCRIPTION = "auxiliary FIQA (FROQ pseudo-labels): stability under flip, noise, occlusion; higher = better"
COMPONENTS = ("flip", "noise", "occlusion")

OPTIONS = LABEL_OPTIONS  # the label settings, declared once (baselineFIQA/settings.py)


def components(options: dict) -> tuple[str, ...]:
    """flip, noise, occlusion."""
    return COMPONENTS


def check(fr: FRModel, options: dict) -> None:
    """Applies to every model."""


def score(fr: FRModel, root: str | Path, *, batch_size: int = 32, num_workers: int = 0,
          paths: Sequence[str] | None = None, failures: FailureLog | None = None,
          resume_path: str | Path | None = None, options: dict) -> RunResult:
    """Auxiliary-FIQA quality and its three components for every readable image of ``root``."""
    options = {**options, "mpx": resolve_mpx(options["mpx"], fr.preprocess.size)}
    result = compute_pseudo_labels(fr, root, paths=paths, batch_size=batch_size, num_workers=num_workers,
                                   resume_path=resume_path, failures=failures, **compute_arguments(options))
    return in_columns(result, ["quality", *COMPONENTS])
