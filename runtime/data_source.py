"""Where `nnd train --data` and the train section's `data =` get their arrays.

The source is a named dataset (fashion_mnist, mnist, moving_fashion_mnist) or a file: `.npz`/`.npy` arrays,
a `.csv` table, or a `.txt` text. How a file is cut into samples follows the model: a CSV feeding a
sequence input [steps, features] becomes sliding windows over its rows (forecasting the `target` column),
a text feeding an integer sequence input becomes character windows (the next character as the label), and
grey images gain or lose their channel axis to match the input.

Given the directory of a training run, the standardization statistics or the vocabulary saved there
prepare the data exactly as they prepared the training data, whatever file is read now.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np

from nnd.compiler.diagnostics import NndError
from nnd.compiler.reconstruction import reproduced_input
from nnd.compiler.tensor_type import FLOAT_DTYPES, TensorType
from nnd.compiler.training import NAMED_DATASETS, TrainSpec
from nnd.runtime.checkpoint import atomic_write
from nnd.runtime.datasets import (column_index, csv_header, load_arrays, load_csv, load_named,
                                  looks_like_header)
from nnd.runtime.sequence_data import (STATS_FILE, chronological_split, load_moving_fashion_mnist,
                                       load_text_windows, load_time_series_csv)

MOVING_TRAIN, MOVING_TEST = 5000, 1000
TEXT_VALIDATION = 0.1
TEXT_SUFFIXES = (".txt", ".md", ".text")
VOCABULARY_FILE = "vocabulary.json"
# whether a run's image CSV held bytes (0-255) to scale, so that evaluate and predict scale theirs alike
PIXELS_FILE = "pixels.json"
# which column of a run's table CSV held the labels, for the header-less files evaluate and predict read
LABEL_COLUMN_FILE = "label_column.json"


@dataclass
class Dataset:
    x_train: np.ndarray
    y_train: np.ndarray | None
    x_test: np.ndarray | None = None
    y_test: np.ndarray | None = None
    # What prediction needs later (a vocabulary, standardization statistics): name -> writer(run_dir).
    artifacts: dict[str, Callable[[Path], Any]] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)  # how the data was prepared, for the user to read
    # the key each target had in the data file (y_train -> "y", say), to name it in messages
    keys: dict[str, str] = field(default_factory=dict)


def load_dataset(source: str | None, data_dir: str | None, spec: TrainSpec, input_type: TensorType,
                 output_type: TensorType, base_dir: Path | None = None, run_dir: Path | None = None,
                 input_name: str | None = None) -> Dataset:
    """Load `source` shaped for a model with one input of `input_type` and one output of `output_type`;
    `run_dir`, a trained run's directory, supplies the statistics or vocabulary saved by its training.
    A train section whose `target` names the input (`input_name`) gets the inputs as targets."""
    if source is None:
        raise no_data_error("training", tuple(input_type.shape[1:]))
    if input_name is not None and reproduced_input(spec, [input_name]):
        return _reproduced(source, data_dir, spec, input_type, output_type, base_dir, input_name)
    return _load(source, data_dir, spec, input_type, output_type, base_dir, run_dir)


def _reproduced(source: str, data_dir: str | None, spec: TrainSpec, input_type: TensorType,
                output_type: TensorType, base_dir: Path | None, input_name: str) -> Dataset:
    """An autoencoder's data: the samples are their own targets, and the data's labels go unused."""
    if Path(source).suffix.lower() in (".csv", *TEXT_SUFFIXES):
        raise NndError(f"--data {source}: target = {input_name} reproduces arrays from a named dataset or a "
                       ".npz/.npy file; a CSV's or text's target names what to predict from it")
    dataset = _load(source, data_dir, spec, input_type, output_type, base_dir, None)
    dataset.y_train, dataset.y_test = dataset.x_train, dataset.x_test
    dataset.keys = {"y_train": "x_train", "y_test": "x_test"}
    dataset.notes.append(f"target = {input_name}: the model learns to reproduce its input; the labels go unused")
    return dataset


def _load(source: str, data_dir: str | None, spec: TrainSpec, input_type: TensorType, output_type: TensorType,
          base_dir: Path | None, run_dir: Path | None) -> Dataset:
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
        return _csv(path, spec, dims, output_type, run_dir)
    if suffix in TEXT_SUFFIXES:
        return _text(path, input_type, output_type, run_dir)
    if suffix in (".npz", ".npy"):
        arrays = load_arrays(path)
        split = "x_train" in arrays
        x_train = arrays["x_train"] if split else arrays["x"]
        y_train = arrays["y_train"] if split else arrays.get("y")
        x_test = arrays.get("x_test") if split else None
        dataset = Dataset(_as_input(x_train, input_type), y_train, _as_input(x_test, input_type),
                          arrays.get("y_test"))
        dataset.keys = {"y_train": "y_train" if split else "y", "y_test": "y_test"}
        if _byte_images(x_train, input_type):
            dataset.notes.append(f"{path.name}: uint8 images scaled to [0, 1] (divided by 255)")
        return dataset
    raise NndError(f"--data {source}: not a named dataset ({', '.join(NAMED_DATASETS)}) "
                   "nor a .npz, .npy, .csv or .txt file")


def no_data_error(purpose: str, dims: tuple) -> NndError:
    """No --data and no `data =`: what to give, for `purpose` ("training", "evaluation") of a model whose
    samples have the shape `dims`."""
    shape = ", ".join(["n", *map(str, dims)])
    return NndError(f"no {purpose} data: give --data NAME|PATH or set `data = ...` in the train section (this "
                    f"model reads samples of shape {dims}: a .npz with x of shape ({shape}) and y would do)")


def _resolve(source: str, base_dir: Path | None) -> Path:
    """A relative path names a file beside the model when one is there, else one in the working directory."""
    path = Path(source)
    if not path.is_absolute() and base_dir is not None and (base_dir / path).exists() and not path.exists():
        return base_dir / path
    return path


def _csv(path: Path, spec: TrainSpec, dims: tuple, output_type: TensorType, run_dir: Path | None) -> Dataset:
    if len(dims) != 2:
        label, width = table_target(path, spec.target, _saved(run_dir, LABEL_COLUMN_FILE))
        x, y = load_csv(path, target=label)
        pixels, scale, notes = _csv_pixels(_table_rows(x, dims), path, _saved(run_dir, PIXELS_FILE))
        artifacts = {LABEL_COLUMN_FILE: _label_column_writer(label, width)}
        if len(dims) == 3:
            artifacts[PIXELS_FILE] = _pixel_scale_writer(scale)
        return Dataset(pixels, y, artifacts=artifacts, notes=notes)
    columns = series_columns(path, spec, dims)
    horizon = int(output_type.shape[-1])
    saved = _saved(run_dir, STATS_FILE)
    if saved is not None:
        x, y, stats = load_time_series_csv(path, columns, spec.target, window=int(dims[0]), horizon=horizon,
                                           stats=saved)
    else:
        x, y, stats = load_time_series_csv(path, columns, spec.target, window=int(dims[0]), horizon=horizon,
                                           standardize=True, validation_fraction=TEXT_VALIDATION)
    x_train, y_train, x_test, y_test = chronological_split(x, y, TEXT_VALIDATION)
    note = (f"{path.name}: the loss and metrics are in standardized units of {stats.target} (1.0 = "
            f"{stats.target_std:.4g} in the file's units); nnd predict writes the file's units")
    return Dataset(x_train, y_train, x_test, y_test, {STATS_FILE: stats.save}, [note])


def series_columns(path: Path, spec: TrainSpec, dims: tuple) -> list[str]:
    """The CSV columns a sequence input of (steps, features) reads at each step: the train section's
    `columns`, or its `target` alone."""
    if spec.target is None:
        raise NndError(f"{path}: a sequence model forecasts one column; name it with `target = COLUMN` "
                       "in the train section")
    features = dims[1]
    columns = list(spec.columns) if spec.columns else [spec.target]
    if len(columns) != features:
        raise NndError(f"the model's input has {features} features per step but the train section reads "
                       f"{len(columns)} column{'s' if len(columns) != 1 else ''} ({', '.join(map(str, columns))})")
    return columns


def _saved(run_dir: Path | None, name: str) -> Path | None:
    """A file a training run saved for preparing data, when `run_dir` has it."""
    return run_dir / name if run_dir is not None and (run_dir / name).is_file() else None


def _text(path: Path, input_type: TensorType, output_type: TensorType, run_dir: Path | None) -> Dataset:
    if input_type.rank != 2 or input_type.dtype not in ("i32", "i64"):
        raise NndError(f"{path} is text: the model's input must be character ids, such as "
                       f"`input chars: int32[100]`, not {input_type}")
    steps = int(input_type.shape[1])
    targets = "all" if output_type.rank == 3 else "last"
    x, y, vocabulary = load_text_windows(path, steps, step=max(1, steps // 4) if targets == "all" else 1,
                                         vocabulary=_saved(run_dir, VOCABULARY_FILE), targets=targets)
    classes = int(output_type.shape[-1])
    if vocabulary.size > classes:
        raise NndError(f"{path} has {vocabulary.size - 1} distinct characters ({vocabulary.size} ids with "
                       f"padding), more than the model's {classes} output classes; raise the embedding's "
                       f"input_dim and the output layer's units to at least {vocabulary.size}")
    cut = len(x) - max(1, int(len(x) * TEXT_VALIDATION))
    return Dataset(x[:cut], y[:cut], x[cut:], y[cut:], {VOCABULARY_FILE: vocabulary.save})


def _moving(dims: tuple, spec: TrainSpec, data_dir: str | None) -> Dataset:
    if len(dims) != 4 or dims[1] != dims[2] or dims[3] != 1:
        raise NndError("moving_fashion_mnist gives clips of shape (frames, canvas, canvas, 1); "
                       f"the model's input is {dims}")
    frames, canvas = int(dims[0]), int(dims[1])
    x_train, y_train, x_test, y_test = load_moving_fashion_mnist(MOVING_TRAIN, MOVING_TEST, frames=frames,
                                                                 canvas=canvas, seed=spec.seed, data_dir=data_dir)
    return Dataset(x_train, y_train, x_test, y_test)


@dataclass
class PredictionInputs:
    """Inputs for `nnd predict`, and how to bring the model's outputs back to the data's units."""

    x: np.ndarray
    noun: str = "predictions"  # what one output row is, for the report
    to_units: Callable[[np.ndarray], np.ndarray] = lambda outputs: outputs
    forecasts: bool = False  # windows over a series: the last output looks past its end
    notes: list[str] = field(default_factory=list)  # how the inputs were prepared


def load_prediction_inputs(path: Path, spec: TrainSpec, input_type: TensorType,
                           run_dir: Path | None) -> PredictionInputs:
    """The inputs in `path` (.npz/.npy arrays, or a CSV prepared as training prepared its data) for a
    model with one input of `input_type`."""
    if not path.is_file():
        raise NndError(f"--input {path}: no such file")
    dims = tuple(input_type.shape[1:])
    suffix = path.suffix.lower()
    if suffix in TEXT_SUFFIXES:
        raise NndError(f"--input {path}: to continue a text with a character model, use `nnd generate`")
    if suffix not in (".npy", ".npz", ".csv"):
        raise NndError(f"--input {path}: predict reads a .npy, .npz or .csv file"
                       + (f", not {suffix}" if suffix else ""))
    if suffix != ".csv":
        x = load_arrays(path, inputs_only=True)["x"]
        notes = [f"{path.name}: uint8 images scaled to [0, 1] (divided by 255)"] if _byte_images(x, input_type) else []
        return PredictionInputs(_as_input(x, input_type), notes=notes)
    if len(dims) != 2:
        features, label_notes = _csv_features(path, spec.target, int(np.prod(dims)),
                                              _saved(run_dir, LABEL_COLUMN_FILE))
        pixels, _, notes = _csv_pixels(_table_rows(features, dims), path, _saved(run_dir, PIXELS_FILE))
        return PredictionInputs(pixels, notes=label_notes + notes)
    saved = _saved(run_dir, STATS_FILE)
    if saved is None:
        raise NndError(f"--input {path}: a sequence model reads its CSV standardized with the statistics its "
                       f"training saved ({STATS_FILE}); give --weights the run directory that holds them")
    # horizon 0: windows up to the last row, so the last output forecasts past the end of the file
    x, _, stats = load_time_series_csv(path, series_columns(path, spec, dims), spec.target, window=int(dims[0]),
                                       horizon=0, stats=saved)
    return PredictionInputs(x, f"forecasts of {stats.target}", stats.inverse_target, forecasts=True)


def _table_rows(x: np.ndarray, dims: tuple) -> np.ndarray:
    """A table's rows as inputs: a row of h*w*c values is an image of the input's shape (the flattened
    images of a CSV such as Kaggle's MNIST), in row-major order."""
    if len(dims) > 1 and x.ndim == 2 and x.shape[1] == int(np.prod(dims)):
        return x.reshape((len(x), *dims))
    return fit_to_input(x, dims)


# Header names that mark a table's label column when the train section names no `target`.
LABEL_COLUMNS = ("label", "labels", "target", "class", "y")


def table_target(path: Path, target: str | None, saved: Path | None = None) -> tuple[int, int]:
    """The column of a table CSV that holds the labels, and the table's width: the train section's `target`,
    else a column named like one (`label` first in Kaggle's MNIST files); in a file without a header, the
    column a run's training read (`saved`, its label_column.json); else the last column."""
    names = csv_header(path)
    width = len(names)
    if target is not None:
        return column_index(target, "target", path, names if looks_like_header(names) else None, width), width
    if looks_like_header(names):
        labelled = [i for i, name in enumerate(names) if name.lower() in LABEL_COLUMNS]
        return (labelled[0] if len(labelled) == 1 else width - 1), width
    if saved is not None:
        return _read_label_column(saved, path, width), width
    return width - 1, width


def _label_column_writer(index: int, width: int):
    def write(path: Path) -> None:
        text = json.dumps({"label_column": index, "columns": width})
        atomic_write(path, lambda f: f.write(text.encode("utf-8")), "label column")
    return write


def _read_label_column(saved: Path, path: Path, width: int) -> int:
    try:
        record = json.loads(saved.read_text(encoding="utf-8"))
        index, columns = record["label_column"], record["columns"]
    except (OSError, ValueError, KeyError, TypeError) as err:
        raise NndError(f"cannot read {saved}: {err}") from None
    if not isinstance(index, int) or not isinstance(columns, int) or not 0 <= index < columns:
        raise NndError(f"{saved}: label_column must be a column index below columns, got {index!r} of {columns!r}")
    if columns != width:
        raise NndError(f"{path} has {width} columns and no header, but the training table had {columns} with its "
                       f"labels in column {index}; give the file a header row naming its columns")
    return index


def _csv_pixels(x: np.ndarray, path: Path, saved: Path | None) -> tuple[np.ndarray, float, list[str]]:
    """Image rows written as whole numbers from 0 to 255 (as image CSVs store bytes) scaled to [0, 1], as
    uint8 images are, with the scale and a note; other values as they are. A run directory's saved
    decision (`saved`) holds for every file that run's model reads, whatever the file's own values."""
    if saved is not None:
        scale = _read_pixel_scale(saved)
    elif x.ndim == 4 and x.size and 1 < x.max() <= 255 and x.min() >= 0 and np.all(x == np.round(x)):
        scale = 1 / 255
    else:
        scale = 1.0
    if scale == 1.0:
        return x, scale, []
    return x * np.float32(scale), scale, [f"{path.name}: pixel values 0-255 scaled to [0, 1] (divided by 255)"]


def _pixel_scale_writer(scale: float):
    def write(path: Path) -> None:
        atomic_write(path, lambda f: f.write(json.dumps({"pixel_scale": scale}).encode("utf-8")), "pixel scale")
    return write


def _read_pixel_scale(path: Path) -> float:
    try:
        scale = json.loads(path.read_text(encoding="utf-8"))["pixel_scale"]
    except (OSError, ValueError, KeyError, TypeError) as err:
        raise NndError(f"cannot read {path}: {err}") from None
    if not isinstance(scale, (int, float)) or not scale > 0:
        raise NndError(f"{path}: pixel_scale must be a positive number, got {scale!r}")
    return float(scale)


def _csv_features(path: Path, target: str | None, features: int, saved: Path | None
                  ) -> tuple[np.ndarray, list[str]]:
    """A table's feature columns, with a note on the label column left out: every column, or all but the
    label column when the file also has it (found as training finds it: see `table_target`)."""
    header = csv_header(path)
    width = len(header)
    if width == features:
        return load_csv(path)[0], []
    if width != features + 1:
        raise NndError(f"--input {path} has {width} columns; the model reads {features} features per sample "
                       f"(and training read a target column beside them)")
    label, _ = table_target(path, target, saved)
    notes = [] if looks_like_header(header) else [f"{path.name}: column {label} left out as the labels"]
    return load_csv(path, target=label)[0], notes


def _byte_images(x: np.ndarray | None, input_type: TensorType) -> bool:
    return x is not None and x.dtype == np.uint8 and input_type.dtype in FLOAT_DTYPES


def _as_input(x: np.ndarray | None, input_type: TensorType) -> np.ndarray | None:
    """`x` shaped for the input (`fit_to_input`); uint8 images feeding a float input scaled to [0, 1], as
    the named datasets are and as every Keras example does by hand."""
    if x is None:
        return None
    if _byte_images(x, input_type):
        x = x.astype(np.float32)
        x *= np.float32(1.0 / 255.0)
    return fit_to_input(x, tuple(input_type.shape[1:]))


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
