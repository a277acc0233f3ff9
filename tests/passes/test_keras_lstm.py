"""keras-lstm: tf2onnx's Loop for a Keras 3 LSTM becomes one ONNX LSTM with the same outputs (onnxruntime, 1e-5).

Real Keras models with seeded random weights, converted by `qpass.converters.load_model` once per module;
each test gets a fresh `onnx_ir.Model`. Near misses (the converted Loop with one piece changed) and an
unrelated hand-built Loop must come out untouched.
"""

from __future__ import annotations

import logging
import os
from collections import Counter

import numpy as np
import onnx
import onnx_ir as ir
import pytest
from onnx import TensorProto
from onnx import helper as oh

from qpass.ort import session
from qpass.passes.keras_lstm import KerasLstmPass

ATOL = RTOL = 1e-5
LOGGER = "qpass.passes.keras_lstm"
MODELS = ["last_t100_h32", "sequences_td_dense", "backwards_last_t100", "backwards_sequences", "no_bias",
          "stacked_8_32", "conv_pool_lstm", "return_state"]


def _keras_models():
    """name → (Keras model, number of LSTM layers). Small, but every shape the pass must handle."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    import keras

    L = keras.layers

    def seq(shape, *layers):
        return keras.Sequential([keras.Input(shape), *layers])

    inp = keras.Input((10, 6))
    with_state = keras.Model(inp, list(L.LSTM(8, return_sequences=True, return_state=True)(inp)))
    return {
        # return_sequences=False: Slice[-1:] + Squeeze after the Loop; T=100, 32 units
        "last_t100_h32": (seq((100, 16), L.LSTM(32), L.Dense(4)), 1),
        # return_sequences=True, then TimeDistributed(Dense) and Dense on 3-D input
        "sequences_td_dense": (seq((10, 16), L.LSTM(8, return_sequences=True), L.TimeDistributed(L.Dense(4)),
                                   L.Dense(3)), 1),
        # go_backwards: ReverseSequence before the Loop; only the last step read → direction="reverse"
        "backwards_last_t100": (seq((100, 8), L.LSTM(8, go_backwards=True), L.Dense(4)), 1),
        # go_backwards with the sequence read: the reversal stays, the LSTM runs forward
        "backwards_sequences": (seq((10, 16), L.LSTM(8, go_backwards=True, return_sequences=True)), 1),
        "no_bias": (seq((10, 16), L.LSTM(8, use_bias=False)), 1),
        "stacked_8_32": (seq((10, 16), L.LSTM(8, return_sequences=True), L.LSTM(32), L.Dense(4)), 2),
        # tf2onnx puts Squeeze/Transpose/Reshape between the MaxPool and the Loop; T = 49
        "conv_pool_lstm": (seq((100, 3), L.Conv1D(8, 3), L.MaxPool1D(2), L.LSTM(16), L.Dense(4)), 1),
        # the final h and c are graph outputs next to the sequence
        "return_state": (with_state, 1),
    }


def _randomize(model, rng: np.random.Generator) -> None:
    for layer in model.layers:
        weights = [rng.normal(0.0, 0.5 if w.ndim == 1 else 0.3, w.shape).astype(np.float32)
                   for w in layer.get_weights()]
        if weights:
            layer.set_weights(weights)


@pytest.fixture(scope="module")
def converted(tmp_path_factory) -> dict[str, tuple[bytes, int]]:
    """name → (serialized converter output, LSTM count); every Keras model is built and converted once."""
    from qpass.converters import load_model

    root = tmp_path_factory.mktemp("keras_lstm")
    models = _keras_models()
    assert list(models) == MODELS
    out = {}
    for index, (name, (model, n_lstm)) in enumerate(models.items()):
        _randomize(model, np.random.default_rng(100 + index))
        path = root / f"{name}.h5"
        model.save(str(path))
        proto = ir.serde.serialize_model(load_model(path))
        out[name] = (proto.SerializeToString(), n_lstm)
    return out


def _fresh(converted, name: str) -> ir.Model:
    return ir.serde.deserialize_model(onnx.ModelProto.FromString(converted[name][0]))


def _serialized(model: ir.Model) -> bytes:
    return ir.serde.serialize_model(model).SerializeToString(deterministic=True)


def _feeds(model: ir.Model, seed: int) -> list[dict[str, np.ndarray]]:
    rng = np.random.default_rng(seed)
    inputs = [(v.name, [int(d) for d in v.shape]) for v in model.graph.inputs]
    return [{name: rng.normal(0.0, 1.0, shape).astype(np.float32) for name, shape in inputs} for _ in range(3)]


def _outputs(model: ir.Model, feeds: list[dict[str, np.ndarray]]) -> list[list[np.ndarray]]:
    sess = session(model)
    return [sess.run(None, feed) for feed in feeds]


def _ops(model: ir.Model) -> Counter:
    return Counter(node.op_type for node in model.graph)


@pytest.mark.parametrize("name", MODELS)
def test_loop_becomes_one_lstm(converted, name):
    model = _fresh(converted, name)
    n_lstm = converted[name][1]
    assert _ops(model)["Loop"] == n_lstm and _ops(model)["LSTM"] == 0
    feeds = _feeds(model, seed=len(name))
    expected = _outputs(model, feeds)

    result = KerasLstmPass()(model)

    assert result.modified is True and result.model is model
    onnx.checker.check_model(ir.serde.serialize_model(model), full_check=True)
    ops = _ops(model)
    assert ops["LSTM"] == n_lstm and ops["Loop"] == 0
    assert not ops.keys() & {"Less", "And", "Cast"}, f"loop bookkeeping left behind: {ops}"
    for before, after in zip(expected, _outputs(model, feeds), strict=True):
        for a, b in zip(before, after, strict=True):
            assert a.shape == b.shape
            np.testing.assert_allclose(b, a, rtol=RTOL, atol=ATOL)
    lstms = [n for n in model.graph if n.op_type == "LSTM"]
    for node in lstms:
        assert node.metadata_props["qpass.pass"] == "keras-lstm"
        hidden = node.attributes.get_int("hidden_size")
        n_in = node.inputs[0].shape[2]
        assert tuple(node.inputs[1].shape) == (1, 4 * hidden, n_in)
        assert tuple(node.inputs[2].shape) == (1, 4 * hidden, hidden)

    again = _serialized(model)
    assert KerasLstmPass()(model).modified is False
    assert _serialized(model) == again


def test_last_step_reads_y_h(converted):
    """return_sequences=False: the Slice/Squeeze on the sequence is gone; the Dense reads Squeeze(Y_h)."""
    model = _fresh(converted, "last_t100_h32")
    KerasLstmPass()(model)
    assert "Slice" not in _ops(model)
    (lstm,) = [n for n in model.graph if n.op_type == "LSTM"]
    assert lstm.attributes.get_string("direction") == "forward"
    assert not lstm.outputs[0].uses() and [u.op_type for u in lstm.outputs[1].consumers()] == ["Squeeze"]
    assert len(lstm.inputs) == 4  # X, W, R, B: the zero initial states are omitted


def test_go_backwards(converted):
    last = _fresh(converted, "backwards_last_t100")
    KerasLstmPass()(last)
    (lstm,) = [n for n in last.graph if n.op_type == "LSTM"]
    assert lstm.attributes.get_string("direction") == "reverse"
    assert not _ops(last).keys() & {"ReverseSequence", "Slice"}

    sequences = _fresh(converted, "backwards_sequences")
    KerasLstmPass()(sequences)
    (lstm,) = [n for n in sequences.graph if n.op_type == "LSTM"]
    assert lstm.attributes.get_string("direction") == "forward"
    assert lstm.inputs[0].producer().op_type == "ReverseSequence"


def test_no_bias_means_no_b(converted):
    model = _fresh(converted, "no_bias")
    KerasLstmPass()(model)
    (lstm,) = [n for n in model.graph if n.op_type == "LSTM"]
    assert len(lstm.inputs) == 3


def test_time_distributed_and_dense_3d_are_not_loops(converted):
    """What tf2onnx makes of them (T = 10): TimeDistributed(Dense) is unrolled into T × Slice → Squeeze →
    Gemm(x_t, W, b) then Unsqueeze → Concat; Dense on [B,T,F] is Reshape → MatMul → Reshape → Add."""
    model = _fresh(converted, "sequences_td_dense")
    ops = _ops(model)
    assert ops["Loop"] == 1 and ops["Gemm"] == 10 and ops["Slice"] == 10 and ops["Concat"] == 1
    assert ops["MatMul"] == 1 and ops["Add"] == 1


# ---------------------------------------------------------------------------------------------- near misses


def _body(model: ir.Model) -> tuple[ir.Node, ir.Graph]:
    (loop,) = [n for n in model.graph if n.op_type == "Loop"]
    return loop, loop.attributes["body"].as_graph()


def _candidate_relu(model):
    _, body = _body(model)
    split = next(n for n in body if n.op_type == "Split")
    split.outputs[2].consumers()[0].op_type = "Relu"  # Keras LSTM(activation="relu")


def _stride_two(model):
    _, body = _body(model)
    step = next(n for n in body if n.op_type == "Add" and n.inputs[1].const_value is not None
                and n.inputs[1].dtype == ir.DataType.INT32)
    step.inputs[1].const_value = ir.tensor(np.array(2, np.int32), name=step.inputs[1].name)


def _short_trip(model):
    loop, _ = _body(model)
    trips = ir.Value(name="short_trips", shape=ir.Shape([]), type=ir.TensorType(ir.DataType.INT64),
                     const_value=ir.tensor(np.array(9, np.int64), name="short_trips"))
    model.graph.register_initializer(trips)
    loop.replace_input_with(0, trips)


def _extra_body_node(model):
    _, body = _body(model)
    h_prev = body.inputs[3]
    body.append(ir.node("Neg", [h_prev], name="unexplained"))


@pytest.mark.parametrize(("mutate", "reason"), [
    (_candidate_relu, "gate c is not read by one Tanh"),
    (_stride_two, "the loop reads steps [0, 2, 4, 6]"),
    (_short_trip, "the loop reads steps"),
    (_extra_body_node, "neither the cell nor its bookkeeping"),
])
def test_near_miss_is_left_alone(converted, caplog, mutate, reason):
    model = _fresh(converted, "no_bias")
    mutate(model)
    feeds = _feeds(model, seed=7)
    expected = _outputs(model, feeds)
    before = _serialized(model)
    with caplog.at_level(logging.DEBUG, logger=LOGGER):
        result = KerasLstmPass()(model)
    assert result.modified is False
    assert _serialized(model) == before
    assert any(reason in rec.getMessage() for rec in caplog.records), [r.getMessage() for r in caplog.records]
    for a, b in zip(expected, _outputs(model, feeds), strict=True):
        np.testing.assert_array_equal(a[0], b[0])


def test_unrelated_loop_is_untouched(caplog):
    """A cumulative sum written as a Loop: carried acc, scan output acc, no LSTM anywhere."""
    body = oh.make_graph(
        [oh.make_node("Gather", ["x", "i"], ["x_i"], axis=0),
         oh.make_node("Add", ["acc", "x_i"], ["acc_out"]),
         oh.make_node("Identity", ["cond_in"], ["cond_out"]),
         oh.make_node("Identity", ["acc_out"], ["scan"])],
        "cumsum_body",
        [oh.make_tensor_value_info("i", TensorProto.INT64, []),
         oh.make_tensor_value_info("cond_in", TensorProto.BOOL, []),
         oh.make_tensor_value_info("acc", TensorProto.FLOAT, [1, 3])],
        [oh.make_tensor_value_info("cond_out", TensorProto.BOOL, []),
         oh.make_tensor_value_info("acc_out", TensorProto.FLOAT, [1, 3]),
         oh.make_tensor_value_info("scan", TensorProto.FLOAT, [1, 3])],
    )
    graph = oh.make_graph(
        [oh.make_node("Loop", ["trips", "cond", "acc0"], ["total", "partial"], body=body)],
        "cumsum",
        [oh.make_tensor_value_info("x", TensorProto.FLOAT, [5, 1, 3])],
        [oh.make_tensor_value_info("total", TensorProto.FLOAT, [1, 3]),
         oh.make_tensor_value_info("partial", TensorProto.FLOAT, [5, 1, 3])],
        [oh.make_tensor("trips", TensorProto.INT64, [], [5]), oh.make_tensor("cond", TensorProto.BOOL, [], [True]),
         oh.make_tensor("acc0", TensorProto.FLOAT, [1, 3], [0.0, 0.0, 0.0])],
    )
    proto = oh.make_model(graph, opset_imports=[oh.make_opsetid("", 17)])
    onnx.checker.check_model(proto)
    model = ir.serde.deserialize_model(proto)
    before = _serialized(model)
    with caplog.at_level(logging.DEBUG, logger=LOGGER):
        assert KerasLstmPass()(model).modified is False
    assert _serialized(model) == before
    assert any("leaving Loop" in rec.getMessage() for rec in caplog.records)
    x = np.random.default_rng(0).normal(size=(5, 1, 3)).astype(np.float32)
    total, partial = session(model).run(None, {"x": x})
    np.testing.assert_allclose(partial, np.cumsum(x, axis=0), rtol=RTOL, atol=ATOL)
    np.testing.assert_allclose(total, x.sum(axis=0), rtol=RTOL, atol=ATOL)
