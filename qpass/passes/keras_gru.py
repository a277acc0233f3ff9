"""keras-gru: replace the Loop that tf2onnx emits for a Keras GRU layer by one ONNX GRU node.

With Keras 3, tf2onnx leaves the layer's `while` loop as an ONNX Loop around the cell (as for the LSTM, see
keras-lstm, whose loop bookkeeping checks and output rewiring this pass shares):

    _, h_T, Wk, Rk, bk, H = Loop(T, cond0, t=0, h0, Wk, Rk, bk) {
        x = Gather(Xt, t)
        xz, xr, xn = Split(x·Wk + bk[0], 3)           (Gemm or MatMul/Add; Keras gate order z, r, h = ONNX's)
        hz, hr, hn = Slice or Split(h·Rk + bk[1])
        z = σ(xz + hz)   r = σ(xr + hr)   n = tanh(xn + r·hn)
        h' = z·h + (1 − z)·n                          (any operand order)
        return ..., h', ..., scan h'
    }
→
    Y, Y_h = GRU(Xt, W, R, B, , h0?, hidden_size=H, linear_before_reset=1, layout=0)
    W = Wkᵀ [1,3H,I]   R = Rkᵀ [1,3H,H]   B = [bk[0], bk[1]] [1,6H] (omitted without a bias); a zero h0 is omitted.

reset_after=False applies r before the recurrent product of the candidate, and Keras then slices its recurrent
kernel inside the loop (Rk[:, :2H] for z, r; Rk[:, 2H:] for n) and has one bias [3H]:

        hz, hr = Slices or Split(h·Rk[:, :2H])       z = σ(xz + hz)   r = σ(xr + hr)
        n = tanh(xn + (r·h)·Rk[:, 2H:])               (Gemm or MatMul/Add)
→
    Y, Y_h = GRU(Xt, W, R, B, , h0?, hidden_size=H, linear_before_reset=0, layout=0)    R = Rkᵀ as above

go_backwards with only the last step read becomes direction="reverse", as in keras-lstm. Every leftover Loop is
reported by the support check. A Loop that does not match is left alone and the reason is logged at debug level.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np
import onnx_ir as ir

from qpass.passes import QPass, register_pass
from qpass.passes._util import const_value
from qpass.passes.keras_lstm import _STD, _Match, _Matcher, _need, _Rewrite, _static, rewrite_loops

log = logging.getLogger(__name__)


@dataclass
class _GruMatch(_Match):
    """A recognized Keras GRU Loop: r [H, 3H] holds the z, r and n recurrent columns; lbr is linear_before_reset
    (1 for reset_after=True, 0 for reset_after=False)."""

    lbr: int = 1


class _GruMatcher(_Matcher):
    """Reads one Loop node as a Keras GRU cell; `match()` returns a `_Match` (c_slot −1, b [2, 3H] or None)."""

    def _producer(self, value: ir.Value, op_type: str, what: str) -> ir.Node:
        node = self._unwrap_identity(value).producer()
        _need(self._in_body(node) and node.op_type == op_type and node.domain in _STD, f"{what} is not a {op_type}")
        self.seen.add(node)
        return node

    def _pair(self, add: ir.Node, test) -> tuple[ir.Value, ir.Value]:
        """(the input of `add` that passes `test`, the other one)."""
        a, b = add.inputs[0], add.inputs[1]
        if test(a):
            return a, b
        _need(test(b), f"neither input of {add.name!r} is the expected term")
        return b, a

    def _thirds(self, values: list[ir.Value], hidden: int, what: str) -> ir.Value:
        """The [B,kH] sum whose column blocks (z, r, n, or z, r) are `values` (one Split, or Slices on the last
        axis)."""
        nodes = [self._unwrap_identity(v).producer() for v in values]
        _need(all(self._in_body(n) for n in nodes), f"the {what} thirds are not computed in the loop")
        if all(n is nodes[0] for n in nodes) and nodes[0].op_type == "Split":
            split = nodes[0]
            _need(list(split.outputs) == [self._unwrap_identity(v) for v in values],
                  f"the {what} Split is out of order")
            _need(split.attributes.get_int("axis", 0) in (1, -1), f"the {what} Split is not on the last axis")
            self.seen.add(split)
            return split.inputs[0]
        source = None
        for k, node in enumerate(nodes):
            _need(node.op_type == "Slice" and len(node.inputs) >= 4, f"the {what} parts are not one Split or Slices")
            starts, ends, axes = (const_value(v) for v in node.inputs[1:4])
            _need(starts is not None and ends is not None and axes is not None, f"the {what} Slice is not constant")
            _need(len(node.inputs) < 5 or node.inputs[4] is None or not np.any(const_value(node.inputs[4]) != 1),
                  f"the {what} Slice has steps")
            for start, end, axis in zip(starts.tolist(), ends.tolist(), axes.tolist(), strict=True):
                if axis in (1, -1):  # the gate columns: third k
                    last = k == len(values) - 1
                    _need(start == k * hidden and (end == (k + 1) * hidden or (last and end >= (k + 1) * hidden)),
                          f"the {what} Slice does not take block {k}")
                else:  # the batch axis, whole
                    _need(axis in (0, -2) and start == 0 and end >= 2**31 - 1, f"the {what} Slice cuts the batch")
            _need(source is None or node.inputs[0] is source, f"the {what} Slices read different tensors")
            source = node.inputs[0]
            self.seen.add(node)
        return source

    def _terms(self, value: ir.Value, batch: int, width: int, what: str,
               keep: ir.Value | None = None) -> tuple[ir.Value, np.ndarray, np.ndarray | None]:
        """(MatMul input, weight [*, width], bias [width] or None) of a sum a·W (+ b) (+ keep, left out)."""
        terms = self._sum_terms(value, (batch, width))
        mats = [t for t in terms if isinstance(t, tuple)]
        _need(len(mats) == 1, f"the {what} sum has {len(mats)} MatMuls, expected 1")
        _, a, b, trans = mats[0]
        weight = self._const_expr(b)
        _need(weight is not None, f"the {what} weight is not a loop-invariant constant")
        weight = weight.astype(np.float32).T if trans else weight.astype(np.float32)
        _need(weight.ndim == 2 and weight.shape[1] == width, f"the {what} weight is not [*,{width}]")
        bias = None
        for t in terms:
            if not isinstance(t, tuple) and t is not keep:
                array = self._const_expr(t)
                _need(array is not None and array.size == width, f"{t.name!r} in the {what} sum is not a bias")
                bias = (0 if bias is None else bias) + array.astype(np.float32).reshape(-1)
        return a, weight, bias

    def match(self) -> _Match:
        tanhs = [n for n in self.body if n.op_type == "Tanh"]
        sigmoids = [n for n in self.body if n.op_type == "Sigmoid"]
        _need(len(tanhs) == 1 and len(sigmoids) == 2, "the body is not one Tanh and two Sigmoids")
        self.seen.update([*tanhs, *sigmoids])
        pre = tanhs[0].inputs[0]
        shape = _static(pre)
        _need(shape is not None and len(shape) == 2, "the candidate is not [B,H]")
        batch, hidden = shape
        sig_out = {s.outputs[0] for s in sigmoids}

        def is_reset_product(v: ir.Value) -> bool:
            node = self._unwrap_identity(v).producer()
            return self._in_body(node) and node.op_type == "Mul" and any(i in sig_out for i in node.inputs)

        n_node = self._unwrap_identity(pre).producer()
        lbr = int(self._in_body(n_node) and n_node.op_type == "Add" and any(map(is_reset_product, n_node.inputs)))
        if lbr:  # reset_after=True: n = tanh(xn + r·hn), hn a third of h·Rk + b
            n_pre = self._producer(pre, "Add", "the candidate pre-activation")
            rn, xn = self._pair(n_pre, is_reset_product)
            mul_r = self._producer(rn, "Mul", "r·hn")
            r, hn = self._pair(mul_r, lambda v: v in sig_out)
        else:  # reset_after=False: n = tanh(xn + (r·h)·Rn (+ b))
            def is_x_third(v: ir.Value) -> bool:
                node = self._unwrap_identity(v).producer()
                return self._in_body(node) and node.op_type in ("Split", "Slice")

            xn = next((t for t in self._sum_terms(pre, (batch, hidden)) if not isinstance(t, tuple)
                       and is_x_third(t)), None)
            _need(xn is not None, "the candidate sum has no input third")
            rh, rn_w, bn = self._terms(pre, batch, hidden, "reset recurrent", keep=xn)
            mul_r = self._producer(rh, "Mul", "r·h")
            r, rh_h = self._pair(mul_r, lambda v: v in sig_out)
        r_node = r.producer()
        z = next(s.outputs[0] for s in sigmoids if s is not r_node)
        z_pre = self._producer(sigmoids[0 if sigmoids[0] is not r_node else 1].inputs[0], "Add", "z pre-activation")
        r_pre = self._producer(r_node.inputs[0], "Add", "r pre-activation")

        # h' = z·h + (1 − z)·n
        h_slot = next((k for k in range(self.carried) if k not in self.invariant and self._slot_reads(k, z)), None)
        _need(h_slot is not None, "no carried state is multiplied by z")
        h_prev = self.body.inputs[2 + h_slot]
        h_new = self._unwrap_identity(self.body.outputs[1 + h_slot])
        add = h_new.producer()
        _need(self._in_body(add) and add.op_type == "Add", "h' is not a sum")
        self.seen.add(add)
        muls = [self._producer(v, "Mul", "a term of h'") for v in add.inputs]
        zh = next((m for m in muls if set(m.inputs) == {z, h_prev}), None)
        _need(zh is not None, "h' has no z·h term")
        other = muls[1] if muls[0] is zh else muls[0]
        one_minus, n_val = self._pair(other, lambda v: self._is_one_minus(v, z))
        _need(n_val is tanhs[0].outputs[0], "h' does not mix in tanh(n)")

        def is_x_part(v: ir.Value) -> bool:
            node = self._unwrap_identity(v).producer()
            return self._in_body(node) and node.op_type == "Split"

        xz, hz = self._pair(z_pre, is_x_part)
        xr, hr = self._pair(r_pre, is_x_part)
        x_sum = self._thirds([xz, xr, xn], hidden, "input")
        h_sum = self._thirds([hz, hr, hn] if lbr else [hz, hr], hidden, "recurrent")
        x_t, w, b_in = self._terms(x_sum, batch, 3 * hidden, "input")
        h_in, r_w, b_rec = self._terms(h_sum, batch, (2 + lbr) * hidden, "recurrent")
        _need(self._unwrap_identity(h_in) is h_prev, "the recurrent MatMul does not read the carried h")
        if not lbr:
            _need(self._unwrap_identity(rh_h) is h_prev, "r does not multiply the carried h")
            _need(rn_w.shape == (hidden, hidden), "the candidate's recurrent kernel is not [H,H]")
            r_w = np.concatenate([r_w, rn_w], axis=1)
            if b_rec is not None or bn is not None:
                b_rec = np.concatenate([np.zeros(2 * hidden, np.float32) if b_rec is None else b_rec,
                                        np.zeros(hidden, np.float32) if bn is None else bn])
        _need(r_w.shape == (hidden, 3 * hidden), "the recurrent kernel is not [H,3H]")
        x, steps, final = self._finish_match(x_t, h_new, (h_slot,), batch, hidden, w.shape[0])
        bias = None
        if b_in is not None or b_rec is not None:
            zeros = np.zeros(3 * hidden, np.float32)
            bias = np.stack([zeros if b_in is None else b_in, zeros if b_rec is None else b_rec])
        return _GruMatch(x=x, w=w, r=r_w, b=bias, h_slot=h_slot, c_slot=-1, steps=steps, batch=batch,
                         hidden=hidden, invariant=self.invariant, control_final=final, lbr=lbr)

    def _const_expr(self, value: ir.Value) -> np.ndarray | None:
        """A loop-invariant constant, also through body Squeeze/Reshape/Identity and Split (Keras' bias [2, 3H]
        split into its input and recurrent halves); the nodes it passes are part of the cell."""
        array = self._const(value, "")
        node = value.producer()
        if array is not None or not self._in_body(node) or node.domain not in _STD:
            return array
        if node.op_type in ("Squeeze", "Reshape", "Identity", "Unsqueeze"):
            src = self._const_expr(node.inputs[0])
            shape = _static(value)
            if src is None or shape is None or int(np.prod(shape)) != src.size:
                return None
            self.seen.add(node)
            return src.reshape(shape)
        if node.op_type == "Slice" and len(node.inputs) >= 3:  # reset_after=False: Rk[:, :2H] and Rk[:, 2H:]
            src = self._const_expr(node.inputs[0])
            args = [const_value(v) if v is not None else None for v in node.inputs[1:5]]
            if src is None or any(a is None for a, v in zip(args, node.inputs[1:5], strict=False) if v is not None):
                return None
            starts, ends = args[0].reshape(-1), args[1].reshape(-1)
            axes = args[2].reshape(-1) if len(args) > 2 and args[2] is not None else np.arange(starts.size)
            steps = args[3].reshape(-1) if len(args) > 3 and args[3] is not None else np.ones(starts.size, np.int64)
            index = [slice(None)] * src.ndim
            for st, en, ax, sp in zip(starts, ends, axes, steps, strict=True):
                index[int(ax)] = slice(int(max(min(st, 2**62), -2**62)), int(max(min(en, 2**62), -2**62)), int(sp))
            self.seen.add(node)
            return src[tuple(index)]
        if node.op_type == "Split":
            src = self._const_expr(node.inputs[0])
            sizes = const_value(node.inputs[1]) if len(node.inputs) > 1 and node.inputs[1] is not None else None
            if src is None:
                return None
            axis = node.attributes.get_int("axis", 0)
            cuts = np.cumsum(sizes)[:-1] if sizes is not None else len(node.outputs)
            self.seen.add(node)
            return np.split(src, cuts, axis=axis)[list(node.outputs).index(value)]
        return None

    def _slot_reads(self, k: int, z: ir.Value) -> bool:
        value = self.body.inputs[2 + k]
        return any(u.op_type == "Mul" and z in u.inputs for u in value.consumers())

    def _is_one_minus(self, value: ir.Value, z: ir.Value) -> bool:
        node = self._unwrap_identity(value).producer()
        if not (self._in_body(node) and node.op_type == "Sub" and node.inputs[1] is z):
            return False
        one = self._const(node.inputs[0], "")
        if one is None or one.size != 1 or float(one.reshape(-1)[0]) != 1.0:
            return False
        self.seen.add(node)
        return True


class _GruRewrite(_Rewrite):
    def _recurrence(self, x: ir.Value, direction: str) -> tuple[ir.Value, ir.Value, ir.Value | None]:
        """The ONNX GRU node for the match (linear_before_reset as matched): its Y, Y_h."""
        m = self.m
        y, y_h = self._add_recurrence("GRU", x, m.w.T[None], m.r.T[None], m.b, [m.h_slot], {
            "hidden_size": m.hidden, "direction": direction, "linear_before_reset": m.lbr})
        return y, y_h, None


@register_pass("keras-gru")
class KerasGruPass(QPass):
    """Replace tf2onnx's Loop for a Keras GRU layer (either reset_after) by one ONNX GRU node (weights converted)."""

    def call(self, model: ir.Model) -> ir.passes.PassResult:
        return rewrite_loops(self, model, _GruMatcher, _GruRewrite)
