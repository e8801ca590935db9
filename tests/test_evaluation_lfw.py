"""The evaluation on real data (issue 4): LFW folds 1–3 of ../shared with dlib's ResNet.

A FROQ observer calibrated on a subsample of the LFW calibration pool (the same one as
tests/test_run_e2e.py, shared within a session) scores the 2,320 pair images; ``evaluation/main.py``
then computes the EDC at FMR 1e-3 with discard limit 0.3. FROQ must beat the ``random`` reference
and cannot beat the ``perfect`` oracle (normalised pAUC: lower is better).
"""

from __future__ import annotations

import pytest
import yaml

from test_run_e2e import FR_CFG, calibrate_lfw_observer, infer


@pytest.fixture(scope="session")
def lfw_observer_for_evaluation(lfw_calibration_pool_dlib150, tmp_path_factory) -> dict:
    """The observer of ``test_run_e2e.calibrate_lfw_observer`` (same folder: built once per session)."""
    return calibrate_lfw_observer(tmp_path_factory.getbasetemp() / "froq_lfw_observer",
                                  lfw_calibration_pool_dlib150)


def test_froq_beats_random_on_lfw_folds_1_to_3(lfw_observer_for_evaluation, lfw_dlib150, lfw_root,
                                               lfw_pairs, lfw_embedding_cache, tmp_path):
    from evaluation.main import main as evaluation_main
    from lfw_data import pair_images

    froq_csv = tmp_path / "froq.csv"
    qualities = infer(lfw_dlib150, lfw_observer_for_evaluation["observer"], froq_csv)
    assert set(pair_images(lfw_pairs)) <= set(qualities)

    cfg = {
        "face_recognition_configs": [FR_CFG],
        "benchmarks": [{"name": "lfw", "type": "lfw_pairs", "images": str(lfw_dlib150),
                        "pairs": str(lfw_root / "pairs.txt")}],
        "qualities": {"froq": str(froq_csv)},
        "fmr": [1.0e-3], "discard_limit": 0.3, "pair_quality": "min", "random_seeds": 10,
        "outdir": str(tmp_path / "evaluation"), "device": "cpu", "plots": False,
        "cache_dir": str(lfw_embedding_cache),  # shared with test_lfw_verification.py
    }
    cfg_path = tmp_path / "evaluation.yaml"
    cfg_path.write_text(yaml.safe_dump(cfg))
    results = evaluation_main(["-c", str(cfg_path)])["lfw"]["dlib_resnet"]

    froq, rand, perfect = results["froq"], results["random"], results["perfect"]
    assert froq["n_genuine"] == 900 and froq["n_impostor"] == 900
    assert froq["fnmr0"] > 0  # otherwise the normalised pAUC is undefined
    assert froq["pauc_norm"] < rand["pauc_norm"], (froq["pauc_norm"], rand["pauc_norm"])
    assert perfect["pauc_norm"] < froq["pauc_norm"], (perfect["pauc_norm"], froq["pauc_norm"])
    assert (tmp_path / "evaluation" / "table.md").read_text().count("froq") == 1
