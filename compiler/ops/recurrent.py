"""Recurrent scans: the time loop of LSTM, GRU and SimpleRNN layers, with Keras semantics and layouts.

A recurrent layer lowers to one GEMM for every time step's input projection (`matmul(x, kernel)` plus the
input bias, [N, T, G*units]) and one scan op that runs the recurrence over it. Gates follow Keras' order
and the recurrent kernels Keras' layout:

* `lstm_scan[units, activation, recurrent_activation, go_backwards, return_sequences]
  (xproj[N,T,4u], h0[N,u], c0[N,u], recurrent_kernel[u,4u], mask, recurrent_mask)
  -> (outputs, h_last[N,u], c_last[N,u], hs[T,N,u], cs[T,N,u], gates[T,N,4u])`, gates i, f, c, o:
  z = x + (h*m) U, c' = f*c + i*act(.), h' = o*act(c');
* `gru_scan[units, activation, recurrent_activation, go_backwards, return_sequences, reset_after]
  (xproj[N,T,3u], h0[N,u], recurrent_kernel[u,3u], recurrent_bias[3u], mask, recurrent_mask)
  -> (outputs, h_last[N,u], hs[T,N,u], gates[T,N,3u], aux[T,N,u])`, gates z, r, h:
  h' = z*h + (1-z)*hh with hh = act(x_h + r*((h*m) U_h + b_h)) when reset_after, else
  hh = act(x_h + (r*h*m) U_h + b_h); z and r see (h*m) U_z, (h*m) U_r. The recurrent bias is Keras' bias
  row 1 when reset_after; otherwise Keras has a single (input) bias and the layer passes zeros here (a
  nonzero value simply adds to the pre-activations);
* `rnn_scan[units, activation, go_backwards, return_sequences]
  (xproj[N,T,u], h0[N,u], recurrent_kernel[u,u], mask, recurrent_mask) -> (outputs, h_last[N,u], hs[T,N,u])`:
  h' = act(x + (h*m) U).

`outputs` is [N,T,u] when return_sequences, else [N,u] (equal to h_last). Attributes: `units` (required),
`activation` in tanh, relu, sigmoid, linear (default tanh), `recurrent_activation` in sigmoid,
hard_sigmoid (Keras 3: clip(x/6 + 1/2, 0, 1)), tanh (default sigmoid), `go_backwards`,
`return_sequences` (default False), `reset_after` (GRU, default True).

go_backwards processes the steps from T-1 down to 0 and, as in Keras, returns the output sequence in
processing order (reversed; it is not flipped back).

`mask` is [N,T] (float 0/1 or bool, in input time order) or a scalar: a nonzero scalar means every step
is valid. At a masked step every state (h, and c for the LSTM) carries over unchanged and the output is
the carried h, so a masked sequence behaves as if the step were absent: a padded tail leaves h_last at
the last valid step, and return_sequences repeats the previous output (h0 before the first valid step).
This is Keras' default (zero_output_for_mask=False): its JAX and NumPy backends output the carried
state; the TensorFlow backend starts the carried output at zeros rather than at the initial state, which
agrees whenever h0 is zero (the layer default) or a valid step came first.

`recurrent_mask` (m above) is Keras' recurrent_dropout: [N,u] (float, entries 0 or 1/(1-rate), drawn once
per sequence by the layer in training mode) or a scalar, where 1 means no recurrent dropout. It multiplies
h_{t-1} where h_{t-1} enters the recurrent projection, with the same mask at every step (variational
dropout), and nowhere else: the state carried to the next step (the GRU's z*h, a masked step's carried
h) and the outputs are never masked. One mask serves every gate: the single-mask form of Keras 3.0-3.7
(`h_tm1 = h_tm1 * rec_dp_mask` once a step), which keeps a step one GEMM against the whole recurrent
kernel. Those Keras versions also used the masked h in the GRU's carry z*h, which kept training from
converging; keras-team/keras#20656 and #20663 fixed that by going back to Keras 2's one mask per gate.
Here the gates share one mask and the GRU's carry keeps the unmasked h.

The trailing outputs are saved for the gradient, time-major [T, N, ...] in processing order: the h state
after each step (`hs`), the LSTM cell state (`cs`), the activated gates, and for the GRU `aux`: the
recurrent candidate term (h*m) U_h + b_h when reset_after, else r*h*m. Nothing downstream of the layer should
use them; they carry no gradient of their own.

Each scan's gradient is one op, `<op>_grad[same attrs]`, taking the initial states, recurrent weights,
mask, saved tensors and the incoming gradients (a scalar where autodiff has none; it is broadcast):

* `lstm_scan_grad(h0, c0, recurrent_kernel, mask, recurrent_mask, hs, cs, gates, d_outputs, d_h_last,
  d_c_last) -> (d_xproj, d_h0, d_c0, d_recurrent_kernel)`
* `gru_scan_grad(h0, recurrent_kernel, mask, recurrent_mask, hs, gates, aux, d_outputs, d_h_last)
  -> (d_xproj, d_h0, d_recurrent_kernel, d_recurrent_bias)`
* `rnn_scan_grad(h0, recurrent_kernel, mask, recurrent_mask, hs, d_outputs, d_h_last)
  -> (d_xproj, d_h0, d_recurrent_kernel)`

With a recurrent mask, the gradient through the projection is masked the same way: the part of d h_{t-1}
that comes through U is (dgates_t U^T) * m, and dU = sum_t (h_{t-1} * m)^T dgates_t. The recurrent mask
is a constant of the step (a dropout mask): it gets no gradient.
"""
from __future__ import annotations

