"""Compile-time values of the language and the argument kinds that layers and settings accept.

Expressions that are not tensors evaluate to plain Python values (int, float, bool, str for string
literals, lists), to a `Symbol` for a bare word such as `relu` or `same`, or to a `CallValue` for a
constructor such as `he_normal()`, `l2(0.01)` or `adam(lr=0.001)`. Each `ArgKind` converts such a value
into what a layer needs, or raises `ArgError` with a message for the user.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable

from nnd.compiler.diagnostics import did_you_mean
from nnd.compiler.ir import Initializer, Regularizer
from nnd.compiler.source import Span


@dataclass(frozen=True)
class Symbol:
    """A bare word that names no constant or value: an option such as `same`, `relu`, `val_loss`."""

    name: str
    span: Span | None = field(default=None, compare=False)


@dataclass(frozen=True)
class CallValue:
    """A constructor call in a value position, checked by whoever consumes it."""

    callee: str
    args: tuple[Any, ...]
    kwargs: tuple[tuple[str, Any], ...]
    span: Span | None = field(default=None, compare=False)
    kwarg_spans: tuple[Span | None, ...] = field(default=(), compare=False)  # where each `key=value` is

    def kwarg_span(self, index: int) -> Span | None:
        return self.kwarg_spans[index] if index < len(self.kwarg_spans) else self.span


@dataclass
class Tensor:
    """A tensor value of the language: the IR value it lowered to, and its padding mask if it has one."""

    value: Any  # nnd.compiler.ir.Value
    mask: Any = None  # a [N, T] float value of 1 (real step) and 0 (padding), or None


@dataclass
class TensorGroup:
    """The several results of one layer (`return_state=true`), to be unpacked: `out, h, c = ...`."""

    items: list[Tensor]
    layer: str
    names: tuple[str, ...]
    span: Any = None  # the layer call's place


@dataclass(frozen=True)
class LayerRef:
    """A layer call given as an argument (`bidirectional(lstm(64))`), applied later by its wrapper."""

    call: Any  # nnd.compiler.syntax.Call
    scope: Any = field(default=None, compare=False)  # the checker's frame it was written in


class ArgError(Exception):
    def __init__(self, message: str, notes: tuple[str, ...] = ()):
        super().__init__(message)
        self.message = message
        self.notes = notes


def describe(value: Any) -> str:
    """How a value is named in messages: `a float (1.5)`, `the name 'relux'`."""
    if isinstance(value, bool):
        return f"a bool ({'true' if value else 'false'})"
    if isinstance(value, int):
        return f"an int ({value})"
    if isinstance(value, float):
        text = f"{value:g}"
        if value.is_integer() and "e" not in text:
            text += ".0"  # so that 4 / 2 reads as the float it is
        return f"a float ({text})"
    if isinstance(value, str):
        return f'a string ("{value}")'
    if isinstance(value, Symbol):
        return f"the name '{value.name}'"
    if isinstance(value, CallValue):
        return f"a call of '{value.callee}'"
    if isinstance(value, list):
        return "a list"
    if isinstance(value, LayerRef):
        return f"the layer {value.call.callee}(...)"
    if isinstance(value, TensorGroup):
        return f"the {len(value.items)} results of {value.layer}"
    return "a tensor"


Converter = Callable[[Any], Any]


@dataclass(frozen=True)
class ArgKind:
    """What an argument accepts: `expected` reads in messages ('a positive int'), `convert` checks.

    `symbolic` kinds take bare words (`relu`, `same`, `none`), so a wrong word there is a bad option;
    elsewhere a bare word can only be a misspelled or undefined constant.
    """

    expected: str
    convert: Converter
    symbolic: bool = False


def _fail(kind: str, value: Any) -> ArgError:
    return ArgError(f"expected {kind}, got {describe(value)}")


def _int(value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise _fail("an int", value)
    return value


# Sizes and counts beyond int32 cannot be allocated or indexed by the kernels; saying so at the argument
# beats a failure deep in NumPy when the first array is made.
LARGEST_SIZE = 2 ** 31 - 1


def _bounded_int(lo: int) -> Converter:
    def convert(value: Any) -> int:
        number = _int(value)
        if number < lo:
            raise ArgError(f"must be at least {lo}, got {number}")
        if number > LARGEST_SIZE:
            raise ArgError(f"must be at most {LARGEST_SIZE:,}, got {number:,}")
        return number

    return convert


def _float(value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise _fail("a number", value)
    return float(value)


def _float_range(lo: float, hi: float, hi_open: bool) -> Converter:
    def convert(value: Any) -> float:
        number = _float(value)
        if number < lo or number > hi or (hi_open and number == hi):
            bracket = ")" if hi_open else "]"
            raise ArgError(f"must be in [{lo:g}, {hi:g}{bracket}, got {number:g}")
        return number

    return convert


def _positive_float(value: Any) -> float:
    number = _float(value)
    if number <= 0:
        raise ArgError(f"must be positive, got {number:g}")
    return number


def _non_negative_float(value: Any) -> float:
    number = _float(value)
    if number < 0:
        raise ArgError(f"must be at least 0, got {number:g}")
    return number


def _bool(value: Any) -> bool:
    if not isinstance(value, bool):
        raise _fail("true or false", value)
    return value


# Python's spellings of the language's words: a Keras user's True, False and None.
PYTHON_WORDS = {"True": True, "False": False, "None": Symbol("none")}


def python_word_hint(value: Any, kind: "ArgKind | ArgSpec") -> str | None:
    """'did you mean ...?' for Python's True, False or None where the language's word would be accepted
    (by an argument kind, or by a layer's argument, which also takes none when that is its default)."""
    if not isinstance(value, Symbol) or value.name not in PYTHON_WORDS:
        return None
    try:
        kind.convert(PYTHON_WORDS[value.name])
    except ArgError:
        return None
    return f"did you mean '{value.name.lower()}'?"


def _pair_at_least(lo: int) -> Converter:
    def convert(value: Any) -> tuple[int, int]:
        items = value if isinstance(value, list) else [value, value]
        if len(items) != 2:
            raise ArgError(f"expected an int or a list of two ints, got a list of {len(items)}")
        pair = tuple(_bounded_int(lo)(v) for v in items)
        return pair  # type: ignore[return-value]
    return convert


# An int or a list of two ints, each at least 1: kernel sizes, strides, pool sizes.
_pair = _pair_at_least(1)


def optional(convert: Converter) -> Converter:
    """`convert`, or None for `none` (Keras' None)."""
    def convert_or_none(value: Any) -> Any:
        if isinstance(value, Symbol) and value.name == "none":
            return None
        return convert(value)
    return convert_or_none


_optional_pair = optional(_pair)


def _padding2d(value: Any) -> tuple[tuple[int, int], tuple[int, int]]:
    """`1`, `[1, 2]` (rows, columns) or `[[top, bottom], [left, right]]`, as Keras' ZeroPadding2D and
    Cropping2D take them."""
    if isinstance(value, list) and len(value) == 2 and all(isinstance(v, list) for v in value):
        pads = tuple(tuple(_bounded_int(0)(p) for p in side) for side in value)
        if any(len(side) != 2 for side in pads):
            raise ArgError("expected [[top, bottom], [left, right]]")
        return pads  # type: ignore[return-value]
    items = value if isinstance(value, list) else [value, value]
    if len(items) != 2:
        raise ArgError("expected an int, [rows, columns] or [[top, bottom], [left, right]]")
    rows, cols = (_bounded_int(0)(v) for v in items)
    return ((rows, rows), (cols, cols))


def _cropping1d(value: Any) -> tuple[int, int]:
    """`1` (each end) or `[start, end]`: the steps Keras' Cropping1D removes."""
    items = value if isinstance(value, list) else [value, value]
    if len(items) != 2:
        raise ArgError(f"expected an int or [start, end], got a list of {len(items)}")
    start, end = (_bounded_int(0)(v) for v in items)
    return start, end


def _permutation(value: Any) -> tuple[int, ...]:
    """Keras' Permute dims: the axes after the batch, counted from 1, in their new order."""
    if not isinstance(value, list) or not value:
        raise _fail("a list of axes such as [2, 1]", value)
    dims = tuple(_int(v) for v in value)
    if sorted(dims) != list(range(1, len(dims) + 1)):
        raise ArgError(f"expected an order of the axes 1 to {len(dims)} (the batch axis 0 stays first), got "
                       f"[{', '.join(map(str, dims))}]")
    return dims


def _shared_axes(value: Any) -> tuple[int, ...] | None:
    """Keras' PReLU shared_axes: an axis or a list of them, counted from 1 (the first after the batch)."""
    if isinstance(value, Symbol) and value.name == "none":
        return None
    axes = tuple(_bounded_int(1)(v) for v in (value if isinstance(value, list) else [value]))
    if len(set(axes)) != len(axes):
        raise ArgError(f"an axis appears twice in [{', '.join(map(str, axes))}]")
    return axes


def _statistics(least: float | None) -> Converter:
    """Keras' Normalization mean or variance: one number for every feature, or a list of one per feature;
    `least` bounds each value from below (a variance is at least 0)."""
    def convert(value: Any) -> float | tuple[float, ...]:
        items = value if isinstance(value, list) else [value]
        if not items:
            raise ArgError("expected a number or a list of numbers, got an empty list")
        numbers = tuple(_float(v) for v in items)
        if least is not None and any(v < least for v in numbers):
            raise ArgError(f"must be at least {least:g}, got {min(numbers):g}")
        return numbers if isinstance(value, list) else numbers[0]

    return convert


def _choice(choices: tuple[str, ...], what: str) -> Converter:
    def convert(value: Any) -> str:
        name = value.name if isinstance(value, Symbol) else value if isinstance(value, str) else None
        if name is None:
            raise ArgError(f"expected {what} ({', '.join(choices)}), got {describe(value)}")
        if name not in choices:
            hint = did_you_mean(name, choices)
            suggestion = f"; did you mean '{hint}'?" if hint else ""
            raise ArgError(f"unknown {what} '{name}'{suggestion}", (f"valid: {', '.join(choices)}",))
        return name

    return convert


def _name(value: Any) -> str:
    if isinstance(value, Symbol):
        return value.name
    if isinstance(value, str) and value.isidentifier():
        return value
    raise _fail("a name", value)


def _shape(value: Any) -> tuple[int, ...]:
    if not isinstance(value, list):
        raise _fail("a list of dimensions", value)
    dims = tuple(_int(v) for v in value)
    if sum(1 for d in dims if d == -1) > 1:
        raise ArgError("at most one dimension may be -1")
    if any(d == 0 or d < -1 for d in dims):
        raise ArgError("dimensions must be positive (or -1 once, inferred)")
    return dims


ACTIVATIONS = ("linear", "relu", "relu6", "leaky_relu", "elu", "selu", "gelu", "swish", "silu", "mish",
               "sigmoid", "hard_sigmoid", "hard_silu", "hard_swish", "tanh", "softsign", "softmax", "softplus",
               "exponential")

INITIALIZERS: dict[str, tuple[str, ...]] = {
    "zeros": (), "ones": (), "constant": ("value",),
    "glorot_uniform": (), "glorot_normal": (), "he_uniform": (), "he_normal": (),
    "lecun_uniform": (), "lecun_normal": (), "orthogonal": ("gain",),
    "random_normal": ("mean", "stddev"), "random_uniform": ("minval", "maxval"),
    "truncated_normal": ("mean", "stddev"),
}


def _initializer(value: Any) -> Initializer:
    if isinstance(value, (Symbol, str)):
        name = _choice(tuple(INITIALIZERS), "initializer")(value)
        return Initializer(name)
    if isinstance(value, CallValue):
        name = _choice(tuple(INITIALIZERS), "initializer")(Symbol(value.callee))
        allowed = INITIALIZERS[name]
        if len(value.args) > len(allowed):
            raise ArgError(f"{name} takes at most {len(allowed)} positional arguments")
        args = dict(zip(allowed, value.args))
        for key, arg in value.kwargs:
            if key not in allowed:
                hint = did_you_mean(key, allowed)
                raise ArgError(f"{name} has no argument '{key}'" + (f"; did you mean '{hint}'?" if hint else ""),
                               (f"valid: {', '.join(allowed) or 'none'}",))
            args[key] = arg
        numbers = {k: _float(v) for k, v in args.items()}
        _check_initializer(name, numbers)
        return Initializer(name, tuple(sorted(numbers.items())))
    raise _fail("an initializer such as glorot_uniform or he_normal()", value)


def _check_initializer(name: str, args: dict[str, float]) -> None:
    """What the draw itself would refuse only when the parameters are made, said at the argument."""
    if args.get("stddev", 0.0) < 0:
        raise ArgError(f"{name}: stddev must be at least 0, got {args['stddev']:g}")
    low, high = args.get("minval", -0.05), args.get("maxval", 0.05)  # the defaults are Keras'
    if name == "random_uniform" and low > high:
        raise ArgError(f"{name}: minval {low:g} is above maxval {high:g}")


def _regularizer(value: Any) -> Regularizer | None:
    if isinstance(value, Symbol) and value.name == "none":
        return None
    if isinstance(value, Symbol) and value.name in ("l1", "l2", "l1_l2"):
        raise ArgError(f"{value.name} needs parentheses and a factor",
                       (f"write {value.name}(0.01)" if value.name != "l1_l2" else "write l1_l2(l1=0.01, l2=0.01)",))
    if not isinstance(value, CallValue) or value.callee not in ("l1", "l2", "l1_l2"):
        raise _fail("a regularizer: l1(F), l2(F) or l1_l2(l1=F, l2=F)", value)
    names = ("l1", "l2") if value.callee == "l1_l2" else (value.callee,)
    if len(value.args) > len(names):
        count = len(names)
        raise ArgError(f"{value.callee} takes at most {count} positional argument{'s' if count != 1 else ''}, "
                       f"got {len(value.args)}")
    factors = dict(zip(names, value.args))
    for key, arg in value.kwargs:
        if key not in names:
            raise ArgError(f"{value.callee} has no argument '{key}'")
        factors[key] = arg
    if value.callee != "l1_l2" and value.callee not in factors:
        factors[value.callee] = 0.01  # Keras' default factor
    checked = {k: _float_range(0.0, 1e9, False)(v) for k, v in factors.items()}
    return Regularizer(l1=checked.get("l1", 0.0), l2=checked.get("l2", 0.0))


def _layer(value: Any) -> LayerRef:
    if not isinstance(value, LayerRef):
        raise _fail("a layer such as lstm(64)", value)
    return value


def _tensors(value: Any) -> list[Any]:
    items = value if isinstance(value, list) else [value]
    for item in items:
        if not isinstance(item, Tensor):
            raise _fail("a list of tensor values", item)
    return [item.value for item in items]


INT = ArgKind("an int", _int)
POSITIVE_INT = ArgKind("a positive int", _bounded_int(1))
NON_NEGATIVE_INT = ArgKind("a non-negative int", _bounded_int(0))
FLOAT = ArgKind("a number", _float)
POSITIVE_FLOAT = ArgKind("a positive number", _positive_float)
NON_NEGATIVE_FLOAT = ArgKind("a non-negative number", _non_negative_float)
RATE = ArgKind("a rate in [0, 1)", _float_range(0.0, 1.0, True))
UNIT_FLOAT = ArgKind("a number in [0, 1]", _float_range(0.0, 1.0, False))
BOOL = ArgKind("true or false", _bool, symbolic=True)
PAIR = ArgKind("an int or a list of two ints", _pair)
OPTIONAL_PAIR = ArgKind("an int, a list of two ints or none", _optional_pair, symbolic=True)
OPTIONAL_NON_NEGATIVE_PAIR = ArgKind("a non-negative int, a list of two or none", optional(_pair_at_least(0)),
                                     symbolic=True)
PADDING2D = ArgKind("an int or padding list", _padding2d)
CROPPING1D = ArgKind("an int or [start, end]", _cropping1d)
CROPPING2D = ArgKind("an int or cropping list", _padding2d)
PERMUTATION = ArgKind("a list of axes", _permutation)
SHARED_AXES = ArgKind("an axis, a list of axes or none", _shared_axes, symbolic=True)
STATISTIC = ArgKind("a number or a list of numbers", _statistics(None))
VARIANCE = ArgKind("a non-negative number or a list of them", _statistics(0.0))
PADDING_MODE = ArgKind("valid or same", _choice(("valid", "same"), "padding"), symbolic=True)
def _activation(value: Any) -> str:
    """An activation by name; `none` is Keras' activation=None, the identity."""
    if isinstance(value, Symbol) and value.name == "none" or value == "none":
        return "linear"
    return _choice(ACTIVATIONS, "activation")(value)


ACTIVATION = ArgKind("an activation", _activation, symbolic=True)
INITIALIZER = ArgKind("an initializer", _initializer, symbolic=True)
REGULARIZER = ArgKind("a regularizer", _regularizer, symbolic=True)
NAME = ArgKind("a name", _name, symbolic=True)
SHAPE = ArgKind("a list of dimensions", _shape)
LAYER = ArgKind("a layer", _layer)
TENSORS = ArgKind("a list of tensor values", _tensors)


def or_none(kind: ArgKind) -> ArgKind:
    """The kind, or none (Python's None from the API) for a setting whose default is none in Keras, such as
    clipnorm: it converts to None, which asks for the default."""
    def convert(value: Any) -> Any:
        if value is None or isinstance(value, Symbol) and value.name == "none":
            return None
        return kind.convert(value)

    return ArgKind(f"{kind.expected} or none", convert, kind.symbolic)


def choice(choices: tuple[str, ...], what: str) -> ArgKind:
    return ArgKind(f"one of {', '.join(choices)}", _choice(choices, what), symbolic=True)


REQUIRED = object()


@dataclass(frozen=True)
class ArgSpec:
    name: str
    kind: ArgKind
    default: Any = REQUIRED
    aliases: tuple[str, ...] = ()

    @property
    def required(self) -> bool:
        return self.default is REQUIRED

    def convert(self, value: Any) -> Any:
        """The kind's conversion, and `none` wherever the default is none (Keras' None): it asks for the
        default itself, so `name=none` is an automatic name and `seed=none` a fresh draw."""
        if self.default is None and isinstance(value, Symbol):
            if value.name == "none":
                return None
            if value.name in PYTHON_WORDS and not _takes_none(self.kind):  # else name=None names a layer "None"
                raise ArgError(f"expected {self.kind.expected} or none, got the name '{value.name}'")
        return self.kind.convert(value)


def _takes_none(kind: ArgKind) -> bool:
    """Whether the kind has a meaning of its own for `none` (strides, regularizers), and its own message."""
    try:
        return kind.convert(Symbol("none")) is None
    except ArgError:
        return False
