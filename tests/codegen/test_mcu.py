"""The integer C on Cortex-M: no soft-float anywhere, no warnings on three compilers, and, emulated, the
same integers as runtime_ref at every benchmarked precision (a8w8, a16w8, a16w16, a8w8-pow2); pow2
requantization makes no 64-bit multiply call on Cortex-M0; the benchmark's tables and target checks. Uses
tools/bench_mcu.py's build and emulator (needs arm-none-eabi-gcc with newlib, and unicorn from the `bench`
extra)."""

from __future__ import annotations

import importlib.util
import re
import shutil
import subprocess
import zlib
from pathlib import Path

import numpy as np
import pytest

from tests.conftest import load_tool

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


@pytest.fixture(scope="module")
def bench():
    return load_tool("bench_mcu")


@pytest.fixture(scope="module")
def digits(bench, tmp_path_factory):
    """The digits example through the pipeline: {"int": Variant, "float": Variant} and the work folder."""
    work = tmp_path_factory.mktemp("digits")
    _, variants = bench.prepare(ROOT / "examples" / "digits" / "pipeline.yaml", work)
    return {v.kind: v for v in variants}, work


OTHER_PRECISIONS = ["a16w8", "a16w16", "a8w8-pow2"]


@pytest.fixture(scope="module")
def digits_precisions(bench, tmp_path_factory):
    """The digits example at the other benchmarked precisions: {precision: Variant} and the work folder."""
    work = tmp_path_factory.mktemp("digits-precisions")
    _, variants = bench.prepare(ROOT / "examples" / "digits" / "pipeline.yaml", work, OTHER_PRECISIONS)
    return {v.precision: v for v in variants}, work


DS_TCN_PRECISIONS = ["a8w8", "a16w8", "a8w8-pow2"]


@pytest.fixture(scope="module")
def ds_tcn(bench, tmp_path_factory):
    """examples/ds_tcn (Conv1D, depthwise Conv1D, global average pooling, Dense): {precision: Variant}, work folder."""
    work = tmp_path_factory.mktemp("ds_tcn")
    _, variants = bench.prepare(ROOT / "examples" / "ds_tcn" / "pipeline.yaml", work, DS_TCN_PRECISIONS)
    return {v.precision: v for v in variants}, work


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
    # every instruction attributed to a kernel call of the C (its comment), MACs from the program
    assert sum(r.kernels.values()) == r.instructions and r.macs == sum(variants["int"].macs.values()) > 0
    comments = set(re.findall(r"/\* ((?:layer \d+ )?\w+: [^*]+?) \*/", variants["int"].c_file.read_text()))
    assert set(r.kernels) - {bench.GLUE} <= comments and max(r.kernels, key=r.kernels.get) in comments
    assert "linear" in r.kernel_macs and "breakdown" in bench.breakdown(r)
    f = bench.bench_variant("digits", variants["float"], "m4", "Os", work / "mcu")
    assert f.ok, f.check
    assert f.instructions > r.instructions and f.flash > r.flash


def test_prepare_orders_precisions_then_float(digits_precisions) -> None:
    variants, _ = digits_precisions
    assert list(variants) == [*OTHER_PRECISIONS, "float"]
    assert variants["a16w8"].in_t == variants["a16w16"].in_t == "int16_t"
    assert variants["a8w8-pow2"].in_t == "int8_t" and variants["float"].in_t == "float"
    assert variants["a16w8"].expected.dtype == np.int16


@needs_arm
@needs_unicorn
@pytest.mark.parametrize("precision", OTHER_PRECISIONS)
def test_other_precisions_on_cortex_m0_equal_runtime_ref(bench, digits_precisions, tmp_path: Path,
                                                         precision: str) -> None:
    variants, work = digits_precisions
    r = bench.bench_variant("digits", variants[precision], "m0", "Os", work / "mcu")
    assert r.ok, r.check
    linked = bench.build(variants[precision], "cortex-m0", "O2", tmp_path / precision)
    assert not {s for s in _symbols(linked.elf) if SOFT_FLOAT.match(s)}


