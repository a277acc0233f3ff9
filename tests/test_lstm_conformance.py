"""ONNX's own LSTM and RNN conformance cases (onnx.backend.test.case.node.lstm, .rnn) through the whole integer
pipeline.

Each case's node, with its weights (and initial states) as initializers, sits behind a Squeeze of a [1, ...X]
graph input, so the pipeline's sample axis is the leading 1; its last output (Y_h, or Y_c where the case
has it) is the graph output. A case with batch 1 must run: C equal to
runtime_ref on every sample and close to onnxruntime float; any other case must be refused with an
UnsupportedOpError that names the LSTM (RNN) node. Every case is also taken at batch 1 (its first batch entry),
which turns layout-1 (batch-first) and batch-3 cases into ones that must run.
"""

from __future__ import annotations

from pathlib import Path
from unittest import mock

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper
from onnx.backend.test.case.node import lstm as onnx_lstm_cases
from onnx.backend.test.case.node import rnn as onnx_rnn_cases

from qpass.config import load_pipeline
from qpass.errors import OrtError, UnsupportedOpError
from qpass.pipeline import run_pipeline

STATES = ("W", "R", "B", "sequence_lens", "initial_h", "initial_c", "P")  # LSTM (RNN) inputs 1..7, made constants


def _cases() -> dict[str, tuple[onnx.NodeProto, list[np.ndarray]]]:
    cases = {}

    def record(node, inputs, outputs, name, **kwargs):
        cases[name] = (node, list(inputs))

    for module, cls in ((onnx_lstm_cases, onnx_lstm_cases.LSTM), (onnx_rnn_cases, onnx_rnn_cases.RNN)):
        with mock.patch.object(module, "expect", record):
            for attr in sorted(vars(cls)):
                if attr.startswith("export"):
                    getattr(cls, attr)()
    return cases


CASES = _cases()


def _first_batch(node: onnx.NodeProto, inputs: list[np.ndarray]) -> list[np.ndarray]:
    """The same case for batch entry 0 only: X, sequence_lens, initial_h and initial_c cut on their batch axis."""
    layout = next((a.i for a in node.attribute if a.name == "layout"), 0)
    out = []
    for slot, arr in zip([n for n in node.input], inputs, strict=False):
        if slot == node.input[0]:
            arr = arr[:, :1] if layout == 0 else arr[:1]
        elif slot in ("sequence_lens",):
            arr = arr[:1]
        elif slot in ("initial_h", "initial_c"):
            arr = arr[:, :1] if layout == 0 else arr[:1]
        out.append(arr)
    return out


def _write(tmp: Path, node: onnx.NodeProto, inputs: list[np.ndarray]) -> tuple[Path, int]:
    """The case as a pipeline folder; returns the YAML and the case's batch size."""
    node = onnx.NodeProto.FromString(node.SerializeToString())
    op = node.op_type.lower()
    node.name = f"conformance_{op}"
    names = list(node.input)
    x = inputs[0].astype(np.float32)
    layout = next((a.i for a in node.attribute if a.name == "layout"), 0)
    batch = x.shape[1] if layout == 0 else x.shape[0]
    consts = [numpy_helper.from_array(a, n) for n, a in zip(names[1:], inputs[1:], strict=True) if n in STATES]
    node.input[0] = "x_seq"
    outs = [n for n in node.output if n]
    last = outs[-1]
    graph = helper.make_graph(
        [helper.make_node("Squeeze", ["x", "axis0"], ["x_seq"], name="drop_sample_axis"), node,
         helper.make_node("Reshape", [last, "flat"], ["y"], name="flatten_state")],
        "conformance", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, *x.shape])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
        [*consts, numpy_helper.from_array(np.array([0], np.int64), "axis0"),
         numpy_helper.from_array(np.array([1, -1], np.int64), "flat")])
    opset = onnx.defs.get_schema(node.op_type).since_version
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", max(opset, 17))]), tmp / "m.onnx")
    rng = np.random.default_rng(0)
    data = np.cumsum(rng.normal(0, 0.4, (120, *x.shape)), axis=1 + (1 - layout)).astype(np.float32)
    # The RNN cases' recurrent weights amplify every error by up to 8 per step (R all 2.0 in
    # test_simple_rnn_bidirectional): int8 pre-activations (steps of ~0.08 there) cannot follow them, so they run at
    # int16, calibrated on every sample, so that what is measured is the kernel's rounding, not clipping of values
    # the calibration never saw (the RNN has no gate to squash them).
    np.savez(tmp / "calib.npz", x=data[:60] if op == "lstm" else data)
    np.savez(tmp / "test.npz", x=data[60:])
    quant = "" if op == "lstm" else "quantization: {activations: int16}\n"
    (tmp / "pipeline.yaml").write_text(
        "model: m.onnx\ncalibration: {path: calib.npz, key: x}\n"
        f"passes: [unroll-{op}, fold-constants, simplify-layout]\n{quant}"
        "codegen: {name: conf, output_dir: out}\ncompare: {path: test.npz, key: x}\n")
    return tmp / "pipeline.yaml", batch


