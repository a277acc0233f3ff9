"""ONNX GRUs through the whole integer pipeline: C equal to runtime_ref on every sample, close to onnxruntime.

A GRU node (random weights of a trained-looking size, both linear_before_reset values, the three directions)
reads a [1, T, 1, N_IN] graph input through a Squeeze and its Y_h (or its whole Y) is the flattened graph output; the
data are random walks (sequence data with structure, not constants). int8 and int16 activations.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from qpass.config import load_pipeline
from qpass.pipeline import run_pipeline

T, N_IN, H = 12, 3, 8


def _write(tmp: Path, direction: str, lbr: int, read: str, activations: str, seed: int = 0, t: int = T) -> Path:
    rng = np.random.default_rng(seed)
    dirs = 2 if direction == "bidirectional" else 1
    consts = {"W": rng.normal(0, 0.5, (dirs, 3 * H, N_IN)), "R": rng.normal(0, 0.35, (dirs, 3 * H, H)),
              "B": rng.normal(0, 0.3, (dirs, 6 * H))}
    gru = helper.make_node("GRU", ["x_seq", "W", "R", "B"], ["Y", "Y_h"], name="gru_node", hidden_size=H,
                           direction=direction, linear_before_reset=lbr)
    graph = helper.make_graph(
        [helper.make_node("Squeeze", ["x", "axis0"], ["x_seq"], name="drop_sample_axis"), gru,
         helper.make_node("Reshape", ["Y" if read == "y" else "Y_h", "flat"], ["y"], name="flatten")],
        "gru", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, t, 1, N_IN])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
        [*(numpy_helper.from_array(v.astype(np.float32), k) for k, v in consts.items()),
         numpy_helper.from_array(np.array([0], np.int64), "axis0"),
         numpy_helper.from_array(np.array([1, -1], np.int64), "flat")])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), tmp / "m.onnx")
    data = np.cumsum(rng.normal(0, 0.4, (160, t, 1, N_IN)), axis=1).astype(np.float32)
    np.savez(tmp / "calib.npz", x=data[:80])
    np.savez(tmp / "test.npz", x=data[80:])
    (tmp / "pipeline.yaml").write_text(
        "model: m.onnx\ncalibration: {path: calib.npz, key: x}\n"
        "passes: [unroll-gru, fold-constants, simplify-layout]\n"
        f"quantization: {{activations: {activations}}}\n"
        "codegen: {name: gru, output_dir: out}\ncompare: {path: test.npz, key: x}\n")
    return tmp / "pipeline.yaml"


@pytest.mark.parametrize(("direction", "lbr", "read", "activations", "t"), [
    ("forward", 1, "y_h", "int8", T), ("forward", 0, "y_h", "int8", T), ("reverse", 1, "y", "int8", T),
    ("bidirectional", 0, "y_h", "int8", T), ("forward", 1, "y_h", "int16", T),
    ("forward", 1, "y", "int8", 1), ("reverse", 0, "y_h", "int8", 1),  # one step: R·h folded to constants
    pytest.param("bidirectional", 1, "y", "int16", T, marks=pytest.mark.slow)])  # ~25 s
def test_onnx_gru_c_equals_runtime_ref(tmp_path: Path, direction: str, lbr: int, read: str, activations: str,
                                       t: int) -> None:
    report = run_pipeline(load_pipeline(_write(tmp_path, direction, lbr, read, activations, t=t)))
    assert report["c_equals_runtime_ref"] and report["c_mismatched_samples"] == 0
    # h is in (-1, 1): int8 gates and h are a few table steps (1/128) off, int16 ones far less
    max_tol, mean_tol = (0.15, 0.03) if activations == "int8" else (0.02, 0.004)
    comp = report["comparisons"]["c_vs_float"]
    assert comp["max_abs_error"] < max_tol and comp["mean_abs_error"] < mean_tol, comp
    # the QDQ simulation also rounds the per-step products (r·hn, z·(h − n)) the kernel keeps wide
    assert report["comparisons"]["qdq_vs_float"]["mean_abs_error"] < 2 * mean_tol
