"""`qpass run`: convert → passes → calibrate → solve → QDQ → lower → C → compare, into one output dir.

Outputs are written to a staging folder next to the output directory and moved into place only when
every stage succeeded, so a failed run never leaves a half-written output directory.

The output folder is qpass's only when it holds a manifest (`.qpass-manifest.json`) listing every file
and folder a run wrote there: a later run replaces exactly those, and refuses a folder holding anything
else. It can never be the YAML's folder, the model's, a data file's, or a parent of one of them.
"""

from __future__ import annotations

import gc
import json
import logging
import math
import os
import shutil
import uuid
from pathlib import Path

import numpy as np
import onnx
import onnx_ir as ir

from qpass import __version__
from qpass.cache import CACHE_DIR, BuildCache, converted_key, float_key
from qpass.codegen.build import stack_usage
from qpass.codegen.emit import render, write
from qpass.codegen.lower import lower
from qpass.compare import Outputs, comparison_report, per_layer, run_outputs
from qpass.config import Pipeline
from qpass.converters import check_one_input, load_model
from qpass.data import calibration_batches, callable_spec, comparison_data
from qpass.errors import ConfigError
from qpass.ort import ort_errors
from qpass.passes.runner import PassCheck, op_counts, run_passes, save
from qpass.report_warnings import (
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
MANIFEST = ".qpass-manifest.json"
KEY = "codegen.output_dir"


def qpass_owned_names() -> tuple[str, ...]:
    """Top-level names in an output folder that are qpass's own whatever the manifest lists (whole subtrees)."""
    return (MANIFEST, CACHE_DIR)


HTML = "report.html"


def run_pipeline(pipe: Pipeline, *, dump: bool = False, cache: bool = True) -> dict:
    """Run every stage; return the report (also written to OUTPUT_DIR/report.json). With `cache`, the converted
    model and the float graph after the passes are reused from OUTPUT_DIR/.qpass-cache when their key matches."""
    out_dir = pipe.output_dir
    file = str(pipe.source)
    check_output_dir(pipe)
    owned = owned_entries(out_dir, file)
    made = _make_parents(out_dir.parent, file)
    clean_stale_staging(out_dir)
    stage = out_dir.parent / f".{out_dir.name}.staging-{uuid.uuid4().hex[:12]}"
    try:
        stage.mkdir()  # normal umask permissions, unlike tempfile.mkdtemp's 0700
        _write_manifest(stage, [], os.getpid())
    except OSError as exc:
        _remove_empty(made)
        raise ConfigError(file, KEY, f"cannot write in {out_dir.parent}: {exc.strerror or exc}") from None
    try:
        report = _run(pipe, stage, dump or pipe.dump, BuildCache.for_run(out_dir, stage, cache))
        _write_manifest(stage, _walk(stage), None)
        _replace_dir(stage, out_dir, owned, file)
    except BaseException:
        shutil.rmtree(stage, ignore_errors=True)
        _remove_empty(made)
        raise
    finally:
        gc.unfreeze()
    return report


def _protected(pipe: Pipeline) -> list[tuple[str, Path]]:
    """(what, folder) pairs the output folder must never be, nor contain."""
    model = pipe.resolve(pipe.model.path)
    out = [("the YAML's folder", pipe.source.parent.resolve()),
           ("the model's folder", model if model.is_dir() else model.parent)]
    for key, section in (("calibration", pipe.calibration), ("compare", pipe.compare)):
        if section is None:
            continue
        spec = callable_spec(section.path)
        if spec is None:
            out.append((f"the folder of {key}.path", pipe.resolve(section.path).parent))
        elif spec[0].endswith(".py"):
            out.append((f"the folder of {key}.path", pipe.resolve(spec[0]).parent))
    for i, entry in enumerate(pipe.passes):
        target = entry.name.rsplit(":", 1)[0]
        if ":" in entry.name and target.endswith(".py"):
            out.append((f"the folder of passes[{i}]", pipe.resolve(target).parent))
    return out


def check_output_dir(pipe: Pipeline) -> None:
    """Refuse an output folder that is, or contains, one of the user's input folders (symlinks resolved)."""
    out_dir = pipe.output_dir.resolve()
    for what, folder in _protected(pipe):
        folder = folder.resolve()
        if folder == out_dir or out_dir in folder.parents:
            where = "is" if folder == out_dir else "contains"
            raise ConfigError(str(pipe.source), KEY, f"{out_dir} {where} {what} ({folder}); qpass replaces its "
                              "output folder on every run: give it a folder of its own, e.g. build/NAME")


def owned_entries(out_dir: Path, file: str) -> list[str]:
    """The relative paths under an existing output folder that a later run may replace (empty when the folder
    does not exist or is empty); ConfigError when it holds anything qpass did not write."""
    if not out_dir.exists():
        return []
    if not out_dir.is_dir():
        raise ConfigError(file, KEY, f"{out_dir} exists and is not a folder; choose another path")
    try:
        present = _walk(out_dir)
    except OSError as exc:
        raise ConfigError(file, KEY, f"cannot read {out_dir}: {exc.strerror or exc}") from None
    if not present:
        return []
    listed = _read_manifest(out_dir, file)
    foreign = [p for p in present if p not in listed and p.split("/")[0] not in qpass_owned_names()]
    if foreign:
        shown = ", ".join(foreign[:3]) + (f" and {len(foreign) - 3} more" if len(foreign) > 3 else "")
        raise ConfigError(file, KEY, f"{out_dir} holds files qpass did not write ({shown}); choose another "
                          "folder or move them away")
    return present


def _read_manifest(out_dir: Path, file: str) -> set[str]:
    path = out_dir / MANIFEST
    refuse = f"{out_dir} is not empty and is not a qpass output directory (no valid {MANIFEST}); choose another " \
             "folder or empty it"
    if not path.is_file():
        raise ConfigError(file, KEY, refuse)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        entries = data["entries"]
    except (OSError, ValueError, KeyError, TypeError):
        raise ConfigError(file, KEY, refuse) from None
    if not isinstance(entries, list) or not all(isinstance(e, str) and _plain(e) for e in entries):
        raise ConfigError(file, KEY, refuse)
    return set(entries)


def _plain(rel: str) -> bool:
    parts = rel.split("/")
    return bool(rel) and not rel.startswith("/") and all(p not in ("", ".", "..") for p in parts)


def _walk(root: Path) -> list[str]:
    """Every file and folder under root, as sorted relative posix paths (symlinks are not followed)."""
    out = []
    for dirpath, dirnames, filenames in os.walk(root):
        rel = Path(dirpath).relative_to(root)
        out += [(rel / n).as_posix() for n in dirnames + filenames]
    return sorted(out)


def _write_manifest(folder: Path, entries: list[str], pid: int | None) -> None:
    data = {"qpass_version": __version__, "entries": sorted(set(entries) | {MANIFEST})}
    if pid is not None:
        data["staging_pid"] = pid
    (folder / MANIFEST).write_text(json.dumps(data, indent=1) + "\n", encoding="utf-8")


def _make_parents(folder: Path, file: str) -> list[Path]:
    """Create folder and its missing parents; return the ones created (deepest first) so a failure can undo."""
    missing = []
    for p in [folder, *folder.parents]:
        if p.exists():
            break
        missing.append(p)
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        _remove_empty(missing)
        raise ConfigError(file, KEY, f"cannot create {folder}: {exc.strerror or exc}") from None
    if not os.access(folder, os.W_OK | os.X_OK):
        raise ConfigError(file, KEY, f"cannot write in {folder}: permission denied")
    return missing


def _remove_empty(folders: list[Path]) -> None:
    for p in folders:  # deepest first
        try:
            p.rmdir()
        except OSError:
            break


def clean_stale_staging(out_dir: Path) -> None:
    """Remove the `.NAME.staging-*` folders a killed run of this output left behind.

    Only folders holding a qpass manifest: a staging folder whose run is no longer alive goes whole (qpass
    made it and everything in it); an old output caught mid-swap loses only what its manifest lists.
    """
    for stale in sorted(out_dir.parent.glob(f".{out_dir.name}.staging-*")):
        try:
            data = json.loads((stale / MANIFEST).read_text(encoding="utf-8"))
            listed = set(data["entries"])
        except (OSError, ValueError, KeyError, TypeError):
            continue
        pid = data.get("staging_pid")
        if isinstance(pid, int):
            if pid != os.getpid() and _alive(pid):
                continue
            log.info("removing %s, left by an interrupted run", stale)
            shutil.rmtree(stale, ignore_errors=True)
        else:
            log.info("removing the old output %s, left by an interrupted run", stale)
            _remove_entries(stale, [p for p in _walk(stale) if p in listed or p.split("/")[0] in qpass_owned_names()])


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:
        return True
    return True


def _remove_entries(root: Path, entries: list[str]) -> None:
    """Remove the listed files and folders under root (deepest first; a folder only once empty), then root."""
    for rel in sorted(entries, key=lambda e: (-e.count("/"), e)):
        p = root / rel
        try:
            if p.is_dir() and not p.is_symlink():
                p.rmdir()
            else:
                p.unlink()
        except FileNotFoundError:
            continue
        except OSError as exc:
            log.warning("left %s in place: %s", p, exc.strerror or exc)
    try:
        root.rmdir()
    except OSError as exc:
        log.warning("left %s in place: %s", root, exc.strerror or exc)


def _replace_dir(new: Path, target: Path, owned: list[str], file: str) -> None:
    """Swap the finished staging folder in; the old output keeps only what its manifest listed, then goes."""
    old = None
    try:
        if target.exists():
            old = target.with_name(f"{new.name}.old")
            target.rename(old)
        new.rename(target)
    except OSError as exc:
        if old is not None and not target.exists():
            old.rename(target)
        raise ConfigError(file, KEY, f"cannot replace {target}: {exc.strerror or exc}") from None
    if old is not None:
        _remove_entries(old, owned)


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
        **comparison_report(outputs, labels),
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
            log.warning("quality gate %s failed: %s against a limit of %s", k, value, limit)
    return out


def gates_passed(report: dict) -> bool:
    return all(g["passed"] for g in (report.get("gates") or {}).values())
