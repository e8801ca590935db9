"""Evaluation conventions (issue 13.5): each option reproduces a hand-computed EDC on a tiny example.

The example, 4 genuine (G) and 4 impostor (I) pairs, target FMR 0.34:

    pair  score  quality          pair  score  quality
    G1    0.2    2                I1    0.5    1.5
    G2    0.9    1                I2    0.45   2.5
    G3    0.4    3                I3    0.1    5
    G4    0.8    4                I4    0.0    6

Threshold on all 4 impostors: k = floor(0.34·4) = 1, so t = the 2nd-highest impostor = 0.45.
False non-matches (score <= t): G1, G3 → FNMR(0) = 2/4 = 0.5.
"""

from __future__ import annotations

import numpy as np
import pytest

from evaluation import bootstrap, edc
from evaluation.edc_conventions import convention_curve, normalised
from evaluation.evaluate import BootstrapSpec, Convention, evaluate_pairs

SCORES = np.array([0.2, 0.9, 0.4, 0.8, 0.5, 0.45, 0.1, 0.0])
GENUINE = np.array([True, True, True, True, False, False, False, False])
QUALITY = np.array([2.0, 1.0, 3.0, 4.0, 1.5, 2.5, 5.0, 6.0])
FMR = 0.34

# --- threshold fixed, discard over mated pairs (ISO/IEC 29794-1, default) ---------------------------
# genuine order by quality: G2(1) G1(2) G3(3) G4(4); n = 4, points at 0, 1/4, 2/4, 3/4:
#   d = 0:    4 left, errors G1 G3       → 2/4 = 0.5
#   d = 0.25: G1 G3 G4 left, errors 2    → 2/3
#   d = 0.5:  G3 G4 left, error G3       → 1/2
# pAUC(0.3) = 0.25·0.5 + 0.05·2/3 = 0.125 + 0.033333 = 0.158333;  / (0.3·0.5) = 1.055556
# pAUC(0.2) = 0.2·0.5 = 0.1;                                         / (0.2·0.5) = 1.0
# FNMR at 0.3 = value at 0.25 = 2/3; at 0.2 = 0.5
# perfect oracle (genuine by score: G1 .2, G3 .4, G4 .8, G2 .9): 0.5, then G3 G4 G2 → 1/3, then 0
#   pAUC(0.3) = 0.125 + 0.05/3 = 0.141667 → minus best = 0.158333 − 0.141667 = 0.016667
ISO = {"pauc_03": 0.125 + 0.05 * 2 / 3, "norm_03": (0.125 + 0.05 * 2 / 3) / 0.15, "pauc_02": 0.1,
       "norm_02": 1.0, "fnmr_03": 2 / 3, "fnmr_02": 0.5, "best_03": 0.125 + 0.05 / 3}

# --- threshold fixed, discard over all pairs --------------------------------------------------------
# all pairs by quality: G2(1) I1(1.5) G1(2) I2(2.5) G3(3) G4(4) I3(5) I4(6); N = 8, steps of 1/8:
#   d = 0:     4 genuine left, errors 2  → 0.5
#   d = 0.125: G2 gone → G1 G3 G4, 2     → 2/3
#   d = 0.25:  I1 gone (t stays 0.45)    → 2/3
#   d = 0.375: G1 gone → G3 G4, 1        → 1/2
# pAUC(0.3) = 0.125·0.5 + 0.175·2/3 = 0.0625 + 0.116667 = 0.179167; / 0.15 = 1.194444
# pAUC(0.2) = 0.0625 + 0.075·2/3 = 0.1125;                            / 0.1  = 1.125
# FNMR at 0.3 = value at 0.25 = 2/3
ALL_FIXED = {"pauc_03": 0.0625 + 0.175 * 2 / 3, "pauc_02": 0.1125, "fnmr_03": 2 / 3}