def _check(tmp: Path, node: onnx.NodeProto, inputs: list[np.ndarray]) -> None:
    yaml, batch = _write(tmp, node, inputs)
    has_peepholes = len(node.input) > 7 and node.input[7]
    if batch != 1 or has_peepholes:
        # refused by name: by qpass's support check, or (layout=1, which onnxruntime cannot run, so there is
        # no float reference) by onnxruntime's one-line error naming the node
        with pytest.raises((UnsupportedOpError, OrtError), match=f"conformance_{node.op_type.lower()}"):
            run_pipeline(load_pipeline(yaml))
        return
    report = run_pipeline(load_pipeline(yaml))
    assert report["c_equals_runtime_ref"] and report["c_mismatched_samples"] == 0
    sess = ort.InferenceSession(str(tmp / "m.onnx"))
    y = np.concatenate([sess.run(None, {"x": s[None]})[0] for s in np.load(tmp / "test.npz")["x"]])
    # int8 h and gates: a few % of the output's amplitude, plus a few steps of the int8 tanh table (1/128)
    amplitude = float(np.abs(y).max())
    for key in ("c_vs_float", "qdq_vs_float"):
        assert report["comparisons"][key]["max_abs_error"] < 0.05 * amplitude + 0.02, key
        assert report["comparisons"][key]["mean_abs_error"] < 0.01 * amplitude + 0.005, key


def test_the_suite_has_the_cases_we_expect() -> None:
    assert {"test_lstm_defaults", "test_lstm_reverse", "test_lstm_bidirectional", "test_lstm_batchwise",
            "test_lstm_with_peepholes", "test_lstm_with_initial_bias", "test_simple_rnn_defaults",
            "test_simple_rnn_reverse", "test_simple_rnn_bidirectional", "test_rnn_seq_length"} <= set(CASES)


@pytest.mark.parametrize("name", sorted(CASES))
def test_conformance_case_runs_or_is_refused_by_name(tmp_path: Path, name: str) -> None:
    node, inputs = CASES[name]
    _check(tmp_path, node, inputs)


def _batch(name: str) -> int:
    node, inputs = CASES[name]
    layout = next((a.i for a in node.attribute if a.name == "layout"), 0)
    return inputs[0].shape[1 - layout]


@pytest.mark.parametrize("name", sorted(n for n in CASES if _batch(n) != 1))  # batch 1 already runs above
def test_conformance_case_at_batch_one(tmp_path: Path, name: str) -> None:
    node, inputs = CASES[name]
    if any(a.name == "layout" and a.i == 1 for a in node.attribute):
        pytest.skip("onnxruntime cannot run layout=1 LSTMs/RNNs, so the pipeline has no float reference for them")
    _check(tmp_path, node, _first_batch(node, inputs))
