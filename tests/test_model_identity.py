"""A stage refuses another stage's output made with another FR network (issue 23): labels for
observer init, observers for inference, the labels cache, the table's caches, the embedding cache.
Same network = same architecture, model kwargs, preprocessing and weights (the weights file's
sha256, or for random weights the sha256 of the parameters), as ``identity_difference`` decides."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from PIL import Image

from face_recognition_model.loading import load_fr_config, load_fr_model
from face_recognition_model.registry import register_model
from froq.core.errors import FroqError
from stage_helpers import run_in_process

REPO = Path(__file__).resolve().parents[1]
SIZE = 16
PREPROCESS = {"size": SIZE, "mean": 0.5, "std": 0.5, "channels": [0, 1, 2]}


class _Net(torch.nn.Module):
    def __init__(self, gain: float = 1.0):
        super().__init__()
        self.gain = gain
        self.conv = torch.nn.Conv2d(3, 4, 3, padding=1)
        self.act = torch.nn.ReLU()
        self.pool = torch.nn.AdaptiveAvgPool2d(2)
        self.flat = torch.nn.Flatten()
        self.fc = torch.nn.Linear(16, 8)

    def forward(self, x):
        return self.gain * self.fc(self.flat(self.pool(self.act(self.conv(x)))))


@register_model("test_identity_tiny")
def _build(weights=None, gain: float = 1.0):
    net = _Net(gain)  # PyTorch's default initialisation from the global RNG: the seed decides
    if weights:
        net.load_state_dict(torch.load(weights, weights_only=True))
    return net.eval()


def _yaml(path: Path, obj: dict) -> Path:
    path.write_text(yaml.safe_dump(obj), encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """Faces (4 people × 2), a random-weights FR config, a checkpoint FR config, labels computed
    by the labels stage with the random-weights config (seed 0), and the same labels with a meta
    naming the checkpoint model (``ckpt_labels``)."""
    from baselineFIQA.main import main as labels_main

    root = tmp_path_factory.mktemp("identity")
    rng = np.random.default_rng(0)
    for k in range(8):
        (root / "faces" / f"id{k % 4}").mkdir(parents=True, exist_ok=True)
        Image.fromarray(rng.integers(0, 256, (SIZE, SIZE, 3), dtype=np.uint8)).save(
            root / "faces" / f"id{k % 4}" / f"{k}.png")
    with torch.random.fork_rng():
        torch.manual_seed(5)
        torch.save(_Net().state_dict(), root / "tiny.pth")
    random_cfg = _yaml(root / "random.yaml", {"model": {"arch": "test_identity_tiny", "weights": "random"},
                                              "preprocess": PREPROCESS})
    ckpt_cfg = _yaml(root / "ckpt.yaml", {"model": {"arch": "test_identity_tiny", "weights": str(root / "tiny.pth")},
                                          "preprocess": PREPROCESS})
    labels = root / "labels" / "labels.csv"
    run_in_process(labels_main, ["-c", str(REPO / "configs/baseline.yaml"), *_sets(
        face_recognition_config=random_cfg, device="cpu", dataset__path=root / "faces",
        dataset__image_size=SIZE, dataset__mpx=8, dataset__noise_count=2, dataset__batch_size=4,
        outpath=labels)])
    ckpt_labels = root / "ckpt_labels" / "labels.csv"
    ckpt_labels.parent.mkdir()
    ckpt_labels.write_bytes(labels.read_bytes())
    meta = json.loads(labels.with_suffix(".meta.json").read_text())
    ckpt_labels.with_suffix(".meta.json").write_text(json.dumps({**meta, "model": _fr(ckpt_cfg).identity()}))
    return {"root": root, "faces": root / "faces", "random": random_cfg, "ckpt": ckpt_cfg, "labels": labels,
            "ckpt_labels": ckpt_labels}


def _sets(**keys) -> list[str]:
    out = []
    for key, value in keys.items():
        out += ["--set", f"{key.replace('__', '.')}={value}"]
    return out


def _init(world, out: Path, fr_cfg: Path, labels: Path | None = None, *extra: str) -> dict:
    from observer.initialization import main as init_main

    run_in_process(init_main, ["-c", str(REPO / "configs/init.yaml"), *_sets(
        face_recognition_config=fr_cfg, device="cpu", dataset__path=world["faces"], dataset__batch_size=4,
        label_location=labels or world["labels"], top_n=3, outpath=out), *extra])
    return json.loads(out.read_text())


def _one_line(exc: pytest.ExceptionInfo, *needles: str) -> str:
    text = str(exc.value)
    assert "\n" not in text
    for needle in needles:
        assert needle in text, (needle, text)
    return text


def _fr(cfg: Path, seed: int = 0, overrides=()):
    torch.manual_seed(seed)
    return load_fr_model(load_fr_config(cfg, list(overrides)))


# -- the rule ------------------------------------------------------------------------------------

def test_random_weights_are_identified_by_their_parameters(world):
    from face_recognition_model.loading import identity_difference

    a, b, other = _fr(world["random"], 0), _fr(world["random"], 0), _fr(world["random"], 1)
    assert a.identity()["params_sha256"] == b.identity()["params_sha256"] != other.identity()["params_sha256"]
    assert identity_difference(json.loads(json.dumps(a.identity())), b.identity()) is None
    text = identity_difference(a.identity(), other.identity())
    assert text.count("'test_identity_tiny' with weights random (parameters sha256") == 2
    ckpt = _fr(world["ckpt"])
    assert ckpt.identity()["params_sha256"] is None and len(ckpt.identity()["weights_sha256"]) == 64


def test_identity_difference_names_both_models(world):
    from face_recognition_model.loading import identity_difference, network_identity

    ckpt = _fr(world["ckpt"]).identity()
    moved = dict(ckpt, weights="/elsewhere/tiny.pth", config="/elsewhere/fr.yaml")
    assert identity_difference(moved, ckpt) is None  # where the file lies does not matter
    issue = {"arch": "test_identity_tiny", "weights": None, "weights_sha256": None,
             "preprocess": ckpt["preprocess"], "config": "random.yaml"}  # a label meta of before
    text = identity_difference(issue, ckpt)
    assert "weights random (content not recorded)" in text and f"sha256 {ckpt['weights_sha256'][:12]}" in text
    assert "kwargs not recorded" in text
    old = {k: v for k, v in ckpt.items() if k not in ("kwargs", "params_sha256")}  # an earlier FROQ's file
    assert network_identity(old) is None and identity_difference(old, ckpt) is None  # same weights sha256
    assert "sha256" in identity_difference(dict(old, weights_sha256="0" * 64), ckpt)
    gained = _fr(world["ckpt"], overrides=["model.kwargs.gain=2.0"]).identity()
    assert "kwargs {'gain': 2.0}" in identity_difference(gained, ckpt)
    shifted = _fr(world["ckpt"], overrides=["preprocess.mean=0.4"]).identity()
    assert "preprocess" in identity_difference(shifted, ckpt) and "kwargs" not in identity_difference(shifted, ckpt)


def test_packaged_dlib_weights_are_hashed():
    from face_recognition_model.dlib_resnet import default_weights_path
    from face_recognition_model.loading import resolve_weights
    from froq.core.io import sha256_file

    try:
        packaged = default_weights_path()
    except FroqError as exc:
        pytest.skip(str(exc))
    cfg = load_fr_config(REPO / "configs/fr/dlib_resnet.yaml")
    assert resolve_weights(cfg) == packaged
    fr = load_fr_model(cfg)
    assert fr.identity()["weights_sha256"] == sha256_file(packaged)


# -- observer initialisation ---------------------------------------------------------------------

def test_init_refuses_labels_of_random_weights_for_a_checkpoint(world, tmp_path):
    """The issue: labels of a random-weights config, init with a real checkpoint."""
    meta = json.loads(world["labels"].with_suffix(".meta.json").read_text())
    assert meta["model"]["weights"] is None and meta["model"]["weights_sha256"] is None
    with pytest.raises(FroqError) as exc:
        _init(world, tmp_path / "o.json", world["ckpt"])
    _one_line(exc, str(world["labels"]), "computed with another FR model", "weights random",
              "tiny.pth (sha256", "allow_foreign_labels: true")
    assert not (tmp_path / "o.json").exists()
    obs = _init(world, tmp_path / "o.json", world["ckpt"], None, "--set", "allow_foreign_labels=true")
    assert obs["config"]["allow_foreign_labels"] is True
    assert obs["foreign_labels"]["labels"] == str(world["labels"])
    assert obs["foreign_labels"]["model"] == meta["model"] and "weights random" in obs["foreign_labels"]["difference"]


def test_init_takes_labels_of_the_same_network_only(world, tmp_path):
    obs = _init(world, tmp_path / "same.json", world["random"])  # the same seed: the same network
    assert "foreign_labels" not in obs and "allow_foreign_labels" not in obs["config"]
    with pytest.raises(FroqError) as exc:
        _init(world, tmp_path / "o.json", world["random"], None, "--set", "seed=1")
    _one_line(exc, "computed with another FR model", "parameters sha256")


@pytest.mark.parametrize("override, needle", [("model.kwargs.gain=2.0", "kwargs {'gain': 2.0}"),
                                              ("preprocess.mean=0.4", "'mean': [0.4, 0.4, 0.4]")])
def test_init_refuses_labels_of_other_fr_overrides(world, tmp_path, override, needle):
    assert _init(world, tmp_path / "ok.json", world["ckpt"], world["ckpt_labels"])["selected_layers"]
    with pytest.raises(FroqError) as exc:
        _init(world, tmp_path / "x.json", world["ckpt"], world["ckpt_labels"], "--set", f"fr_overrides=[{override}]")
    _one_line(exc, "computed with another FR model", needle)


# -- inference -----------------------------------------------------------------------------------

@pytest.mark.parametrize("fr_key, extra, needle", [
    ("random", [], "weights random (parameters sha256"),
    ("ckpt", ["--set", "fr_overrides=[model.kwargs.gain=2.0]"], "kwargs {'gain': 2.0}"),
    ("ckpt", ["--set", "fr_overrides=[preprocess.std=0.25]"], "'std': [0.25, 0.25, 0.25]"),
])
def test_inference_refuses_an_observer_of_another_network(world, tmp_path, fr_key, extra, needle):
    from observer.inference import main as inference_main

    observer = tmp_path / "observer.json"
    _init(world, observer, world["ckpt"], world["ckpt_labels"])

    def infer(fr_cfg, out, *more):
        run_in_process(inference_main, ["-c", str(REPO / "configs/inference.yaml"), *_sets(
            face_recognition_config=fr_cfg, device="cpu", target_dataset=world["faces"],
            observer_data=observer, outpath=out), *more])

    infer(world["ckpt"], tmp_path / "q.csv")
    assert (tmp_path / "q.csv").is_file()
    with pytest.raises(FroqError) as exc:
        infer(world[fr_key], tmp_path / "x.csv", *extra)
    _one_line(exc, str(observer), "initialised on 'test_identity_tiny'", needle, "re-run observer initialisation")
    assert not (tmp_path / "x.csv").exists()


# -- caches --------------------------------------------------------------------------------------

def test_labels_cache_and_embedding_cache_key_on_model_kwargs(world):
    from baselineFIQA.cache import labels_key
    from evaluation.comparison_scores import model_key

    plain, gained = _fr(world["ckpt"]), _fr(world["ckpt"], overrides=["model.kwargs.gain=2.0"])
    assert plain.weights_sha256 == gained.weights_sha256
    settings = {"alphas": [0.001]}
    assert labels_key(plain, world["faces"], settings).fingerprint != labels_key(gained, world["faces"], settings).fingerprint
    assert labels_key(plain, world["faces"], settings).fingerprint == labels_key(_fr(world["ckpt"]), world["faces"], settings).fingerprint
    assert model_key(plain) != model_key(gained) and model_key(plain) == model_key(_fr(world["ckpt"]))
    assert model_key(_fr(world["random"], 0)) != model_key(_fr(world["random"], 1))


def test_table_reuses_labels_and_observers_only_for_the_same_network(world, tmp_path):
    from froq.table import MethodSpec, ModelSpec, Progress, labels_for, observer_for

    cfg = {"seed": 0, "batch_size": 4, "num_workers": 0, "_source": "table.yaml"}
    spec = ModelSpec("tiny", str(world["random"]), str(world["faces"]), None, 3, {"noise_count": 2}, "")
    progress = Progress()
    for seed in (0, 0, 1):  # the same random network, then another one (the table does not seed)
        labels_for(spec, _fr(world["random"], seed), tmp_path, cfg, progress)
    assert [c[3] for c in progress.cells] == ["computed", "reused", "computed"]
    given = dataclasses.replace(spec, labels=str(world["labels"]))  # labels of the seed-0 network
    froq_row = MethodSpec("froq", "froq")
    assert observer_for(given, froq_row, _fr(world["random"], 0), tmp_path, cfg, progress).is_file()
    with pytest.raises(FroqError) as exc:
        observer_for(given, froq_row, _fr(world["ckpt"]), tmp_path / "ckpt", cfg, progress)
    _one_line(exc, "computed with another FR model", "weights random")
