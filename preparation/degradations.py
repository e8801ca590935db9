"""BSRGAN-style random image degradations for building a calibration set (numpy, PIL, scipy).

Four degradations, each a plain function on float32 RGB images in [0, 255] (H, W, 3):
``gaussian_blur`` (isotropic or anisotropic Gaussian kernel), ``resize_down_up`` (down-sample then
back to the original size, random interpolations), ``gaussian_noise`` (colour or grey) and
``jpeg_compress`` (encode/decode in memory). ``random_degradation`` applies them the way BSRGAN
(Zhang et al., ICCV 2021) does — each with some probability, in random order, with random
strength — driven by one variant *severity* so that a set of variants spreads from pristine to poor.

Settings (``DEFAULTS``; chosen for 112–150 px aligned faces)
-------------------------------------------------------------
* severity ``s ~ U(0, 1)`` per variant; every applied step draws its own strength
  ``t = s · U(0.5, 1)``, so a low-severity variant stays near-clean whatever it draws.
* blur (p = 0.7): isotropic with probability 0.5, σ = 0.2 + 2.8·t (≤ 3.0 px); otherwise
  anisotropic, major σ = 0.2 + 3.8·t (≤ 4.0 px), minor σ = major · U(0.25, 1), angle U(0°, 180°);
  kernel side 2⌈3σ⌉+1, at most 21 (as BSRGAN).
* resize (p = 0.7): scale = 1 − 0.8·t (down to 0.2, i.e. a 150 px face through 30 px), down-sampling
  with box / bilinear / bicubic, up-sampling with nearest / bilinear / bicubic (uniform choices).
* noise (p = 0.5): Gaussian, σ = 1 + 24·t grey levels (BSRGAN: 2–25), the same on all channels
  (grey noise) with probability 0.4, otherwise per channel.
* JPEG (p = 0.7): quality = 95 − 75·t (95 … 20; BSRGAN: 30–95).
About 1.4 % of variants get no degradation at all (0.3·0.3·0.5·0.3). Measured on the 1,549 LFW
calibration-pool dlib150 chips (2 variants each, saved as JPEG q=95): PSNR against the source,
5/25/50/75/95 % = 25.5/30.5/34.8/38.7/44.7 dB (a clean JPEG q=95 copy scores ≈ 46.5 dB); about half
of the variants are clearly degraded (< 35 dB), a fifth stay near-clean (> 40 dB).
"""

from __future__ import annotations

import io
import math
from dataclasses import dataclass

import numpy as np
from PIL import Image
from scipy import ndimage

from froq.core.images import decode_rgb

DOWN_FILTERS = {"box": Image.BOX, "bilinear": Image.BILINEAR, "bicubic": Image.BICUBIC}
UP_FILTERS = {"nearest": Image.NEAREST, "bilinear": Image.BILINEAR, "bicubic": Image.BICUBIC}
MAX_KERNEL = 21


@dataclass(frozen=True)
class DegradationSettings:
    """Probabilities and strength ranges of ``random_degradation`` (see the module docstring)."""

    p_blur: float = 0.7
    p_resize: float = 0.7
    p_noise: float = 0.5
    p_jpeg: float = 0.7
    p_isotropic: float = 0.5
    iso_sigma: tuple[float, float] = (0.2, 3.0)
    aniso_sigma: tuple[float, float] = (0.2, 4.0)
    min_scale: float = 0.2
    noise_sigma: tuple[float, float] = (1.0, 25.0)
    p_gray_noise: float = 0.4
    jpeg_quality: tuple[int, int] = (95, 20)


DEFAULTS = DegradationSettings()


def gaussian_kernel(sigma_x: float, sigma_y: float, theta: float = 0.0,
                    size: int | None = None) -> np.ndarray:
    """Normalised 2-D Gaussian kernel, axes σx, σy rotated by ``theta`` radians.

    In: the two standard deviations (px), the rotation, an odd side (default 2⌈3·max σ⌉+1,
    capped at 21). Out: (size, size) float64 array summing to 1.
    """
    if size is None:
        size = min(MAX_KERNEL, 2 * math.ceil(3 * max(sigma_x, sigma_y)) + 1)
    size = max(1, int(size) | 1)
    half = size // 2
    y, x = np.mgrid[-half:half + 1, -half:half + 1].astype(np.float64)
    c, s = math.cos(theta), math.sin(theta)
    u, v = c * x + s * y, -s * x + c * y
    k = np.exp(-0.5 * ((u / sigma_x) ** 2 + (v / sigma_y) ** 2))
    return k / k.sum()


def gaussian_blur(img: np.ndarray, kernel: np.ndarray) -> np.ndarray:
    """Convolve each channel of a float (H, W, 3) image with ``kernel`` (reflected borders)."""
    out = np.empty_like(img, dtype=np.float32)
    for ch in range(img.shape[2]):
        out[..., ch] = ndimage.convolve(img[..., ch].astype(np.float32), kernel.astype(np.float32),
                                        mode="reflect")
    return out


def _resize_float(img: np.ndarray, size: tuple[int, int], resample: int) -> np.ndarray:
    """Resize a float (H, W, 3) image to (width, height) channel by channel (PIL mode F)."""
    chans = [np.asarray(Image.fromarray(np.ascontiguousarray(img[..., c], dtype=np.float32))
                        .resize(size, resample)) for c in range(img.shape[2])]
    return np.stack(chans, axis=-1)


def resize_down_up(img: np.ndarray, scale: float, down: str = "bicubic",
                   up: str = "bilinear") -> np.ndarray:
    """Down-sample a float (H, W, 3) image by ``scale`` (< 1) and back to its size.

    ``down`` ∈ {box, bilinear, bicubic}, ``up`` ∈ {nearest, bilinear, bicubic}. Out: same shape.
    """
    h, w = img.shape[:2]
    small = (max(1, round(w * scale)), max(1, round(h * scale)))
    low = _resize_float(img, small, DOWN_FILTERS[down])
    return _resize_float(low, (w, h), UP_FILTERS[up])


