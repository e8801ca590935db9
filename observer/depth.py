"""How much of a forward pass an early-exit observer runs: the depth cost of each module.

A module's cost is the share of the full forward's multiply-adds (MACs) of the ``Conv`` (1-3 d,
not transposed) and ``Linear`` modules that have run when that module's forward returns, in
execution order — what a forward that stops right after the module (``NormRecorder``'s early
exit) has computed. MACs are counted from the output shapes of one hooked forward of one example
input: a convolution costs ``output elements × in_channels / groups × kernel elements``, a linear
layer ``output elements × in_features``. A module called more than once counts at its last call
(the early exit waits for it). Convolutions called as functions (``F.conv2d``) are not seen; a
network without a single Conv or Linear module falls back to the share of module calls.
"""

from __future__ import annotations

import math
from typing import Mapping, Sequence

import torch
from torch import nn

#: what the costs count, recorded in the observer file
UNIT = "share of the multiply-adds of Conv and Linear modules (one forward of one input)"
FALLBACK_UNIT = "share of module calls (the network has no Conv or Linear module)"


def module_macs(module: nn.Module, output) -> int:
    """Multiply-adds of one call of ``module`` for one input, from its output (first dim = batch).

    In: a module and the tensor it returned. Out: MACs per image of a non-transposed ``Conv1d``/
    ``Conv2d``/``Conv3d`` or a ``Linear``; 0 for every other module or a non-tensor output."""
    if not isinstance(output, torch.Tensor) or output.dim() < 1 or output.shape[0] == 0:
        return 0
    per_image = output.numel() // output.shape[0]
    if isinstance(module, nn.modules.conv._ConvNd) and not module.transposed:
        return per_image * (module.in_channels // module.groups) * math.prod(module.kernel_size)
    if isinstance(module, nn.Linear):
        return per_image * module.in_features
    return 0


def module_costs(model: nn.Module, example: torch.Tensor) -> dict:
    """Depth cost of every named submodule of ``model`` (module doc), from one forward of ``example``.

    In: the network and one input batch (only shapes matter; use one image). Out: ``{unit,
    total_macs, costs: {module name: share in [0, 1] or None (never called)}}`` in
    ``named_modules()`` order, the root excluded. The forward runs under ``torch.no_grad``."""
    names = [name for name, _ in model.named_modules() if name]
    done = {"macs": 0, "calls": 0}
    at_macs: dict[str, int] = {}
    at_call: dict[str, int] = {}
    handles = []

    def hook_for(name: str):
        def hook(module, inputs, output):
            done["macs"] += module_macs(module, output)
            done["calls"] += 1
            at_macs[name] = done["macs"]  # last call wins
            at_call[name] = done["calls"]
        return hook

    modules = dict(model.named_modules())
    try:
        for name in names:
            handles.append(modules[name].register_forward_hook(hook_for(name)))
        with torch.no_grad():
            model(example)
    finally:
        for handle in handles:
            handle.remove()
    total, calls = done["macs"], done["calls"]
    if total > 0:
        costs = {n: (at_macs[n] / total if n in at_macs else None) for n in names}
        unit = UNIT
    else:
        costs = {n: (at_call[n] / calls if n in at_call else None) for n in names}
        unit = FALLBACK_UNIT
    return {"unit": unit, "total_macs": int(total), "costs": costs}


def early_exit_cost(costs: Mapping[str, float | None], layers: Sequence[str]) -> float | None:
    """Cost of an observer that hooks ``layers``: the largest cost among them (its forward stops
    after the last of them has run). None when a layer has no cost (never called) or none given."""
    values = [costs.get(name) for name in layers]
    if not values or any(v is None for v in values):
        return None
    return float(max(values))
