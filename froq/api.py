"""FROQ as a library, for people who put it inside their own FR pipeline.

::

    import froq

    labels = froq.pseudo_labels("configs/fr/dlib_resnet.yaml", "calibration/")   # stage 1
    observer = froq.calibrate("configs/fr/dlib_resnet.yaml", "calibration/", labels,
                              save="outputs/observer.json")                       # stage 2
    observer = froq.Observer.load("outputs/observer.json")   # later: FR config read from the file
    result = observer.score("aligned_faces/")                 # a folder, PIL images or a tensor
    result.quality, result.embeddings                         # higher = better; same pass

Everything here is a thin layer over the stages (``baselineFIQA.labels``, ``observer``), so the
numbers are those of the command-line stages.
"""

from __future__ import annotations

import contextlib
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Mapping, Sequence, Union

import numpy as np
import torch
from PIL import Image

from baselineFIQA.cache import cached_pseudo_labels, label_settings_key
from baselineFIQA.labels import compute_pseudo_labels
from baselineFIQA.settings import compute_arguments, key_arguments, label_options, output_columns, resolve_mpx
from face_recognition_model.loading import FRModel, load_fr_config
from face_recognition_model.loading import load_fr_model as _load_fr_model
from froq.core.device import resolve_device
from froq.core.errors import FroqError
from froq.core.images import FailureLog, load_rgb
from froq.core.io import discard_partial, output_lock, read_csv, write_csv, write_json
from froq.core.runner import RunResult
from froq.core.recordio import is_record_file
from observer.inference import QualityObserver, check_same_model, read_folder, read_observer, score_entries
from observer.initialization import calibrate_observer
from observer.scale import percentile

log = logging.getLogger(__name__)

REPO = Path(__file__).resolve().parent.parent

ImagesLike = Union[str, Path, torch.Tensor, Image.Image, np.ndarray, Sequence]
ModelLike = Union[str, Path, FRModel]


@dataclass
class ScoreResult:
    """FROQ qualities of a set of images.

    paths: relative paths (folder input) or the positions ``"0", "1", ...`` (in-memory input);
    quality: (N,) float64, higher = better; embeddings: (N, D) float32 FR embeddings from the same
    forward pass (NaN rows for images that could not be read), or None; unreadable: ``(path,
    reason)`` of those images (folders only: they keep their row, at the lowest quality, as in
    ``froq score``); percentile: (N,) the 0–100 scale of the observer's calibration set (same
    ranking), or None for an observer file without one; flags: ``ok`` or ``unreadable`` per row.
    """

    paths: list[str]
    quality: np.ndarray
    embeddings: np.ndarray | None = None
    unreadable: list[tuple[str, str]] = field(default_factory=list)
    percentile: np.ndarray | None = None
    flags: list[str] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.paths)


def load_fr_model(fr_config: ModelLike, device: str | torch.device = "auto",
                  overrides: Sequence[str] = ()) -> FRModel:
    """An FR model ready to use: an ``FRModel`` passes through; an FR config path (YAML, e.g.
    ``configs/fr/dlib_resnet.yaml``) is loaded on ``device`` (``auto`` = CUDA when present)
    with ``--set``-style ``overrides`` (e.g. ``["model.weights=w.ckpt"]``)."""
    if isinstance(fr_config, FRModel):
        return fr_config
    path = Path(fr_config)
    if not path.is_file():
        raise FroqError(f"FR config file not found: {path} (see configs/fr/ for the shipped ones)")
    dev = device if isinstance(device, torch.device) else resolve_device(str(device))
    return _load_fr_model(load_fr_config(path, list(overrides)), dev)


def _find_fr_config(recorded: str, observer_file: Path) -> Path:
    """The FR config an observer recorded: as written, else beside the observer, else in the repo."""
    for cand in (Path(recorded), observer_file.parent / recorded, REPO / recorded):
        if cand.is_file():
            return cand
    raise FroqError(f"{observer_file}: its FR config {recorded} was not found (looked relative to the "
                    "current folder, the observer file and the repository): pass fr_config=PATH")


