"""What the Python API accepts: its arguments (sizes, fractions, paths) and the arrays it is given
(inputs, targets, parameters), checked and converted, each mistake one NndError that names the argument
or the array and its shape."""
from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any, Mapping

import numpy as np

from nnd.compiler.diagnostics import NndError, did_you_mean
from nnd.compiler.tensor_type import TensorType
from nnd.compiler.training_graph import TARGET_PREFIX
from nnd.runtime.datasets import check_inputs

Arrays = Any  # an ndarray, a dict name -> ndarray, or a list of ndarrays


def validation_fraction(value: Any) -> float:
    """validation_split: a number in [0, 1)."""
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, float, np.integer, np.floating)) \
            or not 0 <= value < 1:
        raise NndError(f"validation_split must be a number from 0 up to (not including) 1, got {value!r}")
    return float(value)


def positive_int(value: Any, name: str) -> int:
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, np.integer)) or value < 1:
        raise NndError(f"{name} must be a positive int, got {value!r}")
    return int(value)


def parameter_array(value: Any, what: str, dtype: Any) -> np.ndarray:
    """`value` as a finite numeric array of `dtype`, or an NndError naming it (NaN weights would only
    surface later, as NaN predictions or a loss that seems to diverge)."""
    array = np.asarray(value)
    if array.dtype.kind not in "biuf":
        raise NndError(f"{what} must hold numbers, got dtype {array.dtype}")
    array = array.astype(dtype, copy=False)
    finite = np.isfinite(array)
    if not finite.all():
        index = tuple(int(i) for i in np.argwhere(~finite)[0])
        raise NndError(f"{what} holds {array[index]} at index {index}")
    return array


def non_negative_int(value: Any, name: str) -> int:
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, np.integer)) or value < 0:
        raise NndError(f"{name} must be a non-negative int, got {value!r}")
    return int(value)


def verbosity(value: Any) -> int:
    """fit's verbose, as Keras takes it: 0 (silent), 1 (progress), 2 (a line per epoch), "auto" (1) or a
    bool; anything else would only fail deep inside the progress display."""
    if isinstance(value, str) and value == "auto":
        return 1
    if isinstance(value, (bool, np.bool_)):
        return int(value)
    if not isinstance(value, (int, np.integer)) or value < 0:
        raise NndError(f"verbose must be 0 (silent), 1 (progress), 2 (one line per epoch) or \"auto\", "
                       f"got {value!r}")
    return int(value)


def as_path(value: Any, what: str) -> Path:
    if not isinstance(value, (str, os.PathLike)):
        raise NndError(f"{what} must be a path, got {type(value).__name__}")
    if "\0" in os.fspath(value):
        raise NndError(f"{what} {os.fspath(value)!r} holds a NUL character")
    return Path(value)


def by_name(values: Arrays, names: list[str], what: str) -> dict[str, np.ndarray]:
    if isinstance(values, Mapping):
        missing = [n for n in names if n not in values]
        unknown = [k for k in values if k not in names]
        listed = f" (its {what}s: {', '.join(names)})"
        if unknown:
            hint = did_you_mean(str(unknown[0]), missing or names)
            raise NndError(f"the model has no {what} named {unknown[0]!r}"
                           + (f"; did you mean '{hint}'?" if hint else "") + listed)
        if missing:
            raise NndError(f"no array given for {what} {', '.join(map(repr, missing))}" + listed)
        return {n: values[n] for n in names}
    if isinstance(values, (list, tuple)) and len(names) > 1:
        if len(values) != len(names):
            raise NndError(f"expected {len(names)} {what} arrays ({', '.join(names)}), got {len(values)}")
        return dict(zip(names, values))
    if len(names) != 1:
        raise NndError(f"the model has {len(names)} {what}s ({', '.join(names)}): pass a dict keyed by name")
    return {names[0]: values}


def as_array(value: Any, what: str) -> np.ndarray:
    """An array from whatever the caller passed (arrays, nested lists); a ragged list is an NndError."""
    try:
        return np.asarray(value)
    except ValueError as err:  # NumPy refuses sequences of unequal lengths
        raise NndError(f"{what} is not a rectangular array: {err}") from None
    except (TypeError, RuntimeError) as err:  # an object whose __array__ refuses (a tensor that requires grad)
        raise NndError(f"{what} cannot be read as a NumPy array ({type(value).__name__}): {err}") from None


def input_array(value: Any, name: str, type: TensorType) -> np.ndarray:
    """What the caller gave for the input `name`, checked against its type and converted to it."""
    array = as_array(value, f"input '{name}'")
    dims = tuple(type.shape[1:])
    if type.dtype == "bool":
        flags = bool_input(array, name)
        check_inputs(flags.view(np.uint8), dims, name, allow_int=True)  # the shape
        return flags
    if type.dtype in ("i32", "i64"):
        return integer_input(check_inputs(array, dims, name, allow_int=True), name, type.dtype)
    return float_input(check_inputs(array, dims, name))


def bool_input(array: np.ndarray, name: str) -> np.ndarray:
    """A bool input takes True/False, or numbers that are all 0 or 1: never a threshold on other values."""
    if array.dtype == np.bool_:
        return array
    if array.dtype.kind in "iuf" and np.isin(array, (0, 1)).all():
        return array.astype(np.bool_)
    raise NndError(f"input '{name}' is bool: it takes True/False or 0/1 values, got "
                   + (f"dtype {array.dtype}" if array.dtype.kind not in "iuf" else "other numbers"))


def float_input(array: np.ndarray) -> np.ndarray:
    return array if array.dtype in (np.float32, np.float64) else array.astype(np.float32)


