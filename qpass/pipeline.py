"""`qpass run`: convert → passes → calibrate → solve → QDQ → lower → C → compare, into one output dir.

Outputs are written to a staging folder next to the output directory and moved into place only when
every stage succeeded, so a failed run never leaves a half-written output directory; what qpass may
replace there, and what it refuses, is qpass/outdir.py's business.
"""

from __future__ import annotations

import gc
import json
import logging
import math
from pathlib import Path

import numpy as np
import onnx
import onnx_ir as ir

from qpass import __version__
from qpass.cache import BuildCache, converted_key, float_key
from qpass.codegen.build import stack_usage
from qpass.codegen.emit import render, write
from qpass.codegen.lower import lower
from qpass.codegen.support import check_model
from qpass.compare import Outputs, comparison_report, per_layer, run_outputs
from qpass.config import Pipeline
from qpass.converters import check_one_input, load_model
from qpass.data import calibration_batches, comparison_data
from qpass.errors import ConfigError
from qpass.ort import ort_errors
from qpass.outdir import MANIFEST, staged_output
from qpass.passes.runner import PassCheck, op_counts, run_passes, save
from qpass.report_warnings import (
    IN_SUMMARY,
    calibration_warnings,
    input_saturation_warnings,
    log_warnings,
    saturation_warnings,
)
from qpass.solver import apply_plan, calibrate, solve
from qpass.solver.calibrate import activation_bits
from qpass.solver.unshare import unshare_constants

log = logging.getLogger(__name__)
REPORT = "report.json"
HTML = "report.html"


def run_pipeline(pipe: Pipeline, *, dump: bool = False, cache: bool = True) -> dict:
    """Run every stage; return the report (also written to OUTPUT_DIR/report.json). With `cache`, the converted
    model and the float graph after the passes are reused from OUTPUT_DIR/.qpass-cache when their key matches."""
    try:
        with staged_output(pipe) as stage:
            report = _run(pipe, stage, dump or pipe.dump, BuildCache.for_run(pipe.output_dir, stage, cache))
    finally:
        gc.unfreeze()
    return report


def _json_safe(value: object) -> object:
    """The report with every non-finite float as null, so report.json is strict JSON."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_safe(v) for v in value]
    return value


def _run(pipe: Pipeline, stage: Path, dump: bool, cache: BuildCache) -> dict:
    # report.json's "warnings": one plain list of one-line strings for the whole run. A stage with
    # something to say appends to it (and logs it); build_report adds the calibration and saturation ones.
    warnings: list[str] = []
    file = str(pipe.source)
    name = pipe.codegen.name
    model_path = pipe.resolve(pipe.model.path)
    dump_dir = stage / "stages" if dump else None
    gates = pipe.gates
    if gates is not None and gates.min_accuracy is not None and not (pipe.compare and pipe.compare.labels_key):
        raise ConfigError(file, "gates.min_accuracy", "needs labels: set compare.labels_key")
    if dump_dir:
        dump_dir.mkdir()

    conv_key = converted_key(pipe)
    model = cache.converted(conv_key)
    if model is None:
        model = load_model(model_path, batch_size=pipe.model.batch_size, safe_mode=pipe.model.safe_mode,
                           opset=pipe.model.opset)
        cache.save_converted(conv_key, model)
    check_one_input(model, model_path)
    if dump_dir:
        save(model, dump_dir / "00_converted.onnx")
    gc.freeze()  # TensorFlow's objects and the model: later collections need not walk them (halves the passes)
    converted_ops = op_counts(model)
    float_proto = ir.serde.serialize_model(model)
    in_shape = tuple(int(d) for d in model.graph.inputs[0].shape)
    x, labels = comparison_data(pipe, in_shape[1:])
    opts = pipe.passes_check
    check = None
    if pipe.passes:
        check = PassCheck.of(float_proto, [s.reshape(in_shape) for s in x[:opts.samples]], tolerance=opts.tolerance,
                             fail=opts.fail, per_pass=opts.per_pass)
    pass_key = float_key(pipe, conv_key)
    hit = None if dump_dir else cache.float_graph(pass_key)  # a dump shows every pass: run them
    if hit is not None:
        model, records = hit
        if check is not None:  # the per-pass figures are the cached run's; the final graph is judged again
            check.measure(model, "the cached passes")
    else:
        records = run_passes(model, [(p.name, p.options) for p in pipe.passes], base_dir=pipe.source.parent,
                             dump_dir=dump_dir, check=check)
        cache.save_float(pass_key, model, records)
    check_model(model)  # every unsupported node, named, before the slow calibration
    gc.freeze()
    unshare_constants(model)
    in_shape = tuple(int(d) for d in model.graph.inputs[0].shape)

    calib = calibration_batches(pipe.calibration, in_shape[1:], base_dir=pipe.source.parent, yaml_file=file)
    with ort_errors("calibration"):
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

    save_float = stage / f"{name}.float.onnx"  # what `qpass compare` compares against, later
    onnx.save(float_proto, str(save_float))
    with ort_errors("the comparison"):
        outputs = run_outputs(float_proto, qdq, program, c_file, h_file, x, in_shape, cc=pipe.codegen.cc)
        layer_samples = pipe.compare.layer_samples if pipe.compare is not None else None
        layers = per_layer(model, program, x, in_shape, {k: (r.lo, r.hi) for k, r in ranges.items()},
                           samples=layer_samples)
    report = build_report(pipe, model_path, name, program, outputs, labels, layers, ranges,
                          model.graph.inputs[0].name, x, warnings)
    report.update({
        "converter": next((p.value for p in float_proto.metadata_props if p.key == "qpass.converter"), None),
        "op_counts": {"converted": converted_ops, "final": op_counts(model)},
        "passes": [{"name": r.name, "modified": r.modified, "seconds": round(r.seconds, 4),
                    "op_counts": r.op_counts, "max_deviation": r.max_deviation} for r in records],
        "passes_check": None if check is None else {
            "max_deviation": max((r.max_deviation for r in records if r.max_deviation is not None), default=0.0),
            "output_range": check.scale, "tolerance": check.tolerance, "samples": len(check.inputs)},
        "memory": {"arena_bytes": gen.arena_bytes, "arena_lower_bound": gen.arena_lower_bound,
                   "arena_naive": gen.arena_naive, "const_bytes": gen.const_bytes, "stack_bytes_host": stack},
        "plan": plan.to_report(),
        "cache": cache.used,
        "files": [],
    })
    if check is not None and check.warnings:
        report["warnings"].extend(check.warnings)  # the runner logged them
    report["gates"] = check_gates(pipe, report)
    from qpass.report_html import write_html

    write_html(report, outputs, program, labels, stage / HTML)
    report["files"] = sorted({p.name for p in stage.iterdir() if p.is_file()} | {REPORT, MANIFEST})
    (stage / REPORT).write_text(json.dumps(_json_safe(report), indent=2, allow_nan=False) + "\n", encoding="utf-8")
    return report


def output_unit(program) -> str:
    """What the network's output values are, for labelling errors."""
    return "softmax probability" if program.steps and program.steps[-1].kernel == "softmax" else \
        "output value (e.g. logits)"


