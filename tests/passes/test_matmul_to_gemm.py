"""matmul-to-gemm: a 2-D MatMul with constant weights, and the bias Add after it, become one Gemm."""

from __future__ import annotations

from collections import Counter

import numpy as np
import onnx_ir as ir
import onnx_ir.passes.common
import pytest

from qpass.passes import PROVENANCE_KEY
from qpass.passes.runner import run_passes

OPSET = '<ir_version: 8, opset_import: ["" : 17]>'


def _ops(model: ir.Model) -> Counter:
    return Counter(n.op_type for n in model.graph)


def _w(rng: np.random.Generator, *shape: int) -> np.ndarray:
    return rng.normal(0.0, 0.5, shape).astype(np.float32)


def _gemm(model: ir.Model) -> ir.Node:
    (gemm,) = [n for n in model.graph if n.op_type == "Gemm"]
    return gemm


# ---------------------------------------------------------------------------------- real converter output


def test_real_dense_without_bias(keras_zoo, check_pass, rng):
    # Dense(use_bias=False) → MatMul: it becomes a Gemm with a zero bias; the BN's Mul/Add stay
    model = keras_zoo.converted("dense_nobias_bn")
    x = rng.normal(size=(1, 16)).astype(np.float32)
    res = check_pass("matmul-to-gemm", model, x, modified=True)
    assert res.before == Counter({"MatMul": 1, "Mul": 1, "Add": 1, "Gemm": 1})
    assert res.after == Counter({"Gemm": 2, "Mul": 1, "Add": 1})
    new = next(n for n in model.graph if n.metadata_props.get(PROVENANCE_KEY) == "matmul-to-gemm")
    assert new.op_type == "Gemm"
    np.testing.assert_array_equal(new.inputs[2].const_value.numpy(), np.zeros(8, np.float32))


def test_real_unfused_tf2onnx_dense_layers(keras_zoo, check_pass, apply_pass, rng):
    # tf2onnx without its optimizer writes Dense as MatMul + Add(bias) and computes the Reshape targets
    # at run time; once those are folded and shapes re-inferred, every MatMul becomes a Gemm
    model = keras_zoo.converted("seq_dense_flatten", "onnx")
    apply_pass("fold-constants", model)
    ir.passes.common.ShapeInferencePass()(model)
    x = rng.normal(size=(1, 4, 6)).astype(np.float32)
    res = check_pass("matmul-to-gemm", model, x, modified=True)
    assert res.before["MatMul"] == 2 and res.before["Add"] == 2
    assert res.after["MatMul"] == 0 and res.after["Gemm"] == 2
    # the Dense on [batch*4, 6] has its bias after a Reshape: that Add stays; the last Dense's bias is absorbed
    assert res.after["Add"] == 1
    np.testing.assert_allclose(res.actual, keras_zoo.predict("seq_dense_flatten", x), rtol=1e-5, atol=1e-5)


def test_real_unfused_tf2onnx_dense_layers_through_the_runner(keras_zoo, tmp_path):
    model = keras_zoo.converted("seq_dense_flatten", "onnx")
    run_passes(model, [("fold-constants", {}), ("matmul-to-gemm", {})], base_dir=tmp_path)
    assert _ops(model)["MatMul"] == 0


def test_real_converter_output_with_gemms_only_is_untouched(keras_zoo, check_pass, rng):
    model = keras_zoo.converted("dense_bn")
    res = check_pass("matmul-to-gemm", model, rng.normal(size=(1, 16)).astype(np.float32), modified=False)
    assert res.after == res.before


# ---------------------------------------------------------------------------------- tiny graphs


@pytest.mark.parametrize("add", ["Add(m, b)", "Add(b, m)"])
@pytest.mark.parametrize("bias_shape", [(8,), (1, 8), (1,)], ids=["vector", "row", "scalar"])
def test_matmul_and_bias_add_become_one_gemm(parse_onnx, check_pass, rng, add, bias_shape):
    b = _w(rng, *bias_shape)
    model = parse_onnx(f"""{OPSET}
        g (float[3,16] x) => (float[3,8] y) {{
            m = MatMul(x, W)
            y = {add}
        }}""", W=_w(rng, 16, 8), b=b)
    res = check_pass("matmul-to-gemm", model, rng.normal(size=(3, 16)).astype(np.float32), modified=True)
    assert res.after == Counter({"Gemm": 1})
    gemm = _gemm(model)
    assert gemm.inputs[0] is model.graph.inputs[0]
    assert gemm.outputs[0] is model.graph.outputs[0] and gemm.outputs[0].name == "y"
    np.testing.assert_array_equal(gemm.inputs[2].const_value.numpy(), np.broadcast_to(b.reshape(-1), (8,)))
    assert gemm.metadata_props.get(PROVENANCE_KEY) == "matmul-to-gemm"


def test_matmul_without_bias_gets_a_zero_bias(parse_onnx, check_pass, rng):
    model = parse_onnx(f"""{OPSET}
        g (float[1,16] x) => (float[1,8] y) {{
            m = MatMul(x, W)
            y = Relu(m)
        }}""", W=_w(rng, 16, 8))
    res = check_pass("matmul-to-gemm", model, rng.normal(size=(1, 16)).astype(np.float32), modified=True)
    assert res.after == Counter({"Gemm": 1, "Relu": 1})
    assert not _gemm(model).inputs[2].const_value.numpy().any()


