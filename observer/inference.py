"""Stage 3 — FROQ quality of aligned faces (spec §4): one (early-exiting) forward pass per image.

    python observer/inference.py -c configs/inference.yaml [--set target_dataset=DIR ...]

Quality = mean L2 norm of the observer's selected layers (the paper), or for a FROQ+ observer the
combination of its ``features`` (``observer.combination``); higher = better.
Writes a CSV ``path,quality,percentile`` (paths relative to ``target_dataset``; ``percentile`` is
the 0-100 scale of ``observer.scale``, same ranking) and, with
``save_embeddings: true``, ``<outpath stem>.embeddings.npy`` + ``<outpath stem>.embeddings.csv``
(the row order) from the same pass.
"""

from __future__ import annotations

import logging
import math
import sys
import time
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np
import torch

from face_recognition_model.loading import FRModel
from froq.core.cli import run_main, setup_logging, stage_parser
from froq.core.config import Key, load_config, public
from froq.core.device import autocast_context
from froq.core.errors import FroqError
from froq.core import distributed
from froq.core.images import FailureLog, read_image_list
from froq.core.io import read_json, write_csv, write_npy
from froq.core.runner import RunResult, finish_stage, run_images
from froq.core.stage import COMMON_KEYS, TARGET_KEYS, output_path, refuse_overwriting_inputs
from face_recognition_model.loading import fr_from_stage_config
from observer.combination import STANDARDISATIONS, combined_quality
from observer.hooks import STATISTICS, NormRecorder
from observer.scale import percentile

log = logging.getLogger("observer.inference")

SCHEMA = {
    "face_recognition_config": Key("path", help="the FR model's YAML config (the one used at init)"),
    **TARGET_KEYS,
    "observer_data": Key("path", help="observer JSON written by observer/initialization.py"),
    "early_exit": Key("bool", default=True, help="stop each forward once the selected layers fired"),
    "save_embeddings": Key("bool", default=False, help="also write FR embeddings (same pass)"),
    "autocast": Key("bool", default=True, help="fp16 autocast on CUDA (ignored on CPU)"),
    "outpath": Key("path", help="quality CSV (or a folder: qualities.csv inside)"),
    **COMMON_KEYS,
}


def read_observer(path: str | Path) -> dict:
    """Read and check an observer JSON; FroqError naming the file if it is unusable."""
    obs = read_json(path)
    layers = obs.get("selected_layers") if isinstance(obs, dict) else None
    if not isinstance(layers, list) or not layers or not all(isinstance(n, str) for n in layers):
        raise FroqError(f"{path}: no 'selected_layers' list of layer names — not an observer file "
                        "from observer/initialization.py")
    if "features" in obs:
        check_features(obs, str(path))
    return obs


def _finite(values) -> bool:
    return all(isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)
               for v in values)


def check_features(obs: Mapping, source: str) -> None:
    """FroqError naming ``source`` when a FROQ+ observer's ``features`` / ``standardise`` cannot be
    applied (unknown statistic or standardisation, missing or non-finite parameters)."""
    method, features = obs.get("standardise", "none"), obs.get("features")
    need = {"none": (), "zscore": ("mean", "std"), "rank": ("quantiles",)}.get(method)
    if need is None:
        raise FroqError(f"{source}: standardise {method!r} is not one of {', '.join(STANDARDISATIONS)}")
    if not isinstance(features, list) or not features:
        raise FroqError(f"{source}: 'features' must be a non-empty list — re-run observer initialisation")
    for k, f in enumerate(features):
        ok = (isinstance(f, Mapping) and isinstance(f.get("layer"), str)
              and f.get("statistic") in STATISTICS and f.get("sign") in (1, -1)
              and _finite([f.get("weight")]) and f["weight"] > 0 and all(key in f for key in need))
        if ok and method == "zscore":
            ok = _finite([f["mean"], f["std"]])
        if ok and method == "rank":
            q = f["quantiles"]
            ok = isinstance(q, list) and len(q) >= 2 and _finite(q) and all(a <= b for a, b in zip(q, q[1:]))
        if not ok:
            raise FroqError(f"{source}: features[{k}] is not a usable feature (needs layer, statistic "
                            f"of {', '.join(STATISTICS)}, sign ±1, weight > 0 and {', '.join(need) or 'nothing'}"
                            f" for standardise {method}) — re-run observer initialisation")
        if f["layer"] not in obs["selected_layers"]:
            raise FroqError(f"{source}: features[{k}] layer {f['layer']!r} is not in selected_layers")


def check_same_model(obs: dict, fr: FRModel, source: str) -> None:
    """Refuse an observer initialised on another architecture or other weights; warn on other
    preprocessing (the norms would not be comparable)."""
    model = obs.get("model") or {}
    if model.get("arch") and model["arch"] != fr.arch:
        raise FroqError(f"{source}: the observer was initialised on '{model['arch']}' but the FR "
                        f"config loads '{fr.arch}': use the same FR config for init and inference")
    want, have = model.get("weights_sha256"), fr.weights_sha256
    if want and have and want != have:
        raise FroqError(f"{source}: the observer was initialised with other weights "
                        f"({model.get('weights')}, sha256 {want[:12]}…) than {fr.weights} "
                        f"(sha256 {have[:12]}…): re-run initialisation or point at those weights")
    if model.get("preprocess") and model["preprocess"] != fr.preprocess.to_config():
        log.warning("%s: the observer was initialised with preprocessing %s, now %s: "
                    "qualities will not match the calibration", source, model["preprocess"],
                    fr.preprocess.to_config())


