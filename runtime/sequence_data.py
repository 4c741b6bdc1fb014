"""Sequence data: sliding windows over time-series CSV files, character-level text for language models,
padding and masking of variable-length sequences, and a moving Fashion-MNIST video dataset.

Every mistake ends in an NndError naming the file, line, column or array involved.

Time series are never shuffled: windows keep the order of the rows, and `chronological_split` takes the
last windows for validation. Standardization statistics come from the training windows only and are kept
in a `SeriesStats` that can be saved into a run directory (`save_stats`) and loaded again (`load_stats`) to
prepare new data for a trained model and to map its predictions back to the original units.
"""
from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from nnd.compiler.diagnostics import NndError
from nnd.runtime.datasets import (_rng, cell_place, check_row_width, column_index, load_named, read_csv_rows,
                                  train_validation_split)

__all__ = ["load_time_series_csv", "chronological_split", "SeriesStats", "save_stats", "load_stats",
           "STATS_FILE", "CharVocabulary", "load_text_windows", "pad_sequences", "mask_from_padding",
           "stack_sequences", "moving_images", "load_moving_fashion_mnist"]


def _positive_int(value: Any, what: str) -> int:
    if not isinstance(value, (int, np.integer)) or isinstance(value, bool) or value < 1:
        raise NndError(f"{what} must be a positive integer, got {value!r}")
    return int(value)


def _non_negative_int(value: Any, what: str) -> int:
    if not isinstance(value, (int, np.integer)) or isinstance(value, bool) or value < 0:
        raise NndError(f"{what} must be a non-negative integer, got {value!r}")
    return int(value)


def _n_windows(length: int, size: int, stride: int) -> int:
    """How many windows of `size` items, starting every `stride` items, fit in `length` items."""
    return 0 if length < size else (length - size) // stride + 1


# ============================================================================================ time series

STATS_FILE = "series_stats.json"
_STATS_FORMAT = "nnd-series-stats"


@dataclass
class SeriesStats:
    """Per-feature mean and standard deviation (population, ddof=0) of a time series' training part, and
    the same for the target column, so new data can be prepared exactly like the training data.

    A constant column has std 0; it is divided by 1 instead, so it becomes all zeros.
    """

    columns: list[str]
    mean: np.ndarray
    std: np.ndarray
    target: str
    target_mean: float
    target_std: float
    rows: int = 0
    window: int = 0
    horizon: int = 0

    def __post_init__(self) -> None:
        self.columns = [str(c) for c in self.columns]
        self.mean = np.asarray(self.mean, dtype=np.float64).reshape(-1)
        self.std = np.asarray(self.std, dtype=np.float64).reshape(-1)
        if not (len(self.columns) == len(self.mean) == len(self.std)):
            raise NndError(f"series statistics are inconsistent: {len(self.columns)} columns, "
                           f"{len(self.mean)} means and {len(self.std)} standard deviations")
        self.target_mean = float(self.target_mean)
        self.target_std = float(self.target_std)

    @property
    def features(self) -> int:
        return len(self.columns)

    def _scale(self) -> np.ndarray:
        return np.where(self.std > 0, self.std, 1.0)

    def _target_scale(self) -> float:
        return self.target_std if self.target_std > 0 else 1.0

    def transform(self, x: Any) -> np.ndarray:
        """Standardize inputs of shape (..., features) with the stored statistics; returns float32."""
        x = np.asarray(x, dtype=np.float64)
        if x.ndim == 0 or x.shape[-1] != self.features:
            raise NndError(f"cannot standardize an array of shape {x.shape}: the statistics are for "
                           f"{self.features} features ({', '.join(self.columns)}), so the last axis must have "
                           f"{self.features}")
        return ((x - self.mean) / self._scale()).astype(np.float32)

    def inverse_transform(self, x: Any) -> np.ndarray:
        x = np.asarray(x, dtype=np.float64)
        if x.ndim == 0 or x.shape[-1] != self.features:
            raise NndError(f"cannot un-standardize an array of shape {x.shape}: the last axis must have "
                           f"{self.features} features")
        return (x * self._scale() + self.mean).astype(np.float32)

    def transform_target(self, y: Any) -> np.ndarray:
        """Standardize target values (any shape) with the target column's statistics."""
        return ((np.asarray(y, dtype=np.float64) - self.target_mean) / self._target_scale()).astype(np.float32)

    def inverse_target(self, y: Any) -> np.ndarray:
        """Map standardized predictions back to the target column's original units."""
        return (np.asarray(y, dtype=np.float64) * self._target_scale() + self.target_mean).astype(np.float32)

    def to_dict(self) -> dict[str, Any]:
        return {"format": _STATS_FORMAT, "version": 1, "columns": list(self.columns),
                "mean": [float(v) for v in self.mean], "std": [float(v) for v in self.std],
                "target": self.target, "target_mean": self.target_mean, "target_std": self.target_std,
                "rows": int(self.rows), "window": int(self.window), "horizon": int(self.horizon)}

    @classmethod
    def from_dict(cls, data: Any, where: str = "series statistics") -> "SeriesStats":
        if not isinstance(data, dict) or data.get("format") != _STATS_FORMAT:
            raise NndError(f"{where} is not an nnd series-statistics file (expected \"format\": "
                           f"\"{_STATS_FORMAT}\")")
        missing = [k for k in ("columns", "mean", "std", "target", "target_mean", "target_std") if k not in data]
        if missing:
            raise NndError(f"{where} lacks the field(s) {', '.join(missing)}")
        try:
            return cls(columns=list(data["columns"]), mean=data["mean"], std=data["std"], target=data["target"],
                       target_mean=data["target_mean"], target_std=data["target_std"],
                       rows=int(data.get("rows", 0)), window=int(data.get("window", 0)),
                       horizon=int(data.get("horizon", 0)))
        except (TypeError, ValueError) as e:
            raise NndError(f"{where} holds malformed values: {e}") from None

    def save(self, run_dir: str | os.PathLike) -> Path:
        return save_stats(self, run_dir)

    @classmethod
    def load(cls, run_dir: str | os.PathLike) -> "SeriesStats":
        return load_stats(run_dir)


