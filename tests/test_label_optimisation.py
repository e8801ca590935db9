"""The IWBF'23 label optimisation (issue 12, point 4): a small case computed by hand (ranks, pair
positions, the ε step, the mapping back onto the original scores), the published pairing (one random
partner per other cluster, averaged over seeded draws) against a plain re-computation, single-image
identities, one-line errors, and the stage end to end on a tiny model (its output feeds observer
initialisation as it is)."""

from __future__ import annotations

import contextlib
import io
import json

import numpy as np
import pytest
from PIL import Image

from baselineFIQA.label_optimisation import (OptimisationSettings, cluster_members, draw_pairs,
                                             identity_groups, kmeans, optimise_labels)
from baselineFIQA.optimize import main as optimise_main
from froq.core.cli import run_main
from froq.core.errors import FroqError
from froq.core.io import read_csv, read_quality_csv
from observer.initialization import main as init_main
from stage_helpers import error_line
from test_observer import SIZE

PATHS = ["A/a1", "A/a2", "A/a3", "B/b1", "B/b2", "C/c1"]
SCORES = [0.5, 0.1, 0.9, 0.3, 0.7, 0.2]  # ranks: a2 0, c1 1, b1 2, a1 3, b2 4, a3 5


def unit(deg):
    return [np.cos(np.deg2rad(deg)), np.sin(np.deg2rad(deg))]


# cosines: a1·a2 = cos 20° = .94, a1·a3 = cos 60° = .5, a2·a3 = cos 80° = .17, b1·b2 = cos 85° = .09
EMB = np.array([unit(0), unit(20), unit(-60), unit(0), unit(85), unit(10)])


def test_hand_case_index_positions():
    res = optimise_labels(PATHS, SCORES, EMB, OptimisationSettings(epsilon=0.9, pairing="all"))
    # pairs by similarity: (b1,b2) 0, (a2,a3) 1, (a1,a3) 2, (a1,a2) 3; each goes to its lower-quality
    # image: b1 holds {0}, a2 holds {1, 3} (mean 2), a1 holds {2}; a3, b2, c1 hold none
    assert res.initial_rank.tolist() == [3, 0, 5, 2, 4, 1]
    assert res.held_pairs.tolist() == [1, 2, 0, 1, 0, 0]
    # r' = r + 0.9 (m − r): a1 3 − 0.9 = 2.1, a2 0 + 1.8 = 1.8, b1 2 − 1.8 = 0.2; the rest keep r
    np.testing.assert_allclose(res.mean_rank, [2.1, 1.8, 5, 0.2, 4, 1])
    # new order b1, c1, a2, a1, b2, a3 takes the sorted initial scores .1 .2 .3 .5 .7 .9
    np.testing.assert_allclose(res.quality, [0.5, 0.3, 0.9, 0.1, 0.7, 0.2])
    assert res.summary["single_image_identities"] == 1 and res.summary["images_without_pairs"] == 3
    assert res.summary["pairs_per_draw"] == [4]


def test_hand_case_fraction_positions():
    res = optimise_labels(PATHS, SCORES, EMB,
                          OptimisationSettings(epsilon=0.9, pairing="all", positions="fraction"))
    # r/5 and p/3: a2 0 + 0.9·(2/3) = 0.6 → 3.0 ranks; a1 0.6 + 0.9·(2/3 − 0.6) = 0.66 → 3.3;
    # b1 0.4 − 0.9·0.4 = 0.04 → 0.2
    np.testing.assert_allclose(res.mean_rank, [3.3, 3.0, 5, 0.2, 4, 1])
    np.testing.assert_allclose(res.quality, [0.5, 0.3, 0.9, 0.1, 0.7, 0.2])


def test_small_epsilon_keeps_the_order_and_the_distribution():
    rng = np.random.default_rng(0)
    paths = [f"id{i % 7}/x{i}.png" for i in range(60)]
    scores = rng.normal(size=60)
    emb = rng.normal(size=(60, 8))
    res = optimise_labels(paths, scores, emb, OptimisationSettings(epsilon=1e-6, pairing="all"))
    np.testing.assert_array_equal(res.quality, scores)  # tiny steps move nobody past a neighbour
    big = optimise_labels(paths, scores, emb, OptimisationSettings(epsilon=0.5))
    assert sorted(big.quality.tolist()) == sorted(scores.tolist())  # same distribution
    assert not np.array_equal(big.quality, scores)


def test_single_image_identities_keep_their_rank():
    res = optimise_labels(PATHS, SCORES, EMB, OptimisationSettings(epsilon=0.5))
    c1 = PATHS.index("C/c1")
    assert res.held_pairs[c1] == 0 and res.mean_rank[c1] == res.initial_rank[c1] == 1
    # the best image of an identity is never the lower one of a pair: it keeps its rank as well
    for best in ("A/a3", "B/b2"):
        i = PATHS.index(best)
        assert res.held_pairs[i] == 0 and res.mean_rank[i] == res.initial_rank[i]