def observer_plan(observer: Sequence[str] | Mapping) -> tuple[list[str], list[str], list | None]:
    """What to hook for an observer: (layers, statistics, features or None).

    In: a list of layer names or an observer record (``read_observer``). A record without
    ``features`` (the paper, and every observer file made before FROQ+) → its selected layers,
    ``["l2"]`` and None (quality = mean L2 norm). A FROQ+ record → the layers and statistics its
    features use (first-use order) and the features."""
    if not isinstance(observer, Mapping):
        return list(observer), ["l2"], None
    if "features" not in observer:
        return list(observer["selected_layers"]), ["l2"], None
    features = list(observer["features"])
    layers = list(dict.fromkeys(f["layer"] for f in features))
    stats = list(dict.fromkeys(f["statistic"] for f in features))
    return layers, stats, features


def quality_from_statistics(stats: np.ndarray, layers: Sequence[str], statistics: Sequence[str],
                            observer: Mapping) -> np.ndarray:
    """FROQ quality of images from their (N, L, S) layer statistics (columns ``layers`` ×
    ``statistics``, e.g. from ``observer.initialization.collect_statistics``) → (N,) float64.

    The same arithmetic as ``QualityObserver``: the paper's mean L2 norm of the selected layers,
    or the FROQ+ combination of the observer's features."""
    sel, _, features = observer_plan(observer)
    layer_index = {name: i for i, name in enumerate(layers)}
    if features is None:
        l2 = list(statistics).index("l2")
        return stats[:, [layer_index[n] for n in sel], l2].mean(axis=1)
    cols = stats[:, [layer_index[f["layer"]] for f in features],
                 [list(statistics).index(f["statistic"]) for f in features]]
    return combined_quality(cols, features, observer.get("standardise", "none"))


class QualityObserver:
    """Context manager: hooks on the observer's layers of ``fr``; call it on batches of model inputs.

    ``observer``: the selected layer names (the paper) or an observer record (``read_observer``;
    a FROQ+ record is combined as its ``features`` say).
    ``observe(images)`` → (B, 1 + D) float64: column 0 the FROQ quality (mean L2 norm of the
    selected layers' outputs, or the FROQ+ combination; higher = better), then the FR embedding of
    the same pass when ``embeddings`` (D = 0 otherwise). With ``early_exit`` (and no embeddings)
    each forward stops once every hooked layer has fired. fp16 autocast on CUDA when ``autocast``.
    """

    def __init__(self, fr: FRModel, observer: Sequence[str] | Mapping, *, early_exit: bool = True,
                 embeddings: bool = False, autocast: bool = True) -> None:
        self.fr = fr
        self.layers, self.statistics, self.features = observer_plan(observer)
        self.observer = observer
        self.embeddings = embeddings
        self.autocast = autocast
        self.recorder = NormRecorder(fr.network, self.layers, early_exit=early_exit and not embeddings,
                                     statistics=self.statistics)

    def __enter__(self) -> "QualityObserver":
        self.recorder.__enter__()
        return self

    def __exit__(self, *exc) -> None:
        self.recorder.__exit__(*exc)

    def __call__(self, images: torch.Tensor) -> np.ndarray:
        with torch.no_grad(), autocast_context(self.fr.device, self.autocast):
            out = self.recorder.run(self.fr.network, images.to(self.fr.device))
        if self.features is None:
            norms = self.recorder.norms()
            if np.isnan(norms).any():
                bad = [self.layers[j] for j in np.where(np.isnan(norms).any(axis=0))[0]]
                raise FroqError(f"selected layer(s) {', '.join(bad[:3])} produced no output for "
                                "this model: the observer file does not belong to it")
            quality = norms.mean(axis=1, keepdims=True)
        else:
            stats = self.recorder.stats()
            quality = quality_from_statistics(stats, self.layers, self.statistics, self.observer)
            if np.isnan(quality).any():
                raise FroqError(f"a feature of the observer ({', '.join(self.layers[:3])}) gave no "
                                "value for this model: the observer file does not belong to it")
            quality = quality[:, None]
        if not self.embeddings:
            return quality
        emb = out.float().reshape(images.shape[0], -1).cpu().numpy().astype(np.float64)
        return np.concatenate([quality, emb], axis=1)


