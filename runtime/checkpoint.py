"""Checkpoints and weight files.

A checkpoint is one uncompressed `.npz` holding `param/<name>` arrays, `opt/<key>` optimizer-state arrays,
`extra/<key>` arrays of whatever else the run keeps (callback state), an optional `rng` byte array, and
`meta`: a 0-d unicode array with a JSON object (format, version, epoch, rng state, extra metadata). It is
written atomically: a temporary file in the same directory is written, fsynced and renamed over the target
with os.replace, so a crash or error never leaves a half-written file at the target path, and a failed save
leaves the previous checkpoint untouched. Loading never pickles (allow_pickle=False) and never writes.

Weights files are `.npz` (one array per parameter name) or `.safetensors` (read and written here by hand:
8-byte little-endian header length, a JSON header {name: {dtype, shape, data_offsets}}, raw little-endian
tensor bytes; BF16 tensors are read as float32).
"""
from __future__ import annotations

import json
import math
import os
import tempfile
import zipfile
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping

import numpy as np

from nnd.compiler.diagnostics import Diagnostic, NndError, did_you_mean

__all__ = ["Checkpoint", "save_checkpoint", "load_checkpoint", "save_weights", "load_weights", "check_compatible",
           "atomic_write", "current_umask"]

FORMAT = "nnd-checkpoint"
VERSION = 1


@dataclass
class Checkpoint:
    path: Path
    params: dict[str, np.ndarray]
    optimizer_state: dict[str, np.ndarray]
    epoch: int
    rng_state: dict | bytes | str | None
    extra: dict[str, Any] = field(default_factory=dict)
    arrays: dict[str, np.ndarray] = field(default_factory=dict)


def _host(a: Any) -> np.ndarray:
    get = getattr(a, "get", None)
    return np.asarray(get() if callable(get) else a)


def current_umask() -> int:
    """The process's file-creation mask (reading it means setting it, so it is set back at once)."""
    mask = os.umask(0)
    os.umask(mask)
    return mask


def atomic_write(path: str | os.PathLike, write: Callable[[Any], None], what: str = "file") -> None:
    """Call `write(binary_file)` on a temporary file beside `path`, fsync it, then rename it onto `path`.

    On any failure the temporary file is removed and `path` is left as it was.
    """
    path = Path(path)
    directory = path.parent if str(path.parent) else Path(".")
    try:
        fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=directory)
    except OSError as e:
        raise NndError(f"cannot write {what} {path}: {e.strerror or e}") from None
    tmp = Path(tmp_name)
    try:
        os.chmod(tmp, 0o666 & ~current_umask())  # mkstemp's 0600 would hide the file from other users
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as e:
        try:
            tmp.unlink()
        except OSError:
            pass
        if isinstance(e, OSError):
            raise NndError(f"cannot write {what} {path}: {e.strerror or e}") from None
        raise
    try:  # make the rename itself durable; not possible everywhere, and not worth failing over
        dfd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(dfd)
        finally:
            os.close(dfd)
    except OSError:
        pass


def _check_names(kind: str, names) -> None:
    for name in names:
        if not isinstance(name, str) or not name:
            raise NndError(f"{kind} names must be non-empty strings, got {name!r}")


