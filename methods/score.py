"""Score a folder of aligned faces with one of the comparison FIQA methods.

    python methods/score.py -c configs/score.yaml --method serfiq [--set methods.serfiq.m=50]

Methods: serfiq, grafiqs, embedding_norm, crfiqa, aux_fiqa, froq (``methods``). Writes a CSV
``path,quality[,components...]`` (paths relative to ``target_dataset``; higher quality = better)
and ``<csv stem>.meta.json`` (model identity, options, unreadable images, timing). Interrupted runs
resume from ``<csv>.partial``.
"""

from __future__ import annotations

import sys
from pathlib import Path

_HERE = Path(__file__).resolve().parent
if sys.path and sys.path[0] and Path(sys.path[0]).resolve() == _HERE:
    # run as a file (python methods/score.py), Python puts this folder first on sys.path, where
    # methods/froq.py would hide the froq package: the repository root goes there instead
    sys.path[0] = str(_HERE.parent)

import time  # noqa: E402

from face_recognition_model.loading import fr_from_stage_config  # noqa: E402
from froq.core.cli import run_main, setup_logging, stage_parser  # noqa: E402
from froq.core.config import Key, load_config, public  # noqa: E402
from froq.core.errors import FroqError  # noqa: E402
from froq.core.images import FailureLog, read_image_list  # noqa: E402
from froq.core import distributed  # noqa: E402
from froq.core.io import write_csv  # noqa: E402
from froq.core.runner import finish_stage  # noqa: E402
from froq.core.stage import COMMON_KEYS, TARGET_KEYS, output_path, refuse_overwriting_inputs  # noqa: E402
from methods import get_method, list_methods, resolve_options, run_method  # noqa: E402

SCHEMA = {
    "face_recognition_config": Key("path", help="the FR model's YAML config, e.g. configs/fr/iresnet100.yaml"),
    **TARGET_KEYS,
    "outpath": Key("path", default="outputs/scores/{method}.csv",
                   help="output CSV ({method} is replaced by the method name) or a folder"),
    "methods": Key("dict", default={}, help="per-method options: methods.<name>.<option>"),
    **COMMON_KEYS,
}


def method_options(cfg: dict, name: str) -> dict:
    """The validated options of method ``name`` from ``cfg['methods'][name]``; a method ``seed``
    not given there defaults to the config's top-level ``seed``."""
    source = cfg.get("_source", "config")
    raw = (cfg.get("methods") or {}).get(name) or {}
    if not isinstance(raw, dict):
        raise FroqError(f"{source}: methods.{name}: must be a mapping of options (got {raw!r})")
    raw = dict(raw)
    if "seed" in get_method(name).OPTIONS and "seed" not in raw:
        raw["seed"] = cfg["seed"]
    return resolve_options(name, raw, f"{source}: methods.{name}")


def main(argv=None) -> None:
    """Parse arguments, score the folder with the chosen method, write the CSV and a summary."""
    parser = stage_parser(__doc__.splitlines()[0], SCHEMA)
    parser.add_argument("--method", required=True, choices=list_methods(), help="FIQA method")
    args = parser.parse_args(argv)
    setup_logging(args.verbose)
    cfg = load_config(args.config, SCHEMA, args.overrides)
    name = args.method
    options = method_options(cfg, name)
    fr = fr_from_stage_config(cfg)
    get_method(name).check(fr, options)  # fail before reading any image
    out = output_path(cfg["outpath"].replace("{method}", name), f"{name}.csv")
    refuse_overwriting_inputs(out, cfg["_source"], files={"face_recognition_config": cfg["face_recognition_config"],
                                                          "the stage config": cfg["_source"],
                                                          f"methods.{name}.observer": options.get("observer")},
                              folders={"target_dataset": cfg["target_dataset"]})
    paths = read_image_list(cfg["target_list"]) if cfg.get("target_list") else None
    with distributed.stage_lock(out, fr.device) as rank:
        failures = FailureLog(name)
        started = time.perf_counter()
        result = run_method(name, fr, cfg["target_dataset"], batch_size=cfg["batch_size"], paths=paths,
                            num_workers=cfg["num_workers"], options=options, failures=failures,
                            resume_path=out, source=f"{cfg['_source']}: methods.{name}")
        if not rank.main:  # under torchrun, rank 0 writes the merged output
            return
        write_csv(out, ["path", *result.columns], result.rows())
        finish_stage(out, "score", images=len(result), failures=failures, started=started, label=name,
                     meta={"method": name, "options": options, "model": fr.identity(),
                           "target_dataset": str(cfg["target_dataset"]), "config": public(cfg)})


if __name__ == "__main__":
    sys.exit(run_main(main))
