"""Registry, embedding norm, CR-FIQA head, auxiliary FIQA wrapper."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

from methods import get_method, list_methods, resolve_options, run_method
from face_recognition_model import create_model
from face_recognition_model.iresnet import build_crfiqa_iresnet
from froq.core.errors import FroqError
from froq.core.images import ImageFolder, Preprocess, list_images
from stage_helpers import as_fr


def write_faces(folder, n, size, seed=0):
    rng = np.random.default_rng(seed)
    for i in range(n):
        Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8)).save(folder / f"f{i}.png")
    return list_images(folder)


class Tiny(nn.Module):
    """A small FR-like network for 28x28 inputs (un-normalised 6-D output)."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.conv = nn.Conv2d(3, 6, 5, stride=2)
        self.fc = nn.Linear(6 * 12 * 12, 6)

    def forward(self, x):
        return self.fc(torch.relu(self.conv(x)).flatten(1))


def test_registry_lists_the_methods_and_rejects_unknown():
    assert {"serfiq", "grafiqs", "embedding_norm", "crfiqa", "aux_fiqa"} <= set(list_methods())
    for name in list_methods():
        mod = get_method(name)
        assert mod.NAME == name and callable(mod.score) and callable(mod.check)
        resolve_options(name, None)  # defaults are valid
    with pytest.raises(FroqError, match="unknown FIQA method 'magface'"):
        get_method("magface")


def test_embedding_norm_equals_forward_norm(tmp_path):
    paths = write_faces(tmp_path, 3, 112)
    net = create_model("iresnet18", None)
    res = run_method("embedding_norm", as_fr(net, 112, "iresnet18"), tmp_path, batch_size=2)
    ds = ImageFolder(tmp_path, Preprocess(size=(112, 112)))
    with torch.no_grad():
        expected = [net(ds[i][1].unsqueeze(0)).norm().item() for i in range(len(ds))]
    assert res.paths == paths and res.columns == ["quality"]
    assert res.column("quality") == pytest.approx(expected, rel=1e-5)
    assert np.all(res.column("quality") > 1.5)  # un-normalised


def test_crfiqa_quality_is_the_head_and_other_models_fail(tmp_path):
    write_faces(tmp_path, 2, 112)
    net = build_crfiqa_iresnet(18, None)
    with torch.no_grad():
        net.qs.bias.fill_(0.25)
    res = run_method("crfiqa", as_fr(net, 112, "crfiqa_iresnet50"), tmp_path)
    ds = ImageFolder(tmp_path, Preprocess(size=(112, 112)))
    with torch.no_grad():
        x = torch.stack([ds[i][1] for i in range(2)])
        expected = net.qs(net(x)).squeeze(1)
    assert res.column("quality") == pytest.approx(expected.tolist(), rel=1e-5)
    with pytest.raises(FroqError, match="no CR-FIQA quality head") as err:
        run_method("crfiqa", as_fr(create_model("iresnet18", None), 112, "iresnet18"), tmp_path)
    assert "iresnet18" in str(err.value) and "crfiqa_iresnet50" in str(err.value)
    with pytest.raises(FroqError, match="declares no layout"):  # a bare network: nothing declared
        run_method("crfiqa", as_fr(Tiny(), 28), tmp_path)


def test_aux_fiqa_wraps_pseudo_labels(tmp_path):
    from baselineFIQA.labels import compute_pseudo_labels

    paths = write_faces(tmp_path, 3, 28)
    (tmp_path / "bad.jpg").write_bytes(b"nope")
    fr = as_fr(Tiny(), 28)
    res = run_method("aux_fiqa", fr, tmp_path, batch_size=2,
                     options={"mpx": 14, "alphas": [0.05], "noise_count": 3})
    assert res.paths == paths and [p for p, _ in res.failures.items] == ["bad.jpg"]
    assert res.columns == ["quality", "flip", "noise", "occlusion"]
    mean = (res.column("flip") + res.column("noise") + res.column("occlusion")) / 3
    assert res.column("quality") == pytest.approx(mean, abs=1e-6)
    labels = compute_pseudo_labels(fr, tmp_path, paths=paths, batch_size=3, alphas=[0.05], mpx=14,
                                   noise_count=3)
    assert res.column("quality") == pytest.approx(labels.column("quality"), abs=1e-6)
    assert np.all(res.column("noise") < 1)
