"""Streaming metrics over batches: `update(pred, target)`, `result() -> float`, `reset()`.

Each metric is a running mean over samples (for mae/mse and binary accuracy: over elements), so the result
over an epoch equals the metric over the concatenated batches, as in Keras. `result()` is 0.0 before any
update. `update(pred, target, mask)` with the padding mask of a sequence output ([batch, steps], 1 at real
steps) counts the real steps only, as Keras' metrics do with a masked output: each value is weighted by
its step's mask entry. Metrics work on NumPy arrays; CuPy arrays are accepted (the per-batch counts are
moved to the host).

`precision`, `recall` and `auc` read every element as a binary decision (a prediction above the threshold,
a non-zero target), as Keras' do; `auc` is the exact area under the ROC curve of the epoch's predictions.

`accuracy` picks its form from the shapes like Keras' 'accuracy' string:
  pred last dim 1                                      -> binary_accuracy (threshold 0.5)
  target rank < pred rank, or target last dim 1 < pred -> sparse_categorical_accuracy
  otherwise                                            -> categorical_accuracy
"""
from __future__ import annotations

from typing import Any

import numpy as np

from nnd.compiler.diagnostics import NndError
from nnd.compiler.training import METRIC_ALIASES
from nnd.runtime.named import build

__all__ = ["Metric", "Accuracy", "SparseCategoricalAccuracy", "CategoricalAccuracy", "BinaryAccuracy",
           "TopKAccuracy", "MeanAbsoluteError", "MeanSquaredError", "Precision", "Recall", "AUC", "make_metric",
           "METRICS", "confusion_matrix"]


def _module(a: Any):
    if type(a).__module__.startswith("cupy"):
        import cupy

        return cupy
    return np


class Metric:
    name = "metric"

    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        self.total = 0.0
        self.count = 0

    def result(self) -> float:
        return self.total / self.count if self.count else 0.0

    def update(self, pred: Any, target: Any, mask: Any = None) -> None:
        pred, target = self._check(pred, target)
        values = self._values(pred, target)
        weights = _step_weights(mask, values)
        if weights is None:
            self.total += float(values.sum())
            self.count += int(values.size)
        else:
            self.total += float((values * weights).sum())
            self.count += float(weights.sum())

    def _values(self, pred, target):
        raise NotImplementedError

    def _check(self, pred, target):
        if not hasattr(pred, "shape"):
            pred = np.asarray(pred)
        if not hasattr(target, "shape"):
            target = np.asarray(target)
        if pred.ndim == 0 or target.ndim == 0:
            raise NndError(f"metric '{self.name}': predictions and targets need a batch dimension, got shapes "
                           f"{tuple(pred.shape)} and {tuple(target.shape)}")
        if pred.shape[0] != target.shape[0]:
            raise NndError(f"metric '{self.name}': predictions have batch size {pred.shape[0]} {tuple(pred.shape)} "
                           f"but targets have {target.shape[0]} {tuple(target.shape)}")
        return pred, target

    def __repr__(self) -> str:
        return f"{type(self).__name__}(result={self.result():.6g}, count={self.count})"


def _step_weights(mask, values):
    """The mask broadcast over each step's values, or None without a mask (or one that does not line up
    with the values' leading axes)."""
    if mask is None:
        return None
    xp = _module(values)
    mask = xp.asarray(mask)
    if mask.ndim > values.ndim or tuple(values.shape[:mask.ndim]) != tuple(mask.shape):
        return None
    mask = mask.reshape(tuple(mask.shape) + (1,) * (values.ndim - mask.ndim))
    return xp.broadcast_to(mask.astype(np.float64), values.shape)


def _sparse_labels(metric: str, pred, target):
    """Integer class ids of shape (batch, ...) matching pred.shape[:-1], with range checks."""
    xp = _module(target)
    if target.ndim == pred.ndim and target.shape[-1] == 1:
        target = target.reshape(target.shape[:-1])
    if tuple(target.shape) != tuple(pred.shape[:-1]):
        raise NndError(f"metric '{metric}': sparse labels of shape {tuple(target.shape)} do not match predictions "
                       f"of shape {tuple(pred.shape)} (expected labels of shape {tuple(pred.shape[:-1])})")
    if target.dtype.kind == "f":
        if not bool(xp.all(target == xp.floor(target))):
            raise NndError(f"metric '{metric}': sparse labels must be whole numbers (class ids)")
    elif target.dtype.kind not in "iub":
        raise NndError(f"metric '{metric}': sparse labels must be integers, got dtype {target.dtype}")
    labels = target.astype(np.int64)
    n = pred.shape[-1]
    bad = (labels < 0) | (labels >= n)
    if bool(bad.any()):
        idx = tuple(int(i) for i in np.argwhere(_host(bad))[0])
        raise NndError(f"metric '{metric}': label {int(labels[idx])} at index {idx if len(idx) > 1 else idx[0]} "
                       f"is out of range for {n} classes (expected 0..{n - 1})")
    return labels


