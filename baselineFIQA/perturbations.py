"""The three perturbations of the auxiliary FIQA (spec §2), on preprocessed model inputs.

All functions take a batch ``x`` of model inputs (B, 3, H, W) and return perturbed copies; the
noise tensors and the occlusion masks are built once and shared by every image.
"""

from __future__ import annotations

import torch

from froq.core.errors import FroqError


def flip(x: torch.Tensor) -> torch.Tensor:
    """Horizontal flip (identical before or after preprocessing)."""
    return torch.flip(x, dims=[-1])


def noise_bank(shape: tuple[int, int, int], count: int = 10, seed: int = 0) -> torch.Tensor:
    """``count`` tensors n_k ~ N(0, 1) of ``shape`` (3, H, W), drawn once from ``seed`` → (K, 3, H, W)."""
    gen = torch.Generator().manual_seed(int(seed))
    return torch.randn((count, *shape), generator=gen, dtype=torch.float32)


NOISE_MODELS = ("mix", "relative")


def add_noise(x: torch.Tensor, noise: torch.Tensor, alpha: float, model: str = "mix") -> torch.Tensor:
    """Noisy copies of every image with every shared draw n_k → (B·K, 3, H, W), image-major order.

    ``model='mix'`` (the paper): ``(1 − α)·x + α·n_k``, the noise in absolute model-input units.
    ``model='relative'``: ``x + α·σ(x)·n_k`` with σ(x) the standard deviation of the image's own
    model input (all channels and pixels): α is then a noise-to-signal ratio, the same for a dark
    low-contrast face and a bright one, and independent of the model's normalisation.
    """
    n = noise.to(x.device, x.dtype).unsqueeze(0)
    if model == "mix":
        mixed = (1.0 - alpha) * x.unsqueeze(1) + alpha * n
    elif model == "relative":
        sigma = x.reshape(x.shape[0], -1).std(dim=1).view(-1, 1, 1, 1, 1)
        mixed = x.unsqueeze(1) + alpha * sigma * n
    else:
        raise FroqError(f"unknown noise model {model!r}: use one of {', '.join(NOISE_MODELS)}")
    return mixed.reshape(-1, *x.shape[1:])


def occlusion_masks(height: int, width: int, cell: int) -> torch.Tensor:
    """Boolean masks (M, 1, H, W), each covering one ``cell``×``cell`` square of a grid over the image.

    The grid starts at the top-left corner; when the size is not a multiple of ``cell`` the last
    row/column of cells is narrower (for 112 px and 14 px cells: exactly 8×8 = 64 masks).
    """
    if cell < 1 or cell > min(height, width):
        raise FroqError(f"occlusion cell size mpx={cell} must be between 1 and the image size "
                        f"({height}×{width})")
    masks = []
    for top in range(0, height, cell):
        for left in range(0, width, cell):
            m = torch.zeros((1, height, width), dtype=torch.bool)
            m[:, top:top + cell, left:left + cell] = True
            masks.append(m)
    return torch.stack(masks)


def occlude(x: torch.Tensor, masks: torch.Tensor, fill: torch.Tensor) -> torch.Tensor:
    """Every image with every mask's cell set to ``fill`` (3, 1, 1) → (B·M, 3, H, W), image-major."""
    b, m = x.shape[0], masks.shape[0]
    masks = masks.to(x.device)
    fill = fill.to(x.device, x.dtype).view(1, 1, -1, 1, 1)
    out = torch.where(masks.unsqueeze(0), fill, x.unsqueeze(1))  # (B, M, 3, H, W)
    return out.reshape(b * m, *x.shape[1:])


def default_mpx(size: int) -> int:
    """The occlusion cell for an image side of ``size`` px that keeps the paper's 8×8 grid:
    14 px on 112 px (the paper's constant), 19 px on dlib's 150 px."""
    return max(1, (int(size) + 4) // 8)


def resolve_mpx(mpx, input_size):
    """The occlusion cell(s) of the ``mpx`` setting for a model input of ``input_size`` (an int side
    or (height, width)): ``auto`` (or None) → ``default_mpx`` of the shorter side; numbers unchanged."""
    if mpx not in ("auto", None):
        return mpx
    return default_mpx(input_size if isinstance(input_size, int) else min(input_size))
