"""The float C backend: compiled with gcc -Werror and every warning, it matches onnxruntime's float output.

Models: the digits example after its float passes (Keras → tf2onnx → passes), ONNX LSTMs (forward, reverse,
Y and Y_h read) after unroll-lstm, and small hand-written graphs that reach every float kernel.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import onnx
import onnx_ir as ir
import pytest
from onnx import TensorProto, helper, numpy_helper

from qpass.codegen import float_c
from qpass.config import load_pipeline
from qpass.converters import load_model
from qpass.errors import UnsupportedOpError
from qpass.ort import session
from qpass.passes.runner import run_passes

ROOT = Path(__file__).resolve().parents[2]
TOL = 1e-4
LSTM_PASSES = ["unroll-lstm", "fold-constants", "simplify-layout", "matmul-to-gemm"]

pytestmark = pytest.mark.skipif(shutil.which("gcc") is None, reason="gcc is not installed")


def _ort(model: ir.Model | onnx.ModelProto, x: np.ndarray) -> np.ndarray:
    proto = model if isinstance(model, onnx.ModelProto) else ir.serde.serialize_model(model)
    sess = session(proto)
    inp = sess.get_inputs()[0]
    return np.stack([sess.run(None, {inp.name: s.reshape(inp.shape)})[0].reshape(-1) for s in x])


def _float_c(model: ir.Model, name: str, tmp: Path, x: np.ndarray) -> tuple[np.ndarray, str]:
    gen = float_c.generate(model, name, source="test")
    c_file, h_file = float_c.write(gen, tmp, name)
    out_size = int(np.prod(model.graph.outputs[0].shape))
    return float_c.compile_and_run(c_file, h_file, name, x.reshape(len(x), -1), out_size), gen.c


def _passes(model: ir.Model | onnx.ModelProto, names: list[str]) -> ir.Model:
    """The float graph the solver would see: loaded as the pipeline loads it, then the named passes."""
    if isinstance(model, onnx.ModelProto):
        model = ir.serde.deserialize_model(onnx.shape_inference.infer_shapes(model, strict_mode=True,
                                                                             data_prop=True))
    run_passes(model, [(n, {}) for n in names], base_dir=ROOT)
    return model


# -- the digits example -----------------------------------------------------------------------
def test_digits_matches_onnxruntime(tmp_path: Path) -> None:
    pipe = load_pipeline(ROOT / "examples" / "digits" / "pipeline.yaml")
    model = load_model(pipe.resolve(pipe.model.path), batch_size=pipe.model.batch_size,
                       safe_mode=pipe.model.safe_mode, opset=pipe.model.opset)
    model = _passes(model, [p.name for p in pipe.passes])
    x = np.load(ROOT / "examples" / "digits" / "test.npz")["x"].astype(np.float32)[:100]
    y_c, source = _float_c(model, "digits", tmp_path, x)
    y_ort = _ort(model, x)
    assert np.abs(y_c - y_ort).max() < TOL
    assert "qf_linear(" in source and "qf_softmax(" in source
    assert "int8_t" not in source and "double" not in source


# -- ONNX LSTMs -------------------------------------------------------------------------------
H, I_IN, CLASSES = 8, 6, 4


def _lstm_model(t_len: int, direction: str, read_y: bool, seed: int = 0) -> onnx.ModelProto:
    """x [1,T,I] → Transpose → LSTM → Y_h (or all of Y) → Reshape → Gemm → Softmax, as exporters write it."""
    rng = np.random.default_rng(seed)

    def init(name: str, a: np.ndarray) -> onnx.TensorProto:
        return numpy_helper.from_array(np.asarray(a, dtype=np.float32), name)

    rows, feat = (t_len, H) if read_y else (1, H)
    nodes = [
        helper.make_node("Transpose", ["x"], ["xt"], perm=[1, 0, 2]),
        helper.make_node("LSTM", ["xt", "W", "R", "B"], ["Y", "Y_h"], hidden_size=H, direction=direction),
        helper.make_node("Reshape", ["Y" if read_y else "Y_h", "shape"], ["h"]),
        helper.make_node("Gemm", ["h", "Wd", "bd"], ["logits"]),
        helper.make_node("Softmax", ["logits"], ["prob"]),
    ]
    graph = helper.make_graph(
        nodes, "lstm", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, t_len, I_IN])],
        [helper.make_tensor_value_info("prob", TensorProto.FLOAT, [rows, CLASSES])],
        [init("W", rng.normal(0, 0.4, (1, 4 * H, I_IN))), init("R", rng.normal(0, 0.4, (1, 4 * H, H))),
         init("B", rng.normal(0, 0.2, (1, 8 * H))), init("Wd", rng.normal(0, 0.8, (feat, CLASSES))),
         init("bd", rng.normal(0, 0.1, CLASSES)),
         numpy_helper.from_array(np.array([rows, feat], np.int64), "shape")])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


@pytest.mark.parametrize(("direction", "t_len", "read_y"),
                         [("forward", 20, False), ("reverse", 20, False), ("forward", 12, True),
                          ("reverse", 7, True), ("forward", 1, False)])
def test_lstm_matches_onnxruntime_in_one_loop(tmp_path: Path, direction: str, t_len: int, read_y: bool) -> None:
    proto = _lstm_model(t_len, direction, read_y)
    model = _passes(proto, LSTM_PASSES)
    assert not any(n.op_type == "LSTM" for n in model.graph)
    x = np.random.default_rng(1).normal(0, 1, (40, 1, t_len, I_IN)).astype(np.float32)
    y_c, source = _float_c(model, "seq", tmp_path, x)
    y_ort = _ort(proto, x)  # the original LSTM node, not the unrolled graph
    assert np.abs(y_c - y_ort).max() < TOL
    assert source.count("qf_lstm(") == 2  # its definition and one call: one loop body for every step


def _check_recurrent(tmp: Path, t_len: int, direction: str, read_y: bool, op: str, gates: int, seed: int,
                     **attrs) -> None:
    """The LSTM model with its LSTM turned into a GRU or RNN (`gates` weight blocks, random W/R/B, `attrs`): its
    float C agrees with onnxruntime on the original node and runs one kernel call for every step."""
    proto = _lstm_model(t_len, direction, read_y)
    node = proto.graph.node[1]
    node.op_type = op
    node.attribute.extend(helper.make_attribute(k, v) for k, v in attrs.items())
    rng = np.random.default_rng(seed)
    dims = {"W": [1, gates * H, I_IN], "R": [1, gates * H, H], "B": [1, 2 * gates * H]}
    for init in proto.graph.initializer:
        if init.name in dims:
            init.CopyFrom(numpy_helper.from_array(rng.normal(0, 0.4, dims[init.name]).astype(np.float32), init.name))
    model = _passes(proto, [f"unroll-{op.lower()}", "fold-constants", "simplify-layout", "matmul-to-gemm"])
    x = np.random.default_rng(1).normal(0, 1, (40, 1, t_len, I_IN)).astype(np.float32)
    y_c, source = _float_c(model, "seq", tmp, x)
    assert np.abs(y_c - _ort(proto, x)).max() < TOL
    assert source.count(f"qf_{op.lower()}(") == 2  # its definition and one call


@pytest.mark.parametrize(("direction", "t_len", "read_y", "lbr"),
                         [("forward", 20, False, 1), ("reverse", 9, True, 1), ("forward", 12, True, 0),
                          ("reverse", 7, False, 0), ("forward", 1, False, 1)])
def test_gru_matches_onnxruntime_in_one_loop(tmp_path: Path, direction: str, t_len: int, read_y: bool,
                                             lbr: int) -> None:
    _check_recurrent(tmp_path, t_len, direction, read_y, "GRU", 3, seed=2, linear_before_reset=lbr)


@pytest.mark.parametrize(("direction", "t_len", "read_y", "act"),
                         [("forward", 20, False, "Tanh"), ("reverse", 7, True, "Relu"), ("forward", 1, False, "Tanh")])
def test_rnn_matches_onnxruntime_in_one_loop(tmp_path: Path, direction: str, t_len: int, read_y: bool,
                                             act: str) -> None:
    _check_recurrent(tmp_path, t_len, direction, read_y, "RNN", 1, seed=3, activations=[act])


def test_lstm_code_size_does_not_grow_with_t() -> None:
    sources = {}
    for t_len in (5, 50):
        model = _passes(_lstm_model(t_len, "forward", False), LSTM_PASSES)
        sources[t_len] = float_c.generate(model, "seq").c
    assert abs(len(sources[50]) - len(sources[5])) < 40, "only the T argument and the arena offsets change"


def test_lstm_cell_state_read_outside_is_refused() -> None:
    proto = _lstm_model(4, "forward", False)
    lstm = proto.graph.node[1]
    lstm.output.append("Y_c")
    proto.graph.node[2].input[0] = "Y_c"
    model = _passes(proto, LSTM_PASSES)
    with pytest.raises(UnsupportedOpError, match="used outside the LSTM"):
        float_c.generate(model, "seq")


# -- every other kernel on small graphs ---------------------------------------------------------
def _parse(text: str, **consts: np.ndarray) -> ir.Model:
    proto = onnx.parser.parse_model(text)
    proto.graph.initializer.extend(numpy_helper.from_array(v if v.dtype == np.int64 else v.astype(np.float32), k)
                                   for k, v in consts.items())
    onnx.checker.check_model(proto)
    return ir.serde.deserialize_model(onnx.shape_inference.infer_shapes(proto))


def test_conv_pool_transpose_and_elementwise(tmp_path: Path) -> None:
    rng = np.random.default_rng(3)
    model = _parse("""
        <ir_version: 8, opset_import: ["" : 17]>
        g (float[1, 12, 3] x) => (float[1, 30] y) {
            xt = Transpose <perm = [0, 2, 1]> (x)
            c = Conv <pads = [1, 2], strides = [1], dilations = [2], group = 1> (xt, cw, cb)
            r = Relu (c)
            p = MaxPool <kernel_shape = [3], strides = [2], pads = [1, 1]> (r)
            g2 = Conv <group = 5> (p, gw)
            a = Add (g2, bias)
            s = Sigmoid (a)
            t = Tanh (g2)
            u = Add (s, t)
            k = Clip (u, lo, hi)
            f = Flatten (k)
            y = Softmax (f)
        }""", cw=rng.normal(0, 0.5, (5, 3, 3)), cb=rng.normal(0, 0.1, 5), gw=rng.normal(0, 0.5, (5, 1, 1)),
                   bias=rng.normal(0, 0.5, 6), lo=np.array(0.2), hi=np.array(1.5))
    x = rng.normal(0, 1, (64, 1, 12, 3)).astype(np.float32)
    y_c, source = _float_c(model, "small", tmp_path, x)
    assert np.abs(y_c - _ort(model, x)).max() < TOL
    for kernel in ("transpose", "conv1d", "clamp_n", "maxpool1d", "add", "sigmoid_n", "tanh_n", "softmax"):
        assert f"qf_{kernel}(" in source


def test_concat_of_two_branches(tmp_path: Path) -> None:
    """Concat on a middle and on the last axis (a Keras Bidirectional's halves are the last-axis case)."""
    rng = np.random.default_rng(7)
    model = _parse("""
        <ir_version: 8, opset_import: ["" : 17]>
        g (float[1, 3, 4] x) => (float[1, 18] y) {
            a = MatMul (x, wa)
            b = MatMul (x, wb)
            c = Concat <axis = 2> (a, b)
            d = Concat <axis = 1> (c, x2)
            y = Flatten (d)
        }""", wa=rng.normal(0, 1, (4, 2)), wb=rng.normal(0, 1, (4, 1)), x2=rng.normal(0, 1, (1, 3, 3)))
    x = rng.normal(0, 1, (16, 1, 3, 4)).astype(np.float32)
    y_c, source = _float_c(model, "cat", tmp_path, x)
    assert np.abs(y_c - _ort(model, x)).max() < TOL
    assert "qf_concat(" in source


def test_matmul_gemm_attributes_and_a_view_output(tmp_path: Path) -> None:
    rng = np.random.default_rng(4)
    model = _parse("""
        <ir_version: 8, opset_import: ["" : 17]>
        g (float[1, 4, 6] x) => (float[1, 2, 5] y) {
            m = MatMul (x, w)
            r = Reshape (m, s1)
            l = Gemm <alpha = 0.5, beta = 2.0, transB = 1> (r, wt, b)
            y = Reshape (l, s2)
        }""", w=rng.normal(0, 1, (6, 5)), wt=rng.normal(0, 1, (10, 20)), b=rng.normal(0, 1, 10),
                   s1=np.array([1, 20], np.int64), s2=np.array([1, 2, 5], np.int64))
    x = rng.normal(0, 1, (16, 1, 4, 6)).astype(np.float32)
    y_c, source = _float_c(model, "lin", tmp_path, x)
    assert np.abs(y_c - _ort(model, x)).max() < TOL
    assert source.count("qf_linear(") == 3  # definition and two calls; the Reshapes are views


@pytest.mark.parametrize("acts", [
    "LeakyRelu <alpha = 0.2>", "Elu <alpha = 0.7>", "Selu", "Celu <alpha = 2.0>", "HardSigmoid <alpha = 0.3>",
    "HardSwish", "Softplus", "Softsign", "Exp", "Erf", "ThresholdedRelu <alpha = 0.4>", "Neg", "Abs",
    "Sin", "Cos", "Atan", "Sinh", "Asinh", "Round", "Floor", "Ceil", "Sign"])
def test_unary_ops_sub_and_pools(tmp_path: Path, acts: str) -> None:
    rng = np.random.default_rng(5)
    model = _parse(f"""
        <ir_version: 8, opset_import: ["" : 17]>
        g (float[1, 4, 10] x) => (float[1, 4] y) {{
            u = {acts} (x)
            d = Sub (u, x)
            a = AveragePool <kernel_shape = [3], strides = [2], pads = [1, 1]> (d)
            m = ReduceMax <axes = [2], keepdims = 1> (a)
            g = GlobalAveragePool (d)
            s = Sub (m, g)
            y = ReduceMean <axes = [2], keepdims = 0> (s)
        }}""")
    x = (rng.normal(0, 1.5, (16, 1, 4, 10)) + 0.25).astype(np.float32)
    y_c, source = _float_c(model, "un", tmp_path, x)
    assert np.abs(y_c - _ort(model, x)).max() < TOL
    assert "qf_pool(" in source


def test_unsupported_op_names_the_node() -> None:
    model = _parse("""
        <ir_version: 8, opset_import: ["" : 17]>
        g (float[1, 4] x) => (float[1, 4] y) {
            y = Reciprocal (x)
        }""")
    with pytest.raises(UnsupportedOpError, match="no float kernel"):
        float_c.generate(model, "bad")


@pytest.mark.parametrize("value", [0.1, -1.0, 3.0, 1e-30, 3.4e38, -0.0, 123456.789, 1.17549435e-38])
def test_float_literal_reads_back_exactly(value: float) -> None:
    text = float_c.float_literal(value)
    assert text.endswith("f") and np.float32(float(text[:-1])) == np.float32(value)


def test_name_must_be_a_c_identifier() -> None:
    from qpass.errors import CodegenError

    with pytest.raises(CodegenError):
        float_c.generate(_parse("""
            <ir_version: 8, opset_import: ["" : 17]>
            g (float[1, 4] x) => (float[1, 4] y) { y = Relu (x) }"""), "a-b; int x")
