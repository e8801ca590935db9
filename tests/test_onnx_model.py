"""The ``onnx`` FR family: a torch net exported to ONNX, loaded through an FR config, gives the same
embeddings, keeps its batch norms, and runs the whole FROQ pipeline (labels → init → inference)."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

from baselineFIQA.labels import compute_pseudo_labels
from face_recognition_model.loading import load_fr_model
from froq.core.errors import FroqError
from froq.core.io import write_csv
from observer.hooks import NormRecorder, observable_layers
from stage_helpers import froq_scores
from observer.initialization import initialize_observer

pytest.importorskip("onnx2torch")

SIZE = 32


class SmallFR(nn.Module):
    """conv/BN/PReLU/pool → conv/BN/PReLU → flatten → linear: a miniature FR backbone."""

    def __init__(self, flatten_with_view: bool = False) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1, bias=False), nn.BatchNorm2d(8),
                                  nn.PReLU(8), nn.MaxPool2d(2))
        self.stage = nn.Sequential(nn.Conv2d(8, 16, 3, stride=2, padding=1, bias=False),
                                   nn.BatchNorm2d(16), nn.PReLU(16))
        self.flatten = nn.Flatten()
        self.fc = nn.Linear(16 * 8 * 8, 24)
        self.view = flatten_with_view
        g = torch.Generator().manual_seed(0)
        with torch.no_grad():
            for m in self.modules():
                if isinstance(m, nn.BatchNorm2d):
                    m.running_mean.copy_(0.1 * torch.randn(m.num_features, generator=g))
                    m.running_var.copy_(0.5 + torch.rand(m.num_features, generator=g))
                    m.weight.copy_(1 + 0.1 * torch.randn(m.num_features, generator=g))
                    m.bias.copy_(0.1 * torch.randn(m.num_features, generator=g))
        self.eval()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.stage(self.stem(x))
        y = y.view(y.size(0), -1) if self.view else self.flatten(y)
        return self.fc(y)


def export(model: nn.Module, path, batch: int = 1, dynamic: bool = True, **kwargs) -> None:
    """torch.onnx.export with the TorchScript exporter (works offline; no onnxscript needed)."""
    x = torch.randn(batch, 3, SIZE, SIZE)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(model, (x,), str(path), dynamo=False, input_names=["input"],
                          output_names=["embedding"],
                          dynamic_axes={"input": {0: "batch"}, "embedding": {0: "batch"}} if dynamic else None,
                          **kwargs)


def fr_config(tmp_path, onnx_path, name: str = "fr.yaml"):
    cfg = tmp_path / name
    cfg.write_text(f"model:\n  arch: onnx\n  weights: {onnx_path}\n"
                   f"preprocess: {{size: {SIZE}, mean: 0.5, std: 0.5, channels: [0, 1, 2]}}\n")
    return cfg


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """(torch model, .onnx path): dynamic batch, batch norms kept (no constant folding)."""
    folder = tmp_path_factory.mktemp("onnx")
    model = SmallFR()
    path = folder / "small_fr.onnx"
    export(model, path, batch=2, do_constant_folding=False)
    return model, path


@pytest.fixture(scope="module")
def face_folder(tmp_path_factory):
    """12 generated 32×32 'faces' of varied sharpness and noise (so qualities differ)."""
    root = tmp_path_factory.mktemp("faces")
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[0:SIZE, 0:SIZE] / SIZE
    for i in range(12):
        base = np.stack([np.sin(6 * xx + i), np.cos(5 * yy - i), np.sin(4 * (xx + yy))], -1)
        img = 127 + 100 * base + rng.normal(0, 5 + 8 * i, base.shape)
        sub = root / f"id_{i % 3}"
        sub.mkdir(exist_ok=True)
        Image.fromarray(np.clip(img, 0, 255).astype(np.uint8)).save(sub / f"{i:02d}.png")
    return root


def test_same_embeddings_as_torch_for_batches(exported, tmp_path):
    model, path = exported
    fr = load_fr_model(fr_config(tmp_path, path))
    assert fr.arch == "onnx" and fr.weights_sha256  # provenance of the .onnx file
    x = torch.randn(5, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        want = model(x)
    got = fr.embed(x)
    assert got.shape == (5, 24)
    assert (got - want).abs().max().item() <= 1e-4
    assert (fr.embed(x[:1]) - want[:1]).abs().max().item() <= 1e-4


def test_layers_are_named_and_hookable(exported, tmp_path):
    _, path = exported
    fr = load_fr_model(fr_config(tmp_path, path))
    layers = observable_layers(fr.network)
    assert all(name and "." not in name for name in layers)
    # convolutions, batch norms, PReLU, pooling, flatten and the linear layer are all separate layers
    kinds = {type(m).__name__ for n, m in fr.network.named_modules() if n}
    assert {"Conv2d", "BatchNorm2d", "MaxPool2d", "Linear"} <= kinds
    x = torch.randn(3, 3, SIZE, SIZE)
    with NormRecorder(fr.network, layers) as rec, torch.no_grad():
        rec.run(fr.network, x)
        norms = rec.norms()
    convs = [j for j, n in enumerate(layers) if n.endswith("/Conv")]
    assert len(convs) == 2 and np.isfinite(norms[:, convs]).all() and (norms[:, convs] > 0).all()


def test_batch_norms_stay_batchnorm2d_with_running_stats(exported, tmp_path):
    model, path = exported
    fr = load_fr_model(fr_config(tmp_path, path))
    bns = [fr.network.get_submodule(n) for n in fr.layout().batch_norms]  # what GraFIQs uses
    assert len(bns) == 2
    torch_bns = [m for m in model.modules() if isinstance(m, nn.BatchNorm2d)]
    for got, want in zip(bns, torch_bns):
        assert torch.allclose(got.running_mean, want.running_mean)
        assert torch.allclose(got.running_var, want.running_var)


def test_fixed_batch_of_one_is_made_dynamic(tmp_path):
    model = SmallFR(flatten_with_view=True)
    path = tmp_path / "fixed.onnx"
    export(model, path, batch=1, dynamic=False)  # constant folding: view → Reshape [1, -1]
    fr = load_fr_model(fr_config(tmp_path, path))
    x = torch.randn(4, 3, SIZE, SIZE)
    with torch.no_grad():
        assert (fr.embed(x) - model(x)).abs().max().item() <= 1e-4


def test_fixed_batch_that_cannot_be_freed_is_refused(tmp_path):
    path = tmp_path / "baked.onnx"
    # without constant folding the batch 1 of view() is a chain of Constant/Unsqueeze/Concat
    export(SmallFR(flatten_with_view=True), path, batch=1, dynamic=False, do_constant_folding=False)
    with pytest.raises(FroqError, match="fixed batch size of 1") as err:
        load_fr_model(fr_config(tmp_path, path))
    assert "\n" not in str(err.value) and "dynamic_axes" in str(err.value)


def test_extra_outputs_are_dropped(tmp_path):
    class TwoOut(nn.Module):
        def __init__(self):
            super().__init__()
            self.net = SmallFR()

        def forward(self, x):
            return self.net(x), x.mean(dim=(1, 2, 3))

    model = TwoOut().eval()
    path = tmp_path / "two.onnx"
    x = torch.randn(2, 3, SIZE, SIZE)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(model, (x,), str(path), dynamo=False, input_names=["input"],
                          output_names=["embedding", "extra"], dynamic_axes={"input": {0: "b"}})
    fr = load_fr_model(fr_config(tmp_path, path))
    with torch.no_grad():
        assert (fr.embed(x) - model(x)[0]).abs().max().item() <= 1e-4


@pytest.mark.parametrize("content", [None, b"", b"this is not a protobuf \xff\xfe\x00"])
def test_missing_or_invalid_file_is_one_line_error(tmp_path, content):
    path = tmp_path / "model.onnx"
    if content is not None:
        path.write_bytes(content)
    with pytest.raises(FroqError) as err:
        load_fr_model(fr_config(tmp_path, path))
    msg = str(err.value)
    assert "\n" not in msg and "model.onnx" in msg


def test_random_weights_are_refused(tmp_path):
    with pytest.raises(FroqError, match="no built-in network"):
        load_fr_model(fr_config(tmp_path, "random"))


def test_pipeline_end_to_end(exported, tmp_path, face_folder):
    _, path = exported
    fr = load_fr_model(fr_config(tmp_path, path))
    rows = compute_pseudo_labels(fr, face_folder, batch_size=5, mpx=8, noise_count=4)
    assert len(rows) == 12
    labels = tmp_path / "labels.csv"
    write_csv(labels, ["path", "quality"], zip(rows.paths, rows.column("quality")))
    record = initialize_observer(fr, face_folder, labels, batch_size=5, top_n=4)
    assert record["images"] == 12 and record["selected_layers"]
    assert "initializers" in record["never_called"]  # the constant container never fires
    names, q, emb = froq_scores(fr, face_folder, record["selected_layers"], batch_size=5)
    assert len(names) == 12 and np.isfinite(q).all() and (q > 0).all() and emb is None
    names2, q2, emb2 = froq_scores(fr, face_folder, record["selected_layers"], batch_size=4,
                                    early_exit=False, save_embeddings=True)
    assert names2 == names and np.allclose(q2, q, rtol=1e-5) and emb2.shape == (12, 24)


def test_integer_outputs_with_batch_first_dim_are_not_norms():
    """onnx2torch graphs have int64 shape/constant nodes; one whose first dimension equals the
    batch size must give NaN (no utility), not crash the recorder."""
    class Ints(nn.Module):
        def forward(self, x):
            return torch.arange(x.shape[0])

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.ints = Ints()
            self.conv = nn.Conv2d(3, 2, 1)

        def forward(self, x):
            self.ints(x)
            return self.conv(x)

    net = Net().eval()
    with NormRecorder(net, ["ints", "conv"]) as rec, torch.no_grad():
        rec.run(net, torch.randn(3, 3, 4, 4))
        norms = rec.norms()
    assert np.isnan(norms[:, 0]).all() and np.isfinite(norms[:, 1]).all()
