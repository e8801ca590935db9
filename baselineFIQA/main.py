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
from baselineFIQA.labels import compute_pseudo_labels
from baselineFIQA.settings import (LABEL_OPTIONS, PAPER_CONSTANTS, STAGE_KEYS, compute_arguments, key_arguments,
                                   output_columns, resolve_mpx, stage_options)
from froq.core.cli import run_main, setup_logging, stage_parser
from froq.core.config import Key, image_size, load_config, positive_int, public
from froq.core.errors import FroqError
from froq.core import distributed
from froq.core.images import FailureLog, read_image_list
from froq.core.io import write_csv
from froq.core.recordio import is_record_file
from froq.core.runner import finish_stage
from froq.core.stage import COMMON_KEYS, check_image_size, output_path, refuse_overwriting_inputs
from face_recognition_model.loading import fr_from_stage_config

log = logging.getLogger("baselineFIQA")

SCHEMA = {
    "face_recognition_config": Key("path", help="the FR model's YAML config, e.g. configs/fr/dlib_resnet.yaml"),
    "dataset.path": Key("path", help="folder of aligned calibration faces (or an insightface train.rec)"),
    "dataset.list": Key("path", default=None,
                        help="text file of image paths relative to dataset.path, one a line (instead of walking the folder)"),
    "dataset.batch_size": Key(positive_int, default=32),
    "dataset.image_size": Key(image_size, default=None, help="model input size; must equal the FR config's"),
    **{key: LABEL_OPTIONS[name] for name, key in STAGE_KEYS.items() if name != "seed"},
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
    opts = stage_options(cfg)
    opts["mpx"] = resolve_mpx(opts["mpx"], fr.preprocess.size)
    cells = [opts["mpx"]] if isinstance(opts["mpx"], int) else opts["mpx"]
    for cell in cells:
        if cell > min(fr.preprocess.size):
            raise FroqError(f"{cfg['_source']}: dataset.mpx: the occlusion cell ({cell} px) is larger "
                            f"than the model input {list(fr.preprocess.size)}: use e.g. 14 for 112 px (or auto)")
    columns = output_columns(opts)
    out = output_path(cfg["outpath"], "labels.csv")
    refuse_overwriting_inputs(out, cfg["_source"], files={"face_recognition_config": cfg["face_recognition_config"],
                                                          "the stage config": cfg["_source"]},
                              folders={"dataset.path": ds["path"]})
    paths = read_image_list(ds["list"]) if ds.get("list") else None
    with distributed.stage_lock(out, fr.device) as rank:
        failures = FailureLog("pseudo-labels")
        start = time.perf_counter()
        # finished labels of the same images, model and settings are reused (baselineFIQA/cache.py)
        key = label_settings_key(fr, **key_arguments(opts))
        compute = lambda: compute_pseudo_labels(  # noqa: E731
                fr, ds["path"], paths=paths, batch_size=ds["batch_size"], num_workers=cfg["num_workers"],
                resume_path=out, failures=failures, **compute_arguments(opts))
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
                                          "label_settings": {k: opts[k] for k in PAPER_CONSTANTS},
                                          "columns": list(columns),
                                          "reused_from": str(reused) if reused else None},
                     extra=f"; reused from the labels cache {reused}" if reused else "")


if __name__ == "__main__":
    sys.exit(run_main(main))
