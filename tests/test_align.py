"""Face alignment (preparation/align.py): geometry on synthetic data, templates on a few
real LFW photos (skipped without ../shared), and the reporting of no-face / unreadable images."""

from __future__ import annotations

import csv
import math
import os

import numpy as np
import pytest
from PIL import Image

from preparation import align
from preparation.align import (ARCFACE_112, FaceAligner, align_folder, arcface_points,
                               choose_face, fallback_box, umeyama_similarity, warp_similarity)
from froq.core.cli import run_main
from froq.core.errors import FroqError

# a few real LFW photos (one face each)
LFW_SAMPLES = ["Aaron_Pena/Aaron_Pena_0001.jpg", "Abdullah/Abdullah_0002.jpg",
               "Abdel_Madi_Shabneh/Abdel_Madi_Shabneh_0001.jpg", "Abdul_Rahman/Abdul_Rahman_0001.jpg"]


def read_rows(folder):
    with open(folder / "landmarks.csv", newline="") as fh:
        return {r["path"]: r for r in csv.DictReader(fh)}


@pytest.fixture
def lfw_sample(lfw_root):
    """(images folder, relative paths) of the sample photos."""
    images = lfw_root / "images"
    for rel in LFW_SAMPLES:
        assert (images / rel).is_file(), rel
    return images, LFW_SAMPLES


@pytest.fixture
def blank_folder(tmp_path):
    """A folder with a face-less image, an unreadable '.jpg' and a nested face-less PNG."""
    src = tmp_path / "in"
    (src / "sub").mkdir(parents=True)
    rng = np.random.default_rng(0)
    Image.fromarray(np.full((120, 160, 3), 128, np.uint8)).save(src / "grey.jpg")
    Image.fromarray(rng.integers(0, 255, (90, 90, 3), dtype=np.uint8)).save(src / "sub" / "noise.png")
    (src / "broken.jpg").write_bytes(b"this is not a JPEG")
    return src


# -- geometry ------------------------------------------------------------------------------------

def test_umeyama_recovers_a_known_similarity():
    rng = np.random.default_rng(1)
    src = rng.uniform(0, 200, (7, 2))
    angle, scale, shift = math.radians(23.0), 0.61, np.array([12.5, -40.0])
    rot = np.array([[math.cos(angle), -math.sin(angle)], [math.sin(angle), math.cos(angle)]])
    dst = scale * src @ rot.T + shift
    m = umeyama_similarity(src, dst)
    np.testing.assert_allclose(m[:, :2], scale * rot, atol=1e-10)
    np.testing.assert_allclose(m[:, 2], shift, atol=1e-8)
    # a mirrored target is not reachable: the fit stays a proper rotation (det > 0)
    m2 = umeyama_similarity(src, src * np.array([-1.0, 1.0]))
    assert np.linalg.det(m2[:, :2]) > 0


def test_warp_identity_is_exact_and_points_land_where_the_matrix_says():
    rng = np.random.default_rng(2)
    img = rng.integers(0, 255, (40, 50, 3), dtype=np.uint8)
    same = warp_similarity(img, np.array([[1.0, 0, 0], [0, 1.0, 0]]), (50, 40))
    np.testing.assert_array_equal(same, img)
    # one bright pixel at source (x=30, y=20); after the warp its centroid is at M·(30, 20)
    dot = np.zeros((60, 60, 3), np.uint8)
    dot[20, 30] = 255
    angle = math.radians(30)
    m = np.array([[1.5 * math.cos(angle), -1.5 * math.sin(angle), 10.0],
                  [1.5 * math.sin(angle), 1.5 * math.cos(angle), 4.0]])
    out = warp_similarity(dot, m, (80, 80))[..., 0].astype(float)
    ys, xs = np.nonzero(out)
    centroid = np.array([(xs * out[ys, xs]).sum(), (ys * out[ys, xs]).sum()]) / out[ys, xs].sum()
    np.testing.assert_allclose(centroid, m[:, :2] @ [30, 20] + m[:, 2], atol=0.15)
    assert out[0, 0] == 0  # outside the source: black


