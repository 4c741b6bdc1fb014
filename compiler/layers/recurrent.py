"""Recurrent layers with Keras' semantics, names and weight layouts: simple_rnn, lstm, gru, bidirectional.

Each lowers to one GEMM for every step's input projection (`matmul(x, kernel)` plus the input bias) and
one scan op (`lstm_scan`, `gru_scan`, `rnn_scan`) that runs the recurrence over it. A padding mask on the
input (from `embedding(mask_zero=true)` or `masking()`) goes to the scan, which carries the state over
padded steps.

Dropout follows Keras: `dropout=` draws one mask per sequence for the inputs, shared by all steps;
`recurrent_dropout=` draws one mask per sequence, [batch, units], for h_{t-1} where it enters the
recurrent projection, the same at every step (the scan's `recurrent_mask`; see nnd.compiler.ops.recurrent
for the exact form). Both apply in training only; inference passes the scalar 1.
"""
from __future__ import annotations

from typing import Any

from nnd.compiler.args import (BOOL, INITIALIZER, LAYER, NAME, POSITIVE_INT, RATE, REGULARIZER, TENSORS,
                               ArgSpec, choice)
from nnd.compiler.ir import Initializer, Value
from nnd.compiler.layers.base import LayerContext, LayerError, layer, require_float
from nnd.compiler.layers.core import _with_fans

RECURRENT = ("lstm", "gru", "simple_rnn")
_ACTIVATION = choice(("tanh", "relu", "sigmoid", "linear"), "activation")
_RECURRENT_ACTIVATION = choice(("sigmoid", "hard_sigmoid", "tanh"), "recurrent activation")
_GATES = {"lstm": 4, "gru": 3, "simple_rnn": 1}


def _common_args(*extra: ArgSpec) -> tuple[ArgSpec, ...]:
    return (
        ArgSpec("units", POSITIVE_INT), ArgSpec("activation", _ACTIVATION, "tanh"), *extra,
        ArgSpec("use_bias", BOOL, True), ArgSpec("return_sequences", BOOL, False),
        ArgSpec("return_state", BOOL, False), ArgSpec("go_backwards", BOOL, False),
        ArgSpec("dropout", RATE, 0.0), ArgSpec("recurrent_dropout", RATE, 0.0),
        ArgSpec("kernel_initializer", INITIALIZER, Initializer("glorot_uniform")),
        ArgSpec("recurrent_initializer", INITIALIZER, Initializer("orthogonal")),
        ArgSpec("bias_initializer", INITIALIZER, Initializer("zeros")),
        ArgSpec("kernel_regularizer", REGULARIZER, None), ArgSpec("recurrent_regularizer", REGULARIZER, None),
        ArgSpec("bias_regularizer", REGULARIZER, None), ArgSpec("initial_state", TENSORS, None),
        ArgSpec("name", NAME, None))


def _sequence(ctx: LayerContext, x: Value) -> tuple[Any, int, int]:
    if x.type.dtype not in ("f32", "f64") and x.type.rank in (2, 3):
        raise LayerError(f"{ctx.kind} expects float features, got {x.type}",
                         ["map integer ids to vectors with embedding(input_dim, output_dim) first"])
    if x.type.rank != 3:
        raise LayerError(f"{ctx.kind} expects a sequence (batch, steps, features), got {x.type}",
                         sequence_notes(x))
    if x.type.dtype not in ("f32", "f64"):
        raise LayerError(f"{ctx.kind} expects float features, got {x.type}",
                         ["map integer ids to vectors with embedding(input_dim, output_dim) first"])
    _, steps, features = x.type.shape
    return x.type.shape[0], steps, features  # type: ignore[return-value]


