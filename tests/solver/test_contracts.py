"""Each solver contract on a graph where it applies: the plan honours it and the C stays bit-exact."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import onnx
import onnx_ir as ir
import pytest
from onnx import TensorProto, helper, numpy_helper

from qpass.config import QuantSection, load_pipeline
from qpass.pipeline import run_pipeline
from qpass.solver import apply_plan, calibrate, solve
from qpass.solver.calibrate import Range

RNG = np.random.default_rng(7)


def _f(name: str, a: np.ndarray) -> onnx.TensorProto:
    return numpy_helper.from_array(np.asarray(a, dtype=np.float32), name)


def _model(nodes, inits, x_shape, y_shape) -> ir.Model:
    g = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, x_shape)],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, y_shape)], inits)
    proto = onnx.shape_inference.infer_shapes(helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)]))
    return ir.serde.deserialize_model(proto)


def _ranges(model: ir.Model, n: int = 64, shape=(1, 8)) -> dict[str, Range]:
    return calibrate(model, [RNG.normal(0, 1, (n, *shape[1:])).astype(np.float32)])


def _mlp_nodes(tail: list) -> tuple[list, list]:
    nodes = [helper.make_node("Gemm", ["x", "w", "b"], ["h"]), helper.make_node("Relu", ["h"], ["r"]),
             helper.make_node("Reshape", ["r", "s"], ["r2"]), *tail]
    inits = [_f("w", RNG.normal(0, 0.5, (8, 6))), _f("b", RNG.normal(0, 0.1, 6)),
             numpy_helper.from_array(np.array([1, 2, 3], np.int64), "s")]
    return nodes, inits


def test_equal_parameters_through_data_movement_and_relu() -> None:
    nodes, inits = _mlp_nodes([helper.make_node("Flatten", ["r2"], ["f"]),
                               helper.make_node("Gemm", ["f", "w2", "b2"], ["y"])])
    inits += [_f("w2", RNG.normal(0, 0.5, (6, 3))), _f("b2", np.zeros(3))]
    model = _model(nodes, inits, [1, 8], [1, 3])
    plan = solve(model, _ranges(model))
    group = {plan.activations[t].group for t in ("h", "r", "r2", "f")}
    assert len(group) == 1, "Gemm output (ReLU as a clamp), ReLU, Reshape and Flatten share parameters"
    r = plan.activations["r"]
    assert plan.activations["h"].range.lo < 0  # the pre-activation is negative somewhere ...
    assert r.scale * (-128 - r.zero_point) == pytest.approx(0, abs=1e-6)  # ... yet the group starts at 0
    assert plan.rescales_removed >= 3


def test_bias_scale_is_input_scale_times_weight_scale() -> None:
    nodes, inits = _mlp_nodes([helper.make_node("Flatten", ["r2"], ["y"])])
    model = _model(nodes, inits, [1, 8], [1, 6])
    plan = solve(model, _ranges(model))
    s_x = np.float32(plan.activations["x"].scale)
    np.testing.assert_allclose(plan.biases["b"].scale, s_x * plan.weights["w"].scale, rtol=1e-6)
    qdq = apply_plan(model, plan)
    dq = [n for n in qdq.graph if n.op_type == "DequantizeLinear" and n.inputs[0].name == "b_quantized"][0]
    np.testing.assert_allclose(dq.inputs[1].const_value.numpy(), s_x * plan.weights["w"].scale, rtol=1e-6)


@pytest.mark.parametrize(("op", "dtype", "want"), [
    ("Sigmoid", "int8", (1 / 256, -128)), ("Tanh", "int8", (1 / 128, 0)), ("Softmax", "int16", (1 / 32768, 0)),
    ("Tanh", "int16", (1 / 32768, 0))])
def test_lookup_table_outputs_have_fixed_ranges(op: str, dtype: str, want: tuple[float, int]) -> None:
    nodes, inits = _mlp_nodes([helper.make_node(op, ["r2"], ["y"])])
    model = _model(nodes, inits, [1, 8], [1, 2, 3])
    plan = solve(model, _ranges(model), QuantSection(activations=dtype))
    got = plan.activations["y"]
    assert (got.scale, got.zero_point) == (pytest.approx(want[0]), want[1])


def test_pinned_input_range_replaces_calibration() -> None:
    nodes, inits = _mlp_nodes([helper.make_node("Flatten", ["r2"], ["y"])])
    model = _model(nodes, inits, [1, 8], [1, 6])
    plan = solve(model, _ranges(model), QuantSection(input_range=(-4.0, 12.0)))
    x = plan.activations["x"]
    assert x.scale == pytest.approx(16.0 / 255, rel=1e-6)
    assert x.scale * (-128 - x.zero_point) == pytest.approx(-4.0, abs=x.scale)


def test_conflicting_fixed_ranges_get_an_explicit_requantize(tmp_path: Path) -> None:
    """Concat asks Sigmoid's and Tanh's outputs to share parameters; both are fixed and differ."""
    nodes = [helper.make_node("Gemm", ["x", "w", "b"], ["h"]), helper.make_node("Sigmoid", ["h"], ["s"]),
             helper.make_node("Tanh", ["h"], ["t"]), helper.make_node("Concat", ["s", "t"], ["c"], axis=1),
             helper.make_node("Gemm", ["c", "w2", "b2"], ["y"])]
    inits = [_f("w", RNG.normal(0, 1, (8, 6))), _f("b", RNG.normal(0, 0.1, 6)), _f("w2", RNG.normal(0, 1, (12, 3))),
             _f("b2", np.zeros(3))]
    model = _model(nodes, inits, [1, 8], [1, 3])
    plan = solve(model, _ranges(model))
    assert plan.conflicts and "Concat" in plan.conflicts[0]
    c = plan.activations["c"]
    assert c.scale * (-128 - c.zero_point) < -0.5 and c.scale * (127 - c.zero_point) > 0.5  # covers both
    onnx.save(ir.serde.serialize_model(model), tmp_path / "m.onnx")
    x = RNG.normal(0, 1, (48, 8)).astype(np.float32)
    np.save(tmp_path / "x.npy", x)
    (tmp_path / "p.yaml").write_text("model: m.onnx\ncalibration: x.npy\ncodegen: {name: m, output_dir: out}\n")
    report = run_pipeline(load_pipeline(tmp_path / "p.yaml"))
    assert report["c_equals_runtime_ref"]
    assert report["kernels"].count("add") == 2, "an explicit requantize after each fixed input of the concat"
    lo, hi = report["plan"]["tensors"]["y"]["range"]
    assert report["comparisons"]["c_vs_float"]["max_abs_error"] < 0.02 * (hi - lo)


def test_naive_int32_overflow_is_widened_and_stays_exact(tmp_path: Path) -> None:
    """int16 x int16 over 512 inputs can pass 2^31 in a naive int32 accumulator: the plan widens it."""
    k = 512
    nodes = [helper.make_node("Gemm", ["x", "w", "b"], ["y"])]
    model = _model(nodes, [_f("w", RNG.normal(0, 1, (k, 4))), _f("b", RNG.normal(0, 1, 4))], [1, k], [1, 4])
    quant = QuantSection(activations="int16", weights="int16")
    plan = solve(model, _ranges(model, shape=(1, k)), quant)
    assert plan.widened and "int64" in plan.widened[0]
    onnx.save(ir.serde.serialize_model(model), tmp_path / "m.onnx")
    x = RNG.normal(0, 1, (32, k)).astype(np.float32)
    np.save(tmp_path / "x.npy", x)
    (tmp_path / "p.yaml").write_text("model: m.onnx\ncalibration: x.npy\ncodegen: {name: m, output_dir: out}\n"
                                     "quantization: {activations: int16, weights: int16}\n")
    report = run_pipeline(load_pipeline(tmp_path / "p.yaml"))
    assert report["c_equals_runtime_ref"]
    assert report["plan"]["widened_accumulators"]
    assert "int64_t acc" in (tmp_path / "out" / "m.c").read_text()
    y_range = max(abs(t["range"][0]) + abs(t["range"][1]) for t in report["plan"]["tensors"].values())
    assert report["comparisons"]["c_vs_float"]["max_abs_error"] < 1e-3 * y_range


def test_mixed_precision_override_by_name_pattern() -> None:
    nodes, inits = _mlp_nodes([helper.make_node("Flatten", ["r2"], ["y"])])
    nodes[0].name = "encoder/dense"
    model = _model(nodes, inits, [1, 8], [1, 6])
    quant = QuantSection.model_validate({"overrides": [{"match": "re:^encoder/", "activations": "int16",
                                                        "weights": "int16"}]})
    plan = solve(model, _ranges(model), quant)
    assert plan.activations["h"].dtype == "int16" and plan.activations["x"].dtype == "int8"
    assert plan.weights["w"].q.dtype == np.int16


@pytest.mark.parametrize("quant", ["{requant: pow2}", "{per_channel: false}", "{activations: int16, weights: int16}"])
def test_requant_modes_and_schemes_on_the_digits_example(tmp_path: Path, quant: str) -> None:
    root = Path(__file__).resolve().parents[2] / "examples" / "digits"
    (tmp_path / "p.yaml").write_text(
        f"model: {root / 'digits.h5'}\ncalibration: {{path: {root / 'calib.npz'}, key: x}}\n"
        "passes: [strip-dropout, fold-constants, fold-batchnorm, matmul-to-gemm]\n"
        f"quantization: {quant}\ncodegen: {{name: d, output_dir: out}}\n"
        f"compare: {{path: {root / 'test.npz'}, key: x, labels_key: y}}\n")
    report = run_pipeline(load_pipeline(tmp_path / "p.yaml"))
    assert report["c_equals_runtime_ref"]
    assert report["comparisons"]["c_vs_float"]["argmax_agreement"] >= 0.99
    tensors = report["plan"]["tensors"].values()
    if "pow2" in quant:
        assert all(float(np.log2(t["scale"])).is_integer() for t in tensors)
        c = (tmp_path / "out" / "d.c").read_text()  # every multiplier 1: no multiplier array, no 64-bit rescale
        assert re.search(r"= \{ 1(,1)* \}", c) or "qp_requantize" not in c, "shift-only rescales"
    if "int16" in quant:
        assert {t["dtype"] for t in tensors} == {"int16"}
        assert report["comparisons"]["c_vs_float"]["max_abs_error"] < 0.01