from typing import Any, Sequence

from nnd.compiler.diagnostics import NndError
from nnd.compiler.ops.registry import NOT_DIFFERENTIABLE, Fusion, register
from nnd.compiler.tensor_type import FLOAT_DTYPES, Dim, ShapeError, TensorType, format_shape

ACTIVATIONS = ("tanh", "relu", "sigmoid", "linear")
RECURRENT_ACTIVATIONS = ("sigmoid", "hard_sigmoid", "tanh")
GATES = {"lstm_scan": 4, "gru_scan": 3, "rnn_scan": 1}

DEFAULTS: dict[str, Any] = {
    "activation": "tanh",
    "recurrent_activation": "sigmoid",
    "go_backwards": False,
    "return_sequences": False,
    "reset_after": True,
}


def scan_attrs(attrs: dict[str, Any], op: str) -> dict[str, Any]:
    """The checked attributes of a scan op (or its gradient) with defaults filled in."""
    base = op[:-len("_grad")] if op.endswith("_grad") else op
    units = attrs.get("units")
    if not isinstance(units, int) or isinstance(units, bool) or units < 1:
        raise ShapeError(f"{op}: attribute 'units' must be a positive int, got {units!r}")
    result = {"units": units}
    keys = ["activation", "go_backwards", "return_sequences"]
    if base != "rnn_scan":
        keys.append("recurrent_activation")
    if base == "gru_scan":
        keys.append("reset_after")
    for key in keys:
        value = attrs.get(key)
        result[key] = DEFAULTS[key] if value is None else value
    if result["activation"] not in ACTIVATIONS:
        raise ShapeError(f"{op}: activation must be one of {', '.join(ACTIVATIONS)}, got "
                         f"{result['activation']!r}")
    if "recurrent_activation" in result and result["recurrent_activation"] not in RECURRENT_ACTIVATIONS:
        raise ShapeError(f"{op}: recurrent_activation must be one of {', '.join(RECURRENT_ACTIVATIONS)}, "
                         f"got {result['recurrent_activation']!r}")
    for key in ("go_backwards", "return_sequences", "reset_after"):
        if key in result and not isinstance(result[key], bool):
            raise ShapeError(f"{op}: attribute {key!r} must be true or false, got {result[key]!r}")
    return result


def _float(op: str, what: str, t: TensorType) -> None:
    if t.dtype not in FLOAT_DTYPES:
        raise ShapeError(f"{op}: {what} must be a float tensor, got {t.dtype}")