def _stats_path(location: str | os.PathLike) -> Path:
    p = Path(location)
    return p if p.suffix.lower() == ".json" else p / STATS_FILE


def save_stats(stats: SeriesStats, run_dir: str | os.PathLike) -> Path:
    """Write `stats` as JSON to RUN_DIR/series_stats.json (or to the path itself when it ends in .json)."""
    if not isinstance(stats, SeriesStats):
        raise NndError(f"save_stats needs a SeriesStats, got {type(stats).__name__}")
    path = _stats_path(run_dir)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.name + ".part")
        tmp.write_text(json.dumps(stats.to_dict(), indent=2) + "\n", encoding="utf-8")
        os.replace(tmp, path)
    except OSError as e:
        raise NndError(f"cannot write series statistics to {path}: {e.strerror or e}") from None
    return path


def load_stats(run_dir: str | os.PathLike) -> SeriesStats:
    """Read the statistics `save_stats` wrote into RUN_DIR (or a .json path)."""
    path = _stats_path(run_dir)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise NndError(f"no series statistics found: {path} does not exist (they are written by save_stats "
                       f"after loading with standardize=True)") from None
    except (OSError, UnicodeDecodeError) as e:
        raise NndError(f"cannot read series statistics {path}: {e}") from None
    try:
        data = json.loads(text)
    except json.JSONDecodeError as e:
        raise NndError(f"{path} is not valid JSON (line {e.lineno}, column {e.colno}: {e.msg})") from None
    return SeriesStats.from_dict(data, str(path))


def _read_columns(path: Path, columns: Sequence[str | int] | None, target: str | int, header: bool | str
                  ) -> tuple[list[str], str, np.ndarray, np.ndarray]:
    """Parse only the needed columns of a numeric CSV: (input column names, target column name,
    input values float64 (rows, features), target values float64 (rows,)). Without a header row the
    names are "column I", I the index (from 0) that `columns` and `target` take."""
    rows, has_header = read_csv_rows(path, header, "load_time_series_csv")
    width = len(rows[0][1])
    names = [c.strip() for c in rows[0][1]] if has_header else None
    display = names if names is not None else [f"column {i}" for i in range(width)]
    body = rows[1:] if has_header else rows

    def resolve(ref: Any, role: str) -> int:
        return column_index(ref, role, path, names, width)

    t_col = resolve(target, "target")
    f_cols = list(range(width)) if columns is None else _input_columns(columns, resolve, display)
    if not body:
        raise NndError(f"CSV file {path} has a header but no data rows")
    values = np.empty((len(body), width), dtype=np.float64)
    needed = sorted(set(f_cols) | {t_col})
    for r, (line, cells) in enumerate(body):
        check_row_width(path, line, cells, width, has_header)
        for c in needed:
            hint = " (choose numeric input columns with columns=[...])" if columns is None and c != t_col else ""
            values[r, c] = _number(cells[c], cell_place(path, line, c, names), hint)
    return [display[c] for c in f_cols], display[t_col], values[:, f_cols], values[:, t_col]


