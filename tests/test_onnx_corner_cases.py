"""ONNX graphs Keras does not write, through the whole pipeline: a MatMul with a 3-D constant operand,
Gemm with transA=1, LUT activations straight from ONNX ops, Clip with its own bounds, Sub and pooling."""

from __future__ import annotations

import zlib
from pathlib import Path

import numpy as np
import onnx_ir as ir
import pytest

from qpass.config import load_pipeline
from qpass.pipeline import run_pipeline

RNG = np.random.default_rng(11)
GRAPHS = {
    "matmul-3d-constant": ("""
        <ir_version: 8, opset_import: ["" : 17]>
        g (float[1, 4, 6] x) => (float[1, 4, 5] y) {
            h = MatMul (x, w)
            y = Elu (h)
        }""", {"w": RNG.normal(size=(1, 6, 5)).astype(np.float32)}),
    "gemm-transA": ("""
        <ir_version: 8, opset_import: ["" : 17]>
        g (float[1, 4, 6] x) => (float[1, 3] y) {
            f = Reshape (x, s)
            y = Gemm <transA = 1> (f, w, b)
        }""", {"s": np.array([24, 1], np.int64), "w": RNG.normal(size=(24, 3)).astype(np.float32),
               "b": RNG.normal(size=3).astype(np.float32)}),
    "clip-sub-pool-hardswish": ("""
        <ir_version: 8, opset_import: ["" : 17]>
        g (float[1, 4, 6] x) => (float[1, 4] y) {
            c = Clip (x, lo, hi)
            d = Sub (c, x)
            e = HardSwish (d)
            p = AveragePool <kernel_shape = [2], strides = [2]> (e)
            y = ReduceMax <axes = [2], keepdims = 0> (p)
        }""", {"lo": np.array(-0.5, np.float32), "hi": np.array(0.8, np.float32)}),
    "sub-constants": ("""
        <ir_version: 8, opset_import: ["" : 17]>
        g (float[1, 4, 6] x) => (float[1, 4, 6] y) {
            r = Sub (x, c)
            y = Sub (k, r)
        }""", {"c": RNG.normal(size=6).astype(np.float32), "k": np.array(0.5, np.float32)}),
    "gelu-mish-opset20": ("""
        <ir_version: 9, opset_import: ["" : 20]>
        g (float[1, 4, 6] x) => (float[1, 4, 6] y) {
            h = Gelu <approximate = "tanh"> (x)
            y = Mish (h)
        }""", {}),
    "concat-constant": ("""
        <ir_version: 8, opset_import: ["" : 17]>
        g (float[1, 4, 6] x) => (float[1, 6] y) {
            r = Relu (x)
            c = Concat <axis = 1> (r, k)
            y = ReduceMean <axes = [2], keepdims = 0> (c)
        }""", {"k": RNG.uniform(0, 1, (1, 2, 6)).astype(np.float32)}),
}


@pytest.mark.parametrize("name", sorted(GRAPHS))
@pytest.mark.parametrize("acts", ["int8", "int16"])
def test_onnx_graph_through_the_pipeline(tmp_path: Path, parse_onnx, ort_run, name: str, acts: str) -> None:
    text, consts = GRAPHS[name]
    model = parse_onnx(text, **consts)
    (tmp_path / "m.onnx").write_bytes(ir.serde.serialize_model(model).SerializeToString())
    x = np.random.default_rng(zlib.crc32(name.encode())).normal(0, 1, (96, 4, 6)).astype(np.float32)
    # calibrated on every sample compared: these tests check the kernels, not calibration's clipping
    np.savez(tmp_path / "calib.npz", x=x)
    np.savez(tmp_path / "test.npz", x=x[64:])
    (tmp_path / "pipeline.yaml").write_text(
        "model: m.onnx\ncalibration: {path: calib.npz}\n"
        f"quantization: {{activations: {acts}, weights: {acts}}}\n"
        "codegen: {name: m, output_dir: out}\ncompare: {path: test.npz}\n")
    report = run_pipeline(load_pipeline(tmp_path / "pipeline.yaml"))
    assert report["c_equals_runtime_ref"], name
    c, q = report["comparisons"]["c_vs_float"], report["comparisons"]["qdq_vs_float"]
    assert c["max_abs_error"] <= 1.25 * q["max_abs_error"] + 0.01, (name, c, q)
    y_float = np.concatenate([ort_run(model, s[None]) for s in x[64:]])
    span = float(np.abs(y_float).max())  # errors relative to the output's own scale
    assert c["mean_abs_error"] < (0.01 if acts == "int8" else 0.001) * span, (name, c, span)
