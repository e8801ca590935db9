"""dlib's face-recognition ResNet (``dlib_face_recognition_resnet_model_v1.dat``) in PyTorch.

The network is dlib's ``anet_type`` (a 29-conv ResNet on 150×150 RGB chips, 128-D descriptor),
rebuilt layer by layer so that every dlib layer is a named torch submodule that hooks can observe.
The weights are read directly from dlib's own serialization (no dlib needed at run time) by
``read_dlib_weights``, which walks the whole file against the expected architecture and refuses
any file that does not match it exactly.

Module names (input side first, as ``named_modules()`` lists them)::

    stem.conv  stem.affine  stem.relu  stem.pool                 conv 7x7/2 → 32×72×72 → pool 32×35×35
    level4.block{0,1,2}                                          residual(32)        32×35×35
    level3.block0 (down)  level3.block{1,2,3}                    residual(64)        64×17×17
    level2.block0 (down)  level2.block{1,2}                      residual(128)      128×8×8
    level1.block0 (down)  level1.block{1,2}                      residual(256)      256×4×4
    level0.block0 (down)                                         residual(256)      256×2×2
    pool  fc                                                     global mean → 256 → 128

and inside each block ``conv1 affine1 relu1 conv2 affine2 [shortcut] add relu_out`` where
``shortcut`` (2×2 average pool) exists only in the down-sampling blocks and ``add`` is dlib's
zero-padding addition. ``forward`` returns the un-normalised 128-D descriptor (dlib's output).
"""

from __future__ import annotations

import importlib.util
import logging
import time
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from face_recognition_model.checkpoints import load_matching
from face_recognition_model.layout import EmbeddingTail, ModelLayout
from froq.core.errors import FroqError

log = logging.getLogger(__name__)

MODEL_FILE = "dlib_face_recognition_resnet_model_v1.dat"
INPUT_SIZE = 150
# dlib's input layer subtracts these from the 0..255 RGB values, then divides by 256
DLIB_MEAN_RGB = (122.782, 117.001, 104.298)
DLIB_SCALE = 256.0

# (level name, channels, number of blocks, first block down-samples), input side first
LEVELS = (("level4", 32, 3, False), ("level3", 64, 4, True), ("level2", 128, 3, True),
          ("level1", 256, 3, True), ("level0", 256, 1, True))
STEM_CHANNELS = 32
EMBEDDING_DIM = 128


def default_weights_path() -> str:
    """Path of ``dlib_face_recognition_resnet_model_v1.dat`` in the installed ``face_recognition_models``.

    In: nothing. Out: the file's path. The package is located without importing it (its
    ``__init__`` needs ``pkg_resources``, absent from recent setuptools). Raises FroqError if the
    package or the file is missing.
    """
    spec = importlib.util.find_spec("face_recognition_models")
    if spec is None or not spec.submodule_search_locations:
        raise FroqError("dlib_resnet needs the package face_recognition_models for its weights: "
                        "pip install face-recognition-models")
    for folder in spec.submodule_search_locations:
        path = Path(folder) / "models" / MODEL_FILE
        if path.is_file():
            return str(path)
    raise FroqError(f"{MODEL_FILE} not found in face_recognition_models "
                    f"({', '.join(spec.submodule_search_locations)}): "
                    "pip install --force-reinstall face-recognition-models")


# ----------------------------------------------------------------------------------------------
# dlib serialization reader


class _Corrupt(Exception):
    """Internal: the stream does not hold what the architecture says (message = what and where)."""


