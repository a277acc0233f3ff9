"""Issue 13 figures for the 2-D examples: per example and precision, accuracy against the float model, memory.

    python tools/figures_2d.py [--examples kws resnet8] [--precisions a8w8 a16w8]

Runs each example's pipeline (a copy, into a temporary folder) and prints, from its report.json: argmax agreement
and max |error| of the C against onnxruntime float, the arena against its live-tensor lower bound, whether the
input has its slot in the arena (NAME_INPUT_OFFSET: no input buffer of its own), the constant bytes, and what a
per-layer im2col buffer would have cost (the largest [C_in/groups·KH·KW, H_out·W_out] patch matrix of the 2-D
convolutions with a kernel above 1x1, in activation bytes: the scratch an im2col + GEMM kernel adds on top of the
arena; qpass's conv2d needs none). Writes nothing outside the temporary folder.
"""

from __future__ import annotations

import argparse
import re
import shutil
import tempfile
from pathlib import Path

from qpass.codegen.lower import lower
from qpass.config import load_pipeline
from qpass.pipeline import run_pipeline

ROOT = Path(__file__).resolve().parents[1]
ACTS = {"a8w8": "int8", "a16w8": "int16"}


def im2col_bytes(qdq_path: Path, name: str, act_bytes: int) -> int:
    """The largest im2col patch matrix of the program's non-pointwise conv2d steps, in bytes."""
    import onnx_ir as ir

    program = lower(ir.load(str(qdq_path)), name)
    sizes = [0]
    for s in program.steps:
        if s.kernel == "conv2d":
            d = [int(v) for v in s.params["dims"]]
            if d[6] * d[7] > 1:
                sizes.append((d[0] // d[14]) * d[6] * d[7] * d[4] * d[5])
    return max(sizes) * act_bytes


def figures(example: str, precision: str, work: Path) -> dict:
    folder = work / f"{example}_{precision}"
    shutil.copytree(ROOT / "examples" / example, folder)
    yaml = folder / "pipeline.yaml"
    text = re.sub(r"output_dir: .*", "output_dir: out", yaml.read_text())
    yaml.write_text(text.replace("activations: int8", f"activations: {ACTS[precision]}"))
    report = run_pipeline(load_pipeline(yaml))
    c, mem = report["comparisons"]["c_vs_float"], report["memory"]
    name = report["name"]
    in_arena = f"#define {name.upper()}_INPUT_OFFSET " in (folder / "out" / f"{name}.h").read_text()
    return {"in_arena": in_arena,
            "example": example, "precision": precision, "agree": c["argmax_agreement"], "max_err": c["max_abs_error"],
            "samples": c["samples"], "bit_exact": report["c_equals_runtime_ref"], "arena": mem["arena_bytes"],
            "bound": mem["arena_lower_bound"], "const": mem["const_bytes"], "stack": mem.get("stack_bytes_host"),
            "im2col": im2col_bytes(folder / "out" / f"{name}.qdq.onnx", name, 1 if precision == "a8w8" else 2)}


def main(argv: list[str] | None = None) -> list[dict]:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--examples", nargs="+", default=["kws", "resnet8"])
    ap.add_argument("--precisions", nargs="+", default=list(ACTS), choices=list(ACTS))
    args = ap.parse_args(argv)
    rows = []
    with tempfile.TemporaryDirectory(prefix="qpass-fig2d-") as tmp:
        for ex in args.examples:
            for prec in args.precisions:
                rows.append(figures(ex, prec, Path(tmp)))
    print("| example | precision | argmax agree | max abs err | samples | C == runtime_ref | arena B | lower bound B "
          "| arena / bound | input in arena | constants B | host stack B | im2col buffer B |")
    print("|---|---|---:|---:|---:|---|---:|---:|---:|---|---:|---:|---:|")
    for r in rows:
        print(f"| {r['example']} | {r['precision']} | {100 * r['agree']:.2f}% | {r['max_err']:.4f} | {r['samples']} | "
              f"{'yes' if r['bit_exact'] else 'NO'} | {r['arena']:,} | {r['bound']:,} | "
              f"{r['arena'] / max(r['bound'], 1):.3f} | {'yes' if r['in_arena'] else 'no'} | {r['const']:,} | "
              f"{r['stack']} | {r['im2col']:,} |")
    return rows


if __name__ == "__main__":
    main()
