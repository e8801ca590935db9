"""CR-FIQA (Boutros et al., CVPR 2023): the learned quality regression unit of a CR-FIQA model.

Only for CR-FIQA backbones (registry ``crfiqa_iresnet50`` = CR-FIQA(S), ``crfiqa_iresnet100`` =
CR-FIQA(L)): quality = the output of the model's ``qs`` unit (Linear 512 → 1 on the embedding),
as the authors' ``getQualityScore.py`` writes it. Higher = better.
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import torch

from baselineFIQA.methods.common import MethodResult, score_folder
from face_recognition_model.loading import FRModel
from froq.core.errors import FroqError
from froq.core.images import FailureLog

NAME = "crfiqa"
DESCRIPTION = "CR-FIQA: the quality head of a CR-FIQA iResNet; higher = better"
OPTIONS: dict = {}


def components(options: dict) -> tuple[str, ...]:
    """No extra columns."""
    return ()


def check(fr: FRModel, options: dict) -> None:
    """FroqError unless the model has CR-FIQA's quality unit."""
    if not callable(getattr(fr.network, "embed_and_quality", None)):
        raise FroqError(f"crfiqa: model '{fr.arch}' ({fr.config_path or 'FR config'}) has no CR-FIQA "
                        "quality head; use a CR-FIQA model (arch crfiqa_iresnet50 or crfiqa_iresnet100 "
                        "with its *backbone.pth)")


def score(fr: FRModel, root: str | Path, *, batch_size: int = 32, num_workers: int = 0,
          paths: Sequence[str] | None = None, failures: FailureLog | None = None,
          resume_path: str | Path | None = None, options: dict) -> MethodResult:
    """CR-FIQA quality of every readable image of ``root``."""
    check(fr, options)

    @torch.no_grad()
    def batch_fn(_paths, images):
        return {"quality": fr.network.embed_and_quality(images)[1].float()}

    return score_folder(fr, root, batch_fn, (), batch_size=batch_size, num_workers=num_workers,
                        paths=paths, failures=failures, desc=NAME, resume_path=resume_path,
                        settings={"method": NAME})
