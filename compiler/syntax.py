"""The abstract syntax tree of `.nnd` programs: frozen dataclasses with source spans.

Spans are left out of equality and repr, so tests compare structure alone.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Union

from nnd.compiler.source import Span


def _span() -> Span | None:
    return field(default=None, compare=False, repr=False, kw_only=True)


# ---------------------------------------------------------------- expressions

@dataclass(frozen=True)
class Number:
    value: int | float
    span: Span | None = _span()


@dataclass(frozen=True)
class String:
    value: str
    span: Span | None = _span()


@dataclass(frozen=True)
class Bool:
    value: bool
    span: Span | None = _span()


@dataclass(frozen=True)
class Name:
    """A reference: a constant, a value, a block parameter, or a bare word such as `relu` or `same`."""

    name: str
    span: Span | None = _span()


@dataclass(frozen=True)
class ListExpr:
    items: tuple["Expr", ...]
    span: Span | None = _span()


@dataclass(frozen=True)
class Unary:
    op: str  # "-"
    operand: "Expr"
    span: Span | None = _span()


@dataclass(frozen=True)
class BinaryOp:
    op: str  # "+", "-", "*", "/", "//", "%"
    left: "Expr"
    right: "Expr"
    span: Span | None = _span()


@dataclass(frozen=True)
class Arg:
    """A call argument; `name` is None for a positional one."""

    name: str | None
    value: "Expr"
    span: Span | None = _span()


@dataclass(frozen=True)
class Call:
    """`callee(args)`: a layer, an activation, a block, or a value constructor such as `adam(lr=0.1)`.

    The span covers the callee's name, which is where diagnostics about the call point.
    """

    callee: str
    args: tuple[Arg, ...]
    span: Span | None = _span()


@dataclass(frozen=True)
class Pipe:
    """`source -> stage`: the stage is called with the source as its first input."""

    source: "Expr"
    stage: Call
    span: Span | None = _span()


@dataclass(frozen=True)
class Repeat:
    """`repeat COUNT [as INDEX] { statements }`: the body applied COUNT times to the running value."""

    count: "Expr"
    index: str | None
    body: tuple["Stmt", ...]
    span: Span | None = _span()


Expr = Union[Number, String, Bool, Name, ListExpr, Unary, BinaryOp, Call, Pipe, Repeat]


# ---------------------------------------------------------------- statements

@dataclass(frozen=True)
class InputDecl:
    """`input NAME: [dims]` or `input NAME: DTYPE[dims]`; the batch dimension is implicit."""

    name: str
    dims: tuple[Expr, ...]
    dtype: str | None
    span: Span | None = _span()


@dataclass(frozen=True)
class Assign:
    target: str
    value: Expr
    span: Span | None = _span()


@dataclass(frozen=True)
class Unpack:
    """`a, b, c = EXPR`: names for the several results of one layer (`return_state=true`)."""

    targets: tuple[str, ...]
    value: Expr
    span: Span | None = _span()


@dataclass(frozen=True)
class ExprStmt:
    """A bare layer call, pipe or repeat: in sequential form it applies to the running value."""

    value: Expr
    span: Span | None = _span()


@dataclass(frozen=True)
class Output:
    """`output EXPR` or `output NAME = EXPR`."""

    name: str | None
    value: Expr
    span: Span | None = _span()


@dataclass(frozen=True)
class Return:
    value: Expr
    span: Span | None = _span()


Stmt = Union[InputDecl, Assign, Unpack, ExprStmt, Output, Return]


# ---------------------------------------------------------------- top level

@dataclass(frozen=True)
class Import:
    path: str
    span: Span | None = _span()


@dataclass(frozen=True)
class ConstDef:
    name: str
    value: Expr
    span: Span | None = _span()


@dataclass(frozen=True)
class Param:
    name: str
    default: Expr | None
    span: Span | None = _span()


@dataclass(frozen=True)
class BlockDef:
    name: str
    params: tuple[Param, ...]
    body: tuple[Stmt, ...]
    span: Span | None = _span()


@dataclass(frozen=True)
class ModelDef:
    name: str
    body: tuple[Stmt, ...]
    span: Span | None = _span()


@dataclass(frozen=True)
class Setting:
    key: str
    value: Expr
    span: Span | None = _span()


@dataclass(frozen=True)
class TrainDef:
    model: str
    settings: tuple[Setting, ...]
    span: Span | None = _span()


Item = Union[Import, ConstDef, BlockDef, ModelDef, TrainDef]


@dataclass(frozen=True)
class Module:
    """One parsed file."""

    file: str
    items: tuple[Item, ...]


def dump(node, indent: str = "") -> str:
    """An indented, span-free rendering of a syntax tree, for `nnd compile --emit ast`."""
    from dataclasses import fields, is_dataclass

    if isinstance(node, tuple):
        if not node:
            return "()"
        return "\n".join(f"{indent}- " + dump(item, indent + "  ").lstrip() for item in node)
    if not is_dataclass(node):
        return repr(node)
    parts = [f"{type(node).__name__}"]
    for f in fields(node):
        if f.name == "span":
            continue
        value = getattr(node, f.name)
        if isinstance(value, tuple) and value and is_dataclass(value[0]):
            parts.append(f"{indent}  {f.name}:\n{dump(value, indent + '    ')}")
        elif is_dataclass(value):
            parts.append(f"{indent}  {f.name}: {dump(value, indent + '    ').lstrip()}")
        else:
            parts.append(f"{indent}  {f.name}: {value!r}")
    return "\n".join(parts)