def sequence_notes(x: Value) -> list[str]:
    """How to make a sequence (batch, steps, features) of a value of another rank."""
    dims = x.type.shape[1:]
    if len(dims) == 1:
        return [f"reshape([{dims[0]}, 1]) reads the {dims[0]} values as {dims[0]} steps of one feature"]
    if len(dims) >= 3 and all(isinstance(d, int) for d in dims):
        features = 1
        for d in dims[1:]:
            features *= d
        return [f"reshape([{dims[0]}, {features}]) reads it as {dims[0]} steps of {features} features, or "
                f"time_distributed(...) turns each step into a vector first (a CNN per frame)"]
    return []


def _masks(ctx: LayerContext, x: Value, args: dict[str, Any]) -> list[Value]:
    """The scan's `mask` and `recurrent_mask` inputs; where either is absent, one scalar 1 serves both.

    The recurrent mask is Keras' `recurrent_dropout=`: in training, one [batch, units] mask per sequence
    (0 or 1/(1-rate)) for the recurrent state, the same at every step."""
    padding = ctx.input_masks[0] if ctx.input_masks else None
    rate = args["recurrent_dropout"]
    recurrent = None
    if ctx.training and rate > 0.0:
        template = ctx.emit("batch_zeros", [x], shape=(args["units"],))
        recurrent = ctx.emit("dropout_mask", [template], rate=rate, stream=ctx.random_stream("recurrent"))
    one = ctx.constant(1.0) if padding is None or recurrent is None else None
    return [padding if padding is not None else one, recurrent if recurrent is not None else one]


def _input_dropout(ctx: LayerContext, x: Value, rate: float) -> Value:
    """Keras' `dropout=`: one mask per sequence, shared by all its steps."""
    if not ctx.training or rate == 0.0:
        return x
    first_step = ctx.emit("slice", [x], axis=1, start=0, stop=1)
    mask = ctx.emit("dropout_mask", [first_step], rate=rate, stream=ctx.random_stream("input"))
    return ctx.emit("mul", [x, mask])


def _initial_states(ctx: LayerContext, x: Value, args: dict[str, Any], count: int, units: int) -> list[Value]:
    given = args["initial_state"]
    if given is None:
        zeros = ctx.emit("batch_zeros", [x], shape=(units,))
        return [zeros] * count
    if len(given) != count:
        raise LayerError(f"{ctx.kind} takes {count} initial state{'s' if count > 1 else ''} "
                         f"({'h, c' if count == 2 else 'h'}), got {len(given)}")
    for state in given:
        require_float(state, f"{ctx.kind} initial_state")
        if state.type.rank != 2 or state.type.shape[1] != units:
            raise LayerError(f"{ctx.kind} initial states must be (batch, {units}), got {state.type}")
    return list(given)


def _project(ctx: LayerContext, x: Value, args: dict[str, Any], gates: int, bias: Value | None) -> Value:
    """All steps' input projections in one GEMM: x [N, T, F] @ kernel [F, gates*units] (+ bias)."""
    _, steps, features = _sequence(ctx, x)
    units = args["units"]
    width = gates * units
    init = _with_fans(args["kernel_initializer"], features, width)
    kernel = ctx.param("kernel", (features, width), init, regularizer=args["kernel_regularizer"])
    projected = ctx.emit("matmul", [_input_dropout(ctx, x, args["dropout"]), kernel])
    ctx.count(2 * steps * features * width + 2 * steps * units * width + 8 * steps * width)
    return projected if bias is None else ctx.emit("add", [projected, bias])


def _recurrent_kernel(ctx: LayerContext, args: dict[str, Any], gates: int) -> Value:
    units = args["units"]
    return ctx.param("recurrent_kernel", (units, gates * units), args["recurrent_initializer"],
                     regularizer=args["recurrent_regularizer"])


def _bias(ctx: LayerContext, args: dict[str, Any], shape: tuple[int, ...], init: Initializer) -> Value | None:
    if not args["use_bias"]:
        return None
    return ctx.param("bias", shape, init, regularizer=args["bias_regularizer"])


