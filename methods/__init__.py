"""The comparison FIQA methods of the paper's table, in one framework, by name.

Every method scores the images of a folder with an ``FRModel`` (``face_recognition_model.
load_fr_model``) through ``froq.core.runner.run_images`` and returns its ``RunResult``: columns
``quality`` (higher = better) then the method's components::

    from methods import run_method
    result = run_method("serfiq", fr, "aligned/", batch_size=32, options={"m": 100})
    result.column("quality"), result.paths

A method module defines ``NAME``, ``DESCRIPTION``, ``OPTIONS`` (a ``froq.core.config.Key`` schema of
its options, the ``methods.<name>.*`` keys of a score config), ``components(options)`` (the extra
CSV columns), ``check(fr, options)`` (FroqError when the method does not apply to the model: what a
method needs of the model's inside it reads from ``fr.layout()`` only) and
``score(fr, root, *, batch_size, num_workers, paths, failures, resume_path, options) -> RunResult``.
The command line is ``methods/score.py``.
"""

from __future__ import annotations

import importlib
from pathlib import Path
from types import ModuleType
from typing import Sequence

import torch

from face_recognition_model.loading import FRModel
from froq.core.config import validate
from froq.core.errors import FroqError
from froq.core.images import FailureLog
from froq.core.runner import RunResult


_METHODS: dict[str, str] = {
    "serfiq": "methods.serfiq",
    "grafiqs": "methods.grafiqs",
    "embedding_norm": "methods.embedding_norm",
    "crfiqa": "methods.crfiqa",
    "aux_fiqa": "methods.aux_fiqa",
    "froq": "methods.froq",
}


def list_methods() -> list[str]:
    """Names of all registered methods, sorted."""
    return sorted(_METHODS)


def get_method(name: str) -> ModuleType:
    """The module of method ``name``; FroqError listing the known names if unknown."""
    if name not in _METHODS:
        raise FroqError(f"unknown FIQA method '{name}'; known: {', '.join(list_methods())}")
    return importlib.import_module(_METHODS[name])


def resolve_options(name: str, options: dict | None, source: str = "options") -> dict:
    """Validate ``options`` of method ``name`` against its schema; fill defaults.

    In: the user's options (None = all defaults) and a source label for messages, e.g.
    ``"configs/score.yaml: methods.serfiq"``. Out: a new dict. FroqError on an unknown key or a
    bad value, naming the key.
    """
    method = get_method(name)
    opts = dict(options or {})
    unknown = sorted(set(opts) - set(method.OPTIONS))
    if unknown:
        known = ", ".join(sorted(method.OPTIONS)) or "none"
        raise FroqError(f"{source}: unknown option(s) {', '.join(unknown)} for method '{name}' "
                        f"(known: {known})")
    return validate(opts, method.OPTIONS, source)


def run_method(name: str, fr: FRModel, root: str | Path, *, batch_size: int = 32,
               device: torch.device | str | None = None, num_workers: int = 0,
               paths: Sequence[str] | None = None, options: dict | None = None,
               failures: FailureLog | None = None, resume_path: str | Path | None = None,
               source: str | None = None) -> RunResult:
    """Score the images of ``root`` with method ``name`` and FR model ``fr``.

    In: the method name, a loaded FR model, an image folder (or explicit relative ``paths``),
    batch size, ``device`` (default: the model's; the network is moved there otherwise), DataLoader
    workers, the method's options (validated; defaults filled), a FailureLog for unreadable files,
    and optionally ``resume_path`` (the final CSV path, for resumable runs).
    Out: ``RunResult`` with columns ``["quality", *components]`` (quality higher = better), readable
    images in folder order. FroqError when the method does not apply.
    """
    method = get_method(name)
    opts = resolve_options(name, options, source or f"method {name}")
    if device is not None and torch.device(device) != fr.device:
        fr.network.to(torch.device(device))
        fr.device = torch.device(device)
    method.check(fr, opts)
    failures = failures if failures is not None else FailureLog(name)
    result = method.score(fr, root, batch_size=batch_size, num_workers=num_workers, paths=paths,
                          failures=failures, resume_path=resume_path, options=opts)
    expected = ["quality", *method.components(opts)]
    if [c for c in result.columns if c != "label"] != expected:  # label: a RecordIO set's identities
        raise RuntimeError(f"method {name} returned columns {result.columns}, expected {expected}")
    return result
