"""fold-batchnorm: BatchNormalization, and the Mul/Add pair tf2onnx leaves for it, fold into the linear op
before it; with no linear op before it, a BN becomes one per-channel Mul + Add. The function never changes.
"""

from __future__ import annotations

from collections import Counter

import numpy as np
import onnx_ir as ir
import pytest

from qpass.passes import PROVENANCE_KEY

OPSET = '<ir_version: 8, opset_import: ["" : 17]>'


def _ops(model: ir.Model) -> Counter:
    return Counter(n.op_type for n in model.graph)


def _bn_params(rng: np.random.Generator, c: int) -> dict[str, np.ndarray]:
    """Non-trivial BN parameters: with γ=1, β=0, μ=0, σ²=1 a wrong fold would go unnoticed."""
    return {
        "gamma": rng.uniform(0.5, 2.0, c).astype(np.float32),
        "beta": rng.normal(size=c).astype(np.float32),
        "mean": rng.normal(size=c).astype(np.float32),
        "var": rng.uniform(0.5, 2.0, c).astype(np.float32),
    }


def _w(rng: np.random.Generator, *shape: int) -> np.ndarray:
    return rng.normal(0.0, 0.5, shape).astype(np.float32)


# ---------------------------------------------------------------------------------- real Keras models


def test_real_dense_bn_folds_into_gemm(keras_zoo, check_pass, rng):
    model = keras_zoo.converted("dense_bn")
    first_gemm = next(n for n in model.graph if n.op_type == "Gemm")
    old_weight = first_gemm.inputs[1].const_value.numpy().copy()
    x = rng.normal(size=(1, 16)).astype(np.float32)
    res = check_pass("fold-batchnorm", model, x, modified=True)
    assert res.before == Counter({"Gemm": 2, "Mul": 1, "Add": 1, "Relu": 1})
    assert res.after == Counter({"Gemm": 2, "Relu": 1})
    new_weight = first_gemm.inputs[1].const_value.numpy()
    assert not np.allclose(new_weight, old_weight), "the BN scale went into the Gemm weight"
    assert res.actual.any(), "the Relu output is not all zero, so the comparison means something"


def test_real_dense_bn_batch_4(keras_zoo, check_pass, rng):
    model = keras_zoo.converted("dense_bn", batch_size=4)
    x = rng.normal(size=(4, 16)).astype(np.float32)
    res = check_pass("fold-batchnorm", model, x, modified=True)
    assert res.after == Counter({"Gemm": 2, "Relu": 1})
    np.testing.assert_allclose(res.actual, keras_zoo.predict("dense_bn", x), rtol=1e-5, atol=1e-5)


def test_real_dense_without_bias_then_bn(keras_zoo, check_pass, apply_pass, ort_run, rng):
    # MatMul → Mul → Add: the Mul goes into the weight, the Add stays as the MatMul's bias ...
    model = keras_zoo.converted("dense_nobias_bn")
    x = rng.normal(size=(1, 16)).astype(np.float32)
    res = check_pass("fold-batchnorm", model, x, modified=True)
    assert res.after == Counter({"MatMul": 1, "Add": 1, "Gemm": 1})
    add = next(n for n in model.graph if n.op_type == "Add")
    assert add.inputs[0].producer().op_type == "MatMul" and add.inputs[1].const_value is not None
    # ... which matmul-to-gemm then turns into one Gemm: no Mul or Add left
    assert apply_pass("matmul-to-gemm", model).modified
    assert _ops(model) == Counter({"Gemm": 2})
    np.testing.assert_allclose(ort_run(model, x), res.expected, rtol=1e-5, atol=1e-5)


def test_real_bn_without_linear_op_before_it(keras_zoo, check_pass, rng):
    # tf2onnx already wrote the BN as Mul + Add on the graph input; nothing to fold into
    model = keras_zoo.converted("bn_first")
    x = rng.normal(size=(1, 16)).astype(np.float32)
    res = check_pass("fold-batchnorm", model, x, modified=False)
    assert res.after == Counter({"Mul": 1, "Add": 1, "Gemm": 1})


