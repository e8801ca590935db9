"""SER-FIQ (Terhörst et al., CVPR 2020): stochastic embedding robustness, "same model" variant.

For each image, m stochastic embeddings x_1..x_m are produced with dropout active only after the
last convolutional block; with the embeddings L2-normalised,

    q = 2 · σ( −(2/m²) · Σ_{i<j} ‖x_i − x_j‖ )          (σ = logistic sigmoid; q ∈ (0, 1])

i.e. 2σ(−mean of the full m×m distance matrix). ``average: pairs`` uses the mean over the
m(m−1)/2 pairs instead, as the authors' mxnet code does — a monotone change of the same number,
so the ranking is identical. (Their code can also rescale with a second sigmoid, α=130, r=0.88: not
applied, also monotone.) Higher = better.

Where the dropout goes: the model's layout (``fr.layout().tail``, declared by each model family)
names the module whose input is the feature before dropout, the model's own dropout p there and
the deterministic layers after it:
- AdaFace: its own Dropout in ``output_layer`` (p = 0.4).
- iResNet / CR-FIQA: ``dropout`` before ``fc``, its own p — but arcface_torch trains with p = 0,
  so when the model's p is 0 the configurable ``fallback_p`` (default 0.5) is used and logged.
- dlib ResNet (no dropout): dropout with ``fallback_p`` on the pooled 256-D vector, before ``fc``.
- a model without a tail (ONNX graphs) is refused with the layout's reason.
``p`` set to a number overrides all of this.

Cost: the trunk runs once per image (its output is captured with a pre-hook on the tail's
``capture`` module, which also stops the forward there); the cheap tail then runs m times for several
images in one batched call. Dropout masks come from a generator seeded per image from ``seed`` and
the image's relative path, so results do not depend on batch size or order.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Callable, Sequence

import torch
from torch import nn

from face_recognition_model.layout import EmbeddingTail
from face_recognition_model.loading import FRModel
from froq.core.config import Key, int_at_least, number_between
from froq.core.errors import FroqError
from froq.core.images import FailureLog
from froq.core.runner import RunResult
from methods.common import StopForward, capture_input, image_seed, score_images

log = logging.getLogger(__name__)

NAME = "serfiq"
DESCRIPTION = "SER-FIQ: robustness of m stochastic (dropout) embeddings; higher = better"


def _p_value(value):
    """Validator: ``auto`` or a dropout probability in [0, 1)."""
    if isinstance(value, str) and value.strip().lower() == "auto":
        return "auto"
    try:
        return number_between(0, 1, low_included=True)(value)
    except ValueError:
        raise ValueError(f"must be 'auto' or a number in [0, 1) (got {value!r})") from None


OPTIONS = {
    "m": Key(int_at_least(2), default=100, help="stochastic forward passes per image"),
    "p": Key(_p_value, default="auto", help="dropout probability; auto = the model's own (or fallback_p)"),
    "fallback_p": Key(number_between(0, 1), default=0.5,
                      help="p when the model has no dropout of its own or its p is 0"),
    "seed": Key("int", default=0),
    "average": Key("str", default="paper", choices=("paper", "pairs"),
                   help="paper: (2/m²)·Σ_{i<j}; pairs: mean over the m(m−1)/2 pairs"),
    "rows_per_call": Key("int", default=1024, minimum=1,
                         help="stochastic tail rows per batched call (bounds memory)"),
}


def components(options: dict) -> tuple[str, ...]:
    """No extra columns."""
    return ()


def find_tail(fr: FRModel) -> EmbeddingTail:
    """The embedding tail the model's layout declares; FroqError (one line, the layout's reason)
    when it declares none."""
    return fr.layout().require("tail", NAME, fr.arch)


def choose_p(tail: EmbeddingTail, options: dict) -> float:
    """The dropout probability to use: ``options['p']`` if a number, else the model's own p if it
    is > 0, else ``options['fallback_p']`` (logged)."""
    if options["p"] != "auto":
        return float(options["p"])
    if tail.dropout_p is not None and tail.dropout_p > 0:
        return tail.dropout_p
    why = "has no dropout there" if tail.dropout_p is None else "has dropout p = 0 (trained without)"
    log.info("serfiq: the model %s (before %s): using fallback_p = %g", why, tail.capture,
             options["fallback_p"])
    return float(options["fallback_p"])


def trunk_features(network: nn.Module, capture: nn.Module, images: torch.Tensor) -> torch.Tensor:
    """The tail input of each image: one deterministic forward, stopped at ``capture``."""
    with capture_input(capture) as box:
        try:
            network(images)
        except StopForward:
            pass
    if "x" not in box:
        raise FroqError("serfiq: the model's forward never reached its embedding tail; "
                        "cannot apply SER-FIQ")
    return box["x"].float()


def stochastic_embeddings(head: Callable[[torch.Tensor], torch.Tensor], z: torch.Tensor,
                          seeds: Sequence[int], m: int, p: float, rows_per_call: int) -> torch.Tensor:
    """(B, ...) tail inputs → (B, m, E) embeddings ``head(dropout(z))`` with independent dropout
    masks (inverted dropout: kept units scaled by 1/(1−p)), each image's masks drawn from its own
    seed."""
    out = []
    per_call = max(1, rows_per_call // m)
    for start in range(0, z.shape[0], per_call):
        zs = z[start:start + per_call]
        reps = []
        for j in range(zs.shape[0]):
            g = torch.Generator(device=zs.device).manual_seed(seeds[start + j])
            rep = zs[j].unsqueeze(0).expand(m, *zs.shape[1:])
            if p > 0:
                keep = torch.rand(rep.shape, generator=g, device=zs.device) >= p
                rep = rep * keep / (1.0 - p)
            reps.append(rep)
        emb = head(torch.cat(reps)).float()
        out.append(emb.view(zs.shape[0], m, -1))
    return torch.cat(out)


def serfiq_quality(embeddings: torch.Tensor, average: str = "paper") -> torch.Tensor:
    """(B, m, E) stochastic embeddings → (B,) SER-FIQ quality (see module docstring).

    The embeddings are L2-normalised here; distances are exact (no matmul shortcut) so identical
    embeddings give exactly q = 1.
    """
    x = torch.nn.functional.normalize(embeddings.double(), dim=-1)
    m = x.shape[1]
    dist = torch.cdist(x, x, compute_mode="donot_use_mm_for_euclid_dist")
    pair_sum = dist.sum(dim=(1, 2)) / 2.0  # Σ_{i<j}
    scale = 2.0 / (m * m) if average == "paper" else 2.0 / (m * (m - 1))
    return 2.0 * torch.sigmoid(-scale * pair_sum)


def check(fr: FRModel, options: dict) -> None:
    """FroqError if the model's layout declares no embedding tail."""
    find_tail(fr)


def score(fr: FRModel, root: str | Path, *, batch_size: int = 32, num_workers: int = 0,
          paths: Sequence[str] | None = None, failures: FailureLog | None = None,
          resume_path: str | Path | None = None, options: dict) -> RunResult:
    """SER-FIQ quality of every readable image of ``root``; see the module docstring."""
    network = fr.network
    tail = find_tail(fr)
    capture = network.get_submodule(tail.capture)
    p = choose_p(tail, options)
    m, seed = options["m"], options["seed"]
    log.info("serfiq: m = %d, p = %g before %s, average = %s", m, p, tail.capture, options["average"])

    @torch.no_grad()
    def batch_fn(batch_paths: list[str], images: torch.Tensor) -> torch.Tensor:
        z = trunk_features(network, capture, images)
        seeds = [image_seed(seed, path) for path in batch_paths]
        emb = stochastic_embeddings(tail.head, z, seeds, m, p, options["rows_per_call"])
        return serfiq_quality(emb, options["average"])

    return score_images(fr, root, NAME, {**options, "p": p}, batch_fn, ["quality"],
                        batch_size=batch_size, paths=paths, num_workers=num_workers, resume_path=resume_path,
                        failures=failures)
