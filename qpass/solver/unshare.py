"""Give every consumer of a shared float constant its own copy, so each can be quantized at its own scale.

    y1 = Gemm(x1, W1, b)                    y1 = Gemm(x1, W1, b)
    y2 = Gemm(x2, W2, b)          →         y2 = Gemm(x2, W2, b_1)      (b_1: a copy of b)

tf2onnx deduplicates identical initializers, so layers whose biases are equal (an untrained model, a
constant bias initializer) read one array. A bias is stored at scale s_x × s_w, which differs from layer
to layer; an element-wise constant is quantized against its partner's range. Weights (input 1 of
Gemm/MatMul/Conv) keep sharing: their quantization depends on their values alone.
"""

from __future__ import annotations

import logging

import numpy as np
import onnx_ir as ir

from qpass.passes._util import new_initializer

log = logging.getLogger(__name__)
WEIGHT_INPUT = {"Gemm": 1, "MatMul": 1, "Conv": 1}


def unshare_constants(model: ir.Model) -> int:
    """Copy each float initializer read by more than one quantized use; return how many copies were made."""
    graph = model.graph
    copies = 0
    for value in list(graph.initializers.values()):
        if value.const_value is None or value.is_graph_input() or value.is_graph_output():
            continue
        array = value.const_value.numpy()
        if not np.issubdtype(array.dtype, np.floating):
            continue
        uses = [u for u in value.uses() if WEIGHT_INPUT.get(u.node.op_type) != u.idx]
        # the first reader keeps the original; the weight uses above keep it too
        keep_first = len(uses) == len(list(value.uses()))
        for use in uses[1:] if keep_first else uses:
            copy = new_initializer(graph, f"{value.name}_{use.node.name or 'use'}", array.copy())
            use.node.replace_input_with(use.idx, copy)
            copies += 1
    if copies:
        log.info("unshared %d constant use(s) so each can take its own scale", copies)
    return copies
