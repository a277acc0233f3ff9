"""The `qpass` command line. The only place that catches qpass errors: one line, exit code 2."""

from __future__ import annotations

import logging
import sys
import traceback
from pathlib import Path

import click

from qpass import __version__
from qpass.errors import QpassError

EXIT_OK, EXIT_GATE_FAILED, EXIT_USER_ERROR = 0, 1, 2
EXIT_CODES = "Exit codes: 0 ok, 1 a quality gate (`gates:` in the YAML) failed, 2 bad input (one line on stderr)."


def one_line(text: object) -> str:
    """A message on one line, whatever it quotes (compiler output, a file name with a newline)."""
    return " | ".join(line.strip() for line in str(text).splitlines() if line.strip())


def _fail(exc: BaseException, debug: bool) -> None:
    if debug:
        traceback.print_exception(exc)
    from qpass.errors import ConfigErrors

    for problem in exc.errors if isinstance(exc, ConfigErrors) else [exc]:  # one line per problem
        click.echo(f"qpass: error: {one_line(problem)}", err=True)
    sys.exit(EXIT_USER_ERROR)


def _set_level(ctx: click.Context, param: click.Parameter, value: bool) -> bool:
    """-v / -q, before or after the subcommand: the last one given wins; --debug wins over both."""
    if value:
        obj = ctx.find_root().ensure_object(dict)
        if not obj.get("debug"):
            obj["level"] = logging.INFO if param.name == "verbose" else logging.ERROR
            logging.getLogger().setLevel(obj["level"])
    return value


def _verbosity(fn):
    fn = click.option("-q", "--quiet", is_flag=True, expose_value=False, callback=_set_level,
                      help="Only errors on stderr; the summary is still printed.")(fn)
    return click.option("-v", "--verbose", is_flag=True, expose_value=False, callback=_set_level,
                        help="Log every stage and pass.")(fn)


@click.group(context_settings={"help_option_names": ["-h", "--help"]}, epilog=EXIT_CODES)
@click.version_option(__version__, "--version", prog_name="qpass", message="%(prog)s %(version)s")
@click.option("--debug", is_flag=True, help="Show full tracebacks and debug logs.")
@_verbosity
@click.pass_context
def main(ctx: click.Context, debug: bool) -> None:
    """qpass: a trained network -> one integer-only C file for microcontrollers.

    \b
    Example:
      qpass init model.h5            # write a commented pipeline.yaml
      qpass run pipeline.yaml        # convert, quantize, generate C, compare
    """
    obj = ctx.ensure_object(dict)
    obj["debug"] = debug
    level = logging.DEBUG if debug else obj.get("level", logging.WARNING)
    root = logging.getLogger()
    if not root.handlers:  # as logging.basicConfig, plus the filter
        handler = logging.StreamHandler()
        handler.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
        if not debug:
            handler.addFilter(_not_in_summary)
        root.addHandler(handler)
    root.setLevel(level)


def _not_in_summary(record: logging.LogRecord) -> bool:
    """Drop a run's warnings and failed gates from stderr: `run` and `compare` print them in their summary on
    stdout, so each is shown once (--debug keeps both)."""
    from qpass.report_warnings import in_summary

    return not in_summary(record)


@main.command(epilog=EXIT_CODES)
@click.argument("pipeline_yaml", type=click.Path(path_type=Path))
@click.option("--dump", is_flag=True, help="Save the graph after every stage as a numbered .onnx file.")
@click.option("--no-cache", is_flag=True, help="Convert and run the passes again; keep no cache in the output.")
@_verbosity
@click.pass_context
def run(ctx: click.Context, pipeline_yaml: Path, dump: bool, no_cache: bool) -> None:
    """Convert, rewrite, quantize, generate C, compile it and compare with onnxruntime float.

    Writes NAME.c, NAME.h, report.json and report.html into codegen.output_dir.

    \b
    Example:
      qpass run examples/har/pipeline.yaml
      qpass run pipeline.yaml -v --dump
    """
    from qpass.config import load_pipeline

    try:
        pipe = load_pipeline(pipeline_yaml)  # every YAML problem before the heavy imports below
        from qpass.pipeline import gates_passed, run_pipeline

        report = run_pipeline(pipe, dump=dump, cache=not no_cache)
    except QpassError as exc:
        _fail(exc, ctx.obj["debug"])
        return
    click.echo(format_report(report, pipe.output_dir))
    if not gates_passed(report):
        sys.exit(EXIT_GATE_FAILED)


