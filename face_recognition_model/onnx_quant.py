"""Weight-only quantised ONNX graphs → float graphs that onnx2torch converts layer by layer.

``face_recognition_model.onnx_model.build_onnx`` calls ``prepare_graph`` on every graph it reads,
before anything else (in particular before the opset down-conversion, whose converter does not know
block-wise ``DequantizeLinear``). What it does, in place, each step logged:

- ``DequantizeLinear`` (ai.onnx or com.microsoft) whose ``x``, ``x_scale`` and ``x_zero_point``
  are constants (initializers or ``Constant`` nodes) is computed once and becomes a float
  initializer, ``y = (x - zero_point) * scale`` in the scale's type as ONNX Runtime computes it:
  per tensor (scalar scale), per axis (1-D scale along ``axis``) and block-wise (opset 21:
  ``block_size`` consecutive elements along ``axis`` share a scale). Shape-only operators that
  follow such a tensor (``Reshape``, ``Transpose``, ``Cast``, ``Squeeze``, ``Unsqueeze``,
  ``Flatten``, ``Identity``) with constant inputs are computed too, so a ``Conv`` or ``Gemm``
  gets its weight as an initializer (onnx2torch needs that to make an ``nn.Conv2d`` /
  ``nn.Linear``, i.e. a hookable layer); a constant ``QuantizeLinear`` is computed likewise.
- ``MatMulNBits`` (com.microsoft, ONNX Runtime's 2/4/8-bit block-quantised weight matrix) with
  constant weights, scales and zero points becomes ``MatMul`` with a float initializer (plus
  ``Add`` of its bias when it has one).
- Graph inputs that no node consumes are dropped (exporters that replaced float weights by
  quantised ones sometimes leave the old weights declared as inputs: ONNX Runtime refuses such a
  graph, and FROQ would count them as image inputs), as are initializers nothing consumes.

Refused with one FroqError line naming the file, the operator and the node: activation
quantisation (``QuantizeLinear``/``DequantizeLinear`` on tensors computed at run time, integer
operators such as ``QLinearConv`` or ``MatMulInteger``): onnx2torch has no converter for them and
their integer arithmetic has no float layer to hook; a ``DequantizeLinear`` whose scale is missing
or not a constant; scales whose shape does not fit the weight; an operator ONNX does not define
(a damaged file).
"""

from __future__ import annotations

import logging
from collections import Counter

import numpy as np

from froq.core.errors import FroqError, first_line

log = logging.getLogger(__name__)

QUANT_DOMAINS = ("", "ai.onnx", "com.microsoft")
#: operators computed on constants when their data input derives from a dequantized weight
SHAPE_OPS = ("Reshape", "Transpose", "Cast", "Squeeze", "Unsqueeze", "Flatten", "Identity")
#: operators of activation (integer) quantisation: refused by name
INTEGER_OPS = frozenset({
    "QLinearConv", "QLinearMatMul", "ConvInteger", "MatMulInteger", "DynamicQuantizeLinear",
    "QGemm", "QLinearAdd", "QLinearMul", "QLinearConcat", "QLinearAveragePool",
    "QLinearGlobalAveragePool", "QLinearSigmoid", "QLinearLeakyRelu", "QLinearSoftmax",
    "QLinearReduceMean", "QLinearWhere", "QAttention", "DynamicQuantizeMatMul",
    "MatMulIntegerToFloat", "QOrderedMatMul", "DynamicQuantizeLSTM"})
ACTIVATION_HINT = ("activation quantisation is not supported (onnx2torch has no integer layers): "
                   "use the model's float or weight-only quantised export")


def _attr(node, name: str, default=None):
    from onnx import helper

    for a in node.attribute:
        if a.name == name:
            return helper.get_attribute_value(a)
    return default


def _describe(node) -> str:
    return f"{node.op_type} node '{node.name or node.output[0]}'"


