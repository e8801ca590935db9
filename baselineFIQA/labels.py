"""Auxiliary training-free FIQA (spec §2): embedding stability under flip, noise and occlusion.

``PseudoLabeler.score`` scores one batch; ``compute_pseudo_labels`` scores a folder (resumable).
Label = mean of the three components (the paper); higher = better quality.

Options beyond the paper (its behaviour stays the default, bit for bit): component weights
(label = weighted mean), a second noise model (``relative``: noise scaled by the image's own
standard deviation), several noise strengths and several occlusion cell sizes. With several α the
noise term is the mean over α and each α also gets its own column ``noise_<α>``; with several cell
sizes the occlusion term is the mean over sizes of each size's mean over its cells (every size
counts the same, whatever its number of cells) and each size gets a column ``occlusion_<mpx>``.
"""

from __future__ import annotations

import copy
import importlib.util
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence, Union

import numpy as np
import torch
import torch.nn.functional as F

from baselineFIQA import perturbations
from baselineFIQA.fusion import fold_network
from baselineFIQA.incremental import plan_incremental
from face_recognition_model.loading import FRModel
from froq.core.device import PRECISIONS, cpu_has_fast_bf16, precision_context
from froq.core.errors import FroqError
from froq.core.images import FailureLog
from froq.core.runner import RunResult, run_images

log = logging.getLogger(__name__)

COLUMNS = ("path", "flip", "noise", "occlusion", "quality")


PAPER_WEIGHTS = (1.0, 1.0, 1.0)
OCCLUSION_PATHS = ("incremental", "full")


@dataclass
class LabelSettings:
    """Constants of the auxiliary FIQA: noise strengths α, K noise draws, occlusion cell side(s) in
    px (one int = the paper; a list = several grids), seed; the components' weights (flip, noise,
    occlusion; equal = the paper's mean) and the noise model (``mix`` = the paper, ``relative``);
    and how the forwards run: perturbed images per forward call, fp16 autocast on CUDA, the
    channels-last memory format (faster convolutions on CPU; numbers within ~1e-6), and the
    occlusion path (``incremental``: recompute only where each cell reaches, baselineFIQA/
    incremental.py, numbers within ~1e-6; ``full``: one full forward per occluded copy),
    ``fold``: batch norms / affines folded into the layer before them (baselineFIQA/fusion.py,
    numbers within ~1e-7), and the ``precision`` of the forwards (``auto``: fp16 autocast on CUDA
    when ``autocast``, fp32 on CPU; ``fp32``, ``bf16``, ``fp16``: froq.core.device)."""

    alphas: Sequence[float] = (0.001,)
    noise_count: int = 10
    mpx: Union[int, Sequence[int]] = 14
    seed: int = 0
    forward_batch: int = 256
    autocast: bool = True
    channels_last: bool = False
    weights: Sequence[float] = PAPER_WEIGHTS
    noise_model: str = "mix"
    occlusion: str = "incremental"
    fold: bool = True
    precision: str = "auto"

    @property
    def cells(self) -> tuple[int, ...]:
        """The occlusion cell sides as a tuple (one for the paper)."""
        return (int(self.mpx),) if isinstance(self.mpx, int) else tuple(int(m) for m in self.mpx)

    def fingerprint(self) -> dict:
        """The settings that change the numbers (for the resume key and the meta JSON): the paper's
        keys always; weights, noise model and the incremental occlusion path only when they differ
        from the paper's full forwards, and folding when on (so partial files of paper runs made
        before these options existed stay valid)."""
        key = {k: v for k, v in self.__dict__.items()
               if k not in ("forward_batch", "weights", "noise_model", "occlusion", "fold", "precision")}
        key["mpx"] = self.cells[0] if len(self.cells) == 1 else list(self.cells)
        if tuple(float(w) for w in self.weights) != PAPER_WEIGHTS:
            key["weights"] = [float(w) for w in self.weights]
        if self.noise_model != "mix":
            key["noise_model"] = self.noise_model
        if self.occlusion != "full":
            key["occlusion"] = self.occlusion
        if self.fold:
            key["fold_affine"] = True
        if self.precision != "auto":
            key["precision"] = self.precision
        return key


