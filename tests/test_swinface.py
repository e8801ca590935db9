"""SwinFace recognition branch: generated weights in the official key layout (the released
checkpoint's ``state_dict_backbone`` beside the analysis subnets' dicts) load through the FR config
and give a finite 512-D embedding; shifted windows are masked; a wrong checkpoint is one line naming
what is missing / unexpected."""

from __future__ import annotations

import pytest
import torch
import yaml

from conformance.generated_weights import generated_state_dict
from face_recognition_model.loading import load_fr_model
from face_recognition_model.swinface import relative_position_index
from froq.core.errors import FroqError

DEPTHS, HEADS, DIMS, SIZES = (2, 2, 6, 2), (3, 6, 12, 24), (96, 192, 384, 768), (56, 28, 14, 7)


def official_manifest() -> list[tuple[str, tuple[int, ...]]]:
    """(key, shape) of SwinFace's ``state_dict_backbone`` (swin_t, num_features 512), written out
    from the published backbones/swin.py layout (not from our module)."""
    out = [("patch_embed.proj.weight", (96, 3, 2, 2)), ("patch_embed.proj.bias", (96,)),
           ("patch_embed.norm.weight", (96,)), ("patch_embed.norm.bias", (96,))]
    for i, (depth, heads, dim, size) in enumerate(zip(DEPTHS, HEADS, DIMS, SIZES)):
        for j in range(depth):
            p = f"layers.{i}.blocks.{j}"
            if j % 2 == 1 and size > 7:  # shifted windows: the mask buffer (windows, 49, 49)
                out.append((f"{p}.attn_mask", ((size // 7) ** 2, 49, 49)))
            out += [(f"{p}.norm1.weight", (dim,)), (f"{p}.norm1.bias", (dim,)),
                    (f"{p}.attn.relative_position_bias_table", (169, heads)),
                    (f"{p}.attn.relative_position_index", (49, 49)),
                    (f"{p}.attn.qkv.weight", (3 * dim, dim)), (f"{p}.attn.qkv.bias", (3 * dim,)),
                    (f"{p}.attn.proj.weight", (dim, dim)), (f"{p}.attn.proj.bias", (dim,)),
                    (f"{p}.norm2.weight", (dim,)), (f"{p}.norm2.bias", (dim,)),
                    (f"{p}.mlp.fc1.weight", (4 * dim, dim)), (f"{p}.mlp.fc1.bias", (4 * dim,)),
                    (f"{p}.mlp.fc2.weight", (dim, 4 * dim)), (f"{p}.mlp.fc2.bias", (dim,))]
        if i < 3:
            out += [(f"layers.{i}.downsample.reduction.weight", (2 * dim, 4 * dim)),
                    (f"layers.{i}.downsample.norm.weight", (4 * dim,)),
                    (f"layers.{i}.downsample.norm.bias", (4 * dim,))]
    out += [("norm.weight", (768,)), ("norm.bias", (768,)), ("head.weight", (512, 768)), ("head.bias", (512,))]
    for k, c in (("feature.0", None), ("feature.1", 768), ("feature.2", None), ("feature.3", 512)):
        if c is None:
            out.append((f"{k}.weight", (768, 768) if k == "feature.0" else (512, 768)))
        else:
            out += [(f"{k}.weight", (c,)), (f"{k}.bias", (c,)), (f"{k}.running_mean", (c,)),
                    (f"{k}.running_var", (c,)), (f"{k}.num_batches_tracked", ())]
    return out


def official_state() -> dict:
    """Generated tensors; the two index/mask buffers get their real values (the official code
    computes them; a random table index would point outside the bias table)."""
    state = generated_state_dict(official_manifest())
    for key in state:
        if key.endswith("relative_position_index"):
            state[key] = relative_position_index(7)
        elif key.endswith("attn_mask"):
            state[key] = torch.zeros_like(state[key])
    return state


def _config(tmp_path, weights):
    path = tmp_path / "swinface.yaml"
    path.write_text(yaml.safe_dump({"model": {"arch": "swinface", "weights": str(weights)},
                                    "preprocess": {"size": 112, "mean": 0.5, "std": 0.5}}))
    return path


def test_released_checkpoint_layout_loads_and_embeds(tmp_path):
    torch.set_num_threads(1)
    state = official_state()
    # the release: one file with the backbone and the analysis subnets' state dicts
    torch.save({"state_dict_backbone": state, "state_dict_fam": {"nets.0.norm.weight": torch.ones(512)},
                "state_dict_tss": {}, "state_dict_om": {}}, tmp_path / "checkpoint_step_79999_gpu_0.pt")
    fr = load_fr_model(_config(tmp_path, tmp_path / "checkpoint_step_79999_gpu_0.pt"))
    ours = fr.network.state_dict()
    assert sorted(ours) == sorted(k for k, _ in official_manifest())
    assert torch.equal(ours["layers.2.blocks.5.attn.qkv.weight"], state["layers.2.blocks.5.attn.qkv.weight"])
    emb = fr.embed(torch.rand(2, 3, 112, 112) * 2 - 1)
    assert emb.shape == (2, 512) and torch.isfinite(emb).all()
    assert not torch.allclose(emb[0], emb[1])
    assert fr.layout().tail.capture == "feature" and not fr.layout().has("batch_norms")


def test_shift_mask_and_index_match_the_swin_rule():
    from face_recognition_model.swinface import SwinFaceRecognition
    net = SwinFaceRecognition()
    idx = net.layers[0].blocks[0].attn.relative_position_index
    assert idx.shape == (49, 49) and idx.min() == 0 and idx.max() == 168 and idx[0, 0] == 84
    assert idx[1, 0] == 85 and idx[7, 0] == 97  # (dy + 6)·13 + (dx + 6): token 1 is one step right, 7 one down
    mask = net.layers[0].blocks[1].attn_mask
    assert mask.shape == (64, 49, 49)
    assert mask[0].abs().sum() == 0 and mask[-1].min() == -100  # top-left window free; last one split
    assert net.layers[3].blocks[1].attn_mask is None  # 7x7 map = one window: no shift


def test_wrong_checkpoint_is_one_line(tmp_path):
    state = official_state()
    state.pop("feature.3.running_var")
    state["fc.weight"] = torch.zeros(512, 768)
    torch.save({"state_dict_backbone": state}, tmp_path / "bad.pt")
    with pytest.raises(FroqError) as err:
        load_fr_model(_config(tmp_path, tmp_path / "bad.pt"))
    msg = str(err.value)
    assert "\n" not in msg and "1 missing (e.g. feature.3.running_var)" in msg
    assert "1 unexpected (e.g. fc.weight)" in msg and "SwinFace" in msg
    torch.save({"state_dict_fam": {}, "state_dict_om": {}}, tmp_path / "nobackbone.pt")
    with pytest.raises(FroqError, match="without 'state_dict_backbone'"):
        load_fr_model(_config(tmp_path, tmp_path / "nobackbone.pt"))
