"""Stage 1 — pseudo-labels of a calibration set with the auxiliary training-free FIQA (spec §2).

    python baselineFIQA/main.py -c configs/baseline.yaml [--set dataset.batch_size=16 ...]

Writes a CSV ``path,flip,noise,occlusion,quality`` (paths relative to ``dataset.path``), plus
``noise_<α>`` / ``occlusion_<mpx>`` columns when several noise strengths / cell sizes are given.
"""

from __future__ import annotations

import logging
import sys
import time

from baselineFIQA.cache import cached_pseudo_labels, label_settings_key
from baselineFIQA.labels import (OCCLUSION_PATHS, PAPER_WEIGHTS, LabelSettings, compute_pseudo_labels,
                                 label_columns)
from baselineFIQA.perturbations import NOISE_MODELS
from froq.core.cli import run_main, setup_logging, stage_parser
from froq.core.config import (Key, bool_or_auto, float_list, image_size, int_or_auto, load_config,
                              positive_int, public)
from froq.core.device import PRECISIONS
from froq.core.errors import FroqError
from froq.core import distributed
from froq.core.images import FailureLog, read_image_list
from froq.core.io import write_csv
from froq.core.recordio import is_record_file
from froq.core.runner import finish_stage
from froq.core.stage import COMMON_KEYS, check_image_size, output_path, refuse_overwriting_inputs
from face_recognition_model.loading import fr_from_stage_config

log = logging.getLogger("baselineFIQA")

LABEL_KEYS = ("alphas", "noise_count", "noise_model", "mpx", "component_weights")


def int_list(value):
    """Validator: an integer >= 1, or a non-empty list of different integers >= 1."""
    if isinstance(value, list):
        if not value or len(set(map(str, value))) != len(value):
            raise ValueError(f"must be an integer >= 1 or a list of different ones (got {value!r})")
        return [positive_int(v) for v in value]
    return positive_int(value)


def weight_list(value):
    """Validator: three numbers >= 0 (flip, noise, occlusion) with a positive sum."""
    value = float_list(value)
    if len(value) != 3 or min(value) < 0 or sum(value) <= 0:
        raise ValueError(f"must be three numbers >= 0 (flip, noise, occlusion) with a positive sum "
                         f"(got {value!r})")
    return value


SCHEMA = {
    "face_recognition_config": Key("path", help="the FR model's YAML config, e.g. configs/fr/dlib_resnet.yaml"),
    "dataset.path": Key("path", help="folder of aligned calibration faces (or an insightface train.rec)"),
    "dataset.list": Key("path", default=None,
                        help="text file of image paths relative to dataset.path, one a line (instead of walking the folder)"),
    "dataset.batch_size": Key(positive_int, default=32),
    "dataset.mpx": Key(int_list, default=14,
                       help="side of an occlusion cell in pixels, or a list of sides (one grid each)"),
    "dataset.image_size": Key(image_size, default=None, help="model input size; must equal the FR config's"),
    "dataset.alphas": Key(float_list, default=[0.001], help="noise strengths"),
    "dataset.noise_count": Key(positive_int, default=10),
    "dataset.noise_model": Key("str", default="mix", choices=NOISE_MODELS,
                               help="mix = (1-a)x + a*n (paper); relative = x + a*std(x)*n"),
    "dataset.component_weights": Key(weight_list, default=list(PAPER_WEIGHTS),
                                     help="weights of flip, noise, occlusion in the label (paper: equal)"),
    "forward_batch": Key(int_or_auto, default="auto",
                         help="perturbed images per forward call; auto = 32 on CPU, 256 on CUDA"),
    "channels_last": Key(bool_or_auto, default="auto",
                         help="run the forwards in channels-last memory format; auto = on CPU"),
    "occlusion": Key("str", default="incremental", choices=OCCLUSION_PATHS,
                     help="incremental = recompute only where each occluded cell reaches (same labels "
                          "within 1e-5, faster); full = one full forward per occluded copy"),
    "fold_affine": Key("bool", default=True,
                       help="fold batch norms / affines into the layer before them in the label forwards "
                            "(same labels within 1e-6, faster)"),
    "precision": Key("str", default="auto", choices=PRECISIONS,
                     help="precision of the label forwards: auto = fp16 autocast on CUDA, fp32 on CPU; "
                          "bf16 = faster on CPUs with AMX/AVX-512 BF16, labels change (README)"),
    "outpath": Key("path", help="output CSV (or a folder: labels.csv inside)"),
    **COMMON_KEYS,
}


