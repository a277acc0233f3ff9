"""keras-rnn: tf2onnx's Loop for a Keras 3 SimpleRNN becomes one ONNX RNN with the same outputs (onnxruntime, 1e-5).

Real Keras models with seeded random weights (.keras and .h5), converted once per module by
`qpass.converters.load_model`. The float pipeline's recurrent passes (keras-rnn, fold-reverse-sequence,
unroll-rnn) then reproduce Keras itself, and the early support check accepts every node.
"""

from __future__ import annotations

import numpy as np
import onnx
import onnx_ir as ir
import pytest

from qpass.passes.keras_rnn import KerasRnnPass

RECURRENT_PASSES = ["fold-constants", "keras-lstm", "keras-gru", "keras-rnn", "fold-reverse-sequence",
                    "simplify-layout", "unroll-rnn", "fold-constants", "simplify-layout"]


def _keras_models(L, seq):
    """name → (Keras model, file format, RNN layers, their activations)."""
    return {
        "last": (seq(L.SimpleRNN(6), L.Dense(4)), "keras", ["Tanh"]),
        "stacked_relu_backwards": (seq(L.SimpleRNN(6, activation="relu", return_sequences=True),
                                       L.SimpleRNN(5, go_backwards=True, use_bias=False), L.Dense(4)), "h5",
                                   ["Relu", "Tanh"]),
        "bidirectional": (seq(L.Bidirectional(L.SimpleRNN(6)), L.Dense(4)), "keras", ["Tanh", "Tanh"]),
    }


@pytest.fixture(scope="module")
def converted(tmp_path_factory, convert_keras_seeded) -> dict[str, tuple[bytes, list[str], np.ndarray, np.ndarray]]:
    """name → (serialized converter output, activations, input batch, Keras' output on it)."""
    return convert_keras_seeded(tmp_path_factory.mktemp("keras_rnn"), _keras_models, 300)


@pytest.mark.parametrize("name", ["last", "stacked_relu_backwards", "bidirectional"])
def test_loop_becomes_one_rnn_and_unrolls_to_keras(converted, check_loops_to_recurrence, name):
    data, acts, x, want = converted[name]
    rnns = check_loops_to_recurrence(data, x, want, "keras-rnn", "RNN", len(acts), RECURRENT_PASSES)
    assert sorted(n.attributes.get_strings("activations")[0] for n in rnns) == sorted(acts)


def test_an_lstm_or_gru_loop_is_not_taken_for_an_rnn(converted):
    """keras-rnn leaves every other Loop alone (here, after keras-rnn ran, nothing is left to take)."""
    data, *_ = converted["last"]
    model = ir.serde.deserialize_model(onnx.ModelProto.FromString(data))
    loop = next(n for n in model.graph if n.op_type == "Loop")
    body = loop.attributes["body"].as_graph()
    tanh = next(n for n in body if n.op_type == "Tanh")
    tanh.op_type = "Sigmoid"  # a cell that is not a SimpleRNN: left as a Loop
    assert not KerasRnnPass()(model).modified
