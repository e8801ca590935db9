"""CurricularFace IR-101: generated weights in each official key layout (TFace ``IR_101`` and the
CVPR 2020 release's ``CurricularFace_Backbone.pth``, both plain state dicts) load through the FR
config and give a finite 512-D embedding; the layout is read from the keys; a wrong checkpoint is
one line naming what is missing / unexpected."""

from __future__ import annotations

import pytest
import torch
import yaml

from conformance.generated_weights import generated_state_dict
from face_recognition_model.loading import load_fr_model
from froq.core.errors import FroqError

# IR-101 = num_layers 100: (in, out, units) per stage; every stage starts with a stride-2 unit
STAGES = [(64, 64, 3), (64, 128, 13), (128, 256, 30), (256, 512, 3)]


def _bn(prefix: str, c: int) -> list:
    return [(f"{prefix}.weight", (c,)), (f"{prefix}.bias", (c,)), (f"{prefix}.running_mean", (c,)),
            (f"{prefix}.running_var", (c,)), (f"{prefix}.num_batches_tracked", ())]


def official_manifest(variant: str) -> list[tuple[str, tuple[int, ...]]]:
    """(key, shape) of the official state dict, in its order, written out from the published
    model_irse.py layouts (not from our module): input_layer, output_layer, then body."""
    out = [("input_layer.0.weight", (64, 3, 3, 3)), *_bn("input_layer.1", 64), ("input_layer.2.weight", (64,))]
    out += [*_bn("output_layer.0", 512), ("output_layer.3.weight", (512, 512 * 7 * 7)),
            ("output_layer.3.bias", (512,)), ("output_layer.4.running_mean", (512,)),
            ("output_layer.4.running_var", (512,)), ("output_layer.4.num_batches_tracked", ())]
    unit = 0
    for cin, cout, count in STAGES:
        for i in range(count):
            c_in = cin if i == 0 else cout
            p = f"body.{unit}"
            if c_in != cout:  # projection shortcut; equal widths use MaxPool2d(1, stride): no keys
                out += [(f"{p}.shortcut_layer.0.weight", (cout, c_in, 1, 1)), *_bn(f"{p}.shortcut_layer.1", cout)]
            out += _bn(f"{p}.res_layer.0", c_in) + [(f"{p}.res_layer.1.weight", (cout, c_in, 3, 3))]
            if variant == "tface":  # BN, conv, BN, PReLU, conv, BN
                out += _bn(f"{p}.res_layer.2", cout) + [(f"{p}.res_layer.3.weight", (cout,)),
                                                         (f"{p}.res_layer.4.weight", (cout, cout, 3, 3))]
                out += _bn(f"{p}.res_layer.5", cout)
            else:  # cvpr2020: BN, conv, PReLU, conv, BN
                out += [(f"{p}.res_layer.2.weight", (cout,)), (f"{p}.res_layer.3.weight", (cout, cout, 3, 3))]
                out += _bn(f"{p}.res_layer.4", cout)
            unit += 1
    return out


def _config(tmp_path, weights, variant="auto"):
    path = tmp_path / f"cf_{variant}.yaml"
    path.write_text(yaml.safe_dump({"model": {"arch": "curricularface_ir101", "weights": str(weights),
                                              "kwargs": {"variant": variant}},
                                    "preprocess": {"size": 112, "mean": 0.5, "std": 0.5}}))
    return path


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    """variant -> (state dict, its file saved as the release: a plain state dict), generated once
    per module (65 M parameters each; the tests never modify the returned dict)."""
    made = {}

    def get(variant: str):
        if variant not in made:
            state = generated_state_dict(official_manifest(variant))
            path = tmp_path_factory.mktemp(variant) / "CurricularFace_Backbone.pth"
            torch.save(state, path)
            made[variant] = (state, path)
        return made[variant]
    return get


@pytest.mark.parametrize("variant", ["tface", "cvpr2020"])
def test_official_layout_loads_and_embeds(tmp_path, variant, checkpoint):
    torch.set_num_threads(1)
    state, path = checkpoint(variant)
    fr = load_fr_model(_config(tmp_path, path))
    net = fr.network
    assert net.variant == variant  # read from the keys
    assert list(net.state_dict()) == [k for k, _ in official_manifest(variant)]  # same order too
    assert torch.equal(net.state_dict()["output_layer.3.weight"], state["output_layer.3.weight"])
    emb = fr.embed(torch.rand(1, 3, 112, 112) * 2 - 1)
    assert emb.shape == (1, 512) and torch.isfinite(emb).all()
    layout = fr.layout()
    assert layout.tail.capture == "output_layer.1" and layout.tail.dropout_p == pytest.approx(0.4)
    assert layout.stages == ("body.2", "body.15", "body.45", "body.48")


def test_wrong_checkpoint_is_one_line(tmp_path, checkpoint):
    release, v2020 = checkpoint("cvpr2020")
    state = dict(release)  # a shallow copy: the shared dict stays as released
    state.pop("output_layer.3.bias")
    state["head.kernel"] = torch.zeros(512, 10)
    torch.save(state, tmp_path / "bad.pth")
    with pytest.raises(FroqError) as err:
        load_fr_model(_config(tmp_path, tmp_path / "bad.pth"))
    msg = str(err.value)
    assert "\n" not in msg and "1 missing (e.g. output_layer.3.bias)" in msg
    assert "1 unexpected (e.g. head.kernel)" in msg and "CurricularFace IR-101" in msg
    # a forced layout that the file does not have: names the layout's keys that are missing
    with pytest.raises(FroqError, match=r"missing \(e\.g\. body\.0\.res_layer\.2\.bias.*tface layout"):
        load_fr_model(_config(tmp_path, v2020, variant="tface"))
