"""FROQ+ (issue 12): observer options against independent computations.

- the paper variant is exactly the published method (same record, same qualities, same file);
- standardisation, signs, weights and the identity-grouped CV size are recomputed here from their
  definitions on synthetic features (numpy / scipy only);
- the extra statistics of the hooks are recomputed from whole activations of a real forward;
- a FROQ+ observer's inference is one hooked pass with early exit and equals the offline
  combination of the statistics of all layers; its observer file survives a JSON round trip.
"""

from __future__ import annotations

import csv
import json

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
from observer.combination import combined_quality
from observer.hooks import STATISTICS
from observer.inference import froq_qualities, quality_from_statistics, read_observer
from observer.initialization import (VARIANTS, collect_statistics, initialize_observer,
                                     resolve_options, select_features)
from observer.selection import cross_validate_size, fit_features, identity_folds
from stage_helpers import run_in_process

SIZE = 12
N_IMAGES = 20
PREPROCESS = Preprocess(size=(SIZE, SIZE), mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5), channels=(0, 1, 2))


class Net(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU())
        self.mid = nn.Conv2d(4, 6, 3, stride=2, padding=1)
        self.deep = nn.Conv2d(6, 6, 3, padding=1)
        self.head = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(6, 5))

    def forward(self, x):
        return self.head(self.deep(self.mid(self.stem(x))))


def build_net(weights=None, **kwargs) -> Net:
    g = torch.Generator().manual_seed(7)
    net = Net()
    with torch.no_grad():
        for p in net.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.5)
    return net.eval()


register_model("froq_test_plus")(build_net)
LAYERS = [name for name, _ in build_net().named_modules() if name]


def fr_model() -> FRModel:
    return FRModel(network=build_net(), preprocess=PREPROCESS, arch="froq_test_plus", weights=None,
                   weights_sha256=None, device=torch.device("cpu"))


@pytest.fixture(scope="module")
def faces(tmp_path_factory):
    """Small PNGs in 5 identity folders and a label CSV (contrast + noise). → (root, labels file)."""
    root = tmp_path_factory.mktemp("plus_faces")
    rng = np.random.default_rng(3)
    rows = []
    for i in range(N_IMAGES):
        contrast = rng.uniform(5, 80)
        arr = np.clip(rng.uniform(40, 200, 3) + contrast * rng.standard_normal((SIZE, SIZE, 3)), 0, 255)
        rel = f"id_{i % 5}/img_{i:02d}.png"
        (root / rel).parent.mkdir(exist_ok=True)
        Image.fromarray(arr.astype(np.uint8)).save(root / rel)
        rows.append((rel, contrast / 80 + rng.normal(0, 0.2)))
    labels = root.parent / "plus_labels.csv"
    with open(labels, "w", newline="") as fh:
        csv.writer(fh).writerows([("path", "quality"), *sorted(rows)])
    return root, labels


def synthetic(seed: int = 0, n: int = 60, f: int = 8):
    """Features on very different scales, some falling with the label; identities of 1–3 images."""
    rng = np.random.default_rng(seed)
    y = rng.normal(size=n)
    scales = 10.0 ** rng.uniform(-1, 3, f)
    signs = np.where(np.arange(f) % 3 == 1, -1.0, 1.0)
    coef = rng.uniform(0.2, 1.0, f)
    coef[1::3] = 1.2  # the falling features are among the strong ones
    x = (signs * y[:, None] * coef + rng.normal(size=(n, f))) * scales + 5 * scales
    groups = [f"p{i // 2 if i < n // 2 else i}" for i in range(n)]
    return x, y, groups


def rho(a, b):
    return float(spearmanr(a, b)[0])


def brute_greedy(cols: np.ndarray, y: np.ndarray, weights: np.ndarray):
    """Greedy from the spec's words on already signed/standardised columns (candidate order)."""
    order = [0]
    rhos = [rho(cols[:, 0], y)]
    rest = list(range(1, cols.shape[1]))
    while rest:
        scored = [(rho((cols[:, order + [j]] * weights[order + [j]]).sum(1) / weights[order + [j]].sum(), y), j)
                  for j in rest]
        best = max(scored, key=lambda t: (t[0], -rest.index(t[1])))
        order.append(best[1])
        rhos.append(best[0])
        rest.remove(best[1])
    return order, rhos


