"""The label forwards' network: the FR network traced by ``torch.fx`` with the work that changes no
number folded away (issue 20).

The pseudo-labels observe no activation, so their forwards may run a rewritten copy of the network:

- a per-channel affine that directly follows a 2-D convolution (an eval-mode ``BatchNorm2d``,
  dlib's ``Affine``) is folded into the convolution's weight and bias (``W' = s·W``,
  ``b' = s·b + t``): one pass over the activations less per pair;
- a 1×1 max-pool with stride 1 and no padding (the identity shortcut of the IR blocks) is dropped.

Same numbers up to float rounding (labels within ~1e-7, tests/test_label_fusion.py). The tracer is
the one the incremental occlusion plans with (``trace``): pointwise layers stay leaves, ``.device``
of a traced tensor answers the model's device.
"""

from __future__ import annotations

import copy
import logging

import torch
import torch.fx as fx
from torch import nn

from face_recognition_model.dlib_resnet import Affine, ZeroPadAdd

log = logging.getLogger(__name__)

#: modules that act on each position (and channel) alone: the tracer keeps them as leaves
POINTWISE_MODULES = (nn.BatchNorm2d, nn.ReLU, nn.PReLU, nn.LeakyReLU, nn.Sigmoid, nn.Identity,
                     nn.Dropout, Affine, ZeroPadAdd)


class _Tracer(fx.Tracer):
    """fx tracer that keeps the pointwise and window modules as leaves and answers ``.device`` of
    a traced tensor with the model's device (models choose their autocast from it)."""

    def __init__(self, device: torch.device) -> None:
        super().__init__()
        self.device = device

    def is_leaf_module(self, m: nn.Module, name: str) -> bool:
        return isinstance(m, POINTWISE_MODULES) or super().is_leaf_module(m, name)

    def proxy(self, node: fx.Node) -> fx.Proxy:
        return _DeviceProxy(node, self)


class _DeviceProxy(fx.Proxy):
    def __getattr__(self, name: str):
        return self.tracer.device if name == "device" else super().__getattr__(name)


def trace(network: nn.Module, device: torch.device) -> fx.GraphModule:
    """``network`` as an fx GraphModule of the same class name (shares its parameters); raises
    whatever fx raises when the network cannot be traced (data-dependent control flow)."""
    return fx.GraphModule(network, _Tracer(device).trace(network), type(network).__name__)


def _channel_affine(module: nn.Module) -> tuple[torch.Tensor, torch.Tensor] | None:
    """(scale, shift) per channel of an eval-mode 2-D batch norm or dlib affine, else None."""
    if isinstance(module, Affine):
        return module.weight.detach(), module.bias.detach()
    if isinstance(module, nn.BatchNorm2d) and not module.training \
            and module.track_running_stats and module.running_var is not None:
        scale = torch.rsqrt(module.running_var.double() + module.eps)
        if module.weight is not None:
            scale = scale * module.weight.detach().double()
        shift = -module.running_mean.double() * scale
        if module.bias is not None:
            shift = shift + module.bias.detach().double()
        return scale, shift
    return None


def _fold(layer: nn.Module, scale: torch.Tensor, shift: torch.Tensor) -> None:
    """Fold ``x ↦ scale·x + shift`` (per output channel) into ``layer``'s weight and bias, in place
    (float64 arithmetic, stored in the layer's dtype)."""
    w = layer.weight.detach().double()
    shape = (-1,) + (1,) * (w.dim() - 1)
    bias = layer.bias.detach().double() if layer.bias is not None else torch.zeros(w.shape[0], dtype=torch.float64,
                                                                                  device=w.device)
    dtype = layer.weight.dtype
    layer.weight = nn.Parameter((w * scale.double().view(shape)).to(dtype), requires_grad=False)
    layer.bias = nn.Parameter((bias * scale.double() + shift.double()).to(dtype), requires_grad=False)


def _is_identity_pool(module: nn.Module) -> bool:
    """A max-pool that returns its input: kernel 1, stride 1, no padding."""
    if not isinstance(module, nn.MaxPool2d) or module.return_indices:
        return False
    as_pair = nn.modules.utils._pair
    return (as_pair(module.kernel_size) == (1, 1) and as_pair(module.stride or 1) == (1, 1)
            and as_pair(module.padding) == (0, 0))


def fold_network(network: nn.Module, device: torch.device) -> tuple[nn.Module, int]:
    """A copy of ``network`` with conv → affine pairs folded and identity pools dropped.

    In: an FR network in eval mode and its device. Out: (the rewritten fx GraphModule, the number
    of modules removed); ``(network, 0)`` itself when it cannot be traced (logged) or nothing was
    found to fold. The original network is never modified (its hooks, its parameters).
    """
    try:
        gm = trace(copy.deepcopy(network), device)
    except Exception as exc:  # any tracing failure: the plain network runs
        log.info("label forwards: %s cannot be traced by torch.fx (%s): not folded", type(network).__name__,
                 str(exc).splitlines()[0] if str(exc) else type(exc).__name__)
        return network, 0
    modules = dict(gm.named_modules())
    calls: dict[str, int] = {}  # call sites per module: a shared layer is never rewritten
    for node in gm.graph.nodes:
        if node.op == "call_module":
            calls[node.target] = calls.get(node.target, 0) + 1
    removed = 0
    for node in list(gm.graph.nodes):
        if node.op != "call_module" or node.target not in modules:
            continue
        module = modules[node.target]
        source = node.args[0] if node.args else None
        if _is_identity_pool(module) and len(node.args) == 1 and not node.kwargs:
            node.replace_all_uses_with(source)
            gm.graph.erase_node(node)
            removed += 1
            continue
        affine = _channel_affine(module)
        if affine is None or not isinstance(source, fx.Node) or source.op != "call_module" \
                or len(source.users) != 1 or len(node.args) != 1 or node.kwargs \
                or calls[source.target] != 1 or calls[node.target] != 1:
            continue
        layer = modules[source.target]
        # a 2-D convolution's output is (B, C, H, W): its channels are what the affine scales (a
        # linear layer's output rank is not known here, so a batch norm after it is left alone)
        if not isinstance(layer, nn.Conv2d) or affine[0].numel() != layer.out_channels:
            continue
        _fold(layer, *affine)
        node.replace_all_uses_with(source)
        gm.graph.erase_node(node)
        removed += 1
    if not removed:  # nothing to gain: the network itself (a traced copy may hold constants that
        return network, 0  # e.g. the channels-last conversion refuses, as SwinFace's does)
    gm.graph.eliminate_dead_code()
    gm.delete_all_unused_submodules()
    gm.recompile()
    return gm.eval(), removed
