"""One image reader (issue 28): every image read from disk goes through froq/core/images.py, so a
pipe, a device, a symlink loop or an empty file in an input folder is listed as unreadable (with
the reason) by every stage, which finishes and loses no other row.

The stages run as real processes with a timeout: a reader that opens a FIFO blocks forever, which
here is a failed test after the timeout instead of a hung CI job.
"""

from __future__ import annotations

import ast
import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import REPO
from test_reliability import FAST_LABELS, FR, faces, sets

#: the one module that may call PIL's Image.open (file paths and in-memory buffers alike)
READER = "froq/core/images.py"
#: special files put beside the faces, and a word of the reason each must be listed with
SPECIAL = {"id0/zz.jpg": "not a regular file", "id1/x.jpg": "not a regular file",
           "id2/loop.jpg": "symbolic links", "id2/empty.jpg": "cannot identify"}
TIMEOUT = 120  # seconds; each stage takes a few on these 10 images


def python_sources() -> list[Path]:
    """Every .py file of the repository outside tests/ and virtual environments."""
    skip = {".venv", "tests", "site", ".git", "build"}
    return sorted(p for p in REPO.rglob("*.py")
                  if not (set(p.relative_to(REPO).parts[:-1]) & skip) and not p.name.startswith("."))


def image_open_calls(path: Path) -> list[int]:
    """Line numbers of ``Image.open(...)`` / ``PIL.Image.open(...)`` calls in a source file."""
    tree = ast.parse(path.read_text(encoding="utf-8"), str(path))
    lines = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == "open":
            target = node.func.value
            name = target.attr if isinstance(target, ast.Attribute) else getattr(target, "id", "")
            if name == "Image":
                lines.append(node.lineno)
    return lines


def test_only_the_image_module_opens_images():
    found = {str(p.relative_to(REPO)): image_open_calls(p) for p in python_sources()}
    others = {p: lines for p, lines in found.items() if lines and p != READER}
    assert not others, f"Image.open outside {READER} (use load_rgb / decode_rgb / read_image_size): {others}"
    assert found.get(READER), "the reader itself must still open images"  # the walk sees the code


def test_the_source_walk_catches_a_second_opener(tmp_path):
    bad = tmp_path / "x.py"
    bad.write_text("from PIL import Image\nimport PIL\nImage.open('a')\nPIL.Image.open('b')\n")
    assert image_open_calls(bad) == [3, 4]


@pytest.fixture(scope="module")
def special(tmp_path_factory):
    """Six faces in identity folders plus a FIFO, /dev/zero behind a .jpg link, a symlink loop and a
    0-byte file; labels and an observer made from it through the CLIs."""
    root = tmp_path_factory.mktemp("special")
    folder = root / "faces"
    good = faces(folder, 6)
    os.mkfifo(folder / "id0/zz.jpg")
    os.symlink("/dev/zero", folder / "id1/x.jpg")
    os.symlink("loop.jpg", folder / "id2/loop.jpg")
    (folder / "id2/empty.jpg").write_bytes(b"")
    return root, folder, good


def froq(*args: str, cache: str | None = None) -> subprocess.CompletedProcess:
    env = dict(os.environ)
    if cache is not None:
        env["FROQ_CACHE"] = cache
    return subprocess.run([sys.executable, "-m", "froq", *args], capture_output=True, text=True,
                          cwd=REPO, timeout=TIMEOUT, env=env)


def listed_with_reasons(items) -> None:
    """``items``: {path: reason} of one stage's unreadable list; every special file is there."""
    for rel, word in SPECIAL.items():
        assert rel in items, (rel, items)
        assert word in items[rel], (rel, items[rel])


def labels(root: Path, folder: Path, cache: str) -> Path:
    out = root / f"labels_{cache.replace('/', '_')}.csv"
    proc = froq("labels", "-c", str(REPO / "configs" / "baseline.yaml"),
                *sets(face_recognition_config=FR, dataset__path=folder, dataset__image_size=150,
                      outpath=out, device="cpu"), *[a for e in FAST_LABELS for a in ("--set", e)], cache=cache)
    assert proc.returncode == 0, proc.stderr
    return out


