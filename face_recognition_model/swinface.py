"""SwinFace's face-recognition branch (Qin et al., IEEE TCSVT 2023; github.com/lxq1000/SwinFace).

SwinFace is one Swin-T backbone shared by recognition and 42 facial-analysis tasks. The recognition
embedding is the backbone's own output (the analysis subnets — ``fam``, ``tss``, ``om`` — only pass
it through as 'Recognition'), so the recognition branch is the backbone alone. The released
checkpoint (``checkpoint_step_79999_gpu_0.pt``) is a dict with ``state_dict_backbone`` (this
network), ``state_dict_fam``, ``state_dict_tss`` and ``state_dict_om`` (ignored here).

Backbone (``swinface_project/backbones/swin.py``, ``get_model("swin_t", num_features=512)``): 112×112
RGB input in [-1, 1]; ``patch_embed`` (Conv2d 3→96, 2×2, stride 2, + LayerNorm) → 56×56 tokens;
``layers.0..3`` with depths 2, 2, 6, 2, widths 96, 192, 384, 768, heads 3, 6, 12, 24, window 7
(odd blocks shifted by 3, except in the last stage whose 7×7 map is one window), a ``downsample``
PatchMerging after stages 0-2; ``norm`` (LayerNorm 768), mean over tokens; ``feature`` =
Linear(768, 768, no bias), BatchNorm1d(768, eps 2e-5), Linear(768, 512, no bias),
BatchNorm1d(512, eps 2e-5) → the 512-D embedding. ``head`` (Linear 768→512) is in the checkpoint
but unused by the forward. Buffers stored in the checkpoint: every ``attn.relative_position_index``
(49×49) and the ``attn_mask`` of each shifted block (windows × 49 × 49).

Stochastic depth and dropouts are identities at inference and are not modelled (no parameters).
``forward`` returns the un-normalised 512-D embedding.
"""

from __future__ import annotations


import torch
from torch import nn

from face_recognition_model.checkpoints import load_matching, read_checkpoint, strip_prefix
from face_recognition_model.layout import EmbeddingTail, ModelLayout
from froq.core.errors import FroqError


SOURCE = ("https://github.com/lxq1000/SwinFace (README: the pretrained checkpoint "
          "checkpoint_step_79999_gpu_0.pt)")
DEPTHS = (2, 2, 6, 2)
HEADS = (3, 6, 12, 24)
EMBED_DIM = 96
WINDOW = 7
PATCH = 2
IMAGE = 112
NUM_FEATURES = 512


def relative_position_index(window: int) -> torch.Tensor:
    """(w², w²) index into the (2w-1)² relative-position bias table for every token pair of a
    window: (dy + w - 1) · (2w - 1) + (dx + w - 1), with d = position(i) - position(j)."""
    ys, xs = torch.meshgrid(torch.arange(window), torch.arange(window), indexing="ij")
    ys, xs = ys.flatten(), xs.flatten()
    dy = ys[:, None] - ys[None, :] + window - 1
    dx = xs[:, None] - xs[None, :] + window - 1
    return dy * (2 * window - 1) + dx


