"""YAML configs with defaults, ``--set key.sub=value`` overrides and validation.

A stage declares its keys as a ``{dotted.key: Key(...)}`` schema. ``load_config`` reads the YAML,
applies overrides, fills defaults, checks types and returns a plain nested dict. Every error names
the config file and the key, e.g. ``configs/x.yaml: dataset.batch_size: must be an integer >= 1``.
"""

from __future__ import annotations

import copy
import difflib
import math
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import yaml

from froq.core.errors import FroqError

log = logging.getLogger(__name__)

_MISSING = object()
_RAISE = object()


@dataclass
class Key:
    """One config key: its kind, default (``required`` when none), and a help line.

    kind: 'str', 'path', 'int', 'float', 'bool', 'list', 'dict', 'any', or a callable that takes
    the value and returns it (possibly converted) or raises ValueError with the reason.
    """

    kind: str | Callable[[Any], Any] = "any"
    default: Any = _MISSING
    help: str = ""
    minimum: float | None = None
    choices: Sequence[Any] | None = None
    nullable: bool = False

    @property
    def required(self) -> bool:
        return self.default is _MISSING


class _AliasRefused(Exception):
    pass


class _NoAliasLoader(yaml.SafeLoader):
    """``yaml.SafeLoader`` that refuses aliases (``*name``): nested aliases expand exponentially
    (a few hundred bytes can grow past memory), and no FROQ config needs them."""

    def compose_node(self, parent, index):
        if self.check_event(yaml.AliasEvent):
            raise _AliasRefused(self.peek_event().start_mark.line + 1)
        return super().compose_node(parent, index)


def yaml_load(text):
    """Parse YAML text (or a stream) safely: no Python tags, no aliases. ``_AliasRefused`` /
    ``yaml.YAMLError`` on bad input."""
    return yaml.load(text, Loader=_NoAliasLoader)  # noqa: S506 - a SafeLoader subclass


def parse_overrides(items: Sequence[str] | None, source: str = "--set") -> dict[str, Any]:
    """Turn ``["a.b=1", "c=[1,2]"]`` into ``{"a.b": 1, "c": [1, 2]}`` (values parsed as YAML)."""
    out: dict[str, Any] = {}
    for item in items or []:
        if "=" not in item:
            raise FroqError(f"{source} {item!r}: expected key=value, e.g. dataset.batch_size=16")
        key, _, raw = item.partition("=")
        key = key.strip()
        if not key:
            raise FroqError(f"{source} {item!r}: empty key")
        try:
            out[key] = yaml_load(raw) if raw.strip() else ""
        except _AliasRefused:
            raise FroqError(f"{source} {item!r}: YAML aliases (*name) are not allowed") from None
        except yaml.YAMLError:
            out[key] = raw
    return out


def read_yaml(path: str | Path) -> dict:
    """Read a YAML mapping; FroqError naming the file if it is missing or not a mapping."""
    path = Path(path)
    if not path.is_file():
        raise FroqError(f"config file not found: {path}")
    try:
        with open(path, encoding="utf-8") as fh:
            data = yaml_load(fh)
    except yaml.YAMLError as exc:
        where = getattr(exc, "problem_mark", None)
        line = f" (line {where.line + 1})" if where is not None else ""
        raise FroqError(f"{path}: not valid YAML{line}: {getattr(exc, 'problem', exc)}") from None
    except UnicodeDecodeError as exc:
        raise FroqError(f"{path}: not UTF-8 text (byte {exc.start}): save the config as UTF-8") from None
    except _AliasRefused as exc:
        raise FroqError(f"{path}: line {exc.args[0]}: YAML aliases (*name) are not allowed in FROQ "
                        "configs (nested aliases can expand without bound): write the values out") from None
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise FroqError(f"{path}: expected a mapping of keys at the top level")
    return data


def get_dotted(cfg: Mapping, key: str, default: Any = _RAISE) -> Any:
    """``get_dotted({'a': {'b': 1}}, 'a.b') -> 1``; ``default`` (or KeyError) when absent."""
    node: Any = cfg
    for part in key.split("."):
        if not isinstance(node, Mapping) or part not in node:
            if default is _RAISE:
                raise KeyError(key)
            return default
        node = node[part]
    return node


