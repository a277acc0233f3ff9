"""`qpass run`: convert → passes → calibrate → solve → QDQ → lower → C → compare, into one output dir.

Outputs are written to a staging folder next to the output directory and moved into place only when
every stage succeeded, so a failed run never leaves a half-written output directory.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
from pathlib import Path

import numpy as np
import onnx_ir as ir

from qpass import __version__
from qpass.codegen.build import compile_and_run, stack_usage
from qpass.codegen.emit import CTYPE, render, write
from qpass.codegen.lower import lower
from qpass.codegen.support import check_model
from qpass.compare import accuracy, metrics, per_layer
from qpass.config import Pipeline
from qpass.converters import load_model
from qpass.data import calibration_batches, comparison_data
from qpass.errors import ConfigError
from qpass.ort import session
from qpass.passes.runner import op_counts, run_passes, save
from qpass.runtime_ref import run as run_ref
from qpass.runtime_ref.intmath import dequantize, quantize
from qpass.solver import apply_plan, calibrate, solve
from qpass.solver.calibrate import activation_bits

log = logging.getLogger(__name__)
MARKER = "report.json"


def run_pipeline(pipe: Pipeline, *, dump: bool = False) -> dict:
    """Run every stage; return the report (also written to OUTPUT_DIR/report.json)."""
    out_dir = pipe.output_dir
    file = str(pipe.source)
    if out_dir.exists() and (not out_dir.is_dir() or (any(out_dir.iterdir()) and not (out_dir / MARKER).exists())):
        raise ConfigError(file, "codegen.output_dir", f"{out_dir} exists and is not a qpass output directory; "
                          "choose another or empty it")
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    stage = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.staging-", dir=out_dir.parent))
    try:
        report = _run(pipe, stage, dump or pipe.dump)
        _replace_dir(stage, out_dir)
    except BaseException:
        shutil.rmtree(stage, ignore_errors=True)
        raise
    return report


def _replace_dir(new: Path, target: Path) -> None:
    old = None
    if target.exists():
        old = target.with_name(f".{target.name}.old-{os.getpid()}")
        target.rename(old)
    new.rename(target)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def _run(pipe: Pipeline, stage: Path, dump: bool) -> dict:
    file = str(pipe.source)
    name = pipe.codegen.name
    model_path = pipe.resolve(pipe.model.path)
    dump_dir = stage / "stages" if dump else None
    if dump_dir:
        dump_dir.mkdir()

    model = load_model(model_path, batch_size=pipe.model.batch_size, safe_mode=pipe.model.safe_mode,
                       opset=pipe.model.opset)
    if dump_dir:
        save(model, dump_dir / "00_converted.onnx")
    converted_ops = op_counts(model)
    float_proto = ir.serde.serialize_model(model)
    records = run_passes(model, [(p.name, p.options) for p in pipe.passes], base_dir=pipe.source.parent,
                         dump_dir=dump_dir)
    check_model(model)  # every unsupported node, named, before the slow calibration
    in_shape = tuple(int(d) for d in model.graph.inputs[0].shape)

    calib = calibration_batches(pipe.calibration, in_shape[1:], base_dir=pipe.source.parent, yaml_file=file)
    ranges = calibrate(model, calib, method=pipe.calibration.method, percentile=pipe.calibration.percentile,
                       bits=activation_bits(model, pipe.quantization), total=calib.total)
    plan = solve(model, ranges, pipe.quantization)
    qdq = apply_plan(model, plan)
    save(qdq, stage / f"{name}.qdq.onnx")
    if dump_dir:
        save(model, dump_dir / f"{len(records) + 1:02d}_float_final.onnx")
        save(qdq, dump_dir / f"{len(records) + 2:02d}_qdq.onnx")

    program = lower(qdq, name)
    gen = render(program, source=model_path.name)
    c_file, h_file = write(gen, stage, name)
    stack = stack_usage(c_file, name, pipe.codegen.cc)
    if stack is not None:  # the header states it: render again with the figure
        gen = render(program, source=model_path.name, stack=(stack, f"{pipe.codegen.cc} -O2 -fstack-usage, "
                                                                   "host target"))
        c_file, h_file = write(gen, stage, name)

    x, labels = comparison_data(pipe, in_shape[1:])
    n = len(x)

    tin, tout = program.tensors[program.input], program.tensors[program.output]
    in_name = model.graph.inputs[0].name
    float_sess, qdq_sess = session(float_proto), session(qdq, optimize=False)
    y_float = np.stack([float_sess.run(None, {in_name: s.reshape(in_shape)})[0] for s in x])
    y_qdq = np.stack([qdq_sess.run(None, {in_name: s.reshape(in_shape)})[0] for s in x])
    xq = quantize(x, tin.scale, tin.zero_point, tin.dtype).reshape(n, -1)
    y_ref_q = np.stack([run_ref(program, s).reshape(-1) for s in xq])
    y_c_q = compile_and_run(c_file, h_file, name, CTYPE[tin.dtype], CTYPE[tout.dtype], xq, tout.dtype, tout.size,
                            cc=pipe.codegen.cc)
    y_ref = dequantize(y_ref_q, tout.scale, tout.zero_point)
    y_c = dequantize(y_c_q, tout.scale, tout.zero_point)
    mismatches = int(np.sum(np.any(y_c_q != y_ref_q, axis=1)))

    report = {
        "qpass_version": __version__,
        "model": str(model_path),
        "name": name,
        "precision": pipe.quantization.model_dump(),
        "samples": n,
        "comparisons": {
            "qdq_vs_float": metrics(y_float, y_qdq),
            "runtime_ref_vs_float": metrics(y_float, y_ref),
            "c_vs_float": metrics(y_float, y_c),
        },
        "c_equals_runtime_ref": mismatches == 0,
        "layers": per_layer(model, program, x, in_shape),
        "c_mismatched_samples": mismatches,
        "accuracy": None if labels is None else {
            "float": accuracy(y_float, labels), "qdq": accuracy(y_qdq, labels),
            "runtime_ref": accuracy(y_ref, labels), "c": accuracy(y_c, labels)},
        "op_counts": {"converted": converted_ops, "final": op_counts(model)},
        "passes": [{"name": r.name, "modified": r.modified, "seconds": round(r.seconds, 4),
                    "op_counts": r.op_counts} for r in records],
        "memory": {"arena_bytes": gen.arena_bytes, "arena_lower_bound": gen.arena_lower_bound,
                   "arena_naive": gen.arena_naive, "const_bytes": gen.const_bytes, "stack_bytes_host": stack},
        "kernels": [s.kernel for s in program.steps],
        "plan": plan.to_report(),
        "files": sorted(p.name for p in stage.iterdir() if p.is_file()) + [MARKER],
    }
    (stage / MARKER).write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    return report
