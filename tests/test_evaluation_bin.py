"""insightface .bin reading: decoding, export, fold ids, and refusal of anything but plain types."""

from __future__ import annotations

import io
import os
import pickle
import pickletools
import struct

import numpy as np
import pytest
from PIL import Image

from evaluation import insightface_bin as ib
from evaluation.extract_bin import main as extract_main
from evaluation.pair_protocols import read_insightface_bin
from froq.core.errors import FroqError
from froq.core.images import ImageFolder, Preprocess, list_images


def _encoded(color, fmt="PNG", size=(16, 12)) -> bytes:
    arr = np.zeros((size[1], size[0], 3), np.uint8)
    arr[...] = color
    arr[0, 0] = (255 - color[0], 7, 9)           # make each image distinguishable pixel-wise
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format=fmt)
    return buf.getvalue()


COLORS = [(10, 20, 30), (200, 100, 50), (0, 255, 0), (90, 90, 90), (5, 5, 250), (123, 45, 67)]


def _make_bin(path, images, issame, protocol=4):
    with open(path, "wb") as fh:
        pickle.dump((images, issame), fh, protocol=protocol)
    return path


def test_bin_decodes_images_labels_and_folds(tmp_path):
    imgs = [_encoded(c) for c in COLORS]
    path = _make_bin(tmp_path / "t.bin", imgs, [True, False, True])
    data = ib.read_bin(path)
    assert data.n_pairs == 3 and data.issame.tolist() == [True, False, True]
    for i, c in enumerate(COLORS):
        arr = np.asarray(data.decode(i))
        assert arr.shape == (12, 16, 3)
        assert tuple(arr[5, 5]) == c and arr[0, 0, 0] == 255 - c[0]
    assert data.folds.tolist() == [0, 1, 2]


def test_python2_style_bin_with_binstrings(tmp_path):
    # hand-assembled protocol-2 pickle as Python 2 writes it: str -> SHORT_BINSTRING/BINSTRING
    imgs = [_encoded(c) for c in COLORS[:2]]
    body = b"\x80\x02]("
    for blob in imgs:
        body += (b"U" + bytes([len(blob)]) if len(blob) < 256 else b"T" + struct.pack("<I", len(blob))) + blob
    body += b"e](\x88e\x86."
    path = tmp_path / "py2.bin"
    path.write_bytes(body)
    data = ib.read_bin(path)
    assert data.images == imgs and data.issame.tolist() == [True]
    assert tuple(np.asarray(data.decode(1))[5, 5]) == COLORS[1]


def test_fold_ids_follow_unshuffled_kfold():
    assert np.bincount(ib.fold_ids(6000)).tolist() == [600] * 10
    assert np.bincount(ib.fold_ids(13)).tolist() == [2, 2, 2, 1, 1, 1, 1, 1, 1, 1]
    f = ib.fold_ids(13)
    assert np.all(np.diff(f) >= 0)               # consecutive blocks in file order


class _Payload:
    """Unpickling this runs ``os.system(cmd)``."""

    def __init__(self, cmd):
        self.cmd = cmd

    def __reduce__(self):
        return (os.system, (self.cmd,))


def test_bin_with_code_execution_payload_is_refused_and_runs_nothing(tmp_path):
    marker = tmp_path / "pwned"
    path = _make_bin(tmp_path / "evil.bin", [_encoded(COLORS[0]), _Payload(f"touch {marker}")], [True])
    with pytest.raises(FroqError) as exc:
        ib.read_bin(path)
    msg = str(exc.value)
    assert str(path) in msg and "refused" in msg and "system" in msg
    assert not marker.exists()
    # the payload is real: the file asks the unpickler to import os.system and call it
    # (checked by reading the opcodes, never by unpickling)
    ops = [(op.name, arg) for op, arg, _ in pickletools.genops(path.read_bytes())]
    strings = [arg for name, arg in ops if isinstance(arg, str)]
    assert "system" in strings and any(name in ("STACK_GLOBAL", "GLOBAL") for name, _ in ops)
    assert any(name == "REDUCE" for name, _ in ops)


def test_bin_with_class_instance_is_refused(tmp_path):
    path = tmp_path / "obj.bin"
    with open(path, "wb") as fh:
        pickle.dump((ib.BinData, [True]), fh, protocol=4)
    with pytest.raises(FroqError, match="evaluation.insightface_bin.BinData"):
        ib.read_bin(path)


