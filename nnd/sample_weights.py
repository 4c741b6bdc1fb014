"""`fit(sample_weight=..., class_weight=...)` (and evaluate's sample_weight): the weight of each sample's
loss, checked and turned into the training graph's `sample_weight:<output>` feeds.

Keras' rules: a sample's loss is multiplied by its weight and the batch's loss is the mean of the products
over the batch (`compiler/training_graph.py`); `class_weight` maps a class id to the weight of the samples
of that class (class ids or one-hot rows, or 0/1 labels for one sigmoid unit), a class it leaves out weighs
1, and it serves models with one output only; the two cannot be given together. The metrics ignore the
weights, as Keras' `metrics` do.
"""
from __future__ import annotations

import math
from typing import Any, Mapping

import numpy as np

from nnd.arguments import as_array
from nnd.compiler.diagnostics import NndError
from nnd.compiler.ir import Value
from nnd.compiler.training_graph import TARGET_PREFIX, WEIGHT_PREFIX

Outputs = Mapping[str, tuple[Value, str]]  # output name -> (its value in the graph, its loss's name)


def weight_feeds(sample_weight: Any, class_weight: Any, feeds: Mapping[str, np.ndarray], outputs: Outputs,
                 samples: int) -> dict[str, np.ndarray]:
    """The `sample_weight:<output>` feeds for fit's arguments (none when neither is given)."""
    if sample_weight is not None and class_weight is not None:
        raise NndError("fit takes class_weight or sample_weight, not both (as Keras); to combine them, "
                       "multiply each sample's weight by its class's and pass the products as sample_weight")
    if class_weight is not None:
        return class_weight_feeds(class_weight, feeds, outputs)
    if sample_weight is not None:
        return sample_weight_feeds(sample_weight, list(outputs), samples)
    return {}


def sample_weight_feeds(value: Any, outputs: list[str], samples: int,
                        what: str = "sample_weight") -> dict[str, np.ndarray]:
    """One array of `samples` weights for every output, or (several outputs) a dict or list of them."""
    shared = False  # one array for every output
    if isinstance(value, Mapping):
        unknown = [name for name in value if name not in outputs]
        if unknown:
            raise NndError(f"{what} names output {unknown[0]!r}, which the model does not have (its outputs: "
                           f"{', '.join(outputs)})")
        per_output = {name: value[name] for name in outputs if name in value}
    elif len(outputs) > 1 and isinstance(value, (list, tuple)) and value and all(np.ndim(v) > 0 for v in value):
        if len(value) != len(outputs):
            raise NndError(f"{what} lists {len(value)} arrays, but the model has {len(outputs)} outputs "
                           f"({', '.join(outputs)}): give one array for all of them, or one per output")
        per_output = dict(zip(outputs, value))
    else:
        per_output, shared = dict.fromkeys(outputs, value), True
    if shared:
        weights = _weights(value, what, samples)
        return {WEIGHT_PREFIX + name: weights for name in outputs}
    return {WEIGHT_PREFIX + name: _weights(array, f"{what} of output {name!r}", samples)
            for name, array in per_output.items()}


def _weights(value: Any, what: str, samples: int) -> np.ndarray:
    """An array of one finite, non-negative weight per sample."""
    array = as_array(value, what)
    if array.dtype.kind not in "biuf" or array.dtype.kind == "b":
        raise NndError(f"{what} must hold numbers, got dtype {array.dtype}")
    if array.shape != (samples,):
        per_sample = "" if array.ndim == 1 else " (one weight per sample; per-step weights are not supported)"
        raise NndError(f"{what} has shape {array.shape}, but there are {samples} samples: it needs shape "
                       f"({samples},){per_sample}")
    _check_values(array.astype(np.float64), what)
    return array.astype(np.float64)  # the executor converts it to the dtype the model computes in


def _check_values(array: np.ndarray, what: str) -> None:
    bad = ~np.isfinite(array) | (array < 0)
    if bad.any():
        index = int(np.argmax(bad))
        raise NndError(f"{what} holds {array[index]:g} at index {index}; weights must be finite and at least 0")


def class_weight_feeds(class_weight: Any, feeds: Mapping[str, np.ndarray], outputs: Outputs) -> dict[str, np.ndarray]:
    """Each sample's weight: the weight of its class in `class_weight` (1 for a class not listed)."""
    if not isinstance(class_weight, Mapping):
        raise NndError(f"class_weight must be a dict of class id -> weight, got {type(class_weight).__name__}")
    if len(outputs) != 1:
        raise NndError(f"class_weight serves models with one output; this one has {len(outputs)} "
                       f"({', '.join(outputs)}): give sample_weight, one weight per sample, instead")
    (name, (output, loss)), = outputs.items()
    classes = _class_count(name, output, loss)
    table = _class_table(class_weight, classes)
    ids = _class_ids(feeds[TARGET_PREFIX + name], loss)
    return {WEIGHT_PREFIX + name: table[ids]}


def _class_count(name: str, output: Value, loss: str) -> int:
    """How many classes the output tells apart, or an NndError when its targets are not one class per sample."""
    shape = output.type.shape
    if loss not in ("sparse_categorical_crossentropy", "categorical_crossentropy", "binary_crossentropy"):
        raise NndError(f"class_weight weighs samples by their class, but output {name!r} trains with {loss}, "
                       "whose targets are not classes: give sample_weight instead")
    if len(shape) != 2 or not isinstance(shape[-1], int):
        raise NndError(f"class_weight gives each sample the weight of its one class, but output {name!r} "
                       f"({output.type}) has a class per step or position: give sample_weight instead")
    if loss == "binary_crossentropy":
        if shape[-1] != 1:
            raise NndError(f"class_weight gives each sample the weight of its one class, but output {name!r} has "
                           f"{shape[-1]} independent binary labels: give sample_weight instead")
        return 2
    return int(shape[-1])


def _class_table(class_weight: Mapping[Any, Any], classes: int) -> np.ndarray:
    """weight by class id, 1 for the classes `class_weight` leaves out (as Keras)."""
    table = np.ones(classes, dtype=np.float64)
    for key, weight in class_weight.items():
        if isinstance(key, (bool, np.bool_)) or not isinstance(key, (int, np.integer)):
            raise NndError(f"class_weight keys are class ids (ints), got {key!r}")
        if not 0 <= key < classes:
            raise NndError(f"class_weight gives a weight for class {key}, but the output has {classes} classes "
                           f"(0 to {classes - 1})")
        if isinstance(weight, (bool, np.bool_)) or not isinstance(weight, (int, float, np.integer, np.floating)) \
                or not math.isfinite(weight) or weight < 0:
            raise NndError(f"class_weight[{key}] must be a finite number of at least 0, got {weight!r}")
        table[int(key)] = weight
    return table


def _class_ids(target: np.ndarray, loss: str) -> np.ndarray:
    """Each sample's class: its id, the position of the largest entry of its one-hot row, or its rounded
    0/1 label."""
    if loss == "sparse_categorical_crossentropy":
        return target.astype(np.int64)
    if loss == "categorical_crossentropy":
        return np.argmax(target, axis=-1)
    return np.round(target.reshape(len(target))).astype(np.int64)
