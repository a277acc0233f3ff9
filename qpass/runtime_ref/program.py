"""The integer program: what lowering produces and what runtime_ref and the C both execute.

A `Program` is a list of `Step`s over integer `QTensor`s. Tensor and step ids are generated
(`t0`, `t1`, ...) and are the only names that reach C identifiers; the model's own names are kept
as `source` for comments and reports.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np


@dataclass
class QTensor:
    id: str
    shape: tuple[int, ...]
    dtype: str  # int8 | int16 | int32
    scale: float
    zero_point: int
    source: str = ""
    alias_of: str | None = None  # a view: same bytes as another tensor
    alias_offset: int = 0  # ... starting this many elements into it

    @property
    def size(self) -> int:
        return int(np.prod(self.shape)) if self.shape else 1


@dataclass
class Step:
    kernel: str
    inputs: list[str]
    outputs: list[str]
    params: dict[str, Any] = field(default_factory=dict)
    origin: str = ""  # the ONNX node it came from


@dataclass
class Program:
    name: str
    tensors: dict[str, QTensor]
    steps: list[Step]
    input: str
    output: str
    constants: dict[str, np.ndarray] = field(default_factory=dict)  # tensor id → integer data

    def root(self, tid: str) -> str:
        return self.view(tid)[0]

    def view(self, tid: str) -> tuple[str, int]:
        """The tensor that owns tid's bytes, and tid's element offset into it."""
        offset = 0
        while self.tensors[tid].alias_of is not None:
            offset += self.tensors[tid].alias_offset
            tid = self.tensors[tid].alias_of
        return tid, offset


def run(program: Program, x_q: np.ndarray, keep: bool = False) -> dict[str, np.ndarray] | np.ndarray:
    """Execute the program on one quantized input; return the output (or every tensor with keep=True)."""
    from qpass.runtime_ref.kernels import KERNELS

    tin = program.tensors[program.input]
    values: dict[str, np.ndarray] = {k: v.reshape(program.tensors[k].shape) for k, v in program.constants.items()}
    values[program.input] = np.asarray(x_q).astype(tin.dtype).reshape(tin.shape)

    def get(tid: str) -> np.ndarray:
        root, offset = program.view(tid)
        t = program.tensors[tid]
        return values[root].reshape(-1)[offset:offset + t.size].reshape(t.shape)

    for step in program.steps:
        out = program.tensors[step.outputs[0]]
        result = KERNELS[step.kernel](step, [get(i) for i in step.inputs], out)
        # a kernel returns its output, or a tuple of its outputs when a scratch output is read later (LSTM c)
        for tid, value in zip(step.outputs, result if isinstance(result, tuple) else (result,), strict=False):
            t = program.tensors[tid]
            assert program.view(tid)[1] == 0, "a kernel writes a whole tensor"
            values[program.root(tid)] = value.astype(t.dtype).reshape(t.shape)
    for tid, t in program.tensors.items():  # views (fused clamps, reshapes) read their root's bytes
        if t.alias_of is not None:
            values[tid] = get(tid)
    return values if keep else values[program.output]
