"""Conformance to the official FROQ implementation's golden outputs (shared/reference/froq-golden).

The golden folder holds what the official code produced for a deterministic AdaFace IR-18
checkpoint (built by a documented rule) on 48 calibration and 48 target LFW faces: pseudo-labels,
the observer (utilities, candidates, greedy steps, selected layers, aliases) and the target
qualities. Here the three stage CLIs run in-process on the same inputs with the same settings
(official preprocessing quirk ``channels: [2, 0, 1]``, batch 8, mpx 14, alphas [0.001], top-n 10).
"""

from __future__ import annotations

import csv
import json
import math
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from scipy.stats import spearmanr

from conftest import shared_path
from conformance.generated_weights import generated_state_dict, read_manifest, write_generated_checkpoint
from stage_helpers import run_in_process

# Measured on the 2-core VM (2026-12-07): |Δlabel| <= 1.8e-7 (flip 1.8e-7, occlusion 1.2e-7,
# quality 6.0e-8); qualities |Δq/q| <= 2.7e-7; utilities and greedy ρ identical (Δ = 0).
LABEL_TOL = 1e-5        # bound for |Δ| of every label column (quality, flip, occlusion); filling
                        # occlusions with 0 instead of black moves occlusion by 8e-3, a vertical
                        # flip moves flip by 0.19, occlusion cells 1 px larger move occlusion by 7e-4,
                        # noise alpha 0.01 instead of 0.001 moves quality by 6.5e-5 (alpha 0.0012:
                        # below 1e-5, the noise term's spread is ~1e-6)
QUALITY_RTOL = 1e-5     # bound for |Δq| / |q| of the target qualities
UTILITY_TOL = 1e-6      # one rank swap among 48 images moves ρ by ≥ 1e-4: this means "same ranks"


def golden(*parts: str) -> Path:
    return shared_path("reference", "froq-golden", *parts)


def read_rows(path: Path) -> dict[str, dict[str, str]]:
    with open(path, newline="", encoding="utf-8") as fh:
        return {row["path"]: row for row in csv.DictReader(fh)}