def save_checkpoint(path: str | os.PathLike, params: Mapping[str, Any], optimizer_state: Mapping[str, Any],
                    epoch: int, rng_state: dict | bytes | str | None = None,
                    extra: Mapping[str, Any] | None = None,
                    extra_arrays: Mapping[str, Any] | None = None) -> None:
    """Write a checkpoint atomically (see the module docstring for the layout)."""
    path = Path(path)
    _check_names("parameter", params)
    _check_names("optimizer state", optimizer_state)
    _check_names("extra array", extra_arrays or {})
    arrays: dict[str, np.ndarray] = {}
    for name, value in params.items():
        arrays[f"param/{name}"] = _host(value)
    for key, value in optimizer_state.items():
        arrays[f"opt/{key}"] = _host(value)
    for key, value in (extra_arrays or {}).items():
        arrays[f"extra/{key}"] = _host(value)
    for key, a in arrays.items():
        if a.dtype.kind == "O":
            raise NndError(f"cannot save checkpoint {path}: '{key}' is an object array")
    meta: dict[str, Any] = {"format": FORMAT, "version": VERSION, "epoch": int(epoch),
                            "params": list(params), "extra": dict(extra or {})}
    if isinstance(rng_state, (bytes, bytearray)):
        arrays["rng"] = np.frombuffer(bytes(rng_state), dtype=np.uint8)
        meta["rng"] = {"kind": "bytes"}
    elif isinstance(rng_state, str):
        meta["rng"] = {"kind": "str", "value": rng_state}
    elif isinstance(rng_state, dict):
        meta["rng"] = {"kind": "json", "value": rng_state}
    elif rng_state is None:
        meta["rng"] = None
    else:
        raise NndError(f"cannot save checkpoint {path}: rng_state must be a dict, bytes, str or None, "
                       f"got {type(rng_state).__name__}")
    try:
        text = json.dumps(meta, allow_nan=True)
    except (TypeError, ValueError) as e:
        raise NndError(f"cannot save checkpoint {path}: metadata is not JSON-serializable ({e})") from None
    arrays["meta"] = np.array(text)
    atomic_write(path, lambda f: np.savez(f, **arrays), "checkpoint")


def _starts_like_npz(path: Path) -> bool:
    try:
        with open(path, "rb") as f:
            return f.read(4) == b"PK\x03\x04"
    except OSError:
        return False


def _open_npz(path: Path, what: str) -> dict[str, np.ndarray]:
    if not path.exists():
        raise NndError(f"{what} file not found: {path}")
    if path.is_dir():
        raise NndError(f"{what} path {path} is a directory, not a file")
    if not _starts_like_npz(path):
        raise NndError(f"{what} {path} is corrupt or truncated (it does not start like a .npz archive)")
    try:
        z = np.load(path, allow_pickle=False)
        if not hasattr(z, "files"):
            raise NndError(f"{what} {path} is a single .npy array, not a .npz archive")
        with z:
            return {k: z[k] for k in z.files}
    except NndError:
        raise
    except ValueError as e:
        if _starts_like_npz(path) and "object" in str(e).lower():
            raise NndError(f"{path} contains object arrays, which are not loaded (pickles can run code)") from None
        raise NndError(f"{what} {path} is corrupt or truncated ({e})") from None
    except (zipfile.BadZipFile, EOFError, OSError, zlib.error, KeyError) as e:
        raise NndError(f"{what} {path} is corrupt or truncated ({e})") from None


def load_checkpoint(path: str | os.PathLike) -> Checkpoint:
    """Read a checkpoint written by `save_checkpoint`; a corrupt or foreign file raises NndError naming it."""
    path = Path(path)
    arrays = _open_npz(path, "checkpoint")
    if "meta" not in arrays:
        raise NndError(f"{path} is not an nnd checkpoint (it has no 'meta' entry)")
    try:
        meta = json.loads(str(arrays.pop("meta")[()]))
        if not isinstance(meta, dict) or meta.get("format") != FORMAT:
            raise ValueError("wrong format tag")
    except (ValueError, TypeError, IndexError) as e:
        raise NndError(f"{path} is not an nnd checkpoint (unreadable metadata: {e})") from None
    if int(meta.get("version", 0)) > VERSION:
        raise NndError(f"checkpoint {path} has format version {meta['version']}; this nnd reads up to {VERSION}")
    order = list(meta.get("params", []))
    raw = {k[len("param/"):]: v for k, v in arrays.items() if k.startswith("param/")}
    params = {k: raw[k] for k in order if k in raw}
    params.update({k: v for k, v in raw.items() if k not in params})
    opt = {k[len("opt/"):]: v for k, v in arrays.items() if k.startswith("opt/")}
    extra_arrays = {k[len("extra/"):]: v for k, v in arrays.items() if k.startswith("extra/")}
    rng_meta = meta.get("rng")
    if rng_meta is None:
        rng = None
    elif rng_meta.get("kind") == "bytes":
        if "rng" not in arrays:
            raise NndError(f"checkpoint {path} is corrupt: its RNG state is missing")
        rng = arrays["rng"].tobytes()
    else:
        rng = rng_meta.get("value")
    return Checkpoint(path, params, opt, int(meta.get("epoch", 0)), rng, dict(meta.get("extra") or {}),
                      extra_arrays)


