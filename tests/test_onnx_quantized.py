"""Quantised ONNX graphs through the one ONNX loader (``build_onnx`` → ``onnx_quant.prepare_graph``).

Small graphs built with ``onnx.helper``: a Conv and a Gemm / MatMul whose weights are int8 (or
int4) behind ``DequantizeLinear`` per tensor, per axis and block-wise (opset 21, folded before the
down-conversion to 17), ONNX Runtime's ``MatMulNBits``, a constant ``QuantizeLinear``, and graph
inputs no node consumes. Each converted module must equal ONNX Runtime on the same graph to 1e-5
and keep its Conv / Linear layers as named, hookable submodules. Activation quantisation, a
missing scale, integer operators, an unsupported operator and damaged files are refused in one
line naming the file and the operator.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from face_recognition_model.onnx_model import build_onnx
from froq.core.errors import FroqError

onnx = pytest.importorskip("onnx")
pytest.importorskip("onnx2torch")
ort = pytest.importorskip("onnxruntime")
from onnx import TensorProto, helper, numpy_helper  # noqa: E402

SIZE = 8
C_IN, C_OUT, EMB = 6, 4, 5
FEAT = C_OUT * SIZE * SIZE


@pytest.fixture(autouse=True)
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _quantize(w: np.ndarray, mode: str, axis: int, block: int = 4, bits: int = 8):
    """Float weight → (integers, scale, zero point, DequantizeLinear attributes) for ``mode``."""
    qmax = (1 << (bits - 1)) - 1
    if mode == "tensor":
        scale = np.array(np.abs(w).max() / qmax, np.float32)
        zp = np.array(1, np.int8)
        attrs = {}
    elif mode == "axis":
        other = tuple(i for i in range(w.ndim) if i != axis)
        scale = (np.abs(w).max(axis=other) / qmax).astype(np.float32)
        zp = np.arange(len(scale), dtype=np.int8) % 3 - 1
        attrs = {"axis": axis}
    else:  # block-wise along axis, the last block partial when the size is not a multiple
        blocks = -(-w.shape[axis] // block)
        shape = list(w.shape)
        shape[axis] = blocks
        rng = np.random.default_rng(1)
        scale = (np.abs(w).max() / qmax * rng.uniform(0.8, 1.2, shape)).astype(np.float32)
        zp = rng.integers(-2, 3, shape).astype(np.int8)
        attrs = {"axis": axis, "block_size": block}
    full = scale if mode != "block" else np.repeat(scale, block, axis=axis).take(
        range(w.shape[axis]), axis=axis)
    zfull = zp if mode != "block" else np.repeat(zp, block, axis=axis).take(range(w.shape[axis]), axis=axis)
    if mode == "axis":
        shape = [1] * w.ndim
        shape[axis] = -1
        full, zfull = scale.reshape(shape), zp.reshape(shape)
    q = np.clip(np.rint(w / full) + zfull, -qmax - 1, qmax).astype(np.int8)
    return q, scale, zp, attrs


def _dq(name: str, w: np.ndarray, mode: str, axis: int, inits: list, nodes: list, bits: int = 8,
        block: int = 4) -> str:
    """Append initializers + a DequantizeLinear producing float ``name`` from quantised ``w``."""
    q, scale, zp, attrs = _quantize(w, mode, axis, block, bits)
    if bits == 4:
        inits.append(helper.make_tensor(f"{name}_q", TensorProto.INT4, q.shape, q.flatten().tolist()))
        inits.append(helper.make_tensor(f"{name}_zp", TensorProto.INT4, zp.shape, zp.flatten().tolist()))
    else:
        inits += [numpy_helper.from_array(q, f"{name}_q"), numpy_helper.from_array(zp, f"{name}_zp")]
    inits.append(numpy_helper.from_array(scale, f"{name}_scale"))
    nodes.append(helper.make_node("DequantizeLinear", [f"{name}_q", f"{name}_scale", f"{name}_zp"],
                                  [name], name=f"{name}_dq", **attrs))
    return name


def quant_graph(mode: str, head: str = "gemm", bits: int = 8, reshape: bool = False,
                opset: int = 21, extra_inputs: int = 0):
    """input (N, 6, 8, 8) → Conv 3x3 (quantised weight) → Relu → Flatten → Gemm / MatMul (quantised)
    → (N, 5). ``reshape``: the conv weight is stored 2-D and reshaped to 4-D (as SFace's)."""
    rng = np.random.default_rng(0)
    conv_w = rng.normal(0, 0.3, (C_OUT, C_IN, 3, 3)).astype(np.float32)
    fc_w = rng.normal(0, 0.1, (EMB, FEAT)).astype(np.float32)
    bias = rng.normal(0, 0.1, EMB).astype(np.float32)
    inits, nodes = [numpy_helper.from_array(bias, "fc_b")], []
    if reshape:
        _dq("conv_w2d", conv_w.reshape(C_OUT, -1), mode, 1 if mode != "axis" else 0, inits, nodes, bits)
        inits.append(numpy_helper.from_array(np.array(conv_w.shape, np.int64), "conv_shape"))
        nodes.append(helper.make_node("Reshape", ["conv_w2d", "conv_shape"], ["conv_w"], name="conv_w_reshape"))
    else:
        _dq("conv_w", conv_w, mode, 1 if mode == "block" else 0, inits, nodes, bits)
    nodes += [helper.make_node("Conv", ["input", "conv_w"], ["c"], name="conv", pads=[1, 1, 1, 1]),
              helper.make_node("Relu", ["c"], ["r"], name="relu"),
              helper.make_node("Flatten", ["r"], ["f"], name="flatten")]
    if head == "gemm":
        _dq("fc_w", fc_w, mode, 1 if mode == "block" else 0, inits, nodes, bits, block=16)
        nodes.append(helper.make_node("Gemm", ["f", "fc_w", "fc_b"], ["embedding"], name="fc", transB=1))
    else:
        _dq("fc_w", np.ascontiguousarray(fc_w.T), mode, 0 if mode == "block" else 1, inits, nodes, bits, block=16)
        nodes += [helper.make_node("MatMul", ["f", "fc_w"], ["m"], name="fc"),
                  helper.make_node("Add", ["m", "fc_b"], ["embedding"], name="fc_bias")]
    inputs = [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["batch", C_IN, SIZE, SIZE])]
    inputs += [helper.make_tensor_value_info(f"old_weight_{i}", TensorProto.FLOAT, [C_OUT, C_IN, 3, 3])
               for i in range(extra_inputs)]
    graph = helper.make_graph(nodes, "quant", inputs,
                              [helper.make_tensor_value_info("embedding", TensorProto.FLOAT, ["batch", EMB])],
                              inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)], ir_version=10)


