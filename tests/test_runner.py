"""The one per-image runner (``froq.core.runner``): order, failures, resume keyed by settings and by
each image file, the stage ending."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from froq.core.errors import FroqError
from froq.core.images import FailureLog, Preprocess
from froq.core.runner import file_identity, finish_stage, run_images

PRE = Preprocess(size=(8, 8))


def write_folder(root: Path, n: int) -> list[str]:
    """``n`` 8×8 PNGs of distinct constant grey levels; returns their sorted relative paths."""
    rels = []
    for k in range(n):
        rel = f"id{k % 2}/img{k}.png"
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        Image.new("RGB", (8, 8), (10 * k, 10 * k, 10 * k)).save(root / rel)
        rels.append(rel)
    return sorted(rels)


class Counting:
    """Batch function: per image its mean pixel value and the batch size; counts the images seen."""

    def __init__(self) -> None:
        self.seen: list[str] = []

    def __call__(self, paths, images: torch.Tensor) -> torch.Tensor:
        self.seen += paths
        mean = images.float().mean(dim=(1, 2, 3))
        return torch.stack([mean, torch.full_like(mean, len(paths))], dim=1)


def run(root, fn, **kwargs):
    return run_images(root, fn, ["mean", "batch"], preprocess=PRE, batch_size=2, **kwargs)


def test_rows_come_in_list_order_and_unreadable_files_are_listed(tmp_path):
    rels = write_folder(tmp_path, 5)
    (tmp_path / "id0" / "broken.png").write_bytes(b"not an image")
    failures = FailureLog("t")
    result = run(tmp_path, Counting(), failures=failures)
    assert result.paths == rels and result.values.shape == (5, 2)
    assert failures.items and failures.items[0][0] == "id0/broken.png"
    means = result.column("mean")
    assert np.all(np.diff([means[rels.index(f"id{k % 2}/img{k}.png")] for k in range(5)]) > 0)
    assert list(result.rows())[0][0] == rels[0]


def test_nothing_readable_is_one_error_unless_allowed(tmp_path):
    (tmp_path / "a.png").write_bytes(b"x")
    with pytest.raises(FroqError, match="none of the 1 image"):
        run(tmp_path, Counting())
    assert len(run(tmp_path, Counting(), allow_empty=True)) == 0


def test_resume_reuses_rows_only_for_same_settings_and_unchanged_files(tmp_path):
    root = tmp_path / "faces"
    rels = write_folder(root, 4)
    out = tmp_path / "out.csv"
    first = Counting()
    ref = run(root, first, resume_path=out, settings={"k": 1})
    assert first.seen == rels and Path(str(out) + ".partial").is_file()

    again = Counting()
    res = run(root, again, resume_path=out, settings={"k": 1})
    assert again.seen == [] and np.array_equal(res.values, ref.values)

    # an image replaced under the same name (other content, other size/mtime) is recomputed
    target = root / rels[1]
    Image.new("RGB", (8, 8), (200, 200, 200)).save(target)
    os.utime(target, ns=(target.stat().st_atime_ns, target.stat().st_mtime_ns + 10**9))
    changed = Counting()
    res = run(root, changed, resume_path=out, settings={"k": 1})
    assert changed.seen == [rels[1]]
    assert res.column("mean")[1] != ref.column("mean")[1]
    assert np.array_equal(np.delete(res.values, 1, 0), np.delete(ref.values, 1, 0))

    # other settings: the partial is discarded, everything recomputed
    other = Counting()
    run(root, other, resume_path=out, settings={"k": 2})
    assert other.seen == rels


def test_a_corrupt_partial_row_is_dropped_and_recomputed(tmp_path):
    root = tmp_path / "faces"
    rels = write_folder(root, 3)
    out = tmp_path / "out.csv"
    ref = run(root, Counting(), resume_path=out, settings={})
    partial = Path(str(out) + ".partial")
    lines = partial.read_text().splitlines()
    lines[3] = lines[3].rsplit(",", 1)[0] + ",not-a-number"  # the second image's row
    partial.write_text("\n".join(lines) + "\n")
    again = Counting()
    res = run(root, again, resume_path=out, settings={})
    assert again.seen == [rels[1]] and np.array_equal(res.values[:, 0], ref.values[:, 0])


def test_file_identity_changes_with_size_and_mtime(tmp_path):
    f = tmp_path / "x.bin"
    f.write_bytes(b"abc")
    a = file_identity(f)
    f.write_bytes(b"abcd")
    assert file_identity(f) != a and file_identity(tmp_path / "nope") == "missing"


def test_finish_stage_writes_meta_drops_partial_and_prints_one_line(tmp_path, capsys):
    out = tmp_path / "q.csv"
    out.write_text("path,quality\n")
    Path(str(out) + ".partial").write_text("# froq-partial x\n")
    failures = FailureLog("t")
    failures.add("bad.png", "broken")
    finish_stage(out, "inference", label="qualities", images=3, failures=failures, started=0.0,
                 meta={"model": {"arch": "tiny"}})
    meta = json.loads(out.with_suffix(".meta.json").read_text())
    assert meta["stage"] == "inference" and meta["images"] == 3 and meta["model"] == {"arch": "tiny"}
    assert meta["unreadable"] == [{"path": "bad.png", "reason": "broken"}] and meta["seconds"] > 0
    assert not Path(str(out) + ".partial").exists()
    assert capsys.readouterr().out.startswith(f"qualities: {out} (3 images; 1 unreadable")
