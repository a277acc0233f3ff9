"""Render a Program as C99 with jinja2: one template per kernel, constants as `static const` arrays.

A kernel template provides either `define(fn, types)` (one generic function per type set, sizes passed
at run time) and `call(ctx)`, or `layer(ctx)` (one function per layer with every size, zero point and
constant array written in, so the compiler sees the shapes) and `call(ctx)`; `PREPARE` adds the
generation-time constants of a per-layer kernel (folded biases, interior bounds). Every kernel function is
kept out of line (QP_NOINLINE) so the compiler does not merge them into one function that spills.

Every C identifier is generated (qp_l<step>_<kernel>_<role>, the validated model name); names from the
model file appear only in comments, after `comment()` has reduced them to a safe character set.
"""

from __future__ import annotations

import functools
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from jinja2 import Environment, PackageLoader, StrictUndefined

from qpass import __version__
from qpass.codegen.arena import BYTES, plan_memory
from qpass.codegen.prepare import (
    add_rescale,
    conv_dsp,
    conv_interior,
    conv_weight,
    dsp_plan,
    folded,
    gru_gates,
    lstm_gates,
    pool_rescale,
)
from qpass.codegen.prepare_2d import conv2d_layer, pool2d_layer
from qpass.runtime_ref.intmath import QMAX, QMIN
from qpass.runtime_ref.program import Program

CTYPE = {"int8": "int8_t", "int16": "int16_t", "int32": "int32_t", "int64": "int64_t", "uint8": "uint8_t"}
ARRAY_PARAMS = {  # kernel param → C element type (None: the array's own integer type)
    "weight": None, "bias": "int32", "bias_shift": "uint8", "mult": "int32", "shift": "uint8", "table": None,
    "exp_table": "int32",
    "dims": "int32", "strides": "int32", "weight_h": None, "gate_lut": None, "tanh_table": "int16",
    "mx": "int32", "mh": "int32", "acc0": None, "ax0": None, "ah0": None, "fx": "int32", "fh": "int32",
    "sh": "uint8", "act_i": None, "act_o": None, "act_f": None, "act_g": None,
    "act_z": None, "act_r": None, "act_n": None, "hn0": None, "hn_f": "int32", "accb": None, "weight_dsp": "int32",
}
SCALAR_TYPES = (int, np.integer)


def _linear(program: Program, step) -> dict:
    """Folded biases and, for a Cortex-M4, the weights as SMLAD words (then the int8 weights serve other cores)."""
    f = folded(program, step)
    dsp = dsp_plan(np.asarray(step.params["weight"]), int(step.params["in_features"]),
                   0, program.tensors[step.inputs[0]].dtype, f["acc"])
    guards = {"weight": "portable", "weight_dsp": "dsp"} if dsp["dsp"] else {}
    return {"f": {**f, **dsp.pop("f", {})}, **dsp, "guards": guards}


def _conv1d(program: Program, step) -> dict:
    """Folded biases, interior bounds, weights in the C's order and, for the interior on a Cortex-M4, as SMLAD
    words (the int8 weights then serve the border alone, or other cores only when there is no border)."""
    p, f = step.params, folded(program, step)
    inner = conv_interior(p)
    dsp = conv_dsp(p, program.tensors[step.inputs[0]].dtype, f["acc"])
    if inner["o_hi"] <= inner["o_lo"]:
        dsp = {"dsp": None}
    border = inner["o_lo"] > 0 or inner["o_hi"] < p["l_out"]
    guards = {"weight_dsp": "dsp", **({"weight": "portable"} if dsp["dsp"] and not border else {})}
    return {"f": {**f, "weight": conv_weight(p), **dsp.pop("f", {})}, **dsp, **inner, "guards": guards,
            "border": border}


PREPARE = {  # per-layer kernels: extra generation-time constants and sizes for their template
    "linear": _linear,
    "conv1d": _conv1d,
    "lstm": lambda program, step: {"g": lstm_gates(program, step)},
    "gru": lambda program, step: {"g": gru_gates(program, step)},
    "conv2d": conv2d_layer,
    "pool2d": pool2d_layer,
    "maxpool1d": lambda program, step: conv_interior(step.params),
    "pool": pool_rescale,
    "add": add_rescale,
    "transpose": lambda program, step: {"axes": [(int(d), int(st)) for d, st in zip(
        step.params["dims"], step.params["strides"], strict=True) if d > 1]},
}


