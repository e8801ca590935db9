"""SER-FIQ: the formula (hand-computed), p = 0 → maximum quality, dropout masks, seeding, the
families' declared tails."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

from face_recognition_model import create_model
from face_recognition_model.layout import EmbeddingTail, ModelLayout
from froq.core.errors import FroqError
from methods import run_method
from methods.serfiq import find_tail, serfiq_quality, stochastic_embeddings
from stage_helpers import as_fr


def write_faces(folder, n, size, seed=0):
    """``n`` random RGB PNGs of ``size`` (two in a sub-folder) — stand-ins for aligned faces."""
    rng = np.random.default_rng(seed)
    paths = []
    for i in range(n):
        rel = f"id{i % 2}/img{i}.png"
        (folder / rel).parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8)).save(folder / rel)
        paths.append(rel)
    return sorted(paths)


class PoolFc(nn.Module):
    """dlib-style head without dropout: conv → ``pool`` (global average) → ``fc``."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, stride=2)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(8, 4, bias=False)

    def forward(self, x):
        return self.fc(self.pool(self.conv(x)).flatten(1))

    def layout(self):
        return ModelLayout(tail=EmbeddingTail("fc", None, self.fc), why_no_stages="toy",
                           why_no_batch_norms="toy", why_no_quality_head="toy")


def test_formula_hand_computed():
    # m = 3 embeddings (1,0), (0,1), (2,0) → unit vectors (1,0), (0,1), (1,0):
    # distances d12 = √2, d13 = 0, d23 = √2, Σ_{i<j} = 2√2.
    # paper: q = 2σ(−(2/9)·2√2) = 2/(1+e^{4√2/9}) = 0.6956836...
    # pairs: q = 2σ(−(2√2)/3)   = 2/(1+e^{2√2/3}) = 0.5606665...
    emb = torch.tensor([[[1.0, 0.0], [0.0, 1.0], [2.0, 0.0]]])
    assert serfiq_quality(emb, "paper").item() == pytest.approx(0.6956836139576973, abs=1e-12)
    assert serfiq_quality(emb, "pairs").item() == pytest.approx(0.560666557303818, abs=1e-12)
    # identical directions → 2σ(0) = 1; opposite pair (m=2, d=2) → 2σ(−(2/4)·2) = 2σ(−1)
    same = torch.tensor([[[3.0, 4.0], [1.5, 2.0]]])
    assert serfiq_quality(same).item() == 1.0
    opposite = torch.tensor([[[1.0, 0.0], [-5.0, 0.0]]])
    assert serfiq_quality(opposite).item() == pytest.approx(2 / (1 + math.e), abs=1e-12)
    # batched: each image independent
    both = torch.cat([emb[:, :2], opposite])
    q = serfiq_quality(both)
    assert q[1].item() == pytest.approx(2 / (1 + math.e), abs=1e-12)


def test_masks_are_inverted_dropout_and_seeded():
    def head(z):
        return z

    z = torch.arange(1, 2001, dtype=torch.float32).view(2, 1000)
    p = 0.3
    e = stochastic_embeddings(head, z, [11, 12], m=50, p=p, rows_per_call=64)
    assert e.shape == (2, 50, 1000)
    ratio = e / z.unsqueeze(1)
    kept = ratio != 0
    assert torch.allclose(ratio[kept], torch.full_like(ratio[kept], 1 / (1 - p)))
    assert abs(1 - kept.float().mean().item() - p) < 0.01
    again = stochastic_embeddings(head, z, [11, 12], m=50, p=p, rows_per_call=7)
    assert torch.equal(e, again)  # independent of how rows are grouped into calls
    other = stochastic_embeddings(head, z, [11, 13], m=50, p=p, rows_per_call=64)
    assert torch.equal(e[0], other[0]) and not torch.equal(e[1], other[1])
    assert not torch.equal(e[0, 0], e[0, 1])  # passes differ


@pytest.mark.parametrize("arch", ["iresnet18", "adaface_ir_18"])
def test_p_zero_gives_maximum_quality(tmp_path, arch):
    write_faces(tmp_path, 3, 112)
    fr = as_fr(create_model(arch, None), 112, arch)
    res = run_method("serfiq", fr, tmp_path, batch_size=2, options={"m": 8, "p": 0.0})
    assert len(res.paths) == 3 and res.columns == ["quality"]
    assert np.all(res.column("quality") == 1.0)


def test_p_zero_on_model_without_dropout(tmp_path):
    paths = write_faces(tmp_path, 4, 32)
    res = run_method("serfiq", as_fr(PoolFc(), 32), tmp_path, batch_size=3, options={"m": 5, "p": 0})
    assert res.paths == paths and np.all(res.column("quality") == 1.0)


def test_tails_of_each_family():
    t = find_tail(as_fr(create_model("iresnet18", None), 112, "iresnet18"))
    assert t.capture == "dropout" and t.dropout_p == 0.0
    t = find_tail(as_fr(create_model("adaface_ir_18", None), 112, "adaface_ir_18"))
    assert t.capture == "output_layer.1" and t.dropout_p == pytest.approx(0.4)
    t = find_tail(as_fr(PoolFc(), 32))
    assert t.capture == "fc" and t.dropout_p is None
    with pytest.raises(FroqError, match=r"^serfiq: does not apply to model 'mystery'.*declares no layout"):
        find_tail(as_fr(nn.Sequential(nn.Conv2d(3, 4, 3)), 32, "mystery"))


def test_batch_and_order_independent_and_below_one(tmp_path):
    torch.manual_seed(0)
    write_faces(tmp_path, 4, 32)
    fr = as_fr(PoolFc(), 32)
    a = run_method("serfiq", fr, tmp_path, batch_size=4, options={"m": 20, "seed": 3})
    b = run_method("serfiq", fr, tmp_path, batch_size=1, options={"m": 20, "seed": 3},
                   paths=list(reversed(a.paths)))
    qa, qb = a.column("quality"), dict(zip(b.paths, b.column("quality")))
    # same masks per image; only the trunk's float rounding may differ between batch sizes
    assert all(qb[p] == pytest.approx(q, rel=1e-6) for p, q in zip(a.paths, qa))
    assert np.all((qa > 0) & (qa < 1))  # fallback p = 0.5 inserted before fc
    c = run_method("serfiq", fr, tmp_path, batch_size=4, options={"m": 20, "seed": 4})
    assert not np.array_equal(qa, c.column("quality"))


def test_bad_options_fail_clearly():
    fr = as_fr(PoolFc(), 32)
    with pytest.raises(FroqError, match="m: must be an integer >= 2"):
        run_method("serfiq", fr, ".", options={"m": 1})
    with pytest.raises(FroqError, match="unknown option"):
        run_method("serfiq", fr, ".", options={"passes": 3})