def set_dotted(cfg: dict, key: str, value: Any) -> None:
    """Set ``cfg['a']['b'] = value`` for ``key='a.b'``, creating intermediate mappings."""
    parts = key.split(".")
    node = cfg
    for part in parts[:-1]:
        if not isinstance(node.get(part), dict):
            node[part] = {}
        node = node[part]
    node[parts[-1]] = value


def _flatten(cfg: Mapping, prefix: str = "") -> dict[str, Any]:
    out = {}
    for k, v in cfg.items():
        key = f"{prefix}{k}"
        if isinstance(v, Mapping) and v:
            out.update(_flatten(v, key + "."))
        else:
            out[key] = v
    return out


def _check(value: Any, spec: Key) -> Any:
    if value is None and (spec.nullable or spec.default is None):
        return None
    kind = spec.kind
    if callable(kind):
        return kind(value)
    if kind == "int":
        if isinstance(value, bool) or not isinstance(value, int):
            raise ValueError(f"must be an integer (got {value!r})")
        if not -2**63 <= value < 2**63:
            raise ValueError(f"must fit in 64 bits (got {value})")
    elif kind == "float":
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ValueError(f"must be a number (got {value!r})")
        value = float(value)
        if not math.isfinite(value):
            raise ValueError(f"must be a finite number (got {value!r})")
    elif kind == "bool":
        if not isinstance(value, bool):
            raise ValueError(f"must be true or false (got {value!r})")
    elif kind in ("str", "path"):
        if not isinstance(value, (str, int, float)) or isinstance(value, bool) or value == "":
            raise ValueError(f"must be a non-empty string (got {value!r})")
        value = str(value)
    elif kind == "list":
        if not isinstance(value, list):
            raise ValueError(f"must be a list (got {value!r})")
    elif kind == "dict":
        if not isinstance(value, dict):
            raise ValueError(f"must be a mapping (got {value!r})")
    if spec.minimum is not None and isinstance(value, (int, float)) and value < spec.minimum:
        raise ValueError(f"must be >= {spec.minimum} (got {value!r})")
    if spec.choices is not None and value not in spec.choices:
        raise ValueError(f"must be one of {', '.join(map(str, spec.choices))} (got {value!r})")
    return value


EXTRA_KEY = "extra"  # a top-level mapping for keys of your own: kept in provenance, never read


def validate(cfg: dict, schema: Mapping[str, Key], source: str, allow_extra: bool = False) -> dict:
    """Fill defaults and check every schema key of ``cfg`` in place; return ``cfg``.

    In: the nested config, the schema, and the source name used in messages (the file path).
    Out: the same dict with defaults filled and values converted. Raises FroqError
    ``"<source>: <key>: <reason>"`` on the first problem. A key the schema does not know (most
    likely a typo) is an error naming the closest known key — unless ``allow_extra`` (then a
    warning); keys under a top-level ``extra:`` mapping are always accepted and left alone.
    """
    for key, spec in schema.items():
        value = get_dotted(cfg, key, _MISSING)
        if value is _MISSING:
            if spec.required:
                hint = f" ({spec.help})" if spec.help else ""
                raise FroqError(f"{source}: missing required key '{key}'{hint}")
            set_dotted(cfg, key, copy.deepcopy(spec.default))
            continue
        try:
            set_dotted(cfg, key, _check(value, spec))
        except (ValueError, TypeError, OverflowError) as exc:
            raise FroqError(f"{source}: {key}: {exc}") from None
    known = set(schema)
    unknown = [key for key in _flatten(cfg) if not key.startswith("_") and key not in known
               and key != EXTRA_KEY and not key.startswith(EXTRA_KEY + ".")
               and not any(key.startswith(k + ".") for k in known)]
    for key in unknown:
        close = difflib.get_close_matches(key, sorted(known), n=1)
        hint = f" (did you mean '{close[0]}'?)" if close else ""
        if not allow_extra:
            raise FroqError(f"{source}: unknown key '{key}'{hint}: fix the name, or put keys of "
                            f"your own under '{EXTRA_KEY}:'")
        log.warning("%s: unknown key '%s' ignored%s", source, key, hint)
    return cfg


