"""AdaFace IR / IR-SE backbones: layout against the official reference, checkpoint loading, errors.

The reference (``shared/reference/adaface``) lists, for each official checkpoint, every state-dict
key (``model.`` prefix as stored in the Lightning ``.ckpt``) with its shape, and the
``named_modules()`` order of the official network. Our networks must match them exactly so that
official checkpoints load unchanged and observer layer names mean the same thing.
"""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
import yaml

from conftest import REPO, shared_path
from face_recognition_model import create_model, load_fr_model
from face_recognition_model.adaface import AdaFaceBackbone
from conformance.generated_weights import (generated_state_dict, read_manifest,
                                           write_generated_checkpoint)
from froq.core.errors import FroqError

# reference file stem -> (depth, SE)
REFERENCE_ARCHS = {"ir_18": (18, False), "ir_34": (34, False), "ir_50": (50, False),
                   "ir_101": (101, False), "ir_se_50": (50, True)}


def meta_model(depth: int, se: bool = False) -> AdaFaceBackbone:
    """Architecture only, on the meta device (no memory, no init time)."""
    with torch.device("meta"):
        return AdaFaceBackbone(depth, se=se)


def reference_modules(arch: str) -> list[str]:
    """``<arch>.modules.txt``: one module name per line, root excluded, file order."""
    text = shared_path("reference", "adaface", f"{arch}.modules.txt").read_text(encoding="utf-8")
    return [line for line in text.splitlines() if line.strip()]


def reference_state(arch: str) -> list[tuple[str, tuple[int, ...]]]:
    """``<arch>.state_dict.tsv`` parsed independently of ``generated_weights.read_manifest``:
    ``key<TAB>shape``, ``#`` header, shapes like ``64x3x3x3``, ``scalar`` for 0-d tensors."""
    path = shared_path("reference", "adaface", f"{arch}.state_dict.tsv")
    out = []
    for line in path.read_text(encoding="utf-8").splitlines():
        if not line.strip() or line.startswith("#"):
            continue
        key, shape = line.split("\t")
        out.append((key, () if shape == "scalar" else tuple(int(d) for d in shape.split("x"))))
    return out


# ---------------------------------------------------------------------------------------------
# layout vs the official reference
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("arch", sorted(REFERENCE_ARCHS))
def test_named_modules_equal_official_order(arch):
    ref = reference_modules(arch)
    ours = [name for name, _ in meta_model(*REFERENCE_ARCHS[arch]).named_modules() if name]
    assert len(ours) == len(ref)
    first_diff = next((i for i, (a, b) in enumerate(zip(ours, ref)) if a != b), None)
    assert first_diff is None, f"first difference at {first_diff}: {ours[first_diff]} vs {ref[first_diff]}"
    # the quirk the spec points out: output_layer is registered before body
    assert ours.index("output_layer") < ours.index("body")


@pytest.mark.parametrize("arch", sorted(REFERENCE_ARCHS))
def test_state_dict_keys_and_shapes_equal_official(arch):
    ref = reference_state(arch)
    ours = [("model." + k, tuple(v.shape)) for k, v in meta_model(*REFERENCE_ARCHS[arch]).state_dict().items()]
    assert [k for k, _ in ours] == [k for k, _ in ref]
    bad = [(k, a, b) for (k, a), (_, b) in zip(ours, ref) if a != b]
    assert not bad, f"wrong shapes (first 3): {bad[:3]}"


def test_generated_manifest_reader_agrees_with_reference_parser():
    assert read_manifest(shared_path("reference", "adaface", "ir_se_50.state_dict.tsv")) == \
        reference_state("ir_se_50")


