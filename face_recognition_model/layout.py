"""What an FR model declares about its own parts (like timm's ``feature_info``).

Methods that need to know a model's inside (SER-FIQ's dropout place, GraFIQs' residual stages and
batch-norm statistics, CR-FIQA's quality unit) read it from here and nowhere else: every network of
the zoo implements ``layout(self) -> ModelLayout`` and ``FRModel.layout()`` returns it. A part the
model does not have is ``None`` (or empty) together with a one-line reason, which a method that
needs the part shows to the user (``ModelLayout.require``).

Parts, all module names as ``named_modules()`` lists them:

- ``tail``: where the embedding's last, cheap layers start (SER-FIQ). ``tail.capture`` is the
  module whose INPUT is the feature just before dropout (a forward pre-hook there captures it and
  may stop the forward); ``tail.dropout_p`` is the model's own dropout probability there (``None``:
  the model has no dropout there); ``tail.head`` maps that feature, after dropout, to the
  embedding ``forward`` returns (deterministic layers only).
- ``stages``: the four modules whose outputs are the four residual stage outputs (GraFIQs).
- ``batch_norms``: every ``BatchNorm2d`` with running statistics (GraFIQs), computed by
  ``running_batch_norms``.
- ``quality_head``: a learned quality unit applied to the embedding ``forward`` returns,
  (B, D) → (B,) (CR-FIQA's ``qs``).

Adding an FR family = one model file whose network class has a ``layout`` method + one registry
line; ``tests/test_registry.py`` checks every registered name.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
from torch import nn

from froq.core.errors import FroqError

# the parts of a layout and how a message names them
PARTS = {
    "tail": "embedding tail (the place for SER-FIQ's dropout)",
    "stages": "four residual stages",
    "batch_norms": "BatchNorm2d layers with running statistics",
    "quality_head": "CR-FIQA quality head",
}


@dataclass(frozen=True)
class EmbeddingTail:
    """The last layers of the embedding (see the module docstring): ``capture`` (module name; its
    input is the pre-dropout feature), ``dropout_p`` (the model's own p there, or None) and
    ``head`` (feature after dropout → embedding, deterministic)."""

    capture: str
    dropout_p: float | None
    head: Callable[[torch.Tensor], torch.Tensor]


@dataclass(frozen=True)
class ModelLayout:
    """The parts an FR network declares (module docstring); each absent part has a one-line reason
    in ``why_no_<part>``."""

    tail: EmbeddingTail | None = None
    stages: tuple[str, str, str, str] | None = None
    batch_norms: tuple[str, ...] = ()
    quality_head: Callable[[torch.Tensor], torch.Tensor] | None = None
    why_no_tail: str = ""
    why_no_stages: str = ""
    why_no_batch_norms: str = ""
    why_no_quality_head: str = ""

    def __post_init__(self) -> None:
        if self.stages is not None:
            object.__setattr__(self, "stages", tuple(self.stages))
            if len(self.stages) != 4:
                raise ValueError(f"ModelLayout.stages: 4 module names expected, got {len(self.stages)}")
        object.__setattr__(self, "batch_norms", tuple(self.batch_norms))
        for part in PARTS:
            reason = getattr(self, f"why_no_{part}")
            if "\n" in reason:
                raise ValueError(f"ModelLayout.why_no_{part}: the reason must be one line")
            if not self.has(part) and not reason.strip():
                raise ValueError(f"ModelLayout: '{part}' is absent but why_no_{part} gives no reason")

    def has(self, part: str) -> bool:
        """Whether the model declares ``part`` (one of ``PARTS``)."""
        value = getattr(self, part)
        return value is not None and value != ()

    def reason(self, part: str) -> str:
        """The one-line reason ``part`` is absent ('' when present)."""
        return "" if self.has(part) else getattr(self, f"why_no_{part}")

    def require(self, part: str, method: str, model: str):
        """The value of ``part``; FroqError (one line naming the method, the model and the
        layout's reason) when the model does not have it."""
        if part not in PARTS:
            raise KeyError(part)
        if not self.has(part):
            raise FroqError(f"{method}: does not apply to model '{model}': it has no {PARTS[part]} "
                            f"({self.reason(part)})")
        return getattr(self, part)


def running_batch_norms(network: nn.Module) -> tuple[str, ...]:
    """Names of every ``BatchNorm2d`` of ``network`` that tracks running statistics, in
    ``named_modules()`` order."""
    return tuple(name for name, m in network.named_modules()
                 if isinstance(m, nn.BatchNorm2d) and m.track_running_stats
                 and m.running_mean is not None and m.running_var is not None)


def batch_norm_parts(network: nn.Module, why_none: str) -> dict:
    """``batch_norms`` and ``why_no_batch_norms`` keyword arguments of a ``ModelLayout`` for
    ``network``: its running batch norms, or ``why_none`` when it has none."""
    names = running_batch_norms(network)
    return {"batch_norms": names, "why_no_batch_norms": "" if names else why_none}


def layout_of(network: nn.Module) -> ModelLayout:
    """``network.layout()``; for a network that declares none (a bare module, a user builder
    without the method) a layout with every part absent, saying so."""
    declare = getattr(type(network), "layout", None)
    if callable(declare):
        layout = network.layout()
        if not isinstance(layout, ModelLayout):
            raise TypeError(f"{type(network).__name__}.layout() returned {type(layout).__name__}, "
                            "not a ModelLayout")
        return layout
    why = (f"its network ({type(network).__name__}) declares no layout(); "
           "see face_recognition_model/layout.py")
    return ModelLayout(**{f"why_no_{part}": why for part in PARTS})