def test_kmeans_and_one_partner_per_other_cluster():
    rng = np.random.default_rng(1)
    pts = np.concatenate([rng.normal([5, 0], 0.1, (4, 2)), rng.normal([0, 5], 0.1, (3, 2)),
                          rng.normal([-5, -5], 0.1, (3, 2))])
    labels = kmeans(pts, 3, np.random.default_rng(0))
    assert labels.tolist() == [0] * 4 + [1] * 3 + [2] * 3
    assert kmeans(pts, 20, np.random.default_rng(0)).tolist() == list(range(10))  # k ≥ n
    groups = identity_groups([f"P/{i}.png" for i in range(10)])
    clusters = cluster_members(groups, pts, OptimisationSettings(clusters=3))
    pairs = draw_pairs(clusters, np.random.default_rng(5))
    assert len(pairs) == 10 * 2  # every image: one partner in each of the two other clusters
    for a, b in pairs:
        assert labels[a] != labels[b]
    for a in range(10):
        assert sorted(labels[pairs[pairs[:, 0] == a, 1]].tolist()) == sorted({0, 1, 2} - {labels[a]})


def plain_one_draw(rank, emb, pairs, eps):
    """Steps 3–4 written out with Python lists (index positions)."""
    unit_ = emb / np.linalg.norm(emb, axis=1, keepdims=True)
    sims = [float(unit_[a] @ unit_[b]) for a, b in pairs]
    order = sorted(range(len(pairs)), key=lambda k: sims[k])
    held = {}
    for position, k in enumerate(order):
        a, b = pairs[k]
        held.setdefault(a if rank[a] < rank[b] else b, []).append(position)
    return np.array([r + eps * (np.mean(held[i]) - r) if i in held else r for i, r in enumerate(rank)])


def test_published_pairing_averages_seeded_draws():
    rng = np.random.default_rng(2)
    paths = [f"id{i % 4}/x{i}.png" for i in range(32)] + ["solo/y.png"]
    scores, emb = rng.normal(size=33), rng.normal(size=(33, 6))
    settings = OptimisationSettings(epsilon=0.01, clusters=3, draws=4, seed=7)
    res = optimise_labels(paths, scores, emb, settings)
    clusters = cluster_members(identity_groups(paths), emb / np.linalg.norm(emb, axis=1, keepdims=True),
                               settings)
    expected = np.mean([plain_one_draw(res.initial_rank, emb,
                                       draw_pairs(clusters, np.random.default_rng([7, 2, d])).tolist(), 0.01)
                        for d in range(4)], axis=0)
    np.testing.assert_allclose(res.mean_rank, expected, atol=1e-9)
    assert len(set(map(tuple, [draw_pairs(clusters, np.random.default_rng([7, 2, d])).ravel()
                               for d in range(4)]))) > 1  # the draws differ
    again = optimise_labels(paths, scores, emb, settings)
    np.testing.assert_array_equal(again.quality, res.quality)  # seeded: deterministic
    other = optimise_labels(paths, scores, emb, OptimisationSettings(epsilon=0.01, clusters=3, draws=4, seed=8))
    assert not np.array_equal(other.mean_rank, res.mean_rank)


@pytest.mark.parametrize("paths, scores, emb, settings, needle", [
    (["a.png", "b.png"], [1, 2], np.eye(2), OptimisationSettings(), "single image"),
    (["A/a", "B/b"], [1, 2], np.eye(2), OptimisationSettings(), "single image"),
    (["A/a", "A/b"], [1, 2, 3], np.eye(2), OptimisationSettings(), "same images in the same order"),
    (["A/a", "A/a"], [1, 2], np.eye(2), OptimisationSettings(), "listed twice"),
    (["A/a", "A/b"], [1, float("nan")], np.eye(2), OptimisationSettings(), "not finite"),
    (["A/a", "A/b"], [1, 2], np.zeros((2, 2)), OptimisationSettings(), "zero or not finite"),
    (["A/a", "A/b"], [1, 2], np.eye(2), OptimisationSettings(epsilon=0), "epsilon"),
    (["A/a", "A/b"], [1, 2], np.eye(2), OptimisationSettings(pairing="random"), "pairing"),
])
def test_bad_inputs_are_one_line_errors(paths, scores, emb, settings, needle):
    with pytest.raises(FroqError, match=needle) as info:
        optimise_labels(paths, scores, emb, settings)
    assert "\n" not in str(info.value)


# -- the stage ------------------------------------------------------------------------------------

def _run(main, cfg, *sets):
    argv = ["-c", str(cfg)] + [a for s in sets for a in ("--set", s)]
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        rc = run_main(main, argv)
    return rc, err.getvalue()


