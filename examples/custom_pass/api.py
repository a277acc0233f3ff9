"""The Python API, runnable: `python examples/custom_pass/api.py [OUTPUT_DIR]`.

1. A pass used directly on an onnx_ir model (no YAML): convert, apply built-in passes and the custom one.
2. A pipeline read from YAML, changed in Python, and run: the same report `qpass run` writes.
"""

from __future__ import annotations

import sys
from pathlib import Path

import qpass
from qpass.converters import load_model
from qpass.passes import resolve_pass
from qpass.passes.runner import op_counts, run_passes

HERE = Path(__file__).resolve().parent


def main(output_dir: str) -> dict:
    # 1. passes on an onnx_ir model: one at a time, or several through the runner (which also cleans up)
    model = load_model(HERE.parent / "digits" / "digits.h5")
    fold = resolve_pass("fold-constants")()  # a pass instance is a callable: model -> PassResult
    print("fold-constants modified the model:", fold(model).modified)
    run_passes(model, [("fold-batchnorm", {}), ("matmul-to-gemm", {}), ("short_names.py:ShortNamesPass", {})],
               base_dir=HERE)
    print("ops:", op_counts(model), "nodes:", [n.name for n in model.graph])

    # 2. a whole pipeline from Python
    pipe = qpass.Pipeline.from_yaml(HERE / "pipeline.yaml")
    pipe.codegen.output_dir = str(Path(output_dir).resolve())
    report = qpass.run(pipe)
    c = report["comparisons"]["c_vs_float"]
    print(f"C vs float: argmax agreement {c['argmax_agreement']:.4f}, max |err| {c['max_abs_error']:.4f} "
          f"({report['output_unit']}); warnings: {len(report['warnings'])}")
    return report


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else str(HERE.parents[1] / "build" / "custom_pass_api"))
