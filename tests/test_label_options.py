"""Pseudo-label options beyond the paper (issue 12, point 4): component weights, the ``relative``
noise model, several noise strengths and several occlusion cell sizes — each checked against an
independent computation of the spec's formulas on a tiny network; the paper's settings keep their
columns and resume key; bad settings are one-line errors."""

from __future__ import annotations

import contextlib
import io
import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from baselineFIQA.labels import COLUMNS, LabelSettings, compute_pseudo_labels, label_columns
from baselineFIQA.main import main as labels_main
from froq.core.cli import run_main
from froq.core.errors import FroqError
from froq.core.io import read_csv
from froq.core.runner import iterate_folder
from stage_helpers import error_line
from test_observer import SIZE, tiny_fr

K = 3  # noise draws


@pytest.fixture(scope="module")
def faces(tmp_path_factory):
    """Six small RGB PNGs of varied contrast in two identity folders."""
    root = tmp_path_factory.mktemp("label_options")
    rng = np.random.default_rng(3)
    for i in range(6):
        (root / f"id_{i % 2}").mkdir(exist_ok=True)
        arr = np.clip(rng.uniform(40, 200, 3) + rng.uniform(5, 60) * rng.standard_normal((SIZE, SIZE, 3)), 0, 255)
        Image.fromarray(arr.astype(np.uint8)).save(root / f"id_{i % 2}/img_{i}.png")
    return root


def model_inputs(fr, root):
    """(paths, preprocessed batch) with the shared reader, in folder order."""
    (paths, x), = list(iterate_folder(root, fr.preprocess, batch_size=100))
    return paths, x


def embed(fr, x):
    with torch.inference_mode():
        return fr.network(x).float()


def cos_mean(fr, x, copies):
    """Mean cosine of each image's embedding to the embeddings of its ``copies`` (list of batches)."""
    ref = embed(fr, x)
    return torch.stack([F.cosine_similarity(embed(fr, c), ref, dim=-1) for c in copies]).mean(0).numpy()


def by_hand(fr, x, alphas=(0.001,), cells=(8,), model="mix"):
    """The spec's components computed directly (loops over draws and cells, no batching tricks)."""
    n = torch.randn((K, 3, SIZE, SIZE), generator=torch.Generator().manual_seed(0))
    flip = cos_mean(fr, x, [torch.flip(x, dims=[-1])])
    noise = {}
    for a in alphas:
        if model == "mix":
            copies = [(1 - a) * x + a * n[k] for k in range(K)]
        else:
            sigma = x.reshape(len(x), -1).std(dim=1).view(-1, 1, 1, 1)
            copies = [x + a * sigma * n[k] for k in range(K)]
        noise[a] = cos_mean(fr, x, copies)
    black = fr.preprocess.black_value().view(1, 3, 1, 1)
    occ = {}
    for c in cells:
        copies = []
        for top in range(0, SIZE, c):
            for left in range(0, SIZE, c):
                y = x.clone()
                y[:, :, top:top + c, left:left + c] = black
                copies.append(y)
        occ[c] = cos_mean(fr, x, copies)
    return flip, noise, occ


def test_paper_settings_keep_columns_key_and_formula(faces):
    fr = tiny_fr()
    paths, x = model_inputs(fr, faces)
    res = compute_pseudo_labels(fr, faces, batch_size=4, mpx=8, noise_count=K, channels_last=False)
    assert res.paths == paths and tuple(["path", *res.columns]) == COLUMNS
    flip, noise, occ = by_hand(fr, x)
    np.testing.assert_allclose(res.column("flip"), flip, atol=2e-6)
    np.testing.assert_allclose(res.column("noise"), noise[0.001], atol=2e-6)
    np.testing.assert_allclose(res.column("occlusion"), occ[8], atol=2e-6)
    f, n, o = (res.column(c).astype(np.float32) for c in ("flip", "noise", "occlusion"))
    assert np.array_equal(res.column("quality").astype(np.float32), (f + n + o) / np.float32(3))
    # the resume key of a paper run with full occlusion forwards and nothing folded is what it was
    # before the options existed (the defaults add occlusion: incremental, test_incremental_occlusion.py,
    # and fold_affine: true, test_label_fusion.py)
    key = LabelSettings(mpx=8, noise_count=K, occlusion="full", fold=False).fingerprint()
    assert key == {"alphas": (0.001,), "noise_count": K, "mpx": 8, "seed": 0, "autocast": True,
                   "channels_last": False}


def test_component_weights_give_the_weighted_mean(faces):
    fr = tiny_fr()
    plain = compute_pseudo_labels(fr, faces, batch_size=4, mpx=8, noise_count=K, channels_last=False)
    weighted = compute_pseudo_labels(fr, faces, batch_size=4, mpx=8, noise_count=K, channels_last=False,
                                     weights=[4, 0, 1])  # sum 5: the mean divides by the sum
    for c in ("flip", "noise", "occlusion"):  # the components do not depend on the weights
        np.testing.assert_array_equal(weighted.column(c), plain.column(c))
    expected = (4 * plain.column("flip") + plain.column("occlusion")) / 5
    np.testing.assert_allclose(weighted.column("quality"), expected, atol=1e-6)
    assert not np.allclose(weighted.column("quality"), plain.column("quality"), atol=1e-4)
    key = LabelSettings(weights=(2, 0, 1)).fingerprint()
    assert key["weights"] == [2.0, 0.0, 1.0] and "noise_model" not in key


