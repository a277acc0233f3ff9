"""fold-constants: nodes whose inputs are all constant become initializers, Shape of a static tensor
becomes a constant, no-op Casts go, and Constant nodes are lifted to initializers."""

from __future__ import annotations

from collections import Counter

import numpy as np
import onnx_ir as ir
import onnx_ir.passes.common
import pytest

OPSET = '<ir_version: 8, opset_import: ["" : 17]>'
SHAPE_OPS = {"Shape", "Gather", "Concat", "Cast", "Unsqueeze", "Squeeze", "Slice", "ReduceProd", "Constant"}


def _ops(model: ir.Model) -> Counter:
    return Counter(n.op_type for n in model.graph)


def _reshape_targets(model: ir.Model) -> list[list[int] | None]:
    out = []
    for node in model.graph:
        if node.op_type == "Reshape":
            const = node.inputs[1].const_value
            out.append(None if const is None else const.numpy().tolist())
    return out


# ---------------------------------------------------------------------------------- real converter output


@pytest.mark.parametrize("batch", [1, 4])
def test_real_flatten_shape_chains_fold(keras_zoo, check_pass, rng, batch):
    # tf2onnx (optimizer off, symbolic batch) computes every Reshape target from Shape(x) at run time;
    # qpass pins the batch when it loads the .onnx, so all of it is constant
    model = keras_zoo.converted("seq_dense_flatten", "onnx", batch_size=batch)
    assert {"Shape", "Gather", "Concat"} <= set(_ops(model))
    assert None in _reshape_targets(model)
    x = rng.normal(size=(batch, 4, 6)).astype(np.float32)
    res = check_pass("fold-constants", model, x, modified=True)
    assert not SHAPE_OPS & set(res.after), res.after
    assert res.after == Counter({"Reshape": 3, "MatMul": 2, "Add": 2, "Identity": 2})
    assert None not in _reshape_targets(model)
    np.testing.assert_allclose(res.actual, keras_zoo.predict("seq_dense_flatten", x), rtol=1e-5, atol=1e-5)
    assert _reshape_targets(model)[-1] in ([batch, 12], [-1, 12])


def test_real_conv1d_keeps_function(keras_zoo, check_pass, rng):
    model = keras_zoo.converted("conv1d_bn", "onnx")
    x = rng.normal(size=(1, 20, 3)).astype(np.float32)
    res = check_pass("fold-constants", model, x, modified=True)
    assert res.after.total() < res.before.total()


def test_real_conv1d_flatten_chain_folds_in_one_run(keras_zoo, apply_pass):
    # once the ExpandDims axes fold, shapes are re-inferred: the Conv path becomes static and Flatten's
    # Shape → Slice → Concat → Reshape target folds in the same run
    model = keras_zoo.converted("conv1d_bn", "onnx")
    apply_pass("fold-constants", model)
    assert None not in _reshape_targets(model)
    # what is left of SHAPE_OPS is the Conv1D's ExpandDims (Unsqueeze) and Squeeze on the data itself
    left = [n for n in model.graph if n.op_type in SHAPE_OPS]
    assert sorted(n.op_type for n in left) == ["Squeeze", "Unsqueeze"], _ops(model)
    assert all(n.inputs[0].const_value is None and n.inputs[1].const_value is not None for n in left)
    assert all(isinstance(d, int) for n in model.graph for o in n.outputs for d in o.shape)


def test_real_optimized_converter_output_has_nothing_to_fold(keras_zoo, check_pass, rng):
    model = keras_zoo.converted("dense_bn")
    res = check_pass("fold-constants", model, rng.normal(size=(1, 16)).astype(np.float32), modified=False)
    assert res.after == res.before


# ---------------------------------------------------------------------------------- tiny graphs


def test_shape_gather_concat_reshape_on_static_shape(parse_onnx, check_pass, rng):
    model = parse_onnx(f"""{OPSET}
        g (float[2,4,8] x) => (float[2,32] y) {{
            s = Shape(x)
            n = Gather <axis = 0> (s, index)
            u = Unsqueeze(n, axes)
            target = Concat <axis = 0> (u, rest)
            y = Reshape(x, target)
        }}""", index=np.array(0, np.int64), axes=np.array([0], np.int64), rest=np.array([-1], np.int64))
    x = rng.normal(size=(2, 4, 8)).astype(np.float32)
    res = check_pass("fold-constants", model, x, modified=True)
    assert res.after == Counter({"Reshape": 1})
    (reshape,) = model.graph
    assert reshape.inputs[1].is_initializer()
    assert reshape.inputs[1].const_value.numpy().tolist() == [2, -1]
    assert reshape.outputs[0].name == "y"