def save(model, tmp_path, name: str = "q.onnx"):
    path = tmp_path / name
    onnx.save(model, str(path))
    return path


def ort_run(path, x: np.ndarray, extra: dict | None = None) -> np.ndarray:
    """ONNX Runtime on the graph as it is, its graph optimisations off: with them on it fuses
    DequantizeLinear → MatMul into integer kernels that quantise the activations too (measured:
    0.008 off on these graphs), which is another computation than the graph's."""
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    return session.run(None, {"input": x, **(extra or {})})[0]


def probe() -> np.ndarray:
    return np.random.default_rng(3).normal(0, 1, (3, C_IN, SIZE, SIZE)).astype(np.float32)


def check_equal_and_hookable(path, reference: np.ndarray, linear: bool = True):
    """Converted module == ``reference`` to 1e-5; the Conv (and Gemm) are named layers that fire."""
    module = build_onnx(path)
    modules = dict(module.named_modules())
    assert isinstance(modules["conv"], nn.Conv2d)
    if linear:
        assert isinstance(modules["fc"], nn.Linear)
    fired = []
    hooks = [modules[n].register_forward_hook(lambda m, i, o, n=n: fired.append(n)) for n in ("conv", "fc")]
    with torch.no_grad():
        out = module(torch.from_numpy(probe())).numpy()
    for h in hooks:
        h.remove()
    assert fired == ["conv", "fc"]
    assert out.shape == reference.shape
    np.testing.assert_allclose(out, reference, atol=1e-5, rtol=1e-5)
    assert not any(n.op_type == "DequantizeLinear" for n in onnx.load_from_string(module.onnx_bytes).graph.node)
    return module