@needs_arm
@needs_unicorn
def test_pow2_requant_makes_no_64_bit_multiply_call_on_cortex_m0(bench, digits, digits_precisions) -> None:
    a8w8 = bench.bench_variant("digits", digits[0]["int"], "m0", "O2", digits[1] / "mcu")
    pow2 = bench.bench_variant("digits", digits_precisions[0]["a8w8-pow2"], "m0", "O2", digits_precisions[1] / "mcu")
    assert a8w8.ok and pow2.ok
    assert a8w8.lib_calls.get("__aeabi_lmul", 0) > 0
    assert pow2.lib_calls.get("__aeabi_lmul", 0) == 0, pow2.lib_calls
    assert pow2.instructions < a8w8.instructions


@needs_arm
@needs_unicorn
def test_pow2_average_pooling_makes_no_64_bit_multiply_call_on_cortex_m0(bench, ds_tcn) -> None:
    """ds_tcn's global average pooling (a mean over 100 steps: s_x / (s_y * 100) is no power of two) rescales in
    32-bit multiplies; before, it made one __aeabi_lmul call per channel (16)."""
    variants, work = ds_tcn
    r = bench.bench_variant("ds_tcn", variants["a8w8-pow2"], "m0", "O2", work / "mcu")
    assert r.ok, r.check
    assert "pool" in {bench.kernel_kind(k) for k in r.kernels}
    assert r.lib_calls.get("__aeabi_lmul", 0) == 0, r.lib_calls


@needs_arm
@needs_unicorn
@pytest.mark.parametrize("precision", ["a8w8", "a16w8"])
def test_dsp_path_on_cortex_m4_equals_runtime_ref(bench, ds_tcn, precision: str) -> None:
    """ds_tcn's conv1d, depthwise conv1d and dense layers on a Cortex-M4: the SMLAD build (m4) and the portable C on
    the same core (m4-nodsp) both give runtime_ref's integers, and SMLAD runs fewer instructions."""
    variants, work = ds_tcn
    v = variants[precision]
    assert v.c_file.read_text().count("#ifdef QP_DSP") >= 3  # the DSP preamble's users: conv1d and linear layers
    dsp = bench.bench_variant("ds_tcn", v, "m4", "O2", work / "mcu")
    portable = bench.bench_variant("ds_tcn", v, "m4-nodsp", "O2", work / "mcu")
    assert dsp.ok, dsp.check
    assert portable.ok, portable.check
    # only layer 0 (channels last, a window of 18 contiguous values) and the dense layer take SMLAD: the [C, L]
    # pointwise convs (no contiguous run) and the k = 3 depthwise ones (runs shorter than 4 int8) stay portable
    assert dsp.instructions < portable.instructions, (dsp.instructions, portable.instructions)
    assert "Cortex-M4: DSP path vs portable C" in bench.dsp_table([dsp, portable], [precision])


@pytest.mark.skipif(shutil.which("clang") is None, reason="clang is not installed")
def test_dsp_path_compiles_without_warnings_on_clang(bench, ds_tcn, tmp_path: Path) -> None:
    """clang for a Cortex-M4 (thumbv7em: __ARM_FEATURE_DSP, <arm_acle.h>) under the README's warning flags."""
    v = ds_tcn[0]["a8w8"]
    proc = subprocess.run(["clang", "--target=thumbv7em-none-eabi", "-mcpu=cortex-m4", "-mthumb", "-ffreestanding",
                           *bench.WARN_FLAGS, "-O2", "-dM", "-E", str(v.c_file)], capture_output=True, text=True,
                          check=False)
    assert proc.returncode == 0 and "#define QP_DSP 1" in proc.stdout, proc.stderr
    proc = subprocess.run(["clang", "--target=thumbv7em-none-eabi", "-mcpu=cortex-m4", "-mthumb", "-ffreestanding",
                           *bench.WARN_FLAGS, "-O2", "-c", str(v.c_file), "-o", str(tmp_path / "m.o")],
                          capture_output=True, text=True, check=False)
    assert proc.returncode == 0 and not proc.stderr.strip(), proc.stderr