def write_yaml(path: Path, obj: dict) -> Path:
    path.write_text(yaml.safe_dump(obj, sort_keys=False), encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def fr_config(tmp_path_factory) -> Path:
    """The golden IR-18 checkpoint rebuilt by the rule, and an FR config with the official
    preprocessing (BRG quirk ``[2, 0, 1]``, mean/std 0.5, 112×112)."""
    manifest = shared_path("reference", "adaface", "ir_18.state_dict.tsv")
    golden()  # skip early when the golden folder is absent
    work = tmp_path_factory.mktemp("golden")
    ckpt = write_generated_checkpoint(manifest, work / "adaface_ir18_generated.ckpt")
    return write_yaml(work / "fr.yaml", {
        "model": {"arch": "adaface_ir_18", "weights": str(ckpt)},
        "preprocess": {"size": 112, "mean": 0.5, "std": 0.5, "channels": [2, 0, 1]}})


def rule_tensor(i: int, key: str, shape: tuple[int, ...]) -> torch.Tensor:
    """The checkpoint rule exactly as the golden README words it (written independently)."""
    g = torch.Generator().manual_seed(i)
    if key.endswith("num_batches_tracked"):
        return torch.tensor(0)
    if key.endswith("running_mean"):
        return 0.1 * torch.randn(shape, generator=g)
    if key.endswith("running_var"):
        return 0.5 + torch.rand(shape, generator=g)
    if len(shape) >= 2:
        return torch.randn(shape, generator=g) / math.sqrt(float(np.prod(shape[1:])))
    if key.endswith(".bias"):
        return 0.1 * torch.randn(shape, generator=g)
    return 1 + 0.1 * torch.randn(shape, generator=g)


def test_generated_checkpoint_follows_the_golden_rule(fr_config):
    manifest = read_manifest(shared_path("reference", "adaface", "ir_18.state_dict.tsv"))
    ckpt = yaml.safe_load(fr_config.read_text())["model"]["weights"]
    stored = torch.load(ckpt, map_location="cpu", weights_only=True)["state_dict"]
    assert list(stored) == [k for k, _ in manifest]
    assert all(k.startswith("model.") for k in stored)
    for i, (key, shape) in enumerate(manifest):
        want = rule_tensor(i, key, shape)
        assert stored[key].dtype == (torch.int64 if key.endswith("num_batches_tracked") else torch.float32)
        assert tuple(stored[key].shape) == shape, key
        assert torch.allclose(stored[key].float(), want.float(), rtol=1e-6, atol=1e-7), key
    assert generated_state_dict(manifest).keys() == stored.keys()


# ---------------------------------------------------------------------------------------------
# (a) pseudo-labels
# ---------------------------------------------------------------------------------------------
def test_pseudo_labels_match_golden(fr_config, tmp_path):
    from baselineFIQA.main import main as labels_main
    calibration = golden("calibration")
    all_paths = sorted(p.relative_to(calibration).as_posix() for p in calibration.rglob("*.jpg"))
    assert len(all_paths) == 48
    subset = all_paths[::12]  # 4 images spread over the set (each one more image is the same check)
    folder = tmp_path / "calibration"
    for rel in subset:
        (folder / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(calibration / rel, folder / rel)
    cfg = write_yaml(tmp_path / "baseline.yaml", {
        "face_recognition_config": str(fr_config),
        "dataset": {"path": "PLACEHOLDER", "batch_size": 8, "mpx": 14, "image_size": 112,
                    "alphas": [0.001], "noise_count": 10},
        "outpath": str(tmp_path / "unused.csv"), "device": "cpu", "num_workers": 0, "seed": 0})
    out = tmp_path / "out" / "labels.csv"
    run_in_process(labels_main, ["-c", str(cfg), "--set", f"dataset.path={folder}", "--set", f"outpath={out}"])

    ours = read_rows(out)
    ref = read_rows(golden("labels.csv"))
    assert sorted(ours) == subset
    assert set(next(iter(ours.values()))) >= {"path", "flip", "noise", "occlusion", "quality"}
    worst = {}
    for column in ("quality", "flip", "occlusion"):
        diffs = [abs(float(ours[p][column]) - float(ref[p][column])) for p in subset]
        worst[column] = max(diffs)
    assert all(d <= LABEL_TOL for d in worst.values()), worst
    # the components are not degenerate (a constant would make the test meaningless)
    assert np.std([float(ref[p]["flip"]) for p in subset]) > 0.01
    for p in subset:  # label = mean of the three components
        r = ours[p]
        assert float(r["quality"]) == pytest.approx(
            (float(r["flip"]) + float(r["noise"]) + float(r["occlusion"])) / 3, abs=1e-6)


# ---------------------------------------------------------------------------------------------
# (b) observer initialisation, (c) inference
# ---------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def observer_run(fr_config, tmp_path_factory) -> tuple[dict, Path]:
    """Observer initialisation CLI on all 48 golden calibration images with the golden labels."""
    from observer.initialization import main as init_main
    work = tmp_path_factory.mktemp("observer")
    cfg = write_yaml(work / "init.yaml", {
        "face_recognition_config": str(fr_config),
        "dataset": {"path": str(golden("calibration")), "batch_size": 8},
        "label_location": str(golden("labels.csv")), "label_column": "quality", "top_n": 10,
        "outpath": str(work / "unused.json"), "device": "cpu", "num_workers": 0, "seed": 0})
    out = work / "observer.json"
    run_in_process(init_main, ["-c", str(cfg), "--set", f"outpath={out}"])
    return json.loads(out.read_text(encoding="utf-8")), out


@pytest.fixture(scope="module")
def golden_observer() -> dict:
    return json.loads(golden("observer.json").read_text(encoding="utf-8"))


def canonical(golden_obs: dict):
    """Layer name → the first member of its golden alias group (itself when it has none).

    Aliases have identical norms, hence equal utilities: the spec breaks such ties by the lower
    layer index, the official code did not consistently (its candidates list ``output_layer``
    before ``output_layer.4`` but ``body.7.res_layer.5`` before ``body.7.res_layer``), so names
    are compared modulo alias groups."""
    rep = {}
    for group in golden_obs["aliases"]:
        for name in group:
            rep[name] = group[0]
    return lambda name: rep.get(name, name)


def test_observer_selection_matches_golden(observer_run, golden_observer):
    obs, _ = observer_run
    canon = canonical(golden_observer)
    assert obs["calibration"]["images"] == 48
    assert obs["selected_layers"] == golden_observer["selected_layers"]  # identical names
    # candidates and greedy steps beyond the selection: modulo alias groups (tie order, see canonical)
    assert [canon(n) for n in obs["candidates"]] == [canon(n) for n in golden_observer["candidates"]]
    assert [canon(s["layer"]) for s in obs["greedy"]] == \
        [canon(s["layer"]) for s in golden_observer["greedy"]]
    ours_rho = [s["spearman"] for s in obs["greedy"]]
    ref_rho = [s["spearman"] for s in golden_observer["greedy"]]
    assert np.allclose(ours_rho, ref_rho, rtol=0, atol=UTILITY_TOL), (ours_rho, ref_rho)


def test_observer_utilities_and_aliases_match_golden(observer_run, golden_observer):
    obs, _ = observer_run
    assert [l["name"] for l in obs["layers"]] == [l["name"] for l in golden_observer["layers"]]
    undefined = [l["name"] for l in obs["layers"] if l["utility"] is None]
    assert undefined == [l["name"] for l in golden_observer["layers"] if l["utility"] is None] == ["body"]
    assert obs["never_called"] == golden_observer["never_called"] == ["body"]
    diffs = {l["name"]: abs(l["utility"] - g["utility"])
             for l, g in zip(obs["layers"], golden_observer["layers"]) if g["utility"] is not None}
    worst = max(diffs, key=diffs.get)
    assert diffs[worst] <= UTILITY_TOL, (worst, diffs[worst])
    assert sorted(map(sorted, obs["aliases"])) == sorted(map(sorted, golden_observer["aliases"]))


def test_inference_matches_golden_qualities(observer_run, fr_config, tmp_path):
    from observer.inference import main as inference_main
    _, observer_file = observer_run
    cfg = write_yaml(tmp_path / "inference.yaml", {
        "face_recognition_config": str(fr_config), "target_dataset": str(golden("target")),
        "batch_size": 8, "observer_data": str(observer_file), "early_exit": True,
        "save_embeddings": False, "outpath": str(tmp_path / "unused.csv"), "device": "cpu",
        "num_workers": 0, "seed": 0})
    out = tmp_path / "qualities.csv"
    run_in_process(inference_main, ["-c", str(cfg), "--set", f"outpath={out}"])
    ours = read_rows(out)
    ref = read_rows(golden("qualities.csv"))
    assert sorted(ours) == sorted(ref) and len(ref) == 48
    paths = sorted(ref)
    q_ours = np.array([float(ours[p]["quality"]) for p in paths])
    q_ref = np.array([float(ref[p]["quality"]) for p in paths])
    assert spearmanr(q_ours, q_ref).statistic >= 0.999
    # the same selected layers → the same numbers, up to float32 summation order
    rel = np.abs(q_ours / q_ref - 1)
    assert rel.max() <= QUALITY_RTOL, (paths[int(rel.argmax())], rel.max())