# --- threshold recomputed per step, discard over all pairs (CR-FIQA's / MagFace's scripts) -----------
#   d = 0:     impostors .5 .45 .1 0, k = floor(1.36) = 1 → t = .45; errors G1 G3 of 4      → 0.5
#   d = 0.125: same impostors → t = .45; G1 G3 G4 left, errors 2                            → 2/3
#   d = 0.25:  I1 gone: .45 .1 0, k = floor(0.34·3) = 1 → t = 0.1; G1(.2) G3(.4) G4 pass    → 0
#   d = 0.375: G1 gone, t = 0.1                                                             → 0
# pAUC(0.3) = 0.125·0.5 + 0.125·2/3 + 0.05·0 = 0.0625 + 0.083333 = 0.145833; / 0.15 = 0.972222
# pAUC(0.2) = 0.0625 + 0.075·2/3 = 0.1125
# FNMR at 0.3 = value at 0.25 = 0
PER_STEP_ALL = {"pauc_03": 0.0625 + 0.125 * 2 / 3, "pauc_02": 0.1125, "fnmr_03": 0.0,
                "thresholds": [0.45, 0.45, 0.1]}


def test_iso_convention_by_hand_and_equal_to_edc_module():
    c = convention_curve(SCORES, GENUINE, QUALITY, FMR, 0.3)
    assert c.fnmr0 == 0.5
    assert c.pauc(0.3) == pytest.approx(ISO["pauc_03"]) and c.pauc(0.2) == pytest.approx(ISO["pauc_02"])
    assert c.fnmr_at(0.3) == pytest.approx(ISO["fnmr_03"]) and c.fnmr_at(0.2) == pytest.approx(ISO["fnmr_02"])
    th = edc.fmr_threshold(SCORES[~GENUINE], FMR)
    assert th.threshold == 0.45
    res = edc.evaluate_edc(SCORES[GENUINE], th.threshold, QUALITY[GENUINE], 0.3)
    assert res.pauc == pytest.approx(c.pauc(0.3), abs=1e-15) and res.pauc_norm == pytest.approx(ISO["norm_03"])
    # per_step changes nothing when only mated pairs are discarded (the impostors all stay)
    c2 = convention_curve(SCORES, GENUINE, QUALITY, FMR, 0.3, threshold="per_step")
    assert c2.pauc(0.3) == c.pauc(0.3)


def test_discard_over_all_pairs_by_hand():
    c = convention_curve(SCORES, GENUINE, QUALITY, FMR, 0.3, threshold="fixed", discard_over="all")
    np.testing.assert_allclose(c.discard_fractions, [0, 0.125, 0.25])
    np.testing.assert_allclose(c.fnmr, [0.5, 2 / 3, 2 / 3])
    assert c.pauc(0.3) == pytest.approx(ALL_FIXED["pauc_03"]) and c.pauc(0.2) == pytest.approx(ALL_FIXED["pauc_02"])
    assert c.fnmr_at(0.3) == pytest.approx(ALL_FIXED["fnmr_03"])


def test_threshold_per_step_over_all_pairs_by_hand():
    c = convention_curve(SCORES, GENUINE, QUALITY, FMR, 0.3, threshold="per_step", discard_over="all")
    np.testing.assert_allclose(c.thresholds, PER_STEP_ALL["thresholds"])
    np.testing.assert_allclose(c.fnmr, [0.5, 2 / 3, 0.0])
    assert c.pauc(0.3) == pytest.approx(PER_STEP_ALL["pauc_03"]) and c.pauc(0.2) == pytest.approx(PER_STEP_ALL["pauc_02"])
    assert c.fnmr_at(0.3) == 0.0


def test_normalisations_by_hand():
    assert normalised(ISO["pauc_03"], 0.5, 0.3, ISO["best_03"], "start") == pytest.approx(1.0555556, abs=1e-6)
    assert normalised(ISO["pauc_03"], 0.5, 0.3, ISO["best_03"], "raw") == pytest.approx(0.1583333, abs=1e-6)
    assert normalised(ISO["pauc_03"], 0.5, 0.3, ISO["best_03"], "best") == pytest.approx(0.0166667, abs=1e-6)
    assert np.isnan(normalised(0.1, 0.0, 0.3, None, "start"))


