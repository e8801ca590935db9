"""iResNet / CR-FIQA backbones: arcface_torch layout, checkpoint loading, clear mismatch errors."""

from __future__ import annotations

import pytest
import torch

from face_recognition_model import create_model, load_fr_model
from face_recognition_model.iresnet import CRFIQAIResNet, IResNet, STAGE_LAYERS, build_crfiqa_iresnet
from froq.core.errors import FroqError


def meta_model(depth: int, cls=IResNet) -> torch.nn.Module:
    """Architecture only (no memory, instant) for layout checks."""
    with torch.device("meta"):
        return cls(STAGE_LAYERS[depth])


def randomize_bn(model: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """Give every BatchNorm realistic, non-trivial running statistics and affine parameters."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, (torch.nn.BatchNorm2d, torch.nn.BatchNorm1d)):
                n = m.num_features
                m.running_mean.copy_(torch.randn(n, generator=g) * 0.1)
                m.running_var.copy_(torch.rand(n, generator=g) * 0.5 + 0.75)
                if m.affine and m.weight.requires_grad:
                    m.weight.copy_(torch.rand(n, generator=g) * 0.5 + 0.75)
                if m.affine:
                    m.bias.copy_(torch.randn(n, generator=g) * 0.05)
    return model.eval()


# Facts of arcface_torch's backbones/iresnet.py: per IBasicBlock bn1(5 state keys) conv1(1) bn2(5)
# prelu(1) conv2(1) bn3(5) = 18 keys, +6 for the downsample (1x1 conv + BN) of each stage's first
# block; stem conv1+bn1+prelu = 7; tail bn2(5) + fc(2) + features(5) = 12.
@pytest.mark.parametrize("depth", [18, 34, 50, 100, 200])
def test_state_dict_key_count_matches_arcface_layout(depth):
    blocks = sum(STAGE_LAYERS[depth])
    expected = 18 * blocks + 4 * 6 + 7 + 12
    assert len(meta_model(depth).state_dict()) == expected


def test_stage_depths_are_arcface_torch():
    assert STAGE_LAYERS == {18: (2, 2, 2, 2), 34: (3, 4, 6, 3), 50: (3, 4, 14, 3),
                            100: (3, 13, 30, 3), 200: (6, 26, 60, 6)}


def test_named_modules_order_and_names():
    names = [n for n, _ in meta_model(18).named_modules()][1:]
    assert names[:15] == ["conv1", "bn1", "prelu", "layer1", "layer1.0", "layer1.0.bn1",
                          "layer1.0.conv1", "layer1.0.bn2", "layer1.0.prelu", "layer1.0.conv2",
                          "layer1.0.bn3", "layer1.0.downsample", "layer1.0.downsample.0",
                          "layer1.0.downsample.1", "layer1.1"]
    # second block of a stage has no downsample
    i = names.index("layer1.1")
    assert names[i + 1:i + 8] == ["layer1.1.bn1", "layer1.1.conv1", "layer1.1.bn2", "layer1.1.prelu",
                                  "layer1.1.conv2", "layer1.1.bn3", "layer2"]
    assert names[-4:] == ["bn2", "dropout", "fc", "features"]
    assert len(names) == 79  # 3 stem + 4 stages*(1 + 2 blocks*7 + 3 downsample) + 4 tail


def test_key_shapes_iresnet50_and_100():
    sd50 = meta_model(50).state_dict()
    expected = {
        "conv1.weight": (64, 3, 3, 3),
        "prelu.weight": (64,),
        "layer1.0.bn1.running_var": (64,),
        "layer1.0.conv1.weight": (64, 64, 3, 3),
        "layer1.0.downsample.0.weight": (64, 64, 1, 1),
        "layer2.0.bn1.weight": (64,),
        "layer2.0.conv1.weight": (128, 64, 3, 3),
        "layer2.0.downsample.0.weight": (128, 64, 1, 1),
        "layer3.13.bn3.bias": (256,),
        "layer4.2.conv2.weight": (512, 512, 3, 3),
        "bn2.running_mean": (512,),
        "fc.weight": (512, 512 * 7 * 7),
        "fc.bias": (512,),
        "features.weight": (512,),
        "features.num_batches_tracked": (),
    }
    for key, shape in expected.items():
        assert tuple(sd50[key].shape) == shape, key
    assert "layer3.14.bn1.weight" not in sd50 and "layer1.1.downsample.0.weight" not in sd50
    assert list(sd50)[-5:] == ["features.weight", "features.bias", "features.running_mean",
                               "features.running_var", "features.num_batches_tracked"]
    sd100 = meta_model(100).state_dict()
    assert tuple(sd100["layer3.29.prelu.weight"].shape) == (256,)
    assert "layer3.30.bn1.weight" not in sd100 and "layer2.12.bn1.weight" in sd100
    params = sum(v.numel() for k, v in sd100.items() if "running" not in k and "num_batches" not in k)
    assert 65.1e6 < params < 65.2e6  # insightface lists R100 at 65.2M parameters


def test_features_bn_weight_is_fixed_and_eps():
    m = create_model("iresnet18", None)
    assert not m.features.weight.requires_grad and torch.all(m.features.weight == 1)
    assert all(b.eps == 1e-05 for b in m.modules() if isinstance(b, torch.nn.modules.batchnorm._BatchNorm))
    assert m.dropout.p == 0.0


def test_forward_returns_unnormalised_512d():
    m = randomize_bn(create_model("iresnet18", None))
    with torch.no_grad():
        out = m(torch.randn(2, 3, 112, 112))
    assert out.shape == (2, 512) and torch.isfinite(out).all()
    assert not torch.allclose(out.norm(dim=1), torch.ones(2), atol=1e-2)


def test_backbone_pth_roundtrip(tmp_path):
    torch.manual_seed(0)
    src = randomize_bn(create_model("iresnet18", None))
    path = tmp_path / "backbone.pth"
    torch.save(src.state_dict(), path)
    loaded = create_model("iresnet18", str(path))
    x = torch.randn(2, 3, 112, 112)
    with torch.no_grad():
        assert torch.equal(src(x), loaded(x))
    # through an FR config as well
    cfg = tmp_path / "fr.yaml"
    cfg.write_text(f"model: {{arch: iresnet18, weights: {path}}}\n"
                   "preprocess: {size: 112, mean: 0.5, std: 0.5, channels: [0, 1, 2]}\n")
    fr = load_fr_model(cfg)
    assert fr.arch == "iresnet18" and fr.weights_sha256 and len(fr.weights_sha256) == 64
    with torch.no_grad():
        assert torch.equal(fr.embed(x), src(x))


def test_dataparallel_prefix_is_removed(tmp_path):
    src = randomize_bn(create_model("iresnet18", None))
    path = tmp_path / "dp_backbone.pth"
    torch.save({"module." + k: v for k, v in src.state_dict().items()}, path)
    loaded = create_model("iresnet18", str(path))
    assert torch.equal(loaded.fc.weight, src.fc.weight)


def test_mismatched_checkpoint_names_keys(tmp_path):
    sd = create_model("iresnet18", None).state_dict()
    path = tmp_path / "r18.pth"
    torch.save(sd, path)
    with pytest.raises(FroqError) as err:
        create_model("iresnet34", str(path))
    msg = str(err.value)
    assert str(path) in msg and "missing" in msg and "layer1.2." in msg
    bad = dict(sd)
    bad["fc.weight"] = torch.zeros(512, 100)
    bad["extra.weight"] = torch.zeros(3)
    path2 = tmp_path / "bad.pth"
    torch.save(bad, path2)
    with pytest.raises(FroqError) as err:
        create_model("iresnet18", str(path2))
    assert "fc.weight (512, 100)" in str(err.value) and "extra.weight" in str(err.value)
    with pytest.raises(FroqError, match="not found"):
        create_model("iresnet18", str(tmp_path / "nope.pth"))


# CR-FIQA (fdbtrs/CR-FIQA backbones/iresnet.py): IResNet(..., qs=1) adds self.qs = Linear(512, 1)
# after `features`, registered last; the released *backbone.pth is that module's state dict.
def test_crfiqa_key_layout():
    plain = list(meta_model(50).state_dict())
    sd = meta_model(50, CRFIQAIResNet).state_dict()
    assert list(sd) == plain + ["qs.weight", "qs.bias"]
    assert tuple(sd["qs.weight"].shape) == (1, 512) and tuple(sd["qs.bias"].shape) == (1,)
    assert len(meta_model(100, CRFIQAIResNet).state_dict()) == 925 + 2


def test_crfiqa_generated_weights_load_and_quality(tmp_path):
    # the registry's crfiqa_iresnet50/100 use the same loader; depth 18 keeps the test light
    torch.manual_seed(1)
    src = randomize_bn(CRFIQAIResNet(STAGE_LAYERS[18]))
    path = tmp_path / "32572backbone.pth"
    torch.save(src.state_dict(), path)
    m = build_crfiqa_iresnet(18, str(path))
    x = torch.randn(2, 3, 112, 112)
    with torch.no_grad():
        emb, q = m.embed_and_quality(x)
        assert torch.equal(emb, m(x)) and torch.equal(emb, src(x))
        assert q.shape == (2,)
        assert torch.allclose(q, emb @ src.qs.weight[0] + src.qs.bias[0], atol=1e-5)
    # an ArcFace backbone.pth has no quality unit: the error names it
    plain = tmp_path / "arcface.pth"
    torch.save({k: v for k, v in src.state_dict().items() if not k.startswith("qs.")}, plain)
    with pytest.raises(FroqError, match="qs.weight"):
        build_crfiqa_iresnet(18, str(plain))
    assert isinstance(create_model("crfiqa_iresnet50", None), CRFIQAIResNet)
