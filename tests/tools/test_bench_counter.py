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


# The Cortex-M4 DSP instructions the generated C's SMLAD path uses, on values worked out by hand: x = bytes
# (1, 127, -1, -128); SXTB16 takes bytes 0 and 2 -> halves (1, -1), with ROR #8 bytes 1 and 3 -> (127, -128);
# w = halves (-32768, 32767); SMLAD adds both 16x16 products to the accumulator.
DSP_PROGRAM = """\
    .syntax unified
    .cpu cortex-m4
    .thumb
    .global start
start:
    movw r0, #0x7f01
    movt r0, #0x80ff
    sxtb16 r1, r0
    sxtb16 r2, r0, ror #8
    movw r3, #0x8000
    movt r3, #0x7fff
    movs r4, #100
    smlad r5, r1, r3, r4
    smlad r6, r2, r3, r5
    bx lr
"""
DSP_EXPECTED = {"r1": (1, -1), "r2": (127, -128), "r5": 100 + 1 * -32768 + -1 * 32767,
                "r6": 100 + 1 * -32768 + -1 * 32767 + 127 * -32768 + -128 * 32767}


def test_unicorn_executes_sxtb16_and_smlad_as_the_cortex_m4_does(bench, tmp_path: Path) -> None:
    from unicorn import UC_ARCH_ARM, UC_MODE_MCLASS, UC_MODE_THUMB, Uc
    from unicorn import arm_const as arm

    (tmp_path / "d.s").write_text(DSP_PROGRAM)
    subprocess.run(["arm-none-eabi-as", "-mcpu=cortex-m4", "-mthumb", str(tmp_path / "d.s"), "-o",
                    str(tmp_path / "d.o")], check=True)
    subprocess.run(["arm-none-eabi-objcopy", "-O", "binary", "-j", ".text", str(tmp_path / "d.o"),
                    str(tmp_path / "d.bin")], check=True)
    uc = Uc(UC_ARCH_ARM, UC_MODE_THUMB | UC_MODE_MCLASS)
    uc.ctl_set_cpu_model(arm.UC_CPU_ARM_CORTEX_M4)
    uc.mem_map(bench.FLASH, bench.FLASH_SIZE)
    uc.mem_write(bench.FLASH, (tmp_path / "d.bin").read_bytes())
    counter = bench.BlockCounter(uc)
    uc.reg_write(arm.UC_ARM_REG_LR, bench.STOP | 1)
    uc.emu_start(bench.FLASH | 1, bench.STOP)

    def signed(v: int, bits: int) -> int:
        return v - (1 << bits) if v >> (bits - 1) & 1 else v

    def reg(name: str) -> int:
        return uc.reg_read(getattr(arm, f"UC_ARM_REG_{name.upper()}"))

    for name in ("r1", "r2"):
        v = reg(name)
        assert (signed(v & 0xFFFF, 16), signed(v >> 16, 16)) == DSP_EXPECTED[name], (name, hex(v))
    for name in ("r5", "r6"):
        assert signed(reg(name), 32) == DSP_EXPECTED[name], (name, reg(name))
    assert counter.total == 10