def _host(a):
    get = getattr(a, "get", None)
    return get() if callable(get) else np.asarray(a)


class SparseCategoricalAccuracy(Metric):
    name = "sparse_categorical_accuracy"

    def _values(self, pred, target):
        labels = _sparse_labels(self.name, pred, target)
        return pred.argmax(axis=-1) == labels


class CategoricalAccuracy(Metric):
    name = "categorical_accuracy"

    def _values(self, pred, target):
        if tuple(target.shape) != tuple(pred.shape):
            raise NndError(f"metric '{self.name}': one-hot targets of shape {tuple(target.shape)} do not match "
                           f"predictions of shape {tuple(pred.shape)}")
        return pred.argmax(axis=-1) == target.argmax(axis=-1)


class BinaryAccuracy(Metric):
    name = "binary_accuracy"

    def __init__(self, threshold: float = 0.5):
        super().__init__()
        if not isinstance(threshold, (int, float)) or isinstance(threshold, bool):
            raise NndError(f"metric '{self.name}': threshold must be a number, got {threshold!r}")
        self.threshold = float(threshold)

    def _values(self, pred, target):
        if target.size != pred.size:
            raise NndError(f"metric '{self.name}': targets of shape {tuple(target.shape)} do not match predictions "
                           f"of shape {tuple(pred.shape)}")
        target = target.reshape(pred.shape)
        return (pred > self.threshold).astype(target.dtype) == target


class Accuracy(Metric):
    """Keras' 'accuracy': binary, sparse categorical or categorical, decided from the shapes of each batch."""

    name = "accuracy"

    def __init__(self, threshold: float = 0.5):
        super().__init__()
        self._binary = BinaryAccuracy(threshold)
        self._sparse = SparseCategoricalAccuracy()
        self._categorical = CategoricalAccuracy()

    def kind(self, pred, target) -> Metric:
        if pred.shape[-1] == 1 or pred.ndim == 1:
            return self._binary
        if target.ndim < pred.ndim or (target.shape[-1] == 1 and pred.shape[-1] > 1):
            return self._sparse
        return self._categorical

    def _values(self, pred, target):
        impl = self.kind(pred, target)
        try:
            return impl._values(pred, target)
        except NndError as e:
            raise NndError(str(e.diagnostics[0].message).replace(f"metric '{impl.name}'",
                                                                 f"metric 'accuracy' (as {impl.name})")) from None


class TopKAccuracy(Metric):
    """Sparse labels; a sample counts when fewer than k classes score strictly higher than the true class."""

    name = "top_k_accuracy"

    def __init__(self, k: int = 5):
        super().__init__()
        if not isinstance(k, int) or isinstance(k, bool) or k < 1:
            raise NndError(f"metric '{self.name}': k must be a positive integer, got {k!r}")
        self.k = k

    def _values(self, pred, target):
        xp = _module(pred)
        labels = _sparse_labels(self.name, pred, target)
        true_score = xp.take_along_axis(pred, labels[..., None], axis=-1)
        higher = (pred > true_score).sum(axis=-1)
        return higher < self.k


class MeanAbsoluteError(Metric):
    name = "mae"

    def _values(self, pred, target):
        return abs(pred - _broadcast_target(self.name, pred, target))


class MeanSquaredError(Metric):
    name = "mse"

    def _values(self, pred, target):
        d = pred - _broadcast_target(self.name, pred, target)
        return d * d


def _binary_pairs(metric: str, pred, target, mask):
    """Host arrays of every element's prediction, whether its target is positive (non-zero, as Keras
    reads it) and its weight (the padding mask, else 1)."""
    if target.size != pred.size:
        hint = ("; it counts binary decisions element by element: give one-hot targets for a multi-class "
                "output" if target.size * pred.shape[-1] == pred.size and pred.shape[-1] > 1 else "")
        raise NndError(f"metric '{metric}': targets of shape {tuple(target.shape)} do not match predictions of "
                       f"shape {tuple(pred.shape)}{hint}")
    target = target.reshape(pred.shape)
    weights = _step_weights(mask, pred)
    weights = np.ones(pred.size) if weights is None else _host(weights).reshape(-1)
    return _host(pred).reshape(-1).astype(np.float64), _host(target).reshape(-1) != 0, weights


