"""The label forwards' rewritten network (baselineFIQA/fusion.py) and their precision option
(issue 20): folded affines give the same embeddings and labels, nothing is folded that would change
them, the original network is untouched, and every option keeps the resume / cache key honest."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from baselineFIQA.cache import label_settings_key
from baselineFIQA.fusion import fold_network
from baselineFIQA.labels import LabelSettings, PseudoLabeler
from froq.core.device import precision_context
from froq.core.errors import FroqError
from test_incremental_occlusion import TOL, faces, fr_model

CPU = torch.device("cpu")


def embeddings(network: nn.Module, x: torch.Tensor) -> torch.Tensor:
    with torch.inference_mode():
        return network(x).float()


@pytest.mark.parametrize("arch, size, folded", [("dlib_resnet", 150, 29), ("adaface_ir_18", 112, 24)])
def test_folded_network_gives_the_same_embeddings(arch, size, folded):
    fr = fr_model(arch, size)
    before = {k: v.clone() for k, v in fr.network.state_dict().items()}
    x = faces(2, size)
    net, removed = fold_network(fr.network, CPU)
    # dlib: its 29 convolution + affine pairs; IR-18: the stem's BN (1), the BN after each of the
    # blocks' two convs (16), the three projection shortcuts' BN (3) and the four 1x1 stride-1
    # max-pools of the identity shortcuts (4); not the 1-D BN after the linear layer
    assert removed == folded
    plain, fused = embeddings(fr.network, x), embeddings(net, x)
    assert torch.allclose(plain, fused, atol=1e-5, rtol=1e-4)
    assert (fused - plain).abs().max() > 0  # it really runs other arithmetic
    for k, v in fr.network.state_dict().items():  # the original network is not modified
        assert torch.equal(v, before[k]), k


class Shared(nn.Module):
    """A conv whose output feeds a BN and a second branch, a conv module called twice, a BN in
    training mode, and a 1x1 max-pool with stride 2: none may be folded or dropped."""

    def __init__(self) -> None:
        super().__init__()
        self.a, self.bn_a = nn.Conv2d(3, 4, 3, padding=1), nn.BatchNorm2d(4)
        self.b, self.bn_b = nn.Conv2d(4, 4, 3, padding=1), nn.BatchNorm2d(4)
        self.c, self.bn_c = nn.Conv2d(4, 4, 1), nn.BatchNorm2d(4)
        self.pool = nn.MaxPool2d(1, 2)  # kernel 1 but stride 2: a subsampling, not the identity
        for bn in (self.bn_a, self.bn_b, self.bn_c):
            bn.running_mean.uniform_(-1, 1)
            bn.running_var.uniform_(0.5, 2)

    def forward(self, x):
        y = self.a(x)
        y = self.bn_a(y) + y          # the conv's output is used twice
        z = self.bn_b(self.b(y))      # b is also called below: shared
        z = self.b(z)
        return self.pool(self.bn_c(self.c(z)))


def test_nothing_is_folded_that_would_change_the_numbers():
    torch.manual_seed(0)
    model = Shared().eval()
    model.bn_c.train()  # batch statistics: not a fixed affine
    assert fold_network(model, CPU) == (model, 0)  # nothing to fold: the network itself
    model.bn_c.eval()
    net, removed = fold_network(model, CPU)
    assert removed == 1  # only c + bn_c now
    x = torch.randn(2, 3, 8, 8)
    assert torch.allclose(embeddings(model, x), embeddings(net, x), atol=1e-6)


def test_untraceable_network_is_left_as_it_is(caplog):
    class Branchy(nn.Module):
        def forward(self, x):
            return x * 2 if x.sum() > 0 else x  # data-dependent control flow: fx cannot trace

    model = Branchy()
    with caplog.at_level("INFO"):
        net, removed = fold_network(model, CPU)
    assert net is model and removed == 0
    assert "cannot be traced" in caplog.text


@pytest.mark.parametrize("arch, size, mpx", [("dlib_resnet", 150, 19), ("adaface_ir_18", 112, 28)])
def test_folded_labels_equal_the_plain_ones(arch, size, mpx):
    fr = fr_model(arch, size)
    x = faces(1, size)
    out = {fold: PseudoLabeler(fr, LabelSettings(mpx=mpx, fold=fold)).score(x) for fold in (True, False)}
    for column in ("flip", "noise", "occlusion", "quality"):
        assert np.abs(out[True][column].numpy() - out[False][column].numpy()).max() <= TOL, column
    assert out[False]["occlusion"].max() < 1 - 10 * TOL  # the occlusion term is not trivially 1


def test_fold_and_precision_are_in_the_keys():
    fr = fr_model("dlib_resnet", 150)
    default = LabelSettings(mpx=19).fingerprint()
    assert default["fold_affine"] is True and "precision" not in default
    assert "fold_affine" not in LabelSettings(mpx=19, fold=False).fingerprint()
    assert LabelSettings(mpx=19, precision="bf16").fingerprint()["precision"] == "bf16"
    keys = [label_settings_key(fr, [0.001], 10, 19, 0, fold=f, precision=p)
            for f, p in ((True, "auto"), (False, "auto"), (True, "bf16"), (True, "fp32"))]
    assert len({repr(sorted(k.items())) for k in keys}) == 4


def test_precision_contexts():
    conv = nn.Conv2d(3, 4, 3)
    x = torch.randn(1, 3, 8, 8)
    with torch.inference_mode():
        with precision_context(CPU, "bf16"):
            assert conv(x).dtype == torch.bfloat16
        for p in ("auto", "fp32"):
            with precision_context(CPU, p):
                assert conv(x).dtype == torch.float32
    with pytest.raises(FroqError, match="fp16 needs CUDA"):
        precision_context(CPU, "fp16")
    with pytest.raises(FroqError, match="use one of"):
        precision_context(CPU, "int8")
    fr = fr_model("dlib_resnet", 150)
    with pytest.raises(FroqError, match="fp16 needs CUDA"):
        PseudoLabeler(fr, LabelSettings(mpx=19, precision="fp16"))


def cpuinfo_flags() -> set[str] | None:
    """The CPU feature flags the Linux kernel reports (/proc/cpuinfo), None elsewhere."""
    try:
        text = open("/proc/cpuinfo", encoding="utf-8").read()
    except OSError:
        return None
    lines = [line for line in text.splitlines() if line.startswith("flags")]
    return set(lines[0].split(":", 1)[1].split()) if lines else None


def test_bf16_warns_exactly_when_this_cpu_has_no_native_bf16(caplog):
    """No patches: torch's probe agrees with the kernel's CPU flags, and the labels stage warns
    (one line) for bf16 exactly when the probe says this CPU has neither AMX nor AVX-512 BF16;
    fp32 and auto never warn."""
    from froq.core.device import cpu_has_fast_bf16
    native = cpu_has_fast_bf16()
    flags = cpuinfo_flags()
    if native is not None and flags is not None:
        assert native == bool({"amx_tile", "avx512_bf16"} & flags), (native, sorted(flags))
    fr = fr_model("dlib_resnet", 150)
    for precision in ("bf16", "fp32", "auto"):
        caplog.clear()
        with caplog.at_level("WARNING", logger="baselineFIQA.labels"):
            PseudoLabeler(fr, LabelSettings(mpx=75, precision=precision))
        lines = [r.getMessage() for r in caplog.records if "AMX" in r.getMessage()]
        assert len(lines) == int(precision == "bf16" and native is False), (native, precision, lines)
        assert all("\n" not in line and "precision: auto" in line for line in lines)


def test_bf16_labels_run_in_bf16_and_stay_close():
    fr = fr_model("dlib_resnet", 150)
    x = faces(2, 150)  # a 2x2 grid: few window shapes (the first bf16 call of a shape is slow)
    fp32 = PseudoLabeler(fr, LabelSettings(mpx=75)).score(x)["quality"].numpy()
    bf16 = PseudoLabeler(fr, LabelSettings(mpx=75, precision="bf16")).score(x)["quality"].numpy()
    diff = np.abs(fp32 - bf16).max()
    assert 0 < diff < 1e-2  # another rounding, not another label


def test_dlib_real_weights_and_faces_folded_labels_equal_the_plain_ones(shared):
    from face_recognition_model.dlib_resnet import default_weights_path
    from froq.core.images import ImageFolder, list_images

    root = shared("data", "lfw", "images")
    fr = fr_model("dlib_resnet", 150, default_weights_path())
    data = ImageFolder(root, fr.preprocess, paths=list_images(root)[:2])
    x = torch.stack([data[i][1] for i in range(2)])
    out = {fold: PseudoLabeler(fr, LabelSettings(mpx=19, fold=fold)).score(x)["quality"].numpy()
           for fold in (True, False)}
    assert np.abs(out[True] - out[False]).max() <= TOL


def test_onnx_graph_at_bf16_runs_the_torch_graph_not_onnx_runtime(tmp_path):
    from baselineFIQA.labels import uses_onnx_runtime
    from face_recognition_model.loading import load_fr_model
    from test_onnx_model import SmallFR, export, fr_config

    path = tmp_path / "small_fr.onnx"
    export(SmallFR(), path, batch=2, do_constant_folding=False)
    fr = load_fr_model(fr_config(tmp_path, path))
    assert uses_onnx_runtime(fr) and uses_onnx_runtime(fr, "fp32")
    assert not uses_onnx_runtime(fr, "bf16")  # ONNX Runtime's CPU provider has no bf16 autocast
    assert PseudoLabeler(fr, LabelSettings(mpx=8, precision="bf16")).onnx_runtime is None
    fp32_key = label_settings_key(fr, [0.001], 10, 8, 0)
    bf16_key = label_settings_key(fr, [0.001], 10, 8, 0, precision="bf16")
    assert fp32_key["runtime"] == "onnxruntime" and "runtime" not in bf16_key and bf16_key["precision"] == "bf16"