@pytest.mark.parametrize("cache", ["off", "on"])
def test_labels_list_special_files_with_the_cache_off_and_on(special, cache, tmp_path):
    root, folder, good = special
    out = labels(root, folder, "off" if cache == "off" else str(tmp_path / "cache"))
    with open(out, newline="") as fh:
        assert sorted(r["path"] for r in csv.DictReader(fh)) == good
    meta = json.loads(Path(str(out).replace(".csv", ".meta.json")).read_text())
    listed_with_reasons({u["path"]: u["reason"] for u in meta["unreadable"]})


def test_init_score_and_score_photos_finish_and_keep_every_row(special):
    root, folder, good = special
    lab = labels(root, folder, "off")
    observer = root / "observer.json"
    proc = froq("init", "-c", str(REPO / "configs" / "init.yaml"),
                *sets(face_recognition_config=FR, dataset__path=folder, label_location=lab,
                      outpath=observer, device="cpu"), cache="off")
    assert proc.returncode == 0, proc.stderr
    assert "have no label" in proc.stderr  # the special files have no label: left out, said so

    out = root / "q.csv"
    proc = froq("score", "-c", str(REPO / "configs" / "inference.yaml"),
                *sets(face_recognition_config=FR, observer_data=observer, target_dataset=folder,
                      outpath=out, device="cpu"), cache="off")
    assert proc.returncode == 0, proc.stderr
    for name, args in (("q.csv", None), ("photos.csv", ["score-photos", str(observer), str(folder),
                                                        "-o", str(root / "photos.csv"), "--aligned"])):
        if args is not None:
            proc = froq(*args, cache="off")
            assert proc.returncode == 0, proc.stderr
        with open(root / name, newline="") as fh:
            rows = {r["path"]: r["flag"] for r in csv.DictReader(fh)}
        assert sorted(p for p, f in rows.items() if f == "ok") == good
        assert {p for p, f in rows.items() if f == "unreadable"} == set(SPECIAL)
        meta = json.loads((root / name.replace(".csv", ".meta.json")).read_text())
        listed_with_reasons({u["path"]: u["reason"] for u in meta["unreadable"]})


def test_align_lists_special_files_and_aligns_the_rest(special):
    root, folder, good = special
    out = root / "aligned"
    proc = froq("align", "--input", str(folder), "--output", str(out), "--template", "dlib150",
                "--fallback", "center-box", "--workers", "1")
    assert proc.returncode == 0, proc.stderr
    with open(out / "landmarks.csv", newline="") as fh:
        rows = {r["path"]: r for r in csv.DictReader(fh)}
    assert sorted(p for p, r in rows.items() if r["status"] in ("ok", "fallback")) == good
    listed_with_reasons({p: r["reason"] for p, r in rows.items() if r["status"] == "unreadable"})


def test_calibration_builder_lists_special_files(special):
    root, folder, good = special
    out = root / "calibration"
    proc = froq("build-calibration", "--source", str(folder), "--output", str(out), "--variants", "1")
    assert proc.returncode == 0, proc.stderr
    build = json.loads((out / "build.json").read_text())
    listed_with_reasons({u["path"]: u["reason"] for u in build["unreadable"]})
    assert sorted(build["summary"]["unreadable_files"]) == sorted(SPECIAL)
    with open(out / "manifest.csv", newline="") as fh:
        assert sorted(r["source"] for r in csv.DictReader(fh)) == good


def test_evaluation_names_every_unreadable_image_in_one_line(special):
    root, folder, _ = special
    cfg = root / "eval.yaml"
    cfg.write_text(f"face_recognition_configs: [{FR}]\n"
                   f"benchmarks:\n  - {{name: special, type: identity_folders, images: {folder}}}\n"
                   f"qualities: {{}}\noutdir: {root / 'evaluation'}\ndevice: cpu\nbootstrap: 0\n")
    proc = froq("evaluate", "-c", str(cfg), cache="off")
    assert proc.returncode == 2, proc.stderr
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "Traceback" not in proc.stderr, proc.stderr
    assert all(rel in errors[0] for rel in SPECIAL), errors[0]
