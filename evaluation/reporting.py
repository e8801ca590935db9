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


def table_rows(results: Mapping, benches: Sequence[str], model: str, methods: Sequence[str],
               fmr_key: str, limit_key: str | None = None, key: str = "pauc_norm") -> list[tuple[str, list[float]]]:
    """``[(method, [value per benchmark..., mean])]`` for one model, FMR and discard limit (default:
    the primary one); ``key``: the metric (``pauc_norm``, ``pauc``, ``pauc_minus_best``). NaN when
    absent; the mean is NaN unless every benchmark has a value."""
    rows = []
    for method in methods:
        vals = [_value(results, b, model, method, fmr_key, limit_key, key) for b in benches]
        mean = float(np.mean(vals)) if vals and not any(math.isnan(v) for v in vals) else math.nan
        rows.append((method, vals + [mean]))
    return rows


def table_intervals(results: Mapping, benches: Sequence[str], model: str, methods: Sequence[str],
                    fmr_key: str, limit_key: str | None = None, key: str = "pauc_norm") -> dict:
    """``{method: [interval or None per benchmark..., None for the mean]}`` (bootstrap 95 % CIs)."""
    return {m: [_interval(results, b, model, m, fmr_key, limit_key, key) for b in benches] + [None]
            for m in methods}


def format_value(v: float, ci: tuple[float, float] | None, digits: int = 3) -> str:
    """``0.123`` or, with an interval, ``0.123 ± 0.010`` (± = half the interval's width)."""
    text = f"{v:.{digits}f}"
    if ci is not None:
        text += f" ± {(ci[1] - ci[0]) / 2:.{digits}f}"
    return text


def markdown_table(rows: list[tuple[str, list[float]]], benches: Sequence[str], digits: int = 3,
                   intervals: Mapping | None = None) -> str:
    """Markdown table of ``table_rows``; the column minimum among non-reference methods is bold;
    with ``intervals`` (``table_intervals``) each value carries its ``± half-width``."""
    header = ["Method"] + list(benches) + ["Mean"]
    best = []
    for c in range(len(header) - 1):
        cand = [r[1][c] for r in rows if r[0] not in REFERENCES and not math.isnan(r[1][c])]
        best.append(min(cand) if cand else None)
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join(["---"] + [":---:"] * (len(header) - 1)) + "|"]
    for method, vals in rows:
        cells = []
        cis = (intervals or {}).get(method) or [None] * len(vals)
        for c, v in enumerate(vals):
            if math.isnan(v):
                cells.append("–")
                continue
            text = format_value(v, cis[c], digits)
            if method not in REFERENCES and best[c] is not None and round(v, digits) == round(best[c], digits):
                text = f"**{text}**"
            cells.append(text)
        name = f"*{method}*" if method in REFERENCES else method
        lines.append("| " + " | ".join([name] + cells) + " |")
    return "\n".join(lines)


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
                rows = table_rows(results, benches, model, methods, fkey, lkey, key)
                cis = table_intervals(results, benches, model, methods, fkey, lkey, key) if show_ci else None
                title = f"## {model} — FMR = {fmr:g}" + (f" — discard limit {lim:g}" if len(limits) > 1 else "")
                md += [title, "", markdown_table(rows, benches, intervals=cis), ""]
                for method, vals in rows:
                    if lim == limits[0]:
                        csv_rows.append([model, fmr, method] + [None if math.isnan(v) else v for v in vals])
                    for b, v in zip(benches, vals):
                        ci = (cis or {}).get(method, [None] * len(benches))[benches.index(b)] if cis else None
                        long_rows.append([model, fmr, lim, method, b, key, None if math.isnan(v) else v,
                                          None if ci is None else ci[0], None if ci is None else ci[1]])
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