def load_config(path: str | Path, schema: Mapping[str, Key], overrides: Sequence[str] | None = None,
                allow_extra: bool = False) -> dict:
    """Read ``path``, apply ``--set`` overrides, validate against ``schema``; return the dict.

    The returned dict carries ``_source`` (the file path) for messages and provenance.
    """
    cfg = read_yaml(path)
    for key, value in parse_overrides(overrides).items():
        set_dotted(cfg, key, value)
    validate(cfg, schema, str(path), allow_extra=allow_extra)
    cfg["_source"] = str(path)
    return cfg


def public(cfg: Mapping) -> dict:
    """The config without private keys (``_source``), for saving into outputs."""
    return {k: v for k, v in cfg.items() if not str(k).startswith("_")}


def int_at_least(minimum: int):
    """The validator of an integer >= ``minimum`` (returned unchanged)."""
    def check(value):
        if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
            raise ValueError(f"must be an integer >= {minimum} (got {value!r})")
        return value
    return check


def number_between(low: float, high: float, low_included: bool = False, example: str = ""):
    """The validator of a number in (``low``, ``high``) (``[low, high)`` with ``low_included``),
    returned as a float; ``example`` goes into the error."""
    def check(value):
        if (isinstance(value, bool) or not isinstance(value, (int, float))
                or not (low <= value if low_included else low < value) or not value < high):
            raise ValueError(f"must be a number in {'[' if low_included else '('}{low}, {high})"
                             f"{f', e.g. {example}' if example else ''} (got {value!r})")
        return float(value)
    return check


positive_int = int_at_least(1)


def int_or_auto(value):
    """Validator: an integer >= 1, or ``auto`` (the caller picks a device-dependent value)."""
    if value is None or (isinstance(value, str) and value.lower() == "auto"):
        return "auto"
    return positive_int(value)


def bool_or_auto(value):
    """Validator: true, false or ``auto`` (the caller decides per device)."""
    if value is None or (isinstance(value, str) and value.lower() == "auto"):
        return "auto"
    if isinstance(value, bool):
        return value
    raise ValueError(f"must be true, false or auto (got {value!r})")


def float_list(value):
    """Validator: a non-empty list of numbers (a single number is accepted as a list of one)."""
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        value = [value]
    if not isinstance(value, list) or not value or not all(
            isinstance(v, (int, float)) and not isinstance(v, bool) for v in value):
        raise ValueError(f"must be a non-empty list of numbers (got {value!r})")
    if not all(math.isfinite(v) for v in value):
        raise ValueError(f"must be finite numbers (got {value!r})")
    return [float(v) for v in value]


def device_name(value):
    """Validator: auto, cpu, cuda, cuda:N or mps."""
    v = str(value).lower()
    if v in ("auto", "cpu", "cuda", "mps") or (v.startswith("cuda:") and v[5:].isdigit()):
        return v
    raise ValueError(f"must be auto, cpu, cuda or cuda:N (got {value!r})")


def image_size(value):
    """Validator: an image size — an integer ``N`` (N×N) or ``[height, width]``, each >= 1."""
    if isinstance(value, int) and not isinstance(value, bool) and value >= 1:
        return value
    if (isinstance(value, list) and len(value) == 2
            and all(isinstance(v, int) and not isinstance(v, bool) and v >= 1 for v in value)):
        return value
    raise ValueError(f"must be an integer or [height, width] of integers >= 1 (got {value!r})")


def override_list(value):
    """Validator: a list of ``key=value`` strings (``--set``-style overrides of another config)."""
    if value is None:
        return []
    if not isinstance(value, list) or not all(isinstance(v, str) and "=" in v for v in value):
        raise ValueError(f"must be a list of 'key=value' strings, e.g. [model.weights=PATH] (got {value!r})")
    return value
