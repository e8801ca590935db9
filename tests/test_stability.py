"""The calibration stability of an observer (observer/stability.py) against an independent
computation: scipy's Spearman and the initialisation's own ``select_layers`` on every resample."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.stats import rankdata, spearmanr

from observer.initialization import select_layers
from observer.stability import (MIN_IDENTITIES, average_ranks, identity_groups, resample_indices, reselect,
                                selection_stability, stability_text)

N_IDS, PER_ID, N_LAYERS = 15, 4, 12


def synthetic(seed: int = 0, n_ids: int = N_IDS):
    """Norms (N, L) of identity-folder images: layers = the label plus noise of slowly growing size
    (several layers selected, not on every resample), layer 1 a near copy of layer 0 (the greedy
    search and the utility order differ), one constant layer, one layer that never fired (NaN), one
    anti-correlated layer."""
    rng = np.random.default_rng(seed)
    paths = [f"id_{i:02d}/img_{k}.png" for i in range(n_ids) for k in range(PER_ID)]
    y = rng.normal(size=len(paths))
    norms = np.stack([y + rng.normal(scale=0.5 + 0.1 * j, size=len(paths)) for j in range(N_LAYERS)], axis=1)
    norms[:, 1] = norms[:, 0] + rng.normal(scale=0.01, size=len(paths))
    norms[:, 3] = 5.0
    norms[:, 7] = np.nan
    norms[:, 9] = -y + rng.normal(scale=0.5, size=len(paths))
    layers = [f"layer{j}" for j in range(N_LAYERS)]
    return layers, norms, y, paths


def test_average_ranks_are_scipys_with_ties():
    x = np.random.default_rng(1).integers(0, 6, (40, 5)).astype(float)
    assert np.array_equal(average_ranks(x), rankdata(x, axis=0))


def test_reselect_equals_the_initialisation_selection_on_resamples():
    layers, norms, y, paths = synthetic()
    rng = np.random.default_rng(5)
    for _ in range(25):
        idx = rng.integers(0, len(y), len(y))  # duplicates: ties in every column
        ref = select_layers(layers, norms[idx], y[idx], top_n=5)["selected_layers"]
        assert [layers[j] for j in reselect(norms[idx], y[idx], 5)] == ref


def test_stability_numbers_against_an_independent_bootstrap():
    layers, norms, y, paths = synthetic()
    selected = select_layers(layers, norms, y, top_n=5)["selected_layers"]
    got = selection_stability(layers, norms, y, paths, selected, top_n=5, resamples=30, seed=3)
    assert got["unit"] == "identity" and got["units"] == N_IDS and got["resamples"] == 30
    # independent: the documented draws (identities with replacement, generator seeded with `seed`)
    rng = np.random.default_rng(3)
    folders = sorted({p.split("/")[0] for p in paths})
    counts, rhos, same = {}, [], 0
    cols = [layers.index(s) for s in selected]
    for _ in range(30):
        drawn = rng.integers(0, len(folders), len(folders))
        idx = np.array([i for g in drawn for i, p in enumerate(paths) if p.startswith(folders[g] + "/")])
        sel = select_layers(layers, norms[idx], y[idx], top_n=5)["selected_layers"]
        for name in sel:
            counts[name] = counts.get(name, 0) + 1
        same += set(sel) == set(selected)
        rhos.append(spearmanr(norms[idx][:, cols].mean(axis=1), y[idx]).statistic)
    assert got["layer_frequency"] == pytest.approx({k: v / 30 for k, v in counts.items()})
    assert list(got["layer_frequency"].values()) == sorted(got["layer_frequency"].values(), reverse=True)
    assert got["same_selection"] == pytest.approx(same / 30)
    assert got["rho"]["median"] == pytest.approx(np.median(rhos), abs=1e-12)
    assert got["rho"]["low"] == pytest.approx(np.percentile(rhos, 2.5), abs=1e-12)
    assert got["rho"]["high"] == pytest.approx(np.percentile(rhos, 97.5), abs=1e-12)
    assert got["rho"]["observer"] == pytest.approx(spearmanr(norms[:, cols].mean(axis=1), y).statistic)
    assert got["rho"]["low"] <= got["rho"]["observer"] <= got["rho"]["high"]
    # layers that are never defined are never selected
    assert "layer3" not in got["layer_frequency"] and "layer7" not in got["layer_frequency"]
    text = stability_text(got, selected)
    assert "30 identity resamples" in text and f"{got['rho']['median']:.3f}" in text


def test_few_identity_folders_resample_images():
    layers, norms, y, paths = synthetic(n_ids=MIN_IDENTITIES - 1)
    selected = select_layers(layers, norms, y, top_n=5)["selected_layers"]
    got = selection_stability(layers, norms, y, paths, selected, top_n=5, resamples=5)
    assert got["unit"] == "image" and got["units"] == len(paths)
    assert [len(g) for g in identity_groups(paths)] == [PER_ID] * (MIN_IDENTITIES - 1)


def test_a_clear_signal_is_stable_and_noise_is_not():
    rng = np.random.default_rng(0)
    paths = [f"id_{i:03d}/a.png" for i in range(200)]
    y = rng.normal(size=200)
    clear = np.stack([y + rng.normal(scale=s, size=200) for s in (0.05, 3, 3, 3)], axis=1)
    got = selection_stability([f"l{j}" for j in range(4)], clear, y, paths, ["l0"], top_n=4, resamples=20)
    assert got["same_selection"] == 1.0 and got["rho"]["low"] > 0.9
    noise = rng.normal(size=(200, 6))
    sel = select_layers([f"l{j}" for j in range(6)], noise, y, top_n=6)["selected_layers"]
    got = selection_stability([f"l{j}" for j in range(6)], noise, y, paths, sel, top_n=6, resamples=20)
    assert got["same_selection"] < 0.5 and got["rho"]["low"] < 0.05


def test_an_image_resample_draws_as_many_images_as_there_are():
    groups = identity_groups([f"a{i}.png" for i in range(7)] + ["p/x.png", "p/y.png"])
    idx = resample_indices(groups, np.random.default_rng(0), "image")
    assert len(idx) == 9 and 0 <= idx.min() and idx.max() < 9
