"""Stage 2 — observer initialisation (spec §3): which layers of the FR model know quality.

    python observer/initialization.py -c configs/init.yaml [--set top_n=5 ...]

One forward pass per calibration image with a hook on every layer (norms reduced in the hooks),
Spearman utility per layer against the pseudo-labels, top-n candidates, greedy layer set.
Writes a JSON observer file (see README, "Output formats").
"""

from __future__ import annotations

import logging
import sys
import time
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np
import torch

from face_recognition_model.loading import FRModel
from froq.core.cli import run_main, setup_logging, stage_parser
from froq.core.config import Key, load_config, positive_int, public
from froq.core.device import autocast_context
from froq.core.errors import FroqError
from froq.core.images import FailureLog, list_images
from froq.core.io import output_lock, read_json, read_quality_csv, write_json
from froq.core.runner import finish_stage, run_images
from froq.core.stage import COMMON_KEYS, output_path, refuse_overwriting_inputs
from face_recognition_model.loading import fr_from_stage_config
from observer.hooks import NormRecorder, observable_layers
from observer.scale import scale_record
from observer.selection import alias_groups, greedy_selection, layer_utilities, top_candidates

log = logging.getLogger("observer.init")

SCHEMA = {
    "face_recognition_config": Key("path", help="the FR model's YAML config"),
    "dataset.path": Key("path", help="folder of aligned calibration faces (the labelled ones)"),
    "dataset.batch_size": Key(positive_int, default=32),
    "label_location": Key("path", help="pseudo-label CSV written by baselineFIQA/main.py"),
    "label_column": Key("str", default="quality", help="which column of the label CSV to use"),
    "top_n": Key(positive_int, default=10, help="candidate layers for the greedy search"),
    "autocast": Key("bool", default=True, help="fp16 autocast on CUDA (ignored on CPU)"),
    "outpath": Key("path", help="observer JSON (or a folder: observer.json inside)"),
    **COMMON_KEYS,
}

FORMAT = "froq-observer/1"


def match_labels(root: str | Path, labels: dict[str, float], label_file: str) -> list[str]:
    """Relative paths of images that are both in the folder and in the label file (folder order).

    Warns about images without a label and labels without an image; FroqError when fewer than
    three images remain (Spearman needs at least three).
    """
    on_disk = list_images(root)
    if not on_disk:
        raise FroqError(f"{root}: no images found (.jpg .jpeg .png .bmp .webp, searched recursively)")
    in_both = [p for p in on_disk if p in labels]
    unlabelled = len(on_disk) - len(in_both)
    missing = [p for p in labels if p not in set(on_disk)]
    if unlabelled:
        example = next(p for p in on_disk if p not in labels)
        log.warning("%d of %d images in %s have no label in %s (e.g. %s); they are left out",
                    unlabelled, len(on_disk), root, label_file, example)
    if missing:
        log.warning("%d labels in %s name images not in %s (e.g. %s); they are left out",
                    len(missing), label_file, root, missing[0])
    if len(in_both) < 3:
        raise FroqError(f"{label_file}: only {len(in_both)} of its paths match images under {root}; "
                        "the label file must come from this calibration folder (paths relative to it)")
    return in_both


