"""The recurrent kernels' Cortex-M4 DSP path (QP_DSP: SXTB16 + SMLAD dot products), emulated: the emulator's
SXTB16/SMLAD against a hand computation, then LSTM and GRU programs built for Cortex-M4 (DSP on) equal runtime_ref
bit for bit, with lengths that are not multiples of the SIMD width. Uses tools/bench_mcu.py's build and emulator
and the LSTM/GRU programs of tests/codegen/test_kernels_c.py."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
import zlib
from pathlib import Path

import numpy as np
import pytest

from qpass.codegen.emit import CTYPE, render, write
from qpass.runtime_ref import run

HERE = Path(__file__).resolve().parent
pytestmark = [
    pytest.mark.skipif(importlib.util.find_spec("unicorn") is None, reason="unicorn is not installed"),
    pytest.mark.skipif(subprocess.run(["which", "arm-none-eabi-gcc"], capture_output=True).returncode != 0,
                       reason="arm-none-eabi-gcc is not installed"),
]


def _module(name: str, path: Path):
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def bench():
    return _module("bench_mcu", HERE.parents[1] / "tools" / "bench_mcu.py")


@pytest.fixture(scope="module")
def kernels():
    return _module("qpass_test_kernels_c", HERE / "test_kernels_c.py")


HAND = """#include <stdint.h>
#include <arm_acle.h>
int32_t qp_hand(uint32_t a, uint32_t b, int32_t c);
int32_t qp_hand(uint32_t a, uint32_t b, int32_t c)
{
    c = __smlad(__sxtb16((int32_t)a), __sxtb16((int32_t)b), c);
    return __smlad(__sxtb16((int32_t)((a >> 8) | (a << 24))), __sxtb16((int32_t)((b >> 8) | (b << 24))), c);
}
"""


def test_emulator_executes_sxtb16_and_smlad(tmp_path: Path) -> None:
    """c + a0*b0 + a1*b1 + a2*b2 + a3*b3 over the signed bytes of two words, through two SXTB16 pairs and two
    SMLADs on an emulated Cortex-M4, equals the same sum in Python (wrapping to 32 bits)."""
    from unicorn import UC_ARCH_ARM, UC_MODE_MCLASS, UC_MODE_THUMB, Uc
    from unicorn import arm_const as arm

    src, obj, raw = tmp_path / "hand.c", tmp_path / "hand.o", tmp_path / "hand.bin"
    src.write_text(HAND)
    subprocess.run(["arm-none-eabi-gcc", "-mcpu=cortex-m4", "-mthumb", "-O2", "-c", str(src), "-o", str(obj)],
                   check=True)
    subprocess.run(["arm-none-eabi-objcopy", "-O", "binary", "-j", ".text", str(obj), str(raw)], check=True)
    code = raw.read_bytes()
    dis = subprocess.run(["arm-none-eabi-objdump", "-d", str(obj)], capture_output=True, text=True).stdout
    assert "smlad" in dis and "sxtb16" in dis
    rng = np.random.default_rng(11)
    words = [(0x80808080, 0x80808080, 0), (0x7F7F7F7F, 0x80808080, -5), (0xFF00FF01, 0x01FF7F80, 123456)]
    words += [(int(rng.integers(0, 2**32)), int(rng.integers(0, 2**32)), int(rng.integers(-2**30, 2**30)))
              for _ in range(20)]
    uc = Uc(UC_ARCH_ARM, UC_MODE_THUMB | UC_MODE_MCLASS)
    uc.ctl_set_cpu_model(arm.UC_CPU_ARM_CORTEX_M4)
    uc.mem_map(0, 0x10000)
    uc.mem_map(0x20000000, 0x10000)
    uc.mem_write(0, code)
    stop = 0x8000
    for a, b, c in words:
        sa = np.frombuffer(a.to_bytes(4, "little"), np.int8).astype(np.int64)
        sb = np.frombuffer(b.to_bytes(4, "little"), np.int8).astype(np.int64)
        want = (c + int((sa * sb).sum())) & 0xFFFFFFFF
        for reg, val in ((arm.UC_ARM_REG_R0, a), (arm.UC_ARM_REG_R1, b), (arm.UC_ARM_REG_R2, c & 0xFFFFFFFF),
                         (arm.UC_ARM_REG_SP, 0x20008000), (arm.UC_ARM_REG_LR, stop | 1)):
            uc.reg_write(reg, val)
        uc.emu_start(1, stop)
        assert uc.reg_read(arm.UC_ARM_REG_R0) == want, (hex(a), hex(b), c)


@pytest.mark.parametrize(("kernel", "case"), [("lstm", "forward"), ("lstm", "row-shifts"), ("lstm", "one-step"),
                                              ("lstm", "pow2"), ("gru", "pow2"), ("gru", "reset-before")])
def test_dsp_path_on_cortex_m4_equals_runtime_ref(bench, kernels, tmp_path: Path, kernel: str, case: str) -> None:
    """An LSTM or GRU program built for Cortex-M4 (-O2: QP_DSP on, SMLAD in the code), and the LSTM's forward case
    also for Cortex-M3 (portable C, no SMLAD), emulated on a few random and extreme inputs: equal to runtime_ref."""
    rng = np.random.default_rng(zlib.crc32(f"{kernel}/{case}".encode()))
    program = kernels.CASES[kernel][case].build(rng)
    tin, tout = program.tensors[program.input], program.tensors[program.output]
    xs = kernels._samples(rng, tin.size, tin.dtype, n=64)[[0, 1, 2, 4, 9, 30, 61, 62, 63]]  # extremes, random
    gen = render(program, source=f"test {program.name}")
    assert "QP_DSP" in gen.c
    c_file, h_file = write(gen, tmp_path, program.name)
    for cpu, dsp in (("cortex-m4", True), ("cortex-m3", False))[:2 if case == "forward" else 1]:
        v = bench.Variant("int", "a8w8", program.name, c_file, h_file, CTYPE[tin.dtype], CTYPE[tout.dtype], xs[0],
                          np.zeros(tout.size, tout.dtype), gen.arena_bytes)
        b = bench.build(v, cpu, "O2", tmp_path / cpu)
        dis = subprocess.run(["arm-none-eabi-objdump", "-d", str(b.elf)], capture_output=True, text=True).stdout
        assert ("smlad" in dis) == dsp, cpu
        for x in xs:
            v.x = x
            v.expected = np.asarray(run(program, x)).reshape(-1).astype(tout.dtype)
            _, _, out, _ = bench.emulate(b, v, cpu)
            assert np.array_equal(out, v.expected), (cpu, x.tolist(), out.tolist(), v.expected.tolist())
