"""GraFIQs: batch == per image, agreement with the single-image definition, declared stages, refusals."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

from face_recognition_model import create_model
from face_recognition_model.layout import ModelLayout, running_batch_norms
from froq.core.errors import FroqError
from methods import run_method
from methods.grafiqs import VARIANTS, grafiqs_batch, model_parts
from stage_helpers import as_fr


def randomize_bn(model: nn.Module, seed: int = 0) -> nn.Module:
    """Realistic, non-trivial BatchNorm running statistics and affine parameters."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, (nn.BatchNorm2d, nn.BatchNorm1d)):
                n = m.num_features
                m.running_mean.copy_(torch.randn(n, generator=g) * 0.1)
                m.running_var.copy_(torch.rand(n, generator=g) * 0.5 + 0.75)
                if m.affine:
                    m.bias.copy_(torch.randn(n, generator=g) * 0.05)
                    if m.weight.requires_grad:
                        m.weight.copy_(torch.rand(n, generator=g) * 0.5 + 0.75)
    for p in model.parameters():
        p.requires_grad_(False)  # as load_fr_model leaves them
    return model.eval()


@pytest.fixture(scope="module")
def images():
    torch.manual_seed(0)
    return torch.rand(3, 3, 112, 112) * 2 - 1


def single_image_reference(network, image):
    """The definition for ONE image, as the authors compute it: statistics over dims [0, 2, 3] of
    a batch of one, nn.MSELoss against the running statistics, averaged over the layers,
    gradient with respect to the image. Out: Σ|grad| (positive)."""
    mse = nn.MSELoss()
    losses = []

    def hook(module, inputs, _out):
        x = inputs[0]
        losses.append(mse(x.mean([0, 2, 3]), module.running_mean)
                      + mse(x.var([0, 2, 3], unbiased=False), module.running_var))

    handles = [m.register_forward_hook(hook) for m in network.modules() if isinstance(m, nn.BatchNorm2d)]
    x = image.unsqueeze(0).clone().requires_grad_(True)
    with torch.enable_grad():
        network(x)
        loss = sum(losses) / len(losses)
        (grad,) = torch.autograd.grad(loss, [x])
    for h in handles:
        h.remove()
    return grad.abs().sum().item()


@pytest.mark.parametrize("arch", ["iresnet18", "adaface_ir_18"])
def test_batch_equals_per_image(arch, images):
    net = randomize_bn(create_model(arch, None), seed=1)
    stages, bns = model_parts(as_fr(net, 112, arch))
    batched = grafiqs_batch(net, images, stages, bns)
    for i in range(images.shape[0]):
        single = grafiqs_batch(net, images[i:i + 1], stages, bns)
        for v in VARIANTS:
            a, b = batched[v][i].item(), single[v][0].item()
            assert a < 0 and abs(a - b) <= 1e-5 * abs(b), (arch, v, i, a, b)
    ref = single_image_reference(net, images[0])
    assert -batched["image"][0].item() == pytest.approx(ref, rel=1e-5)


def test_stages_per_family():
    r18 = create_model("iresnet18", None)
    stages, bns = model_parts(as_fr(r18, 112, "iresnet18"))
    assert stages == [r18.layer1, r18.layer2, r18.layer3, r18.layer4]
    assert r18.layout().stages == ("layer1", "layer2", "layer3", "layer4")
    assert len(bns) == 1 + 8 * 3 + 4 + 1  # stem, 3 per block, 4 downsample, bn2
    assert r18.layout().batch_norms == running_batch_norms(r18)
    ada = create_model("adaface_ir_18", None)
    stages, _ = model_parts(as_fr(ada, 112, "adaface_ir_18"))
    assert stages == [ada.body[1], ada.body[3], ada.body[5], ada.body[7]]
    assert ada.layout().stages == ("body.1", "body.3", "body.5", "body.7")


def test_run_method_writes_all_variants_higher_is_better(tmp_path):
    rng = np.random.default_rng(0)
    for i in range(2):
        Image.fromarray(rng.integers(0, 256, (112, 112, 3), dtype=np.uint8)).save(tmp_path / f"{i}.png")
    net = randomize_bn(create_model("iresnet18", None))
    res = run_method("grafiqs", as_fr(net, 112, "iresnet18"), tmp_path, batch_size=2,
                     options={"variant": "block2"})
    assert res.columns == ["quality", *VARIANTS] and len(res.paths) == 2
    assert np.array_equal(res.column("quality"), res.column("block2"))
    assert np.all(res.values < 0)


class FoldedBN(nn.Module):
    """Like dlib's network: batch norms folded into fixed affine layers, no BatchNorm2d."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(4, 2)

    def forward(self, x):
        return self.fc(self.pool(self.conv(x)).flatten(1))

    def layout(self):
        return ModelLayout(why_no_tail="toy", why_no_stages="a toy without stages",
                           why_no_batch_norms="folded into fixed affine layers",
                           why_no_quality_head="toy")


def test_model_without_batchnorm_fails_clearly(tmp_path):
    with pytest.raises(FroqError, match=r"^grafiqs: .*'folded'.*no BatchNorm2d layers with running "
                                        r"statistics \(folded into fixed affine layers\)$"):
        run_method("grafiqs", as_fr(FoldedBN(), 32, "folded"), tmp_path)
    dlib = create_model("dlib_resnet", None)  # the real port: affine layers only
    with pytest.raises(FroqError, match="no BatchNorm2d.*dlib folds its batch norms"):
        run_method("grafiqs", as_fr(dlib, 150, "dlib_resnet"), tmp_path)
