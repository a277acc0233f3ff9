"""unroll-rnn: replace every ONNX RNN by its per-timestep primitive ops, tagged so codegen can re-roll them.

    Y, Y_h = RNN(X, W, R, B, seq_lens, h0)     for each direction d, step s = 0..T-1 (t = s, or T-1-s reversed):
                                                 x = Gather(X, t, axis=layout)                          [B, I]
                                        →        h = f(x·Wᵀ + (Wb + Rb) + h·Rᵀ)      f = Tanh | Relu      [B, H]
                                               Y = Concat(Unsqueeze(h) in time order)   Y_h = Unsqueeze(last h)

Per step and direction the nodes are, with the role each carries in `qpass.rnn.role`:

    x      Gather(X, t: int64 scalar, axis = layout)
    xw     MatMul(x, Wt)         Wt = W[d]ᵀ [I, H]
    xb     Add(xw, Bsum)         Bsum = B[d, :H] + B[d, H:] (zeros without B)
    hr     MatMul(h_prev, Rt)    Rt = R[d]ᵀ [H, H]
    pre    Add(xb, hr)
    clip   Clip(pre, -clip, clip)                                              (only with `clip`)
    h      Tanh(pre) or Relu(pre)   (the direction's activation)

Before step 0, h_prev is `Gather(initial_h, d, axis=layout)` (role "h0", step "0") or, without initial_h (or with
a constant of zeros), a constant zero initializer [B, H]. Y and Y_h, and readers of one step or one direction of Y,
are built as unroll-lstm builds them (step "-1"; direction "-1" for the nodes joining both directions).

Every created node carries metadata_props `qpass.pass` = "unroll-rnn", `qpass.rnn` (the RNN's name, or a generated
one), `qpass.rnn.direction`, `qpass.rnn.step`, `qpass.rnn.role`: weights are shared by all steps of a direction.

Refused with UnsupportedOpError naming the node: unknown T/B/I/H, non-constant W/R/B, sequence_lens not a constant
equal to T, activations other than Tanh/Relu, a model opset below 13. Only the main graph is rewritten.
"""

from __future__ import annotations

import numpy as np
import onnx_ir as ir

from qpass.passes import register_pass
from qpass.passes.keras_rnn import ACTIVATIONS
from qpass.passes.unroll_lstm import (
    UnrollLstmPass,
    _Builder,
    _Lstm,
    _nonzero_state,
    parse_recurrence,
    refuser,
    tag_keys,
)

RNN_KEY, RNN_DIRECTION_KEY, RNN_STEP_KEY, RNN_ROLE_KEY = tag_keys("rnn")
_ACTS = {a.lower(): a for a in ACTIVATIONS}


class _RnnBuilder(_Builder):
    keys = (RNN_KEY, RNN_DIRECTION_KEY, RNN_STEP_KEY, RNN_ROLE_KEY)


def _parse(node: ir.Node, name: str) -> tuple[_Lstm, tuple[str, ...]]:
    """An RNN node as the shared recurrence record (w [dirs, H, I], r [dirs, H, H], bias [dirs, H]: Wb + Rb) and
    its activation per direction, or UnsupportedOpError saying why it cannot be unrolled."""
    refuse = refuser(node, name, "unroll-rnn")
    rnn = parse_recurrence(node, name, refuse, gates=1, states=1, sum_bias=True)
    acts = node.attributes.get_strings("activations", None) or ["Tanh"] * rnn.dirs
    if len(acts) != rnn.dirs or any(a.lower() not in _ACTS for a in acts):
        raise refuse(f"activations {list(acts)}: one of {list(ACTIVATIONS)} per direction is supported")
    return rnn, tuple(_ACTS[a.lower()] for a in acts)


@register_pass("unroll-rnn")
class UnrollRnnPass(UnrollLstmPass):
    """Unroll every RNN (Tanh or Relu) into per-timestep MatMul/Add/Tanh|Relu ops tagged for re-rolling."""

    op_type = "RNN"
    _parse = staticmethod(_parse)  # type: ignore[assignment]

    def _unroll(self, graph: ir.Graph, parsed: tuple[_Lstm, tuple[str, ...]],  # type: ignore[override]
                taken: set[str]) -> None:
        rnn, acts = parsed
        node, T = rnn.node, rnn.steps
        b = _RnnBuilder(self, graph, rnn, taken)
        x, h_init = node.inputs[0], _nonzero_state(node, 5)
        clip, time_index = b.clip_bounds(), b.time_index()
        bh = (rnn.batch, rnn.hidden)
        hs: list[list[ir.Value]] = []
        for d in range(rnn.dirs):
            wt = b.const(f"d{d}_Wt", np.ascontiguousarray(rnn.w[d].T))
            rt = b.const(f"d{d}_Rt", np.ascontiguousarray(rnn.r[d].T))
            bsum = b.const(f"d{d}_Bsum", rnn.bias[d])
            h = self._initial(b, h_init, None if h_init is None else b.const(f"dir{d}", np.array(d, np.int64)),
                              d, "h0")
            hs.append([])
            for s in range(T):
                t = time_index[T - 1 - s if rnn.reverse[d] else s]

                def op(op_type: str, inputs: list[ir.Value], role: str, shape: tuple[int, ...] = bh,
                       d: int = d, s: int = s, **kw) -> ir.Value:
                    return b.op(op_type, inputs, shape, d=d, s=s, role=role, **kw)[0]

                x_t = op("Gather", [x, t], "x", (rnn.batch, rnn.inputs), attrs={"axis": rnn.layout})
                xb = op("Add", [op("MatMul", [x_t, wt], "xw"), bsum], "xb")
                pre = op("Add", [xb, op("MatMul", [h, rt], "hr")], "pre")
                if clip is not None:
                    pre = op("Clip", [pre, *clip], "clip")
                h = op(acts[d], [pre], "h")
                hs[d].append(h)
        self._finish(graph, b, hs, {})