def _input_columns(columns: Any, resolve, display: list[str]) -> list[int]:
    """The indices of the input columns the caller listed, each at most once."""
    if isinstance(columns, np.ndarray) and columns.ndim == 1:
        columns = columns.tolist()
    if isinstance(columns, (str, int)) or not isinstance(columns, Sequence):
        raise NndError(f"columns must be a list of column names or indices (or None for all), got {columns!r}")
    if len(columns) == 0:
        raise NndError("columns is empty; name at least one input column (or pass None for all columns)")
    indices = [resolve(c, "input") for c in columns]
    seen: dict[int, Any] = {}
    for ref, c in zip(columns, indices):
        if c in seen:
            raise NndError(f"input column {display[c]!r} is listed twice in columns ({seen[c]!r} and {ref!r})")
        seen[c] = ref
    return indices


def _number(cell: str, where: str, hint: str) -> float:
    """A cell's finite number, or an error saying where the cell is and what it holds."""
    try:
        value = float(cell)
    except ValueError:
        what = "an empty value" if not cell.strip() else f"'{cell.strip()}', which is not a number"
        raise NndError(f"{where}: {what}{hint}") from None
    if not math.isfinite(value):
        raise NndError(f"{where}: '{cell.strip()}' is not a finite number; fill or drop missing values before "
                       "windowing")
    return value


def load_time_series_csv(path: str | os.PathLike, columns: Sequence[str | int] | None, target: str | int,
                         window: int, horizon: int = 1, stride: int = 1, header: bool | str = "auto", *,
                         standardize: bool = False, validation_fraction: float | None = None,
                         stats: SeriesStats | str | os.PathLike | None = None):
    """Sliding windows over the rows of a numeric CSV, in file order.

    Window i holds rows [i*stride, i*stride + window) of the input `columns` (names or indices; None = every
    column, the target included) as x[i] of shape (window, features); y[i] holds the target column's next
    `horizon` values, rows [i*stride + window, i*stride + window + horizon). Returns float32
    x (n, window, features) and y (n, horizon) — (n, 1) for the default horizon of 1. horizon=0 gives windows
    without targets (y of shape (n, 0)) up to the last row, e.g. to forecast from the latest `window` rows.

    standardize=True also returns a SeriesStats: the mean/std of each input column and of the target, taken
    over the rows that the training windows read (inputs and targets) — the first windows that
    `chronological_split(x, y, validation_fraction)` keeps for training, or all windows when
    validation_fraction is None. x and y are returned standardized. Passing `stats` (a SeriesStats, or a run
    directory / .json file written by save_stats) applies saved statistics instead of computing new ones,
    for data a trained model is to predict on; `stats.inverse_target(pred)` gives predictions in the
    original units. With standardize or stats the result is (x, y, stats), otherwise (x, y).
    """
    path = Path(path)
    window = _positive_int(window, "window")
    horizon = _non_negative_int(horizon, "horizon")
    stride = _positive_int(stride, "stride")
    _check_statistics_options(standardize, validation_fraction, stats)
    names, tname, feats, tgt = _read_columns(path, columns, target, header)
    rows = len(tgt)
    need = window + horizon
    n = _n_windows(rows, need, stride)
    if n == 0:
        raise NndError(f"{path} has {rows} data row{'s' if rows != 1 else ''}, too few for one window: "
                       f"window={window} + horizon={horizon} needs at least {need} rows")
    starts = np.arange(n) * stride
    x_idx = starts[:, None] + np.arange(window)[None, :]
    y_idx = starts[:, None] + window + np.arange(horizon)[None, :]

    if isinstance(stats, (str, os.PathLike)):
        stats = load_stats(stats)
    if stats is not None:
        _check_saved_statistics(stats, path, names, tname)
    elif standardize:
        n_train = n - _validation_windows(n, validation_fraction)
        end = int(starts[n_train - 1]) + need
        stats = SeriesStats(columns=names, mean=feats[:end].mean(axis=0), std=feats[:end].std(axis=0),
                            target=tname, target_mean=float(tgt[:end].mean()), target_std=float(tgt[:end].std()),
                            rows=end, window=window, horizon=horizon)
    if stats is None:
        return feats.astype(np.float32)[x_idx], tgt.astype(np.float32)[y_idx]
    return stats.transform(feats)[x_idx], stats.transform_target(tgt)[y_idx], stats