@pytest.mark.parametrize("mode", ["tensor", "axis", "block"])
@pytest.mark.parametrize("head", ["gemm", "matmul"])
def test_dequantize_linear_folds_to_the_onnxruntime_result(mode, head, tmp_path):
    path = save(quant_graph(mode, head), tmp_path)
    check_equal_and_hookable(path, ort_run(path, probe()), linear=head == "gemm")


def test_block_wise_int4_with_a_reshaped_weight(tmp_path):
    """SFace's pattern: a 2-D block-quantised weight reshaped to the Conv's 4-D weight; int4."""
    path = save(quant_graph("block", reshape=True, bits=4), tmp_path)
    reference = ort_run(path, probe())
    module = check_equal_and_hookable(path, reference)
    assert tuple(module.get_submodule("conv").weight.shape) == (C_OUT, C_IN, 3, 3)


def test_folding_happens_before_the_opset_down_conversion(tmp_path, caplog):
    """Opset 21 graph (block_size unknown to the version converter) → folded, then converted."""
    path = save(quant_graph("block"), tmp_path)
    with caplog.at_level("INFO"):
        build_onnx(path)
    text = caplog.text
    assert "DequantizeLinear (block-wise)" in text and "opset 21 converted to 17" in text
    assert text.index("DequantizeLinear (block-wise)") < text.index("opset 21 converted to 17")


def test_unused_graph_inputs_are_dropped(tmp_path):
    """Old float weights left as graph inputs (SFace has 29): the file loads with one input and
    equals ONNX Runtime fed any values for them."""
    path = save(quant_graph("axis", extra_inputs=3), tmp_path)
    dummy = {f"old_weight_{i}": np.zeros((C_OUT, C_IN, 3, 3), np.float32) for i in range(3)}
    module = check_equal_and_hookable(path, ort_run(path, probe(), dummy))
    graph = onnx.load_from_string(module.onnx_bytes).graph
    inits = {t.name for t in graph.initializer}
    assert [v.name for v in graph.input if v.name not in inits] == ["input"]


def test_unused_initializer_inputs_are_dropped(tmp_path):
    model = quant_graph("tensor")
    unused = numpy_helper.from_array(np.ones(3, np.float32), "unused_const")
    model.graph.initializer.append(unused)
    model.graph.input.append(helper.make_tensor_value_info("unused_const", TensorProto.FLOAT, [3]))
    path = save(model, tmp_path)
    module = check_equal_and_hookable(path, ort_run(path, probe()))
    graph = onnx.load_from_string(module.onnx_bytes).graph
    assert "unused_const" not in {t.name for t in graph.initializer} | {v.name for v in graph.input}


def test_constant_quantize_then_dequantize_folds(tmp_path):
    """A float weight quantised and dequantised in the graph (constant Q/DQ pair)."""
    model = quant_graph("tensor")
    g = model.graph
    w = numpy_helper.to_array(next(t for t in g.initializer if t.name == "conv_w_q")).astype(np.float32) * 0.05
    g.initializer.append(numpy_helper.from_array(w, "conv_w_float"))
    g.node.insert(0, helper.make_node("QuantizeLinear", ["conv_w_float", "conv_w_scale", "conv_w_zp"],
                                      ["conv_w_q2"], name="conv_w_quant"))
    dq = next(n for n in g.node if n.name == "conv_w_dq")
    dq.input[0] = "conv_w_q2"
    path = save(model, tmp_path)
    check_equal_and_hookable(path, ort_run(path, probe()))


