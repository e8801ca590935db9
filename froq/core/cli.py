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


def add_config_options(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """Give a flag-style command (align, build-calibration, run) the stages' ``-c CONFIG`` and
    ``--set key=value``: a YAML file whose keys are the long option names (``keep-clean`` or
    ``keep_clean``), then ``--set`` overrides, then the flags on the command line. Out: the parser."""
    parser.add_argument("-c", "--config", dest="_config", default=None, metavar="CONFIG",
                        help="YAML file of option values (keys = long option names)")
    parser.add_argument("--set", dest="_overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="one option value, e.g. --set variants=2 (repeatable)")
    return parser


def parse_with_config(parser: argparse.ArgumentParser, argv: Sequence[str] | None):
    """``parser.parse_args(argv)`` where values may also come from ``-c CONFIG`` / ``--set``
    (see ``add_config_options``). Out: the namespace. FroqError naming the file and key for an
    unknown key (with the closest one) or a value of the wrong kind."""
    apply_config(parser, argv)
    return parser.parse_args(argv)


def apply_config(parser: argparse.ArgumentParser, argv: Sequence[str] | None) -> None:
    """Make the values of ``-c CONFIG`` and ``--set`` in ``argv`` the parser's defaults (flags given
    on the command line still win); options they provide are no longer required."""
    from froq.core.config import parse_overrides, read_yaml  # noqa: WPS433 (cheap, local)

    pre = argparse.ArgumentParser(add_help=False)
    pre.add_argument("-c", "--config", dest="_config", default=None)
    pre.add_argument("--set", dest="_overrides", action="append", default=[])
    known, _ = pre.parse_known_args(argv)
    values: dict = {}
    source = "--set"
    if known._config:
        values.update(read_yaml(known._config))
        source = known._config
    values.update(parse_overrides(known._overrides))
    actions = {a.dest: a for a in parser._actions if a.option_strings and not a.dest.startswith("_")
               and a.dest != "help"}
    defaults = {}
    for key, value in values.items():
        dest = str(key).replace("-", "_")
        action = actions.get(dest)
        if action is None:
            import difflib
            names = sorted(a.option_strings[-1].lstrip("-") for a in actions.values())
            close = difflib.get_close_matches(str(key), names, n=1)
            raise FroqError(f"{source}: unknown key '{key}'" + (f" (did you mean '{close[0]}'?)" if close else "")
                            + f"; keys: {', '.join(names)}")
        if isinstance(action, (argparse._StoreTrueAction, argparse._StoreFalseAction)):
            if not isinstance(value, bool):
                raise FroqError(f"{source}: {key}: must be true or false (got {value!r})")
        elif value is not None:
            if isinstance(value, (dict, list)):
                raise FroqError(f"{source}: {key}: must be a single value (got {value!r})")
            try:
                value = action.type(str(value)) if action.type else str(value)
            except (TypeError, ValueError):
                raise FroqError(f"{source}: {key}: not a valid value ({value!r})") from None
            if action.choices is not None and value not in action.choices:
                raise FroqError(f"{source}: {key}: must be one of {', '.join(map(str, action.choices))} "
                                f"(got {value!r})")
        defaults[dest] = value
        action.required = False
    parser.set_defaults(**defaults)
