"""The dense identity-folder protocol and bootstrap intervals (issue 12.5), and model names after
their FR config (issue 14.9)."""

from __future__ import annotations

import csv
import json
from math import comb
from pathlib import Path

import numpy as np
import pytest
import yaml

from froq.core.cli import run_main
from froq.core.errors import FroqError

from evaluation.identity_folders import read_identity_folders, sample_impostor_pairs
from evaluation.main import main as eval_main

SIZES = {"Ann": 4, "Bob": 3, "Cid": 1, "Dee": 5, "Eve": 2, "Fay": 3}


@pytest.fixture
def folders(tmp_path) -> Path:
    """Identity folders of empty .png files (the protocol only lists them; scores come from a CSV)."""
    root = tmp_path / "people"
    for name, n in SIZES.items():
        (root / name).mkdir(parents=True)
        for i in range(n):
            (root / name / f"{name}_{i:04d}.png").write_bytes(b"")
    return root


def _read_csv(path):
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


def test_every_genuine_pair_and_seeded_distinct_impostors(folders):
    p = read_identity_folders(folders, "people", impostors=40, seed=3)
    n_gen = sum(comb(n, 2) for n in SIZES.values())
    assert p.n_genuine == n_gen == 6 + 3 + 10 + 1 + 3 and p.n_impostor == 40
    ident = np.array(p.identities)
    a, b = p.pairs[:, 0], p.pairs[:, 1]
    assert np.all(a < b)
    assert np.all((ident[a] == ident[b]) == p.genuine)                 # genuine = same identity folder
    imp = p.pairs[~p.genuine]
    assert len({tuple(r) for r in imp.tolist()}) == 40                  # no repeated impostor pair
    assert imp.tolist() == sorted(imp.tolist())                         # listed in a fixed order
    again = read_identity_folders(folders, "people", impostors=40, seed=3)
    np.testing.assert_array_equal(again.pairs, p.pairs)
    other = read_identity_folders(folders, "people", impostors=40, seed=4)
    assert not np.array_equal(other.pairs, p.pairs)
    assert p.info["impostors_possible"] == comb(18, 2) - n_gen and p.info["seed"] == 3
    # asking for more impostors than exist gives all of them
    full = read_identity_folders(folders, "people", impostors=10**6)
    assert full.n_impostor == comb(18, 2) - n_gen
    # a cap on images per identity (seeded subsample)
    capped = read_identity_folders(folders, "people", impostors=10, max_images_per_identity=2, seed=1)
    assert capped.n_genuine == 5 and len(capped.images) == 11
    assert read_identity_folders(folders, "people", impostors=10, max_images_per_identity=2, seed=1).images == \
        capped.images != read_identity_folders(folders, "people", impostors=10, max_images_per_identity=2,
                                               seed=2).images


def test_impostor_sampling_is_uniform_over_cross_identity_pairs():
    labels = np.repeat(np.arange(4), [1, 2, 3, 4])                       # 10 images, 35 cross pairs
    counts = np.zeros((10, 10))
    for seed in range(300):
        for i, j in sample_impostor_pairs(labels, 5, seed):
            counts[i, j] += 1
    cross = np.triu(labels[:, None] != labels[None, :], 1)
    assert counts[~cross].sum() == 0
    expected = 300 * 5 / 35
    assert np.all(np.abs(counts[cross] - expected) < 5 * np.sqrt(expected))


def test_folder_errors(tmp_path, folders):
    (folders / "loose.png").write_bytes(b"")
    with pytest.raises(FroqError, match="directly in the folder"):
        read_identity_folders(folders)
    single = tmp_path / "single"
    for name in ("A", "B"):
        (single / name).mkdir(parents=True)
        (single / name / "x.png").write_bytes(b"")
    with pytest.raises(FroqError, match="no genuine pair"):
        read_identity_folders(single)


