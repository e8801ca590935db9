"""Pair-protocol readers: LFW pairs.txt (header forms, extension detection, errors), XQLFW, CSV,
and quality CSV look-up (missing images are an error naming the CSV)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from evaluation.pair_protocols import parse_lfw_pairs, read_lfw_pairs, read_pairs_csv, read_xqlfw
from evaluation.quality_methods import (QualitySource, check_template, image_qualities, method_specs,
                                        resolve_sources)
from froq.core.errors import FroqError

PEOPLE = {"Ann_Lee": 3, "Bob_Ray": 2, "Cy_Do": 1}


def _images(root: Path, ext=".png"):
    for name, count in PEOPLE.items():
        (root / name).mkdir(parents=True, exist_ok=True)
        for i in range(1, count + 1):
            Image.new("RGB", (8, 8), (i * 40, 0, 0)).save(root / name / f"{name}_{i:04d}{ext}")


PAIRS_2x1 = "2\t1\nAnn_Lee\t1\t2\nAnn_Lee\t1\tBob_Ray\t1\nBob_Ray 1 2\nCy_Do\t1\tAnn_Lee\t3\n"


def test_lfw_pairs_with_fold_header_and_png_extension(tmp_path):
    _images(tmp_path / "img", ".png")
    (tmp_path / "pairs.txt").write_text(PAIRS_2x1)
    p = read_lfw_pairs(tmp_path / "img", tmp_path / "pairs.txt", name="lfw")
    assert p.images == ["Ann_Lee/Ann_Lee_0001.png", "Ann_Lee/Ann_Lee_0002.png", "Bob_Ray/Bob_Ray_0001.png",
                        "Bob_Ray/Bob_Ray_0002.png", "Cy_Do/Cy_Do_0001.png", "Ann_Lee/Ann_Lee_0003.png"]
    assert p.pairs.tolist() == [[0, 1], [0, 2], [2, 3], [4, 5]]
    assert p.genuine.tolist() == [True, False, True, False]
    assert p.folds.tolist() == [0, 0, 1, 1]
    assert p.n_genuine == 2 and p.n_impostor == 2 and "4 pairs" in p.summary()


def test_lfw_pairs_bare_count_header_and_jpg(tmp_path):
    _images(tmp_path / "img", ".jpg")
    (tmp_path / "pairs.txt").write_text("1\nAnn_Lee 2 3\nCy_Do 1 Bob_Ray 2\n")
    p = read_lfw_pairs(tmp_path / "img", tmp_path / "pairs.txt")
    assert p.folds is None
    assert p.images[0] == "Ann_Lee/Ann_Lee_0002.jpg" and p.genuine.tolist() == [True, False]


@pytest.mark.parametrize("text, match", [
    ("2\t1\nAnn_Lee\t1\t2\n", "announces 4 pair lines, found 1"),
    ("1\nAnn_Lee 1 2 3 4 5\nCy_Do 1 Bob_Ray 2\n", r"pairs.txt:2: expected 'name i j'"),
    ("x y\nAnn_Lee 1 2\n", r"pairs.txt:1: expected a header"),
    ("1\nAnn_Lee one 2\nCy_Do 1 Bob_Ray 2\n", r"pairs.txt:2: image number 'one' is not an integer"),
    ("", "empty pairs file"),
])
def test_lfw_pairs_errors_name_file_and_line(tmp_path, text, match):
    _images(tmp_path / "img")
    (tmp_path / "pairs.txt").write_text(text)
    with pytest.raises(FroqError, match=match):
        read_lfw_pairs(tmp_path / "img", tmp_path / "pairs.txt")


def test_lfw_pairs_missing_image_is_an_error(tmp_path):
    _images(tmp_path / "img")
    (tmp_path / "pairs.txt").write_text("1\nAnn_Lee 1 7\nCy_Do 1 Bob_Ray 2\n")
    with pytest.raises(FroqError, match=r"1 of 4 image\(s\) not found.*Ann_Lee_0007.png"):
        read_lfw_pairs(tmp_path / "img", tmp_path / "pairs.txt")
    (tmp_path / "pairs.txt").write_text("1\nNobody 1 2\nCy_Do 1 Bob_Ray 2\n")
    with pytest.raises(FroqError, match="no image file Nobody/Nobody_0001"):
        read_lfw_pairs(tmp_path / "img", tmp_path / "pairs.txt")


def test_parse_lfw_pairs_returns_raw_tuples(tmp_path):
    (tmp_path / "p.txt").write_text(PAIRS_2x1)
    pairs, genuine, folds = parse_lfw_pairs(tmp_path / "p.txt")
    assert pairs[0] == ("Ann_Lee", 1, "Ann_Lee", 2) and pairs[3] == ("Cy_Do", 1, "Ann_Lee", 3)
    assert genuine == [True, False, True, False] and folds.tolist() == [0, 0, 1, 1]


def test_xqlfw_root_layout(tmp_path):
    _images(tmp_path / "xq" / "xqlfw_aligned_112", ".jpg")
    (tmp_path / "xq" / "xqlfw_pairs.txt").write_text(PAIRS_2x1)
    p = read_xqlfw(tmp_path / "xq", name="xqlfw")
    assert len(p.pairs) == 4 and p.image_root == tmp_path / "xq" / "xqlfw_aligned_112"
    with pytest.raises(FroqError, match="xqlfw"):
        read_xqlfw()


def test_pairs_csv(tmp_path):
    _images(tmp_path / "img")
    (tmp_path / "pairs.csv").write_text(
        "path1,path2,genuine,fold\n./Ann_Lee/Ann_Lee_0001.png,Ann_Lee/Ann_Lee_0002.png,1,0\n"
        "Ann_Lee/Ann_Lee_0001.png,Cy_Do/Cy_Do_0001.png,false,3\n")
    p = read_pairs_csv(tmp_path / "img", tmp_path / "pairs.csv")
    assert p.images == ["Ann_Lee/Ann_Lee_0001.png", "Ann_Lee/Ann_Lee_0002.png", "Cy_Do/Cy_Do_0001.png"]
    assert p.genuine.tolist() == [True, False] and p.folds.tolist() == [0, 3]
    (tmp_path / "bad.csv").write_text("path1,path2,genuine\nAnn_Lee/Ann_Lee_0001.png,Cy_Do/Cy_Do_0001.png,maybe\n")
    with pytest.raises(FroqError, match=r"bad.csv:2: genuine must be"):
        read_pairs_csv(tmp_path / "img", tmp_path / "bad.csv")
    (tmp_path / "nocol.csv").write_text("a,b\n1,2\n")
    with pytest.raises(FroqError, match="missing column"):
        read_pairs_csv(tmp_path / "img", tmp_path / "nocol.csv")


# ---- quality methods


def test_templates_and_benchmark_overrides():
    specs = method_specs({"froq": "q/{benchmark}/{model}.csv", "aux": {"path": "a/{model}.csv", "column": "flip"}},
                         {"froq": "special/{model}.csv"}, "top", "bench")
    assert list(specs) == ["froq", "aux"]
    src = {s.method: s for s in resolve_sources(specs, "lfw", "dlib_resnet")}
    assert src["froq"].path == Path("special/dlib_resnet.csv")
    assert src["aux"].path == Path("a/dlib_resnet.csv") and src["aux"].column == "flip"
    with pytest.raises(FroqError, match=r"unknown placeholder\(s\) \{dataset\}"):
        check_template("q/{dataset}.csv", "cfg: qualities.froq")
    with pytest.raises(FroqError, match="built-in reference"):
        method_specs({"random": "x.csv"}, None, "top", "bench")
    with pytest.raises(FroqError, match="unknown key"):
        method_specs({"m": {"path": "x.csv", "colum": "q"}}, None, "top", "bench")


def test_quality_lookup_missing_images_error_or_min(tmp_path):
    _images(tmp_path / "img")
    (tmp_path / "pairs.txt").write_text(PAIRS_2x1)
    p = read_lfw_pairs(tmp_path / "img", tmp_path / "pairs.txt")
    abs_path = (tmp_path / "img" / "Cy_Do" / "Cy_Do_0001.png").resolve()
    csv = tmp_path / "q.csv"
    csv.write_text("path,quality\nAnn_Lee/Ann_Lee_0001.png,0.5\n./Ann_Lee/Ann_Lee_0002.png,0.7\n"
                   f"Bob_Ray/Bob_Ray_0001.png,0.1\nBob_Ray/Bob_Ray_0002.png,0.9\n{abs_path},0.3\nextra.png,5\n")
    src = QualitySource("froq", csv)
    with pytest.raises(FroqError) as exc:
        image_qualities(src, p)
    msg = str(exc.value)
    assert str(csv) in msg and "1 of 6 image(s)" in msg and "Ann_Lee/Ann_Lee_0003.png" in msg
    q = image_qualities(src, p, missing="min")
    assert q.tolist() == [0.5, 0.7, 0.1, 0.9, 0.3, 0.1]
    q = image_qualities(QualitySource("froq", csv, higher_is_better=False), p, missing="min")
    assert q.tolist() == [-0.5, -0.7, -0.1, -0.9, -0.3, -5.0]
    with pytest.raises(FroqError, match="not found"):
        image_qualities(QualitySource("froq", tmp_path / "absent.csv"), p)