def froq_qualities(fr: FRModel, root: str | Path, layers: Sequence[str] | Mapping, *,
                   batch_size: int = 32,
                   paths: Sequence[str] | None = None, early_exit: bool = True,
                   save_embeddings: bool = False, num_workers: int = 0, autocast: bool = True,
                   resume_path: str | Path | None = None,
                   failures: FailureLog | None = None) -> RunResult:
    """FROQ qualities of the images of ``root``: mean L2 norm of ``layers``, one forward per image.

    In: FR model, folder (or explicit relative ``paths``), the selected layer names or the observer
    record (needed for a FROQ+ observer: its features are combined), batch size,
    early exit (ignored when embeddings are wanted), and optionally ``resume_path`` (the output CSV;
    finished rows are kept in ``<path>.partial``).
    Out: ``RunResult`` in folder order with column ``quality`` (float64, higher = better) and, with
    ``save_embeddings``, the FR embedding of the same pass in columns ``e0 .. e{D-1}``.
    """
    dim = fr.embedding_size() if save_embeddings else 0
    columns = ["quality"] + [f"e{i}" for i in range(dim)]
    hooked, _, features = observer_plan(layers)
    key = {"stage": "inference", "model": fr.identity(), "layers": hooked, "root": str(root),
           "embeddings": dim, "autocast": autocast and fr.device.type == "cuda"}
    if features is not None:
        key["features"] = [features, layers.get("standardise", "none")]
    with QualityObserver(fr, layers, early_exit=early_exit, embeddings=save_embeddings,
                         autocast=autocast) as observe:
        return run_images(root, lambda _paths, images: observe(images), columns,
                          preprocess=fr.preprocess, device=fr.device, batch_size=batch_size,
                          paths=paths, num_workers=num_workers, resume_path=resume_path,
                          settings=key, failures=failures, desc="FROQ quality")


def main(argv=None) -> None:
    """Parse arguments, score the target folder, write the CSV (and embeddings) atomically."""
    args = stage_parser(__doc__.splitlines()[0], SCHEMA).parse_args(argv)
    setup_logging(args.verbose)
    cfg = load_config(args.config, SCHEMA, args.overrides)
    obs = read_observer(cfg["observer_data"])
    fr = fr_from_stage_config(cfg)
    check_same_model(obs, fr, cfg["observer_data"])
    modules = dict(fr.network.named_modules())
    unknown = [n for n in obs["selected_layers"] if not n or n not in modules]
    if unknown:
        raise FroqError(f"{cfg['observer_data']}: selected layer(s) {', '.join(unknown[:3])} do not exist "
                        f"in {fr.arch}: the observer file belongs to another FR model; re-run "
                        "observer/initialization.py with this FR config")
    out = output_path(cfg["outpath"], "qualities.csv")
    refuse_overwriting_inputs(out, cfg["_source"], files={"observer_data": cfg["observer_data"],
                                                          "face_recognition_config": cfg["face_recognition_config"],
                                                          "the stage config": cfg["_source"]},
                              folders={"target_dataset": cfg["target_dataset"]})
    stem = out.with_suffix("")
    if cfg["save_embeddings"]:
        refuse_overwriting_inputs(f"{stem}.embeddings.npy", cfg["_source"],
                                  files={"observer_data": cfg["observer_data"]},
                                  folders={"target_dataset": cfg["target_dataset"]})
    paths = read_image_list(cfg["target_list"]) if cfg.get("target_list") else None
    with distributed.stage_lock(out, fr.device) as rank:
        failures = FailureLog("inference")
        start = time.perf_counter()
        result = froq_qualities(
            fr, cfg["target_dataset"], obs, batch_size=cfg["batch_size"], paths=paths,
            early_exit=cfg["early_exit"], save_embeddings=cfg["save_embeddings"],
            num_workers=cfg["num_workers"], autocast=cfg["autocast"], resume_path=out, failures=failures)
        if not rank.main:  # under torchrun, rank 0 writes the merged output
            return
        quality = result.column("quality")
        # a RecordIO set keeps each record's identity label
        lead = [("label", result.column("label").tolist())] if "label" in result.columns else []
        if obs.get("scale"):  # the readable 0-100 scale of the observer's calibration set
            cols = [*lead, ("quality", quality.tolist()), ("percentile", percentile(quality, obs["scale"]).tolist())]
        else:
            log.warning("%s has no calibration scale (made before it existed): no percentile "
                        "column; re-run observer initialisation to get one", cfg["observer_data"])
            cols = [*lead, ("quality", quality.tolist())]
        write_csv(out, ["path", *(name for name, _ in cols)], zip(result.paths, *(v for _, v in cols)))
        extra = ""
        if cfg["save_embeddings"]:
            first = result.columns.index("quality") + 1
            write_npy(f"{stem}.embeddings.npy", result.values[:, first:].astype(np.float32))
            write_csv(f"{stem}.embeddings.csv", ["row", "path"], enumerate(result.paths))
            extra = f"; embeddings: {stem}.embeddings.npy"
        finish_stage(out, "inference", label="qualities", images=len(result), failures=failures,
                     started=start, extra=extra,
                     meta={"model": fr.identity(), "observer": cfg["observer_data"],
                           "selected_layers": obs["selected_layers"], "config": public(cfg),
                           **({"variant": obs.get("variant", "plus")} if "features" in obs else {})})

if __name__ == "__main__":
    sys.exit(run_main(main))
