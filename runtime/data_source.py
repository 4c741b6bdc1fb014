"""Where `nnd train --data` and the train section's `data =` get their arrays: a named dataset
(fashion_mnist, mnist) or a file (.npz, .npy, .csv)."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from nnd.compiler.diagnostics import NndError
from nnd.compiler.training import NAMED_DATASETS
from nnd.runtime.datasets import load_arrays, load_csv, load_named


@dataclass
class Dataset:
    x_train: np.ndarray
    y_train: np.ndarray | None
    x_test: np.ndarray | None = None
    y_test: np.ndarray | None = None


def load_dataset(source: str | None, data_dir: str | None = None, target: str | None = None) -> Dataset:
    if source is None:
        raise NndError("no training data: give --data NAME|PATH or set `data = ...` in the train section",
                       )
    if source.replace("-", "_") in NAMED_DATASETS:
        return Dataset(*load_named(source, data_dir))
    path = Path(source)
    if path.suffix.lower() == ".csv":
        x, y = load_csv(path, target=target if target is not None else -1)
        return Dataset(x, y)
    if path.suffix.lower() in (".npz", ".npy"):
        arrays = load_arrays(path)
        if "x_train" in arrays:
            return Dataset(arrays["x_train"], arrays["y_train"], arrays.get("x_test"), arrays.get("y_test"))
        return Dataset(arrays["x"], arrays.get("y"))
    raise NndError(f"--data {source}: not a named dataset ({', '.join(NAMED_DATASETS)}) "
                   "nor a .npz, .npy or .csv file")


def fit_to_input(x: np.ndarray, input_dims: tuple, what: str = "x") -> np.ndarray:
    """Add the channel axis a channels-last model expects of grey images stored as (n, h, w)."""
    if x.ndim == len(input_dims) and input_dims[-1] == 1 and tuple(x.shape[1:]) == tuple(input_dims[:-1]):
        return x[..., None]
    return x