class Observer:
    """A calibrated FROQ observer bound to its FR model: ``score`` gives qualities in one pass."""

    def __init__(self, fr: FRModel, record: Mapping, source: str = "observer") -> None:
        """In: the FR model, an observer record (the JSON of ``observer.json``), a name for messages.
        FroqError when the record belongs to another model or names layers the model lacks."""
        layers = record.get("selected_layers") if isinstance(record, Mapping) else None
        if not isinstance(layers, list) or not layers or not all(isinstance(n, str) for n in layers):
            raise FroqError(f"{source}: no 'selected_layers' list of layer names — not an observer")
        check_same_model(dict(record), fr, source)
        modules = dict(fr.network.named_modules())
        missing = [n for n in layers if not n or n not in modules]
        if missing:
            raise FroqError(f"{source}: selected layer(s) {', '.join(missing[:3])} do not exist in "
                            f"{fr.arch}: the observer belongs to another FR model")
        self.fr = fr
        self.record = dict(record)
        self.source = source

    @classmethod
    def load(cls, observer_file: str | Path, fr_config: ModelLike | None = None, *,
             device: str | torch.device = "auto", fr_overrides: Sequence[str] = ()) -> "Observer":
        """Read ``observer.json``; the FR model is ``fr_config`` (a path or a loaded ``FRModel``),
        by default the FR config recorded in the observer file. Out: a ready ``Observer``."""
        observer_file = Path(observer_file)
        record = read_observer(observer_file)
        if fr_config is None:
            recorded = (record.get("model") or {}).get("config")
            if not recorded:
                raise FroqError(f"{observer_file}: records no FR config: pass fr_config=PATH")
            fr_config = _find_fr_config(recorded, observer_file)
        return cls(load_fr_model(fr_config, device, fr_overrides), record, str(observer_file))

    @property
    def layers(self) -> list[str]:
        """The selected layers (module names of the FR network)."""
        return list(self.record["selected_layers"])

    def save(self, path: str | Path) -> Path:
        """Write the observer record as JSON (atomically). Out: the path."""
        write_json(path, self.record)
        return Path(path)

    def score(self, images: ImagesLike, *, batch_size: int = 32, embeddings: bool = False,
              early_exit: bool = True, num_workers: int = 0) -> ScoreResult:
        """FROQ qualities of ``images`` (higher = better), optionally with the FR embeddings.

        In: a folder of aligned faces (searched recursively and checked as ``froq score`` does:
        ``observer.inference.read_folder``, mode ``faces``) or a RecordIO ``train.rec``; or in
        memory: a PIL image, an HxWx3 uint8 array, a list of those or of image file paths, a uint8
        tensor (B, 3, H, W) of RGB pixels, or a float tensor (B, 3, H, W) already preprocessed as
        the FR config says. Out: ``ScoreResult`` (rows in input order).
        """
        if isinstance(images, (str, Path)) and (Path(images).is_dir() or is_record_file(images)):
            failures = FailureLog("froq")
            root, entries, _, _ = read_folder(self.fr, self.record, images, failures=failures)
            s = score_entries(self.fr, self.record, root, entries, batch_size=batch_size,
                              early_exit=early_exit, embeddings=embeddings, num_workers=num_workers,
                              failures=failures)
            return ScoreResult(s.paths, s.quality, s.embeddings.astype(np.float32) if embeddings else None,
                               failures.items, s.percentile, s.flags)
        batch = self.model_inputs(images)
        rows = []
        with QualityObserver(self.fr, self.record, early_exit=early_exit, embeddings=embeddings) as observe:
            for chunk in torch.split(batch, batch_size):
                rows.append(observe(chunk))
        values = np.concatenate(rows) if rows else np.zeros((0, 1))
        scale, quality = self.record.get("scale"), values[:, 0].copy()
        return ScoreResult([str(i) for i in range(len(values))], quality,
                           values[:, 1:].astype(np.float32) if embeddings else None, [],
                           percentile(quality, scale) if scale else None, ["ok"] * len(values))

    def model_inputs(self, images: ImagesLike) -> torch.Tensor:
        """In-memory images (see ``score``) → a float batch (B, 3, H, W) as the FR model takes it."""
        pre = self.fr.preprocess
        if isinstance(images, torch.Tensor):
            x = images if images.dim() == 4 else images.unsqueeze(0)
            if tuple(x.shape[1:]) != (3, *pre.size):
                raise FroqError(f"images: expected a tensor of shape (B, 3, {pre.size[0]}, {pre.size[1]}) "
                                f"for {self.fr.arch}, got {tuple(images.shape)}: align/resize the faces first")
            return pre.normalize(x) if x.dtype == torch.uint8 else x.float()
        if isinstance(images, (str, Path, Image.Image, np.ndarray)):
            images = [images]
        tensors = []
        for i, item in enumerate(images):
            if isinstance(item, (str, Path)):
                item = load_rgb(item)
            elif isinstance(item, np.ndarray):
                if item.dtype != np.uint8 or item.ndim != 3 or item.shape[2] != 3:
                    raise FroqError(f"images[{i}]: expected an HxWx3 uint8 RGB array, got "
                                    f"{item.dtype} {item.shape}")
                item = Image.fromarray(item)
            elif not isinstance(item, Image.Image):
                raise FroqError(f"images[{i}]: cannot score a {type(item).__name__}: give a folder, "
                                "PIL images, uint8 arrays, image paths or a tensor")
            tensors.append(pre(item.convert("RGB")))
        if not tensors:
            raise FroqError("images: nothing to score (empty list)")
        return torch.stack(tensors)


