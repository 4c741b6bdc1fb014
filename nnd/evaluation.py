"""What `Model.evaluate` returns: the figures by name, or Keras' positional form.

Keras returns the loss alone, or a list [loss, *metrics], unless asked for a dict (return_dict=True);
nnd returns the dict unless asked for the list (return_dict=False), since a dict cannot be read in the
wrong order. Code written for Keras indexes the result by position (`score[0]`), which on a plain dict is
a bare `KeyError: 0`; the dict here answers that with what to write instead.
"""
from __future__ import annotations

from typing import Any, Mapping

import numpy as np

from nnd.compiler.diagnostics import NndError


class PositionError(NndError, KeyError):
    """A figure asked for by position; a KeyError too, as a dict's missing key is (NndError's str comes
    first, so the message is not quoted as KeyError's would be)."""


class EvaluationLogs(dict):
    """The loss and metrics by name ({'loss': ..., 'accuracy': ...}), refusing Keras' positional reads."""

    def __getitem__(self, key: Any) -> Any:
        if isinstance(key, (int, np.integer, slice)) and not isinstance(key, bool):
            names = list(self)
            raise PositionError(f"evaluate returns the figures by name ({', '.join(names)}), not by position: "
                                f"write result[{names[0]!r}], or call evaluate(..., return_dict=False) for "
                                f"Keras' list [{', '.join(names)}]")
        return super().__getitem__(key)


def check_return_dict(value: Any) -> bool:
    if not isinstance(value, (bool, np.bool_)):
        raise NndError(f"return_dict must be True or False, got {value!r}")
    return bool(value)


def evaluation_result(logs: Mapping[str, float], return_dict: bool) -> Any:
    """`logs` as evaluate returns them: an EvaluationLogs, or as Keras' return_dict=False does, the loss
    alone when it is the only figure, else the list of figures in the logs' order."""
    if return_dict:
        return EvaluationLogs(logs)
    values = list(logs.values())
    return values[0] if len(values) == 1 else values
