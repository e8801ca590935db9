"""Auxiliary training-free FIQA (spec §2): embedding stability under flip, noise and occlusion.

``pseudo_label_batch`` scores one batch; ``compute_pseudo_labels`` scores a folder (resumable).
Label = mean of the three components; higher = better quality.
"""

from __future__ import annotations

import copy
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F

from baselineFIQA import perturbations
from face_recognition_model.loading import FRModel
from froq.core.device import autocast_context
from froq.core.errors import FroqError
from froq.core.images import FailureLog
from froq.core.runner import RunResult, run_images

log = logging.getLogger(__name__)

COLUMNS = ("path", "flip", "noise", "occlusion", "quality")


@dataclass
class LabelSettings:
    """Constants of the auxiliary FIQA: noise strengths α, K noise draws, occlusion cell (px), seed;
    and how the forwards run: perturbed images per forward call, fp16 autocast on CUDA, the
    channels-last memory format (faster convolutions on CPU; numbers within ~1e-6)."""

    alphas: Sequence[float] = (0.001,)
    noise_count: int = 10
    mpx: int = 14
    seed: int = 0
    forward_batch: int = 256
    autocast: bool = True
    channels_last: bool = False


class PseudoLabeler:
    """Holds the shared noise bank and masks for one FR model and scores batches of inputs."""

    def __init__(self, fr: FRModel, settings: LabelSettings) -> None:
        self.fr = fr
        self.s = settings
        h, w = fr.preprocess.size
        self.noise = perturbations.noise_bank((3, h, w), settings.noise_count, settings.seed).to(fr.device)
        self.masks = perturbations.occlusion_masks(h, w, settings.mpx).to(fr.device)
        self.fill = fr.preprocess.black_value().to(fr.device)
        # the labels need no hooks: their forwards may run on a channels-last copy of the network
        self.network = fr.network
        self.memory_format = torch.contiguous_format
        if settings.channels_last and any(p.dim() == 4 for p in fr.network.parameters()):
            self.network = copy.deepcopy(fr.network).to(memory_format=torch.channels_last)
            self.memory_format = torch.channels_last

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        """Embeddings (N, D) float32 of many model inputs, ``forward_batch`` at a time."""
        outs = []
        with torch.inference_mode(), autocast_context(self.fr.device, self.s.autocast):
            for chunk in torch.split(x, self.s.forward_batch):
                outs.append(self.network(chunk.contiguous(memory_format=self.memory_format)).float())
        return torch.cat(outs)

    def _cos_to(self, ref: torch.Tensor, perturbed: torch.Tensor, per_image: int) -> torch.Tensor:
        """Mean cosine of each image's ``per_image`` perturbed embeddings to its reference."""
        emb = self.embed(perturbed).view(ref.shape[0], per_image, -1)
        return F.cosine_similarity(emb, ref.unsqueeze(1), dim=-1).mean(dim=1)

    def flip_term(self, x: torch.Tensor, ref: torch.Tensor) -> torch.Tensor:
        """(B,) cosine of each image's embedding ``ref`` to its horizontally flipped copy's."""
        return self._cos_to(ref, perturbations.flip(x), 1)

    def noise_term(self, x: torch.Tensor, ref: torch.Tensor) -> torch.Tensor:
        """(B,) mean cosine to the K noisy copies, averaged over the noise strengths α."""
        terms = [self._cos_to(ref, perturbations.add_noise(x, self.noise, a), self.noise.shape[0])
                 for a in self.s.alphas]
        return torch.stack(terms).mean(dim=0)

    def occlusion_term(self, x: torch.Tensor, ref: torch.Tensor) -> torch.Tensor:
        """(B,) mean cosine to the copies with one grid cell occluded, over every cell."""
        # a few images at a time × all masks keeps memory bounded for big batches
        per_image = max(1, self.s.forward_batch // self.masks.shape[0])
        parts = []
        for start in range(0, x.shape[0], per_image):
            xs = x[start:start + per_image]
            parts.append(self._cos_to(ref[start:start + per_image],
                                      perturbations.occlude(xs, self.masks, self.fill), self.masks.shape[0]))
        return torch.cat(parts)

    def score(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """Batch of model inputs (B, 3, H, W) → {'flip','noise','occlusion','quality'} each (B,)."""
        ref = self.embed(x)  # the unperturbed embedding, computed once for all components
        q_flip = self.flip_term(x, ref)
        q_noise = self.noise_term(x, ref)
        q_occ = self.occlusion_term(x, ref)
        quality = (q_flip + q_noise + q_occ) / 3.0
        return {"flip": q_flip.cpu(), "noise": q_noise.cpu(), "occlusion": q_occ.cpu(),
                "quality": quality.cpu()}


def auto_forward_batch(device: torch.device) -> int:
    """``forward_batch: auto``: 256 perturbed images per forward on CUDA, 32 on CPU (measured: on
    CPU bigger chunks only cost memory traffic, 32 is ~1.6x faster than 256)."""
    return 256 if device.type == "cuda" else 32


def auto_channels_last(device: torch.device) -> bool:
    """``channels_last: auto``: on for CPU (measured on this project's 2-core CPU, batch 32, one
    thread: a dlib ResNet forward 1.34x faster, an iResNet-50 forward 1.1x; labels within 1e-6);
    off on CUDA until measured there."""
    return device.type == "cpu"


def compute_pseudo_labels(fr: FRModel, root: str | Path, paths: Sequence[str] | None = None,
                          batch_size: int = 32, alphas: Sequence[float] = (0.001,), mpx: int = 14,
                          seed: int = 0, num_workers: int = 0, noise_count: int = 10,
                          forward_batch: int | str = "auto", resume_path: str | Path | None = None,
                          failures: FailureLog | None = None,
                          channels_last: bool | str = "auto") -> RunResult:
    """Pseudo-labels of the images of ``root`` with model ``fr``.

    In: a loaded FR model, an image folder (or explicit relative ``paths``), the auxiliary FIQA's
    constants, and optionally ``resume_path`` (the final CSV path; finished rows are kept in
    ``<resume_path>.partial`` and reused when run again with the same settings and image files).
    Out: ``RunResult`` with columns flip, noise, occlusion, quality, in file order, readable images
    only; unreadable ones go to ``failures``. FroqError when none is readable.
    """
    if forward_batch in (None, "auto"):
        forward_batch = auto_forward_batch(fr.device)
    if channels_last in (None, "auto"):
        channels_last = auto_channels_last(fr.device)
    settings = LabelSettings(alphas=tuple(float(a) for a in alphas), noise_count=noise_count, mpx=mpx,
                             seed=seed, forward_batch=forward_batch, channels_last=bool(channels_last))
    labeler = PseudoLabeler(fr, settings)

    def batch_fn(_paths: list[str], images: torch.Tensor) -> torch.Tensor:
        scores = labeler.score(images)
        return torch.stack([scores[c] for c in COLUMNS[1:]], dim=1)

    key = {"stage": "pseudo_labels", "model": fr.identity(), "root": str(root),
           # forward_batch is a speed knob: not part of the key
           "settings": {k: v for k, v in settings.__dict__.items() if k != "forward_batch"}}
    result = run_images(root, batch_fn, COLUMNS[1:], preprocess=fr.preprocess, device=fr.device,
                        batch_size=batch_size, paths=paths, num_workers=num_workers,
                        resume_path=resume_path, settings=key, failures=failures,
                        desc="pseudo-labels")
    bad = ~np.isfinite(result.values).all(axis=1)
    if bad.any():
        first = result.paths[int(np.flatnonzero(bad)[0])]
        raise FroqError(f"{root}: {int(bad.sum())} pseudo-label(s) are not finite numbers (e.g. {first}): "
                        f"the FR model ({fr.weights or fr.arch}) gives non-finite embeddings; "
                        "nothing was written")
    return result