def main(argv=None) -> None:
    """Parse arguments, compute the pseudo-labels, write the CSV (atomically) and a summary."""
    args = stage_parser(__doc__.splitlines()[0], SCHEMA).parse_args(argv)
    setup_logging(args.verbose)
    cfg = load_config(args.config, SCHEMA, args.overrides)
    fr = fr_from_stage_config(cfg)
    ds = cfg["dataset"]
    check_image_size(ds.get("image_size"), fr, cfg["_source"])
    cells = [ds["mpx"]] if isinstance(ds["mpx"], int) else ds["mpx"]
    for cell in cells:
        if cell > min(fr.preprocess.size):
            raise FroqError(f"{cfg['_source']}: dataset.mpx: the occlusion cell ({cell} px) is larger "
                            f"than the model input {list(fr.preprocess.size)}: use e.g. 14 for 112 px")
    columns = label_columns(LabelSettings(alphas=ds["alphas"], mpx=cells, weights=ds["component_weights"],
                                          noise_model=ds["noise_model"]))
    out = output_path(cfg["outpath"], "labels.csv")
    refuse_overwriting_inputs(out, cfg["_source"], files={"face_recognition_config": cfg["face_recognition_config"],
                                                          "the stage config": cfg["_source"]},
                              folders={"dataset.path": ds["path"]})
    paths = read_image_list(ds["list"]) if ds.get("list") else None
    with distributed.stage_lock(out, fr.device) as rank:
        failures = FailureLog("pseudo-labels")
        start = time.perf_counter()
        # finished labels of the same images, model and settings are reused (baselineFIQA/cache.py)
        key = label_settings_key(fr, ds["alphas"], ds["noise_count"], cells, cfg["seed"], cfg["channels_last"],
                                 ds["component_weights"], ds["noise_model"], cfg["occlusion"],
                                 cfg["fold_affine"], cfg["precision"])
        compute = lambda: compute_pseudo_labels(  # noqa: E731
                fr, ds["path"], paths=paths, batch_size=ds["batch_size"], alphas=ds["alphas"],
                mpx=ds["mpx"], seed=cfg["seed"], num_workers=cfg["num_workers"],
                noise_count=ds["noise_count"], forward_batch=cfg["forward_batch"],
                resume_path=out, failures=failures, channels_last=cfg["channels_last"],
                weights=ds["component_weights"], noise_model=ds["noise_model"], occlusion=cfg["occlusion"],
                fold=cfg["fold_affine"], precision=cfg["precision"])
        if paths is None and not rank.active and not is_record_file(ds["path"]):
            result, reused = cached_pseudo_labels(fr, ds["path"], key, columns[1:], failures=failures,
                                                  compute=compute)
        else:  # a list, a RecordIO set or a torchrun job: no whole-folder cache
            result, reused = compute(), None
        if not rank.main:  # under torchrun, rank 0 writes the merged output
            return
        write_csv(out, ["path", *result.columns], result.rows())  # RecordIO: path,label,...
        finish_stage(out, "pseudo_labels", label="pseudo-labels", images=len(result), failures=failures,
                     started=start, meta={"model": fr.identity(), "config": public(cfg),
                                          "label_settings": {**{k: ds[k] for k in LABEL_KEYS}, "seed": cfg["seed"]},
                                          "columns": list(columns),
                                          "reused_from": str(reused) if reused else None},
                     extra=f"; reused from the labels cache {reused}" if reused else "")


if __name__ == "__main__":
    sys.exit(run_main(main))
