"""strip-dropout: Dropout (inference) and Identity disappear; the function does not change."""

from __future__ import annotations

from collections import Counter

import numpy as np
import onnx_ir as ir
import pytest

from qpass.errors import PassError, UnsupportedOpError
from qpass.passes.runner import run_passes

OPSET = '<ir_version: 8, opset_import: ["" : 17]>'


def _ops(model: ir.Model) -> Counter:
    return Counter(n.op_type for n in model.graph)


def test_real_tf2onnx_identities_are_removed(keras_zoo, check_pass, rng):
    # tf2onnx without its optimizer leaves Identity nodes, two of them in front of the graph output
    model = keras_zoo.converted("dense_bn", "onnx")
    assert model.graph.outputs[0].producer().op_type == "Identity"
    out_name = model.graph.outputs[0].name
    x = rng.normal(size=(1, 16)).astype(np.float32)
    res = check_pass("strip-dropout", model, x, modified=True)
    assert res.before["Identity"] >= 2
    assert res.after["Identity"] == 0 and res.after["Dropout"] == 0
    assert res.after.total() == res.before.total() - res.before["Identity"]
    assert model.graph.outputs[0].name == out_name, "the graph output keeps its name"


def test_real_dropouts_inserted_between_keras_layers(keras_zoo, check_pass, rng):
    # tf2onnx drops Keras Dropout at inference; put ONNX Dropouts back between the real layers
    model = keras_zoo.converted("dense_bn")
    graph = model.graph
    ratio = ir.Value(name="ratio", shape=ir.Shape([]), type=ir.TensorType(ir.DataType.FLOAT),
                     const_value=ir.tensor(np.array(0.5, np.float32), name="ratio"))
    graph.register_initializer(ratio)
    for node in [n for n in graph if n.op_type in ("Gemm", "Add")]:
        out = node.outputs[0]
        readers = list(out.uses())
        drop = ir.node("Dropout", [out, ratio], num_outputs=2)
        drop.outputs[0].shape, drop.outputs[0].type = out.shape, out.type
        graph.insert_after(node, [drop])
        for use in readers:
            use.node.replace_input_with(use.idx, drop.outputs[0])
    assert _ops(model)["Dropout"] == 3
    x = rng.normal(size=(1, 16)).astype(np.float32)
    res = check_pass("strip-dropout", model, x, modified=True)
    assert res.after == _ops(keras_zoo.converted("dense_bn"))


def test_real_converter_output_without_dropout_is_untouched(keras_zoo, check_pass, rng):
    model = keras_zoo.converted("dense_bn")
    x = rng.normal(size=(1, 16)).astype(np.float32)
    res = check_pass("strip-dropout", model, x, modified=False)
    assert res.after == res.before


def test_tiny_dropout_and_identity_chain(parse_onnx, check_pass, rng):
    model = parse_onnx(f"""{OPSET}
        g (float[2,8] x) => (float[2,8] y) {{
            a = Identity(x)
            b = Dropout(a)
            c = Relu(b)
            d, mask = Dropout(c, ratio)
            y = Identity(d)
        }}""", ratio=np.array(0.3, np.float32))
    x = rng.normal(size=(2, 8)).astype(np.float32)
    res = check_pass("strip-dropout", model, x, modified=True)
    assert dict(res.after) == {"Relu": 1}
    relu = model.graph.node(0)
    assert relu.inputs[0] is model.graph.inputs[0]
    assert relu.outputs[0] is model.graph.outputs[0] and relu.outputs[0].name == "y"


def test_dropout_with_training_mode_false_is_removed(parse_onnx, check_pass, rng):
    model = parse_onnx(f"""{OPSET}
        g (float[1,4] x) => (float[1,4] y) {{
            d = Dropout(x, ratio, training)
            y = Sigmoid(d)
        }}""", ratio=np.array(0.5, np.float32), training=np.array(False))
    res = check_pass("strip-dropout", model, rng.normal(size=(1, 4)).astype(np.float32), modified=True)
    assert dict(res.after) == {"Sigmoid": 1}


def test_identity_between_graph_input_and_output_is_kept_and_reported_unchanged(parse_onnx, check_pass, rng):
    # removing it would make the input itself the output; the pass leaves it and says so
    model = parse_onnx(f"""{OPSET}
        g (float[1,4] x) => (float[1,4] y) {{
            y = Identity(x)
        }}""")
    res = check_pass("strip-dropout", model, rng.normal(size=(1, 4)).astype(np.float32), modified=False)
    assert dict(res.after) == {"Identity": 1}


def _training_dropout(parse_onnx) -> ir.Model:
    model = parse_onnx(f"""{OPSET}
        g (float[1,4] x) => (float[1,4] y) {{
            d = Dropout <seed = 3> (x, ratio, training)
            y = Sigmoid(d)
        }}""", ratio=np.array(0.5, np.float32), training=np.array(True))
    model.graph.node(0).name = "drop_1"
    return model


def test_dropout_with_training_mode_true_raises(parse_onnx, apply_pass):
    model = _training_dropout(parse_onnx)
    with pytest.raises(UnsupportedOpError, match="training_mode") as info:
        apply_pass("strip-dropout", model)
    assert info.value.node_name == "drop_1" and info.value.op_type == "Dropout"
    assert _ops(model)["Dropout"] == 1, "nothing was removed"


def test_dropout_with_training_mode_true_raises_through_the_runner(parse_onnx, tmp_path):
    # the runner wraps foreign exceptions in PassError but lets qpass's own errors through as they are
    with pytest.raises(UnsupportedOpError):
        run_passes(_training_dropout(parse_onnx), [("strip-dropout", {})], base_dir=tmp_path)


def test_used_dropout_mask_raises(parse_onnx, apply_pass):
    model = parse_onnx(f"""{OPSET}
        g (float[1,4] x) => (float[1,4] y) {{
            d, mask = Dropout(x)
            m = Cast <to = 1> (mask)
            y = Mul(d, m)
        }}""")
    with pytest.raises(UnsupportedOpError, match="mask"):
        apply_pass("strip-dropout", model)


def test_dropout_mask_that_is_a_graph_output_raises_unsupported_op(parse_onnx, tmp_path):
    model = parse_onnx(f"""{OPSET}
        g (float[1,4] x) => (float[1,4] y, bool[1,4] mask) {{
            d, mask = Dropout(x)
            y = Relu(d)
        }}""")
    with pytest.raises(UnsupportedOpError, match="mask"):
        run_passes(model, [("strip-dropout", {})], base_dir=tmp_path)


def test_runner_reports_strip_dropout(keras_zoo, tmp_path, ort_run, rng):
    model = keras_zoo.converted("dense_bn", "onnx")
    x = rng.normal(size=(1, 16)).astype(np.float32)
    expected = ort_run(model, x)
    records = run_passes(model, [("strip-dropout", {})], base_dir=tmp_path, dump_dir=tmp_path)
    assert [(r.name, r.modified) for r in records] == [("strip-dropout", True)]
    assert "Identity" not in records[0].op_counts
    assert (tmp_path / "01_strip-dropout.onnx").is_file()
    np.testing.assert_allclose(ort_run(model, x), expected, rtol=1e-5, atol=1e-5)
    with pytest.raises(PassError, match="did you mean 'strip-dropout'"):
        run_passes(model, [("strip-dropuot", {})], base_dir=tmp_path)
