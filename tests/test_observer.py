"""Observer initialisation and inference (spec §3–§4) on a tiny network, against brute force.

The tiny network has the awkward cases of real backbones: containers (whose output is their last
child's tensor), an inplace ReLU (which overwrites the previous layer's output), a module called
twice per forward, a module never called, a module whose output is constant, and one returning a
tuple. Everything the observer computes is recomputed here independently: one forward **per
layer** with a single hook keeping the whole activation, norms of the flattened activations,
``scipy.stats.spearmanr``, and the greedy search of spec §3.4–3.5 written from the spec's words.
"""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from PIL import Image
from scipy.stats import spearmanr
from torch import nn

from face_recognition_model.loading import FRModel
from face_recognition_model.registry import register_model
from froq.core.errors import FroqError
from froq.core.images import Preprocess
from observer.hooks import NormRecorder
from stage_helpers import froq_scores
from observer.initialization import collect_norms, initialize_observer, select_layers
from observer.selection import (alias_groups, greedy_selection, layer_utilities, spearman,
                                top_candidates)
from stage_helpers import run_in_process

SIZE = 16
N_IMAGES = 23
BATCH = 5


# ---------------------------------------------------------------------------------------------
# the tiny network and its data
# ---------------------------------------------------------------------------------------------
class Zeros(nn.Module):
    """Output is all zeros: its norm is constant → no utility."""

    def forward(self, x):
        return torch.zeros_like(x)


class Pair(nn.Module):
    """Returns a tuple (not a tensor) → no utility."""

    def forward(self, x):
        return x * 0.5, x.mean()


class Tiny(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(inplace=True))
        self.block = nn.Sequential(nn.Conv2d(4, 4, 3, padding=1), nn.BatchNorm2d(4))
        self.act = nn.ReLU()  # called twice
        self.zeros = Zeros()
        self.unused = nn.Conv2d(4, 4, 1)  # never called
        self.pair = Pair()
        self.deep = nn.Sequential(nn.Conv2d(4, 8, 3, stride=2, padding=1), nn.BatchNorm2d(8), nn.ReLU())
        self.head = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 6))

    def forward(self, x):
        x = self.stem(x)
        y = self.act(self.block(x))
        y = y + self.zeros(y)
        half, _ = self.pair(y)
        x = self.act(x - half)
        x = self.deep(x)
        return self.head(x)


def build_tiny(weights=None, **kwargs) -> Tiny:
    """Deterministic tiny network (own generator; BN statistics made non-trivial)."""
    g = torch.Generator().manual_seed(1234)
    net = Tiny()
    with torch.no_grad():
        for name, p in net.named_parameters():
            p.copy_(torch.randn(p.shape, generator=g) * (0.5 if p.dim() > 1 else 0.2)
                    + (1.0 if name.endswith("1.weight") else 0.0))
        for m in net.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.copy_(torch.randn(m.num_features, generator=g) * 0.1)
                m.running_var.copy_(torch.rand(m.num_features, generator=g) + 0.5)
    return net.eval()


register_model("froq_test_tiny")(build_tiny)

PREPROCESS = Preprocess(size=(SIZE, SIZE), mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5), channels=(2, 1, 0))
LAYERS = [name for name, _ in build_tiny().named_modules() if name]