class _Stream:
    """A cursor over the bytes of a dlib file, decoding dlib's primitive encodings."""

    def __init__(self, data: bytes) -> None:
        self.data = data
        self.pos = 0

    def _take(self, n: int) -> bytes:
        if self.pos + n > len(self.data):
            raise _Corrupt(f"file ends at byte {len(self.data)} while {n} more byte(s) were expected")
        chunk = self.data[self.pos:self.pos + n]
        self.pos += n
        return chunk

    def integer(self) -> int:
        """Control byte (bit 7 = negative, low 4 bits = byte count) + little-endian magnitude."""
        at = self.pos
        control = self._take(1)[0]
        size = control & 0x0F
        if control & 0x70 or not 1 <= size <= 8:
            raise _Corrupt(f"invalid integer control byte 0x{control:02x} at byte {at}")
        value = int.from_bytes(self._take(size), "little")
        return -value if control & 0x80 else value

    def real(self) -> float:
        """A float/double: integer mantissa then integer exponent, value = m·2^e."""
        mantissa, exponent = self.integer(), self.integer()
        specials = {32000: float("inf"), 32001: float("-inf"), 32002: float("nan")}
        if exponent in specials:
            return specials[exponent]
        return float(np.ldexp(np.float64(mantissa), exponent))

    def boolean(self) -> bool:
        """A bool, stored as the ASCII character '0' or '1'."""
        at = self.pos
        char = self._take(1)
        if char not in (b"0", b"1"):
            raise _Corrupt(f"expected a bool ('0'/'1') at byte {at}, found 0x{char[0]:02x}")
        return char == b"1"

    def string(self) -> str:
        """A string: its length, then the bytes."""
        at = self.pos
        n = self.integer()
        if not 0 <= n <= 256:
            raise _Corrupt(f"implausible string length {n} at byte {at}")
        return self._take(n).decode("latin-1")

    def expect_string(self, *allowed: str) -> str:
        """Read a string and require it to be one of ``allowed``."""
        at = self.pos
        s = self.string()
        if s not in allowed:
            raise _Corrupt(f"expected {' or '.join(repr(a) for a in allowed)} at byte {at}, found {s!r}")
        return s

    def expect_int(self, expected: int, what: str) -> int:
        """Read an integer and require it to equal ``expected``."""
        at = self.pos
        v = self.integer()
        if v != expected:
            raise _Corrupt(f"{what}: expected {expected} at byte {at}, found {v}")
        return v

    def tensor(self) -> np.ndarray:
        """A tensor: version 2, dims (n, k, rows, cols), float32 data → array of that shape."""
        at = self.pos
        version = self.integer()
        if version != 2:
            raise _Corrupt(f"expected a tensor (version 2) at byte {at}, found version {version}")
        dims = tuple(self.integer() for _ in range(4))
        if any(d < 0 for d in dims):
            raise _Corrupt(f"negative tensor dimension {dims} at byte {at}")
        count = int(np.prod(dims, dtype=np.int64))
        raw = self._take(4 * count)
        return np.frombuffer(raw, dtype="<f4").reshape(dims)

    def alias_tensor(self) -> tuple[int, ...]:
        """An alias tensor: version 1 and four dims, no data."""
        at = self.pos
        version = self.integer()
        if version != 1:
            raise _Corrupt(f"expected an alias tensor (version 1) at byte {at}, found version {version}")
        return tuple(self.integer() for _ in range(4))


@dataclass(frozen=True)
class _Layer:
    """One dlib layer of the expected architecture (input side first)."""

    kind: str            # con | affine | relu | max_pool | avg_pool | add | tag | skip | fc
    name: str = ""       # torch module path holding its parameters (con, affine, fc)
    shape: tuple = ()    # con: (out, in, k, stride, pad); affine: (C,); pool: (k, stride); fc: (out, in)


