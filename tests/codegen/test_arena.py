"""Arena planning on every example: no two tensors alive at the same moment share a byte.

The programs come from the session's example runs (conftest `example_run`, shared with the example tests):
lowered again from each run's NAME.qdq.onnx, as `qpass compare` does."""

from __future__ import annotations

from pathlib import Path

import onnx_ir as ir
import pytest

from qpass.codegen.arena import check_plan, plan_arena, plan_memory
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


def _chain(sizes: list[int]) -> Program:
    """t0 → linear-like steps through tensors of the given sizes (t0 is the program input)."""
    t = {f"t{i}": QTensor(f"t{i}", (n,), "int8", 1.0, 0) for i, n in enumerate(sizes)}
    steps = [Step("add", [f"t{i}"], [f"t{i + 1}"], {}) for i in range(len(sizes) - 1)]
    return Program("p", t, steps, "t0", f"t{len(sizes) - 1}")


def test_input_gets_an_arena_slot_only_where_bytes_are_free() -> None:
    # t0 (16 B) is read by step 0 only; the peak (t1 + t2 = 128 B, step 1) leaves room for it at step 0
    fits = _chain([16, 64, 64, 64, 8])
    plan = plan_memory(fits)
    assert plan.input_offset is not None and plan.size == plan_arena(fits).size == 128
    assert "t0" in plan.offsets and check_plan(plan) == [] and plan.lower_bound == 128
    # a 200 B input is alive with t1 (64 B): 264 B > 128 B, so it stays in the caller's buffer
    big = _chain([200, 64, 64, 64, 8])
    plan = plan_memory(big)
    assert plan.input_offset is None and "t0" not in plan.offsets and plan.size == 128


def test_a_widening_table_does_not_run_in_place() -> None:
    # an int8 -> int16 lut writes 2 bytes per element: given its input's bytes, it would clobber unread inputs
    t = {"t0": QTensor("t0", (64,), "int8", 1.0, 0), "t1": QTensor("t1", (64,), "int8", 1.0, 0),
         "t2": QTensor("t2", (64,), "int16", 1.0, 0), "t3": QTensor("t3", (8,), "int16", 1.0, 0)}
    steps = [Step("clamp", ["t0"], ["t1"], {}), Step("lut", ["t1"], ["t2"], {}), Step("add", ["t2"], ["t3"], {})]
    plan = plan_arena(Program("p", t, steps, "t0", "t3"))
    assert check_plan(plan) == [] and plan.lifetimes["t1"][1] == 3  # t1 lives through the lut's write
    assert plan.size == 64 + 128
