"""The readable 0–100 quality scale (``observer/scale.py``): strictly increasing, inside (0, 100),
the calibration images at their own percentiles, written by inference beside the raw quality."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest

import froq
from observer.scale import percentile, scale_record
from test_api import noise_faces
from test_observer import SIZE, tiny_fr


def test_the_map_is_strictly_increasing_and_stays_inside_0_100():
    calib = np.array([3.0, 1.0, 2.0, 2.0, 5.0, 4.0, 2.0, 7.5])
    scale = scale_record(calib)
    assert scale["qualities"] == sorted(calib.tolist()) and scale["images"] == 8
    raw = np.linspace(-50, 60, 20001)
    p = percentile(raw, scale)
    assert np.all(np.diff(p) > 0) and p.min() > 0 and p.max() < 100
    # each calibration value sits at its mid-rank: 2.0 holds ranks 2-4 of 8 -> 100 * 2.5 / 8
    assert percentile(np.array([1.0, 2.0, 7.5]), scale) == pytest.approx([100 / 16, 31.25, 100 - 100 / 16])
    assert percentile(np.array([4.5]), scale)[0] == pytest.approx((68.75 + 81.25) / 2)
    one = scale_record([3.0])
    assert percentile(np.array([2.0, 3.0, 4.0]), one).tolist()[1] == 50.0
    assert np.all(np.diff(percentile(np.array([2.0, 3.0, 4.0]), one)) > 0)


def test_inference_and_api_write_the_scale_with_the_same_ranking(tmp_path, capsys):
    from observer.inference import main as inference_main
    from stage_helpers import run_in_process

    rels = noise_faces(tmp_path / "faces", 9, SIZE, seed=4)
    labels = {p: float(i % 4) + 0.1 * i for i, p in enumerate(rels)}
    observer = froq.calibrate(tiny_fr(), tmp_path / "faces", labels, top_n=4, save=tmp_path / "obs.json")
    record = json.loads((tmp_path / "obs.json").read_text())
    assert record["scale"]["images"] == 9 and len(record["scale"]["qualities"]) == 9
    res = observer.score(tmp_path / "faces")
    mid = 100 * (np.argsort(np.argsort(res.quality)) + 0.5) / 9  # distinct qualities: mid-ranks
    np.testing.assert_allclose(res.percentile, mid, atol=1e-3)
    others = noise_faces(tmp_path / "others", 6, SIZE, seed=9)
    res = observer.score(tmp_path / "others")
    assert res.paths == others
    assert list(np.argsort(res.percentile)) == list(np.argsort(res.quality))
    assert np.all((res.percentile > 0) & (res.percentile < 100))
    fr_cfg = tmp_path / "fr.yaml"
    fr_cfg.write_text("model: {arch: froq_test_tiny, weights: random}\n"
                      f"preprocess: {{size: {SIZE}, mean: 0.5, std: 0.5, channels: [2, 1, 0]}}\n")

    def infer(observer_file, out):
        cfg = tmp_path / "inference.yaml"
        cfg.write_text(f"face_recognition_config: {fr_cfg}\ntarget_dataset: {tmp_path / 'others'}\n"
                       f"observer_data: {observer_file}\noutpath: {out}\ndevice: cpu\n")
        run_in_process(inference_main, ["-c", str(cfg)])
        with open(out, newline="") as fh:
            return list(csv.DictReader(fh))

    rows = infer(tmp_path / "obs.json", tmp_path / "q.csv")
    assert list(rows[0]) == ["path", "quality", "percentile", "flag"]
    np.testing.assert_allclose([float(r["percentile"]) for r in rows], res.percentile, rtol=1e-6)
    del record["scale"]  # an observer file from before the scale: no column, a warning
    (tmp_path / "old.json").write_text(json.dumps(record))
    assert froq.api.Observer(tiny_fr(), record).score(tmp_path / "others").percentile is None
    assert list(infer(tmp_path / "old.json", tmp_path / "q_old.csv")[0]) == ["path", "quality", "flag"]
    assert "has no calibration scale" in capsys.readouterr().err