# ---------------------------------------------------------------------------------------------
# loading checkpoints through the registry / FR configs
# ---------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def ir18_ckpt(tmp_path_factory):
    """A generated Lightning-style IR-18 .ckpt with an extra ``head.kernel`` (training head)."""
    manifest = shared_path("reference", "adaface", "ir_18.state_dict.tsv")
    path = tmp_path_factory.mktemp("adaface") / "ir18.ckpt"
    write_generated_checkpoint(manifest, path)
    obj = torch.load(path, map_location="cpu", weights_only=True)
    assert set(obj) == {"state_dict"}
    obj["state_dict"]["head.kernel"] = torch.randn(512, 7)  # AdaFace head: (512, classes)
    torch.save(obj, path)
    expected = generated_state_dict(read_manifest(manifest))
    return path, expected


def assert_state_equal(network: torch.nn.Module, expected: dict[str, torch.Tensor]) -> None:
    state = network.state_dict()
    assert list(state) == [k[len("model."):] for k in expected]
    for key, value in expected.items():
        got = state[key[len("model."):]]
        assert got.dtype == value.dtype, key
        assert torch.equal(got, value), key


def write_fr_config(path: Path, weights: str, arch: str = "adaface_ir_18") -> Path:
    path.write_text(yaml.safe_dump({
        "model": {"arch": arch, "weights": weights,
                  "source": "https://example.org/official-weights"},
        "preprocess": {"size": 112, "mean": 0.5, "std": 0.5, "channels": [2, 0, 1]}}))
    return path


def test_lightning_checkpoint_loads_and_head_is_ignored(ir18_ckpt, tmp_path):
    path, expected = ir18_ckpt
    network = create_model("adaface_ir_18", str(path))
    assert not network.training
    assert_state_equal(network, expected)
    assert not any("head" in k for k in network.state_dict())

    fr = load_fr_model(write_fr_config(tmp_path / "fr.yaml", str(path)))
    assert fr.arch == "adaface_ir_18" and fr.weights == str(path)
    assert fr.weights_sha256 and len(fr.weights_sha256) == 64
    assert fr.preprocess.channels == (2, 0, 1)
    assert_state_equal(fr.network, expected)
    with torch.no_grad():
        out = fr.network(torch.randn(2, 3, 112, 112, generator=torch.Generator().manual_seed(0)))
    assert out.shape == (2, 512) and torch.isfinite(out).all()


def test_plain_state_dict_without_prefix_loads(ir18_ckpt, tmp_path):
    path, expected = ir18_ckpt
    plain = {k[len("model."):]: v for k, v in expected.items()}
    target = tmp_path / "plain.pth"
    torch.save(plain, target)
    assert_state_equal(create_model("adaface_ir_18", str(target)), expected)


def test_relative_weights_resolve_against_config_folder(ir18_ckpt, tmp_path, monkeypatch):
    path, expected = ir18_ckpt
    (tmp_path / "cfg" / "w").mkdir(parents=True)
    (tmp_path / "cfg" / "w" / "ir18.ckpt").write_bytes(path.read_bytes())
    cfg = write_fr_config(tmp_path / "cfg" / "fr.yaml", "w/ir18.ckpt")
    monkeypatch.chdir(tmp_path)  # not the config's folder
    assert_state_equal(load_fr_model(cfg).network, expected)


def _mutated(expected, tmp_path, drop=(), reshape=None, name="bad.ckpt") -> Path:
    state = {k: v for k, v in expected.items() if k not in drop}
    if reshape:
        key, shape = reshape
        state[key] = torch.zeros(shape)
    target = tmp_path / name
    torch.save({"state_dict": state}, target)
    return target


def test_wrong_shape_names_the_key(ir18_ckpt, tmp_path):
    _, expected = ir18_ckpt
    bad = _mutated(expected, tmp_path, reshape=("model.body.2.res_layer.1.weight", (128, 64, 1, 1)))
    with pytest.raises(FroqError) as err:
        create_model("adaface_ir_18", str(bad))
    msg = str(err.value)
    assert "\n" not in msg and str(bad) in msg
    assert "body.2.res_layer.1.weight" in msg and "wrong shape" in msg
    assert "(128, 64, 1, 1)" in msg and "(128, 64, 3, 3)" in msg