def _expected_layers() -> list[_Layer]:
    """dlib's ``anet_type`` as a flat list of layers, input side first, with torch names."""
    layers = [_Layer("con", "stem.conv", (STEM_CHANNELS, 3, 7, 2, 0)),
              _Layer("affine", "stem.affine", (STEM_CHANNELS,)),
              _Layer("relu"), _Layer("max_pool", shape=(3, 2))]
    channels = STEM_CHANNELS
    for level, width, blocks, down in LEVELS:
        for b in range(blocks):
            prefix = f"{level}.block{b}"
            is_down = down and b == 0
            stride, pad = (2, 0) if is_down else (1, 1)
            layers += [_Layer("tag"),
                       _Layer("con", f"{prefix}.conv1", (width, channels, 3, stride, pad)),
                       _Layer("affine", f"{prefix}.affine1", (width,)), _Layer("relu"),
                       _Layer("con", f"{prefix}.conv2", (width, width, 3, 1, 1)),
                       _Layer("affine", f"{prefix}.affine2", (width,))]
            if is_down:  # tag2 on the branch, skip back to tag1, average-pool the block input
                layers += [_Layer("tag"), _Layer("skip"), _Layer("avg_pool", shape=(2, 2))]
            layers += [_Layer("add"), _Layer("relu")]
            channels = width
    layers += [_Layer("avg_pool", shape=(0, 1)), _Layer("fc", "fc", (EMBEDDING_DIM, channels))]
    return layers


_PLAIN_LAYER_NAMES = {"relu": "relu_", "add": "add_prev_"}


def _read_details(s: _Stream, layer: _Layer, out: dict[str, np.ndarray]) -> None:
    """Read one layer's own fields, check them against ``layer``, store parameters in ``out``."""
    if layer.kind == "con":
        n_out, n_in, k, stride, pad = layer.shape
        s.expect_string("con_4")
        params = s.tensor().reshape(-1)
        n_weights = n_out * n_in * k * k
        if params.size != n_weights + n_out:
            raise _Corrupt(f"{layer.name}: {params.size} parameters, expected {n_weights + n_out}")
        for value, what in zip((n_out, k, k, stride, stride, pad, pad),
                               ("filters", "rows", "cols", "stride y", "stride x", "pad y", "pad x")):
            s.expect_int(value, f"{layer.name} {what}")
        if s.alias_tensor() != (n_out, n_in, k, k) or s.alias_tensor() != (1, n_out, 1, 1):
            raise _Corrupt(f"{layer.name}: filter/bias views do not match {n_out}x{n_in}x{k}x{k}")
        for _ in range(4):  # learning-rate and weight-decay multipliers
            s.real()
        out[f"{layer.name}.weight"] = params[:n_weights].reshape(n_out, n_in, k, k)
        out[f"{layer.name}.bias"] = params[n_weights:]
    elif layer.kind == "affine":
        (c,) = layer.shape
        s.expect_string("affine_")
        params = s.tensor().reshape(-1)
        if params.size != 2 * c:
            raise _Corrupt(f"{layer.name}: {params.size} parameters, expected {2 * c}")
        if s.alias_tensor() != (1, c, 1, 1) or s.alias_tensor() != (1, c, 1, 1):
            raise _Corrupt(f"{layer.name}: gamma/beta views are not 1x{c}x1x1")
        s.expect_int(0, f"{layer.name} mode (0 = per channel)")
        out[f"{layer.name}.weight"] = params[:c]
        out[f"{layer.name}.bias"] = params[c:]
    elif layer.kind in ("max_pool", "avg_pool"):
        k, stride = layer.shape
        s.expect_string(f"{layer.kind}_2")
        for value, what in zip((k, k, stride, stride, 0, 0),
                               ("rows", "cols", "stride y", "stride x", "pad y", "pad x")):
            s.expect_int(value, f"{layer.kind} {what}")
    elif layer.kind == "fc":
        n_out, n_in = layer.shape
        s.expect_string("fc_2")
        s.expect_int(n_out, "fc outputs")
        s.expect_int(n_in, "fc inputs")
        params = s.tensor().reshape(-1)
        if params.size != n_in * n_out:
            raise _Corrupt(f"fc: {params.size} parameters, expected {n_in * n_out} (no bias)")
        if s.alias_tensor() != (n_in, n_out, 1, 1) or s.alias_tensor() != (0, 0, 0, 0):
            raise _Corrupt(f"fc: weight/bias views are not {n_in}x{n_out} without bias")
        s.expect_int(1, "fc bias mode (1 = no bias)")
        for _ in range(4):  # learning-rate and weight-decay multipliers
            s.real()
        out["fc.weight"] = params.reshape(n_in, n_out).T
    else:
        s.expect_string(_PLAIN_LAYER_NAMES[layer.kind])


