"""Cortex-M benchmark: the integer C at several precisions against the float C of the same graph, on
Cortex-M0/M3/M4, emulated.

    python tools/bench_mcu.py [--examples autoencoder digits har har_lstm] [--cores m0 m3 m4 m4-nodsp] [--opts O2 Os]
                              [--precisions a8w8 a16w8 a16w16 a8w8-pow2] [--json out.json] [--keep DIR]

(default: every example, core, optimization level and precision). For every examples/*/pipeline.yaml and
every precision, run the qpass pipeline into a temporary folder with the YAML's `quantization` replaced by
that precision (a pipeline that fails is skipped with one line saying why):

    a8w8       int8 activations, int8 weights, fixed-point multiplier requantization
    a16w8      int16 activations, int8 weights, multiplier requantization
    a16w16     int16 activations, int16 weights, multiplier requantization
    a8w8-pow2  int8 activations, int8 weights, power-of-two scales: every rescale is a shift

(per_channel as the YAML says; its precision overrides dropped, so a label means what it says). Take each
run's integer C (NAME.c) and, once per example, the float C of the float graph after the passes
(qpass.codegen.float_c, NAME_float.c), and build each with arm-none-eabi-gcc for each core and
optimization level (m4: -mcpu=cortex-m4, which defines __ARM_FEATURE_DSP, so the C takes its SMLAD path;
m4-nodsp: the same with -U__ARM_FEATURE_DSP, the portable C on the same core): -mthumb -mfloat-abi=soft,
freestanding (-ffreestanding -nostdlib, then libgcc, and newlib's libm for expf/tanhf in the float build), a small
startup (vector table, .data copy, .bss zeroing) and a linker script with .text/.rodata in flash at 0x0 and
.data/.bss/stack in RAM at 0x20000000.

Each ELF runs ONE inference in the unicorn emulator: its segments are loaded, the stack painted, the input
(the first comparison sample, quantized for the integer build) written to the harness's input buffer; then
SP = top of RAM, LR = a stop address and PC = NAME_run / NAME_float_run. A UC_HOOK_BLOCK counter counts every
instruction of every executed block, decoded from the block's bytes (BlockCounter): unicorn's per-instruction
hook skips the condition-failed instructions of IT blocks, which a Cortex-M issues (it undercounted by ~0.9 %
on the integer C and ~12 % on soft float); tests/tools/test_bench_counter.py checks the counter on a
hand-written Thumb-2 program of known count. Instructions, not cycles: no wait states or multi-cycle multiplies
are modelled. Calls into compiler-runtime and libm functions (soft-float __aeabi_f*, and on Cortex-M0, which
has no 32x32->64 multiply, __aeabi_lmul for the integer kernels' int64 math) are counted at their entry points.
Every instruction is attributed to a kernel call of the model's run function through the DWARF line tables
(the C is built with -g, which leaves the code unchanged; addr2line -i maps an inlined kernel's instructions to
the line calling it), out-of-line code and library helpers to the call that led there. MACs come from the
integer program (conv1d, linear, LSTM/GRU dot products). The integer
output must equal qpass.runtime_ref bit for bit, the float output onnxruntime's within 1e-4.

Reported: instructions per inference and per MAC; flash = every byte the image keeps in flash (vector table, .text,
.rodata, .ARM.exidx, the .data initializers); RAM = .data + .bss (the arena, the harness's input and output
buffers, libm's errno) + the measured stack peak; the float/int ratio of each per precision; the
__aeabi_lmul calls per inference on Cortex-M0; Cortex-M4's DSP build against its portable build; the per-kernel
breakdown of every Cortex-M3 and Cortex-M4 -O2 build (instructions per kernel call, and per kernel kind with MACs
and instructions per MAC); then the targets (issue 11's among them), each met / not met with the numbers.
Needs arm-none-eabi-gcc, newlib (libnewlib-arm-none-eabi) and `pip install -e '.[bench]'` (unicorn).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import re
import shutil
import struct
import subprocess
import sys
import tempfile
import time
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import numpy as np  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
CC = "arm-none-eabi-gcc"
CORES = {"m0": "cortex-m0", "m3": "cortex-m3", "m4": "cortex-m4", "m4-nodsp": "cortex-m4"}
# m4-nodsp: the same Cortex-M4 with __ARM_FEATURE_DSP undefined, so the generated C takes its portable path
CORE_FLAGS = {"m4-nodsp": ["-U__ARM_FEATURE_DSP"]}
OPTS = ("O2", "Os")
WARN_FLAGS = ["-std=c99", "-Wall", "-Wextra", "-Wpedantic", "-Wshadow", "-Wconversion", "-Werror"]
FLASH, FLASH_SIZE = 0x00000000, 1 << 20
RAM, RAM_SIZE = 0x20000000, 256 << 10
STOP = FLASH + FLASH_SIZE - 0x100  # LR points here: returning from NAME_run ends the emulation
PAINT = b"\xa5\xa5\xa5\xa5"
FLOAT_TOL = 1e-4
FLASH_SECTIONS = (".isr_vector", ".text", ".rodata", ".ARM.exidx", ".data")
INT8 = {"activations": "int8", "weights": "int8", "requant": "multiplier"}
PRECISIONS = {  # label → the quantization keys it sets (the YAML's per_channel is kept)
    "a8w8": INT8,
    "a16w8": {**INT8, "activations": "int16"},
    "a16w16": {**INT8, "activations": "int16", "weights": "int16"},
    "a8w8-pow2": {**INT8, "requant": "pow2"},
}
FLOAT = "float"
# a8w8 flash bytes measured before issue 11's kernel work (commit cdbbbc0), the flash target's reference
FLASH_BEFORE = {("har", "m3", "Os"): 12_948, ("har", "m0", "Os"): 13_572}

LINKER_SCRIPT = f"""\
/* qpass bench: code and constants in flash at 0x0, data, bss and the stack in RAM at 0x20000000 */
MEMORY
{{
    FLASH (rx)  : ORIGIN = {FLASH:#010x}, LENGTH = {FLASH_SIZE // 1024}K
    RAM   (rwx) : ORIGIN = {RAM:#010x}, LENGTH = {RAM_SIZE // 1024}K
}}
ENTRY(Reset_Handler)
_estack = ORIGIN(RAM) + LENGTH(RAM);
SECTIONS
{{
    .isr_vector : {{ KEEP(*(.isr_vector)) }} > FLASH
    .text : {{ . = ALIGN(4); *(.text*) . = ALIGN(4); }} > FLASH
    .rodata : {{ . = ALIGN(4); *(.rodata*) . = ALIGN(4); }} > FLASH
    .ARM.exidx : {{ *(.ARM.exidx* .gnu.linkonce.armexidx.*) }} > FLASH
    _sidata = LOADADDR(.data);
    .data : {{ . = ALIGN(4); _sdata = .; *(.data*) . = ALIGN(4); _edata = .; }} > RAM AT > FLASH
    .bss (NOLOAD) : {{ . = ALIGN(4); _sbss = .; *(.bss*) *(COMMON) . = ALIGN(4); _ebss = .; }} > RAM
}}
"""

STARTUP = """\
/* qpass bench startup: the vector table's first two words, .data copy, .bss zeroing, one inference. */
#include <stdint.h>

extern uint32_t _sidata, _sdata, _edata, _sbss, _ebss, _estack;
void qb_infer(void);
void Reset_Handler(void);
int *__errno(void);

__attribute__((section(".isr_vector"), used))
static const uintptr_t qb_vectors[2] = { (uintptr_t)&_estack, (uintptr_t)&Reset_Handler };

void Reset_Handler(void)
{
    uint32_t *src = &_sidata, *dst;
    for (dst = &_sdata; dst < &_edata; ++dst) {
        *dst = *src++;
    }
    for (dst = &_sbss; dst < &_ebss; ++dst) {
        *dst = 0;
    }
    qb_infer();
    for (;;) {
    }
}

/* newlib's libm reports range errors through errno: a freestanding image has one int for it */
int *__errno(void)
{
    static int qb_errno;
    return &qb_errno;
}
"""

HARNESS = """\
/* qpass bench harness: the buffers the emulator writes the input to and reads the output from. A model whose
 * input has an arena slot ({API}_INPUT_OFFSET) gets its input written there ({api}_input()): no input buffer. */
#include "{api}.h"

#ifdef {API}_INPUT_OFFSET
#define qb_input {api}_input()
#else
{in_t} qb_input[{API}_INPUT_SIZE];
#endif
{out_t} qb_output[{API}_OUTPUT_SIZE];
void qb_infer(void);

void qb_infer(void)
{{
    {api}_run(qb_input, qb_output);
}}
"""

log = logging.getLogger("bench_mcu")


class BenchError(Exception):
    """A build, an emulation or a check failed."""


@dataclass
class Variant:
    """One C model to benchmark: the files, the API name, one input and the output it must produce."""

    kind: str  # "int" | "float"
    precision: str  # a PRECISIONS label, or "float"
    api: str  # NAME or NAME_float
    c_file: Path
    h_file: Path
    in_t: str
    out_t: str
    x: np.ndarray  # the input, in the C's element type
    expected: np.ndarray  # runtime_ref's integers / onnxruntime's floats
    arena_bytes: int
    macs: dict[str, int] = field(default_factory=dict)  # kernel (the program step's kind) → MACs per inference


@dataclass
class Build:
    elf: Path
    sections: dict[str, int]
    symbols: dict[str, int]  # name → address
    lib_functions: dict[int, str]  # entry address → name, for functions from libgcc / libm
    site_of: dict[int, Site] = field(default_factory=dict)  # instruction address → line of the run function

    @property
    def flash(self) -> int:
        return sum(self.sections.get(s, 0) for s in FLASH_SECTIONS)

    @property
    def static_ram(self) -> int:
        return self.sections.get(".data", 0) + self.sections.get(".bss", 0)


@dataclass
class Result:
    model: str
    core: str
    opt: str
    kind: str
    precision: str
    instructions: int
    flash: int
    ram: int
    stack: int
    arena: int
    ok: bool
    check: str  # what the output check found
    lib_calls: dict[str, int] = field(default_factory=dict)
    macs: int = 0  # multiply-accumulates per inference, from the integer program
    kernels: dict[str, int] = field(default_factory=dict)  # kernel call (its C comment) → instructions
    kernel_macs: dict[str, int] = field(default_factory=dict)  # kernel kind → MACs

    @property
    def per_mac(self) -> float:
        return self.instructions / self.macs if self.macs else float("nan")


def step_macs(kernel: str, params: dict) -> int:
    """Multiply-accumulates of one program step: the dot products of conv1d, conv2d, linear and recurrent kernels
    (LSTM: 4 gates, GRU: 3, each over input and hidden state); element-wise and data-movement kernels: 0."""
    p = params
    if kernel == "conv1d" and {"c_out", "l_out", "k", "c_in"} <= p.keys():
        return int(p["c_out"] * p["l_out"] * p["k"] * (p["c_in"] // max(int(p.get("groups", 1)), 1)))
    if kernel == "conv2d" and "dims" in p:  # dims: c_in, h_in, w_in, c_out, h_out, w_out, kh, kw, ..., groups
        d = [int(v) for v in p["dims"]]
        return d[3] * d[4] * d[5] * d[6] * d[7] * (d[0] // max(d[14], 1))
    if kernel == "linear" and {"in_features", "out_features"} <= p.keys():
        return int(p.get("rows", 1) * p["in_features"] * p["out_features"])
    gates = {"lstm": 4, "gru": 3, "rnn": 1}.get(kernel)
    if gates and {"t", "n_in", "hidden"} <= p.keys():
        return int(p["t"] * gates * p["hidden"] * (p["n_in"] + p["hidden"]))
    return 0


# -- preparing the C files of one example ---------------------------------------------------------
def prepare(pipeline_yaml: Path, work: Path, precisions: tuple[str, ...] | list[str] = ("a8w8",)
            ) -> tuple[str, list[Variant]]:
    """Run the pipeline once per precision (the first run dumps the stages), write the float C of the float
    graph after the passes, and compute the expected outputs of one sample. Variants: one integer C per
    precision, in the order given, then the float C."""
    import onnx_ir as ir

    from qpass.codegen import float_c
    from qpass.codegen.emit import CTYPE
    from qpass.codegen.lower import lower
    from qpass.config import load_pipeline
    from qpass.data import load_array
    from qpass.ort import session
    from qpass.pipeline import run_pipeline
    from qpass.runtime_ref import run as run_ref
    from qpass.runtime_ref.intmath import quantize

    if not precisions:
        raise ValueError("at least one precision: the float build is the baseline of every ratio")
    pipe = load_pipeline(pipeline_yaml)
    name = pipe.codegen.name
    section = pipe.compare or pipe.calibration
    x = np.asarray(load_array(pipe.resolve(section.path), section.key, yaml_file=str(pipeline_yaml),
                              yaml_key="compare.key")[:1], dtype=np.float32)
    variants: list[Variant] = []
    float_model = None
    macs: Counter = Counter()
    for precision in precisions:
        out = work / precision
        run_pipeline(pipe.model_copy(update={
            "quantization": pipe.quantization.model_copy(update={**PRECISIONS[precision], "overrides": []}),
            "codegen": pipe.codegen.model_copy(update={"output_dir": str(out)}),
        }), dump=float_model is None)
        if float_model is None:
            float_model = ir.load(str(next(iter(sorted((out / "stages").glob("*_float_final.onnx"))))))
        program = lower(ir.load(str(out / f"{name}.qdq.onnx")), name)
        macs = Counter()
        for step in program.steps:
            macs[step.kernel] += step_macs(step.kernel, step.params)
        tin, tout = program.tensors[program.input], program.tensors[program.output]
        xq = quantize(x, tin.scale, tin.zero_point, tin.dtype).reshape(-1)
        yq = np.asarray(run_ref(program, xq)).reshape(-1).astype(tout.dtype)
        variants.append(Variant("int", precision, name, out / f"{name}.c", out / f"{name}.h", CTYPE[tin.dtype],
                                CTYPE[tout.dtype], xq, yq, _arena_macro(out / f"{name}.h", name),
                                {k: n for k, n in macs.items() if n}))

    gen = float_c.generate(float_model, name, source=f"{name} float graph")
    (work / FLOAT).mkdir(parents=True, exist_ok=True)
    fc_file, fh_file = float_c.write(gen, work / FLOAT, name)
    in_value = float_model.graph.inputs[0]
    y_ort = session(float_model).run(None, {in_value.name: x.reshape(tuple(in_value.shape))})[0].reshape(-1)
    variants.append(Variant("float", FLOAT, f"{name}_float", fc_file, fh_file, "float", "float", x.reshape(-1),
                            y_ort.astype(np.float32), gen.arena_bytes, {k: n for k, n in macs.items() if n}))
    return name, variants


def _arena_macro(h_file: Path, api: str) -> int:
    return _header_int(h_file, f"{api.upper()}_ARENA_BYTES") or 0


def _header_int(h_file: Path, macro: str) -> int | None:
    """The integer a header #defines as `macro`, None when it defines none."""
    key = f"#define {macro} "
    for line in h_file.read_text().splitlines():
        if line.startswith(key):
            return int(line[len(key):].split()[0])
    return None


# -- building -----------------------------------------------------------------------------------
def _run(cmd: list[str], what: str) -> str:
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise BenchError(f"{what} failed:\n{' '.join(cmd)}\n{proc.stderr.strip()[:3000]}")
    return proc.stdout + proc.stderr


def arch_flags(cpu: str, opt: str, core: str = "") -> list[str]:
    return [f"-mcpu={cpu}", *CORE_FLAGS.get(core, []), "-mthumb", "-mfloat-abi=soft", f"-{opt}", "-ffreestanding",
            "-ffunction-sections", "-fdata-sections"]


def build(v: Variant, cpu: str, opt: str, work: Path, core: str = "") -> Build:
    """Compile the model (zero warnings), the harness and the startup; link a freestanding image."""
    work.mkdir(parents=True, exist_ok=True)
    (work / "link.ld").write_text(LINKER_SCRIPT)
    (work / "startup.c").write_text(STARTUP)
    (work / "harness.c").write_text(HARNESS.format(api=v.api, API=v.api.upper(), in_t=v.in_t, out_t=v.out_t))
    shutil.copy(v.h_file, work / v.h_file.name)
    flags = arch_flags(cpu, opt, core)
    objs = []
    for src, strict in ((v.c_file, True), (work / "harness.c", True), (work / "startup.c", False)):
        obj = work / (src.stem + ".o")
        warn = WARN_FLAGS if strict else ["-std=c99", "-Wall", "-Wextra", "-Werror"]
        text = _run([CC, *flags, *warn, "-g", "-I", str(work), "-c", str(src), "-o", str(obj)],
                    f"compiling {src.name}")  # -g: line tables for the per-kernel breakdown; code unchanged
        if strict and text.strip():
            raise BenchError(f"compiling {src.name} printed warnings:\n{text.strip()[:3000]}")
        objs.append(obj)
    elf = work / f"{v.api}.elf"
    libs = ["-lm", "-lgcc"] if v.kind == "float" else ["-lgcc"]
    _run([CC, *flags, "-nostdlib", "-Wl,--gc-sections", "-T", str(work / "link.ld"), *map(str, objs), *libs,
          "-o", str(elf)], "linking")
    own = set()
    for obj in objs:
        own |= {parts[-1] for parts in _nm(obj) if parts[-2] in "TtDdBbRr"}
    symbols, lib_functions = {}, {}
    for parts in _nm(elf):
        if len(parts) == 3:
            addr, kind, name = int(parts[0], 16), parts[1], parts[2]
            symbols[name] = addr
            if kind in "TtWw" and name not in own and not name.startswith("$"):
                prev = lib_functions.get(addr & ~1)
                if prev is None or (name.startswith("__aeabi") and not prev.startswith("__aeabi")):
                    lib_functions[addr & ~1] = name
    return Build(elf, _sections(elf), symbols, lib_functions, _sites(elf, objs[0], v.c_file.name, f"{v.api}_run"))


def _sites(elf: Path, model_obj: Path, c_name: str, run_prefix: str) -> dict[int, Site]:
    """Every halfword address of the model's functions → the line of its run function (NAME_run*) that the
    instruction serves, from the DWARF line tables with inlining (addr2line -i): the outermost frame when it is
    a run function (an inlined kernel's instructions → the line that calls it). Out-of-line code gets none."""
    model_functions = {parts[-1] for parts in _nm(model_obj) if parts[-2] in "Tt"}
    addrs = []
    for parts in (line.split() for line in _run(["arm-none-eabi-nm", "-S", "--defined-only", str(elf)], "nm")
                  .splitlines()):
        if len(parts) == 4 and parts[2] in "Tt" and parts[3] in model_functions:
            start = int(parts[0], 16) & ~1
            addrs += range(start, start + int(parts[1], 16), 2)
    if not addrs:
        return {}
    proc = subprocess.run(["arm-none-eabi-addr2line", "-a", "-f", "-i", "-e", str(elf)], capture_output=True,
                          text=True, check=True, input="\n".join(f"{a:#x}" for a in addrs))
    sites: dict[int, Site] = {}
    addr, frames = None, []
    for line in [*proc.stdout.splitlines(), "0x0"]:
        if line.startswith("0x") and len(frames) % 2 == 0:
            if addr is not None and frames:
                function, where = frames[-2], frames[-1].split(" ")[0]
                path, _, number = where.rpartition(":")
                if function.startswith(run_prefix) and Path(path).name == c_name and number.isdigit():
                    sites[addr] = (function, int(number))
            addr, frames = int(line, 16), []
        else:
            frames.append(line.strip())
    return sites


def _nm(path: Path) -> list[list[str]]:
    return [line.split() for line in _run(["arm-none-eabi-nm", str(path)], "nm").splitlines() if line.strip()]


def _sections(elf: Path) -> dict[str, int]:
    out = {}
    for line in _run(["arm-none-eabi-size", "-A", "-d", str(elf)], "size").splitlines():
        parts = line.split()
        if len(parts) == 3 and parts[0].startswith(".") and parts[1].isdigit():
            out[parts[0]] = int(parts[1])
    return out


# -- emulating ----------------------------------------------------------------------------------
def load_segments(elf: Path) -> list[tuple[int, int, bytes, int]]:
    """PT_LOAD segments of a 32-bit little-endian ELF: (virtual address, load address, file bytes, memory size)."""
    data = elf.read_bytes()
    if data[:4] != b"\x7fELF" or data[4] != 1 or data[5] != 1:
        raise BenchError(f"{elf} is not a 32-bit little-endian ELF")
    phoff = struct.unpack_from("<I", data, 0x1C)[0]
    phentsize, phnum = struct.unpack_from("<HH", data, 0x2A)
    segments = []
    for i in range(phnum):
        p_type, off, vaddr, paddr, filesz, memsz = struct.unpack_from("<6I", data, phoff + i * phentsize)
        if p_type == 1:
            segments.append((vaddr, paddr, data[off:off + filesz], memsz))
    return segments


def thumb_offsets(code: bytes) -> list[int]:
    """Byte offsets of the instructions in a run of Thumb code: a halfword whose top five bits are 0b11101,
    0b11110 or 0b11111 starts a 32-bit instruction, any other a 16-bit one (ARMv6-M / ARMv7-M encoding)."""
    offsets, i = [], 0
    while i + 1 < len(code):
        offsets.append(i)
        i += 4 if (code[i + 1] >> 3) in (0b11101, 0b11110, 0b11111) else 2
    return offsets


Site = tuple[str, int]  # (function, line) in the model's C: a line of its run function


class BlockCounter:
    """Counts every executed instruction with a UC_HOOK_BLOCK hook: each time a translation block runs, all its
    instructions are counted, found by decoding the block's bytes once (cached per block address and size).

    unicorn's per-instruction hook (UC_HOOK_CODE) is not called for the instructions of an IT block whose
    condition fails, which a Cortex-M still issues; a block hook sees them, since they are part of the block.

    With `site_of` (instruction address → the line of the model's run function it belongs to, or None), every
    instruction is also attributed to a site: its own, or, for code outside the run function's inlined kernels
    (a kernel gcc kept out of line, a libgcc helper), the last site executed before it: the call that led there.
    """

    def __init__(self, uc, site_of: dict[int, Site] | None = None) -> None:
        from unicorn import UC_HOOK_BLOCK

        self.site_of = site_of or {}
        self.blocks: dict[tuple[int, int], tuple[tuple[Site | None, ...], Site | None]] = {}
        self.runs: Counter = Counter()  # (site on entry, block address, block size) → executions
        self.site: Site | None = None
        uc.hook_add(UC_HOOK_BLOCK, self._on_block)

    def _on_block(self, uc, addr: int, size: int, _data) -> None:
        key = (addr, size)
        info = self.blocks.get(key)
        if info is None:
            sites = tuple(self.site_of.get(addr + o) for o in thumb_offsets(bytes(uc.mem_read(addr, size))))
            info = self.blocks[key] = (sites, next((x for x in reversed(sites) if x is not None), None))
        self.runs[(self.site, addr, size)] += 1
        if info[1] is not None:
            self.site = info[1]

    @property
    def total(self) -> int:
        return sum(n * len(self.blocks[(addr, size)][0]) for (_, addr, size), n in self.runs.items())

    def by_site(self) -> Counter:
        """Instructions per site (None: before the first site)."""
        out: Counter = Counter()
        for (site, addr, size), n in self.runs.items():
            for own in self.blocks[(addr, size)][0]:
                site = own if own is not None else site
                out[site] += n
        return out


def emulate(b: Build, v: Variant, cpu: str) -> tuple[BlockCounter, int, np.ndarray, Counter]:
    """One inference: (its instruction counter, stack peak in bytes, the output, calls per library function)."""
    from unicorn import UC_ARCH_ARM, UC_HOOK_CODE, UC_MODE_MCLASS, UC_MODE_THUMB, Uc, UcError
    from unicorn import arm_const as arm

    uc = Uc(UC_ARCH_ARM, UC_MODE_THUMB | UC_MODE_MCLASS)
    uc.ctl_set_cpu_model(getattr(arm, f"UC_CPU_ARM_{cpu.upper().replace('-', '_')}"))
    uc.mem_map(FLASH, FLASH_SIZE)
    uc.mem_map(RAM, RAM_SIZE)
    for vaddr, paddr, body, memsz in load_segments(b.elf):
        uc.mem_write(vaddr, body + bytes(memsz - len(body)))  # .data as the startup leaves it; .bss zeroed
        if paddr != vaddr:
            uc.mem_write(paddr, body)
    ebss, estack = b.symbols["_ebss"], b.symbols["_estack"]
    uc.mem_write(ebss, PAINT * ((estack - ebss) // 4))
    x = np.ascontiguousarray(v.x).tobytes()
    offset = _header_int(v.h_file, f"{v.api.upper()}_INPUT_OFFSET")
    x_addr = b.symbols["qb_input"] if offset is None else b.symbols["qp_arena"] + offset
    uc.mem_write(x_addr, x)

    counter = BlockCounter(uc, b.site_of)
    calls: Counter = Counter()

    def on_entry(_uc, addr, _size, _data) -> None:
        calls[b.lib_functions[addr]] += 1

    for addr in b.lib_functions:
        uc.hook_add(UC_HOOK_CODE, on_entry, begin=addr, end=addr)
    uc.reg_write(arm.UC_ARM_REG_SP, estack)
    uc.reg_write(arm.UC_ARM_REG_LR, STOP | 1)
    uc.reg_write(arm.UC_ARM_REG_R0, x_addr)
    uc.reg_write(arm.UC_ARM_REG_R1, b.symbols["qb_output"])
    try:
        uc.emu_start(b.symbols[f"{v.api}_run"] | 1, STOP)
    except UcError as exc:
        pc = uc.reg_read(arm.UC_ARM_REG_PC)
        raise BenchError(f"{v.api} on {cpu}: emulation stopped at pc={pc:#x}: {exc}") from None
    if uc.reg_read(arm.UC_ARM_REG_PC) != STOP:
        raise BenchError(f"{v.api} on {cpu}: did not return")
    ram = bytes(uc.mem_read(ebss, estack - ebss))
    low = next((i for i in range(0, len(ram), 4) if ram[i:i + 4] != PAINT), len(ram))
    out = np.frombuffer(bytes(uc.mem_read(b.symbols["qb_output"], v.expected.nbytes)), dtype=v.expected.dtype)
    return counter, len(ram) - low, out.copy(), calls


def check(v: Variant, out: np.ndarray) -> tuple[bool, str]:
    if v.kind == "int":
        same = bool(np.array_equal(out, v.expected))
        return same, "== runtime_ref" if same else f"differs from runtime_ref: {out.tolist()} vs {v.expected.tolist()}"
    err = float(np.abs(out.astype(np.float64) - v.expected).max())
    return err < FLOAT_TOL, f"max |err| vs onnxruntime {err:.1e}"


def bench_variant(model: str, v: Variant, core: str, opt: str, work: Path) -> Result:
    cpu = CORES[core]
    b = build(v, cpu, opt, work / f"{v.precision}-{core}-{opt}", core)
    counter, stack, out, calls = emulate(b, v, cpu)
    ok, what = check(v, out)
    kernels: Counter = Counter()
    labels = site_labels(v.c_file, f"{v.api}_run")
    for site, n in counter.by_site().items():
        kernels[labels.get(site, GLUE) if site else GLUE] += n
    return Result(model, core, opt, v.kind, v.precision, counter.total, b.flash, b.static_ram + stack, stack,
                  v.arena_bytes, ok, what, dict(calls.most_common()), sum(v.macs.values()),
                  dict(kernels.most_common()), dict(v.macs))


GLUE = "(glue)"  # the run function's own instructions, between kernel calls


C_KEYWORDS = {"if", "for", "while", "switch", "return", "sizeof"}  # `if (` is a statement, not a kernel call


def site_labels(c_file: Path, run_prefix: str) -> dict[Site, str]:
    """Each line of the model's run functions that calls a kernel → that call's comment (`/* conv1d: name */`,
    the line above it) or, without one, the called function's name. Other lines: none (glue)."""
    labels: dict[Site, str] = {}
    function = None
    lines = c_file.read_text().splitlines()
    for number, text in enumerate(lines, start=1):
        head = re.match(r"^\w[\w\s\*]*?\b(\w+)\s*\(", text)
        if head and not text.rstrip().endswith(";"):
            function = head.group(1)
            continue
        call = re.match(r"^\s+(\w+)\s*\(", text)
        if (function is None or not function.startswith(run_prefix) or not call or call.group(1).startswith(run_prefix)
                or call.group(1) in C_KEYWORDS):
            continue
        comment = re.match(r"^\s*/\*\s*(.*?)\s*\*/\s*$", lines[number - 2]) if number > 1 else None
        labels[(function, number)] = comment.group(1) if comment else call.group(1)
    return labels


def kernel_kind(label: str) -> str:
    """`layer 3 lstm: 50x1x16 -> ...` (integer C) or `lstm: LSTM har_1_...` (float C) → lstm: the program
    step's kernel, the last word before the comment's first colon."""
    return label.split(":", 1)[0].split()[-1] if ":" in label and label != GLUE else label


# -- report ---------------------------------------------------------------------------------------
METRICS = (  # (title, Result attribute, ratio format)
    ("Instructions per inference", "instructions", ".1f"),
    ("Flash bytes", "flash", ".2f"),
    ("RAM bytes (.data + .bss + stack peak)", "ram", ".2f"),
)


def _index(results: list[Result]) -> dict[tuple[str, str, str, str], Result]:
    return {(r.model, r.core, r.opt, r.precision): r for r in results}


def tables(results: list[Result], precisions: list[str]) -> str:
    """One markdown table per metric: a row per model, core and opt; the float build, then each precision
    with float / int in parentheses. A build whose output check failed is marked FAIL, a missing one n/a."""
    rows = _index(results)
    configs = list(dict.fromkeys((r.model, r.core, r.opt) for r in results))
    out = []
    for title, attr, fmt in METRICS:
        out += [f"{title} (float / int in parentheses):", "",
                "| model | core | opt | float | " + " | ".join(precisions) + " |",
                "|---|---|---|---:|" + "---:|" * len(precisions)]
        for model, core, opt in configs:
            f = rows.get((model, core, opt, FLOAT))
            cells = [_cell(f, attr)]
            for p in precisions:
                i = rows.get((model, core, opt, p))
                cell = _cell(i, attr)
                if i is not None and f is not None and getattr(i, attr):
                    cell += f" ({getattr(f, attr) / getattr(i, attr):{fmt}}x)"
                cells.append(cell)
            out.append(f"| {model} | {core} | -{opt} | " + " | ".join(cells) + " |")
        out.append("")
    return "\n".join(out).rstrip()


def per_mac_table(results: list[Result], precisions: list[str]) -> str:
    """MACs per inference (from the integer program) and instructions per MAC of every build."""
    rows = _index(results)
    configs = list(dict.fromkeys((r.model, r.core, r.opt) for r in results))
    out = ["Instructions per MAC:", "", "| model | core | opt | MACs | float | " + " | ".join(precisions) + " |",
           "|---|---|---|---:|---:|" + "---:|" * len(precisions)]
    for model, core, opt in configs:
        found = [rows.get((model, core, opt, p)) for p in [FLOAT, *precisions]]
        macs = next((r.macs for r in found if r is not None and r.macs), 0)
        cells = ["n/a" if r is None or not r.macs else f"{r.per_mac:.2f}" + ("" if r.ok else " FAIL") for r in found]
        out.append(f"| {model} | {core} | -{opt} | {macs:,} | " + " | ".join(cells) + " |")
    return "\n".join(out)


def _cell(r: Result | None, attr: str) -> str:
    if r is None:
        return "n/a"
    return f"{getattr(r, attr):,}" + ("" if r.ok else " FAIL")


def lmul_table(results: list[Result], precisions: list[str]) -> str:
    """__aeabi_lmul calls per inference on Cortex-M0 (no 32x32->64 multiply): what pow2 requantization saves."""
    m0 = [r for r in results if r.core == "m0" and r.kind == "int"]
    if not m0:
        return ""
    rows = _index(m0)
    lines = ["__aeabi_lmul calls per inference on Cortex-M0:", "",
             "| model | opt | " + " | ".join(precisions) + " |", "|---|---|" + "---:|" * len(precisions)]
    for model, opt in dict.fromkeys((r.model, r.opt) for r in m0):
        cells = [(f"{r.lib_calls.get('__aeabi_lmul', 0):,}" if (r := rows.get((model, "m0", opt, p))) else "n/a")
                 for p in precisions]
        lines.append(f"| {model} | -{opt} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def dsp_table(results: list[Result], precisions: list[str]) -> str:
    """Cortex-M4: the DSP build (SMLAD) against the portable C on the same core (m4-nodsp), per precision."""
    rows = _index(results)
    pairs = list(dict.fromkeys((r.model, r.opt) for r in results if r.core == "m4"))
    if not any(rows.get((m, "m4-nodsp", o, p)) for m, o in pairs for p in precisions):
        return ""
    lines = ["Cortex-M4: DSP path vs portable C (instructions per MAC; portable / DSP in parentheses):", "",
             "| model | opt | " + " | ".join(precisions) + " |", "|---|---|" + "---:|" * len(precisions)]
    for model, opt in pairs:
        cells = []
        for p in precisions:
            d, n = rows.get((model, "m4", opt, p)), rows.get((model, "m4-nodsp", opt, p))
            if d is None or n is None or not d.macs:
                cells.append("n/a")
                continue
            fail = "" if d.ok and n.ok else " FAIL"
            cells.append(f"{d.per_mac:.2f} vs {n.per_mac:.2f} ({n.instructions / d.instructions:.2f}x){fail}")
        lines.append(f"| {model} | -{opt} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def breakdown(r: Result) -> str:
    """Where one build's instructions went: a row per kernel call (its C comment), then per kernel kind with
    its MACs and instructions per MAC. Library helpers (soft float, __aeabi_lmul) count for their caller."""
    total = r.instructions or 1
    lines = [f"Per-kernel breakdown: {r.model} {r.precision} {r.core} -{r.opt} ({r.instructions:,} instructions, "
             f"{r.macs:,} MACs, {r.per_mac:.2f} per MAC)", "", "| kernel | instructions | share |", "|---|---:|---:|"]
    kinds: Counter = Counter()
    for label, n in r.kernels.items():
        lines.append(f"| {label} | {n:,} | {n / total:.1%} |")
        kinds[kernel_kind(label)] += n
    lines += ["", "| kind | instructions | share | MACs | instructions / MAC |", "|---|---:|---:|---:|---:|"]
    for kind, n in kinds.most_common():
        macs = r.kernel_macs.get(kind, 0)
        lines.append(f"| {kind} | {n:,} | {n / total:.1%} | {macs:,} | {f'{n / macs:.2f}' if macs else '-'} |")
    return "\n".join(lines)


def helper_lines(results: list[Result]) -> list[str]:
    lines = []
    for r in results:
        if r.opt == "O2" and r.lib_calls:
            top = ", ".join(f"{k} {n:,}" for k, n in list(r.lib_calls.items())[:6])
            lines.append(f"  {r.model} {r.precision} {r.core} -O2 library calls: {top}")
    return lines


def target_checks(results: list[Result]) -> list[str]:
    """The issue's targets, each with the numbers it was decided on: met, not met, or not measured."""
    rows = _index(results)
    lines = []

    def verdict(title: str, parts: list[tuple[str, bool]]) -> None:
        if not parts:
            lines.append(f"{title}: not measured")
            return
        lines.append(f"{title}: {'met' if all(ok for _, ok in parts) else 'NOT MET'}")
        lines.extend(f"    {text}: {'met' if ok else 'not met'}" for text, ok in parts)

    speed = []
    for opt in OPTS:
        i, f = rows.get(("har", "m3", opt, "a8w8")), rows.get(("har", "m3", opt, FLOAT))
        if i and f and i.ok and f.ok:
            x = f.instructions / i.instructions
            speed.append((f"-{opt}: a8w8 {i.instructions:,} vs float {f.instructions:,} instructions = {x:.1f}x",
                          x >= 6))
    verdict("har on Cortex-M3: int8 runs >= 6x fewer instructions than float", speed)

    ram = []
    for core in CORES:
        for opt in OPTS:
            i, f = rows.get(("har", core, opt, "a16w8")), rows.get(("har", core, opt, FLOAT))
            if i and f and i.ok and f.ok:
                share = i.ram / f.ram
                ram.append((f"{core} -{opt}: a16w8 {i.ram:,} vs float {f.ram:,} bytes = {share:.1%}", share <= 0.5))
    verdict("har: int16 (a16w8) RAM <= 50% of float RAM", ram)

    per_mac, ratio, os_o2 = [], [], []
    for ex in ("har", "har_lstm"):
        i, f, s = (rows.get((ex, "m3", o, p)) for o, p in (("O2", "a8w8"), ("O2", FLOAT), ("Os", "a8w8")))
        if i and i.ok and i.macs:
            per_mac.append((f"{ex}: {i.instructions:,} instructions / {i.macs:,} MACs = {i.per_mac:.2f}",
                            i.per_mac <= 5))
        if i and f and i.ok and f.ok:
            x = f.instructions / i.instructions
            ratio.append((f"{ex}: float {f.instructions:,} / a8w8 {i.instructions:,} = {x:.1f}x", x >= 15))
        if i and s and i.ok and s.ok:
            x = s.instructions / i.instructions - 1
            os_o2.append((f"{ex}: -Os {s.instructions:,} vs -O2 {i.instructions:,} instructions = {x:+.1%}",
                          x <= 0.30))
    verdict("Cortex-M3 -O2 a8w8: <= 5 instructions per MAC", per_mac)
    verdict("Cortex-M3 -O2: float / a8w8 instructions >= 15x", ratio)
    verdict("Cortex-M3 a8w8: -Os within 30% of -O2", os_o2)
    m4 = []
    i, n = rows.get(("har", "m4", "O2", "a8w8")), rows.get(("har", "m4-nodsp", "O2", "a8w8"))
    if i and i.ok and i.macs:
        portable = f" (portable C on the same core: {n.per_mac:.2f})" if n and n.ok else ""
        m4.append((f"har: {i.instructions:,} instructions / {i.macs:,} MACs = {i.per_mac:.2f}{portable}",
                   i.per_mac <= 3.5))
    verdict("Cortex-M4 -O2 a8w8 with the DSP path: <= 3.5 instructions per MAC", m4)
    verdict("Cortex-M0: no __aeabi_lmul in any a8w8-pow2 build",
            [(f"{r.model} -{r.opt}: {r.lib_calls.get('__aeabi_lmul', 0):,} calls", not r.lib_calls.get("__aeabi_lmul"))
             for r in results if r.core == "m0" and r.precision == "a8w8-pow2" and r.ok])
    flash = []
    for (ex, core, opt), before in FLASH_BEFORE.items():
        i = rows.get((ex, core, opt, "a8w8"))
        if i and i.ok:
            flash.append((f"{ex} {core} -{opt}: {i.flash:,} bytes vs {before:,} before issue 11 = "
                          f"{i.flash / before - 1:+.1%}", i.flash <= 1.10 * before))
    verdict("a8w8 flash at -Os no more than 10% above the flash before issue 11", flash)
    m0 = [r for r in results if r.core == "m0" and r.precision == "a8w8" and r.ok and r.macs]
    lines += [f"Cortex-M0 a8w8 instructions per MAC: {r.model} -{r.opt}: {r.per_mac:.2f}" for r in m0]
    return lines


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--examples", nargs="+", metavar="NAME",
                    help="example folder names (default: every examples/*/pipeline.yaml)")
    ap.add_argument("--cores", nargs="+", default=list(CORES), choices=list(CORES))
    ap.add_argument("--opts", nargs="+", default=list(OPTS), choices=list(OPTS))
    ap.add_argument("--precisions", nargs="+", default=list(PRECISIONS), choices=list(PRECISIONS),
                    help="integer builds to measure against the float build (default: all)")
    ap.add_argument("--json", type=Path, help="also write every measurement here")
    ap.add_argument("--keep", type=Path, help="build here and keep the ELFs (default: a temporary folder)")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(message)s")
    if shutil.which(CC) is None:
        print(f"{CC} not found: apt-get install gcc-arm-none-eabi libnewlib-arm-none-eabi", file=sys.stderr)
        return 2
    try:
        import unicorn  # noqa: F401
    except ImportError:
        print("unicorn not installed: pip install -e '.[bench]'", file=sys.stderr)
        return 2

    from qpass.errors import QpassError

    yamls = sorted((ROOT / "examples").glob("*/pipeline.yaml"))
    if args.examples:
        unknown = sorted(set(args.examples) - {y.parent.name for y in yamls})
        if unknown:
            print(f"no examples/<name>/pipeline.yaml for: {', '.join(unknown)}", file=sys.stderr)
            return 2
        yamls = [y for y in yamls if y.parent.name in args.examples]
    precisions = list(dict.fromkeys(args.precisions))
    results: list[Result] = []
    errors: list[str] = []
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="qpass-bench-") as tmp:
        base = args.keep or Path(tmp)
        for yaml in yamls:
            ex = yaml.parent.name
            try:
                model, variants = prepare(yaml, base / ex, precisions)
            except (QpassError, StopIteration) as exc:
                first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
                print(f"skip {ex}: {type(exc).__name__}: {first}", flush=True)
                continue
            for core in args.cores:
                for opt in args.opts:
                    for v in variants:
                        try:
                            r = bench_variant(model, v, core, opt, base / ex / "mcu")
                        except BenchError as exc:
                            errors.append(f"{model} {v.precision} {core} -{opt}: {exc}")
                            print(f"{model:10s} {core} -{opt} {v.precision:9s} FAILED: {str(exc).splitlines()[0]}",
                                  flush=True)
                            continue
                        results.append(r)
                        print(f"{model:10s} {core} -{opt} {r.precision:9s} {r.instructions:>12,} instr "
                              f"({r.per_mac:5.2f}/MAC)  flash "
                              f"{r.flash:>7,}  RAM {r.ram:>7,} (stack {r.stack:>4})  "
                              f"{'ok' if r.ok else 'FAIL'}: {r.check}", flush=True)
    elapsed = time.monotonic() - started
    print()
    print(tables(results, precisions))
    print()
    print(per_mac_table(results, precisions))
    dsp = dsp_table(results, precisions)
    if dsp:
        print()
        print(dsp)
    lmul = lmul_table(results, precisions)
    if lmul:
        print()
        print(lmul)
    print()
    print("Library calls per inference at -O2 (the most frequent six):")
    for line in helper_lines(results):
        print(line)
    for r in results:
        if r.core in ("m3", "m4") and r.opt == "O2" and r.kernels:
            print()
            print(breakdown(r))
    print()
    for line in target_checks(results):
        print(line)
    print(f"\n{len(results)} builds measured in {elapsed / 60:.1f} min ({elapsed:.0f} s)")
    if args.json:
        args.json.write_text(json.dumps([asdict(r) for r in results], indent=1) + "\n")
    failed = [f"{r.model} {r.precision} {r.core} -{r.opt}: {r.check}" for r in results if not r.ok] + errors
    for line in failed:
        print(f"FAILED {line}", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
