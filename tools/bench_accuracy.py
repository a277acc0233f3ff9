"""Accuracy benchmark: qpass at several precisions against onnxruntime's own quantizer, on every example.

    python tools/bench_accuracy.py [EXAMPLE ...]        # default: every examples/*/pipeline.yaml

For each example model and its comparison data (the pipeline's `compare` section, else its calibration data):

- onnxruntime float: the float model after qpass's float passes (converted with qpass.converters.load_model,
  then qpass.passes.runner.run_passes with the pipeline's passes), saved to a temporary .onnx. It is the
  reference for every onnxruntime row. qpass's own report compares against the converted model before the
  passes; the line "float passes" under the table gives the largest difference between the two.
- qpass: qpass.pipeline.run_pipeline on a copy of the pipeline whose `quantization` is replaced (the YAML's
  `overrides` are dropped so each row is the precision it names) and whose output goes to a temporary folder:
  a8w8, a16w8, a16w16 (per-channel, multiplier requantization), a8w8 with power-of-two requantization, and
  a8w8 per-tensor. Each gives two rows from its report: the QDQ simulation (onnxruntime on NAME.qdq.onnx) and
  the compiled C.
- onnxruntime quantize_static on the SAME float model with the SAME calibration samples (the pipeline's
  calibration data, its `limit` applied, fed one sample at a time): QDQ format, MinMax calibration,
  per-channel int8 weights, with int8 or int16 activations, run by onnxruntime (default graph optimizations,
  so int8 QDQ groups run as onnxruntime's integer kernels). onnxruntime >= 1.20 raises the model to opset 21
  for int16 Q/DQ on its own; no extra option is needed. The int16 run reuses the int8 run's calibration
  ranges through quantize_static's calibration cache (the ranges do not depend on the target type).

"ops left in float", read from the graphs, not assumed. For a QDQ model (quantize_static's, and qpass's
NAME.qdq.onnx on its QDQ rows): every node other than Q/DQ with a float input that is neither produced by a
DequantizeLinear nor an all-zero constant (an LSTM's zero initial state is exact in any integer format), or a
float output not consumed only by QuantizeLinear; pure data movement (Reshape, Gather, ...) on float tensors,
such as the float graph input before its QuantizeLinear, is listed after a "+". This is the graph's view:
onnxruntime may still compute a DQ -> op -> Q group in float when it has no integer kernel for it. For qpass's C
rows the generated NAME.c is read: "none" when no `float`/`double` appears outside the optional
NAME_FLOAT_HELPERS block (comments ignored).

Then, per model: qpass a8w8 vs quantize_static a8w8 in argmax agreement; whether qpass a16w16 and a16w8 reach
>= 99.9 % argmax agreement and max abs error < 0.01 (the outputs are softmax probabilities); and the per-layer
SQNR (dB) of every qpass precision when the report has `layers`. A pipeline that fails prints one line and the
benchmark goes on. Progress goes to stderr, the tables to stdout.
"""

from __future__ import annotations

import argparse
import logging
import os
import re
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import numpy as np  # noqa: E402
import onnx  # noqa: E402
import onnx_ir as ir  # noqa: E402
import onnxruntime as ort  # noqa: E402
from onnxruntime.quantization import (  # noqa: E402
    CalibrationDataReader,
    CalibrationMethod,
    QuantFormat,
    QuantType,
    quantize_static,
)

from qpass.compare import accuracy, metrics  # noqa: E402
from qpass.config import Pipeline, load_pipeline  # noqa: E402
from qpass.converters import load_model  # noqa: E402
from qpass.data import calibration_batches, comparison_data  # noqa: E402
from qpass.ort import session  # noqa: E402
from qpass.passes.runner import run_passes, save  # noqa: E402
from qpass.pipeline import run_pipeline  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = ROOT / "examples"