def tiny_fr() -> FRModel:
    return FRModel(network=build_tiny(), preprocess=PREPROCESS, arch="froq_test_tiny", weights=None,
                   weights_sha256=None, device=torch.device("cpu"))


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    """``N_IMAGES`` small PNGs of varying colour/contrast in sub-folders, and a label CSV with two
    columns: ``quality`` (contrast plus noise: every layer correlates positively) and ``blue``
    (the blue level: utilities of both signs). Returns (root, label file, paths, {column: labels})."""
    root = tmp_path_factory.mktemp("tiny_calibration")
    rng = np.random.default_rng(0)
    rows = {}
    for i in range(N_IMAGES):
        colour, contrast = rng.uniform(30, 220, size=3), rng.uniform(5, 70)
        arr = np.clip(colour + contrast * rng.standard_normal((SIZE, SIZE, 3)), 0, 255).astype(np.uint8)
        rel = f"id_{i % 4}/img_{i:02d}.png"
        (root / rel).parent.mkdir(exist_ok=True)
        Image.fromarray(arr).save(root / rel)
        rows[rel] = (contrast / 70, colour[2] / 255)
    noise = np.random.default_rng(1).normal(0, 0.3, N_IMAGES)
    paths = sorted(rows)  # list_images order
    labels = {"quality": np.array([rows[p][0] for p in paths]) + noise,
              "blue": np.array([rows[p][1] for p in paths])}
    label_file = root.parent / f"{root.name}_labels.csv"
    with open(label_file, "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["path", "quality", "blue"])
        for k, rel in enumerate(paths):
            w.writerow([rel, repr(float(labels["quality"][k])), repr(float(labels["blue"][k]))])
    return root, label_file, paths, labels


def load_inputs(root: Path, paths: list[str]) -> torch.Tensor:
    """The model inputs written independently of froq.core.images: [0,1] → (x−0.5)/0.5 → BGR."""
    arrs = [np.asarray(Image.open(root / p).convert("RGB")) for p in paths]
    x = torch.from_numpy(np.stack(arrs)).permute(0, 3, 1, 2).to(torch.float32) / 255.0
    x = (x - 0.5) / 0.5
    return x[:, [2, 1, 0]]


# ---------------------------------------------------------------------------------------------
# brute force (independent of observer/*)
# ---------------------------------------------------------------------------------------------
def brute_force_norms(net: nn.Module, x: torch.Tensor) -> np.ndarray:
    """For each layer separately: one forward with one hook keeping a copy of the whole activation
    (the last call's, if called twice); L2 norm of each image's flattened activation; NaN where
    there is no tensor."""
    modules = dict(net.named_modules())
    out = np.full((x.shape[0], len(LAYERS)), np.nan)
    for j, name in enumerate(LAYERS):
        kept = []
        handle = modules[name].register_forward_hook(
            lambda m, i, o: kept.append(o.detach().clone() if isinstance(o, torch.Tensor) else None))
        with torch.no_grad():
            net(x)
        handle.remove()
        if kept and kept[-1] is not None:
            act = kept[-1].double().reshape(x.shape[0], -1)
            out[:, j] = np.sqrt((act ** 2).sum(dim=1).numpy())
    return out


def rho_or_none(a: np.ndarray, b: np.ndarray):
    if not np.all(np.isfinite(a)) or np.ptp(a) == 0:
        return None
    return float(spearmanr(a, b)[0])


def brute_force_greedy(norms: np.ndarray, labels: np.ndarray, top_n: int):
    """Spec §3.3–3.5 from its words: candidates = top-n by ρ (ties: lower index); start with the
    best; add, among the unused in candidate order, the one giving the highest ρ of the mean-norm
    set score (first wins ties); selected = order up to the first step with the highest ρ."""
    util = [rho_or_none(norms[:, j], labels) for j in range(norms.shape[1])]
    defined = [j for j in range(len(util)) if util[j] is not None]
    candidates = sorted(defined, key=lambda j: (-util[j], j))[:top_n]
    order, rhos = [candidates[0]], [util[candidates[0]]]
    while len(order) < len(candidates):
        best = None
        for j in candidates:
            if j in order:
                continue
            r = rho_or_none(norms[:, order + [j]].mean(axis=1), labels)
            if best is None or r > best[1]:
                best = (j, r)
        order.append(best[0])
        rhos.append(best[1])
    top = max(rhos)
    selected = order[:rhos.index(top) + 1]
    return util, candidates, order, rhos, selected


# ---------------------------------------------------------------------------------------------
# (a) one forward per image
# ---------------------------------------------------------------------------------------------
def test_initialisation_runs_one_forward_per_image(data):
    root, label_file, paths, _ = data
    fr = tiny_fr()
    sizes = []
    fr.network.register_forward_pre_hook(lambda m, args: sizes.append(args[0].shape[0]))
    record = initialize_observer(fr, root, label_file, batch_size=BATCH, top_n=5)
    assert record["images"] == N_IMAGES
    assert sizes[-1] == 1  # + one forward of one black image: the depth costs (observer/depth.py)
    sizes = sizes[:-1]
    assert len(sizes) == math.ceil(N_IMAGES / BATCH)
    assert sum(sizes) == N_IMAGES
    assert sizes == [BATCH] * (N_IMAGES // BATCH) + [N_IMAGES % BATCH]


# ---------------------------------------------------------------------------------------------
# (b) utilities and greedy vs brute force, (c) undefined layers
# ---------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def brute(data):
    root, _, paths, labels = data
    return brute_force_norms(build_tiny(), load_inputs(root, paths))


def test_collected_norms_equal_brute_force(data, brute):
    root, _, paths, _ = data
    layers, read, norms = collect_norms(tiny_fr(), root, paths, batch_size=BATCH)
    assert layers == LAYERS and read == paths
    assert norms.shape == (N_IMAGES, len(LAYERS))
    assert np.array_equal(np.isnan(norms), np.isnan(brute))
    ok = ~np.isnan(brute)
    assert np.allclose(norms[ok], brute[ok], rtol=1e-5, atol=1e-6)
    # the inplace ReLU did not leak into the BN before it: those norms differ
    bn, relu = LAYERS.index("stem.1"), LAYERS.index("stem.2")
    assert np.all(norms[:, bn] > norms[:, relu])


@pytest.mark.parametrize("column", ["quality", "blue"])
@pytest.mark.parametrize("top_n", [1, 4, 10, 100])
def test_utilities_and_greedy_equal_brute_force(data, brute, top_n, column):
    root, label_file, paths, labels = data
    record = initialize_observer(tiny_fr(), root, label_file, batch_size=BATCH, top_n=top_n,
                                 label_column=column)
    util, candidates, order, rhos, selected = brute_force_greedy(brute, labels[column], top_n)
    assert [l["name"] for l in record["layers"]] == LAYERS
    for got, want, name in zip([l["utility"] for l in record["layers"]], util, LAYERS):
        if want is None:
            assert got is None, name
        else:
            assert got == pytest.approx(want, abs=1e-9), name
    assert record["candidates"] == [LAYERS[j] for j in candidates]
    assert [s["layer"] for s in record["greedy"]] == [LAYERS[j] for j in order]
    assert np.allclose([s["spearman"] for s in record["greedy"]], rhos, rtol=0, atol=1e-9)
    assert record["selected_layers"] == [LAYERS[j] for j in selected]
    # the test is not vacuous: utilities differ between layers (and have both signs when the
    # labels are the blue level, so "highest ρ", not "highest |ρ|", is checked)
    defined = [u for u in util if u is not None]
    assert len(defined) >= 10 and max(defined) - min(defined) > 0.1
    if column == "blue":
        assert min(defined) < -0.1 and max(defined) > 0.1
        assert abs(min(defined)) > max(defined)  # the strongest layer is a negative one


def test_undefined_layers_get_no_utility_and_are_never_selected(data):
    root, label_file, _, _ = data
    record = initialize_observer(tiny_fr(), root, label_file, batch_size=BATCH, top_n=len(LAYERS))
    utility = {l["name"]: l["utility"] for l in record["layers"]}
    # constant output, never called, tuple output
    assert utility["zeros"] is None and utility["unused"] is None and utility["pair"] is None
    undefined = {n for n, u in utility.items() if u is None}
    assert undefined == {"zeros", "unused", "pair"}
    used = set(record["candidates"]) | {s["layer"] for s in record["greedy"]} | set(record["selected_layers"])
    assert not used & undefined
    assert len(record["candidates"]) == len(LAYERS) - 3  # every defined layer is a candidate
    assert "unused" in record["never_called"] and "zeros" not in record["never_called"]


def test_container_and_its_last_child_are_aliases(data):
    root, label_file, _, _ = data
    record = initialize_observer(tiny_fr(), root, label_file, batch_size=BATCH)
    groups = [set(g) for g in record["aliases"]]
    assert {"stem", "stem.2"} in groups and {"block", "block.1"} in groups
    assert {"deep", "deep.2"} in groups and {"head", "head.2"} in groups
    assert not any({"stem.1", "stem.2"} <= g for g in groups)  # inplace ReLU changed the tensor


def test_no_defined_utility_is_a_clear_error():
    norms = np.ones((5, 3))
    with pytest.raises(FroqError, match="no layer has a defined Spearman utility"):
        select_layers(["a", "b", "c"], norms, np.arange(5.0))


# ---------------------------------------------------------------------------------------------
# (d) early exit, (e) embeddings
# ---------------------------------------------------------------------------------------------
def count_calls(net: nn.Module, name: str) -> list[int]:
    calls = []
    dict(net.named_modules())[name].register_forward_pre_hook(lambda m, a: calls.append(a[0].shape[0]))
    return calls


@pytest.mark.parametrize("layers", [["stem.0", "block"], ["act"], ["block.1", "stem.2"]])
def test_early_exit_gives_same_qualities_and_skips_deep_modules(data, brute, layers):
    root, _, paths, _ = data
    results = {}
    for early in (True, False):
        fr = tiny_fr()
        deep = count_calls(fr.network, "deep.0")
        head = count_calls(fr.network, "head")
        got_paths, q, emb = froq_scores(fr, root, layers, batch_size=BATCH, early_exit=early)
        assert got_paths == paths and emb is None
        results[early] = q
        batches = math.ceil(N_IMAGES / BATCH)
        if early:  # the first batch runs in full (it learns how often each layer fires)
            assert len(deep) == len(head) == 1
        else:
            assert len(deep) == len(head) == batches
    assert np.array_equal(results[True], results[False])
    cols = [LAYERS.index(n) for n in layers]
    assert np.allclose(results[True], brute[:, cols].mean(axis=1), rtol=1e-5)


def test_early_exit_waits_for_the_last_call_of_a_module_called_twice(data, brute):
    """``act`` fires twice per forward; its quality must be the norm of the second call, and the
    forward must not stop after the first call (``pair`` sits between the two calls)."""
    root, _, paths, _ = data
    fr = tiny_fr()
    pair_calls = count_calls(fr.network, "pair")
    deep_calls = count_calls(fr.network, "deep")
    _, q, _ = froq_scores(fr, root, ["act"], batch_size=BATCH, early_exit=True)
    assert len(pair_calls) == math.ceil(N_IMAGES / BATCH)
    assert len(deep_calls) == 1
    assert np.allclose(q, brute[:, LAYERS.index("act")], rtol=1e-5)


def test_selected_layer_without_output_is_refused(data):
    root, _, _, _ = data
    for bad in (["unused"], ["pair"], ["stem.0", "unused"]):
        with pytest.raises(FroqError, match="produced no output"):
            froq_scores(tiny_fr(), root, bad, batch_size=BATCH)
    with pytest.raises(FroqError, match="not found in the model"):
        froq_scores(tiny_fr(), root, ["nope"], batch_size=BATCH)


def test_embeddings_are_the_direct_output_in_row_order(data):
    root, _, paths, _ = data
    layers = ["stem.1", "deep.1"]
    fr = tiny_fr()
    got_paths, q_emb, emb = froq_scores(fr, root, layers, batch_size=BATCH, save_embeddings=True)
    _, q_plain, none = froq_scores(tiny_fr(), root, layers, batch_size=BATCH, early_exit=True)
    assert none is None and got_paths == paths
    assert np.array_equal(q_emb, q_plain)
    with torch.no_grad():
        direct = build_tiny()(load_inputs(root, paths)).numpy()
    assert emb.dtype == np.float32 and emb.shape == (N_IMAGES, 6)
    assert np.allclose(emb, direct, rtol=1e-5, atol=1e-6)
    # rows are not interchangeable (row order is actually checked)
    assert np.min(np.linalg.norm(direct[1:] - direct[:-1], axis=1)) > 1e-3


# ---------------------------------------------------------------------------------------------
# the stage CLIs on the tiny registered model: observer file, qualities, embeddings files
# ---------------------------------------------------------------------------------------------


def test_stage_clis_write_observer_qualities_and_embeddings(data, brute, tmp_path):
    from observer.inference import main as inference_main
    from observer.initialization import main as init_main
    root, label_file, paths, labels = data
    fr_cfg = tmp_path / "fr.yaml"
    fr_cfg.write_text(yaml.safe_dump({"model": {"arch": "froq_test_tiny", "weights": "random"},
                                      "preprocess": PREPROCESS.to_config()}))
    common = {"face_recognition_config": str(fr_cfg), "device": "cpu"}
    init_cfg = tmp_path / "init.yaml"
    init_cfg.write_text(yaml.safe_dump({**common, "dataset": {"path": str(root), "batch_size": BATCH},
                                        "label_location": str(label_file), "top_n": 4,
                                        "outpath": str(tmp_path / "observer.json")}))
    run_in_process(init_main, ["-c", str(init_cfg)])
    obs = json.loads((tmp_path / "observer.json").read_text())
    _, _, _, _, selected = brute_force_greedy(brute, labels["quality"], 4)
    assert obs["selected_layers"] == [LAYERS[j] for j in selected]
    assert obs["model"]["arch"] == "froq_test_tiny" and obs["calibration"]["images"] == N_IMAGES
    assert not (tmp_path / "observer.json.partial").exists()

    inf_cfg = tmp_path / "inference.yaml"
    inf_cfg.write_text(yaml.safe_dump({**common, "target_dataset": str(root), "batch_size": BATCH,
                                       "observer_data": str(tmp_path / "observer.json"),
                                       "outpath": str(tmp_path / "q.csv")}))
    run_in_process(inference_main, ["-c", str(inf_cfg)])
    run_in_process(inference_main, ["-c", str(inf_cfg), "--set", "save_embeddings=true",
                             "--set", f"outpath={tmp_path / 'qe.csv'}"])
    with open(tmp_path / "q.csv") as fh:
        plain = list(csv.DictReader(fh))
    with open(tmp_path / "qe.csv") as fh:
        with_emb = list(csv.DictReader(fh))
    assert [r["path"] for r in plain] == [r["path"] for r in with_emb] == paths
    assert [float(r["quality"]) for r in plain] == [float(r["quality"]) for r in with_emb]
    cols = [LAYERS.index(n) for n in obs["selected_layers"]]
    assert np.allclose([float(r["quality"]) for r in plain], brute[:, cols].mean(axis=1), rtol=1e-5)
    emb = np.load(tmp_path / "qe.embeddings.npy")
    with open(tmp_path / "qe.embeddings.csv") as fh:
        order = [(int(r["row"]), r["path"]) for r in csv.DictReader(fh)]
    assert order == list(enumerate(paths))
    with torch.no_grad():
        direct = build_tiny()(load_inputs(root, paths)).numpy()
    assert np.allclose(emb, direct, rtol=1e-5, atol=1e-6)


# ---------------------------------------------------------------------------------------------
# (f) observer.selection units
# ---------------------------------------------------------------------------------------------
def test_top_candidates_ties_keep_the_lower_index():
    utilities = [0.5, None, 0.9, 0.5, 0.9, -0.2, 0.5]
    assert top_candidates(utilities, 3) == [2, 4, 0]
    assert top_candidates(utilities, 4) == [2, 4, 0, 3]
    assert top_candidates(utilities, 100) == [2, 4, 0, 3, 6, 5]
    assert top_candidates([None, None], 5) == []


def test_greedy_tie_takes_the_first_candidate_in_candidate_order():
    y = np.arange(12, dtype=float)
    a = y.copy()
    a[[3, 4]] = a[[4, 3]]
    c = np.roll(y, 1)
    norms = np.stack([a, c, c, y[::-1]], axis=1)  # columns 1 and 2 are identical
    res = greedy_selection(norms, y, [0, 2, 1, 3])
    assert res.order[:2] == [0, 2]  # 2 is before 1 in candidate order
    res = greedy_selection(norms, y, [0, 1, 2, 3])
    assert res.order[:2] == [0, 1]


def test_greedy_truncates_after_the_first_best_step():
    y = np.arange(10, dtype=float)
    a = y.copy()
    a[[4, 5]] = [5.0, 4.0]   # ρ(a) < 1
    b = 2 * y - a            # mean(a, b) == y → ρ = 1
    e = y.copy()             # mean(a, b, e) == y → ρ = 1 again (a tie at the maximum)
    noise = np.array([9, 3, 7, 1, 0, 8, 2, 6, 4, 5], dtype=float)
    norms = np.stack([a, b, e, noise], axis=1)
    res = greedy_selection(norms, y, [0, 1, 2, 3])
    assert res.order == [0, 1, 2, 3]
    assert res.rhos[0] < 1 and res.rhos[1] == res.rhos[2] == pytest.approx(1.0) and res.rhos[3] < 1
    assert res.selected == [0, 1]
    # all steps equal → only the first layer
    same = np.stack([a, a, a], axis=1)
    assert greedy_selection(same, y, [0, 1, 2]).selected == [0]
    # the maximum at the last step → everything
    res = greedy_selection(np.stack([a, b], axis=1), y, [0, 1])
    assert res.selected == [0, 1]


def test_greedy_records_spearman_of_the_mean_of_raw_norms():
    rng = np.random.default_rng(3)
    norms = rng.uniform(1, 100, size=(30, 5)) * np.array([1, 10, 100, 1000, 1])
    y = rng.standard_normal(30)
    res = greedy_selection(norms, y, [4, 2, 0, 1, 3])
    for k in range(len(res.order)):
        want = spearmanr(norms[:, res.order[:k + 1]].mean(axis=1), y)[0]
        assert res.rhos[k] == pytest.approx(want, abs=1e-12)
    assert res.order[0] == 4


def test_spearman_and_utilities_undefined_cases():
    y = np.arange(6, dtype=float)
    assert spearman(np.ones(6), y) is None
    assert spearman(y, np.ones(6)) is None
    assert spearman(np.array([1.0, np.nan, 3, 4, 5, 6]), y) is None
    assert spearman(np.array([1.0, 2]), np.array([1.0, 2])) is None
    assert spearman(y, y) == pytest.approx(1.0)
    norms = np.stack([y, -y, np.zeros(6), np.full(6, np.nan), y ** 3], axis=1)
    u = layer_utilities(norms, y)
    assert u[0] == pytest.approx(1) and u[1] == pytest.approx(-1) and u[4] == pytest.approx(1)
    assert u[2] is None and u[3] is None
    with pytest.raises(ValueError):
        layer_utilities(norms, y[:5])


def test_alias_groups():
    x = np.array([1.0, 2.0, 3.0])
    norms = np.stack([x, x * 2, x, np.array([np.nan, 1, 1]), np.array([np.nan, 1, 1]), x * 2,
                      x + 1e-12, np.zeros(3), np.zeros(3)], axis=1)
    groups = alias_groups(norms, list("abcdefghi"))
    assert sorted(map(sorted, groups)) == [["a", "c"], ["b", "f"], ["h", "i"]]


def test_norm_recorder_rejects_unknown_layers_and_reports_firing():
    net = build_tiny()
    with pytest.raises(FroqError, match="unused2"):
        NormRecorder(net, ["stem", "unused2"])
    with NormRecorder(net, ["stem.0", "unused", "act"]) as rec:
        with torch.no_grad():
            rec.run(net, torch.zeros(2, 3, SIZE, SIZE))
        assert rec.fired() == [True, False, True]
        norms = rec.norms()
    assert norms.shape == (2, 3) and np.isnan(norms[:, 1]).all() and np.isfinite(norms[:, [0, 2]]).all()
    # hooks are removed on exit
    assert all(not m._forward_hooks for m in net.modules())
