"""dlib's face-recognition ResNet in PyTorch: architecture, weight-file parser, and exactness
against dlib itself on real LFW face chips."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

from face_recognition_model import dlib_resnet
from face_recognition_model.dlib_resnet import (Affine, DlibResNet, GlobalAvgPool, ZeroPadAdd,
                                                build_dlib_resnet, default_weights_path,
                                                read_dlib_weights)
from froq.core.errors import FroqError
from conftest import REPO, shared_path

CONFIG = REPO / "configs" / "fr" / "dlib_resnet.yaml"
N_CHIPS = 24
TOLERANCE = 1e-4


def packaged_model_file() -> Path:
    """The packaged .dat file; the test is skipped (with the reason) if the package is absent."""
    try:
        return Path(default_weights_path())
    except FroqError as exc:
        pytest.skip(str(exc))


# ------------------------------------------------------------------ architecture (no data needed)

def test_layer_inventory_and_parameter_count():
    model = DlibResNet()
    kinds = [type(m) for _, m in model.named_modules()]
    assert kinds.count(nn.Conv2d) == 29
    assert kinds.count(Affine) == 29
    assert kinds.count(nn.ReLU) == 29
    assert kinds.count(ZeroPadAdd) == 14
    # dlib's 5 average pools: 4 down-sampling shortcuts and the global pool of the head
    assert kinds.count(nn.AvgPool2d) == 4 and kinds.count(GlobalAvgPool) == 1
    assert kinds.count(nn.MaxPool2d) == 1
    assert kinds.count(nn.Linear) == 1
    assert sum(p.numel() for p in model.parameters()) == 5_614_592
    assert isinstance(model.fc, nn.Linear) and model.fc.bias is None
    assert (model.fc.in_features, model.fc.out_features) == (256, 128)
    assert all(not m.inplace for m in model.modules() if isinstance(m, nn.ReLU))


def test_output_shapes_and_every_module_called_in_named_order():
    model = build_dlib_resnet(None)
    assert not model.training
    names = [n for n, _ in model.named_modules() if n]
    called, shapes = [], {}
    hooks = []
    for name, module in model.named_modules():
        if name:
            hooks.append(module.register_forward_pre_hook(lambda m, a, n=name: called.append(n)))
            hooks.append(module.register_forward_hook(
                lambda m, a, out, n=name: shapes.__setitem__(n, tuple(out.shape[1:]))))
    with torch.no_grad():
        out = model(torch.randn(2, 3, 150, 150))
    for h in hooks:
        h.remove()
    assert out.shape == (2, 128)
    assert called == names  # every submodule runs as a module, input side first
    expected = {"stem.conv": (32, 72, 72), "stem.pool": (32, 35, 35),
                "level4": (32, 35, 35), "level3": (64, 17, 17), "level2": (128, 8, 8),
                "level1.block0.conv2": (256, 3, 3), "level1.block0.shortcut": (128, 4, 4),
                "level1.block0.add": (256, 4, 4), "level1": (256, 4, 4),
                "level0.block0.conv1": (256, 1, 1), "level0.block0.add": (256, 2, 2),
                "level0": (256, 2, 2), "pool": (256,), "fc": (128,)}
    for name, shape in expected.items():
        assert shapes[name] == shape, name
    assert len([n for n in names if n.endswith(".add")]) == 14


def test_zero_pad_add_pads_channels_and_bottom_right():
    branch = torch.arange(2 * 4 * 3 * 3, dtype=torch.float32).view(2, 4, 3, 3)
    shortcut = torch.ones(2, 2, 4, 4)
    out = ZeroPadAdd()(branch, shortcut)
    assert out.shape == (2, 4, 4, 4)
    assert torch.equal(out[:, :2, :3, :3], branch[:, :2] + 1)
    assert torch.equal(out[:, 2:, :3, :3], branch[:, 2:])
    assert torch.equal(out[:, :2, 3, :], torch.ones(2, 2, 4))  # only the shortcut reaches row 3
    assert torch.equal(out[:, 2:, 3, :], torch.zeros(2, 2, 4))
    assert torch.equal(out[:, :2, :, 3], torch.ones(2, 2, 4))


def test_builder_rejects_kwargs():
    with pytest.raises(FroqError, match="kwargs"):
        build_dlib_resnet(None, width=2)


def test_missing_package_gives_install_hint(monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(dlib_resnet.importlib.util, "find_spec",
                        lambda name, *a: None if name == "face_recognition_models" else real(name, *a))
    with pytest.raises(FroqError, match="pip install face-recognition-models"):
        default_weights_path()


# ------------------------------------------------------------------ the weight-file parser

def test_parser_reads_the_packaged_file_completely():
    state = read_dlib_weights(packaged_model_file())
    own = DlibResNet().state_dict()
    assert set(state) == set(own)
    assert all(tuple(state[k].shape) == tuple(own[k].shape) for k in own)
    assert sum(v.size for v in state.values()) == 5_614_592
    assert all(np.isfinite(v).all() and v.flags.writeable for v in state.values())
    assert np.abs(state["fc.weight"]).max() > 0 and np.abs(state["stem.conv.weight"]).max() > 0


@pytest.mark.parametrize("damage", ["truncate_middle", "truncate_last_byte", "trailing_byte",
                                    "loss_name", "layer_version", "empty", "not_dlib"])
def test_parser_rejects_damaged_files(tmp_path, damage):
    good = packaged_model_file().read_bytes()
    data = {
        "truncate_middle": good[:len(good) // 2],
        "truncate_last_byte": good[:-1],
        "trailing_byte": good + b"\x00",
        "loss_name": good.replace(b"loss_metric_2", b"loss_metric_3", 1),
        "layer_version": good[:0x1e] + b"\x05" + good[0x1f:],  # the fc layer's version 2 -> 5
        "empty": b"",
        "not_dlib": b"PK\x03\x04" + bytes(range(256)) * 8,
    }[damage]
    assert data != good
    bad = tmp_path / f"{damage}.dat"
    bad.write_bytes(data)
    with pytest.raises(FroqError) as info:
        build_dlib_resnet(str(bad))
    message = str(info.value)
    assert str(bad) in message and "\n" not in message


# ------------------------------------------------------------------ exactness against dlib

@pytest.fixture(scope="module")
def lfw_chips():
    """≥ 20 dlib-aligned 150×150 chips of real LFW faces and dlib's own descriptors of them."""
    dlib = pytest.importorskip("dlib")
    from froq.core.images import list_images, load_rgb
    root = shared_path("data", "lfw", "images")
    model_file = packaged_model_file()
    detector = dlib.get_frontal_face_detector()
    predictor = dlib.shape_predictor(str(model_file.parent / "shape_predictor_5_face_landmarks.dat"))
    recognizer = dlib.face_recognition_model_v1(str(model_file))
    paths = list_images(root)
    chips = []
    for rel in paths[::max(1, len(paths) // (2 * N_CHIPS))]:
        img = np.asarray(load_rgb(root / rel))
        faces = detector(img, 1)
        if not faces:
            continue
        centre = np.array(img.shape[1::-1]) / 2
        face = min(faces, key=lambda r: np.hypot(*(np.array([r.center().x, r.center().y]) - centre)))
        chips.append(dlib.get_face_chip(img, predictor(img, face), size=150, padding=0.25))
        if len(chips) == N_CHIPS:
            break
    assert len(chips) >= 20
    reference = np.array([np.array(recognizer.compute_face_descriptor(c)) for c in chips])
    return chips, reference


def test_matches_dlib_descriptors_batched_and_single(lfw_chips):
    from face_recognition_model.loading import load_fr_model
    chips, reference = lfw_chips
    model = load_fr_model(CONFIG)
    assert model.arch == "dlib_resnet" and model.weights == default_weights_path()
    batch = torch.stack([model.preprocess(Image.fromarray(c)) for c in chips])
    assert batch.shape == (len(chips), 3, 150, 150)
    batched = model.embed(batch).numpy()
    single = np.concatenate([model.embed(batch[i:i + 1]).numpy() for i in range(len(chips))])
    assert batched.shape == reference.shape == (len(chips), 128)
    assert np.abs(batched - reference).max() <= TOLERANCE
    assert np.abs(single - reference).max() <= TOLERANCE
    # the descriptors are not L2-normalised (dlib's are not either)
    assert np.abs(np.linalg.norm(batched, axis=1) - 1).max() > 1e-2


def test_config_preprocess_equals_dlib_normalisation():
    from face_recognition_model.loading import load_fr_config
    from froq.core.images import Preprocess
    pre = Preprocess.from_config(load_fr_config(CONFIG)["preprocess"])
    assert pre.size == (150, 150) and pre.channels == (0, 1, 2)
    pixels = torch.arange(256, dtype=torch.uint8).view(1, 1, 256).expand(3, 2, 256)
    ours = pre.normalize(pixels).double()
    mean = torch.tensor(dlib_resnet.DLIB_MEAN_RGB, dtype=torch.float64).view(3, 1, 1)
    assert (ours - (pixels.double() - mean) / dlib_resnet.DLIB_SCALE).abs().max() < 2e-7
