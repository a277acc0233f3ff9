"""A model file's input shape, read without converting it and without importing TensorFlow or onnx.

`qpass check` and `qpass init` need the input shape to check data files and to write the starter YAML;
converting the model (TensorFlow + tf2onnx, tens of seconds) or even importing onnx (about 1 s) to learn
it is too slow.

    model.onnx          → the protobuf wire format, read field by field: graph.input[0]'s tensor shape
    model.h5            → the `model_config` JSON attribute (h5py)
    model.keras         → config.json inside the zip
    SavedModel folder   → None (only a conversion can tell)

The batch dimension is returned as None when it is symbolic.
"""

from __future__ import annotations

import json
import zipfile
from pathlib import Path
from typing import Any

Shape = tuple[int | None, ...]

# ONNX protobuf field numbers (onnx/onnx.proto)
_MODEL_GRAPH, _GRAPH_INITIALIZER, _GRAPH_INPUT = 7, 5, 11
_TENSOR_NAME, _VALUE_NAME, _VALUE_TYPE = 8, 1, 2
_TYPE_TENSOR, _TENSOR_SHAPE, _SHAPE_DIM, _DIM_VALUE = 1, 2, 1, 1


class ShapeUnknown(Exception):
    """The file does not say its input shape in a way this module reads (not an error by itself)."""


def input_shape(path: Path) -> Shape | None:
    """The first graph input's shape, batch dimension included (None where symbolic); None for a SavedModel.

    Raises ShapeUnknown with the reason when the file cannot be read or has no input shape."""
    path = Path(path)
    suffix = path.suffix.lower()
    if path.is_dir():
        return None
    try:
        if suffix == ".onnx":
            return _onnx_input_shape(path.read_bytes())
        if suffix in (".h5", ".hdf5"):
            import h5py

            with h5py.File(path, "r") as f:
                raw = f.attrs.get("model_config")
            if raw is None:
                raise ShapeUnknown("the HDF5 file has no `model_config` (saved weights only?)")
            return _keras_input_shape(json.loads(raw))
        if suffix == ".keras":
            with zipfile.ZipFile(path) as z:
                return _keras_input_shape(json.loads(z.read("config.json")))
    except ShapeUnknown:
        raise
    except (OSError, KeyError, ValueError, zipfile.BadZipFile) as exc:
        raise ShapeUnknown(f"cannot read {path.name}: {type(exc).__name__}: {exc}") from None
    raise ShapeUnknown(f"{path.name}: unknown model format")


# ---------------------------------------------------------------------------------------- ONNX wire format


def _fields(buf: memoryview):
    """(field number, wire type, value) of each field of one protobuf message; length-delimited values as views."""
    pos, end = 0, len(buf)
    while pos < end:
        key, pos = _varint(buf, pos)
        number, wire = key >> 3, key & 7
        if wire == 0:
            value, pos = _varint(buf, pos)
        elif wire == 2:
            size, pos = _varint(buf, pos)
            if pos + size > end:
                raise ValueError("truncated protobuf")
            value, pos = buf[pos:pos + size], pos + size
        elif wire == 1:
            value, pos = buf[pos:pos + 8], pos + 8
        elif wire == 5:
            value, pos = buf[pos:pos + 4], pos + 4
        else:
            raise ValueError(f"unsupported protobuf wire type {wire}")
        yield number, wire, value


def _varint(buf: memoryview, pos: int) -> tuple[int, int]:
    out, shift = 0, 0
    while True:
        if pos >= len(buf) or shift > 63:
            raise ValueError("truncated protobuf")
        byte = buf[pos]
        pos += 1
        out |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return out, pos
        shift += 7


def _sub(buf: memoryview, number: int) -> list[memoryview]:
    return [v for n, w, v in _fields(buf) if n == number and w == 2]


def _onnx_input_shape(data: bytes) -> Shape:
    graphs = _sub(memoryview(data), _MODEL_GRAPH)
    if not graphs:
        raise ShapeUnknown("not an ONNX model (no graph)")
    graph = graphs[-1]
    inits = {bytes(n).decode("utf-8", "replace") for init in _sub(graph, _GRAPH_INITIALIZER)
             for n in _sub(init, _TENSOR_NAME)}
    for value in _sub(graph, _GRAPH_INPUT):
        names = [bytes(n).decode("utf-8", "replace") for n in _sub(value, _VALUE_NAME)]
        if names and names[-1] in inits:
            continue  # an old-style graph lists its initializers as inputs
        for typ in _sub(value, _VALUE_TYPE):
            for tensor in _sub(typ, _TYPE_TENSOR):
                for shape in _sub(tensor, _TENSOR_SHAPE):
                    dims = []
                    for dim in _sub(shape, _SHAPE_DIM):
                        values = [v for n, w, v in _fields(dim) if n == _DIM_VALUE and w == 0]
                        dims.append(int(values[-1]) if values and values[-1] > 0 else None)
                    return tuple(dims)
        raise ShapeUnknown("the ONNX graph input has no tensor shape")
    raise ShapeUnknown("the ONNX graph has no input")


# ----------------------------------------------------------------------------------------------- Keras JSON


def _keras_input_shape(config: dict[str, Any]) -> Shape:
    """Keras 2 and 3, Sequential and functional: the first input layer's batch shape."""
    inner = config.get("config", {})
    layers = inner.get("layers", []) if isinstance(inner, dict) else inner
    shape = None
    wanted = inner.get("input_layers") if isinstance(inner, dict) else None
    if isinstance(wanted, list) and wanted:
        first = wanted[0] if isinstance(wanted[0], list) else wanted
        name = first[0] if first and isinstance(first[0], str) else None
        shape = next((_batch_shape(layer) for layer in layers if layer.get("config", {}).get("name") == name
                      or layer.get("name") == name), None)
    if shape is None and layers:  # Sequential: an InputLayer first, or the first layer's batch_input_shape
        shape = _batch_shape(layers[0])
    if shape is None and isinstance(inner, dict) and inner.get("build_input_shape"):
        shape = inner["build_input_shape"]
    if not isinstance(shape, list | tuple) or not shape:
        raise ShapeUnknown("the Keras config names no input shape")
    return tuple(int(d) if isinstance(d, int) and d > 0 else None for d in shape)


def _batch_shape(layer: dict[str, Any]) -> list | None:
    cfg = layer.get("config", {})
    return cfg.get("batch_shape") or cfg.get("batch_input_shape")
