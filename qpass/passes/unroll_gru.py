"""unroll-gru: replace every ONNX GRU by its per-timestep primitive ops, tagged so codegen can re-roll them.

    Y, Y_h = GRU(X, W, R, B, seq_lens, h0)        for each direction d, step s = 0..T-1 (t = s, or T-1-s reversed):
                                                    x  = Gather(X, t, axis=layout)                        [B, I]
                                                    xz, xr, xn = Split(x·Wᵀ + Bx)                          [B, H] ×3
                                                    z = σ(xz + hz)   r = σ(xr + hr)     (hz, hr: h·Rzᵀ, h·Rrᵀ)
                                           →        n = tanh(xn + r⊙(h·Rnᵀ + Rbn))     linear_before_reset = 1
                                                    n = tanh(xn + (r⊙h)·Rnᵀ)           linear_before_reset = 0
                                                    h = n + z⊙(h − n)                   (= (1 − z)⊙n + z⊙h)
                                                  Y = Concat(Unsqueeze(h) in time order)   Y_h = Unsqueeze(last h)

Bx = [Wbz + Rbz, Wbr + Rbr, Wbn (+ Rbn when linear_before_reset = 0)]. Per step and direction the nodes are,
with the role each carries in `qpass.gru.role`:

    x        Gather(X, t: int64 scalar, axis = layout)
    xw, xb   MatMul(x, Wt) [B, 3H] (ONNX gate order z, r, h kept), Add(xw, Bx)
    split_x  Split(xb, [H, H, H], axis=1) → xz, xr, xn
    hr       MatMul(h_prev, Rt): Rt = R[d]ᵀ [H, 3H] (linear_before_reset = 1) or its z, r columns [H, 2H] (= 0)
    hb       Add(hr, [0, 0, Rbn])                                  (linear_before_reset = 1)
    split_h  Split(·, [H, H, H] | [H, H], axis=1) → hz, hr(, hn)
    zpre, rpre  Add(xz, hz), Add(xr, hr)
    rn       Mul(r, hn)                                             (linear_before_reset = 1)
    rh, hn   Mul(r, h_prev), MatMul(rh, Rnt) [H, H]                 (linear_before_reset = 0)
    npre     Add(xn, rn | hn)
    clip_z, clip_r, clip_n   Clip(·, -clip, clip) on the three pre-activations   (only with `clip`)
    z, r, n  Sigmoid(zpre), Sigmoid(rpre), Tanh(npre)
    hd, zd, h   Sub(h_prev, n), Mul(z, hd), Add(n, zd)

Before step 0, h_prev is `Gather(initial_h, d, axis=layout)` (role "h0", step "0") or, without initial_h (or with
a constant of zeros), a constant zero initializer [B, H]. Y and Y_h, and readers of one step or one direction of Y,
are built as unroll-lstm builds them (step "-1"; direction "-1" for the nodes joining both directions).

Every created node carries metadata_props `qpass.pass` = "unroll-gru", `qpass.gru` (the GRU's name, or a generated
one), `qpass.gru.direction`, `qpass.gru.step`, `qpass.gru.role`: weights are shared by all steps of a direction.

Refused with UnsupportedOpError naming the node: unknown T/B/I/H, non-constant W/R/B, sequence_lens not a constant
equal to T, activations other than Sigmoid/Tanh, a model opset below 13. Only the main graph is rewritten.
"""

from __future__ import annotations

import numpy as np
import onnx_ir as ir

from qpass.passes import register_pass
from qpass.passes.unroll_lstm import (
    UnrollLstmPass,
    _Builder,
    _Lstm,
    _nonzero_state,
    check_activations,
    parse_recurrence,
    refuser,
    tag_keys,
)

GRU_KEY, GRU_DIRECTION_KEY, GRU_STEP_KEY, GRU_ROLE_KEY = tag_keys("gru")

_DEFAULT_ACTIVATIONS = ("sigmoid", "tanh")


class _GruBuilder(_Builder):
    keys = (GRU_KEY, GRU_DIRECTION_KEY, GRU_STEP_KEY, GRU_ROLE_KEY)


def _parse(node: ir.Node, name: str) -> tuple[_Lstm, bool]:
    """A GRU node as the shared recurrence record (w [dirs, 3H, I], r [dirs, 3H, H], bias [dirs, 6H]) and its
    linear_before_reset, or UnsupportedOpError saying why it cannot be unrolled."""
    refuse = refuser(node, name, "unroll-gru")
    gru = parse_recurrence(node, name, refuse, gates=3, states=1, sum_bias=False)
    check_activations(node, refuse, gru.dirs, _DEFAULT_ACTIVATIONS)
    return gru, node.attributes.get_int("linear_before_reset", 0) != 0