def test_bin_with_numpy_labels_is_refused_with_a_clear_message(tmp_path):
    path = _make_bin(tmp_path / "np.bin", [_encoded(c) for c in COLORS[:2]], np.array([True]))
    with pytest.raises(FroqError, match="numpy") as exc:
        ib.read_bin(path)
    assert str(path) in str(exc.value)


def test_python3_protocol2_bytes_are_refused(tmp_path):
    path = _make_bin(tmp_path / "p2.bin", [_encoded(c) for c in COLORS[:2]], [True], protocol=2)
    with pytest.raises(FroqError, match="_codecs.encode"):
        ib.read_bin(path)


@pytest.mark.parametrize("obj, match", [
    ({"a": 1}, "expected a pickled pair"),
    (([b"x", b"y"], ["yes"]), r"issame\[0\]"),
    ((["not bytes", b"y"], [True]), "image 0 is a str"),
    (([b"x", b"y", b"z"], [True]), "3 images for 1 pair"),
    (([], []), "holds no pairs"),
])
def test_bin_with_wrong_structure_names_the_file(tmp_path, obj, match):
    path = tmp_path / "bad.bin"
    with open(path, "wb") as fh:
        pickle.dump(obj, fh, protocol=4)
    with pytest.raises(FroqError, match=match) as exc:
        ib.read_bin(path)
    assert str(path) in str(exc.value)


def test_not_a_pickle_and_missing_file(tmp_path):
    junk = tmp_path / "junk.bin"
    junk.write_bytes(b"\x00\x01garbage")
    with pytest.raises(FroqError, match="not a readable"):
        ib.read_bin(junk)
    with pytest.raises(FroqError, match="not found"):
        ib.read_bin(tmp_path / "absent.bin")


def test_export_and_protocol_read_back_through_image_folder(tmp_path):
    imgs = [_encoded(c, fmt="JPEG" if i % 2 else "PNG") for i, c in enumerate(COLORS)]
    path = _make_bin(tmp_path / "t.bin", imgs, [True, False, True])
    proto = read_insightface_bin(path, tmp_path / "out" / "images", name="t")
    assert proto.images == ["00000.jpg", "00001.jpg", "00002.jpg", "00003.jpg", "00004.jpg", "00005.jpg"]
    assert proto.pairs.tolist() == [[0, 1], [2, 3], [4, 5]]
    assert proto.genuine.tolist() == [True, False, True] and proto.folds.tolist() == [0, 1, 2]
    assert list_images(tmp_path / "out" / "images") == proto.images
    for i, name in enumerate(proto.images):      # original bytes, no re-encoding
        assert (tmp_path / "out" / "images" / name).read_bytes() == imgs[i]
    ds = ImageFolder(tmp_path / "out" / "images", Preprocess(size=(12, 16)), raw=True)
    _, t, err = ds[2]
    assert err is None and tuple(t[:, 5, 5].tolist()) == COLORS[2]
    # exporting again keeps the files; a folder with other content is refused
    read_insightface_bin(path, tmp_path / "out" / "images")
    other = _make_bin(tmp_path / "o.bin", list(reversed(imgs)), [True, True, False])
    with pytest.raises(FroqError, match="other content"):
        read_insightface_bin(other, tmp_path / "out" / "images")


def test_export_reports_an_undecodable_image_by_index(tmp_path):
    path = _make_bin(tmp_path / "t.bin", [_encoded(COLORS[0]), b"not an image"], [False])
    with pytest.raises(FroqError, match="image 1: cannot decode"):
        read_insightface_bin(path, tmp_path / "images")


def test_extract_bin_cli_writes_images_and_pairs_csv(tmp_path, capsys):
    imgs = [_encoded(c) for c in COLORS]
    path = _make_bin(tmp_path / "t.bin", imgs, [True, False, True])
    extract_main([str(path), "--out", str(tmp_path / "x")])
    lines = (tmp_path / "x" / "pairs.csv").read_text().splitlines()
    assert lines == ["path1,path2,genuine,fold", "00000.jpg,00001.jpg,1,0", "00002.jpg,00003.jpg,0,1",
                     "00004.jpg,00005.jpg,1,2"]
    assert len(list((tmp_path / "x" / "images").iterdir())) == 6
    assert "6 images" in capsys.readouterr().out