INT8 = {"activations": "int8", "weights": "int8", "per_channel": True, "requant": "multiplier"}
QPASS_VARIANTS = {
    "a8w8": INT8,
    "a16w8": {**INT8, "activations": "int16"},
    "a16w16": {**INT8, "activations": "int16", "weights": "int16"},
    "a8w8 pow2": {**INT8, "requant": "pow2"},
    "a8w8 per-tensor": {**INT8, "per_channel": False},
}
ORT_VARIANTS = {"a8w8": QuantType.QInt8, "a16w8": QuantType.QInt16}
INT16_TARGETS = ("a16w16", "a16w8")
MIN_AGREEMENT, MAX_ABS_ERROR = 0.999, 0.01

QDQ_OPS = {"QuantizeLinear", "DequantizeLinear"}
DATA_MOVEMENT = {"Reshape", "Transpose", "Gather", "Squeeze", "Unsqueeze", "Slice", "Split", "Concat", "Flatten",
                 "Identity"}
COLUMNS = ("model", "tool / precision", "argmax agree %", "test acc %", "max abs err", "mean abs err",
           "ops left in float")


@dataclass
class Row:
    model: str
    tool: str
    agreement: float | None = None
    accuracy: float | None = None
    max_err: float | None = None
    mean_err: float | None = None
    float_ops: str = ""
    error: str | None = None

    def cells(self) -> list[str]:
        if self.error is not None:
            return [self.model, self.tool, "FAILED", "", "", "", self.error]
        return [self.model, self.tool, _pct(self.agreement), _pct(self.accuracy), _num(self.max_err),
                _num(self.mean_err), self.float_ops]


@dataclass
class Example:
    name: str
    pipe: Pipeline
    float_path: Path
    in_name: str
    in_shape: tuple[int, ...]
    x: np.ndarray
    labels: np.ndarray | None
    calib: np.ndarray
    y_float: np.ndarray
    passes_delta: float
    reports: dict[str, dict] = field(default_factory=dict)
    rows: list[Row] = field(default_factory=list)


class SampleReader(CalibrationDataReader):
    """The calibration samples, one batch-1 input at a time."""

    def __init__(self, samples: np.ndarray, in_name: str, in_shape: tuple[int, ...]):
        self._items = iter([{in_name: s.reshape(in_shape)} for s in samples])

    def get_next(self) -> dict | None:
        return next(self._items, None)


def _pct(v: float | None) -> str:
    return "-" if v is None else f"{100 * v:.2f}"


def _num(v: float | None) -> str:
    return "-" if v is None else f"{v:.2e}"


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    return f"{type(exc).__name__}: {text[:200]}{'...' if len(text) > 200 else ''}"


