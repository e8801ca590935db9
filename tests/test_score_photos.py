"""Scoring photos with a saved observer (froq/score_photos.py, issue 14 points 1, 3 and 8):
templates named by FR configs, the aspect-ratio warning, lowest quality and flags under the
original names, the aligned-or-not decision, and run.sh's choice of target photos.

A tiny generated network (global pooling, so it takes 96×112 inputs) stands in for a
SphereFace/MobileFaceNet-style 96×112 model; the observer files are written by hand. Real faces
(a few LFW photos, skipped without ../shared) only where detection is needed.
"""

from __future__ import annotations

import csv
import json
import logging
import os

import numpy as np
import pytest
import torch
from PIL import Image

from face_recognition_model.loading import alignment_of, load_fr_config, load_fr_model
from face_recognition_model.registry import register_model
from face_recognition_model.templates import NAMED, template_from_config, template_from_record
from froq.core.cli import run_main
from froq.core.errors import FroqError
from froq.core.images import Preprocess
from froq.score_photos import main as score_main, score_photos, target_entries
from observer.inference import FAILURE_PERCENTILE, FAILURE_QUALITY, PhotoEntry
from observer.scale import scale_record

LFW_SAMPLES = ["Aaron_Pena/Aaron_Pena_0001.jpg", "Abdullah/Abdullah_0002.jpg",
               "Abdel_Madi_Shabneh/Abdel_Madi_Shabneh_0001.jpg"]