def test_quantised_weight_in_a_constant_node_folds(tmp_path):
    """The integers given by a Constant node instead of an initializer; the node goes too."""
    model = quant_graph("axis")
    g = model.graph
    tensor = next(t for t in g.initializer if t.name == "conv_w_q")
    g.initializer.remove(tensor)
    g.node.insert(0, helper.make_node("Constant", [], ["conv_w_q"], name="conv_w_const", value=tensor))
    path = save(model, tmp_path)
    module = check_equal_and_hookable(path, ort_run(path, probe()))
    assert "Constant" not in {n.op_type for n in onnx.load_from_string(module.onnx_bytes).graph.node}


def test_matmul_nbits_folds_to_matmul(tmp_path):
    """ONNX Runtime's 4-bit MatMulNBits (packed weights, packed zero points, bias) → MatMul."""
    k, n, block, bits = 40, 6, 16, 4
    rng = np.random.default_rng(5)
    k_blocks = -(-k // block)
    q = rng.integers(0, 16, (n, k_blocks * block)).astype(np.uint8)
    packed = (q[:, 0::2] | (q[:, 1::2] << 4)).reshape(n, k_blocks, block * bits // 8)
    zps = rng.integers(0, 16, (n, k_blocks + 1)).astype(np.uint8)
    zp_packed = (zps[:, 0::2] | (zps[:, 1::2] << 4)).reshape(-1)
    scales = rng.uniform(0.01, 0.05, n * k_blocks).astype(np.float32)
    bias = rng.normal(0, 0.1, n).astype(np.float32)
    inits = [numpy_helper.from_array(packed, "B"), numpy_helper.from_array(scales, "S"),
             numpy_helper.from_array(zp_packed, "Z"), numpy_helper.from_array(bias, "bias"),
             numpy_helper.from_array(rng.normal(0, 0.3, (4, 3, 3, 3)).astype(np.float32), "conv_w"),
             numpy_helper.from_array(np.array([0, k], np.int64), "shape")]
    nodes = [helper.make_node("Conv", ["input", "conv_w"], ["c"], name="conv", pads=[1, 1, 1, 1]),
             helper.make_node("Reshape", ["c", "shape"], ["f"], name="flatten"),
             helper.make_node("MatMulNBits", ["f", "B", "S", "Z", "", "bias"], ["embedding"], name="fc",
                              domain="com.microsoft", K=k, N=n, bits=bits, block_size=block)]
    graph = helper.make_graph(nodes, "nbits",
                              [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["batch", 3, 2, 5])],
                              [helper.make_tensor_value_info("embedding", TensorProto.FLOAT, ["batch", n])],
                              inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17),
                                                    helper.make_opsetid("com.microsoft", 1)], ir_version=8)
    path = save(model, tmp_path)
    x = np.random.default_rng(6).normal(0, 1, (3, 3, 2, 5)).astype(np.float32)
    try:
        reference = ort_run(path, x)
    except Exception as exc:  # an onnxruntime build without the contrib operator
        pytest.skip(f"onnxruntime cannot run MatMulNBits here: {str(exc).splitlines()[0][:120]}")
    module = build_onnx(path)
    with torch.no_grad():
        out = module(torch.from_numpy(x)).numpy()
    np.testing.assert_allclose(out, reference, atol=1e-5, rtol=1e-5)
    assert isinstance(module.get_submodule("conv"), nn.Conv2d)


def one_line_error(path, *needles: str) -> str:
    with pytest.raises(FroqError) as err:
        build_onnx(path)
    message = str(err.value)
    assert "\n" not in message and str(path) in message, message
    for needle in needles:
        assert needle in message, message
    return message


