"""Data loading: IDX files, the named datasets mnist and fashion_mnist, .npz/.npy/.csv files, splitting,
batching and input checks. Every mistake ends in an NndError naming the file, array and shapes involved.

Named datasets are searched, in order, in
    data_dir, $NND_DATA, ~/.cache/nnd/<name>/, /usr/share/datasets/<name>/
where data_dir and $NND_DATA may hold the four files directly or in a <name> subdirectory, and <name> is
tried in both spellings (fashion_mnist and fashion-mnist, as Debian's dataset-fashion-mnist package installs
/usr/share/datasets/fashion-mnist/). The standard file names are looked for plain or gzipped. When nothing is
found the files are downloaded into ~/.cache/nnd/<name>/ from the well-known mirrors and checked against their
published MD5 sums (the only checksums published for them), unless NND_OFFLINE is set to something other
than 0 or download=False is passed.
"""
from __future__ import annotations

import csv
import gzip
import hashlib
import itertools
import math
import os
import struct
import tempfile
import zipfile
import zlib
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np

from nnd.compiler.diagnostics import NndError, did_you_mean

__all__ = ["read_idx", "write_idx", "load_named", "search_dirs", "load_arrays", "load_csv",
           "train_validation_split", "batches", "check_inputs", "check_labels", "column_index", "cell_place",
           "check_row_width", "NAMED_DATASETS", "IDX_FILES"]

# ----------------------------------------------------------------------------------------------------- IDX

_IDX_TYPES = {0x08: np.dtype("u1"), 0x09: np.dtype("i1"), 0x0B: np.dtype(">i2"), 0x0C: np.dtype(">i4"),
              0x0D: np.dtype(">f4"), 0x0E: np.dtype(">f8")}
_IDX_CODES = {np.dtype(v).newbyteorder("=").str: k for k, v in _IDX_TYPES.items()}


def _read_maybe_gzip(path: Path) -> bytes:
    try:
        with open(path, "rb") as f:
            data = f.read()
    except FileNotFoundError:
        raise NndError(f"file not found: {path}") from None
    except OSError as e:
        raise NndError(f"cannot read {path}: {e.strerror or e}") from None
    if data[:2] == b"\x1f\x8b":
        try:
            data = gzip.decompress(data)
        except (EOFError, OSError, zlib.error) as e:
            raise NndError(f"{path} is a corrupt or truncated gzip file ({e}); delete it and fetch it again") from None
    return data


def read_idx(path: str | os.PathLike) -> np.ndarray:
    """Read an IDX file (the MNIST format), plain or gzipped; returns a native-endian array."""
    path = Path(path)
    data = _read_maybe_gzip(path)
    if len(data) < 4:
        raise NndError(f"{path} is not an IDX file: only {len(data)} bytes long")
    if data[0] != 0 or data[1] != 0 or data[2] not in _IDX_TYPES:
        magic = int.from_bytes(data[:4], "big")
        raise NndError(f"{path} is not an IDX file: bad magic number 0x{magic:08X} (expected 0x0000TTNN with a "
                       f"type code TT in 08, 09, 0B, 0C, 0D, 0E)")
    dtype, ndim = _IDX_TYPES[data[2]], data[3]
    header = 4 + 4 * ndim
    if len(data) < header:
        raise NndError(f"{path} is truncated: its header announces {ndim} dimensions but the file has only "
                       f"{len(data)} bytes")
    shape = struct.unpack(f">{ndim}I", data[4:header])
    count = math.prod(shape)
    expected = count * dtype.itemsize
    actual = len(data) - header
    if actual < expected:
        raise NndError(f"{path} is truncated: shape {tuple(shape)} needs {expected} bytes of data but only "
                       f"{actual} are present")
    if actual > expected:
        raise NndError(f"{path} is corrupt: shape {tuple(shape)} needs {expected} bytes of data but "
                       f"{actual} are present")
    arr = np.frombuffer(data, dtype=dtype, count=count, offset=header).reshape(shape)
    return arr.astype(dtype.newbyteorder("="), copy=True)