def collect_norms(fr: FRModel, root: str | Path, paths: Sequence[str], batch_size: int = 32,
                  num_workers: int = 0, autocast: bool = True, resume_path: str | Path | None = None,
                  failures: FailureLog | None = None) -> tuple[list[str], list[str], np.ndarray]:
    """Per-image L2 norms of every layer's output, in **one** forward pass per image.

    In: a loaded FR model, the calibration folder and the relative paths to read, batch size,
    and optionally the observer output path (finished rows are kept in ``<path>.partial``).
    Out: (layer names in ``named_modules()`` order, paths read, (N, L) float64 norms; NaN where a
    layer did not fire or gave no batch tensor). Unreadable images go to ``failures``.
    """
    layers = observable_layers(fr.network)
    key = {"stage": "observer_init", "model": fr.identity(), "root": str(root),
           "autocast": autocast and fr.device.type == "cuda"}
    with NormRecorder(fr.network, layers) as recorder, torch.no_grad(), \
            autocast_context(fr.device, autocast):
        def batch_fn(_paths: list[str], images: torch.Tensor) -> np.ndarray:
            recorder.run(fr.network, images)
            return recorder.norms()

        result = run_images(root, batch_fn, layers, preprocess=fr.preprocess, device=fr.device,
                            batch_size=batch_size, paths=paths, num_workers=num_workers,
                            resume_path=resume_path, settings=key, failures=failures,
                            desc="observer init", allow_empty=True)
    return layers, result.paths, result.values


def select_layers(layers: Sequence[str], norms: np.ndarray, labels: np.ndarray, top_n: int = 10) -> dict:
    """Spec §3.2–3.5 on collected norms → the JSON-able selection record.

    Out: ``{selected_layers, greedy: [{layer, spearman}], candidates, layers: [{name, utility}],
    never_called, aliases}``; FroqError if no layer has a defined utility.
    """
    utilities = layer_utilities(norms, labels)
    candidates = top_candidates(utilities, top_n)
    if not candidates:
        raise FroqError("no layer has a defined Spearman utility (all outputs constant or missing): "
                        "check the calibration set (identical images?) and the pseudo-labels")
    greedy = greedy_selection(norms, labels, candidates)
    never = [name for j, name in enumerate(layers) if np.all(np.isnan(norms[:, j]))]
    undefined = sum(u is None for u in utilities)
    if undefined:
        log.info("%d of %d layers have no utility (never called, no tensor output, or constant)",
                 undefined, len(layers))
    return {
        "selected_layers": [layers[j] for j in greedy.selected],
        "greedy": [{"layer": layers[j], "spearman": r} for j, r in zip(greedy.order, greedy.rhos)],
        "candidates": [layers[j] for j in candidates],
        "layers": [{"name": n, "utility": u} for n, u in zip(layers, utilities)],
        "never_called": never,
        "aliases": alias_groups(norms, layers),
    }


def check_labels_model(label_file: str | Path, fr: FRModel) -> None:
    """FroqError when the pseudo-labels beside ``<labels>.meta.json`` were computed with another FR
    model (architecture, weights or preprocessing) than ``fr``: the observer would learn what
    another network finds unstable. Label files without that record are taken as they are."""
    meta_path = Path(label_file).with_suffix(".meta.json")
    if not meta_path.is_file():
        return
    model = (read_json(meta_path) or {}).get("model") or {}
    mine = fr.identity()
    for key in ("arch", "weights_sha256", "preprocess"):
        if model.get(key) is not None and mine.get(key) is not None and model[key] != mine[key]:
            raise FroqError(f"{label_file}: these pseudo-labels were computed with another FR model "
                            f"({key} {model[key]!r}, here {mine[key]!r}; see {meta_path.name}): "
                            "compute the labels with this FR config")