# --------------------------------------------------------------------------------------------- weights

_ST_DTYPES = {"F64": "<f8", "F32": "<f4", "F16": "<f2", "I64": "<i8", "I32": "<i4", "I16": "<i2", "I8": "i1",
              "U64": "<u8", "U32": "<u4", "U16": "<u2", "U8": "u1", "BOOL": "?"}
_ST_CODES = {np.dtype(v).newbyteorder("<").str if np.dtype(v).itemsize > 1 else np.dtype(v).str: k
             for k, v in _ST_DTYPES.items()}


def _safetensors_bytes(params: Mapping[str, np.ndarray], metadata: Mapping[str, str] | None = None) -> list:
    header: dict[str, Any] = {}
    if metadata:
        header["__metadata__"] = {str(k): str(v) for k, v in metadata.items()}
    chunks, offset = [], 0
    for name in sorted(params):
        a = _host(params[name])
        le = a.dtype.newbyteorder("<") if a.dtype.itemsize > 1 else a.dtype
        code = _ST_CODES.get(le.str)
        if code is None:
            raise NndError(f"cannot save '{name}' as safetensors: dtype {a.dtype} has no safetensors type")
        data = np.ascontiguousarray(a, dtype=le).tobytes()
        header[name] = {"dtype": code, "shape": list(a.shape), "data_offsets": [offset, offset + len(data)]}
        chunks.append(data)
        offset += len(data)
    head = json.dumps(header, separators=(",", ":")).encode("utf-8")
    head += b" " * (-len(head) % 8)
    return [len(head).to_bytes(8, "little"), head, *chunks]


def _read_safetensors(path: Path) -> dict[str, np.ndarray]:
    try:
        blob = path.read_bytes()
    except FileNotFoundError:
        raise NndError(f"weights file not found: {path}") from None
    except OSError as e:
        raise NndError(f"cannot read weights file {path}: {e.strerror or e}") from None
    if len(blob) < 8:
        raise NndError(f"{path} is not a safetensors file: only {len(blob)} bytes long")
    n = int.from_bytes(blob[:8], "little")
    if n > len(blob) - 8:
        raise NndError(f"{path} is truncated or not a safetensors file: header length {n} exceeds the file size")
    try:
        header = json.loads(blob[8:8 + n].decode("utf-8"))
        if not isinstance(header, dict):
            raise ValueError("the header is not a JSON object")
    except (UnicodeDecodeError, ValueError) as e:
        raise NndError(f"{path} is corrupt: unreadable safetensors header ({e})") from None
    data = memoryview(blob)[8 + n:]
    out: dict[str, np.ndarray] = {}
    for name, info in header.items():
        if name == "__metadata__":
            continue
        try:
            code, shape, (begin, end) = info["dtype"], [int(d) for d in info["shape"]], info["data_offsets"]
        except (KeyError, TypeError, ValueError):
            raise NndError(f"{path} is corrupt: bad header entry for tensor '{name}'") from None
        if code == "BF16":
            dtype = np.dtype("<u2")
        elif code in _ST_DTYPES:
            dtype = np.dtype(_ST_DTYPES[code])
        else:
            raise NndError(f"{path}: tensor '{name}' has dtype {code}, which nnd cannot read")
        size = math.prod(shape) * dtype.itemsize
        if not (0 <= begin <= end <= len(data)) or end - begin != size:
            raise NndError(f"{path} is corrupt or truncated: tensor '{name}' ({code}, shape {tuple(shape)}) needs "
                           f"{size} bytes at [{begin}, {end}) but the data section has {len(data)} bytes")
        a = np.frombuffer(data[begin:end], dtype=dtype).reshape(shape)
        if code == "BF16":
            a = (a.astype(np.uint32) << 16).view(np.float32)
        out[name] = a.astype(a.dtype.newbyteorder("="), copy=True)
    return out


