"""keras-rnn: tf2onnx's Loop for a Keras 3 SimpleRNN becomes one ONNX RNN with the same outputs (onnxruntime, 1e-5).

Real Keras models with seeded random weights (.keras and .h5), converted once per module by
`qpass.converters.load_model`. The float pipeline's recurrent passes (keras-rnn, fold-reverse-sequence,
unroll-rnn) then reproduce Keras itself, and the early support check accepts every node.
"""

from __future__ import annotations

import os

import numpy as np
import onnx
import onnx_ir as ir
import pytest

from qpass.codegen.support import problems
from qpass.ort import session
from qpass.passes import resolve_pass
from qpass.passes.keras_rnn import KerasRnnPass

ATOL = RTOL = 1e-5
RECURRENT_PASSES = ["fold-constants", "keras-lstm", "keras-gru", "keras-rnn", "fold-reverse-sequence",
                    "simplify-layout", "unroll-rnn", "fold-constants", "simplify-layout"]


def _keras_models():
    """name → (Keras model, file format, RNN layers, their activations)."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    import keras

    L = keras.layers

    def seq(*layers):
        return keras.Sequential([keras.Input((12, 3)), *layers])

    return {
        "last": (seq(L.SimpleRNN(6), L.Dense(4)), "keras", ["Tanh"]),
        "stacked_relu_backwards": (seq(L.SimpleRNN(6, activation="relu", return_sequences=True),
                                       L.SimpleRNN(5, go_backwards=True, use_bias=False), L.Dense(4)), "h5",
                                   ["Relu", "Tanh"]),
        "bidirectional": (seq(L.Bidirectional(L.SimpleRNN(6)), L.Dense(4)), "keras", ["Tanh", "Tanh"]),
    }


@pytest.fixture(scope="module")
def converted(tmp_path_factory) -> dict[str, tuple[bytes, list[str], np.ndarray, np.ndarray]]:
    """name → (serialized converter output, activations, input batch, Keras' output on it)."""
    from qpass.converters import load_model

    root = tmp_path_factory.mktemp("keras_rnn")
    out = {}
    for index, (name, (model, fmt, acts)) in enumerate(_keras_models().items()):
        rng = np.random.default_rng(300 + index)
        for layer in model.layers:
            weights = [rng.normal(0.0, 0.4, w.shape).astype(np.float32) for w in layer.get_weights()]
            if weights:
                layer.set_weights(weights)
        path = root / f"{name}.{fmt}"
        model.save(str(path))
        x = np.cumsum(rng.normal(0, 0.5, (1, 12, 3)), axis=1).astype(np.float32)
        out[name] = (ir.serde.serialize_model(load_model(path)).SerializeToString(), acts, x, np.asarray(model(x)))
    return out


def _run(model: ir.Model, x: np.ndarray) -> np.ndarray:
    sess = session(model)
    return sess.run(None, {sess.get_inputs()[0].name: x})[0]


@pytest.mark.parametrize("name", ["last", "stacked_relu_backwards", "bidirectional"])
def test_loop_becomes_one_rnn_and_unrolls_to_keras(converted, name):
    data, acts, x, want = converted[name]
    model = ir.serde.deserialize_model(onnx.ModelProto.FromString(data))
    assert sum(n.op_type == "Loop" for n in model.graph) == len(acts)
    assert KerasRnnPass()(model).modified
    onnx.checker.check_model(ir.serde.serialize_model(model), full_check=True)
    rnns = [n for n in model.graph if n.op_type == "RNN"]
    assert not any(n.op_type == "Loop" for n in model.graph)
    assert sorted(n.attributes.get_strings("activations")[0] for n in rnns) == sorted(acts)
    assert all(n.metadata_props["qpass.pass"] == "keras-rnn" for n in rnns)
    np.testing.assert_allclose(_run(model, x), want, rtol=RTOL, atol=ATOL)
    assert not KerasRnnPass()(model).modified  # a second run finds nothing

    model = ir.serde.deserialize_model(onnx.ModelProto.FromString(data))
    for p in RECURRENT_PASSES:
        resolve_pass(p)()(model)
    assert not any(n.op_type in ("Loop", "RNN", "ReverseSequence") for n in model.graph)
    np.testing.assert_allclose(_run(model, x), want, rtol=RTOL, atol=ATOL)
    assert not problems(model)  # the early support check accepts every node


def test_an_lstm_or_gru_loop_is_not_taken_for_an_rnn(converted):
    """keras-rnn leaves every other Loop alone (here, after keras-rnn ran, nothing is left to take)."""
    data, *_ = converted["last"]
    model = ir.serde.deserialize_model(onnx.ModelProto.FromString(data))
    loop = next(n for n in model.graph if n.op_type == "Loop")
    body = loop.attributes["body"].as_graph()
    tanh = next(n for n in body if n.op_type == "Tanh")
    tanh.op_type = "Sigmoid"  # a cell that is not a SimpleRNN: left as a Loop
    assert not KerasRnnPass()(model).modified
