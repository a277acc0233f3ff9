"""unroll-rnn: every RNN becomes tagged per-timestep ops with the same Y and Y_h (onnxruntime, 1e-5).

Random RNNs over the three directions, Tanh and Relu, with and without B, initial_h and clip, against onnxruntime on
the original node; the per-step structure and tags the lowering re-rolls; refusals name the node.
"""

from __future__ import annotations

import numpy as np
import onnx
import onnx_ir as ir
import onnxruntime as ort
import pytest
from onnx import helper as oh
from onnx import numpy_helper

from qpass.errors import UnsupportedOpError
from qpass.passes.unroll_rnn import RNN_KEY, RNN_ROLE_KEY, RNN_STEP_KEY, UnrollRnnPass

ATOL = RTOL = 1e-5
F = onnx.TensorProto.FLOAT
T, N_IN, HID = 4, 3, 5


def _model(direction: str, act: str, with_b: bool, with_h0: bool, clip: float | None, seed: int = 0,
           acts: list[str] | None = None) -> tuple[onnx.ModelProto, np.ndarray]:
    rng = np.random.default_rng(seed)
    dirs = 2 if direction == "bidirectional" else 1
    consts = {"W": rng.normal(0, 0.6, (dirs, HID, N_IN)), "R": rng.normal(0, 0.4, (dirs, HID, HID))}
    if with_b:
        consts["B"] = rng.normal(0, 0.3, (dirs, 2 * HID))
    if with_h0:
        consts["h0"] = rng.normal(0, 0.5, (dirs, 1, HID))
    attrs = {"hidden_size": HID, "direction": direction, "activations": acts or [act] * dirs}
    if clip is not None:
        attrs["clip"] = clip
    node = oh.make_node("RNN", ["x", "W", "R", "B" if with_b else "", "", "h0" if with_h0 else ""], ["Y", "Y_h"],
                        name="rnn", **attrs)
    graph = oh.make_graph([node], "g", [oh.make_tensor_value_info("x", F, [T, 1, N_IN])],
                          [oh.make_tensor_value_info(o, F, None) for o in ("Y", "Y_h")],
                          [numpy_helper.from_array(v.astype(np.float32), k) for k, v in consts.items()])
    return oh.make_model(graph, opset_imports=[oh.make_opsetid("", 17)]), rng.normal(0, 1, (T, 1, N_IN)).astype(
        np.float32)


def _run(proto: onnx.ModelProto, x: np.ndarray) -> list[np.ndarray]:
    sess = ort.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"])
    return sess.run(None, {"x": x})


@pytest.mark.parametrize(("direction", "act", "with_b", "with_h0", "clip"), [
    ("forward", "Tanh", True, False, None), ("reverse", "Relu", True, False, None),
    ("bidirectional", "Tanh", True, False, None), ("forward", "Tanh", False, True, None),
    ("bidirectional", "Relu", True, True, 0.8)])
def test_unrolled_rnn_equals_the_node(unroll_checked, direction, act, with_b, with_h0, clip):
    proto, x = _model(direction, act, with_b, with_h0, clip)
    out, model = unroll_checked("unroll-rnn", "RNN", proto)
    for got, want in zip(_run(out, x), _run(proto, x), strict=True):
        np.testing.assert_allclose(got, want, rtol=RTOL, atol=ATOL)
    tagged = [n for n in model.graph if RNN_KEY in n.metadata_props]
    hs = [n for n in tagged if n.metadata_props[RNN_ROLE_KEY] == "h"]
    assert len(hs) == T * (2 if direction == "bidirectional" else 1) and {n.op_type for n in hs} == {act}
    assert {int(n.metadata_props[RNN_STEP_KEY]) for n in hs} == set(range(T))
    assert any(n.metadata_props[RNN_ROLE_KEY] == "clip" for n in tagged) == (clip is not None)


def test_unknown_activation_is_refused_by_name():
    proto, _ = _model("forward", "Sigmoid", True, False, None)
    with pytest.raises(UnsupportedOpError, match="'rnn'.*activations"):
        UnrollRnnPass()(ir.serde.deserialize_model(proto))


def test_mixed_directions_keep_their_own_activation():
    proto, x = _model("bidirectional", "Tanh", True, False, None, acts=["Relu", "Tanh"])
    model = ir.serde.deserialize_model(proto)
    UnrollRnnPass()(model)
    for got, want in zip(_run(ir.serde.serialize_model(model), x), _run(proto, x), strict=True):
        np.testing.assert_allclose(got, want, rtol=RTOL, atol=ATOL)