def _check_statistics_options(standardize: bool, validation_fraction: float | None, stats: Any) -> None:
    if stats is not None and standardize:
        raise NndError("pass either standardize=True (compute new statistics) or stats= (apply saved ones), "
                       "not both")
    if validation_fraction is None:
        return
    if not standardize:
        raise NndError("validation_fraction only chooses the rows standardization statistics come from; it "
                       "needs standardize=True (split the windows with chronological_split)")
    if (not isinstance(validation_fraction, (int, float)) or isinstance(validation_fraction, bool)
            or not 0.0 < validation_fraction < 1.0):
        raise NndError(f"validation fraction must be a number strictly between 0 and 1, got {validation_fraction!r}")


def _check_saved_statistics(stats: Any, path: Path, names: list[str], target: str) -> None:
    if not isinstance(stats, SeriesStats):
        raise NndError(f"stats must be a SeriesStats or the directory it was saved in, got {type(stats).__name__}")
    if list(stats.columns) != names or stats.target != target:
        raise NndError(f"the statistics were computed for input columns [{', '.join(stats.columns)}] with "
                       f"target '{stats.target}', but {path} is being loaded with input columns "
                       f"[{', '.join(names)}] and target '{target}'")


def _validation_windows(n: int, fraction: float | None) -> int:
    """How many of the n windows the validation part takes (none without a fraction)."""
    if fraction is None:
        return 0
    n_val = int(round(n * fraction))
    if n_val < 1 or n_val >= n:
        raise NndError(f"validation fraction {fraction} of {n} windows leaves {n_val} for validation and "
                       f"{n - n_val} for training; both need at least one")
    return n_val


def chronological_split(x: np.ndarray, y: np.ndarray | None, fraction: float):
    """Split windows in time order: the last `fraction` of them (rounded) for validation.

    Returns (x_train, y_train, x_val, y_val); nothing is shuffled, so validation data lies after the
    training data, as it would when the model forecasts.
    """
    return train_validation_split(x, y, fraction, seed=None)


# ============================================================================================ character text

_VOCAB_FORMAT = "nnd-char-vocabulary"


