"""Static memory planning: place every activation in one arena, reusing bytes once a tensor is dead.

Lifetimes are step intervals [first write, last read]; tensors are placed largest first at the lowest
offset that overlaps no tensor whose lifetime intersects (first fit). Views share their root's bytes;
the program input and output live in the caller's buffers, not in the arena.
"""

from __future__ import annotations

from dataclasses import dataclass

from qpass.runtime_ref.program import Program

ALIGN = 4
BYTES = {"int8": 1, "int16": 2, "int32": 4, "float32": 4}  # float32: the float C baseline (float_c.py)


@dataclass
class ArenaPlan:
    offsets: dict[str, int]
    size: int
    lifetimes: dict[str, tuple[int, int]]
    sizes: dict[str, int]


def _align(n: int) -> int:
    return (n + ALIGN - 1) // ALIGN * ALIGN


def plan_arena(program: Program) -> ArenaPlan:
    external = {program.root(program.input), program.root(program.output)} | set(program.constants)
    life: dict[str, list[int]] = {}
    for idx, step in enumerate(program.steps):
        for tid in step.outputs:
            root = program.root(tid)
            life.setdefault(root, [idx, idx])
        for tid in step.inputs:
            root = program.root(tid)
            if root in life:
                life[root][1] = max(life[root][1], idx)
    lifetimes = {t: (a, b) for t, (a, b) in life.items() if t not in external}
    sizes = {t: _align(program.tensors[t].size * BYTES[program.tensors[t].dtype]) for t in lifetimes}
    offsets: dict[str, int] = {}
    for t in sorted(lifetimes, key=lambda t: (-sizes[t], lifetimes[t])):
        a, b = lifetimes[t]
        busy = sorted((offsets[o], offsets[o] + sizes[o]) for o in offsets
                      if not (lifetimes[o][1] < a or b < lifetimes[o][0]))
        off = 0
        for lo, hi in busy:
            if off + sizes[t] <= lo:
                break
            off = max(off, hi)
        offsets[t] = off
    size = max((offsets[t] + sizes[t] for t in offsets), default=0)
    return ArenaPlan(offsets, size, lifetimes, sizes)
