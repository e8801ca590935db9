"""Any ONNX face-recognition model as a hookable PyTorch module (registry name ``onnx``).

FR config::

    model:
      arch: onnx
      weights: weights/my_fr_model.onnx
      kwargs: {}            # optional: output (name), input_size ([H, W] if the graph's is dynamic)
    preprocess: {size: 112, mean: 0.5, std: 0.5, channels: [0, 1, 2]}   # as the model was trained

The file is converted with ``onnx2torch.convert`` into a ``torch.fx.GraphModule`` whose ONNX nodes
are its direct submodules, named after the ONNX node names (``.`` replaced by ``/``, leading ``/``
dropped: e.g. ``layer1/layer1.0/conv1/Conv`` → ``layer1/layer1/0/conv1/Conv``; unnamed nodes get
their op type, numbered when repeated). Those names are what the observer hooks and stores; the
extra ``initializers`` submodule (constant buffers) never fires.

What is done to the graph before conversion (each step logged):

- weight-only quantisation (``DequantizeLinear`` of constant weights: per tensor, per axis,
  block-wise; ``MatMulNBits``) is folded to float initializers and graph inputs that no node
  consumes are dropped (``face_recognition_model.onnx_quant``); activation quantisation is refused
  in one line;
- only the first graph output is kept (the embedding; ``kwargs.output`` picks another by name) —
  the module returns one (B, D) tensor as every FR family here;
- an NHWC input (last dimension 3, second not 3) gets a leading Transpose so the module takes the
  NCHW batches the preprocessing produces;
- a fixed batch dimension is made symbolic and ``Reshape`` shape constants that start with that
  batch size get 0 ("copy the input's dimension") instead; the result must then reproduce the
  original graph exactly (probe below), otherwise FroqError says to re-export with a dynamic batch;
- a graph with an opset newer than onnx2torch supports is down-converted to opset 17.

Probe: with a static input size (or ``kwargs.input_size``) a random batch is run as a batch and
image by image; the rows must agree (relative 1e-3), so batches mixing images are caught at load.

The module is an ``OnnxFRGraph`` (onnx2torch's ``GraphModule``, same submodules and forward)
whose ``layout()`` declares its running batch norms and, for lack of knowledge of an arbitrary
graph, no embedding tail, residual stages or quality head. ``runtime()`` gives the same graph (as
edited above) as an ONNX Runtime session for forwards that observe no layer (pseudo-labels): ONNX
Runtime runs a graph faster than its onnx2torch conversion on CPU (docs/results.md#onnx-runtime).

Batch norm: onnx2torch turns ``BatchNormalization`` nodes whose parameters are initializers into
``nn.BatchNorm1d/2d/3d`` with running statistics (usable by GraFIQs). Exporters usually fold batch
norms that follow a convolution into its weights: ``torch.onnx.export`` does so in eval mode with
constant folding on (the default); export with ``do_constant_folding=False`` or
``training=torch.onnx.TrainingMode.PRESERVE`` to keep them.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Sequence

import torch
import torch.fx
from torch import nn

from face_recognition_model.layout import EmbeddingTail, ModelLayout, batch_norm_parts
from face_recognition_model.onnx_quant import prepare_graph
from froq.core.errors import FroqError

log = logging.getLogger(__name__)

TARGET_OPSET = 17  # what onnx2torch covers best; newer graphs are down-converted to it
_PROBE_RTOL = 1e-3


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return (text.splitlines()[0] if text else type(exc).__name__)[:200]


def read_onnx(path: str | Path):
    """Read an ONNX file (with external data beside it) → ``onnx.ModelProto``.

    FroqError (one line) if the file is missing, not an ONNX model, or has no computation.
    """
    import onnx

    path = Path(path)
    if not path.is_file():
        raise FroqError(f"ONNX model file not found: {path} — set model.weights to the .onnx file "
                        "(or --set fr_overrides=[model.weights=PATH])")
    try:
        model = onnx.load(str(path))
    except Exception as exc:  # protobuf decode errors, missing external data, ...
        raise FroqError(f"{path}: cannot be read as an ONNX model ({_first_line(exc)})") from None
    if not len(model.graph.node) or not len(model.graph.output):
        raise FroqError(f"{path}: not an ONNX model (no graph nodes or outputs) — model.weights "
                        "must be an exported .onnx file")
    return model


def _graph_inputs(model) -> list:
    inits = {t.name for t in model.graph.initializer}
    return [v for v in model.graph.input if v.name not in inits]


def _dims(value_info) -> list[int | str | None]:
    """Dimensions of a tensor value: int when fixed, the symbol (str) or None when dynamic."""
    out = []
    for d in value_info.type.tensor_type.shape.dim:
        if d.HasField("dim_value"):
            out.append(int(d.dim_value))
        else:
            out.append(d.dim_param or None)
    return out


def _keep_output(model, output: str | None, source: str):
    """Graph reduced to the one output ``output`` (default: the first) and what it needs."""
    import onnx.utils

    names = [o.name for o in model.graph.output]
    want = output if output is not None else names[0]
    if want not in names:
        raise FroqError(f"{source}: the graph has no output '{want}' (outputs: {', '.join(names)}); "
                        "fix model.kwargs.output")
    if len(names) == 1:
        return model
    log.info("%s: %d graph outputs; using '%s' as the embedding", source, len(names), want)
    inputs = [v.name for v in _graph_inputs(model)]
    try:
        return onnx.utils.Extractor(model).extract_model(inputs, [want])
    except Exception as exc:
        raise FroqError(f"{source}: cannot cut the graph down to output '{want}' "
                        f"({_first_line(exc)})") from None


def _nhwc_to_nchw(model, source: str):
    """Prepend a Transpose so an NHWC graph takes NCHW input (the input keeps its name)."""
    import onnx
    from onnx import helper

    inp = _graph_inputs(model)[0]
    dims = _dims(inp)
    old = inp.name
    inner = f"{old}__froq_nhwc"
    for node in model.graph.node:
        node.input[:] = [inner if n == old else n for n in node.input]
    transpose = helper.make_node("Transpose", [old], [inner], name="froq_nchw_to_nhwc", perm=[0, 2, 3, 1])
    model.graph.node.insert(0, transpose)
    shape = inp.type.tensor_type.shape
    new_dims = [dims[0], dims[3], dims[1], dims[2]]
    del shape.dim[:]
    for d in new_dims:
        dim = shape.dim.add()
        if isinstance(d, int):
            dim.dim_value = d
        elif d:
            dim.dim_param = d
    del model.graph.value_info[:]  # stale after the edit; convert() re-infers shapes
    log.info("%s: the graph takes NHWC input %s; a Transpose was added so it takes NCHW", source, dims)
    return model


def _constant_ints(model, name: str):
    """The int values of constant ``name`` (initializer or Constant node), or None."""
    from onnx import numpy_helper

    for t in model.graph.initializer:
        if t.name == name:
            return numpy_helper.to_array(t)
    for node in model.graph.node:
        if node.op_type == "Constant" and node.output[0] == name:
            for a in node.attribute:
                if a.name == "value":
                    return numpy_helper.to_array(a.t)
                if a.name == "value_ints":
                    import numpy as np
                    return np.array(list(a.ints), dtype=np.int64)
    return None


def _make_batch_dynamic(model, batch: int) -> int:
    """Symbolic input batch; ``Reshape`` shapes ``[batch, ...]`` → ``[0, ...]``. Returns #patched."""
    from onnx import numpy_helper

    inp = _graph_inputs(model)[0]
    d0 = inp.type.tensor_type.shape.dim[0]
    d0.Clear()
    d0.dim_param = "batch"
    for out in model.graph.output:
        dims = out.type.tensor_type.shape.dim
        if len(dims) and dims[0].HasField("dim_value") and dims[0].dim_value == batch:
            dims[0].Clear()
            dims[0].dim_param = "batch"
    del model.graph.value_info[:]
    patched = 0
    for i, node in enumerate(model.graph.node):
        if node.op_type != "Reshape" or len(node.input) < 2:
            continue
        if any(a.name == "allowzero" and a.i == 1 for a in node.attribute):
            continue
        shape = _constant_ints(model, node.input[1])
        if shape is None or shape.ndim != 1 or not len(shape) or int(shape[0]) != batch:
            continue
        new = shape.astype("int64").copy()
        new[0] = 0
        name = f"{node.input[1]}__froq_batch_{i}"
        model.graph.initializer.append(numpy_helper.from_array(new, name))
        node.input[1] = name
        patched += 1
    return patched


