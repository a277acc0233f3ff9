"""Keras recurrent stacks through the whole pipeline: Bidirectional(merge_mode="sum", return_sequences=True)
feeding another LSTM, an LSTM sequence feeding a Conv1D, and Bidirectional(LSTM/GRU/SimpleRNN,
return_sequences=True) with concat and sum merges through the pass list `qpass init` writes. Real Keras models
(seeded weights) saved as .h5/.keras (qpass converts them) or as the .onnx tf2onnx writes with a symbolic batch
(ONNX LSTM ops, Loops for GRU and SimpleRNN, the last step and each direction taken by Slices), on BasicMotions
sequences (examples/har/basicmotions.npz, every 4th step); the C must equal runtime_ref on every sample and stay
close to onnxruntime float.
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
    if path.suffix in (".h5", ".keras"):
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
    assert proto.graph.input[0].type.tensor_type.shape.dim[0].dim_param  # a symbolic batch, pinned by qpass
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


# -- Bidirectional(return_sequences=True) with the pass list `qpass init` writes ---------------------------------


def _starter_passes() -> list[str]:
    import yaml

    from qpass.cli import STARTER

    text = STARTER.format(model="m.keras", shape="25, 6", name="m", output_dir="out")
    return [p if isinstance(p, str) else next(iter(p)) for p in yaml.safe_load(text)["passes"]]


def _bidirectional(cell: str, merge: str):
    """Bidirectional(cell, return_sequences=True) → Dense per step → Flatten → Dense, tiny and seeded."""
    import keras

    keras.utils.set_random_seed(3)
    L = keras.layers
    inp = keras.Input((25, 6))
    x = L.Bidirectional({"lstm": L.LSTM, "gru": L.GRU, "rnn": L.SimpleRNN}[cell](5, return_sequences=True),
                        merge_mode=merge)(inp)
    x = L.Flatten()(L.Dense(3, activation="relu")(x))
    return keras.Model(inp, L.Dense(4, activation="softmax")(x))


@pytest.mark.parametrize(("cell", "merge", "fmt"), [
    ("lstm", "concat", "onnx"), pytest.param("lstm", "sum", "keras", marks=pytest.mark.slow), ("gru", "concat", "h5"),
    ("gru", "sum", "onnx"), ("rnn", "concat", "onnx"), pytest.param("rnn", "sum", "h5", marks=pytest.mark.slow)])
def test_bidirectional_sequence_with_the_starter_passes(tmp_path: Path, cell: str, merge: str, fmt: str,
                                                       ort_run) -> None:
    """The .onnx cases are converted with a symbolic batch: tf2onnx's GRU and SimpleRNN stay Loops whose
    state shapes the pinned batch must reach, and the backward half's reversals are read through Transposes."""
    from qpass.converters import load_model
    from qpass.passes.runner import run_passes

    keras_model = _bidirectional(cell, merge)
    _save(keras_model, tmp_path / f"m.{fmt}")
    model = load_model(tmp_path / f"m.{fmt}")
    run_passes(model, [(name, {}) for name in _starter_passes()], base_dir=tmp_path)
    ops = {n.op_type for n in model.graph}
    assert not {"ReverseSequence", "Loop", "Shape"} & ops, ops
    _, test = _data()
    want = keras_model.predict(test[:4], verbose=0)
    got = np.concatenate([ort_run(model, s[None]) for s in test[:4]])
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("cell", [pytest.param("lstm", marks=pytest.mark.slow), "gru",
                                  pytest.param("rnn", marks=pytest.mark.slow)])
def test_bidirectional_sequence_onnx_is_bit_exact(tmp_path: Path, cell: str) -> None:
    _save(_bidirectional(cell, "concat"), tmp_path / "m.onnx")
    calib, test = _data()
    np.savez(tmp_path / "calib.npz", x=calib)
    np.savez(tmp_path / "test.npz", x=test)
    (tmp_path / "pipeline.yaml").write_text(
        f"model: m.onnx\ncalibration: {{path: calib.npz, key: x}}\npasses: [{', '.join(_starter_passes())}]\n"
        "codegen: {name: m, output_dir: out}\ncompare: {path: test.npz, key: x}\n")
    report = run_pipeline(load_pipeline(tmp_path / "pipeline.yaml"))
    assert report["c_equals_runtime_ref"] and report["c_mismatched_samples"] == 0
    assert report["kernels"].count(cell) == 2
    # an untrained model (near-tied classes: no argmax bound) whose int8 Dense saturates on 3 of 320 compare
    # values; measured on the GRU: mean 0.0030, max 0.080
    c_vs_float = report["comparisons"]["c_vs_float"]
    assert c_vs_float["mean_abs_error"] < 0.01 and c_vs_float["max_abs_error"] < 0.15, c_vs_float
