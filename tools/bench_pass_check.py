"""What checking every pass costs: the float passes of each example with and without the runner's checks.

    python tools/bench_pass_check.py [PIPELINE_YAML ...]     # default: every examples/*/pipeline.yaml

For each pipeline: convert the model once (qpass.converters.load_model), then run its passes three times
on a fresh copy (qpass.passes.runner.run_passes): with no numerical check, with the check after every pass
(`passes_check.per_pass: true`, the default) and after the last pass only. Each row gives the wall-clock
seconds (best of `--repeat`), the part spent in graph validation (checker + strict shape inference, which
runs in every mode), the number of nodes of the final graph, and the largest output deviation measured on
`passes_check.samples` comparison samples. The machine's load shows in the seconds: compare rows of one run.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import onnx_ir as ir

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from qpass.config import load_pipeline  # noqa: E402
from qpass.converters import load_model  # noqa: E402
from qpass.data import comparison_data  # noqa: E402
from qpass.passes import runner  # noqa: E402


def measure(yaml_path: Path, repeat: int) -> list[str]:
    pipe = load_pipeline(yaml_path)
    converted = load_model(pipe.resolve(pipe.model.path), batch_size=pipe.model.batch_size,
                           safe_mode=pipe.model.safe_mode, opset=pipe.model.opset)
    proto = ir.serde.serialize_model(converted)
    shape = tuple(int(d) for d in converted.graph.inputs[0].shape)
    x, _ = comparison_data(pipe, shape[1:])
    inputs = [s.reshape(shape) for s in x[:pipe.passes_check.samples]]
    entries = [(p.name, p.options) for p in pipe.passes]
    spent = [0.0]
    validate = runner.validate

    def timed(model: ir.Model, name: str) -> None:
        start = time.perf_counter()
        validate(model, name)
        spent[0] += time.perf_counter() - start

    rows = []
    runner.validate = timed
    try:
        for mode in ("none", "per pass", "last only"):
            best = None
            for _ in range(repeat):
                model = ir.serde.deserialize_model(proto)
                spent[0] = 0.0
                start = time.perf_counter()
                check = None if mode == "none" else runner.PassCheck.of(proto, inputs, per_pass=mode == "per pass")
                records = runner.run_passes(model, entries, base_dir=pipe.source.parent, check=check)
                total = time.perf_counter() - start
                if best is None or total < best[0]:
                    best = (total, spent[0], len(model.graph), records[-1].max_deviation if records else None)
            total, valid, nodes, dev = best
            dev_text = "-" if dev is None else f"{dev:.3g}"
            rows.append(f"{yaml_path.parent.name:<10} {mode:<10} {total:>8.2f} s {valid:>8.2f} s {nodes:>7} "
                        f"{dev_text:>10}")
    finally:
        runner.validate = validate
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("pipelines", nargs="*", type=Path)
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args()
    paths = args.pipelines or sorted(ROOT.glob("examples/*/pipeline.yaml"))
    print(f"{'example':<10} {'check':<10} {'passes':>10} {'validate':>10} {'nodes':>7} {'max dev':>10}")
    for path in paths:
        for row in measure(path, args.repeat):
            print(row)


if __name__ == "__main__":
    main()
