"""froq/core/images.py: which files a folder yields, how odd image modes become RGB, and the
per-model preprocessing (mean/std, channel permutation, resize, the value of a black pixel)."""

from __future__ import annotations

import os

import numpy as np
import pytest
import torch
from PIL import Image

from froq.core.errors import FroqError
from froq.core.images import (FailureLog, ImageFolder, Preprocess, collate_images, list_images,
                         load_rgb)


def _save(path, array, mode=None, **kw):
    path.parent.mkdir(parents=True, exist_ok=True)
    img = Image.fromarray(array) if mode is None else Image.fromarray(array).convert(mode)
    img.save(path, **kw)
    return path


def _rgb(h=8, w=8, seed=0):
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


# -- list_images --------------------------------------------------------------------------------

def test_list_images_filters_and_sorts(tmp_path):
    for rel in ("b/B_0002.JPG", "b/B_0001.jpg", "a/A_0001.PNG", "a/deep/er/A_0002.jpeg",
                "c/x.Bmp", "c/y.webp", "top.png"):
        _save(tmp_path / rel, _rgb())
    # not images by name, hidden, or in hidden folders: all ignored
    for rel in ("notes.txt", "a/A_0001.jpg.bak", "a/anim.gif", ".hidden.jpg", ".cache/z.jpg",
                "b/.thumb/B_0001.jpg", "c/y.webp~"):
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_bytes(b"x")
    found = list_images(tmp_path)
    assert found == ["a/A_0001.PNG", "a/deep/er/A_0002.jpeg", "b/B_0001.jpg", "b/B_0002.JPG",
                     "c/x.Bmp", "c/y.webp", "top.png"]
    assert found == sorted(found)
    assert list_images(str(tmp_path)) == found  # str or Path, same answer, every time


def test_list_images_empty_or_missing_folder_names_it(tmp_path):
    with pytest.raises(FroqError, match=f"found in {tmp_path}"):
        list_images(tmp_path)
    (tmp_path / "readme.txt").write_text("no faces here")
    with pytest.raises(FroqError, match="no images"):
        list_images(tmp_path)
    with pytest.raises(FroqError, match=f"image folder not found: {tmp_path / 'nope'}"):
        list_images(tmp_path / "nope")
    (tmp_path / "file.jpg").write_bytes(b"")
    with pytest.raises(FroqError, match="image folder not found"):
        list_images(tmp_path / "file.jpg")  # a file is not a folder


@pytest.mark.skipif(not hasattr(os, "symlink"), reason="needs symlinks")
def test_list_images_symlink_loop_is_searched_once(tmp_path):
    _save(tmp_path / "a" / "A_0001.jpg", _rgb())
    os.symlink("..", tmp_path / "a" / "up")  # a -> a/up -> . -> a ... (a loop)
    other = tmp_path.parent / (tmp_path.name + "_elsewhere")
    _save(other / "E_0001.png", _rgb())
    os.symlink(other, tmp_path / "linked")  # a symlinked folder outside the tree is followed
    assert list_images(tmp_path) == ["a/A_0001.jpg", "linked/E_0001.png"]


# -- load_rgb -----------------------------------------------------------------------------------

def test_load_rgb_gray_rgba_palette(tmp_path):
    gray = np.arange(64, dtype=np.uint8).reshape(8, 8) * 4
    img = load_rgb(_save(tmp_path / "g.png", gray))
    assert img.mode == "RGB" and img.size == (8, 8)
    arr = np.asarray(img)
    assert (arr[..., 0] == gray).all() and (arr[..., 1] == gray).all() and (arr[..., 2] == gray).all()

    rgba = np.zeros((4, 4, 4), dtype=np.uint8)
    rgba[..., :3] = (200, 100, 50)
    rgba[:2, :, 3] = 255  # opaque top half, transparent bottom half
    arr = np.asarray(load_rgb(_save(tmp_path / "a.png", rgba)))
    assert (arr[:2] == (200, 100, 50)).all()
    assert (arr[2:] == 0).all()  # transparent pixels are composited on black

    rgb = _rgb(seed=3)
    pal = Image.fromarray(rgb).convert("P", palette=Image.ADAPTIVE, colors=256)
    pal.save(tmp_path / "p.png")
    assert Image.open(tmp_path / "p.png").mode == "P"
    arr = np.asarray(load_rgb(tmp_path / "p.png"))
    assert arr.shape == (8, 8, 3) and (arr == np.asarray(pal.convert("RGB"))).all()

    la = Image.fromarray(gray).convert("LA")
    la.putalpha(0)
    la.save(tmp_path / "la.png")
    assert (np.asarray(load_rgb(tmp_path / "la.png")) == 0).all()


