"""Model registry by name (timm-style). Builders are imported lazily, so optional dependencies of
one family (onnx2torch, the dlib model file) never break the others.

A builder is ``build(weights: str | None, **kwargs) -> torch.nn.Module`` in eval mode. Contract of
the returned module: ``forward(x)`` takes a float batch (B, 3, H, W) preprocessed as the model's FR
config says and returns the **un-normalised** embedding (B, D); every layer is a named submodule
(``named_modules()``) so hooks can observe it; ``layout()`` returns its ``ModelLayout``
(``face_recognition_model.layout``: the parts the comparison methods use). ``weights=None`` builds
the architecture with random initialisation (tests, benchmarks), except for families with a
packaged default. A new family = its model file + one line below (``tests/test_registry.py``
runs every name).
"""

from __future__ import annotations

import importlib
from typing import Callable

import torch

from froq.core.errors import FroqError

# name -> "module:function" (lazy) or a callable registered at run time
_REGISTRY: dict[str, str | Callable[..., torch.nn.Module]] = {}

for _n in (18, 34, 50, 100, 101, 152, 200):
    _REGISTRY[f"adaface_ir_{_n}"] = f"face_recognition_model.adaface:build_ir_{_n}"
    _REGISTRY[f"adaface_ir_se_{_n}"] = f"face_recognition_model.adaface:build_ir_se_{_n}"
for _n in (18, 34, 50, 100, 200):
    _REGISTRY[f"iresnet{_n}"] = f"face_recognition_model.iresnet:build_iresnet{_n}"
_REGISTRY["onnx"] = "face_recognition_model.onnx_model:build_onnx"
_REGISTRY["dlib_resnet"] = "face_recognition_model.dlib_resnet:build_dlib_resnet"
_REGISTRY["sface"] = "face_recognition_model.sface:build_sface"
_REGISTRY["curricularface_ir101"] = "face_recognition_model.curricularface:build_curricularface_ir101"
_REGISTRY["swinface"] = "face_recognition_model.swinface:build_swinface"
for _n in (50, 100):
    _REGISTRY[f"crfiqa_iresnet{_n}"] = f"face_recognition_model.iresnet:build_crfiqa_iresnet{_n}"


def register_model(name: str):
    """Decorator registering a builder under ``name`` (for user extensions)."""
    def deco(fn):
        _REGISTRY[name] = fn
        return fn
    return deco


# the zoo's own architectures (what tests/test_registry.py checks); register_model adds others
_ZOO = frozenset(_REGISTRY)


def zoo_models() -> list[str]:
    """The architectures this toolkit ships, sorted (``list_models`` minus user registrations)."""
    return sorted(_ZOO)


def list_models() -> list[str]:
    """All registered architecture names, sorted."""
    return sorted(_REGISTRY)


def get_builder(name: str) -> Callable[..., torch.nn.Module]:
    """The builder function of ``name``; FroqError listing the known names if unknown."""
    entry = _REGISTRY.get(name)
    if entry is None:
        raise FroqError(f"unknown FR architecture '{name}'; known: {', '.join(list_models())}")
    if isinstance(entry, str):
        module_name, _, fn_name = entry.partition(":")
        try:
            module = importlib.import_module(module_name)
        except ImportError as exc:
            raise FroqError(f"architecture '{name}' needs a package that is not installed: {exc}") from None
        entry = getattr(module, fn_name)
        _REGISTRY[name] = entry
    return entry


def create_model(name: str, weights: str | None = None, **kwargs) -> torch.nn.Module:
    """Build architecture ``name`` and load ``weights`` (a path, or None); returns it in eval mode."""
    model = get_builder(name)(weights, **kwargs)
    return model.eval()


# families whose weights ship in an installed package: name -> "module:function" returning the path
_DEFAULT_WEIGHTS: dict[str, str] = {
    "dlib_resnet": "face_recognition_model.dlib_resnet:default_weights_path",
    "sface": "face_recognition_model.sface:default_weights_path",
}


def default_weights(name: str) -> str | None:
    """Path of the packaged weights of ``name`` (e.g. dlib's model file), or None if it has none."""
    entry = _DEFAULT_WEIGHTS.get(name)
    if entry is None:
        return None
    module_name, _, fn_name = entry.partition(":")
    return getattr(importlib.import_module(module_name), fn_name)()