@main.command(epilog=EXIT_CODES)
@click.argument("pipeline_yaml", type=click.Path(path_type=Path))
@click.pass_context
def check(ctx: click.Context, pipeline_yaml: Path) -> None:
    """Validate PIPELINE_YAML (keys, files, data shapes, passes) without converting the model.

    Every problem is printed, one line each.

    \b
    Example:
      qpass check examples/har/pipeline.yaml
    """
    from qpass.config import load_pipeline
    from qpass.model_shape import ShapeUnknown, input_shape

    try:
        pipe = load_pipeline(pipeline_yaml)
    except QpassError as exc:
        _fail(exc, ctx.obj["debug"])
        return
    try:
        shape = input_shape(pipe.resolve(pipe.model.path))
    except ShapeUnknown:
        shape = None
    what = "unknown until converted" if shape is None else "(" + ", ".join("N" if d is None else str(d)
                                                                       for d in shape) + ")"
    click.echo(f"qpass: {pipeline_yaml}: ok (model input {what}, {len(pipe.passes)} passes)")


@main.command(epilog=EXIT_CODES)
@click.argument("output_dir", type=click.Path(path_type=Path))
@click.pass_context
def clean(ctx: click.Context, output_dir: Path) -> None:
    """Remove the build cache (OUTPUT_DIR/.qpass-cache: converted model, float graph) of a qpass output.

    \b
    Example:
      qpass clean build/har
    """
    from qpass.cache import CACHE_DIR, clear

    if not (output_dir / "report.json").is_file():
        _fail(QpassError(f"{output_dir} is not a qpass output folder (no report.json); nothing removed"),
              ctx.obj["debug"])
    click.echo(f"removed {output_dir / CACHE_DIR}" if clear(output_dir) else f"{output_dir} has no cache")


STAGES = {"qdq_vs_float": "QDQ sim vs float", "runtime_ref_vs_float": "runtime_ref vs float",
          "c_vs_float": "C vs float"}


def _comparison_lines(report: dict) -> list[str]:
    unit = report.get("output_unit", "output value")
    scores = "score_pearson" in report["comparisons"]["c_vs_float"]  # a reconstruction model
    lines = [f"{'comparison':<22}{'score r/rho' if scores else 'argmax agree':>13}{'max |err|':>11}"
             f"{'mean |err|':>12}{'samples':>9}"]
    for key, m in report["comparisons"].items():
        first = (f"{m['score_pearson']:.3f}/{m['score_spearman']:.3f}" if scores
                 else f"{m['argmax_agreement'] * 100:.2f}%")
        lines.append(f"{STAGES.get(key, key):<22}{first:>13}{m['max_abs_error']:>11.5f}"
                     f"{m['mean_abs_error']:>12.6f}{m['samples']:>9}")
    lines.append(f"  float = onnxruntime on the converted model before any pass; QDQ sim = onnxruntime on the "
                 f"quantize/dequantize graph (the plan simulated in float); errors in {unit} units")
    n = report["samples"]
    ok = n - report["c_mismatched_samples"]
    lines.append(f"C == runtime_ref bit for bit: {'yes' if report['c_equals_runtime_ref'] else 'NO'} "
                 f"({ok}/{n} samples)")
    if report.get("accuracy"):
        acc = report["accuracy"]
        lines.append("test accuracy: " + "  ".join(f"{k} {v * 100:.2f}%" for k, v in acc.items()))
    return lines


def _gate_lines(report: dict) -> list[str]:
    gates = report.get("gates") or {}
    if not gates:
        return []
    failed = [k for k, g in gates.items() if not g["passed"]]
    return [("quality gates: FAILED " if failed else "quality gates: passed ")
            + ", ".join(f"{k} {'ok' if g['passed'] else 'FAILED'} ({g['value']} vs limit {g['limit']})"
                        for k, g in gates.items())]


def format_report(report: dict, out_dir: Path) -> str:
    lines = [f"qpass: {report['name']} -> {out_dir}  ({', '.join(report['files'])})"]
    lines += _comparison_lines(report)
    ops = report["op_counts"]
    lines.append(f"ops: converted {sum(ops['converted'].values())} {ops['converted']}")
    lines.append(f"     final     {sum(ops['final'].values())} {ops['final']}")
    layers = [row for row in report.get("layers", []) if row.get("sqnr_db") is not None]
    if layers:
        worst = sorted(layers, key=lambda row: row["sqnr_db"])[:3]
        lines.append("lowest SQNR: " + ", ".join(f"{w['kernel']} {w['node'][:32]} {w['sqnr_db']:.1f} dB"
                                                   for w in worst)
                     + "  (runtime_ref vs float per kernel: > 30 dB good, < 20 dB loses accuracy)")
    mem = report["memory"]
    lines.append(f"memory: arena {mem['arena_bytes']} B (lower bound {mem['arena_lower_bound']} B, one buffer "
                 f"per tensor {mem['arena_naive']} B), constants {mem['const_bytes']} B")
    lines += _gate_lines(report)
    warnings = report.get("warnings") or []
    lines += [f"warnings ({len(warnings)}):"] + [f"  - {w}" for w in warnings] if warnings else []
    if "report.html" in report.get("files", []):
        lines.append(f"details (per layer, plots, memory plan): {out_dir / 'report.html'}")
    return "\n".join(lines)


