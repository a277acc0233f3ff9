"""A Keras SimpleRNN classifier trained on BasicMotions, end to end from .keras and from its tf2onnx .onnx.

SimpleRNN(12, return_sequences) → Bidirectional(SimpleRNN(8, relu)) → Dense(4, softmax), trained in the fixture
(a few seconds) on examples/har's standardized BasicMotions cases taken every 4th step (T = 25). Acceptance: C equal
to runtime_ref on every test case; argmax agreement with the float model >= 99 % at int8 and >= 99.9 % at int16
(40 test cases: every one); three rnn kernel calls (one per layer and direction) and no Loop, RNN or
ReverseSequence left; one rnn definition per type set (one loop over T, not a copy per step).
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

from qpass.config import load_pipeline
from qpass.pipeline import run_pipeline

ROOT = Path(__file__).resolve().parents[1]
HAR = ROOT / "examples" / "har"
STRIDE = 4  # every 4th of BasicMotions' 100 steps


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> Path:
    """A folder with rnn.keras, rnn.onnx (its tf2onnx conversion), calib.npz and test.npz (with labels)."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    import keras
    import onnx_ir as ir

    from qpass.converters import load_model

    work = tmp_path_factory.mktemp("rnn")
    calib, test = np.load(HAR / "calib.npz"), np.load(HAR / "test.npz")
    x_train, x_test = calib["x"][:, ::STRIDE], test["x"][:, ::STRIDE]
    y_train = np.load(HAR / "basicmotions.npz")["y_train"]
    keras.utils.set_random_seed(0)
    L = keras.layers
    model = keras.Sequential([keras.Input(x_train.shape[1:]), L.SimpleRNN(12, return_sequences=True),
                              L.Bidirectional(L.SimpleRNN(8, activation="relu")), L.Dense(4, activation="softmax")])
    model.compile(optimizer=keras.optimizers.Adam(0.01), loss="sparse_categorical_crossentropy")
    model.fit(x_train, y_train, epochs=40, batch_size=40, verbose=0)
    model.save(work / "rnn.keras")
    ir.save(load_model(work / "rnn.keras"), work / "rnn.onnx")
    np.savez(work / "calib.npz", x=x_train)
    np.savez(work / "test.npz", x=x_test, y=test["y"])
    return work


def _run(work: Path, model: str, activations: str) -> tuple[dict, str]:
    out = work / f"out_{model.replace('.', '_')}_{activations}"
    yaml = work / f"{out.name}.yaml"
    yaml.write_text(
        f"model: {model}\ncalibration: {{path: calib.npz, key: x}}\n"
        "passes: [strip-dropout, fold-constants, keras-lstm, keras-gru, keras-rnn, fold-reverse-sequence, "
        "simplify-layout, unroll-rnn, matmul-to-gemm, simplify-layout]\n"
        f"quantization: {{activations: {activations}, weights: int8, per_channel: true}}\n"
        f"codegen: {{name: har_rnn, output_dir: {out.name}}}\n"
        "compare: {path: test.npz, key: x, labels_key: y}\n")
    report = run_pipeline(load_pipeline(yaml))
    return report, (out / "har_rnn.c").read_text()


@pytest.mark.parametrize(("model", "activations", "agreement"), [("rnn.keras", "int8", 0.99),
                                                                 ("rnn.onnx", "int16", 0.999)])
def test_keras_simple_rnn_end_to_end(trained: Path, model: str, activations: str, agreement: float) -> None:
    report, source = _run(trained, model, activations)
    assert report["c_equals_runtime_ref"] and report["c_mismatched_samples"] == 0
    assert report["comparisons"]["c_vs_float"]["argmax_agreement"] >= agreement, report["comparisons"]
    assert report["op_counts"]["converted"]["Loop"] == 3
    assert not {"Loop", "RNN", "ReverseSequence"} & set(report["op_counts"]["final"])
    assert report["kernels"].count("rnn") == 3
    assert source.count("qp_rnn_") >= 4  # one definition per type set, three calls
