"""What a layer is to the compiler: its arguments and how it lowers to IR ops.

A layer's `lower(ctx, inputs, args)` declares its parameters through the context (Keras names and
layouts) and emits nodes; the context stamps every node with the layer's name and source span.
"""
from __future__ import annotations

import zlib
from dataclasses import dataclass
from typing import Any, Callable, Sequence

from nnd.compiler.args import ArgSpec
from nnd.compiler.builder import GraphBuilder
from nnd.compiler.ir import Initializer, Parameter, Regularizer, Value
from nnd.compiler.source import Span
from nnd.compiler.tensor_type import FLOAT_DTYPES, TensorType

TRAIN = "train"
INFER = "infer"


class LayerError(Exception):
    """A layer cannot apply to its inputs; the message names shapes, notes suggest a fix."""

    def __init__(self, message: str, notes: Sequence[str] = (), span: Span | None = None):
        super().__init__(message)
        self.message = message
        self.notes = tuple(notes)
        self.span = span  # where the mistake is when not the layer call itself (a wrapper's argument)


def require_float(x: Value, kind: str) -> None:
    """Layers that compute on real numbers refuse integer ids in their own words (the ops they lower to
    would name themselves and a reshaped type)."""
    if x.type.dtype not in FLOAT_DTYPES:
        raise LayerError(f"{kind} needs a float input, got {x.type}",
                         ["integer ids become vectors through embedding(...) first"])


class LayerContext:
    def __init__(self, builder: GraphBuilder, name: str, kind: str, span: Span | None, mode: str):
        self.builder = builder
        self.name = name
        self.kind = kind
        self.span = span
        self.mode = mode
        self.param_names: list[str] = []
        self.flops = 0
        self.input_masks: list[Value | None] = []
        self.output_mask: Value | None = None
        self.seed: int | None = None  # the layer's `seed` argument, for those that draw random numbers
        self.result_names: tuple[str, ...] = ()  # what a layer with several results calls them: output, h, c
        # Set by the checker for wrapper layers: apply(layer_ref, x, name, adjust) -> Value | tuple[Value, ...]
        self.apply_layer: Callable[..., Any] | None = None

    @property
    def training(self) -> bool:
        return self.mode == TRAIN

    def param(self, suffix: str, shape: Sequence[int], initializer: Initializer,
              trainable: bool = True, regularizer: Regularizer | None = None) -> Value:
        name = f"{self.name}.{suffix}"
        self.param_names.append(name)
        info = Parameter(name, TensorType(tuple(shape)), initializer, trainable, regularizer, self.name)
        return self.builder.add_param(info)

    def emit(self, op: str, inputs: Sequence[Value], **attrs: Any) -> Value:
        with self.builder.origin(self.span, self.name):
            return self.builder.emit1(op, inputs, attrs)

    def emit_many(self, op: str, inputs: Sequence[Value], **attrs: Any) -> tuple[Value, ...]:
        with self.builder.origin(self.span, self.name):
            return self.builder.emit(op, inputs, attrs)

    def random_stream(self, purpose: str = "") -> int:
        """A number naming this layer's random draws (and which of them), the same at every -O level:
        the runtime seeds each draw from it and the run, so removing another draw changes nothing here.
        A layer's own `seed` argument picks another stream, as Keras' seed gives a layer draws of its own."""
        seeded = "" if self.seed is None else f"#{self.seed}"
        return zlib.crc32(f"{self.name}/{purpose}{seeded}".encode())

    def constant(self, value: float) -> Value:
        return self.emit("constant", [], value=float(value), dtype="f32")

    def update_state(self, param: str, value: Value) -> None:
        self.builder.graph.state_updates[param] = value

    def count(self, flops: int) -> None:
        self.flops += int(flops)


Lowering = Callable[[LayerContext, list[Value], dict[str, Any]], "Value | tuple[Value, ...]"]


@dataclass(frozen=True)
class LayerSpec:
    """`inputs` is the number of tensor inputs: an int, or (minimum, maximum), the maximum None for merges
    like add.

    `keeps_mask`: the output keeps the input's padding mask (per-step layers); `wrapper`: the layer takes
    another layer as an argument (bidirectional, time_distributed).
    """

    name: str
    args: tuple[ArgSpec, ...]
    lower: Lowering
    inputs: int | tuple[int, int | None] = 1
    doc: str = ""
    keeps_mask: bool = False
    wrapper: bool = False

    def accepts_inputs(self, count: int) -> bool:
        if isinstance(self.inputs, int):
            return count == self.inputs
        least, most = self.inputs
        return count >= least and (most is None or count <= most)

    def input_words(self) -> str:
        if isinstance(self.inputs, int):
            return f"{self.inputs} input{'s' if self.inputs != 1 else ''}"
        least, most = self.inputs
        if most is None:
            return f"at least {least} inputs"
        return f"{least} or {most} inputs" if most == least + 1 else f"{least} to {most} inputs"


LAYERS: dict[str, LayerSpec] = {}


def layer(name: str, *args: ArgSpec, inputs: int | tuple[int, int | None] = 1, doc: str = "",
          aliases: Sequence[str] = (), keeps_mask: bool = False, wrapper: bool = False
          ) -> Callable[[Lowering], Lowering]:
    def decorate(fn: Lowering) -> Lowering:
        spec = LayerSpec(name, tuple(args), fn, inputs, doc or (fn.__doc__ or "").strip(), keeps_mask, wrapper)
        for key in (name, *aliases):
            if key in LAYERS:
                raise ValueError(f"layer {key!r} defined twice")
            LAYERS[key] = spec
        return fn

    return decorate


def check_axis(x: Value, axis: int) -> int:
    """`axis` of x counted from 0 (negative from the end); the batch axis and axes beyond the rank are
    the user's mistake."""
    rank = x.type.rank
    if not -rank <= axis < rank:
        raise LayerError(f"axis {axis} is out of range for {x.type}")
    normalized = axis % rank
    if normalized == 0:
        raise LayerError("axis 0 is the batch axis; choose another")
    return normalized


def shape_of(value: Value) -> tuple:
    return value.type.shape


def static_dims(value: Value) -> tuple[int, ...]:
    """The dimensions after the batch; all must be known."""
    return tuple(d for d in value.type.shape[1:])  # type: ignore[misc]