def _expect(op: str, what: str, t: TensorType, shape: tuple[Dim, ...]) -> None:
    if t.shape != shape:
        raise ShapeError(f"{op}: {what} must have shape {format_shape(shape)}, got {format_shape(t.shape)}")


def _check_mask(op: str, mask: TensorType, n: Dim, steps: Dim) -> None:
    if mask.dtype not in FLOAT_DTYPES + ("bool",):
        raise ShapeError(f"{op}: mask must be float or bool, got {mask.dtype}")
    if mask.shape not in ((), (n, steps)):
        raise ShapeError(f"{op}: mask must have shape {format_shape((n, steps))} (or be a scalar), got "
                         f"{format_shape(mask.shape)}")


def _check_recurrent_mask(op: str, recurrent_mask: TensorType, n: Dim, u: int) -> None:
    if recurrent_mask.dtype not in FLOAT_DTYPES:
        raise ShapeError(f"{op}: recurrent_mask must be a float tensor, got {recurrent_mask.dtype}")
    if recurrent_mask.shape not in ((), (n, u)):
        raise ShapeError(f"{op}: recurrent_mask must have shape {format_shape((n, u))} (or be a scalar), got "
                         f"{format_shape(recurrent_mask.shape)}")


def _check_xproj(op: str, xproj: TensorType, width: int) -> tuple[Dim, Dim]:
    _float(op, "xproj", xproj)
    if xproj.rank != 3 or xproj.shape[2] != width:
        raise ShapeError(f"{op}: xproj must have shape (N, T, {width}), got {format_shape(xproj.shape)}")
    return xproj.shape[0], xproj.shape[1]


def _forward_types(a: dict[str, Any], x: TensorType, n: Dim, steps: Dim) -> list[TensorType]:
    u = a["units"]
    out = (n, steps, u) if a["return_sequences"] else (n, u)
    return [TensorType(out, x.dtype), TensorType((n, u), x.dtype)]


def _infer_lstm(attrs, types):
    op = "lstm_scan"
    a = scan_attrs(attrs, op)
    u = a["units"]
    xproj, h0, c0, kernel, mask, recurrent_mask = types
    n, steps = _check_xproj(op, xproj, 4 * u)
    for what, t, shape in (("h0", h0, (n, u)), ("c0", c0, (n, u)), ("recurrent_kernel", kernel, (u, 4 * u))):
        _float(op, what, t)
        _expect(op, what, t, shape)
    _check_mask(op, mask, n, steps)
    _check_recurrent_mask(op, recurrent_mask, n, u)
    dt = xproj.dtype
    return _forward_types(a, xproj, n, steps) + [
        TensorType((n, u), dt), TensorType((steps, n, u), dt), TensorType((steps, n, u), dt),
        TensorType((steps, n, 4 * u), dt)]


def _infer_gru(attrs, types):
    op = "gru_scan"
    a = scan_attrs(attrs, op)
    u = a["units"]
    xproj, h0, kernel, bias, mask, recurrent_mask = types
    n, steps = _check_xproj(op, xproj, 3 * u)
    for what, t, shape in (("h0", h0, (n, u)), ("recurrent_kernel", kernel, (u, 3 * u)),
                           ("recurrent_bias", bias, (3 * u,))):
        _float(op, what, t)
        _expect(op, what, t, shape)
    _check_mask(op, mask, n, steps)
    _check_recurrent_mask(op, recurrent_mask, n, u)
    dt = xproj.dtype
    return _forward_types(a, xproj, n, steps) + [
        TensorType((steps, n, u), dt), TensorType((steps, n, 3 * u), dt), TensorType((steps, n, u), dt)]


def _infer_rnn(attrs, types):
    op = "rnn_scan"
    a = scan_attrs(attrs, op)
    u = a["units"]
    xproj, h0, kernel, mask, recurrent_mask = types
    n, steps = _check_xproj(op, xproj, u)
    for what, t, shape in (("h0", h0, (n, u)), ("recurrent_kernel", kernel, (u, u))):
        _float(op, what, t)
        _expect(op, what, t, shape)
    _check_mask(op, mask, n, steps)
    _check_recurrent_mask(op, recurrent_mask, n, u)
    return _forward_types(a, xproj, n, steps) + [TensorType((steps, n, u), xproj.dtype)]


