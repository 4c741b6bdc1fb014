"""The files that make a directory loadable by `nnd.load(DIR)`: the model's exact source (with the files
it imports, at the same relative places, so every import still names the right file) under source/,
weights.npz, optimizer.npz for a trained model (so that fit after load goes on as Keras' does), and
model.json naming the model, its root file and the settings it was built with. Written by `Model.save`
and by every `nnd train` run directory.

A save never leaves a mix of two models for a reader: the new source tree and weights are written beside
the old ones first; then model.json goes, the new files are renamed into place, and model.json, written
last, makes the directory a saved model again. An interrupted save leaves a directory that `nnd.load`
refuses for its missing model.json, never new source with old weights.
"""
from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
from pathlib import Path, PurePosixPath
from typing import Any, Mapping

import numpy as np

from nnd.compiler.diagnostics import NndError
from nnd.runtime import checkpoint as ckpt

MANIFEST = "model.json"
SOURCE_DIR = "source"
WEIGHTS = "weights.npz"
OPTIMIZER = "optimizer.npz"  # the optimizer's state of a trained model, so that fit after load goes on


def source_layout(program) -> dict[str, PurePosixPath]:
    """Each source file's path under source/, by the name the program knows it by: its place relative
    to the deepest directory that holds them all."""
    locations = program.program.locations
    common = Path(os.path.commonpath([str(path.parent) for path in locations.values()]))
    return {name: PurePosixPath(path.relative_to(common).as_posix()) for name, path in locations.items()}


def write_model_files(directory: Path, program, model: str, inputs: list[str], outputs: list[str], *,
                      weights: Mapping[str, Any] | None = None, optimizer_state: Mapping[str, Any] | None = None,
                      settings: Mapping[str, Any] | None = None) -> None:
    """Make `directory` (created if needed) a saved model: source/, weights.npz when `weights` are given
    (with optimizer.npz when `optimizer_state` is too, and without an earlier one when it is not), and
    model.json with `settings` (what `nnd.load` rebuilds the model with) merged in."""
    layout = source_layout(program)
    manifest = {"model": model, "source": str(layout[program.program.root.file]), "inputs": inputs,
                "outputs": outputs, **(settings or {})}
    manifest_text = json.dumps(manifest, indent=2) + "\n"
    arrays = {name: values for name, values in ((WEIGHTS, weights), (OPTIMIZER, optimizer_state))
              if values is not None}
    staged = {directory / f".staged-{name}": directory / name for name in arrays}
    stale = [directory / OPTIMIZER] if weights is not None and optimizer_state is None else []
    staged_source: Path | None = None
    try:
        directory.mkdir(parents=True, exist_ok=True)
        staged_source = Path(tempfile.mkdtemp(prefix=".staged-source.", dir=directory))
        os.chmod(staged_source, 0o777 & ~ckpt.current_umask())  # mkdtemp's 0700 would hide it from others
        for name, relative in layout.items():
            target = staged_source / relative
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_text(program.sources[name].text, encoding="utf-8")
        for temporary, values in zip(staged, arrays.values()):
            ckpt.save_weights(temporary, values)
        _commit(directory, staged_source, staged, stale, manifest_text)
    except OSError as err:
        raise NndError(f"cannot save the model to {directory}: {_reason(err)}") from None
    finally:  # leftovers of a failed save; failing to remove them must not hide why it failed
        if staged_source is not None and staged_source.exists():
            shutil.rmtree(staged_source, ignore_errors=True)
        for temporary in staged:
            with contextlib.suppress(OSError):
                temporary.unlink(missing_ok=True)


def _commit(directory: Path, staged_source: Path, staged: Mapping[Path, Path], stale: list[Path],
            manifest_text: str) -> None:
    """Swap the staged files in and the stale ones out; model.json is absent from the first rename to the
    last write."""
    manifest = directory / MANIFEST
    if manifest.is_dir():
        raise NndError(f"cannot save the model to {directory}: {manifest} is a directory")
    manifest.unlink(missing_ok=True)
    source = directory / SOURCE_DIR
    retired = Path(tempfile.mkdtemp(prefix=".retired-source.", dir=directory))
    try:
        if source.exists() or source.is_symlink():
            source.rename(retired / SOURCE_DIR)
        staged_source.rename(source)
        for temporary, final in staged.items():
            os.replace(temporary, final)
        for path in stale:
            path.unlink(missing_ok=True)
        ckpt.atomic_write(manifest, lambda f: f.write(manifest_text.encode("utf-8")), "model manifest")
    finally:
        shutil.rmtree(retired, ignore_errors=True)


def read_optimizer_state(directory: Path) -> dict[str, np.ndarray] | None:
    """optimizer.npz of a saved model, or None when it was saved untrained."""
    path = directory / OPTIMIZER
    return ckpt.load_weights(path) if path.is_file() else None


def read_manifest(directory: Path) -> dict[str, Any]:
    """model.json of a saved model directory, checked enough that its use cannot fail obscurely."""
    path = directory / MANIFEST
    if not path.is_file():
        raise NndError(f"{directory} holds no saved model ({MANIFEST} is missing)")
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise NndError(f"cannot read {path}: {err}") from None
    if not isinstance(manifest, dict) or not isinstance(manifest.get("source"), str):
        raise NndError(f"{path} is not an nnd model manifest: it needs an object with a \"source\" file name")
    return manifest


def _reason(err: OSError) -> str:
    where = f" ({err.filename})" if err.filename else ""
    return f"{err.strerror or err}{where}"