def initialize_observer(fr: FRModel, root: str | Path, label_file: str | Path | Mapping[str, float],
                        batch_size: int = 32, top_n: int = 10, label_column: str = "quality",
                        num_workers: int = 0, autocast: bool = True,
                        resume_path: str | Path | None = None,
                        failures: FailureLog | None = None) -> dict:
    """Whole stage as a function: labels + folder → selection record (plus ``images`` count).

    In: FR model, calibration folder, the pseudo-labels — a CSV (``path`` + ``label_column``) or a
    mapping ``{relative path: label}`` — and settings.
    Out: the dict of ``select_layers`` with ``images`` (images used) added.
    """
    if isinstance(label_file, Mapping):
        labels = {str(k): float(v) for k, v in label_file.items()}
        label_file = "the given labels"
    else:
        if not Path(label_file).is_file():
            raise FroqError(f"label file not found: {label_file} — compute the pseudo-labels first "
                            "(python baselineFIQA/main.py) or fix label_location")
        check_labels_model(label_file, fr)
        labels = read_quality_csv(label_file, column=label_column)
    paths = match_labels(root, labels, str(label_file))
    bad = [p for p in paths if not np.isfinite(labels[p])]
    if bad:
        raise FroqError(f"{label_file}: {len(bad)} label(s) in column '{label_column}' are not finite "
                        f"numbers (e.g. {bad[0]}): recompute the pseudo-labels")
    failures = failures if failures is not None else FailureLog("observer init")
    layers, read, norms = collect_norms(fr, root, paths, batch_size, num_workers, autocast,
                                        resume_path, failures)
    if len(read) < 3:
        raise FroqError(f"{root}: only {len(read)} readable labelled images; need at least 3")
    y = np.array([labels[p] for p in read], dtype=np.float64)
    record = select_layers(layers, norms, y, top_n)
    record["images"] = len(read)
    columns = [layers.index(name) for name in record["selected_layers"]]
    # the calibration images' own FROQ qualities: the reference of the readable 0-100 scale
    record["scale"] = scale_record(norms[:, columns].mean(axis=1))
    return record


def observer_file_record(fr: FRModel, record: dict, calibration: str | Path, label_file: str | Path,
                         failures: FailureLog, config: dict | None = None) -> dict:
    """The observer JSON (format ``froq-observer/1``) from ``initialize_observer``'s record.

    In: the FR model, the record, the calibration folder and label file, the unreadable images,
    and the stage config (provenance). Out: the dict written to ``observer.json`` (README, "Output
    formats"): selected layers first, then model identity, calibration, the selection details.
    """
    record = dict(record)
    return {"format": FORMAT, "selected_layers": record.pop("selected_layers"),
            "model": fr.identity(), "calibration": {"path": str(calibration), "labels": str(label_file),
                                                    "images": record.pop("images")},
            **record, "config": config or {},
            "unreadable": [{"path": p, "reason": r} for p, r in failures.items]}


def main(argv=None) -> None:
    """Parse arguments, initialise the observer, write the JSON (atomically) and a summary."""
    args = stage_parser(__doc__.splitlines()[0], SCHEMA).parse_args(argv)
    setup_logging(args.verbose)
    cfg = load_config(args.config, SCHEMA, args.overrides)
    fr = fr_from_stage_config(cfg)
    out = output_path(cfg["outpath"], "observer.json")
    refuse_overwriting_inputs(out, cfg["_source"], files={"label_location": cfg["label_location"],
                                                          "face_recognition_config": cfg["face_recognition_config"],
                                                          "the stage config": cfg["_source"]},
                              folders={"dataset.path": cfg["dataset"]["path"]})
    with output_lock(out):
        failures = FailureLog("observer init")
        start = time.perf_counter()
        record = initialize_observer(fr, cfg["dataset"]["path"], cfg["label_location"],
                                     batch_size=cfg["dataset"]["batch_size"], top_n=cfg["top_n"],
                                     label_column=cfg["label_column"], num_workers=cfg["num_workers"],
                                     autocast=cfg["autocast"], resume_path=out, failures=failures)
        result = observer_file_record(fr, record, cfg["dataset"]["path"], cfg["label_location"],
                                      failures, public(cfg))
        write_json(out, result)
        best = result["greedy"][len(result["selected_layers"]) - 1]["spearman"]
        line = (f"observer: {out} ({result['calibration']['images']} calibration images; selected "
                f"{', '.join(result['selected_layers'])}; Spearman {best:.4f}; {failures.summary()})")
        finish_stage(out, "observer_init", label="observer init", images=result["calibration"]["images"],
                     failures=failures, started=start, meta=None,  # the observer JSON is its own record
                     line=line)

if __name__ == "__main__":
    sys.exit(run_main(main))
