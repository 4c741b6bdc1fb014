"""A training run's directory (`nnd train --out`, `fit(run_dir=...)`): its lock, its checkpoints (every
epoch, and the best), its metrics and final weights, what it says when stopped, and resuming from a
checkpoint exactly where the run was (weights, optimizer, random streams, callbacks, history)."""
from __future__ import annotations

import hashlib
import json
import warnings
from pathlib import Path
from typing import Any

import numpy as np

try:
    import fcntl
except ImportError:  # Windows
    fcntl = None

from nnd.compiler.diagnostics import NndError, NndWarning
from nnd.runtime import checkpoint as ckpt
from nnd.runtime.progress import Progress
from nnd.runtime.saved_model import write_model_files
from nnd.runtime.trainer import Trainer, TrainingState

# What a run writes into its directory besides the model files and the data's artifacts.
RUN_FILES = ("weights.npz", "checkpoint.npz", "best.npz", "metrics.json", "metrics.csv")


class RunDirectory:
    """`--out DIR`: checkpoint.npz (every epoch), best.npz, weights.npz, metrics.json/.csv, source/.

    The directory is made when training starts, after the data has been checked, so a refused run leaves
    no empty run directory behind. A lock file keeps a second run out while one writes there."""

    def __init__(self, path: str | Path, artifacts: dict | None = None, replace: bool = False):
        self.path = Path(path)
        # Files prediction needs later, from the data loader (vocabulary.json, series_stats.json).
        self.artifacts = dict(artifacts or {})
        self.replace = replace  # the directory holds an earlier run, which this one replaces
        self.resumed_from: tuple[Path, int] | None = None  # the checkpoint this run began from, and its epoch
        self.epochs_saved: int | None = None  # the epochs checkpoint.npz holds, once this run has written it
        self._lock: RunLock | None = None
        self._best_pending = False  # a best_checkpoint callback found this epoch the best so far

    @property
    def checkpoint(self) -> Path:
        return self.path / "checkpoint.npz"

    @property
    def best(self) -> Path:
        return self.path / "best.npz"

    def held(self) -> list[str]:
        """The weight files of an earlier run in the directory, which starting a new run there would lose."""
        return [name for name in RUN_FILES if name.endswith(".npz") and (self.path / name).exists()]

    def start(self, model) -> None:
        try:
            self.path.mkdir(parents=True, exist_ok=True)
        except OSError as err:
            raise NndError(f"cannot create the run directory {self.path}: {err.strerror or err}") from None
        self._lock = RunLock(self.path)
        if self.replace:  # nothing of the earlier run may pass for this one's (a best.npz it never wrote)
            for name in RUN_FILES:
                (self.path / name).unlink(missing_ok=True)
        write_model_files(self.path, model.program, model.name, model.input_names, model.output_names,
                          settings=model.saved_settings())
        for name, write in self.artifacts.items():
            write(self.path / name)

    def release(self) -> None:
        if self._lock is not None:
            self._lock.release()
            self._lock = None

    def mark_best(self) -> None:
        self._best_pending = True

    def end_epoch(self, model, trainer: Trainer, state: TrainingState) -> None:
        save_checkpoint(self.checkpoint, model, trainer, state.epoch + 1)
        self.epochs_saved = state.epoch + 1
        if self._best_pending:
            data = self.checkpoint.read_bytes()
            ckpt.atomic_write(self.best, lambda f: f.write(data), "checkpoint")
            self._best_pending = False
        _atomic_text(self.path / "metrics.json", model.history.to_json())
        _atomic_text(self.path / "metrics.csv", model.history.to_csv())

    def finish(self, model) -> None:
        ckpt.save_weights(self.path / "weights.npz", model.parameters())

    def interrupted(self, model, state: TrainingState, progress: Progress) -> "TrainingInterrupted":
        """Save the weights as they are when training is stopped by hand, and say what the run holds."""
        self.finish(model)
        where = f"epoch {state.epoch + 1}/{progress.epochs}, after {progress.steps_done:,} of {progress.steps:,} steps"
        lines = [f"interrupted in {where}", f"  saved the weights as they were to {self.path / 'weights.npz'}",
                 f"  {self.resume_advice()}"]
        return TrainingInterrupted("\n".join(lines))

    def resume_advice(self, when: str = "") -> str:
        """Which checkpoint continues this run, from what this run wrote (not from whatever file is there);
        `when` ends the advice (" once this is fixed")."""
        if self.epochs_saved is not None:
            return (f"{self.checkpoint} holds the end of epoch {self.epochs_saved}: --resume {self.checkpoint} "
                    f"continues from there{when}")
        if self.resumed_from is not None:
            path, epoch = self.resumed_from
            return (f"no epoch of this run finished: --resume {path} still continues from the end of epoch "
                    f"{epoch}{when}")
        return "no epoch had finished, so there is no checkpoint to resume from"