@pytest.mark.parametrize("method", ["zscore", "rank"])
@pytest.mark.parametrize("weighting", ["equal", "rho"])
def test_signed_standardised_weighted_selection_matches_definition(method, weighting):
    x, y, _ = synthetic()
    fit = fit_features(x, y, top_n=5, standardisation=method, signed=True, weighting=weighting)
    util = [rho(x[:, j], y) for j in range(x.shape[1])]
    cand = sorted(range(x.shape[1]), key=lambda j: (-abs(util[j]), j))[:5]
    assert fit.candidates == cand
    assert any(util[j] < 0 for j in cand)  # the sign matters in this data
    cols = []
    for j in cand:
        v = x[:, j]
        if method == "zscore":
            t = (v - v.mean()) / v.std()
        else:
            q = np.quantile(v, np.linspace(0, 1, 101))
            t = np.interp(v, q, np.linspace(0, 1, 101))
        cols.append(np.sign(util[j]) * t)
        assert fit.signs[j] == np.sign(util[j])
    cols = np.stack(cols, axis=1)
    w = np.array([abs(util[j]) if weighting == "rho" else 1.0 for j in cand])
    order, rhos = brute_greedy(cols, y, w)
    assert fit.greedy.order == [cand[k] for k in order]
    assert np.allclose(fit.greedy.rhos, rhos)
    # the stored features reproduce the score of the selected set
    chosen = fit.greedy.selected
    feats = [{"sign": fit.signs[j], "weight": fit.weights[j], **fit.params[j]} for j in chosen]
    k = fit.greedy.selected_count
    expected = (cols[:, order[:k]] * w[order[:k]]).sum(1) / w[order[:k]].sum()
    assert np.allclose(combined_quality(x[:, chosen], feats, method), expected)


def test_unsigned_none_equal_is_the_paper_greedy():
    from observer.selection import greedy_selection, layer_utilities, top_candidates
    x, y, _ = synthetic(1)
    fit = fit_features(x, y, top_n=6)
    paper = greedy_selection(x, y, top_candidates(layer_utilities(x, y), 6))
    assert fit.greedy == paper and set(fit.signs.values()) == {1}


def test_cross_validated_size_matches_brute_force():
    x, y, groups = synthetic(2, n=70)
    cv = cross_validate_size(x, y, groups, top_n=4, folds=3, seed=5, standardisation="zscore",
                             signed=True, weighting="equal")
    fold = identity_folds(groups, 3, seed=5)
    for g in set(groups):  # whole identities per fold
        assert len({fold[i] for i in range(len(groups)) if groups[i] == g}) == 1
    per_fold = []
    for k in range(3):
        tr, te = fold != k, fold == k
        util = [rho(x[tr, j], y[tr]) for j in range(x.shape[1])]
        cand = sorted(range(x.shape[1]), key=lambda j: (-abs(util[j]), j))[:4]
        mu = {j: x[tr, j].mean() for j in cand}
        sd = {j: x[tr, j].std() for j in cand}
        z = lambda rows, j: np.sign(util[j]) * (x[rows, j] - mu[j]) / sd[j]  # noqa: E731
        order, _ = brute_greedy(np.stack([z(tr, j) for j in cand], 1), y[tr], np.ones(4))
        per_fold.append([rho(np.mean([z(te, cand[o]) for o in order[:m]], axis=0), y[te])
                         for m in range(1, 5)])
    means = np.mean(per_fold, axis=0)
    assert np.allclose(cv.per_fold, per_fold)
    assert np.allclose(cv.spearman_by_size, means)
    assert cv.size == int(np.argmax(means)) + 1


