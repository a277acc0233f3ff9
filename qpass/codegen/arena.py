"""Static memory planning: place every activation in one arena, reusing bytes once a tensor is dead.

Lifetimes are measured in half steps: step i reads its inputs at 2i and writes its outputs at 2i+1.
A tensor lives from its write to its last read; an input of an element-wise kernel that may run in
place (each output element depends only on the same input element, same width) dies at the read
2i, so its bytes may be given to the output; any other input stays alive through 2i+1. Tensors are
placed largest first at the lowest offset that overlaps no tensor alive at the same time (first
fit). Views share their root's bytes; the program input and output live in the caller's buffers.
"""

from __future__ import annotations

from dataclasses import dataclass

from qpass.runtime_ref.program import Program

ALIGN = 4
BYTES = {"int8": 1, "int16": 2, "int32": 4}
IN_PLACE = {"clamp", "lut"}  # element-wise, output element i from input element i only


@dataclass
class ArenaPlan:
    offsets: dict[str, int]
    size: int
    lifetimes: dict[str, tuple[int, int]]
    sizes: dict[str, int]

    @property
    def naive(self) -> int:
        """Bytes if every tensor had its own buffer."""
        return sum(self.sizes.values())

    @property
    def lower_bound(self) -> int:
        """The most bytes alive at any one moment: no plan can use less."""
        moments = {m for span in self.lifetimes.values() for m in span}
        return max((sum(self.sizes[t] for t, (a, b) in self.lifetimes.items() if a <= m <= b) for m in moments),
                   default=0)


def _align(n: int) -> int:
    return (n + ALIGN - 1) // ALIGN * ALIGN


def plan_arena(program: Program) -> ArenaPlan:
    external = {program.root(program.input), program.root(program.output)} | set(program.constants)
    life: dict[str, list[int]] = {}
    for idx, step in enumerate(program.steps):
        in_place = step.kernel in IN_PLACE
        for tid in step.inputs:
            root = program.root(tid)
            if root in life:
                life[root][1] = max(life[root][1], 2 * idx if in_place else 2 * idx + 1)
        for tid in step.outputs:
            life.setdefault(program.root(tid), [2 * idx + 1, 2 * idx + 1])
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


def check_plan(plan: ArenaPlan) -> list[str]:
    """Every pair of tensors alive at the same moment whose bytes overlap (empty when the plan is sound)."""
    bad = []
    names = sorted(plan.offsets)
    for i, a in enumerate(names):
        for b in names[i + 1:]:
            (a0, a1), (b0, b1) = plan.lifetimes[a], plan.lifetimes[b]
            live_together = not (a1 < b0 or b1 < a0)
            overlap = plan.offsets[a] < plan.offsets[b] + plan.sizes[b] and plan.offsets[b] < plan.offsets[a] + \
                plan.sizes[a]
            if live_together and overlap:
                bad.append(f"{a} and {b}")
    return bad