def test_relative_noise_and_several_strengths(faces):
    fr = tiny_fr()
    paths, x = model_inputs(fr, faces)
    res = compute_pseudo_labels(fr, faces, batch_size=4, mpx=8, noise_count=K, channels_last=False,
                                alphas=[0.05, 0.5], noise_model="relative")
    assert res.columns == ["flip", "noise", "occlusion", "quality", "noise_0.05", "noise_0.5"]
    _, noise, _ = by_hand(fr, x, alphas=(0.05, 0.5), model="relative")
    np.testing.assert_allclose(res.column("noise_0.05"), noise[0.05], atol=2e-6)
    np.testing.assert_allclose(res.column("noise_0.5"), noise[0.5], atol=2e-6)
    np.testing.assert_allclose(res.column("noise"), (noise[0.05] + noise[0.5]) / 2, atol=2e-6)
    # relative noise is not the paper's mix: at α = 0.5 the two differ clearly
    _, mix, _ = by_hand(fr, x, alphas=(0.5,))
    assert np.abs(mix[0.5] - noise[0.5]).max() > 1e-3
    assert LabelSettings(noise_model="relative").fingerprint()["noise_model"] == "relative"


def test_several_cell_sizes_average_each_grid_then_the_sizes(faces):
    fr = tiny_fr()
    paths, x = model_inputs(fr, faces)
    res = compute_pseudo_labels(fr, faces, batch_size=4, mpx=[4, 8], noise_count=K, channels_last=False,
                                forward_batch=7)  # chunks that cut through the grids
    assert res.columns[-2:] == ["occlusion_4", "occlusion_8"]
    _, _, occ = by_hand(fr, x, cells=(4, 8))
    np.testing.assert_allclose(res.column("occlusion_4"), occ[4], atol=2e-6)  # 16 cells
    np.testing.assert_allclose(res.column("occlusion_8"), occ[8], atol=2e-6)  # 4 cells
    np.testing.assert_allclose(res.column("occlusion"), (occ[4] + occ[8]) / 2, atol=2e-6)
    assert LabelSettings(mpx=(4, 8)).fingerprint()["mpx"] == [4, 8]
    # a list of one size is the paper's single grid: same columns, same key
    one = compute_pseudo_labels(fr, faces, batch_size=4, mpx=[8], noise_count=K, channels_last=False)
    assert one.columns == list(COLUMNS[1:])
    assert label_columns(LabelSettings(mpx=[8])) == COLUMNS


@pytest.mark.parametrize("kwargs, needle", [
    ({"weights": [1, 1]}, "three finite numbers"),
    ({"weights": [1, -1, 1]}, "three finite numbers"),
    ({"weights": [0, 0, 0]}, "positive sum"),
    ({"noise_model": "gauss"}, "noise model"),
    ({"mpx": [4, 40]}, "mpx=40"),
    ({"mpx": [4, 4]}, "different sizes"),
])
def test_bad_settings_are_one_line_errors(faces, kwargs, needle):
    with pytest.raises(FroqError, match=needle) as info:
        compute_pseudo_labels(tiny_fr(), faces, batch_size=4, noise_count=1, **{"mpx": 8, **kwargs})
    assert "\n" not in str(info.value)


def _stage(cfg, *sets):
    argv = ["-c", str(cfg)] + [a for s in sets for a in ("--set", s)]
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        rc = run_main(labels_main, argv)
    return rc, err.getvalue()


def test_stage_writes_new_columns_and_records_settings(faces, tmp_path):
    fr_yaml = tmp_path / "fr.yaml"
    fr_yaml.write_text(f"model: {{arch: froq_test_tiny, weights: random}}\n"
                       f"preprocess: {{size: {SIZE}, mean: 0.5, std: 0.5, channels: [2, 1, 0]}}\n")
    cfg = tmp_path / "baseline.yaml"
    cfg.write_text(f"face_recognition_config: {fr_yaml}\ndevice: cpu\n"
                   f"dataset: {{path: {faces}, batch_size: 4, noise_count: 2}}\noutpath: {tmp_path}/l.csv\n")
    rc, err = _stage(cfg, "dataset.mpx=[4,8]", "dataset.alphas=[0.01,0.1]", "dataset.component_weights=[1,0,2]",
                     "dataset.noise_model=relative")
    assert rc == 0, err
    header = (tmp_path / "l.csv").read_text().splitlines()[0].split(",")
    assert header == ["path", "flip", "noise", "occlusion", "quality", "noise_0.01", "noise_0.1",
                      "occlusion_4", "occlusion_8"]
    meta = json.loads((tmp_path / "l.meta.json").read_text())
    assert meta["label_settings"] == {"alphas": [0.01, 0.1], "noise_count": 2, "noise_model": "relative",
                                      "mpx": [4, 8], "component_weights": [1.0, 0.0, 2.0], "seed": 0}
    assert meta["columns"] == header
    # the stage passes every option on: its numbers are those of the function with the same settings
    want = compute_pseudo_labels(tiny_fr(), faces, batch_size=4, mpx=[4, 8], alphas=[0.01, 0.1], noise_count=2,
                                 weights=[1, 0, 2], noise_model="relative")
    rows = read_csv(tmp_path / "l.csv")
    assert [r["path"] for r in rows] == want.paths
    for c in header[1:]:
        np.testing.assert_allclose([float(r[c]) for r in rows], want.column(c), atol=2e-6)
    rc, err = _stage(cfg, "dataset.component_weights=[1,1]")
    error_line(rc, err, "dataset.component_weights", "three numbers")
    rc, err = _stage(cfg, "dataset.noise_model=gauss")
    error_line(rc, err, "dataset.noise_model", "mix, relative")
    rc, err = _stage(cfg, "dataset.mpx=[4,64]")
    error_line(rc, err, "dataset.mpx", "64 px")