def test_real_conv1d_bn_keeps_function(keras_zoo, check_pass, rng):
    # Conv → Squeeze → Add(bias) → Mul → Add: the Squeeze between Conv and BN blocks the fold today;
    # whether or not a later version folds through it, the outputs must not move and a second run must
    # change nothing
    model = keras_zoo.converted("conv1d_bn")
    x = rng.normal(size=(1, 20, 3)).astype(np.float32)
    res = check_pass("fold-batchnorm", model, x, modified=None)
    assert res.after["Conv"] == 1 and res.after["BatchNormalization"] == 0
    np.testing.assert_allclose(res.actual, keras_zoo.predict("conv1d_bn", x), rtol=1e-5, atol=1e-5)


# ---------------------------------------------------------------------------------- raw BatchNormalization


def test_bn_after_gemm(parse_onnx, check_pass, rng):
    model = parse_onnx(f"""{OPSET}
        g (float[2,16] x) => (float[2,8] y) {{
            h = Gemm(x, W, b)
            y = BatchNormalization <epsilon = 0.001> (h, gamma, beta, mean, var)
        }}""", W=_w(rng, 16, 8), b=_w(rng, 8), **_bn_params(rng, 8))
    x = rng.normal(size=(2, 16)).astype(np.float32)
    res = check_pass("fold-batchnorm", model, x, modified=True)
    assert res.after == Counter({"Gemm": 1})
    gemm = model.graph.node(0)
    assert gemm.outputs[0] is model.graph.outputs[0] and gemm.outputs[0].name == "y"
    assert len(gemm.inputs) == 3 and gemm.inputs[2].const_value is not None


def test_bn_after_gemm_trans_b_without_bias(parse_onnx, check_pass, rng):
    model = parse_onnx(f"""{OPSET}
        g (float[1,16] x) => (float[1,8] y) {{
            h = Gemm <transB = 1> (x, W)
            y = BatchNormalization(h, gamma, beta, mean, var)
        }}""", W=_w(rng, 8, 16), **_bn_params(rng, 8))
    res = check_pass("fold-batchnorm", model, rng.normal(size=(1, 16)).astype(np.float32), modified=True)
    assert res.after == Counter({"Gemm": 1})
    gemm = model.graph.node(0)
    assert gemm.inputs[2] is not None and gemm.inputs[2].const_value.numpy().shape == (8,), "a bias was created"


def test_bn_after_gemm_with_alpha_is_not_folded_but_decomposed(parse_onnx, check_pass, rng):
    model = parse_onnx(f"""{OPSET}
        g (float[1,16] x) => (float[1,8] y) {{
            h = Gemm <alpha = 0.5> (x, W, b)
            y = BatchNormalization(h, gamma, beta, mean, var)
        }}""", W=_w(rng, 16, 8), b=_w(rng, 8), **_bn_params(rng, 8))
    res = check_pass("fold-batchnorm", model, rng.normal(size=(1, 16)).astype(np.float32), modified=True)
    assert res.after == Counter({"Gemm": 1, "Mul": 1, "Add": 1})


@pytest.mark.parametrize("bias", [True, False], ids=["bias", "no_bias"])
def test_bn_after_conv1d_ncw(parse_onnx, check_pass, rng, bias):
    conv = "Conv <kernel_shape = [3], pads = [1, 1]> (x, W, b)" if bias else "Conv <kernel_shape = [3]> (x, W)"
    out_w = 20 if bias else 18
    consts = {"W": _w(rng, 6, 3, 3), **_bn_params(rng, 6)}
    if bias:
        consts["b"] = _w(rng, 6)
    model = parse_onnx(f"""{OPSET}
        g (float[1,3,20] x) => (float[1,6,{out_w}] y) {{
            h = {conv}
            y = BatchNormalization(h, gamma, beta, mean, var)
        }}""", **consts)
    x = rng.normal(size=(1, 3, 20)).astype(np.float32)
    res = check_pass("fold-batchnorm", model, x, modified=True)
    assert res.after == Counter({"Conv": 1})
    conv_node = model.graph.node(0)
    assert conv_node.inputs[1].const_value.numpy().shape == (6, 3, 3)
    assert conv_node.inputs[2].const_value.numpy().shape == (6,)


