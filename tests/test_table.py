"""``froq table`` end to end on a tiny config: a generated FR model, four synthetic identity folders
in LFW's layout with a pairs.txt, a calibration folder; a rerun reuses every cell; a missing model
(weights) and a missing benchmark (dataset) are skipped with one line each and the rest runs."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest
import torch
import yaml
from PIL import Image

from face_recognition_model.registry import register_model
from froq.commands import main as froq_main
from froq.table import main as table_main
from stage_helpers import run_in_process

IDS = ["Ann_Lee", "Bob_Ray", "Cy_Do", "Di_Fox"]
SIZE = 24


class _TableNet(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 8, 3, stride=2)
        self.bn = torch.nn.BatchNorm2d(8)
        self.act = torch.nn.ReLU()
        self.conv2 = torch.nn.Conv2d(8, 8, 3, padding=1)
        self.act2 = torch.nn.ReLU()
        self.pool = torch.nn.AdaptiveAvgPool2d(2)
        self.flat = torch.nn.Flatten()
        self.fc = torch.nn.Linear(32, 16)

    def forward(self, x):
        x = self.act(self.bn(self.conv(x)))
        x = self.act2(self.conv2(x))
        return self.fc(self.flat(self.pool(x)))


@register_model("test_table_tiny")
def _build(weights=None, **kwargs):
    with torch.random.fork_rng():
        torch.manual_seed(0)  # the same generated weights every build
        return _TableNet().eval()


def _noise_png(path, rng, base=None, sigma=25.0):
    base = rng.integers(0, 256, (SIZE, SIZE, 3)) if base is None else base
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.clip(base + rng.normal(0, sigma, base.shape), 0, 255).astype(np.uint8)).save(path)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """Root with lfw/ (4 people × 3), pairs.txt (2 folds), calibration/ (8 faces), the FR config and
    a table config with a present and a missing model, benchmark and CSV row."""
    root = tmp_path_factory.mktemp("table")
    rng = np.random.default_rng(0)
    for name in IDS:
        base = rng.integers(0, 256, (SIZE, SIZE, 3))
        for i in range(1, 4):
            _noise_png(root / "lfw" / name / f"{name}_{i:04d}.png", rng, base, 20.0 * i)
    genuine = [(n, i, j) for n in IDS for i, j in ((1, 2), (1, 3), (2, 3))]
    impostor = [(IDS[a], 1 + (a + b) % 3, IDS[b], 1 + a % 3) for a in range(4) for b in range(a + 1, 4)]
    impostor += [(IDS[a], 3, IDS[b], 2) for a in range(4) for b in range(a + 1, 4)]
    lines = ["2\t6"]
    for f in range(2):
        lines += [f"{n}\t{i}\t{j}" for n, i, j in genuine[6 * f:6 * f + 6]]
        lines += [f"{a}\t{i}\t{b}\t{j}" for a, i, b, j in impostor[6 * f:6 * f + 6]]
    (root / "pairs.txt").write_text("\n".join(lines) + "\n")
    for k in range(8):
        _noise_png(root / "calibration" / f"id{k % 4}" / f"c{k}.png", rng, sigma=5.0 + 10 * k)
    preprocess = {"size": SIZE, "mean": 0.5, "std": 0.5, "channels": [0, 1, 2]}
    (root / "tiny_fr.yaml").write_text(yaml.safe_dump(
        {"model": {"arch": "test_table_tiny", "weights": "random"}, "preprocess": preprocess}))
    (root / "absent_fr.yaml").write_text(yaml.safe_dump(
        {"model": {"arch": "test_table_tiny", "weights": str(root / "weights" / "absent.pth"),
                   "source": "https://example.org/absent-weights"}, "preprocess": preprocess}))
    cfg = {
        "outdir": str(root / "out"),
        "device": "cpu",
        "batch_size": 5,
        "models": [
            {"name": "tiny", "fr_config": str(root / "tiny_fr.yaml"),
             "calibration": str(root / "calibration"), "top_n": 3,
             "labels_options": {"noise_count": 2}},
            {"name": "tiny2", "fr_config": str(root / "tiny_fr.yaml"),
             "calibration": str(root / "calibration"), "top_n": 3, "labels_options": {"noise_count": 2}},
            {"name": "absent", "fr_config": str(root / "absent_fr.yaml"),
             "calibration": str(root / "calibration")},
        ],
        "benchmarks": [
            {"name": "lfw", "type": "lfw_pairs", "images": str(root / "lfw"),
             "pairs": str(root / "pairs.txt")},
            {"name": "gone", "type": "lfw_pairs", "images": str(root / "gone"),
             "pairs": str(root / "gone_pairs.txt"), "download": "GONE-DATASET-URL, put it under gone/"},
        ],
        "methods": {"froq": {}, "embedding_norm": {}, "aux_fiqa": {"options": {"noise_count": 2}},
                    "crfiqa": {}, "theirs": {"csv": str(root / "theirs_{benchmark}_{model}.csv")},
                    "own_norm": {"method": "embedding_norm", "fr_config": str(root / "tiny_fr.yaml")},
                    "froq_plus": {"method": "froq", "observer": {"variant": "plus", "cv_folds": 2}}},
        "discard_limits": [0.2, 0.3],
        "evaluation": {"random_seeds": 2, "bootstrap": 20},
    }
    (root / "table.yaml").write_text(yaml.safe_dump(cfg, sort_keys=False))
    return root


def _cells(path):
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


def test_table_end_to_end_rerun_and_skips(tiny, capsys):
    record = run_in_process(table_main, ["-c", str(tiny / "table.yaml")])
    out = capsys.readouterr().out
    status = {}
    for c in record["cells"]:  # the first status of each (labels are reused by the second observer)
        status.setdefault((c["model"], c["benchmark"], c["method"]), c["status"])
    # the three applicable methods computed on the present benchmark; labels and observer too
    for model in ("tiny", "tiny2"):
        for method in ("froq", "embedding_norm", "aux_fiqa"):
            assert status[(model, "lfw", method)] == "computed"
    # a method with its own FR model: computed once, shared by every block
    assert status[("tiny", "lfw", "own_norm")] == "computed" and status[("tiny2", "lfw", "own_norm")] == "reused"
    assert status[("tiny", "-", "labels")] == "computed" and status[("tiny", "-", "observer:froq")] == "computed"
    # skipped, each with its reason: model weights, dataset, inapplicable method, missing CSV
    skipped = [line for line in out.splitlines() if line.startswith("skipped ")]
    assert any("absent/*/*" in s and "https://example.org/absent-weights" in s for s in skipped), skipped
    assert any("*/gone/*" in s and "GONE-DATASET-URL" in s for s in skipped), skipped
    assert any("tiny/lfw/crfiqa" in s and "quality head" in s for s in skipped), skipped
    assert any("tiny/lfw/theirs" in s and "not found" in s for s in skipped), skipped
    assert all("\n" not in s for s in skipped)
    assert "cells: 9 computed, 1 reused, 0 given (CSV), 6 skipped; labels/observers: 6 computed, 2 reused" in out
    plus = json.loads((tiny / "out" / "models" / "tiny" / "observer_froq_plus.json").read_text())
    assert plus["variant"] == "plus" and plus["features"]  # FROQ+ made by the stage-2 functions
    # the table: one row per computed method, both discard limits, equal to the evaluation's results
    rows = _cells(tiny / "out" / "table.csv")
    assert {(r["model"], r["method"], float(r["discard_limit"])) for r in rows} == {
        (mod, m, lim) for mod in ("tiny", "tiny2")
        for m in ("froq", "embedding_norm", "aux_fiqa", "own_norm", "froq_plus")
        for lim in (0.2, 0.3)}
    results = json.loads((tiny / "out" / "evaluation" / "tiny" / "results.json").read_text())
    for r in (r for r in rows if r["model"] == "tiny"):
        metrics = results["lfw"]["tiny"][r["method"]]["by_limit"][r["discard_limit"]]
        assert float(r["pauc"]) == pytest.approx(metrics["pauc_norm"])  # default normalisation: start
        assert [float(r["ci_low"]), float(r["ci_high"])] == pytest.approx(metrics["pauc_value_ci"])
    assert list((tiny / "out" / "evaluation" / "tiny").glob("edc_lfw_tiny*.png"))
    table = (tiny / "out" / "table.md").read_text()
    assert "| FR model | method | lfw | gone | mean |" in table and "| tiny | froq |" in table
    # the missing benchmark: a dash with a footnote saying why, the mean over 1 of 2
    assert "| –[^1] |" in table and "(1/2) |" in table
    note = next(line for line in table.splitlines() if line.startswith("[^1]: "))
    assert "skipped" in note and "gone" in note, note
    assert "discard limit 0.2" in table and "discard limit 0.3" in table
    meta = json.loads((tiny / "out" / "qualities" / "lfw" / "tiny" / "froq.csv.table.json").read_text())
    assert meta["settings"]["method"] == "froq" and meta["settings"]["observer_sha256"]

    # the rerun, through the froq command: every cell reused, the same table
    before = (tiny / "out" / "table.csv").read_bytes()
    assert run_in_process(froq_main, ["table", "-c", str(tiny / "table.yaml")]) == 0
    again = json.loads((tiny / "out" / "table.json").read_text())
    statuses = {c["status"] for c in again["cells"] if c["model"] == "tiny" and c["status"] != "skipped"}
    assert statuses == {"reused"}
    assert all(v["status"] == "reused" for v in again["evaluations"].values())
    out = capsys.readouterr().out
    assert "cells: 0 computed, 10 reused, 0 given (CSV), 6 skipped; labels/observers: 0 computed, 8 reused" in out
    assert "evaluations: 0 computed, 2 reused" in out
    assert (tiny / "out" / "table.csv").read_bytes() == before


def test_changed_option_recomputes_only_its_cell(tiny, capsys):
    run_in_process(table_main, ["-c", str(tiny / "table.yaml")])
    capsys.readouterr()
    record = run_in_process(table_main, ["-c", str(tiny / "table.yaml"),
                                         "--set", "methods.aux_fiqa.options.noise_count=3"])
    status = {(c["model"], c["benchmark"], c["method"]): c["status"] for c in record["cells"]}
    assert status[("tiny", "lfw", "aux_fiqa")] == "computed"
    assert status[("tiny", "lfw", "froq")] == "reused" and status[("tiny", "lfw", "embedding_norm")] == "reused"


def test_bad_table_config_is_one_error_line(tiny, capsys):
    rc = froq_main(["table", "-c", str(tiny / "table.yaml"), "--set", "methods.nope={}"])
    err = capsys.readouterr().err
    assert rc == 2 and "Traceback" not in err
    lines = [line for line in err.splitlines() if line.startswith("error:")]
    assert len(lines) == 1 and "methods.nope" in lines[0] and "unknown FIQA method" in lines[0]