class RunLock:
    """An exclusive lock on a run directory for as long as a run writes there: a second run into the same
    --out would mix its checkpoints, metrics and weights with the first's."""

    NAME = ".nnd-run.lock"

    def __init__(self, directory: Path):
        try:
            self.file = open(directory / self.NAME, "a")  # noqa: SIM115 - held open for the run
        except OSError as err:
            raise NndError(f"cannot write in the run directory {directory}: {err.strerror or err}") from None
        if fcntl is None:
            return  # no advisory locks on this platform
        try:
            fcntl.flock(self.file.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            self.file.close()
            raise NndError(f"{directory} is in use by another training run; wait for it to finish or choose "
                           "another --out") from None

    def release(self) -> None:
        self.file.close()  # closing drops the lock


class TrainingInterrupted(KeyboardInterrupt):
    """Ctrl-C stopped `fit` with a run directory; the message says what was saved."""


def save_checkpoint(path: Path, model, trainer: Trainer, epochs_done: int) -> None:
    rng = {"executor": trainer.train_executor.rng_state(), "data": model.data_rng.bit_generator.state}
    callbacks, arrays = _callback_states(trainer.callbacks)
    ckpt.save_checkpoint(path, model.parameters(), trainer.optimizer.state_dict(), epochs_done,
                         json.dumps(rng), {"model": model.name, "history": model.history.epochs,
                                           "schedule": trainer.schedule_state(), "callbacks": callbacks,
                                           "source_sha256": source_fingerprint(model.program)},
                         extra_arrays=arrays)


def source_fingerprint(program) -> str:
    """A digest of every source file of a program, by name: what a checkpoint was trained from."""
    digest = hashlib.sha256()
    for name in sorted(program.sources):
        digest.update(name.encode() + b"\0" + program.sources[name].text.encode() + b"\0")
    return digest.hexdigest()


def resume(model, trainer: Trainer, path: str | Path) -> int:
    """Restore weights, optimizer state, RNG states and history; returns the number of epochs done. A
    model whose source changed since the checkpoint resumes (a new epoch count is a normal edit) with an
    NndWarning saying so."""
    loaded = ckpt.load_checkpoint(path)
    if loaded.extra.get("model") not in (None, model.name):
        raise NndError(f"checkpoint {path} is of model '{loaded.extra.get('model')}', not '{model.name}'")
    if loaded.extra.get("source_sha256") not in (None, source_fingerprint(model.program)):
        warnings.warn(NndWarning(f"--resume {path}: the model's source has changed since this checkpoint was "
                                 "written; the run continues with the source as it is now"), stacklevel=2)
    model.set_parameters(loaded.params, source=f"checkpoint {path}")
    trainer.optimizer.load_state_dict(loaded.optimizer_state)
    rng = json.loads(loaded.rng_state) if isinstance(loaded.rng_state, str) else loaded.rng_state
    trainer.train_executor.set_rng_state(rng["executor"])
    model.data_rng.bit_generator.state = rng["data"]
    model.history.epochs = list(loaded.extra.get("history", []))
    trainer.load_schedule_state(loaded.extra.get("schedule") or {})
    trainer.resumed_callbacks = resumed_callback_states(loaded.extra.get("callbacks") or {}, loaded.arrays)
    return int(loaded.epoch)


def keyed_callbacks(callbacks: list[Any]) -> list[tuple[str, Any]]:
    """A key per callback that survives a resume: its class name and its index among those of its class."""
    seen: dict[str, int] = {}
    result = []
    for callback in callbacks:
        name = type(callback).__name__
        result.append((f"{name}#{seen.get(name, 0)}", callback))
        seen[name] = seen.get(name, 0) + 1
    return result


def _callback_states(callbacks: list[Any]) -> tuple[dict[str, dict[str, Any]], dict[str, np.ndarray]]:
    """The callbacks' states, split into JSON values (checkpoint metadata) and arrays (checkpoint entries)."""
    values: dict[str, dict[str, Any]] = {}
    arrays: dict[str, np.ndarray] = {}
    for key, callback in keyed_callbacks(callbacks):
        state_dict = getattr(callback, "state_dict", None)
        if state_dict is None:
            continue
        values[key] = {}
        for name, value in state_dict().items():
            if isinstance(value, np.ndarray):
                arrays[f"callback/{key}/{name}"] = value
            else:
                values[key][name] = value
    return values, arrays


def resumed_callback_states(values: dict[str, dict[str, Any]], arrays: dict[str, np.ndarray]) -> dict[str, dict]:
    states = {key: dict(state) for key, state in values.items()}
    for entry, array in arrays.items():
        prefix, key, name = entry.split("/", 2) if entry.count("/") >= 2 else ("", "", "")
        if prefix == "callback" and key in states:
            states[key][name] = array
    return states


def _atomic_text(path: Path, text: str) -> None:
    ckpt.atomic_write(path, lambda f: f.write(text.encode("utf-8")), "metrics file")