class CharVocabulary:
    """Characters <-> integer ids for character-level models.

    Built from a text, the vocabulary holds its sorted unique characters with ids 1..len(chars); id 0 is
    reserved for padding and for characters the vocabulary does not know. `size` (= len(chars) + 1) is
    the number of ids, i.e. the width of an embedding or of the softmax over next characters.
    """

    PAD = 0

    def __init__(self, chars: Sequence[str] | str):
        chars = list(chars)
        for i, ch in enumerate(chars):
            if not isinstance(ch, str) or len(ch) != 1:
                raise NndError(f"vocabulary entry {i} is {ch!r}; every entry must be a single character")
        if len(set(chars)) != len(chars):
            dup = next(ch for i, ch in enumerate(chars) if ch in chars[:i])
            raise NndError(f"vocabulary lists the character {dup!r} more than once")
        self.chars: list[str] = chars
        self._index = {ch: i + 1 for i, ch in enumerate(chars)}
        self._table = np.array(chars, dtype="<U1") if chars else np.zeros(0, dtype="<U1")

    @classmethod
    def from_text(cls, text: str) -> "CharVocabulary":
        if not isinstance(text, str):
            raise NndError(f"a vocabulary is built from a str, got {type(text).__name__}")
        return cls(sorted(set(text)))

    @property
    def size(self) -> int:
        return len(self.chars) + 1

    def __len__(self) -> int:
        return self.size

    def __contains__(self, ch: object) -> bool:
        return ch in self._index

    def __eq__(self, other: object) -> bool:
        return isinstance(other, CharVocabulary) and other.chars == self.chars

    def __repr__(self) -> str:
        return f"CharVocabulary({len(self.chars)} characters, size {self.size})"

    def encode(self, text: str, strict: bool = False) -> np.ndarray:
        """The ids of `text` as int64 (len(text),). Unknown characters become 0, or raise with strict=True."""
        if not isinstance(text, str):
            raise NndError(f"encode needs a str, got {type(text).__name__}")
        get = self._index.get
        ids = np.fromiter((get(ch, 0) for ch in text), dtype=np.int64, count=len(text))
        if strict and len(ids) and not ids.all():
            pos = int(np.argmin(ids))
            unknown = sorted({ch for ch in text if ch not in self._index})
            raise NndError(f"character {text[pos]!r} at position {pos} is not in the vocabulary"
                           + (f" ({len(unknown)} unknown characters: {''.join(unknown)!r})" if len(unknown) > 1
                              else ""))
        return ids

    def missing(self, text: str) -> list[str]:
        """The characters of `text` the vocabulary lacks, each once, in the order they first appear."""
        return list(dict.fromkeys(ch for ch in text if ch not in self._index))

    def decode(self, ids: Any, unknown: str = "") -> str:
        """The text of a 1-D id sequence; id 0 (padding/unknown) becomes `unknown` ("" drops it)."""
        arr = np.asarray(ids)
        if arr.ndim != 1:
            raise NndError(f"decode needs a 1-D sequence of ids, got shape {arr.shape} (decode rows one by one)")
        if arr.size == 0:
            return ""
        if arr.dtype.kind == "f":
            if not np.all(arr == np.round(arr)):
                raise NndError(f"decode needs integer ids, got {arr.dtype} values such as "
                               f"{arr[np.argmax(arr != np.round(arr))]}")
        elif arr.dtype.kind not in "iu":
            raise NndError(f"decode needs integer ids, got dtype {arr.dtype}")
        arr = arr.astype(np.int64)
        bad = (arr < 0) | (arr >= self.size)
        if bad.any():
            i = int(np.argmax(bad))
            raise NndError(f"id {arr[i]} at position {i} is outside the vocabulary (ids 0..{self.size - 1})")
        table = np.concatenate([np.array([unknown], dtype=object), self._table.astype(object)])
        return "".join(table[arr])

    def to_dict(self) -> dict[str, Any]:
        return {"format": _VOCAB_FORMAT, "version": 1, "padding_id": 0, "chars": list(self.chars)}

    def save(self, path: str | os.PathLike) -> Path:
        path = Path(path)
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(json.dumps(self.to_dict(), ensure_ascii=True) + "\n", encoding="utf-8")
        except OSError as e:
            raise NndError(f"cannot write vocabulary {path}: {e.strerror or e}") from None
        return path

    @classmethod
    def load(cls, path: str | os.PathLike) -> "CharVocabulary":
        path = Path(path)
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise NndError(f"vocabulary file not found: {path}") from None
        except json.JSONDecodeError as e:
            raise NndError(f"{path} is not valid JSON (line {e.lineno}, column {e.colno}: {e.msg})") from None
        except (OSError, UnicodeDecodeError) as e:
            raise NndError(f"cannot read vocabulary {path}: {e}") from None
        if not isinstance(data, dict) or data.get("format") != _VOCAB_FORMAT or not isinstance(data.get("chars"), list):
            raise NndError(f"{path} is not an nnd character vocabulary (expected \"format\": \"{_VOCAB_FORMAT}\" "
                           f"and a \"chars\" list)")
        if not data["chars"]:  # only padding: a model could never be fed or predict a character
            raise NndError(f"{path}: the vocabulary is empty (its \"chars\" list holds no character)")
        try:
            return cls(data["chars"])
        except NndError as e:  # its message, not its rendering, which starts with "error: " already
            raise NndError(f"{path}: {e.diagnostics[0].message}") from None


def _read_text(path: Path) -> str:
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise NndError(f"text file not found: {path}") from None
    except OSError as e:
        raise NndError(f"cannot read {path}: {e.strerror or e}") from None
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        line = data.count(b"\n", 0, e.start) + 1
        raise NndError(f"{path} is not UTF-8 text: byte 0x{data[e.start]:02X} at offset {e.start} (line {line}) "
                       f"cannot be decoded ({e.reason}); convert the file to UTF-8, e.g. with "
                       f"iconv -f latin1 -t utf-8") from None
    # Universal newlines, as Python's text mode reads them.
    return text.replace("\r\n", "\n").replace("\r", "\n")