def _read_layer_state(s: _Stream) -> None:
    """The fields every computational layer writes after its details: 3 bools and 3 tensors."""
    for _ in range(3):
        s.boolean()
    for _ in range(3):
        s.tensor()


def read_dlib_weights(path: str | Path) -> dict[str, np.ndarray]:
    """Parse dlib's face-recognition ResNet file into a torch state dict of float32 arrays.

    In: the ``.dat`` path. Out: ``{module.weight/bias: array}`` keyed like ``DlibResNet``'s
    ``state_dict``. The whole file is read against the expected architecture (layer order, kinds,
    sizes, strides, paddings, the input layer's means and size) and every byte must be consumed;
    anything else raises FroqError naming the file.
    """
    path = Path(path)
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise FroqError(f"cannot read dlib model file {path}: {exc.strerror or exc}") from None
    start = time.perf_counter()
    s = _Stream(data)
    out: dict[str, np.ndarray] = {}
    layers = _expected_layers()
    try:
        s.expect_int(1, "loss layer version")
        s.expect_string("loss_metric_2")
        s.real(), s.real()  # margin, distance threshold
        # versions from the output side; the bottom layer (over the input layer) writes version 3
        for i, layer in enumerate(reversed(layers)):
            bottom = i == len(layers) - 1
            expected = 3 if bottom else (1 if layer.kind in ("tag", "skip") else 2)
            s.expect_int(expected, f"version of layer {len(layers) - i} ({layer.kind}) from the input")
        s.expect_string("input_rgb_image_sized")
        means = [s.real() for _ in range(3)]
        if not np.allclose(means, DLIB_MEAN_RGB, atol=1e-3):
            raise _Corrupt(f"input means {means} differ from {DLIB_MEAN_RGB}")
        s.expect_int(INPUT_SIZE, "input rows")
        s.expect_int(INPUT_SIZE, "input cols")
        for i, layer in enumerate(layers):
            if layer.kind in ("tag", "skip"):
                continue
            _read_details(s, layer, out)
            _read_layer_state(s)
            if i == 0:
                s.integer()  # the bottom layer also stores its sample expansion factor
        if s.pos != len(data):
            raise _Corrupt(f"{len(data) - s.pos} unexpected trailing byte(s) after byte {s.pos}")
    except _Corrupt as exc:
        raise FroqError(f"{path}: not dlib's face-recognition ResNet v1 model file ({exc}); "
                        "reinstall it with pip install --force-reinstall face-recognition-models") from None
    log.debug("parsed %s in %.3f s", path, time.perf_counter() - start)
    return {k: np.array(v, dtype=np.float32, order="C") for k, v in out.items()}  # writable copies


# ----------------------------------------------------------------------------------------------
# the network


class Affine(nn.Module):
    """dlib's ``affine`` layer: a per-channel scale (``weight``) and shift (``bias``), i.e. a frozen
    batch-norm. (B, C, H, W) → (B, C, H, W)."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(channels))
        self.bias = nn.Parameter(torch.zeros(channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.addcmul(self.bias.view(1, -1, 1, 1), x, self.weight.view(1, -1, 1, 1))


class ZeroPadAdd(nn.Module):
    """dlib's ``add_prev``: the sum of two tensors of possibly different (C, H, W), the smaller one
    zero-padded at the end of the channels and the bottom/right of the image (no projection)."""

    def forward(self, branch: torch.Tensor, shortcut: torch.Tensor) -> torch.Tensor:
        if branch.shape == shortcut.shape:
            return branch + shortcut
        c, h, w = (max(a, b) for a, b in zip(branch.shape[1:], shortcut.shape[1:]))

        def grow(t):
            return F.pad(t, (0, w - t.shape[3], 0, h - t.shape[2], 0, c - t.shape[1]))

        return grow(branch) + grow(shortcut)


class GlobalAvgPool(nn.Module):
    """dlib's ``avg_pool_everything``: (B, C, H, W) → (B, C) mean over all positions."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.mean(dim=(2, 3))


