"""Every Keras layer qpass supports, through the whole pipeline: tf2onnx → passes → solver → C.

Small seeded models on random data; each must give C equal to runtime_ref bit for bit and follow the
float model closely. The HAR examples (real data) are in test_pipeline_har.py.
"""

from __future__ import annotations

import os
import zlib
from pathlib import Path

import numpy as np
import pytest

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "0")

keras = pytest.importorskip("keras")

from qpass.config import load_pipeline  # noqa: E402
from qpass.pipeline import run_pipeline  # noqa: E402

PASSES = ["strip-dropout", "fold-constants", "squeeze-conv2d", "simplify-layout", "fold-pad", "fold-batchnorm",
          "keras-lstm",
          "simplify-layout", "fold-time-distributed", "unroll-lstm", "matmul-to-gemm", "simplify-layout"]
L = keras.layers


def _head(units: int, activation: str = "softmax") -> keras.layers.Layer:
    """A wide-weighted last layer, so that a random model's outputs are decisive, not near-ties."""
    return L.Dense(units, activation=activation, kernel_initializer=keras.initializers.RandomNormal(stddev=1.5))


def _bn() -> keras.layers.Layer:
    return L.BatchNormalization(beta_initializer="random_normal", gamma_initializer="random_uniform",
                                moving_mean_initializer="random_normal", moving_variance_initializer="ones")


MODELS = {
    "conv1d-same-relu-maxpool": lambda: [L.Conv1D(8, 5, padding="same"), _bn(), L.ReLU(), L.MaxPooling1D(2),
                                         L.Dropout(0.3), L.Flatten(), _head(4, "softmax")],
    "conv1d-valid-stride2": lambda: [L.Conv1D(6, 3, strides=2, padding="valid", activation="relu"), L.Flatten(),
                                     _head(3, "softmax")],
    "conv1d-dilation-tanh": lambda: [L.Conv1D(4, 3, dilation_rate=2, activation="tanh"), L.MaxPooling1D(3),
                                     L.Flatten(), _head(3, "sigmoid")],
    "lstm-last": lambda: [L.LSTM(8), _head(3, "softmax")],
    "lstm-sequences-timedistributed": lambda: [L.LSTM(8, return_sequences=True), L.Dropout(0.2),
                                               L.TimeDistributed(L.Dense(4, activation="relu")), L.Flatten(),
                                               _head(3, "softmax")],
    "lstm-go-backwards": lambda: [L.LSTM(8, go_backwards=True), _head(3, "softmax")],
    "dense-3d-reshape": lambda: [_head(6, "sigmoid"), L.Reshape((12, 6)), _bn(), L.Flatten(),
                                 _head(3, "softmax")],
    "lut-activations": lambda: [L.Conv1D(6, 3, padding="same"), L.LeakyReLU(0.2), L.Conv1D(6, 3, padding="causal"),
                                L.ELU(), L.Conv1D(6, 3), L.ReLU(max_value=6.0), L.Flatten(), L.Dense(8, "softsign"),
                                L.Dense(8, "selu"), L.Dense(8, "softplus"), L.Dense(8, "hard_sigmoid"),
                                _head(3, "softmax")],
    "depthwise-separable-bn": lambda: [L.DepthwiseConv1D(3, padding="same", use_bias=False), _bn(), L.ReLU(),
                                       L.SeparableConv1D(8, 3, strides=2, padding="same"), L.ReLU(),
                                       L.Conv1D(8, 1, use_bias=False), _bn(), L.ReLU(), L.Flatten(),
                                       _head(3, "softmax")],
    "conv2d-k1-over-time": lambda: [L.Reshape((12, 1, 3)), L.Conv2D(6, (3, 1), padding="same"), L.ReLU(),
                                    L.DepthwiseConv2D((3, 1), dilation_rate=(2, 1), use_bias=False), _bn(),
                                    L.Conv2D(4, (1, 1)), L.Flatten(), _head(3, "softmax")],
    "conv-lstm-har-shape": lambda: [L.Conv1D(8, 3, padding="same"), _bn(), L.ReLU(), L.MaxPooling1D(2),
                                    L.Dropout(0.2), L.LSTM(8), _head(4, "softmax")],
    "swish-gating": lambda: [L.Conv1D(6, 3, padding="same", activation="swish"), L.Flatten(),
                             L.Dense(8, activation="silu"), _head(3, "softmax")],
    "dropout-only": lambda: [L.Dropout(0.5)],  # identity graphs still give compiling C (a copy)
    "reshape-only": lambda: [L.Reshape((36,))],
    "dense-binary-sigmoid": lambda: [L.Flatten(), L.Dense(8, activation="relu"), _head(1, "sigmoid")],
    "dense-regression": lambda: [L.Flatten(), L.Dense(8, activation="relu"), L.Dense(2)],
}


