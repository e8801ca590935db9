"""Smoke test of benchmarks/pipeline.py on a tiny registered model: every row printed with positive
numbers, nominal forward counts, a clear error for a missing folder. No timing assertions."""

from __future__ import annotations

import importlib.util
import re

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

from face_recognition_model.registry import register_model
from froq.core.errors import FroqError
from conftest import REPO

SIZE = 28
ROWS = ["forward (plain)", "labels (stage 1, PseudoLabeler.score)", "label: reference embedding",
        "label: flip", "label: noise", "label: occlusion", "init (stage 2, all layers + select)",
        "inference, early exit", "inference, no early exit", "inference + embeddings"]
E2E_ROWS = ["forward + reading", "init + reading (collect_norms)",
            "inference + reading (froq_qualities)", "inference + emb. + reading"]


@register_model("test_bench_tiny")
def _tiny(weights=None, **kwargs):
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.BatchNorm2d(4), nn.PReLU(4),
                         nn.Conv2d(4, 8, 3, stride=2, padding=1), nn.ReLU(), nn.Flatten(),
                         nn.Linear(8 * 14 * 14, 16)).eval()


def load_pipeline():
    spec = importlib.util.spec_from_file_location("bench_pipeline", REPO / "benchmarks" / "pipeline.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture()
def setup(tmp_path):
    rng = np.random.default_rng(0)
    faces = tmp_path / "faces"
    for i in range(6):
        (faces / f"p{i % 2}").mkdir(parents=True, exist_ok=True)
        arr = rng.integers(0, 255, (SIZE, SIZE, 3), dtype=np.uint8) // (i + 1)
        Image.fromarray(arr.astype(np.uint8)).save(faces / f"p{i % 2}" / f"{i}.png")
    fr = tmp_path / "fr.yaml"
    fr.write_text(f"model: {{arch: test_bench_tiny, weights: random}}\n"
                  f"preprocess: {{size: {SIZE}, mean: 0.5, std: 0.5}}\n")
    cfg = tmp_path / "bench.yaml"
    cfg.write_text(f"face_recognition_config: {fr}\nimages: {faces}\nn_images: 5\nlabel_images: 2\n"
                   "batch_size: 2\nrepeats: 1\ndevice: cpu\nthreads: 1\ntop_n: 3\n"
                   "labels: {alphas: [0.001, 0.01], noise_count: 3, mpx: 7, forward_batch: 8}\n"
                   f"outpath: {tmp_path / 'bench.json'}\n")
    return cfg, tmp_path


def test_table_has_every_row_with_positive_numbers(setup, capsys):
    cfg, tmp_path = setup
    bench = load_pipeline()
    threads = torch.get_num_threads()
    try:
        bench.main(["-c", str(cfg)])
    finally:
        torch.set_num_threads(threads)
    out = capsys.readouterr().out
    assert "CPUs" in out and "torch" in out and "1 threads" in out
    numbers = {}
    for name in ROWS + E2E_ROWS:
        line = next((ln for ln in out.splitlines() if ln.strip().startswith(name)), None)
        assert line is not None, f"row {name!r} missing from:\n{out}"
        fields = line[len(line) - len(line.lstrip()) + len(name):].split()
        # fwd/img, images, img/s, ms/img, best ms/img, spread%, x fwd, x fwd best
        numbers[name] = fields
        assert len(fields) == 8 and fields[5].endswith("%")
        assert all(float(fields[i]) > 0 for i in (2, 3, 4, 6, 7))
    # nominal forwards per image: 2 alphas x K=3 noise, (28/7)^2 = 16 masks, 2 + 6 + 16 = 24
    assert numbers["labels (stage 1, PseudoLabeler.score)"][0] == "24"
    assert numbers["label: noise"][0] == "6" and numbers["label: occlusion"][0] == "16"
    assert numbers["labels (stage 1, PseudoLabeler.score)"][1] == "2"  # label_images
    assert numbers["forward (plain)"][1] == "5" and numbers["forward (plain)"][6:] == ["1.00", "1.00"]
    assert re.search(r"selection \(\d+ layers", out)
    assert (tmp_path / "bench.json").is_file()


def test_missing_images_folder_is_a_clear_error(setup):
    cfg, tmp_path = setup
    bench = load_pipeline()
    with pytest.raises(FroqError, match="images folder not found.*--set images=DIR"):
        bench.main(["-c", str(cfg), "--set", f"images={tmp_path / 'absent'}"])
