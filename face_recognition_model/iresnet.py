"""insightface ``arcface_torch`` iResNet backbones (iResNet-18/34/50/100/200) and the CR-FIQA variant.

Module and parameter names, and the ``named_modules()`` order, follow arcface_torch's
``backbones/iresnet.py`` so its ``backbone.pth`` files (plain state dicts) load unchanged:

    conv1, bn1, prelu, layer1..layer4 (IBasicBlock: bn1, conv1, bn2, prelu, conv2, bn3,
    downsample = Sequential(1x1 conv, BatchNorm2d) on the first block of each stage),
    bn2, dropout, fc (Linear 512*7*7 -> 512), features (BatchNorm1d(512), weight fixed to 1)

All batch norms use eps = 1e-05 (arcface_torch; some older insightface ports used 2e-05 — pass
``bn_eps`` for those). Every stage starts with a stride-2 block, so a 112x112 input gives a 7x7 map
before ``fc``. ``forward`` returns the un-normalised 512-D embedding (the output of ``features``).

CR-FIQA (Boutros et al., CVPR 2023; fdbtrs/CR-FIQA) trains the same iResNet with one extra linear
unit ``qs`` = Linear(512, 1) on the embedding; its ``*backbone.pth`` therefore holds the iResNet keys
plus ``qs.weight`` (1, 512) and ``qs.bias`` (1,). ``CRFIQAIResNet.forward`` returns the embedding like
every FR model here; ``embed_and_quality`` returns (embedding, quality).

Input (ArcFace and CR-FIQA): RGB, 112x112, ``(pixel/255 - 0.5) / 0.5``.
"""

from __future__ import annotations

from dataclasses import replace
from functools import partial
from typing import Sequence

import torch
from torch import nn

from face_recognition_model.checkpoints import load_matching, read_checkpoint, strip_prefix
from face_recognition_model.layout import EmbeddingTail, ModelLayout, batch_norm_parts


ARCFACE_SOURCE = ("https://github.com/deepinsight/insightface/tree/master/model_zoo "
                  "(arcface_torch backbone.pth, e.g. ms1mv3_arcface_r100_fp16)")
CRFIQA_SOURCE = "https://github.com/fdbtrs/CR-FIQA (Pretrained model: CR-FIQA(S) iresnet50, CR-FIQA(L) iresnet100)"

STAGE_LAYERS = {
    18: (2, 2, 2, 2),
    34: (3, 4, 6, 3),
    50: (3, 4, 14, 3),
    100: (3, 13, 30, 3),
    200: (6, 26, 60, 6),
}
STAGE_WIDTHS = (64, 128, 256, 512)
FC_SCALE = 7 * 7


def _conv3x3(in_planes: int, out_planes: int, stride: int = 1) -> nn.Conv2d:
    """3x3 convolution, padding 1, no bias."""
    return nn.Conv2d(in_planes, out_planes, kernel_size=3, stride=stride, padding=1, bias=False)


