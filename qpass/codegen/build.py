"""Compile the generated C with a small harness and run it on quantized samples (host gcc/clang).

The model's files and the harness live in separate subfolders of a temporary folder, so no model name
(`main`, `harness`, ...) can collide with the harness's files.
"""

from __future__ import annotations

import shutil
import subprocess
import tempfile
from pathlib import Path

import numpy as np

from qpass.errors import CodegenError

WARN_FLAGS = ["-std=c99", "-Wall", "-Wextra", "-Wpedantic", "-Wshadow", "-Wconversion", "-Werror"]

HARNESS = """\
#include <stdio.h>
#include "{name}.h"
/* Reads int samples from stdin until EOF, writes each output to stdout, raw bytes. */
int main(void)
{{
    static {in_t} in[{NAME}_INPUT_SIZE];
    static {out_t} out[{NAME}_OUTPUT_SIZE];
    while (fread(in, sizeof in, 1, stdin) == 1) {{
        {name}_run(in, out);
        if (fwrite(out, sizeof out, 1, stdout) != 1) return 1;
    }}
    return 0;
}}
"""


def compile_and_run(c_file: Path, h_file: Path, name: str, in_t: str, out_t: str, inputs: np.ndarray,
                    out_dtype: str, out_size: int, cc: str = "gcc") -> np.ndarray:
    """Build NAME.c + harness with -Werror and all warnings, run it on `inputs` (N x input size)."""
    if shutil.which(cc) is None:
        raise CodegenError(f"C compiler {cc!r} not found; install it or set codegen.cc")
    with tempfile.TemporaryDirectory(prefix="qpass-cc-") as tmp:
        model_dir, harness_dir = Path(tmp) / "model", Path(tmp) / "harness"
        model_dir.mkdir()
        harness_dir.mkdir()
        shutil.copy(c_file, model_dir / c_file.name)
        shutil.copy(h_file, model_dir / h_file.name)
        harness = harness_dir / "qpass_harness.c"
        harness.write_text(HARNESS.format(name=name, NAME=name.upper(), in_t=in_t, out_t=out_t))
        exe = harness_dir / "qpass_harness"
        cmd = [cc, *WARN_FLAGS, "-O2", "-iquote", str(model_dir), "-o", str(exe), str(model_dir / c_file.name),
               str(harness)]
        proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
        if proc.returncode != 0:
            raise CodegenError(f"compiling {c_file.name} failed:\n{proc.stderr.strip()[:4000]}")
        run = subprocess.run([str(exe)], input=np.ascontiguousarray(inputs).tobytes(), capture_output=True,
                             check=False, timeout=600)
        if run.returncode != 0:
            raise CodegenError(f"running the compiled {name} failed with exit code {run.returncode}")
    out = np.frombuffer(run.stdout, dtype=out_dtype)
    if out.size != len(inputs) * out_size:
        raise CodegenError(f"the compiled {name} wrote {out.size} values, expected {len(inputs) * out_size}")
    return out.reshape(len(inputs), out_size)


def stack_usage(c_file: Path, name: str, cc: str = "gcc", flags: tuple[str, ...] = ("-O2",)) -> int | None:
    """Worst-case stack bytes of NAME_run from the compiler's -fstack-usage report, or None if unknown.

    The call depth is at most NAME_run → NAME_run_with_arena → kernel → helper, so the bound is the sum
    of the two entry frames and the two largest other frames. None when a frame is dynamic (or the
    compiler cannot report it).
    """
    if shutil.which(cc) is None:
        return None
    with tempfile.TemporaryDirectory(prefix="qpass-su-") as tmp:
        obj = Path(tmp) / "m.o"
        proc = subprocess.run([cc, "-std=c99", *flags, "-fstack-usage", "-c", str(c_file), "-o", str(obj)],
                              capture_output=True, text=True, check=False, cwd=tmp)
        su = obj.with_suffix(".su")
        if proc.returncode != 0 or not su.exists():
            return None
        frames: dict[str, int] = {}
        for line in su.read_text().splitlines():
            parts = line.split("\t")
            if len(parts) < 3:
                continue
            if "dynamic" in parts[2] and "bounded" not in parts[2]:
                return None
            frames[parts[0].rsplit(":", 1)[-1]] = int(parts[1])
    entry = frames.pop(f"{name}_run", 0) + frames.pop(f"{name}_run_with_arena", 0)
    frames.pop(f"{name}_quantize_input", None)
    frames.pop(f"{name}_dequantize_output", None)
    return entry + sum(sorted(frames.values(), reverse=True)[:2])