def test_bn_after_depthwise_conv2d(parse_onnx, check_pass, rng):
    model = parse_onnx(f"""{OPSET}
        g (float[1,4,5,5] x) => (float[1,4,5,5] y) {{
            h = Conv <kernel_shape = [3, 3], pads = [1, 1, 1, 1], group = 4> (x, W, b)
            y = BatchNormalization(h, gamma, beta, mean, var)
        }}""", W=_w(rng, 4, 1, 3, 3), b=_w(rng, 4), **_bn_params(rng, 4))
    res = check_pass("fold-batchnorm", model, rng.normal(size=(1, 4, 5, 5)).astype(np.float32), modified=True)
    assert res.after == Counter({"Conv": 1})


def test_bn_after_matmul(parse_onnx, check_pass, rng):
    model = parse_onnx(f"""{OPSET}
        g (float[3,16] x) => (float[3,8] y) {{
            h = MatMul(x, W)
            y = BatchNormalization(h, gamma, beta, mean, var)
        }}""", W=_w(rng, 16, 8), **_bn_params(rng, 8))
    res = check_pass("fold-batchnorm", model, rng.normal(size=(3, 16)).astype(np.float32), modified=True)
    # the shift stays as MatMul's bias Add (the canonical MatMul + bias form); the scale is in W
    assert res.after == Counter({"MatMul": 1, "Add": 1})
    matmul, add = model.graph.node(0), model.graph.node(1)
    assert add.inputs[0] is matmul.outputs[0] and add.inputs[1].const_value is not None


def test_bn_after_matmul_and_bias_add(parse_onnx, check_pass, rng):
    model = parse_onnx(f"""{OPSET}
        g (float[1,16] x) => (float[1,8] y) {{
            m = MatMul(x, W)
            h = Add(m, b)
            y = BatchNormalization(h, gamma, beta, mean, var)
        }}""", W=_w(rng, 16, 8), b=_w(rng, 8), **_bn_params(rng, 8))
    res = check_pass("fold-batchnorm", model, rng.normal(size=(1, 16)).astype(np.float32), modified=True)
    assert res.after == Counter({"MatMul": 1, "Add": 1})


def test_channel_scale_after_matmul_on_a_sequence(parse_onnx, check_pass, rng):
    # Dense on [batch, time, features] then a BN scale in tf2onnx's form: the channel is the last axis
    model = parse_onnx(f"""{OPSET}
        g (float[1,5,16] x) => (float[1,5,8] y) {{
            h = MatMul(x, W)
            y = Mul(h, s)
        }}""", W=_w(rng, 16, 8), s=rng.uniform(0.5, 2.0, 8).astype(np.float32))
    res = check_pass("fold-batchnorm", model, rng.normal(size=(1, 5, 16)).astype(np.float32), modified=True)
    assert res.after == Counter({"MatMul": 1})


def test_bn_without_linear_op_becomes_mul_add(parse_onnx, check_pass, rng):
    model = parse_onnx(f"""{OPSET}
        g (float[1,6,10] x) => (float[1,6,10] y) {{
            r = Relu(x)
            y = BatchNormalization(r, gamma, beta, mean, var)
        }}""", **_bn_params(rng, 6))
    x = rng.normal(size=(1, 6, 10)).astype(np.float32)
    res = check_pass("fold-batchnorm", model, x, modified=True)
    assert res.after == Counter({"Relu": 1, "Mul": 1, "Add": 1})
    mul, add = model.graph.node(1), model.graph.node(2)
    assert mul.inputs[1].const_value.numpy().shape == (6, 1), "per channel on axis 1 of NCW"
    assert add.outputs[0] is model.graph.outputs[0] and add.outputs[0].name == "y"
    for node in (mul, add):
        assert node.metadata_props.get(PROVENANCE_KEY) == "fold-batchnorm"


def test_bn_on_graph_input_2d(parse_onnx, check_pass, rng):
    model = parse_onnx(f"""{OPSET}
        g (float[4,8] x) => (float[4,8] y) {{
            y = BatchNormalization(x, gamma, beta, mean, var)
        }}""", **_bn_params(rng, 8))
    res = check_pass("fold-batchnorm", model, rng.normal(size=(4, 8)).astype(np.float32), modified=True)
    assert res.after == Counter({"Mul": 1, "Add": 1})