@pytest.fixture()
def stage(tmp_path):
    """A tiny model's FR config, a calibration folder (identities A: 4, B: 3, C: 1 images), its
    initial scores and a stage config."""
    root = tmp_path / "calib"
    rng = np.random.default_rng(4)
    rows = []
    for ident, n in (("A", 4), ("B", 3), ("C", 1)):
        (root / ident).mkdir(parents=True)
        base = rng.uniform(40, 200, 3)
        for k in range(n):
            arr = np.clip(base + rng.uniform(5, 60) * rng.standard_normal((SIZE, SIZE, 3)), 0, 255)
            Image.fromarray(arr.astype(np.uint8)).save(root / f"{ident}/{ident}{k}.png")
            rows.append(f"{ident}/{ident}{k}.png,{rng.uniform():.6f}")
    labels = tmp_path / "labels.csv"
    labels.write_text("path,quality\n" + "\n".join(rows) + "\n")
    fr = tmp_path / "fr.yaml"
    fr.write_text(f"model: {{arch: froq_test_tiny, weights: random}}\n"
                  f"preprocess: {{size: {SIZE}, mean: 0.5, std: 0.5, channels: [2, 1, 0]}}\n")
    cfg = tmp_path / "opt.yaml"
    cfg.write_text(f"face_recognition_config: {fr}\ndevice: cpu\ndataset: {{path: {root}, batch_size: 3}}\n"
                   f"label_location: {labels}\nepsilon: 0.3\noutpath: {tmp_path}/out/opt.csv\n")
    return {"root": root, "labels": labels, "fr": fr, "cfg": cfg, "out": tmp_path / "out" / "opt.csv"}


def test_stage_writes_labels_that_initialise_an_observer(stage, tmp_path):
    rc, err = _run(optimise_main, stage["cfg"])
    assert rc == 0, err
    rows = read_csv(stage["out"], required=("path", "quality", "initial_quality", "initial_rank",
                                            "mean_rank", "held_pairs"))
    initial = read_quality_csv(stage["labels"])
    assert [r["path"] for r in rows] == list(initial)
    assert [float(r["initial_quality"]) for r in rows] == list(initial.values())
    assert sorted(float(r["quality"]) for r in rows) == sorted(initial.values())
    assert float(next(r for r in rows if r["path"] == "C/C0.png")["held_pairs"]) == 0
    meta = json.loads(stage["out"].with_suffix(".meta.json").read_text())
    assert meta["settings"]["epsilon"] == 0.3 and meta["settings"]["pairing"] == "clusters"
    assert meta["single_image_identities"] == 1 and meta["initial_scores"]["column"] == "quality"
    emb = stage["out"].parent / "opt.embeddings.npy"
    assert np.load(emb).shape[0] == 8 and not list(stage["out"].parent.glob("*.partial"))
    # the saved embeddings give the same result without a forward pass
    again = tmp_path / "again.csv"
    rc, err = _run(optimise_main, stage["cfg"], f"embeddings={emb}", f"outpath={again}")
    assert rc == 0, err
    assert read_csv(again) == rows
    # observer initialisation takes the output as its labels file
    init = tmp_path / "init.yaml"
    init.write_text(f"face_recognition_config: {stage['fr']}\ndevice: cpu\n"
                    f"dataset: {{path: {stage['root']}, batch_size: 4}}\nlabel_location: {stage['out']}\n"
                    f"top_n: 3\noutpath: {tmp_path}/observer.json\n")
    rc, err = _run(init_main, init)
    assert rc == 0, err
    assert json.loads((tmp_path / "observer.json").read_text())["selected_layers"]


def test_stage_errors_are_one_line(stage, tmp_path):
    stage["labels"].write_text(stage["labels"].read_text() + "Z/missing.png,0.5\n")
    rc, err = _run(optimise_main, stage["cfg"])
    error_line(rc, err, "Z/missing.png", "dataset.path")
    flat = tmp_path / "flat.csv"
    flat.write_text("path,quality\n" + "".join(f"A/A{k}.png,{k}\n" for k in range(4)))
    listing = tmp_path / "e.csv"
    listing.write_text("row,path\n0,A/A0.png\n")
    np.save(tmp_path / "e.npy", np.ones((1, 6), dtype=np.float32))
    rc, err = _run(optimise_main, stage["cfg"], f"label_location={flat}", f"embeddings={tmp_path / 'e.npy'}")
    error_line(rc, err, "e.csv", "A/A1.png")
    singles = tmp_path / "singles.csv"
    singles.write_text("path,quality\nA/A0.png,1\nB/B0.png,2\nC/C0.png,3\n")
    rc, err = _run(optimise_main, stage["cfg"], f"label_location={singles}")
    error_line(rc, err, "single image")
    rc, err = _run(optimise_main, stage["cfg"], "pairing=random")
    error_line(rc, err, "pairing")
