"""AdaFace IR / IR-SE backbones (Kim et al., CVPR 2022) with the official module layout.

Module names, ``named_modules()`` order and state-dict keys/shapes are those of the official
AdaFace ``net.py`` checkpoints (checked against ``shared/reference/adaface``): ``input_layer``,
``output_layer`` (registered before ``body``), ``body.<i>.shortcut_layer`` / ``body.<i>.res_layer``.
As in the official forward, ``body`` is iterated block by block and never called as a module.

Our ``forward`` returns the un-normalised 512-D embedding (the official one returns it divided by
its norm, plus the norm): cosine similarity is unchanged, and the norm stays available.
"""

from __future__ import annotations

from functools import partial
from typing import Callable, Mapping, Sequence

import torch
from torch import nn

from face_recognition_model.checkpoints import load_matching, read_checkpoint, strip_prefix
from face_recognition_model.layout import EmbeddingTail, ModelLayout, batch_norm_parts


WEIGHTS_HINT = ("official AdaFace checkpoints are published at https://github.com/mk-minchul/AdaFace "
                "(README, 'Pretrained Models'); put the .ckpt under weights/")

# blocks per stage, and (in, out) channels per stage
_STAGES = {
    18: [2, 2, 2, 2], 34: [3, 4, 6, 3], 50: [3, 4, 14, 3], 100: [3, 13, 30, 3], 101: [3, 13, 30, 3],
    152: [3, 8, 36, 3], 200: [3, 24, 36, 3],
}


