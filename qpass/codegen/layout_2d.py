"""Fold the layout Transposes around the 2-D kernels into the kernels (a Program rewrite, both backends).

tf2onnx writes a Keras NHWC model as Transpose(NHWC → NCHW) → Conv ... Conv → Transpose(NCHW → NHWC) → Flatten.
conv2d and pool2d read and write either layout (dims[-2]: x channels-last, dims[-1]: y channels-last), so:

    t = transpose(x, perm 0,3,1,2)   y = conv2d(t)            →   y = conv2d(x)  with x_hwc = 1
    y = conv2d(x)   z = transpose(y, perm 0,2,3,1)            →   z = conv2d(x)  with y_hwc = 1

when the transpose's output (or the kernel's output) has no other reader and is not a view. The C keeps no
transposes for such a model; the tensors between the 2-D kernels stay channels-first, the arena is unchanged
(the transposed tensor simply disappears).
"""

from __future__ import annotations

import logging
from collections import Counter

from qpass.runtime_ref.program import Program, Step

KERNELS_2D = ("conv2d", "pool2d")
TO_CHW, TO_HWC = [0, 3, 1, 2], [0, 2, 3, 1]
log = logging.getLogger(__name__)


def fold_layout_transposes(program: Program) -> int:
    """Remove every transpose that folds into a neighbouring 2-D kernel; return how many were folded."""
    readers: Counter[str] = Counter(program.root(i) for s in program.steps for i in s.inputs)
    producer = {s.outputs[0]: s for s in program.steps}
    out_root = program.root(program.output)
    dropped: set[int] = set()
    for s in program.steps:
        perm = list(s.params.get("perm", []))
        if s.kernel != "transpose" or perm not in (TO_CHW, TO_HWC):
            continue
        src, dst = s.inputs[0], s.outputs[0]
        if perm == TO_CHW:  # the kernel after it reads the transpose's input, channels-last
            users = [u for u in program.steps if dst in u.inputs]
            if (len(users) == 1 and users[0].kernel in KERNELS_2D and users[0].inputs[0] == dst
                    and readers[dst] == 1 and dst != out_root and program.root(dst) == dst):
                users[0].inputs[0] = src
                _set_flag(users[0], -2)
                program.tensors[dst].alias_of = src  # no longer written: a view, no arena space
                dropped.add(id(s))
            continue
        root, offset = program.view(src)  # the kernel's output, or a view of all of it (a fused clamp)
        prev = producer.get(root)
        if (prev is not None and prev.kernel in KERNELS_2D and offset == 0 and readers[root] == 1
                and root != out_root and program.tensors[root].size == program.tensors[src].size):
            prev.outputs[0] = dst
            producer[dst] = prev
            _set_flag(prev, -1)
            program.tensors[root].alias_of = dst  # its views (unread) follow the bytes
            dropped.add(id(s))
    program.steps[:] = [s for s in program.steps if id(s) not in dropped]
    if dropped:
        log.info("%d layout transpose(s) folded into the 2-D kernels", len(dropped))
    return len(dropped)


def _set_flag(step: Step, index: int) -> None:
    dims = step.params["dims"].copy()
    dims[index] = 1
    step.params["dims"] = dims
