"""Where `nnd train --data` and the train section's `data =` get their arrays.

The source is a named dataset (fashion_mnist, mnist, moving_fashion_mnist) or a file: `.npz`/`.npy` arrays,
a `.csv` table, or a `.txt` text. How a file is cut into samples follows the model: a CSV feeding a
sequence input [steps, features] becomes sliding windows over its rows (forecasting the `target` column),
a text feeding an integer sequence input becomes character windows (the next character as the label), and
grey images gain or lose their channel axis to match the input.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np

from nnd.compiler.diagnostics import NndError
from nnd.compiler.tensor_type import TensorType
from nnd.compiler.training import NAMED_DATASETS, TrainSpec
from nnd.runtime.datasets import load_arrays, load_csv, load_named
from nnd.runtime.sequence_data import (chronological_split, load_moving_fashion_mnist, load_text_windows,
                                       load_time_series_csv)

MOVING_TRAIN, MOVING_TEST = 5000, 1000
TEXT_VALIDATION = 0.1


@dataclass
class Dataset:
    x_train: np.ndarray
    y_train: np.ndarray | None
    x_test: np.ndarray | None = None
    y_test: np.ndarray | None = None
    # What prediction needs later (a vocabulary, standardization statistics): name -> writer(run_dir).
    artifacts: dict[str, Callable[[Path], Any]] = field(default_factory=dict)


def load_dataset(source: str | None, data_dir: str | None, spec: TrainSpec, input_type: TensorType,
                 output_type: TensorType, base_dir: Path | None = None) -> Dataset:
    """Load `source` shaped for a model with one input of `input_type` and one output of `output_type`."""
    if source is None:
        raise NndError("no training data: give --data NAME|PATH or set `data = ...` in the train section")
    dims = tuple(input_type.shape[1:])
    name = source.replace("-", "_")
    if name == "moving_fashion_mnist":
        return _moving(dims, spec, data_dir)
    if name in NAMED_DATASETS:
        x_train, y_train, x_test, y_test = load_named(name, data_dir)
        return Dataset(fit_to_input(x_train, dims), y_train, fit_to_input(x_test, dims), y_test)
    path = _resolve(source, base_dir)
    suffix = path.suffix.lower()
    if suffix == ".csv":
        return _csv(path, spec, dims, output_type)
    if suffix in (".txt", ".md", ".text"):
        return _text(path, input_type, output_type)
    if suffix in (".npz", ".npy"):
        arrays = load_arrays(path)
        if "x_train" in arrays:
            x_test = arrays.get("x_test")
            return Dataset(fit_to_input(arrays["x_train"], dims), arrays["y_train"],
                           None if x_test is None else fit_to_input(x_test, dims), arrays.get("y_test"))
        return Dataset(fit_to_input(arrays["x"], dims), arrays.get("y"))
    raise NndError(f"--data {source}: not a named dataset ({', '.join(NAMED_DATASETS)}) "
                   "nor a .npz, .npy, .csv or .txt file")


def _resolve(source: str, base_dir: Path | None) -> Path:
    """A relative path names a file beside the model when one is there, else one in the working directory."""
    path = Path(source)
    if not path.is_absolute() and base_dir is not None and (base_dir / path).exists() and not path.exists():
        return base_dir / path
    return path


def _csv(path: Path, spec: TrainSpec, dims: tuple, output_type: TensorType) -> Dataset:
    if len(dims) != 2:
        x, y = load_csv(path, target=spec.target if spec.target is not None else -1)
        return Dataset(fit_to_input(x, dims), y)
    if spec.target is None:
        raise NndError(f"{path}: a sequence model forecasts one column; name it with `target = COLUMN` "
                       "in the train section")
    steps, features = dims
    columns = list(spec.columns) if spec.columns else [spec.target]
    if len(columns) != features:
        raise NndError(f"the model's input has {features} features per step but the train section reads "
                       f"{len(columns)} column{'s' if len(columns) != 1 else ''} ({', '.join(map(str, columns))})",
                       )
    horizon = int(output_type.shape[-1])
    x, y, stats = load_time_series_csv(path, columns, spec.target, window=int(steps), horizon=horizon,
                                       standardize=True, validation_fraction=TEXT_VALIDATION)
    x_train, y_train, x_test, y_test = chronological_split(x, y, TEXT_VALIDATION)
    return Dataset(x_train, y_train, x_test, y_test, {"series_stats.json": stats.save})


def _text(path: Path, input_type: TensorType, output_type: TensorType) -> Dataset:
    if input_type.rank != 2 or input_type.dtype not in ("i32", "i64"):
        raise NndError(f"{path} is text: the model's input must be character ids, such as "
                       f"`input chars: int32[100]`, not {input_type}")
    steps = int(input_type.shape[1])
    targets = "all" if output_type.rank == 3 else "last"
    x, y, vocabulary = load_text_windows(path, steps, step=max(1, steps // 4) if targets == "all" else 1,
                                         targets=targets)
    classes = int(output_type.shape[-1])
    if vocabulary.size > classes:
        raise NndError(f"{path} has {vocabulary.size - 1} distinct characters ({vocabulary.size} ids with "
                       f"padding), more than the model's {classes} output classes; raise the embedding's "
                       f"input_dim and the output layer's units to at least {vocabulary.size}")
    cut = len(x) - max(1, int(len(x) * TEXT_VALIDATION))
    return Dataset(x[:cut], y[:cut], x[cut:], y[cut:], {"vocabulary.json": vocabulary.save})


def _moving(dims: tuple, spec: TrainSpec, data_dir: str | None) -> Dataset:
    if len(dims) != 4 or dims[1] != dims[2] or dims[3] != 1:
        raise NndError("moving_fashion_mnist gives clips of shape (frames, canvas, canvas, 1); "
                       f"the model's input is {dims}")
    frames, canvas = int(dims[0]), int(dims[1])
    x_train, y_train, x_test, y_test = load_moving_fashion_mnist(MOVING_TRAIN, MOVING_TEST, frames=frames,
                                                                 canvas=canvas, seed=spec.seed, data_dir=data_dir)
    return Dataset(x_train, y_train, x_test, y_test)


def fit_to_input(x: np.ndarray, input_dims: tuple) -> np.ndarray:
    """Grey images stored as (n, h, w) gain the channel axis a channels-last input expects; images with a
    channel axis of one lose it for an input of (steps, features), such as a row-by-row LSTM."""
    shape = tuple(x.shape[1:])
    dims = tuple(input_dims)
    if len(dims) == len(shape) + 1 and dims[-1] == 1 and shape == dims[:-1]:
        return x[..., None]
    if len(shape) == len(dims) + 1 and shape[-1] == 1 and shape[:-1] == dims:
        return x[..., 0]
    return x
