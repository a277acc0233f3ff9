"""Keras (.h5, .keras) and TensorFlow SavedModel → ONNX through tf2onnx.

The model is traced as a `tf.function` with a fixed input signature (batch fixed) and converted with
`tf2onnx.convert.from_function`, which works for Keras 3 where `from_keras` does not.

Files saved by Keras 2 (TF <= 2.15) that Keras 3 refuses (e.g. a DepthwiseConv2D config with `groups: 1`)
are loaded with `tf_keras`, the Keras 2 package, when it is installed. safe_mode holds on that route too:
tf_keras ignores safe_mode for legacy .h5 files, so qpass itself refuses an .h5 whose config holds a Lambda
layer (Python bytecode) unless safe_mode is off. The loader used is logged and recorded in the ONNX model's
metadata (`qpass.converter`).
"""

from __future__ import annotations

import logging
import os
import sys
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from types import ModuleType

import numpy as np
import onnx

from qpass.converters.no_sklearn import without_sklearn
from qpass.errors import ConvertError

log = logging.getLogger(__name__)


def quiet_tensorflow() -> ModuleType:
    """Import TensorFlow without its start-up noise on stderr, and keep its loggers (and tf2onnx's, absl's) to
    errors that qpass does not report itself. Returns the tensorflow module.

    TensorFlow's C++ libraries write absl lines ("All log messages before absl::InitializeLog() ...", "Could
    not find cuda drivers") straight to file descriptor 2 while they load, whatever TF_CPP_MIN_LOG_LEVEL says:
    during the import, descriptor 2 goes to an anonymous temporary file, whose lines reach the debug log.
    """
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "0")  # silences TF's start-up banner; weights are unaffected
    if "tensorflow" not in sys.modules:
        with _native_stderr_to_debug_log("importing TensorFlow"):
            import tensorflow  # noqa: F401
    import tensorflow as tf

    tf.get_logger().setLevel(logging.ERROR)
    quiet = logging.ERROR if log.isEnabledFor(logging.DEBUG) else logging.CRITICAL
    logging.getLogger("tf2onnx").setLevel(quiet)  # its errors name ops qpass's own error names again
    logging.getLogger("absl").setLevel(quiet)
    return tf


@contextmanager
def _native_stderr_to_debug_log(what: str) -> Iterator[None]:
    """Send what C libraries write to file descriptor 2 inside the block to the debug log instead."""
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile() as tmp:
        os.dup2(tmp.fileno(), 2)
        try:
            yield
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
            tmp.seek(0)
            for line in tmp.read().decode(errors="replace").splitlines():
                if line.strip():
                    log.debug("%s: %s", what, line)


def convert_keras(path: Path, *, batch_size: int, safe_mode: bool, opset: int) -> onnx.ModelProto:
    with without_sklearn():  # keras would import its scikit-learn wrappers: seconds, never used here
        return _convert(path, batch_size=batch_size, safe_mode=safe_mode, opset=opset)


def _convert(path: Path, *, batch_size: int, safe_mode: bool, opset: int) -> onnx.ModelProto:
    tf = quiet_tensorflow()
    import tf2onnx

    try:
        if path.is_dir():
            model = tf.saved_model.load(str(path))
            fn = model.signatures.get("serving_default") if hasattr(model, "signatures") else None
            if fn is None:
                raise ConvertError(f"{path}: the SavedModel has no 'serving_default' signature")
            specs = [s for s in fn.structured_input_signature[1].values()]
            call, loader = fn, f"TensorFlow {tf.__version__} SavedModel"
        else:
            model, loader = _load_keras_file(path, safe_mode)
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
        proto, _ = tf2onnx.convert.from_function(traced, input_signature=specs, opset=opset,
                                                 custom_op_handlers=TF_OP_HANDLERS)
    except Exception as exc:  # noqa: BLE001
        raise ConvertError(f"{path}: tf2onnx failed: {type(exc).__name__}: {exc}") from None
    bad = [n for n in proto.graph.node if n.domain not in ("", "ai.onnx")]
    if bad:
        raise ConvertError(f"{path}: tf2onnx could not convert op {bad[0].op_type!r} (node {bad[0].name!r}); "
                           "qpass needs standard ONNX ops")
    converter = f"tf2onnx {tf2onnx.__version__} from {loader}"
    log.info("%s: converted with %s", path, converter)
    onnx.helper.set_model_props(proto, {**{p.key: p.value for p in proto.metadata_props}, CONVERTER_KEY: converter})
    return proto


