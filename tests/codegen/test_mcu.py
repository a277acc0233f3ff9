"""The integer C on Cortex-M: no soft-float anywhere, no warnings on three compilers, and, emulated, the
same integers as runtime_ref. Uses tools/bench_mcu.py's build and emulator (needs arm-none-eabi-gcc with
newlib, and unicorn from the `bench` extra)."""

from __future__ import annotations

import importlib.util
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
ARM_CC = "arm-none-eabi-gcc"
M0 = ["-mcpu=cortex-m0", "-mthumb", "-mfloat-abi=soft"]
SOFT_FLOAT = re.compile(r"^__aeabi_(c?[fd]|[ui]?[il]2[fd])|"
                        r"^__((add|sub|mul|div|neg)[sdt]f3|(cmp|eq|ne|lt|le|gt|ge|unord)[sdt]f2|float|fix|"
                        r"extend|trunc)")

needs_arm = pytest.mark.skipif(shutil.which(ARM_CC) is None or shutil.which("arm-none-eabi-nm") is None,
                               reason="arm-none-eabi-gcc is not installed (apt-get install gcc-arm-none-eabi "
                                      "libnewlib-arm-none-eabi)")
needs_unicorn = pytest.mark.skipif(importlib.util.find_spec("unicorn") is None,
                                   reason="unicorn is not installed (pip install -e '.[bench]')")


def _load_bench():
    spec = importlib.util.spec_from_file_location("bench_mcu", ROOT / "tools" / "bench_mcu.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while the class is created
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def bench():
    return _load_bench()


@pytest.fixture(scope="module")
def digits(bench, tmp_path_factory):
    """The digits example through the pipeline: {"int": Variant, "float": Variant} and the work folder."""
    work = tmp_path_factory.mktemp("digits")
    _, variants = bench.prepare(ROOT / "examples" / "digits" / "pipeline.yaml", work)
    return {v.kind: v for v in variants}, work


def _symbols(path: Path) -> set[str]:
    out = subprocess.run(["arm-none-eabi-nm", str(path)], capture_output=True, text=True, check=True).stdout
    return {line.split()[-1] for line in out.splitlines() if line.strip()}


def test_soft_float_pattern() -> None:
    for name in ("__aeabi_fadd", "__aeabi_dmul", "__aeabi_i2f", "__aeabi_ul2d", "__aeabi_f2iz", "__aeabi_cfcmple",
                 "__addsf3", "__mulsf3", "__divsf3", "__floatsisf", "__fixsfsi", "__ltsf2", "__extendsfdf2"):
        assert SOFT_FLOAT.match(name), name
    for name in ("__aeabi_lmul", "__aeabi_ldivmod", "__aeabi_idiv", "__aeabi_uidivmod", "__muldi3", "__clzsi2",
                 "__divdi3", "digits_run", "__aeabi_llsl"):
        assert not SOFT_FLOAT.match(name), name


@needs_arm
@needs_unicorn
def test_integer_build_for_cortex_m0_references_no_soft_float(bench, digits, tmp_path: Path) -> None:
    variants, _ = digits
    obj = tmp_path / "digits.o"
    subprocess.run([ARM_CC, *M0, "-O2", *bench.WARN_FLAGS, "-ffreestanding", "-c", str(variants["int"].c_file),
                    "-o", str(obj)], check=True)
    assert not {s for s in _symbols(obj) if SOFT_FLOAT.match(s)}
    linked = bench.build(variants["int"], "cortex-m0", "O2", tmp_path / "int")
    assert not {s for s in _symbols(linked.elf) if SOFT_FLOAT.match(s)}
    # the control: the float build of the same graph does pull in soft-float helpers
    linked_f = bench.build(variants["float"], "cortex-m0", "O2", tmp_path / "float")
    assert {"__aeabi_fadd", "__aeabi_fmul"} <= _symbols(linked_f.elf)


@pytest.mark.parametrize("cc", [ARM_CC, "gcc", "clang"])
@pytest.mark.parametrize("kind", ["int", "float"])
def test_zero_warnings(bench, digits, tmp_path: Path, cc: str, kind: str) -> None:
    if shutil.which(cc) is None:
        pytest.skip(f"{cc} is not installed")
    v = digits[0][kind]
    arch = [*M0, "-ffreestanding"] if cc == ARM_CC else []
    proc = subprocess.run([cc, *arch, *bench.WARN_FLAGS, "-O2", "-c", str(v.c_file), "-o", str(tmp_path / "m.o")],
                          capture_output=True, text=True, check=False)
    assert proc.returncode == 0 and not proc.stderr.strip(), proc.stderr


@needs_arm
@needs_unicorn
def test_emulated_cortex_m0_equals_runtime_ref(bench, digits) -> None:
    variants, work = digits
    r = bench.bench_variant("digits", variants["int"], "m0", "O2", work / "mcu")
    assert r.ok, r.check
    assert r.instructions > 1000 and r.stack > 0 and r.flash > variants["int"].expected.size
    assert r.lib_calls.get("__aeabi_lmul", 0) > 0, "Cortex-M0 has no 32x32->64 multiply: int64 math is a call"
    f = bench.bench_variant("digits", variants["float"], "m4", "Os", work / "mcu")
    assert f.ok, f.check
    assert f.instructions > r.instructions and f.flash > r.flash


@pytest.mark.slow
@needs_arm
@needs_unicorn
def test_har_lstm_example_on_cortex_m0(bench, tmp_path: Path) -> None:
    """The HAR example (Conv1D + LSTM): integer build without soft-float, emulated equal to runtime_ref."""
    _, variants = bench.prepare(ROOT / "examples" / "har" / "pipeline.yaml", tmp_path)
    v = {x.kind: x for x in variants}
    r = bench.bench_variant("har", v["int"], "m0", "O2", tmp_path / "mcu")
    assert r.ok, r.check
    linked = bench.build(v["int"], "cortex-m0", "O2", tmp_path / "mcu" / "int-m0-O2")
    assert not {s for s in _symbols(linked.elf) if SOFT_FLOAT.match(s)}
    f = bench.bench_variant("har", v["float"], "m0", "O2", tmp_path / "mcu")
    assert f.ok, f.check