class OnnxFRGraph(torch.fx.GraphModule):
    """The converted graph: onnx2torch's ``GraphModule`` with the same submodules (names, order,
    types) and forward, plus the model-zoo ``layout()`` and ``runtime()``."""

    onnx_bytes: bytes = b""  # the edited ONNX graph it was converted from (set by build_onnx)
    # set by a builder that knows the graph (e.g. face_recognition_model.sface); None: unknown
    embedding_tail: EmbeddingTail | None = None

    def runtime(self) -> "OnnxRuntimeForward | None":
        """The graph as an ONNX Runtime module on CPU (same input and output), or None when
        onnxruntime is not installed or the graph is unknown."""
        try:
            import onnxruntime
        except ImportError:
            return None
        return OnnxRuntimeForward(self.onnx_bytes, onnxruntime) if self.onnx_bytes else None

    def layout(self) -> ModelLayout:
        """No embedding tail (unless a builder that knows the graph set ``embedding_tail``),
        residual stages or quality head are known in an arbitrary graph; its batch norms are the
        BatchNorm2d modules onnx2torch made (if the export kept them)."""
        return ModelLayout(
            tail=self.embedding_tail,
            why_no_tail="" if self.embedding_tail is not None else
            "an ONNX graph does not say where its embedding's last layers start",
            why_no_stages="an ONNX graph has no known residual stages",
            **batch_norm_parts(self, "the graph has no BatchNormalization nodes: exporters fold "
                                     "them into the convolutions, re-export with "
                                     "do_constant_folding=False to keep them"),
            why_no_quality_head="an ONNX graph has no known quality head")


