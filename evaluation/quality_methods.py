"""Quality methods to compare: per-image CSVs named by path templates, plus the references
``random`` and ``perfect``.

A method is given in the config as a path template or a mapping::

    qualities:
      froq: "outputs/{benchmark}/{model}/froq.csv"          # template: {benchmark}, {model}
      aux_fiqa: {path: "outputs/{benchmark}/{model}/labels.csv", column: quality,
                 higher_is_better: true}

A benchmark entry may carry its own ``qualities`` mapping: its methods replace (or add to) the
top-level ones of the same name for that benchmark. ``{benchmark}`` is the benchmark's ``name``,
``{model}`` the FR model's name (its architecture unless named in the config).

References: ``random`` = uniform random per-image qualities (mean over seeds); ``perfect`` = the
oracle that discards genuine pairs in ascending order of their comparison score, i.e. every false
non-match first — the lowest curve any quality method can reach at that threshold.
"""

from __future__ import annotations

import logging
import os
import string
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping

import numpy as np

from froq.core.errors import FroqError
from froq.core.io import read_quality_csv

from evaluation.pair_protocols import PairProtocol, normalise_rel_path

log = logging.getLogger(__name__)

REFERENCE_METHODS = ("random", "perfect")
TEMPLATE_FIELDS = ("benchmark", "model")


@dataclass(frozen=True)
class QualitySource:
    """Where a method's per-image qualities are: a CSV path (template resolved), its column and
    the direction of the score."""

    method: str
    path: Path
    column: str = "quality"
    higher_is_better: bool = True


def check_template(template: str, where: str) -> str:
    """Validate a path template: only ``{benchmark}`` and ``{model}`` placeholders. Returns it."""
    if not isinstance(template, str) or not template:
        raise FroqError(f"{where}: expected a CSV path (template), got {template!r}")
    try:
        parsed = [(f, spec, conv) for _, f, spec, conv in string.Formatter().parse(template) if f is not None]
    except ValueError as exc:
        raise FroqError(f"{where}: bad template {template!r} ({exc}); write literal braces as {{{{ }}}}") from None
    if any(spec or conv for _, spec, conv in parsed):
        raise FroqError(f"{where}: {template!r}: placeholders take no format spec or conversion "
                        "(write {benchmark} or {model} alone)")
    fields = [f for f, _, _ in parsed]
    unknown = [f for f in fields if f not in TEMPLATE_FIELDS]
    if unknown:
        raise FroqError(f"{where}: unknown placeholder(s) {', '.join('{' + f + '}' for f in unknown)} in "
                        f"{template!r}; allowed: {{benchmark}}, {{model}}")
    return template


def parse_method_spec(method: str, spec, where: str) -> dict:
    """A config value for one method → ``{path, column, higher_is_better}`` (templates checked)."""
    if method in REFERENCE_METHODS:
        raise FroqError(f"{where}: '{method}' is a built-in reference method; give your method another name")
    if isinstance(spec, str):
        return {"path": check_template(spec, f"{where}.{method}"), "column": "quality", "higher_is_better": True}
    if isinstance(spec, Mapping):
        unknown = set(spec) - {"path", "column", "higher_is_better"}
        if unknown:
            raise FroqError(f"{where}.{method}: unknown key(s) {', '.join(sorted(unknown))} "
                            "(allowed: path, column, higher_is_better)")
        if "path" not in spec:
            raise FroqError(f"{where}.{method}: missing 'path'")
        hib = spec.get("higher_is_better", True)
        if not isinstance(hib, bool):
            raise FroqError(f"{where}.{method}.higher_is_better: must be true or false")
        column = spec.get("column", "quality")
        if not isinstance(column, str) or not column:
            raise FroqError(f"{where}.{method}.column: must be a column name")
        return {"path": check_template(spec["path"], f"{where}.{method}.path"), "column": column,
                "higher_is_better": hib}
    raise FroqError(f"{where}.{method}: expected a CSV path template or a mapping with 'path'")


def method_specs(top: Mapping | None, per_benchmark: Mapping | None, where_top: str, where_bench: str) -> dict[str, dict]:
    """Merge top-level and benchmark-level method mappings (benchmark wins); keeps config order."""
    out: dict[str, dict] = {}
    for where, mapping in ((where_top, top or {}), (where_bench, per_benchmark or {})):
        if not isinstance(mapping, Mapping):
            raise FroqError(f"{where}: expected a mapping method -> CSV path template")
        for method, spec in mapping.items():
            out[str(method)] = parse_method_spec(str(method), spec, where)
    return out


def resolve_sources(specs: Mapping[str, dict], benchmark: str, model: str) -> list[QualitySource]:
    """Fill ``{benchmark}``/``{model}`` of every method's template → ``QualitySource`` list."""
    return [QualitySource(method=m, path=Path(s["path"].format(benchmark=benchmark, model=model)),
                          column=s["column"], higher_is_better=s["higher_is_better"])
            for m, s in specs.items()]


def image_qualities(source: QualitySource, protocol: PairProtocol, missing: str = "error") -> np.ndarray:
    """Qualities of ``protocol.images`` (higher = better) from ``source``'s CSV.

    Paths in the CSV are relative to the benchmark's image folder (absolute paths inside it are
    accepted too). An image absent from the CSV raises FroqError naming the CSV, the count and the
    first paths — unless ``missing='min'``, which gives it the lowest quality found in the CSV
    (logged). Extra rows in the CSV are ignored.
    """
    if not source.path.is_file():
        raise FroqError(f"quality CSV of method '{source.method}' for {protocol.name} not found: {source.path}")
    raw = read_quality_csv(source.path, column=source.column)
    if not raw:
        raise FroqError(f"{source.path}: holds no quality rows")
    root = protocol.image_root.resolve()
    table: dict[str, float] = {}
    written: dict[str, str] = {}
    for p, q in raw.items():
        key = normalise_rel_path(p)
        if os.path.isabs(key):
            try:
                key = Path(key).resolve().relative_to(root).as_posix()
            except ValueError:
                pass
        if key in table:
            raise FroqError(f"{source.path}: rows {written[key]!r} and {p!r} name the same image "
                            f"({key}): keep one of them")
        written[key] = p
        table[key] = q if source.higher_is_better else -q
    values = np.array([table.get(p, np.nan) for p in protocol.images], dtype=np.float64)
    absent = [protocol.images[i] for i in np.flatnonzero(np.isnan(values))]
    nonfinite = [k for k, v in table.items() if not np.isfinite(v)]
    if nonfinite:
        raise FroqError(f"{source.path}: {len(nonfinite)} quality value(s) are not finite (e.g. {nonfinite[0]})")
    if absent:
        msg = (f"{source.path}: {len(absent)} of {len(protocol.images)} image(s) of {protocol.name} have no "
               f"quality (e.g. {', '.join(absent[:5])})")
        if missing != "min":
            raise FroqError(msg + " — run the quality stage on the benchmark's whole image folder, check "
                            "that its paths are relative to that folder, or set missing_quality: min")
        lowest = min(table.values())
        log.warning("%s; giving them the lowest quality in the CSV (%g)", msg, lowest)
        values[np.isnan(values)] = lowest
    return values


def random_image_qualities(n_images: int, seed: int) -> np.ndarray:
    """Uniform random per-image qualities for the ``random`` reference (reproducible by seed)."""
    return np.random.default_rng(seed).random(n_images)