def _lmul_sections(bench, c_file: Path, obj: Path) -> set[str]:
    """Functions (one section each; gcc may suffix .constprop) of the Cortex-M0 object that call __aeabi_lmul."""
    subprocess.run([ARM_CC, *M0, "-O2", "-ffunction-sections", *bench.WARN_FLAGS, "-ffreestanding", "-c", str(c_file),
                    "-o", str(obj)], check=True)
    rel = subprocess.run(["arm-none-eabi-objdump", "-r", str(obj)], capture_output=True, text=True, check=True).stdout
    found, section = set(), ""
    for line in rel.splitlines():
        head = re.match(r"RELOCATION RECORDS FOR \[\.text\.([\w]+)", line)
        section = head.group(1) if head else section
        if line.endswith("__aeabi_lmul"):
            found.add(section)
    return found


@needs_arm
@pytest.mark.parametrize(("kernel", "case", "lmul"), [("add", "pow2", False), ("add", "shift-1", False),
                                                     ("add", "const-full", True), ("pool", "pow2", False),
                                                     ("pool", "avg-window", False), ("pool", "long-window", True)])
def test_add_and_pool_kernels_call_lmul_on_cortex_m0_only_when_64_bit(bench, tmp_path: Path, kernel: str, case: str,
                                                                      lmul: bool) -> None:
    """Power-of-two adds and the pool's 32-bit rescales (pow2, or the split product of a window sum below 2^15)
    make no __aeabi_lmul call; 31-bit add multipliers and a 300-tap window still need a 64-bit product."""
    import test_kernels_c as kc

    from qpass.codegen.emit import render, write

    program = kc.CASES[kernel][case].build(np.random.default_rng(0))
    c_file, _ = write(render(program), tmp_path, program.name)
    index = next(i for i, s in enumerate(program.steps) if s.kernel == kernel)
    assert (f"qp_l{index}_{kernel}" in _lmul_sections(bench, c_file, tmp_path / "m.o")) == lmul


DSP_CASES = {  # test_kernels_c's cases whose layer has a DSP path (SMLAD on a Cortex-M4)
    "linear": ["random", "rows", "x16", "w16", "pow2"],
    "conv1d": ["depthwise", "window-last", "taps-last", "valid-last", "x16"],
}


@needs_arm
@needs_unicorn
@pytest.mark.parametrize(("kernel", "case"), [(k, c) for k, cases in DSP_CASES.items() for c in cases])
def test_dsp_kernels_on_cortex_m4_equal_runtime_ref(bench, tmp_path: Path, kernel: str, case: str) -> None:
    """Each linear / conv1d case with a DSP path (odd lengths, runs not a multiple of 4, int16 activations, int16
    weights, one and several runs), built for a Cortex-M4 (SMLAD, SXTB16) and emulated: runtime_ref's integers."""
    import test_kernels_c as kc

    from qpass.codegen.emit import CTYPE, render, write
    from qpass.runtime_ref import run

    rng = np.random.default_rng(zlib.crc32(f"{kernel}/{case}".encode()))
    program = kc.CASES[kernel][case].build(rng)
    tin, tout = program.tensors[program.input], program.tensors[program.output]
    xs = kc._samples(rng, tin.size, tin.dtype, n=64)[np.r_[0:20, 30, 50, 62, 63]]  # extremes, small, random
    gen = render(program)
    assert "QP_DSP" in gen.c[gen.c.index("/* layer 0"):gen.c.index("/* layer 1")], "the layer has no DSP path"
    c_file, h_file = write(gen, tmp_path, program.name)
    v = bench.Variant("int", "a8w8", program.name, c_file, h_file, CTYPE[tin.dtype], CTYPE[tout.dtype], xs[0],
                      np.zeros(tout.size, tout.dtype), 0)
    b = bench.build(v, "cortex-m4", "O2", tmp_path / "m4")
    disassembly = subprocess.run(["arm-none-eabi-objdump", "-d", str(b.elf)], capture_output=True, text=True,
                                 check=True).stdout
    assert re.search(r"\tsmlad\t", disassembly) and (tin.dtype == "int16" or re.search(r"\tsxtb16\t", disassembly))
    outputs = []
    for x in xs:
        v.x, v.expected = x, np.asarray(run(program, x)).reshape(-1).astype(tout.dtype)
        _, _, out, _ = bench.emulate(b, v, "cortex-m4")
        outputs.append(out)
    want = np.stack([np.asarray(run(program, x)).reshape(-1) for x in xs])
    np.testing.assert_array_equal(np.stack(outputs), want)