def test_missing_keys_name_the_first_ones(ir18_ckpt, tmp_path):
    _, expected = ir18_ckpt
    dropped = ["model.body.5.res_layer.4.weight", "model.output_layer.3.weight",
               "model.input_layer.1.running_var", "model.body.7.res_layer.0.bias"]
    bad = _mutated(expected, tmp_path, drop=dropped)
    with pytest.raises(FroqError) as err:
        create_model("adaface_ir_18", str(bad))
    msg = str(err.value)
    assert "\n" not in msg and str(bad) in msg and "4 missing" in msg
    # the first three in module order (output_layer is registered before body)
    for key in ("input_layer.1.running_var", "output_layer.3.weight", "body.5.res_layer.4.weight"):
        assert key in msg
    assert "body.7.res_layer.0.bias" not in msg


def test_unexpected_keys_are_reported(ir18_ckpt, tmp_path):
    _, expected = ir18_ckpt
    state = dict(expected)
    state["model.body.8.res_layer.0.weight"] = torch.ones(512)
    bad = tmp_path / "extra.ckpt"
    torch.save({"state_dict": state}, bad)
    with pytest.raises(FroqError, match=r"1 unexpected .*body\.8\.res_layer\.0\.weight"):
        create_model("adaface_ir_18", str(bad))


def test_other_architecture_checkpoint_is_refused(ir18_ckpt):
    path, _ = ir18_ckpt
    with pytest.raises(FroqError, match="does not match the architecture"):
        create_model("adaface_ir_34", str(path))


def test_pickled_objects_are_not_unpickled(tmp_path):
    target = tmp_path / "evil.ckpt"
    torch.save({"state_dict": {"x": torch.ones(1)}, "obj": Path("x")}, target)
    with pytest.raises(FroqError, match="weights_only=True"):
        create_model("adaface_ir_18", str(target))


def test_missing_weights_via_shipped_fr_config_is_one_line(tmp_path, monkeypatch):
    cfg = REPO / "configs" / "fr" / "adaface_ir18.yaml"
    source = yaml.safe_load(cfg.read_text())["model"]["source"]
    weights = yaml.safe_load(cfg.read_text())["model"]["weights"]
    assert "github.com/mk-minchul/AdaFace" in source
    monkeypatch.chdir(tmp_path)  # make sure no weights/ folder of a developer is found
    with pytest.raises(FroqError) as err:
        load_fr_model(cfg)
    msg = str(err.value)
    assert "\n" not in msg
    assert weights in msg and source in msg and str(cfg) in msg


def test_missing_weights_file_via_registry_says_where_to_get_them(tmp_path):
    with pytest.raises(FroqError) as err:
        create_model("adaface_ir_50", str(tmp_path / "nope.ckpt"))
    msg = str(err.value)
    assert "\n" not in msg and "nope.ckpt" in msg and "github.com/mk-minchul/AdaFace" in msg