def test_load_rgb_16bit_and_cmyk(tmp_path):
    values = np.array([[0, 257, 32768, 65535]], dtype=np.uint16)
    _save(tmp_path / "16.png", values)
    assert Image.open(tmp_path / "16.png").mode.startswith("I")
    arr = np.asarray(load_rgb(tmp_path / "16.png"))
    assert arr.dtype == np.uint8 and arr.shape == (1, 4, 3)
    assert arr[0, :, 0].tolist() == [0, 1, 128, 255]  # full 16-bit range → full 8-bit range
    # a 16-bit file that only uses 8-bit values stays as it is
    _save(tmp_path / "16small.png", np.array([[0, 7, 200, 255]], dtype=np.uint16))
    assert np.asarray(load_rgb(tmp_path / "16small.png"))[0, :, 1].tolist() == [0, 7, 200, 255]

    cmyk = Image.fromarray(_rgb()).convert("CMYK")
    cmyk.save(tmp_path / "c.jpg")
    img = load_rgb(tmp_path / "c.jpg")
    assert img.mode == "RGB" and img.size == (8, 8)


@pytest.mark.parametrize("content", [b"", b"hello, I am text", "truncated"])
def test_load_rgb_unreadable_raises_oserror(tmp_path, content):
    path = tmp_path / "bad.jpg"
    if content == "truncated":
        _save(tmp_path / "good.jpg", _rgb(64, 64))
        data = (tmp_path / "good.jpg").read_bytes()
        content = data[:len(data) // 2]
    path.write_bytes(content)
    with pytest.raises(OSError):
        load_rgb(path)


# -- Preprocess ---------------------------------------------------------------------------------

def _solid(rgb, h=2, w=3):
    return Image.fromarray(np.full((h, w, 3), rgb, dtype=np.uint8))


@pytest.mark.parametrize("channels, order", [((0, 1, 2), "RGB"), ((2, 1, 0), "BGR"),
                                             ((2, 0, 1), "BRG")])
def test_preprocess_channel_permutation(channels, order):
    pre = Preprocess(size=(2, 3), mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5), channels=channels)
    x = pre(_solid((255, 0, 51)))
    assert x.shape == (3, 2, 3) and x.dtype == torch.float32
    value = {"R": 1.0, "G": -1.0, "B": 51 / 255 * 2 - 1}
    for c, name in enumerate(order):
        assert torch.allclose(x[c], torch.full((2, 3), value[name])), (order, c)


def test_preprocess_mean_std_are_rgb_and_applied_before_permutation():
    pre = Preprocess(size=(1, 1), mean=(0.1, 0.2, 0.3), std=(0.5, 0.25, 0.125), channels=(2, 0, 1))
    x = pre(_solid((255, 255, 255), 1, 1)).flatten()
    want_rgb = [(1 - 0.1) / 0.5, (1 - 0.2) / 0.25, (1 - 0.3) / 0.125]
    assert torch.allclose(x, torch.tensor([want_rgb[2], want_rgb[0], want_rgb[1]]))
    black = pre.black_value()
    assert black.shape == (3, 1, 1)
    assert torch.allclose(black.flatten(), torch.tensor([-0.3 / 0.125, -0.1 / 0.5, -0.2 / 0.25]))
    assert torch.allclose(black, pre(_solid((0, 0, 0), 1, 1)))


@pytest.mark.parametrize("channels", [(0, 1, 2), (2, 1, 0), (2, 0, 1)])
def test_black_value_matches_a_black_image(channels):
    pre = Preprocess(size=(4, 4), channels=channels)
    assert torch.allclose(pre(_solid((0, 0, 0), 4, 4)), pre.black_value().expand(3, 4, 4))
    assert torch.allclose(pre.black_value().flatten(), torch.tensor([-1.0, -1.0, -1.0]))