def _finish(ctx: LayerContext, args: dict[str, Any], outputs: tuple[Value, ...], states: int):
    """The layer's result: the output, or (return_state) the output and the final states."""
    if args["return_sequences"] and ctx.input_masks and ctx.input_masks[0] is not None:
        ctx.output_mask = ctx.input_masks[0]  # Keras passes the mask on with the sequence
    if args["return_state"]:
        ctx.result_names = ("output", "h", "c")[:1 + states]
        return tuple(outputs[:1 + states])
    return outputs[0]


def _scan_attrs(ctx: LayerContext, args: dict[str, Any]) -> dict[str, Any]:
    return {"units": args["units"], "activation": args["activation"], "go_backwards": args["go_backwards"],
            "return_sequences": args["return_sequences"]}


@layer("simple_rnn", *_common_args(), doc="Fully connected recurrence: h_t = activation(x_t W + h_{t-1} U + b)")
def _simple_rnn(ctx: LayerContext, inputs: list[Value], args: dict[str, Any]):
    x = inputs[0]
    units = args["units"]
    bias = _bias(ctx, args, (units,), args["bias_initializer"])
    projected = _project(ctx, x, args, 1, bias)
    (h0,) = _initial_states(ctx, x, args, 1, units)
    outputs = ctx.emit_many("rnn_scan", [projected, h0, _recurrent_kernel(ctx, args, 1), *_masks(ctx, x, args)],
                            **_scan_attrs(ctx, args))
    return _finish(ctx, args, outputs, 1)


@layer("lstm", *_common_args(ArgSpec("recurrent_activation", _RECURRENT_ACTIVATION, "sigmoid")),
       ArgSpec("unit_forget_bias", BOOL, True),
       doc="Long short-term memory; gates i, f, c, o as in Keras")
def _lstm(ctx: LayerContext, inputs: list[Value], args: dict[str, Any]):
    x = inputs[0]
    units = args["units"]
    init = args["bias_initializer"]
    if args["unit_forget_bias"]:
        # Keras starts the forget gate's bias at one so early training remembers.
        init = Initializer("unit_forget_bias", (("base", init.name), ("base_args", init.args), ("units", units)))
    bias = _bias(ctx, args, (4 * units,), init)
    projected = _project(ctx, x, args, 4, bias)
    h0, c0 = _initial_states(ctx, x, args, 2, units)
    outputs = ctx.emit_many("lstm_scan", [projected, h0, c0, _recurrent_kernel(ctx, args, 4), *_masks(ctx, x, args)],
                            recurrent_activation=args["recurrent_activation"], **_scan_attrs(ctx, args))
    return _finish(ctx, args, outputs, 2)


@layer("gru", *_common_args(ArgSpec("recurrent_activation", _RECURRENT_ACTIVATION, "sigmoid")),
       ArgSpec("reset_after", BOOL, True),
       doc="Gated recurrent unit; gates z, r, h as in Keras (reset_after=true: bias (2, 3*units))")
def _gru(ctx: LayerContext, inputs: list[Value], args: dict[str, Any]):
    x = inputs[0]
    units = args["units"]
    width = 3 * units
    reset_after = args["reset_after"]
    bias = _bias(ctx, args, (2, width) if reset_after else (width,), args["bias_initializer"])
    input_bias, recurrent_bias = bias, None
    if bias is not None and reset_after:
        input_bias = _bias_row(ctx, bias, 0, width)
        recurrent_bias = _bias_row(ctx, bias, 1, width)
    projected = _project(ctx, x, args, 3, input_bias)
    if recurrent_bias is None:  # Keras' reset_after=false GRU has the input bias only
        recurrent_bias = ctx.emit("constant", [], value=0.0, dtype="f32", shape=(width,))
    (h0,) = _initial_states(ctx, x, args, 1, units)
    outputs = ctx.emit_many("gru_scan", [projected, h0, _recurrent_kernel(ctx, args, 3), recurrent_bias,
                                         *_masks(ctx, x, args)],
                            recurrent_activation=args["recurrent_activation"], reset_after=reset_after,
                            **_scan_attrs(ctx, args))
    return _finish(ctx, args, outputs, 1)


