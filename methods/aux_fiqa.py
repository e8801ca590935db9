"""The auxiliary training-free FIQA of ``baselineFIQA`` (stage 1, spec §2) as a comparison method.

quality = (flip + noise + occlusion) / 3, each the mean cosine similarity between the embedding of
the image and of its perturbed copies (horizontal flip; K seeded noise draws per α; one occluded
grid cell of ``mpx`` pixels at a time). Higher = better. The three components are written as
columns. This wraps ``baselineFIQA.labels.compute_pseudo_labels`` (the FROQ pseudo-labels).
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

from baselineFIQA.labels import PAPER_WEIGHTS, compute_pseudo_labels
from baselineFIQA.perturbations import NOISE_MODELS
from face_recognition_model.loading import FRModel
from froq.core.config import Key, bool_or_auto, float_list, positive_int, int_or_auto
from froq.core.images import FailureLog
from froq.core.runner import RunResult
from methods.common import in_columns

NAME = "aux_fiqa"
DESCRIPTION = "auxiliary FIQA (FROQ pseudo-labels): stability under flip, noise, occlusion; higher = better"
COMPONENTS = ("flip", "noise", "occlusion")

def _cells(value):
    """Validator: one occlusion cell side >= 1, or a list of them."""
    if isinstance(value, list) and value:
        return [positive_int(v) for v in value]
    return positive_int(value)


OPTIONS = {
    "alphas": Key(float_list, default=[0.001], help="noise strengths α"),
    "noise_count": Key(positive_int, default=10, help="noise draws K per α"),
    "mpx": Key(_cells, default=14, help="side of an occlusion cell in pixels, or a list of sides"),
    "noise_model": Key("str", default="mix", choices=NOISE_MODELS,
                       help="mix = (1-a)x + a*n (paper); relative = x + a*std(x)*n"),
    "component_weights": Key(float_list, default=list(PAPER_WEIGHTS),
                             help="weights of flip, noise, occlusion (paper: equal)"),
    "seed": Key("int", default=0),
    "forward_batch": Key(int_or_auto, default="auto",
                         help="perturbed images per forward call; auto = 32 on CPU, 256 on CUDA"),
    "channels_last": Key(bool_or_auto, default="auto",
                         help="channels-last memory format for the forwards; auto = on CPU"),
}


def components(options: dict) -> tuple[str, ...]:
    """flip, noise, occlusion."""
    return COMPONENTS


def check(fr: FRModel, options: dict) -> None:
    """Applies to every model."""


def score(fr: FRModel, root: str | Path, *, batch_size: int = 32, num_workers: int = 0,
          paths: Sequence[str] | None = None, failures: FailureLog | None = None,
          resume_path: str | Path | None = None, options: dict) -> RunResult:
    """Auxiliary-FIQA quality and its three components for every readable image of ``root``."""
    result = compute_pseudo_labels(fr, root, paths=paths, batch_size=batch_size,
                                   alphas=options["alphas"], mpx=options["mpx"],
                                   seed=options["seed"], num_workers=num_workers,
                                   noise_count=options["noise_count"],
                                   forward_batch=options["forward_batch"], resume_path=resume_path,
                                   failures=failures, channels_last=options["channels_last"],
                                   weights=options["component_weights"],
                                   noise_model=options["noise_model"])
    return in_columns(result, ["quality", *COMPONENTS])
