"""TFLite Micro yardstick for the 2-D examples: int8 .tflite arena bytes, accuracy, and the live-tensor lower bound.

    pip install -e '.[bench]'
    python tools/bench_tflm.py [examples/kws examples/resnet8] [--limit N] [--save DIR]

For each example folder (its pipeline.yaml names the Keras model, the calibration and the compare data):
1. TFLiteConverter turns the Keras model into a fully int8 .tflite (int8 input and output, the example's
   calibration set as representative dataset).
2. The `tflite-micro` package's Python interpreter (RecordingMicroAllocator) runs every test sample; its
   allocation record gives the arena bytes TFLM needs: `total` = `head` (the planned non-persistent activations
   and scratch buffers) + `tail` (persistent interpreter data: tensor structs, node structs, op data); checked:
   the interpreter runs in `total` bytes and fails in `total` - 16.
3. Accuracy: TFLM int8 top-1 against the labels and argmax agreement with the Keras float model.
4. The live-tensor lower bound of the activations: walking the .tflite's operators in execution order, the largest
   byte sum of activation tensors alive at one operator (a tensor lives from the operator that writes it, or the
   start for the graph input, to the last operator that reads it, or the end for the graph output; RESHAPE and
   SQUEEZE outputs share their input's bytes). No planner can place the activations in fewer bytes; issue 13 asks
   qpass's arena to stay within 1.05x of it and its total RAM within 60 % of TFLM's `total`. The same bound is
   computed on the float ONNX graph qpass quantizes (the example's converter + passes; 1 byte an element; Reshape-
   like nodes and Relu/Clip share their input's bytes), the graph the 2-D kernels will see.
Prints one table; writes nothing unless --save DIR (then DIR/<name>.tflite).
"""

from __future__ import annotations

import argparse
import contextlib
import os
import re
import sys
import tempfile
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import numpy as np  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_EXAMPLES = (ROOT / "examples" / "kws", ROOT / "examples" / "resnet8")
ALIAS_OPS = {"RESHAPE", "SQUEEZE", "EXPAND_DIMS"}
ONNX_SHARED = {"Reshape", "Flatten", "Squeeze", "Unsqueeze", "Identity", "Relu", "Clip"}


@dataclass
class Example:
    name: str
    pipe: object  # qpass.config.Pipeline
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
    onnx_bound: int
    onnx_bound_at: str


def _array(pipe, section, key: str | None) -> np.ndarray:
    with np.load(pipe.resolve(section.path), allow_pickle=False) as f:
        return np.asarray(f[key or f.files[0]])


def load_example(folder: Path) -> Example:
    """The model and data arrays named by FOLDER/pipeline.yaml, read and checked by qpass's own config loader."""
    from qpass.config import load_pipeline

    pipe = load_pipeline(folder / "pipeline.yaml")
    cmp = pipe.compare or pipe.calibration
    calib = _array(pipe, pipe.calibration, pipe.calibration.key).astype(np.float32)
    x = _array(pipe, cmp, cmp.key).astype(np.float32)
    y = _array(pipe, cmp, cmp.labels_key).astype(np.int64) if cmp.labels_key else None
    return Example(pipe.codegen.name, pipe, pipe.resolve(pipe.model.path), calib, x, y)


def live_bytes(steps: list[tuple[list, list, bool]], nbytes, inputs: list, outputs: list) -> tuple[int, int]:
    """Largest byte sum of activations alive at one step, and that step's index.

    steps: per operator in execution order, (input tensors, output tensors, whether the first output may share
    the first input's bytes). A tensor lives from the step that writes it (the start for a graph input) to the
    last step that reads it (the end for a graph output)."""
    alias: dict = {}
    for ins, outs, shares in steps:
        if shares:
            alias[outs[0]] = alias.get(ins[0], ins[0])
    start = {alias.get(t, t): 0 for t in inputs}
    end: dict = {}
    for i, (ins, outs, _) in enumerate(steps):
        for t in outs:
            start.setdefault(alias.get(t, t), i)
        for t in ins:
            end[alias.get(t, t)] = i
    for t in outputs:
        end[alias.get(t, t)] = len(steps) - 1
    best, best_at = 0, 0
    for i in range(len(steps)):
        live = sum(nbytes(t) for t, s in start.items() if s <= i <= end.get(t, s))
        if live > best:
            best, best_at = live, i
    return best, best_at


