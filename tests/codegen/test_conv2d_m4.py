"""conv2d's Cortex-M4 DSP path (SMLAD on four consecutive taps) and its portable path, emulated: both equal
runtime_ref bit for bit, and only the M4 build uses SMLAD. Uses tools/bench_mcu.py's build and emulator."""

from __future__ import annotations

import importlib.util
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from qpass.codegen.emit import CTYPE, render, write
from qpass.runtime_ref import run as run_ref

sys.path.insert(0, str(Path(__file__).parent))
import test_kernels_c as cases  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
MISSING = shutil.which("arm-none-eabi-gcc") is None or importlib.util.find_spec("unicorn") is None
pytestmark = pytest.mark.skipif(MISSING, reason="needs arm-none-eabi-gcc and unicorn (pip install -e '.[bench]')")


def _bench():
    spec = importlib.util.spec_from_file_location("bench_mcu", ROOT / "tools" / "bench_mcu.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


# kernel rows of 4 consecutive taps (quad), and a 1x1 conv over [C, H, W]: 4 channels x 2 pixels (cquad)
CASES = {"tall-kernel": cases.conv2d_tall_kernel, "pointwise-flat": cases.conv2d_pointwise_flat}


@pytest.mark.parametrize("core", ["cortex-m4", "cortex-m3"])
@pytest.mark.parametrize("case", list(CASES))
def test_conv2d_dsp_path_equals_runtime_ref(case: str, core: str, tmp_path: Path) -> None:
    bench = _bench()
    rng = np.random.default_rng(13)
    program = CASES[case](rng)
    c_file, h_file = write(render(program), tmp_path, program.name)
    assert "#ifdef QP_DSP" in c_file.read_text()
    tin, tout = program.tensors[program.input], program.tensors[program.output]
    b = None
    for _ in range(3):
        x = rng.integers(-128, 128, tin.size).astype(np.int8)
        expected = np.asarray(run_ref(program, x)).reshape(-1).astype(tout.dtype)
        v = bench.Variant("int", "a8w8", program.name, c_file, h_file, CTYPE[tin.dtype], CTYPE[tout.dtype], x,
                          expected, 0, {})
        b = b or bench.build(v, core, "O2", tmp_path / core)  # the build does not depend on the sample
        _, _, out, _ = bench.emulate(b, v, core)
        assert np.array_equal(out, expected), (core, out.tolist(), expected.tolist())
    dis = subprocess.run(["arm-none-eabi-objdump", "-d", str(b.elf)], capture_output=True, text=True, check=True).stdout
    assert ("smlad" in dis) == (core == "cortex-m4")
