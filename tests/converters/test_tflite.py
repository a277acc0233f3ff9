""".tflite models (made with tf.lite.TFLiteConverter from a small Keras Conv1D model trained on the HAR
example's BasicMotions data) convert through tf2onnx's TFLite route: a float file computes what TFLite computes,
a "dynamic range" file (int8 weights behind DequantizeLinear) is not refused, its int8 weights survive qpass's
own quantization unchanged, and both run through the whole pipeline with the C bit-exact vs runtime_ref."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import onnx
import onnx.numpy_helper
import pytest
import yaml

from qpass.config import load_pipeline
from qpass.converters import load_model
from qpass.errors import ConvertError
from qpass.passes import resolve_pass
from qpass.pipeline import run_pipeline

ROOT = Path(__file__).resolve().parents[2]
HAR = ROOT / "examples" / "har"
PASSES = ["strip-dropout", "fold-constants", "squeeze-conv2d", "simplify-layout", "matmul-to-gemm", "simplify-layout"]


@pytest.fixture(scope="session")
def tflite_files(tmp_path_factory) -> dict:
    """{"keras": model, "float": path, "dynamic": path, "int8": path} from one trained tiny model."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    import keras
    import tensorflow as tf

    data = np.load(HAR / "basicmotions.npz")
    calib = np.load(HAR / "calib.npz")
    x = ((data["x_train"] - calib["mean"]) / calib["std"]).astype(np.float32)
    keras.utils.set_random_seed(7)
    model = keras.Sequential([keras.Input((100, 6)), keras.layers.Conv1D(8, 5, activation="relu"),
                              keras.layers.MaxPooling1D(4), keras.layers.Flatten(),
                              keras.layers.Dense(16, activation="relu"), keras.layers.Dense(4, activation="softmax")])
    model.compile("adam", "sparse_categorical_crossentropy")
    model.fit(x, data["y_train"], epochs=30, batch_size=8, verbose=0)
    work = tmp_path_factory.mktemp("tflite")
    out = {"keras": model}
    for mode in ("float", "dynamic", "int8"):
        conv = tf.lite.TFLiteConverter.from_keras_model(model)
        if mode != "float":
            conv.optimizations = [tf.lite.Optimize.DEFAULT]
        if mode == "int8":
            conv.representative_dataset = lambda: ([s[None]] for s in x[:8])
            conv.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
            conv.inference_input_type = conv.inference_output_type = tf.int8
        out[mode] = work / f"har_{mode}.tflite"
        out[mode].write_bytes(conv.convert())
    return out


def _tflite_run(path: Path, x: np.ndarray) -> np.ndarray:
    import tensorflow as tf

    interp = tf.lite.Interpreter(model_path=str(path))
    interp.allocate_tensors()
    interp.set_tensor(interp.get_input_details()[0]["index"], x)
    interp.invoke()
    return interp.get_tensor(interp.get_output_details()[0]["index"])


def test_float_tflite_computes_what_tflite_computes(tflite_files, ort_run) -> None:
    model = load_model(tflite_files["float"])
    assert "TFLite" in model.metadata_props["qpass.converter"]
    assert list(model.graph.inputs[0].shape) == [1, 100, 6]
    x = np.load(HAR / "test.npz")["x"][:4]
    for s in x:
        np.testing.assert_allclose(ort_run(model, s[None]), _tflite_run(tflite_files["float"], s[None]), atol=1e-5)


def test_dynamic_range_weights_fold_and_keep_their_int8_values(tflite_files, ort_run) -> None:
    model = load_model(tflite_files["dynamic"])
    ops = [n.op_type for n in model.graph]
    assert "DequantizeLinear" in ops and "DynamicQuantizeLinear" not in ops
    (dq,) = [n for n in model.graph if n.op_type == "DequantizeLinear"]
    w_q, scale = dq.inputs[0].const_value.numpy(), dq.inputs[1].const_value.numpy()
    assert w_q.dtype == np.int8
    keras_w = tflite_files["keras"].layers[-2].get_weights()[0]  # Dense(16): [192, 16]
    np.testing.assert_allclose(w_q.astype(np.float32).reshape(keras_w.shape) * scale, keras_w, atol=scale.max())

    x = np.load(HAR / "test.npz")["x"][:8]
    before = np.stack([ort_run(model, s[None]) for s in x])
    resolve_pass("fold-constants")()(model)
    assert "DequantizeLinear" not in [n.op_type for n in model.graph]
    np.testing.assert_allclose(np.stack([ort_run(model, s[None]) for s in x]), before, atol=1e-6)


def test_fully_integer_tflite_is_refused_by_name(tflite_files) -> None:
    with pytest.raises(ConvertError, match=r"har_int8\.tflite.*INT8.*float model"):
        load_model(tflite_files["int8"])


@pytest.mark.parametrize("mode", ["float", "dynamic"])
def test_tflite_runs_end_to_end(tflite_files, tmp_path: Path, mode: str) -> None:
    config = {"model": {"path": str(tflite_files[mode])},
              "calibration": {"path": str(HAR / "calib.npz"), "key": "x"},
              "passes": PASSES,
              "quantization": {"activations": "int8", "weights": "int8", "per_channel": True},
              "codegen": {"name": f"har_{mode}", "output_dir": str(tmp_path / "out")},
              "compare": {"path": str(HAR / "test.npz"), "key": "x", "labels_key": "y"}}
    (tmp_path / "pipeline.yaml").write_text(yaml.safe_dump(config))
    report = run_pipeline(load_pipeline(tmp_path / "pipeline.yaml"))
    assert report["c_equals_runtime_ref"] and report["c_mismatched_samples"] == 0
    assert report["comparisons"]["c_vs_float"]["argmax_agreement"] >= 0.95, report["comparisons"]
    assert "TFLite" in report["converter"]
    if mode == "dynamic":  # the file's int8 weights are the very integers qpass's own quantization chose
        (dq,) = [n for n in load_model(tflite_files[mode]).graph if n.op_type == "DequantizeLinear"]
        w_file = dq.inputs[0].const_value.numpy()
        qdq = onnx.load(str(tmp_path / "out" / f"har_{mode}.qdq.onnx"))
        int8 = [onnx.numpy_helper.to_array(i) for i in qdq.graph.initializer if i.data_type == onnx.TensorProto.INT8]
        (w_qpass,) = [a for a in int8 if a.shape == w_file.shape]
        np.testing.assert_array_equal(w_qpass, w_file)