def load_text_windows(path: str | os.PathLike, seq_len: int, step: int = 1,
                      vocabulary: CharVocabulary | str | os.PathLike | None = None, targets: str = "last"
                      ) -> tuple[np.ndarray, np.ndarray, CharVocabulary]:
    """Character windows of a UTF-8 text file for a language model.

    x[i] = ids of characters [i*step, i*step + seq_len), int64 (n, seq_len). With targets="last", y[i] is
    the id of the character that follows the window, int64 (n,); with targets="all", y[i] is the next
    character at every position (x shifted by one), int64 (n, seq_len). The vocabulary is built from the
    file unless one is given (a CharVocabulary or a path it was saved to); characters it lacks become id 0.
    Line endings are read as "\\n" and a UTF-8 byte-order mark is dropped.
    """
    path = Path(path)
    seq_len = _positive_int(seq_len, "seq_len")
    step = _positive_int(step, "step")
    if targets not in ("last", "all"):
        raise NndError(f"targets must be 'last' (the next character after each window) or 'all' (the next "
                       f"character at every position), got {targets!r}")
    if isinstance(vocabulary, (str, os.PathLike)):
        vocabulary = CharVocabulary.load(vocabulary)
    elif vocabulary is not None and not isinstance(vocabulary, CharVocabulary):
        raise NndError(f"vocabulary must be a CharVocabulary or the path of a saved one, got "
                       f"{type(vocabulary).__name__}")
    text = _read_text(path)
    if not text:
        raise NndError(f"text file {path} is empty; a language model needs text to learn from")
    if len(text) < seq_len + 1:
        raise NndError(f"text file {path} has {len(text)} character{'s' if len(text) != 1 else ''}, but "
                       f"seq_len={seq_len} needs at least {seq_len + 1} (one window and the character after it)")
    if vocabulary is None:
        vocabulary = CharVocabulary.from_text(text)
    ids = vocabulary.encode(text)
    n = _n_windows(len(ids), seq_len + 1, step)
    windows = np.lib.stride_tricks.sliding_window_view(ids, seq_len + 1)[::step][:n]
    x = np.ascontiguousarray(windows[:, :-1])
    y = np.ascontiguousarray(windows[:, -1] if targets == "last" else windows[:, 1:])
    return x, y, vocabulary


# ============================================================================================ padding

def _as_sequence(seq: Any, i: int, dtype: np.dtype | None) -> np.ndarray:
    if isinstance(seq, (str, bytes)) or np.isscalar(seq) or seq is None:
        raise NndError(f"sequence {i} is not a sequence of values: got {type(seq).__name__} {seq!r}")
    try:
        arr = np.asarray(seq)
    except ValueError as e:
        raise NndError(f"sequence {i} is ragged inside (its steps have different shapes): {e}") from None
    if arr.ndim == 0:
        raise NndError(f"sequence {i} is not a sequence of values: got {type(seq).__name__} {seq!r}")
    if arr.size and arr.dtype.kind not in "biuf":
        raise NndError(f"sequence {i} holds {arr.dtype} values; sequences must be numeric")
    if dtype is not None and arr.size and dtype.kind in "iub" and arr.dtype.kind == "f":
        frac = ~np.isfinite(arr) | (arr != np.round(arr))
        if frac.any():
            idx = tuple(int(j) for j in np.argwhere(frac)[0])
            raise NndError(f"sequence {i} has the non-integer value {arr[idx]} at {idx[0] if len(idx) == 1 else idx}"
                           f" but dtype is {dtype}; pass dtype='float32' to keep fractional values")
    return arr


def _step_shape(arrs: list[np.ndarray]) -> tuple[int, ...]:
    shape: tuple[int, ...] | None = None
    first = -1
    for i, a in enumerate(arrs):
        if len(a) == 0:
            continue
        if shape is None:
            shape, first = a.shape[1:], i
        elif a.shape[1:] != shape:
            raise NndError(f"sequence {i} has steps of shape {a.shape[1:]} but sequence {first} has steps of shape "
                           f"{shape}; every step must have the same shape")
    return shape or ()


def _sequence_list(seqs: Any, what: str) -> list:
    if isinstance(seqs, np.ndarray):
        return list(seqs) if seqs.ndim >= 1 else [seqs]
    if isinstance(seqs, (str, bytes)) or not hasattr(seqs, "__iter__"):
        raise NndError(f"{what} needs a list of sequences, got {type(seqs).__name__}")
    return list(seqs)