def test_extra_statistics_match_a_direct_computation(faces):
    root, _ = faces
    fr = fr_model()
    paths = sorted(p.relative_to(root).as_posix() for p in root.rglob("*.png"))
    layers, read, stats = collect_statistics(fr, root, paths, list(STATISTICS), batch_size=6)
    assert read == paths and stats.shape == (N_IMAGES, len(LAYERS), len(STATISTICS))
    arrs = np.stack([np.asarray(Image.open(root / p).convert("RGB")) for p in paths])
    x = (torch.from_numpy(arrs).permute(0, 3, 1, 2).float() / 255 - 0.5) / 0.5
    kept = {}
    net = fr.network
    handles = [m.register_forward_hook(lambda m, i, o, n=n: kept.__setitem__(n, o.detach().double()))
               for n, m in net.named_modules() if n]
    with torch.no_grad():
        net(x)
    for h in handles:
        h.remove()
    for li, name in enumerate(layers):
        a = kept[name]
        flat = a.reshape(N_IMAGES, -1)
        direct = {"l2": flat.norm(dim=1), "l1": flat.abs().sum(1), "mean": flat.mean(1),
                  "std": flat.std(1, unbiased=False)}
        direct["spatial_std"] = (a.pow(2).sum(1).sqrt().reshape(N_IMAGES, -1).std(1, unbiased=False)
                                 if a.dim() == 4 and a.shape[2] * a.shape[3] > 1 else None)
        direct["symmetry"] = None
        if a.dim() == 4 and a.shape[3] > 1:  # correlation of the channel-norm map with its mirror
            maps = a.pow(2).sum(1).sqrt().numpy()
            direct["symmetry"] = torch.tensor(
                [np.corrcoef(m.ravel(), m[:, ::-1].ravel())[0, 1] if m.std() > 0 else 0.0 for m in maps])
        for si, stat in enumerate(STATISTICS):
            if direct[stat] is None:
                assert np.all(np.isnan(stats[:, li, si])), (name, stat)
            else:
                assert np.allclose(stats[:, li, si], direct[stat].numpy(), rtol=1e-4, atol=1e-5), (name, stat)


def test_symmetry_statistic_reads_left_right_mirroring():
    """``symmetry``: +1 for a channel-norm map equal to its mirror, -1 for one that is its own
    negative mirror around the mean, lower for a blob moved off the vertical axis; 0 for a flat
    map; undefined for a width of 1 or a 2-D output."""
    x = torch.zeros(4, 3, 6, 8)
    x[0, :, 2:4, 3:5] = 1.0                       # centred blob: symmetric
    x[1, :, :, :4] = 1.0                          # left half lit: anti-symmetric
    x[2, :, 2:4, 0:2] = 1.0                       # blob at the left edge
    x[2, :, 2:4, 5:7] = 0.5                       # weaker blob on the right, not mirrored
    x[3] = 1.0                                    # flat
    sym = STATISTICS["symmetry"](x, x.reshape(4, -1))
    assert sym[0] == pytest.approx(1.0) and sym[1] == pytest.approx(-1.0)
    assert -1.0 < sym[2] < 0.9 and sym[3] == 0.0
    # the channels enter only through the per-position norm: permuting them changes nothing
    assert torch.allclose(STATISTICS["symmetry"](x[:, [2, 0, 1]], x.reshape(4, -1)), sym)
    assert STATISTICS["symmetry"](x[..., :1], x.reshape(4, -1)) is None
    assert STATISTICS["symmetry"](x.reshape(4, -1), x.reshape(4, -1)) is None


def test_paper_variant_is_the_published_method(faces):
    root, labels = faces
    default = initialize_observer(fr_model(), root, labels, batch_size=7, top_n=4)
    paper = initialize_observer(fr_model(), root, labels, batch_size=7, top_n=4,
                                options=resolve_options("paper"))
    for record in (default, paper):  # the stability bootstrap records its own run time
        record.get("stability", {}).pop("seconds", None)
    assert json.dumps(default, sort_keys=True) == json.dumps(paper, sort_keys=True)
    assert "features" not in paper and "options" not in paper
    by_list = froq_qualities(fr_model(), root, paper["selected_layers"], batch_size=7)
    by_record = froq_qualities(fr_model(), root, paper, batch_size=7)
    assert np.array_equal(by_list.values, by_record.values)
    assert resolve_options("paper", {"standardise": None}) == VARIANTS["paper"]
    with pytest.raises(FroqError, match="unknown layer statistics|unknown or repeated"):
        resolve_options("plus", {"statistics": ["l2", "kurtosis"]})


