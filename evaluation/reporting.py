"""Outputs of the evaluation: results.json, run.json, the paper-style tables, curves.csv, EDC plots.

Tables: one per FR model and FMR; rows = quality methods (configured ones, then the references
``random`` and ``perfect``), columns = benchmarks + mean over benchmarks; values = normalised pAUC
(lower is better). The best value of each column among the configured methods is bold (the
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


def _value(results: Mapping, bench: str, model: str, method: str, fmr_key: str) -> float:
    try:
        v = results[bench][model][method]["by_fmr"][fmr_key]["pauc_norm"]
    except KeyError:
        return math.nan
    return math.nan if v is None else float(v)


def table_rows(results: Mapping, benches: Sequence[str], model: str, methods: Sequence[str],
               fmr_key: str) -> list[tuple[str, list[float]]]:
    """``[(method, [pauc_norm per benchmark..., mean])]`` for one model and FMR (NaN when absent;
    the mean is NaN unless every benchmark has a value)."""
    rows = []
    for method in methods:
        vals = [_value(results, b, model, method, fmr_key) for b in benches]
        mean = float(np.mean(vals)) if vals and not any(math.isnan(v) for v in vals) else math.nan
        rows.append((method, vals + [mean]))
    return rows


def markdown_table(rows: list[tuple[str, list[float]]], benches: Sequence[str], digits: int = 3) -> str:
    """Markdown table of ``table_rows``; the column minimum among non-reference methods is bold."""
    header = ["Method"] + list(benches) + ["Mean"]
    best = []
    for c in range(len(header) - 1):
        cand = [r[1][c] for r in rows if r[0] not in REFERENCES and not math.isnan(r[1][c])]
        best.append(min(cand) if cand else None)
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join(["---"] + [":---:"] * (len(header) - 1)) + "|"]
    for method, vals in rows:
        cells = []
        for c, v in enumerate(vals):
            if math.isnan(v):
                cells.append("–")
                continue
            text = f"{v:.{digits}f}"
            if method not in REFERENCES and best[c] is not None and round(v, digits) == round(best[c], digits):
                text = f"**{text}**"
            cells.append(text)
        name = f"*{method}*" if method in REFERENCES else method
        lines.append("| " + " | ".join([name] + cells) + " |")
    return "\n".join(lines)


def write_outputs(outdir: Path, results: Mapping, curve_rows: list, run_info: Mapping,
                  benches: Sequence[str], models: Sequence[str], methods: Sequence[str],
                  fmrs: Sequence[float], limit: float) -> None:
    """Write results.json, run.json, table.md, table.csv and curves.csv into ``outdir`` (atomic)."""

    write_json(outdir / "results.json", results)
    write_json(outdir / "run.json", run_info)
    md = [f"# EDC pAUC (discard fraction 0–{limit:g}, normalised by {limit:g}·FNMR(0); lower is better)", ""]
    csv_rows = []
    for model in models:
        for fmr in fmrs:
            key = fmr_key(fmr)
            rows = table_rows(results, benches, model, methods, key)
            md += [f"## {model} — FMR = {fmr:g}", "", markdown_table(rows, benches), ""]
            for method, vals in rows:
                csv_rows.append([model, fmr, method] + [None if math.isnan(v) else v for v in vals])
    md.append("*random*: mean over seeds of uniform random qualities; *perfect*: oracle discarding the "
              "lowest-scoring genuine pairs first (lower bound). Bold: best configured method.")
    with atomic_open(outdir / "table.md", "w", encoding="utf-8") as fh:
        fh.write("\n".join(md) + "\n")
    write_csv(outdir / "table.csv", ["model", "fmr", "method"] + list(benches) + ["mean"],
              ([("" if v is None else v) for v in r] for r in csv_rows))
    write_csv(outdir / "curves.csv", ["benchmark", "model", "fmr", "method", "discard_fraction", "fnmr"],
              curve_rows)
    log.info("wrote results.json, table.md, table.csv, curves.csv to %s", outdir)


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
