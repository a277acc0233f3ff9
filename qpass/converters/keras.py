"""Keras (.h5, .keras) and TensorFlow SavedModel → ONNX through tf2onnx.

The model is traced as a `tf.function` with a fixed input signature (batch fixed) and converted with
`tf2onnx.convert.from_function`, which works for Keras 3 where `from_keras` does not.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import onnx

from qpass.converters.no_sklearn import without_sklearn
from qpass.errors import ConvertError

log = logging.getLogger(__name__)


def _quiet_tf():
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "0")  # silences TF's start-up banner; weights are unaffected
    import tensorflow as tf

    tf.get_logger().setLevel(logging.ERROR)
    logging.getLogger("tf2onnx").setLevel(logging.ERROR)
    return tf


def convert_keras(path: Path, *, batch_size: int, safe_mode: bool, opset: int) -> onnx.ModelProto:
    with without_sklearn():  # keras would import its scikit-learn wrappers: seconds, never used here
        return _convert(path, batch_size=batch_size, safe_mode=safe_mode, opset=opset)


def _convert(path: Path, *, batch_size: int, safe_mode: bool, opset: int) -> onnx.ModelProto:
    tf = _quiet_tf()
    import keras
    import tf2onnx

    try:
        if path.is_dir():
            model = tf.saved_model.load(str(path))
            fn = model.signatures.get("serving_default") if hasattr(model, "signatures") else None
            if fn is None:
                raise ConvertError(f"{path}: the SavedModel has no 'serving_default' signature")
            specs = [s for s in fn.structured_input_signature[1].values()]
            call = fn
        else:
            model = keras.models.load_model(str(path), compile=False, safe_mode=safe_mode)
            specs = [tf.TensorSpec(t.shape, t.dtype, name=_input_name(t, i)) for i, t in enumerate(model.inputs)]
            call = None
    except ConvertError:
        raise
    except Exception as exc:  # noqa: BLE001 - Keras raises many kinds; the message names the layer
        hint = " (a Lambda layer needs `model.safe_mode: false`)" if "lambda" in str(exc).lower() else ""
        raise ConvertError(f"{path}: could not load the model: {type(exc).__name__}: {exc}{hint}") from None

    specs = [tf.TensorSpec((batch_size, *s.shape[1:]), s.dtype, name=s.name) for s in specs]
    if any(d is None for s in specs for d in s.shape):
        raise ConvertError(f"{path}: input shapes {[tuple(s.shape) for s in specs]} have unknown dimensions "
                           "besides the batch; give the Keras Input a full shape")

    if call is None:
        @tf.function(input_signature=specs)
        def traced(*args):
            out = model(args[0] if len(args) == 1 else list(args), training=False)
            return {"output": out} if not isinstance(out, (list, tuple, dict)) else out
    else:
        @tf.function(input_signature=specs)
        def traced(*args):
            return call(**{s.name: a for s, a in zip(specs, args, strict=True)})

    try:
        proto, _ = tf2onnx.convert.from_function(traced, input_signature=specs, opset=opset)
    except Exception as exc:  # noqa: BLE001
        raise ConvertError(f"{path}: tf2onnx failed: {type(exc).__name__}: {exc}") from None
    bad = [n for n in proto.graph.node if n.domain not in ("", "ai.onnx")]
    if bad:
        raise ConvertError(f"{path}: tf2onnx could not convert op {bad[0].op_type!r} (node {bad[0].name!r}); "
                           "qpass needs standard ONNX ops")
    return proto


def _input_name(tensor, index: int) -> str:
    name = getattr(tensor, "name", None) or f"input_{index}"
    return name.split(":")[0].replace("/", "_") or f"input_{index}"
