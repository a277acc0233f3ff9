"""The `qpass` command line. The only place that catches qpass errors: one line, exit code 2."""

from __future__ import annotations

import logging
import sys
import traceback
from pathlib import Path

import click

from qpass.errors import QpassError

EXIT_USER_ERROR = 2


def _fail(exc: BaseException, debug: bool) -> None:
    if debug:
        traceback.print_exception(exc)
    click.echo(f"qpass: error: {exc}", err=True)
    sys.exit(EXIT_USER_ERROR)


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--debug", is_flag=True, help="Show full tracebacks and debug logs.")
@click.option("-v", "--verbose", is_flag=True, help="Log every stage and pass.")
@click.pass_context
def main(ctx: click.Context, debug: bool, verbose: bool) -> None:
    """qpass: a trained network -> one integer-only C file for microcontrollers."""
    ctx.obj = {"debug": debug}
    level = logging.DEBUG if debug else logging.INFO if verbose else logging.WARNING
    logging.basicConfig(level=level, format="%(levelname)s %(name)s: %(message)s")


@main.command()
@click.argument("pipeline_yaml", type=click.Path(path_type=Path))
@click.option("--dump", is_flag=True, help="Save the graph after every stage as a numbered .onnx file.")
@click.pass_context
def run(ctx: click.Context, pipeline_yaml: Path, dump: bool) -> None:
    """Convert, rewrite, quantize, generate C, compile it and compare with onnxruntime float."""
    from qpass.config import load_pipeline
    from qpass.pipeline import run_pipeline

    try:
        pipe = load_pipeline(pipeline_yaml)
        report = run_pipeline(pipe, dump=dump)
    except QpassError as exc:
        _fail(exc, ctx.obj["debug"])
        return
    click.echo(format_report(report, pipe.output_dir))


def format_report(report: dict, out_dir: Path) -> str:
    lines = [f"qpass: {report['name']} -> {out_dir}  ({', '.join(report['files'])})",
             f"{'comparison':<22}{'argmax agree':>13}{'max |err|':>11}{'mean |err|':>12}{'samples':>9}"]
    labels = {"qdq_vs_float": "QDQ sim vs float", "runtime_ref_vs_float": "runtime_ref vs float",
              "c_vs_float": "C vs float"}
    for key, m in report["comparisons"].items():
        lines.append(f"{labels.get(key, key):<22}{m['argmax_agreement'] * 100:>12.2f}%{m['max_abs_error']:>11.5f}"
                     f"{m['mean_abs_error']:>12.6f}{m['samples']:>9}")
    n = report["samples"]
    ok = n - report["c_mismatched_samples"]
    lines.append(f"C == runtime_ref bit for bit: {'yes' if report['c_equals_runtime_ref'] else 'NO'} "
                 f"({ok}/{n} samples)")
    if report.get("accuracy"):
        acc = report["accuracy"]
        lines.append("test accuracy: " + "  ".join(f"{k} {v * 100:.2f}%" for k, v in acc.items()))
    ops = report["op_counts"]
    lines.append(f"ops: converted {sum(ops['converted'].values())} {ops['converted']}")
    lines.append(f"     final     {sum(ops['final'].values())} {ops['final']}")
    layers = [row for row in report.get("layers", []) if row["sqnr_db"] != float("inf")]
    if layers:
        worst = sorted(layers, key=lambda row: row["sqnr_db"])[:3]
        lines.append("lowest SQNR: " + ", ".join(f"{w['kernel']} {w['node'][:32]} {w['sqnr_db']:.1f} dB"
                                                   for w in worst))
    mem = report["memory"]
    lines.append(f"memory: arena {mem['arena_bytes']} B (lower bound {mem['arena_lower_bound']} B, one buffer "
                 f"per tensor {mem['arena_naive']} B), constants {mem['const_bytes']} B")
    return "\n".join(lines)


@main.command("passes")
@click.pass_context
def list_passes(ctx: click.Context) -> None:
    """List every registered pass with its summary and options."""
    from qpass.passes import registered_passes

    try:
        registry = registered_passes()
    except QpassError as exc:
        _fail(exc, ctx.obj["debug"])
        return
    for name, cls in sorted(registry.items()):
        click.echo(f"{name:<18} {cls.summary()}")
        for opt, field in cls.Options.model_fields.items():
            default = field.default if field.default is not None else "none"
            click.echo(f"{'':<20}{opt} = {default!r}  {field.description or ''}".rstrip())


STARTER = """\
# qpass pipeline for {model}. Paths are relative to this file. `qpass run {yaml}`
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
  - squeeze-conv2d
  - simplify-layout
  - fold-batchnorm
  - keras-lstm
  - fold-reverse-sequence  # go_backwards / Bidirectional halves run as reverse recurrences
  - simplify-layout
  - fold-time-distributed
  - unroll-lstm
  - matmul-to-gemm
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
  output_dir: build/{name}

compare:                 # held-out data: onnxruntime float vs QDQ vs runtime_ref vs C
  path: test.npz
  key: x
  labels_key: y          # optional, for test accuracy
"""


@main.command()
@click.argument("model", type=click.Path(exists=True, path_type=Path))
@click.option("-o", "--output", type=click.Path(path_type=Path), default=None,
              help="Where to write the YAML (default: pipeline.yaml next to the model).")
@click.option("--force", is_flag=True, help="Overwrite an existing file.")
@click.pass_context
def init(ctx: click.Context, model: Path, output: Path | None, force: bool) -> None:
    """Write a commented starter pipeline.yaml for MODEL."""
    import re

    output = output or model.parent / "pipeline.yaml"
    if output.exists() and not force:
        _fail(QpassError(f"{output} exists; pass --force to overwrite it"), ctx.obj["debug"])
    name = re.sub(r"[^A-Za-z0-9_]", "_", model.stem) or "model"
    if not re.match(r"[A-Za-z_]", name):
        name = "m_" + name
    shape = "..."
    try:
        from qpass.converters import load_model

        m = load_model(model)
        shape = ", ".join(str(d) for d in list(m.graph.inputs[0].shape)[1:])
    except QpassError as exc:
        click.echo(f"qpass: warning: could not read the input shape: {exc}", err=True)
    rel = Path(__import__("os").path.relpath(model.resolve(), output.resolve().parent))
    output.write_text(STARTER.format(model=rel.as_posix(), yaml=output.name, name=name[:40], shape=shape))
    click.echo(f"wrote {output}")


if __name__ == "__main__":
    main()
