"""Reliability and safety (issue 10): resume that can never mix results, inputs that can never hurt
the machine. One test (or more) per class of fault; each failed on the main before this change.

The stage programs run as real processes (``python -m froq ...``) on dlib's ResNet (packaged
weights) with cheap label constants, so locks, SIGKILL and umask are the operating system's own.
"""

from __future__ import annotations

import csv
import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import REPO
from froq.core.config import Key, load_config, read_yaml
from froq.core.errors import FroqError
from froq.core.images import FailureLog, MAX_PIXELS, load_rgb
from froq.core.io import output_lock, read_json, write_csv
from froq.core.runner import run_images
from froq.core.images import Preprocess
from stage_helpers import run_in_process

FR = str(REPO / "configs" / "fr" / "dlib_resnet.yaml")
FAST_LABELS = ["dataset.mpx=75", "dataset.noise_count=2", "dataset.batch_size=2"]  # 2×2 grid


def faces(root: Path, n: int, size: int = 150, seed: int = 0) -> list[str]:
    """``n`` smooth random 'faces' (PNG) in identity folders; sorted relative paths."""
    rng = np.random.default_rng(seed)
    rels = []
    for k in range(n):
        rel = f"id{k % 3}/img{k:02d}.png"
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        small = rng.integers(0, 256, (6, 6, 3), dtype=np.uint8)
        Image.fromarray(small).resize((size, size), Image.BICUBIC).save(root / rel)
        rels.append(rel)
    return sorted(rels)


def froq_cmd(*args: str) -> list[str]:
    return [sys.executable, "-m", "froq", *args]


def run(*args: str, timeout: int = 300) -> subprocess.CompletedProcess:
    """``froq ARGS`` as a separate process (locks, signals and umask are the OS's own)."""
    return subprocess.run(froq_cmd(*args), capture_output=True, text=True, cwd=REPO, timeout=timeout)


@pytest.fixture
def here(capsys):
    """``froq ARGS`` in this process (cheaper where no second process matters) → CompletedProcess."""
    from froq.commands import main

    def call(*args: str) -> subprocess.CompletedProcess:
        capsys.readouterr()
        rc = run_in_process(main, list(args))
        out, err = capsys.readouterr()
        return subprocess.CompletedProcess(list(args), rc, out, err)
    return call


def sets(**kv) -> list[str]:
    out = []
    for k, v in kv.items():
        out += ["--set", f"{k.replace('__', '.')}={v}"]
    return out


def labels_args(folder: Path, out: Path, *extra: str) -> list[str]:
    return ["labels", "-c", str(REPO / "configs" / "baseline.yaml"),
            *sets(face_recognition_config=FR, dataset__path=folder, dataset__image_size=150,
                  outpath=out, device="cpu"), *[a for e in FAST_LABELS for a in ("--set", e)], *extra]


def one_error(proc: subprocess.CompletedProcess, *needles: str) -> str:
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr
    lines = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert len(lines) == 1, proc.stderr
    for needle in needles:
        assert needle in lines[0], (needle, lines[0])
    return lines[0]


@pytest.fixture(scope="module")
def calib(tmp_path_factory):
    """A labelled calibration folder and an observer (dlib), made once through the CLIs."""
    root = tmp_path_factory.mktemp("calib")
    folder = root / "faces"
    faces(folder, 8)
    assert run(*labels_args(folder, root / "labels.csv")).returncode == 0
    proc = run("init", "-c", str(REPO / "configs" / "init.yaml"),
               *sets(face_recognition_config=FR, dataset__path=folder, label_location=root / "labels.csv",
                     outpath=root / "observer.json", device="cpu"))
    assert proc.returncode == 0, proc.stderr
    return root, folder


# -- 1. concurrent runs on one output --------------------------------------------------------------

def test_a_second_run_on_a_locked_output_is_refused_naming_the_holder(calib, tmp_path):
    _, folder = calib
    out = tmp_path / "labels.csv"
    with output_lock(out):  # this test process is the holder
        proc = run(*labels_args(folder, out))
        one_error(proc, str(out), "being written by another run", f"pid {os.getpid()}")
    assert not out.exists() and not Path(f"{out}.lock").exists()


