"""A PyTorch export (classic exporter) of a small 2-D conv model through the whole integer pipeline: nn.Conv2d,
depthwise (groups=C, stride 2), 1x1, BatchNorm2d (folded by the exporter), MaxPool2d, AvgPool2d with padding
(count_include_pad=False), AdaptiveAvgPool2d(1), ReLU, ReLU6 (Clip), Linear, softmax. The model permutes its NHWC
input itself: that Transpose folds into the first conv, so the C has none.

The .onnx is made by tools/export_torch_conv2d.py (needs torch); this test does not. Data: examples/resnet8.
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
RESNET8 = ROOT / "examples" / "resnet8"
PASSES = ["strip-dropout", "fold-constants", "squeeze-conv2d", "simplify-layout", "fold-pad", "fold-batchnorm",
          "matmul-to-gemm", "simplify-layout"]


# (activations, weights) -> the least argmax agreement with onnxruntime float. The model is weakly trained (80 %
# test accuracy, low-margin outputs): with 8-bit weights the plan itself (the QDQ simulation in onnxruntime) flips
# ~2 % of the argmaxes, and the C must flip exactly the same ones; 16-bit weights and activations keep them all.
AGREEMENT = {("int8", "int8"): 0.97, ("int16", "int16"): 0.999}


@pytest.mark.parametrize(("acts", "weights"), list(AGREEMENT))
def test_torch_conv2d_model(tmp_path: Path, acts: str, weights: str) -> None:
    shutil.copy(DATA / "conv2d.onnx", tmp_path / "m.onnx")
    (tmp_path / "pipeline.yaml").write_text(
        f"model: m.onnx\ncalibration: {{path: {RESNET8 / 'calib.npz'}}}\npasses: [{', '.join(PASSES)}]\n"
        f"quantization: {{activations: {acts}, weights: {weights}}}\n"
        f"codegen: {{name: m, output_dir: out}}\ncompare: {{path: {RESNET8 / 'test.npz'}, labels_key: y}}\n")
    report = run_pipeline(load_pipeline(tmp_path / "pipeline.yaml"))
    assert report["c_equals_runtime_ref"] and report["c_mismatched_samples"] == 0
    c = report["comparisons"]["c_vs_float"]
    assert c["argmax_agreement"] >= AGREEMENT[acts, weights], c
    assert c["argmax_agreement"] == report["comparisons"]["qdq_vs_float"]["argmax_agreement"]
    assert set(report["op_counts"]["converted"]) >= {"Transpose", "Conv", "MaxPool", "AveragePool",
                                                     "GlobalAveragePool", "Clip"}
    kernels = report["kernels"]
    assert kernels.count("conv2d") == 3 and kernels.count("pool2d") == 2 and "transpose" not in kernels, kernels
    assert report["accuracy"]["float"] == pytest.approx(float(np.mean(
        np.load(DATA / "conv2d_expected.npz")["y"].argmax(1) == np.load(RESNET8 / "test.npz")["y"])))
