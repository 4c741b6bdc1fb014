"""A train setting written as text outside a `.nnd` file: `compile(loss="huber(delta=2.0)")` in Python.

The text is the language's own expression for the setting, a name or a call, parsed and evaluated as a
train section's value would be, so that every argument (`from_logits=true`) can be given from Python.
"""
from __future__ import annotations

from nnd.compiler import syntax as S
from nnd.compiler.args import CallValue
from nnd.compiler.checker import Definitions, Frame, ModelLowering
from nnd.compiler.diagnostics import DiagnosticBag, NndError
from nnd.compiler.parser import parse_text

_PREFIX, _SUFFIX = "train _ { value = ", " }"


def parse_setting(text: str, what: str) -> CallValue:
    """`text` as a call value: `adam` has no arguments; `adam(lr=0.01)` has those written."""
    expression = _expression(text, what)
    if isinstance(expression, S.Name):
        return CallValue(expression.name, (), ())
    if not isinstance(expression, S.Call):
        raise _error(text, what, "it is neither a name nor a call")
    bag = DiagnosticBag()
    evaluator = ModelLowering(Definitions(), bag)
    positional = tuple(evaluator.eval(arg.value, Frame(locals={})) for arg in expression.args if arg.name is None)
    keywords = tuple((arg.name, evaluator.eval(arg.value, Frame(locals={})))
                     for arg in expression.args if arg.name is not None)
    if bag.diagnostics:
        raise _error(text, what, bag.diagnostics[0].message)
    return CallValue(expression.callee, positional, keywords)


def _expression(text: str, what: str) -> S.Expr:
    """The one expression `text` holds, parsed as a train setting's value."""
    try:
        module = parse_text(_PREFIX + text + _SUFFIX)
    except NndError as err:
        found = err.diagnostics[0]
        if found.span is not None and found.span.column > len(_PREFIX) + len(text):  # at the closing brace
            raise _error(text, what, "it ends before its call is closed") from None
        raise _error(text, what, found.message) from None
    sections = [item for item in module.items if isinstance(item, S.TrainDef)]
    if len(module.items) != 1 or len(sections) != 1 or len(sections[0].settings) != 1:
        raise _error(text, what, "it holds more than one expression")  # such as "mse } train x { ..."
    return sections[0].settings[0].value


def _error(text: str, what: str, reason: str) -> NndError:
    return NndError(f"{what} {text!r} is not a name or a call such as adam(lr=0.01): {reason}")
