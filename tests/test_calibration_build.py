"""Calibration-set builder (preparation/calibration.py) and its degradations, on small synthetic
images (no shared data needed)."""

from __future__ import annotations

import csv
import math

import numpy as np
import pytest
from PIL import Image
from scipy import stats

from preparation import calibration, degradations as deg
from preparation.calibration import MANIFEST_HEADER, build_calibration_set
from froq.core.cli import run_main
from froq.core.errors import FroqError


def textured_face(seed: int, size: int = 96) -> np.ndarray:
    """A sharp synthetic RGB image: a smooth gradient with checkerboard edges and a few discs."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:size, 0:size]
    base = 60 + 100 * (x + y) / (2 * size)
    checker = ((x // 6 + y // 6) % 2) * 60.0
    img = np.stack([base + checker * w for w in rng.uniform(0.5, 1.0, 3)], axis=-1)
    for _ in range(4):
        cx, cy, r = rng.uniform(10, size - 10, 2).tolist() + [rng.uniform(4, 12)]
        img[(x - cx) ** 2 + (y - cy) ** 2 < r * r] = rng.uniform(0, 255, 3)
    return np.clip(img, 0, 255).astype(np.uint8)


@pytest.fixture
def source(tmp_path):
    """Two identity folders with two PNG faces each."""
    src = tmp_path / "src"
    for k, (person, n) in enumerate([("Ann", 1), ("Ann", 2), ("Bob_B", 1), ("Bob_B", 2)]):
        (src / person).mkdir(parents=True, exist_ok=True)
        Image.fromarray(textured_face(k)).save(src / person / f"{person}_{n:04d}.png")
    return src


def read_manifest(folder):
    with open(folder / "manifest.csv", newline="") as fh:
        reader = csv.DictReader(fh)
        assert reader.fieldnames == MANIFEST_HEADER
        return list(reader)


def files_bytes(folder):
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*.jpg"))}


# -- the degradation functions -------------------------------------------------------------------

def test_gaussian_kernel_is_normalised_and_oriented():
    k = deg.gaussian_kernel(3.0, 1.0, theta=0.0)
    assert k.shape == (19, 19) and math.isclose(k.sum(), 1.0)
    y, x = np.mgrid[-9:10, -9:10]
    var_x, var_y = (k * x ** 2).sum(), (k * y ** 2).sum()
    assert var_x > 5 * var_y  # long axis along x
    k90 = deg.gaussian_kernel(3.0, 1.0, theta=math.pi / 2)
    np.testing.assert_allclose(k90, k.T, atol=1e-12)
    assert deg.gaussian_kernel(10.0, 10.0).shape == (21, 21)  # capped like BSRGAN


def test_each_degradation_lowers_fidelity():
    img = textured_face(7).astype(np.float32)
    clean = deg.to_uint8(img)
    sharp = deg.sharpness(clean)
    blurred = deg.to_uint8(deg.gaussian_blur(img, deg.gaussian_kernel(2.0, 2.0)))
    assert deg.sharpness(blurred) < 0.2 * sharp
    resized = deg.to_uint8(deg.resize_down_up(img, 0.25, "bicubic", "bilinear"))
    assert resized.shape == clean.shape and deg.sharpness(resized) < 0.5 * sharp
    noisy = deg.to_uint8(deg.gaussian_noise(img, 10.0, np.random.default_rng(0)))
    assert abs(deg.psnr(clean, noisy) - 20 * math.log10(255 / 10)) < 0.7
    gray = deg.gaussian_noise(img, 10.0, np.random.default_rng(0), gray=True) - img
    np.testing.assert_allclose(gray[..., 0], gray[..., 2], atol=1e-4)
    assert deg.psnr(clean, deg.to_uint8(deg.jpeg_compress(img, 20))) < \
        deg.psnr(clean, deg.to_uint8(deg.jpeg_compress(img, 95))) - 5


def test_random_degradation_records_its_steps_and_scales_with_severity():
    img = textured_face(3)
    out, sev, steps = deg.random_degradation(img, np.random.default_rng(5), severity=1.0)
    assert out.shape == img.shape and out.dtype == np.uint8 and sev == 1.0
    ops = [s["op"] for s in steps]
    assert len(set(ops)) == len(ops) and set(ops) <= {"blur", "resize", "noise", "jpeg"}
    text = deg.describe(steps)
    assert text.count(";") == len(steps) - 1 and all(op in text for op in ops)
    # zero severity: whatever is drawn stays at the mildest setting
    mild, _, mild_steps = deg.random_degradation(img, np.random.default_rng(5), severity=0.0)
    assert deg.psnr(img, mild) > 30
    for s in mild_steps:
        if s["op"] == "jpeg":
            assert s["quality"] == 95
        if s["op"] == "resize":
            assert s["scale"] == 1.0
    # over many draws, severity predicts the damage
    sevs, psnrs = [], []
    for k in range(40):
        o, s, _ = deg.random_degradation(img, np.random.default_rng(100 + k))
        sevs.append(s)
        psnrs.append(deg.psnr(img, o))
    assert stats.spearmanr(sevs, psnrs)[0] < -0.6
    assert min(psnrs) < 22 and max(psnrs) > 35


# -- the builder ---------------------------------------------------------------------------------

def test_build_is_deterministic_per_seed(source, tmp_path):
    a = tmp_path / "a"
    b = tmp_path / "b"
    c = tmp_path / "c"
    build_calibration_set(source, a, variants=2, seed=11, progress=False)
    build_calibration_set(source, b, variants=2, seed=11, progress=False)
    build_calibration_set(source, c, variants=2, seed=12, progress=False)
    fa, fb, fc = files_bytes(a), files_bytes(b), files_bytes(c)
    assert fa == fb and (a / "manifest.csv").read_bytes() == (b / "manifest.csv").read_bytes()
    assert fa.keys() == fc.keys()
    assert sum(fa[k] != fc[k] for k in fa) >= len(fa) - 1  # a different seed changes (nearly) all
    # a variant depends only on (seed, source path, K): extra sources do not change it
    Image.fromarray(textured_face(99)).save(source / "Ann" / "Ann_0003.png")
    d = tmp_path / "d"
    build_calibration_set(source, d, variants=2, seed=11, progress=False)
    fd = files_bytes(d)
    assert len(fd) == len(fa) + 2 and all(fd[k] == fa[k] for k in fa)


def test_layout_variant_count_and_manifest(source, tmp_path):
    out = tmp_path / "calib"
    summary = build_calibration_set(source, out, variants=3, seed=0, keep_clean=True, progress=False)
    expected = {f"id_{i:04d}/{p}_{n:04d}_v{k}.jpg"
                for i, p in enumerate(["Ann", "Bob_B"]) for n in (1, 2) for k in range(4)}
    assert set(files_bytes(out)) == expected
    assert summary["sources"] == 4 and summary["written"] == 16 and summary["degraded_variants"] == 12
    rows = read_manifest(out)
    assert {r["path"] for r in rows} == expected
    clean_src = {}
    for r in rows:
        person = r["source"].split("/")[0]
        assert r["identity"] == person and r["path"].startswith("id_0000/" if person == "Ann" else "id_0001/")
        assert r["path"].endswith(f"_v{r['variant']}.jpg") and Image.open(out / r["path"]).size == (96, 96)
        src = np.asarray(Image.open(source / r["source"]).convert("RGB"))
        saved = np.asarray(Image.open(out / r["path"]).convert("RGB"))
        assert math.isclose(float(r["psnr_db"]), deg.psnr(src, saved), abs_tol=1e-3)
        if r["variant"] == "0":
            assert r["degradations"] == "none" and float(r["severity"]) == 0.0
            clean_src[r["source"]] = float(r["psnr_db"])
        else:
            assert 0.0 <= float(r["severity"]) <= 1.0
            for step in filter(None, r["degradations"].split(";")):
                assert step == "none" or step.split(":")[0] in {"blur", "resize", "noise", "jpeg"}
    # degraded variants are measurably worse than the clean copies, on average by a lot
    degraded = [float(r["psnr_db"]) for r in rows if r["variant"] != "0"]
    assert np.mean(degraded) < min(clean_src.values()) - 5
    kept = tmp_path / "kept"
    build_calibration_set(source, kept, variants=1, folders="keep", progress=False)
    assert set(files_bytes(kept)) == {"Ann/Ann_0001_v1.jpg", "Ann/Ann_0002_v1.jpg",
                                      "Bob_B/Bob_B_0001_v1.jpg", "Bob_B/Bob_B_0002_v1.jpg"}


def test_unreadable_sources_are_reported_and_skipped(source, tmp_path, caplog):
    (source / "Bob_B" / "Bob_B_0009.jpg").write_bytes(b"not an image")
    summary = build_calibration_set(source, tmp_path / "o", variants=1, progress=False)
    assert summary["unreadable_files"] == ["Bob_B/Bob_B_0009.jpg"] and summary["written"] == 4
    assert "Bob_B/Bob_B_0009.jpg" in caplog.text
    assert all("0009" not in r["source"] for r in read_manifest(tmp_path / "o"))


def test_cli_and_argument_errors(source, tmp_path, capsys):
    assert run_main(calibration.main, ["--source", str(source), "--output", str(tmp_path / "o"),
                                       "--variants", "2", "--seed", "3"]) == 0
    assert "8 images written from 4 sources" in capsys.readouterr().out
    assert len(read_manifest(tmp_path / "o")) == 8
    code = run_main(calibration.main, ["--source", str(tmp_path / "nope"), "--output", str(tmp_path / "p")])
    err = capsys.readouterr().err
    assert code == 2 and err.startswith("error: source folder not found") and "Traceback" not in err
    with pytest.raises(FroqError, match="variants"):
        build_calibration_set(source, tmp_path / "q", variants=0)
    with pytest.raises(FroqError, match="inside --source"):
        build_calibration_set(source, source / "out")