def test_bn_whose_linear_output_has_another_reader_is_not_folded_into_it(parse_onnx, check_pass, rng):
    # h is read twice: scaling W would change the second reader
    model = parse_onnx(f"""{OPSET}
        g (float[1,16] x) => (float[1,8] y) {{
            h = Gemm(x, W, b)
            n = BatchNormalization(h, gamma, beta, mean, var)
            y = Add(n, h)
        }}""", W=_w(rng, 16, 8), b=_w(rng, 8), **_bn_params(rng, 8))
    res = check_pass("fold-batchnorm", model, rng.normal(size=(1, 16)).astype(np.float32), modified=True)
    assert res.after["BatchNormalization"] == 0 and res.after["Mul"] == 1


def test_training_mode_bn_is_left_alone(parse_onnx, apply_pass):
    model = parse_onnx(f"""{OPSET}
        g (float[2,8] x) => (float[2,8] y) {{
            h = Gemm(x, W, b)
            y, rm, rv = BatchNormalization <training_mode = 1> (h, gamma, beta, mean, var)
        }}""", W=_w(np.random.default_rng(0), 8, 8), b=np.zeros(8, np.float32),
        **_bn_params(np.random.default_rng(1), 8))
    assert apply_pass("fold-batchnorm", model).modified is False
    assert _ops(model) == Counter({"Gemm": 1, "BatchNormalization": 1})


def test_mul_by_a_non_channel_constant_is_not_folded(parse_onnx, check_pass, rng):
    # a per-time-step scale on NCW broadcasts along W, not along the channel: it is not a BN
    model = parse_onnx(f"""{OPSET}
        g (float[1,3,20] x) => (float[1,6,18] y) {{
            h = Conv <kernel_shape = [3]> (x, W, b)
            y = Mul(h, s)
        }}""", W=_w(rng, 6, 3, 3), b=_w(rng, 6), s=rng.uniform(0.5, 2.0, 18).astype(np.float32))
    res = check_pass("fold-batchnorm", model, rng.normal(size=(1, 3, 20)).astype(np.float32), modified=False)
    assert res.after == Counter({"Conv": 1, "Mul": 1})


# ---------------------------------------------------------------------------------- biases that are not per channel
# A bias that is not a per-channel constant (per row, a full matrix, a graph input) cannot absorb b·s + t:
# the BN is only decomposed into Mul + Add and the linear op keeps its weights and bias.


@pytest.mark.parametrize(("rows", "body", "bias", "after"), [
    (8, "h = Gemm(x, W, b)", (8, 1), {"Gemm": 1, "Mul": 1, "Add": 1}),  # one bias per row
    (8, "m = MatMul(x, W)\n            h = Add(m, b)", (8, 1), {"MatMul": 1, "Add": 2, "Mul": 1}),
    (2, "h = Gemm(x, W, b)", (2, 8), {"Gemm": 1, "Mul": 1, "Add": 1}),  # a full matrix
], ids=["gemm-per-row", "matmul-add-per-row", "gemm-full-matrix"])
def test_bias_not_per_channel(parse_onnx, check_pass, rng, rows: int, body: str, bias: tuple, after: dict):
    model = parse_onnx(f"""{OPSET}
        g (float[{rows},16] x) => (float[{rows},8] y) {{
            {body}
            y = BatchNormalization(h, gamma, beta, mean, var)
        }}""", W=_w(rng, 16, 8), b=_w(rng, *bias), **_bn_params(rng, 8))
    res = check_pass("fold-batchnorm", model, rng.normal(size=(rows, 16)).astype(np.float32), modified=True)
    assert res.after == Counter(after)


def test_gemm_with_non_constant_bias(parse_onnx, check_pass, rng):
    model = parse_onnx(f"""{OPSET}
        g (float[1,16] x, float[8] c) => (float[1,8] y) {{
            h = Gemm(x, W, c)
            y = BatchNormalization(h, gamma, beta, mean, var)
        }}""", W=_w(rng, 16, 8), **_bn_params(rng, 8))
    feeds = {"x": rng.normal(size=(1, 16)).astype(np.float32), "c": rng.normal(size=8).astype(np.float32)}
    res = check_pass("fold-batchnorm", model, feeds, modified=True)
    assert res.after == Counter({"Gemm": 1, "Mul": 1, "Add": 1})


