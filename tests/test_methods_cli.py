"""methods/score.py: CSV with every readable image, unreadable ones listed, one-line errors."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from froq.core.cli import run_main
from froq.core.io import read_csv
from methods import score as score_cli


@pytest.fixture
def setup(tmp_path):
    rng = np.random.default_rng(0)
    faces = tmp_path / "faces"
    for rel in ("a/1.png", "a/2.png", "b/3.jpg"):
        (faces / rel).parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(rng.integers(0, 256, (112, 112, 3), dtype=np.uint8)).save(faces / rel)
    (faces / "b" / "broken.jpg").write_bytes(b"not a jpeg")
    fr = tmp_path / "fr.yaml"
    fr.write_text("model: {arch: iresnet18, weights: random}\n"
                  "preprocess: {size: 112, mean: 0.5, std: 0.5, channels: [0, 1, 2]}\n")
    cfg = tmp_path / "score.yaml"
    cfg.write_text(f"face_recognition_config: {fr}\ntarget_dataset: {faces}\nbatch_size: 2\n"
                   f"device: cpu\noutpath: {tmp_path}/out/{{method}}.csv\n"
                   "methods:\n  serfiq: {m: 4}\n")
    return tmp_path, cfg


def test_cli_writes_all_rows(setup, capsys):
    tmp_path, cfg = setup
    assert run_main(score_cli.main, ["-c", str(cfg), "--method", "serfiq"]) == 0
    out = tmp_path / "out" / "serfiq.csv"
    rows = read_csv(out, required=("path", "quality"))
    assert [r["path"] for r in rows] == ["a/1.png", "a/2.png", "b/3.jpg"]
    assert all(0 < float(r["quality"]) <= 1 for r in rows)
    meta = json.loads(out.with_suffix(".meta.json").read_text())
    assert meta["method"] == "serfiq" and meta["options"]["m"] == 4 and meta["images"] == 3
    assert [u["path"] for u in meta["unreadable"]] == ["b/broken.jpg"]
    assert not (tmp_path / "out" / "serfiq.csv.partial").exists()
    printed = capsys.readouterr().out
    assert "3 images" in printed and "b/broken.jpg" in printed


def test_cli_components_and_overrides(setup):
    tmp_path, cfg = setup
    assert run_main(score_cli.main, ["-c", str(cfg), "--method", "grafiqs",
                                     "--set", "methods.grafiqs.variant=block4"]) == 0
    rows = read_csv(tmp_path / "out" / "grafiqs.csv",
                    required=("path", "quality", "image", "block1", "block2", "block3", "block4"))
    assert len(rows) == 3 and all(r["quality"] == r["block4"] for r in rows)


def test_cli_method_not_applicable_is_one_line(setup, capsys):
    tmp_path, cfg = setup
    assert run_main(score_cli.main, ["-c", str(cfg), "--method", "crfiqa"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("error: crfiqa:") and "crfiqa_iresnet" in err[-1]
    assert not (tmp_path / "out" / "crfiqa.csv").exists()


def test_cli_bad_option_names_the_key(setup, capsys):
    _, cfg = setup
    assert run_main(score_cli.main, ["-c", str(cfg), "--method", "serfiq", "--set", "methods.serfiq.p=1.5"]) == 2
    err = capsys.readouterr().err
    assert "methods.serfiq" in err and "p: must be 'auto' or a number in [0, 1)" in err
