"""Comparison metrics: float onnxruntime vs every quantized stage, and per integer kernel.

"float" is onnxruntime running the converted model before any pass; every other stage is compared
with it on the same samples.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from qpass.runtime_ref.intmath import QMAX, QMIN


def metrics(ref: np.ndarray, got: np.ndarray, x: np.ndarray | None = None) -> dict:
    """Max and mean absolute error of `got` against `ref` (N x outputs), and argmax agreement; for a
    reconstruction model (given its inputs `x`, whose per-sample size the output has: an autoencoder), also
    the anomaly-score correlation of `reconstruction_scores`, which the summaries show instead of argmax."""
    ref = ref.reshape(len(ref), -1).astype(np.float64)
    got = got.reshape(len(got), -1).astype(np.float64)
    err = np.abs(ref - got)
    out = {"argmax_agreement": float(np.mean(ref.argmax(axis=1) == got.argmax(axis=1))),
           "max_abs_error": float(err.max()), "mean_abs_error": float(err.mean()), "samples": len(ref)}
    if x is not None and is_reconstruction(x, ref):
        return {**out, **score_correlation(reconstruction_scores(x, ref), reconstruction_scores(x, got))}
    return out


def is_reconstruction(x: np.ndarray, y: np.ndarray) -> bool:
    """An output of the input's size per sample is a reconstruction (autoencoder), not class scores."""
    return len(x) == len(y) and int(np.prod(x.shape[1:])) == int(np.prod(y.shape[1:]))


