"""Evaluation — EDC and pAUC of quality methods on verification benchmarks (ISO/IEC 29794-1).

    python evaluation/main.py -c configs/evaluation.yaml [--set outdir=DIR ...]

Writes into ``outdir``: results.json, run.json, table.md, table.csv, table_long.csv, curves.csv,
scores/*.csv, protocols/*.csv (generated pair lists), edc_<benchmark>_<model>.png and the embedding
cache (cache/). Conventions (threshold, discard_over, pauc_normalisation, discard_limit list) and
bootstrap intervals are options. See evaluation/README.md.
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path

from froq.core.cli import run_main, setup_logging, stage_parser
from froq.core.config import Key, device_name, float_list, int_at_least, load_config, number_between, positive_int

log = logging.getLogger("evaluation")


discard_limit = number_between(0, 1, example="0.3")


def discard_limits(value):
    """Validator: one discard limit in (0, 1), or a non-empty list of them (the first is the primary
    one). A single number stays a number."""
    if isinstance(value, list):
        if not value:
            raise ValueError("must be a number in (0, 1) or a non-empty list of them, e.g. [0.3, 0.2]")
        out = [discard_limit(v) for v in value]
        if len(set(out)) != len(out):
            raise ValueError(f"lists a limit twice (got {value!r})")
        return out
    return discard_limit(value)


def fmr_list(value):
    """Validator: one or more target FMRs in (0, 1]."""
    values = float_list(value)
    if any(not (0 < v <= 1) for v in values):
        raise ValueError(f"every FMR must be in (0, 1] (got {value!r})")
    return values


SCHEMA = {
    "face_recognition_configs": Key("any", help="list of FR configs, e.g. [configs/fr/dlib_resnet.yaml]"),
    "benchmarks": Key("list", help="list of {name, type, ...} benchmark entries"),
    "qualities": Key("dict", default={}, help="method -> per-image CSV path template"),
    "fmr": Key(fmr_list, default=[1e-3], help="target FMR(s) of the fixed threshold"),
    "discard_limit": Key(discard_limits, default=[0.3, 0.2],
                         help="pAUC upper discard fraction, or a list (first = primary; all in table.md)"),
    "threshold": Key("str", default="fixed", choices=("fixed", "per_step"),
                     help="fixed once on all impostors (ISO) or recomputed at every discard step"),
    "discard_over": Key("str", default="mated", choices=("mated", "all"),
                        help="discard genuine pairs only (ISO) or all pairs by quality"),
    "pauc_normalisation": Key("str", default="start", choices=("start", "raw", "best"),
                              help="table value: pAUC / (limit·FNMR(0)), raw pAUC, or pAUC minus the oracle's"),
    "bootstrap": Key(int_at_least(0), default=1000, help="bootstrap resamples for the intervals (0 = none)"),
    "bootstrap_unit": Key("str", default="auto", choices=("auto", "identities", "pairs"),
                          help="resample identities when known (auto) or pairs"),
    "bootstrap_seed": Key("int", default=0, minimum=0),
    "confidence": Key(number_between(0.5, 1, example="0.95"), default=0.95,
                      help="level of the bootstrap percentile interval"),
    "pair_quality": Key("str", default="min", choices=("min", "mean", "product")),
    "random_seeds": Key(positive_int, default=10, help="seeds of the random reference"),
    "missing_quality": Key("str", default="error", choices=("error", "min"),
                           help="image absent from a quality CSV: error, or give it the CSV's lowest quality"),
    "outdir": Key("path", help="output folder"),
    "device": Key(device_name, default="auto"),
    "batch_size": Key(positive_int, default=64),
    "num_workers": Key("int", default=0, minimum=0),
    "cache": Key("bool", default=True, help="cache embeddings (see cache_dir)"),
    "cache_dir": Key("path", default=None, help="embedding cache folder (default: outdir/cache)"),
    "plots": Key("bool", default=True, help="write edc_<benchmark>_<model>.png"),
}


def main(argv=None) -> dict:
    """Parse arguments, run the evaluation, print the table; returns the results mapping."""
    args = stage_parser(__doc__.strip().splitlines()[0], SCHEMA).parse_args(argv)
    setup_logging(args.verbose)
    cfg = load_config(args.config, SCHEMA, args.overrides)
    from evaluation.evaluate import run_evaluation

    results = run_evaluation(cfg)
    table = Path(cfg["outdir"]) / "table.md"
    print(table.read_text(encoding="utf-8"))
    print(f"results: {Path(cfg['outdir']) / 'results.json'}")
    return results


if __name__ == "__main__":
    sys.exit(run_main(main))
