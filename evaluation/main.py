"""Evaluation — EDC and pAUC of quality methods on verification benchmarks (ISO/IEC 29794-1).

    python evaluation/main.py -c configs/evaluation.yaml [--set outdir=DIR ...]

Writes into ``outdir``: results.json, run.json, table.md, table.csv, table_long.csv, curves.csv,
scores/*.csv, protocols/*.csv (generated pair lists), edc_<benchmark>_<model>.png and the embedding
cache (cache/). Conventions (threshold, discard_over, pauc_normalisation, discard_limit list) and
bootstrap intervals are options. See docs/evaluation.md.
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path

from evaluation.settings import SCHEMA
from froq.core.cli import run_main, setup_logging, stage_parser
from froq.core.config import load_config

log = logging.getLogger("evaluation")


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
