"""The ``froq`` command: one entry point with a subcommand for every job.

    froq labels   -c configs/baseline.yaml  [--set key=value ...]   # stage 1: pseudo-labels
    froq optimize-labels -c configs/label_optimisation.yaml [--set ...]  # stage 1b (optional): IWBF'23
    froq init     -c configs/init.yaml      [--set ...]             # stage 2: observer
    froq score    -c configs/inference.yaml [--set ...]             # stage 3: FROQ qualities
    froq score-photos OBSERVER.json PHOTOS [-o qualities.csv]       # photos -> qualities (saved observer)
    froq methods  -c configs/score.yaml --method NAME [--set ...]   # comparison FIQA methods
    froq evaluate -c configs/evaluation.yaml [--set ...]            # EDC / pAUC tables and plots
    froq align --input PHOTOS --output DIR [...]                    # face alignment
    froq build-calibration --source DIR --output DIR [...]          # degraded calibration set
    froq run --photos DIR [...]                                     # everything end to end (run.sh)
    froq table -c configs/table/lfw_dlib.yaml [--set ...]           # the paper's table (models x benchmarks x methods)

Each subcommand is the same program as its script (``python baselineFIQA/main.py ...``), with the
same options, ``--help`` (config keys and defaults listed) and errors (one ``error:`` line, exit 2).
"""

from __future__ import annotations

import importlib
import sys
from typing import Sequence

from froq.core.cli import run_main

# subcommand -> (module with main(argv), one-line description)
COMMANDS = {
    "labels": ("baselineFIQA.main", "stage 1: pseudo-labels of a calibration set (auxiliary FIQA)"),
    "optimize-labels": ("baselineFIQA.optimize", "stage 1b (optional): IWBF'23 optimisation of the labels"),
    "init": ("observer.initialization", "stage 2: observer initialisation (layer selection)"),
    "score": ("observer.inference", "stage 3: FROQ qualities of aligned faces"),
    "score-photos": ("froq.score_photos", "qualities of photos (aligned as needed) with a saved observer"),
    "methods": ("methods.score", "comparison FIQA methods (serfiq, grafiqs, crfiqa, ...)"),
    "evaluate": ("evaluation.main", "EDC / pAUC evaluation, tables and plots"),
    "align": ("preparation.align", "align face photos for an FR model"),
    "build-calibration": ("preparation.calibration", "build a degraded calibration set"),
    "run": ("froq.pipeline", "the whole pipeline on a folder of photos (what run.sh runs)"),
    "table": ("froq.table", "the paper's table: FR models x benchmarks x methods -> pAUC table, EDC plots"),
}


def usage() -> str:
    """The ``froq --help`` text: every subcommand with its description."""
    width = max(len(name) for name in COMMANDS)
    lines = ["usage: froq COMMAND [options]   (froq COMMAND --help lists a command's options and keys)",
             "", "FROQ: training-free face image quality from a frozen FR model.", "", "commands:"]
    lines += [f"  {name.ljust(width)}  {desc}" for name, (_, desc) in COMMANDS.items()]
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    """Dispatch ``froq COMMAND ARGS...`` to the command's ``main(ARGS)``. Out: the exit code."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(usage())
        return 0 if argv else 2
    if argv[0] in ("-V", "--version"):
        from froq import __version__
        print(f"froq {__version__}")
        return 0
    name, rest = argv[0], argv[1:]
    if name not in COMMANDS:
        print(f"error: unknown command '{name}'; commands: {', '.join(COMMANDS)} (froq --help)",
              file=sys.stderr)
        return 2
    module = importlib.import_module(COMMANDS[name][0])
    sys.argv[0] = f"froq {name}"  # argparse's usage line names the subcommand
    return run_main(module.main, rest)


if __name__ == "__main__":
    sys.exit(main())