def test_activation_quantisation_is_refused_in_one_line(tmp_path):
    """input → QuantizeLinear → DequantizeLinear → Conv...: integer activations are refused."""
    model = quant_graph("tensor")
    g = model.graph
    g.initializer.extend([numpy_helper.from_array(np.array(0.05, np.float32), "act_scale"),
                          numpy_helper.from_array(np.array(0, np.int8), "act_zp")])
    g.node.insert(0, helper.make_node("QuantizeLinear", ["input", "act_scale", "act_zp"], ["xq"], name="act_q"))
    g.node.insert(1, helper.make_node("DequantizeLinear", ["xq", "act_scale", "act_zp"], ["xdq"], name="act_dq"))
    next(n for n in g.node if n.name == "conv").input[0] = "xdq"
    path = save(model, tmp_path)
    ort_run(path, probe())  # a valid graph: ONNX Runtime runs it
    one_line_error(path, "QuantizeLinear", "act_q", "activation quantisation")
    # the dequantize half alone (the activation arrives already quantised from another node)
    g.node.remove(next(n for n in g.node if n.name == "act_q"))
    g.node.insert(0, helper.make_node("Cast", ["input"], ["xq"], name="to_int", to=TensorProto.INT8))
    one_line_error(save(model, tmp_path, "dq.onnx"), "DequantizeLinear", "act_dq", "Cast")


def test_integer_operators_are_refused_in_one_line(tmp_path):
    model = quant_graph("tensor")
    g = model.graph
    conv = next(n for n in g.node if n.name == "conv")
    conv.op_type = "ConvInteger"
    one_line_error(save(model, tmp_path), "ConvInteger", "activation quantisation")


@pytest.mark.parametrize("damage", ["no_scale_input", "scale_not_in_graph", "scale_is_an_input",
                                    "scale_wrong_shape"])
def test_missing_or_bad_scale_is_one_line(damage, tmp_path):
    model = quant_graph("block")
    g = model.graph
    dq = next(n for n in g.node if n.name == "conv_w_dq")
    if damage == "no_scale_input":
        del dq.input[1:]
        needle = "no scale"
    elif damage == "scale_not_in_graph":
        g.initializer.remove(next(t for t in g.initializer if t.name == "conv_w_scale"))
        needle = "'conv_w_scale' is missing"
    elif damage == "scale_is_an_input":
        g.initializer.remove(next(t for t in g.initializer if t.name == "conv_w_scale"))
        g.input.append(helper.make_tensor_value_info("conv_w_scale", TensorProto.FLOAT, [C_OUT, 2, 3, 3]))
        needle = "'conv_w_scale' is a graph input, not a constant"
    else:
        t = next(t for t in g.initializer if t.name == "conv_w_scale")
        t.CopyFrom(numpy_helper.from_array(np.ones((C_OUT, 1, 3, 3), np.float32), "conv_w_scale"))
        needle = "block_size 4"
    one_line_error(save(model, tmp_path), "DequantizeLinear", "conv_w_dq", needle)


@pytest.mark.parametrize("op", ["NoSuchOp", "Hardmax"])
def test_unsupported_operator_is_named(op, tmp_path):
    """An operator ONNX does not define (damaged file) and one onnx2torch cannot convert."""
    model = quant_graph("axis", opset=17)
    relu = next(n for n in model.graph.node if n.name == "relu")
    relu.op_type = op
    one_line_error(save(model, tmp_path), op)


def test_truncated_and_tampered_files_are_one_line(tmp_path):
    data = quant_graph("block").SerializeToString()
    truncated = tmp_path / "truncated.onnx"
    truncated.write_bytes(data[: len(data) // 2])
    one_line_error(truncated)
    tampered = tmp_path / "tampered.onnx"
    assert data.count(b"DequantizeLinear") == 2
    tampered.write_bytes(data.replace(b"DequantizeLinear", b"DequantizeLineaX", 1))
    one_line_error(tampered, "DequantizeLineaX")
