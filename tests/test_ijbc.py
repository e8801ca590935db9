"""IJB-C 1:1 in the layout of insightface's IJB release (loose_crop/ + meta/ files with their real
column orders), on a tiny fixture: reading and bad files, alignment from the given landmarks,
template pooling checked by hand, and the evaluation end to end (resumable, consistent)."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest
import torch
import yaml

from evaluation import comparison_scores, edc, ijbc
from evaluation.main import main as eval_main
from face_recognition_model.loading import load_fr_model
from face_recognition_model.registry import register_model
from face_recognition_model.templates import AlignmentTemplate
from froq.core.errors import FroqError
from froq.core.images import load_rgb, save_rgb
from preparation.align import ARCFACE_112

# template id -> [(image name, media id)]; image 2.jpg is in two templates (rows, not files)
TEMPLATES = {101: [("1.jpg", 7), ("2.jpg", 7), ("3.jpg", 8)],
             102: [("4.jpg", 9)],
             103: [("5.jpg", 10), ("6.jpg", 11), ("2.jpg", 12)]}
PAIRS = [(101, 102, 1), (101, 103, 0), (102, 103, 0), (103, 101, 1)]


class _TinyNet(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 4, 5, stride=4)
        self.pool = torch.nn.AdaptiveAvgPool2d(2)
        self.fc = torch.nn.Linear(16, 8)

    def forward(self, x):
        return self.fc(torch.flatten(self.pool(torch.relu(self.conv(x))), 1))


@register_model("test_ijbc_tiny")
def _build(weights=None, **kwargs):
    with torch.random.fork_rng():
        torch.manual_seed(0)
        return _TinyNet().eval()


def _landmarks(k: int) -> np.ndarray:
    """Five points of image k: the ArcFace template scaled, shifted and (slightly) rotated."""
    a = 0.1 * (k - 3)
    rot = np.array([[np.cos(a), -np.sin(a)], [np.sin(a), np.cos(a)]])
    return (ARCFACE_112 - 56) @ rot.T * (0.8 + 0.1 * k) + 70 + 3 * k


def write_release(root, n_images=6):
    """The release layout with the real column orders (space separated, no header)."""
    rng = np.random.default_rng(0)
    (root / "loose_crop").mkdir(parents=True)
    (root / "meta").mkdir()
    lines = []
    for k in range(1, n_images + 1):
        save_rgb(rng.integers(0, 256, (150, 140, 3), dtype=np.uint8), root / "loose_crop" / f"{k}.jpg")
        pts = " ".join(f"{v:.3f}" for v in _landmarks(k).ravel())
        lines.append(f"{k}.jpg {pts} {0.5 + 0.05 * k:.3f}")
    (root / "meta" / "ijbc_name_5pts_score.txt").write_text("\n".join(lines) + "\n")
    rows = [f"{name} {tid} {mid}" for tid, items in TEMPLATES.items() for name, mid in items]
    (root / "meta" / "ijbc_face_tid_mid.txt").write_text("\n".join(rows) + "\n")
    (root / "meta" / "ijbc_template_pair_label.txt").write_text(
        "\n".join(f"{a} {b} {l}" for a, b, l in PAIRS) + "\n")
    return root


@pytest.fixture()
def release(tmp_path):
    return write_release(tmp_path / "IJBC")


def test_reads_the_release_layout(release, tmp_path):
    p = ijbc.read_ijbc(release, tmp_path / "aligned")
    assert p.images == ["1.png", "2.png", "3.png", "4.png", "5.png", "6.png"]
    assert p.template_ids.tolist() == [101, 102, 103]
    assert p.pairs.tolist() == [[0, 1], [0, 2], [1, 2], [2, 0]]
    assert p.genuine.tolist() == [True, False, False, True]
    assert len(p.row_image) == 7 and p.row_image.tolist()[-1] == 1          # 2.jpg again, in 103
    np.testing.assert_allclose(p.landmarks[3], _landmarks(4), atol=1e-3)
    assert p.detector_scores[0] == pytest.approx(0.55)
    assert "4 template pairs (2 genuine, 2 impostor) over 3 templates of 6 images" in p.summary()


@pytest.mark.parametrize("edit, message", [
    (lambda r: _rewrite(r / "meta/ijbc_name_5pts_score.txt", 2, "2.jpg 1 2 3"),
     "ijbc_name_5pts_score.txt:2: expected 'name x1 y1 ... x5 y5 score' (12 fields), found 4"),
    (lambda r: _rewrite(r / "meta/ijbc_template_pair_label.txt", 3, "102 103 2"),
     "ijbc_template_pair_label.txt:3: label must be 1 (genuine) or 0 (impostor), found 2"),
    (lambda r: _rewrite(r / "meta/ijbc_template_pair_label.txt", 2, "101 103 0 1"),
     "ijbc_template_pair_label.txt:2: expected 'template1 template2 label', found 4 fields"),
    (lambda r: _rewrite(r / "meta/ijbc_template_pair_label.txt", 2, "101 x 0"),
     "ijbc_template_pair_label.txt:2: template ids and label must be integers"),
    (lambda r: _rewrite(r / "meta/ijbc_template_pair_label.txt", 1, "101 999 1"),
     "1 pair(s) name templates with no image"),
    (lambda r: _rewrite(r / "meta/ijbc_face_tid_mid.txt", 4, "4.jpg 102 x"),
     "ijbc_face_tid_mid.txt:4: template and media ids must be integers"),
    (lambda r: _rewrite(r / "meta/ijbc_face_tid_mid.txt", 4, "9.jpg 102 9"),
     "1 image(s) have no landmarks"),
    (lambda r: (r / "loose_crop/5.jpg").unlink(), "1 of 6 image(s) not found (e.g. 5.jpg)"),
    (lambda r: (r / "meta/ijbc_face_tid_mid.txt").unlink(), "IJB-C file not found"),
])
def test_bad_files_give_one_line(release, tmp_path, edit, message):
    edit(release)
    with pytest.raises(FroqError) as err:
        ijbc.read_ijbc(release, tmp_path / "aligned")
    assert message in str(err.value) and "\n" not in str(err.value)


def _rewrite(path, line_no, text):
    lines = path.read_text().splitlines()
    lines[line_no - 1] = text
    path.write_text("\n".join(lines) + "\n")


def test_template_pooling_by_hand(release, tmp_path):
    p = ijbc.read_ijbc(release, tmp_path / "aligned")
    f = np.array([[1, 0], [0, 1], [2, 1], [3, 4], [1, 1], [-1, 0]], dtype=np.float32)  # images 1..6
    t = ijbc.template_features(p, f)
    unit = lambda v: np.asarray(v, float) / np.linalg.norm(v)  # noqa: E731
    # 101: media 7 = mean(f1, f2), media 8 = f3; summed; 102: f4; 103: f5 + f6 + f2 (three media)
    np.testing.assert_allclose(t[0], unit([0.5 + 2, 0.5 + 1]))  # a sum of media would point elsewhere
    np.testing.assert_allclose(t[1], unit([3, 4]))
    np.testing.assert_allclose(t[2], unit([1 - 1 + 0, 1 + 0 + 1]))
    s = ijbc.template_pair_scores(t, p.pairs)
    assert s[0] == pytest.approx(unit([2.5, 1.5]) @ unit([3, 4]))
    q = np.array([0.9, 0.2, 0.5, 0.7, 0.4, 0.8])
    assert ijbc.template_qualities(p, q, "min").tolist() == [0.2, 0.7, 0.2]
    assert ijbc.template_qualities(p, q, "max").tolist() == [0.9, 0.7, 0.8]
    np.testing.assert_allclose(ijbc.template_qualities(p, q, "mean"), [1.6 / 3, 0.7, 1.4 / 3])
    assert ijbc.template_qualities(p, q, "median").tolist() == [0.5, 0.7, 0.4]
    # pair quality = min of the two templates (default pooling min)
    assert comparison_scores.protocol_pair_quality(p, q, "min").tolist() == [0.2, 0.2, 0.2, 0.2]
    np.testing.assert_allclose(comparison_scores.protocol_pair_quality(p, q, "mean"), [0.45, 0.2, 0.45, 0.2])  # both templates


def test_image_feature_modes():
    e = np.array([[3, 4, 0, 2]], dtype=np.float32)           # [original | mirrored], D = 2
    np.testing.assert_allclose(ijbc.image_features(e, "add", False, None), [[3, 6]])
    got = ijbc.image_features(e, "add", True, np.array([2.0]))   # unit(3, 6) * detector score 2
    np.testing.assert_allclose(got, [[2 * 3 / 45 ** .5, 2 * 6 / 45 ** .5]], rtol=1e-6)
    np.testing.assert_allclose(ijbc.image_features(e, "concat", True, None), [[0.6, 0.8, 0, 1]])
    np.testing.assert_allclose(ijbc.image_features(e[:, :2], "none", False, np.array([0.5])), [[1.5, 2]])


def test_alignment_maps_the_landmarks_onto_the_template(release, tmp_path):
    p = ijbc.read_ijbc(release, tmp_path / "aligned")
    tmpl = AlignmentTemplate("arcface112", (112, 112), tuple(map(tuple, ARCFACE_112)))
    # an image whose landmarks already sit on the template is copied (identity transform)
    img = np.random.default_rng(3).integers(0, 256, (112, 112, 3), dtype=np.uint8)
    save_rgb(img, release / "loose_crop" / "1.png")
    p.source_names[0] = "1.png"
    p.landmarks[0] = ARCFACE_112
    out = ijbc.align_chips(p, tmpl)
    diff = np.abs(np.asarray(load_rgb(out / "1.png")).astype(int) - img)
    assert diff.max() <= 1                                      # PIL's bilinear rounding only
    assert sorted(x.name for x in out.glob("*.png")) == p.images
    stamp = (out / "3.png").stat().st_mtime_ns
    ijbc.align_chips(p, tmpl)                                   # resumed: nothing rewritten
    assert (out / "3.png").stat().st_mtime_ns == stamp
    other = AlignmentTemplate("arcface112", (112, 112), tuple(map(tuple, ARCFACE_112 + 1)))
    with pytest.raises(FroqError, match="aligned with other settings"):
        ijbc.align_chips(p, other)


def _config(release, tmp_path, **bench):
    fr = tmp_path / "fr.yaml"
    fr.write_text(yaml.safe_dump({"model": {"arch": "test_ijbc_tiny", "weights": "random"},
                                  "preprocess": {"size": 112, "mean": 0.5, "std": 0.5, "channels": [0, 1, 2]}}))
    qdir = tmp_path / "q"
    qdir.mkdir(exist_ok=True)
    with open(qdir / "froq.csv", "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["path", "quality"])
        for k, q in enumerate([0.9, 0.2, 0.5, 0.7, 0.4, 0.8], start=1):
            w.writerow([f"{k}.png", q])
    cfg = {"face_recognition_configs": [str(fr)],
           "benchmarks": [{"name": "ijbc", "type": "ijbc", "root": str(release),
                           "aligned": str(tmp_path / "aligned"), **bench}],
           "qualities": {"froq": str(qdir / "froq.csv")}, "fmr": [0.5], "random_seeds": 2,
           "outdir": str(tmp_path / "out"), "device": "cpu", "batch_size": 4, "plots": False}
    path = tmp_path / "eval.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path, fr


def test_evaluation_end_to_end_matches_hand_pooling(release, tmp_path, monkeypatch):
    monkeypatch.setattr(ijbc, "EMBED_CHUNK", 4)                 # two chunks: the store is chunked
    cfg, fr_cfg = _config(release, tmp_path)
    results = eval_main(["-c", str(cfg)])
    m = results["ijbc"]["test_ijbc_tiny"]
    assert m["froq"]["n_genuine"] == 2 and m["froq"]["n_impostor"] == 2
    with open(tmp_path / "out" / "scores" / "ijbc_test_ijbc_tiny.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert [(r["template1"], r["template2"], r["genuine"]) for r in rows] == \
        [("101", "102", "1"), ("101", "103", "0"), ("102", "103", "0"), ("103", "101", "1")]
    # by hand: embed the chips (+ mirrored), add, weight by detector score, mean per media, sum, cosine
    fr = load_fr_model(str(fr_cfg), "cpu")
    chips = tmp_path / "aligned" / "arcface112"
    x = torch.stack([torch.from_numpy(np.array(load_rgb(chips / f"{k}.png"))).permute(2, 0, 1)
                     for k in range(1, 7)]).float() / 255
    x = (x - 0.5) / 0.5
    f = (fr.embed(x) + fr.embed(torch.flip(x, dims=[3]))).numpy().astype(np.float64)
    f *= np.array([0.55, 0.6, 0.65, 0.7, 0.75, 0.8])[:, None]
    unit = lambda v: v / np.linalg.norm(v)  # noqa: E731
    t101 = unit((f[0] + f[1]) / 2 + f[2])
    t102 = unit(f[3])
    t103 = unit(f[4] + f[5] + f[1])
    want = [t101 @ t102, t101 @ t103, t102 @ t103, t103 @ t101]
    np.testing.assert_allclose([float(r["score"]) for r in rows], want, rtol=1e-5, atol=1e-6)
    # the EDC of froq over template pairs, recomputed with the metric functions
    s = np.array(want)
    g = np.array([True, False, False, True])
    th = edc.fmr_threshold(s[~g], 0.5)
    res = edc.evaluate_edc(s[g], th.threshold, np.array([0.2, 0.2]), 0.3)
    assert m["froq"]["pauc"] == pytest.approx(res.pauc) and m["froq"]["threshold"] == pytest.approx(th.threshold)

    # a rerun reuses chips and embedding chunks (nothing rewritten) and gives the same results
    store = next((tmp_path / "out" / "cache").rglob("chunk_00000.npy"))
    stamp = store.stat().st_mtime_ns, (chips / "1.png").stat().st_mtime_ns
    again = eval_main(["-c", str(cfg)])
    assert (store.stat().st_mtime_ns, (chips / "1.png").stat().st_mtime_ns) == stamp
    assert json.dumps(again, sort_keys=True) == json.dumps(results, sort_keys=True)


def test_crfiqa_pooling_options_by_hand(release, tmp_path):
    """CR-FIQA's variant: unit features of the chip and its mirror, concatenated, no detector
    weight; template quality = mean of its images' qualities."""
    cfg, fr_cfg = _config(release, tmp_path, flip="concat", normalise_images=True, detector_weight=False,
                          template_quality="mean")
    m = eval_main(["-c", str(cfg)])["ijbc"]["test_ijbc_tiny"]
    with open(tmp_path / "out" / "scores" / "ijbc_test_ijbc_tiny.csv", newline="") as fh:
        got = [float(r["score"]) for r in csv.DictReader(fh)]
    fr = load_fr_model(str(fr_cfg), "cpu")
    x = torch.stack([torch.from_numpy(np.array(load_rgb(tmp_path / "aligned" / "arcface112" / f"{k}.png")))
                     .permute(2, 0, 1) for k in range(1, 7)]).float() / 255
    x = (x - 0.5) / 0.5
    unit = lambda v: v / np.linalg.norm(v, axis=-1, keepdims=True)  # noqa: E731
    f = np.concatenate([unit(fr.embed(x).numpy().astype(np.float64)),
                        unit(fr.embed(torch.flip(x, dims=[3])).numpy().astype(np.float64))], axis=1)
    t101, t102, t103 = unit((f[0] + f[1]) / 2 + f[2]), unit(f[3]), unit(f[4] + f[5] + f[1])
    np.testing.assert_allclose(got, [t101 @ t102, t101 @ t103, t102 @ t103, t103 @ t101], rtol=1e-5, atol=1e-6)
    # mean template qualities: 101 = (0.9+0.2+0.5)/3, 103 = (0.4+0.8+0.2)/3 -> both mated pairs 1.4/3
    s, g = np.array(got), np.array([True, False, False, True])
    th = edc.fmr_threshold(s[~g], 0.5)
    res = edc.evaluate_edc(s[g], th.threshold, np.array([1.4 / 3, 1.4 / 3]), 0.3)
    assert m["froq"]["pauc"] == pytest.approx(res.pauc)
    cfg_bad, _ = _config(release, tmp_path, flip="sideways")
    with pytest.raises(FroqError, match="flip must be one of add, concat, none"):
        eval_main(["-c", str(cfg_bad)])


def test_gram_and_gather_scores_agree(monkeypatch):
    rng = np.random.default_rng(1)
    f = rng.standard_normal((7, 5))
    f /= np.linalg.norm(f, axis=1, keepdims=True)
    pairs = rng.integers(0, 7, (40, 2))
    want = np.einsum("ij,ij->i", f[pairs[:, 0]], f[pairs[:, 1]])
    monkeypatch.setattr(ijbc, "GRAM_ROWS", 3)
    np.testing.assert_allclose(ijbc.template_pair_scores(f, pairs), want, rtol=0, atol=1e-14)  # Gram
    monkeypatch.setattr(ijbc, "GRAM_RATIO", 0)
    monkeypatch.setattr(ijbc, "SCORE_BLOCK", 6)
    np.testing.assert_allclose(ijbc.template_pair_scores(f, pairs), want, rtol=0, atol=1e-14)  # gather


def test_pair_file_fields_are_counted_across_blocks():
    text = b"1 2 1\n\n3\t4  0\r\n5 6 1 7\n8 9"
    assert ijbc._fields_per_line(text, block=5).tolist() == [3, 0, 3, 4, 2]
    assert ijbc._fields_per_line(text).tolist() == [3, 0, 3, 4, 2]