def test_choose_face_largest_and_centre():
    boxes = [(0, 0, 100, 100), (110, 110, 150, 150), (200, 0, 240, 60)]
    assert choose_face(boxes, 260, 260, "largest") == 0
    assert choose_face(boxes, 260, 260, "center") == 1
    with pytest.raises(ValueError):
        choose_face([], 10, 10)
    assert fallback_box(250, 250) == (78, 90, 180, 190)


def test_model_dir_holds_dlib_models():
    names = {p.name for p in align.model_dir().iterdir()}
    assert {"shape_predictor_5_face_landmarks.dat", "shape_predictor_68_face_landmarks.dat"} <= names


# -- real faces ----------------------------------------------------------------------------------

def test_dlib150_is_exactly_dlib_get_face_chip(lfw_sample, tmp_path):
    import dlib

    images, rels = lfw_sample
    summary = align_folder(images, tmp_path / "out", "dlib150", "largest", paths=rels, progress=False)
    assert summary["ok"] == len(rels) and summary["no_face"] == summary["unreadable"] == 0
    detector = dlib.get_frontal_face_detector()
    sp5 = dlib.shape_predictor(str(align.model_dir() / "shape_predictor_5_face_landmarks.dat"))
    rows = read_rows(tmp_path / "out")
    for rel in rels:
        img = np.asarray(Image.open(images / rel).convert("RGB"))
        rects = detector(img, 0)
        rect = max(rects, key=lambda r: r.area())
        shape = sp5(img, rect)
        expected = dlib.get_face_chip(img, shape, size=150, padding=0.25)
        out = np.asarray(Image.open(tmp_path / "out" / rel.replace(".jpg", ".png")))
        assert out.shape == (150, 150, 3)
        np.testing.assert_array_equal(out, expected)
        row = rows[rel]
        assert row["status"] == "ok" and int(row["n_faces"]) == len(rects)
        assert float(row["p1_x"]) == shape.part(0).x and float(row["p5_y"]) == shape.part(4).y


def test_arcface112_puts_landmarks_on_the_template(lfw_sample):
    """Landmarks found again on the 112×112 crop (upscaled 2× for the detector) sit where the
    similarity transform sends the source landmarks, and near the insightface template."""
    images, rels = lfw_sample
    aligner = FaceAligner("arcface112", "center")
    errors = []
    for rel in rels:
        res = aligner.align_file(images / rel)
        assert res.status == "ok" and res.chip.shape == (112, 112, 3) and res.chip.dtype == np.uint8
        m = umeyama_similarity(res.points, ARCFACE_112)
        mapped = res.points @ m[:, :2].T + m[:, 2]
        big = np.asarray(Image.fromarray(res.chip).resize((224, 224), Image.BICUBIC))
        rects = aligner.detector(big, 1)
        assert len(rects) >= 1, rel
        found = (arcface_points(aligner.predictor(big, rects[0])) - 0.5) / 2.0
        eye_error = np.linalg.norm(found[:2] - mapped[:2], axis=1)
        assert eye_error.max() < 1.5, (rel, eye_error)
        errors.extend(np.linalg.norm(found - mapped, axis=1))
        assert np.linalg.norm(found - ARCFACE_112, axis=1).mean() < 6.0, rel
    assert np.median(errors) < 1.0


def test_parallel_run_matches_single_process_and_resumes(lfw_sample, tmp_path):
    images, rels = lfw_sample
    one = align_folder(images, tmp_path / "w1", "dlib150", paths=rels, workers=1, progress=False)
    two = align_folder(images, tmp_path / "w2", "dlib150", paths=rels, workers=2, progress=False)
    assert one["ok"] == two["ok"] == len(rels)
    assert (tmp_path / "w1" / "landmarks.csv").read_text() == (tmp_path / "w2" / "landmarks.csv").read_text()
    for rel in rels:
        name = rel.replace(".jpg", ".png")
        assert (tmp_path / "w1" / name).read_bytes() == (tmp_path / "w2" / name).read_bytes()
    before = (tmp_path / "w1" / rels[0].replace(".jpg", ".png")).stat().st_mtime_ns
    again = align_folder(images, tmp_path / "w1", "dlib150", paths=rels, workers=1, progress=False)
    assert again["resumed"] == len(rels) and again["processed"] == 0 and again["ok"] == len(rels)
    assert (tmp_path / "w1" / rels[0].replace(".jpg", ".png")).stat().st_mtime_ns == before
    with pytest.raises(FroqError, match="other settings"):
        align_folder(images, tmp_path / "w1", "arcface112", paths=rels, progress=False)
    other = tmp_path / "other"
    other.mkdir()
    Image.fromarray(np.zeros((50, 50, 3), np.uint8)).save(other / "x.png")
    with pytest.raises(FroqError, match="another input folder"):
        align_folder(other, tmp_path / "w1", "dlib150", progress=False)


