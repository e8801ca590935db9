"""CurricularFace IR-101 (Huang et al., CVPR 2020) with the official module layout.

Two published layouts share the module names (``input_layer``, ``output_layer`` registered before
``body``, ``body.<i>.shortcut_layer`` / ``body.<i>.res_layer``; ``output_layer`` = BatchNorm2d(512),
Dropout(0.4), Flatten, Linear(512·7·7, 512), BatchNorm1d(512, affine=False)); they differ in the
residual branch of a unit:

- ``tface`` (TFace ``torchkit/backbone/model_irse.py``, ``IR_101``): ``res_layer`` = BN, conv3×3,
  BN, PReLU, conv3×3 (stride), BN — six entries, ``res_layer.0`` … ``res_layer.5``;
- ``cvpr2020`` (the paper's repository HuangYG123/CurricularFace ``backbone/model_irse.py``, whose
  released ``CurricularFace_Backbone.pth`` is a plain state dict of ``IR_101([112, 112])``):
  BN, conv3×3, PReLU, conv3×3 (stride), BN — five entries, no BN after the first convolution.

``variant: auto`` (default) reads the layout from the checkpoint's keys (``body.0.res_layer.5.*``
only exists in TFace's). IR-101 is ``num_layers=100``: stages of 3, 13, 30, 3 units, widths 64, 128,
256, 512, each stage starting with a stride-2 unit. Both forwards call ``body`` as one module; ours
too. ``forward`` returns the un-normalised 512-D embedding (the CVPR 2020 forward also returns the
flattened conv map; it is not part of the embedding).

Input: RGB 112×112 aligned faces scaled to [-1, 1] (``(pixel/255 - 0.5) / 0.5``).
"""

from __future__ import annotations

import logging

import torch
from torch import nn

from face_recognition_model.adaface import BasicBlockIR, IRBackbone, _ResidualUnit, _shortcut
from face_recognition_model.checkpoints import load_matching, read_checkpoint, strip_prefix
from froq.core.errors import FroqError

log = logging.getLogger(__name__)

SOURCE = ("https://github.com/HuangYG123/CurricularFace (README, 'Model': CurricularFace_Backbone.pth, "
          "IR-101) or a TFace IR_101 Backbone checkpoint (https://github.com/Tencent/TFace)")
VARIANTS = ("auto", "tface", "cvpr2020")
STAGES_IR101 = (3, 13, 30, 3)
WIDTHS = (64, 64, 128, 256, 512)


class UnitCVPR2020(_ResidualUnit):
    """The CVPR 2020 release's IR unit: BN → conv3×3 → PReLU → conv3×3 (stride) → BN, + shortcut."""

    def __init__(self, in_channels: int, depth: int, stride: int) -> None:
        super().__init__()
        self.shortcut_layer = _shortcut(in_channels, depth, stride)
        self.res_layer = nn.Sequential(
            nn.BatchNorm2d(in_channels),
            nn.Conv2d(in_channels, depth, (3, 3), (1, 1), 1, bias=False),
            nn.PReLU(depth),
            nn.Conv2d(depth, depth, (3, 3), stride, 1, bias=False),
            nn.BatchNorm2d(depth),
        )


class CurricularFaceIR(IRBackbone):
    """CurricularFace IR backbone (``variant`` ``tface`` or ``cvpr2020``) for 112×112 inputs."""

    why_no_quality_head = ("CurricularFace has no learned quality unit (CR-FIQA needs arch "
                           "crfiqa_iresnet50/100)")

    def __init__(self, stages=STAGES_IR101, variant: str = "tface") -> None:
        if variant not in ("tface", "cvpr2020"):
            raise ValueError(f"CurricularFace variant must be tface or cvpr2020 (got {variant!r})")
        super().__init__(stages, WIDTHS, BasicBlockIR if variant == "tface" else UnitCVPR2020)
        self.variant = variant

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, 3, 112, 112) in [-1, 1] → un-normalised embedding (B, 512); ``body`` called as one module."""
        return self.output_layer(self.body(self.input_layer(x)))


def checkpoint_variant(state) -> str:
    """The layout of a CurricularFace state dict from its keys: ``tface`` when the first unit's
    residual branch has a sixth entry (``body.0.res_layer.5.*``), else ``cvpr2020``."""
    return "tface" if any(k.startswith("body.0.res_layer.5.") for k in state) else "cvpr2020"


def build_curricularface_ir101(weights: str | None = None, variant: str = "auto",
                               **kwargs) -> CurricularFaceIR:
    """CurricularFace IR-101; ``weights`` = ``CurricularFace_Backbone.pth`` / a TFace ``IR_101``
    backbone state dict (a ``module.`` prefix is removed), or None (random init, ``tface`` layout).
    ``variant``: auto | tface | cvpr2020. Out: eval-mode model. FroqError (one line naming the
    missing / unexpected keys) for a checkpoint of another architecture."""
    if kwargs:
        raise TypeError(f"unexpected CurricularFace options: {', '.join(kwargs)} (known: variant)")
    if variant not in VARIANTS:
        raise FroqError(f"curricularface_ir101: model.kwargs.variant must be one of {', '.join(VARIANTS)} "
                        f"(got {variant!r})")
    state = None
    if weights is not None:
        state = strip_prefix(read_checkpoint(weights, f"download it from {SOURCE}"), "module.")
        if variant == "auto":
            variant = checkpoint_variant(state)
            log.info("%s: CurricularFace layout '%s' (from its keys)", weights, variant)
    model = CurricularFaceIR(STAGES_IR101, "tface" if variant == "auto" else variant)
    if state is not None:
        load_matching(model, state, str(weights),
                      expected=f"a CurricularFace IR-101 backbone ({model.variant} layout; {SOURCE})")
    return model.eval()
