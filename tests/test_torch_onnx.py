"""PyTorch exports (torch.onnx.export, classic exporter) of HAR-shaped models through the whole integer pipeline.

The .onnx files are made by tools/export_torch_models.py (which needs torch); this test does not need torch.
They differ from tf2onnx's output: zero initial states computed from Shape(X) (Expand / ConstantOfShape),
a dynamic batch, LSTM weights as Slice/Concat chains, BatchNormalization after a 1-D Conv, Y read through
Squeeze → Transpose → Gather. Calibration and comparison use examples/har's real data.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest

from qpass.config import load_pipeline
from qpass.pipeline import run_pipeline

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT / "tests" / "data" / "torch"
HAR = ROOT / "examples" / "har"
MODELS = ("conv_lstm", "lstm_seq", "lstm_zero_state", "lstm_stacked", "lstm_bidirectional")
EXPORTED = {  # the export's forms each model exercises (in the converted op counts)
    "conv_lstm": {"BatchNormalization", "Expand", "Slice"},  # do_constant_folding=False
    "lstm_seq": {"Expand", "Shape"},
    "lstm_zero_state": {"ConstantOfShape", "Shape"},  # dynamic batch: pinned to 1 by qpass
    "lstm_stacked": {"Expand", "Gather"},  # num_layers=2: two LSTMs; out[:, -1] a Gather
    "lstm_bidirectional": {"Expand", "Transpose"},  # Y [T, 2, B, H] → [B, T, 2H]: the directions side by side
}
LSTMS = {"lstm_stacked": 2, "lstm_bidirectional": 1}  # ONNX LSTM nodes in the export (default 1)
SLOW = {"lstm_stacked"}  # two 100-step LSTMs: ~30 s; the .onnx of a stacked Keras LSTM is in the default run
KERNELS = {"lstm_stacked": 2, "lstm_bidirectional": 2}  # integer lstm kernels: one per layer and direction
# fold-constants before unroll-lstm: W/R/B (conv_lstm) and the zero initial states are computed chains until
# it runs (the batch pinned, Shape folds). squeeze-conv2d and fold-time-distributed change nothing here
# (Conv1d is 1-D already; the per-step Linear is one MatMul over [1, T, F]); they stay as in examples/har.
PASSES = ["strip-dropout", "fold-constants", "squeeze-conv2d", "simplify-layout", "fold-batchnorm", "unroll-lstm",
          "fold-constants", "simplify-layout", "fold-time-distributed", "matmul-to-gemm", "simplify-layout"]
GONE = ("LSTM", "Loop", "Scan", "BatchNormalization", "Dropout")


@pytest.mark.parametrize("name", MODELS)
def test_export_matches_torch(name: str) -> None:
    """The shipped file is what torch computed (so a qpass failure is qpass's, not a stale export)."""
    expected = np.load(DATA / "expected.npz")[name]
    x = np.load(HAR / "test.npz")["x"][: len(expected)]
    proto = onnx.load(DATA / f"{name}.onnx")
    batch = proto.graph.input[0].type.tensor_type.shape.dim[0]
    assert (batch.dim_param == "batch") is (name == "lstm_zero_state") and proto.opset_import[0].version == 17
    sess = ort.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"])
    got = np.concatenate([sess.run(None, {"x": s[None]})[0] for s in x])
    np.testing.assert_allclose(got, expected, atol=1e-5)


@pytest.mark.parametrize("name", [pytest.param(m, marks=pytest.mark.slow) if m in SLOW else m for m in MODELS])
def test_torch_export_is_bit_exact(tmp_path: Path, name: str) -> None:
    model = DATA / f"{name}.onnx"
    assert model.stat().st_size < 200_000
    (tmp_path / "pipeline.yaml").write_text(
        f"model: {model}\n"
        f"calibration: {{path: {HAR / 'calib.npz'}, key: x}}\n"
        f"passes: [{', '.join(PASSES)}]\n"
        "quantization: {activations: int8, weights: int8, per_channel: true}\n"
        f"codegen: {{name: {name}, output_dir: out}}\n"
        f"compare: {{path: {HAR / 'test.npz'}, key: x, labels_key: y}}\n")
    report = run_pipeline(load_pipeline(tmp_path / "pipeline.yaml"))

    assert report["c_equals_runtime_ref"] and report["c_mismatched_samples"] == 0
    cmp = report["comparisons"]
    c_err, qdq_err = cmp["c_vs_float"]["max_abs_error"], cmp["qdq_vs_float"]["max_abs_error"]
    assert c_err <= 1.25 * qdq_err + 0.01, (c_err, qdq_err)
    final = report["op_counts"]["final"]
    assert not [op for op in GONE if op in final], final
    assert report["op_counts"]["converted"]["LSTM"] == LSTMS.get(name, 1)
    assert EXPORTED[name] <= set(report["op_counts"]["converted"])
    assert report["kernels"].count("lstm") == KERNELS.get(name, 1), report["kernels"]
