"""EDC / pAUC / threshold definitions on hand-made cases whose answers are derived by hand."""

from __future__ import annotations

import math

import numpy as np
import pytest

from evaluation import edc
from evaluation.evaluate import evaluate_pairs
from froq.core.errors import FroqError


# ---- threshold at a target FMR: t = (floor(f*m)+1)-th highest impostor score, match = score > t


def test_threshold_picks_the_k_plus_first_highest_impostor():
    imp = [0.1, 0.5, 0.3, 0.9]
    th = edc.fmr_threshold(imp, 0.25)          # m=4, k=floor(1)=1 -> 2nd highest = 0.5
    assert th.threshold == 0.5 and th.n_allowed == 1 and th.n_accepted == 1 and th.fmr_achieved == 0.25
    th = edc.fmr_threshold(imp, 0.2)           # k=floor(0.8)=0 -> highest = 0.9, nothing accepted
    assert th.threshold == 0.9 and th.n_accepted == 0
    th = edc.fmr_threshold(imp, 0.5)           # k=2 -> 3rd highest = 0.3; 0.5 and 0.9 accepted
    assert th.threshold == 0.3 and th.n_accepted == 2
    th = edc.fmr_threshold(imp, 1.0)           # every impostor may be accepted
    assert th.threshold == -math.inf and th.n_accepted == 4


def test_threshold_with_tied_impostors_never_exceeds_the_target():
    th = edc.fmr_threshold([0.9, 0.9, 0.1, 0.2], 0.25)   # k=1 -> t = 0.9: the tie accepts none
    assert th.threshold == 0.9 and th.n_accepted == 0
    th = edc.fmr_threshold([0.7, 0.7, 0.7, 0.2], 0.5)    # k=2 -> t = 0.7 (3rd highest): none accepted
    assert th.threshold == 0.7 and th.n_accepted == 0


def test_threshold_float_rounding_of_fmr_times_count():
    imp = np.arange(3000, dtype=float)          # 1e-3 * 3000 = 3 allowed -> 4th highest = 2996
    th = edc.fmr_threshold(imp, 1e-3)
    assert th.n_allowed == 3 and th.threshold == 2996.0 and th.n_accepted == 3
    th = edc.fmr_threshold(np.arange(900, dtype=float), 1e-3)   # LFW folds 1-3: k = 0 -> the maximum
    assert th.n_allowed == 0 and th.threshold == 899.0 and th.n_accepted == 0


def test_threshold_rejects_bad_input():
    with pytest.raises(FroqError, match="no impostor"):
        edc.fmr_threshold([], 1e-3)
    with pytest.raises(FroqError, match="FMR"):
        edc.fmr_threshold([0.1], 0.0)
    with pytest.raises(FroqError, match="not finite"):
        edc.fmr_threshold([0.1, np.nan], 0.1)


def test_pair_quality_rules():
    a, b = np.array([0.2, 0.8]), np.array([0.5, 0.4])
    assert np.allclose(edc.pair_quality(a, b, "min"), [0.2, 0.4])
    assert np.allclose(edc.pair_quality(a, b, "mean"), [0.35, 0.6])
    assert np.allclose(edc.pair_quality(a, b, "product"), [0.1, 0.32])
    with pytest.raises(FroqError, match="unknown pair quality rule"):
        edc.pair_quality(a, b, "max")


# ---- curves


def test_perfect_ordering_is_the_theoretical_best_curve():
    n, e = 10, 3
    errors = np.arange(n) < e                 # the 3 lowest-quality pairs are the errors
    curve = edc.edc_curve(errors, np.arange(n, dtype=float))
    assert np.array_equal(curve.discard_counts, np.arange(n))
    expected = edc.theoretical_best_fnmr(0.3, np.arange(n) / n)
    assert np.allclose(curve.fnmr, expected)
    assert np.allclose(curve.fnmr[:4], [3 / 10, 2 / 9, 1 / 8, 0])
    # pAUC over [0, 0.3]: 0.1 * (3/10 + 2/9 + 1/8)
    area = 0.1 * (3 / 10 + 2 / 9 + 1 / 8)
    assert edc.pauc(curve, 0.3) == pytest.approx(area, abs=1e-12)
    res = edc.evaluate_edc(np.where(errors, 0.0, 1.0), 0.5, np.arange(n, dtype=float), 0.3)
    assert res.pauc_norm == pytest.approx(area / (0.3 * 0.3), abs=1e-12)
    assert res.fnmr0 == 0.3 and res.n_false_nonmatch == 3 and res.n_genuine == 10


def test_reversed_ordering():
    n = 10
    errors = np.arange(n) >= 7                # errors have the highest quality: discarded last
    curve = edc.edc_curve(errors, np.arange(n, dtype=float))
    k = np.arange(8)
    assert np.allclose(curve.fnmr[:8], 3 / (n - k))
    area = 0.1 * (3 / 10 + 3 / 9 + 3 / 8)
    assert edc.pauc(curve, 0.3) == pytest.approx(area, abs=1e-12)
    assert area / (0.3 * 0.3) > 1.0           # worse than keeping everything


def test_all_equal_qualities_give_a_flat_curve_and_norm_one():
    errors = np.array([1, 0, 0, 1, 0, 0, 0, 0], dtype=bool)
    res = edc.evaluate_edc(np.where(errors, -1.0, 1.0), 0.0, np.full(8, 0.7), 0.3)
    assert np.array_equal(res.curve.discard_counts, [0])
    assert np.allclose(res.curve.fnmr_at_count(np.arange(8)), 0.25)
    assert res.pauc == pytest.approx(0.3 * 0.25)
    assert res.pauc_norm == pytest.approx(1.0)


