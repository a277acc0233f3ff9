"""Arena planning on every example: no two tensors alive at the same moment share a byte.

The programs come from the session's example runs (conftest `example_run`, shared with the example tests):
lowered again from each run's NAME.qdq.onnx, as `qpass compare` does."""

from __future__ import annotations

from pathlib import Path

import onnx_ir as ir
import pytest

from qpass.codegen.arena import check_plan, plan_arena
from qpass.codegen.lower import lower
from qpass.runtime_ref.program import Program, QTensor, Step

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = sorted(p.parent.name for p in (ROOT / "examples").glob("*/pipeline.yaml"))


@pytest.mark.parametrize("example", EXAMPLES)
def test_example_arena_plan_never_overlaps_live_tensors(example: str, example_run) -> None:
    report, out = example_run(example)
    program = lower(ir.load(str(out / f"{report['name']}.qdq.onnx")), report["name"])
    plan = plan_arena(program)
    assert check_plan(plan) == []
    assert plan.lower_bound <= plan.size <= plan.naive
    for tid, off in plan.offsets.items():
        assert off % 4 == 0 and off + plan.sizes[tid] <= plan.size


def test_check_plan_catches_an_overlap() -> None:
    t = {f"t{i}": QTensor(f"t{i}", (8,), "int8", 1.0, 0) for i in range(4)}
    steps = [Step("clamp", ["t0"], ["t1"], {}), Step("clamp", ["t1"], ["t2"], {}),
             Step("add", ["t1", "t2"], ["t3"], {})]
    plan = plan_arena(Program("p", t, steps, "t0", "t3"))
    assert check_plan(plan) == []
    plan.offsets["t2"] = plan.offsets["t1"]  # t1 is still read by the add while t2 lives
    assert check_plan(plan) != []


def test_in_place_kernels_reuse_their_input_bytes() -> None:
    t = {f"t{i}": QTensor(f"t{i}", (64,), "int8", 1.0, 0) for i in range(5)}
    steps = [Step("clamp", ["t0"], ["t1"], {}), Step("lut", ["t1"], ["t2"], {}), Step("lut", ["t2"], ["t3"], {}),
             Step("clamp", ["t3"], ["t4"], {})]
    plan = plan_arena(Program("p", t, steps, "t0", "t4"))
    assert plan.size == 64 and plan.naive == 3 * 64
