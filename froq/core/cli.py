"""Common command-line front for the stages: ``-c CFG``, ``--set k=v``, logging, clean errors."""

from __future__ import annotations

import argparse
import json
import logging
import sys
from typing import Callable, Mapping, Sequence

from froq.core.config import Key
from froq.core.errors import FroqError

log = logging.getLogger("froq")


def setup_logging(verbose: bool = False) -> None:
    """Log to stderr at INFO (DEBUG with ``verbose``), one short line per message."""
    logging.basicConfig(level=logging.DEBUG if verbose else logging.INFO,
                        format="%(levelname)s %(name)s: %(message)s", stream=sys.stderr,
                        force=True)


def schema_help(schema: Mapping[str, Key]) -> str:
    """The config keys of a schema as help text: one line per key with its default and help."""
    lines = ["config keys (in the -c file, or --set KEY=VALUE; * = required):"]
    width = max((len(k) for k in schema), default=0)
    for key, spec in schema.items():
        default = "*" if spec.required else json.dumps(spec.default, default=str)
        lines.append(f"  {key.ljust(width)}  {default}" + (f"  — {spec.help}" if spec.help else ""))
    return "\n".join(lines)


def stage_parser(description: str, schema: Mapping[str, Key] | None = None,
                 prog: str | None = None) -> argparse.ArgumentParser:
    """An argparse parser with the options every stage shares: -c/--config, --set, -v.

    In: the stage's one-line description and, optionally, its config schema (listed with defaults
    in ``--help``) and the program name. Out: the parser."""
    parser = argparse.ArgumentParser(description=description, prog=prog,
                                     epilog=schema_help(schema) if schema else None,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("-c", "--config", required=True, help="YAML config file of the stage")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override a config key, e.g. --set dataset.batch_size=16 (repeatable)")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    return parser


def run_main(main: Callable[[Sequence[str] | None], object], argv: Sequence[str] | None = None) -> int:
    """Run a stage's ``main(argv)``; turn FroqError into one ``error:`` line and exit code 2.

    Out: the process exit code (0 on success, 2 on a user error, 130 on Ctrl-C).
    """
    try:
        main(argv)
    except FroqError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:  # disk full, permission denied, ... on an input or output file
        where = f"{exc.filename}: " if getattr(exc, "filename", None) else ""
        print(f"error: {where}{exc.strerror or exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted (finished rows are kept; run again to resume)", file=sys.stderr)
        return 130
    return 0
