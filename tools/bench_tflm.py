"""TFLite Micro yardstick for the 2-D examples: int8 .tflite arena bytes, accuracy, and the live-tensor lower bound.

    pip install -e '.[bench]'
    python tools/bench_tflm.py [examples/kws examples/resnet8] [--limit N] [--save DIR]

For each example folder (its pipeline.yaml names the Keras model, the calibration and the compare data):
1. TFLiteConverter turns the Keras model into a fully int8 .tflite (int8 input and output, the example's
   calibration set as representative dataset).
2. The `tflite-micro` package's Python interpreter (RecordingMicroAllocator) runs every test sample; its
   allocation record gives the arena bytes TFLM needs: `total` = `head` (the planned non-persistent activations
   and scratch buffers) + `tail` (persistent interpreter data: tensor structs, node structs, op data).
3. Accuracy: TFLM int8 top-1 against the labels and argmax agreement with the Keras float model.
4. The live-tensor lower bound of the activations: walking the .tflite's operators in execution order, the largest
   byte sum of activation tensors alive at one operator (a tensor lives from the operator that writes it, or the
   start for the graph input, to the last operator that reads it, or the end for the graph output; RESHAPE and
   SQUEEZE outputs share their input's bytes). No planner can place the activations in fewer bytes; issue 13 asks
   qpass's arena to stay within 1.05x of it and its total RAM within 60 % of TFLM's `total`.
Prints one table; writes nothing unless --save DIR (then DIR/<name>.tflite).
"""

from __future__ import annotations

import argparse
import contextlib
import os
import re
import sys
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import numpy as np  # noqa: E402
import yaml  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_EXAMPLES = (ROOT / "examples" / "kws", ROOT / "examples" / "resnet8")
ALIAS_OPS = {"RESHAPE", "SQUEEZE", "EXPAND_DIMS"}


@dataclass
class Example:
    name: str
    model: Path
    calib: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray | None


@dataclass
class Figures:
    name: str
    params: int
    tflite_bytes: int
    n_test: int
    float_acc: float | None
    int8_acc: float | None
    agreement: float
    arena_total: int
    arena_head: int
    arena_tail: int
    lower_bound: int
    lower_bound_at: str


def _npz(folder: Path, section: dict, what: str) -> np.lib.npyio.NpzFile:
    if "path" not in section:
        raise SystemExit(f"{folder / 'pipeline.yaml'}: {what}.path is needed (a .npz file)")
    return np.load(folder / section["path"], allow_pickle=False)


def load_example(folder: Path) -> Example:
    """The model path and data arrays named by FOLDER/pipeline.yaml (the keys qpass's own pipeline reads)."""
    cfg = yaml.safe_load((folder / "pipeline.yaml").read_text())
    calib_cfg, cmp_cfg = cfg["calibration"], cfg.get("compare") or cfg["calibration"]
    with _npz(folder, calib_cfg, "calibration") as f:
        calib = f[calib_cfg.get("key") or f.files[0]].astype(np.float32)
    with _npz(folder, cmp_cfg, "compare") as f:
        x = f[cmp_cfg.get("key") or f.files[0]].astype(np.float32)
        labels = cmp_cfg.get("labels_key")
        y = f[labels].astype(np.int64) if labels else None
    name = (cfg.get("codegen") or {}).get("name") or folder.name
    return Example(name, folder / cfg["model"]["path"], calib, x, y)


def to_int8_tflite(keras_model, calib: np.ndarray) -> bytes:
    """Full-integer post-training quantization: int8 weights, activations, input and output."""
    import tensorflow as tf

    conv = tf.lite.TFLiteConverter.from_keras_model(keras_model)
    conv.optimizations = [tf.lite.Optimize.DEFAULT]
    conv.representative_dataset = lambda: ([sample[None]] for sample in calib)
    conv.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
    conv.inference_input_type = tf.int8
    conv.inference_output_type = tf.int8
    return conv.convert()


@contextlib.contextmanager
def captured_fds() -> Iterator[list[str]]:
    """Capture what C++ code writes to file descriptors 1 and 2 (TFLM prints its allocation record there)."""
    out: list[str] = []
    sys.stdout.flush()
    sys.stderr.flush()
    saved = os.dup(1), os.dup(2)
    with tempfile.TemporaryFile(mode="w+b") as tmp:
        os.dup2(tmp.fileno(), 1)
        os.dup2(tmp.fileno(), 2)
        try:
            yield out
        finally:
            os.dup2(saved[0], 1)
            os.dup2(saved[1], 2)
            os.close(saved[0])
            os.close(saved[1])
            tmp.seek(0)
            out.append(tmp.read().decode(errors="replace"))


def arena_record(text: str) -> tuple[int, int, int]:
    """(total, head, tail) bytes from RecordingMicroAllocator's printout."""
    found = {k: int(v) for k, v in re.findall(r"Arena allocation (total|head|tail) (\d+) bytes", text)}
    if set(found) != {"total", "head", "tail"}:
        raise RuntimeError(f"tflite-micro printed no arena record; got: {text[:400]!r}")
    return found["total"], found["head"], found["tail"]