def test_shape_with_start_and_end(parse_onnx, check_pass, rng):
    # PyTorch's dynamo exporter reads one dimension as Shape<start, end>(x) (opset 15)
    model = parse_onnx(f"""{OPSET}
        g (float[2,4,8] x) => (float[8,8] y) {{
            s = Shape <start = 0, end = 2> (x)
            n = ReduceProd <keepdims = 1> (s)
            target = Concat <axis = 0> (n, last)
            y = Reshape(x, target)
        }}""", last=np.array([-1], np.int64))
    res = check_pass("fold-constants", model, rng.normal(size=(2, 4, 8)).astype(np.float32), modified=True)
    assert res.after == Counter({"Reshape": 1})
    assert next(iter(model.graph)).inputs[1].const_value.numpy().tolist() == [8, -1]


def test_shape_of_a_symbolic_tensor_is_not_folded(parse_onnx, check_pass, rng):
    model = parse_onnx(f"""{OPSET}
        g (float[N,8] x) => (float[M] y) {{
            s = Shape(x)
            t = ReduceProd <keepdims = 1> (s)
            y = Reshape(x, t)
        }}""")
    res = check_pass("fold-constants", model, rng.normal(size=(3, 8)).astype(np.float32), modified=False)
    assert res.after == Counter({"Shape": 1, "ReduceProd": 1, "Reshape": 1})


def test_constant_nodes_are_lifted(parse_onnx, check_pass, rng):
    model = parse_onnx(f"""{OPSET}
        g (float[1,4] x) => (float[1,4] y) {{
            c = Constant <value = float[4] {{1.5, -2, 0.25, 4}}> ()
            y = Mul(x, c)
        }}""")
    res = check_pass("fold-constants", model, rng.normal(size=(1, 4)).astype(np.float32), modified=True)
    assert res.after == Counter({"Mul": 1})
    (mul,) = model.graph
    assert mul.inputs[1].is_initializer()
    np.testing.assert_array_equal(mul.inputs[1].const_value.numpy(), [1.5, -2, 0.25, 4])


def test_a_chain_of_constant_nodes_folds_in_one_run(parse_onnx, check_pass, rng):
    model = parse_onnx(f"""{OPSET}
        g (float[1,4] x) => (float[1,4] y) {{
            a = Constant <value = float[4] {{1, 2, 3, 4}}> ()
            b = Add(a, w)
            c = Mul(b, a)
            d = Sqrt(c)
            y = Add(x, d)
        }}""", w=np.array([0.5, 0.5, 0.5, 0.5], np.float32))
    res = check_pass("fold-constants", model, rng.normal(size=(1, 4)).astype(np.float32), modified=True)
    assert res.after == Counter({"Add": 1})
    (add,) = model.graph
    np.testing.assert_allclose(add.inputs[1].const_value.numpy(), np.sqrt([1.5, 5.0, 10.5, 18.0]), rtol=1e-6)


def test_cast_to_its_own_type_is_removed_and_a_real_cast_kept(parse_onnx, check_pass, rng):
    model = parse_onnx(f"""{OPSET}
        g (float[1,4] x) => (int32[1,4] y) {{
            a = Cast <to = 1> (x)
            b = Relu(a)
            y = Cast <to = 6> (b)
        }}""")
    res = check_pass("fold-constants", model, (rng.normal(size=(1, 4)) * 10).astype(np.float32), modified=True)
    assert res.after == Counter({"Relu": 1, "Cast": 1})
    assert model.graph.node(0).inputs[0] is model.graph.inputs[0]


def test_random_ops_are_never_folded_and_weight_dequantize_only_in_float_graphs(parse_onnx, apply_pass):
    def model(qdq: bool):
        quant = "xq = QuantizeLinear(x, scale, zp)\n            xd = DequantizeLinear(xq, scale, zp)" if qdq else \
            "xd = Identity(x)"
        return parse_onnx(f"""{OPSET}
        g (float[1,4] x) => (float[1,4] y) {{
            {quant}
            r = RandomUniform <shape = [1, 4], seed = 1.0> ()
            w = DequantizeLinear(wq, scale, zp)
            a = Add(xd, r)
            y = Mul(a, w)
        }}""", wq=np.array([[1, -2, 3, -4]], np.int8), scale=np.array(0.5, np.float32), zp=np.array(0, np.int8))

    qdq = model(qdq=True)  # a QDQ model: every Q/DQ stays
    assert apply_pass("fold-constants", qdq).modified is False
    assert _ops(qdq) == Counter({"RandomUniform": 1, "QuantizeLinear": 1, "DequantizeLinear": 2, "Add": 1, "Mul": 1})
    float_model = model(qdq=False)  # int8 weight storage in a float model: the dequantize folds
    assert apply_pass("fold-constants", float_model).modified is True
    assert _ops(float_model) == Counter({"RandomUniform": 1, "Identity": 1, "Add": 1, "Mul": 1})
    (mul,) = [n for n in float_model.graph if n.op_type == "Mul"]
    np.testing.assert_array_equal(mul.inputs[1].const_value.numpy(), np.array([[0.5, -1, 1.5, -2]], np.float32))


