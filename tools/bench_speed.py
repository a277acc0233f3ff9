"""Speed benchmark for issue 10: every target with its figure and met / not met, then how each stage scales.

    python tools/bench_speed.py            # targets + scaling (MLP 50..400 layers, LSTM T = 10..400)
    python tools/bench_speed.py --quick    # targets + a smaller scaling table
    python tools/bench_speed.py --no-scaling

Targets (wall time of a fresh `python -m qpass.cli ...` process; the best of --repeat runs for the quick
commands, one run for the pipeline runs, whose CPU time (user + system) is shown too: on a busy machine it
is the better guide to the idle wall time):
- `qpass check` on a YAML with four problems (typos, a missing file, data of the wrong shape): <= 2 s, all
  four reported; `qpass run` on the same YAML: <= 2 s, the same lines.
- `qpass passes`, `qpass --help`, `qpass --version`: <= 1 s each.
- `qpass init examples/har/har.h5`: <= 5 s.
- `qpass run` of a copy of examples/har (its own output folder): cold (no cache) <= 20 s; a second run with
  only `quantization:` changed (the cache holds the converted model and the float graph) <= 8 s.
- import facts, from `sys.modules` at the end of each process: TensorFlow is imported only by the cold run
  (it converts), scikit-learn by none.

Scaling: Keras models built here (untrained, seeded), converted in this process, then each stage timed in
seconds: convert (tf2onnx), passes (the HAR pass list), calibrate (8 samples), solve, apply_plan (QDQ),
lower, render (C text). Each stage should grow linearly with the node count: compare the "per 1k nodes"
column across a table.
"""

from __future__ import annotations

import argparse
import gc
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
HAR = ROOT / "examples" / "har"
PASSES = ["strip-dropout", "fold-constants", "squeeze-conv2d", "simplify-layout", "fold-batchnorm", "keras-lstm",
          "simplify-layout", "fold-time-distributed", "unroll-lstm", "matmul-to-gemm", "simplify-layout"]
PROBE = ("import sys, runpy\nsys.argv = ['qpass', *sys.argv[1:]]\ntry:\n    runpy.run_module('qpass.cli', "
         "run_name='__main__')\nexcept SystemExit as e:\n    code = e.code\nelse:\n    code = 0\n"
         "print('MODULES', ' '.join(m for m in ('tensorflow', 'sklearn', 'onnx_ir', 'onnxruntime') "
         "if m in sys.modules), file=sys.stderr)\nsys.exit(code)\n")


CPU_SECONDS: dict[str, float] = {}


def _child_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def _cli(*args: str, cwd: Path) -> tuple[float, int, str, set[str]]:
    """(seconds, exit code, stdout+stderr without the probe line, heavy modules imported) of one CLI process."""
    env = {**os.environ, "PYTHONPATH": str(ROOT), "TF_CPP_MIN_LOG_LEVEL": "3"}
    start, cpu = time.perf_counter(), _child_cpu()
    proc = subprocess.run([sys.executable, "-c", PROBE, *args], cwd=cwd, capture_output=True, text=True, env=env)
    seconds = time.perf_counter() - start
    CPU_SECONDS[" ".join(args)] = _child_cpu() - cpu
    modules: set[str] = set()
    lines = []
    for line in (proc.stdout + proc.stderr).splitlines():
        if line.startswith("MODULES"):
            modules = set(line.split()[1:])
        else:
            lines.append(line)
    return seconds, proc.returncode, "\n".join(lines), modules


def _best(repeat: int, *args: str, cwd: Path) -> tuple[float, int, str, set[str]]:
    runs = [_cli(*args, cwd=cwd) for _ in range(repeat)]
    return min(runs, key=lambda r: r[0])


def _row(what: str, figure: str, limit: str, met: bool) -> None:
    print(f"{what:<58}{figure:>14}  {limit:<10}{'met' if met else 'NOT MET'}")