def write_idx(path: str | os.PathLike, array: np.ndarray) -> None:
    """Write `array` as an IDX file, gzipped when the name ends in .gz."""
    path = Path(path)
    array = np.asarray(array)
    code = _IDX_CODES.get(array.dtype.newbyteorder("=").str)
    if code is None:
        raise NndError(f"cannot write {path}: IDX has no type for dtype {array.dtype}")
    if array.ndim > 255:
        raise NndError(f"cannot write {path}: IDX allows at most 255 dimensions")
    head = bytes([0, 0, code, array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape)
    body = np.ascontiguousarray(array, dtype=_IDX_TYPES[code]).tobytes()
    opener = gzip.open if path.name.endswith(".gz") else open
    with opener(path, "wb") as f:
        f.write(head + body)


# ----------------------------------------------------------------------------------------- named datasets

IDX_FILES = {
    "x_train": "train-images-idx3-ubyte",
    "y_train": "train-labels-idx1-ubyte",
    "x_test": "t10k-images-idx3-ubyte",
    "y_test": "t10k-labels-idx1-ubyte",
}

# name -> directory spellings, mirrors (tried in order, file name appended) and the published MD5 of each
# gzipped file.
NAMED_DATASETS: dict[str, dict[str, Any]] = {
    "fashion_mnist": {
        "dirs": ("fashion_mnist", "fashion-mnist"),
        "mirrors": ("https://fashion-mnist.s3-website.eu-central-1.amazonaws.com/",
                    "https://raw.githubusercontent.com/zalandoresearch/fashion-mnist/master/data/fashion/"),
        "md5": {
            "train-images-idx3-ubyte.gz": "8d4fb7e6c68d591d4c3dfef9ec88bf0d",
            "train-labels-idx1-ubyte.gz": "25c81989df183df01b3e8a0aad5dffbe",
            "t10k-images-idx3-ubyte.gz": "bef4ecab320f06d8554ea6380940ec79",
            "t10k-labels-idx1-ubyte.gz": "bb300cfdad3c16e7a12a480ee83cd310",
        },
        "install": "apt-get install dataset-fashion-mnist",
    },
    "mnist": {
        "dirs": ("mnist",),
        "mirrors": ("https://ossci-datasets.s3.amazonaws.com/mnist/",
                    "https://storage.googleapis.com/cvdf-datasets/mnist/"),
        "md5": {
            "train-images-idx3-ubyte.gz": "f68b3c2dcbeaaa9fbdd348bbdeb94873",
            "train-labels-idx1-ubyte.gz": "d53e105ee54ea40749a09fcbcd1e9432",
            "t10k-images-idx3-ubyte.gz": "9fb629c4189551a2d022fa330f9573f3",
            "t10k-labels-idx1-ubyte.gz": "ec29112dd5afa0611ce80d1b7f02629c",
        },
        "install": None,
    },
}

SYSTEM_DATA_ROOT = Path("/usr/share/datasets")
Downloader = Callable[[str, Path, float], None]


def _canonical(name: str) -> str:
    key = str(name).strip().lower().replace("-", "_")
    if key not in NAMED_DATASETS:
        hint = did_you_mean(key, NAMED_DATASETS)
        raise NndError(f"unknown dataset '{name}'" + (f"; did you mean '{hint}'?" if hint else "")
                       + f" (available: {', '.join(NAMED_DATASETS)})")
    return key


def _cache_root() -> Path:
    return Path.home() / ".cache" / "nnd"


def search_dirs(name: str, data_dir: str | os.PathLike | None = None) -> list[Path]:
    """The directories `load_named` looks in, in order."""
    spellings = NAMED_DATASETS[_canonical(name)]["dirs"]
    dirs: list[Path] = []
    for base in (data_dir, os.environ.get("NND_DATA") or None):
        if base:
            base = Path(base).expanduser()
            dirs.append(base)
            dirs.extend(base / s for s in spellings)
    dirs.extend(_cache_root() / s for s in spellings)
    dirs.extend(SYSTEM_DATA_ROOT / s for s in spellings)
    seen: set[Path] = set()
    return [d for d in dirs if not (d in seen or seen.add(d))]


def _files_in(directory: Path) -> dict[str, Path]:
    found = {}
    for key, stem in IDX_FILES.items():
        for candidate in (directory / stem, directory / f"{stem}.gz"):
            if candidate.is_file():
                found[key] = candidate
                break
    return found


def _offline() -> bool:
    return os.environ.get("NND_OFFLINE", "").strip() not in ("", "0")


def _urllib_download(url: str, dest: Path, timeout: float) -> None:
    import urllib.request

    with urllib.request.urlopen(url, timeout=timeout) as response, open(dest, "wb") as out:
        while True:
            chunk = response.read(1 << 20)
            if not chunk:
                break
            out.write(chunk)


def _md5(path: Path) -> str:
    h = hashlib.md5()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _download(name: str, downloader: Downloader, timeout: float) -> tuple[Path | None, list[str]]:
    """Fetch the missing files into the cache; returns (directory, []) or (None, reasons)."""
    spec = NAMED_DATASETS[name]
    target = _cache_root() / spec["dirs"][0]
    problems: list[str] = []
    try:
        target.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        return None, [f"cannot create {target}: {e.strerror or e}"]
    have = _files_in(target)
    for key, stem in IDX_FILES.items():
        if key in have:
            continue
        fname = f"{stem}.gz"
        final = target / fname
        for mirror in spec["mirrors"]:
            url = mirror + fname
            fd, tmp_name = tempfile.mkstemp(prefix=f".{fname}.", suffix=".part", dir=target)
            os.close(fd)
            tmp = Path(tmp_name)
            try:
                downloader(url, tmp, timeout)
                digest = _md5(tmp)
                if digest != spec["md5"][fname]:
                    problems.append(f"{url}: checksum mismatch (md5 {digest}, expected {spec['md5'][fname]})")
                    continue
                os.replace(tmp, final)
                break
            except Exception as e:  # network errors come in many types; each is reported, none is fatal here
                problems.append(f"{url}: {e}")
            finally:
                if tmp.exists():
                    tmp.unlink()
        else:
            return None, problems
    return target, []


def load_named(name: str, data_dir: str | os.PathLike | None = None, *, download: bool | None = None,
               downloader: Downloader | None = None, timeout: float = 15.0
               ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Load mnist or fashion_mnist as (x_train, y_train, x_test, y_test).

    x is float32 in [0, 1] with shape (n, 28, 28, 1); y is int64. `download=None` downloads unless
    NND_OFFLINE is set; `downloader(url, dest_path, timeout)` replaces the urllib fetch.
    """
    key = _canonical(name)
    searched: list[str] = []
    explicit = set(search_dirs(key, data_dir)[:1 + len(NAMED_DATASETS[key]["dirs"])]) if data_dir else set()
    for directory in search_dirs(key, data_dir):
        found = _files_in(directory)
        if len(found) == len(IDX_FILES):
            return _load_idx_set(found)
        if found:
            missing = ", ".join(IDX_FILES[k] for k in IDX_FILES if k not in found)
            searched.append(f"{directory} (incomplete: missing {missing})")
        else:
            searched.append(f"{directory}" + ("" if directory.is_dir() else " (does not exist)"))
        if directory in explicit and len(searched) == len(explicit):
            # the directory asked for by name: another copy elsewhere would pass for it unnoticed
            raise NndError(f"--data-dir {data_dir} holds no complete {key}; searched:\n  " + "\n  ".join(searched))
    if download is None:
        download = not _offline()
    if download:
        target, problems = _download(key, downloader or _urllib_download, timeout)
        if target is not None:
            return _load_idx_set(_files_in(target))
        how_download = "downloading failed:\n    " + "\n    ".join(problems)
    else:
        how_download = ("downloading is disabled (NND_OFFLINE is set)" if _offline()
                        else "downloading is disabled")
    spec = NAMED_DATASETS[key]
    ways = []
    if spec["install"]:
        ways.append(f"install the system package: {spec['install']}")
    ways.append("put the four files (" + ", ".join(f"{s}[.gz]" for s in IDX_FILES.values())
                + ") in a directory and pass --data-dir DIR or set NND_DATA=DIR")
    raise NndError(f"dataset '{key}' not found; searched:\n  " + "\n  ".join(searched)
                   + f"\n{how_download}\nto get it: " + "; or ".join(ways))


def _load_idx_set(files: dict[str, Path]) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    out = []
    for split in ("train", "test"):
        xpath, ypath = files[f"x_{split}"], files[f"y_{split}"]
        x, y = read_idx(xpath), read_idx(ypath)
        if x.ndim != 3:
            raise NndError(f"{xpath}: expected images of shape (n, rows, cols), got {x.shape}")
        if y.ndim != 1:
            raise NndError(f"{ypath}: expected labels of shape (n,), got {y.shape}")
        if x.shape[0] != y.shape[0]:
            raise NndError(f"{xpath} has {x.shape[0]} images but {ypath} has {y.shape[0]} labels")
        xf = x.astype(np.float32)
        xf *= np.float32(1.0 / 255.0)
        out += [xf.reshape(x.shape + (1,)), y.astype(np.int64)]
    return out[0], out[1], out[2], out[3]


# ---------------------------------------------------------------------------------------- array files

def load_arrays(path: str | os.PathLike, *, inputs_only: bool = False) -> dict[str, np.ndarray]:
    """Load a .npz (keys x[, y] or x_train, y_train[, x_test, y_test]) or a .npy (returned as x).

    inputs_only=True, for prediction, reads the inputs alone: x, else x_test, else x_train, returned as x.
    Pickled (object) arrays are refused.
    """
    path = Path(path)
    if not path.is_file():
        raise NndError(f"array file not found: {path}")
    suffix = path.suffix.lower()
    if suffix not in (".npy", ".npz"):
        raise NndError(f"unsupported array file {path}: expected .npz or .npy (use load_csv for .csv)")
    try:
        out = _read_arrays(path, inputs_only)
    except NndError:
        raise
    except ValueError as e:
        raise _unreadable(path, e) from None
    except (zipfile.BadZipFile, EOFError, OSError, zlib.error) as e:
        raise NndError(f"cannot read {path}: the file is corrupt or truncated ({e})") from None
    for name, array in out.items():
        _check_member(path, name, array)
    if not inputs_only:
        _check_pairs(path, out)
    return out


def _check_member(path: Path, name: str, array: object) -> None:
    """What NumPy hands back for a member that is no array (raw bytes), or an array without samples."""
    if not isinstance(array, np.ndarray):
        raise NndError(f"cannot read {path}: its member {name!r} is not a NumPy array (the file is corrupt)")
    if array.ndim == 0:
        raise NndError(f"{path}: {name!r} is a single value, not an array of samples (its first axis counts "
                       "the samples)")


def _unreadable(path: Path, error: ValueError) -> NndError:
    """Why NumPy refused a file: not one of its formats, or object arrays that only unpickling would load."""
    with open(path, "rb") as f:
        magic = f.read(6)
    if not magic.startswith((b"PK\x03\x04", b"\x93NUMPY")):  # a zip archive (.npz), a .npy header
        return NndError(f"cannot read {path}: the file is corrupt or truncated (not a {path.suffix.lower()} file)")
    if "object" in str(error).lower():
        return NndError(f"{path} holds Python objects (an object array), which nnd does not load: no pickle, as "
                        "unpickling can run code; save numeric arrays")
    return NndError(f"cannot read {path}: {error}")


def _read_arrays(path: Path, inputs_only: bool) -> dict[str, np.ndarray]:
    if path.suffix.lower() == ".npy":
        return {"x": np.load(path, allow_pickle=False)}
    with np.load(path, allow_pickle=False) as z:
        keys = list(z.files)
        if inputs_only:
            return {"x": z[_inputs_key(path, keys)]}
        if "x_train" in keys:
            wanted = ["x_train", "y_train", "x_test", "y_test"]
        elif "x" in keys:
            wanted = ["x", "y"]
        else:
            raise NndError(f"{path} holds arrays {', '.join(keys) or '(none)'}; expected keys x and y, or "
                           f"x_train, y_train, x_test, y_test")
        return {k: z[k] for k in wanted if k in keys}


def _inputs_key(path: Path, keys: list[str]) -> str:
    """The array of a .npz that prediction reads: it needs inputs alone, so no y is asked for."""
    for key in ("x", "x_test", "x_train"):
        if key in keys:
            return key
    raise NndError(f"{path} holds arrays {', '.join(keys) or '(none)'}; prediction reads its inputs from an "
                   "array named x (or x_test, or x_train), and needs no y")


def _check_pairs(path: Path, out: dict[str, np.ndarray]) -> None:
    """Each x has its y, with as many samples."""
    if "x_train" in out:
        if "y_train" not in out:
            raise NndError(f"{path} has x_train but no y_train")
        if ("x_test" in out) != ("y_test" in out):
            raise NndError(f"{path} must have both x_test and y_test, or neither")
    for xk, yk in (("x", "y"), ("x_train", "y_train"), ("x_test", "y_test")):
        if xk in out and yk in out and len(out[xk]) != len(out[yk]):
            raise NndError(f"{path}: '{xk}' has {len(out[xk])} samples {out[xk].shape} but '{yk}' has "
                           f"{len(out[yk])} {out[yk].shape}")


def csv_header(path: Path) -> list[str]:
    """The first non-blank row of a CSV file, stripped: a header or the first data row. Reads no further."""
    return [cell.strip() for cell in _nonblank_rows(path, ",", first_only=True)[0][1]]


def looks_like_header(cells: list[str]) -> bool:
    """Whether a CSV's first row names its columns: some cell is text (an empty cell is a missing value)."""
    return any(cell.strip() and not is_number(cell) for cell in cells)


def is_number(cell: str) -> bool:
    try:
        float(cell)
        return True
    except ValueError:
        return False


def _nonblank_rows(path: Path, delimiter: str, first_only: bool = False) -> list[tuple[int, list[str]]]:
    """The rows with some text in them, as (line number, cells); only the first with `first_only`."""
    try:
        with open(path, newline="", encoding="utf-8-sig") as f:
            rows = ((i, r) for i, r in enumerate(csv.reader(f, delimiter=delimiter), start=1)
                    if r and any(c.strip() for c in r))
            found = list(itertools.islice(rows, 1 if first_only else None))
    except FileNotFoundError:
        raise NndError(f"CSV file not found: {path}") from None
    except UnicodeDecodeError as e:
        raise NndError(f"cannot read CSV file {path}: it is not UTF-8 text ({e.reason} at byte {e.start})") from None
    except (OSError, csv.Error) as e:
        raise NndError(f"cannot read CSV file {path}: {e}") from None
    if not found:
        raise NndError(f"CSV file {path} is empty")
    return found


def read_csv_rows(path: Path, header: bool | str, caller: str, delimiter: str = ","
                  ) -> tuple[list[tuple[int, list[str]]], bool]:
    """The non-blank rows of a CSV file as (line number, cells), and whether the first is a header:
    header="auto" takes it for one when any of its cells is text other than a number. A UTF-8 byte-order mark is
    dropped; unreadable, non-UTF-8 and empty files are NndErrors naming the file."""
    rows = _nonblank_rows(path, delimiter)
    if header == "auto":
        return rows, looks_like_header(rows[0][1])
    if isinstance(header, bool):
        return rows, header
    raise NndError(f"{caller}: header must be 'auto', true or false, got {header!r}")


def column_index(ref: Any, role: str, path: Path, names: list[str] | None, width: int) -> int:
    """The index of the column `ref` (a header name or an index, negative from the end) names."""
    if isinstance(ref, str):
        if names is None:
            raise NndError(f"{path} has no header row, so the {role} column '{ref}' cannot be found by name; "
                           f"give its index instead (0..{width - 1})")
        if ref not in names:
            hint = did_you_mean(ref, names)
            raise NndError(f"{role} column '{ref}' not found in {path}" + (f"; did you mean '{hint}'?" if hint else "")
                           + f" (available columns: {', '.join(names)})")
        places = [str(i + 1) for i, name in enumerate(names) if name == ref]
        if len(places) > 1:
            raise NndError(f"{path} has {len(places)} columns named '{ref}' (columns {', '.join(places)}): the "
                           f"{role} column is ambiguous; rename one")
        return names.index(ref)
    if isinstance(ref, (int, np.integer)) and not isinstance(ref, bool):
        if not -width <= int(ref) < width:
            raise NndError(f"{role} column index {ref} is out of range for {path}, which has {width} columns"
                           + (f" ({', '.join(names)})" if names else ""))
        return int(ref) % width
    raise NndError(f"{role} column must be a name or an index, got {ref!r}")


def check_row_width(path: Path, line: int, cells: list[str], width: int, has_header: bool) -> None:
    """A row of another width than the first is an error naming its line and both widths."""
    if len(cells) != width:
        fields = "1 field" if len(cells) == 1 else f"{len(cells)} fields"
        raise NndError(f"{path} line {line} has {fields} but the {'header' if has_header else 'first row'} "
                       f"has {width}")


def cell_place(path: Path, line: int, column: int, names: list[str] | None) -> str:
    """Where a CSV cell is, for a message: the column counted from 1, as lines are and as spreadsheets
    count, then its header name when the file has one."""
    return f"{path} line {line}, column {column + 1}" + (f" ('{names[column]}')" if names else "")


def load_csv(path: str | os.PathLike, target: str | int | None = None, header: bool | str = "auto",
             delimiter: str = ",") -> tuple[np.ndarray, np.ndarray | None]:
    """Load a numeric CSV as (x float32 of shape (n, features), y) with y the `target` column (name or index).

    y is int64 when every target value is a whole number, else float32; y is None when target is None.
    header="auto" treats the first row as a header when any of its cells is not a number.
    """
    path = Path(path)
    rows, has_header = read_csv_rows(path, header, "load_csv", delimiter)
    names = [c.strip() for c in rows[0][1]] if has_header else None
    body = rows[1:] if has_header else rows
    if not body:
        raise NndError(f"CSV file {path} has a header but no data rows")
    width = len(rows[0][1])
    col = None if target is None else column_index(target, "target", path, names, width)
    values = np.empty((len(body), width), dtype=np.float64)
    for r, (line, cells) in enumerate(body):
        check_row_width(path, line, cells, width, has_header)
        try:
            values[r] = [float(c) for c in cells]
        except ValueError:
            for c, cell in enumerate(cells):
                if not is_number(cell):
                    what = "an empty value" if not cell.strip() else f"'{cell}', which is not a number"
                    raise NndError(f"{cell_place(path, line, c, names)}: {what}") from None
    if col is None:
        return values.astype(np.float32), None
    y = values[:, col]
    x = np.delete(values, col, axis=1).astype(np.float32)
    if np.all(np.isfinite(y)) and np.all(y == np.round(y)):
        return x, y.astype(np.int64)
    return x, y.astype(np.float32)


# ------------------------------------------------------------------------------- splitting and batching

def _rng(rng: np.random.Generator | int | None, what: str) -> np.random.Generator:
    if isinstance(rng, np.random.Generator):
        return rng
    if isinstance(rng, (int, np.integer)) and not isinstance(rng, bool):
        return np.random.default_rng(int(rng))
    raise TypeError(f"{what} needs rng: a numpy Generator or an int seed, got {rng!r}")


def train_validation_split(x: np.ndarray, y: np.ndarray | None, fraction: float, seed: int | None = 0):
    """Split off `fraction` of the samples for validation: (x_train, y_train, x_val, y_val).

    With an int seed the samples are shuffled by a seeded permutation first; with seed=None the last
    samples are taken, like Keras' validation_split.
    """
    if not isinstance(fraction, (int, float)) or isinstance(fraction, bool) or not 0.0 < fraction < 1.0:
        raise NndError(f"validation fraction must be a number strictly between 0 and 1, got {fraction!r}")
    n = len(x)
    if y is not None and len(y) != n:
        raise NndError(f"x has {n} samples {tuple(x.shape)} but y has {len(y)} {tuple(y.shape)}")
    n_val = int(round(n * fraction))
    if n_val < 1 or n_val >= n:
        raise NndError(f"validation fraction {fraction} of {n} samples leaves {n_val} for validation and "
                       f"{n - n_val} for training; both need at least one")
    if seed is None:
        idx_train, idx_val = slice(0, n - n_val), slice(n - n_val, n)
    else:
        perm = np.random.default_rng(seed).permutation(n)
        idx_train, idx_val = np.sort(perm[n_val:]), np.sort(perm[:n_val])
    return (x[idx_train], None if y is None else y[idx_train], x[idx_val], None if y is None else y[idx_val])


def batches(x: np.ndarray, y: np.ndarray | None, batch_size: int, shuffle: bool = False,
            rng: np.random.Generator | int | None = None) -> Iterator[tuple[np.ndarray, np.ndarray | None]]:
    """Yield (x_batch, y_batch) pairs covering every sample once; the last batch may be smaller.

    With shuffle=True the order comes from `rng` (a Generator, advanced, or an int seed).
    """
    if not isinstance(batch_size, (int, np.integer)) or isinstance(batch_size, bool) or batch_size < 1:
        raise NndError(f"batch size must be a positive integer, got {batch_size!r}")
    n = len(x)
    if y is not None and len(y) != n:
        raise NndError(f"x has {n} samples {tuple(x.shape)} but y has {len(y)} {tuple(y.shape)}")
    order = _rng(rng, "batches(shuffle=True)").permutation(n) if shuffle else None
    for start in range(0, n, int(batch_size)):
        stop = min(start + int(batch_size), n)
        if order is None:
            yield x[start:stop], None if y is None else y[start:stop]
        else:
            idx = order[start:stop]
            yield x[idx], None if y is None else y[idx]


# ---------------------------------------------------------------------------------------------- checks

def _fmt_shape(shape) -> str:
    return "(" + ", ".join("batch" if d is None else str(d) for d in shape) + ("," if len(shape) == 1 else "") + ")"


def shape_hint(got: tuple[int, ...], expected: tuple) -> str:
    """What most likely went wrong when an array of shape `got` (batch first) was given for samples of
    shape `expected`: channels-first images, a missing channel axis, a single sample without its batch."""
    expected = tuple(expected)
    if None in expected:
        return ""
    if len(expected) == 3 and len(got) == 4 and got[1:] == (expected[2], *expected[:2]) \
            and expected[2] != expected[0]:
        return " (channels first? the model takes channels last: x.transpose(0, 2, 3, 1))"
    if got == expected:
        return " (one sample? add the batch axis: x[None])"
    if len(expected) >= 2 and expected[-1] == 1 and got[1:] == expected[:-1]:
        return " (add the channel axis: x[..., None])"
    return ""


def check_inputs(x: Any, expected_shape_without_batch: tuple, name: str = "x", allow_int: bool = False,
                 kind: str = "input") -> np.ndarray:
    """Validate a model input (or, with kind="target", target) batch: numeric float dtype, shape
    (batch, *expected) (None matches any size) and only finite values. Returns x unchanged."""
    if not hasattr(x, "shape") or not hasattr(x, "dtype"):
        raise NndError(f"{kind} '{name}' must be an array, got {type(x).__name__}")
    expected = tuple(expected_shape_without_batch)
    got = tuple(int(d) for d in x.shape)
    if len(got) != len(expected) + 1 or any(e is not None and e != g for e, g in zip(expected, got[1:])):
        raise NndError(f"{kind} '{name}' has shape {got} but the model expects {_fmt_shape((None,) + expected)}"
                       + shape_hint(got, expected))
    kinds = "fiu" if allow_int else "f"
    if x.dtype.kind not in kinds:
        want = "a floating-point or integer" if allow_int else "a floating-point"
        hint = " (scale integer images with x.astype('float32') / 255)" if x.dtype.kind in "iu" else ""
        raise NndError(f"{kind} '{name}' has dtype {x.dtype} but {want} array is needed{hint}")
    if x.dtype.kind == "f":
        finite = np.isfinite(x)
        if not bool(finite.all()):
            bad = tuple(int(i) for i in np.argwhere(~np.asarray(finite))[0])
            value = x[bad]
            what = "NaN" if np.isnan(value) else "an infinite value"
            raise NndError(f"{kind} '{name}' contains {what} at index {bad}")
    return x


def check_labels(y: Any, num_classes: int, name: str = "y") -> np.ndarray:
    """Validate class labels: sparse ids of shape (n,) or (n, 1) in 0..num_classes-1, or one-hot /
    probability rows of shape (n, num_classes). Sparse labels are returned as int64 of shape (n,)."""
    if not hasattr(y, "shape") or not hasattr(y, "dtype"):
        raise NndError(f"labels '{name}' must be an array, got {type(y).__name__}")
    y = np.asarray(y)
    if y.ndim == 2 and y.shape[1] == num_classes and num_classes > 1:
        if y.dtype.kind not in "fiub":
            raise NndError(f"labels '{name}' have dtype {y.dtype}; one-hot labels must be numeric")
        bad = ~np.isfinite(y) | (y < 0) | (y > 1) if y.dtype.kind == "f" else (y < 0) | (y > 1)
        if bad.any():
            idx = tuple(int(i) for i in np.argwhere(bad)[0])
            raise NndError(f"labels '{name}' (one-hot, shape {y.shape}) have value {y[idx]} at index {idx}; "
                           f"expected values in [0, 1]")
        return y
    if y.ndim == 2 and y.shape[1] == 1:
        y = y[:, 0]
    if y.ndim != 1:
        raise NndError(f"labels '{name}' have shape {y.shape}; expected class ids of shape (n,) or one-hot rows "
                       f"of shape (n, {num_classes})")
    if y.dtype.kind == "f":
        nonint = ~np.isfinite(y) | (y != np.round(y))
        if nonint.any():
            i = int(np.argmax(nonint))
            raise NndError(f"labels '{name}' have value {y[i]} at index {i}, which is not a class id (whole number)")
    elif y.dtype.kind not in "iub":
        raise NndError(f"labels '{name}' have dtype {y.dtype}; class ids must be integers")
    ids = y.astype(np.int64)
    bad = (ids < 0) | (ids >= num_classes)
    if bad.any():
        i = int(np.argmax(bad))
        raise NndError(f"label {ids[i]} at index {i} of '{name}' is out of range for {num_classes} classes "
                       f"(expected 0..{num_classes - 1})")
    return ids