def run_tflm(model: bytes, x: np.ndarray) -> tuple[np.ndarray, tuple[int, int, int]]:
    """Int8 outputs of the TFLM interpreter on every sample of x (float), and its arena record."""
    from tflite_micro import runtime

    interp = runtime.Interpreter.from_bytes(model, arena_size=max(len(model) * 10, 1 << 20))
    q_in = interp.get_input_details(0)["quantization_parameters"]
    s_in, z_in = float(q_in["scales"][0]), int(q_in["zero_points"][0])
    outs = []
    for sample in x:
        q = np.clip(np.round(sample / s_in) + z_in, -128, 127).astype(np.int8)[None]
        interp.set_input(q, 0)
        interp.invoke()
        outs.append(np.array(interp.get_output(0)).reshape(-1))
    with captured_fds() as text:
        interp.print_allocations()
    return np.stack(outs), arena_record(text[0])


def live_lower_bound(model: bytes) -> tuple[int, str]:
    """Largest byte sum of activation tensors alive at one operator of the .tflite graph, and that operator."""
    import tensorflow as tf

    interp = tf.lite.Interpreter(model_content=model)
    ops = interp._get_ops_details()
    tensors = {t["index"]: t for t in interp.get_tensor_details()}
    alias = {}  # tensor -> the tensor whose bytes it shares
    for op in ops:
        if op["op_name"] in ALIAS_OPS:
            alias[op["outputs"][0]] = alias.get(op["inputs"][0], op["inputs"][0])
    start: dict[int, int] = {alias.get(d["index"], d["index"]): 0 for d in interp.get_input_details()}
    end: dict[int, int] = {}
    for i, op in enumerate(ops):
        for t in op["outputs"]:
            start.setdefault(alias.get(t, t), i)
        for t in op["inputs"]:
            if t >= 0:
                end[alias.get(t, t)] = i
    for d in interp.get_output_details():
        end[alias.get(d["index"], d["index"])] = len(ops) - 1

    def nbytes(t: int) -> int:
        info = tensors[t]
        return int(np.prod(info["shape"])) * np.dtype(info["dtype"]).itemsize

    best, best_at = 0, ""
    for i, op in enumerate(ops):
        live = sum(nbytes(t) for t, s in start.items() if s <= i <= end.get(t, s))
        if live > best:
            best, best_at = live, f"op {i} {op['op_name']}"
    return best, best_at


def bench(example: Example, limit: int | None, save: Path | None) -> Figures:
    import keras

    model = keras.models.load_model(example.model, compile=False)
    tfl = to_int8_tflite(model, example.calib)
    if save is not None:
        save.mkdir(parents=True, exist_ok=True)
        (save / f"{example.name}.tflite").write_bytes(tfl)
    x, y = example.x_test[:limit], None if example.y_test is None else example.y_test[:limit]
    ref = model.predict(x, verbose=0, batch_size=64).argmax(axis=1)
    q_out, (total, head, tail) = run_tflm(tfl, x)
    got = q_out.argmax(axis=1)
    bound, at = live_lower_bound(tfl)
    return Figures(example.name, model.count_params(), len(tfl), len(x),
                   None if y is None else float(np.mean(ref == y)), None if y is None else float(np.mean(got == y)),
                   float(np.mean(got == ref)), total, head, tail, bound, at)


def table(rows: list[Figures]) -> str:
    def pct(v: float | None) -> str:
        return "-" if v is None else f"{100 * v:.2f} %"

    head = ("model", "params", ".tflite B", "n", "float acc", "int8 acc", "argmax agree", "TFLM arena B",
            "head B", "tail B", "live bound B", "bound at")
    lines = [head] + [(r.name, str(r.params), str(r.tflite_bytes), str(r.n_test), pct(r.float_acc),
                       pct(r.int8_acc), pct(r.agreement), str(r.arena_total), str(r.arena_head),
                       str(r.arena_tail), str(r.lower_bound), r.lower_bound_at) for r in rows]
    widths = [max(len(line[i]) for line in lines) for i in range(len(head))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(line, widths, strict=True)).rstrip() for line in lines)


def main(argv: list[str] | None = None) -> list[Figures]:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("examples", nargs="*", type=Path, default=list(DEFAULT_EXAMPLES),
                    help="example folders with a pipeline.yaml (default: examples/kws examples/resnet8)")
    ap.add_argument("--limit", type=int, default=None, help="use at most this many test samples")
    ap.add_argument("--save", type=Path, default=None, help="write DIR/<name>.tflite")
    args = ap.parse_args(argv)
    rows = [bench(load_example(folder), args.limit, args.save) for folder in args.examples]
    print(table(rows))
    print("TFLM arena = head (planned activations + scratch) + tail (persistent interpreter data); live bound = "
          "largest sum of simultaneously live int8 activation tensors (qpass target: arena <= 1.05x bound, "
          "total RAM <= 60 % of TFLM arena)")
    return rows


if __name__ == "__main__":
    main()