def _progress(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def predict(sess, in_name: str, in_shape: tuple[int, ...], x: np.ndarray) -> np.ndarray:
    return np.stack([sess.run(None, {in_name: s.reshape(in_shape)})[0].reshape(-1) for s in x])


def prepare(name: str, pipe: Pipeline, tmp: Path) -> Example:
    """Float model after the passes (saved), the comparison data, the calibration samples, float outputs."""
    file = str(pipe.source)
    model = load_model(pipe.resolve(pipe.model.path), batch_size=pipe.model.batch_size,
                       safe_mode=pipe.model.safe_mode, opset=pipe.model.opset)
    converted = ir.serde.serialize_model(model)
    run_passes(model, [(p.name, p.options) for p in pipe.passes], base_dir=pipe.source.parent)
    float_path = tmp / f"{name}.float.onnx"
    save(model, float_path)
    in_name = model.graph.inputs[0].name
    in_shape = tuple(int(d) for d in model.graph.inputs[0].shape)

    x, labels = comparison_data(pipe, in_shape[1:])
    calib = np.concatenate(list(calibration_batches(pipe.calibration, in_shape[1:], base_dir=pipe.source.parent,
                                                    yaml_file=file)))

    y_float = predict(session(ir.serde.serialize_model(model)), in_name, in_shape, x)
    y_converted = predict(session(converted), in_name, in_shape, x)
    delta = float(np.abs(y_float - y_converted).max())
    return Example(name, pipe, float_path, in_name, in_shape, x, labels, calib, y_float, delta)


def float_row(ex: Example) -> Row:
    acc = None if ex.labels is None else accuracy(ex.y_float, ex.labels)
    return Row(ex.name, "onnxruntime float", 1.0, acc, 0.0, 0.0, "all (reference)")


def qpass_rows(ex: Example, label: str, quant: dict, tmp: Path) -> list[Row]:
    pipe = ex.pipe
    out = tmp / f"{ex.name}-{label.replace(' ', '-')}"
    variant = pipe.model_copy(update={
        "quantization": pipe.quantization.model_copy(update={**quant, "overrides": []}),
        "codegen": pipe.codegen.model_copy(update={"output_dir": str(out)}),
        "dump": False,
    })
    report = run_pipeline(variant)
    ex.reports[label] = report
    c_ops = c_float_ops(out / f"{pipe.codegen.name}.c", pipe.codegen.name)
    qdq_ops = qdq_float_ops(onnx.load(str(out / f"{pipe.codegen.name}.qdq.onnx")))
    cmp, acc = report["comparisons"], report.get("accuracy") or {}
    rows = []
    for stage, key, what in (("QDQ", "qdq_vs_float", "qdq"), ("C", "c_vs_float", "c")):
        m = cmp[key]
        rows.append(Row(ex.name, f"qpass {label} {stage}", m["argmax_agreement"], acc.get(what),
                        m["max_abs_error"], m["mean_abs_error"], c_ops if stage == "C" else qdq_ops))
    if not report.get("c_equals_runtime_ref", True):
        rows[-1].float_ops += f"; C != runtime_ref on {report.get('c_mismatched_samples')} samples"
    return rows


def c_float_ops(c_file: Path, name: str) -> str:
    """'none' when the generated C has no float/double outside the NAME_FLOAT_HELPERS block."""
    text = re.sub(r"/\*.*?\*/|//[^\n]*", " ", c_file.read_text(encoding="utf-8"), flags=re.S)
    kept, depth = [], 0
    for line in text.splitlines():
        directive = line.strip()
        if depth == 0 and re.match(rf"#\s*ifdef\s+{re.escape(name.upper())}_FLOAT_HELPERS\b", directive):
            depth = 1
        elif depth:
            depth += 1 if re.match(r"#\s*if", directive) else -1 if re.match(r"#\s*endif", directive) else 0
        else:
            kept.append(line)
    found = Counter(re.findall(r"\b(float|double)\b", "\n".join(kept)))
    return "none" if not found else "C uses " + ", ".join(f"{k} x{v}" for k, v in sorted(found.items()))


def ort_rows(ex: Example, tmp: Path) -> list[Row]:
    rows = []
    cache = tmp / f"{ex.name}.calib_cache.json"
    for label, act in ORT_VARIANTS.items():
        tool = f"ort quantize_static {label}"
        out = tmp / f"{ex.name}.ort-{label}.onnx"
        start = time.perf_counter()
        try:
            logging.disable(logging.WARNING)  # its advice to pre-process and its opset notice, on the root logger
            try:
                quantize_static(ex.float_path, out, SampleReader(ex.calib, ex.in_name, ex.in_shape),
                                quant_format=QuantFormat.QDQ, per_channel=True, activation_type=act,
                                weight_type=QuantType.QInt8, calibrate_method=CalibrationMethod.MinMax,
                                calibration_cache_path=cache)
            finally:
                logging.disable(logging.NOTSET)
            proto = onnx.load(str(out))
            y = predict(session(proto), ex.in_name, ex.in_shape, ex.x)
        except Exception as exc:  # a benchmark row, not the library: report the failure and go on
            _progress(f"{ex.name}: {tool} failed: {_one_line(exc)}")
            rows.append(Row(ex.name, tool, error=_one_line(exc)))
            continue
        m = metrics(ex.y_float, y)
        acc = None if ex.labels is None else accuracy(y, ex.labels)
        rows.append(Row(ex.name, tool, m["argmax_agreement"], acc, m["max_abs_error"], m["mean_abs_error"],
                        qdq_float_ops(proto)))
        _progress(f"{ex.name}: {tool} in {time.perf_counter() - start:.1f} s")
    return rows


def qdq_float_ops(proto: onnx.ModelProto) -> str:
    """Nodes of a QDQ model that compute on float tensors not wrapped by DequantizeLinear / QuantizeLinear."""
    graph = onnx.shape_inference.infer_shapes(proto).graph
    types = {v.name: v.type.tensor_type.elem_type for v in (*graph.input, *graph.output, *graph.value_info)}
    types.update({t.name: t.data_type for t in graph.initializer})
    producer = {o: n.op_type for n in graph.node for o in n.output}
    consumers: dict[str, list[str]] = {}
    for node in graph.node:
        for i in node.input:
            consumers.setdefault(i, []).append(node.op_type)
    graph_outputs = {o.name for o in graph.output}
    zeros = {t.name for t in graph.initializer if t.data_type == onnx.TensorProto.FLOAT
             and not np.any(onnx.numpy_helper.to_array(t))}  # e.g. an LSTM's zero initial state: exact in any int
    compute, moves = Counter(), Counter()
    for node in graph.node:
        if node.op_type in QDQ_OPS:
            continue
        ins = [i for i in node.input if i and types.get(i) == onnx.TensorProto.FLOAT]
        outs = [o for o in node.output if o and types.get(o) == onnx.TensorProto.FLOAT]
        bare_in = any(producer.get(i) != "DequantizeLinear" and i not in zeros for i in ins)
        bare_out = any(o in graph_outputs or not consumers.get(o) or set(consumers[o]) != {"QuantizeLinear"}
                       for o in outs)
        if bare_in or bare_out:
            (moves if node.op_type in DATA_MOVEMENT else compute)[node.op_type] += 1

    def fmt(c: Counter) -> str:
        return ", ".join(k if v == 1 else f"{k} x{v}" for k, v in sorted(c.items()))

    text = fmt(compute) or "none"
    return text + (f" + data movement on float: {fmt(moves)}" if moves else "")


def table(rows: list[list[str]], header: tuple[str, ...] | list[str]) -> str:
    widths = [max(len(str(r[i])) for r in [list(header), *rows]) for i in range(len(header))]
    right = {i for i, h in enumerate(header) if h.endswith(("%", "err")) or h.endswith("dB")}

    def line(cells) -> str:
        return "  ".join(str(c).rjust(w) if i in right else str(c).ljust(w)
                         for i, (c, w) in enumerate(zip(cells, widths, strict=True))).rstrip()

    rule = "  ".join("-" * w for w in widths)
    return "\n".join([line(header), rule, *(line(r) for r in rows)])


def checks(ex: Example) -> list[str]:
    """The targets, per model, on the compiled C (and the QDQ simulation alongside)."""
    by_tool = {r.tool: r for r in ex.rows}
    lines = [f"{ex.name}: float passes changed the float outputs by at most {ex.passes_delta:.1e}"]
    q8, o8 = by_tool.get("qpass a8w8 C"), by_tool.get("ort quantize_static a8w8")
    if q8 is None or q8.error or o8 is None or o8.error:
        lines.append(f"{ex.name}: qpass a8w8 >= quantize_static a8w8: not measured (a run failed)")
    else:
        qdq = by_tool["qpass a8w8 QDQ"]
        ok = q8.agreement >= o8.agreement and qdq.agreement >= o8.agreement
        lines.append(f"{ex.name}: qpass a8w8 (C {_pct(q8.agreement)} %, QDQ {_pct(qdq.agreement)} %) >= "
                     f"quantize_static a8w8 ({_pct(o8.agreement)} %) in argmax agreement: "
                     f"{'MET' if ok else 'NOT MET'}")
    for label in INT16_TARGETS:
        c, qdq = by_tool.get(f"qpass {label} C"), by_tool.get(f"qpass {label} QDQ")
        what = f"{ex.name}: qpass {label} >= {100 * MIN_AGREEMENT:.1f} % agreement and max abs error < {MAX_ABS_ERROR}"
        if c is None or c.error:
            lines.append(f"{what}: not measured (run failed)")
            continue
        parts, ok = [], True
        for stage, r in (("C", c), ("QDQ", qdq)):
            good = r.agreement >= MIN_AGREEMENT and r.max_err < MAX_ABS_ERROR
            ok &= good
            parts.append(f"{stage} {_pct(r.agreement)} % / {r.max_err:.2e}")
        lines.append(f"{what}: {'MET' if ok else 'NOT MET'} ({', '.join(parts)}; {len(ex.x)} samples)")
    return lines


def _db(v: float | None) -> str:
    """A per-layer SQNR; None means no noise at all (or no float twin to compare with)."""
    return "exact" if v is None else f"{v:.1f}"


def layer_table(ex: Example) -> list[str]:
    """Per-layer SQNR (dB) of every qpass precision whose report has `layers`.

    One table with a column per precision when every precision ran the same kernels (rows are matched by
    position: tf2onnx numbers node names differently on each conversion), else one table per precision.
    """
    layers = {label: r["layers"] for label, r in ex.reports.items() if r.get("layers")}
    if not layers:
        return []

    def name(node: str) -> str:
        return node if len(node) <= 48 else "..." + node[-45:]

    kernels = {tuple(row["kernel"] for row in rows) for rows in layers.values()}
    if len(kernels) == 1:
        first = next(iter(layers.values()))
        rows = [[row["kernel"], name(row["node"]), *(_db(layers[label][i]['sqnr_db']) for label in layers)]
                for i, row in enumerate(first)]
        return [table(rows, ["kernel", "node", *(f"{label} dB" for label in layers)])]
    return [f"{label}:\n" + table([[row["kernel"], name(row["node"]), _db(row['sqnr_db'])] for row in rows],
                                  ["kernel", "node", "SQNR dB"]) for label, rows in layers.items()]


def run_example(name: str, tmp: Path) -> Example | None:
    start = time.perf_counter()
    try:
        pipe = load_pipeline(EXAMPLES / name / "pipeline.yaml")
        ex = prepare(name, pipe, tmp)
    except Exception as exc:  # one model's failure must not stop the others
        _progress(f"{name}: float model failed, model skipped: {_one_line(exc)}")
        return None
    _progress(f"{name}: float model and data ready in {time.perf_counter() - start:.1f} s "
              f"({len(ex.x)} test samples, {len(ex.calib)} calibration samples)")
    ex.rows.append(float_row(ex))
    for label, quant in QPASS_VARIANTS.items():
        start = time.perf_counter()
        try:
            ex.rows += qpass_rows(ex, label, quant, tmp)
        except Exception as exc:  # one precision's failure must not stop the others
            _progress(f"{name}: qpass {label} failed: {_one_line(exc)}")
            ex.rows.append(Row(name, f"qpass {label}", error=_one_line(exc)))
            continue
        _progress(f"{name}: qpass {label} in {time.perf_counter() - start:.1f} s")
    ex.rows += ort_rows(ex, tmp)
    return ex


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("examples", nargs="*", help="example folder names (default: all under examples/)")
    args = parser.parse_args(argv)
    names = args.examples or sorted(p.parent.name for p in EXAMPLES.glob("*/pipeline.yaml"))
    ort.set_default_logger_severity(3)  # the calibrator's session warns about every unused initializer
    start = time.perf_counter()
    done: list[Example] = []
    with tempfile.TemporaryDirectory(prefix="qpass-bench-accuracy-") as tmp:
        for name in names:
            ex = run_example(name, Path(tmp))
            if ex is not None:
                done.append(ex)
    print(table([r.cells() for ex in done for r in ex.rows], COLUMNS))
    print()
    for ex in done:
        print("\n".join(checks(ex)))
    for ex in done:
        for text in layer_table(ex):
            print(f"\nper-layer SQNR, {ex.name} (the report's `layers`: runtime_ref vs float per kernel output):")
            print(text)
    skipped = [n for n in names if n not in {ex.name for ex in done}]
    if skipped:
        print(f"\nskipped (float model failed): {', '.join(skipped)}")
    print(f"\ntotal {time.perf_counter() - start:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