class _Constants(dict):
    """Tensor name → numpy array: the initializers (converted on first use, so a float graph
    costs no copy of its weights) and the values computed here."""

    def __init__(self, initializers) -> None:
        super().__init__()
        self.protos = {t.name: t for t in initializers}

    def __contains__(self, name) -> bool:
        return dict.__contains__(self, name) or name in self.protos

    def __getitem__(self, name: str) -> np.ndarray:
        if not dict.__contains__(self, name) and name in self.protos:
            from onnx import numpy_helper

            dict.__setitem__(self, name, numpy_helper.to_array(self.protos[name]))
        return dict.__getitem__(self, name)

    def get(self, name: str, default=None):
        return self[name] if name in self else default


class _Folder:
    """One pass over a graph's nodes (topological order), folding what it can (module docstring)."""

    def __init__(self, model, source: str) -> None:
        self.model = model
        self.graph = model.graph
        self.source = source
        self.constants = _Constants(self.graph.initializer)
        self.derived: set[str] = set()          # tensors computed here from a dequantized weight
        self.produced: dict[str, object] = {o: n for n in self.graph.node for o in n.output}
        self.counts: Counter = Counter()

    def fail(self, node, what: str) -> FroqError:
        return FroqError(f"{self.source}: {_describe(node)}: {what}")

    # -- constants -------------------------------------------------------------------------------
    def constant_node(self, node) -> None:
        """Record the value of a ``Constant`` node (it stays in the graph)."""
        from onnx import numpy_helper

        for a in node.attribute:
            if a.name == "value":
                self.constants[node.output[0]] = numpy_helper.to_array(a.t)
            elif a.name in ("value_float", "value_floats"):
                self.constants[node.output[0]] = np.asarray(_attr(node, a.name), dtype=np.float32)
            elif a.name in ("value_int", "value_ints"):
                self.constants[node.output[0]] = np.asarray(_attr(node, a.name), dtype=np.int64)

    # -- DequantizeLinear / QuantizeLinear ---------------------------------------------------------
    def _scale_shape(self, node, x: np.ndarray, scale: np.ndarray, what: str) -> np.ndarray:
        """``scale`` (or zero point) broadcast to ``x``'s shape as the node's attributes say."""
        axis = int(_attr(node, "axis", 1))
        block = int(_attr(node, "block_size", 0) or 0)
        if scale.size == 1 and block == 0:
            return scale.reshape(())
        if x.ndim == 0:
            raise self.fail(node, f"a scalar weight has a {what} of shape {list(scale.shape)}")
        axis = axis + x.ndim if axis < 0 else axis
        if not 0 <= axis < x.ndim:
            raise self.fail(node, f"axis {axis} is outside the weight's {x.ndim} dimensions")
        if block == 0:  # per axis
            if scale.ndim != 1 or scale.shape[0] != x.shape[axis]:
                raise self.fail(node, f"per-axis {what} of shape {list(scale.shape)} does not fit "
                                      f"axis {axis} of the weight {list(x.shape)}")
            shape = [1] * x.ndim
            shape[axis] = x.shape[axis]
            return scale.reshape(shape)
        blocks = -(-x.shape[axis] // block)
        want = list(x.shape)
        want[axis] = blocks
        if list(scale.shape) != want:
            raise self.fail(node, f"block-wise {what} of shape {list(scale.shape)} does not fit the "
                                  f"weight {list(x.shape)} with block_size {block} on axis {axis} "
                                  f"(expected {want})")
        return np.repeat(scale, block, axis=axis).take(range(x.shape[axis]), axis=axis)

    def _check_constant_inputs(self, node, names: dict[str, str]) -> None:
        for role, name in names.items():
            if not name:
                continue
            if name in self.constants:
                continue
            if name not in self.produced and not any(v.name == name for v in self.graph.input):
                raise self.fail(node, f"its {role} '{name}' is missing: no initializer or node of "
                                      "the graph gives it (a damaged file?); re-export the model")
            where = "computed at run time" if name in self.produced else "a graph input"
            raise self.fail(node, f"its {role} '{name}' is {where}, not a constant: only "
                                  "weight-only quantisation with constant scales can be folded")

    def dequantize(self, node) -> bool:
        """Fold a DequantizeLinear of a constant; refuse one of an activation. True if folded."""
        inputs = list(node.input) + [""] * 3
        x_name, scale_name, zp_name = inputs[:3]
        if x_name not in self.constants:
            source = self.produced.get(x_name)
            via = f" (from {_describe(source)})" if source is not None else ""
            raise self.fail(node, f"dequantizes the run-time tensor '{x_name}'{via}: {ACTIVATION_HINT}")
        if not scale_name:
            raise self.fail(node, "has no scale input (x_scale): the quantised weight "
                                  f"'{x_name}' cannot be dequantized; re-export the model")
        self._check_constant_inputs(node, {"scale": scale_name, "zero point": zp_name})
        x = self.constants[x_name]
        scale = self.constants[scale_name]
        if not np.issubdtype(scale.dtype, np.floating) and scale.dtype.kind != "V":
            raise self.fail(node, f"its scale '{scale_name}' has the non-float type {scale.dtype}")
        try:
            s = self._scale_shape(node, x, scale, "scale")
            zp = self.constants.get(zp_name) if zp_name else None
            z = self._scale_shape(node, x, zp, "zero point").astype(np.int64) if zp is not None else 0
            out_type = scale.dtype
            y = ((x.astype(np.int64) - z).astype(np.float32) * s.astype(np.float32)).astype(out_type)
        except FroqError:
            raise
        except Exception as exc:  # exotic types (float8 x) and the like
            raise self.fail(node, f"cannot be folded ({first_line(exc)})") from None
        self.constants[node.output[0]] = y
        self.derived.add(node.output[0])
        kind = ("block-wise" if _attr(node, "block_size", 0) else
                "per-tensor" if scale.size == 1 else "per-axis")
        self.counts[f"DequantizeLinear ({kind})"] += 1
        return True

    def quantize(self, node) -> bool:
        """Fold a QuantizeLinear of a constant (float weight → its integers); refuse one of an
        activation. True if folded."""
        inputs = list(node.input) + [""] * 3
        x_name, scale_name, zp_name = inputs[:3]
        if x_name not in self.constants:
            raise self.fail(node, f"quantizes the run-time tensor '{x_name}': {ACTIVATION_HINT}")
        if not scale_name:
            raise self.fail(node, "has no scale input (y_scale); re-export the model")
        self._check_constant_inputs(node, {"scale": scale_name, "zero point": zp_name})
        x = self.constants[x_name].astype(np.float32)
        zp = self.constants.get(zp_name) if zp_name else None
        out_type = zp.dtype if zp is not None else np.dtype(np.uint8)
        if not np.issubdtype(out_type, np.integer):
            raise self.fail(node, f"quantizes to {out_type}: only integer types can be folded")
        s = self._scale_shape(node, x, self.constants[scale_name].astype(np.float32), "scale")
        z = self._scale_shape(node, x, zp, "zero point").astype(np.int64) if zp is not None else 0
        info = np.iinfo(out_type)
        q = np.clip(np.rint(x / s) + z, info.min, info.max).astype(out_type)
        self.constants[node.output[0]] = q
        self.derived.add(node.output[0])
        self.counts["QuantizeLinear (constant)"] += 1
        return True

    # -- shape-only operators on folded weights -------------------------------------------------------
    def shape_op(self, node) -> bool:
        """Compute a shape-only operator on a folded weight. True if folded."""
        if not node.input or node.input[0] not in self.derived:
            return False
        if any(n and n not in self.constants for n in node.input):
            return False
        x = self.constants[node.input[0]]
        op = node.op_type
        try:
            if op == "Reshape":
                shape = [int(v) for v in self.constants[node.input[1]]]
                if not _attr(node, "allowzero", 0):
                    shape = [x.shape[i] if v == 0 else v for i, v in enumerate(shape)]
                y = x.reshape(shape)
            elif op == "Transpose":
                perm = _attr(node, "perm")
                y = np.transpose(x, list(perm) if perm is not None else None)
            elif op == "Cast":
                from onnx import helper
                y = x.astype(helper.tensor_dtype_to_np_dtype(int(_attr(node, "to"))))
            elif op in ("Squeeze", "Unsqueeze"):
                axes = (self.constants[node.input[1]] if len(node.input) > 1 and node.input[1]
                        else _attr(node, "axes"))
                axes = [int(a) for a in axes] if axes is not None else None
                if op == "Squeeze":
                    y = np.squeeze(x, tuple(a % x.ndim for a in axes)) if axes else np.squeeze(x)
                else:
                    ndim = x.ndim + len(axes)
                    y = np.expand_dims(x, tuple(sorted(a % ndim for a in axes)))
            elif op == "Flatten":
                axis = int(_attr(node, "axis", 1)) % max(x.ndim, 1) if x.ndim else 0
                y = x.reshape(int(np.prod(x.shape[:axis])), -1)
            else:  # Identity
                y = x
        except Exception as exc:
            raise self.fail(node, f"cannot be applied to the dequantized weight "
                                  f"'{node.input[0]}' ({first_line(exc)})") from None
        self.constants[node.output[0]] = y
        self.derived.add(node.output[0])
        self.counts[op] += 1
        return True

    # -- MatMulNBits ------------------------------------------------------------------------------
    def matmul_nbits(self, node) -> list:
        """MatMulNBits with constant weights → [MatMul (, Add)] nodes with a float initializer."""
        inputs = list(node.input) + [""] * 6
        a_name, b_name, scale_name, zp_name, gidx_name, bias_name = inputs[:6]
        if not scale_name:
            raise self.fail(node, "has no scales input: the quantised weight cannot be dequantized")
        self._check_constant_inputs(node, {"weight": b_name, "scale": scale_name, "zero point": zp_name,
                                           "g_idx": gidx_name, "bias": bias_name})
        k, n = int(_attr(node, "K")), int(_attr(node, "N"))
        bits, block = int(_attr(node, "bits", 4)), int(_attr(node, "block_size"))
        if bits not in (2, 4, 8):
            raise self.fail(node, f"bits={bits} is not supported (2, 4 or 8)")
        per_byte = 8 // bits
        k_blocks = -(-k // block)
        packed = self.constants[b_name].astype(np.uint8).reshape(n, -1)
        scales = self.constants[scale_name]
        if scales.size != n * k_blocks:
            raise self.fail(node, f"scales of {scales.size} values do not fit N={n} x "
                                  f"{k_blocks} blocks (K={k}, block_size={block})")
        scales = scales.reshape(n, k_blocks).astype(np.float32)

        def unpack(data: np.ndarray, count: int) -> np.ndarray:
            shifts = np.arange(per_byte, dtype=np.uint8) * bits
            vals = (data[..., None] >> shifts) & ((1 << bits) - 1)
            return vals.reshape(data.shape[0], -1)[:, :count].astype(np.int64)

        q = unpack(packed, k_blocks * block)[:, :k]
        zp = self.constants.get(zp_name) if zp_name else None
        if zp is None:
            zero = np.full((n, k_blocks), 1 << (bits - 1), dtype=np.float32)
        elif np.issubdtype(zp.dtype, np.floating):
            zero = zp.reshape(n, k_blocks).astype(np.float32)
        else:
            zero = unpack(zp.astype(np.uint8).reshape(n, -1), k_blocks).astype(np.float32)
        group = (self.constants[gidx_name].astype(np.int64) if gidx_name
                 else np.arange(k) // block)
        weight = (q.astype(np.float32) - zero[:, group]) * scales[:, group]   # (N, K)
        from onnx import helper, numpy_helper

        name = f"{node.output[0]}__froq_weight"
        self.graph.initializer.append(numpy_helper.from_array(
            np.ascontiguousarray(weight.T.astype(self.constants[scale_name].dtype)), name))
        self.counts["MatMulNBits"] += 1
        if not bias_name:
            return [helper.make_node("MatMul", [a_name, name], list(node.output), name=node.name)]
        mid = f"{node.output[0]}__froq_matmul"
        return [helper.make_node("MatMul", [a_name, name], [mid], name=node.name),
                helper.make_node("Add", [mid, bias_name], list(node.output), name=f"{node.name}_bias")]

    # -- the pass -----------------------------------------------------------------------------------
    def run(self) -> None:
        from onnx import defs, numpy_helper

        kept = []
        for node in self.graph.node:
            op, domain = node.op_type, node.domain
            if op == "Constant" and domain in ("", "ai.onnx"):
                self.constant_node(node)
                kept.append(node)
            elif op == "DequantizeLinear" and domain in QUANT_DOMAINS:
                self.dequantize(node)
            elif op == "QuantizeLinear" and domain in QUANT_DOMAINS:
                self.quantize(node)
            elif op == "MatMulNBits" and domain == "com.microsoft":
                kept.extend(self.matmul_nbits(node))
            elif op in INTEGER_OPS:
                raise self.fail(node, ACTIVATION_HINT)
            elif op in SHAPE_OPS and domain in ("", "ai.onnx") and self.shape_op(node):
                pass
            elif domain in ("", "ai.onnx") and not defs.has(op):
                raise self.fail(node, "no such ONNX operator (a damaged or hand-edited file?): "
                                      "onnx2torch cannot convert it")
            else:
                kept.append(node)
        if not self.counts:
            return
        del self.graph.node[:]
        self.graph.node.extend(kept)
        needed = _consumed(self.graph) | {o.name for o in self.graph.output}
        unused = [n for n in kept if n.op_type == "Constant" and n.output[0] not in needed]
        for node in unused:  # e.g. a quantised weight given by a Constant node, now folded
            self.graph.node.remove(node)
        existing = {t.name for t in self.graph.initializer}
        for name in sorted(self.derived & needed - existing):
            self.graph.initializer.append(numpy_helper.from_array(np.ascontiguousarray(self.constants[name]), name))
        del self.graph.value_info[:]  # shapes of removed tensors; conversion re-infers them
        log.info("%s: weight quantisation folded to float initializers: %s", self.source,
                 ", ".join(f"{c} {k}" for k, c in sorted(self.counts.items())))


def _consumed(graph) -> set[str]:
    """Every tensor name a node of ``graph`` (or of a subgraph of one) reads."""
    names: set[str] = set()
    for node in graph.node:
        names.update(n for n in node.input if n)
        for a in node.attribute:
            for sub in ([a.g] if a.HasField("g") else []) + list(a.graphs):
                names |= _consumed(sub)
    return names


def drop_unused(model, source: str) -> int:
    """Remove graph inputs and initializers that no node consumes (and no output names), and
    take initializers out of the graph inputs (IR version 4 and later: they are constants, which
    ONNX Runtime can then fold, instead of inputs that could be fed).

    In: an ``onnx.ModelProto`` (edited in place), the file name for the log. Out: how many graph
    inputs that no node consumes were dropped.
    """
    graph = model.graph
    needed = _consumed(graph) | {o.name for o in graph.output}
    unused_inputs = [v.name for v in graph.input if v.name not in needed]
    unused_inits = [t.name for t in graph.initializer if t.name not in needed]
    inits = {t.name for t in graph.initializer} if model.ir_version >= 4 else set()
    kept = [v for v in graph.input if v.name in needed and v.name not in inits]
    if len(kept) != len(graph.input):
        constant = len(graph.input) - len(kept) - len(unused_inputs)
        del graph.input[:]
        graph.input.extend(kept)
        if unused_inputs:
            log.info("%s: %d graph input(s) that no node consumes dropped (e.g. %s)", source,
                     len(unused_inputs), ", ".join(unused_inputs[:3]))
        if constant:
            log.debug("%s: %d initializer(s) listed as graph inputs made constants", source, constant)
    if unused_inits:
        kept_t = [t for t in graph.initializer if t.name in needed]
        del graph.initializer[:]
        graph.initializer.extend(kept_t)
        log.debug("%s: %d unused initializer(s) dropped", source, len(unused_inits))
    return len(unused_inputs)


def prepare_graph(model, source: str):
    """Fold weight-only quantisation and drop unused graph inputs (module docstring).

    In: an ``onnx.ModelProto`` as read from ``source`` (edited in place) and the file name for
    messages. Out: the same model, float weights as initializers. Raises FroqError (one line: the
    file, the operator and its node) for activation quantisation, a missing or non-constant scale,
    or a scale that does not fit its weight.
    """
    _Folder(model, source).run()
    drop_unused(model, source)
    return model