def targets(repeat: int) -> None:
    work = Path(tempfile.mkdtemp(prefix="qpass-bench-speed-"))
    try:
        for name in ("har.h5", "calib.npz", "test.npz"):
            shutil.copy(HAR / name, work / name)
        pipeline = yaml.safe_load((HAR / "pipeline.yaml").read_text())
        pipeline["codegen"]["output_dir"] = "out"
        good = work / "pipeline.yaml"
        good.write_text(yaml.safe_dump(pipeline, sort_keys=False))
        bad = dict(pipeline, model={"path": "har.h5", "batchsize": 1},
                   calibration={"path": "calib.npz", "key": "x", "methd": "minmax"},
                   compare={"path": "missing.npz", "key": "x"}, passes=["strip-dropout", "fold-constans"])
        (work / "bad.yaml").write_text(yaml.safe_dump(bad, sort_keys=False))
        wrong_shape = dict(pipeline, calibration={"path": "test.npz", "key": "y"})
        (work / "shape.yaml").write_text(yaml.safe_dump(wrong_shape, sort_keys=False))

        print(f"{'target':<58}{'measured':>14}  {'limit':<10}result")
        for cmd in (["check", "bad.yaml"], ["run", "bad.yaml"], ["check", "shape.yaml"]):
            sec, rc, out, _ = _best(repeat, *cmd, cwd=work)
            n = sum(line.startswith("qpass: error:") for line in out.splitlines())
            _row(f"qpass {' '.join(cmd)} ({n} problems reported, exit {rc})", f"{sec:.2f} s", "<= 2 s",
                 sec <= 2 and rc == 2 and n == (4 if cmd[1] == "bad.yaml" else 1))
        sec, rc, _, _ = _best(repeat, "check", "pipeline.yaml", cwd=work)
        _row("qpass check pipeline.yaml (valid)", f"{sec:.2f} s", "<= 2 s", sec <= 2 and rc == 0)
        for cmd in (["passes"], ["--help"], ["--version"]):
            sec, rc, _, mods = _best(repeat, *cmd, cwd=work)
            _row(f"qpass {' '.join(cmd)} (imports: {' '.join(sorted(mods)) or 'nothing heavy'})", f"{sec:.2f} s",
                 "<= 1 s", sec <= 1 and rc == 0)
        sec, rc, _, _ = _best(repeat, "init", "har.h5", "-o", "init.yaml", "--force", cwd=work)
        _row("qpass init har.h5", f"{sec:.2f} s", "<= 5 s", sec <= 5 and rc == 0)

        cold, rc, out, cold_mods = _cli("run", "pipeline.yaml", cwd=work)
        _row(f"qpass run examples/har, cold (exit {rc}; CPU {CPU_SECONDS['run pipeline.yaml']:.1f} s)",
             f"{cold:.2f} s", "<= 20 s", cold <= 20 and rc == 0)
        pipeline["quantization"] = {**pipeline.get("quantization", {}), "activations": "int16"}
        good.write_text(yaml.safe_dump(pipeline, sort_keys=False))
        warm, rc, out, warm_mods = _cli("run", "pipeline.yaml", cwd=work)
        _row(f"qpass run, only quantization: changed (exit {rc}; CPU {CPU_SECONDS['run pipeline.yaml']:.1f} s)",
             f"{warm:.2f} s", "<= 8 s", warm <= 8 and rc == 0)
        _row("TensorFlow imported by the cold run (it converts)", str("tensorflow" in cold_mods), "True",
             "tensorflow" in cold_mods)
        _row("TensorFlow imported by the warm run (cached)", str("tensorflow" in warm_mods), "False",
             "tensorflow" not in warm_mods)
        _row("scikit-learn imported by any run", str(bool({"sklearn"} & (cold_mods | warm_mods))), "False",
             not {"sklearn"} & (cold_mods | warm_mods))
    finally:
        shutil.rmtree(work, ignore_errors=True)


# ------------------------------------------------------------------------------------------------- scaling