def test_a_refused_run_waits_for_the_holder_to_write_its_record(tmp_path):
    """The holder writes its record just after it takes the lock: a run refused in between reads
    the record once it is there (pid named), and a lock file that never gets one says so."""
    import fcntl
    import threading
    out = tmp_path / "labels.csv"
    lock = Path(f"{out}.lock")
    with open(lock, "a+", encoding="utf-8") as held:
        fcntl.flock(held, fcntl.LOCK_EX | fcntl.LOCK_NB)  # taken, record not yet written

        def write_record():
            held.write(json.dumps({"pid": 4242, "host": "h", "started": "s", "command": "c"}))
            held.flush()
        writer = threading.Timer(0.2, write_record)
        writer.start()
        with pytest.raises(FroqError, match="another run \\(pid 4242 on h"):
            with output_lock(out):
                pass
        writer.join()
        held.seek(0)
        held.truncate()  # a holder that never writes: refused after the wait, holder unknown
        with pytest.raises(FroqError, match="another run \\(holder unknown\\)"):
            with output_lock(out):
                pass


def test_two_processes_with_different_settings_never_share_a_partial(calib, tmp_path, monkeypatch):
    """Two real runs started together on one outpath, with different constants: one is refused,
    the other's output equals a clean run with its own settings."""
    _, folder = calib
    # a labels-cache hit (the fixture labelled this folder with the first run's settings) would
    # finish in milliseconds, before the second run asks for the lock: the runs must overlap
    monkeypatch.setenv("FROQ_CACHE", "off")
    out = tmp_path / "labels.csv"
    a = subprocess.Popen(froq_cmd(*labels_args(folder, out)), cwd=REPO, stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, text=True)
    b = subprocess.Popen(froq_cmd(*labels_args(folder, out, "--set", "dataset.noise_count=3")), cwd=REPO,
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    (_, err_a), (_, err_b) = a.communicate(timeout=300), b.communicate(timeout=300)
    codes = sorted([a.returncode, b.returncode])
    if codes == [0, 0]:  # the second started only after the first had finished: sequential, fine
        pytest.skip("the two runs did not overlap on this machine")
    assert codes == [0, 2], (err_a, err_b)
    loser = err_a if a.returncode else err_b
    assert "being written by another run (pid" in loser
    winner_noise = 3 if b.returncode == 0 else 2
    clean = tmp_path / "clean.csv"
    assert run(*labels_args(folder, clean, "--set", f"dataset.noise_count={winner_noise}")).returncode == 0
    assert out.read_bytes() == clean.read_bytes()


def test_a_lock_left_by_a_killed_run_is_taken_over(calib, tmp_path, monkeypatch):
    _, folder = calib
    # a labels-cache hit (earlier tests labelled the same folder) would finish before the kill
    monkeypatch.setenv("FROQ_CACHE", "off")
    out = tmp_path / "labels.csv"
    proc = subprocess.Popen(froq_cmd(*labels_args(folder, out)), cwd=REPO,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    lock = Path(f"{out}.lock")
    deadline = time.time() + 120
    while not (lock.exists() and lock.stat().st_size) and time.time() < deadline:
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert lock.exists() and json.loads(lock.read_text())["pid"] == proc.pid  # left behind
    again = run(*labels_args(folder, out))
    assert again.returncode == 0 and "taking over a lock left by a run that is gone" in again.stderr


# -- 2. resume after SIGKILL is byte-identical; replaced images are recomputed ----------------------

def _kill_after_rows(args: list[str], partial: Path, rows: int) -> None:
    proc = subprocess.Popen(froq_cmd(*args), cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 180
    while proc.poll() is None and time.time() < deadline:
        if partial.exists() and partial.read_text().count("\n") >= 2 + rows:
            break
        time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)
    proc.wait()


@pytest.mark.parametrize("stage", ["labels", "score"])
def test_sigkill_at_random_points_then_resume_is_byte_identical(calib, tmp_path, stage):
    root, folder = calib
    target = tmp_path / "target"
    faces(target, 10, seed=5)

    def args(out):
        if stage == "labels":
            return labels_args(target, out)
        return ["score", "-c", str(REPO / "configs" / "inference.yaml"),
                *sets(face_recognition_config=FR, target_dataset=target, batch_size=2,
                      observer_data=root / "observer.json", outpath=out, device="cpu")]

    clean = tmp_path / "clean.csv"
    assert run(*args(clean)).returncode == 0
    for seed in range(3):
        out = tmp_path / f"killed{seed}.csv"
        _kill_after_rows(args(out), Path(f"{out}.partial"), random.Random(seed).randrange(0, 9))
        proc = run(*args(out))
        assert proc.returncode == 0, proc.stderr
        assert out.read_bytes() == clean.read_bytes(), f"seed {seed}"


# -- 3. an output equal to an input is refused before any work -------------------------------------

def test_outputs_that_are_inputs_are_refused(calib, tmp_path, here):
    root, folder = calib
    cfg = REPO / "configs"
    obs = root / "observer.json"
    before = obs.read_bytes()
    one_error(here("score", "-c", str(cfg / "inference.yaml"),
                  *sets(face_recognition_config=FR, target_dataset=folder, observer_data=obs,
                        outpath=obs, device="cpu")), "would overwrite the input observer_data")
    one_error(here("score", "-c", str(cfg / "inference.yaml"),
                  *sets(face_recognition_config=FR, target_dataset=folder, observer_data=obs,
                        outpath=folder / "q.csv", device="cpu")), "inside the input folder target_dataset")
    one_error(here("init", "-c", str(cfg / "init.yaml"),
                  *sets(face_recognition_config=FR, dataset__path=folder, label_location=root / "labels.csv",
                        outpath=root / "labels.csv", device="cpu")), "would overwrite the input label_location")
    fr_copy = tmp_path / "fr.yaml"
    fr_copy.write_text(Path(FR).read_text())
    one_error(here("labels", "-c", str(cfg / "baseline.yaml"),
                  *sets(face_recognition_config=fr_copy, dataset__path=folder, dataset__image_size=150,
                        outpath=fr_copy, device="cpu")), "would overwrite the input face_recognition_config")
    assert obs.read_bytes() == before and fr_copy.read_text() == Path(FR).read_text()


# -- 4. labels of another model, NaN constants, NaN weights ----------------------------------------

def test_labels_from_another_model_and_nan_settings_are_refused(calib, tmp_path, here):
    root, folder = calib
    labels = tmp_path / "labels.csv"
    labels.write_bytes((root / "labels.csv").read_bytes())
    meta = read_json(root / "labels.meta.json")
    meta["model"]["arch"] = "adaface_ir_101"
    (tmp_path / "labels.meta.json").write_text(json.dumps(meta))
    one_error(here("init", "-c", str(REPO / "configs" / "init.yaml"),
                  *sets(face_recognition_config=FR, dataset__path=folder, label_location=labels,
                        outpath=tmp_path / "o.json", device="cpu")),
              "computed with another FR model", "adaface_ir_101")
    one_error(here(*labels_args(folder, tmp_path / "l.csv", "--set", "dataset.alphas=[.nan]")),
              "dataset.alphas: must be finite numbers")


def test_nan_weights_are_refused_naming_the_file(tmp_path):
    from face_recognition_model.iresnet import build_iresnet18
    from face_recognition_model.loading import load_fr_model

    state = build_iresnet18(None).state_dict()
    state["fc.weight"][0, 0] = float("nan")
    weights = tmp_path / "backbone.pth"
    torch.save(state, weights)
    cfg = tmp_path / "fr.yaml"
    cfg.write_text(f"model: {{arch: iresnet18, weights: {weights}}}\npreprocess: {{size: 112}}\n")
    with pytest.raises(FroqError, match=r"backbone.pth: 1 weight tensor\(s\) hold NaN .* fc.weight"):
        load_fr_model(cfg)


# -- 7. formats by content, special files ----------------------------------------------------------

def test_only_allowed_decoders_and_regular_files_are_opened(tmp_path):
    rgb = Image.new("RGB", (20, 20), (90, 10, 10))
    rgb.save(tmp_path / "gif_inside.jpg", format="GIF")       # decodable by Pillow, not allowed
    rgb.save(tmp_path / "tiff_inside.png", format="TIFF")
    (tmp_path / "eps_inside.jpg").write_bytes(b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 10 10\n")
    rgb.save(tmp_path / "fine.jpg", format="JPEG")
    rgb.save(tmp_path / "png_named.jpg", format="PNG")       # allowed content, odd extension: fine
    os.mkfifo(tmp_path / "pipe.png")                          # would block a reader forever
    failures = FailureLog("t")
    result = run_images(tmp_path, lambda p, x: x.float().mean(dim=(1, 2, 3)), ["m"],
                        preprocess=Preprocess(size=(20, 20)), failures=failures)
    assert result.paths == ["fine.jpg", "png_named.jpg"]
    listed = dict(failures.items)
    assert set(listed) == {"eps_inside.jpg", "gif_inside.jpg", "pipe.png", "tiff_inside.png"}
    assert "not a regular file" in listed["pipe.png"]


# -- 8. resource bombs -----------------------------------------------------------------------------

def test_pixel_bombs_are_refused_before_decoding(tmp_path):
    side = int(MAX_PIXELS ** 0.5) + 100
    bomb = tmp_path / "bomb.png"
    Image.new("1", (side, side)).save(bomb)  # a few kB on disk
    assert bomb.stat().st_size < 2_000_000
    with pytest.raises(ValueError, match="pixel limit"):
        load_rgb(bomb)


def test_yaml_aliases_are_refused_quickly(tmp_path):
    laughs = ["a: &a [x, x, x, x, x, x, x, x, x]"]
    for i in range(1, 12):
        laughs.append(f"{chr(97 + i)}: &{chr(97 + i)} [" + ", ".join([f"*{chr(96 + i)}"] * 9) + "]")
    bomb = tmp_path / "bomb.yaml"
    bomb.write_text("\n".join(laughs) + "\n")
    start = time.perf_counter()
    with pytest.raises(FroqError, match="line 2: YAML aliases"):
        read_yaml(bomb)
    assert time.perf_counter() - start < 5


# -- 9. file names ---------------------------------------------------------------------------------

def test_undecodable_names_and_too_deep_folders_are_listed_and_reruns_finish(calib, tmp_path, here):
    root, _ = calib
    target = tmp_path / "t"
    faces(target, 4)
    bad = os.fsencode(target / "id0") + b"/caf\xe9.png"
    with open(bad, "wb") as fh:
        Image.new("RGB", (150, 150), (1, 2, 3)).save(fh, format="PNG")
    fd = os.open(target, os.O_RDONLY)
    for _ in range(40):  # a folder deeper than PATH_MAX (4096 bytes), made relative to its parent
        os.mkdir("d" * 120, dir_fd=fd)
        new = os.open("d" * 120, os.O_RDONLY, dir_fd=fd)
        os.close(fd)
        fd = new
    img = os.open("lost.png", os.O_WRONLY | os.O_CREAT, dir_fd=fd)
    with os.fdopen(img, "wb") as fh:
        Image.new("RGB", (150, 150), (1, 2, 3)).save(fh, format="PNG")
    os.close(fd)
    args = ["score", "-c", str(REPO / "configs" / "inference.yaml"),
            *sets(face_recognition_config=FR, target_dataset=target, observer_data=root / "observer.json",
                  outpath=tmp_path / "q.csv", device="cpu")]
    for _ in range(2):  # and again: a rerun finishes too
        proc = here(*args)
        assert proc.returncode == 0, proc.stderr
        meta = read_json(tmp_path / "q.meta.json")
        reasons = {u["path"]: u["reason"] for u in meta["unreadable"]}
        assert reasons.get("id0/caf\\xe9.png") == "file name is not valid UTF-8: rename the file"
        assert meta["images"] == 4
    deep = [p for p, r in reasons.items() if "folder cannot be read" in r]
    assert len(deep) == 1 and deep[0].startswith("d" * 120), reasons


# -- 10. values of the wrong kind, odd files: one line ---------------------------------------------

def test_wrong_kinds_are_one_line_errors(calib, tmp_path, here):
    root, folder = calib
    base = labels_args(folder, tmp_path / "l.csv")
    one_error(here(*base, "--set", "seed=99999999999999999999999"), "seed: must fit in 64 bits")
    one_error(here(*base, "--set", "dataset.image_size=1.5"), "dataset.image_size")
    one_error(here(*base, "--set", "fr_overrides=[{a: 1}]"), "fr_overrides")
    one_error(here(*base, "--set", "device=mps"), "device")
    deep = tmp_path / "deep.json"
    deep.write_text("[" * 100000 + "]" * 100000)
    one_error(here("score", "-c", str(REPO / "configs" / "inference.yaml"),
                  *sets(face_recognition_config=FR, target_dataset=folder, observer_data=deep,
                        outpath=tmp_path / "q.csv", device="cpu")), "deep.json")
    state = tmp_path / "w.pth"
    torch.save({"conv1.weight": "not a tensor"}, state)
    cfg = tmp_path / "fr.yaml"
    cfg.write_text(f"model: {{arch: iresnet18, weights: {state}}}\npreprocess: {{size: 112}}\n")
    one_error(here(*labels_args(folder, tmp_path / "l2.csv", "--set", f"face_recognition_config={cfg}")),
              "w.pth")


# -- 11. permissions -------------------------------------------------------------------------------

def test_outputs_follow_the_umask(tmp_path):
    old = os.umask(0o022)
    try:
        write_csv(tmp_path / "a.csv", ["x"], [[1]])
    finally:
        os.umask(old)
    assert (tmp_path / "a.csv").stat().st_mode & 0o777 == 0o644


# -- 5. evaluation paths are taken as written ------------------------------------------------------

def test_evaluation_paths_are_exact_duplicates_are_errors_and_pairs_stay_inside(tmp_path):
    from evaluation.pair_protocols import read_pairs_csv
    from evaluation.quality_methods import QualitySource, image_qualities

    root = tmp_path / "imgs"
    for name in ("a.png", " a.png", "b.png", "c\\d.png"):
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        Image.new("RGB", (4, 4)).save(root / name, format="PNG")
    (tmp_path / "outside.png").write_bytes((root / "a.png").read_bytes())
    pairs = tmp_path / "pairs.csv"
    write_csv(pairs, ["path1", "path2", "genuine"], [["a.png", " a.png", 1], ["b.png", "c\\d.png", 0]])
    protocol = read_pairs_csv(root, pairs)
    assert protocol.images == ["a.png", " a.png", "b.png", "c\\d.png"]  # four images, as written

    q = tmp_path / "q.csv"
    write_csv(q, ["path", "quality"], [[" a.png", 1.0], ["a.png", 2.0], ["b.png", 3.0], ["c\\d.png", 4.0]])
    got = image_qualities(QualitySource("m", q, "quality", True), protocol)
    assert got.tolist() == [2.0, 1.0, 3.0, 4.0]
    write_csv(q, ["path", "quality"], [["./b.png", 1.0], ["b.png", 2.0], ["a.png", 0.0],
                                       [" a.png", 0.0], ["c\\d.png", 0.0]])
    with pytest.raises(FroqError, match=r"rows './b.png' and 'b.png' name the same image"):
        image_qualities(QualitySource("m", q, "quality", True), protocol)

    write_csv(pairs, ["path1", "path2", "genuine"], [["a.png", "../outside.png", 1]])
    with pytest.raises(FroqError, match="point outside the image folder"):
        read_pairs_csv(root, pairs)
    assert read_pairs_csv(root, pairs, allow_outside_root=True).images == ["a.png", "../outside.png"]


# -- 8. bounded expansion: .bin exports, path templates ---------------------------------------------

def test_bin_with_repeated_references_and_format_specs_are_refused(tmp_path):
    import pickle

    from evaluation.insightface_bin import read_bin
    from evaluation.quality_methods import check_template

    blob = bytes(200_000)
    path = tmp_path / "rep.bin"
    images = [blob] * 400  # one bytes object, pickled once, referenced 400 times: 80 MB from 0.2 MB
    path.write_bytes(pickle.dumps((images, [True] * 200), protocol=4))
    assert path.stat().st_size < 300_000
    with pytest.raises(FroqError, match="repeated references"):
        read_bin(path)
    with pytest.raises(FroqError, match="no format spec"):
        check_template("q/{benchmark:>999999999}.csv", "qualities.m")
    assert check_template("q/{benchmark}_{model}.csv", "qualities.m")


# -- 6. a rebuilt calibration set holds exactly what the current options say -----------------------

def test_rebuilding_with_other_options_leaves_no_stale_variants(tmp_path):
    from froq.core.images import list_images
    from preparation.calibration import build_calibration_set

    source = tmp_path / "src"
    faces(source, 4, size=64)
    out = tmp_path / "calib"
    build_calibration_set(source, out, variants=2, keep_clean=True, seed=0)
    assert len(list_images(out)) == 12
    build_calibration_set(source, out, variants=1, seed=0)
    built = list_images(out)
    assert len(built) == 4 and all(p.endswith("_v1.jpg") for p in built)
    (out / "mine.jpg").write_bytes((out / built[0]).read_bytes())
    with pytest.raises(FroqError, match="holds 1 image.* this builder did not make"):
        build_calibration_set(source, out, variants=1, seed=0)


def test_alignment_lists_bombs_and_undecodable_names_and_aligns_the_rest(tmp_path):
    from preparation.align import align_folder

    photos = tmp_path / "photos"
    faces(photos, 2, size=200)
    side = int(MAX_PIXELS ** 0.5) + 100
    Image.new("1", (side, side)).save(photos / "id0" / "bomb.png")
    with open(os.fsencode(photos / "id1") + b"/\xff.png", "wb") as fh:
        Image.new("RGB", (64, 64)).save(fh, format="PNG")
    summary = align_folder(photos, tmp_path / "aligned", template="dlib150", fallback="center-box",
                           workers=1)
    assert summary["images"] == 4 and summary["unreadable"] == 2
    rows = {r["path"]: r for r in csv.DictReader(open(tmp_path / "aligned" / "landmarks.csv"))}
    assert rows["id0/bomb.png"]["status"] == "unreadable" and "pixel limit" in rows["id0/bomb.png"]["reason"]
    assert rows["id1/\\xff.png"]["status"] == "unreadable"
    assert sum(r["status"] in ("ok", "fallback") for r in rows.values()) == 2