def reconstruction_scores(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Per-sample anomaly score: the mean squared reconstruction error of output y for input x."""
    x = x.reshape(len(x), -1).astype(np.float64)
    return np.mean((y.reshape(len(y), -1).astype(np.float64) - x) ** 2, axis=1)


def score_correlation(ref: np.ndarray, got: np.ndarray) -> dict:
    """Pearson and Spearman (Pearson of average ranks) correlation of two score vectors; 1.0 when equal."""
    def pearson(a: np.ndarray, b: np.ndarray) -> float:
        if np.array_equal(a, b):
            return 1.0
        a, b = a - a.mean(), b - b.mean()
        den = float(np.sqrt(np.sum(a * a) * np.sum(b * b)))
        return float(np.sum(a * b) / den) if den > 0 else 0.0

    def ranks(a: np.ndarray) -> np.ndarray:
        order = np.argsort(a, kind="stable")
        r = np.empty(len(a), dtype=np.float64)
        r[order] = np.arange(len(a), dtype=np.float64)
        for v in np.unique(a):  # ties share their average rank
            tie = a == v
            r[tie] = r[tie].mean()
        return r

    return {"score_pearson": pearson(ref, got), "score_spearman": pearson(ranks(ref), ranks(got))}


def accuracy(out: np.ndarray, labels: np.ndarray) -> float:
    return float(np.mean(out.reshape(len(out), -1).argmax(axis=1) == labels.reshape(-1)))


def sqnr_db(ref: np.ndarray, got: np.ndarray) -> float:
    """10·log10(Σref² / Σ(ref − got)²); inf when equal."""
    ref = ref.astype(np.float64)
    noise = float(np.sum((ref - got.astype(np.float64)) ** 2))
    signal = float(np.sum(ref**2))
    if noise == 0:
        return float("inf")
    return 10.0 * float(np.log10(max(signal, 1e-30) / noise))


@dataclass
class _Stats:
    """Running figures of one kernel output over the compare samples (bounded memory)."""

    signal: float = 0.0
    noise: float = 0.0
    lo: float = math.inf
    hi: float = -math.inf
    saturated: int = 0
    count: int = 0
    overshoot: float = 0.0  # largest distance beyond the representable range, in steps of the scale

    def add(self, ref: np.ndarray, got: np.ndarray, scale: float, zero_point: int, dtype: str) -> None:
        ref = ref.astype(np.float64).reshape(-1)
        self.signal += float(np.sum(ref**2))
        self.noise += float(np.sum((ref - got.astype(np.float64).reshape(-1)) ** 2))
        self.lo, self.hi = min(self.lo, float(ref.min())), max(self.hi, float(ref.max()))
        q = ref / scale + zero_point  # the integer the float value asks for, before rounding
        qmin, qmax = QMIN[dtype], QMAX[dtype]
        self.saturated += int(np.sum((q < qmin - 0.5) | (q > qmax + 0.5)))
        self.overshoot = max(self.overshoot, float(np.max(qmin - q)), float(np.max(q - qmax)))
        self.count += ref.size


def _float_twin(program, tid: str, names: set[str]) -> str | None:
    """The float value a quantized tensor was made from, if the float model still has it."""
    src = program.tensors[tid].source.removesuffix("_quantized")
    if src in names:
        return src
    if src.endswith("_float") and src.removesuffix("_float") in names:  # a graph output apply_plan renamed
        return src.removesuffix("_float")
    return None


def per_layer(model, program, x: np.ndarray, in_shape: tuple[int, ...], ranges: dict | None = None,
              samples: int | None = None) -> list[dict]:
    """One row per integer kernel (in program order, the last one included), over `samples` compare
    samples (None: all): the float tensor it stands for, its bits / scale / zero point, the calibrated
    range (`ranges`: plan tensor name → (lo, hi)), the representable range, the range observed on the
    compare data, the fraction of those values that saturate the integer type, and the SQNR of
    runtime_ref's tensor against onnxruntime's float one (None when equal: no noise at all).

    Tensors are matched by the float value name each quantized tensor was made from; kernels without
    a float twin (a re-rolled LSTM's state) are matched through the last h it writes; a kernel with no
    twin at all gets a row without figures.
    """
    import onnx

    from qpass.ort import session
    from qpass.runtime_ref import run as run_ref
    from qpass.runtime_ref.intmath import dequantize, quantize

    names = {v.name for n in model.graph for v in n.outputs}
    wanted: dict[str, str] = {}
    chosen: dict[int, str] = {}
    for index, step in enumerate(program.steps):
        # a fused ReLU's output is a view of the kernel's output: the float twin is the ReLU's output
        # (an LSTM's h sequence has no float twin; its last h_t stands for it)
        out = program.tensors[step.outputs[0]]
        views = [out.id] + [k for k, t in program.tensors.items() if t.alias_of == out.id]
        twins = [v for v in views if _float_twin(program, v, names)]
        if twins:
            best = max(twins, key=lambda v: (program.tensors[v].size == out.size, program.tensors[v].alias_offset,
                                             views.index(v)))
            wanted[best] = _float_twin(program, best, names) or ""
            chosen[index] = best
    graph_outputs = {o.name for o in model.graph.outputs}
    extra = [onnx.helper.make_tensor_value_info(n, onnx.TensorProto.FLOAT, None) for n in set(wanted.values())
             if n not in graph_outputs]
    sess = session(model, extra)
    out_names = [o.name for o in sess.get_outputs()]
    in_name = model.graph.inputs[0].name
    tin = program.tensors[program.input]
    stats = {tid: _Stats() for tid in wanted}
    used = x if samples is None else x[:samples]
    for sample in used:
        floats = dict(zip(out_names, sess.run(out_names, {in_name: sample.reshape(in_shape)}), strict=True))
        values = run_ref(program, quantize(sample, tin.scale, tin.zero_point, tin.dtype), keep=True)
        for tid, src in wanted.items():
            t = program.tensors[tid]
            stats[tid].add(floats[src], dequantize(values[tid].reshape(-1), t.scale, t.zero_point), t.scale,
                           t.zero_point, t.dtype)
    rows = []
    for index, step in enumerate(program.steps):
        tid = chosen.get(index)
        row: dict = {"index": index, "kernel": step.kernel, "node": step.origin, "tensor": None,
                     "dtype": program.tensors[step.outputs[0]].dtype, "samples": len(used)}
        if tid is not None:
            t, s = program.tensors[tid], stats[tid]
            src = wanted[tid]
            calibrated = (ranges or {}).get(src) or (ranges or {}).get(f"{src}_float")
            row.update({
                "tensor": src, "dtype": t.dtype, "bits": int(t.dtype.removeprefix("int")), "scale": float(t.scale),
                "zero_point": int(t.zero_point),
                "calibrated_range": None if calibrated is None else [float(calibrated[0]), float(calibrated[1])],
                "representable_range": [float(t.scale * (QMIN[t.dtype] - t.zero_point)),
                                        float(t.scale * (QMAX[t.dtype] - t.zero_point))],
                "observed_range": [s.lo, s.hi] if s.count else None,
                "saturated_fraction": s.saturated / s.count if s.count else 0.0,
                "saturated_values": s.saturated, "values": s.count,
                "overshoot_steps": round(max(s.overshoot, 0.0), 3),
                "sqnr_db": None if s.noise == 0 else round(10.0 * math.log10(max(s.signal, 1e-30) / s.noise), 2),
            })
        rows.append(row)
    return rows


@dataclass
class Outputs:
    """The network's outputs on the compare samples, per stage (N x outputs, real values)."""

    float: np.ndarray
    qdq: np.ndarray | None
    runtime_ref: np.ndarray
    c: np.ndarray
    c_mismatched: int  # samples where the C's integers differ from runtime_ref's


def run_outputs(float_model, qdq_model, program, c_file, h_file, x: np.ndarray, in_shape: tuple[int, ...],
                cc: str = "gcc") -> Outputs:
    """Run every stage on the compare samples `x`: onnxruntime on the float model and on the QDQ model
    (None skips it), runtime_ref on the program, and the compiled C."""
    from qpass.codegen.build import compile_and_run
    from qpass.codegen.emit import CTYPE
    from qpass.ort import session
    from qpass.runtime_ref import run as run_ref
    from qpass.runtime_ref.intmath import dequantize, quantize

    n = len(x)
    tin, tout = program.tensors[program.input], program.tensors[program.output]

    def ort_run(model, optimize: bool) -> np.ndarray:
        sess = session(model, optimize=optimize)
        in_name = sess.get_inputs()[0].name
        return np.stack([sess.run(None, {in_name: s.reshape(in_shape)})[0] for s in x]).reshape(n, -1)

    y_float = ort_run(float_model, True)
    y_qdq = None if qdq_model is None else ort_run(qdq_model, False)
    xq = quantize(x, tin.scale, tin.zero_point, tin.dtype).reshape(n, -1)
    y_ref_q = np.stack([run_ref(program, s).reshape(-1) for s in xq])
    y_c_q = compile_and_run(c_file, h_file, program.name, CTYPE[tin.dtype], CTYPE[tout.dtype], xq, tout.dtype,
                            tout.size, cc=cc)
    return Outputs(y_float, y_qdq, dequantize(y_ref_q, tout.scale, tout.zero_point),
                   dequantize(y_c_q, tout.scale, tout.zero_point), int(np.sum(np.any(y_c_q != y_ref_q, axis=1))))


def comparison_report(out: Outputs, labels: np.ndarray | None, x: np.ndarray | None = None) -> dict:
    """The report's comparison part: metrics of each stage against float, C vs runtime_ref, accuracy. Given
    the inputs `x`, a reconstruction model (an autoencoder) gets score correlations instead of argmax."""
    stages = {"qdq_vs_float": out.qdq, "runtime_ref_vs_float": out.runtime_ref, "c_vs_float": out.c}
    n = len(out.float)
    return {
        "samples": n,
        "comparisons": {k: metrics(out.float, v, x) for k, v in stages.items() if v is not None},
        "c_equals_runtime_ref": out.c_mismatched == 0,
        "c_mismatched_samples": out.c_mismatched,
        "accuracy": None if labels is None else {
            k: accuracy(v, labels) for k, v in {"float": out.float, "qdq": out.qdq, "runtime_ref": out.runtime_ref,
                                                "c": out.c}.items() if v is not None},
    }


def compare_build(out_dir, data, *, key: str | None = None, labels_key: str | None = None,
                  limit: int | None = None, cc: str = "gcc") -> dict:
    """Re-run the comparison of an existing `qpass run` output folder on new data, without converting or
    re-solving: onnxruntime on the saved float model (NAME.float.onnx) and QDQ model, runtime_ref on the
    program lowered again from the saved QDQ model, and NAME.c compiled again. The build's quality gates
    (from its report.json) are checked on the new figures. Writes nothing."""
    import json
    from pathlib import Path

    import onnx_ir as ir

    from qpass.codegen.lower import lower
    from qpass.data import check_samples, load_array
    from qpass.errors import QpassError
    from qpass.pipeline import REPORT, gate_results, output_unit

    out_dir, data = Path(out_dir), Path(data)
    try:
        build = json.loads((out_dir / REPORT).read_text(encoding="utf-8"))
        name = build["name"]
    except (OSError, ValueError, KeyError) as exc:
        raise QpassError(f"{out_dir}: not a qpass output folder ({REPORT} unreadable: {exc}); pass the "
                         "codegen.output_dir of a `qpass run`") from None
    files = {k: out_dir / f"{name}.{k}" for k in ("float.onnx", "qdq.onnx", "c", "h")}
    missing = [str(f) for f in files.values() if not f.is_file()]
    if missing:
        raise QpassError(f"{out_dir}: {', '.join(missing)} missing; run `qpass run` again to rebuild the folder")
    float_model = ir.load(str(files["float.onnx"]))
    qdq = ir.load(str(files["qdq.onnx"]))
    in_shape = tuple(int(d) for d in float_model.graph.inputs[0].shape)
    if not data.is_file() or data.suffix.lower() not in (".npy", ".npz"):
        raise QpassError(f"--data {data}: expected an existing .npy or .npz file")
    x = load_array(data, key, yaml_file=str(data), yaml_key="--key")
    check_samples(x, in_shape[1:], yaml_file=str(data), yaml_key="--data")
    n = len(x) if limit is None else min(limit, len(x))
    x = np.asarray(x[:n], dtype=np.float32)
    if not np.isfinite(x).all():
        raise QpassError(f"--data {data}: holds NaN or infinity")
    labels = None if labels_key is None else load_array(data, labels_key, yaml_file=str(data),
                                                        yaml_key="--labels-key")[:n]
    program = lower(qdq, name)
    out = run_outputs(float_model, qdq, program, files["c"], files["h"], x, in_shape, cc=cc)
    report = {"name": name, "data": str(data), "output_unit": output_unit(program), **comparison_report(out, labels, x)}
    limits = {k: g["limit"] for k, g in (build.get("gates") or {}).items()}
    report["gates"] = gate_results(limits, report) if limits else None
    return report