def build_report(pipe: Pipeline, model_path: Path, name: str, program, outputs: Outputs, labels, layers: list[dict],
                 ranges: dict, input_name: str, x: np.ndarray, warnings: list[str]) -> dict:
    """The report's comparison, per-layer and warnings part; adds (and logs) the calibration and
    saturation warnings to the run's `warnings` list, which becomes report["warnings"]."""
    tin = program.tensors[program.input]
    found = calibration_warnings(ranges, input_name, layers) + \
        input_saturation_warnings(x, tin.scale, tin.zero_point, tin.dtype, input_name) + saturation_warnings(layers)
    log_warnings(found)
    warnings.extend(found)
    return {
        "qpass_version": __version__,
        "model": str(model_path),
        "name": name,
        "precision": pipe.quantization.model_dump(),
        **comparison_report(outputs, labels, x),
        "output_unit": output_unit(program),
        "layers": layers,
        "kernels": [s.kernel for s in program.steps],
        "warnings": warnings,
    }


def check_gates(pipe: Pipeline, report: dict) -> dict | None:
    """The YAML's quality gates against the C's figures: {gate: {limit, value, passed}}; None without gates."""
    if pipe.gates is None:
        return None
    limits = {k: v for k, v in pipe.gates.model_dump().items() if v is not None and v is not False}
    return gate_results(limits, report)


def gate_results(limits: dict, report: dict) -> dict:
    """Each gate's limit, the C's value in `report` and whether it passed; failures are logged."""
    c = report["comparisons"]["c_vs_float"]
    values = {"min_argmax_agreement": c["argmax_agreement"], "max_abs_error": c["max_abs_error"],
              "min_accuracy": (report.get("accuracy") or {}).get("c"),
              "c_equals_runtime_ref": report["c_equals_runtime_ref"]}
    out = {}
    for k, limit in limits.items():
        value = values[k]
        if value is None:
            passed = False
        elif k.startswith("min_"):
            passed = value >= limit
        elif k.startswith("max_"):
            passed = value <= limit
        else:
            passed = value == limit
        out[k] = {"limit": limit, "value": value, "passed": bool(passed)}
        if not passed:
            log.warning("quality gate %s failed: %s against a limit of %s", k, value, limit, extra=IN_SUMMARY)
    return out


def gates_passed(report: dict) -> bool:
    return all(g["passed"] for g in (report.get("gates") or {}).values())