class SEModule(nn.Module):
    """Squeeze-and-excitation gate: x · sigmoid(fc2(relu(fc1(avgpool(x)))))."""

    def __init__(self, channels: int, reduction: int = 16) -> None:
        super().__init__()
        self.avg_pool = nn.AdaptiveAvgPool2d(1)
        self.fc1 = nn.Conv2d(channels, channels // reduction, kernel_size=1, padding=0, bias=False)
        self.relu = nn.ReLU(inplace=True)
        self.fc2 = nn.Conv2d(channels // reduction, channels, kernel_size=1, padding=0, bias=False)
        self.sigmoid = nn.Sigmoid()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        gate = self.sigmoid(self.fc2(self.relu(self.fc1(self.avg_pool(x)))))
        return x * gate


def _shortcut(in_channels: int, depth: int, stride: int) -> nn.Module:
    if in_channels == depth:
        return nn.MaxPool2d(1, stride)
    return nn.Sequential(nn.Conv2d(in_channels, depth, (1, 1), stride, bias=False), nn.BatchNorm2d(depth))


class _ResidualUnit(nn.Module):
    """``res_layer(x) + shortcut_layer(x)``; subclasses build the two branches (in that order)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shortcut = self.shortcut_layer(x)
        return self.res_layer(x) + shortcut


class BasicBlockIR(_ResidualUnit):
    """IR unit: BN → conv3×3 → BN → PReLU → conv3×3 (stride) → BN [→ SE], plus the shortcut."""

    def __init__(self, in_channels: int, depth: int, stride: int, se: bool = False) -> None:
        super().__init__()
        self.shortcut_layer = _shortcut(in_channels, depth, stride)
        self.res_layer = nn.Sequential(
            nn.BatchNorm2d(in_channels),
            nn.Conv2d(in_channels, depth, (3, 3), (1, 1), 1, bias=False),
            nn.BatchNorm2d(depth),
            nn.PReLU(depth),
            nn.Conv2d(depth, depth, (3, 3), stride, 1, bias=False),
            nn.BatchNorm2d(depth),
        )
        if se:
            self.res_layer.add_module("se_block", SEModule(depth, 16))


class BottleneckIR(_ResidualUnit):
    """IR bottleneck unit (IR-152/200): 1×1 reduce → 3×3 → 1×1 expand (stride), BN/PReLU between."""

    def __init__(self, in_channels: int, depth: int, stride: int, se: bool = False) -> None:
        super().__init__()
        mid = depth // 4
        self.shortcut_layer = _shortcut(in_channels, depth, stride)
        self.res_layer = nn.Sequential(
            nn.BatchNorm2d(in_channels),
            nn.Conv2d(in_channels, mid, (1, 1), (1, 1), 0, bias=False),
            nn.BatchNorm2d(mid),
            nn.PReLU(mid),
            nn.Conv2d(mid, mid, (3, 3), (1, 1), 1, bias=False),
            nn.BatchNorm2d(mid),
            nn.PReLU(mid),
            nn.Conv2d(mid, depth, (1, 1), stride, 0, bias=False),
            nn.BatchNorm2d(depth),
        )
        if se:
            self.res_layer.add_module("se_block", SEModule(depth, 16))


class IRBackbone(nn.Module):
    """The IR layout AdaFace and CurricularFace share for 112×112 input: ``input_layer``,
    ``output_layer`` (registered before ``body``) and ``body``, the residual units of the stages.

    ``stages``: units per stage; ``channels``: the stem width then each stage's width;
    ``unit(in_channels, depth, stride)`` builds a unit (stride 2 for a stage's first).
    ``stage_ends`` lists the indices in ``body`` of the last unit of each stage (the ``stages`` of
    its ``layout()``, used by methods that need per-stage outputs, e.g. GraFIQs).
    """

    why_no_quality_head = ""

    def __init__(self, stages: Sequence[int], channels: Sequence[int], unit: Callable[..., nn.Module]) -> None:
        super().__init__()
        out_channels = channels[-1]
        self.input_layer = nn.Sequential(nn.Conv2d(3, 64, (3, 3), 1, 1, bias=False), nn.BatchNorm2d(64),
                                         nn.PReLU(64))
        self.output_layer = nn.Sequential(
            nn.BatchNorm2d(out_channels),
            nn.Dropout(0.4),
            nn.Flatten(),
            nn.Linear(out_channels * 7 * 7, 512),
            nn.BatchNorm1d(512, affine=False),
        )
        blocks = []
        self.stage_ends: list[int] = []
        for stage, count in enumerate(stages):
            in_c, depth = channels[stage], channels[stage + 1]
            for i in range(count):
                blocks.append(unit(in_c if i == 0 else depth, depth, 2 if i == 0 else 1))
            self.stage_ends.append(len(blocks) - 1)
        self.body = nn.Sequential(*blocks)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, 3, 112, 112) → un-normalised embedding (B, 512)."""
        x = self.input_layer(x)
        for block in self.body:  # as the official AdaFace forward: ``body`` itself is never called
            x = block(x)
        return self.output_layer(x)

    def after_dropout(self, x: torch.Tensor) -> torch.Tensor:
        """The deterministic ``output_layer`` modules after its Dropout (Flatten → Linear → BN1d)."""
        for module in list(self.output_layer)[2:]:
            x = module(x)
        return x

    def layout(self) -> ModelLayout:
        """Tail at ``output_layer.1`` (Dropout, p = 0.4), stages = the last block of each stage
        of ``body``, every BatchNorm2d; no quality head."""
        return ModelLayout(
            tail=EmbeddingTail("output_layer.1", float(self.output_layer[1].p), self.after_dropout),
            stages=tuple(f"body.{i}" for i in self.stage_ends),
            **batch_norm_parts(self, "its batch norms were removed"),
            why_no_quality_head=self.why_no_quality_head)


class AdaFaceBackbone(IRBackbone):
    """AdaFace IR-``num_layers`` (``se=True``: IR-SE) for 112×112 BGR input in [−1, 1]."""

    why_no_quality_head = ("AdaFace has no learned quality unit (its embedding norm is "
                           "method embedding_norm; CR-FIQA needs arch crfiqa_iresnet50/100)")

    def __init__(self, num_layers: int, se: bool = False) -> None:
        if num_layers not in _STAGES:
            raise ValueError(f"AdaFace IR depth must be one of {sorted(_STAGES)}")
        bottleneck = num_layers > 101
        super().__init__(_STAGES[num_layers],
                         [64, 256, 512, 1024, 2048] if bottleneck else [64, 64, 128, 256, 512],
                         partial(BottleneckIR if bottleneck else BasicBlockIR, se=se))
        self.num_layers = num_layers
        self.se = se


def adaface_state_dict(obj: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Official checkpoint contents → backbone state dict: drop ``head.*``, strip ``model.``."""
    return strip_prefix({k: v for k, v in obj.items() if not k.startswith("head.")}, "model.")


def build(num_layers: int, se: bool, weights: str | None = None, **kwargs) -> AdaFaceBackbone:
    """AdaFace IR(-SE)-``num_layers``; ``weights`` = a Lightning ``.ckpt`` or a plain state dict, or
    None (random init). Out: eval-mode model; TypeError for any option (AdaFace has none)."""
    if kwargs:
        raise TypeError(f"unexpected AdaFace options: {', '.join(kwargs)}")
    model = AdaFaceBackbone(num_layers, se=se)
    if weights is not None:
        state = adaface_state_dict(read_checkpoint(weights, WEIGHTS_HINT))
        load_matching(model, state, str(weights))
    return model.eval()


# the registry's builders build_ir_<n> and build_ir_se_<n>
for _n in _STAGES:
    globals()[f"build_ir_{_n}"] = partial(build, _n, False)
    globals()[f"build_ir_se_{_n}"] = partial(build, _n, True)