class IBasicBlock(nn.Module):
    """Pre-activation-style iResNet block: BN → conv3x3 → BN → PReLU → conv3x3(stride) → BN, plus
    the shortcut (identity, or ``downsample`` = 1x1 conv + BN when the shape changes)."""

    expansion = 1

    def __init__(self, inplanes: int, planes: int, stride: int = 1,
                 downsample: nn.Module | None = None, bn_eps: float = 1e-05) -> None:
        super().__init__()
        self.bn1 = nn.BatchNorm2d(inplanes, eps=bn_eps)
        self.conv1 = _conv3x3(inplanes, planes)
        self.bn2 = nn.BatchNorm2d(planes, eps=bn_eps)
        self.prelu = nn.PReLU(planes)
        self.conv2 = _conv3x3(planes, planes, stride)
        self.bn3 = nn.BatchNorm2d(planes, eps=bn_eps)
        self.downsample = downsample
        self.stride = stride

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, inplanes, H, W) → (B, planes, H/stride, W/stride)."""
        out = self.bn3(self.conv2(self.prelu(self.bn2(self.conv1(self.bn1(x))))))
        shortcut = self.downsample(x) if self.downsample is not None else x
        return out + shortcut


class IResNet(nn.Module):
    """arcface_torch's iResNet; ``forward(x (B,3,112,112)) -> (B, num_features)`` un-normalised.

    dropout: p of the Dropout before ``fc`` (arcface_torch's default 0). fp16: run the trunk under
    CUDA fp16 autocast (``fc`` and ``features`` in fp32), as arcface_torch's flag does; ignored on CPU.
    """

    fc_scale = FC_SCALE

    def __init__(self, layers: Sequence[int], dropout: float = 0.0, num_features: int = 512,
                 fp16: bool = False, bn_eps: float = 1e-05) -> None:
        super().__init__()
        if len(layers) != 4:
            raise ValueError(f"iResNet needs 4 stage depths, got {list(layers)}")
        self.fp16 = bool(fp16)
        self.num_features = num_features
        self.inplanes = 64
        self.conv1 = nn.Conv2d(3, self.inplanes, kernel_size=3, stride=1, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(self.inplanes, eps=bn_eps)
        self.prelu = nn.PReLU(self.inplanes)
        self.layer1 = self._make_layer(STAGE_WIDTHS[0], layers[0], bn_eps)
        self.layer2 = self._make_layer(STAGE_WIDTHS[1], layers[1], bn_eps)
        self.layer3 = self._make_layer(STAGE_WIDTHS[2], layers[2], bn_eps)
        self.layer4 = self._make_layer(STAGE_WIDTHS[3], layers[3], bn_eps)
        self.bn2 = nn.BatchNorm2d(STAGE_WIDTHS[3], eps=bn_eps)
        self.dropout = nn.Dropout(p=dropout, inplace=True)
        self.fc = nn.Linear(STAGE_WIDTHS[3] * self.fc_scale, num_features)
        self.features = nn.BatchNorm1d(num_features, eps=bn_eps)
        self._init_random()

    def _make_layer(self, planes: int, blocks: int, bn_eps: float) -> nn.Sequential:
        """One stage: a stride-2 block with a projection shortcut, then ``blocks-1`` plain blocks."""
        downsample = nn.Sequential(
            nn.Conv2d(self.inplanes, planes, kernel_size=1, stride=2, bias=False),
            nn.BatchNorm2d(planes, eps=bn_eps),
        )
        stage = [IBasicBlock(self.inplanes, planes, stride=2, downsample=downsample, bn_eps=bn_eps)]
        self.inplanes = planes
        stage += [IBasicBlock(planes, planes, bn_eps=bn_eps) for _ in range(1, blocks)]
        return nn.Sequential(*stage)

    def _init_random(self) -> None:
        """Random initialisation for ``weights: random`` (tests, benchmarks): variance-preserving
        convs so deep random networks stay finite; BN affine 1/0; ``features.weight`` fixed to 1
        and frozen, as in arcface_torch."""
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_in", nonlinearity="linear")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
        nn.init.ones_(self.features.weight)
        self.features.weight.requires_grad = False

    def trunk(self, x: torch.Tensor) -> torch.Tensor:
        """Everything before ``dropout``: (B,3,112,112) → flattened (B, 512*7*7) after ``bn2``."""
        use_amp = self.fp16 and x.device.type == "cuda"
        with torch.autocast(device_type=x.device.type, dtype=torch.float16, enabled=use_amp):
            x = self.prelu(self.bn1(self.conv1(x)))
            x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
            x = torch.flatten(self.bn2(x), 1)
        return x.float() if use_amp else x

    def head(self, flat: torch.Tensor) -> torch.Tensor:
        """``dropout`` → ``fc`` → ``features``: (B, 512*7*7) → (B, num_features)."""
        return self.after_dropout(self.dropout(flat))

    def after_dropout(self, flat: torch.Tensor) -> torch.Tensor:
        """``fc`` → ``features``: the deterministic layers after ``dropout``."""
        return self.features(self.fc(flat))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Preprocessed batch (B, 3, 112, 112) → un-normalised embedding (B, num_features)."""
        return self.head(self.trunk(x))

    def layout(self) -> ModelLayout:
        """Tail at ``dropout`` (its own p; arcface_torch trains with 0), stages ``layer1..4``,
        every BatchNorm2d; no quality head (only CR-FIQA's iResNet has one)."""
        return ModelLayout(
            tail=EmbeddingTail("dropout", float(self.dropout.p), self.after_dropout),
            stages=("layer1", "layer2", "layer3", "layer4"),
            **batch_norm_parts(self, "its batch norms were removed"),
            why_no_quality_head="an arcface_torch iResNet has no quality unit; CR-FIQA needs arch "
                                "crfiqa_iresnet50 or crfiqa_iresnet100 with its *backbone.pth")


class CRFIQAIResNet(IResNet):
    """CR-FIQA's iResNet: the embedding plus a quality regression unit ``qs`` = Linear(512, 1)
    applied to the embedding (after ``features``). ``forward`` returns the embedding only."""

    def __init__(self, layers: Sequence[int], **kwargs) -> None:
        super().__init__(layers, **kwargs)
        self.qs = nn.Linear(self.num_features, 1)

    def quality(self, embedding: torch.Tensor) -> torch.Tensor:
        """CR-FIQA quality (B,) of un-normalised embeddings (B, 512): the ``qs`` unit."""
        return self.qs(embedding).squeeze(1)

    def embed_and_quality(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Preprocessed batch → (un-normalised embedding (B, 512), CR-FIQA quality (B,))."""
        emb = self.forward(x)
        return emb, self.quality(emb)

    def layout(self) -> ModelLayout:
        """The iResNet layout plus the quality head ``qs`` on the embedding."""
        return replace(super().layout(), quality_head=self.quality, why_no_quality_head="")


def _load(model: nn.Module, weights: str | None, hint: str) -> nn.Module:
    """Load a plain state dict (``backbone.pth``) into ``model`` with strict key/shape matching.

    A uniform ``module.`` prefix (a checkpoint saved from DataParallel) is removed first.
    """
    if weights is not None:
        load_matching(model, strip_prefix(read_checkpoint(weights, hint=hint), "module."), source=str(weights))
    return model.eval()


def build_iresnet(depth: int, weights: str | None = None, **kwargs) -> IResNet:
    """iResNet-``depth`` (18/34/50/100/200); ``weights`` = arcface_torch ``backbone.pth`` or None.

    kwargs: dropout (0.0), num_features (512), fp16 (False), bn_eps (1e-05). Out: eval-mode model.
    """
    return _load(IResNet(STAGE_LAYERS[depth], **kwargs), weights,
                 f"download an arcface_torch backbone.pth from {ARCFACE_SOURCE}")


def build_crfiqa_iresnet(depth: int, weights: str | None = None, **kwargs) -> CRFIQAIResNet:
    """CR-FIQA iResNet-``depth`` (50 = CR-FIQA(S), 100 = CR-FIQA(L)); ``weights`` = its
    ``*backbone.pth`` (iResNet keys + ``qs.weight``/``qs.bias``) or None. Out: eval-mode model."""
    return _load(CRFIQAIResNet(STAGE_LAYERS[depth], **kwargs), weights,
                 f"download the CR-FIQA backbone from {CRFIQA_SOURCE}")


# the registry's builders: iResNet-18 .. 200 (stages in STAGE_LAYERS), CR-FIQA(S) = 50 and (L) = 100
build_iresnet18, build_iresnet34, build_iresnet50, build_iresnet100, build_iresnet200 = (
    partial(build_iresnet, depth) for depth in (18, 34, 50, 100, 200))
build_crfiqa_iresnet50, build_crfiqa_iresnet100 = (partial(build_crfiqa_iresnet, depth) for depth in (50, 100))
