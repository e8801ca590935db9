"""Issue 22: depth costs of modules, the depth budget of FROQ+, its bootstrap stability record and
the ``stable`` selection rule, against hand counts and the reference (unvectorised) selection."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from froq.core.errors import FroqError
from observer.depth import early_exit_cost, module_costs
from observer.initialization import (is_paper, observer_from_statistics, resolve_options,
                                     select_features)
from observer.stability import (STABLE_THRESHOLD, quick_select, resampled_selections,
                                stability_text, stable_features)

STATS = ["l2", "l1", "mean", "std", "spatial_std"]


class Known(nn.Module):
    """12×12 input; MACs per image: a 15,552 (576 outputs × 3·9), b 7,776 (216 × 4·9, stride 2),
    g 3,888 (216 × 2·9: 6→6 in 3 groups), fc 30 (5 × 6); ``g`` is called twice."""

    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU())
        self.b = nn.Conv2d(4, 6, 3, stride=2, padding=1)
        self.g = nn.Conv2d(6, 6, 3, padding=1, groups=3)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(6, 5)

    def forward(self, x):
        x = self.g(self.g(self.b(self.a(x))))
        return self.fc(self.pool(x).flatten(1))


def test_module_costs_count_known_macs():
    got = module_costs(Known(), torch.zeros(1, 3, 12, 12))
    a, b, g, fc = 15552, 7776, 3888, 30
    total = a + b + 2 * g + fc
    assert got["total_macs"] == total
    c = got["costs"]
    assert c["a.0"] == c["a.1"] == c["a"] == pytest.approx(a / total)
    assert c["b"] == pytest.approx((a + b) / total)
    assert c["g"] == pytest.approx((a + b + 2 * g) / total)  # its last call
    assert c["pool"] == pytest.approx((a + b + 2 * g) / total)
    assert c["fc"] == 1.0
    assert list(c) == ["a", "a.0", "a.1", "b", "g", "pool", "fc"]
    assert early_exit_cost(c, ["b", "a.1"]) == pytest.approx((a + b) / total)
    assert early_exit_cost(c, []) is None
    # a batch of 4 gives the same per-image shares
    assert module_costs(Known(), torch.zeros(4, 3, 12, 12))["costs"] == pytest.approx(c)


def depth_data(seed: int = 0, n_ids: int = 40, per_id: int = 2):
    """(N, L, 5) statistics of 8 layers in execution order (cost (k+1)/8): the label shows in the
    L2 norm of layer 2 only (the paper's choice) and more strongly in the *mean* of the two deepest
    layers (which the paper, ranking L2 only, cannot use). Identity folders of ``per_id`` images."""
    rng = np.random.default_rng(seed)
    n = n_ids * per_id
    y = rng.normal(size=n)
    stats = rng.normal(size=(n, 8, 5)) + 10
    stats[:, 2, 0] += 3.0 * y
    stats[:, 6, 2] += 4.0 * y
    stats[:, 7, 2] -= 4.0 * y
    layers = [f"layer{k}" for k in range(8)]
    costs = {"unit": "test", "total_macs": 8, "costs": {name: (k + 1) / 8 for k, name in enumerate(layers)}}
    paths = [f"id_{i // per_id:03d}/img_{i}.png" for i in range(n)]
    return layers, stats, y, paths, costs


def test_depth_budget_paper_keeps_plus_within_the_paper_cost():
    layers, stats, y, paths, costs = depth_data()
    paper = observer_from_statistics(layers, STATS, stats, paths, y, None, 4, costs=costs, stability=False)
    assert paper["selected_layers"] == ["layer2"]  # the strongest L2 norm
    budgeted = observer_from_statistics(layers, STATS, stats, paths, y, resolve_options("plus"), 4,
                                        costs=costs, stability=False)
    free = observer_from_statistics(layers, STATS, stats, paths, y,
                                    resolve_options("plus", {"depth_budget": "none"}), 4,
                                    costs=costs, stability=False)
    # without a budget plus goes deep (the test can fail); with it, nothing deeper than the paper
    assert free["depth"]["early_exit_cost"] > paper["depth"]["early_exit_cost"]
    assert budgeted["depth"]["early_exit_cost"] <= paper["depth"]["early_exit_cost"]
    assert budgeted["depth"]["paper_early_exit_cost"] == paper["depth"]["early_exit_cost"] == 3 / 8
    assert all(f["cost"] <= 3 / 8 for f in budgeted["features"])
    # the CV saw the same rule: its held-out ρ are those of the folds with the budget's mask
    from observer.selection import cross_validate_size
    allowed = np.repeat(np.arange(8) <= 2, 5)
    cv = cross_validate_size(stats.reshape(len(y), -1), y, [p.split("/")[0] for p in paths], 4, 5, 0,
                             "zscore", True, "equal", allowed)
    assert budgeted["cv"]["spearman_by_size"] == cv.spearman_by_size
    half = observer_from_statistics(layers, STATS, stats, paths, y,
                                    resolve_options("plus", {"depth_budget": 0.5}), 4, costs=costs,
                                    stability=False)
    assert half["depth"]["early_exit_cost"] <= 0.5 and half["depth"]["max_cost"] == 0.5


def test_cv_folds_only_rank_allowed_features():
    from observer.selection import cross_validate_size, fit_features
    layers, stats, y, paths, _ = depth_data(1)
    values = stats.reshape(len(y), -1)
    allowed = np.arange(values.shape[1]) < 3 * 5  # the first three layers
    fit = fit_features(values, y, 6, "zscore", True, "equal", allowed)
    assert fit.candidates and all(allowed[j] for j in fit.candidates)
    assert fit.utilities[6 * 5 + 2] is not None  # utilities of excluded features are still recorded
    free = cross_validate_size(values, y, [p.split("/")[0] for p in paths], 6, 4, 0, "zscore", True, "equal")
    masked = cross_validate_size(values, y, [p.split("/")[0] for p in paths], 6, 4, 0, "zscore", True,
                                 "equal", allowed)
    assert masked.spearman_by_size != free.spearman_by_size


def test_paper_record_unchanged_by_costs():
    layers, stats, y, paths, costs = depth_data(2)
    assert is_paper(resolve_options("paper"))
    plain = observer_from_statistics(layers, STATS, stats, paths, y, None, 4)
    with_costs = observer_from_statistics(layers, STATS, stats, paths, y, resolve_options("paper"), 4,
                                          costs=costs)
    depth = with_costs.pop("depth")
    for r in (plain, with_costs):
        r["stability"].pop("seconds")
    assert with_costs == plain
    assert depth["early_exit_cost"] == 3 / 8 and depth["budget"] == "none"


def test_depth_budget_option_values():
    assert resolve_options("plus")["depth_budget"] == "paper"
    assert resolve_options("paper")["depth_budget"] == "none"
    assert resolve_options("plus", {"depth_budget": 0.25})["depth_budget"] == 0.25
    for bad in (0, 1.5, "deep", True, -0.1):
        with pytest.raises(FroqError, match="depth_budget"):
            resolve_options("plus", {"depth_budget": bad})
    layers, stats, y, paths, costs = depth_data()
    uncosted = {**costs, "costs": {**costs["costs"], "layer2": None}}  # the paper's layer
    with pytest.raises(FroqError, match="no depth cost"):
        observer_from_statistics(layers, STATS, stats, paths, y, resolve_options("plus"), 4,
                                 costs=uncosted, stability=False)
    with pytest.raises(FroqError, match="module costs"):
        observer_from_statistics(layers, STATS, stats, paths, y, resolve_options("plus"), 4, stability=False)


@pytest.mark.parametrize("selection", ["cv", "greedy"])
def test_quick_select_is_the_reference_selection(selection):
    """The vectorised resample selection equals ``select_features`` (scipy, unvectorised)."""
    layers, stats, y, paths, _ = depth_data(3)
    options = resolve_options("plus", {"selection": selection, "depth_budget": "none"})
    values = stats.reshape(len(y), -1)
    rng = np.random.default_rng(4)
    for _ in range(6):
        idx = rng.integers(0, len(y), len(y))
        groups = [paths[i].split("/")[0] for i in idx]
        ref = select_features(layers, stats[idx], y[idx], options, 5, groups, 4, 0)
        got = quick_select(values[idx], y[idx], groups, options, 5, 4, 0)
        assert [(layers[j // 5], STATS[j % 5]) for j in got] == \
            [(f["layer"], f["statistic"]) for f in ref["features"]]


def test_plus_observers_get_a_stability_record():
    layers, stats, y, paths, costs = depth_data(5)
    rec = observer_from_statistics(layers, STATS, stats, paths, y, resolve_options("plus"), 4, costs=costs)
    st = rec["stability"]
    assert st["resamples"] == 100 and st["unit"] == "identity" and st["units"] == 40
    assert 0.0 <= st["same_selection"] <= 1.0 and st["rule"] == "cv"
    assert st["rho"]["low"] <= st["rho"]["median"] <= st["rho"]["high"]
    names = [f"{f['layer']}:{f['statistic']}" for f in rec["features"]]
    assert set(names) <= set(st["feature_frequency"])
    assert "same features" in stability_text(st, rec["selected_layers"])
    # no resample used a layer beyond the budget either
    assert all(int(k.split(":")[0][5:]) <= 2 for k in st["feature_frequency"])


def test_stable_rule_keeps_features_chosen_in_half_the_resamples():
    sels = [(0, 1), (0, 2), (1, 0), (3,), (0, 4, 1), (2,)]  # 0: 4/6, 1: 3/6, 2: 2/6
    key = [0.1, 0.9, 0.5, 0.2, 0.3]
    assert STABLE_THRESHOLD == 0.5
    assert stable_features(sels, key) == [0, 1]
    assert stable_features(sels, key, threshold=0.6) == [0]
    assert stable_features([(2,), (3,)], key) == [2, 3]  # a tie in frequency: higher key first
    assert stable_features([(2,), (3,)], key, threshold=0.9) == [2]  # none reaches it: the most frequent
    assert stable_features([(), ()], key) == []


def test_stable_selection_is_the_frequent_features():
    layers, stats, y, paths, costs = depth_data(6)
    options = resolve_options("plus", {"selection": "stable"})
    rec = observer_from_statistics(layers, STATS, stats, paths, y, options, 4, costs=costs)
    freq = rec["stability"]["feature_frequency"]
    names = [f"{f['layer']}:{f['statistic']}" for f in rec["features"]]
    assert names and all(freq[n] >= STABLE_THRESHOLD for n in names)
    assert [n for n, v in freq.items() if v >= STABLE_THRESHOLD] == names
    assert rec["stable"]["same_selection"] == rec["stability"]["same_selection"]
    assert rec["depth"]["early_exit_cost"] <= 3 / 8
    draws = resampled_selections(stats.reshape(len(y), -1), y, paths, options, 4, 5, 0, None, 3)
    assert len(draws["selections"]) == 3 and len(draws["draws"]) == 3