# -- problems are reported, not crashed on ------------------------------------------------------

def test_no_face_and_unreadable_are_reported(blank_folder, tmp_path, caplog):
    out = tmp_path / "out"
    summary = align_folder(blank_folder, out, "dlib150", progress=False)
    assert summary["images"] == 3 and summary["ok"] == 0
    assert summary["no_face_files"] == ["grey.jpg", "sub/noise.png"]
    assert summary["unreadable_files"] == ["broken.jpg"]
    rows = read_rows(out)
    assert {k: r["status"] for k, r in rows.items()} == {
        "broken.jpg": "unreadable", "grey.jpg": "no_face", "sub/noise.png": "no_face"}
    assert rows["broken.jpg"]["reason"] and rows["grey.jpg"]["output"] == ""
    assert not list(out.rglob("*.png"))
    assert "no face found in grey.jpg" in caplog.text and "unreadable image broken.jpg" in caplog.text


def test_center_box_fallback_writes_crops(blank_folder, tmp_path):
    out = tmp_path / "out"
    summary = align_folder(blank_folder, out, "arcface112", fallback="center-box", progress=False)
    assert summary["fallback"] == 2 and summary["unreadable"] == 1
    rows = read_rows(out)
    assert rows["grey.jpg"]["status"] == "fallback" and rows["grey.jpg"]["face_index"] == ""
    assert [int(rows["grey.jpg"][k]) for k in ("left", "top", "right", "bottom")] == list(fallback_box(160, 120))
    for name in ("grey.png", "sub/noise.png"):
        assert Image.open(out / name).size == (112, 112)


def test_cli_summary_and_clean_errors(blank_folder, tmp_path, capsys):
    code = run_main(align.main, ["--input", str(blank_folder), "--output", str(tmp_path / "o"),
                                 "--template", "dlib150", "--workers", "1", "--ext", "jpg"])
    assert code == 0
    assert "3 images: 0 aligned" in capsys.readouterr().out
    code = run_main(align.main, ["--input", str(tmp_path / "missing"), "--output", str(tmp_path / "o2"),
                                 "--template", "dlib150"])
    err = capsys.readouterr().err
    assert code == 2 and err.startswith("error: input folder not found") and "Traceback" not in err
    code = run_main(align.main, ["--input", str(blank_folder), "--output", str(blank_folder / "x"),
                                 "--template", "dlib150"])
    assert code == 2 and "inside --input" in capsys.readouterr().err


# -- issue 14: face choice, reuse of detections, templates from the FR config -------------------

def test_central_choice_weighs_distance_by_face_size():
    """area / (1 + (d / r)^2), r = half the box side: the centred face of a portrait beats a larger
    face at the edge; a large face just off the centre beats a tiny one right at it."""
    centred, edge = (77, 77, 181, 181), (-32, -18, 107, 120)     # Colin_Farrell_0003: 104 px vs 139 px
    assert choose_face([edge, centred], 250, 250, "largest") == 0
    assert choose_face([edge, centred], 250, 250, "central") == 1
    tiny, big = (115, 115, 135, 135), (70, 60, 170, 160)          # 20 px at the centre, 100 px 10 px off
    assert choose_face([tiny, big], 250, 250, "center") == 0
    assert choose_face([tiny, big], 250, 250, "central") == 1
    assert align.DEFAULT_SELECT == "central" and choose_face([centred], 250, 250) == 0