def check_settings(settings: LabelSettings, size: Sequence[int]) -> None:
    """FroqError (one line) when the weights, noise model or cell sizes cannot work on a model
    input of ``size`` (H, W); nothing otherwise."""
    w = [float(v) for v in settings.weights]
    if len(w) != 3 or not all(np.isfinite(w)) or min(w) < 0 or sum(w) <= 0:
        raise FroqError(f"component weights {list(settings.weights)}: give three finite numbers >= 0 "
                        "(flip, noise, occlusion) with a positive sum, e.g. [1, 1, 1]")
    if settings.noise_model not in perturbations.NOISE_MODELS:
        raise FroqError(f"noise model {settings.noise_model!r}: use one of "
                        f"{', '.join(perturbations.NOISE_MODELS)}")
    if settings.occlusion not in OCCLUSION_PATHS:
        raise FroqError(f"occlusion {settings.occlusion!r}: use one of {', '.join(OCCLUSION_PATHS)}")
    if settings.precision not in PRECISIONS:
        raise FroqError(f"precision {settings.precision!r}: use one of {', '.join(PRECISIONS)}")
    if not settings.alphas:
        raise FroqError("alphas: give at least one noise strength, e.g. [0.001]")
    cells = settings.cells
    if not cells or len(set(cells)) != len(cells):
        raise FroqError(f"occlusion cell sizes {list(cells)}: give one or more different sizes")
    for cell in cells:
        if cell < 1 or cell > min(size):
            raise FroqError(f"occlusion cell size mpx={cell} must be between 1 and the model input "
                            f"size {list(size)}: use e.g. 14 for 112 px, 19 for 150 px")


def _number(value: float) -> str:
    """A short exact name for a number in a column name (0.001 → '0.001', 19 → '19')."""
    return repr(float(value)).removesuffix(".0")


def label_columns(settings: LabelSettings) -> tuple[str, ...]:
    """The labels CSV's columns for ``settings``: ``path,flip,noise,occlusion,quality`` (the paper),
    then ``noise_<α>`` per α when there are several and ``occlusion_<mpx>`` per cell size when
    there are several."""
    extra = []
    if len(settings.alphas) > 1:
        extra += [f"noise_{_number(a)}" for a in settings.alphas]
    if len(settings.cells) > 1:
        extra += [f"occlusion_{c}" for c in settings.cells]
    return (*COLUMNS, *extra)