class TinyNet(torch.nn.Module):
    """Two convolutions, global pooling, a linear embedding: any input size."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.conv1 = torch.nn.Conv2d(3, 4, 3, stride=2)
        self.act1 = torch.nn.ReLU()
        self.conv2 = torch.nn.Conv2d(4, 8, 3, stride=2)
        self.pool = torch.nn.AdaptiveAvgPool2d(1)
        self.fc = torch.nn.Linear(8, 8)

    def forward(self, x):
        return self.fc(self.pool(self.conv2(self.act1(self.conv1(x)))).flatten(1))


@register_model("tiny_score_photos_net")
def _build_tiny(weights=None, **kwargs):
    return TinyNet().eval()


@pytest.fixture
def observer_96x112(tmp_path):
    """(observer JSON, FR config) of the tiny net as a 96×112 model (sphereface96x112)."""
    cfg = tmp_path / "fr96.yaml"
    cfg.write_text("model: {arch: tiny_score_photos_net, weights: random}\n"
                   "preprocess: {size: [112, 96], mean: 0.5, std: 0.5}\n"
                   "alignment: sphereface96x112\n")
    fr = load_fr_model(cfg)
    obs = tmp_path / "observer.json"
    obs.write_text(json.dumps({"selected_layers": ["conv1", "conv2"], "model": fr.identity(),
                               "alignment": fr.alignment().record(),
                               "scale": scale_record(np.linspace(5.0, 40.0, 11))}))
    return obs, cfg


def read_rows(path):
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


# -- templates in FR configs (point 8) -------------------------------------------------------------

def test_fr_config_names_its_alignment(tmp_path):
    def config(extra: str, size="112"):
        path = tmp_path / "fr.yaml"
        path.write_text(f"model: {{arch: tiny_score_photos_net, weights: random}}\n"
                        f"preprocess: {{size: {size}}}\n{extra}")
        return path

    assert template_from_config(None, (150, 150)).name == "dlib150"   # today's rule without the key
    assert template_from_config(None, (112, 112)).name == "arcface112"
    assert template_from_config(None, (112, 96)) is None
    sphere = load_fr_model(config("alignment: sphereface96x112\n", "[112, 96]")).alignment()
    assert (sphere.width, sphere.height) == (96, 112)
    assert np.allclose(np.array(sphere.points) + [8.0, 0.0], NAMED["arcface112"].points)
    custom = load_fr_model(config("alignment: {size: [64, 64], points: [[20, 25], [44, 25], [32, 36], "
                                  "[23, 48], [41, 48]]}\n", "64")).alignment()
    assert custom.name == "custom64x64" and template_from_record(custom.record()) == custom
    for bad, message in (("alignment: arcface96\n", "unknown alignment template"),
                         ("alignment: {size: 64, points: [[1, 2]]}\n", "five"),
                         ("alignment: {size: 64, points: [[20, 25], [44, 25], [32, 36], [23, 48], [80, 48]]}\n",
                          "outside"),
                         ("alignment: {size: 64, points: [[44, 25], [20, 25], [32, 36], [23, 48], [41, 48]]}\n",
                          "right eye"),
                         ("alignment: {size: 64, pts: []}\n", "unknown key")):
        with pytest.raises(FroqError, match=message):
            load_fr_config(config(bad, "64"))
    # a 112x112 template for a [112, 96] model would squash the faces: refused at load
    with pytest.raises(FroqError, match="squashed"):
        load_fr_config(config("alignment: arcface112\n", "[112, 96]"))


def test_shipped_configs_name_their_templates():
    from conftest import REPO

    names = {name: alignment_of(load_fr_config(REPO / "configs" / "fr" / f"{name}.yaml")).name
             for name in ("dlib_resnet", "adaface_ir101", "iresnet100", "onnx_example")}
    assert names == {"dlib_resnet": "dlib150", "adaface_ir101": "arcface112", "iresnet100": "arcface112",
                     "onnx_example": "arcface112"}


def test_preprocess_warns_once_when_the_aspect_ratio_changes(caplog):
    pre = Preprocess(size=(112, 96))
    with caplog.at_level(logging.WARNING):
        assert tuple(pre.to_uint8(Image.new("RGB", (96, 112))).shape) == (3, 112, 96)
        assert "aspect ratio" not in caplog.text          # same shape: nothing to say
        pre.to_uint8(Image.new("RGB", (192, 224)))
        assert "aspect ratio" not in caplog.text          # same aspect ratio, resized
        pre.to_uint8(Image.new("RGB", (112, 112)))
        pre.to_uint8(Image.new("RGB", (112, 112)))
    assert caplog.text.count("aspect ratio") == 1 and "112x112" in caplog.text


# -- lowest quality and flags (point 1) ------------------------------------------------------------

def test_photos_without_faces_get_the_lowest_quality_and_flags(observer_96x112, tmp_path):
    obs, _ = observer_96x112
    photos = tmp_path / "photos"
    (photos / "ann").mkdir(parents=True)
    Image.fromarray(np.full((150, 200, 3), 90, np.uint8)).save(photos / "ann" / "grey.jpg")
    (photos / "ann" / "broken.jpg").write_bytes(b"not a jpeg")
    out = tmp_path / "q.csv"
    summary = score_photos(obs, photos, out, device="cpu")
    rows = read_rows(out)
    assert [r["path"] for r in rows] == ["ann/broken.jpg", "ann/grey.jpg"]  # original names
    assert [r["flag"] for r in rows] == ["unreadable", "no_face"]
    assert all(float(r["quality"]) == FAILURE_QUALITY and float(r["percentile"]) == FAILURE_PERCENTILE
               for r in rows)
    assert summary["counts"]["no_face"] == 1 and "aligned to sphereface96x112" in summary["read_as"]
    meta = json.loads((tmp_path / "q.meta.json").read_text())
    assert meta["alignment"]["name"] == "sphereface96x112" and meta["failure_quality"] == -1.0


def test_aligned_faces_scored_as_they_are_and_warned_about(observer_96x112, tmp_path, capsys):
    obs, _ = observer_96x112
    chips = tmp_path / "chips"
    chips.mkdir()
    rng = np.random.default_rng(0)
    for name in ("a.png", "b.png", "c.png"):
        Image.fromarray(rng.integers(0, 255, (112, 96, 3), dtype=np.uint8)).save(chips / name)
    # chip-sized images whose faces are not at the template: refused unless told
    with pytest.raises(FroqError, match="--align to detect"):
        score_photos(obs, chips, tmp_path / "q.csv", device="cpu")
    code = run_main(score_main, [str(obs), str(chips), "-o", str(tmp_path / "q.csv"), "--aligned",
                                 "--device", "cpu"])
    assert code == 0 and "does not look aligned" in capsys.readouterr().err
    rows = read_rows(tmp_path / "q.csv")
    assert [r["flag"] for r in rows] == ["ok"] * 3
    q = np.array([float(r["quality"]) for r in rows])
    assert (q > 0).all() and (q > FAILURE_QUALITY).all()
    assert all(0 < float(r["percentile"]) < 100 for r in rows)


def test_run_targets_include_faceless_photos_of_target_identities(tmp_path):
    aligned, target = tmp_path / "aligned", tmp_path / "split" / "target"
    header = ["path", "output", "status"]
    rows = [["cal/c1.jpg", "cal/c1.png", "ok"], ["cal/c2.jpg", "", "no_face"],
            ["tgt/t1.jpg", "tgt/t1.png", "fallback"], ["tgt/t2.jpg", "", "no_face"],
            ["tgt/t3.jpg", "", "unreadable"], ["top.jpg", "", "no_face"],
            ["top_cal.jpg", "top_cal.png", "ok"]]  # a calibration chip at the top level: still keep top.jpg
    aligned.mkdir()
    with open(aligned / "landmarks.csv", "w", newline="") as fh:
        csv.writer(fh).writerows([header, *rows])
    (target / "tgt").mkdir(parents=True)
    Image.new("RGB", (8, 8)).save(target / "tgt" / "t1.png")
    got = target_entries(aligned, target)
    assert got == [PhotoEntry("tgt/t1.jpg", "tgt/t1.png", "fallback"), PhotoEntry("tgt/t2.jpg", None, "no_face"),
                   PhotoEntry("tgt/t3.jpg", None, "unreadable"), PhotoEntry("top.jpg", None, "no_face")]
    ids = tmp_path / "ids.txt"
    ids.write_text("cal\ntgt\n")  # an identities file decides for photos without a face
    assert [e.path for e in target_entries(aligned, target, ids)] == ["tgt/t1.jpg", "top.jpg"]


# -- real faces: align for the model, decide aligned or not (points 3 and 8) -----------------------

def test_photos_are_aligned_for_a_96x112_model_and_chips_recognised(observer_96x112, lfw_root, tmp_path):
    obs, cfg = observer_96x112
    photos = tmp_path / "photos"
    for rel in LFW_SAMPLES:
        (photos / rel).parent.mkdir(parents=True, exist_ok=True)
        os.symlink(lfw_root / "images" / rel, photos / rel)
    Image.fromarray(np.full((250, 250, 3), 128, np.uint8)).save(photos / "nobody.jpg")
    out = tmp_path / "out" / "q.csv"
    summary = score_photos(obs, photos, out, device="cpu")
    work = tmp_path / "out" / "q.aligned" / "sphereface96x112"
    rows = {r["path"]: r for r in read_rows(out)}
    assert sorted(rows) == sorted(LFW_SAMPLES + ["nobody.jpg"])
    assert rows["nobody.jpg"]["flag"] == "no_face" and float(rows["nobody.jpg"]["quality"]) == -1.0
    faces = [rows[r] for r in LFW_SAMPLES]
    assert all(r["flag"] == "ok" and float(r["quality"]) > 0 for r in faces)
    for rel in LFW_SAMPLES:  # 96 wide, 112 high: aligned for the model, nothing squashed
        assert Image.open(work / rel.replace(".jpg", ".png")).size == (96, 112)
    assert summary["counts"] == {"ok": 3, "fallback": 0, "no_face": 1, "unreadable": 0}
    # the chips themselves are recognised as aligned and score the same
    again = score_photos(obs, work, tmp_path / "q2.csv", device="cpu")
    assert again["read_as"].startswith("aligned faces")
    chip_rows = {r["path"]: float(r["quality"]) for r in read_rows(tmp_path / "q2.csv")}
    for rel in LFW_SAMPLES:
        assert chip_rows[rel.replace(".jpg", ".png")] == pytest.approx(float(rows[rel]["quality"]), rel=1e-6)
    # the photos merely resized to 96x112 are refused: they look like chips, but are not aligned
    resized = tmp_path / "resized"
    resized.mkdir()
    for rel in LFW_SAMPLES:
        Image.open(lfw_root / "images" / rel).resize((96, 112)).save(resized / os.path.basename(rel))
    with pytest.raises(FroqError, match="not where it puts them"):
        score_photos(obs, resized, tmp_path / "q3.csv", device="cpu")


def test_failure_quality_stays_below_negative_froq_plus_qualities(tmp_path, monkeypatch):
    """FROQ+ (standardised features) can score faces below -1: a failed face must still be lowest."""
    from types import SimpleNamespace

    from observer.inference import failure_quality, score_entries

    assert failure_quality(np.array([3.2, 12.0])) == FAILURE_QUALITY
    assert failure_quality(np.array([])) == FAILURE_QUALITY
    low = failure_quality(np.array([-2.4, 0.7]))
    assert low < -2.4 and low == -4.0
    # and the output takes it: a face scored -2.4 (stand-in for the observer's pass), one without a face
    scored = SimpleNamespace(paths=["a.png"], columns=["quality"], values=np.array([[-2.4]]))
    monkeypatch.setattr("observer.inference.froq_qualities", lambda *a, **k: scored)
    scores = score_entries(None, {}, tmp_path, [PhotoEntry("a.jpg", "a.png", "ok"), PhotoEntry("b.jpg", None, "no_face")])
    scores.write(tmp_path / "q.csv")
    assert [float(r["quality"]) for r in read_rows(tmp_path / "q.csv")] == [-2.4, -4.0]
