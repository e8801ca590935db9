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

The four residual stages: iResNet ``layer1`` .. ``layer4``; AdaFace the last block of each stage
of ``body`` (``stage_ends``; otherwise blocks grouped by output width). Models without
BatchNorm2d running statistics (dlib's network, whose batch norms are folded into fixed affine
layers) are refused.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Sequence

import torch
from torch import nn

from baselineFIQA.methods.common import MethodResult, score_folder
from face_recognition_model.loading import FRModel
from froq.core.config import Key
from froq.core.errors import FroqError
from froq.core.images import FailureLog

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


def bn_layers(network: nn.Module) -> list[nn.BatchNorm2d]:
    """Every BatchNorm2d with running statistics, in ``modules()`` order."""
    return [m for m in network.modules() if isinstance(m, nn.BatchNorm2d)
            and m.track_running_stats and m.running_mean is not None and m.running_var is not None]


def _last_bn_width(block: nn.Module) -> int | None:
    widths = [m.num_features for m in block.modules() if isinstance(m, nn.BatchNorm2d)]
    return widths[-1] if widths else None


def residual_stages(network: nn.Module, arch: str = "") -> list[nn.Module]:
    """The four modules whose outputs are the four residual stage outputs (see module docstring).

    Out: 4 modules. FroqError if the family is unknown.
    """
    from face_recognition_model.iresnet import IResNet

    if isinstance(network, IResNet):
        return [network.layer1, network.layer2, network.layer3, network.layer4]
    body = getattr(network, "body", None)
    if isinstance(body, nn.Sequential) and len(body) >= 4:
        ends = getattr(network, "stage_ends", None)
        if ends is None:  # group consecutive blocks by their output width
            widths = [_last_bn_width(b) for b in body]
            ends = [i for i in range(len(body)) if i == len(body) - 1 or widths[i + 1] != widths[i]]
        if len(ends) == 4:
            return [body[i] for i in ends]
    raise FroqError(f"grafiqs: do not know the four residual stages of model "
                    f"'{arch or type(network).__name__}' (supported: iResNet layer1..4, AdaFace body)")


def check(fr: FRModel, options: dict) -> None:
    """FroqError unless the model has BatchNorm2d running statistics and known residual stages."""
    if not bn_layers(fr.network):
        raise FroqError(f"grafiqs: model '{fr.arch}' has no BatchNorm2d layers with running statistics "
                        "(e.g. dlib's network folds them into fixed affine layers); GraFIQs needs "
                        "BatchNorm running statistics — use a model such as AdaFace or iResNet")
    residual_stages(fr.network, fr.arch)


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
          resume_path: str | Path | None = None, options: dict) -> MethodResult:
    """GraFIQs quality (all five variants) of every readable image of ``root``."""
    network = fr.network
    stages = residual_stages(network, fr.arch)
    bns = bn_layers(network)
    log.info("grafiqs: %d BatchNorm2d layers; quality column = %s variant", len(bns), options["variant"])

    def batch_fn(_paths, images):
        out = grafiqs_batch(network, images, stages, bns)
        return {"quality": out[options["variant"]], **out}

    return score_folder(fr, root, batch_fn, VARIANTS, batch_size=batch_size, num_workers=num_workers,
                        paths=paths, failures=failures, desc=NAME, resume_path=resume_path,
                        settings={"method": NAME, **options})