def integer_input(array: np.ndarray, name: str, dtype: str) -> np.ndarray:
    """An integer input (ids): whole numbers that the input's integer type holds, converted to it, so that
    no id is silently truncated (3.9) or wrapped (2**32 + 3)."""
    target = np.dtype(np.int32 if dtype == "i32" else np.int64)
    if array.dtype.kind == "f":
        fractional = array != np.round(array)
        if fractional.any():
            index = tuple(int(i) for i in np.argwhere(fractional)[0])
            raise NndError(f"input '{name}' must hold whole numbers (ids), got {array[index]} at index {index}")
    limits = np.iinfo(target)
    if array.size and (array.min() < limits.min or array.max() > limits.max):
        outside = (array < limits.min) | (array > limits.max)
        index = tuple(int(i) for i in np.argwhere(outside)[0])
        raise NndError(f"input '{name}' holds {array[index]} at index {index}, outside {target.name}")
    return array.astype(target, copy=False)


def check_target(y: np.ndarray, type: TensorType, output, name: str, loss: str, label: str | None = None
                 ) -> np.ndarray:
    """y as output `name`'s target under `loss`; messages call it `label`, by default fit's y for the one
    output of a model, else the output's name."""
    label = label or (name if name != "output" else "y")
    try:
        if type.dtype == "i64":
            return _class_id_target(y, type, output.type.shape[-1], label, name, loss)
        return _value_target(y, type, label, loss)
    except NndError as err:
        if output.type.rank == 3 and y.ndim < output.type.rank - (type.dtype == "i64"):
            # one target per sample for an output with one per step: most often a stray return_sequences
            raise NndError(f"{err.diagnostics[0].message} (output '{name}' gives one prediction per step; for "
                           "one per sample, end the sequence with return_sequences=false or a global pooling)") \
                from None
        raise


def _class_id_target(y: np.ndarray, type: TensorType, classes: int, label: str, output: str,
                     loss: str) -> np.ndarray:
    if y.ndim == len(type.shape) + 1 and y.shape[-1] == 1:
        y = y[..., 0]
    if y.dtype.kind == "f":
        if not np.all(np.isfinite(y)) or not np.all(y == np.round(y)):
            raise NndError(f"target '{label}' must hold integer class ids for {loss}, got non-integer values")
    elif y.dtype.kind not in "iu":
        raise NndError(f"target '{label}' must hold integer class ids, got dtype {y.dtype}")
    if y.ndim != len(type.shape):
        hint = " (one-hot targets need categorical_crossentropy)" if y.ndim == len(type.shape) + 1 else ""
        raise NndError(f"target '{label}' has shape {y.shape}; {loss} expects class ids of shape "
                       f"(batch{', ' if len(type.shape) > 1 else ''}"
                       f"{', '.join(str(d) for d in type.shape[1:])}){hint}")
    if y.size:
        low, high = int(y.min()), int(y.max())
        if low < 0 or high >= classes:
            bad = low if low < 0 else high
            index = int(np.argmax(y == bad))
            raise NndError(f"target '{label}' holds label {bad} at index {index}, outside the {classes} classes "
                           f"(0 to {classes - 1}) of output '{output}'")
    return y.astype(np.int64, copy=False)


# losses whose targets are probabilities: anything outside [0, 1] gives a meaningless (even negative) loss
PROBABILITY_TARGETS = ("binary_crossentropy", "categorical_crossentropy")


def _value_target(y: np.ndarray, type: TensorType, label: str, loss: str) -> np.ndarray:
    dims = tuple(type.shape[1:])
    if y.ndim == 1 and dims == (1,):
        y = y[:, None]
    if loss == "categorical_crossentropy" and y.ndim == len(type.shape) - 1 and y.dtype.kind in "iu":
        raise NndError(f"target '{label}' has shape {y.shape}: class ids; {loss} expects one-hot rows of shape "
                       f"(batch, {', '.join(str(d) for d in dims)}) (use sparse_categorical_crossentropy for ids)")
    y = check_inputs(y.astype(np.float32, copy=False) if y.dtype.kind in "iub" else y, dims, label, kind="target")
    if loss in PROBABILITY_TARGETS:
        outside = (y < 0) | (y > 1)
        if outside.any():
            index = tuple(int(i) for i in np.argwhere(outside)[0])
            raise NndError(f"target '{label}' holds {y[index]} at index {index}; {loss} needs targets "
                           f"from 0 to 1")
    return y


def sample_count(arrays: Mapping[str, np.ndarray]) -> int:
    return len(next(iter(arrays.values())))


def same_count(arrays: Mapping[str, np.ndarray], what: str) -> None:
    counts = {k: len(v) for k, v in arrays.items()}
    if len(set(counts.values())) > 1:
        listing = ", ".join(f"{k.replace(TARGET_PREFIX, 'target ')}: {n}" for k, n in counts.items())
        raise NndError(f"the {what} have different numbers of samples ({listing})")


def validation_count(n: int, fraction: float) -> int:
    """How many of n samples validation_split holds out: Keras trains on floor(n * (1 - fraction))."""
    return n - int(math.floor(n * (1.0 - fraction)))


def split_last(feeds: dict[str, np.ndarray], fraction: float) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    """Hold out the last `fraction` of the samples, before any shuffling, as Keras' validation_split does
    (so a time series validates on its latest windows, never on ones between training windows)."""
    n = sample_count(feeds)
    n_val = validation_count(n, fraction)
    if n_val < 1 or n_val >= n:
        raise NndError(f"validation_split {fraction} leaves no samples on one side of {n}")
    return ({k: v[:n - n_val] for k, v in feeds.items()}, {k: v[n - n_val:] for k, v in feeds.items()})