def _bias_row(ctx: LayerContext, bias: Value, row: int, width: int) -> Value:
    picked = ctx.emit("slice", [bias], axis=0, start=row, stop=row + 1)
    return ctx.emit("reshape", [picked], shape=(width,))


_MERGES = ("concat", "sum", "mul", "ave")


@layer("bidirectional", ArgSpec("layer", LAYER), ArgSpec("merge_mode", choice(_MERGES, "merge mode"), "concat",
                                                        aliases=("merge",)),
       ArgSpec("name", NAME, None), wrapper=True,
       doc="Run a recurrent layer forwards and backwards over the sequence and merge the two")
def _bidirectional(ctx: LayerContext, inputs: list[Value], args: dict[str, Any]):
    x = inputs[0]
    inner = args["layer"]
    if inner.call.callee not in RECURRENT:
        raise LayerError(f"bidirectional wraps a recurrent layer ({', '.join(RECURRENT)}), "
                         f"not {inner.call.callee}", span=inner.call.span)
    assert ctx.apply_layer is not None
    mask = ctx.input_masks[0] if ctx.input_masks else None
    kind = inner.call.callee
    forward = ctx.apply_layer(inner, x, f"{ctx.name}.forward_{kind}", _direction_states(kind, 0), mask)
    backward_states = _direction_states(kind, 1)
    backward = ctx.apply_layer(inner, x, f"{ctx.name}.backward_{kind}",
                               lambda a: {**backward_states(a), "go_backwards": not a["go_backwards"]}, mask)
    forward_values = forward if isinstance(forward, tuple) else (forward,)
    backward_values = backward if isinstance(backward, tuple) else (backward,)
    ahead, behind = forward_values[0], backward_values[0]
    if ahead.type.rank == 3:
        behind = ctx.emit("flip", [behind], axis=1)  # align the backward pass's steps with the input's
        ctx.output_mask = mask
        if mask is not None:
            # Keras' Bidirectional sets zero_output_for_mask on both halves when they return sequences:
            # padded steps come out as zeros, not as the carried state of a lone recurrent layer.
            n, steps, _ = ahead.type.shape
            keep = ctx.emit("reshape", [mask], shape=(n, steps, 1))
            ahead, behind = ctx.emit("mul", [ahead, keep]), ctx.emit("mul", [behind, keep])
    merged = _merge(ctx, args["merge_mode"], ahead, behind)
    if isinstance(forward, tuple):
        states = ("h", "c")[:len(forward_values) - 1]
        ctx.result_names = ("output", *(f"forward_{s}" for s in states), *(f"backward_{s}" for s in states))
        return (merged, *forward_values[1:], *backward_values[1:])
    return merged


_STATES = {"lstm": ("h", "c"), "gru": ("h",), "simple_rnn": ("h",)}


def _direction_states(kind: str, half: int):
    """The inner layer's arguments for one direction: its half of initial_state, which lists the forward
    layer's states and then the backward layer's, as Keras' Bidirectional splits them."""
    names = _STATES[kind]

    def adjust(args: dict[str, Any]) -> dict[str, Any]:
        given = args["initial_state"]
        if given is None:
            return args
        count = len(names)
        if len(given) != 2 * count:
            order = ", ".join([f"forward {n}" for n in names] + [f"backward {n}" for n in names])
            raise LayerError(f"bidirectional({kind}) takes {2 * count} initial states ({order}), got {len(given)}")
        return {**args, "initial_state": given[half * count:(half + 1) * count]}

    return adjust


def _merge(ctx: LayerContext, mode: str, a: Value, b: Value) -> Value:
    if mode == "concat":
        return ctx.emit("concat", [a, b], axis=a.type.rank - 1)
    if mode == "sum":
        return ctx.emit("add", [a, b])
    if mode == "mul":
        return ctx.emit("mul", [a, b])
    return ctx.emit("mul", [ctx.emit("add", [a, b]), ctx.constant(0.5)])
