"""Static memory planning: place every activation in one arena, reusing bytes once a tensor is dead.

Lifetimes are measured in half steps: step i reads its inputs at 2i and writes its outputs at 2i+1.
A tensor lives from its write to its last read; an input of an element-wise kernel that may run in
place (each output element depends only on the same input element, and is no wider: an int8 -> int16 table
would overwrite input bytes it has not read yet) dies at the read 2i, so its bytes may be given to the
output; any other input stays alive through 2i+1. Tensors are
placed at the lowest offset that overlaps no tensor alive at the same time (first fit), in a few
orders (largest first, earliest first, longest-lived first, ...); the smallest arena wins. Views
share their root's bytes; the program output lives in the caller's buffer.

The program input lives in the caller's buffer too, unless it fits into bytes the arena has free while the
input is alive (`plan_memory`): then it gets an arena slot (alive from before the first step to its last
read), the arena does not grow, and a caller that writes the input straight into that slot (NAME_input())
needs no input buffer of its own: the bytes a separate input buffer would take are saved.
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
    input_offset: int | None = None  # the program input's byte offset when it lives in the arena

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


def plan_memory(program: Program) -> ArenaPlan:
    """The arena the C uses: with the program input inside it when that costs no arena byte, else without."""
    plan = plan_arena(program)
    in_root = program.root(program.input)
    if in_root == program.root(program.output) or in_root in program.constants:
        return plan
    with_input = plan_arena(program, with_input=True)
    return with_input if with_input.size <= plan.size else plan


def plan_arena(program: Program, with_input: bool = False) -> ArenaPlan:
    """First-fit plan of every intermediate tensor; with_input: the program input too, alive from moment -1."""
    in_root = program.root(program.input)
    external = {in_root, program.root(program.output)} | set(program.constants)
    life: dict[str, list[int]] = {}
    if with_input:
        external.discard(in_root)
        life[in_root] = [-1, -1]
    for idx, step in enumerate(program.steps):
        out_bytes = BYTES[program.tensors[step.outputs[0]].dtype]
        in_place = step.kernel in IN_PLACE and all(BYTES[program.tensors[t].dtype] >= out_bytes for t in step.inputs)
        for tid in step.inputs:
            root = program.root(tid)
            if root in life:
                life[root][1] = max(life[root][1], 2 * idx if in_place else 2 * idx + 1)
        for tid in step.outputs:
            life.setdefault(program.root(tid), [2 * idx + 1, 2 * idx + 1])
    lifetimes = {t: (a, b) for t, (a, b) in life.items() if t not in external}
    sizes = {t: _align(program.tensors[t].size * BYTES[program.tensors[t].dtype]) for t in lifetimes}
    orders = [  # first fit is sensitive to the order: try a few and keep the smallest arena
        lambda t: (-sizes[t], lifetimes[t]),
        lambda t: (lifetimes[t][0], -sizes[t]),
        lambda t: (-(lifetimes[t][1] - lifetimes[t][0]), -sizes[t]),
        lambda t: (-lifetimes[t][1], -sizes[t]),
        lambda t: (-sizes[t] * (lifetimes[t][1] - lifetimes[t][0] + 1), lifetimes[t]),
    ]
    best: dict[str, int] | None = None
    for order in orders:
        offsets = _first_fit(sorted(lifetimes, key=order), lifetimes, sizes)
        if best is None or _extent(offsets, sizes) < _extent(best, sizes):
            best = offsets
    offsets = best or {}
    size = _extent(offsets, sizes)
    return ArenaPlan(offsets, size, lifetimes, sizes, offsets.get(in_root) if with_input else None)


def _first_fit(order: list[str], lifetimes: dict[str, tuple[int, int]], sizes: dict[str, int]) -> dict[str, int]:
    """Each tensor at the lowest offset that overlaps no placed tensor alive at the same time."""
    offsets: dict[str, int] = {}
    for t in order:
        a, b = lifetimes[t]
        busy = sorted((offsets[o], offsets[o] + sizes[o]) for o in offsets
                      if not (lifetimes[o][1] < a or b < lifetimes[o][0]))
        off = 0
        for lo, hi in busy:
            if off + sizes[t] <= lo:
                break
            off = max(off, hi)
        offsets[t] = off
    return offsets


def _extent(offsets: dict[str, int], sizes: dict[str, int]) -> int:
    return max((offsets[t] + sizes[t] for t in offsets), default=0)


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
