"""Result tables explain themselves (issue 30): every empty or undefined cell of a result table
(``froq evaluate``'s table.md, ``froq table``, run.sh) carries a footnote with the reason and what
to do; the one renderer is ``evaluation.reporting.render_markdown``."""

from __future__ import annotations

import math

from evaluation.edc import fmr_key
from evaluation.reporting import NO_ERRORS, NO_RESULT, Cell, render_markdown, table_cells
from froq.pipeline import summary_lines


def results_with(fnmr0: float, pauc_norm: float) -> dict:
    entry = {"fnmr0": fnmr0, "pauc_norm": pauc_norm, "by_limit": {"0.3": {"pauc_norm": pauc_norm}}}
    return {"lfw": {"dlib": {"froq": {"by_fmr": {fmr_key(1e-3): entry}, **entry}}}}


def test_empty_cells_get_one_numbered_footnote_per_reason():
    rows = [["a", Cell(0.5), Cell(None, why="reason one")],
            ["b", Cell(math.nan, why="reason one"), Cell(None, why="reason two")]]
    text = render_markdown(["method", "x", "y"], rows)
    assert "| a | 0.500 | –[^1] |" in text and "| b | –[^1] | –[^2] |" in text
    assert text.splitlines()[-2:] == ["[^1]: reason one", "[^2]: reason two"]
    assert "[^" not in render_markdown(["method", "x"], [["a", Cell(0.25, ci=(0.2, 0.3))]])


def test_an_undefined_pauc_says_why_and_what_to_do():
    rows = table_cells(results_with(0.0, math.nan), ["lfw"], "dlib", ["froq", "serfiq"], fmr_key(1e-3), "0.3")
    assert rows[0][1].empty and rows[0][1].why == NO_ERRORS  # FNMR(0) = 0: 0/0
    assert rows[1][1].why == NO_RESULT                         # no result at all
    text = render_markdown(["Method", "lfw", "Mean"], rows)
    assert "FNMR(0) = 0" in text and "higher FMR" in text and "raw pAUC" in text
    ok = table_cells(results_with(0.2, 0.8), ["lfw"], "dlib", ["froq"], fmr_key(1e-3), "0.3")
    assert ok[0][1].value == 0.8 and ok[0][1].why is None and ok[0][1].bold


def test_run_sh_summary_says_it_in_one_line():
    summary = {"fr_config": "f", "calibration_images": 1, "calibration": "c", "selected_layers": ["l"],
               "calibration_spearman": 0.5, "quality": {"min": 1, "median": 2, "max": 3}, "target_images": 3,
               "target": "t", "evaluation": {"benchmark": "lfw", "pauc_norm": {}, "table": "table.md",
                                             "undefined": NO_ERRORS}}
    lines = summary_lines(summary, "out")
    said = [line for line in lines if "undefined" in line]
    assert len(said) == 1 and "FNMR(0) = 0" in said[0]