class ResidualBlock(nn.Module):
    """dlib's ``ares`` / ``ares_down``: conv3x3 → affine → relu → conv3x3 → affine, added (zero
    padding) to the input — or, when ``down``, to its 2×2 stride-2 average pool — then relu.
    The down-sampling first conv has stride 2 and no padding, as in dlib."""

    def __init__(self, in_channels: int, channels: int, down: bool) -> None:
        super().__init__()
        stride, pad = (2, 0) if down else (1, 1)
        self.conv1 = nn.Conv2d(in_channels, channels, 3, stride=stride, padding=pad)
        self.affine1 = Affine(channels)
        self.relu1 = nn.ReLU()
        self.conv2 = nn.Conv2d(channels, channels, 3, stride=1, padding=1)
        self.affine2 = Affine(channels)
        self.shortcut = nn.AvgPool2d(2, stride=2) if down else None
        self.add = ZeroPadAdd()
        self.relu_out = nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.affine2(self.conv2(self.relu1(self.affine1(self.conv1(x)))))
        skip = self.shortcut(x) if self.shortcut is not None else x
        return self.relu_out(self.add(y, skip))


class DlibResNet(nn.Module):
    """dlib's face-recognition ResNet v1: (B, 3, 150, 150) input as ``(rgb − mean) / 256`` →
    (B, 128) un-normalised descriptor. See the module docstring for the submodule names."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Sequential(OrderedDict(
            conv=nn.Conv2d(3, STEM_CHANNELS, 7, stride=2, padding=0),
            affine=Affine(STEM_CHANNELS), relu=nn.ReLU(), pool=nn.MaxPool2d(3, stride=2)))
        channels = STEM_CHANNELS
        for level, width, blocks, down in LEVELS:
            seq = OrderedDict()
            for b in range(blocks):
                seq[f"block{b}"] = ResidualBlock(channels, width, down and b == 0)
                channels = width
            self.add_module(level, nn.Sequential(seq))
        self.pool = GlobalAvgPool()
        self.fc = nn.Linear(channels, EMBEDDING_DIM, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        for level, *_ in LEVELS:
            x = getattr(self, level)(x)
        return self.fc(self.pool(x))

    def layout(self) -> ModelLayout:
        """Tail at ``fc`` (the pooled 256-D vector; dlib has no dropout); nothing else."""
        return ModelLayout(
            tail=EmbeddingTail("fc", None, self.fc),
            why_no_stages="dlib's ResNet has five residual levels (level4 .. level0), not the four "
                          "stages of an IR/iResNet",
            why_no_batch_norms="dlib folds its batch norms into fixed affine layers, without "
                               "running statistics",
            why_no_quality_head="dlib's ResNet has no learned quality unit")


def build_dlib_resnet(weights: str | None, **kwargs) -> DlibResNet:
    """Registry builder: ``weights`` = path of dlib's ``.dat`` file, or None for random init.

    Out: ``DlibResNet`` in eval mode. Raises FroqError for a file that is not dlib's model, or
    for any ``model.kwargs`` (this architecture has none).
    """
    if kwargs:
        raise FroqError(f"dlib_resnet takes no model.kwargs (got {', '.join(sorted(kwargs))}): remove them")
    model = DlibResNet()
    if weights is not None:
        state = {k: torch.from_numpy(v) for k, v in read_dlib_weights(weights).items()}
        load_matching(model, state, str(weights))
    return model.eval()