@register_pass("unroll-gru")
class UnrollGruPass(UnrollLstmPass):
    """Unroll every GRU into per-timestep MatMul/Add/Split/Sigmoid/Tanh/Mul/Sub ops tagged for re-rolling."""

    op_type = "GRU"
    _parse = staticmethod(_parse)  # type: ignore[assignment]

    def _unroll(self, graph: ir.Graph, parsed: tuple[_Lstm, bool], taken: set[str]) -> None:  # type: ignore[override]
        gru, lbr = parsed
        node, H, T = gru.node, gru.hidden, gru.steps
        b = _GruBuilder(self, graph, gru, taken)
        x, h_init = node.inputs[0], _nonzero_state(node, 5)
        split3 = b.const("split3", np.array([H] * 3, np.int64))
        split_h = split3 if lbr else b.const("split2", np.array([H] * 2, np.int64))
        clip, time_index = b.clip_bounds(), b.time_index()
        hs: list[list[ir.Value]] = []
        for d in range(gru.dirs):
            wb, rb = gru.bias[d, :3 * H], gru.bias[d, 3 * H:]
            bx = np.concatenate([wb[:2 * H] + rb[:2 * H], wb[2 * H:] + (0 if lbr else rb[2 * H:])])
            rt = np.ascontiguousarray(gru.r[d].T)  # [H, 3H]
            consts = {"wt": b.const(f"d{d}_Wt", np.ascontiguousarray(gru.w[d].T)), "bx": b.const(f"d{d}_Bx", bx)}
            if lbr:
                consts["rt"] = b.const(f"d{d}_Rt", rt)
                consts["bh"] = b.const(f"d{d}_Bh", np.concatenate([np.zeros(2 * H, gru.dtype), rb[2 * H:]]))
            else:
                consts["rt"] = b.const(f"d{d}_Rzr_t", np.ascontiguousarray(rt[:, :2 * H]))
                consts["rnt"] = b.const(f"d{d}_Rn_t", np.ascontiguousarray(rt[:, 2 * H:]))
            h = self._initial(b, h_init, None if h_init is None else b.const(f"dir{d}", np.array(d, np.int64)),
                              d, "h0")
            hs.append([])
            for s in range(T):
                t = T - 1 - s if gru.reverse[d] else s
                h = self._gru_step(b, d, s, x, time_index[t], h, consts, split3, split_h, lbr, clip)
                hs[d].append(h)
        self._finish(graph, b, hs, {})

    @staticmethod
    def _gru_step(b: _Builder, d: int, s: int, x: ir.Value, t: ir.Value, h_prev: ir.Value,
                  consts: dict[str, ir.Value], split3: ir.Value, split_h: ir.Value, lbr: bool,
                  clip: tuple[ir.Value, ir.Value] | None) -> ir.Value:
        """One cell update; returns h_t."""
        gru = b.lstm
        bh, b3h = (gru.batch, gru.hidden), (gru.batch, 3 * gru.hidden)

        def op(op_type: str, inputs: list[ir.Value], role: str, shape: tuple[int, ...] = bh, **kw) -> ir.Value:
            return b.op(op_type, inputs, shape, d=d, s=s, role=role, **kw)[0]

        def clipped(pre: ir.Value, g: str) -> ir.Value:
            return pre if clip is None else op("Clip", [pre, *clip], f"clip_{g}")

        x_t = op("Gather", [x, t], "x", (gru.batch, gru.inputs), attrs={"axis": gru.layout})
        xb = op("Add", [op("MatMul", [x_t, consts["wt"]], "xw", b3h), consts["bx"]], "xb", b3h)
        xz, xr, xn = b.op("Split", [xb, split3], bh, d=d, s=s, role="split_x", attrs={"axis": 1},
                          names=("_z", "_r", "_n"))
        hr = op("MatMul", [h_prev, consts["rt"]], "hr", b3h if lbr else (gru.batch, 2 * gru.hidden))
        if lbr:
            hr = op("Add", [hr, consts["bh"]], "hb", b3h)
        parts = b.op("Split", [hr, split_h], bh, d=d, s=s, role="split_h", attrs={"axis": 1},
                     names=("_z", "_r", "_n") if lbr else ("_z", "_r"))
        z = op("Sigmoid", [clipped(op("Add", [xz, parts[0]], "zpre"), "z")], "z")
        r = op("Sigmoid", [clipped(op("Add", [xr, parts[1]], "rpre"), "r")], "r")
        if lbr:
            hn = op("Mul", [r, parts[2]], "rn")
        else:
            hn = op("MatMul", [op("Mul", [r, h_prev], "rh"), consts["rnt"]], "hn")
        n = op("Tanh", [clipped(op("Add", [xn, hn], "npre"), "n")], "n")
        return op("Add", [n, op("Mul", [z, op("Sub", [h_prev, n], "hd")], "zd")], "h")
