"""The evaluation CLI end to end on a tiny synthetic benchmark (three protocol types, a tiny
registered FR model with generated weights): outputs, consistency with the metric functions,
the embedding cache, scores from files, and clean errors."""

from __future__ import annotations

import csv
import io
import json
import os
import pickle
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from PIL import Image

from evaluation import comparison_scores, edc
from evaluation.main import main as eval_main
from face_recognition_model.registry import register_model
from froq.core.cli import run_main

REPO = Path(__file__).resolve().parents[1]
IDS = ["Ann_Lee", "Bob_Ray", "Cy_Do", "Di_Fox"]
PER_ID = 3


class _TinyNet(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 8, 3, stride=2)
        self.act = torch.nn.ReLU()
        self.pool = torch.nn.AdaptiveAvgPool2d(2)
        self.flat = torch.nn.Flatten()
        self.fc = torch.nn.Linear(32, 16)

    def forward(self, x):
        return self.fc(self.flat(self.pool(self.act(self.conv(x)))))


@register_model("test_eval_tiny")
def _build_tiny(weights=None, **kwargs):
    with torch.random.fork_rng():
        torch.manual_seed(0)                 # the same generated weights every build
        return _TinyNet().eval()


def _png(arr) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="PNG")
    return buf.getvalue()


@pytest.fixture(scope="module")
def bench(tmp_path_factory):
    """Images of 4 identities × 3, as an LFW folder, a CSV protocol and a .bin; quality CSVs."""
    root = tmp_path_factory.mktemp("bench")
    rng = np.random.default_rng(0)
    blobs = {}
    for name in IDS:
        base = rng.integers(0, 256, (24, 24, 3))
        (root / "lfw" / name).mkdir(parents=True)
        for i in range(1, PER_ID + 1):
            arr = np.clip(base + rng.normal(0, 25 * i, base.shape), 0, 255).astype(np.uint8)
            blobs[(name, i)] = _png(arr)
            (root / "lfw" / name / f"{name}_{i:04d}.png").write_bytes(blobs[(name, i)])
    genuine = [(n, 1, n, 2) for n in IDS] + [(n, 1, n, 3) for n in IDS] + [(n, 2, n, 3) for n in IDS]
    impostor = [(IDS[a], 1 + (a + b) % 3, IDS[b], 1 + a % 3) for a in range(4) for b in range(4) if a < b]
    impostor += [(IDS[a], 3, IDS[b], 2) for a in range(4) for b in range(4) if a < b]
    # pairs.txt, 2 folds of 6 matched + 6 mismatched
    lines = ["2\t6"]
    for f in range(2):
        lines += [f"{n}\t{i}\t{j}" for n, i, _, j in genuine[6 * f:6 * f + 6]]
        lines += [f"{a}\t{i}\t{b}\t{j}" for a, i, b, j in impostor[6 * f:6 * f + 6]]
    (root / "pairs.txt").write_text("\n".join(lines) + "\n")
    all_pairs = [(p, True) for p in genuine] + [(p, False) for p in impostor]
    rel = lambda n, i: f"{n}/{n}_{i:04d}.png"  # noqa: E731
    with open(root / "pairs.csv", "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["path1", "path2", "genuine"])
        for (a, i, b, j), g in all_pairs:
            w.writerow([rel(a, i), rel(b, j), int(g)])
    images, labels = [], []
    for (a, i, b, j), g in all_pairs:
        images += [blobs[(a, i)], blobs[(b, j)]]
        labels.append(g)
    with open(root / "tiny.bin", "wb") as fh:
        pickle.dump((images, labels), fh, protocol=4)
    # quality CSVs: per benchmark and model, and one auxiliary with another column name
    q_rng = np.random.default_rng(1)
    (root / "q").mkdir()
    lfw_paths = [rel(n, i) for n in IDS for i in range(1, PER_ID + 1)]
    bin_paths = [f"{k:05d}.jpg" for k in range(len(images))]
    for bname, paths in (("lfw", lfw_paths), ("binb", bin_paths)):
        with open(root / "q" / f"{bname}_test_eval_tiny.csv", "w", newline="") as fh:
            w = csv.writer(fh)
            w.writerow(["path", "quality"])
            for p in paths:
                w.writerow([p, q_rng.random()])
        with open(root / "q" / f"aux_{bname}.csv", "w", newline="") as fh:
            w = csv.writer(fh)
            w.writerow(["path", "flip", "quality"])
            for p in paths:
                w.writerow([p, q_rng.random(), 0.0])
    # the CSV protocol is the same images and pairs as lfw: same quality files
    for name in ("{}_test_eval_tiny.csv", "aux_{}.csv"):
        (root / "q" / name.format("csvb")).write_bytes((root / "q" / name.format("lfw")).read_bytes())
    fr_cfg = {"model": {"arch": "test_eval_tiny", "weights": "random"},
              "preprocess": {"size": 24, "mean": 0.5, "std": 0.5, "channels": [2, 1, 0]}}
    (root / "tiny_fr.yaml").write_text(yaml.safe_dump(fr_cfg))
    return root


def _config(root: Path, outdir: Path, **extra) -> Path:
    cfg = {
        "face_recognition_configs": [str(root / "tiny_fr.yaml")],
        "benchmarks": [
            {"name": "lfw", "type": "lfw_pairs", "images": str(root / "lfw"), "pairs": str(root / "pairs.txt")},
            {"name": "csvb", "type": "csv", "images": str(root / "lfw"), "pairs": str(root / "pairs.csv")},
            {"name": "binb", "type": "insightface_bin", "path": str(root / "tiny.bin"),
             "images": str(outdir / "exported")},
        ],
        "qualities": {"froq": str(root / "q" / "{benchmark}_{model}.csv"),
                      "aux": {"path": str(root / "q" / "aux_{benchmark}.csv"), "column": "flip"}},
        "fmr": [0.1, 0.25],
        "discard_limit": 0.3,
        "random_seeds": 4,
        "outdir": str(outdir),
        "device": "cpu",
        "batch_size": 5,
    }
    cfg.update(extra)
    path = outdir.parent / f"{outdir.name}.yaml"
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    return path


def _read_csv(path):
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


def test_cli_end_to_end_outputs_and_consistency(bench, tmp_path, capsys, monkeypatch):
    out = tmp_path / "out"
    cfg = _config(bench, out)
    results = eval_main(["-c", str(cfg)])
    printed = capsys.readouterr().out
    assert "## test_eval_tiny — FMR = 0.1" in printed

    saved = json.loads((out / "results.json").read_text())
    assert saved == json.loads(json.dumps(results, allow_nan=True).replace("NaN", "null"))
    assert list(saved) == ["lfw", "csvb", "binb"]
    for b in saved:
        methods = saved[b]["test_eval_tiny"]
        assert list(methods) == ["froq", "aux", "random", "perfect"]
        for m, v in methods.items():
            assert set(v["by_fmr"]) == {"0.1", "0.25"}
            assert {k: v[k] for k in v if k != "by_fmr"} == v["by_fmr"]["0.1"]
            for key in ("pauc", "pauc_norm", "fnmr0", "threshold", "n_genuine", "n_impostor"):
                assert key in v
            assert v["n_genuine"] == 12 and v["n_impostor"] == 12
            assert v["by_fmr"]["0.25"]["n_impostor_accepted"] <= 3
        # the oracle is never worse than any method
        for key in ("0.1", "0.25"):
            perfect = methods["perfect"]["by_fmr"][key]["pauc"]
            assert all(perfect <= methods[m]["by_fmr"][key]["pauc"] + 1e-12 for m in methods)
    # lfw and csv protocols list the same pairs in another order: identical metrics
    for m in ("froq", "aux", "perfect"):
        assert saved["lfw"]["test_eval_tiny"][m]["pauc"] == pytest.approx(saved["csvb"]["test_eval_tiny"][m]["pauc"])

    # recompute one entry from the written scores and the quality CSV with the metric functions
    rows = _read_csv(out / "scores" / "binb_test_eval_tiny.csv")
    q = {r["path"]: float(r["quality"]) for r in _read_csv(bench / "q" / "binb_test_eval_tiny.csv")}
    s = np.array([float(r["score"]) for r in rows])
    g = np.array([r["genuine"] == "1" for r in rows])
    th = edc.fmr_threshold(s[~g], 0.25)
    pq = np.array([min(q[r["path1"]], q[r["path2"]]) for r in rows])[g]
    res = edc.evaluate_edc(s[g], th.threshold, pq, 0.3)
    got = saved["binb"]["test_eval_tiny"]["froq"]["by_fmr"]["0.25"]
    assert got["pauc"] == pytest.approx(res.pauc) and got["threshold"] == pytest.approx(th.threshold)
    assert got["n_false_nonmatch"] == res.n_false_nonmatch

    table = (out / "table.md").read_text()
    assert "**" in table and "| *random* |" in table and "| *perfect* |" in table
    assert "| Method | lfw | csvb | binb | Mean |" in table
    tcsv = _read_csv(out / "table.csv")
    assert len(tcsv) == 2 * 4 and list(tcsv[0]) == ["model", "fmr", "method", "lfw", "csvb", "binb", "mean"]
    curves = _read_csv(out / "curves.csv")
    assert {r["method"] for r in curves} == {"froq", "aux", "random", "perfect"}
    assert all(0.0 <= float(r["discard_fraction"]) <= 0.3 for r in curves)
    for b in ("lfw", "csvb", "binb"):
        for suffix in ("", "_fmr0.25"):
            png = out / f"edc_{b}_test_eval_tiny{suffix}.png"
            assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
            with Image.open(png) as im:
                assert im.size[0] > 300
    run = json.loads((out / "run.json").read_text())
    assert run["benchmarks"]["binb"]["n_pairs"] == 24 and run["models"]["test_eval_tiny"]["arch"] == "test_eval_tiny"

    # second run: every embedding comes from the cache
    def boom(*a, **k):
        raise AssertionError("embeddings recomputed despite the cache")
    monkeypatch.setattr(comparison_scores, "compute_embeddings", boom)
    again = eval_main(["-c", str(cfg), "--set", "plots=false"])
    assert again["lfw"]["test_eval_tiny"]["froq"]["pauc"] == results["lfw"]["test_eval_tiny"]["froq"]["pauc"]
    # touching an image invalidates its cached row only
    img = bench / "lfw" / "Ann_Lee" / "Ann_Lee_0001.png"
    st = img.stat()
    os.utime(img, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
    with pytest.raises(AssertionError, match="recomputed"):
        eval_main(["-c", str(cfg), "--set", "plots=false"])
    os.utime(img, ns=(st.st_atime_ns, st.st_mtime_ns))
    # a tampered/torn cache file is detected (sha256 in model.json) and not used
    (npy,) = (out / "cache").glob("test_eval_tiny-*/embeddings.npy")
    arr = np.load(npy)
    np.save(npy, np.zeros_like(arr))
    with pytest.raises(AssertionError, match="recomputed"):
        eval_main(["-c", str(cfg), "--set", "plots=false"])
    np.save(npy, arr)

    # scores read from files under another model name give the same metrics
    cfg2 = _config(bench, tmp_path / "out2",
                   face_recognition_configs=[{"name": "ext"}],
                   qualities={"froq": str(bench / "q" / "{benchmark}_test_eval_tiny.csv")})
    spec = yaml.safe_load(cfg2.read_text())
    for b in spec["benchmarks"]:
        b["scores"] = str(out / "scores" / "{benchmark}_test_eval_tiny.csv")
    cfg2.write_text(yaml.safe_dump(spec, sort_keys=False))
    ext = eval_main(["-c", str(cfg2), "--set", "plots=false"])
    for b in ("lfw", "binb"):
        assert ext[b]["ext"]["froq"]["pauc"] == pytest.approx(results[b]["test_eval_tiny"]["froq"]["pauc"])


def test_cli_missing_quality_is_a_clear_error(bench, tmp_path, capsys):
    partial = tmp_path / "partial.csv"
    rows = (bench / "q" / "lfw_test_eval_tiny.csv").read_text().splitlines()
    partial.write_text("\n".join(rows[:-2]) + "\n")          # drop two images
    cfg = _config(bench, tmp_path / "out", qualities={"froq": str(partial)},
                  benchmarks=[{"name": "lfw", "type": "lfw_pairs", "images": str(bench / "lfw"),
                               "pairs": str(bench / "pairs.txt")}])
    assert run_main(eval_main, ["-c", str(cfg)]) == 2
    err = capsys.readouterr().err
    last = err.strip().splitlines()[-1]
    assert last.startswith("error: ") and str(partial) in last and "2 of 12 image(s)" in last
    assert "Traceback" not in err and "embedding" not in err   # checked before any FR work
    # with missing_quality: min the run completes
    assert run_main(eval_main, ["-c", str(cfg), "--set", "missing_quality=min"]) == 0


@pytest.mark.parametrize("override, match", [
    ("discard_limit=1.0", "discard_limit: must be a number in (0, 1)"),
    ("fmr=[0]", "every FMR must be in (0, 1]"),
    ("pair_quality=max", "pair_quality: must be one of"),
    ("qualities={random: x.csv}", "built-in reference"),
    ("benchmarks=[{name: a, type: nope}]", "type must be one of"),
    ("benchmarks=[{name: a, type: lfw_pairs, images: x}]", "needs pairs"),
])
def test_cli_config_errors(bench, tmp_path, capsys, override, match):
    cfg = _config(bench, tmp_path / "out")
    assert run_main(eval_main, ["-c", str(cfg), "--set", override]) == 2
    assert match in capsys.readouterr().err


def test_script_runs_as_a_subprocess_with_dlib_random_weights(bench, tmp_path):
    fr = tmp_path / "dlib_random.yaml"
    base = yaml.safe_load((REPO / "configs" / "fr" / "dlib_resnet.yaml").read_text())
    base["model"]["weights"] = "random"
    fr.write_text(yaml.safe_dump(base))
    cfg = _config(bench, tmp_path / "out", face_recognition_configs=[str(fr)],
                  qualities={"froq": str(bench / "q" / "lfw_test_eval_tiny.csv")},
                  benchmarks=[{"name": "lfw", "type": "lfw_pairs", "images": str(bench / "lfw"),
                               "pairs": str(bench / "pairs.txt")}])
    proc = subprocess.run([sys.executable, "evaluation/main.py", "-c", str(cfg), "--set", "random_seeds=2",
                           "--set", "batch_size=16"],
                          cwd=REPO, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "## dlib_resnet — FMR = 0.1" in proc.stdout
    res = json.loads((tmp_path / "out" / "results.json").read_text())
    assert list(res["lfw"]["dlib_resnet"]) == ["froq", "random", "perfect"]
    assert (tmp_path / "out" / "edc_lfw_dlib_resnet.png").is_file()


def test_shipped_config_is_valid():
    from evaluation.evaluate import parse_benchmarks
    from evaluation.main import SCHEMA
    from evaluation.quality_methods import method_specs
    from froq.core.config import load_config

    path = REPO / "configs" / "evaluation.yaml"
    cfg = load_config(path, SCHEMA)
    benches = parse_benchmarks(cfg["benchmarks"], str(path))
    assert [b.name for b in benches] == ["lfw", "cfp_fp", "agedb_30", "calfw", "cplfw", "xqlfw"]
    assert list(method_specs(cfg["qualities"], None, "q", "b")) == ["froq", "aux_fiqa"]
    assert cfg["fmr"] == [1e-3] and cfg["discard_limit"] == 0.3 and cfg["pair_quality"] == "min"