def _result(bench, precision: str, core: str = "m3", opt: str = "O2", instructions: int = 1000, ram: int = 1000,
            ok: bool = True):
    kind = "float" if precision == "float" else "int"
    return bench.Result("har", core, opt, kind, precision, instructions, 2000, ram, 100, 500, ok, "checked",
                        {"__aeabi_lmul": 7} if kind == "int" else {})


def test_tables_give_float_over_int_per_precision(bench) -> None:
    results = [_result(bench, "float", instructions=9000, ram=3000), _result(bench, "a8w8", instructions=1000),
               _result(bench, "a16w8", instructions=1500, ok=False)]
    text = bench.tables(results, ["a8w8", "a16w8", "a16w16"])
    row = next(line for line in text.splitlines() if line.startswith("| har | m3 | -O2 | 9,000"))
    assert row == "| har | m3 | -O2 | 9,000 | 1,000 (9.0x) | 1,500 FAIL (6.0x) | n/a |"
    assert "| har | m3 | -O2 | 3,000 | 1,000 (3.00x) |" in text
    assert bench.lmul_table(results, ["a8w8"]) == ""  # no Cortex-M0 build measured
    results[0].macs = results[1].macs = 500
    per_mac = bench.per_mac_table(results, ["a8w8", "a16w8"])
    assert "| har | m3 | -O2 | 500 | 18.00 | 2.00 | n/a |" in per_mac  # the a16w8 result has no MACs recorded


def test_target_checks_state_numbers_and_verdicts(bench) -> None:
    met = bench.target_checks([_result(bench, "float", instructions=7000, ram=4000),
                               _result(bench, "a8w8", instructions=1000),
                               _result(bench, "a16w8", ram=2000)])
    assert met[0] == "har on Cortex-M3: int8 runs >= 6x fewer instructions than float: met"
    assert "a8w8 1,000 vs float 7,000 instructions = 7.0x: met" in met[1]
    assert met[2] == "har: int16 (a16w8) RAM <= 50% of float RAM: met"
    assert "a16w8 2,000 vs float 4,000 bytes = 50.0%: met" in met[3]
    missed = bench.target_checks([_result(bench, "float", instructions=5000, ram=3000),
                                  _result(bench, "a8w8", instructions=1000), _result(bench, "a16w8", ram=2000)])
    assert missed[0].endswith(": NOT MET") and missed[1].endswith(": not met") and missed[2].endswith(": NOT MET")
    unmeasured = bench.target_checks([])
    assert unmeasured[:2] == [
        "har on Cortex-M3: int8 runs >= 6x fewer instructions than float: not measured",
        "har: int16 (a16w8) RAM <= 50% of float RAM: not measured"]
    assert all(line.endswith(": not measured") for line in unmeasured)