def _pooling_two_branch(x):
    h = L.Conv1D(6, 3, padding="same", activation="relu")(x)
    a = L.GlobalAveragePooling1D()(L.AveragePooling1D(2)(h))
    m = L.GlobalMaxPooling1D()(L.Conv1D(4, 3, activation="tanh")(h))
    return _head(3, "softmax")(L.Concatenate()([a, m]))


def _residual(x):
    a = L.Conv1D(6, 3, padding="same")(x)
    b = L.Conv1D(6, 3, padding="same", activation="relu")(a)
    c = L.Add()([a, b])
    d = L.Subtract()([c, L.Conv1D(6, 1)(x)])
    return _head(3, "softmax")(L.GlobalAveragePooling1D()(L.ReLU()(d)))


FUNCTIONAL = {"pooling-two-branch": _pooling_two_branch, "residual-add-sub": _residual}


def _pipeline(tmp: Path, name: str, quant: str = "", suffix: str = ".h5") -> Path:
    keras.utils.set_random_seed(zlib.crc32(name.encode()))
    if name in FUNCTIONAL:
        x = keras.Input((12, 3))
        model = keras.Model(x, FUNCTIONAL[name](x))
    else:
        model = keras.Sequential([keras.Input((12, 3)), *MODELS[name]()])
    model.save(tmp / f"m{suffix}")
    rng = np.random.default_rng(0)
    x = rng.normal(0, 1, (96, 12, 3)).astype(np.float32)
    np.savez(tmp / "calib.npz", x=x[:64])
    np.savez(tmp / "test.npz", x=x[64:])
    (tmp / "pipeline.yaml").write_text(
        f"model: m{suffix}\ncalibration: {{path: calib.npz}}\n"
        f"passes: [{', '.join(PASSES)}]\n{quant}"
        "codegen: {name: m, output_dir: out}\ncompare: {path: test.npz}\n")
    return tmp / "pipeline.yaml"


@pytest.mark.parametrize("name", sorted(MODELS | FUNCTIONAL))
def test_keras_layers_through_the_pipeline(tmp_path: Path, name: str) -> None:
    report = run_pipeline(load_pipeline(_pipeline(tmp_path, name)))
    assert report["c_equals_runtime_ref"], name
    c = report["comparisons"]["c_vs_float"]
    q = report["comparisons"]["qdq_vs_float"]
    # the integer C is as close to float as onnxruntime's simulation of the same plan ...
    assert c["max_abs_error"] <= 1.25 * q["max_abs_error"] + 0.01, (name, c, q)
    # a linear (regression) output saturates where held-out samples leave the calibrated range
    assert c["mean_abs_error"] < (0.05 if name == "dense-regression" else 0.01), (name, c)
    # ... and an untrained model's argmax only moves where its outputs are near-ties
    assert c["argmax_agreement"] >= 0.9 or c["max_abs_error"] < 0.01, (name, c)
    final = report["op_counts"]["final"]
    banned = {"Loop", "LSTM", "BatchNormalization", "Dropout", "Identity", "Cast"}
    if name == "dropout-only":  # the graph input cannot also be its output: one Identity stays
        banned.discard("Identity")
    assert not banned & set(final), final
    if "lstm" in name:
        assert report["kernels"].count("lstm") == 1
    if name in ("depthwise-separable-bn", "conv2d-k1-over-time"):  # BatchNorm folded into bias-free convs
        assert not {"Mul", "Add"} & set(final), final


def test_lut_activations_int16(tmp_path: Path) -> None:
    """The same activations at int16: 257-entry interpolated tables built from each ONNX op."""
    yaml = _pipeline(tmp_path, "lut-activations", "quantization: {activations: int16, weights: int8}\n")
    report = run_pipeline(load_pipeline(yaml))
    assert report["c_equals_runtime_ref"]
    c = report["comparisons"]["c_vs_float"]
    assert c["max_abs_error"] < 0.02 and c["argmax_agreement"] >= 0.99, c
    assert report["kernels"].count("lut") >= 5, report["kernels"]


@pytest.mark.parametrize("name", ["depthwise-separable-bn", "pooling-two-branch"])
def test_keras_v3_format(tmp_path: Path, name: str) -> None:
    """The same layers saved as .keras (Keras 3's own format) instead of legacy .h5."""
    report = run_pipeline(load_pipeline(_pipeline(tmp_path, name, suffix=".keras")))
    assert report["c_equals_runtime_ref"]
    c = report["comparisons"]["c_vs_float"]
    assert c["argmax_agreement"] >= 0.9 or c["max_abs_error"] < 0.01, c  # an untrained model's near-ties
