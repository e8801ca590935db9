"""Robustness of the three stage CLIs against real-world input folders and files.

baselineFIQA/main.py (pseudo-labels), observer/initialization.py and observer/inference.py are run
in-process through ``froq.core.cli.run_main`` with AdaFace IR-18 and random weights (``weights: random``,
seeded by the stage), so nothing outside the repository is needed. Pseudo-labels are run with cheap
constants (``dataset.mpx=56`` → 4 occlusion masks, ``dataset.noise_count=2``) and 3–7 images.

Covered: unreadable files (truncated JPEG, zero bytes, text named .jpg) skipped, warned, listed in
the summary line and the ``.meta.json``/``unreadable`` list; grayscale/RGBA/palette/16-bit images
scored; upper-case extensions and nested folders found, sorted, relative paths; empty folder,
unreadable-only folder, missing weights, label files that lack images or match none, constant layers
(undefined Spearman) through the CLI, foreign/invalid observer files, resume from ``.partial``
files (planted sentinel values are reused, other settings discard them), and atomic outputs.
"""

from __future__ import annotations

import contextlib
import csv
import io
import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

import froq.core.io
from baselineFIQA import labels as labels_mod
from baselineFIQA import main as baseline_cli
from face_recognition_model import registry
from froq.core.cli import run_main
from froq.core.errors import FroqError
from froq.core.io import RowLog
from observer import inference as inference_cli
from observer import initialization as init_cli
from observer.hooks import NormRecorder
from stage_helpers import error_line

STAGES = {"baseline": baseline_cli.main, "init": init_cli.main, "inference": inference_cli.main}
FR_YAML = ("model: {arch: adaface_ir_18, weights: random}\n"
           "preprocess: {size: 112, mean: 0.5, std: 0.5, channels: [2, 1, 0]}\n")
WEIGHTS_URL = "https://github.com/mk-minchul/AdaFace"

READABLE = ["Alice/Alice_0001.jpg", "Alice/Alice_0002.JPG", "Bob/Bob_0001.PNG",
            "Bob/extra/Bob_0002.png", "Carol/Carol_0001.png", "Carol/Carol_0002.png",
            "Dave/Dave_0001.png"]
BROKEN = {"Eve/Eve_0001.jpg": "truncated", "Eve/Eve_0002.jpg": "zero bytes", "Eve/Eve_0003.jpg": "text"}


# -- helpers ------------------------------------------------------------------------------------

def _face(seed: int, size: int = 112) -> np.ndarray:
    """A smooth random 'face' (random images of the same statistics all score alike)."""
    rng = np.random.default_rng(seed)
    small = rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)
    return np.asarray(Image.fromarray(small).resize((size, size), Image.BICUBIC))


