"""Comparison metrics: float onnxruntime vs every quantized stage."""

from __future__ import annotations

import numpy as np


def metrics(ref: np.ndarray, got: np.ndarray, x: np.ndarray | None = None) -> dict:
    """Max and mean absolute error of `got` against `ref` (N x outputs), and argmax agreement; for a
    reconstruction model (given its inputs `x`, whose per-sample size the output has: an autoencoder), the
    anomaly-score correlation of `reconstruction_scores` instead of argmax."""
    ref = ref.reshape(len(ref), -1).astype(np.float64)
    got = got.reshape(len(got), -1).astype(np.float64)
    err = np.abs(ref - got)
    out = {"max_abs_error": float(err.max()), "mean_abs_error": float(err.mean()), "samples": len(ref)}
    if x is not None and is_reconstruction(x, ref):
        return {**out, **score_correlation(reconstruction_scores(x, ref), reconstruction_scores(x, got))}
    return {"argmax_agreement": float(np.mean(ref.argmax(axis=1) == got.argmax(axis=1))), **out}


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


def per_layer(model, program, x: np.ndarray, in_shape: tuple[int, ...], samples: int = 32) -> list[dict]:
    """Per integer kernel output: SQNR of runtime_ref's tensor against onnxruntime's float tensor.

    Shows which layer loses the accuracy. Tensors are matched by the float value name each quantized
    tensor was made from; kernels without a float twin (a re-rolled LSTM's state) are matched through
    the last h it writes.
    """
    import onnx

    from qpass.ort import session
    from qpass.runtime_ref import run as run_ref
    from qpass.runtime_ref.intmath import dequantize, quantize

    names = {v.name for n in model.graph for v in n.outputs}
    wanted = {}
    for step in program.steps:
        # a fused ReLU's output is a view of the kernel's output: the float twin is the ReLU's output
        # (an LSTM's h sequence has no float twin; its last h_t stands for it)
        out = program.tensors[step.outputs[0]]
        views = [out.id] + [k for k, t in program.tensors.items() if t.alias_of == out.id]
        twins = [v for v in views if program.tensors[v].source.removesuffix("_quantized") in names]
        if twins:
            best = max(twins, key=lambda v: (program.tensors[v].size == out.size, program.tensors[v].alias_offset,
                                             views.index(v)))
            wanted[best] = program.tensors[best].source.removesuffix("_quantized")
    extra = [onnx.helper.make_tensor_value_info(n, onnx.TensorProto.FLOAT, None) for n in set(wanted.values())
             if n not in {o.name for o in model.graph.outputs}]
    sess = session(model, extra)
    out_names = [o.name for o in sess.get_outputs()]
    in_name = model.graph.inputs[0].name
    tin = program.tensors[program.input]
    ref: dict[str, list[np.ndarray]] = {k: [] for k in wanted}
    got: dict[str, list[np.ndarray]] = {k: [] for k in wanted}
    for sample in x[:samples]:
        floats = dict(zip(out_names, sess.run(out_names, {in_name: sample.reshape(in_shape)}), strict=True))
        values = run_ref(program, quantize(sample, tin.scale, tin.zero_point, tin.dtype), keep=True)
        for tid, src in wanted.items():
            t = program.tensors[tid]
            ref[tid].append(floats[src].reshape(-1))
            got[tid].append(dequantize(values[tid].reshape(-1), t.scale, t.zero_point))
    rows = []
    for step in program.steps:
        tid = next((k for k in wanted if k == step.outputs[0] or program.tensors[k].alias_of == step.outputs[0]),
                   None)
        if tid is None:
            continue
        t = program.tensors[tid]
        rows.append({"kernel": step.kernel, "node": step.origin, "tensor": wanted[tid], "dtype": t.dtype,
                     "sqnr_db": round(sqnr_db(np.concatenate(ref[tid]), np.concatenate(got[tid])), 2)})
    return rows