@pytest.mark.parametrize("threshold, discard_over, expected", [
    ("fixed", "mated", ISO), ("fixed", "all", ALL_FIXED), ("per_step", "all", PER_STEP_ALL)])
@pytest.mark.parametrize("normalisation", ["start", "raw", "best"])
def test_evaluate_pairs_reports_each_convention(threshold, discard_over, expected, normalisation):
    conv = Convention(threshold, discard_over, normalisation)
    metrics, curves = evaluate_pairs(SCORES, GENUINE, {"q": QUALITY}, [QUALITY], [FMR], [0.3, 0.2], conv)
    m = metrics["q"]["0.34"]
    assert m["convention"] == {"threshold": threshold, "discard_over": discard_over, "normalisation": normalisation}
    assert m["pauc"] == pytest.approx(expected["pauc_03"]) and m["discard_limit"] == 0.3
    assert m["pauc_norm"] == pytest.approx(expected["pauc_03"] / 0.15)
    assert m["fnmr_at_limit"] == pytest.approx(expected["fnmr_03"])
    assert m["by_limit"]["0.2"]["pauc"] == pytest.approx(expected["pauc_02"])
    best = metrics["perfect"]["0.34"]["by_limit"]["0.3"]["pauc"]
    assert m["pauc_minus_best"] == pytest.approx(expected["pauc_03"] - best)
    want = {"start": expected["pauc_03"] / 0.15, "raw": expected["pauc_03"],
            "best": expected["pauc_03"] - best}[normalisation]
    assert m["pauc_value"] == pytest.approx(want)
    if (threshold, discard_over) == ("fixed", "mated"):
        assert best == pytest.approx(ISO["best_03"])
    # one random seed equal to q: the random reference is q itself
    assert metrics["random"]["0.34"]["pauc"] == pytest.approx(m["pauc"])
    x, y = curves["0.34"]["q"]
    assert x[-1] == pytest.approx(0.3) and y[0] == 0.5


def test_discard_over_all_needs_impostor_qualities():
    from froq.core.errors import FroqError

    with pytest.raises(FroqError, match="impostor pairs"):
        evaluate_pairs(SCORES, GENUINE, {"q": QUALITY[GENUINE]}, [QUALITY], [FMR], 0.3,
                       Convention(discard_over="all"))


# --- weights = resampled copies ----------------------------------------------------------------------


@pytest.mark.parametrize("threshold, discard_over", [("fixed", "mated"), ("fixed", "all"), ("per_step", "all")])
def test_weights_equal_repeated_pairs(threshold, discard_over):
    rng = np.random.default_rng(3)
    n = 60
    genuine = rng.random(n) < 0.4
    scores = np.where(genuine, rng.normal(0.6, 0.2, n), rng.normal(0.1, 0.2, n))
    quality = np.round(rng.random(n), 1)                       # ties on purpose
    w = rng.integers(0, 4, n)
    w[np.flatnonzero(genuine)[0]] = 1
    w[np.flatnonzero(~genuine)[0]] = 1
    weighted = convention_curve(scores, genuine, quality, 0.1, 0.3, threshold, discard_over, w)
    rep = np.repeat(np.arange(n), w)
    copies = convention_curve(scores[rep], genuine[rep], quality[rep], 0.1, 0.3, threshold, discard_over)
    for lim in (0.3, 0.2):
        assert weighted.pauc(lim) == pytest.approx(copies.pauc(lim), abs=1e-12)
        assert weighted.fnmr_at(lim) == pytest.approx(copies.fnmr_at(lim), abs=1e-12)


