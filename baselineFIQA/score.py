"""Score a folder of aligned faces with one of the comparison FIQA methods.

    python baselineFIQA/score.py -c configs/score.yaml --method serfiq [--set methods.serfiq.m=50]

Methods: serfiq, grafiqs, embedding_norm, crfiqa, aux_fiqa (``baselineFIQA.methods``). Writes a CSV
``path,quality[,components...]`` (paths relative to ``target_dataset``; higher quality = better)
and ``<csv stem>.meta.json`` (model identity, options, unreadable images, timing). Interrupted runs
resume from ``<csv>.partial``.
"""

from __future__ import annotations

import logging
import sys
import time
from pathlib import Path

from baselineFIQA.methods import get_method, list_methods, resolve_options, run_method
from froq.core.cli import run_main, setup_logging, stage_parser
from froq.core.config import Key, load_config, positive_int, public
from froq.core.errors import FroqError
from froq.core.images import FailureLog
from froq.core.io import write_csv, write_json
from froq.core.stage import COMMON_KEYS, output_path
from face_recognition_model.loading import fr_from_stage_config

log = logging.getLogger("baselineFIQA.score")

SCHEMA = {
    "face_recognition_config": Key("path", help="the FR model's YAML config, e.g. configs/fr/iresnet100.yaml"),
    "target_dataset": Key("path", help="folder of aligned face images to score"),
    "batch_size": Key(positive_int, default=32),
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
        raw["seed"] = cfg.get("seed", 0)
    return resolve_options(name, raw, f"{source}: methods.{name}")


def main(argv=None) -> None:
    """Parse arguments, score the folder with the chosen method, write the CSV and a summary."""
    parser = stage_parser(__doc__.splitlines()[0])
    parser.add_argument("--method", required=True, choices=list_methods(), help="FIQA method")
    args = parser.parse_args(argv)
    setup_logging(args.verbose)
    cfg = load_config(args.config, SCHEMA, args.overrides)
    name = args.method
    options = method_options(cfg, name)
    fr = fr_from_stage_config(cfg)
    get_method(name).check(fr, options)  # fail before reading any image
    out = output_path(cfg["outpath"].replace("{method}", name), f"{name}.csv")
    failures = FailureLog(name)
    start = time.perf_counter()
    result = run_method(name, fr, cfg["target_dataset"], batch_size=cfg["batch_size"],
                        num_workers=cfg["num_workers"], options=options, failures=failures,
                        resume_path=out, source=f"{cfg['_source']}: methods.{name}")
    elapsed = time.perf_counter() - start
    write_csv(out, result.columns(), result.rows())
    write_json(out.with_suffix(".meta.json"), {
        "stage": "score", "method": name, "options": options, "model": fr.identity(),
        "target_dataset": str(cfg["target_dataset"]), "images": len(result.paths),
        "unreadable": [{"path": p, "reason": r} for p, r in failures.items],
        "seconds": elapsed, "config": public(cfg)})
    Path(str(out) + ".partial").unlink(missing_ok=True)
    rate = len(result.paths) / elapsed if elapsed > 0 else float("nan")
    log.info("%s: %d images in %.1f s (%.1f img/s); %s", name, len(result.paths), elapsed, rate,
             failures.summary())
    print(f"{name}: {out} ({len(result.paths)} images; {failures.summary()})")


if __name__ == "__main__":
    sys.exit(run_main(main))
