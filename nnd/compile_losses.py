"""`Model.compile`'s `loss` and `loss_weights`, Keras style: one loss for every output, or one per output
as a list in output order or a dict by output name; weights likewise. Each is checked against the model's
outputs and kept by output name (`compiler/output_losses.py` reads either form)."""
from __future__ import annotations

import math
from typing import Any, Callable, Mapping, Sequence, TypeVar

import numpy as np

from nnd.compiler.diagnostics import Diagnostic, NndError, counted, did_you_mean
from nnd.compiler.training import LOSS_ALIASES, LOSSES, Configured, check_configured

T = TypeVar("T")
_LEAVE_OUT = "to leave an output out of the total loss, give it weight 0 in loss_weights"


def compile_loss(loss: Any, outputs: Sequence[str]) -> Configured | dict[str, Configured]:
    """`loss` as the training spec keeps it: one checked loss, or a dict output name -> checked loss."""
    if isinstance(loss, (str, Configured)):
        return _one_loss(loss, "loss")
    per_output = _per_output(loss, outputs, "loss", "loss")
    missing = [name for name in outputs if name not in per_output]
    if missing:
        raise NndError(Diagnostic(f"loss gives no loss for output {', '.join(map(repr, missing))}; every output "
                                  f"needs one (the model's outputs: {', '.join(outputs)})", None, (_LEAVE_OUT,)))
    return {name: _one_loss(value, f"loss[{name!r}]") for name, value in per_output.items()}


def compile_loss_weights(weights: Any, outputs: Sequence[str]) -> dict[str, float]:
    """`loss_weights` by output name, each a finite non-negative number; outputs left out weigh 1."""
    per_output = _per_output(weights, outputs, "loss_weights", "weight")
    return {name: _weight(value, f"loss_weights[{name!r}]") for name, value in per_output.items()}


def _per_output(value: Any, outputs: Sequence[str], what: str, item: str) -> dict[str, Any]:
    """A list (output order) or dict (output names) of `item`s, keyed by output name."""
    listed = f"(the model's outputs: {', '.join(outputs)})"
    if isinstance(value, Mapping):
        for name in value:
            if name not in outputs:
                hint = did_you_mean(str(name), list(outputs))
                raise NndError(f"{what} names output {name!r}, which the model does not have"
                               + (f"; did you mean '{hint}'?" if hint else "") + f" {listed}")
        return dict(value)
    if isinstance(value, (list, tuple)):
        if len(value) != len(outputs):
            raise NndError(f"{what} has {len(value)} {'entry' if len(value) == 1 else 'entries'}, "
                           f"but the model has {counted(len(outputs), 'output')}: one {item} per output, in "
                           f"order {listed}")
        return dict(zip(outputs, value))
    kind = "a loss name, a list or a dict" if item == "loss" else "a list or a dict"
    raise NndError(f"{what} must be {kind} (one {item} per output), got {type(value).__name__}")


def _one_loss(value: Any, what: str) -> Configured:
    if value is None:
        raise NndError(Diagnostic(f"{what} is None: every output needs a loss", None, (_LEAVE_OUT,)))
    if not isinstance(value, (str, Configured)):
        raise NndError(f"{what} must be a loss name or nnd.Configured, got {type(value).__name__}")
    configured = value if isinstance(value, Configured) else Configured(str(value))
    return checked_setting(configured, LOSSES, "loss", LOSS_ALIASES)


def checked_setting(value: Configured, table, what: str, aliases=None) -> Configured:
    """A setting given to compile() checked as the train section's would be (NumPy scalars as numbers)."""
    if not isinstance(value.args, Mapping):
        raise NndError(f"{what} {value.name!r}: arguments must be a dict of argument name -> value, "
                       f"got {type(value.args).__name__}")
    args = {k: v.item() if isinstance(v, np.generic) else v for k, v in value.args.items()}
    return check_configured(value.name, args, table, what, aliases)


def _weight(value: Any, what: str) -> float:
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, float, np.integer, np.floating)):
        raise NndError(f"{what} must be a number, got {type(value).__name__}")
    if not math.isfinite(value) or value < 0:
        raise NndError(f"{what} must be a finite number of at least 0, got {value!r}")
    return float(value)


def as_saved(value: Configured | dict[str, T], save: Callable[[Configured], Any]) -> Any:
    """A compiled loss as model.json keeps it: one loss, or {"outputs": {name: loss}}."""
    if isinstance(value, dict):
        return {"outputs": {name: save(loss) for name, loss in value.items()}}
    return save(value)