CONVERTER_KEY = "qpass.converter"


def _erfc(ctx, node, name: str, args: list) -> None:
    """TensorFlow's Erfc, which tf2onnx lacks (Keras `gelu` is 0.5·x·erfc(−x/√2)): erfc(x) = 1 − Erf(x).
    A tf2onnx op handler (its `custom_op_handlers` form): `node` becomes the Erf, a Sub after it the result."""
    from tf2onnx import utils

    node.type = "Erf"
    dtype = utils.map_onnx_to_numpy_type(ctx.get_dtype(node.output[0]))
    one = ctx.make_const(utils.make_name(f"{name}_one"), np.array(1, dtype=dtype))
    sub = ctx.insert_new_node_on_output("Sub", node.output[0], name=utils.make_name(f"{name}_one_minus"))
    ctx.replace_inputs(sub, [one.output[0], node.output[0]])


TF_OP_HANDLERS = {"Erfc": (_erfc, [])}  # TensorFlow op → (handler, args) for tf2onnx


def _load_keras_file(path: Path, safe_mode: bool):
    """Load with Keras 3; if it refuses the file, with tf_keras (Keras 2). Returns (model, loader description)."""
    import keras

    try:
        return keras.models.load_model(str(path), compile=False, safe_mode=safe_mode), f"Keras {keras.__version__}"
    except Exception as exc:  # noqa: BLE001 - Keras raises many kinds; the message names the layer
        keras3_error = exc
    if "lambda" in str(keras3_error).lower():
        raise keras3_error
    try:
        import tf_keras
    except ImportError:
        log.info("tf_keras is not installed: no Keras 2 fallback for %s", path)
        raise keras3_error from None
    if safe_mode and path.suffix.lower() in (".h5", ".hdf5") and _h5_has_lambda(path):
        raise ConvertError(f"{path}: Keras 3 could not load this Keras 2 file ({_short(keras3_error)}), and it "
                           "holds a Lambda layer (Python code), which tf_keras would run "
                           "without safe_mode; set `model.safe_mode: false` if you trust the file")
    try:
        model = tf_keras.models.load_model(str(path), compile=False, safe_mode=safe_mode)
    except Exception as exc:  # noqa: BLE001
        raise ConvertError(f"{path}: could not load the model: with Keras 3: {_short(keras3_error)}; "
                           f"with tf_keras (Keras 2): {_short(exc)}") from None
    log.warning("%s: loaded with tf_keras %s (Keras 2), since Keras 3 refused it: %s", path, tf_keras.__version__,
                _short(keras3_error))
    return model, f"tf_keras {tf_keras.__version__} (Keras 2; Keras 3 refused the file)"


def _short(exc: Exception) -> str:
    """The type and the last line of an exception's message (Keras puts the layer config first, the cause last)."""
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    last = lines[-1].removeprefix("Exception encountered: ") if lines else ""
    return f"{type(exc).__name__}: {last[:300]}"


def _h5_has_lambda(path: Path) -> bool:
    """Whether a Keras .h5 file's model_config holds a Lambda layer anywhere (nested models included)."""
    import json

    import h5py

    with h5py.File(path, "r") as f:
        raw = f.attrs.get("model_config")
    if raw is None:
        return False
    config = json.loads(raw.decode() if isinstance(raw, bytes) else str(raw))

    def walk(node) -> bool:
        if isinstance(node, dict):
            return node.get("class_name") == "Lambda" or any(walk(v) for v in node.values())
        return isinstance(node, list) and any(walk(v) for v in node)

    return walk(config)


def _input_name(tensor, index: int) -> str:
    name = getattr(tensor, "name", None) or f"input_{index}"
    return name.split(":")[0].replace("/", "_") or f"input_{index}"
