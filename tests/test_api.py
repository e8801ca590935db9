"""The Python API (``froq.api``): the README example runs as written; in-memory inputs give the
folder's numbers; calibration from labels in memory equals the stage CLIs' observer."""

from __future__ import annotations

import json
import os
import re

import numpy as np
import pytest
import torch
from PIL import Image

import froq
from conftest import REPO
from froq.core.errors import FroqError
from stage_helpers import run_in_process
from test_observer import SIZE, tiny_fr


def readme_example() -> str:
    """The code block under the README's "Python API" heading."""
    text = (REPO / "README.md").read_text(encoding="utf-8")
    section = text.split("## Python API", 1)[1]
    return re.search(r"```python\n(.*?)```", section, re.S).group(1)


def noise_faces(root, n: int, size: int, seed: int) -> list[str]:
    """``n`` PNG 'faces' of random texture and contrast in two identity folders."""
    rng = np.random.default_rng(seed)
    rels = []
    for k in range(n):
        rel = f"id{k % 2}/face{k}.png"
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        base = rng.integers(0, 256, (size, size, 3)).astype(np.float64)
        img = 128 + (base - 128) * (0.2 + 0.8 * k / n)
        Image.fromarray(img.clip(0, 255).astype(np.uint8)).save(root / rel)
        rels.append(rel)
    return sorted(rels)


def test_readme_example_runs_as_written(tmp_path, monkeypatch, capsys):
    code = readme_example()
    assert len([line for line in code.splitlines() if line.strip()]) <= 12
    noise_faces(tmp_path / "calibration", 6, 150, seed=1)
    faces = noise_faces(tmp_path / "faces", 4, 150, seed=2)
    (tmp_path / "configs").symlink_to(REPO / "configs")
    monkeypatch.chdir(tmp_path)
    exec(compile(code, "README.md", "exec"), {})
    printed = capsys.readouterr().out.splitlines()
    assert [line.split(":")[0] for line in printed[:4]] == faces
    assert all(np.isfinite(float(line.split(": ")[1])) for line in printed[:4])
    assert printed[4] == "(4, 128)"
    record = json.loads((tmp_path / "observer.json").read_text())
    assert record["format"] == "froq-observer/1" and record["model"]["arch"] == "dlib_resnet"


@pytest.fixture(scope="module")
def tiny_observer(tmp_path_factory):
    root = tmp_path_factory.mktemp("api")
    rels = noise_faces(root / "faces", 9, SIZE, seed=3)
    labels = {p: float(i) + 0.5 * (i % 3) for i, p in enumerate(rels)}
    observer = froq.calibrate(tiny_fr(), root / "faces", labels, top_n=4, save=root / "obs.json")
    return root, rels, labels, observer


def test_in_memory_inputs_give_the_folder_numbers(tiny_observer):
    root, rels, _, observer = tiny_observer
    folder = observer.score(root / "faces", batch_size=4, embeddings=True)
    assert folder.paths == rels and folder.embeddings.shape == (len(rels), 6)
    files = [root / "faces" / r for r in rels]
    pil = [Image.open(f).convert("RGB") for f in files]
    uint8 = torch.stack([torch.from_numpy(np.asarray(im).copy()).permute(2, 0, 1) for im in pil])
    floats = observer.fr.preprocess.normalize(uint8)
    for images in (pil, [np.asarray(im) for im in pil], files, uint8, floats):
        res = observer.score(images, batch_size=3, embeddings=True)
        np.testing.assert_allclose(res.quality, folder.quality, rtol=1e-6)
        np.testing.assert_allclose(res.embeddings, folder.embeddings, rtol=1e-5, atol=1e-6)
    early = observer.score(pil, early_exit=True)
    np.testing.assert_allclose(early.quality, folder.quality, rtol=1e-6)
    assert early.embeddings is None and early.paths == [str(i) for i in range(len(rels))]


def test_calibrate_in_memory_equals_the_stage_clis(tiny_observer, tmp_path):
    """The API's observer selects exactly what observer/initialization.py selects from a CSV."""
    from observer.initialization import initialize_observer
    from froq.core.io import write_csv

    root, rels, labels, observer = tiny_observer
    csv_path = tmp_path / "labels.csv"
    write_csv(csv_path, ["path", "quality"], labels.items())
    record = initialize_observer(tiny_fr(), root / "faces", csv_path, top_n=4)
    assert record["selected_layers"] == observer.layers
    assert [g["spearman"] for g in record["greedy"]] == [g["spearman"] for g in observer.record["greedy"]]
    again = froq.calibrate(tiny_fr(), root / "faces", csv_path, top_n=4)
    assert again.layers == observer.layers


def test_bad_inputs_are_one_line_errors(tiny_observer, tmp_path):
    root, _, _, observer = tiny_observer
    with pytest.raises(FroqError, match=r"expected a tensor of shape \(B, 3, 16, 16\)"):
        observer.score(torch.zeros(2, 3, 8, 8))
    with pytest.raises(FroqError, match="cannot score a dict"):
        observer.score([{}])
    with pytest.raises(FroqError, match="not found"):
        froq.Observer.load(tmp_path / "nope.json")
    other = dict(observer.record, selected_layers=["no.such.layer"])
    with pytest.raises(FroqError, match="do not exist"):
        froq.api.Observer(tiny_fr(), other)
    foreign = dict(observer.record, model={"arch": "iresnet50"})
    with pytest.raises(FroqError, match="initialised on 'iresnet50'"):
        froq.api.Observer(tiny_fr(), foreign)


def test_pseudo_labels_saved_as_the_stage_writes_them(tiny_observer, tmp_path):
    from froq.core.io import read_csv

    root, rels, _, _ = tiny_observer
    out = tmp_path / "labels.csv"
    result = froq.pseudo_labels(tiny_fr(), root / "faces", mpx=8, noise_count=2, save=out)
    rows = read_csv(out, required=("path", "flip", "noise", "occlusion", "quality"))
    assert [r["path"] for r in rows] == rels == result.paths
    assert [float(r["quality"]) for r in rows] == result.column("quality").tolist()
    assert not (tmp_path / "labels.csv.partial").exists() and not (tmp_path / "labels.csv.lock").exists()