def _scored_config(folders: Path, tmp_path: Path, **extra) -> Path:
    """Scores from synthetic embeddings (3 per identity direction + noise) for the dense pairs, a
    quality CSV, and the config."""
    proto = read_identity_folders(folders, "people", impostors=60, seed=0)
    rng = np.random.default_rng(0)
    centres = {n: rng.normal(size=8) for n in SIZES}
    emb = np.stack([centres[i] + rng.normal(scale=0.9, size=8) for i in proto.identities])
    emb /= np.linalg.norm(emb, axis=1, keepdims=True)
    with open(tmp_path / "scores.csv", "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["path1", "path2", "score"])
        for i, j in proto.pairs:
            w.writerow([proto.images[i], proto.images[j], float(emb[i] @ emb[j])])
    with open(tmp_path / "q.csv", "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["path", "quality"])
        for k, p in enumerate(proto.images):
            w.writerow([p, rng.random()])
    cfg = {"face_recognition_configs": [{"name": "ext"}],
           "benchmarks": [{"name": "people", "type": "identity_folders", "images": str(folders),
                           "impostors": 60, "seed": 0, "scores": str(tmp_path / "scores.csv")}],
           "qualities": {"q": str(tmp_path / "q.csv")}, "fmr": [0.05], "discard_limit": [0.3, 0.2],
           "bootstrap": 200, "random_seeds": 3, "outdir": str(tmp_path / "out"), "plots": False}
    cfg.update(extra)
    path = tmp_path / "eval.yaml"
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    return path


def test_dense_benchmark_end_to_end_with_intervals(folders, tmp_path, capsys):
    cfg = _scored_config(folders, tmp_path)
    results = eval_main(["-c", str(cfg)])
    table = capsys.readouterr().out
    assert "## ext — FMR = 0.05 — discard limit 0.3" in table and "discard limit 0.2" in table
    assert " ± " in table
    e = results["people"]["ext"]["q"]
    assert e["bootstrap"]["unit"] == "identities" and e["bootstrap"]["n_clusters"] == 6
    assert e["bootstrap"]["resamples"] == 200
    for key in ("pauc_norm_ci", "pauc_ci", "pauc_minus_best_ci", "fnmr_at_limit_ci", "pauc_value_ci"):
        lo, hi = e[key]
        assert lo <= hi
    assert set(e["by_limit"]) == {"0.3", "0.2"} and e["by_limit"]["0.3"]["pauc"] == e["pauc"]
    assert e["n_genuine"] == 23 and e["n_impostor"] == 60
    out = tmp_path / "out"
    # the pair list is written for provenance and reads back as a csv benchmark
    rows = _read_csv(out / "protocols" / "people.csv")
    assert len(rows) == 83 and sum(r["genuine"] == "1" for r in rows) == 23
    run = json.loads((out / "run.json").read_text())
    info = run["benchmarks"]["people"]
    assert info["seed"] == 0 and info["impostors_requested"] == 60 and len(info["pair_list_sha256"]) == 64
    assert run["convention"] == {"threshold": "fixed", "discard_over": "mated", "normalisation": "start"}
    long = _read_csv(out / "table_long.csv")
    assert {r["discard_limit"] for r in long} == {"0.3", "0.2"} and all(r["ci_low"] for r in long)
    assert list(_read_csv(out / "table.csv")[0]) == ["model", "fmr", "method", "people", "mean"]
    # the same pairs as a csv benchmark: identical point metrics; intervals over pairs unless told
    csv_cfg = yaml.safe_load(cfg.read_text())
    csv_cfg["benchmarks"] = [{"name": "people", "type": "csv", "images": str(folders),
                              "pairs": str(out / "protocols" / "people.csv"), "scores": str(tmp_path / "scores.csv")}]
    csv_cfg["outdir"] = str(tmp_path / "out_csv")
    cfg.write_text(yaml.safe_dump(csv_cfg))
    as_csv = eval_main(["-c", str(cfg)])["people"]["ext"]["q"]
    assert as_csv["pauc"] == pytest.approx(e["pauc"]) and as_csv["bootstrap"]["unit"] == "pairs"
    csv_cfg["benchmarks"][0]["identity"] = "folder"
    cfg.write_text(yaml.safe_dump(csv_cfg))
    by_id = eval_main(["-c", str(cfg)])["people"]["ext"]["q"]
    assert by_id["bootstrap"]["unit"] == "identities" and by_id["pauc_norm_ci"] == e["pauc_norm_ci"]


def test_conventions_and_no_bootstrap_from_the_config(folders, tmp_path, capsys):
    cfg = _scored_config(folders, tmp_path, bootstrap=0, threshold="per_step", discard_over="all",
                         pauc_normalisation="raw", discard_limit=0.3)
    e = eval_main(["-c", str(cfg)])["people"]["ext"]["q"]
    assert "pauc_norm_ci" not in e and "bootstrap" not in e
    assert e["pauc_value"] == e["pauc"] and e["convention"]["threshold"] == "per_step"
    assert "raw, not normalised" in capsys.readouterr().out
    assert run_main(eval_main, ["-c", str(cfg), "--set", "threshold=sometimes"]) == 2
    assert "threshold: must be one of" in capsys.readouterr().err
    assert run_main(eval_main, ["-c", str(cfg), "--set", "discard_limit=[0.3, 1.5]"]) == 2
    spec = yaml.safe_load(cfg.read_text())
    spec["benchmarks"][0] = {"name": "people", "type": "csv", "images": str(folders),
                             "pairs": str(tmp_path / "out" / "protocols" / "people.csv"),
                             "scores": str(tmp_path / "scores.csv")}
    spec.update(bootstrap=10, bootstrap_unit="identities")
    cfg.write_text(yaml.safe_dump(spec))
    assert run_main(eval_main, ["-c", str(cfg)]) == 2
    assert "does not tell the identity" in capsys.readouterr().err


def test_models_are_named_after_their_fr_config(tmp_path):
    from evaluation.evaluate import parse_models

    onnx = yaml.safe_load((Path(__file__).parents[1] / "configs" / "fr" / "onnx_example.yaml").read_text())
    for stem in ("arcface_r100", "mobilefacenet"):
        (tmp_path / f"{stem}.yaml").write_text(yaml.safe_dump(onnx))
    dlib = yaml.safe_load((Path(__file__).parents[1] / "configs" / "fr" / "dlib_resnet.yaml").read_text())
    for stem in ("dlib_a", "dlib_b"):
        (tmp_path / f"{stem}.yaml").write_text(yaml.safe_dump(dlib))
    models = parse_models([str(tmp_path / "arcface_r100.yaml"), str(tmp_path / "mobilefacenet.yaml"),
                           str(tmp_path / "dlib_a.yaml"), {"config": str(tmp_path / "dlib_b.yaml"), "name": "mine"}],
                          "cfg")
    assert [m.name for m in models] == ["arcface_r100", "mobilefacenet", "dlib_resnet", "mine"]
    assert parse_models([str(tmp_path / "mobilefacenet.yaml")], "cfg")[0].name == "mobilefacenet"  # generic arch
    two = parse_models([str(tmp_path / "dlib_a.yaml"), str(tmp_path / "dlib_b.yaml")], "cfg")
    assert [m.name for m in two] == ["dlib_a", "dlib_b"]                # same arch: the config file names
    with pytest.raises(FroqError, match="several models are named"):
        parse_models([str(tmp_path / "dlib_a.yaml"), {"config": str(tmp_path / "dlib_b.yaml"), "name": "dlib_resnet"}],
                     "cfg")