def make_mixed_folder(root: Path) -> Path:
    """The README's odd-folder zoo: JPEG/.JPG, nested PNGs, gray, RGBA, palette, 16-bit, 3 broken."""
    arrays = {rel: _face(i) for i, rel in enumerate(READABLE)}
    for rel in READABLE:
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(arrays["Alice/Alice_0001.jpg"]).save(root / "Alice/Alice_0001.jpg", format="JPEG")
    Image.fromarray(arrays["Alice/Alice_0002.JPG"]).save(root / "Alice/Alice_0002.JPG", format="JPEG")
    Image.fromarray(arrays["Bob/Bob_0001.PNG"]).save(root / "Bob/Bob_0001.PNG", format="PNG")
    Image.fromarray(arrays["Bob/extra/Bob_0002.png"]).convert("L").save(root / "Bob/extra/Bob_0002.png")
    rgba = Image.fromarray(arrays["Carol/Carol_0001.png"]).convert("RGBA")
    rgba.putalpha(Image.fromarray(np.tile(np.linspace(0, 255, 112, dtype=np.uint8), (112, 1))))
    rgba.save(root / "Carol/Carol_0001.png")
    Image.fromarray(arrays["Carol/Carol_0002.png"]).convert("P", palette=Image.ADAPTIVE).save(
        root / "Carol/Carol_0002.png")
    sixteen = (arrays["Dave/Dave_0001.png"][..., 1].astype(np.uint16) * 257)
    Image.fromarray(sixteen).save(root / "Dave/Dave_0001.png")
    assert Image.open(root / "Dave/Dave_0001.png").mode.startswith("I")
    assert Image.open(root / "Carol/Carol_0002.png").mode == "P"
    # the broken ones
    (root / "Eve").mkdir(parents=True, exist_ok=True)
    buf = io.BytesIO()
    Image.fromarray(_face(99)).save(buf, format="JPEG")
    (root / "Eve/Eve_0001.jpg").write_bytes(buf.getvalue()[: len(buf.getvalue()) // 2])
    (root / "Eve/Eve_0002.jpg").write_bytes(b"")
    (root / "Eve/Eve_0003.jpg").write_text("this is not a picture\n")
    (root / "notes.txt").write_text("ignored: not an image name\n")
    return root


def make_plain_folder(root: Path, n: int, seed: int = 100) -> Path:
    """``n`` RGB PNGs ``P{k}/P{k}_0001.png`` (k = 0..n-1)."""
    for k in range(n):
        (root / f"P{k}").mkdir(parents=True, exist_ok=True)
        Image.fromarray(_face(seed + k)).save(root / f"P{k}/P{k}_0001.png")
    return root


def write_configs(base: Path, fr_yaml: str = FR_YAML) -> dict[str, Path]:
    """A config per stage under ``base`` (paths filled in with --set by the tests)."""
    fr = base / "fr.yaml"
    fr.write_text(fr_yaml)
    common = f"face_recognition_config: {fr}\ndevice: cpu\n"
    out = {"fr": fr}
    texts = {"baseline": common + "dataset: {path: faces, batch_size: 4}\noutpath: out/labels.csv\n",
             "init": common + "dataset: {path: faces, batch_size: 4}\nlabel_location: out/labels.csv\n"
                              "outpath: out/observer.json\n",
             "inference": common + "target_dataset: faces\nbatch_size: 4\nobserver_data: out/observer.json\n"
                                   "outpath: out/q.csv\n"}
    for name, text in texts.items():
        out[name] = base / f"{name}.yaml"
        out[name].write_text(text)
    return out


def cli(stage: str, cfg: Path, *sets: str, extra=()) -> tuple[int, str, str]:
    """Run a stage in-process with ``--set`` items; returns (exit code, stdout, stderr)."""
    argv = ["-c", str(cfg)] + [a for s in sets for a in ("--set", s)] + list(extra)
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        rc = run_main(STAGES[stage], argv)
    return rc, out.getvalue(), err.getvalue()




def read_rows(path: Path) -> list[dict[str, str]]:
    with open(path, newline="", encoding="utf-8") as fh:
        return list(csv.DictReader(fh))


def read_partial(path: Path) -> tuple[str, list[list[str]]]:
    """(stamp line, rows incl. header) of a ``.partial`` resume log."""
    text = path.read_text(encoding="utf-8")
    stamp, _, body = text.partition("\n")
    return stamp, list(csv.reader(io.StringIO(body)))


def write_partial(path: Path, stamp: str, rows: list[list[str]]) -> None:
    with open(path, "w", newline="", encoding="utf-8") as fh:
        fh.write(stamp + "\n")
        csv.writer(fh, lineterminator="\n").writerows(rows)


def no_temp_files(folder: Path) -> bool:
    return not any(p.name.endswith(".tmp") for p in folder.rglob("*"))


# -- the happy path on the odd folder (one run of each stage, shared) ---------------------------

@pytest.fixture(scope="module")
def pipeline(tmp_path_factory):
    """labels → observer → qualities on the mixed folder; every result and console text."""
    base = tmp_path_factory.mktemp("stage_inputs")
    faces = make_mixed_folder(base / "faces")
    cfgs = write_configs(base)
    out = base / "out"
    res = {"base": base, "faces": faces, "cfgs": cfgs, "out": out}
    res["labels"] = cli("baseline", cfgs["baseline"], f"dataset.path={faces}", f"outpath={out}/labels.csv",
                        "dataset.mpx=56", "dataset.noise_count=2")
    res["init"] = cli("init", cfgs["init"], f"dataset.path={faces}", f"label_location={out}/labels.csv",
                      f"outpath={out}/observer.json", "top_n=4")
    res["inference"] = cli("inference", cfgs["inference"], f"target_dataset={faces}",
                           f"observer_data={out}/observer.json", f"outpath={out}/q.csv")
    return res


def test_labels_skip_unreadable_and_score_every_mode(pipeline):
    rc, stdout, stderr = pipeline["labels"]
    assert rc == 0, stderr
    out = pipeline["out"]
    rows = read_rows(out / "labels.csv")
    assert [r["path"] for r in rows] == sorted(READABLE)  # .JPG/.PNG/nested found, sorted, relative
    for r in rows:
        assert not Path(r["path"]).is_absolute() and "\\" not in r["path"]
        values = [float(r[c]) for c in ("flip", "noise", "occlusion", "quality")]
        assert all(math.isfinite(v) for v in values), r
        assert abs(values[3] - sum(values[:3]) / 3) < 1e-6
    meta = json.loads((out / "labels.meta.json").read_text())
    assert meta["images"] == len(READABLE)
    assert sorted(u["path"] for u in meta["unreadable"]) == sorted(BROKEN)
    assert all(u["reason"] and "\n" not in u["reason"] for u in meta["unreadable"])
    # one summary line on stdout that names the skipped files
    summary = [line for line in stdout.splitlines() if line.startswith("pseudo-labels:")]
    assert len(summary) == 1
    assert f"({len(READABLE)} images; 3 unreadable image(s) skipped:" in summary[0]
    assert all(name in summary[0] for name in BROKEN)
    for name in BROKEN:  # and one warning per skipped file
        assert sum(f"skipped unreadable image {name}" in line for line in stderr.splitlines()) == 1
    assert not (out / "labels.csv.partial").exists() and no_temp_files(out)


def test_labels_of_converted_modes_match_their_rgb_versions(pipeline, tmp_path):
    """Gray/RGBA/P/16-bit files score like the RGB image load_rgb makes of them (no mode quirks)."""
    from froq.core.images import load_rgb

    odd = ["Bob/extra/Bob_0002.png", "Carol/Carol_0001.png", "Carol/Carol_0002.png", "Dave/Dave_0001.png"]
    rgb = tmp_path / "rgb"
    for rel in odd:
        (rgb / rel).parent.mkdir(parents=True, exist_ok=True)
        load_rgb(pipeline["faces"] / rel).save(rgb / rel)
    rc, _, err = cli("inference", pipeline["cfgs"]["inference"], f"target_dataset={rgb}",
                     f"observer_data={pipeline['out']}/observer.json", f"outpath={tmp_path}/q.csv")
    assert rc == 0, err
    want = {r["path"]: float(r["quality"]) for r in read_rows(pipeline["out"] / "q.csv")}
    got = {r["path"]: float(r["quality"]) for r in read_rows(tmp_path / "q.csv")}
    assert set(got) == set(odd)
    for rel in odd:
        assert got[rel] == pytest.approx(want[rel], rel=1e-5, abs=1e-6), rel


def test_init_leaves_out_unlabelled_and_lists_nothing_unreadable(pipeline):
    rc, stdout, stderr = pipeline["init"]
    assert rc == 0, stderr
    obs = json.loads((pipeline["out"] / "observer.json").read_text())
    assert obs["calibration"]["images"] == len(READABLE)
    assert obs["selected_layers"] and set(obs["selected_layers"]) <= set(obs["candidates"])
    assert obs["unreadable"] == []
    assert f"3 of {len(READABLE) + 3} images in" in stderr and "have no label" in stderr
    assert stdout.startswith("observer: ") and "calibration images; selected" in stdout
    assert not (pipeline["out"] / "observer.json.partial").exists()


def test_inference_flags_unreadable_and_scores_the_rest(pipeline):
    """As ``froq score-photos``: an unreadable image keeps its row at the lowest quality."""
    rc, stdout, stderr = pipeline["inference"]
    assert rc == 0, stderr
    out = pipeline["out"]
    rows = {r["path"]: r for r in read_rows(out / "q.csv")}
    assert list(rows) == sorted(READABLE + list(BROKEN))
    assert all(math.isfinite(float(rows[p]["quality"])) and float(rows[p]["quality"]) > 0
               and rows[p]["flag"] == "ok" for p in READABLE)
    assert all(float(rows[p]["quality"]) == -1 and rows[p]["flag"] == "unreadable" for p in BROKEN)
    meta = json.loads((out / "q.meta.json").read_text())
    assert meta["images"] == len(READABLE)
    assert sorted(u["path"] for u in meta["unreadable"]) == sorted(BROKEN)
    summary = [line for line in stdout.splitlines() if line.startswith("qualities:")]
    assert len(summary) == 1 and "3 unreadable image(s) skipped" in summary[0]
    assert all(name in summary[0] for name in BROKEN)
    assert not (out / "q.csv.partial").exists() and no_temp_files(out)


# -- folders that hold nothing usable -----------------------------------------------------------

def _stage_args(stage, pipeline, folder, out, fast=("dataset.mpx=56", "dataset.noise_count=2")):
    """``--set`` items pointing ``stage`` at ``folder`` with the pipeline's labels / observer."""
    if stage == "baseline":
        return [f"dataset.path={folder}", f"outpath={out}/labels.csv", *fast]
    if stage == "init":
        return [f"dataset.path={folder}", f"label_location={pipeline['out']}/labels.csv",
                f"outpath={out}/observer.json"]
    return [f"target_dataset={folder}", f"observer_data={pipeline['out']}/observer.json",
            f"outpath={out}/q.csv"]


@pytest.mark.parametrize("stage", STAGES)
def test_empty_folder_is_one_error_line(stage, pipeline, tmp_path):
    empty = tmp_path / "empty"
    (empty / "sub").mkdir(parents=True)
    (empty / "readme.txt").write_text("no images")
    rc, _, err = cli(stage, pipeline["cfgs"][stage], *_stage_args(stage, pipeline, empty, tmp_path / "out"))
    error_line(rc, err, "no images", str(empty))
    assert not (tmp_path / "out").exists() or not any(p.suffix in (".csv", ".json")
                                                      for p in (tmp_path / "out").iterdir())


@pytest.mark.parametrize("stage", ["baseline", "inference"])
def test_folder_of_unreadable_files_is_an_error_not_an_empty_csv(stage, pipeline, tmp_path):
    broken = tmp_path / "broken"
    broken.mkdir()
    for name in BROKEN:
        (broken / Path(name).name).write_bytes((pipeline["faces"] / name).read_bytes())
    rc, _, err = cli(stage, pipeline["cfgs"][stage], *_stage_args(stage, pipeline, broken, tmp_path / "out"))
    error_line(rc, err, str(broken), "none of the 3 image(s) could be read", "Eve_0001.jpg")
    assert not list((tmp_path / "out").glob("*.csv")) and not list((tmp_path / "out").glob("*.json"))


def test_missing_folder_is_one_error_line(pipeline, tmp_path):
    rc, _, err = cli("baseline", pipeline["cfgs"]["baseline"],
                     *_stage_args("baseline", pipeline, tmp_path / "nowhere", tmp_path / "out"))
    error_line(rc, err, f"image folder not found: {tmp_path / 'nowhere'}")


# -- missing weights ----------------------------------------------------------------------------

@pytest.mark.parametrize("stage", STAGES)
def test_missing_weights_names_file_and_where_to_get_them(stage, pipeline, tmp_path):
    fr = tmp_path / "fr_missing.yaml"
    fr.write_text("model:\n  arch: adaface_ir_18\n  weights: weights/adaface_ir18_nowhere.ckpt\n"
                  f"  source: \"{WEIGHTS_URL} (README, 'Pretrained Models')\"\n"
                  "preprocess: {size: 112, mean: 0.5, std: 0.5, channels: [2, 1, 0]}\n")
    rc, _, err = cli(stage, pipeline["cfgs"][stage], f"face_recognition_config={fr}",
                     *_stage_args(stage, pipeline, pipeline["faces"], tmp_path / "out"))
    error_line(rc, err, str(fr), "weights/adaface_ir18_nowhere.ckpt", WEIGHTS_URL)


# -- label files at init ------------------------------------------------------------------------

def _write_labels(path: Path, rows: list[tuple[str, float]]) -> Path:
    with open(path, "w", newline="", encoding="utf-8") as fh:
        w = csv.writer(fh)
        w.writerow(["path", "flip", "noise", "occlusion", "quality"])
        for p, q in rows:
            w.writerow([p, q, q, q, q])
    return path


def test_label_file_lacking_images_uses_the_intersection(pipeline, tmp_path):
    labels = {r["path"]: float(r["quality"]) for r in read_rows(pipeline["out"] / "labels.csv")}
    kept = sorted(labels)[:5]  # two readable images lose their label
    rows = [(p, labels[p]) for p in kept] + [("Zed/Zed_0001.jpg", 0.5),  # a label without image
                                             ("Eve/Eve_0001.jpg", 0.4)]  # a label of a broken file
    lab = _write_labels(tmp_path / "labels.csv", rows)
    rc, stdout, err = cli("init", pipeline["cfgs"]["init"], f"dataset.path={pipeline['faces']}",
                          f"label_location={lab}", f"outpath={tmp_path}/observer.json")
    assert rc == 0, err
    obs = json.loads((tmp_path / "observer.json").read_text())
    assert obs["calibration"]["images"] == 5
    assert [u["path"] for u in obs["unreadable"]] == ["Eve/Eve_0001.jpg"]
    assert "4 of 10 images" in err and "have no label" in err  # 2 readable + 2 broken unlabelled
    assert "1 labels in" in err and "Zed/Zed_0001.jpg" in err
    assert "skipped unreadable image Eve/Eve_0001.jpg" in err
    assert "1 unreadable image(s) skipped: Eve/Eve_0001.jpg" in stdout


@pytest.mark.parametrize("rows", [
    [("x/1.jpg", 0.1), ("x/2.jpg", 0.2), ("x/3.jpg", 0.3)],
    [("/abs/Alice/Alice_0001.jpg", 0.1), ("faces/Alice/Alice_0002.JPG", 0.2)],
    [],
])
def test_label_file_matching_nothing_is_a_clear_error(rows, pipeline, tmp_path):
    lab = _write_labels(tmp_path / "labels.csv", rows)
    rc, _, err = cli("init", pipeline["cfgs"]["init"], f"dataset.path={pipeline['faces']}",
                     f"label_location={lab}", f"outpath={tmp_path}/observer.json")
    error_line(rc, err, str(lab), "only 0 of its paths match images under", str(pipeline["faces"]))
    assert not (tmp_path / "observer.json").exists()


def test_label_file_problems_are_one_line(pipeline, tmp_path):
    faces = pipeline["faces"]
    args = [f"dataset.path={faces}", f"outpath={tmp_path}/observer.json"]
    rc, _, err = cli("init", pipeline["cfgs"]["init"], *args, f"label_location={tmp_path}/none.csv")
    error_line(rc, err, f"{tmp_path}/none.csv", "baselineFIQA/main.py")
    rc, _, err = cli("init", pipeline["cfgs"]["init"], *args,
                     f"label_location={pipeline['out']}/labels.csv", "label_column=sharpness")
    error_line(rc, err, "labels.csv", "missing column(s) sharpness", "found path, flip")
    nan = _write_labels(tmp_path / "nan.csv", [(p, float("nan") if i == 2 else 0.1 * i)
                                               for i, p in enumerate(READABLE)])
    rc, _, err = cli("init", pipeline["cfgs"]["init"], *args, f"label_location={nan}")
    error_line(rc, err, str(nan), "not finite", READABLE[2])
    bad = tmp_path / "bad.csv"
    bad.write_text("path,quality\nAlice/Alice_0001.jpg,high\n")
    rc, _, err = cli("init", pipeline["cfgs"]["init"], *args, f"label_location={bad}")
    error_line(rc, err, f"{bad}:2", "'quality' is not a number")
    bom = tmp_path / "bom.csv"  # a label file saved by a spreadsheet (UTF-8 with BOM) is fine
    bom.write_bytes(b"\xef\xbb\xbf" + (pipeline["out"] / "labels.csv").read_bytes())
    rc, _, err = cli("init", pipeline["cfgs"]["init"], *args, f"label_location={bom}")
    assert rc == 0, err


# -- a constant layer (undefined Spearman) through the CLI --------------------------------------

class _Zero(nn.Module):
    def forward(self, x):
        return x * 0


class _Constant(nn.Module):
    def __init__(self):
        super().__init__()
        self.register_buffer("value", torch.ones(1, 8))

    def forward(self, x):
        return self.value.expand(x.shape[0], -1)


class _TinyFR(nn.Module):
    """conv → relu → (zero side branch) → pool → fc, plus a constant-output module."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 5, stride=4)
        self.act = nn.ReLU()
        self.zero = _Zero()
        self.const = _Constant()
        self.pool = nn.AdaptiveAvgPool2d(2)
        self.fc = nn.Linear(32, 16)

    def forward(self, x):
        h = self.act(self.conv(x))
        h = h + self.zero(h)
        e = self.fc(self.pool(h).flatten(1))
        return e + 0 * self.const(e).sum(dim=1, keepdim=True)


TINY_FR = ("model: {arch: test_tiny_constant, weights: random}\n"
           "preprocess: {size: 32, mean: 0.5, std: 0.5, channels: [0, 1, 2]}\n")
TINY_FAST = ["dataset.mpx=16", "dataset.noise_count=2"]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """A tiny registered FR model (with a zeroing and a constant module) calibrated on 6 images:
    configs, folder, labels and observer; the plumbing tests use it to stay fast."""
    registry._REGISTRY["test_tiny_constant"] = lambda weights=None, **kw: _TinyFR()
    try:
        base = tmp_path_factory.mktemp("tiny")
        cfgs = write_configs(base, TINY_FR)
        faces = make_plain_folder(base / "faces", 6)
        out = base / "out"
        res = {"base": base, "cfgs": cfgs, "faces": faces, "out": out}
        res["labels"] = cli("baseline", cfgs["baseline"], f"dataset.path={faces}",
                            f"outpath={out}/labels.csv", *TINY_FAST)
        res["init"] = cli("init", cfgs["init"], f"dataset.path={faces}", f"label_location={out}/labels.csv",
                          f"outpath={out}/observer.json", "top_n=10")
        yield res
    finally:
        registry._REGISTRY.pop("test_tiny_constant", None)


def test_constant_layers_get_no_utility_and_the_run_completes(tiny):
    assert tiny["labels"][0] == 0, tiny["labels"][2]
    rc, stdout, err = tiny["init"]
    assert rc == 0, err
    out = tiny["out"]
    obs = json.loads((out / "observer.json").read_text())
    utility = {entry["name"]: entry["utility"] for entry in obs["layers"]}
    assert utility["zero"] is None and utility["const"] is None
    assert all(utility[n] is not None for n in ("conv", "act", "pool", "fc"))
    for name in ("zero", "const"):
        assert name not in obs["candidates"] and name not in obs["selected_layers"]
    assert "have no utility" in err and "selected" in stdout
    rc, _, err = cli("inference", tiny["cfgs"]["inference"], f"target_dataset={tiny['faces']}",
                     f"observer_data={out}/observer.json", f"outpath={out}/q.csv")
    assert rc == 0, err
    assert len(read_rows(out / "q.csv")) == 6


# -- observer files that do not fit -------------------------------------------------------------

def _observer_variant(pipeline, tmp_path, change) -> Path:
    obs = json.loads((pipeline["out"] / "observer.json").read_text())
    change(obs)
    path = tmp_path / "observer_variant.json"
    path.write_text(json.dumps(obs))
    return path


@pytest.mark.parametrize("change, needles", [
    (lambda o: o["model"].update(arch="iresnet50"), ["initialised on 'iresnet50'", "adaface_ir_18"]),
    (lambda o: o.pop("selected_layers"), ["no 'selected_layers' list"]),
    (lambda o: o.update(selected_layers=[]), ["no 'selected_layers' list"]),
    (lambda o: o.update(selected_layers="body.0"), ["no 'selected_layers' list"]),
    (lambda o: (o.pop("model"), o.update(selected_layers=["features.3", "body.0"])),
     ["features.3", "do not exist in adaface_ir_18"]),
])
def test_foreign_or_invalid_observer_file(change, needles, pipeline, tmp_path):
    path = _observer_variant(pipeline, tmp_path, change)
    rc, _, err = cli("inference", pipeline["cfgs"]["inference"], f"target_dataset={pipeline['faces']}",
                     f"observer_data={path}", f"outpath={tmp_path}/q.csv")
    error_line(rc, err, str(path), *needles)
    assert not (tmp_path / "q.csv").exists()


@pytest.mark.parametrize("content", [b"", b"[1, 2]", b"{\"selected_layers\": [", b"\xff\xd8\xff\xe0 jpeg"])
def test_observer_file_not_an_observer(content, pipeline, tmp_path):
    path = tmp_path / "obs.json"
    path.write_bytes(content)
    rc, _, err = cli("inference", pipeline["cfgs"]["inference"], f"target_dataset={pipeline['faces']}",
                     f"observer_data={path}", f"outpath={tmp_path}/q.csv")
    error_line(rc, err, str(path))


# -- resume and atomic outputs ------------------------------------------------------------------

SENTINEL = "12345.5"


class _Crash(RuntimeError):
    pass


def _crash_on_call(monkeypatch, owner, name, call_no):
    """Make ``owner.name`` raise on its ``call_no``-th call; returns the list of batch sizes seen."""
    original = getattr(owner, name)
    seen = []

    def wrapper(self, *args):
        batch = args[-1]
        seen.append(int(batch.shape[0]))
        if len(seen) == call_no:
            raise _Crash("simulated crash")
        return original(self, *args)

    monkeypatch.setattr(owner, name, wrapper)
    return seen


def test_labels_resume_reuses_partial_rows_and_discards_other_settings(tiny, monkeypatch, tmp_path):
    cfgs = tiny["cfgs"]
    faces = make_plain_folder(tmp_path / "faces", 4)
    names = sorted(f"P{k}/P{k}_0001.png" for k in range(4))
    args = [f"dataset.path={faces}", "dataset.batch_size=2", *TINY_FAST]
    rc, _, err = cli("baseline", cfgs["baseline"], *args, f"outpath={tmp_path}/ref/labels.csv")
    assert rc == 0, err
    ref = {r["path"]: r for r in read_rows(tmp_path / "ref/labels.csv")}

    out = tmp_path / "out" / "labels.csv"
    with monkeypatch.context() as m:  # interrupted in the second batch
        _crash_on_call(m, labels_mod.PseudoLabeler, "score", 2)
        with pytest.raises(_Crash):
            cli("baseline", cfgs["baseline"], *args, f"outpath={out}")
    assert not out.exists() and not out.with_suffix(".meta.json").exists()  # nothing half-written
    partial = Path(str(out) + ".partial")
    stamp, rows = read_partial(partial)
    assert stamp.startswith("# froq-partial ") and rows[0] == ["path", "file", *labels_mod.COLUMNS[1:]]
    assert [r[0] for r in rows[1:]] == names[:2]
    assert float(rows[1][5]) == pytest.approx(float(ref[names[0]]["quality"]), abs=1e-6)
    rows[1][5] = SENTINEL  # plant a value nobody would compute
    write_partial(partial, stamp, rows)
    planted = partial.read_bytes()

    with monkeypatch.context() as m:
        seen = _crash_on_call(m, labels_mod.PseudoLabeler, "score", 0)
        rc, _, err = cli("baseline", cfgs["baseline"], *args, f"outpath={out}")
    assert rc == 0, err
    assert sum(seen) == 2  # only the two images after the partial rows were computed
    got = {r["path"]: r for r in read_rows(out)}
    assert list(got) == names and got[names[0]]["quality"] == SENTINEL
    for p in names[1:]:
        assert float(got[p]["quality"]) == pytest.approx(float(ref[p]["quality"]), abs=1e-6)
    assert not partial.exists()

    partial.write_bytes(planted)  # the same partial, but the run now has other constants
    with monkeypatch.context() as m:
        seen = _crash_on_call(m, labels_mod.PseudoLabeler, "score", 0)
        rc, _, err = cli("baseline", cfgs["baseline"], *args, "dataset.noise_count=3", f"outpath={out}")
    assert rc == 0, err
    assert "written with other settings; starting over" in err and sum(seen) == 4
    assert SENTINEL not in out.read_text() and not partial.exists()


def test_inference_resume_reuses_partial_rows_and_discards_other_settings(tiny, monkeypatch, tmp_path):
    faces = make_plain_folder(tmp_path / "faces", 5)
    names = sorted(f"P{k}/P{k}_0001.png" for k in range(5))
    args = [f"target_dataset={faces}", f"observer_data={tiny['out']}/observer.json", "batch_size=2"]
    cfg = tiny["cfgs"]["inference"]
    out = tmp_path / "out" / "q.csv"
    with monkeypatch.context() as m:
        _crash_on_call(m, NormRecorder, "run", 3)
        with pytest.raises(_Crash):
            cli("inference", cfg, *args, f"outpath={out}")
    assert not out.exists() and not out.with_suffix(".meta.json").exists()
    partial = Path(str(out) + ".partial")
    stamp, rows = read_partial(partial)
    assert rows[0] == ["path", "file", "quality"] and [r[0] for r in rows[1:]] == names[:4]
    rows[2][2] = SENTINEL
    write_partial(partial, stamp, rows)
    planted = partial.read_bytes()

    with monkeypatch.context() as m:
        seen = _crash_on_call(m, NormRecorder, "run", 0)
        rc, _, err = cli("inference", cfg, *args, f"outpath={out}")
    assert rc == 0, err
    assert sum(seen) == 1
    got = {r["path"]: r["quality"] for r in read_rows(out)}
    assert list(got) == names and got[names[1]] == SENTINEL
    assert not partial.exists()

    partial.write_bytes(planted)  # now with embeddings: another row layout, the partial is discarded
    with monkeypatch.context() as m:
        seen = _crash_on_call(m, NormRecorder, "run", 0)
        rc, stdout, err = cli("inference", cfg, *args, "save_embeddings=true", f"outpath={out}")
    assert rc == 0, err
    assert "written with other settings; starting over" in err and sum(seen) == 5
    assert SENTINEL not in out.read_text() and not partial.exists()
    emb = np.load(out.parent / "q.embeddings.npy")
    assert emb.shape == (5, 16) and np.isfinite(emb).all()
    assert [r["path"] for r in read_rows(out.parent / "q.embeddings.csv")] == names


@pytest.mark.parametrize("stage", ["baseline", "inference"])
def test_failed_write_leaves_no_output_and_keeps_the_old_one(stage, tiny, monkeypatch, tmp_path):
    faces = make_plain_folder(tmp_path / "faces", 3)
    out = tmp_path / "out" / ("labels.csv" if stage == "baseline" else "q.csv")
    args = _stage_args(stage, tiny, faces, out.parent, fast=TINY_FAST)

    def disk_full(fd):
        raise OSError(28, "No space left on device (simulated)")

    with monkeypatch.context() as m:
        m.setattr(froq.core.io.os, "fsync", disk_full)
        rc, _, err = cli(stage, tiny["cfgs"][stage], *args)
    assert rc == 2 and "error:" in err and "simulated" in err  # one line, no traceback
    assert "Traceback" not in err
    assert not out.exists() and no_temp_files(out.parent)
    assert Path(str(out) + ".partial").exists()  # the finished rows are kept for the next run

    out.write_text("path,quality\nold,1.0\n")  # a previous result survives a failed rewrite
    with monkeypatch.context() as m:
        m.setattr(froq.core.io.os, "fsync", disk_full)
        rc, _, err = cli(stage, tiny["cfgs"][stage], *args)
    assert rc == 2 and "simulated" in err
    assert out.read_text() == "path,quality\nold,1.0\n" and no_temp_files(out.parent)

    rc, _, err = cli(stage, tiny["cfgs"][stage], *args)  # and the next run completes
    assert rc == 0, err
    assert [r["path"] for r in read_rows(out)] == sorted(f"P{k}/P{k}_0001.png" for k in range(3))


def test_rowlog_drops_a_torn_last_line(tmp_path):
    final = tmp_path / "q.csv"
    log = RowLog(final, ["path", "quality"], {"s": 1})
    log.append([["a.png", 0.25], ["b.png", 0.5]])
    with open(log.path, "a", encoding="utf-8") as fh:
        fh.write("c.png,0.12")  # cut in the middle of "0.125\n": right column count, wrong value
    again = RowLog(final, ["path", "quality"], {"s": 1})
    assert set(again.done) == {"a.png", "b.png"}
    assert again.done["b.png"] == ["b.png", "0.5"]
    again.append([["c.png", 0.125]])
    assert RowLog(final, ["path", "quality"], {"s": 1}).done["c.png"] == ["c.png", "0.125"]
    assert set(RowLog(final, ["path", "quality"], {"s": 2}).done) == set()  # other settings
    log.path.write_bytes(b"\xff\xfe garbage")
    assert RowLog(final, ["path", "quality"], {"s": 1}).done == {}  # unreadable: start over


def test_froq_error_is_the_only_clean_exit(tmp_path):
    """run_main turns FroqError into exit 2 and leaves other exceptions alone (they are bugs)."""
    def bad(argv):
        raise FroqError("x.yaml: key: broken")

    def bug(argv):
        raise ZeroDivisionError

    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        assert run_main(bad, []) == 2
    assert err.getvalue() == "error: x.yaml: key: broken\n"
    with pytest.raises(ZeroDivisionError):
        run_main(bug, [])