def to_windows(x: torch.Tensor, window: int) -> torch.Tensor:
    """(B, H, W, C) → (B · H/w · W/w, w·w, C), windows in row-major order."""
    b, h, w, c = x.shape
    x = x.view(b, h // window, window, w // window, window, c).permute(0, 1, 3, 2, 4, 5)
    return x.reshape(-1, window * window, c)


def from_windows(windows: torch.Tensor, window: int, h: int, w: int) -> torch.Tensor:
    """Inverse of ``to_windows``: (B · H/w · W/w, w·w, C) → (B, H, W, C)."""
    c = windows.shape[-1]
    x = windows.view(-1, h // window, w // window, window, window, c).permute(0, 1, 3, 2, 4, 5)
    return x.reshape(-1, h, w, c)


def shifted_window_mask(size: int, window: int, shift: int) -> torch.Tensor:
    """The additive mask (windows, w², w²) of shifted-window attention on a size×size map: 0 between
    tokens of the same region of the cyclically shifted map, -100 otherwise."""
    regions = torch.zeros(1, size, size, 1)
    bounds = (slice(0, -window), slice(-window, -shift), slice(-shift, None))
    label = 0
    for hs in bounds:
        for ws in bounds:
            regions[:, hs, ws, :] = label
            label += 1
    win = to_windows(regions, window).squeeze(-1)  # (windows, w²)
    diff = win[:, None, :] - win[:, :, None]
    return diff.masked_fill(diff != 0, -100.0).masked_fill(diff == 0, 0.0)


class WindowAttention(nn.Module):
    """Multi-head self-attention inside a window with a learned relative-position bias."""

    def __init__(self, dim: int, window: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.scale = (dim // heads) ** -0.5
        self.relative_position_bias_table = nn.Parameter(torch.zeros((2 * window - 1) ** 2, heads))
        self.register_buffer("relative_position_index", relative_position_index(window))
        self.qkv = nn.Linear(dim, dim * 3)
        self.proj = nn.Linear(dim, dim)
        nn.init.trunc_normal_(self.relative_position_bias_table, std=0.02)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        """(windows·B, N, C) tokens (+ optional (windows, N, N) mask) → same shape."""
        bw, n, c = x.shape
        q, k, v = self.qkv(x).reshape(bw, n, 3, self.heads, c // self.heads).permute(2, 0, 3, 1, 4)
        attn = (q * self.scale) @ k.transpose(-2, -1)
        bias = self.relative_position_bias_table[self.relative_position_index.view(-1)]
        attn = attn + bias.view(n, n, -1).permute(2, 0, 1).unsqueeze(0)
        if mask is not None:
            nw = mask.shape[0]
            attn = attn.view(bw // nw, nw, self.heads, n, n) + mask.unsqueeze(1).unsqueeze(0)
            attn = attn.view(-1, self.heads, n, n)
        x = (attn.softmax(dim=-1) @ v).transpose(1, 2).reshape(bw, n, c)
        return self.proj(x)


class Mlp(nn.Module):
    """fc1 → GELU → fc2 (hidden = 4 × dim)."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, 4 * dim)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(4 * dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(..., dim) → (..., dim)."""
        return self.fc2(self.act(self.fc1(x)))


class SwinBlock(nn.Module):
    """x + W-MSA(norm1(x)) (cyclically shifted by ``shift``), then + MLP(norm2(x))."""

    def __init__(self, dim: int, size: int, heads: int, shift: int) -> None:
        super().__init__()
        self.size = size
        self.window = min(WINDOW, size)
        self.shift = 0 if size <= WINDOW else shift
        self.register_buffer("attn_mask", shifted_window_mask(size, self.window, self.shift)
                             if self.shift else None)
        self.norm1 = nn.LayerNorm(dim)
        self.attn = WindowAttention(dim, self.window, heads)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = Mlp(dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, size², C) → (B, size², C)."""
        b, length, c = x.shape
        y = self.norm1(x).view(b, self.size, self.size, c)
        if self.shift:
            y = torch.roll(y, shifts=(-self.shift, -self.shift), dims=(1, 2))
        y = self.attn(to_windows(y, self.window), mask=self.attn_mask)
        y = from_windows(y, self.window, self.size, self.size)
        if self.shift:
            y = torch.roll(y, shifts=(self.shift, self.shift), dims=(1, 2))
        x = x + y.reshape(b, length, c)
        return x + self.mlp(self.norm2(x))


class PatchMerging(nn.Module):
    """2×2 neighbours concatenated (order (0,0), (1,0), (0,1), (1,1) as (row, col) offsets) →
    LayerNorm(4C) → Linear(4C, 2C, no bias): halves the map, doubles the width."""

    def __init__(self, dim: int, size: int) -> None:
        super().__init__()
        self.size = size
        self.reduction = nn.Linear(4 * dim, 2 * dim, bias=False)
        self.norm = nn.LayerNorm(4 * dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, size², C) → (B, (size/2)², 2C)."""
        b, _, c = x.shape
        x = x.view(b, self.size, self.size, c)
        x = torch.cat([x[:, 0::2, 0::2], x[:, 1::2, 0::2], x[:, 0::2, 1::2], x[:, 1::2, 1::2]], -1)
        return self.reduction(self.norm(x.view(b, -1, 4 * c)))


class SwinStage(nn.Module):
    """``blocks`` (even: plain windows, odd: shifted) then an optional ``downsample``."""

    def __init__(self, dim: int, size: int, depth: int, heads: int, downsample: bool) -> None:
        super().__init__()
        self.blocks = nn.ModuleList([SwinBlock(dim, size, heads, 0 if i % 2 == 0 else WINDOW // 2)
                                     for i in range(depth)])
        self.downsample = PatchMerging(dim, size) if downsample else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, L, C) tokens through the blocks, then the downsampling (if any)."""
        for block in self.blocks:
            x = block(x)
        return self.downsample(x) if self.downsample is not None else x


class PatchEmbed(nn.Module):
    """Conv2d(3, 96, 2, stride 2) → tokens (B, 56², 96) → LayerNorm."""

    def __init__(self) -> None:
        super().__init__()
        self.proj = nn.Conv2d(3, EMBED_DIM, PATCH, stride=PATCH)
        self.norm = nn.LayerNorm(EMBED_DIM)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, 3, 112, 112) → (B, 56², 96) normed tokens."""
        return self.norm(self.proj(x).flatten(2).transpose(1, 2))


class SwinFaceRecognition(nn.Module):
    """SwinFace's Swin-T backbone: (B, 3, 112, 112) in [-1, 1] → un-normalised embedding (B, 512)."""

    def __init__(self) -> None:
        super().__init__()
        self.patch_embed = PatchEmbed()
        size = IMAGE // PATCH
        self.layers = nn.ModuleList()
        for i, (depth, heads) in enumerate(zip(DEPTHS, HEADS)):
            self.layers.append(SwinStage(EMBED_DIM * 2 ** i, size // 2 ** i, depth, heads, i < len(DEPTHS) - 1))
        width = EMBED_DIM * 2 ** (len(DEPTHS) - 1)
        self.norm = nn.LayerNorm(width)
        self.head = nn.Linear(width, NUM_FEATURES)  # in the checkpoint; not used by the forward
        self.feature = nn.Sequential(
            nn.Linear(width, width, bias=False), nn.BatchNorm1d(width, eps=2e-5),
            nn.Linear(width, NUM_FEATURES, bias=False), nn.BatchNorm1d(NUM_FEATURES, eps=2e-5))

    def pooled(self, x: torch.Tensor) -> torch.Tensor:
        """Everything before ``feature``: the mean over tokens of the normed last stage (B, 768)."""
        x = self.patch_embed(x)
        for layer in self.layers:
            x = layer(x)
        return self.norm(x).mean(dim=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, 3, 112, 112) → (B, 512), the 'Recognition' output of SwinFace."""
        return self.feature(self.pooled(x))

    def layout(self) -> ModelLayout:
        """Tail at ``feature`` (its input is the pooled 768-D vector; no dropout there); no
        residual stages or BatchNorm2d for GraFIQs; no quality head."""
        return ModelLayout(
            tail=EmbeddingTail("feature", None, self.feature),
            why_no_stages="Swin-T stages output token sequences, not the four feature maps of an "
                          "IR/iResNet",
            why_no_batch_norms="Swin-T normalises with LayerNorm; its only batch norms are "
                               "BatchNorm1d in the embedding head",
            why_no_quality_head="SwinFace has no learned quality unit")


def swinface_state_dict(obj, source: str) -> dict:
    """Released checkpoint contents → backbone state dict: ``obj['state_dict_backbone']``, else a
    plain backbone state dict; a uniform ``module.`` prefix is removed."""
    if "state_dict_backbone" in obj:
        obj = obj["state_dict_backbone"]
    elif any(k.startswith("state_dict_") for k in obj):
        raise FroqError(f"{source}: a SwinFace checkpoint without 'state_dict_backbone' (has "
                        f"{', '.join(sorted(k for k in obj if k.startswith('state_dict_')))}): "
                        f"download the released checkpoint from {SOURCE}")
    return strip_prefix(obj, "module.")


def build_swinface(weights: str | None = None, **kwargs) -> SwinFaceRecognition:
    """SwinFace recognition branch; ``weights`` = the released ``checkpoint_step_79999_gpu_0.pt``
    (its ``state_dict_backbone``) or a plain backbone state dict, or None (random init).
    Out: eval-mode model. FroqError (one line naming missing / unexpected keys) otherwise."""
    if kwargs:
        raise TypeError(f"unexpected SwinFace options: {', '.join(kwargs)}")
    model = SwinFaceRecognition()
    if weights is not None:
        state = swinface_state_dict(read_checkpoint(weights, f"download it from {SOURCE}"), str(weights))
        load_matching(model, state, str(weights),
                      expected=f"SwinFace's Swin-T backbone (state_dict_backbone of {SOURCE})")
    return model.eval()
