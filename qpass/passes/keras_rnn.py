"""keras-rnn: replace the Loop that tf2onnx emits for a Keras SimpleRNN layer by one ONNX RNN node.

With Keras 3, tf2onnx leaves the layer's `while` loop as an ONNX Loop around the cell (as for the LSTM, see
keras-lstm, whose loop bookkeeping checks and output rewiring this pass shares):

    _, h_T, Wk, Rk, bk, H = Loop(T, cond0, t=0, h0, Wk, Rk, bk) {
        x = Gather(Xt, t)
        h' = tanh(x·Wk + bk + h·Rk)            (Gemm or MatMul/Add in any order; relu for activation="relu")
        return ..., h', ..., scan h'
    }
→
    Y, Y_h = RNN(Xt, W, R, B, , h0?, hidden_size=H, activations=[Tanh | Relu], layout=0)
    W = Wkᵀ [1,H,I]   R = Rkᵀ [1,H,H]   B = [bk, 0] [1,2H] (omitted without a bias); a zero h0 is omitted.

go_backwards with only the last step read becomes direction="reverse", as in keras-lstm; Bidirectional halves are
left to fold-reverse-sequence. A Loop that does not match is left alone and the reason is logged at debug level.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnx_ir as ir

from qpass.passes import QPass, register_pass
from qpass.passes.keras_lstm import _STD, _Match, _Matcher, _need, _Rewrite, _static, rewrite_loops

ACTIVATIONS = ("Tanh", "Relu")  # the cell activations keras-rnn, unroll-rnn and the rnn kernel run


@dataclass
class _RnnMatch(_Match):
    """A recognized Keras SimpleRNN Loop (w [I, H], r [H, H], b [H]) and its activation's ONNX name."""

    act: str = "Tanh"


class _RnnMatcher(_Matcher):
    """Reads one Loop node as a Keras SimpleRNN cell; `match()` returns an `_RnnMatch` (c_slot −1)."""

    def match(self) -> _RnnMatch:
        acts = [n for n in self.body if n.op_type in ACTIVATIONS and n.domain in _STD]
        _need(len(acts) == 1, f"{len(acts)} Tanh/Relu nodes in the body, expected 1")
        _need(not any(n.op_type in ("Sigmoid", "Split") for n in self.body), "the body has gates (an LSTM or GRU)")
        act = acts[0]
        self.seen.add(act)
        shape = _static(act.outputs[0])
        _need(shape is not None and len(shape) == 2, "the activation is not [B,H]")
        batch, hidden = shape
        x_t, w, h_prev, r, bias = self._classify(self._sum_terms(act.inputs[0], (batch, hidden)), hidden, gates=1)
        h_slot = self._slot(h_prev)
        _need(h_slot is not None and h_slot not in self.invariant,
              "the recurrent MatMul does not read a carried hidden state")
        h_new = act.outputs[0]
        _need(self._unwrap_identity(self.body.outputs[1 + h_slot]) is h_new, "the carried h is not updated to h'")
        x, steps, final = self._finish_match(x_t, h_new, (h_slot,), batch, hidden, w.shape[0])
        return _RnnMatch(x=x, w=w, r=r, b=bias, h_slot=h_slot, c_slot=-1, steps=steps, batch=batch,
                         hidden=hidden, invariant=self.invariant, control_final=final, act=act.op_type)


class _RnnRewrite(_Rewrite):
    def _recurrence(self, x: ir.Value, direction: str) -> tuple[ir.Value, ir.Value, ir.Value | None]:
        """The ONNX RNN node for the match: its Y, Y_h."""
        m = self.m
        bias = None if m.b is None else np.concatenate([m.b.reshape(-1), np.zeros(m.hidden, np.float32)])
        y, y_h = self._add_recurrence("RNN", x, m.w.T[None], m.r.T[None], bias, [m.h_slot], {
            "hidden_size": m.hidden, "direction": direction, "activations": [m.act]})
        return y, y_h, None


@register_pass("keras-rnn")
class KerasRnnPass(QPass):
    """Replace tf2onnx's Loop for a Keras SimpleRNN layer (tanh or relu) by one ONNX RNN node (weights converted)."""

    def call(self, model: ir.Model) -> ir.passes.PassResult:
        return rewrite_loops(self, model, _RnnMatcher, _RnnRewrite)
