"""Keras recurrent stacks through the whole pipeline: Bidirectional(merge_mode="sum", return_sequences=True)
feeding another LSTM, and an LSTM sequence feeding a Conv1D. Real Keras models (seeded weights) saved as .h5
(qpass converts them) or as the .onnx tf2onnx writes with a symbolic batch (ONNX LSTM ops, the last step and
each direction taken by Slices), on BasicMotions sequences (examples/har/basicmotions.npz, every 4th step); the C must
equal runtime_ref on every sample and stay close to onnxruntime float.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

from qpass.config import load_pipeline
from qpass.pipeline import run_pipeline

ROOT = Path(__file__).resolve().parents[1]
PASSES = ("strip-dropout, fold-constants, squeeze-conv2d, simplify-layout, fold-batchnorm, keras-lstm, "
          "fold-reverse-sequence, simplify-layout, fold-time-distributed, unroll-lstm, matmul-to-gemm, simplify-layout")


def _model(kind: str):
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    import keras

    keras.utils.set_random_seed(7)
    L = keras.layers
    inp = keras.Input((25, 6))
    if kind == "bidirectional_sum_stacked":
        x = L.Bidirectional(L.LSTM(8, return_sequences=True), merge_mode="sum")(inp)
        x = L.LSTM(6)(x)
    else:  # "lstm_conv1d"
        x = L.LSTM(8, return_sequences=True)(inp)
        x = L.Conv1D(6, 3, activation="relu")(x)
        x = L.Flatten()(x)
    return keras.Model(inp, L.Dense(4, activation="softmax")(x))


def _data() -> tuple[np.ndarray, np.ndarray]:
    d = np.load(ROOT / "examples/har/basicmotions.npz")
    mean, std = d["x_train"].mean(axis=(0, 1)), d["x_train"].std(axis=(0, 1))
    cut = [((d[k] - mean) / std)[:, o::4][:, :25] for k in ("x_train", "x_test") for o in range(2)]
    return np.concatenate(cut[:2]).astype(np.float32), np.concatenate(cut[2:]).astype(np.float32)


def _save(model, path: Path) -> None:
    if path.suffix == ".h5":
        model.save(path)
        return
    import onnx
    import tensorflow as tf
    import tf2onnx

    specs = [tf.TensorSpec((None, *model.inputs[0].shape[1:]), tf.float32, name="x")]

    @tf.function(input_signature=specs)
    def traced(x):
        return {"y": model(x, training=False)}

    proto, _ = tf2onnx.convert.from_function(traced, input_signature=specs, opset=17)
    assert any(n.op_type == "LSTM" for n in proto.graph.node)  # symbolic batch: tf2onnx's own LSTM ops
    onnx.save(proto, path)


@pytest.mark.parametrize(("kind", "fmt"), [
    pytest.param("bidirectional_sum_stacked", "h5", marks=pytest.mark.slow),  # examples/har_bilstm covers it
    ("bidirectional_sum_stacked", "onnx"), ("lstm_conv1d", "h5")])
def test_keras_recurrent_stack_is_bit_exact(tmp_path: Path, kind: str, fmt: str) -> None:
    _save(_model(kind), tmp_path / f"m.{fmt}")
    calib, test = _data()
    np.savez(tmp_path / "calib.npz", x=calib)
    np.savez(tmp_path / "test.npz", x=test)
    (tmp_path / "pipeline.yaml").write_text(
        f"model: m.{fmt}\ncalibration: {{path: calib.npz, key: x}}\npasses: [{PASSES}]\n"
        "codegen: {name: m, output_dir: out}\ncompare: {path: test.npz, key: x}\n")
    report = run_pipeline(load_pipeline(tmp_path / "pipeline.yaml"))
    assert report["c_equals_runtime_ref"] and report["c_mismatched_samples"] == 0
    assert not {"ReverseSequence", "Slice", "Loop"} & set(report["op_counts"]["final"])
    want = 3 if kind.startswith("bidirectional") else 1
    assert report["kernels"].count("lstm") == want
    c_vs_float = report["comparisons"]["c_vs_float"]
    assert c_vs_float["mean_abs_error"] < 0.01 and c_vs_float["max_abs_error"] < 0.05
    assert c_vs_float["argmax_agreement"] >= 0.95
