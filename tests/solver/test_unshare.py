"""Layers that share one bias array (tf2onnx deduplicates equal initializers) each get their own copy, so
each bias is quantized at its own s_x × s_w: a deep Keras MLP with equal biases runs bit-exact in C."""

from __future__ import annotations

import os

import numpy as np
import onnx
import onnx.helper as oh
import onnx.numpy_helper as onh
import onnx_ir as ir
import pytest
import yaml

from qpass.config import load_pipeline
from qpass.converters import load_model
from qpass.pipeline import run_pipeline
from qpass.solver.unshare import unshare_constants

DEPTH = 12


def _graph_with_shared_constants() -> ir.Model:
    rng = np.random.default_rng(0)
    w = onh.from_array(rng.normal(size=(4, 4)).astype(np.float32), "W")
    b = onh.from_array(np.full(4, 0.1, np.float32), "B")
    nodes = [oh.make_node("Gemm", ["x", "W", "B"], ["h"]), oh.make_node("Gemm", ["h", "W", "B"], ["g"]),
             oh.make_node("Add", ["g", "B"], ["y"])]
    graph = oh.make_graph(nodes, "g", [oh.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [1, 4])],
                          [oh.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [1, 4])], [w, b])
    return ir.serde.deserialize_model(oh.make_model(graph, opset_imports=[oh.make_opsetid("", 17)]))


def test_bias_copied_per_consumer_weights_stay_shared():
    model = _graph_with_shared_constants()
    assert unshare_constants(model) == 2
    gemm1, gemm2, add = list(model.graph)
    assert gemm1.inputs[1] is gemm2.inputs[1]  # a weight is quantized by its values alone: still shared
    biases = [gemm1.inputs[2], gemm2.inputs[2], add.inputs[1]]
    assert len({id(b) for b in biases}) == 3
    assert all(np.array_equal(b.const_value.numpy(), np.full(4, 0.1, np.float32)) for b in biases)
    assert unshare_constants(model) == 0  # nothing shared is left


@pytest.fixture(scope="module")
def equal_bias_mlp(tmp_path_factory):
    """A deep Keras MLP whose biases are all the same value (as an untrained model's are), saved once."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    keras = pytest.importorskip("keras")
    keras.utils.set_random_seed(3)
    layers = [keras.layers.Dense(8, activation="relu", bias_initializer=keras.initializers.Constant(0.05))
              for _ in range(DEPTH)]
    model = keras.Sequential([keras.Input((8,)), *layers, keras.layers.Dense(4)])
    root = tmp_path_factory.mktemp("equal_bias")
    model.save(root / "mlp.keras")
    rng = np.random.default_rng(1)
    np.savez(root / "data.npz", x=rng.normal(size=(48, 8)).astype(np.float32))
    return root


def test_deep_mlp_with_one_shared_bias_runs_bit_exact(equal_bias_mlp):
    root = equal_bias_mlp
    converted = load_model(root / "mlp.keras")
    readers = max(len(list(v.uses())) for v in converted.graph.initializers.values())
    assert readers >= DEPTH - 1, "tf2onnx no longer shares the equal biases: the test lost its point"
    (root / "pipeline.yaml").write_text(yaml.safe_dump({
        "model": "mlp.keras", "calibration": {"path": "data.npz", "key": "x"},
        "passes": ["fold-constants", "matmul-to-gemm"], "codegen": {"name": "mlp", "output_dir": "out"}}))
    report = run_pipeline(load_pipeline(root / "pipeline.yaml"))
    assert report["c_equals_runtime_ref"]
    assert report["comparisons"]["c_vs_float"]["max_abs_error"] < 0.1
    qdq = onnx.load(str(root / "out" / "mlp.qdq.onnx"))
    inits = {i.name: onh.to_array(i) for i in qdq.graph.initializer}
    dq_of = {n.output[0]: n for n in qdq.graph.node if n.op_type == "DequantizeLinear"}
    gemms = [n for n in qdq.graph.node if n.op_type == "Gemm" and len(n.input) > 2]
    bias_scales = {float(inits[dq_of[g.input[2]].input[1]].reshape(-1)[0]) for g in gemms}
    assert len(gemms) == DEPTH + 1 and len(bias_scales) > 1  # each layer its own bias scale