def pseudo_labels(fr_config: ModelLike, folder: str | Path, *, device: str | torch.device = "auto",
                  batch_size: int = 32, save: str | Path | None = None, **options) -> RunResult:
    """Stage 1: the auxiliary FIQA's pseudo-labels of a calibration folder (spec §2).

    In: an FR config path or ``FRModel``, the folder of aligned calibration faces, any label option
    of ``baselineFIQA.settings.LABEL_OPTIONS`` as a keyword (``alphas``, ``noise_count``, ``mpx``,
    ``seed``, ...; left out = the stage's default, e.g. ``mpx`` auto: an 8×8 occlusion grid, 14 px on
    112 px as the paper), and optionally ``save`` (the labels CSV, written as the stage writes it;
    resumable). Finished labels of the same images, model and settings are taken from the labels
    cache, and new ones put there, under the stage's key (``baselineFIQA.cache``). Out:
    ``RunResult`` with columns flip, noise, occlusion, quality (``.column("quality")``, ``.paths``).
    FroqError for an unknown option or a bad value.
    """
    fr = load_fr_model(fr_config, device)
    opts = label_options({k: v for k, v in options.items() if v is not None}, "froq.api.pseudo_labels")
    opts["mpx"] = resolve_mpx(opts["mpx"], fr.preprocess.size)
    compute = lambda: compute_pseudo_labels(fr, folder, batch_size=batch_size, resume_path=save,  # noqa: E731
                                            **compute_arguments(opts))
    with output_lock(save) if save is not None else contextlib.nullcontext():
        if is_record_file(folder):  # as the stage: no whole-folder cache for a RecordIO set
            result = compute()
        else:  # the stage's key and cache
            columns = output_columns(opts)
            result, _ = cached_pseudo_labels(fr, folder, label_settings_key(fr, **key_arguments(opts)),
                                             columns[1:], compute)
        if save is not None:
            write_csv(save, ["path", *result.columns], result.rows())
            discard_partial(save)
    return result


def calibrate(fr_config: ModelLike, folder: str | Path,
              labels: str | Path | RunResult | Mapping[str, float], *,
              device: str | torch.device = "auto", top_n: int = 10, label_column: str = "quality",
              batch_size: int = 32, save: str | Path | None = None, variant: str = "paper",
              options: Mapping | None = None, cv_folds: int = 5, seed: int = 0, num_workers: int = 0,
              provenance: Mapping | None = None) -> Observer:
    """Stage 2: an observer from a calibration folder and its pseudo-labels (spec §3).

    In: an FR config path or ``FRModel``; the folder; the labels as a CSV path, the ``RunResult`` of
    ``pseudo_labels`` or a mapping ``{relative path: label}``; ``top_n`` candidates; the observer
    ``variant`` (paper | plus) with option ``options`` (``observer.initialization.OPTION_KEYS``) and,
    for FROQ+, ``cv_folds`` and ``seed``; optionally ``save`` (the observer JSON, written
    atomically; the forwards resume from ``<save>.partial``) and the ``provenance`` to record
    (default: ``top_n`` and ``label_column``). Out: the ``Observer``, ready to ``score``.
    """
    fr = load_fr_model(fr_config, device)
    if isinstance(labels, RunResult):
        labels = dict(zip(labels.paths, labels.column(label_column).tolist()))
    elif not isinstance(labels, Mapping):
        read_csv(labels, required=("path", label_column))  # a clear error for a missing file/column
    failures = FailureLog("observer init")
    with output_lock(save) if save is not None else contextlib.nullcontext():
        record = calibrate_observer(
            fr, folder, labels, variant=variant, overrides=options, failures=failures,
            provenance={"top_n": top_n, "label_column": label_column} if provenance is None else provenance,
            batch_size=batch_size, top_n=top_n, label_column=label_column, num_workers=num_workers,
            cv_folds=cv_folds, seed=seed, resume_path=save)
        observer = Observer(fr, record)
        if save is not None:
            observer.save(save)
            discard_partial(save)
    return observer