def test_vectorised_bootstrap_equals_one_resample_at_a_time():
    rng = np.random.default_rng(5)
    n = 80
    ids = rng.integers(0, 12, size=(n, 2))
    genuine = rng.random(n) < 0.4
    ids[genuine, 1] = ids[genuine, 0]
    genuine = ids[:, 0] == ids[:, 1]
    scores = np.where(genuine, rng.normal(0.6, 0.2, n), rng.normal(0.1, 0.2, n))
    q = rng.random(n)
    clusters = bootstrap.Clusters("identities", ids[:, 0], ids[:, 1], 12)
    quals = {"q": [q], "perfect": [np.where(genuine, scores, np.inf)]}
    fast = bootstrap.bootstrap_samples(scores, genuine, quals, [0.1], [0.3, 0.2], clusters, 30, seed=1)
    weights = np.concatenate(list(bootstrap.weight_blocks(clusters, genuine, 30, 1)))
    for r in range(30):
        if weights[r, genuine].sum() == 0 or weights[r, ~genuine].sum() == 0:
            continue
        c = convention_curve(scores, genuine, q, 0.1, 0.3, weights=weights[r])
        assert fast["q"]["0.1"][0.3]["pauc"][r] == pytest.approx(c.pauc(0.3), abs=1e-12)
        assert fast["q"]["0.1"][0.2]["fnmr_at_limit"][r] == pytest.approx(c.fnmr_at(0.2), abs=1e-12)
    # identity weights: genuine pair of A gets c_A, impostor of A and B gets c_A·c_B
    block = next(bootstrap.weight_blocks(clusters, genuine, 4, 9))
    counts = bootstrap._counts(np.random.default_rng(9).integers(0, 12, size=(4, 12)), 12)
    np.testing.assert_array_equal(block[:, genuine], counts[:, ids[genuine, 0]])
    np.testing.assert_array_equal(block[:, ~genuine], counts[:, ids[~genuine, 0]] * counts[:, ids[~genuine, 1]])


def test_bootstrap_interval_in_results_and_seeded():
    rng = np.random.default_rng(2)
    n = 400
    ids = rng.integers(0, 40, size=(n, 2))
    genuine = rng.random(n) < 0.5
    ids[genuine, 1] = ids[genuine, 0]
    genuine = ids[:, 0] == ids[:, 1]
    scores = np.where(genuine, rng.normal(0.5, 0.2, n), rng.normal(0.0, 0.15, n))
    q = scores + rng.normal(0, 0.2, n)
    boot = BootstrapSpec(bootstrap.Clusters("identities", ids[:, 0], ids[:, 1], 40), resamples=200, seed=4)
    m1, _ = evaluate_pairs(scores, genuine, {"q": q}, [rng.random(n)], [0.01], [0.3, 0.2], boot=boot)
    m2, _ = evaluate_pairs(scores, genuine, {"q": q}, [np.random.default_rng(2).random(n)], [0.01], [0.3, 0.2],
                           boot=boot)
    e = m1["q"]["0.01"]
    lo, hi = e["pauc_norm_ci"]
    assert lo < hi and lo <= e["pauc_norm"] * 1.5 and hi >= e["pauc_norm"] * 0.5
    assert e["bootstrap"] == {"unit": "identities", "n_clusters": 40, "resamples": 200, "seed": 4, "level": 0.95}
    # every limit's interval is that of its own resampled values
    samples = bootstrap.bootstrap_samples(scores, genuine, {"q": [q], "perfect": [np.where(genuine, scores, np.inf)]},
                                          [0.01], [0.3, 0.2], boot.clusters, 200, seed=4)["q"]["0.01"]
    for metric in ("pauc", "fnmr_at_limit"):
        assert e["by_limit"]["0.2"][f"{metric}_ci"] == bootstrap.interval(samples[0.2][metric])
        assert e[f"{metric}_ci"] == bootstrap.interval(samples[0.3][metric])
    assert e["pauc_norm_ci"] == m2["q"]["0.01"]["pauc_norm_ci"]          # same seed, same interval
    assert m1["perfect"]["0.01"]["pauc_minus_best_ci"] == [0.0, 0.0]


def test_pair_resampling_draws_top_impostors_from_the_multinomial_marginals():
    top = bootstrap._PairTop(np.random.default_rng(0), 400, 50)
    first = top(10).copy()
    full = top(50)
    np.testing.assert_array_equal(full[:, :10], first)            # a longer prefix extends a shorter one
    assert np.all(full.sum(axis=1) == 50)                          # every draw lands somewhere
    assert abs(full.mean() - 1.0) < 0.05 and abs(full.var() - 0.98) < 0.1   # Multinomial(50, 1/50): var 49/50