# ------------------------------------------------------------------------------------- gradient ops

def _check_incoming(op: str, a: dict[str, Any], n: Dim, steps: Dim, d_outputs: TensorType,
                    d_states: Sequence[tuple[str, TensorType]]) -> None:
    u = a["units"]
    out = (n, steps, u) if a["return_sequences"] else (n, u)
    for what, t, shape in (("d_outputs", d_outputs, out),) + tuple((w, t, (n, u)) for w, t in d_states):
        _float(op, what, t)
        if t.shape not in ((), shape):
            raise ShapeError(f"{op}: {what} must have shape {format_shape(shape)} (or be a scalar), got "
                             f"{format_shape(t.shape)}")


def _saved(op: str, hs: TensorType, n: Dim, u: int) -> Dim:
    _float(op, "hs", hs)
    if hs.rank != 3 or hs.shape[1:] != (n, u):
        raise ShapeError(f"{op}: hs must have shape (T, {n}, {u}), got {format_shape(hs.shape)}")
    return hs.shape[0]


def _infer_lstm_grad(attrs, types):
    op = "lstm_scan_grad"
    a = scan_attrs(attrs, op)
    u = a["units"]
    h0, c0, kernel, mask, recurrent_mask, hs, cs, gates, d_out, d_h, d_c = types
    _float(op, "h0", h0)
    if h0.rank != 2 or h0.shape[1] != u:
        raise ShapeError(f"{op}: h0 must have shape (N, {u}), got {format_shape(h0.shape)}")
    n = h0.shape[0]
    steps = _saved(op, hs, n, u)
    _expect(op, "c0", c0, (n, u))
    _expect(op, "recurrent_kernel", kernel, (u, 4 * u))
    _expect(op, "cs", cs, (steps, n, u))
    _expect(op, "gates", gates, (steps, n, 4 * u))
    _check_mask(op, mask, n, steps)
    _check_recurrent_mask(op, recurrent_mask, n, u)
    _check_incoming(op, a, n, steps, d_out, (("d_h_last", d_h), ("d_c_last", d_c)))
    dt = h0.dtype
    return [TensorType((n, steps, 4 * u), dt), TensorType((n, u), dt), TensorType((n, u), dt),
            TensorType((u, 4 * u), dt)]


def _infer_gru_grad(attrs, types):
    op = "gru_scan_grad"
    a = scan_attrs(attrs, op)
    u = a["units"]
    h0, kernel, mask, recurrent_mask, hs, gates, aux, d_out, d_h = types
    _float(op, "h0", h0)
    if h0.rank != 2 or h0.shape[1] != u:
        raise ShapeError(f"{op}: h0 must have shape (N, {u}), got {format_shape(h0.shape)}")
    n = h0.shape[0]
    steps = _saved(op, hs, n, u)
    _expect(op, "recurrent_kernel", kernel, (u, 3 * u))
    _expect(op, "gates", gates, (steps, n, 3 * u))
    _expect(op, "aux", aux, (steps, n, u))
    _check_mask(op, mask, n, steps)
    _check_recurrent_mask(op, recurrent_mask, n, u)
    _check_incoming(op, a, n, steps, d_out, (("d_h_last", d_h),))
    dt = h0.dtype
    return [TensorType((n, steps, 3 * u), dt), TensorType((n, u), dt), TensorType((u, 3 * u), dt),
            TensorType((3 * u,), dt)]


