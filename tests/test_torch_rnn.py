"""PyTorch nn.RNN exports (tools/export_torch_rnn.py) through the whole integer pipeline; no torch needed here.

The classic exporter writes ONNX RNN nodes (num_layers=2: two; bidirectional: one with both directions, relu), with
zero initial states expanded from Shape(X), read through Squeeze → Transpose → Gather(-1). The dynamo exporter writes
no RNN node but the recurrence unrolled into per-step Slice/MatMul/Add/Tanh; qpass has no pass that rolls it back
into an RNN yet, so the support check refuses it by name, in seconds, before calibration. Data: examples/har's
BasicMotions cases taken every 4th step (T = 25).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest

from qpass.config import load_pipeline
from qpass.errors import UnsupportedOpError
from qpass.pipeline import run_pipeline

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT / "tests" / "data" / "torch"
HAR = ROOT / "examples" / "har"
STRIDE = 4
PASSES = ["strip-dropout", "fold-constants", "simplify-layout", "unroll-rnn", "fold-constants", "simplify-layout",
          "matmul-to-gemm", "simplify-layout"]


def _write(tmp: Path, name: str, activations: str) -> Path:
    calib, test = np.load(HAR / "calib.npz"), np.load(HAR / "test.npz")
    np.savez(tmp / "calib.npz", x=calib["x"][:, ::STRIDE])
    np.savez(tmp / "test.npz", x=test["x"][:, ::STRIDE], y=test["y"])
    (tmp / "pipeline.yaml").write_text(
        f"model: {DATA / f'{name}.onnx'}\ncalibration: {{path: calib.npz, key: x}}\npasses: {PASSES}\n"
        f"quantization: {{activations: {activations}}}\ncodegen: {{name: {name}, output_dir: out}}\n"
        "compare: {path: test.npz, key: x, labels_key: y}\n")
    return tmp / "pipeline.yaml"


@pytest.mark.parametrize("name", ["rnn_stacked", "rnn_bidirectional", "rnn_dynamo"])
def test_export_matches_torch(name: str) -> None:
    """The shipped file is what torch computed (so a qpass failure is qpass's, not a stale export)."""
    expected = np.load(DATA / "rnn_expected.npz")[name]
    x = np.load(HAR / "test.npz")["x"][: len(expected), ::STRIDE]
    assert (DATA / f"{name}.onnx").stat().st_size < 200_000
    sess = ort.InferenceSession(str(DATA / f"{name}.onnx"), providers=["CPUExecutionProvider"])
    got = np.concatenate([sess.run(None, {"x": s[None]})[0] for s in x])
    np.testing.assert_allclose(got, expected, atol=1e-5)


@pytest.mark.parametrize(("name", "activations", "agreement", "kernels"), [
    ("rnn_stacked", "int8", 0.99, 2),  # two layers: two rnn kernels
    ("rnn_bidirectional", "int16", 0.999, 2)])  # relu, both directions: two rnn kernels and a concat
def test_classic_export_is_bit_exact(tmp_path: Path, name: str, activations: str, agreement: float,
                                     kernels: int) -> None:
    report = run_pipeline(load_pipeline(_write(tmp_path, name, activations)))
    assert report["op_counts"]["converted"]["RNN"] == (2 if name == "rnn_stacked" else 1)
    assert report["c_equals_runtime_ref"] and report["c_mismatched_samples"] == 0
    assert report["comparisons"]["c_vs_float"]["argmax_agreement"] >= agreement, report["comparisons"]
    assert report["kernels"].count("rnn") == kernels


def test_dynamo_export_is_refused_by_name(tmp_path: Path) -> None:
    with pytest.raises(UnsupportedOpError, match=r"node 'node_Slice_\d+' \(Slice\)") as info:
        run_pipeline(load_pipeline(_write(tmp_path, "rnn_dynamo", "int8")))
    assert not (tmp_path / "out" / "rnn_dynamo.c").exists()  # refused before any C was written
    assert len(info.value.problems) == 26  # the 25 per-step Slices and the last-step Gather, all at once