def test_issue_11_targets(bench) -> None:
    """<= 5 instructions per MAC, float/int >= 15x, -Os within 30 % of -O2, no __aeabi_lmul in pow2 on M0,
    flash within 10 % of the reference: each with its numbers."""
    def r(model, core, opt, precision, instructions, macs=1000, flash=2000, calls=None):
        kind = "float" if precision == "float" else "int"
        return bench.Result(model, core, opt, kind, precision, instructions, flash, 1000, 100, 500, True, "checked",
                            calls or {}, macs)

    before = bench.FLASH_BEFORE[("har", "m3", "Os")]
    lines = bench.target_checks([
        r("har", "m3", "O2", "a8w8", 4500), r("har", "m3", "O2", "float", 90_000), r("har", "m3", "Os", "a8w8", 5000,
                                                                                     flash=before + 1),
        r("har_lstm", "m3", "O2", "a8w8", 6000), r("har_lstm", "m3", "O2", "float", 60_000),
        r("har_lstm", "m3", "Os", "a8w8", 9000),
        r("har", "m0", "O2", "a8w8-pow2", 7000, calls={"__aeabi_lmul": 3}), r("har", "m0", "O2", "a8w8", 9000),
        r("har", "m4", "O2", "a8w8", 3400), r("har", "m4-nodsp", "O2", "a8w8", 4200)])
    text = "\n".join(lines)
    assert "Cortex-M3 -O2 a8w8: <= 5 instructions per MAC: NOT MET" in lines
    assert "    har: 4,500 instructions / 1,000 MACs = 4.50: met" in lines
    assert "    har_lstm: 6,000 instructions / 1,000 MACs = 6.00: not met" in lines
    assert "    har: float 90,000 / a8w8 4,500 = 20.0x: met" in lines
    assert "    har_lstm: float 60,000 / a8w8 6,000 = 10.0x: not met" in lines
    assert "    har: -Os 5,000 vs -O2 4,500 instructions = +11.1%: met" in lines
    assert "    har_lstm: -Os 9,000 vs -O2 6,000 instructions = +50.0%: not met" in lines
    assert "Cortex-M0: no __aeabi_lmul in any a8w8-pow2 build: NOT MET" in lines
    assert "    har -O2: 3 calls: not met" in lines
    assert f"har m3 -Os: {before + 1:,} bytes vs {before:,} before issue 11 = +0.0%: met" in text
    assert "Cortex-M0 a8w8 instructions per MAC: har -O2: 9.00" in lines
    assert "Cortex-M4 -O2 a8w8 with the DSP path: <= 3.5 instructions per MAC: met" in lines
    assert "    har: 3,400 instructions / 1,000 MACs = 3.40 (portable C on the same core: 4.20): met" in lines
    assert bench.target_checks([r("har", "m4", "O2", "a8w8", 3600)])[5:7] == [
        "Cortex-M4 -O2 a8w8 with the DSP path: <= 3.5 instructions per MAC: NOT MET",
        "    har: 3,600 instructions / 1,000 MACs = 3.60: not met"]


def test_step_macs_and_site_labels(bench, tmp_path: Path) -> None:
    assert bench.step_macs("conv1d", {"c_in": 6, "l_in": 100, "c_out": 16, "l_out": 100, "k": 5, "groups": 1}) == 48_000
    assert bench.step_macs("conv1d", {"c_in": 8, "c_out": 8, "l_out": 10, "k": 3, "groups": 8}) == 240
    assert bench.step_macs("lstm", {"t": 50, "n_in": 16, "hidden": 32}) == 307_200
    assert bench.step_macs("linear", {"in_features": 32, "out_features": 4, "rows": 1}) == 128
    assert bench.step_macs("transpose", {"perm": [0, 2, 1]}) == 0
    c = tmp_path / "m.c"
    c.write_text("static void qp_k(int *x)\n{\n    qp_helper(x);\n}\n\nvoid m_run(const int *in, int *out)\n{\n"
                 "    int n = 0;\n    /* conv1d: layer/one */\n    qp_k(in);\n    qp_k(out);\n}\n")
    assert bench.site_labels(c, "m_run") == {("m_run", 10): "conv1d: layer/one", ("m_run", 11): "qp_k"}
    assert bench.kernel_kind("conv1d: layer/one") == "conv1d" and bench.kernel_kind(bench.GLUE) == bench.GLUE


@pytest.mark.slow
@needs_arm
@needs_unicorn
@pytest.mark.parametrize("example", ["har", "har_lstm"])
def test_har_examples_on_cortex_m0(bench, tmp_path: Path, example: str) -> None:
    """The HAR examples (Conv1D + LSTM; LSTM + TimeDistributed Dense): every precision's integer build without
    soft-float and emulated equal to runtime_ref; the float build within 1e-4 of onnxruntime."""
    name, variants = bench.prepare(ROOT / "examples" / example / "pipeline.yaml", tmp_path, list(bench.PRECISIONS))
    for v in variants:
        r = bench.bench_variant(name, v, "m0", "O2", tmp_path / "mcu")
        assert r.ok, (v.precision, r.check)
        if v.kind == "int":
            linked = bench.build(v, "cortex-m0", "O2", tmp_path / "mcu" / f"{v.precision}-m0-O2")
            assert not {s for s in _symbols(linked.elf) if SOFT_FLOAT.match(s)}, v.precision