def _keras_model(kind: str, size: int, path: Path) -> None:
    import keras

    keras.utils.set_random_seed(size)
    L = keras.layers
    if kind == "mlp":
        # He-initialized, so a deep random ReLU stack neither dies out nor explodes
        layers = [keras.Input((16,)), *[L.Dense(16, activation="relu", kernel_initializer="he_normal")
                                        for _ in range(size)], L.Dense(4)]
    else:
        layers = [keras.Input((size, 6)), L.LSTM(16), L.Dense(4, activation="softmax")]
    keras.Sequential(layers).save(path)


def _stages(path: Path) -> tuple[int, dict[str, float]]:
    import numpy as np

    from qpass.codegen import lower, render
    from qpass.config import QuantSection
    from qpass.converters import load_model
    from qpass.passes.runner import run_passes
    from qpass.solver import apply_plan, calibrate, solve
    from qpass.solver.unshare import unshare_constants

    times: dict[str, float] = {}

    def timed(stage: str, fn, *args, **kwargs):
        start = time.perf_counter()
        out = fn(*args, **kwargs)
        times[stage] = time.perf_counter() - start
        return out

    model = timed("convert", load_model, path)
    gc.freeze()  # as run_pipeline does: long-lived objects are not walked by every collection
    timed("passes", run_passes, model, [(p, {}) for p in PASSES], base_dir=ROOT)
    gc.freeze()
    unshare_constants(model)
    shape = tuple(int(d) for d in model.graph.inputs[0].shape)
    rng = np.random.default_rng(0)
    batches = [rng.normal(size=shape).astype(np.float32) for _ in range(8)]
    ranges = timed("calibrate", calibrate, model, batches)
    plan = timed("solve", solve, model, ranges, QuantSection())
    qdq = timed("apply_plan", apply_plan, model, plan)
    program = timed("lower", lower, qdq, "bench")
    timed("render", render, program)
    gc.unfreeze()
    return sum(1 for _ in qdq.graph), times


def scaling(mlp_sizes: list[int], lstm_sizes: list[int]) -> None:
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    stages = ["convert", "passes", "calibrate", "solve", "apply_plan", "lower", "render"]
    work = Path(tempfile.mkdtemp(prefix="qpass-bench-scaling-"))
    try:
        for kind, sizes, label in (("mlp", mlp_sizes, "layers"), ("lstm", lstm_sizes, "T")):
            print(f"\n{kind.upper()}: seconds per stage (QDQ nodes = size of the graph; last column: all stages "
                  "but convert, per 1000 QDQ nodes)")
            print(f"{label:>6}{'nodes':>8}" + "".join(f"{s:>11}" for s in stages) + f"{'s/1k nodes':>12}")
            for size in sizes:
                path = work / f"{kind}{size}.keras"
                _keras_model(kind, size, path)
                try:
                    nodes, times = _stages(path)
                except Exception as exc:  # noqa: BLE001 - one failing size must not hide the others
                    print(f"{size:>6}  failed: {type(exc).__name__}: {exc}", flush=True)
                    continue
                rest = sum(v for k, v in times.items() if k != "convert")
                print(f"{size:>6}{nodes:>8}" + "".join(f"{times[s]:>11.3f}" for s in stages)
                      + f"{rest / nodes * 1000:>12.3f}", flush=True)
    finally:
        shutil.rmtree(work, ignore_errors=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a smaller scaling table")
    parser.add_argument("--no-scaling", action="store_true", help="the targets only")
    parser.add_argument("--no-targets", action="store_true", help="the scaling tables only")
    parser.add_argument("--repeat", type=int, default=3, help="runs of each quick command (the best counts)")
    args = parser.parse_args()
    print(f"machine: {os.cpu_count()} cores, load average {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    if not args.no_targets:
        targets(args.repeat)
    if not args.no_scaling:
        if args.quick:
            scaling([25, 50, 100], [10, 50, 100])
        else:
            scaling([50, 100, 200, 400], [10, 50, 100, 200, 400])
    print(f"load average at the end: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")


if __name__ == "__main__":
    main()
