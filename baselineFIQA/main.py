"""Stage 1 — pseudo-labels of a calibration set with the auxiliary training-free FIQA (spec §2).

    python baselineFIQA/main.py -c configs/baseline.yaml [--set dataset.batch_size=16 ...]

Writes a CSV ``path,flip,noise,occlusion,quality`` (paths relative to ``dataset.path``).
"""

from __future__ import annotations

import logging
import sys
import time

from baselineFIQA.labels import COLUMNS, compute_pseudo_labels
from froq.core.cli import run_main, setup_logging, stage_parser
from froq.core.config import (Key, bool_or_auto, float_list, image_size, int_or_auto, load_config,
                              positive_int, public)
from froq.core.errors import FroqError
from froq.core.images import FailureLog
from froq.core.io import output_lock, write_csv
from froq.core.runner import finish_stage
from froq.core.stage import COMMON_KEYS, check_image_size, output_path, refuse_overwriting_inputs
from face_recognition_model.loading import fr_from_stage_config

log = logging.getLogger("baselineFIQA")

SCHEMA = {
    "face_recognition_config": Key("path", help="the FR model's YAML config, e.g. configs/fr/dlib_resnet.yaml"),
    "dataset.path": Key("path", help="folder of aligned calibration faces"),
    "dataset.batch_size": Key(positive_int, default=32),
    "dataset.mpx": Key(positive_int, default=14, help="side of an occlusion cell in pixels"),
    "dataset.image_size": Key(image_size, default=None, help="model input size; must equal the FR config's"),
    "dataset.alphas": Key(float_list, default=[0.001], help="noise strengths"),
    "dataset.noise_count": Key(positive_int, default=10),
    "forward_batch": Key(int_or_auto, default="auto",
                         help="perturbed images per forward call; auto = 32 on CPU, 256 on CUDA"),
    "channels_last": Key(bool_or_auto, default="auto",
                         help="run the forwards in channels-last memory format; auto = on CPU"),
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
    if ds["mpx"] > min(fr.preprocess.size):
        raise FroqError(f"{cfg['_source']}: dataset.mpx: the occlusion cell ({ds['mpx']} px) is larger "
                        f"than the model input {list(fr.preprocess.size)}: use e.g. 14 for 112 px")
    out = output_path(cfg["outpath"], "labels.csv")
    refuse_overwriting_inputs(out, cfg["_source"], files={"face_recognition_config": cfg["face_recognition_config"],
                                                          "the stage config": cfg["_source"]},
                              folders={"dataset.path": ds["path"]})
    with output_lock(out):
        failures = FailureLog("pseudo-labels")
        start = time.perf_counter()
        result = compute_pseudo_labels(fr, ds["path"], batch_size=ds["batch_size"], alphas=ds["alphas"],
                                       mpx=ds["mpx"], seed=cfg["seed"], num_workers=cfg["num_workers"],
                                       noise_count=ds["noise_count"], forward_batch=cfg["forward_batch"],
                                       resume_path=out, failures=failures,
                                       channels_last=cfg["channels_last"])
        write_csv(out, COLUMNS, result.rows())
        finish_stage(out, "pseudo_labels", label="pseudo-labels", images=len(result), failures=failures,
                     started=start, meta={"model": fr.identity(), "config": public(cfg)})


if __name__ == "__main__":
    sys.exit(run_main(main))
