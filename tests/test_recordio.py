"""insightface RecordIO sets (``train.rec`` + ``train.idx``) read without MXNet (issue 11): a tiny
set this test writes itself reads back the same images and labels, record 0 (the set's header) is
not scored, a payload split around the magic word is joined, a run keeps the label column and
resumes, and a corrupt ``.rec``/``.idx`` is one line."""

from __future__ import annotations

import io
import struct

import numpy as np
import pytest
import torch
from PIL import Image

from froq.core.errors import FroqError
from froq.core.images import FailureLog, Preprocess
from froq.core.recordio import MAGIC, RecordFile, read_payload, write_records
from froq.core.runner import run_images

PRE = Preprocess(size=(8, 8))


def encoded(k: int, fmt: str) -> tuple[bytes, np.ndarray]:
    rng = np.random.default_rng(k)
    arr = rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format=fmt)
    decoded = np.asarray(Image.open(io.BytesIO(buf.getvalue())).convert("RGB"))
    return buf.getvalue(), decoded


@pytest.fixture
def dataset(tmp_path):
    """Five records (PNG and JPEG) with identity labels 10, 10, 11, 12, 12; record 0 = header."""
    items, pixels = [], {}
    for k, label in zip(range(1, 6), [10, 10, 11, 12, 12]):
        data, arr = encoded(k, "PNG" if k % 2 else "JPEG")
        items.append((k, float(label), data))
        pixels[str(k)] = arr
    rec = tmp_path / "train.rec"
    write_records(rec, items)
    return rec, pixels


def test_records_read_back_images_and_labels_and_record_0_is_not_an_image(dataset):
    rec, pixels = dataset
    records = RecordFile(rec)
    assert records.keys.tolist() == [1, 2, 3, 4, 5]
    for i, key in enumerate(records.keys.tolist()):
        label, data = records.record(i)
        assert label == [10, 10, 11, 12, 12][i]
        assert np.array_equal(np.asarray(Image.open(io.BytesIO(data)).convert("RGB")), pixels[str(key)])


def test_a_payload_holding_the_magic_word_is_split_and_joined(tmp_path):
    from froq.core.recordio import _write_payload

    magic = struct.pack("<I", MAGIC)
    payload = b"abcd" + magic + b"efgh" + magic + magic + b"xy"
    with open(tmp_path / "x.rec", "wb") as fh:
        _write_payload(fh, payload)
    raw = (tmp_path / "x.rec").read_bytes()
    assert raw.count(magic) == 4  # four parts (cflag 1, 2, 2, 3), the data's own magic words removed
    with open(tmp_path / "x.rec", "rb") as fh:
        assert read_payload(fh, 0, "x") == payload


def test_a_run_over_a_record_set_keeps_labels_and_resumes(dataset, tmp_path):
    rec, pixels = dataset
    seen = []

    def mean(paths, images: torch.Tensor) -> torch.Tensor:
        seen.extend(paths)
        return images.float().mean(dim=(1, 2, 3))

    out = tmp_path / "q.csv"
    result = run_images(rec, mean, ["mean"], preprocess=PRE, batch_size=2, raw=True,
                        resume_path=out, settings={})
    assert result.paths == ["1", "2", "3", "4", "5"] and result.columns == ["label", "mean"]
    assert result.column("label").tolist() == [10, 10, 11, 12, 12]
    assert result.column("mean").tolist() == pytest.approx([pixels[k].mean() for k in result.paths])
    seen.clear()
    again = run_images(rec, mean, ["mean"], preprocess=PRE, batch_size=2, raw=True,
                       resume_path=out, settings={})
    assert seen == [] and np.array_equal(again.values, result.values)


def test_a_corrupt_record_set_is_one_line(dataset, tmp_path):
    rec, _ = dataset
    idx = rec.with_suffix(".idx")
    good = rec.read_bytes()
    rec.write_bytes(good[: len(good) // 2])  # truncated: the index points past its end
    with pytest.raises(FroqError, match="outside the .rec file") as err:
        RecordFile(rec)
    assert "\n" not in str(err.value)
    rec.write_bytes(b"\0" * len(good))  # right size, no magic words
    with pytest.raises(FroqError, match="no RecordIO magic word"):
        RecordFile(rec)
    rec.write_bytes(good)
    idx.write_text("0\t0\nthis is not an index\n")
    with pytest.raises(FroqError, match=r"train.idx:2: expected"):
        RecordFile(rec)
    idx.unlink()
    with pytest.raises(FroqError, match="record index not found"):
        RecordFile(rec)


def test_a_corrupt_record_inside_is_listed_not_fatal(dataset):
    rec, _ = dataset
    records = RecordFile(rec)
    data = bytearray(rec.read_bytes())
    third = int(records.offsets[2])
    data[third:third + 4] = b"\0\0\0\0"  # record 3's magic word
    rec.write_bytes(bytes(data))
    failures = FailureLog("t")
    result = run_images(rec, lambda p, x: x.float().mean(dim=(1, 2, 3)), ["mean"], preprocess=PRE,
                        batch_size=2, raw=True, failures=failures)
    assert result.paths == ["1", "2", "4", "5"]
    assert failures.items[0][0] == "3" and "no RecordIO magic word" in failures.items[0][1]


def test_the_labels_stage_reads_a_record_set(dataset, tmp_path, monkeypatch):
    """A stage CLI with ``dataset.path`` = a ``train.rec``: rows keyed by record index, with labels."""
    from froq.commands import main
    from stage_helpers import run_in_process

    rec, _ = dataset
    # 150 px faces for dlib: re-encode bigger images
    items = []
    for k, label in zip(range(1, 4), [7, 7, 9]):
        arr = np.random.default_rng(k).integers(0, 256, (6, 6, 3), dtype=np.uint8)
        buf = io.BytesIO()
        Image.fromarray(arr).resize((150, 150), Image.BICUBIC).save(buf, format="PNG")
        items.append((k, float(label), buf.getvalue()))
    write_records(rec, items)
    monkeypatch.setenv("FROQ_CACHE", "off")
    from conftest import REPO

    out = tmp_path / "labels.csv"
    args = ["labels", "-c", str(REPO / "configs" / "baseline.yaml")]
    for kv in [f"face_recognition_config={REPO / 'configs' / 'fr' / 'dlib_resnet.yaml'}",
               f"dataset.path={rec}", "dataset.image_size=150", f"outpath={out}", "device=cpu",
               "dataset.mpx=75", "dataset.noise_count=2", "dataset.batch_size=2"]:
        args += ["--set", kv]
    assert run_in_process(main, args) == 0
    lines = out.read_text().splitlines()
    assert lines[0] == "path,label,flip,noise,occlusion,quality"
    assert [line.split(",")[:2] for line in lines[1:]] == [["1", "7.0"], ["2", "7.0"], ["3", "9.0"]]