class PseudoLabeler:
    """Holds the shared noise bank and masks for one FR model and scores batches of inputs."""

    def __init__(self, fr: FRModel, settings: LabelSettings) -> None:
        self.fr = fr
        self.s = settings
        h, w = fr.preprocess.size
        self.noise = perturbations.noise_bank((3, h, w), settings.noise_count, settings.seed).to(fr.device)
        check_settings(settings, (h, w))
        precision_context(fr.device, settings.precision)  # FroqError now for fp16 on a CPU
        if settings.precision == "bf16" and fr.device.type == "cpu" and cpu_has_fast_bf16() is False:
            log.warning("precision bf16 on a CPU without AMX or AVX-512 BF16 (%s): bfloat16 is "
                        "emulated here and much slower than fp32 (measured 8.6x slower on an AVX2 "
                        "EPYC); set precision: auto", torch.backends.cpu.get_cpu_capability())
        grids = [perturbations.occlusion_masks(h, w, cell) for cell in settings.cells]
        self.grid_sizes = [g.shape[0] for g in grids]  # masks per cell size, in order
        self.masks = torch.cat(grids).to(fr.device)
        self.weights = tuple(float(v) for v in settings.weights)
        self.columns = label_columns(settings)
        self.fill = fr.preprocess.black_value().to(fr.device)
        # an ONNX graph's other forwards run in ONNX Runtime (faster on CPU: docs/results.md#onnx-runtime)
        self.onnx_runtime = fr.network.runtime() if uses_onnx_runtime(fr, settings.precision) else None
        # the labels need no hooks: their forwards may run on a rewritten copy of the network
        # (affines folded, baselineFIQA/fusion.py) in the channels-last format
        fold = settings.fold and self.onnx_runtime is None
        self.network = fold_network(fr.network, fr.device)[0] if fold else fr.network
        self.memory_format = torch.contiguous_format
        if settings.channels_last and any(p.dim() == 4 for p in fr.network.parameters()):
            if self.network is fr.network:
                self.network = copy.deepcopy(fr.network)
            self.network = self.network.to(memory_format=torch.channels_last)
            self.memory_format = torch.channels_last
        self.incremental = None  # the plan of the incremental occlusion path, when it applies
        if settings.occlusion == "incremental":
            self.incremental = plan_incremental(self.network, self.masks, self.fill,
                                                torch.zeros((1, 3, h, w), device=fr.device))
        if self.onnx_runtime is not None:
            log.info("pseudo-labels: the ONNX graph's forwards run in ONNX Runtime")
            self.network, self.memory_format = self.onnx_runtime, torch.contiguous_format

    def precision(self):
        """The autocast context of the label forwards (``precision``; ``auto`` honours ``autocast``)."""
        if self.s.precision == "auto" and not self.s.autocast:
            return precision_context(self.fr.device, "fp32")
        return precision_context(self.fr.device, self.s.precision)

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        """Embeddings (N, D) float32 of many model inputs, ``forward_batch`` at a time."""
        outs = []
        with torch.inference_mode(), self.precision():
            for chunk in torch.split(x, self.s.forward_batch):
                outs.append(self.network(chunk.contiguous(memory_format=self.memory_format)).float())
        return torch.cat(outs)

    def _cos_each(self, ref: torch.Tensor, perturbed: torch.Tensor, per_image: int) -> torch.Tensor:
        """(B, per_image) cosines of each image's perturbed embeddings to its reference."""
        emb = self.embed(perturbed).view(ref.shape[0], per_image, -1)
        return F.cosine_similarity(emb, ref.unsqueeze(1), dim=-1)

    def _cos_to(self, ref: torch.Tensor, perturbed: torch.Tensor, per_image: int) -> torch.Tensor:
        """Mean cosine of each image's ``per_image`` perturbed embeddings to its reference."""
        return self._cos_each(ref, perturbed, per_image).mean(dim=1)

    def flip_term(self, x: torch.Tensor, ref: torch.Tensor) -> torch.Tensor:
        """(B,) cosine of each image's embedding ``ref`` to its horizontally flipped copy's."""
        return self._cos_to(ref, perturbations.flip(x), 1)

    def noise_terms(self, x: torch.Tensor, ref: torch.Tensor) -> list[torch.Tensor]:
        """Per α: (B,) mean cosine to the K noisy copies (noise model of the settings)."""
        return [self._cos_to(ref, perturbations.add_noise(x, self.noise, a, self.s.noise_model),
                             self.noise.shape[0])
                for a in self.s.alphas]

    def noise_term(self, x: torch.Tensor, ref: torch.Tensor) -> torch.Tensor:
        """(B,) mean cosine to the K noisy copies, averaged over the noise strengths α."""
        return torch.stack(self.noise_terms(x, ref)).mean(dim=0)

    def occlusion_terms(self, x: torch.Tensor, ref: torch.Tensor) -> list[torch.Tensor]:
        """Per cell size: (B,) mean cosine to the copies with one grid cell occluded, over every
        cell of that size's grid. All sizes' masks go through the same forward batches (or one
        image at a time through the incremental plan)."""
        if self.incremental is not None:
            with torch.inference_mode(), self.precision():
                emb = torch.stack([self.incremental.embeddings(xi[None]).float() for xi in x])
            return self._split_cells(F.cosine_similarity(emb, ref.unsqueeze(1), dim=-1))
        # a few images at a time × all masks keeps memory bounded for big batches
        per_image = max(1, self.s.forward_batch // self.masks.shape[0])
        parts = []
        for start in range(0, x.shape[0], per_image):
            xs = x[start:start + per_image]
            parts.append(self._cos_each(ref[start:start + per_image],
                                        perturbations.occlude(xs, self.masks, self.fill), self.masks.shape[0]))
        return self._split_cells(torch.cat(parts))

    def _split_cells(self, cos: torch.Tensor) -> list[torch.Tensor]:
        """(B, all masks) cosines → per cell size: (B,) mean over that size's cells."""
        terms, start = [], 0
        for count in self.grid_sizes:
            terms.append(cos[:, start:start + count].mean(dim=1))
            start += count
        return terms

    def occlusion_term(self, x: torch.Tensor, ref: torch.Tensor) -> torch.Tensor:
        """(B,) occlusion term: the mean over cells (the paper), or over cell sizes of their means."""
        terms = self.occlusion_terms(x, ref)
        return terms[0] if len(terms) == 1 else torch.stack(terms).mean(dim=0)

    def score(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """Batch of model inputs (B, 3, H, W) → {column: (B,)} for every column of
        ``label_columns`` but ``path``: flip, noise, occlusion, quality (+ per-α / per-size terms)."""
        ref = self.embed(x)  # the unperturbed embedding, computed once for all components
        q_flip = self.flip_term(x, ref)
        noise_terms = self.noise_terms(x, ref)
        q_noise = torch.stack(noise_terms).mean(dim=0)
        occ_terms = self.occlusion_terms(x, ref)
        q_occ = occ_terms[0] if len(occ_terms) == 1 else torch.stack(occ_terms).mean(dim=0)
        w_flip, w_noise, w_occ = self.weights
        if self.weights == PAPER_WEIGHTS:
            quality = (q_flip + q_noise + q_occ) / 3.0  # the paper's label, bit for bit
        else:
            quality = (w_flip * q_flip + w_noise * q_noise + w_occ * q_occ) / (w_flip + w_noise + w_occ)
        out = {"flip": q_flip.cpu(), "noise": q_noise.cpu(), "occlusion": q_occ.cpu(),
               "quality": quality.cpu()}
        extra = self.columns[len(COLUMNS):]
        values = (noise_terms if len(noise_terms) > 1 else []) + (occ_terms if len(occ_terms) > 1 else [])
        out.update({name: v.cpu() for name, v in zip(extra, values)})
        return out


def auto_forward_batch(device: torch.device) -> int:
    """``forward_batch: auto``: 256 perturbed images per forward on CUDA, 32 on CPU (measured: on
    CPU bigger chunks only cost memory traffic, 32 is ~1.6x faster than 256)."""
    return 256 if device.type == "cuda" else 32


def uses_onnx_runtime(fr: FRModel, precision: str = "auto") -> bool:
    """Whether the labels' forwards of ``fr`` run in ONNX Runtime: an ONNX graph (it offers
    ``runtime()`` and keeps its bytes) on the CPU, with onnxruntime installed, at fp32 precision
    (``bf16`` runs the torch graph under autocast instead: ONNX Runtime's CPU provider has no
    bfloat16 autocast)."""
    return (callable(getattr(fr.network, "runtime", None)) and bool(getattr(fr.network, "onnx_bytes", b""))
            and fr.device.type == "cpu" and precision in ("auto", "fp32")
            and importlib.util.find_spec("onnxruntime") is not None)


def auto_channels_last(device: torch.device) -> bool:
    """``channels_last: auto``: on for CPU (measured on this project's 2-core CPU, batch 32, one
    thread: a dlib ResNet forward 1.34x faster, an iResNet-50 forward 1.1x; labels within 1e-6);
    off on CUDA until measured there."""
    return device.type == "cpu"


def compute_pseudo_labels(fr: FRModel, root: str | Path, paths: Sequence[str] | None = None,
                          batch_size: int = 32, alphas: Sequence[float] = (0.001,),
                          mpx: int | Sequence[int] | str = "auto", seed: int = 0, num_workers: int = 0,
                          noise_count: int = 10, forward_batch: int | str = "auto",
                          resume_path: str | Path | None = None, failures: FailureLog | None = None,
                          channels_last: bool | str = "auto",
                          weights: Sequence[float] = PAPER_WEIGHTS,
                          noise_model: str = "mix", occlusion: str = "incremental",
                          fold: bool = True, precision: str = "auto") -> RunResult:
    """Pseudo-labels of the images of ``root`` with model ``fr``.

    In: a loaded FR model, an image folder (or explicit relative ``paths``), the auxiliary FIQA's
    constants (``mpx`` one cell size or several, ``auto`` = an 8×8 grid; ``weights`` of flip, noise, occlusion;
    ``noise_model`` mix or relative; ``occlusion`` incremental or full; ``fold`` the affines into
    the layers before them; ``precision`` of the forwards, ``PRECISIONS``), and optionally
    ``resume_path`` (the final CSV path; finished rows are kept in ``<resume_path>.partial`` and
    reused when run again with the same settings and image files). Out: ``RunResult`` with the columns of ``label_columns`` (flip, noise, occlusion,
    quality, then per-α / per-size terms when there are several), in file order, readable images
    only; unreadable ones go to ``failures``. FroqError when none is readable or a setting is bad.
    """
    if forward_batch in (None, "auto"):
        forward_batch = auto_forward_batch(fr.device)
    if channels_last in (None, "auto"):
        channels_last = auto_channels_last(fr.device)
    mpx = perturbations.resolve_mpx(mpx, fr.preprocess.size)
    cells = int(mpx) if isinstance(mpx, int) else tuple(int(m) for m in mpx)
    if not isinstance(cells, int) and len(cells) == 1:
        cells = cells[0]  # a list of one size is the paper's single grid (same key, same columns)
    settings = LabelSettings(alphas=tuple(float(a) for a in alphas), noise_count=noise_count, mpx=cells,
                             seed=seed, forward_batch=forward_batch, channels_last=bool(channels_last),
                             weights=tuple(float(w) for w in weights), noise_model=noise_model,
                             occlusion=occlusion, fold=bool(fold), precision=precision)
    labeler = PseudoLabeler(fr, settings)
    columns = labeler.columns[1:]

    def batch_fn(_paths: list[str], images: torch.Tensor) -> torch.Tensor:
        scores = labeler.score(images)
        return torch.stack([scores[c] for c in columns], dim=1)

    key = {"stage": "pseudo_labels", "model": fr.identity(), "root": str(root),
           # forward_batch is a speed knob: not part of the key; ONNX Runtime rounds differently
           "settings": {**settings.fingerprint(),
                        **({"runtime": "onnxruntime"} if labeler.onnx_runtime is not None else {})}}
    result = run_images(root, batch_fn, columns, preprocess=fr.preprocess, device=fr.device,
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
