"""converters.load_model: Keras .h5 / .keras, SavedModel folders and .onnx files become float onnx_ir
models with the batch fixed, that compute what the Keras model computes; bad inputs are ConvertErrors
that name the file."""

from __future__ import annotations

import numpy as np
import onnx
import onnx.parser
import onnx_ir as ir
import pytest

from qpass.converters import load_model
from qpass.errors import ConvertError


def _static(model: ir.Model) -> list[str]:
    """Names of the values whose shape is not fully known (graph inputs, outputs and node outputs)."""
    values = list(model.graph.inputs) + [o for n in model.graph for o in n.outputs]
    return [v.name for v in values
            if v.shape is None or not all(isinstance(d, int) for d in v.shape)]


def _check_converted(zoo, name: str, model: ir.Model, batch: int, ort_run, rng) -> None:
    (inp,) = model.graph.inputs
    (out,) = model.graph.outputs
    keras_model = zoo.keras(name)
    assert list(inp.shape) == [batch, *keras_model.inputs[0].shape[1:]]
    assert list(out.shape) == [batch, *keras_model.outputs[0].shape[1:]]
    assert inp.dtype == out.dtype == ir.DataType.FLOAT
    onnx.checker.check_model(ir.serde.serialize_model(model))
    assert all(n.domain in ("", "ai.onnx") for n in model.graph)
    x = rng.normal(size=tuple(inp.shape)).astype(np.float32)
    np.testing.assert_allclose(ort_run(model, x), zoo.predict(name, x), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("fmt", ["h5", "keras", "savedmodel"])
@pytest.mark.parametrize("batch", [1, 4])
def test_keras_formats(keras_zoo, ort_run, rng, fmt, batch):
    kwargs = {} if batch == 1 else {"batch_size": batch}  # batch 1 is the default
    model = keras_zoo.converted("dense_bn", fmt, **kwargs)
    _check_converted(keras_zoo, "dense_bn", model, batch, ort_run, rng)
    assert _static(model) == [], "Keras conversions have static shapes everywhere"


def test_keras_conv1d(keras_zoo, ort_run, rng):
    model = keras_zoo.converted("conv1d_bn", "h5")
    _check_converted(keras_zoo, "conv1d_bn", model, 1, ort_run, rng)
    assert any(n.op_type == "Conv" for n in model.graph)


@pytest.mark.parametrize("batch", [1, 4])
def test_onnx_with_symbolic_batch_is_pinned(keras_zoo, ort_run, rng, batch):
    path = keras_zoo.path("seq_dense_flatten", "onnx")
    assert onnx.load(str(path)).graph.input[0].type.tensor_type.shape.dim[0].dim_param, "exported with a symbolic batch"
    model = keras_zoo.converted("seq_dense_flatten", "onnx", batch_size=batch)
    _check_converted(keras_zoo, "seq_dense_flatten", model, batch, ort_run, rng)


def test_onnx_file_is_loaded_as_is(parse_onnx, tmp_path, ort_run, rng):
    source = parse_onnx("""<ir_version: 8, opset_import: ["" : 17]>
        g (float[1,4] x) => (float[1,3] y) {
            y = Gemm <transB = 1> (x, W, b)
        }""", W=rng.normal(size=(3, 4)).astype(np.float32), b=np.arange(3, dtype=np.float32))
    path = tmp_path / "tiny.onnx"
    ir.save(source, str(path))
    model = load_model(path)
    assert [n.op_type for n in model.graph] == ["Gemm"]
    x = rng.normal(size=(1, 4)).astype(np.float32)
    np.testing.assert_allclose(ort_run(model, x), ort_run(source, x), rtol=0, atol=0)


@pytest.mark.xfail(strict=True, reason="converters/__init__.py:33 runs ONNX shape inference once; a Reshape/Unsqueeze "
                   "whose shape is computed (Shape → Cast → ... chains, as tf2onnx writes without its optimizer) "
                   "leaves unknown shapes, despite the module docstring's 'later stages see static shapes'")
def test_onnx_with_computed_shapes_gets_static_shapes(keras_zoo):
    model = keras_zoo.converted("conv1d_bn", "onnx")
    assert _static(model) == []


def test_onnx_with_fixed_batch_honours_or_refuses_batch_size(tmp_path, parse_onnx):
    model = parse_onnx("""<ir_version: 8, opset_import: ["" : 17]>
        g (float[1,4] x) => (float[1,4] y) { y = Relu(x) }""")
    path = tmp_path / "fixed.onnx"
    ir.save(model, str(path))
    assert list(load_model(path, batch_size=1).graph.inputs[0].shape) == [1, 4]
    with pytest.raises(ConvertError) as info:
        load_model(path, batch_size=4)
    message = str(info.value)
    assert str(path) in message and "batch" in message and "fixed to 1" in message and "batch_size is 4" in message


def test_onnx_with_symbolic_non_batch_dim_is_refused(tmp_path):
    proto = onnx.parser.parse_model("""<ir_version: 8, opset_import: ["" : 17]>
        g (float[N,T] x) => (float[N,T] y) { y = Relu(x) }""")
    path = tmp_path / "dyn.onnx"
    onnx.save(proto, str(path))
    with pytest.raises(ConvertError, match=r"symbolic dimension 1 \('T'\)"):
        load_model(path)


@pytest.mark.parametrize("content", [b"", b"\x00\xffthis is not a protobuf\x13" * 7, "truncated"],
                         ids=["empty", "garbage", "truncated"])
def test_corrupt_onnx_raises_convert_error_naming_the_file(keras_zoo, tmp_path, content):
    path = tmp_path / "broken model.onnx"
    if content == "truncated":
        good = keras_zoo.path("seq_dense_flatten", "onnx").read_bytes()
        content = good[: len(good) // 2]
    path.write_bytes(content)
    with pytest.raises(ConvertError) as info:
        load_model(path)
    assert str(path) in str(info.value)


def test_missing_and_unknown_files(tmp_path):
    with pytest.raises(ConvertError) as info:
        load_model(tmp_path / "nowhere.h5")
    assert "nowhere.h5" in str(info.value)
    with pytest.raises(ConvertError, match="unknown model format") as info:
        (tmp_path / "weights.pt").write_bytes(b"\x80\x04")
        load_model(tmp_path / "weights.pt")
    assert "weights.pt" in str(info.value)
    with pytest.raises(ConvertError, match="nowhere.onnx"):
        load_model(tmp_path / "nowhere.onnx")


def test_corrupt_h5_raises_convert_error(tmp_path):
    path = tmp_path / "broken.h5"
    path.write_bytes(b"\x89HDF\r\n\x1a\n" + b"\x00" * 64)
    with pytest.raises(ConvertError, match="broken.h5"):
        load_model(path)


def test_lambda_layer_is_refused_in_safe_mode(keras_zoo):
    path = keras_zoo.path("lambda", "keras")
    with pytest.raises(ConvertError) as info:
        load_model(path)
    message = str(info.value)
    assert str(path) in message
    assert "Lambda" in message and "safe_mode" in message


def test_lambda_layer_converts_when_safe_mode_is_off(keras_zoo, ort_run, rng):
    model = keras_zoo.converted("lambda", "keras", safe_mode=False)
    _check_converted(keras_zoo, "lambda", model, 1, ort_run, rng)