def test_normalize_per_image_equals_batched():
    pre = Preprocess(size=(5, 7), mean=(0.4, 0.5, 0.6), std=(0.2, 0.3, 0.4), channels=(2, 0, 1))
    imgs = [Image.fromarray(_rgb(5, 7, seed=s)) for s in range(3)]
    u8 = torch.stack([pre.to_uint8(im) for im in imgs])
    assert u8.dtype == torch.uint8 and u8.shape == (3, 3, 5, 7)
    batched = pre.normalize(u8)
    for i, im in enumerate(imgs):
        assert torch.equal(pre.normalize(u8[i]), batched[i])
        assert torch.equal(pre(im), batched[i])
    # the uint8 tensor is RGB (the permutation happens in normalize only)
    assert torch.equal(u8[0], torch.from_numpy(np.array(imgs[0])).permute(2, 0, 1))


def test_to_uint8_resizes_to_height_width():
    pre = Preprocess(size=(4, 6))
    t = pre.to_uint8(Image.fromarray(_rgb(10, 20)))
    assert t.shape == (3, 4, 6) and t.dtype == torch.uint8
    same = _rgb(4, 6)
    assert torch.equal(pre.to_uint8(Image.fromarray(same)), torch.from_numpy(same).permute(2, 0, 1))


def test_preprocess_from_config_roundtrip_and_errors():
    pre = Preprocess.from_config({"size": 112, "mean": 0.5, "std": [0.5, 0.5, 0.5],
                                  "channels": [2, 0, 1]}, "fr.yaml")
    assert pre.size == (112, 112) and pre.channels == (2, 0, 1)
    assert Preprocess.from_config(pre.to_config()) == pre
    with pytest.raises(FroqError, match=r"fr.yaml: preprocess.channels: must be a permutation"):
        Preprocess.from_config({"channels": [0, 0, 1]}, "fr.yaml")
    with pytest.raises(FroqError, match=r"fr.yaml: preprocess.std: must not be 0"):
        Preprocess.from_config({"std": 0}, "fr.yaml")
    with pytest.raises(FroqError, match=r"fr.yaml: preprocess.size"):
        Preprocess.from_config({"size": "big"}, "fr.yaml")
    with pytest.raises(FroqError, match=r"fr.yaml: preprocess.mean: expected 3 numbers"):
        Preprocess.from_config({"mean": [0.5, 0.5]}, "fr.yaml")


# -- ImageFolder / collate / FailureLog ---------------------------------------------------------

def test_image_folder_records_failures_and_keeps_order(tmp_path):
    _save(tmp_path / "a.png", _rgb(6, 6, 1))
    (tmp_path / "b.jpg").write_bytes(b"")
    _save(tmp_path / "c.png", _rgb(6, 6, 2), mode="L")
    pre = Preprocess(size=(4, 4), channels=(2, 1, 0))
    ds = ImageFolder(tmp_path, pre)
    assert ds.paths == ["a.png", "b.jpg", "c.png"] and len(ds) == 3
    i, t, err = ds[1]
    assert i == 1 and t is None and "cannot identify image file" in err and "\n" not in err
    batch = collate_images([ds[k] for k in range(3)])
    assert batch.indices == [0, 2] and batch.images.shape == (2, 3, 4, 4)
    assert batch.images.dtype == torch.float32 and [k for k, _ in batch.failures] == [1]
    raw = ImageFolder(tmp_path, pre, paths=["c.png"], raw=True)[0][1]
    assert raw.dtype == torch.uint8 and raw.shape == (3, 4, 4)
    assert torch.equal(raw[0], raw[1]) and torch.equal(raw[1], raw[2])  # grayscale → equal RGB
    assert collate_images([ds[1]]).images is None


def test_failure_log_summary(caplog):
    log = FailureLog("stage x")
    assert log.summary() == "no unreadable images"
    for k in range(7):
        log.add(f"d/{k}.jpg", "broken")
    s = log.summary()
    assert s.startswith("7 unreadable image(s) skipped: d/0.jpg, d/1.jpg") and s.endswith("...")
    assert "\n" not in s
    assert sum("stage x: skipped unreadable image d/" in r.getMessage() for r in caplog.records) == 7