class _Confusion(Metric):
    """Weighted counts of true positives, false positives and false negatives over every element, a
    prediction above `threshold` counting as positive."""

    def __init__(self, threshold: float = 0.5):
        if not isinstance(threshold, (int, float)) or isinstance(threshold, bool) or not 0 <= threshold <= 1:
            raise NndError(f"metric '{self.name}': threshold must be a number in [0, 1], got {threshold!r}")
        self.threshold = float(threshold)
        super().__init__()

    def reset(self) -> None:
        super().reset()
        self.true_positives = self.false_positives = self.false_negatives = 0.0

    def update(self, pred: Any, target: Any, mask: Any = None) -> None:
        pred, target = self._check(pred, target)
        scores, positive, weights = _binary_pairs(self.name, pred, target, mask)
        predicted = scores > self.threshold
        self.true_positives += float(weights[predicted & positive].sum())
        self.false_positives += float(weights[predicted & ~positive].sum())
        self.false_negatives += float(weights[~predicted & positive].sum())
        self.count += int(weights.size)

    def _ratio(self, part: float, other: float) -> float:
        return part / (part + other) if part + other > 0 else 0.0


class Precision(_Confusion):
    """Of the elements predicted positive, the share that are: TP / (TP + FP)."""

    name = "precision"

    def result(self) -> float:
        return self._ratio(self.true_positives, self.false_positives)


class Recall(_Confusion):
    """Of the positive elements, the share predicted positive: TP / (TP + FN)."""

    name = "recall"

    def result(self) -> float:
        return self._ratio(self.true_positives, self.false_negatives)


class AUC(Metric):
    """The area under the ROC curve, exactly: the probability that a positive element scores above a
    negative one, ties counting half. The epoch's predictions are kept and ranked at `result()` (Keras
    approximates the curve with 200 thresholds; this is the value it approaches). 0.0 until both classes
    have been seen."""

    name = "auc"

    def reset(self) -> None:
        super().reset()
        self._parts: list[tuple[np.ndarray, np.ndarray, np.ndarray]] = []

    def update(self, pred: Any, target: Any, mask: Any = None) -> None:
        pred, target = self._check(pred, target)
        self._parts.append(_binary_pairs(self.name, pred, target, mask))
        self.count += int(pred.size)

    def result(self) -> float:
        if not self._parts:
            return 0.0
        scores, positive, weights = (np.concatenate(column) for column in zip(*self._parts))
        levels, level = np.unique(scores, return_inverse=True)
        positives = np.bincount(level, weights * positive, len(levels))
        negatives = np.bincount(level, weights * ~positive, len(levels))
        total_positive, total_negative = positives.sum(), negatives.sum()
        if total_positive <= 0 or total_negative <= 0:
            return 0.0
        below = np.cumsum(negatives) - negatives  # negative weight scoring strictly lower, per score level
        return float((positives * (below + 0.5 * negatives)).sum() / (total_positive * total_negative))


def _broadcast_target(metric, pred, target):
    if tuple(target.shape) == tuple(pred.shape):
        return target
    if target.size == pred.size:
        return target.reshape(pred.shape)
    raise NndError(f"metric '{metric}': targets of shape {tuple(target.shape)} do not match predictions of shape "
                   f"{tuple(pred.shape)}")


def confusion_matrix(labels: np.ndarray, predicted: np.ndarray, classes: int) -> np.ndarray:
    """counts[i, j]: the samples of class i predicted as class j (int64, classes x classes)."""
    labels, predicted = np.asarray(labels, dtype=np.int64), np.asarray(predicted, dtype=np.int64)
    if labels.shape != predicted.shape:
        raise NndError(f"confusion matrix: {labels.shape[0]} labels for {predicted.shape[0]} predictions")
    bad = (labels < 0) | (labels >= classes)
    if bad.any():
        index = int(np.argmax(bad))
        raise NndError(f"confusion matrix: label {int(labels[index])} at index {index} is outside the {classes} "
                       f"classes (0 to {classes - 1})")
    return np.bincount(labels * classes + predicted, minlength=classes * classes).reshape(classes, classes)


METRICS: dict[str, type[Metric]] = {
    "accuracy": Accuracy,
    "sparse_categorical_accuracy": SparseCategoricalAccuracy,
    "categorical_accuracy": CategoricalAccuracy,
    "binary_accuracy": BinaryAccuracy,
    "top_k_accuracy": TopKAccuracy,
    "mae": MeanAbsoluteError,
    "mse": MeanSquaredError,
    "precision": Precision,
    "recall": Recall,
    "auc": AUC,
}


def make_metric(name: str, **args: Any) -> Metric:
    """Build a metric by name (Keras spellings such as 'acc' and 'mean_squared_error' are accepted)."""
    return build(METRICS, name, args, "metric", METRIC_ALIASES)
