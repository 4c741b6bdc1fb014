"""Checking and lowering: evaluate a model's statements into an IR graph, reporting every error.

The checker walks a model like an interpreter walks a program: constants fold, blocks expand at their
call sites, `repeat` unrolls, and each layer call lowers to IR through the layer catalog, so shapes are
inferred as the graph is built. Errors do not stop the walk: a failed step yields `POISON`, which later
steps pass along silently, so one run reports every independent mistake of a file.
"""
from __future__ import annotations

import math
import operator
from dataclasses import dataclass, field
from typing import Any

from nnd.compiler import syntax as S
from nnd.compiler.args import (ACTIVATIONS, INITIALIZERS, ArgError, ArgSpec, CallValue, LayerRef, Symbol, Tensor,
                               TensorGroup, describe, python_word_hint)
from nnd.compiler.builder import GraphBuilder
from nnd.compiler.diagnostics import DiagnosticBag, did_you_mean
from nnd.compiler.ir import Graph, LayerRecord, Value
from nnd.compiler.keras_names import is_missing_layer, shape_argument_note
from nnd.compiler.layers import INFER, LAYERS, LayerContext, LayerError, LayerSpec
from nnd.compiler.layers.core import lower_arithmetic
from nnd.compiler.source import Span
from nnd.compiler.tensor_type import BATCH, DTYPE_NAMES, ShapeError, TensorType

OPTION_WORDS = frozenset((*ACTIVATIONS, *INITIALIZERS, "same", "valid", "none", "l1", "l2", "l1_l2"))
POISON = Symbol("<error>")  # the value of anything whose error has been reported already
MAX_REPEAT = 10_000


class _Reported(Exception):
    """Raised inside a wrapper layer's lowering when its inner layer failed (already reported)."""


@dataclass
class Definitions:
    """Everything defined at the top level of a program and its imports."""

    consts: dict[str, Any] = field(default_factory=dict)
    blocks: dict[str, S.BlockDef] = field(default_factory=dict)
    models: dict[str, S.ModelDef] = field(default_factory=dict)
    trains: dict[str, S.TrainDef] = field(default_factory=dict)
    duplicated: set[str] = field(default_factory=set)  # names defined twice: their uses report nothing more
    # while the top level is read in order: the constants not evaluated yet, by name, with their spans
    later_constants: dict[str, Any] = field(default_factory=dict)


FOLDS = {"+": operator.add, "-": operator.sub, "*": operator.mul, "/": operator.truediv,
         "//": operator.floordiv, "%": operator.mod}


def _left_spine(expr: S.Expr, kind: type, child: str) -> tuple[list[Any], S.Expr]:
    """The links of a chain leaning left (`kind` nodes reached through `child`), outermost first, and the
    expression at its bottom."""
    links = []
    while isinstance(expr, kind):
        links.append(expr)
        expr = getattr(expr, child)
    return links, expr


def used_before_definition(name: str, definition: Any) -> tuple[str, list[str]]:
    """The message and note for a constant used above the line that defines it."""
    return (f"constant '{name}' is used before its definition",
            [f"'{name}' is defined at {definition}; a constant must come before its uses"])


@dataclass
class Frame:
    """The state of one model or block body being evaluated."""

    locals: dict[str, Any]
    current: Any = None  # the running value of the sequential form
    in_block: str | None = None
    outputs: dict[str, Any] = field(default_factory=dict)
    output_spans: dict[str, Span | None] = field(default_factory=dict)
    returned: Any = None