def test_plus_inference_is_one_early_exit_pass_equal_to_offline(faces):
    root, labels = faces
    fr = fr_model()
    options = resolve_options("plus", {"selection": "greedy"})
    record = initialize_observer(fr, root, labels, batch_size=7, top_n=6, options=options)
    # make sure the test covers a set that stops before the head and uses several statistics
    record = dict(record, features=[
        {"layer": "stem.0", "statistic": "std", "utility": 0.5, "sign": 1, "weight": 1.0, "mean": 1.0, "std": 2.0},
        {"layer": "mid", "statistic": "spatial_std", "utility": -0.4, "sign": -1, "weight": 1.0, "mean": 0.5, "std": 0.25},
        {"layer": "stem.0", "statistic": "l2", "utility": 0.3, "sign": 1, "weight": 1.0, "mean": 3.0, "std": 1.5}],
        selected_layers=["stem.0", "mid"], standardise="zscore")
    calls = {"deep": 0, "head": 0}
    fr.network.deep.register_forward_hook(lambda *a: calls.__setitem__("deep", calls["deep"] + 1))
    forwards = []
    fr.network.register_forward_pre_hook(lambda *a: forwards.append(1))
    result = froq_qualities(fr, root, record, batch_size=7)
    n_batches = -(-N_IMAGES // 7)
    assert len(forwards) == n_batches  # one pass per batch
    assert calls["deep"] == 1  # only the first (complete) forward reached past the deepest feature
    layers, read, stats = collect_statistics(fr_model(), root, result.paths, list(STATISTICS), batch_size=5)
    offline = quality_from_statistics(stats, layers, list(STATISTICS), record)
    assert np.array_equal(result.column("quality"), offline)
    z = lambda n, s, f: (stats[:, LAYERS.index(n), list(STATISTICS).index(s)] - f["mean"]) / f["std"]  # noqa: E731
    f = record["features"]
    by_hand = (z("stem.0", "std", f[0]) - z("mid", "spatial_std", f[1]) + z("stem.0", "l2", f[2])) / 3
    assert np.allclose(offline, by_hand)


def test_observer_file_round_trip_and_stage_clis(faces, tmp_path):
    from observer.inference import main as inference_main
    from observer.initialization import main as init_main
    root, labels = faces
    fr_cfg = tmp_path / "fr.yaml"
    fr_cfg.write_text(yaml.safe_dump({"model": {"arch": "froq_test_plus", "weights": "random"},
                                      "preprocess": PREPROCESS.to_config()}))
    common = {"face_recognition_config": str(fr_cfg), "device": "cpu"}
    init_cfg = tmp_path / "init.yaml"
    init_cfg.write_text(yaml.safe_dump({**common, "dataset": {"path": str(root), "batch_size": 6},
                                        "label_location": str(labels), "top_n": 6, "variant": "plus",
                                        "cv_folds": 5, "outpath": str(tmp_path / "observer.json")}))
    run_in_process(init_main, ["-c", str(init_cfg)])
    obs = read_observer(tmp_path / "observer.json")
    assert obs["variant"] == "plus" and obs["options"] == VARIANTS["plus"]
    assert obs["cv"]["folds"] == 5 and len(obs["features"]) == obs["cv"]["selected_size"]
    assert all({"layer", "statistic", "sign", "weight", "mean", "std"} <= set(f) for f in obs["features"])
    inf_cfg = tmp_path / "inference.yaml"
    inf_cfg.write_text(yaml.safe_dump({**common, "target_dataset": str(root), "batch_size": 6,
                                       "observer_data": str(tmp_path / "observer.json"),
                                       "outpath": str(tmp_path / "q.csv")}))
    run_in_process(inference_main, ["-c", str(inf_cfg)])
    with open(tmp_path / "q.csv") as fh:
        rows = list(csv.DictReader(fh))
    layers, read, stats = collect_statistics(fr_model(), root, [r["path"] for r in rows],
                                             list(STATISTICS), batch_size=4)
    offline = quality_from_statistics(stats, layers, list(STATISTICS), obs)
    assert np.allclose([float(r["quality"]) for r in rows], offline, rtol=1e-12)
    # the calibration scale is the combined quality of the calibration images
    assert np.allclose(obs["scale"]["qualities"], np.sort(offline))
    # a damaged feature list is refused with one line naming the file
    for damage in ({"statistic": "kurtosis"}, {"layer": "not_selected"}):
        bad = dict(obs, features=[dict(obs["features"][0], **damage)])
        (tmp_path / "bad.json").write_text(json.dumps(bad))
        with pytest.raises(FroqError, match="bad.json: features\\[0\\]"):
            read_observer(tmp_path / "bad.json")


def test_select_features_needs_identities_for_cv():
    x, y, _ = synthetic(4, n=30, f=3)
    with pytest.raises(FroqError, match="identity"):
        select_features(["a", "b", "c"], x[:, :, None], y, dict(resolve_options("plus"), statistics=["l2"]),
                        top_n=3, groups=None)