def test_foldable_node_that_produces_a_graph_output_is_reported_unchanged(parse_onnx, apply_pass):
    model = parse_onnx(f"""{OPSET}
        g (float[2,3] x) => (float[2,3] y, int64[2] s) {{
            y = Relu(x)
            s = Shape(x)
        }}""")
    apply_pass("fold-constants", model)
    assert apply_pass("fold-constants", model).modified is False
    assert _ops(model) == Counter({"Relu": 1, "Shape": 1})


def test_an_unrolled_lstms_constant_initial_state_is_not_folded(parse_onnx, apply_pass, check_pass, rng):
    # folded, h0/c0 would become anonymous constants the LSTM lowering cannot tell from zeros (it would
    # run from zero, silently); kept, they are a role it refuses by name
    model = parse_onnx(f"""{OPSET}
        g (float[3,1,2] x) => (float[1,1,4] y_h) {{
            y, y_h = LSTM <hidden_size = 4> (x, W, R, "", "", h0, c0)
        }}""", W=rng.normal(0, 0.5, (1, 16, 2)).astype(np.float32),
        R=rng.normal(0, 0.5, (1, 16, 4)).astype(np.float32), h0=np.full((1, 1, 4), 0.5, np.float32),
        c0=np.full((1, 1, 4), -1.0, np.float32))
    assert apply_pass("unroll-lstm", model).modified
    ir.passes.common.RemoveUnusedNodesPass()(model)  # the LSTM's W and R, as the runner drops them
    check_pass("fold-constants", model, rng.normal(size=(3, 1, 2)).astype(np.float32), modified=False)
    roles = Counter(n.metadata_props.get("qpass.lstm.role") for n in model.graph)
    assert roles["h0"] == roles["c0"] == 1


# ---------------------------------------------------------------------------------- Loop state shapes


def _loop(step: str, scan: bool = True) -> str:
    """A Loop over 3 steps whose body states its h with an exporter's symbolic batch N (and scans it out)."""
    outs, results = ("float[1, 3] y, float[3, 1, 3] s", "y, s") if scan else ("float[8, 3] y", "y")
    body_outs = "bool c_out, float[N, 3] h2" + (", float[N, 3] h3" if scan else "")
    return f"""
    {OPSET}
    g (float[1, 3] x) => ({outs}) {{
        {results} = Loop(trip, cond, x) <body = step (int64 i, bool c_in, float[N, 3] h) => ({body_outs}) {{
            c_out = Identity(c_in)
            h2 = {step}
            {"h3 = Identity(h2)" if scan else ""}
        }}>
    }}
    """


def _body_state(model: ir.Model) -> ir.Value:
    return next(n for n in model.graph if n.op_type == "Loop").attributes["body"].as_graph().inputs[2]


def test_loop_state_takes_the_initial_values_static_shape(parse_onnx, check_pass, rng):
    model = parse_onnx(_loop("Tanh(h)"), trip=np.array(3, np.int64), cond=np.array(True))
    x = rng.normal(size=(1, 3)).astype(np.float32)
    check_pass("fold-constants", model, x, modified=True)
    body = next(n for n in model.graph if n.op_type == "Loop").attributes["body"].as_graph()
    assert _body_state(model).shape == ir.Shape([1, 3])
    assert all(v.shape == ir.Shape([1, 3]) for n in body for v in n.outputs if v.name != "c_out")


def test_a_growing_loop_state_keeps_its_symbolic_shape(parse_onnx, check_pass, rng):
    # h doubles every step ([1,3] → [8,3]): the pin would be wrong, so nothing changes
    model = parse_onnx(_loop("Concat<axis = 0>(h, h)", scan=False), trip=np.array(3, np.int64), cond=np.array(True))
    check_pass("fold-constants", model, rng.normal(size=(1, 3)).astype(np.float32), modified=False)
    assert _body_state(model).shape[0] == ir.SymbolicDim("N")
