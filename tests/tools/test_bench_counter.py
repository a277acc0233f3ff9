"""tools/bench_mcu.py's instruction counter against a hand-written Thumb-2 program whose exact count is known:
IT blocks whose condition fails still issue their instructions on a Cortex-M, and must be counted (unicorn's
per-instruction hook misses them); 16- and 32-bit encodings; a loop. Assembled with arm-none-eabi-as."""

from __future__ import annotations

import importlib.util
import shutil
import subprocess
from pathlib import Path

import pytest

from tests.conftest import load_tool

ROOT = Path(__file__).resolve().parents[2]

pytestmark = [
    pytest.mark.skipif(shutil.which("arm-none-eabi-as") is None, reason="arm-none-eabi binutils not installed"),
    pytest.mark.skipif(importlib.util.find_spec("unicorn") is None, reason="unicorn not installed"),
]

# r0 counts 10 -> 0. Per pass: cmp, ite, addlt, addge.w, itte, addeq, addeq.w, subne, subs, bne = 10 instructions,
# 1 condition-failed in the ITE, 2 in the ITTE (1 when r0 == 5). Before: 3; after: cmp, it, moveq, bx = 4.
# Executed: 3 + 10 * 10 + 4 = 107; condition-failed among them: 10 + 9 * 2 + 1 + 1 (moveq: r1 != 0) = 30.
PROGRAM = """\
    .syntax unified
    .cpu cortex-m3
    .thumb
    .global start
    .type start, %function
start:
    movs r0, #10
    movs r1, #0
    movw r2, #1000
loop:
    cmp r0, #5
    ite lt
    addlt r1, r1, #1
    addge.w r1, r1, #2
    itte eq
    addeq r1, r1, #100
    addeq.w r2, r2, #1
    subne r2, r2, #1
    subs r0, r0, #1
    bne loop
    cmp r1, #0
    it eq
    moveq r1, #7
    bx lr
"""
EXECUTED, CONDITION_FAILED = 107, 30


@pytest.fixture(scope="module")
def bench():
    return load_tool("bench_mcu")


@pytest.fixture(scope="module")
def code(tmp_path_factory) -> bytes:
    work = tmp_path_factory.mktemp("thumb")
    (work / "t.s").write_text(PROGRAM)
    subprocess.run(["arm-none-eabi-as", "-mcpu=cortex-m3", "-mthumb", str(work / "t.s"), "-o", str(work / "t.o")],
                   check=True)
    subprocess.run(["arm-none-eabi-objcopy", "-O", "binary", "-j", ".text", str(work / "t.o"), str(work / "t.bin")],
                   check=True)
    return (work / "t.bin").read_bytes()


def _emulate(bench, code: bytes, per_instruction: list[int] | None = None):
    from unicorn import UC_ARCH_ARM, UC_HOOK_CODE, UC_MODE_MCLASS, UC_MODE_THUMB, Uc
    from unicorn import arm_const as arm

    uc = Uc(UC_ARCH_ARM, UC_MODE_THUMB | UC_MODE_MCLASS)
    uc.ctl_set_cpu_model(arm.UC_CPU_ARM_CORTEX_M3)
    uc.mem_map(bench.FLASH, bench.FLASH_SIZE)
    uc.mem_map(bench.RAM, bench.RAM_SIZE)
    uc.mem_write(bench.FLASH, code)
    counter = bench.BlockCounter(uc, {0x0: ("prog", 1), 0x20: ("prog", 2)})
    if per_instruction is not None:
        uc.hook_add(UC_HOOK_CODE, lambda *_: per_instruction.__setitem__(0, per_instruction[0] + 1))
    uc.reg_write(arm.UC_ARM_REG_SP, bench.RAM + bench.RAM_SIZE)
    uc.reg_write(arm.UC_ARM_REG_LR, bench.STOP | 1)
    uc.emu_start(bench.FLASH | 1, bench.STOP)
    assert uc.reg_read(arm.UC_ARM_REG_PC) == bench.STOP
    return counter, uc.reg_read(arm.UC_ARM_REG_R1), uc.reg_read(arm.UC_ARM_REG_R2)


def test_thumb_offsets_tell_16_from_32_bit_encodings(bench, code: bytes) -> None:
    # movs, movs, movw.w | cmp, ite, addlt, addge.w, itte, addeq, addeq.w, subne, subs, bne | cmp, it, moveq, bx
    assert bench.thumb_offsets(code) == [0, 2, 4, 8, 10, 12, 14, 18, 20, 22, 26, 28, 30, 32, 34, 36, 38]


def test_block_counter_counts_condition_failed_instructions(bench, code: bytes) -> None:
    per_instruction = [0]
    counter, r1, r2 = _emulate(bench, code, per_instruction)
    assert (r1, r2) == (4 * 1 + 6 * 2 + 100, 1000 + 1 - 9)  # the program ran as written
    assert counter.total == EXECUTED
    # the per-instruction hook misses (some of) the IT blocks' condition-failed instructions: why it was replaced
    assert EXECUTED - CONDITION_FAILED <= per_instruction[0] < EXECUTED


def test_block_counter_attributes_instructions_to_sites(bench, code: bytes) -> None:
    counter, _, _ = _emulate(bench, code)
    by_site = counter.by_site()
    # 0x0 starts the program (site 1); the instructions from 0x20 on (cmp, it, moveq, bx) go to site 2
    assert by_site == {("prog", 1): EXECUTED - 4, ("prog", 2): 4}