# ---------------------------------------------------------------------------------------------
# architectures without a reference file: IR-152 / IR-200 (bottleneck units), IR-SE-101
# ---------------------------------------------------------------------------------------------
def se_keys_like_reference(plain: list[tuple[str, tuple]]) -> list[tuple[str, tuple]]:
    """IR → IR-SE key list: after each block's ``res_layer.5`` BN, ``se_block.fc1/fc2`` weights
    (depth/16 reduction). The rule is checked on the IR-50 / IR-SE-50 reference pair first."""
    out = []
    for key, shape in plain:
        out.append((key, shape))
        if key.endswith(".res_layer.5.num_batches_tracked"):
            prefix = key[: -len("5.num_batches_tracked")]
            depth = dict(plain)[prefix + "5.weight"][0]
            out.append((prefix + "se_block.fc1.weight", (depth // 16, depth, 1, 1)))
            out.append((prefix + "se_block.fc2.weight", (depth, depth // 16, 1, 1)))
    return out


def test_ir_se_101_is_ir_101_plus_se_gates():
    assert se_keys_like_reference(reference_state("ir_50")) == reference_state("ir_se_50")
    expected = se_keys_like_reference(reference_state("ir_101"))
    model = meta_model(101, se=True)
    assert [("model." + k, tuple(v.shape)) for k, v in model.state_dict().items()] == expected
    names = [n for n, _ in model.named_modules() if n]
    units = len(model.body)
    assert units == 3 + 13 + 30 + 3
    assert len(names) == len(reference_modules("ir_101")) + 6 * units  # se_block + its 5 children


def bottleneck_param_count(stages: list[int]) -> int:
    """Parameters of AdaFace IR-152/200 from the architecture's facts: stem conv3×3(3→64)+BN+PReLU;
    bottleneck units BN(in) 1×1(in→d/4) BN PReLU 3×3(d/4) BN PReLU 1×1(d/4→d, stride) BN(d) with
    a 1×1 conv + BN shortcut when channels change; output BN2d(2048) Linear(2048·7·7→512)
    BN1d(affine=False)."""
    total = 3 * 64 * 9 + 2 * 64 + 64
    channels = [64, 256, 512, 1024, 2048]
    for stage, count in enumerate(stages):
        for i in range(count):
            c_in = channels[stage] if i == 0 else channels[stage + 1]
            d = channels[stage + 1]
            m = d // 4
            total += 2 * c_in + c_in * m + 2 * m + m + 9 * m * m + 2 * m + m + m * d + 2 * d
            if c_in != d:
                total += c_in * d + 2 * d
    return total + 2 * 2048 + 2048 * 49 * 512 + 512


@pytest.mark.parametrize("depth,stages", [(152, [3, 8, 36, 3]), (200, [3, 24, 36, 3])])
def test_bottleneck_nets_build_with_plausible_state_dicts(depth, stages):
    model = meta_model(depth)
    state = model.state_dict()
    units = sum(stages)
    # 25 keys per unit (4 BN × 5, 3 convs, 2 PReLU), +6 for the 4 projection shortcuts,
    # stem 7, output BN2d 5 + Linear 2 + BN1d(affine=False) 3
    assert len(state) == 25 * units + 4 * 6 + 7 + 10
    assert sum(p.numel() for p in model.parameters()) == bottleneck_param_count(stages)
    assert state["output_layer.3.weight"].shape == (512, 2048 * 7 * 7)
    assert state["body.0.shortcut_layer.0.weight"].shape == (256, 64, 1, 1)
    assert state["body.0.res_layer.4.weight"].shape == (64, 64, 3, 3)
    assert model.stage_ends == [sum(stages[:i + 1]) - 1 for i in range(4)]
    # a stage's first unit projects (1×1 conv + BN); the others keep the size (identity shortcut)
    assert state[f"body.{stages[0]}.shortcut_layer.0.weight"].shape == (512, 256, 1, 1)
    assert not any(k.startswith("body.1.shortcut_layer") for k in state)


@pytest.mark.parametrize("arch", ["adaface_ir_152", "adaface_ir_200", "adaface_ir_se_101"])
def test_registry_nets_wire_up_to_a_512_embedding(arch):
    """Whole-net forward on the meta device: checks every shape on the way, costs nothing."""
    with torch.device("meta"):
        net = create_model(arch, None)
        out = net(torch.empty(2, 3, 112, 112))
    assert not net.training
    assert out.shape == (2, 512)


@pytest.mark.parametrize("se", [False, True])
def test_bottleneck_and_se_units_run(se):
    """A real forward of single units (the big nets' building blocks), random weights."""
    from face_recognition_model.adaface import BasicBlockIR, BottleneckIR
    torch.manual_seed(0)
    x = torch.randn(2, 64, 28, 28)
    for unit, depth in ((BottleneckIR, 256), (BasicBlockIR, 128)):
        block = unit(64, depth, 2, se=se).eval()
        with torch.no_grad():
            y = block(x)
        assert y.shape == (2, depth, 14, 14) and torch.isfinite(y).all()
        assert hasattr(block.res_layer, "se_block") == se