def test_tiny_case_by_hand_with_limit_between_points():
    # qualities 0.4 0.1 0.3 0.2; errors at pairs 1 and 3 -> sorted errors 1,1,0,0
    # FNMR after discarding 0,1,2,3 pairs: 2/4, 1/3, 0/2, 0/1
    errors = np.array([0, 1, 0, 1], dtype=bool)
    q = np.array([0.4, 0.1, 0.3, 0.2])
    curve = edc.edc_curve(errors, q)
    assert np.allclose(curve.fnmr, [0.5, 1 / 3, 0.0, 0.0])
    # [0, .25) at 1/2 and [.25, .3) at 1/3 -> 0.125 + 0.05/3 = 17/120
    assert edc.pauc(curve, 0.3) == pytest.approx(17 / 120, abs=1e-12)
    res = edc.evaluate_edc(np.where(errors, 0.0, 1.0), 0.0, q, 0.3)
    assert res.pauc_norm == pytest.approx(17 / 18, abs=1e-12)
    # [0, .25) 1/2, [.25, .5) 1/3, [.5, .6) 0
    assert edc.pauc(curve, 0.6) == pytest.approx(0.125 + 0.25 / 3, abs=1e-12)


def test_tied_qualities_are_discarded_together():
    # qualities 1 1 2 3, errors on the two q=1 pairs: points at 0 (2/4), 2 (0/2), 3 (0/1)
    errors = np.array([1, 1, 0, 0], dtype=bool)
    curve = edc.edc_curve(errors, np.array([1.0, 1.0, 2.0, 3.0]))
    assert np.array_equal(curve.discard_counts, [0, 2, 3])
    assert np.allclose(curve.fnmr, [0.5, 0.0, 0.0])
    assert curve.fnmr_at_count(1) == 0.5       # cannot discard half of a tied group
    assert edc.pauc(curve, 0.3) == pytest.approx(0.3 * 0.5)
    assert edc.pauc(curve, 0.6) == pytest.approx(0.5 * 0.5)


def test_result_does_not_depend_on_pair_order():
    rng = np.random.default_rng(0)
    errors = rng.random(200) < 0.2
    q = rng.integers(0, 20, 200).astype(float)          # many ties
    ref = edc.pauc(edc.edc_curve(errors, q), 0.3)
    for _ in range(5):
        p = rng.permutation(200)
        assert edc.pauc(edc.edc_curve(errors[p], q[p]), 0.3) == pytest.approx(ref, abs=1e-15)


def test_genuine_score_equal_to_threshold_is_an_error():
    res = edc.evaluate_edc([0.5, 0.6, 0.4], 0.5, [1.0, 2.0, 3.0], 0.3)
    assert res.n_false_nonmatch == 2


def test_zero_fnmr_gives_nan_norm_and_bad_limits_fail():
    res = edc.evaluate_edc([0.9, 0.8], 0.1, [1.0, 2.0], 0.3)
    assert res.pauc == 0.0 and math.isnan(res.pauc_norm)
    curve = edc.edc_curve([True, False], [1.0, 2.0])
    for bad in (0.0, 1.0, 1.5):
        with pytest.raises(FroqError, match="discard limit"):
            edc.pauc(curve, bad)
    with pytest.raises(FroqError, match="NaN"):
        edc.edc_curve([True, False], [np.nan, 1.0])


# ---- references through evaluate_pairs


def test_references_perfect_is_theoretical_best_and_random_is_near_one():
    rng = np.random.default_rng(1)
    n_gen, n_imp = 3000, 3000
    gen = rng.normal(0.6, 0.15, n_gen)
    imp = rng.normal(0.0, 0.1, n_imp)
    scores = np.concatenate([gen, imp])
    genuine = np.r_[np.ones(n_gen, bool), np.zeros(n_imp, bool)]
    good = gen + rng.normal(0, 0.05, n_gen)          # a quality correlated with the score
    random_q = [np.random.default_rng(s).random(n_gen) for s in range(10)]
    metrics, curves = evaluate_pairs(scores, genuine, {"good": good}, random_q, [1e-3, 1e-2], 0.3)
    for key in ("0.001", "0.01"):
        m = {k: v[key] for k, v in metrics.items()}
        th = edc.fmr_threshold(imp, float(key)).threshold
        f0 = float(np.mean(gen <= th))
        assert m["perfect"]["threshold"] == th and m["perfect"]["fnmr0"] == pytest.approx(f0)
        # perfect = exact integral of max(0, f0 - d)/(1 - d) at the points k/n
        k = np.arange(900)                           # discard counts in [0, 0.3 n)
        best = edc.theoretical_best_fnmr(f0, k / n_gen)
        assert m["perfect"]["pauc"] == pytest.approx(best.sum() / n_gen, rel=1e-9)
        assert m["perfect"]["pauc_norm"] <= m["good"]["pauc_norm"] < m["random"]["pauc_norm"]
        assert m["random"]["pauc_norm"] == pytest.approx(1.0, abs=0.05)
        assert m["random"]["seeds"] == 10 and m["random"]["n_genuine"] == n_gen
        assert m["good"]["n_impostor"] == n_imp
        x, y = curves[key]["random"]
        assert x[0] == 0 and x[-1] == pytest.approx(0.3) and np.all(np.diff(x) > 0)
        # mean curve area (steps) equals the mean pAUC
        area = np.sum(y[:-1] * np.diff(x))
        assert area == pytest.approx(m["random"]["pauc"], rel=1e-9)