def test_matmul_read_twice_keeps_its_add(parse_onnx, check_pass, rng):
    model = parse_onnx(f"""{OPSET}
        g (float[1,16] x) => (float[1,8] y) {{
            m = MatMul(x, W)
            a = Add(m, b)
            y = Mul(a, m)
        }}""", W=_w(rng, 16, 8), b=_w(rng, 8))
    res = check_pass("matmul-to-gemm", model, rng.normal(size=(1, 16)).astype(np.float32), modified=True)
    assert res.after == Counter({"Gemm": 1, "Add": 1, "Mul": 1})


def test_per_row_bias_is_not_absorbed(parse_onnx, check_pass, rng):
    model = parse_onnx(f"""{OPSET}
        g (float[8,16] x) => (float[8,8] y) {{
            m = MatMul(x, W)
            y = Add(m, b)
        }}""", W=_w(rng, 16, 8), b=_w(rng, 8, 1))
    res = check_pass("matmul-to-gemm", model, rng.normal(size=(8, 16)).astype(np.float32), modified=True)
    assert res.after == Counter({"Gemm": 1, "Add": 1})


@pytest.mark.parametrize("text, consts", [
    ("""g (float[2,16] x, float[16,8] W) => (float[2,8] y) { y = MatMul(x, W) }""", {}),
    ("""g (float[2,16] x) => (float[3,2,8] y) { y = MatMul(x, W) }""", {"W": (3, 16, 8)}),
    ("""g (float[N,16] x) => (float[N,8] y) { y = MatMul(x, W) }""", {"W": (16, 8)}),
], ids=["non_constant_weight", "batched_weight", "symbolic_batch"])
def test_matmuls_that_are_not_dense_layers_are_left(parse_onnx, check_pass, rng, text, consts):
    model = parse_onnx(f"{OPSET}\n{text}", **{k: _w(rng, *v) for k, v in consts.items()})
    feeds = {v.name: rng.normal(size=[d if isinstance(d, int) else 2 for d in v.shape]).astype(np.float32)
             for v in model.graph.inputs}
    res = check_pass("matmul-to-gemm", model, feeds, modified=False)
    assert res.after == Counter({"MatMul": 1})


def test_matmul_made_by_unroll_lstm_is_left(parse_onnx, check_pass, rng):
    model = parse_onnx(f"""{OPSET}
        g (float[1,16] x) => (float[1,8] y) {{
            y = MatMul(x, W)
        }}""", W=_w(rng, 16, 8))
    model.graph.node(0).metadata_props["qpass.lstm"] = "step 0"
    res = check_pass("matmul-to-gemm", model, rng.normal(size=(1, 16)).astype(np.float32), modified=False)
    assert res.after == Counter({"MatMul": 1})


@pytest.mark.parametrize("bias", [True, False], ids=["bias", "no_bias"])
def test_dense_on_a_sequence_goes_through_reshapes(parse_onnx, check_pass, rng, bias):
    body = "m = MatMul(x, W)\n y = Add(m, b)" if bias else "y = MatMul(x, W)"
    consts = {"W": _w(rng, 16, 8), **({"b": _w(rng, 8)} if bias else {})}
    model = parse_onnx(f"""{OPSET}
        g (float[2,5,16] x) => (float[2,5,8] y) {{
            {body}
        }}""", **consts)
    res = check_pass("matmul-to-gemm", model, rng.normal(size=(2, 5, 16)).astype(np.float32), modified=True)
    assert res.after == Counter({"Reshape": 2, "Gemm": 1})
    gemm = _gemm(model)
    assert list(gemm.outputs[0].shape) == [10, 8]
    assert model.graph.outputs[0].name == "y" and list(model.graph.outputs[0].shape) == [2, 5, 8]
    assert all(n.metadata_props.get(PROVENANCE_KEY) == "matmul-to-gemm" for n in model.graph)


def test_bias_of_higher_rank_keeps_output_shape(parse_onnx, check_pass, rng):
    model = parse_onnx(f"""{OPSET}
        g (float[2,16] x) => (float[1,2,8] y) {{
            m = MatMul(x, W)
            y = Add(m, b)
        }}""", W=_w(rng, 16, 8), b=_w(rng, 1, 1, 8))
    res = check_pass("matmul-to-gemm", model, rng.normal(size=(2, 16)).astype(np.float32), modified=True)
    assert res.after == Counter({"Gemm": 1, "Add": 1}), "the Add that adds a dimension stays"
    assert list(model.graph.outputs[0].shape) == [1, 2, 8]


def test_float16_matmul(parse_onnx, apply_pass, ort_run, rng):
    model = parse_onnx(f"""{OPSET}
        g (float16[2,16] x) => (float16[2,8] y) {{
            y = MatMul(x, W)
        }}""", W=_w(rng, 16, 8).astype(np.float16))
    x = rng.normal(size=(2, 16)).astype(np.float16)
    expected = ort_run(model, x)
    assert apply_pass("matmul-to-gemm", model).modified
    assert _ops(model) == Counter({"Gemm": 1})
    actual = ort_run(model, x)
    assert actual.dtype == np.float16
    assert _gemm(model).inputs[2].dtype == ir.DataType.FLOAT16
    np.testing.assert_allclose(actual.astype(np.float32), expected.astype(np.float32), rtol=1e-2, atol=1e-2)
