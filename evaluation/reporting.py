"""Outputs of the evaluation: results.json, run.json, the paper-style tables, curves.csv, EDC plots.

Tables: one per FR model, FMR and discard limit; rows = quality methods (configured ones, then the
references ``random`` and ``perfect``), columns = benchmarks + mean over benchmarks; values = pAUC
under the configured normalisation (default: normalised by the starting error; lower is better),
with ``± half-width`` of the bootstrap interval when there is one. The best value of each column among the configured methods is bold (the
references are never bolded: ``perfect`` is an oracle).
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np

from evaluation.edc import fmr_key
from froq.core.io import atomic_open, write_csv, write_json

log = logging.getLogger(__name__)

REFERENCES = ("random", "perfect")


VALUE_KEYS = {"start": "pauc_norm", "raw": "pauc", "best": "pauc_minus_best"}
VALUE_TITLES = {"start": "normalised by {lim}·FNMR(0)", "raw": "raw, not normalised",
                "best": "minus the perfect oracle's pAUC"}


def _entry(results: Mapping, bench: str, model: str, method: str, fmr_key: str, limit_key: str | None) -> dict:
    try:
        e = results[bench][model][method]["by_fmr"][fmr_key]
    except KeyError:
        return {}
    if limit_key is not None and "by_limit" in e:
        return e["by_limit"].get(limit_key, {})
    return e


def _value(results: Mapping, bench: str, model: str, method: str, fmr_key: str,
           limit_key: str | None = None, key: str = "pauc_norm") -> float:
    v = _entry(results, bench, model, method, fmr_key, limit_key).get(key)
    return math.nan if v is None else float(v)


def _interval(results: Mapping, bench: str, model: str, method: str, fmr_key: str,
              limit_key: str | None, key: str) -> tuple[float, float] | None:
    ci = _entry(results, bench, model, method, fmr_key, limit_key).get(f"{key}_ci")
    if not ci or ci[0] is None or ci[1] is None:
        return None
    return float(ci[0]), float(ci[1])


#: why a pAUC is undefined when no genuine pair is rejected before discarding (FNMR(0) = 0)
NO_ERRORS = ("FNMR(0) = 0 at this FMR: the FR model rejects no genuine pair before any discarding, so the "
             "normalised pAUC is 0/0 (undefined). Use more pairs (more impostors make the threshold "
             "meaningful), a higher FMR (e.g. fmr: [1.0e-2]), or the raw pAUC (pauc_normalisation: raw)")
NO_RESULT = "no result for this method on this benchmark (its qualities were not computed or were skipped)"


@dataclass
class Cell:
    """One value of a result table: ``value`` (None or NaN = empty), its bootstrap interval, why it
    is empty (a footnote), a suffix after the number (e.g. ``(2/3)``) and whether it is bold."""

    value: float | None
    ci: tuple[float, float] | None = None
    why: str | None = None
    suffix: str = ""
    bold: bool = False

    @property
    def empty(self) -> bool:
        """No number to show."""
        return self.value is None or math.isnan(self.value)


def render_markdown(header: Sequence[str], rows: Sequence[Sequence[object]], digits: int = 3) -> str:
    """The one Markdown renderer of result tables (``froq evaluate``'s table.md, ``froq table``,
    run.sh's report). In: the column titles; rows of text labels followed by ``Cell`` values.
    Numbers right-aligned with ``± half-width`` of their interval; an empty cell is ``–`` with a
    footnote marker, and every distinct reason is listed once under the table. Out: the text."""
    reasons: list[str] = []
    lines = ["| " + " | ".join(header) + " |",
             "|" + "|".join("---" if not isinstance(c, Cell) else "---:" for c in (rows[0] if rows else header)) + "|"]
    for row in rows:
        out = []
        for item in row:
            if not isinstance(item, Cell):
                out.append(str(item))
            elif item.empty:
                why = item.why or NO_RESULT
                if why not in reasons:
                    reasons.append(why)
                out.append(f"–[^{reasons.index(why) + 1}]")
            else:
                text = f"{item.value:.{digits}f}"
                if item.ci is not None:
                    text += f" ± {(item.ci[1] - item.ci[0]) / 2:.{digits}f}"
                text += f" {item.suffix}" if item.suffix else ""
                out.append(f"**{text}**" if item.bold else text)
        lines.append("| " + " | ".join(out) + " |")
    notes = [f"[^{i}]: {why}" for i, why in enumerate(reasons, start=1)]
    return "\n".join(lines + ([""] + notes if notes else []))


def empty_reason(results: Mapping, bench: str, model: str, method: str, fmr_key: str | None = None) -> str:
    """Why a benchmark × model × method value (at FMR ``fmr_key``; None = the primary FMR) is missing
    or undefined (footnote text)."""
    try:
        entry = results[bench][model][method]
        entry = entry["by_fmr"][fmr_key] if fmr_key is not None else entry
    except (KeyError, TypeError):
        return NO_RESULT
    if entry.get("fnmr0") == 0:
        return NO_ERRORS
    return "undefined for this benchmark (see results.json)"


def table_cells(results: Mapping, benches: Sequence[str], model: str, methods: Sequence[str],
                fmr_key: str, limit_key: str | None = None, key: str = "pauc_norm",
                intervals: bool = False) -> list[list[object]]:
    """Rows ``[method, Cell per benchmark..., mean Cell]`` of one model, FMR and discard limit
    (default: the primary); ``key`` the metric (``pauc_norm``, ``pauc``, ``pauc_minus_best``); with
    ``intervals`` the bootstrap intervals. The mean is empty unless every benchmark has a value.
    The best value of each column among the configured methods (not the references) is bold."""
    rows = []
    for method in methods:
        cells = []
        for b in benches:
            v = _value(results, b, model, method, fmr_key, limit_key, key)
            ci = _interval(results, b, model, method, fmr_key, limit_key, key) if intervals else None
            cells.append(Cell(v, ci, None if not math.isnan(v) else empty_reason(results, b, model, method, fmr_key)))
        vals = [c.value for c in cells]
        mean = Cell(float(np.mean(vals)) if vals and not any(c.empty for c in cells) else math.nan,
                    why="the mean needs a value on every benchmark")
        rows.append([f"*{method}*" if method in REFERENCES else method, *cells, mean])
    for c in range(1, len(benches) + 2):
        cand = [r[c].value for r, m in zip(rows, methods) if m not in REFERENCES and not r[c].empty]
        for r, m in zip(rows, methods):
            if cand and m not in REFERENCES and not r[c].empty and round(r[c].value, 3) == round(min(cand), 3):
                r[c].bold = True
    return rows


def write_outputs(outdir: Path, results: Mapping, curve_rows: list, run_info: Mapping,
                  benches: Sequence[str], models: Sequence[str], methods: Sequence[str],
                  fmrs: Sequence[float], limit, normalisation: str = "start", show_ci: bool = False) -> None:
    """Write results.json, run.json, table.md, table.csv, table_long.csv and curves.csv into
    ``outdir`` (atomic). ``limit``: the discard limit or a list of them (the first is the primary
    one: table.csv holds it, table.md and table_long.csv every limit)."""

    limits = [float(v) for v in limit] if isinstance(limit, (list, tuple)) else [float(limit)]
    key = VALUE_KEYS[normalisation]
    write_json(outdir / "results.json", results)
    write_json(outdir / "run.json", run_info)
    lims = ", ".join(f"{v:g}" for v in limits)
    md = [f"# EDC pAUC (discard fraction 0–limit, limit {lims}; "
          f"{VALUE_TITLES[normalisation].format(lim='limit')}; lower is better)", ""]
    if show_ci:
        md += ["± = half the width of the 95 % bootstrap interval (results.json: `*_ci` = [lo, hi]).", ""]
    csv_rows, long_rows = [], []
    for model in models:
        for fmr in fmrs:
            fkey = fmr_key(fmr)
            for lim in limits:
                lkey = format(lim, "g")
                rows = table_cells(results, benches, model, methods, fkey, lkey, key, intervals=show_ci)
                title = f"## {model} — FMR = {fmr:g}" + (f" — discard limit {lim:g}" if len(limits) > 1 else "")
                md += [title, "", render_markdown(["Method", *benches, "Mean"], rows), ""]
                for method, row in zip(methods, rows):
                    if lim == limits[0]:
                        csv_rows.append([model, fmr, method] + [None if c.empty else c.value for c in row[1:]])
                    for b, c in zip(benches, row[1:]):
                        long_rows.append([model, fmr, lim, method, b, key, None if c.empty else c.value,
                                          None if c.ci is None else c.ci[0], None if c.ci is None else c.ci[1]])
    md.append("*random*: mean over seeds of uniform random qualities; *perfect*: oracle discarding the "
              "lowest-scoring genuine pairs first (lower bound). Bold: best configured method.")
    with atomic_open(outdir / "table.md", "w", encoding="utf-8") as fh:
        fh.write("\n".join(md) + "\n")
    write_csv(outdir / "table.csv", ["model", "fmr", "method"] + list(benches) + ["mean"],
              ([("" if v is None else v) for v in r] for r in csv_rows))
    write_csv(outdir / "table_long.csv", ["model", "fmr", "discard_limit", "method", "benchmark", "metric",
                                          "value", "ci_low", "ci_high"],
              ([("" if v is None else v) for v in r] for r in long_rows))
    write_csv(outdir / "curves.csv", ["benchmark", "model", "fmr", "method", "discard_fraction", "fnmr"],
              curve_rows)
    log.info("wrote results.json, table.md, table.csv, table_long.csv, curves.csv to %s", outdir)


def plot_edc(path: Path, curves: Mapping[str, tuple], bench: str, model: str, fmr: float,
             limit: float) -> None:
    """Plot FNMR vs discard fraction (step curves, one per method) to a PNG (Agg, atomic)."""
    from matplotlib.figure import Figure  # Figure + savefig uses the Agg canvas; no pyplot state

    fig = Figure(figsize=(6.4, 4.4), dpi=110)
    ax = fig.add_subplot(1, 1, 1)
    for method, (x, y) in curves.items():
        style = {"random": dict(color="gray", linestyle="--"), "perfect": dict(color="black", linestyle=":")}
        ax.plot(x, y, drawstyle="steps-post", label=method, linewidth=1.6, **style.get(method, {}))
    ax.set_xlim(0, limit)
    ax.set_ylim(bottom=0)
    ax.set_xlabel("discard fraction of genuine pairs (lowest quality first)")
    ax.set_ylabel("FNMR")
    ax.set_title(f"EDC — {bench}, {model}, FMR = {fmr:g}")
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    with atomic_open(path, "wb") as fh:
        fig.savefig(fh, format="png")
