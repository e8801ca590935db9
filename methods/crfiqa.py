"""CR-FIQA (Boutros et al., CVPR 2023): the learned quality regression unit of a CR-FIQA model.

Only for models whose layout declares a quality head (registry ``crfiqa_iresnet50`` = CR-FIQA(S),
``crfiqa_iresnet100`` = CR-FIQA(L)): quality = the output of the model's ``qs`` unit (Linear
512 → 1 on the embedding), as the authors' ``getQualityScore.py`` writes it. Higher = better.
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import torch

from face_recognition_model.loading import FRModel
from froq.core.images import FailureLog
from froq.core.runner import RunResult
from methods.common import score_images

NAME = "crfiqa"
DESCRIPTION = "CR-FIQA: the quality head of a CR-FIQA iResNet; higher = better"
OPTIONS: dict = {}


def components(options: dict) -> tuple[str, ...]:
    """No extra columns."""
    return ()


def check(fr: FRModel, options: dict) -> None:
    """FroqError (one line, the layout's reason) unless the model declares a quality head."""
    fr.layout().require("quality_head", NAME, fr.arch)


def score(fr: FRModel, root: str | Path, *, batch_size: int = 32, num_workers: int = 0,
          paths: Sequence[str] | None = None, failures: FailureLog | None = None,
          resume_path: str | Path | None = None, options: dict) -> RunResult:
    """CR-FIQA quality of every readable image of ``root``: the head on the forward's embedding."""
    head = fr.layout().require("quality_head", NAME, fr.arch)

    @torch.no_grad()
    def batch_fn(_paths, images):
        return head(fr.network(images)).float()

    return score_images(fr, root, NAME, options, batch_fn, ["quality"],
                        batch_size=batch_size, paths=paths, num_workers=num_workers, resume_path=resume_path,
                        failures=failures)