def test_fallback_change_reuses_detections_and_never_detects_again(blank_folder, tmp_path, monkeypatch):
    out = tmp_path / "out"
    first = align_folder(blank_folder, out, "arcface112", progress=False)
    assert first["no_face"] == 2 and first["detected"] == 3
    rows = read_rows(out)
    assert rows["grey.jpg"]["boxes"] == "" and rows["grey.jpg"]["width"] == "160" and rows["grey.jpg"]["file"]

    def no_detection(self, img):
        raise AssertionError("the detector ran again")

    monkeypatch.setattr(FaceAligner, "detect", no_detection)
    second = align_folder(blank_folder, out, "arcface112", fallback="center-box", progress=False)
    assert second["fallback"] == 2 and second["recropped"] == 2 and second["detected"] == 1  # unreadable: tried again
    assert (out / "grey.png").is_file() and read_rows(out)["grey.jpg"]["status"] == "fallback"
    third = align_folder(blank_folder, out, "arcface112", select="largest", fallback="none", progress=False)
    assert third["no_face"] == 2 and third["recropped"] == 2
    assert not (out / "grey.png").exists() and not (out / "sub" / "noise.png").exists()  # stale crops gone
    assert read_rows(out)["grey.jpg"]["output"] == ""
    with pytest.raises(FroqError, match="other settings"):  # another template: still refused
        align_folder(blank_folder, out, "dlib150", progress=False)


def test_select_change_crops_again_only_the_changed_faces(lfw_root, tmp_path, monkeypatch):
    """Charles_Schumer_0002 holds two faces: largest = the one at the edge, central = the centred
    one. Switching --select re-crops that photo from its stored boxes, and no other."""
    images = lfw_root / "images"
    rels = ["Aaron_Pena/Aaron_Pena_0001.jpg", "Charles_Schumer/Charles_Schumer_0002.jpg"]
    out = tmp_path / "out"
    align_folder(images, out, "dlib150", select="largest", paths=rels, progress=False)
    before = {r: (out / r.replace(".jpg", ".png")).stat().st_mtime_ns for r in rels}
    rows = read_rows(out)
    assert rows[rels[1]]["n_faces"] == "2" and rows[rels[1]]["face_index"] == "1"
    monkeypatch.setattr(FaceAligner, "detect", lambda self, img: pytest.fail("detected again"))
    summary = align_folder(images, out, "dlib150", select="central", paths=rels, progress=False)
    assert summary["recropped"] == 1 and summary["detected"] == 0 and summary["resumed"] == 1
    rows = read_rows(out)
    assert rows[rels[1]]["face_index"] == "0" and rows[rels[0]]["face_index"] == "0"
    assert (out / rels[0].replace(".jpg", ".png")).stat().st_mtime_ns == before[rels[0]]
    # the re-crop is the crop a clean run with --select central makes
    monkeypatch.undo()
    clean = tmp_path / "clean"
    align_folder(images, clean, "dlib150", select="central", paths=rels, progress=False)
    name = rels[1].replace(".jpg", ".png")
    assert (out / name).read_bytes() == (clean / name).read_bytes()


def test_template_from_the_fr_config_makes_96_wide_chips(lfw_sample, tmp_path):
    images, rels = lfw_sample
    photos = tmp_path / "photos"
    for rel in rels:
        (photos / rel).parent.mkdir(parents=True, exist_ok=True)
        os.symlink(images / rel, photos / rel)
    cfg = tmp_path / "fr96.yaml"
    cfg.write_text("model: {arch: dlib_resnet}\npreprocess: {size: [112, 96]}\nalignment: sphereface96x112\n")
    code = run_main(align.main, ["--input", str(photos), "--output", str(tmp_path / "o"), "--fr", str(cfg),
                                 "--workers", "1"])
    assert code == 0
    chips = sorted((tmp_path / "o").rglob("*.png"))
    assert len(chips) == len(rels) and all(Image.open(p).size == (96, 112) for p in chips)
    check = align.check_aligned(tmp_path / "o", [p.relative_to(tmp_path / "o").as_posix() for p in chips[:4]],
                                "sphereface96x112", sample=4)
    assert check.aligned and check.error < align.ALIGNED_TOLERANCE, check.describe()
    assert not align.check_aligned(tmp_path / "o", [p.relative_to(tmp_path / "o").as_posix() for p in chips[:4]],
                                   "arcface112").aligned  # wrong size for that template
    no_template = tmp_path / "fr80.yaml"
    no_template.write_text("model: {arch: dlib_resnet}\npreprocess: {size: 80}\n")
    with pytest.raises(FroqError, match="no alignment template"):
        align.template_of_fr_config(no_template)
