"""The streaming evaluation of large protocols (full Adience, IJB-C 1:1) equals the in-memory one:
thresholds from chunked impostor scores, the implicit all-pairs protocol, chunked template pooling,
and whole evaluation runs with the streaming threshold lowered so that small fixtures take it."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest
import yaml

from evaluation import adience, edc, ijbc, streaming
from evaluation.evaluate import evaluate_pairs
from evaluation.main import main as eval_main
from froq.core.errors import FroqError

from test_adience import write_adience
from test_table import tiny  # noqa: F401  (the table fixture)


def test_thresholds_from_chunks_equal_the_sorted_scores():
    rng = np.random.default_rng(1)
    scores = np.round(rng.normal(size=5003), 2)                     # many ties
    fmrs = [1e-4, 1e-3, 0.01, 0.3, 0.9999, 1.0]
    chunks = np.array_split(scores, [1, 7, 7, 900, 4000])            # odd sizes, one empty
    got = streaming.impostor_thresholds(iter(chunks), len(scores), fmrs)
    for f in fmrs:
        assert got[f] == edc.fmr_threshold(scores, f), f
    small = streaming.impostor_thresholds(iter(chunks), len(scores), [1e-3, 0.01])   # keeps 51 scores
    assert small == {f: edc.fmr_threshold(scores, f) for f in (1e-3, 0.01)}


def test_threshold_errors_are_one_line(monkeypatch):
    with pytest.raises(FroqError, match="no impostor pairs"):
        streaming.impostor_thresholds([], 0, [1e-3])
    with pytest.raises(FroqError, match="not finite"):
        streaming.impostor_thresholds([np.array([0.1, np.nan])], 2, [0.5])
    monkeypatch.setattr(streaming, "MAX_TOP", 10)
    with pytest.raises(FroqError, match=r"FMR 0.5 .* give a smaller fmr") as err:
        streaming.impostor_thresholds([np.zeros(100)], 100, [0.01, 0.5])
    assert "\n" not in str(err.value)
    with pytest.raises(FroqError, match="threshold: fixed with discard_over: mated only") as err:
        streaming.check_convention("per_step", "mated", 10 ** 8, "adience")
    assert "\n" not in str(err.value)


def test_all_pairs_scores_equal_the_listed_pairs():
    rng = np.random.default_rng(2)
    n = 700                                                          # two Gram blocks
    unit = streaming.unit_rows(rng.normal(size=(n, 16)))
    ids = rng.integers(0, 40, n)
    pairs = adience.all_pairs(n)
    genuine = ids[pairs[:, 0]] == ids[pairs[:, 1]]
    full = ijbc.template_pair_scores(unit, pairs)
    mated = adience.mated_pairs(ids)
    assert mated.tolist() == pairs[genuine].tolist()
    got = streaming.all_pairs_scores(unit, ids, mated)
    np.testing.assert_allclose(got.genuine_scores, full[genuine], rtol=0, atol=1e-12)
    imp = np.concatenate(list(got.impostor_chunks))
    assert got.n_impostor == len(imp) == int((~genuine).sum())
    np.testing.assert_allclose(np.sort(imp), np.sort(full[~genuine]), rtol=0, atol=1e-12)


def test_streamed_metrics_equal_the_in_memory_ones():
    rng = np.random.default_rng(3)
    n = 300
    unit = streaming.unit_rows(rng.normal(size=(n, 8)) + 0.4 * np.repeat(rng.normal(size=(30, 8)), 10, axis=0))
    ids = np.repeat(np.arange(30), 10)
    pairs = adience.all_pairs(n)
    genuine = ids[pairs[:, 0]] == ids[pairs[:, 1]]
    scores = ijbc.template_pair_scores(unit, pairs)
    img_q = {"a": rng.random(n), "b": np.round(rng.random(n), 1)}   # b: many tied qualities
    rand = [rng.random(n) for _ in range(3)]
    fmrs, limits = [1e-3, 0.05], [0.3, 0.2]

    def pq(q, p):
        return edc.pair_quality(q[p[:, 0]], q[p[:, 1]], "min")

    want, want_curves = evaluate_pairs(scores, genuine, {m: pq(q, pairs) for m, q in img_q.items()},
                                       [pq(q, pairs) for q in rand], fmrs, limits)
    mated = adience.mated_pairs(ids)
    s = streaming.all_pairs_scores(unit, ids, mated)
    th = streaming.impostor_thresholds(s.impostor_chunks, s.n_impostor, fmrs)
    got, got_curves = evaluate_pairs(s.genuine_scores, np.ones(len(mated), bool),
                                     {m: pq(q, mated) for m, q in img_q.items()}, [pq(q, mated) for q in rand],
                                     fmrs, limits, thresholds=th)
    assert set(got) == {"a", "b", "random", "perfect"}
    for method in got:
        for key in want[method]:
            w, g = want[method][key], got[method][key]
            assert g.keys() == w.keys()
            for k in ("pauc", "pauc_norm", "fnmr0", "threshold", "n_impostor", "n_impostor_accepted"):
                assert g[k] == pytest.approx(w[k], abs=1e-9), (method, key, k)
            for lim in w["by_limit"]:
                for k, v in w["by_limit"][lim].items():
                    assert g["by_limit"][lim][k] == pytest.approx(v, abs=1e-9), (method, key, lim, k)
            np.testing.assert_allclose(got_curves[key][method], want_curves[key][method], atol=1e-12)


def test_chunked_template_pooling_equals_one_array():
    from test_ijbc import write_release

    def proto(tmp):
        write_release(tmp / "IJBC")
        return ijbc.read_ijbc(tmp / "IJBC", tmp / "aligned")

    import tempfile
    from pathlib import Path

    with tempfile.TemporaryDirectory() as d:
        p = proto(Path(d))
    f = np.random.default_rng(4).normal(size=(len(p.images), 5)).astype(np.float32)
    whole = ijbc.template_features(p, f)
    np.testing.assert_allclose(ijbc.template_features(p, iter([f[:1], f[1:4], f[4:4], f[4:]])), whole,
                               rtol=0, atol=1e-12)


def _assert_close(got, want, where="results"):
    """Equal structures; numbers equal to 1e-9 (scores differ in summation order only, ~1e-16)."""
    if isinstance(want, dict):
        assert got.keys() == want.keys(), where
        for k in want:
            _assert_close(got[k], want[k], f"{where}.{k}")
    elif isinstance(want, float):
        assert got == pytest.approx(want, abs=1e-9, nan_ok=True), where
    else:
        assert got == want, where


def _adience_run(root, tmp_path, out, **extra):
    fr = tmp_path / "fr.yaml"
    fr.write_text(yaml.safe_dump({"model": {"arch": "test_ijbc_tiny", "weights": "random"},
                                  "preprocess": {"size": 24, "mean": 0.5, "std": 0.5, "channels": [0, 1, 2]}}))
    images = adience.read_adience(root).images
    (tmp_path / "q.csv").write_text("path,quality\n" + "".join(f"{p},{k % 4 / 10}\n" for k, p in enumerate(images)))
    cfg = {"face_recognition_configs": [str(fr)],
           "benchmarks": [{"name": "adience", "type": "adience", "root": str(root)}],
           "qualities": {"q": str(tmp_path / "q.csv")}, "fmr": [0.3, 0.5], "discard_limit": [0.3, 0.2],
           "random_seeds": 2, "outdir": str(tmp_path / out), "device": "cpu", "plots": False,
           "bootstrap": 0, **extra}
    path = tmp_path / f"{out}.yaml"
    path.write_text(yaml.safe_dump(cfg))
    import test_ijbc  # noqa: F401  (registers the tiny model)

    return eval_main(["-c", str(path)])["adience"]["test_ijbc_tiny"]


def test_adience_run_streamed_equals_in_memory(tmp_path, monkeypatch):
    root = tmp_path / "adience"
    write_adience(root)
    want = _adience_run(root, tmp_path, "memory")
    monkeypatch.setattr(streaming, "STREAM_PAIRS", 10)              # 66 pairs: streamed now
    p = adience.read_adience(root)
    assert isinstance(p, adience.AllPairsProtocol) and p.pairs is None
    assert (p.n_pairs, p.n_genuine, p.n_impostor) == (66, 11, 55)
    got = _adience_run(root, tmp_path, "streamed")
    _assert_close(got, want)
    assert not (tmp_path / "streamed" / "scores").exists()
    assert json.loads((tmp_path / "streamed" / "run.json").read_text())["benchmarks"]["adience"]["streamed"]
    # intervals are not offered there, and the metrics say why
    boot = _adience_run(root, tmp_path, "boot", bootstrap=20)["q"]
    assert "pauc_norm_ci" not in boot and "not computed" in boot["bootstrap"]["not_computed"]
    with pytest.raises(FroqError, match="discard_over: mated only"):
        _adience_run(root, tmp_path, "per_step", threshold="per_step")


def test_ijbc_run_streamed_equals_in_memory(tmp_path, monkeypatch):
    from test_ijbc import _config, write_release

    write_release(tmp_path / "IJBC")
    cfg, _ = _config(tmp_path / "IJBC", tmp_path)
    settings = {**yaml.safe_load(cfg.read_text()), "bootstrap": 0}
    cfg.write_text(yaml.safe_dump(settings))
    want = eval_main(["-c", str(cfg)])
    monkeypatch.setattr(streaming, "STREAM_PAIRS", 3)               # 4 template pairs: streamed now
    cfg.write_text(yaml.safe_dump({**settings, "outdir": str(tmp_path / "streamed")}))
    _assert_close(eval_main(["-c", str(cfg)]), want)
    assert not (tmp_path / "streamed" / "scores").exists()



def test_table_streams_large_benchmarks_with_the_same_cells(tiny, monkeypatch, capsys):
    from froq.table import main as table_main
    from stage_helpers import run_in_process

    cfg = yaml.safe_load((tiny / "table.yaml").read_text())
    cfg = {**cfg, "models": cfg["models"][:1], "benchmarks": cfg["benchmarks"][:1],
           "methods": {"embedding_norm": {}}}

    def table(out):
        path = tiny / f"{out}.yaml"
        path.write_text(yaml.safe_dump({**cfg, "outdir": str(tiny / out)}))
        run_in_process(table_main, ["-c", str(path)])
        return {(r["method"], r["discard_limit"]): r for r in csv.DictReader(open(tiny / out / "table.csv"))}

    want = table("memory")
    monkeypatch.setattr(streaming, "STREAM_PAIRS", 10)              # LFW's 24 pairs: streamed now
    got = table("streamed")
    assert got.keys() == want.keys()
    for k, row in want.items():
        assert float(got[k]["pauc"]) == pytest.approx(float(row["pauc"]), abs=1e-9)
        assert row["ci_low"] and not got[k]["ci_low"]               # intervals: in memory only
    assert "no bootstrap intervals for lfw: not computed" in (tiny / "streamed" / "table.md").read_text()


def test_pair_list_integers_are_parsed_across_blocks():
    text = b"1 2 0\n\n30 40 1\n5 6 1\n"
    assert ijbc._integers(text, 9, block=4).tolist() == [1, 2, 0, 30, 40, 1, 5, 6, 1]
    assert ijbc._integers(text, 8, block=4) is None and ijbc._integers(text, 10, block=4) is None
    assert ijbc._integers(b"1 2 x\n", 3, block=4) is None


def test_sampled_impostors_equal_the_draw_over_the_listed_pairs():
    ids = np.random.default_rng(5).integers(0, 25, 300)
    pairs = adience.all_pairs(300)
    genuine = ids[pairs[:, 0]] == ids[pairs[:, 1]]
    for count, seed in ((1, 0), (500, 3), (int((~genuine).sum()) - 1, 4)):
        # the draw as the reader made it before (over the listed impostor pairs' indices)
        pick = np.sort(np.random.default_rng(seed).choice(np.flatnonzero(~genuine), size=count, replace=False))
        want = pairs[np.sort(np.concatenate([np.flatnonzero(genuine), pick]))]
        got = adience.with_sampled_impostors(ids, adience.mated_pairs(ids), count, seed)
        assert got.tolist() == want.tolist(), (count, seed)
