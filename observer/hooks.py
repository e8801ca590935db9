"""The one hook mechanism of FROQ: per-image statistics of module outputs (the paper's L2 norm, and
optionally L1, mean, standard deviation, spatial spread and left-right symmetry of channel norms),
reduced inside forward hooks (activations are never stored), with optional early exit once the
wanted layers have fired.

Used by observer initialisation (all layers, one pass) and inference (selected layers only).
"""

from __future__ import annotations

import logging
from typing import Sequence

import numpy as np
import torch
from torch import nn

from froq.core.errors import FroqError

log = logging.getLogger(__name__)


class EarlyExit(Exception):
    """Raised from a hook to stop the forward pass once every observed layer has fired."""


def observable_layers(model: nn.Module) -> list[str]:
    """Names of every submodule in ``named_modules()`` order, the root excluded (spec §0)."""
    return [name for name, _ in model.named_modules() if name]


def _l2(out: torch.Tensor, flat: torch.Tensor) -> torch.Tensor:
    return torch.linalg.vector_norm(flat, dim=1, dtype=torch.float32)


def _l1(out: torch.Tensor, flat: torch.Tensor) -> torch.Tensor:
    return torch.linalg.vector_norm(flat, ord=1, dim=1, dtype=torch.float32)


def _mean(out: torch.Tensor, flat: torch.Tensor) -> torch.Tensor:
    return flat.mean(dim=1, dtype=torch.float32)


def _std(out: torch.Tensor, flat: torch.Tensor) -> torch.Tensor:
    return torch.std(flat.float(), dim=1, correction=0)


def _position_norms(out: torch.Tensor) -> torch.Tensor:
    """(B, H, W) float32 L2 norm over the channels of a (B, C, H, W) output."""
    return torch.linalg.vector_norm(out, dim=1, dtype=torch.float32)


def _spatial_std(out: torch.Tensor, flat: torch.Tensor) -> torch.Tensor | None:
    if out.dim() != 4 or out.shape[2] * out.shape[3] < 2:
        return None
    return torch.std(_position_norms(out).reshape(out.shape[0], -1), dim=1, correction=0)


def _symmetry(out: torch.Tensor, flat: torch.Tensor) -> torch.Tensor | None:
    if out.dim() != 4 or out.shape[3] < 2:
        return None
    norms = _position_norms(out)
    centred = norms - norms.mean(dim=(1, 2), keepdim=True)
    # the mirror has the same mean and spread, so the correlation is <c, mirror(c)> / <c, c>;
    # a map with no spread (e.g. all zero) has no shape to compare: 0, not NaN
    mirrored = torch.flip(centred, dims=[2])
    return (centred * mirrored).sum(dim=(1, 2)) / centred.square().sum(dim=(1, 2)).clamp_min(1e-12)


#: Per-image statistics of a layer's output ``x`` (B first; ``f`` = one image's output flattened):
#: ``l2`` = ||f||_2 (the paper's), ``l1`` = ||f||_1, ``mean`` = mean(f), ``std`` = population std
#: of f, ``spatial_std`` = population std over the H×W positions of the L2 norm over channels of a
#: (B, C, H, W) output (undefined for other shapes), ``symmetry`` = Pearson correlation over the
#: H×W positions between that per-position norm map and its left-right mirror (1 = the map is its
#: own mirror image, 0 for a flat map; undefined for other shapes or a width of 1). All reduced in
#: float32.
STATISTICS = {"l2": _l2, "l1": _l1, "mean": _mean, "std": _std, "spatial_std": _spatial_std,
              "symmetry": _symmetry}


def check_statistics(statistics: Sequence[str]) -> list[str]:
    """The statistic names as a list; FroqError naming the unknown ones (and the known ones)."""
    statistics = list(statistics)
    unknown = [s for s in statistics if s not in STATISTICS]
    if unknown or not statistics or len(set(statistics)) != len(statistics):
        raise FroqError(f"layer statistics {statistics}: unknown or repeated "
                        f"({', '.join(unknown) or 'none given'}); known: {', '.join(STATISTICS)}")
    return statistics


