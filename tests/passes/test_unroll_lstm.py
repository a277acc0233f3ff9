"""unroll-lstm: every LSTM becomes tagged per-timestep ops with the same Y, Y_h, Y_c (onnxruntime, 1e-5).

References: ONNX's own conformance cases (`onnx.backend.test.case.node.lstm`, their expected outputs and
onnxruntime on the original node) and hand-built LSTMs with random weights against onnxruntime. onnxruntime
refuses layout=1, so a layout-1 LSTM is checked against the same LSTM in layout 0 between Transposes.
"""

from __future__ import annotations

import itertools
import zlib
from collections import Counter, defaultdict
from pathlib import Path
from unittest import mock

import numpy as np
import onnx
import onnx_ir as ir
import onnxruntime as ort
import pytest
from onnx import helper as oh
from onnx import numpy_helper
from onnx.backend.test.case.node import lstm as onnx_lstm_cases

from qpass.converters import load_model
from qpass.errors import UnsupportedOpError
from qpass.passes import resolve_pass
from qpass.passes.fold_constants import FoldConstantsPass
from qpass.passes.runner import run_passes
from qpass.passes.unroll_lstm import DIRECTION_KEY, LSTM_KEY, ROLE_KEY, STEP_KEY, UnrollLstmPass

ATOL = RTOL = 1e-5
META_KEYS = {"qpass.pass", LSTM_KEY, DIRECTION_KEY, STEP_KEY, ROLE_KEY}
WEIGHT_INPUTS = ("W", "R", "B", "sequence_lens", "P")  # LSTM input slots 1, 2, 3, 4, 7: constants for the pass


# ---------------------------------------------------------------------------------------------- helpers


def _session(proto: onnx.ModelProto) -> ort.InferenceSession:
    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    return ort.InferenceSession(proto.SerializeToString(), opts, providers=["CPUExecutionProvider"])


def _as_layout0(proto: onnx.ModelProto) -> onnx.ModelProto:
    """The same model with every layout-1 LSTM run in layout 0 between Transposes (onnxruntime lacks layout 1)."""
    out = onnx.ModelProto()
    out.CopyFrom(proto)
    nodes = []
    for node in proto.graph.node:
        attrs = {a.name: oh.get_attribute_value(a) for a in node.attribute}
        if node.op_type != "LSTM" or attrs.get("layout", 0) != 1:
            nodes.append(node)
            continue
        inputs, outputs = list(node.input), list(node.output)
        for k in (0, 5, 6):
            if k < len(inputs) and inputs[k]:
                nodes.append(oh.make_node("Transpose", [inputs[k]], [inputs[k] + "_l0"], perm=[1, 0, 2]))
                inputs[k] += "_l0"
        post = []
        for k, perm in ((0, [2, 0, 1, 3]), (1, [1, 0, 2]), (2, [1, 0, 2])):
            if k < len(outputs) and outputs[k]:
                post.append(oh.make_node("Transpose", [outputs[k] + "_l0"], [outputs[k]], perm=perm))
                outputs[k] += "_l0"
        attrs["layout"] = 0
        nodes.append(oh.make_node("LSTM", inputs, outputs, name=node.name, **attrs))
        nodes.extend(post)
    del out.graph.node[:]
    out.graph.node.extend(nodes)
    return out