@dataclass
class GeneratedC:
    c: str
    h: str
    arena_bytes: int
    const_bytes: int
    arena_lower_bound: int = 0
    arena_naive: int = 0


def comment(text: str, limit: int = 80) -> str:
    """A model-supplied name made safe inside a C block comment: no `*/`, no newline, ASCII only."""
    safe = re.sub(r"[^A-Za-z0-9_.:;/\-,()=>+ ]", "?", text)[:limit]
    return safe.replace("*/", "?/")


def ident(text: str, limit: int = 32) -> str:
    """A model-supplied name as part of a C identifier: lower-case letters, digits and single underscores.
    Callers prefix it (qp_l<step>_), so the result is never a keyword and never collides."""
    return re.sub(r"[^a-z0-9]+", "_", text.lower()).strip("_")[:limit].strip("_")


@functools.cache
def _env() -> Environment:
    """One environment per process: jinja2 compiles each template once and keeps it (it reloads a changed file)."""
    return Environment(loader=PackageLoader("qpass.codegen", "templates"), undefined=StrictUndefined,
                       trim_blocks=True, lstrip_blocks=True, keep_trailing_newline=True, autoescape=False)


def _literal(v: float) -> str:
    return repr(float(np.float32(v))) + "f"


def _body(arr: np.ndarray) -> str:
    items = [str(int(v)) for v in np.asarray(arr).reshape(-1)]
    return ",".join(items)


def _types(program: Program, step) -> tuple[dict[str, str], str]:
    """C element types a kernel instance works on, and its function name (one definition per type set)."""
    ins = [program.tensors[i].dtype for i in step.inputs]
    out = program.tensors[step.outputs[0]].dtype
    t = {"x": ins[0], "y": out}
    if len(ins) > 1:
        t["a"], t["b"] = ins[0], ins[1]
    if "weight" in step.params:
        t["w"] = str(np.asarray(step.params["weight"]).dtype)
    if "acc_bits" in step.params:
        t["acc"] = "int64" if step.params["acc_bits"] > 32 else "int32"
    if "gate_bits" in step.params:  # the LSTM and GRU: gate pre-activation and gate activation types
        t["g"], t["a"] = step.params["gate_bits"], step.params["act_bits"]
    suffix = "_".join(f"{k}{v.replace('int', '')}" for k, v in sorted(t.items()))
    return {k: CTYPE[v] for k, v in t.items()}, f"qp_{step.kernel}_{suffix}"


def _dims(t) -> str:
    return "x".join(str(d) for d in t.shape) or "1"


