"""Adience as used for FIQA (CR-FIQA's protocol: all pairs, mated = same face_id), on a tiny
fixture in the dataset's own layout (fold_{0..4}_data.txt + faces/<user_id>/coarse_tilt_aligned_face.
<face_id>.<original_image>): pair counts, sampling, file checks, and the evaluation end to end."""

from __future__ import annotations

import csv

import numpy as np
import pytest
import yaml

from evaluation import adience
from evaluation.main import main as eval_main
from froq.core.errors import FroqError
from froq.core.images import save_rgb

HEADER = ["user_id", "original_image", "face_id", "age", "gender", "x", "y", "dx", "dy", "tilt_ang",
          "fiducial_yaw_angle", "fiducial_score"]
# (user_id, face_id, number of images); folds take users in turn
FACES = [("10@N01", 1, 3), ("10@N01", 2, 2), ("20@N02", 3, 1), ("30@N03", 4, 4), ("40@N04", 5, 2)]


def write_adience(root, ext=".jpg"):
    """Fold files (tab separated, the real header) and faces/ images; returns the relative paths."""
    rng = np.random.default_rng(0)
    rows = {f: [] for f in range(5)}
    paths = []
    for n, (user, face, count) in enumerate(FACES):
        for k in range(count):
            orig = f"{1000 + 10 * face + k}_ab12cd34ef_o.jpg"
            rows[n % 5].append([user, orig, str(face), "(25, 32)", "f", "10", "20", "300", "300", "0", "0", "70"])
            rel = f"{user}/coarse_tilt_aligned_face.{face}.{orig}"
            save_rgb(rng.integers(0, 256, (24, 24, 3), dtype=np.uint8), root / "faces" / rel)
            paths.append(rel)
    for f, fold_rows in rows.items():
        with open(root / f"fold_{f}_data.txt", "w", newline="") as fh:
            w = csv.writer(fh, delimiter="\t")
            w.writerow(HEADER)
            w.writerows(fold_rows)
    return paths


@pytest.fixture()
def root(tmp_path):
    write_adience(tmp_path / "adience")
    return tmp_path / "adience"


def test_all_pairs_mated_by_face_id(root):
    p = adience.read_adience(root)
    n = 12
    assert len(p.images) == n and len(p.pairs) == n * (n - 1) // 2
    assert p.n_genuine == 3 + 1 + 0 + 6 + 1                      # sum of C(k, 2) per face id
    assert np.all(p.pairs[:, 0] < p.pairs[:, 1])
    assert len({tuple(r) for r in p.pairs.tolist()}) == len(p.pairs)
    face = {img: img.split("/")[1].split(".")[1] for img in p.images}
    want = [face[p.images[i]] == face[p.images[j]] for i, j in p.pairs]
    assert p.genuine.tolist() == want
    assert p.images[0].startswith("10@N01/coarse_tilt_aligned_face.1.")


def test_pair_generation_in_blocks(monkeypatch):
    monkeypatch.setattr(adience, "PAIR_BLOCK", 3)
    got = adience.all_pairs(8)
    i, j = np.triu_indices(8, 1)
    assert got.dtype == np.int32 and got.tolist() == np.stack([i, j], 1).tolist()


def test_impostor_sample_keeps_every_mated_pair(root):
    full = adience.read_adience(root)
    p = adience.read_adience(root, impostors=10, seed=3)
    assert p.n_genuine == full.n_genuine and p.n_impostor == 10
    assert adience.read_adience(root, impostors=10, seed=3).pairs.tolist() == p.pairs.tolist()
    assert adience.read_adience(root, impostors=10, seed=4).pairs.tolist() != p.pairs.tolist()


def test_aligned_folder_with_another_extension_and_missing_images(root, tmp_path):
    aligned = tmp_path / "aligned"
    for f in (root / "faces").rglob("*.jpg"):
        rel = f.relative_to(root / "faces")
        target = aligned / rel.with_suffix(".png")
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(f.read_bytes())
    p = adience.read_adience(root, aligned)
    assert all(x.endswith(".png") for x in p.images)
    victim = next(aligned.rglob("*.png"))
    victim.unlink()
    with pytest.raises(FroqError, match=r"1 of 12 face\(s\) of the fold files have no image"):
        adience.read_adience(root, aligned)
    assert len(adience.read_adience(root, aligned, missing_images="drop").images) == 11


def test_bad_fold_files_give_one_line(root):
    (root / "fold_3_data.txt").write_text("user\toriginal_image\tface_id\n")
    with pytest.raises(FroqError, match=r"fold_3_data.txt:1: header lacks user_id") as err:
        adience.read_adience(root)
    assert "\n" not in str(err.value)
    (root / "fold_3_data.txt").write_text("\t".join(HEADER) + "\n10@N01\tx.jpg\tseven\n")
    with pytest.raises(FroqError, match=r"fold_3_data.txt:2: face_id must be an integer"):
        adience.read_adience(root)
    (root / "fold_3_data.txt").write_text("\t".join(HEADER) + "\n")
    (root / "fold_4_data.txt").unlink()
    with pytest.raises(FroqError, match="Adience fold file not found"):
        adience.read_adience(root)


def test_evaluation_end_to_end(root, tmp_path, monkeypatch):
    fr = tmp_path / "fr.yaml"
    fr.write_text(yaml.safe_dump({"model": {"arch": "test_ijbc_tiny", "weights": "random"},
                                  "preprocess": {"size": 24, "mean": 0.5, "std": 0.5, "channels": [0, 1, 2]}}))
    p = adience.read_adience(root)
    with open(tmp_path / "q.csv", "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["path", "quality"])
        for k, img in enumerate(p.images):
            w.writerow([img, k / 10])
    cfg = {"face_recognition_configs": [str(fr)],
           "benchmarks": [{"name": "adience", "type": "adience", "root": str(root)}],
           "qualities": {"q": str(tmp_path / "q.csv")}, "fmr": [0.1], "random_seeds": 2,
           "outdir": str(tmp_path / "out"), "device": "cpu", "plots": False}
    path = tmp_path / "eval.yaml"
    path.write_text(yaml.safe_dump(cfg))
    import test_ijbc  # noqa: F401  (registers the tiny model)

    res = eval_main(["-c", str(path)])["adience"]["test_ijbc_tiny"]
    assert res["q"]["n_genuine"] == 11 and res["q"]["n_impostor"] == 66 - 11
    # the Gram-block scoring of dense pair lists (used for the real 187 M pairs) gives the same scores
    from evaluation import comparison_scores, ijbc

    monkeypatch.setattr(comparison_scores, "GRAM_MIN_PAIRS", 0)
    monkeypatch.setattr(ijbc, "GRAM_ROWS", 5)
    path.write_text(yaml.safe_dump({**cfg, "outdir": str(tmp_path / "out2")}))
    eval_main(["-c", str(path)])

    def scores(out):
        with open(out / "scores" / "adience_test_ijbc_tiny.csv", newline="") as fh:
            return np.array([float(r["score"]) for r in csv.DictReader(fh)])

    np.testing.assert_allclose(scores(tmp_path / "out2"), scores(tmp_path / "out"), rtol=0, atol=1e-12)