@main.command(epilog=EXIT_CODES)
@click.argument("out_dir", type=click.Path(path_type=Path))
@click.option("--data", "data", required=True, type=click.Path(path_type=Path),
              help="New samples: a .npy, or a .npz with --key.")
@click.option("--key", default=None, help="Array name inside the .npz (default: its first array).")
@click.option("--labels-key", default=None, help="Labels array inside the .npz, for test accuracy.")
@click.option("--limit", type=click.IntRange(min=1), default=None, help="Use at most this many samples.")
@click.option("--cc", default="gcc", show_default=True, help="C compiler for the host build.")
@_verbosity
@click.pass_context
def compare(ctx: click.Context, out_dir: Path, data: Path, key: str | None, labels_key: str | None,
            limit: int | None, cc: str) -> None:
    """Re-run the comparison of an existing build (OUT_DIR of `qpass run`) on new data.

    The compiled C and runtime_ref against onnxruntime float, without converting or re-solving. The
    build's quality gates apply to the new figures. Writes nothing.

    \b
    Example:
      qpass compare build/har --data new.npz --key x --labels-key y
    """
    from qpass.compare import compare_build

    try:
        report = compare_build(out_dir, data, key=key, labels_key=labels_key, limit=limit, cc=cc)
    except QpassError as exc:
        _fail(exc, ctx.obj["debug"])
        return
    lines = [f"qpass compare: {report['name']} ({out_dir}) on {data}"] + _comparison_lines(report) + \
        _gate_lines(report)
    click.echo("\n".join(lines))
    if not all(g["passed"] for g in (report["gates"] or {}).values()):
        sys.exit(EXIT_GATE_FAILED)


@main.command("passes")
@click.argument("pipeline_yaml", required=False, type=click.Path(path_type=Path))
@_verbosity
@click.pass_context
def list_passes(ctx: click.Context, pipeline_yaml: Path | None) -> None:
    """List every registered pass with its summary and options.

    Given PIPELINE_YAML, also the user passes it names (`file.py:Class`, `module:Class`).

    \b
    Example:
      qpass passes
      qpass passes examples/custom_pass/pipeline.yaml
    """
    from importlib.metadata import entry_points

    from qpass.catalog import OptionInfo, builtin_catalog

    # built-in passes are read from their source (no onnx_ir import); plug-ins and a YAML's passes are loaded
    rows = {name: (info.summary, list(info.options)) for name, info in builtin_catalog().items()}
    if not entry_points(group="qpass.passes") and pipeline_yaml is None:
        _print_passes(rows)
        return
    from qpass.passes import registered_passes, resolve_pass

    try:
        registry = registered_passes()
        if pipeline_yaml is not None:
            from qpass.config import load_pipeline

            pipe = load_pipeline(pipeline_yaml)
            for entry in pipe.passes:
                if entry.name not in registry:
                    registry[entry.name] = resolve_pass(entry.name, base_dir=pipe.source.parent)
    except QpassError as exc:
        _fail(exc, ctx.obj["debug"])
        return
    for name, cls in registry.items():
        rows.setdefault(name, (cls.summary(), [OptionInfo(opt, f.default, f.description or "")
                                               for opt, f in cls.Options.model_fields.items()]))
    _print_passes(rows)


def _print_passes(rows: dict) -> None:
    for name, (summary, options) in sorted(rows.items()):
        click.echo(f"{name:<18} {summary}")
        for opt in options:
            default = opt.default if opt.default is not None else "none"
            click.echo(f"{'':<20}{opt.name} = {default!r}  {opt.description}".rstrip())


@main.command("ops")
def list_ops() -> None:
    """Print the supported layers (ONNX op, Keras, PyTorch, constraints, precisions) as a Markdown table."""
    from qpass.codegen.support import markdown_table

    click.echo(markdown_table(), nl=False)


