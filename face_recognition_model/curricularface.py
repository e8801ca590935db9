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

from face_recognition_model.adaface import BasicBlockIR, _ResidualUnit, _shortcut
from face_recognition_model.checkpoints import load_matching, read_checkpoint
from face_recognition_model.layout import EmbeddingTail, ModelLayout, batch_norm_parts
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


class CurricularFaceIR(nn.Module):
    """CurricularFace IR backbone (``variant`` ``tface`` or ``cvpr2020``) for 112×112 inputs."""

    def __init__(self, stages=STAGES_IR101, variant: str = "tface") -> None:
        super().__init__()
        if variant not in ("tface", "cvpr2020"):
            raise ValueError(f"CurricularFace variant must be tface or cvpr2020 (got {variant!r})")
        unit = BasicBlockIR if variant == "tface" else UnitCVPR2020
        self.variant = variant
        self.input_layer = nn.Sequential(nn.Conv2d(3, 64, (3, 3), 1, 1, bias=False), nn.BatchNorm2d(64),
                                         nn.PReLU(64))
        self.output_layer = nn.Sequential(nn.BatchNorm2d(512), nn.Dropout(0.4), nn.Flatten(),
                                          nn.Linear(512 * 7 * 7, 512), nn.BatchNorm1d(512, affine=False))
        blocks, self.stage_ends = [], []
        for s, count in enumerate(stages):
            for i in range(count):
                blocks.append(unit(WIDTHS[s] if i == 0 else WIDTHS[s + 1], WIDTHS[s + 1], 2 if i == 0 else 1))
            self.stage_ends.append(len(blocks) - 1)
        self.body = nn.Sequential(*blocks)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, 3, 112, 112) in [-1, 1] → un-normalised embedding (B, 512)."""
        return self.output_layer(self.body(self.input_layer(x)))

    def after_dropout(self, x: torch.Tensor) -> torch.Tensor:
        """``output_layer`` after its Dropout: Flatten → Linear → BatchNorm1d."""
        for module in list(self.output_layer)[2:]:
            x = module(x)
        return x

    def layout(self) -> ModelLayout:
        """Tail at ``output_layer.1`` (Dropout, p = 0.4), stages = the last unit of each stage,
        every BatchNorm2d; no quality head."""
        return ModelLayout(
            tail=EmbeddingTail("output_layer.1", float(self.output_layer[1].p), self.after_dropout),
            stages=tuple(f"body.{i}" for i in self.stage_ends),
            **batch_norm_parts(self, "its batch norms were removed"),
            why_no_quality_head="CurricularFace has no learned quality unit (CR-FIQA needs arch "
                                "crfiqa_iresnet50/100)")


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
        state = dict(read_checkpoint(weights, f"download it from {SOURCE}"))
        if state and all(k.startswith("module.") for k in state):
            state = {k[len("module."):]: v for k, v in state.items()}
        if variant == "auto":
            variant = checkpoint_variant(state)
            log.info("%s: CurricularFace layout '%s' (from its keys)", weights, variant)
    model = CurricularFaceIR(STAGES_IR101, "tface" if variant == "auto" else variant)
    if state is not None:
        try:
            load_matching(model, state, str(weights))
        except FroqError as exc:
            raise FroqError(f"{exc} — expected a CurricularFace IR-101 backbone ({model.variant} layout; "
                            f"{SOURCE})") from None
    return model.eval()