def onnx_lower_bound(pipe) -> tuple[int, str]:
    """The live-tensor bound, int8 (1 byte an element), of the float graph qpass quantizes: the pipeline's
    converter and passes, then the graph's nodes in order; Reshape-like nodes and Relu/Clip (a clamp folded into
    the producer) share their input's bytes."""
    from qpass.converters import load_model
    from qpass.passes.runner import run_passes

    model = load_model(pipe.resolve(pipe.model.path), batch_size=pipe.model.batch_size,
                       safe_mode=pipe.model.safe_mode, opset=pipe.model.opset)
    run_passes(model, [(p.name, p.options) for p in pipe.passes], base_dir=pipe.source.parent)
    nodes = [n for n in model.graph if n.op_type != "Constant"]
    steps = [([v for v in n.inputs if v is not None], list(n.outputs), n.op_type in ONNX_SHARED) for n in nodes]
    bound, at = live_bytes(steps, lambda v: int(np.prod([int(d) for d in v.shape])), list(model.graph.inputs),
                           list(model.graph.outputs))
    return bound, f"{nodes[at].op_type} {at}"


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
def captured_fds(show_on_error: bool = True) -> Iterator[list[str]]:
    """Capture what C++ code writes to file descriptors 1 and 2 (TFLM prints its allocation record there, the
    converter its chatter); the text is in the yielded list afterwards, and goes to stderr if the block raises."""
    out: list[str] = []
    sys.stdout.flush()
    sys.stderr.flush()
    saved = os.dup(1), os.dup(2)
    failed = False
    with tempfile.TemporaryFile(mode="w+b") as tmp:
        os.dup2(tmp.fileno(), 1)
        os.dup2(tmp.fileno(), 2)
        try:
            yield out
        except BaseException:
            failed = True
            raise
        finally:
            os.dup2(saved[0], 1)
            os.dup2(saved[1], 2)
            os.close(saved[0])
            os.close(saved[1])
            tmp.seek(0)
            out.append(tmp.read().decode(errors="replace"))
            if failed and show_on_error:
                sys.stderr.write(out[-1])


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


def arena_fits(model: bytes, size: int, sample: np.ndarray) -> bool:
    """Whether the TFLM interpreter allocates and runs the model in an arena of `size` bytes."""
    from tflite_micro import runtime

    try:
        with captured_fds(show_on_error=False):  # TFLM prints its allocation failure
            interp = runtime.Interpreter.from_bytes(model, arena_size=size)
            interp.set_input(sample, 0)
            interp.invoke()
    except RuntimeError:
        return False
    return True


def tflite_lower_bound(model: bytes) -> tuple[int, str]:
    """The live-tensor bound of the .tflite graph's activations (RESHAPE-like outputs share their input's bytes)."""
    import tensorflow as tf

    with warnings.catch_warnings():  # tf.lite.Interpreter's deprecation notice (it still reads the graph)
        warnings.simplefilter("ignore")
        interp = tf.lite.Interpreter(model_content=model)
    ops = interp._get_ops_details()
    tensors = {t["index"]: t for t in interp.get_tensor_details()}
    steps = [([t for t in op["inputs"] if t >= 0], list(op["outputs"]), op["op_name"] in ALIAS_OPS) for op in ops]

    def nbytes(t: int) -> int:
        return int(np.prod(tensors[t]["shape"])) * np.dtype(tensors[t]["dtype"]).itemsize

    bound, at = live_bytes(steps, nbytes, [d["index"] for d in interp.get_input_details()],
                           [d["index"] for d in interp.get_output_details()])
    return bound, f"{ops[at]['op_name']} {at}"


def bench(example: Example, limit: int | None, save: Path | None) -> Figures:
    import keras

    model = keras.models.load_model(example.model, compile=False)
    with captured_fds():  # the converter's chatter
        tfl = to_int8_tflite(model, example.calib)
    if save is not None:
        save.mkdir(parents=True, exist_ok=True)
        (save / f"{example.name}.tflite").write_bytes(tfl)
    x, y = example.x_test[:limit], None if example.y_test is None else example.y_test[:limit]
    ref = model.predict(x, verbose=0, batch_size=64).argmax(axis=1)
    q_out, (total, head, tail) = run_tflm(tfl, x)
    got = q_out.argmax(axis=1)
    sample = np.zeros((1, *example.x_test.shape[1:]), np.int8)
    if not arena_fits(tfl, total, sample) or arena_fits(tfl, total - 16, sample):
        raise RuntimeError(f"{example.name}: TFLM's recorded arena ({total} B) is not the smallest that runs it")
    bound, at = tflite_lower_bound(tfl)
    onnx_bound, onnx_at = onnx_lower_bound(example.pipe)
    return Figures(example.name, model.count_params(), len(tfl), len(x),
                   None if y is None else float(np.mean(ref == y)), None if y is None else float(np.mean(got == y)),
                   float(np.mean(got == ref)), total, head, tail, bound, at, onnx_bound, onnx_at)


def table(rows: list[Figures]) -> str:
    def pct(v: float | None) -> str:
        return "-" if v is None else f"{100 * v:.2f} %"

    head = ("model", "params", ".tflite B", "n", "float acc", "int8 acc", "argmax agree", "TFLM arena B",
            "head B", "tail B", "tflite bound B", "at", "qpass graph bound B", "at")
    lines = [head] + [(r.name, str(r.params), str(r.tflite_bytes), str(r.n_test), pct(r.float_acc),
                       pct(r.int8_acc), pct(r.agreement), str(r.arena_total), str(r.arena_head),
                       str(r.arena_tail), str(r.lower_bound), r.lower_bound_at, str(r.onnx_bound), r.onnx_bound_at)
                      for r in rows]
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