def save_weights(path: str | os.PathLike, params: Mapping[str, Any]) -> None:
    """Write parameters to `.npz` (one entry per name) or `.safetensors`, atomically."""
    path = Path(path)
    _check_names("parameter", params)
    suffix = path.suffix.lower()
    if suffix == ".npz":
        arrays = {k: _host(v) for k, v in params.items()}
        atomic_write(path, lambda f: np.savez(f, **arrays), "weights file")
    elif suffix == ".safetensors":
        chunks = _safetensors_bytes(params)
        atomic_write(path, lambda f: [f.write(c) for c in chunks], "weights file")
    else:
        raise NndError(f"cannot save weights to {path}: unsupported extension '{path.suffix}' "
                       f"(use .npz or .safetensors)")


def load_weights(path: str | os.PathLike) -> dict[str, np.ndarray]:
    """Read parameters from `.npz` (a weights file or a full checkpoint) or `.safetensors`."""
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix == ".safetensors":
        return _read_safetensors(path)
    if suffix != ".npz":
        raise NndError(f"cannot load weights from {path}: unsupported extension '{path.suffix}' "
                       f"(use .npz or .safetensors)")
    arrays = _open_npz(path, "weights")
    if "meta" in arrays:
        return load_checkpoint(path).params
    return arrays


def check_compatible(expected: Mapping[str, tuple], loaded: Mapping[str, Any], strict: bool = True,
                     source: str = "the checkpoint") -> None:
    """Check loaded parameters (arrays or shapes) against the model's expected shapes.

    Every problem is reported together: shape mismatches always; missing and unexpected parameters when
    `strict`.
    """
    problems: list[Diagnostic] = []
    shapes = {k: tuple(int(d) for d in (v if isinstance(v, (tuple, list)) else np.shape(v))) for k, v in loaded.items()}
    want = {k: tuple(int(d) for d in v) for k, v in expected.items()}
    missing = [k for k in want if k not in shapes]
    unexpected = [k for k in shapes if k not in want]
    for name in want:
        if name in shapes and shapes[name] != want[name]:
            problems.append(Diagnostic(f"parameter '{name}' has shape {shapes[name]} in {source} but the model "
                                       f"expects {want[name]}"))
    if strict:
        for name in missing:
            hint = did_you_mean(name, unexpected)
            problems.append(Diagnostic(f"parameter '{name}' (shape {want[name]}) is missing from {source}"
                                       + (f"; it has '{hint}' (shape {shapes[hint]})" if hint else "")))
        for name in unexpected:
            hint = did_you_mean(name, missing)
            problems.append(Diagnostic(f"{source} has unexpected parameter '{name}' (shape {shapes[name]})"
                                       + (f"; did you mean '{hint}'?" if hint else "")))
    if len(problems) > MAX_LISTED_PROBLEMS:
        raise NndError(_summarized(problems, source, len(want), missing if strict else [],
                                   unexpected if strict else [], sum(name in shapes for name in want)))
    if problems:
        raise NndError(problems)


# Weights of another model disagree about nearly every parameter; past this many problems the error
# becomes one summary line with the first few as notes.
MAX_LISTED_PROBLEMS = 8


def _summarized(problems: list[Diagnostic], source: str, parameter_count: int, missing: list[str],
                unexpected: list[str], shared: int) -> Diagnostic:
    reshaped = len(problems) - len(missing) - len(unexpected)
    counts = [f"{len(missing)} of the model's {parameter_count} parameters are missing" if missing else "",
              f"{reshaped} {'has another shape' if reshaped == 1 else 'have other shapes'}" if reshaped else "",
              f"{len(unexpected)} {'is' if len(unexpected) == 1 else 'are'} not the model's" if unexpected else ""]
    shown = MAX_LISTED_PROBLEMS // 2
    notes = [p.message for p in problems[:shown]] + [f"... and {len(problems) - shown} more"]
    if shared - reshaped < parameter_count // 2:
        notes.append("most parameters disagree: are these the weights of another model?")
    return Diagnostic(f"{source} does not fit the model: " + "; ".join(c for c in counts if c), None, notes)