STARTER = """\
# qpass pipeline written by `qpass init`. Paths are relative to this file. Run: qpass run <this file>
model:
  path: {model}
  safe_mode: true        # load Keras models without running Lambda code
  batch_size: 1          # the batch dimension the C is generated for

calibration:             # representative inputs shaped (N, {shape}): .npy, .npz, or module:function
  path: calib.npz
  key: x                 # array name inside the .npz
  limit: 500             # use at most this many samples
  method: minmax         # minmax | percentile | mse

passes:                  # float graph rewrites, in order (`qpass passes` lists them); each is a
  - strip-dropout        # no-op on a graph it does not apply to
  - fold-constants
  - div-to-mul           # a Div by a constant (PyTorch's GELU) as a Mul
  - fold-softplus-threshold  # PyTorch's Softplus threshold (Where/Greater) folded away
  - squeeze-conv2d
  - simplify-layout
  - fold-pad             # a zero Pad (Keras causal padding) into the Conv after it
  - fold-batchnorm
  - keras-lstm
  - keras-gru
  - keras-rnn
  - roll-rnn             # PyTorch's dynamo export of nn.RNN: its unrolled steps back into one RNN
  - fold-reverse-sequence  # go_backwards / Bidirectional halves run as reverse recurrences
  - fold-constants       # again: Shape chains behind a Keras GRU/SimpleRNN Loop (an .onnx with batch None)
  - simplify-layout
  - fold-time-distributed
  - unroll-lstm
  - unroll-gru
  - unroll-rnn
  - matmul-to-gemm
  - fuse-gelu            # an erf/tanh GELU chain (Keras gelu) into one Gelu table
  - simplify-layout
  # - my_passes.py:MyPass  # a pass of your own, from a file next to this one

quantization:
  activations: int8      # int8 (asymmetric) | int16 (symmetric)
  weights: int8          # int8 | int16 (symmetric)
  per_channel: true
  requant: multiplier    # multiplier | pow2 (shift-only rescales: cheapest on a Cortex-M0)
  # input_range: [-1.0, 1.0]   # pin the input's real range instead of calibrating it
  # overrides:                 # mixed precision, first match wins
  #   - {{match: "op:LSTM", activations: int16}}

codegen:
  name: {name}           # C prefix: {name}_run(), {name}.c, {name}.h
  output_dir: {output_dir}  # qpass's own folder: replaced on every run (never the model's or the data's folder)

compare:                 # held-out data: onnxruntime float vs QDQ vs runtime_ref vs C
  path: test.npz
  key: x
  labels_key: y          # optional, for test accuracy
"""


@main.command(epilog=EXIT_CODES)
@click.argument("model", type=click.Path(exists=True, path_type=Path))
@click.option("-o", "--output", type=click.Path(path_type=Path), default=None,
              help="Where to write the YAML (default: pipeline.yaml next to the model).")
@click.option("--force", is_flag=True, help="Overwrite an existing file.")
@_verbosity
@click.pass_context
def init(ctx: click.Context, model: Path, output: Path | None, force: bool) -> None:
    """Write a commented starter pipeline.yaml for MODEL.

    \b
    Example:
      qpass init model.h5 -o pipeline.yaml
    """
    import re

    output = output or model.parent / "pipeline.yaml"
    if output.exists() and not force:
        _fail(QpassError(f"{output} exists; pass --force to overwrite it"), ctx.obj["debug"])
    name = re.sub(r"[^A-Za-z0-9_]", "_", model.stem) or "model"
    if not re.match(r"[A-Za-z_]", name):
        name = "m_" + name
    shape = "..."
    from qpass.model_shape import ShapeUnknown, input_shape

    try:  # read from the file, not converted: seconds, not a minute
        dims = input_shape(model)
        if dims is None:
            click.echo("qpass: warning: a SavedModel does not state its input shape; fill it in", err=True)
        else:
            shape = ", ".join("?" if d is None else str(d) for d in dims[1:])
    except ShapeUnknown as exc:
        click.echo(f"qpass: warning: could not read the input shape: {one_line(exc)}", err=True)
    rel = Path(__import__("os").path.relpath(model.resolve(), output.resolve().parent))
    try:
        output.write_text(starter_yaml(rel.as_posix(), name[:40], shape), encoding="utf-8")
    except OSError as exc:
        _fail(QpassError(f"cannot write {output}: {exc.strerror or exc}"), ctx.obj["debug"])
    click.echo(f"wrote {output}")


def yaml_scalar(value: str) -> str:
    """`value` as one double-quoted YAML scalar on one line, written by the YAML library (no injection)."""
    import yaml

    text = yaml.safe_dump(value, default_style='"', width=float("inf"), allow_unicode=False).strip()
    if "\n" in text or yaml.safe_load(text) != value:  # cannot happen with double quotes; never write it if so
        raise QpassError(f"cannot write {value!r} as a YAML scalar")
    return text


def starter_yaml(model_path: str, name: str, shape: str) -> str:
    """The starter pipeline.yaml: fixed comments; the model path goes through the YAML library, the name and
    shape are sanitized (an identifier, digits) before they reach a comment."""
    return STARTER.format(model=yaml_scalar(model_path), name=name, output_dir=yaml_scalar(f"build/{name}"),
                          shape=shape)


if __name__ == "__main__":
    main()