def _infer_rnn_grad(attrs, types):
    op = "rnn_scan_grad"
    a = scan_attrs(attrs, op)
    u = a["units"]
    h0, kernel, mask, recurrent_mask, hs, d_out, d_h = types
    _float(op, "h0", h0)
    if h0.rank != 2 or h0.shape[1] != u:
        raise ShapeError(f"{op}: h0 must have shape (N, {u}), got {format_shape(h0.shape)}")
    n = h0.shape[0]
    steps = _saved(op, hs, n, u)
    _expect(op, "recurrent_kernel", kernel, (u, u))
    _check_mask(op, mask, n, steps)
    _check_recurrent_mask(op, recurrent_mask, n, u)
    _check_incoming(op, a, n, steps, d_out, (("d_h_last", d_h),))
    dt = h0.dtype
    return [TensorType((n, steps, u), dt), TensorType((n, u), dt), TensorType((u, u), dt)]


# ------------------------------------------------------------------------------------ gradient rules

def _incoming(g, node, dys, count: int):
    """The gradients of the first `count` outputs, a scalar zero where there is none; the saved outputs
    must not receive any."""
    if any(d is not None for d in dys[count:]):
        raise NndError(f"{node.op}: its saved outputs (after the first {count}) are for its gradient only "
                       "and cannot be differentiated")
    dtype = node.outputs[0].type.dtype
    return [d if d is not None else g.emit1("constant", [], {"value": 0.0, "dtype": dtype})
            for d in dys[:count]]


def _g_lstm(g, node, dys):
    xproj, h0, c0, kernel, mask, recurrent_mask = node.inputs
    hs, cs, gates = node.outputs[3:]
    d_out, d_h, d_c = _incoming(g, node, dys, 3)
    dx, dh0, dc0, dk = g.emit("lstm_scan_grad",
                              [h0, c0, kernel, mask, recurrent_mask, hs, cs, gates, d_out, d_h, d_c],
                              node.attr_dict)
    return [dx, dh0, dc0, dk, None, None]


def _g_gru(g, node, dys):
    xproj, h0, kernel, bias, mask, recurrent_mask = node.inputs
    hs, gates, aux = node.outputs[2:]
    d_out, d_h = _incoming(g, node, dys, 2)
    dx, dh0, dk, db = g.emit("gru_scan_grad", [h0, kernel, mask, recurrent_mask, hs, gates, aux, d_out, d_h],
                             node.attr_dict)
    return [dx, dh0, dk, db, None, None]


def _g_rnn(g, node, dys):
    xproj, h0, kernel, mask, recurrent_mask = node.inputs
    (hs,) = node.outputs[2:]
    d_out, d_h = _incoming(g, node, dys, 2)
    dx, dh0, dk = g.emit("rnn_scan_grad", [h0, kernel, mask, recurrent_mask, hs, d_out, d_h], node.attr_dict)
    return [dx, dh0, dk, None, None]


register("lstm_scan", infer=_infer_lstm, fusion=Fusion.OPAQUE, grad=_g_lstm, arity=6,
         doc="LSTM recurrence over projected inputs -> (outputs, h_last, c_last, hs, cs, gates)")
register("gru_scan", infer=_infer_gru, fusion=Fusion.OPAQUE, grad=_g_gru, arity=6,
         doc="GRU recurrence over projected inputs -> (outputs, h_last, hs, gates, aux)")
register("rnn_scan", infer=_infer_rnn, fusion=Fusion.OPAQUE, grad=_g_rnn, arity=5,
         doc="SimpleRNN recurrence over projected inputs -> (outputs, h_last, hs)")
register("lstm_scan_grad", infer=_infer_lstm_grad, fusion=Fusion.OPAQUE, grad=NOT_DIFFERENTIABLE, arity=11,
         doc="backprop through time of lstm_scan -> (d_xproj, d_h0, d_c0, d_recurrent_kernel)")
register("gru_scan_grad", infer=_infer_gru_grad, fusion=Fusion.OPAQUE, grad=NOT_DIFFERENTIABLE, arity=9,
         doc="backprop through time of gru_scan -> (d_xproj, d_h0, d_recurrent_kernel, d_recurrent_bias)")
register("rnn_scan_grad", infer=_infer_rnn_grad, fusion=Fusion.OPAQUE, grad=NOT_DIFFERENTIABLE, arity=7,
         doc="backprop through time of rnn_scan -> (d_xproj, d_h0, d_recurrent_kernel)")
