"""unroll-gru: every GRU becomes tagged per-timestep ops with the same Y and Y_h (onnxruntime, 1e-5).

References: onnxruntime on the original node, for ONNX's own conformance cases (`onnx.backend.test.case.node.gru`)
and for random GRUs over both linear_before_reset values, the three directions, with and without B, initial_h and
clip. onnxruntime refuses layout=1, so a layout-1 GRU is checked against the layout-0 one fed transposed data.
"""

from __future__ import annotations

import itertools
from unittest import mock

import numpy as np
import onnx
import onnx_ir as ir
import onnxruntime as ort
import pytest
from onnx import helper as oh
from onnx import numpy_helper
from onnx.backend.test.case.node import gru as onnx_gru_cases

from qpass.errors import UnsupportedOpError
from qpass.passes.unroll_gru import GRU_KEY, GRU_ROLE_KEY, GRU_STEP_KEY, UnrollGruPass

ATOL = RTOL = 1e-5
F = onnx.TensorProto.FLOAT


def _run(proto: onnx.ModelProto, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    sess = ort.InferenceSession(proto.SerializeToString(), opts, providers=["CPUExecutionProvider"])
    return sess.run(None, feeds)


def _gru_model(x_shape: tuple[int, ...], consts: dict[str, np.ndarray], slots: list[str], outputs: list[str],
               **attrs) -> onnx.ModelProto:
    node = oh.make_node("GRU", ["x", *slots], outputs, name="gru", **attrs)
    graph = oh.make_graph([node], "g", [oh.make_tensor_value_info("x", F, list(x_shape))],
                          [oh.make_tensor_value_info(o, F, None) for o in outputs if o],
                          [numpy_helper.from_array(v, k) for k, v in consts.items()])
    return oh.make_model(graph, opset_imports=[oh.make_opsetid("", 17)])


def _random(direction: str, lbr: int, with_b: bool, with_h0: bool, clip: float | None, layout: int = 0,
            t: int = 4, n_in: int = 3, hid: int = 5, seed: int = 0) -> tuple[onnx.ModelProto, np.ndarray]:
    rng = np.random.default_rng(seed)
    dirs = 2 if direction == "bidirectional" else 1
    consts = {"W": rng.normal(0, 0.6, (dirs, 3 * hid, n_in)), "R": rng.normal(0, 0.6, (dirs, 3 * hid, hid))}
    slots = ["W", "R", "B" if with_b else "", "", "h0" if with_h0 else ""]
    if with_b:
        consts["B"] = rng.normal(0, 0.5, (dirs, 6 * hid))
    if with_h0:
        consts["h0"] = rng.normal(0, 0.5, (dirs, 1, hid) if layout == 0 else (1, dirs, hid))
    attrs = {"hidden_size": hid, "direction": direction, "linear_before_reset": lbr, "layout": layout}
    if clip is not None:
        attrs["clip"] = clip
    x_shape = (t, 1, n_in) if layout == 0 else (1, t, n_in)
    proto = _gru_model(x_shape, {k: v.astype(np.float32) for k, v in consts.items()}, slots, ["y", "y_h"], **attrs)
    return proto, rng.normal(0, 1.0, x_shape).astype(np.float32)


@pytest.mark.parametrize(("direction", "lbr", "with_b", "with_h0", "clip"), [
    (d, lbr, b, h0, c) for d, lbr, (b, h0, c) in itertools.product(
        ("forward", "reverse", "bidirectional"), (0, 1),
        ((True, False, None), (False, True, None), (True, True, 0.7)))])
def test_random_gru_matches_onnxruntime(unroll_checked, direction: str, lbr: int, with_b: bool, with_h0: bool,
                                        clip: float | None) -> None:
    proto, x = _random(direction, lbr, with_b, with_h0, clip)
    want = _run(proto, {"x": x})
    out, model = unroll_checked("unroll-gru", "GRU", proto)
    got = _run(out, {"x": x})
    for w, g in zip(want, got, strict=True):
        np.testing.assert_allclose(g, w, rtol=RTOL, atol=ATOL)
    steps = {int(n.metadata_props[GRU_STEP_KEY]) for n in model.graph if GRU_KEY in n.metadata_props}
    assert steps == {-1, 0, 1, 2, 3}
    roles = {n.metadata_props[GRU_ROLE_KEY] for n in model.graph if GRU_KEY in n.metadata_props}
    assert {"z", "r", "n", "h"} <= roles and (("rn" in roles) == bool(lbr)) and (("rh" in roles) != bool(lbr))


@pytest.mark.parametrize("lbr", [0, 1])
def test_layout1_equals_layout0(unroll_checked, lbr: int) -> None:
    """onnxruntime refuses layout=1: the unrolled layout-1 GRU must equal the layout-0 GRU on transposed data."""
    ref, x0 = _random("bidirectional", lbr, True, True, None, layout=0, seed=5)
    proto, _ = _random("bidirectional", lbr, True, True, None, layout=1, seed=5)
    want = _run(ref, {"x": x0})
    got = _run(unroll_checked("unroll-gru", "GRU", proto)[0], {"x": np.transpose(x0, (1, 0, 2))})
    np.testing.assert_allclose(got[0], np.transpose(want[0], (2, 0, 1, 3)), rtol=RTOL, atol=ATOL)
    np.testing.assert_allclose(got[1], np.transpose(want[1], (1, 0, 2)), rtol=RTOL, atol=ATOL)


def _conformance_cases() -> dict[str, tuple[onnx.NodeProto, list[np.ndarray]]]:
    cases = {}

    def record(node, inputs, outputs, name, **kwargs):
        cases[name] = (node, list(inputs))

    with mock.patch.object(onnx_gru_cases, "expect", record):
        for attr in sorted(vars(onnx_gru_cases.GRU)):
            if attr.startswith("export"):
                getattr(onnx_gru_cases.GRU, attr)()
    return cases


CASES = _conformance_cases()


@pytest.mark.parametrize("case", sorted(CASES))
def test_onnx_conformance_case(unroll_checked, case: str) -> None:
    """Each test_gru_* case, its weights as constants: same outputs as onnxruntime on the original node."""
    node, inputs = CASES[case]
    x = inputs[0].astype(np.float32)
    consts = {slot: np.asarray(arr, np.int32 if slot == "sequence_lens" else np.float32)
              for slot, arr in zip(node.input[1:], inputs[1:], strict=False) if slot}
    attrs = {a.name: oh.get_attribute_value(a) for a in node.attribute}
    attrs = {k: (v.decode() if isinstance(v, bytes) else v) for k, v in attrs.items()}
    layout = attrs.pop("layout", 0)
    outputs = list(node.output)
    swap = (lambda a: np.transpose(a, (1, 0, 2))) if layout else (lambda a: a)
    ref = _gru_model(swap(x).shape, {k: swap(v) if k == "initial_h" else v for k, v in consts.items()},
                     list(node.input[1:]), outputs, **attrs)  # onnxruntime runs layout 0 only
    want = _run(ref, {"x": swap(x)})
    real = _gru_model(x.shape, consts, list(node.input[1:]), outputs, layout=layout, **attrs)
    got = _run(unroll_checked("unroll-gru", "GRU", real)[0], {"x": x})
    for w, g in zip(want, got, strict=True):
        w = w if not layout else np.transpose(w, (2, 0, 1, 3) if w.ndim == 4 else (1, 0, 2))
        np.testing.assert_allclose(g, w, rtol=RTOL, atol=ATOL)


def test_refusals_name_the_node() -> None:
    proto, _ = _random("forward", 1, True, False, None)
    proto.graph.node[0].attribute.append(oh.make_attribute("activations", ["Relu", "Tanh"]))
    with pytest.raises(UnsupportedOpError, match="'gru'.*activations"):
        UnrollGruPass()(ir.serde.deserialize_model(proto))
    proto, _ = _random("forward", 1, True, False, None)
    proto.graph.initializer.append(numpy_helper.from_array(np.array([3], np.int32), "lens"))
    proto.graph.node[0].input[4] = "lens"
    with pytest.raises(UnsupportedOpError, match="'gru'.*sequence_lens"):
        UnrollGruPass()(ir.serde.deserialize_model(proto))


def test_no_gru_changes_nothing() -> None:
    graph = oh.make_graph([oh.make_node("Relu", ["x"], ["y"])], "g", [oh.make_tensor_value_info("x", F, [1, 2])],
                          [oh.make_tensor_value_info("y", F, [1, 2])])
    assert not UnrollGruPass()(ir.serde.deserialize_model(oh.make_model(graph))).modified
