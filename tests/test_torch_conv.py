"""A PyTorch export (classic exporter) of a streaming conv model through the whole integer pipeline:
nn.Conv1d with groups=C, dilation and padding, BatchNorm1d (folded by the exporter), AvgPool1d,
adaptive average and max pooling (MaxPool over all of T), LeakyReLU, ReLU6 (Clip), Hardswish,
SiLU (x * sigmoid(x)), softmax.

The .onnx is made by tools/export_torch_conv.py (needs torch); this test does not. Data: examples/har.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest

from qpass.config import load_pipeline
from qpass.pipeline import run_pipeline

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT / "tests" / "data" / "torch"
HAR = ROOT / "examples" / "har"
PASSES = ["strip-dropout", "fold-constants", "squeeze-conv2d", "simplify-layout", "fold-pad", "fold-batchnorm",
          "matmul-to-gemm", "simplify-layout"]


@pytest.mark.parametrize("acts", ["int8", "int16"])
def test_torch_streaming_conv_model(tmp_path: Path, acts: str) -> None:
    shutil.copy(DATA / "ds_conv.onnx", tmp_path / "m.onnx")
    (tmp_path / "pipeline.yaml").write_text(
        f"model: m.onnx\ncalibration: {{path: {HAR / 'calib.npz'}}}\npasses: [{', '.join(PASSES)}]\n"
        f"quantization: {{activations: {acts}}}\n"
        f"codegen: {{name: m, output_dir: out}}\ncompare: {{path: {HAR / 'test.npz'}, labels_key: y}}\n")
    report = run_pipeline(load_pipeline(tmp_path / "pipeline.yaml"))
    assert report["c_equals_runtime_ref"]
    c = report["comparisons"]["c_vs_float"]
    assert c["argmax_agreement"] >= (0.99 if acts == "int8" else 0.999), c
    assert set(report["op_counts"]["converted"]) >= {"Conv", "AveragePool", "GlobalAveragePool", "MaxPool",
                                                     "LeakyRelu", "Clip", "HardSwish", "Mul", "Sigmoid"}
    assert report["accuracy"]["float"] == pytest.approx(float(np.mean(
        np.load(DATA / "ds_conv_expected.npz")["y"].argmax(1) == np.load(HAR / "test.npz")["y"])))
