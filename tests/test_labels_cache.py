"""Finished pseudo-labels are reused by a later run on the same images with the same model and
settings, and only then (baselineFIQA/cache.py); the labels stage and run.sh go through it."""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from baselineFIQA import cache
from baselineFIQA import labels as labels_mod
from baselineFIQA.labels import COLUMNS, compute_pseudo_labels
from froq.core.io import read_json
from stage_helpers import run_in_process
from test_observer import SIZE, tiny_fr

SETTINGS = dict(alphas=[0.001], noise_count=2, mpx=8, seed=0)


@pytest.fixture
def labels_cache(tmp_path, monkeypatch) -> Path:
    monkeypatch.setenv("FROQ_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache" / "labels"


def _faces(root: Path, n: int = 4, seed: int = 0) -> Path:
    rng = np.random.default_rng(seed)
    for i in range(n):
        (root / f"id_{i}").mkdir(parents=True, exist_ok=True)
        Image.fromarray(rng.integers(0, 256, (SIZE, SIZE, 3), dtype=np.uint8)).save(root / f"id_{i}/{i}.png")
    return root


def _model(sha="a" * 64):
    return dataclasses.replace(tiny_fr(), weights_sha256=sha)


def _labels(fr, root, calls, **overrides):
    """``cached_pseudo_labels`` with a counting compute; returns (result, reused-from)."""
    s = {**SETTINGS, **overrides}

    def compute():
        calls.append(1)
        return compute_pseudo_labels(fr, root, batch_size=2, alphas=s["alphas"], mpx=s["mpx"],
                                     seed=s["seed"], noise_count=s["noise_count"])

    key = cache.label_settings_key(fr, s["alphas"], s["noise_count"], s["mpx"], s["seed"])
    return cache.cached_pseudo_labels(fr, root, key, COLUMNS[1:], compute)


def test_hit_on_the_same_images_model_and_settings(labels_cache, tmp_path):
    faces = _faces(tmp_path / "faces")
    fr, calls = _model(), []
    first, reused = _labels(fr, faces, calls)
    assert calls == [1] and reused is None
    assert len(list(labels_cache.glob("*.csv"))) == 1 and len(list(labels_cache.glob("*.meta.json"))) == 1
    second, reused = _labels(fr, faces, calls)
    assert calls == [1] and reused is not None and reused.parent == labels_cache
    assert second.paths == first.paths and np.array_equal(second.values, first.values)  # bit-exact
    # a byte-identical copy of the set elsewhere is the same calibration set
    copy = tmp_path / "elsewhere"
    for p in first.paths:
        (copy / p).parent.mkdir(parents=True, exist_ok=True)
        (copy / p).write_bytes((faces / p).read_bytes())
    third, reused = _labels(fr, copy, calls)
    assert calls == [1] and np.array_equal(third.values, first.values)


@pytest.mark.parametrize("change", ["image", "added image", "model", "preprocess", "mpx", "noise_count",
                                    "seed", "channels_last"])
def test_miss_when_anything_the_labels_depend_on_changes(labels_cache, tmp_path, change):
    faces = _faces(tmp_path / "faces")
    fr, calls = _model(), []
    _labels(fr, faces, calls)
    overrides = {}
    if change == "image":
        arr = np.asarray(Image.open(faces / "id_1/1.png")).copy()
        arr[0, 0] ^= 1  # one pixel's lowest bit
        Image.fromarray(arr).save(faces / "id_1/1.png")
    elif change == "added image":
        _faces(faces, n=5, seed=0)  # rewrites the four (same bytes) and adds id_4/4.png
    elif change == "model":
        fr = _model("b" * 64)
    elif change == "preprocess":
        fr = dataclasses.replace(fr, preprocess=dataclasses.replace(fr.preprocess, mean=(0.4, 0.5, 0.5)))
    elif change == "channels_last":
        key = cache.label_settings_key(fr, **SETTINGS, channels_last=False)
        assert key != cache.label_settings_key(fr, **SETTINGS, channels_last=True)
        return
    else:
        overrides = {change: {"mpx": 4, "noise_count": 3, "seed": 1}[change]}
    _, reused = _labels(fr, faces, calls, **overrides)
    assert reused is None and calls == [1, 1]
    assert len(list(labels_cache.glob("*.csv"))) == 2  # the new labels are cached beside the old


def test_a_damaged_entry_is_not_used(labels_cache, tmp_path, caplog):
    faces = _faces(tmp_path / "faces")
    fr, calls = _model(), []
    first, _ = _labels(fr, faces, calls)
    entry = next(labels_cache.glob("*.csv"))
    text = entry.read_text().splitlines()
    row = text[1].split(",")
    row[-1] = "0.5"  # an edited label
    entry.write_text("\n".join([text[0], ",".join(row), *text[2:]]) + "\n")
    with caplog.at_level(logging.WARNING):
        again, reused = _labels(fr, faces, calls)
    assert reused is None and calls == [1, 1] and "damaged entry" in caplog.text
    assert np.array_equal(again.values, first.values)


def test_no_cache_without_weights_identity_or_when_switched_off(tmp_path, monkeypatch):
    faces = _faces(tmp_path / "faces")
    monkeypatch.setenv("FROQ_CACHE", str(tmp_path / "cache"))
    calls = []
    _labels(tiny_fr(), faces, calls)  # generated weights: no sha256
    _labels(tiny_fr(), faces, calls)
    assert calls == [1, 1] and not (tmp_path / "cache").exists()
    monkeypatch.setenv("FROQ_CACHE", "off")
    assert cache.cache_folder() is None
    _labels(_model(), faces, calls)
    _labels(_model(), faces, calls)
    assert calls == [1, 1, 1, 1]
    monkeypatch.delenv("FROQ_CACHE")
    assert cache.cache_folder() == Path.home() / ".cache" / "froq" / "labels"


def test_labels_stage_reuses_labels_of_another_run(labels_cache, tmp_path, monkeypatch, capsys):
    """The stage command (and so run.sh, which calls it) with dlib's real weights: a second run
    into another output computes nothing and writes the same CSV."""
    from baselineFIQA.main import main as labels_main
    from face_recognition_model.dlib_resnet import default_weights_path
    from froq.core.errors import FroqError

    try:
        default_weights_path()
    except FroqError as exc:
        pytest.skip(str(exc))

    repo = Path(__file__).resolve().parents[1]
    faces = tmp_path / "faces"
    rng = np.random.default_rng(3)
    for i in range(2):
        (faces / f"p{i}").mkdir(parents=True)
        Image.fromarray(rng.integers(0, 256, (150, 150, 3), dtype=np.uint8)).save(faces / f"p{i}/{i}.png")
    argv = ["-c", str(repo / "configs/baseline.yaml"),
            "--set", f"face_recognition_config={repo / 'configs/fr/dlib_resnet.yaml'}", "--set", "device=cpu",
            "--set", f"dataset.path={faces}", "--set", "dataset.image_size=150", "--set", "dataset.mpx=75",
            "--set", "dataset.noise_count=1"]
    run_in_process(labels_main, argv + ["--set", f"outpath={tmp_path / 'a/labels.csv'}"])
    assert "reused" not in capsys.readouterr().out

    def no_forward(*_a, **_k):
        raise AssertionError("the labels were computed again")

    monkeypatch.setattr(labels_mod.PseudoLabeler, "score", no_forward)
    run_in_process(labels_main, argv + ["--set", f"outpath={tmp_path / 'b/labels.csv'}"])
    out = capsys.readouterr().out
    assert "reused from the labels cache" in out and str(labels_cache) in out
    assert (tmp_path / "a/labels.csv").read_bytes() == (tmp_path / "b/labels.csv").read_bytes()
    assert read_json(tmp_path / "b/labels.meta.json")["reused_from"].startswith(str(labels_cache))