class NormRecorder:
    """Context manager: forward hooks on ``layers`` of ``model`` recording per-image statistics
    (``statistics``, names of ``STATISTICS``; default the paper's L2 norm only).

    For each forward of a batch of B images, ``norms()`` returns the (B, L) float64 L2 norms, one
    column per layer in the given order, and ``stats()`` the (B, L, S) float64 statistics; NaN where
    a layer did not fire or its output was not a floating tensor with the batch as first dimension.
    A module called several times in one forward keeps its last call.

    ``early_exit=True`` raises ``EarlyExit`` (caught by ``run``) as soon as every layer has fired as
    many times as it did in the first (complete) forward — so layers called repeatedly are safe.
    """

    def __init__(self, model: nn.Module, layers: Sequence[str] | None = None,
                 early_exit: bool = False, statistics: Sequence[str] = ("l2",)) -> None:
        self.statistics = check_statistics(statistics)
        self._reducers = [STATISTICS[name] for name in self.statistics]
        modules = dict(model.named_modules())
        self.model = model
        self.layers = list(layers) if layers is not None else observable_layers(model)
        unknown = [name for name in self.layers if name not in modules or not name]
        if unknown:
            raise FroqError(f"layer(s) not found in the model: {', '.join(unknown[:5])}"
                            " — the observer file does not belong to this FR model")
        self._modules = [modules[name] for name in self.layers]
        self.early_exit = early_exit
        self._handles: list = []
        self._expected_calls: list[int] | None = None
        self._reset(0)

    # -- lifecycle ---------------------------------------------------------------------------
    def __enter__(self) -> "NormRecorder":
        for col, module in enumerate(self._modules):
            self._handles.append(module.register_forward_hook(self._make_hook(col)))
        return self

    def __exit__(self, *exc) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles.clear()

    def _reset(self, batch_size: int) -> None:
        self._batch = batch_size
        self._values: list[list[torch.Tensor | None] | None] = [None] * len(self.layers)
        self._calls = [0] * len(self.layers)
        self._fired = 0
        self._last_output: torch.Tensor | None = None
        self._last_norm: torch.Tensor | None = None
        self._last_version = -1

    def _make_hook(self, col: int):
        def hook(module, inputs, output):
            self._calls[col] += 1
            if self._calls[col] == 1:
                self._fired += 1
            value = None
            # floating tensors only: converted graphs (onnx2torch) have integer shape/constant
            # nodes whose first dimension may equal the batch size by chance
            if (isinstance(output, torch.Tensor) and output.is_floating_point()
                    and output.dim() >= 1 and output.shape[0] == self._batch):
                # a container returning its last child's tensor: reuse that norm, unless the
                # tensor was modified in place since (e.g. an inplace ReLU returns its input)
                if output is self._last_output and output._version == self._last_version:
                    value = self._last_norm
                else:
                    detached = output.detach()
                    flat = detached.reshape(self._batch, -1)
                    value = [reduce(detached, flat) for reduce in self._reducers]
                    self._last_output, self._last_norm = output, value
                    self._last_version = output._version
            self._values[col] = value
            if self.early_exit and self._expected_calls is not None and self._fired == len(self.layers):
                if all(c >= e for c, e in zip(self._calls, self._expected_calls)):
                    raise EarlyExit
        return hook

    # -- use ---------------------------------------------------------------------------------
    def run(self, forward, batch: torch.Tensor):
        """Run ``forward(batch)`` while recording; returns its output, or None after an early exit."""
        self._reset(batch.shape[0])
        try:
            out = forward(batch)
        except EarlyExit:
            out = None
        finally:
            self._last_output = self._last_norm = None
        if self._expected_calls is None:
            self._expected_calls = list(self._calls)
            if self.early_exit and out is None:  # cannot happen: expectations are set after a full pass
                raise RuntimeError("early exit before expectations were known")
        return out

    def norms(self) -> np.ndarray:
        """(B, L) float64 L2 norms of the last ``run``; NaN for layers without a usable output."""
        if "l2" not in self.statistics:
            raise FroqError("this recorder does not compute the L2 norm (statistics "
                            f"{self.statistics}): use stats()")
        return np.ascontiguousarray(self.stats()[:, :, self.statistics.index("l2")])

    def stats(self) -> np.ndarray:
        """(B, L, S) float64 statistics of the last ``run`` (S = ``statistics`` in order); NaN
        where a layer gave no usable output or the statistic is undefined for its shape."""
        out = np.full((self._batch, len(self.layers), len(self.statistics)), np.nan, dtype=np.float64)
        for s in range(len(self.statistics)):
            cols = [i for i, v in enumerate(self._values) if v is not None and v[s] is not None]
            if cols:
                stacked = torch.stack([self._values[i][s] for i in cols], dim=1).cpu().double().numpy()
                out[:, cols, s] = stacked
        return out

    def fired(self) -> list[bool]:
        """Per layer: did it fire (produce any output) in the last ``run``?"""
        return [c > 0 for c in self._calls]