def ort_reference(proto: onnx.ModelProto, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
    """onnxruntime on the original model (layout 1 through its layout-0 equivalent)."""
    return _session(_as_layout0(proto)).run(None, feeds)


def unroll(proto: onnx.ModelProto) -> tuple[ir.Model, list[ir.Node], ir.passes.PassResult]:
    """Run the pass on a fresh IR model; return it, the nodes the pass created, and the result."""
    model = ir.serde.deserialize_model(proto)
    before = {id(n) for n in model.graph}
    opsets = dict(model.opset_imports)
    result = UnrollLstmPass()(model)
    assert result.model is model
    assert dict(model.opset_imports) == opsets, "the opset is left as is"
    return model, [n for n in model.graph if id(n) not in before], result


def check_unrolled(proto: onnx.ModelProto, feeds: dict[str, np.ndarray],
                   expected: list[np.ndarray] | None = None) -> tuple[ir.Model, list[ir.Node]]:
    """Unroll, check validity and outputs against onnxruntime (and `expected`), and the invariants."""
    reference = ort_reference(proto, feeds)
    model, created, result = unroll(proto)
    assert result.modified
    out_proto = ir.serde.serialize_model(model)
    onnx.checker.check_model(out_proto, full_check=True)
    assert [o.name for o in out_proto.graph.output] == [o.name for o in proto.graph.output]
    actual = _session(out_proto).run(None, feeds)
    for name, ref, act in zip([o.name for o in proto.graph.output], reference, actual, strict=True):
        assert act.shape == ref.shape, name
        np.testing.assert_allclose(act, ref, rtol=RTOL, atol=ATOL, err_msg=f"{name} vs onnxruntime")
    for name, exp, act in zip([o.name for o in proto.graph.output], expected or [], actual, strict=False):
        np.testing.assert_allclose(act, exp, rtol=RTOL, atol=ATOL, err_msg=f"{name} vs the case's expectation")
    check_structure(model, created)
    assert UnrollLstmPass()(model).modified is False, "a second run changes nothing"
    return model, created


def check_structure(model: ir.Model, created: list[ir.Node]) -> None:
    """No LSTM left; every created node tagged; every step of a direction has the same body; T×dirs h nodes."""
    assert not any(n.op_type == "LSTM" for n in model.graph)
    assert created
    for node in created:
        assert META_KEYS <= set(node.metadata_props), node.name
        assert node.metadata_props["qpass.pass"] == "unroll-lstm"
        for v in node.outputs:
            assert v.shape is not None and v.type is not None and v.name, node.name
    bodies: dict[tuple[str, str], dict[int, list[tuple[str, str]]]] = defaultdict(lambda: defaultdict(list))
    for node in created:
        meta = node.metadata_props
        step = int(meta[STEP_KEY])
        if step >= 0 and meta[ROLE_KEY] not in ("h0", "c0"):
            bodies[meta[LSTM_KEY], meta[DIRECTION_KEY]][step].append((meta[ROLE_KEY], node.op_type))
    for steps in bodies.values():
        first = steps[0]
        assert all(body == first for body in steps.values()), "one loop body for every step"
        assert sorted(steps) == list(range(len(steps)))


def model_proto(nodes: list[onnx.NodeProto], inputs: dict[str, np.ndarray], consts: dict[str, np.ndarray],
                outputs: list[str], opset: int = 17, input_shapes: dict[str, list] | None = None) -> onnx.ModelProto:
    graph = oh.make_graph(
        nodes, "g",
        [oh.make_tensor_value_info(k, oh.np_dtype_to_tensor_dtype(v.dtype), (input_shapes or {}).get(k, v.shape))
         for k, v in inputs.items()],
        [onnx.ValueInfoProto(name=o) for o in outputs],
        [numpy_helper.from_array(v, k) for k, v in consts.items()])
    proto = oh.make_model(graph, opset_imports=[oh.make_opsetid("", opset)])
    proto = onnx.shape_inference.infer_shapes(proto, strict_mode=True)
    onnx.checker.check_model(proto)
    return proto


def lstm_case(rng: np.random.Generator, *, direction: str = "forward", layout: int = 0, init: bool = False,
              bias: bool = True, clip: float | None = None, peep: bool = False, use: str = "all",
              T: int = 4, B: int = 2, I: int = 3, H: int = 5, **attrs) -> tuple[onnx.ModelProto, dict]:  # noqa: E741
    """One LSTM with random weights. use="all": Y, Y_h, Y_c are graph outputs; "y_h": only Y_h is an
    output, read by a Relu too (so the LSTM's replacement feeds a graph output and a node)."""
    dirs = 2 if direction == "bidirectional" else 1
    consts = {"W": rng.normal(0, 0.6, (dirs, 4 * H, I)), "R": rng.normal(0, 0.6, (dirs, 4 * H, H))}
    if bias:
        consts["B"] = rng.normal(0, 0.5, (dirs, 8 * H))
    if peep:
        consts["P"] = rng.normal(0, 0.5, (dirs, 3 * H))
    xshape = (T, B, I) if layout == 0 else (B, T, I)
    sshape = (dirs, B, H) if layout == 0 else (B, dirs, H)
    feeds = {"X": rng.normal(0, 1, xshape)}
    if init:
        feeds |= {"h0": rng.normal(0, 0.5, sshape), "c0": rng.normal(0, 1, sshape)}
    names = ["X", "W", "R", "B" if bias else "", "", "h0" if init else "", "c0" if init else "",
             "P" if peep else ""]
    while not names[-1]:
        names.pop()
    if clip is not None:
        attrs["clip"] = clip
    outs = ["Y", "Y_h", "Y_c"] if use == "all" else ["", "Y_h"]
    nodes = [oh.make_node("LSTM", names, outs, name="lstm", hidden_size=H, direction=direction, layout=layout,
                          **attrs)]
    graph_outs = outs
    if use == "y_h":
        nodes.append(oh.make_node("Relu", ["Y_h"], ["Z"]))
        graph_outs = ["Y_h", "Z"]
    feeds = {k: v.astype(np.float32) for k, v in feeds.items()}
    consts = {k: v.astype(np.float32) for k, v in consts.items()}
    return model_proto(nodes, feeds, consts, graph_outs), feeds


# ---------------------------------------------------------------------------------------------- ONNX conformance


def _onnx_cases() -> dict[str, tuple[onnx.NodeProto, list[np.ndarray], list[np.ndarray]]]:
    """Every `export_*` of ONNX's LSTM test cases, captured through its `expect(node, inputs, outputs, name)`.

    `collect_testcases` builds the same models, but through process-wide state (it imports every op's cases
    once, for the first op type asked); calling the exporters with `expect` patched is independent of that.
    """
    cases = {}

    def record(node, inputs, outputs, name, **kwargs):
        cases[name] = (node, list(inputs), list(outputs))

    with mock.patch.object(onnx_lstm_cases, "expect", record):
        for attr in sorted(vars(onnx_lstm_cases.LSTM)):
            if attr.startswith("export"):
                getattr(onnx_lstm_cases.LSTM, attr)()
    return cases


ONNX_CASES = _onnx_cases()


def _conformance_model(node: onnx.NodeProto, inputs: list[np.ndarray]) -> tuple[onnx.ModelProto, dict]:
    """The model `expect` builds (opset = the LSTM schema's since_version), weights made initializers."""
    present = [n for n in node.input if n]
    arrays = dict(zip(present, inputs, strict=True))
    consts = {k: v for k, v in arrays.items() if k in WEIGHT_INPUTS}
    feeds = {k: v for k, v in arrays.items() if k not in WEIGHT_INPUTS}
    opset = onnx.defs.get_schema("LSTM").since_version
    return model_proto([node], feeds, consts, [n for n in node.output if n], opset=opset), feeds


def test_every_onnx_lstm_case_is_collected():
    exports = [a for a in vars(onnx_lstm_cases.LSTM) if a.startswith("export")]
    assert len(ONNX_CASES) == len(exports) >= 6
    assert {"test_lstm_defaults", "test_lstm_with_peepholes", "test_lstm_batchwise"} <= set(ONNX_CASES)


@pytest.mark.parametrize("name", sorted(ONNX_CASES))
def test_onnx_conformance_case(name):
    node, inputs, expected = ONNX_CASES[name]
    proto, feeds = _conformance_model(node, inputs)
    check_unrolled(proto, feeds, expected)


# ---------------------------------------------------------------------------------------------- hand-built


_FEATURES = list(itertools.product([False, True], repeat=4))  # init, bias, clip, peep


@pytest.mark.parametrize("use", ["all", "y_h"])
@pytest.mark.parametrize("layout", [0, 1])
@pytest.mark.parametrize("direction", ["forward", "reverse", "bidirectional"])
@pytest.mark.parametrize("init,bias,clip,peep", _FEATURES,
                         ids=["".join(k if on else "-" for k, on in zip("IBCP", f, strict=True)) for f in _FEATURES])
def test_random_lstm_matches_onnxruntime(direction, layout, use, init, bias, clip, peep):
    seed = zlib.crc32(repr((direction, layout, use, init, bias, clip, peep)).encode())
    proto, feeds = lstm_case(np.random.default_rng(seed), direction=direction, layout=layout, use=use, init=init,
                             bias=bias, clip=0.8 if clip else None, peep=peep)
    model, created = check_unrolled(proto, feeds)
    dirs = 2 if direction == "bidirectional" else 1
    roles = Counter(n.metadata_props[ROLE_KEY] for n in created)
    assert roles["h"] == 4 * dirs and roles["c"] == 4 * dirs
    assert roles["clip_i"] == (4 * dirs if clip else 0)
    assert roles["peep_o"] == (4 * dirs if peep else 0)
    assert roles["h0"] == (dirs if init else 0)
    assert roles["y"] == (0 if use == "y_h" else 4 * dirs + dirs + (dirs == 2))
    assert roles["y_c"] == (0 if use == "y_h" else dirs + (dirs == 2))


def test_clip_is_active_in_the_clipped_cases():
    # the clip tests prove something only if some pre-activation exceeds the clip
    proto, feeds = lstm_case(np.random.default_rng(0), clip=0.8, peep=True, init=True)
    plain, _ = lstm_case(np.random.default_rng(0), peep=True, init=True)
    assert not np.allclose(ort_reference(proto, feeds)[0], ort_reference(plain, feeds)[0], atol=1e-3)


# ---------------------------------------------------------------------------------------------- structure


def test_structure_of_one_step():
    proto, feeds = lstm_case(np.random.default_rng(1), direction="reverse", init=True, clip=1.0, peep=True, T=3)
    model, created = check_unrolled(proto, feeds)
    step = [(n.metadata_props[ROLE_KEY], n.op_type) for n in created if n.metadata_props[STEP_KEY] == "1"]
    assert step == [("x", "Gather"), ("xw", "MatMul"), ("hr", "MatMul"), ("xh", "Add"), ("gates", "Add"),
                    ("split", "Split"), ("peep_i_mul", "Mul"), ("peep_i", "Add"), ("peep_f_mul", "Mul"),
                    ("peep_f", "Add"), ("clip_i", "Clip"), ("i", "Sigmoid"), ("clip_f", "Clip"), ("f", "Sigmoid"),
                    ("clip_c", "Clip"), ("g", "Tanh"), ("fc", "Mul"), ("ig", "Mul"), ("c", "Add"),
                    ("peep_o_mul", "Mul"), ("peep_o", "Add"), ("clip_o", "Clip"), ("o", "Sigmoid"),
                    ("tc", "Tanh"), ("h", "Mul")]
    by_name = {n.name: n for n in created}
    assert by_name["lstm_d0_s1_h"].outputs[0].name == "lstm_d0_s1_h"
    # reverse: step s reads time T-1-s; weights are one constant per direction, shared by all steps
    gathers = [n for n in created if n.metadata_props[ROLE_KEY] == "x"]
    assert [int(n.inputs[1].const_value.numpy()) for n in gathers] == [2, 1, 0]
    assert all(n.attributes.get_int("axis") == 0 for n in gathers)
    for role, k in (("xw", 1), ("hr", 1), ("gates", 1)):
        assert len({id(n.inputs[k]) for n in created if n.metadata_props[ROLE_KEY] == role}) == 1
    wt = by_name["lstm_d0_s0_xw"].inputs[1].const_value.numpy()
    np.testing.assert_array_equal(wt, numpy_helper.to_array(proto.graph.initializer[0])[0].T)
    # h_prev of step s+1 is h of step s; step 0 reads the Gather of initial_h
    assert by_name["lstm_d0_s1_hr"].inputs[0] is by_name["lstm_d0_s0_h"].outputs[0]
    assert by_name["lstm_d0_s0_hr"].inputs[0] is by_name["lstm_d0_s0_h0"].outputs[0]
    assert by_name["lstm_d0_s0_h0"].metadata_props[STEP_KEY] == "0"
    # one direction: Y_h and Y_c are a single Unsqueeze each, Y is Unsqueezes and one Concat
    for out, role in (("Y_h", "y_h"), ("Y_c", "y_c")):
        producer = model.graph.outputs[[o.name for o in model.graph.outputs].index(out)].producer()
        assert producer.op_type == "Unsqueeze" and producer.metadata_props[ROLE_KEY] == role
        assert producer.metadata_props[STEP_KEY] == "-1"
    y_nodes = Counter(n.op_type for n in created if n.metadata_props[ROLE_KEY] == "y")
    assert y_nodes == {"Unsqueeze": 3, "Concat": 1}


def test_layout1_bidirectional_y_is_stacked_in_time_order():
    proto, feeds = lstm_case(np.random.default_rng(2), direction="bidirectional", layout=1, T=3, B=2)
    model, created = check_unrolled(proto, feeds)
    y = model.graph.outputs[0]
    assert y.name == "Y" and list(y.shape) == [2, 3, 2, 5]
    join = y.producer()
    assert join.op_type == "Concat" and join.attributes.get_int("axis") == 2
    assert join.metadata_props[DIRECTION_KEY] == "-1" and join.metadata_props[STEP_KEY] == "-1"
    gathers = [n for n in created if n.metadata_props[ROLE_KEY] == "x"]
    assert all(n.attributes.get_int("axis") == 1 for n in gathers)
    reverse_half = join.inputs[1].producer()
    # Y's time axis: Unsqueeze of the reverse direction's h in time order = processing steps 2, 1, 0
    assert [v.producer().inputs[0].producer().metadata_props[STEP_KEY] for v in reverse_half.inputs] == ["2", "1", "0"]


def test_runner_shape_inference_keeps_the_lstm_tags(tmp_path):
    # the runner re-infers shapes after every pass; that must not drop the metadata the lowering reads
    proto, feeds = lstm_case(np.random.default_rng(7), use="y_h", T=3)
    model = ir.serde.deserialize_model(proto)
    run_passes(model, [("unroll-lstm", {}), ("matmul-to-gemm", {})], base_dir=tmp_path)
    tagged = [n for n in model.graph if n.op_type != "Relu"]
    assert tagged and all(META_KEYS <= set(n.metadata_props) for n in tagged)
    assert not any(n.op_type == "Gemm" for n in model.graph), "unroll-lstm's MatMuls keep their form"
    assert all(o.shape is not None and all(isinstance(d, int) for d in o.shape) for n in model.graph for o in n.outputs)
    actual = _session(ir.serde.serialize_model(model)).run(None, feeds)
    for ref, act in zip(ort_reference(proto, feeds), actual, strict=True):
        np.testing.assert_allclose(act, ref, rtol=RTOL, atol=ATOL)


def test_single_step_needs_no_concat():
    proto, feeds = lstm_case(np.random.default_rng(3), T=1)
    _, created = check_unrolled(proto, feeds)
    assert not any(n.op_type == "Concat" for n in created)


def test_stacked_unnamed_lstms_and_explicit_default_activations():
    rng = np.random.default_rng(4)
    T, B, n_in, H1, H2 = 3, 2, 3, 4, 5
    consts = {"W1": rng.normal(0, 0.6, (2, 4 * H1, n_in)), "R1": rng.normal(0, 0.6, (2, 4 * H1, H1)),
              "W2": rng.normal(0, 0.6, (1, 4 * H2, 2 * H1)), "R2": rng.normal(0, 0.6, (1, 4 * H2, H2)),
              "shape": np.array([T, B, 2 * H1])}
    consts = {k: v.astype(np.int64 if k == "shape" else np.float32) for k, v in consts.items()}
    nodes = [
        oh.make_node("LSTM", ["X", "W1", "R1"], ["Y1"], hidden_size=H1, direction="bidirectional",
                     activations=["Sigmoid", "Tanh", "Tanh"] * 2),
        oh.make_node("Transpose", ["Y1"], ["Y1t"], perm=[0, 2, 1, 3]),
        oh.make_node("Reshape", ["Y1t", "shape"], ["X2"]),
        oh.make_node("LSTM", ["X2", "W2", "R2"], ["", "", "Y_c"], hidden_size=H2),
    ]
    feeds = {"X": rng.normal(0, 1, (T, B, n_in)).astype(np.float32)}
    proto = model_proto(nodes, feeds, consts, ["Y_c"])
    model, created = check_unrolled(proto, feeds)
    assert {n.metadata_props[LSTM_KEY] for n in created} == {"LSTM", "LSTM_1"}
    assert len({v.name for n in model.graph for v in n.outputs}) == sum(len(n.outputs) for n in model.graph)
    roles = Counter((n.metadata_props[LSTM_KEY], n.metadata_props[ROLE_KEY]) for n in created)
    assert roles["LSTM", "h"] == 2 * T and roles["LSTM_1", "h"] == T and roles["LSTM", "y"] > 0
    assert roles["LSTM_1", "y"] == roles["LSTM_1", "y_h"] == 0 and roles["LSTM_1", "y_c"] == 1


def test_registered_and_no_lstm_is_no_change():
    assert resolve_pass("unroll-lstm") is UnrollLstmPass
    assert UnrollLstmPass.summary()
    proto = model_proto([oh.make_node("Relu", ["X"], ["Y"])], {"X": np.ones((2, 3), np.float32)}, {}, ["Y"])
    model, created, result = unroll(proto)
    assert result.modified is False and created == []


# ---------------------------------------------------------------------------------------------- refused


def _refused(proto: onnx.ModelProto, match: str) -> None:
    model = ir.serde.deserialize_model(proto)
    before = ir.serde.serialize_model(model).SerializeToString()
    with pytest.raises(UnsupportedOpError, match=match) as info:
        UnrollLstmPass()(model)
    assert info.value.node_name == "lstm"
    assert ir.serde.serialize_model(model).SerializeToString() == before, "a refusal leaves the graph as it was"


def test_refuses_non_default_activations():
    proto, _ = lstm_case(np.random.default_rng(5), activations=["HardSigmoid", "Tanh", "Tanh"])
    _refused(proto, "activations")


def test_refuses_symbolic_time():
    proto, _ = lstm_case(np.random.default_rng(6))
    proto.graph.input[0].type.tensor_type.shape.dim[0].dim_param = "T"
    _refused(proto, "static")


@pytest.mark.parametrize("lens,ok", [([4, 4], True), ([4, 3], False)])
def test_sequence_lens_must_be_t(lens, ok):
    rng = np.random.default_rng(7)
    T, B, n_in, H = 4, 2, 3, 5
    consts = {"W": rng.normal(0, 0.6, (1, 4 * H, n_in)).astype(np.float32),
              "R": rng.normal(0, 0.6, (1, 4 * H, H)).astype(np.float32), "L": np.array(lens, np.int32)}
    feeds = {"X": rng.normal(0, 1, (T, B, n_in)).astype(np.float32)}
    node = oh.make_node("LSTM", ["X", "W", "R", "", "L"], ["Y", "Y_h"], name="lstm", hidden_size=H)
    proto = model_proto([node], feeds, consts, ["Y", "Y_h"])
    if ok:
        check_unrolled(proto, feeds)
    else:
        _refused(proto, "sequence_lens")


def test_refuses_input_forget_weights_from_an_input_and_old_opsets():
    rng = np.random.default_rng(8)
    proto, _ = lstm_case(rng, input_forget=1)
    _refused(proto, "input_forget")
    proto, _ = lstm_case(rng)
    proto.graph.input.append(oh.make_tensor_value_info("W", onnx.TensorProto.FLOAT, [1, 20, 3]))
    del proto.graph.initializer[0]  # W: now a graph input, unknown to the pass
    _refused(proto, "constants")
    proto, _ = lstm_case(rng)
    proto.opset_import[0].version = 12
    _refused(proto, "opset")


# ---------------------------------------------------------------------------------------------- PyTorch's forms


def _with_const_state(proto: onnx.ModelProto, value: float) -> onnx.ModelProto:
    """The LSTM of `proto` (forward, layout 0, no initial state) given initial_h = initial_c = `value`."""
    lstm = next(n for n in proto.graph.node if n.op_type == "LSTM")
    w = next(i for i in proto.graph.initializer if i.name == "W")
    b_dim = next(i for i in proto.graph.input if i.name == "X").type.tensor_type.shape.dim[1].dim_value
    state = np.full((1, b_dim, w.dims[1] // 4), value, np.float32)
    while len(lstm.input) < 5:
        lstm.input.append("")
    lstm.input.extend(["S", "S"])
    proto.graph.initializer.append(numpy_helper.from_array(state, "S"))
    return proto


@pytest.mark.parametrize("value", [0.0, 0.4])
def test_constant_zero_initial_states_count_as_absent(value):
    # torch.onnx.export always writes initial_h/initial_c; zeros (its default) are the same as none
    proto, feeds = lstm_case(np.random.default_rng(11), T=3)
    model, created = check_unrolled(_with_const_state(proto, value), feeds)
    roles = Counter(n.metadata_props[ROLE_KEY] for n in created)
    assert roles["h0"] == roles["c0"] == (0 if value == 0 else 1)


def _read_one_step(rng, *, direction="forward", layout=0, B=2, chain="torch", index=-1, T=4, H=5):
    """One LSTM whose Y is read at one time step, as `chain` says; Z = Relu(what is read) is the output.

    torch:   Squeeze(Y, 1) → Transpose(1, 0, 2) → Gather(index, axis 1)   (out[:, index], batch_first)
    list:    Gather(Y, [index], axis 0 or 1) with a 1-element index: one step, keeping the time axis
    hidden:  Gather(Y, index, axis 3): one hidden unit of every step, not one step
    slice:   Slice(Y, [index], [index + 1 or INT64 max], axes=[time axis]): tf2onnx's strided_slice of a step
    """
    proto, feeds = lstm_case(rng, direction=direction, layout=layout, B=B, T=T, H=H, use="all")
    nodes = list(proto.graph.node)
    consts = {i.name: numpy_helper.to_array(i) for i in proto.graph.initializer}
    time_axis = 0 if layout == 0 else 1
    if chain == "torch":
        consts |= {"ax1": np.array([1], np.int64), "idx": np.array(index, np.int64)}
        nodes += [oh.make_node("Squeeze", ["Y", "ax1"], ["Ys"]),
                  oh.make_node("Transpose", ["Ys"], ["Yt"], perm=[1, 0, 2]),
                  oh.make_node("Gather", ["Yt", "idx"], ["read"], axis=1)]
    elif chain == "slice":
        end = index + 1 if index != -1 else np.iinfo(np.int64).max
        consts |= {"st": np.array([index], np.int64), "en": np.array([end], np.int64),
                   "ax": np.array([time_axis], np.int64)}
        nodes.append(oh.make_node("Slice", ["Y", "st", "en", "ax"], ["read"]))
    elif chain == "list":
        consts["idx"] = np.array([index], np.int64)
        nodes.append(oh.make_node("Gather", ["Y", "idx"], ["read"], axis=time_axis))
    else:
        consts["idx"] = np.array(index, np.int64)
        nodes.append(oh.make_node("Gather", ["Y", "idx"], ["read"], axis=3))
    nodes.append(oh.make_node("Relu", ["read"], ["Z"]))
    nodes[0].output[:] = ["Y"]
    return model_proto(nodes, feeds, consts, ["Z"]), feeds


@pytest.mark.parametrize(("direction", "layout", "B", "chain", "index"), [
    ("forward", 0, 2, "torch", -1),     # PyTorch's out[:, -1]: the last step
    ("forward", 0, 1, "torch", 1),
    ("reverse", 0, 2, "torch", 0),      # time 0 of a reverse LSTM is its last processing step
    ("forward", 0, 2, "list", 2),       # [1, B, H] per step: through one Reshape
    ("forward", 0, 1, "slice", -1),     # tf2onnx: Slice(Y, [-1], [max], axes [0])
    ("reverse", 1, 2, "slice", 1),
    ("forward", 1, 2, "list", -2),      # layout 1: Y[:, t, 0] is h_t in its [B, H] order
    ("bidirectional", 0, 1, "list", 1),  # both directions of one step: their two h side by side
    ("forward", 0, 2, "hidden", 3),     # one hidden unit of every step: left alone
])
def test_y_read_at_one_step_reads_that_steps_h(direction, layout, B, chain, index):
    proto, feeds = _read_one_step(np.random.default_rng(12), direction=direction, layout=layout, B=B,
                                  chain=chain, index=index)
    reference = ort_reference(proto, feeds)
    model, created, result = unroll(proto)
    assert result.modified
    out = ir.serde.serialize_model(model)
    onnx.checker.check_model(out, full_check=True)
    np.testing.assert_allclose(_session(out).run(None, feeds)[0], reference[0], rtol=RTOL, atol=ATOL)
    folded = chain != "hidden"
    roles = Counter(n.metadata_props.get(ROLE_KEY) for n in created)
    assert (roles["y"] == 0) is folded, "Y is not built when its only reader takes one step"
    assert any(n.op_type == "Gather" and ROLE_KEY not in n.metadata_props for n in model.graph) is not folded
    relu = next(n for n in model.graph if n.op_type == "Relu")
    if folded:
        read = relu.inputs[0].producer()
        if chain in ("list", "slice"):  # [1, B, H] / [B, 1, H] from h [B, H]: an untagged Reshape
            assert read.op_type == "Reshape" and ROLE_KEY not in read.metadata_props
            read = read.inputs[0].producer()
        if direction == "bidirectional":  # Concat(Unsqueeze(h of direction 0), Unsqueeze(h of direction 1))
            assert read.op_type == "Concat" and ROLE_KEY not in read.metadata_props
            read = read.inputs[1].producer().inputs[0].producer()
        assert read.metadata_props[ROLE_KEY] == "h"
    assert UnrollLstmPass()(model).modified is False


@pytest.mark.parametrize("layout", [0, 1])
def test_one_directions_sequence_reads_that_half_of_y(layout):
    """tf2onnx writes Bidirectional(return_sequences) as Slices of Y on its direction axis: each reads its
    direction's half of Y, and the halves are never joined."""
    proto, feeds = lstm_case(np.random.default_rng(5), direction="bidirectional", layout=layout, B=1, T=3, use="all")
    nodes = list(proto.graph.node)
    consts = {i.name: numpy_helper.to_array(i) for i in proto.graph.initializer}
    d_axis = layout + 1
    consts |= {"zero": np.array([0], np.int64), "one": np.array([1], np.int64), "two": np.array([2], np.int64),
               "dax": np.array([d_axis], np.int64)}
    nodes += [oh.make_node("Slice", ["Y", "zero", "one", "dax"], ["fw"]),
              oh.make_node("Slice", ["Y", "one", "two", "dax"], ["bw"]),
              oh.make_node("Add", ["fw", "bw"], ["Z"])]
    nodes[0].output[:] = ["Y"]
    proto = model_proto(nodes, feeds, consts, ["Z"])
    reference = ort_reference(proto, feeds)
    model, created, result = unroll(proto)
    out = ir.serde.serialize_model(model)
    onnx.checker.check_model(out, full_check=True)
    np.testing.assert_allclose(_session(out).run(None, feeds)[0], reference[0], rtol=RTOL, atol=ATOL)
    assert not any(n.op_type == "Slice" for n in model.graph)
    joins = [n for n in created if n.metadata_props[DIRECTION_KEY] == "-1"]
    assert joins == [], "the halves are not joined when nothing reads all of Y"
    assert UnrollLstmPass()(model).modified is False


def test_a_step_of_one_directions_half_reads_that_h():
    """tf2onnx's Bidirectional(return_sequences=False), concat merge: Slice(Y, direction 1) → Squeeze → Slice(time
    0:1): the longest selecting chain wins, so the reverse direction's h at time 0 is read and Y is not built."""
    proto, feeds = lstm_case(np.random.default_rng(6), direction="bidirectional", B=1, T=4, use="all")
    nodes = list(proto.graph.node)
    consts = {i.name: numpy_helper.to_array(i) for i in proto.graph.initializer}
    consts |= {"zero": np.array([0], np.int64), "one": np.array([1], np.int64), "two": np.array([2], np.int64)}
    nodes += [oh.make_node("Slice", ["Y", "one", "two", "one"], ["bw"]),
              oh.make_node("Squeeze", ["bw", "one"], ["bw3"]),
              oh.make_node("Slice", ["bw3", "zero", "one", "zero"], ["step"]),
              oh.make_node("Relu", ["step"], ["Z"])]
    nodes[0].output[:] = ["Y"]
    proto = model_proto(nodes, feeds, consts, ["Z"])
    reference = ort_reference(proto, feeds)
    model, created, _ = unroll(proto)
    out = ir.serde.serialize_model(model)
    np.testing.assert_allclose(_session(out).run(None, feeds)[0], reference[0], rtol=RTOL, atol=ATOL)
    assert not any(n.op_type == "Slice" for n in model.graph)
    assert Counter(n.metadata_props.get(ROLE_KEY) for n in model.graph)["y"] == 0


def test_torch_export_unrolls_to_the_last_steps_h(check_pass):
    # tools/export_torch.py's LSTM with torch.zeros h0/c0 and a dynamic batch, as qpass loads it
    path = Path(__file__).resolve().parents[1] / "data" / "torch" / "lstm_zero_state.classic.onnx"
    model = load_model(path)
    assert FoldConstantsPass()(model).modified  # the Shape → ConstantOfShape chain of h0/c0 is now zeros
    x = np.load(Path(__file__).resolve().parents[2] / "examples" / "har" / "test.npz")["x"][:1]
    check_pass("unroll-lstm", model, x, modified=True)
    roles = Counter(n.metadata_props.get(ROLE_KEY) for n in model.graph)
    assert roles["h0"] == roles["c0"] == roles["y"] == 0 and roles["h"] == 100
    gemm = next(n for n in model.graph if n.op_type == "Gemm")
    assert gemm.inputs[0].producer().name.endswith("_s99_h")