def gaussian_noise(img: np.ndarray, sigma: float, rng: np.random.Generator,
                   gray: bool = False) -> np.ndarray:
    """Add N(0, σ²) noise (σ in grey levels): one field for all channels if ``gray``, else per channel."""
    h, w, c = img.shape
    noise = rng.normal(0.0, sigma, size=(h, w, 1) if gray else (h, w, c)).astype(np.float32)
    return img + noise


def jpeg_compress(img: np.ndarray, quality: int) -> np.ndarray:
    """Round-trip a float (H, W, 3) image through JPEG at ``quality`` (clipped to uint8 first)."""
    buf = io.BytesIO()
    Image.fromarray(to_uint8(img)).save(buf, format="JPEG", quality=int(quality))
    buf.seek(0)
    return np.asarray(decode_rgb(buf), dtype=np.float32)


def to_uint8(img: np.ndarray) -> np.ndarray:
    """Round and clip a float image to uint8."""
    return np.clip(np.rint(img), 0, 255).astype(np.uint8)


def _lerp(lo: float, hi: float, t: float) -> float:
    return lo + (hi - lo) * t


def random_degradation(img: np.ndarray, rng: np.random.Generator, severity: float | None = None,
                       settings: DegradationSettings = DEFAULTS) -> tuple[np.ndarray, float, list[dict]]:
    """Degrade one RGB uint8 (H, W, 3) image BSRGAN-style (see the module docstring).

    In: the image, a seeded generator (all randomness comes from it), an optional fixed severity
    in [0, 1] (default: drawn U(0, 1)). Out: (degraded uint8 image of the same size, severity,
    list of applied steps in order, each a dict ``{"op": name, parameter: value, ...}``).
    """
    if severity is None:
        severity = float(rng.uniform(0.0, 1.0))
    order = ["blur", "resize", "noise", "jpeg"]
    rng.shuffle(order)
    probability = {"blur": settings.p_blur, "resize": settings.p_resize,
                   "noise": settings.p_noise, "jpeg": settings.p_jpeg}
    out = img.astype(np.float32)
    steps: list[dict] = []
    for op in order:
        # draw every random number whether or not the step applies: fixed stream layout
        applies = rng.uniform() < probability[op]
        t = severity * rng.uniform(0.5, 1.0)
        u = rng.uniform(size=4)
        if not applies:
            continue
        if op == "blur":
            if u[0] < settings.p_isotropic:
                sigma = _lerp(*settings.iso_sigma, t)
                kernel = gaussian_kernel(sigma, sigma)
                step = {"op": "blur", "kind": "iso", "sigma_x": sigma, "sigma_y": sigma, "theta_deg": 0.0}
            else:
                major = _lerp(*settings.aniso_sigma, t)
                minor = major * _lerp(0.25, 1.0, u[1])
                theta = math.pi * u[2]
                kernel = gaussian_kernel(major, minor, theta)
                step = {"op": "blur", "kind": "aniso", "sigma_x": major, "sigma_y": minor,
                        "theta_deg": math.degrees(theta)}
            step["kernel"] = kernel.shape[0]
            out = gaussian_blur(out, kernel)
        elif op == "resize":
            scale = 1.0 - (1.0 - settings.min_scale) * t
            down = sorted(DOWN_FILTERS)[min(int(u[0] * 3), 2)]
            up = sorted(UP_FILTERS)[min(int(u[1] * 3), 2)]
            out = resize_down_up(out, scale, down, up)
            step = {"op": "resize", "scale": scale, "down": down, "up": up}
        elif op == "noise":
            sigma = _lerp(*settings.noise_sigma, t)
            gray = bool(u[0] < settings.p_gray_noise)
            out = gaussian_noise(out, sigma, rng, gray)
            step = {"op": "noise", "sigma": sigma, "gray": gray}
        else:
            quality = int(round(_lerp(*settings.jpeg_quality, t)))
            out = jpeg_compress(out, quality)
            step = {"op": "jpeg", "quality": quality}
        out = np.clip(out, 0.0, 255.0)
        steps.append(step)
    return to_uint8(out), float(severity), steps


def describe(steps: list[dict]) -> str:
    """Compact text of applied steps, e.g. ``blur:iso,sigma=1.20,k=9;jpeg:q=54`` (``none`` if empty)."""
    parts = []
    for s in steps:
        if s["op"] == "blur":
            parts.append(f"blur:{s['kind']},sigma_x={s['sigma_x']:.2f},sigma_y={s['sigma_y']:.2f},"
                         f"theta={s['theta_deg']:.0f},k={s['kernel']}")
        elif s["op"] == "resize":
            parts.append(f"resize:scale={s['scale']:.3f},down={s['down']},up={s['up']}")
        elif s["op"] == "noise":
            parts.append(f"noise:sigma={s['sigma']:.2f},{'gray' if s['gray'] else 'color'}")
        else:
            parts.append(f"jpeg:q={s['quality']}")
    return ";".join(parts) if parts else "none"


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    """PSNR (dB) between two uint8 images of the same shape (inf when identical)."""
    mse = np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2)
    return float("inf") if mse == 0 else float(10.0 * np.log10(255.0 ** 2 / mse))


def sharpness(img: np.ndarray) -> float:
    """Variance of the Laplacian of the grey image (higher = sharper)."""
    grey = img.astype(np.float64) @ np.array([0.299, 0.587, 0.114]) if img.ndim == 3 else img
    return float(ndimage.laplace(grey).var())
