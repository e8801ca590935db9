"""GraFIQs (Kolf, Damer, Boutros, CVPRW 2024): gradient magnitudes of a batch-norm-statistics loss.

For one image, every ``BatchNorm2d`` of the FR model sees an input whose per-channel mean and
biased variance (over the spatial positions) are compared with the layer's running statistics:

    BNS = (1/L) · Σ_l [ MSE(mean_l, running_mean_l) + MSE(var_l, running_var_l) ]

(MSE = mean over the channels). BNS is back-propagated to the input image and to the outputs of the
four residual stages; the sum of absolute gradients over each of these five tensors gives the
variants ``image``, ``block1`` .. ``block4`` (the authors' code writes all five).

Sign: a larger gradient means the image is further from the training distribution, i.e. LOWER
quality; the authors' code writes the raw (positive) sums. Here every column is the NEGATED sum,
so higher = better like every other method of this toolkit (rankings are those of the paper).
``quality`` is the variant chosen with ``variant`` (default ``image``).

The statistics are computed per sample, so a batch gives exactly the per-image results (the loss
of the batch is the sum of independent per-image losses).

The four residual stages and the batch norms are what the model's layout declares
(``fr.layout().stages`` / ``.batch_norms``): iResNet ``layer1`` .. ``layer4``, AdaFace the last
block of each stage of ``body``. Models without BatchNorm2d running statistics (dlib's network,
whose batch norms are folded into fixed affine layers) or without known stages (ONNX graphs) are
refused with the layout's reason.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Sequence

import torch
from torch import nn

from face_recognition_model.loading import FRModel
from froq.core.config import Key
from froq.core.errors import FroqError
from froq.core.images import FailureLog
from froq.core.runner import RunResult
from methods.common import score_images

log = logging.getLogger(__name__)

NAME = "grafiqs"
DESCRIPTION = "GraFIQs: −Σ|∂ BN-statistics loss / ∂ image or stage output|; higher = better"
VARIANTS = ("image", "block1", "block2", "block3", "block4")

OPTIONS = {
    "variant": Key("str", default="image", choices=VARIANTS,
                   help="which gradient sum is the 'quality' column (all five are written)"),
}


def components(options: dict) -> tuple[str, ...]:
    """All five variants are written as columns."""
    return VARIANTS


def model_parts(fr: FRModel) -> tuple[list[nn.Module], list[nn.BatchNorm2d]]:
    """(the four residual stage modules, the BatchNorm2d modules with running statistics) of the
    model, from its layout; FroqError (one line, the layout's reason) when it lacks either."""
    layout = fr.layout()
    bn_names = layout.require("batch_norms", NAME, fr.arch)
    stage_names = layout.require("stages", NAME, fr.arch)
    get = fr.network.get_submodule
    return [get(n) for n in stage_names], [get(n) for n in bn_names]


def check(fr: FRModel, options: dict) -> None:
    """FroqError unless the model declares BatchNorm2d running statistics and four stages."""
    model_parts(fr)


def grafiqs_batch(network: nn.Module, images: torch.Tensor, stages: Sequence[nn.Module],
                  bns: Sequence[nn.BatchNorm2d]) -> dict[str, torch.Tensor]:
    """Preprocessed batch (B, 3, H, W) → {variant: (B,) NEGATED sum of |gradient|} for the five
    variants (see module docstring). Per-sample statistics: a batch equals its images one by one."""
    terms: list[torch.Tensor] = []
    stage_out: dict[int, torch.Tensor] = {}

    def bn_hook(module, inputs, _output):
        x = inputs[0].float()
        mean = x.mean(dim=(2, 3))
        var = x.var(dim=(2, 3), unbiased=False)
        rm, rv = module.running_mean.float(), module.running_var.float()
        terms.append(((mean - rm) ** 2).mean(dim=1) + ((var - rv) ** 2).mean(dim=1))

    def stage_hook(index):
        def hook(_module, _inputs, output):
            stage_out[index] = output
        return hook

    handles = [bn.register_forward_hook(bn_hook) for bn in bns]
    handles += [s.register_forward_hook(stage_hook(i)) for i, s in enumerate(stages)]
    try:
        x = images.detach().clone().requires_grad_(True)
        with torch.enable_grad():
            network(x)
            if len(stage_out) != 4 or not terms:
                raise FroqError("grafiqs: the model's forward did not run its batch norms and four "
                                "residual stages as expected")
            loss = torch.stack(terms).sum(dim=0) / len(terms)  # (B,) per-image BNS loss
            wrt = [x] + [stage_out[i] for i in range(4)]
            grads = torch.autograd.grad(loss.sum(), wrt, allow_unused=True)
            grads = [torch.zeros_like(t) if g is None else g for t, g in zip(wrt, grads)]
    finally:
        for h in handles:
            h.remove()
    return {name: -g.detach().abs().flatten(1).sum(dim=1).double() for name, g in zip(VARIANTS, grads)}


def score(fr: FRModel, root: str | Path, *, batch_size: int = 32, num_workers: int = 0,
          paths: Sequence[str] | None = None, failures: FailureLog | None = None,
          resume_path: str | Path | None = None, options: dict) -> RunResult:
    """GraFIQs quality (the chosen variant) and all five variants of every readable image."""
    network = fr.network
    stages, bns = model_parts(fr)
    log.info("grafiqs: %d BatchNorm2d layers; quality column = %s variant", len(bns), options["variant"])

    def batch_fn(_paths, images):
        out = grafiqs_batch(network, images, stages, bns)
        return torch.stack([out[options["variant"]], *(out[v] for v in VARIANTS)], dim=1)

    return score_images(fr, root, NAME, options, batch_fn, ["quality", *VARIANTS],
                        batch_size=batch_size, paths=paths, num_workers=num_workers, resume_path=resume_path,
                        failures=failures)