def render(program: Program, source: str = "model", stack: tuple[int, str] | None = None) -> GeneratedC:
    """C and header text for a program; `stack` = (worst-case bytes, how it was measured) for the header."""
    env = _env()
    arena = plan_memory(program)
    constants: list[dict] = []

    def add_const(values: np.ndarray, dtype: str, cname: str, guard: str | None = None) -> str:
        """guard: "dsp" (only the Cortex-M4 DSP path reads it), "portable" (only the portable path) or None."""
        values = np.asarray(values).reshape(-1)
        constants.append({"cname": cname, "ctype": CTYPE[dtype], "count": max(1, values.size), "body": _body(values),
                          "bytes": values.size * np.dtype(dtype).itemsize,
                          "guard": guard})
        return cname

    buf: dict[str, str] = {}
    for tid, data in program.constants.items():
        buf[tid] = add_const(data, program.tensors[tid].dtype, f"qp_const_{len(constants)}")
    in_root, out_root = program.root(program.input), program.root(program.output)

    def expr(tid: str) -> str:
        t = program.tensors[tid]
        root, offset = program.view(tid)
        outside = root == in_root and arena.input_offset is None  # else the input has its arena slot
        base = buf.get(root) or ("input" if outside else "output" if root == out_root else None)
        if base is not None:
            return f"({base} + {offset})" if offset else base
        return f"QP_BUF({CTYPE[t.dtype]}, {arena.offsets[root] + offset * BYTES[t.dtype]})"

    modules: dict[str, object] = {}
    defs: dict[str, str] = {}
    calls = []
    for index, step in enumerate(program.steps):
        if step.kernel not in modules:
            modules[step.kernel] = env.get_template(f"kernels/{step.kernel}.c.j2").module
        module = modules[step.kernel]
        types, fn = _types(program, step)
        layer = f"qp_l{index}_{step.kernel}"
        prefix = f"qp_l{index}_{ident(step.origin) or step.kernel}"
        per_layer = hasattr(module, "layer")
        extra = PREPARE[step.kernel](program, step) if per_layer and step.kernel in PREPARE else {}
        arrays = {k: v for k, v in step.params.items() if k in ARRAY_PARAMS and isinstance(v, np.ndarray)}
        for part in ("f", "g"):
            arrays.update({k: v for k, v in extra.get(part, {}).items() if k in ARRAY_PARAMS})
        guards = extra.get("guards", {})
        consts = {k: add_const(v, ARRAY_PARAMS[k] or str(v.dtype), f"{prefix}_{k}", guards.get(k))
                  for k, v in arrays.items()}
        scalars = {k: int(v) for k, v in step.params.items() if isinstance(v, SCALAR_TYPES)}
        ctx = {"fn": fn, "inputs": [expr(i) for i in step.inputs], "output": expr(step.outputs[0]),
               "n": program.tensors[step.outputs[0]].size,
               "scratch": [expr(o) for o in step.outputs[1:]], "c": consts, "p": scalars,
               "l": {k: [int(i) for i in v] for k, v in step.params.items() if isinstance(v, list)}}
        if per_layer:
            ctx.update(extra, fn=layer, t=types, title=comment(f"layer {index}, {step.kernel} ({step.origin})"))
            defs[layer] = str(module.layer(ctx)).strip()
            unused = {c for c in consts.values() if not re.search(rf"\b{c}\b", defs[layer])}
            constants[:] = [c for c in constants if c["cname"] not in unused]
        elif fn not in defs:
            defs[fn] = re.sub(r"^static void", "static QP_NOINLINE void", str(module.define(fn, types)).strip(),
                              flags=re.M)
        x, out = program.tensors[step.inputs[0]], program.tensors[step.outputs[0]]
        note = (f"layer {index} {step.kernel}: {_dims(x)} -> {_dims(out)}, scale {x.scale:.4g} zp {x.zero_point} -> "
                f"scale {out.scale:.4g} zp {out.zero_point}; from {step.origin}")
        calls.append({"comment": comment(note, 160),
                      "code": str(module.call(ctx)).strip()})
    const_bytes = sum(c["bytes"] for c in constants if c["guard"] != "dsp")
    const_bytes_dsp = sum(c["bytes"] for c in constants if c["guard"] != "portable")
    tin, tout = program.tensors[program.input], program.tensors[program.output]
    ctx = {
        "name": program.name, "NAME": program.name.upper(), "version": __version__, "source": comment(source),
        "input": tin, "output": tout, "in_ctype": CTYPE[tin.dtype], "out_ctype": CTYPE[tout.dtype],
        "input_scale": _literal(tin.scale), "output_scale": _literal(tout.scale),
        "in_min": QMIN[tin.dtype], "in_max": QMAX[tin.dtype],
        "stack_bytes": stack[0] if stack else 0, "stack_source": comment(stack[1]) if stack else "",
        "input_offset": arena.input_offset,
        "arena_bytes": arena.size, "arena_words": max(1, (arena.size + 3) // 4), "const_bytes": const_bytes,
        "const_bytes_dsp": const_bytes_dsp, "kernel_defs": list(defs.values()),
        "need_requantize": any("qp_requantize(" in d for d in defs.values()),
        "need_requantize_hi": any("qp_requantize_hi(" in d for d in defs.values()),
        "need_clamp": any("qp_clamp(" in d for d in defs.values()),
        "need_dsp": any("QP_DSP" in d for d in defs.values()),
        "constants": constants, "calls": calls,
    }
    return GeneratedC(env.get_template("model.c.j2").render(ctx), env.get_template("model.h.j2").render(ctx),
                      arena.size, const_bytes, arena.lower_bound, arena.naive)


def write(gen: GeneratedC, out_dir: Path, name: str) -> list[Path]:
    paths = [out_dir / f"{name}.c", out_dir / f"{name}.h"]
    paths[0].write_text(gen.c, encoding="ascii")
    paths[1].write_text(gen.h, encoding="ascii")
    return paths