def pad_sequences(seqs: Any, maxlen: int | None = None, padding: str = "pre", truncating: str = "pre",
                  value: float = 0, dtype: Any = np.int64) -> np.ndarray:
    """Pad (and truncate) sequences to one length, with Keras' semantics and defaults.

    Returns (n, maxlen, *step_shape); maxlen defaults to the longest sequence. padding="pre" puts the
    `value` steps before a shorter sequence, "post" after it; truncating="pre" drops the first steps of a
    longer one (keeping its end), "post" drops its last steps. Empty sequences become all padding.
    """
    if padding not in ("pre", "post"):
        raise NndError(f"padding must be 'pre' or 'post', got {padding!r}")
    if truncating not in ("pre", "post"):
        raise NndError(f"truncating must be 'pre' or 'post', got {truncating!r}")
    if maxlen is not None:
        maxlen = _positive_int(maxlen, "maxlen")
    try:
        dt = np.dtype(dtype)
    except TypeError:
        raise NndError(f"dtype {dtype!r} is not a numpy dtype") from None
    if dt.kind not in "biuf":
        raise NndError(f"pad_sequences: dtype must be numeric, got {dt}")
    items = _sequence_list(seqs, "pad_sequences")
    arrs = [_as_sequence(s, i, dt) for i, s in enumerate(items)]
    step = _step_shape(arrs)
    if maxlen is None:
        maxlen = max((len(a) for a in arrs), default=0)
    if not isinstance(value, (int, float, np.integer, np.floating)) or isinstance(value, bool):
        raise NndError(f"padding value must be a number, got {value!r}")
    if dt.kind in "iub" and (not np.isfinite(value) or value != round(value)):
        raise NndError(f"padding value {value!r} does not fit dtype {dt}")
    out = np.full((len(arrs), maxlen) + step, value, dtype=dt)
    for i, a in enumerate(arrs):
        if len(a) == 0:
            continue
        a = a[-maxlen:] if truncating == "pre" else a[:maxlen]
        if padding == "post":
            out[i, :len(a)] = a
        else:
            out[i, maxlen - len(a):] = a
    return out


def mask_from_padding(x: Any, value: float = 0) -> np.ndarray:
    """float32 (n, T): 1 for real steps, 0 for padding steps (those equal to `value`; for steps with
    features, (n, T, ...), those whose every feature equals `value`)."""
    x = np.asarray(x)
    if x.ndim < 2:
        raise NndError(f"mask_from_padding needs a padded batch of shape (n, T) or (n, T, ...), got shape {x.shape}")
    real = x != value
    if x.ndim > 2:
        real = real.reshape(x.shape[0], x.shape[1], -1).any(axis=2)
    return real.astype(np.float32)


def stack_sequences(seqs: Any, dtype: Any = None) -> np.ndarray:
    """Stack equal-length sequences into one array (n, T, *step_shape); unequal lengths are an error that
    points to pad_sequences."""
    items = _sequence_list(seqs, "stack_sequences")
    dt = None if dtype is None else np.dtype(dtype)
    arrs = [_as_sequence(s, i, dt) for i, s in enumerate(items)]
    if not arrs:
        raise NndError("stack_sequences got no sequences")
    lengths = [len(a) for a in arrs]
    if len(set(lengths)) > 1:
        shown = ", ".join(str(n) for n in lengths[:8]) + (", ..." if len(lengths) > 8 else "")
        raise NndError(f"sequences have lengths {shown}; pad them with pad_sequences (or set maxlen)"
                       + (f" ({len(lengths)} sequences, lengths {min(lengths)} to {max(lengths)})"
                          if len(lengths) > 8 else ""))
    _step_shape(arrs)
    return np.stack(arrs).astype(dt, copy=False) if dt is not None else np.stack(arrs)


# ============================================================================================ moving images