class OnnxRuntimeForward(nn.Module):
    """An ONNX graph run by ONNX Runtime on CPU: (B, C, H, W) float tensor → its first output as a
    float32 tensor. No submodules (nothing to hook); torch's thread count at creation."""

    def __init__(self, onnx_bytes: bytes, onnxruntime) -> None:
        super().__init__()
        options = onnxruntime.SessionOptions()
        options.intra_op_num_threads = torch.get_num_threads()
        options.inter_op_num_threads = 1
        self.session = onnxruntime.InferenceSession(onnx_bytes, options, providers=["CPUExecutionProvider"])
        self.input_name = self.session.get_inputs()[0].name

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Batch on CPU → first graph output (torch tensor)."""
        feed = {self.input_name: x.detach().float().contiguous().numpy()}
        return torch.from_numpy(self.session.run(None, feed)[0])


def _rename_reserved(model) -> None:
    """Rename nodes whose names would clash with GraphModule attributes (e.g. ``forward``)."""
    reserved = set(dir(OnnxFRGraph)) | {"initializers"}
    for node in model.graph.node:
        if node.name.replace(".", "/").lstrip("/") in reserved:
            node.name = f"node_{node.name}"


def _default_opset(model) -> int:
    return max((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), default=0)


def _downgrade_opset(model, source: str):
    """Graphs newer than ``TARGET_OPSET`` → converted to it (onnx2torch lacks many newer op
    versions, e.g. Constant-19 in every recent torch export); kept as is if that fails."""
    from onnx import version_converter

    opset = _default_opset(model)
    if opset <= TARGET_OPSET:
        return model
    try:
        converted = version_converter.convert_version(model, TARGET_OPSET)
    except Exception as exc:
        log.warning("%s: could not convert opset %d to %d (%s); trying the graph as it is",
                    source, opset, TARGET_OPSET, _first_line(exc))
        return model
    log.info("%s: opset %d converted to %d for onnx2torch", source, opset, TARGET_OPSET)
    return converted


def _convert(model, source: str) -> nn.Module:
    """onnx2torch conversion → module in eval mode; FroqError naming the unsupported operation."""
    from onnx2torch import convert

    try:
        module = convert(model)
    except Exception as exc:
        raise FroqError(f"{source}: onnx2torch cannot convert this graph (opset "
                        f"{_default_opset(model)}): {_first_line(exc)}") from None
    # the same submodules in the same order (GraphModule copies them in graph order, as
    # onnx2torch's own construction did), now with the zoo's layout() and runtime()
    graph = OnnxFRGraph(module, module.graph, class_name="OnnxFRGraph").eval()
    graph.onnx_bytes = model.SerializeToString()
    return graph


def _run(module: nn.Module, x: torch.Tensor, source: str) -> torch.Tensor:
    with torch.no_grad():
        out = module(x)
    if isinstance(out, (tuple, list)):
        out = out[0]
    if not isinstance(out, torch.Tensor) or out.dim() < 1 or out.shape[0] != x.shape[0]:
        raise FroqError(f"{source}: the model's output for a batch of {x.shape[0]} is not a "
                        "(batch, D) tensor — is the first output the embedding?")
    return out.reshape(out.shape[0], -1).float()


def _close(a: torch.Tensor, b: torch.Tensor) -> bool:
    return a.shape == b.shape and bool((a - b).abs().max() <= _PROBE_RTOL * (1 + b.abs().max()))


def _probe_input(dims: Sequence, input_size, count: int) -> torch.Tensor | None:
    """Random (count, C, H, W) input for the batch probe, or None if the size is unknown."""
    c = dims[1] if len(dims) == 4 and isinstance(dims[1], int) else 3
    if input_size is not None:
        hw = [int(input_size)] * 2 if isinstance(input_size, int) else [int(v) for v in input_size]
    elif len(dims) == 4 and all(isinstance(d, int) for d in dims[2:]):
        hw = list(dims[2:])
    else:
        return None
    gen = torch.Generator().manual_seed(0)
    return torch.randn((count, c, *hw), generator=gen)


def build_onnx(weights: str | None = None, output: str | None = None,
               input_size: int | Sequence[int] | None = None, check_batch: bool = True) -> OnnxFRGraph:
    """ONNX FR model file → ``OnnxFRGraph`` (a ``torch.fx.GraphModule``, eval mode) returning the
    (B, D) embedding.

    In: ``weights`` = path of the ``.onnx`` file; optional ``output`` (graph output name used as
    the embedding, default the first), ``input_size`` ([H, W], only needed for the batch probe
    when the graph's spatial size is dynamic), ``check_batch`` (run the probe; default on).
    Out: the converted module; every ONNX node is a named submodule (see the module docstring).
    Raises FroqError for a missing/unreadable file, several inputs, an unconvertible graph, or a
    graph whose batch size is baked in and cannot be made dynamic.
    """
    if weights is None:
        raise FroqError("the 'onnx' FR family has no built-in network: set model.weights to the "
                        ".onnx file ('random' is not possible for it)")
    source = str(weights)
    model = read_onnx(weights)
    prepare_graph(model, source)  # weight-only quantisation folded, unused inputs dropped (before the opset change)
    inputs = _graph_inputs(model)
    if len(inputs) != 1:
        raise FroqError(f"{source}: the graph has {len(inputs)} inputs "
                        f"({', '.join(v.name for v in inputs)}); an FR model takes one image batch")
    model = _keep_output(model, output, source)
    dims = _dims(_graph_inputs(model)[0])
    if len(dims) != 4:
        raise FroqError(f"{source}: the input '{inputs[0].name}' has shape {dims}; expected an "
                        "image batch (N, C, H, W)")
    if dims[3] == 3 and dims[1] != 3:
        model = _nhwc_to_nchw(model, source)
        dims = _dims(_graph_inputs(model)[0])
    _rename_reserved(model)
    model = _downgrade_opset(model, source)
    fixed = dims[0] if isinstance(dims[0], int) and dims[0] > 0 else None
    if fixed is None:
        module = _convert(model, source)
        probe = _probe_input(dims, input_size, 2) if check_batch else None
        if probe is not None:
            both = _run(module, probe, source)
            single = torch.cat([_run(module, probe[i:i + 1], source) for i in range(2)])
            if not _close(both, single):
                raise FroqError(f"{source}: the graph's batch dimension is dynamic but a batch of 2 "
                                "does not give the per-image outputs (batch size baked into its "
                                "operations?): re-export the model for any batch size")
        elif check_batch:
            log.warning("%s: input size %s is dynamic; batch probe skipped (set "
                        "model.kwargs.input_size: [H, W] to run it)", source, dims[2:])
        return module

    # fixed batch: make it symbolic and prove the result reproduces the original graph
    import copy

    reference = _convert(copy.deepcopy(model), source)
    patched = _make_batch_dynamic(model, fixed)
    hint = (f"{source}: the graph has a fixed batch size of {fixed} baked into its operations and "
            "cannot run other batch sizes; re-export it with a dynamic batch axis (e.g. "
            "torch.onnx.export(..., dynamic_axes={'input': {0: 'batch'}}))")
    module = _convert(model, source)
    count = 2 if fixed == 1 else fixed
    probe = _probe_input(dims, input_size, count)
    if probe is None:
        raise FroqError(f"{source}: the graph has a fixed batch size of {fixed} and a dynamic image "
                        "size: set model.kwargs.input_size: [H, W] so it can be checked")
    ref = torch.cat([_run(reference, probe[i:i + fixed], source) for i in range(0, count, fixed)])
    try:
        ok = _close(_run(module, probe, source), ref) and _close(_run(module, probe[:1], source), ref[:1])
    except FroqError:
        raise
    except Exception:  # shape errors from ops that still assume the old batch size
        ok = False
    if not ok:
        raise FroqError(hint)
    log.warning("%s: the graph had a fixed batch size of %d; made dynamic (%d Reshape shape(s) "
                "patched) and checked against the original graph", source, fixed, patched)
    return module