class ModelLowering:
    """Lowers one model to a graph in one mode (`infer` or `train`), reporting errors into `bag`."""

    def __init__(self, defs: Definitions, bag: DiagnosticBag, mode: str = INFER, calls_apply_layers: bool = True):
        self.defs = defs
        self.bag = bag
        self.mode = mode
        # False for a train section's values, where a call names an optimizer, a loss, a callback or an
        # augmentation, never a layer or block (gaussian_noise is both an augmentation and a layer)
        self.calls_apply_layers = calls_apply_layers
        self.call_stack: list[tuple[str, Span | None]] = []
        self.layer_counts: dict[str, int] = {}
        self.layer_names: dict[str, Span | None] = {}  # every layer name used, with the layer's place
        self.builder: GraphBuilder | None = None
        self.frame = Frame(locals={})  # the body being evaluated, for "did you mean" over local names

    # ------------------------------------------------------------ diagnostics

    def error(self, message: str, span: Span | None, notes: tuple[str, ...] | list[str] = ()) -> Any:
        chain = tuple(f"in block '{name}' called at {site}" for name, site in reversed(self.call_stack))
        self.bag.error(message, span, tuple(notes) + chain)
        return POISON

    # ------------------------------------------------------------ models

    def lower(self, model: S.ModelDef) -> Graph:
        graph = Graph(model.name)
        self.builder = GraphBuilder(graph)
        frame = self.frame = Frame(locals={})
        if not any(isinstance(s, S.InputDecl) for s in model.body):
            self.error(f"model '{model.name}' declares no input", model.span,
                       ["add a line such as: input image: [28, 28, 1]"])
            frame.current = POISON  # the layers still check their arguments, but not their missing input
        self.run_body(model.body, frame)
        outputs = frame.outputs
        if not outputs:
            if isinstance(frame.current, Tensor):
                outputs = {"output": frame.current}
            elif isinstance(frame.current, TensorGroup):
                self.group_misused(frame.current, frame.current.span,
                                   ("a model names its results with: output NAME = VALUE",))
            elif frame.current is None and graph.inputs:
                self.error(f"model '{model.name}' has no layers and no output", model.span)
        for name, value in outputs.items():
            if isinstance(value, Tensor):
                graph.outputs[name] = value.value
                if value.mask is not None:
                    graph.output_masks[name] = value.mask
        return graph

    def run_body(self, body: tuple[S.Stmt, ...], frame: Frame) -> None:
        for stmt in body:
            if frame.returned is not None:
                self.error("statement after return is never reached", stmt.span)
                return
            self.run_statement(stmt, frame)

    def run_statement(self, stmt: S.Stmt, frame: Frame) -> None:
        if isinstance(stmt, S.InputDecl):
            self.declare_input(stmt, frame)
        elif isinstance(stmt, S.Assign):
            value = self.eval_assigned(stmt, frame)
            if stmt.target in self.defs.consts:
                self.error(f"'{stmt.target}' is a constant and cannot be reassigned", stmt.span)
            elif not isinstance(value, (Tensor, TensorGroup)) and value is not POISON:
                frame.locals[stmt.target] = value  # a compile-time value bound locally
            else:
                frame.locals[stmt.target] = value
                frame.current = value
        elif isinstance(stmt, S.Unpack):
            self.unpack(stmt, frame)
        elif isinstance(stmt, S.ExprStmt):
            self.run_expression_statement(stmt, frame)
        elif isinstance(stmt, S.Output):
            self.declare_output(stmt, frame)
        elif isinstance(stmt, S.Return):
            if frame.in_block is None:
                self.error("return is only allowed inside a block", stmt.span,
                           ["a model names its results with: output NAME = VALUE"])
                return
            value = self.eval(stmt.value, frame)
            # several values (a layer with return_state) pass on whole, for the caller to unpack
            frame.returned = value if isinstance(value, TensorGroup) else self.expect_tensor(value, stmt.value)

    def unpack(self, stmt: S.Unpack, frame: Frame) -> None:
        value = self.eval(stmt.value, frame)
        results: list[Any] = [POISON] * len(stmt.targets)
        if isinstance(value, TensorGroup):
            if len(value.items) == len(stmt.targets):
                results = list(value.items)
            else:
                self.error(f"{value.layer} gives {len(value.items)} values ({', '.join(value.names)}), "
                           f"not {len(stmt.targets)}", stmt.span,
                           [f"unpack them as: {', '.join(value.names)} = ..."])
        elif value is not POISON:
            self.error(f"cannot unpack {describe(value)} into {len(stmt.targets)} names", stmt.span,
                       ["only a layer with return_state=true gives several values"])
        for target, result in zip(stmt.targets, results):
            frame.locals[target] = result
        frame.current = results[0]

    def declare_input(self, stmt: S.InputDecl, frame: Frame) -> None:
        if frame.in_block is not None:
            self.error("input is only allowed in a model; a block takes its inputs as parameters", stmt.span)
            return
        if stmt.name in frame.locals:
            self.error(f"duplicate name '{stmt.name}'", stmt.span, ["each input needs a name of its own"])
            return
        # A declaration that fails still binds its name, to POISON, so later uses report nothing more.
        frame.locals[stmt.name] = frame.current = POISON
        dims = []
        for expr in stmt.dims:
            dim = self.eval(expr, frame)
            if dim is POISON:
                return
            if isinstance(dim, Symbol) and dim.name in ("None", "none"):  # Keras' unknown size
                self.error(f"input dimensions must be fixed sizes, got {dim.name}", dim.span or expr.span,
                           ["the batch axis is implicit: give the shape of one sample, e.g. input image: [28, 28, 1]",
                            "sequences of different lengths are padded to one length (embedding's mask_zero or "
                            "masking() then skip the padding)"])
                return
            if isinstance(dim, Symbol):
                self.undefined_value(dim)
                return
            if isinstance(dim, bool) or not isinstance(dim, int) or dim < 1:
                self.error(f"input dimensions must be positive ints, got {describe(dim)}", expr.span)
                return
            dims.append(dim)
        dtype = "f32"
        if stmt.dtype is not None:
            if stmt.dtype not in DTYPE_NAMES:
                hint = did_you_mean(stmt.dtype, DTYPE_NAMES)
                valid = ", ".join(f"{long} ({short})" if short != long else long
                                  for long, short in DTYPE_NAMES.items() if len(long) > 3)
                self.error(f"unknown dtype '{stmt.dtype}'" + (f"; did you mean '{hint}'?" if hint else ""),
                           stmt.span, [f"valid: {valid}"])
                return
            dtype = DTYPE_NAMES[stmt.dtype]
        assert self.builder is not None
        value = Tensor(self.builder.add_input(stmt.name, TensorType((BATCH, *dims), dtype)))
        frame.locals[stmt.name] = value
        frame.current = value

    def declare_output(self, stmt: S.Output, frame: Frame) -> None:
        if frame.in_block is not None:
            self.error("output is only allowed in a model; a block ends with return", stmt.span)
            return
        value = self.expect_tensor(self.eval(stmt.value, frame), stmt.value)
        name = stmt.name or (stmt.value.name if isinstance(stmt.value, S.Name) else None)
        if name is None:  # the first free one of output, output_1, output_2, ...
            name = next(candidate for k in range(len(frame.outputs) + 2)
                        if (candidate := "output" if k == 0 else f"output_{k}") not in frame.outputs)
        if name in frame.outputs:
            self.error(f"duplicate output name '{name}'", stmt.span,
                       [f"'{name}' is first declared at {frame.output_spans[name]}"])
            return
        frame.outputs[name] = value
        frame.output_spans[name] = stmt.span

    def eval_assigned(self, stmt: S.Assign, frame: Frame) -> Any:
        if isinstance(stmt.value, S.Repeat):
            start = frame.locals.get(stmt.target, frame.current)
            if not isinstance(start, Tensor) and start is not POISON:
                start = frame.current  # the name held a number or word, not a value to start from
            return self.eval_repeat(stmt.value, frame, start, stmt.target)
        return self.eval(stmt.value, frame)

    def run_expression_statement(self, stmt: S.ExprStmt, frame: Frame) -> None:
        expr = stmt.value
        if isinstance(expr, S.Repeat):
            result = self.eval_repeat(expr, frame, frame.current, None)
        elif isinstance(expr, S.Call):
            result = self.apply(expr, frame, piped=None, implicit=frame.current, statement=True)
        else:
            result = self.eval(expr, frame)
        if isinstance(result, (Tensor, TensorGroup)) or result is POISON:
            frame.current = result
        elif isinstance(result, CallValue):
            self.unknown_layer(result.callee, result.span)
            frame.current = POISON

    def eval_repeat(self, rep: S.Repeat, frame: Frame, start: Any, target: str | None) -> Any:
        count = self.eval(rep.count, frame)
        if count is POISON:
            return POISON
        if isinstance(count, Symbol):
            return self.undefined_value(count)
        if isinstance(count, bool) or not isinstance(count, int) or count < 0:
            return self.error(f"repeat count must be a non-negative int, got {describe(count)}", rep.count.span)
        if count > MAX_REPEAT:
            return self.error(f"repeat count {count} is larger than the limit of {MAX_REPEAT}", rep.count.span)
        if rep.index is not None and (rep.index in frame.locals or rep.index in self.defs.consts):
            what = "constant" if rep.index not in frame.locals else "value"
            return self.error(f"repeat index '{rep.index}' would hide the {what} '{rep.index}'", rep.span,
                              ["choose another name for the index"])
        frame.current = start
        errors_before = len(self.bag.diagnostics)
        for index in range(count):
            if rep.index is not None:
                frame.locals[rep.index] = index
            for stmt in rep.body:
                self.run_statement(stmt, frame)
            if target is not None:
                frame.locals[target] = frame.current
            if len(self.bag.diagnostics) > errors_before:
                break  # the same mistake would repeat on every pass
        if rep.index is not None:
            frame.locals.pop(rep.index, None)  # the index names the pass only inside the loop
        return frame.current

    # ------------------------------------------------------------ expressions

    def eval(self, expr: S.Expr, frame: Frame) -> Any:
        if isinstance(expr, (S.Number, S.String, S.Bool)):
            return expr.value
        if isinstance(expr, S.Name):
            return self.lookup(expr, frame)
        if isinstance(expr, S.ListExpr):
            items = [self.eval(item, frame) for item in expr.items]
            return POISON if any(item is POISON for item in items) else items
        if isinstance(expr, S.Unary):
            return self.eval_unary(expr, frame)
        if isinstance(expr, S.BinaryOp):
            return self.eval_binary_chain(expr, frame)
        if isinstance(expr, S.Call):
            return self.apply(expr, frame, piped=None, implicit=None, statement=False)
        if isinstance(expr, S.Pipe):
            return self.eval_pipe(expr, frame)
        if isinstance(expr, S.Repeat):
            return self.eval_repeat(expr, frame, frame.current, None)
        raise TypeError(f"unknown expression {expr!r}")

    def lookup(self, expr: S.Name, frame: Frame) -> Any:
        if expr.name in frame.locals:
            return frame.locals[expr.name]
        if expr.name in self.defs.consts:
            return self.defs.consts[expr.name]
        if expr.name in self.defs.duplicated:
            return POISON
        return Symbol(expr.name, expr.span)

    def expect_tensor(self, value: Any, expr: S.Expr) -> Any:
        if isinstance(value, Tensor) or value is POISON:
            return value
        if isinstance(value, TensorGroup):
            return self.group_misused(value, expr.span)
        if isinstance(value, Symbol):
            return self.undefined_value(value)
        if isinstance(value, CallValue):
            return self.unknown_layer(value.callee, value.span)
        return self.error(f"expected a tensor value, got {describe(value)}", expr.span)

    def group_misused(self, group: TensorGroup, span: Span | None, notes: tuple[str, ...] = ()) -> Any:
        """The several results of a return_state layer, used where one tensor is expected."""
        names = ", ".join(group.names)
        return self.error(f"{group.layer} gives {len(group.items)} values ({names}) where one tensor is expected",
                          span, [f"unpack them first: {names} = x -> {group.layer}(..., return_state=true)",
                                 *notes])

    def undefined_value(self, symbol: Symbol, notes: tuple[str, ...] | list[str] = ()) -> Any:
        if symbol.name in LAYERS or symbol.name in self.defs.blocks:
            what = "layer" if symbol.name in LAYERS else "block"
            return self.error(f"'{symbol.name}' is a {what}, not a value", symbol.span,
                              [f"call it: x -> {symbol.name}(...)"])
        if symbol.name in self.defs.later_constants:
            message, definition = used_before_definition(symbol.name, self.defs.later_constants[symbol.name])
            return self.error(message, symbol.span, [*definition, *notes])
        hint = did_you_mean(symbol.name, self.visible_names())
        return self.error(f"undefined value '{symbol.name}'" + (f"; did you mean '{hint}'?" if hint else ""),
                          symbol.span, notes)

    def known_word(self, name: str) -> bool:
        """Whether a bare word means something in the language (an option, a layer), so is no typo."""
        return name in OPTION_WORDS or name in LAYERS or name in self.defs.blocks

    def visible_names(self) -> list[str]:
        return list(self.defs.consts) + [k for k, v in self.frame.locals.items() if v is not POISON]

    def unknown_layer(self, name: str, span: Span | None) -> Any:
        if is_missing_layer(name):  # the nearest catalog name would be another layer altogether
            return self.error(f"unknown layer '{name}': the catalog has no such layer", span,
                              ["see `nnd layers` for the catalog"])
        hint = did_you_mean(name, list(LAYERS) + list(self.defs.blocks))
        notes = [] if hint else ["see `nnd layers` for the catalog"]
        return self.error(f"unknown layer '{name}'" + (f"; did you mean '{hint}'?" if hint else ""), span, notes)

    def eval_unary(self, expr: S.Unary, frame: Frame) -> Any:
        operand = self.eval(expr.operand, frame)
        if operand is POISON:
            return POISON
        if isinstance(operand, (int, float)) and not isinstance(operand, bool):
            return -operand
        if isinstance(operand, Tensor):
            return self.arithmetic("*", operand, -1.0, expr.span)
        if isinstance(operand, Symbol):
            return self.undefined_value(operand)
        return self.error(f"cannot negate {describe(operand)}", expr.span)

    def eval_pipe(self, expr: S.Pipe, frame: Frame) -> Any:
        """`x -> f() -> g()`: each stage in turn, without recursing once per stage (chains may be long)."""
        pipes, bottom = _left_spine(expr, S.Pipe, "source")
        value = self.eval(bottom, frame)
        for pipe in reversed(pipes):
            # A failed source still lets the stage check its own arguments; it then yields POISON.
            source = self.expect_tensor(value, pipe.source)
            value = self.apply(pipe.stage, frame, piped=source, implicit=None, statement=False)
        return value

    def eval_binary_chain(self, expr: S.BinaryOp, frame: Frame) -> Any:
        """`a + b - c`, which parses leaning left: each operation in turn, without recursing once per link."""
        links, bottom = _left_spine(expr, S.BinaryOp, "left")
        value = self.eval(bottom, frame)
        for link in reversed(links):
            value = self.eval_binary(link, value, self.eval(link.right, frame))
        return value

    def eval_binary(self, expr: S.BinaryOp, left: Any, right: Any) -> Any:
        if left is POISON or right is POISON:
            return POISON
        for side in (left, right):
            if isinstance(side, Symbol):
                return self.undefined_value(side)
        numbers = all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in (left, right))
        if numbers:
            return self.fold(expr, left, right)
        tensors = [v for v in (left, right) if isinstance(v, Tensor)]
        scalars_ok = all(isinstance(v, Tensor) or (isinstance(v, (int, float)) and not isinstance(v, bool))
                         for v in (left, right))
        if tensors and scalars_ok and expr.op in ("+", "-", "*", "/"):
            return self.arithmetic(expr.op, left, right, expr.span)
        return self.error(f"cannot apply '{expr.op}' to {describe(left)} and {describe(right)}", expr.span)

    def fold(self, expr: S.BinaryOp, left: float, right: float) -> Any:
        if expr.op in ("/", "//", "%") and right == 0:
            return self.error("division by zero", expr.span)
        try:
            result = FOLDS[expr.op](left, right)
        except OverflowError:  # an int too large for a float (1e308 * 10**400)
            result = math.inf
        if isinstance(result, float) and not math.isfinite(result):
            return self.error(f"'{expr.op}' overflows: the result is beyond the largest float (about 1.8e308)",
                              expr.span)
        return result

    def arithmetic(self, symbol: str, left: Any, right: Any, span: Span | None) -> Any:
        kind = {"+": "add", "-": "subtract", "*": "multiply", "/": "divide"}[symbol]
        operands = [v.value if isinstance(v, Tensor) else float(v) for v in (left, right)]
        tensors = [v for v in (left, right) if isinstance(v, Tensor)]  # their masks merge
        return self.run_layer(kind, span, None, lambda ctx: lower_arithmetic(ctx, symbol, *operands),
                              inputs=tensors)

    # ------------------------------------------------------------ calls

    def apply(self, call: S.Call, frame: Frame, piped: Any, implicit: Any, statement: bool,
              rename: str | None = None, adjust=None) -> Any:
        """Evaluate a call: a block, a layer, or (elsewhere) a constructor value such as `l2(0.01)`.

        `rename` and `adjust` serve wrapper layers: the inner layer's name, and a change to its arguments
        (the backward half of `bidirectional` flips go_backwards).
        """
        positional: list[tuple[Any, S.Arg]] = []
        keywords: dict[str, tuple[Any, S.Arg]] = {}
        layer = call.callee in LAYERS and self.calls_apply_layers
        block = call.callee in self.defs.blocks and self.calls_apply_layers
        wrapper = layer and LAYERS[call.callee].wrapper
        for arg in call.args:
            if wrapper and self._names_a_layer(arg.value):
                value: Any = LayerRef(arg.value, frame)  # applied by the wrapper, to inputs it chooses
            else:
                value = self.eval(arg.value, frame)
            if arg.name is None:
                if keywords:
                    self.error("positional argument after keyword argument", arg.span)
                    return POISON
                positional.append((value, arg))
            elif arg.name in keywords:
                callee = f"block '{call.callee}'" if block else call.callee
                return self.error(f"argument '{arg.name}' of {callee} given twice", arg.span)
            else:
                keywords[arg.name] = (value, arg)
        if block:
            return self.call_block(self.defs.blocks[call.callee], call, piped, implicit, positional, keywords)
        if layer:
            return self.call_layer(LAYERS[call.callee], call, piped, implicit, positional, keywords, rename, adjust)
        if piped is not None or statement:
            return self.unknown_layer(call.callee, call.span)
        if any(v is POISON for v, _ in positional) or any(v is POISON for v, _ in keywords.values()):
            return POISON
        return CallValue(call.callee, tuple(v for v, _ in positional),
                         tuple((k, v) for k, (v, _) in keywords.items()), call.span,
                         tuple(arg.span for _, arg in keywords.values()))

    def _names_a_layer(self, expr: S.Expr) -> bool:
        return isinstance(expr, S.Call) and (expr.callee in LAYERS or expr.callee in self.defs.blocks)

    def call_layer(self, spec: LayerSpec, call: S.Call, piped: Any, implicit: Any,
                   positional: list[tuple[Any, S.Arg]], keywords: dict[str, tuple[Any, S.Arg]],
                   rename: str | None = None, adjust=None) -> Any:
        if any(value is POISON for value, _ in positional):
            return POISON  # whether it was a tensor input or an argument is unknown: say nothing more
        for value, arg in positional + list(keywords.values()):
            if isinstance(value, TensorGroup):
                return self.group_misused(value, arg.span)
        if isinstance(implicit, TensorGroup):
            return self.group_misused(implicit, call.span)
        inputs: list[Any] = [piped] if piped is not None else []
        rest = list(positional)
        if rest and _tensor_list(rest[0][0]) and spec.inputs != 1:
            inputs.extend(rest.pop(0)[0])  # Keras' merge call, concatenate([a, b]): the list holds the inputs
        while rest and (isinstance(rest[0][0], Tensor) or rest[0][0] is POISON):
            inputs.append(rest.pop(0)[0])
        minimum = spec.inputs if isinstance(spec.inputs, int) else spec.inputs[0]
        positional_specs = [a for a in spec.args if a.name != "name"]
        if not inputs and implicit is not None:
            inputs.append(implicit)
        if len(inputs) < minimum and rest and isinstance(rest[0][0], Symbol) and not positional_specs:
            return self.undefined_value(rest[0][0])
        for value, arg in rest:
            if isinstance(value, Tensor):
                return self.error(f"tensor inputs of {call.callee} must come before its other arguments",
                                  arg.span)
        if not spec.accepts_inputs(len(inputs)):
            if not inputs:
                return self.error(f"{call.callee} has no input", call.span,
                                  [f"pipe a value into it: x -> {call.callee}(...)"])
            return self.error(f"{call.callee} takes {spec.input_words()}, got {len(inputs)}", call.span)
        args = self.bind_layer_args(spec, call, rest, keywords, bool(inputs))
        if args is POISON or any(v is POISON for v in inputs):
            return POISON
        if adjust is not None:
            try:
                args = adjust(args)
            except LayerError as err:  # what the wrapper cannot accept of the inner layer's arguments
                return self.error(err.message, err.span or call.span, err.notes)
        values = [v.value for v in inputs]
        name_arg = keywords.get("name")

        def lower(ctx: LayerContext) -> Any:
            ctx.seed = args.get("seed")
            return spec.lower(ctx, values, args)
        return self.run_layer(spec.name, call.span, rename or args.get("name"), lower,
                              name_span=name_arg[1].span if name_arg else None, spec=spec, inputs=inputs,
                              reserve_name=rename is None)

    def bind_layer_args(self, spec: LayerSpec, call: S.Call, positional: list[tuple[Any, S.Arg]],
                        keywords: dict[str, tuple[Any, S.Arg]], has_input: bool) -> Any:
        by_name: dict[str, ArgSpec] = {}
        for arg_spec in spec.args:
            by_name[arg_spec.name] = arg_spec
            for alias in arg_spec.aliases:
                by_name[alias] = arg_spec
        positional_specs = [a for a in spec.args if a.name != "name"]  # a layer's name is keyword-only
        raw: dict[str, tuple[Any, S.Arg]] = {}
        ok = True
        if len(positional) > len(positional_specs):
            value, arg = positional[len(positional_specs)]
            if isinstance(value, Symbol) and (not has_input or not self.known_word(value.name)):
                return self.undefined_value(value)
            count = len(positional_specs)
            inputs = "input" if spec.inputs == 1 else "inputs"
            if count == 0:
                self.error(f"{call.callee} takes no arguments besides its {inputs}", arg.span)
            else:
                self.error(f"{call.callee} takes at most {count} positional argument{'s' if count != 1 else ''}"
                           f" besides its {inputs}, got {len(positional)}", arg.span)
            return POISON  # with the arguments misaligned, checking each one would only mislead
        for arg_spec, (value, arg) in zip(positional_specs, positional):
            raw[arg_spec.name] = (value, arg)
        misspelled: set[str] = set()  # arguments a misspelled keyword was taken to mean
        for key, (value, arg) in keywords.items():
            arg_spec = by_name.get(key)
            if arg_spec is None:
                note = shape_argument_note(key)
                hint = None if note else did_you_mean(key, by_name)
                if hint:
                    misspelled.add(by_name[hint].name)
                self.error(f"{call.callee} has no argument '{key}'" + (f"; did you mean '{hint}'?" if hint else ""),
                           arg.span, [note] if note else [f"valid: {', '.join(a.name for a in spec.args)}"])
                ok = False
            elif arg_spec.name in raw:
                self.error(f"argument '{arg_spec.name}' of {call.callee} given twice", arg.span)
                ok = False
            else:
                raw[arg_spec.name] = (value, arg)
        bound: dict[str, Any] = {}
        for arg_spec in spec.args:
            if arg_spec.name not in raw:
                if arg_spec.required and arg_spec.name not in misspelled:  # else reported as misspelled
                    self.error(f"{call.callee} needs argument '{arg_spec.name}' ({arg_spec.kind.expected})",
                               call.span)
                    ok = False
                else:
                    bound[arg_spec.name] = arg_spec.default
                continue
            value, arg = raw[arg_spec.name]
            if value is POISON:
                ok = False
                continue
            try:
                bound[arg_spec.name] = arg_spec.convert(value)
            except ArgError as err:
                python = python_word_hint(value, arg_spec)
                if python:
                    self.error(f"{call.callee} argument '{arg_spec.name}': {err.message}; {python}",
                               arg.value.span or arg.span)
                elif isinstance(value, Symbol) and not has_input and arg_spec is positional_specs[0]:
                    self.undefined_value(value)
                elif isinstance(value, Symbol) and not arg_spec.kind.symbolic and not self.known_word(value.name):
                    self.undefined_value(value, [f"{call.callee} argument '{arg_spec.name}' expects "
                                                 f"{arg_spec.kind.expected}"])
                else:
                    self.error(f"{call.callee} argument '{arg_spec.name}': {err.message}", arg.value.span or arg.span,
                               err.notes)
                ok = False
        return bound if ok else POISON

    def run_layer(self, kind: str, span: Span | None, explicit_name: str | None, lower,
                  name_span: Span | None = None, spec: LayerSpec | None = None, inputs: list[Tensor] = (),
                  reserve_name: bool = True) -> Any:
        assert self.builder is not None
        name = self.layer_name(kind, explicit_name, span, name_span) if reserve_name else explicit_name
        if name is None:
            return POISON
        ctx = LayerContext(self.builder, name, kind, span, self.mode)
        ctx.input_masks = [t.mask for t in inputs]
        ctx.apply_layer = self.apply_wrapped
        try:
            output = lower(ctx)
        except _Reported:
            return POISON
        except LayerError as err:
            return self.error(err.message, err.span or span, err.notes)
        except ShapeError as err:
            return self.error(f"{kind}: {err}", span)
        mask = ctx.output_mask
        if mask is None and spec is not None and spec.keeps_mask and inputs:
            mask = inputs[0].mask
        results = output if isinstance(output, tuple) else (output,)
        self.builder.graph.layers.append(LayerRecord(name, kind, span, results[0], tuple(ctx.param_names),
                                                     ctx.flops, tuple(v.type for v in results[1:])))
        if isinstance(output, tuple):
            names = ctx.result_names or tuple(f"value_{i}" for i in range(len(results)))
            return TensorGroup([Tensor(v, mask if i == 0 else None) for i, v in enumerate(results)], kind, names,
                               span)
        return Tensor(output, mask)

    def apply_wrapped(self, ref: LayerRef, x: Value, name: str | None, adjust=None, mask: Value | None = None):
        """Apply the layer of a wrapper's argument to x; its values, or _Reported when it failed."""
        result = self.apply(ref.call, ref.scope, piped=Tensor(x, mask), implicit=None, statement=False,
                            rename=name, adjust=adjust)
        if isinstance(result, Tensor):
            return result.value
        if isinstance(result, TensorGroup):
            return tuple(t.value for t in result.items)
        if isinstance(result, CallValue):
            self.unknown_layer(result.callee, result.span)
        raise _Reported()

    def layer_name(self, kind: str, explicit: str | None, span: Span | None,
                   name_span: Span | None = None) -> str | None:
        if explicit is not None:
            if explicit in self.layer_names:
                self.error(f"duplicate layer name '{explicit}'", name_span or span,
                           [f"'{explicit}' already names the layer at {self.layer_names[explicit]}"])
                return None
            self.layer_names[explicit] = span
            return explicit
        while True:
            count = self.layer_counts.get(kind, 0)
            self.layer_counts[kind] = count + 1
            name = kind if count == 0 else f"{kind}_{count}"  # Keras' naming: conv2d, conv2d_1, ...
            if name not in self.layer_names:
                self.layer_names[name] = span
                return name

    def call_block(self, block: S.BlockDef, call: S.Call, piped: Any, implicit: Any,
                   positional: list[tuple[Any, S.Arg]], keywords: dict[str, tuple[Any, S.Arg]]) -> Any:
        if block.name in self.defs.duplicated:
            return POISON  # which definition was meant is unknown; the duplicate is reported already
        names = [name for name, _ in self.call_stack]
        if block.name in names:
            cycle = " -> ".join(names[names.index(block.name):] + [block.name])
            return self.error(f"block '{block.name}' calls itself ({cycle}); recursion is not allowed", call.span,
                              ["use repeat N { ... } to apply a block several times"])
        if any(value is POISON for value, _ in positional):
            return POISON  # whether it was the tensor or another argument is unknown: say nothing more
        values: list[Any] = [v for v, _ in positional]
        notes = [_signature(block)]
        if piped is not None:
            values.insert(0, piped)
            notes.append("the value piped in is its first argument")
        elif implicit is not None and not (values and isinstance(values[0], Tensor)):
            values.insert(0, implicit)
            notes.append("the running value of the sequential form is its first argument")
        params = block.params
        if len(values) > len(params):
            return self.error(f"block '{block.name}' takes {len(params)} argument{'s' if len(params) != 1 else ''}"
                              f", got {len(values)}", call.span, notes)
        bound: dict[str, Any] = {p.name: v for p, v in zip(params, values)}
        names = [p.name for p in params]
        for key, (value, arg) in keywords.items():
            if key not in names:
                hint = did_you_mean(key, names)
                return self.error(f"block '{block.name}' has no parameter '{key}'"
                                  + (f"; did you mean '{hint}'?" if hint else ""), arg.span, [_signature(block)])
            if key in bound:
                return self.error(f"argument '{key}' of block '{block.name}' given twice", arg.span)
            bound[key] = value
        for param in params:
            if param.name not in bound:
                if param.default is None:
                    return self.error(f"block '{block.name}' needs argument '{param.name}'", call.span,
                                      [_signature(block)])
                bound[param.name] = self.eval(param.default, Frame(locals={}))
        if any(v is POISON for v in bound.values()):
            return POISON
        frame = Frame(locals=dict(bound), in_block=block.name)
        frame.current = next((v for v in bound.values() if isinstance(v, Tensor)), None)
        caller, self.frame = self.frame, frame
        self.call_stack.append((block.name, call.span))
        try:
            self.run_body(block.body, frame)
        finally:
            self.call_stack.pop()
            self.frame = caller
        result = frame.returned if frame.returned is not None else frame.current
        if result is None:
            return self.error(f"block '{block.name}' produces no value", call.span,
                              ["end the block with: return VALUE"])
        return result


def _tensor_list(value: Any) -> bool:
    """A list written of tensor values only (a failed one included), as Keras passes a merge's inputs."""
    return isinstance(value, list) and bool(value) and all(isinstance(v, Tensor) or v is POISON for v in value)


def _signature(block: S.BlockDef) -> str:
    params = ", ".join(p.name if p.default is None else f"{p.name}=..." for p in block.params)
    return f"block {block.name}({params}) is defined at {block.span}"
