"""2-D Keras layers from a real Keras model with a 3-channel NHWC input, converted by tf2onnx: ZeroPadding2D,
Conv2D (valid, strides), DepthwiseConv2D (same, no bias) + BatchNormalization + ReLU6, SeparableConv2D (dilation),
MaxPooling2D and AveragePooling2D (same), a 1x1 Conv2D, Flatten, Dense. tf2onnx writes it as Transpose → NCHW
convs → Transpose → Flatten; the two transposes fold into the first and last 2-D kernels, so neither the integer
C nor the float C has a transpose. Integer C is bit-exact vs runtime_ref; float C matches onnxruntime."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest

from qpass.codegen import float_c
from qpass.config import load_pipeline
from qpass.converters import load_model
from qpass.passes.runner import run_passes
from qpass.pipeline import run_pipeline

PASSES = ["strip-dropout", "fold-constants", "squeeze-conv2d", "simplify-layout", "fold-pad", "fold-batchnorm",
          "matmul-to-gemm", "simplify-layout"]


@pytest.fixture(scope="session")
def nhwc_model(tmp_path_factory) -> Path:
    import keras

    folder = tmp_path_factory.mktemp("keras_2d")
    keras.utils.set_random_seed(0)
    rng = np.random.default_rng(0)
    inp = keras.Input((12, 10, 3))
    h = keras.layers.ZeroPadding2D(((1, 0), (2, 1)))(inp)
    h = keras.layers.Conv2D(6, (3, 3), strides=(2, 1), padding="valid", activation="relu")(h)
    h = keras.layers.DepthwiseConv2D((3, 3), padding="same", use_bias=False)(h)
    h = keras.layers.BatchNormalization()(h)
    h = keras.layers.ReLU(6.0)(h)
    h = keras.layers.SeparableConv2D(8, (3, 3), dilation_rate=(2, 1), padding="same", activation="relu")(h)
    h = keras.layers.MaxPooling2D((2, 2), padding="same")(h)
    h = keras.layers.AveragePooling2D((2, 2), strides=(1, 1), padding="same")(h)
    h = keras.layers.Conv2D(4, (1, 1))(h)
    y = keras.layers.Dense(5, activation="softmax")(keras.layers.Flatten()(h))
    model = keras.Model(inp, y)
    x = rng.normal(size=(96, 12, 10, 3)).astype(np.float32)
    model.compile("adam", "sparse_categorical_crossentropy")
    model.fit(x, rng.integers(0, 5, len(x)), epochs=2, verbose=0)
    model.save(folder / "m.h5")
    np.savez(folder / "data.npz", x=x)
    (folder / "pipeline.yaml").write_text(
        f"model: {{path: m.h5}}\ncalibration: {{path: data.npz, key: x}}\npasses: [{', '.join(PASSES)}]\n"
        "quantization: {activations: int8, weights: int8, per_channel: true}\n"
        "codegen: {name: nhwc, output_dir: out}\ncompare: {path: data.npz, key: x}\n")
    return folder


def test_keras_2d_layers_int8_bit_exact_without_transposes(nhwc_model: Path) -> None:
    report = run_pipeline(load_pipeline(nhwc_model / "pipeline.yaml"))
    assert report["c_equals_runtime_ref"] and report["c_mismatched_samples"] == 0
    assert report["op_counts"]["converted"]["Transpose"] == 2  # tf2onnx's layout change, in and out
    assert not {"Pad", "BatchNormalization", "Mul"} & set(report["op_counts"]["final"])  # folded
    kernels = report["kernels"]
    assert kernels.count("conv2d") == 5 and kernels.count("pool2d") == 2 and "transpose" not in kernels, kernels
    c = report["comparisons"]["c_vs_float"]
    assert c["max_abs_error"] < 0.01, c  # trained on random labels: near-uniform softmax, argmax ties are moot
    text = (nhwc_model / "out" / "nhwc.c").read_text()
    assert "transpose" not in text and re.search(r"qp_l0_conv2d\(", text)
    assert re.search(r"layer 0, conv2d .*\n.* stored \[H, W, C\] ->", text)  # the first conv reads the HWC input


def test_keras_2d_layers_float_c_matches_onnxruntime(nhwc_model: Path, tmp_path: Path) -> None:
    model = load_model(nhwc_model / "m.h5")
    import onnx_ir as ir

    proto = ir.serde.serialize_model(model)
    run_passes(model, [(p, {}) for p in PASSES], base_dir=nhwc_model)
    gen = float_c.generate(model, "nhwc", source="test")
    assert "transpose" not in gen.c
    c_file, h_file = float_c.write(gen, tmp_path, "nhwc")
    x = np.load(nhwc_model / "data.npz")["x"][:16]
    got = float_c.compile_and_run(c_file, h_file, "nhwc", x.reshape(len(x), -1), 5)
    sess = ort.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"])
    want = np.concatenate([sess.run(None, {sess.get_inputs()[0].name: s[None]})[0] for s in x])
    np.testing.assert_allclose(got, want, atol=1e-5)