def test_two_batchnorms_in_a_row_fold_in_one_run(parse_onnx, check_pass, rng):
    second = {k + "2": v for k, v in _bn_params(rng, 8).items()}
    model = parse_onnx(f"""{OPSET}
        g (float[1,16] x) => (float[1,8] y) {{
            h = Gemm(x, W, b)
            n = BatchNormalization(h, gamma, beta, mean, var)
            y = BatchNormalization(n, gamma2, beta2, mean2, var2)
        }}""", W=_w(rng, 16, 8), b=_w(rng, 8), **_bn_params(rng, 8), **second)
    res = check_pass("fold-batchnorm", model, rng.normal(size=(1, 16)).astype(np.float32), modified=True)
    assert res.after == Counter({"Gemm": 1})


def test_float16_gemm_bn(parse_onnx, apply_pass, ort_run, rng):
    consts = {k: v.astype(np.float16) for k, v in _bn_params(rng, 8).items()}
    model = parse_onnx(f"""{OPSET}
        g (float16[2,16] x) => (float16[2,8] y) {{
            h = Gemm(x, W, b)
            y = BatchNormalization(h, gamma, beta, mean, var)
        }}""", W=_w(rng, 16, 8).astype(np.float16), b=_w(rng, 8).astype(np.float16), **consts)
    x = rng.normal(size=(2, 16)).astype(np.float16)
    expected = ort_run(model, x)
    assert apply_pass("fold-batchnorm", model).modified
    assert _ops(model) == Counter({"Gemm": 1})
    actual = ort_run(model, x)
    assert actual.dtype == np.float16
    gemm = model.graph.node(0)
    assert gemm.inputs[1].dtype == gemm.inputs[2].dtype == ir.DataType.FLOAT16
    np.testing.assert_allclose(actual.astype(np.float32), expected.astype(np.float32), rtol=1e-2, atol=2e-2)


def test_float16_bn_without_linear_op_stays_float16(parse_onnx, apply_pass, ort_run, rng):
    consts = {k: v.astype(np.float16) for k, v in _bn_params(rng, 6).items()}
    model = parse_onnx(f"""{OPSET}
        g (float16[1,6,10] x) => (float16[1,6,10] y) {{
            r = Relu(x)
            y = BatchNormalization(r, gamma, beta, mean, var)
        }}""", **consts)
    x = rng.normal(size=(1, 6, 10)).astype(np.float16)
    expected = ort_run(model, x)
    assert apply_pass("fold-batchnorm", model).modified
    assert _ops(model) == Counter({"Relu": 1, "Mul": 1, "Add": 1})
    mul, add = model.graph.node(1), model.graph.node(2)
    assert mul.inputs[1].dtype == add.inputs[1].dtype == ir.DataType.FLOAT16
    actual = ort_run(model, x)
    assert actual.dtype == np.float16
    np.testing.assert_allclose(actual.astype(np.float32), expected.astype(np.float32), rtol=1e-2, atol=2e-2)


def test_batchnorm_after_bias_free_conv_through_unit_axis_reshape(parse_onnx, check_pass) -> None:
    """A bias-free depthwise conv written as Conv2D (k, 1): tf2onnx's Reshape to [1, C, T, 1] sits between
    the conv and the BatchNorm's Mul/Add; both fold into the conv (which gains a bias)."""
    rng = np.random.default_rng(7)
    model = parse_onnx("""
        <ir_version: 8, opset_import: ["" : 17]>
        g (float[1, 6, 12] x) => (float[1, 6, 10, 1] y) {
            c = Conv <group = 6> (x, w)
            r = Reshape (c, shape)
            m = Mul (r, s)
            y = Add (m, t)
        }""", w=rng.normal(size=(6, 1, 3)).astype(np.float32), shape=np.array([1, 6, 10, 1], np.int64),
        s=rng.uniform(0.5, 2, (1, 6, 1, 1)).astype(np.float32), t=rng.normal(size=(1, 6, 1, 1)).astype(np.float32))
    result = check_pass("fold-batchnorm", model, rng.normal(size=(1, 6, 12)).astype(np.float32), modified=True)
    assert not {"Mul", "Add"} & set(result.after), result.after
    conv = next(n for n in model.graph if n.op_type == "Conv")
    assert len(conv.inputs) == 3 and conv.inputs[2] is not None
