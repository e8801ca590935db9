"""Optimised labels — the IWBF'23 label optimisation of initial quality scores (optional stage 1b).

    python baselineFIQA/optimize.py -c configs/label_optimisation.yaml [--set epsilon=0.01 ...]
    froq optimize-labels -c configs/label_optimisation.yaml [--set ...]       # the same program

Reads initial scores (a pseudo-labels CSV, or any ``path,<column>`` quality CSV whose paths are
relative to ``dataset.path``), the FR embeddings of those images (computed here in one forward
pass per image, or read from ``embeddings:``), and writes a labels CSV
``path,quality,initial_quality,initial_rank,mean_rank,held_pairs`` that observer initialisation
reads as it is (column ``quality``). Identity = parent folder. Method: ``label_optimisation``.
The computed embeddings are written beside the output (``<stem>.embeddings.npy`` + ``.csv``) so a
rerun with another ε can take them with ``--set embeddings=<stem>.embeddings.npy``.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from scipy.stats import spearmanr

from baselineFIQA.label_optimisation import (PAIRINGS, POSITIONS, OptimisationSettings,
                                             optimise_labels)
from face_recognition_model.loading import FRModel, fr_from_stage_config
from froq.core.cli import run_main, setup_logging, stage_parser
from froq.core.config import Key, load_config, positive_int, public
from froq.core.device import autocast_context
from froq.core.errors import FroqError
from froq.core.images import FailureLog
from froq.core.io import (discard_partial, output_lock, read_csv, read_quality_csv, sha256_file, write_csv,
                          write_npy)
from froq.core.runner import RunResult, finish_stage, run_images
from froq.core.stage import COMMON_KEYS, output_path, refuse_overwriting_inputs


COLUMNS = ("path", "quality", "initial_quality", "initial_rank", "mean_rank", "held_pairs")

SCHEMA = {
    "face_recognition_config": Key("path", help="the FR model's YAML config (the pairs' similarities)"),
    "dataset.path": Key("path", help="the calibration folder the labels' paths are relative to"),
    "dataset.batch_size": Key(positive_int, default=32),
    "label_location": Key("path", help="initial scores: a labels CSV or any path,quality CSV"),
    "label_column": Key("str", default="quality", help="the column of initial scores"),
    "embeddings": Key("path", default=None,
                      help="FR embeddings (.npy, rows listed in <stem>.csv as row,path); default: "
                           "computed here in one pass"),
    "epsilon": Key("float", default=0.001, help="step toward the mean pair position (published 0.001)"),
    "draws": Key(positive_int, default=10, help="random draws of partners, averaged (published 10)"),
    "pairing": Key("str", default="clusters", choices=PAIRINGS,
                   help="clusters = one random partner per other cluster (published); all = every pair"),
    "clusters": Key(positive_int, default=20, help="k-means clusters per identity (published 20)"),
    "positions": Key("str", default="index", choices=POSITIONS,
                     help="index = ranks and pair positions as 0-based indices (published); "
                          "fraction = both scaled to [0, 1]"),
    "autocast": Key("bool", default=True, help="fp16 autocast on CUDA for the embeddings"),
    "outpath": Key("path", help="output labels CSV (or a folder: labels_optimised.csv inside)"),
    **COMMON_KEYS,
}


def embed_images(fr: FRModel, root: str | Path, paths: Sequence[str], *, batch_size: int = 32,
                 num_workers: int = 0, autocast: bool = True, resume_path: str | Path | None = None,
                 failures: FailureLog | None = None) -> RunResult:
    """FR embeddings of ``paths`` under ``root``, one forward pass per image. Out: ``RunResult`` with
    columns e0..e{D-1} (readable images only; unreadable ones go to ``failures``)."""
    with torch.inference_mode():
        probe = fr.network(torch.zeros(1, 3, *fr.preprocess.size, device=fr.device))
    dim = int(probe.reshape(1, -1).shape[1])

    def batch_fn(_paths: list[str], images: torch.Tensor) -> torch.Tensor:
        with torch.inference_mode(), autocast_context(fr.device, autocast):
            return fr.network(images).float().reshape(len(_paths), -1)

    key = {"stage": "embeddings", "model": fr.identity(), "root": str(root), "autocast": bool(autocast)}
    return run_images(root, batch_fn, [f"e{i}" for i in range(dim)], preprocess=fr.preprocess,
                      device=fr.device, batch_size=batch_size, paths=paths, num_workers=num_workers,
                      resume_path=resume_path, settings=key, failures=failures, desc="embeddings")


def read_embeddings(npy: str | Path, paths: Sequence[str]) -> np.ndarray:
    """The rows of ``npy`` for ``paths`` (in that order), using the row list ``<npy stem>.csv``
    (``row,path``, as inference's ``save_embeddings`` writes it). FroqError naming the file when it
    is missing, malformed, or lacks one of the paths."""
    npy = Path(npy)
    listing = npy.with_suffix(".csv")
    if not npy.is_file():
        raise FroqError(f"{npy}: embeddings file not found (remove 'embeddings' to compute them)")
    try:
        matrix = np.load(npy, allow_pickle=False)
    except (ValueError, OSError) as exc:
        raise FroqError(f"{npy}: not a readable .npy array ({exc})") from None
    rows = read_csv(listing, required=("row", "path"))
    index = {}
    for r in rows:
        try:
            index[r["path"]] = int(r["row"])
        except ValueError:
            raise FroqError(f"{listing}: row {r['row']!r} is not an integer") from None
    if matrix.ndim != 2 or not all(0 <= i < len(matrix) for i in index.values()):
        raise FroqError(f"{listing}: rows do not fit the {matrix.shape} array {npy.name}")
    missing = [p for p in paths if p not in index]
    if missing:
        raise FroqError(f"{listing}: no embedding for {len(missing)} labelled image(s), e.g. "
                        f"{missing[0]!r}: use embeddings of the same calibration folder")
    return matrix[[index[p] for p in paths]].astype(np.float64)


def read_initial_scores(path: str | Path, column: str, root: str | Path) -> tuple[list[str], np.ndarray]:
    """(paths, scores) of a quality CSV in file order. FroqError when a path is not an image file
    under ``root`` (a labels file of another folder)."""
    scores = read_quality_csv(path, column)
    if not scores:
        raise FroqError(f"{path}: no rows: nothing to optimise")
    paths = list(scores)
    missing = [p for p in paths if not (Path(root) / p).is_file()]
    if missing:
        raise FroqError(f"{path}: {len(missing)} path(s) are not files under {root}, e.g. {missing[0]!r}: "
                        "set dataset.path to the folder the labels were computed on")
    return paths, np.array([scores[p] for p in paths])


def main(argv=None) -> None:
    """Parse arguments, read the initial scores, get the embeddings, optimise, write the CSV
    (atomically) with ``<out>.meta.json``, and print a summary line."""
    args = stage_parser(__doc__.splitlines()[0], SCHEMA).parse_args(argv)
    setup_logging(args.verbose)
    cfg = load_config(args.config, SCHEMA, args.overrides)
    settings = OptimisationSettings(epsilon=cfg["epsilon"], draws=cfg["draws"], pairing=cfg["pairing"],
                                    clusters=cfg["clusters"], positions=cfg["positions"], seed=cfg["seed"])
    settings.check()
    root = cfg["dataset"]["path"]
    out = output_path(cfg["outpath"], "labels_optimised.csv")
    stem = str(out.with_suffix(""))
    inputs = {"label_location": cfg["label_location"], "face_recognition_config": cfg["face_recognition_config"],
              "the stage config": cfg["_source"]}
    if cfg["embeddings"]:
        inputs["embeddings"] = cfg["embeddings"]
    refuse_overwriting_inputs(out, cfg["_source"], files=inputs, folders={"dataset.path": root})
    paths, initial = read_initial_scores(cfg["label_location"], cfg["label_column"], root)
    fr = fr_from_stage_config(cfg)
    with output_lock(out):
        failures = FailureLog("label optimisation")
        start = time.perf_counter()
        if cfg["embeddings"]:
            embeddings = read_embeddings(cfg["embeddings"], paths)
            source = str(cfg["embeddings"])
        else:
            result = embed_images(fr, root, paths, batch_size=cfg["dataset"]["batch_size"],
                                  num_workers=cfg["num_workers"], autocast=cfg["autocast"],
                                  resume_path=f"{stem}.embeddings.csv", failures=failures)
            if len(result) != len(paths):
                readable = set(result.paths)
                lost = [p for p in paths if p not in readable]
                raise FroqError(f"{cfg['label_location']}: {len(lost)} labelled image(s) cannot be read, "
                                f"e.g. {lost[0]!r} ({failures.items[0][1] if failures.items else 'unreadable'}): "
                                "fix or remove their rows")
            embeddings = result.values
            write_npy(f"{stem}.embeddings.npy", embeddings.astype(np.float32))
            write_csv(f"{stem}.embeddings.csv", ["row", "path"], enumerate(result.paths))
            discard_partial(f"{stem}.embeddings.csv")
            source = f"computed here ({stem}.embeddings.npy)"
        res = optimise_labels(paths, initial, embeddings, settings, source=str(cfg["label_location"]))
        write_csv(out, COLUMNS, zip(paths, res.quality.tolist(), res.initial.tolist(),
                                    res.initial_rank.tolist(), res.mean_rank.tolist(), res.held_pairs.tolist()))
        rho = float(spearmanr(res.initial, res.quality)[0])
        finish_stage(out, "label_optimisation", label="optimised labels", images=len(paths),
                     failures=failures, started=start,
                     extra=f"; Spearman with the initial scores {rho:.4f}",
                     meta={"model": fr.identity(), "config": public(cfg), "method": "IWBF 2023 label optimisation",
                           "initial_scores": {"file": str(cfg["label_location"]), "column": cfg["label_column"],
                                              "sha256": sha256_file(cfg["label_location"])},
                           "embeddings": source, "spearman_with_initial": rho, **res.summary})


if __name__ == "__main__":
    sys.exit(run_main(main))