def moving_images(images: Any, labels: Any, frames: int = 8, canvas: int = 40,
                  rng: np.random.Generator | int = 0, speed: float = 2) -> tuple[np.ndarray, np.ndarray]:
    """Clips of images drifting across a blank canvas: x float32 (n, frames, canvas, canvas, 1), y int64 (n,).

    Clip i shows images[i], unscaled and unresampled, at an integer position that starts at random and moves
    by a per-clip velocity of `speed` pixels per frame in a random direction (rounded to whole pixels, at
    least one pixel along one axis), bouncing off the canvas edges: a step that reaches or would pass an edge
    stops there and reverses that velocity component, so the position changes every frame. y[i] = labels[i].
    Integer images (uint8 0..255) are scaled to [0, 1]; float images are placed as they are.
    """
    frames = _positive_int(frames, "frames")
    canvas = _positive_int(canvas, "canvas")
    if not isinstance(speed, (int, float, np.integer, np.floating)) or isinstance(speed, bool) \
            or not np.isfinite(speed) or speed < 1:
        raise NndError(f"speed must be a number of pixels per frame, at least 1, got {speed!r}")
    imgs = np.asarray(images)
    if imgs.ndim == 4 and imgs.shape[-1] == 1:
        imgs = imgs[..., 0]
    if imgs.ndim != 3:
        raise NndError(f"images must have shape (n, height, width) or (n, height, width, 1), got {imgs.shape}")
    if imgs.dtype.kind in "iub":
        imgs = imgs.astype(np.float32) * np.float32(1.0 / 255.0)
    elif imgs.dtype.kind == "f":
        imgs = imgs.astype(np.float32, copy=False)
    else:
        raise NndError(f"images must be numeric, got dtype {imgs.dtype}")
    n, h, w = imgs.shape
    if h >= canvas or w >= canvas:
        raise NndError(f"canvas {canvas} must be larger than the images ({h}x{w}) so they can move")
    lab = np.asarray(labels)
    if lab.ndim == 2 and lab.shape[1] == 1:
        lab = lab[:, 0]
    if lab.ndim != 1 or len(lab) != n:
        raise NndError(f"labels have shape {lab.shape} but {n} images {tuple(np.shape(images))} need labels of "
                       f"shape ({n},)")
    if lab.size and (lab.dtype.kind not in "iubf" or (lab.dtype.kind == "f" and np.any(lab != np.round(lab)))):
        raise NndError(f"labels must be whole-number class ids, got dtype {lab.dtype}")
    gen = _rng(rng, "moving_images")

    limit = np.array([canvas - h, canvas - w], dtype=np.int64)          # largest top-left (row, col)
    pos = np.floor(gen.random((n, 2)) * (limit + 1)).astype(np.int64)
    angle = gen.random(n) * (2 * np.pi)
    vel = np.rint(speed * np.stack([np.sin(angle), np.cos(angle)], axis=1)).astype(np.int64)
    # With speed >= 1 the larger component rounds to at least 1; guard against 0.5-ties anyway.
    still = ~vel.any(axis=1)
    vel[still, 1] = 1
    # A clip that starts on an edge moving outwards bounces at once rather than waiting a frame there.
    outward = ((pos == 0) & (vel < 0)) | ((pos == limit) & (vel > 0))
    vel[outward] = -vel[outward]

    x = np.zeros((n, frames, canvas, canvas), dtype=np.float32)
    clip = np.arange(n)[:, None, None]
    dr = np.arange(h)[None, :, None]
    dc = np.arange(w)[None, None, :]
    for t in range(frames):
        x[clip, t, pos[:, 0, None, None] + dr, pos[:, 1, None, None] + dc] = imgs
        nxt = pos + vel
        # Reverse on reaching an edge, not only on passing it, so the next step leaves the edge.
        hit = ((nxt <= 0) & (vel < 0)) | ((nxt >= limit) & (vel > 0))
        pos = np.clip(nxt, 0, limit)
        vel[hit] = -vel[hit]
    return x[..., None], lab.astype(np.int64)


def load_moving_fashion_mnist(n_train: int, n_test: int, frames: int = 8, canvas: int = 40, seed: int = 0,
                              data_dir: str | os.PathLike | None = None, *, speed: float = 2,
                              download: bool | None = None):
    """Moving Fashion-MNIST clips: (x_train, y_train, x_test, y_test) with x float32
    (n, frames, canvas, canvas, 1) and y int64 class ids. The clips use a seeded random choice of n_train
    training and n_test test images of fashion_mnist (found as `nnd.runtime.datasets.load_named` finds it).
    """
    n_train = _non_negative_int(n_train, "n_train")
    n_test = _non_negative_int(n_test, "n_test")
    if not isinstance(seed, (int, np.integer)) or isinstance(seed, bool):
        raise NndError(f"seed must be an integer, got {seed!r}")
    x_tr, y_tr, x_te, y_te = load_named("fashion_mnist", data_dir, download=download)
    rng = np.random.default_rng(int(seed))
    out = []
    for split, n, xs, ys in (("training", n_train, x_tr, y_tr), ("test", n_test, x_te, y_te)):
        if n > len(xs):
            raise NndError(f"n_{'train' if split == 'training' else 'test'}={n} but fashion_mnist has only "
                           f"{len(xs)} {split} images")
        pick = np.sort(rng.choice(len(xs), size=n, replace=False))
        out.extend(moving_images(xs[pick], ys[pick], frames=frames, canvas=canvas, rng=rng, speed=speed))
    return out[0], out[1], out[2], out[3]
