"""The epoch loop behind `Model.fit` and `nnd train`: shuffling, augmentation, validation, callbacks,
progress, and a run directory that holds checkpoints, weights, metrics and the exact source used."""
from __future__ import annotations

import hashlib
import json
import math
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

import numpy as np

try:
    import fcntl
except ImportError:  # Windows
    fcntl = None

from nnd.compiler.diagnostics import Diagnostic, NndError, NndWarning
from nnd.compiler.training import epoch_log_names
from nnd.runtime import checkpoint as ckpt
from nnd.runtime.augment import Augmenter, make_augmentation
from nnd.runtime.callbacks import BestCheckpoint, EarlyStopping, ReduceLROnPlateau, check_logged, make_callback
from nnd.runtime.progress import Progress
from nnd.runtime.saved_model import write_model_files
from nnd.runtime.trainer import Trainer, TrainingState

VALIDATION_BATCH = 256


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

    def held(self) -> list[str]:
        """The weight files of an earlier run in the directory, which starting a new run there would lose."""
        return [name for name in RUN_FILES if name.endswith(".npz") and (self.path / name).exists()]

    @property
    def best(self) -> Path:
        return self.path / "best.npz"

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
        self.file = open(directory / self.NAME, "a")  # noqa: SIM115 - held open for the run
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
    trainer.resumed_callbacks = _resumed_callback_states(loaded.extra.get("callbacks") or {}, loaded.arrays)
    return int(loaded.epoch)


def _keyed_callbacks(callbacks: list[Any]) -> list[tuple[str, Any]]:
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
    for key, callback in _keyed_callbacks(callbacks):
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


def _resumed_callback_states(values: dict[str, dict[str, Any]], arrays: dict[str, np.ndarray]) -> dict[str, dict]:
    states = {key: dict(state) for key, state in values.items()}
    for entry, array in arrays.items():
        prefix, key, name = entry.split("/", 2) if entry.count("/") >= 2 else ("", "", "")
        if prefix == "callback" and key in states:
            states[key][name] = array
    return states


@dataclass
class _EpochPlan:
    """What every epoch of a fit reads."""

    feeds: dict[str, np.ndarray]
    val_feeds: dict[str, np.ndarray] | None
    epochs: int
    batch_size: int
    shuffle: bool
    callbacks: list[Any]
    progress: Progress
    augmenter: Augmenter | None
    image_inputs: list[str]  # inputs the augmentations apply to


def fit_loop(model, trainer: Trainer, state: TrainingState, feeds: dict[str, np.ndarray],
             val_feeds: dict[str, np.ndarray] | None, epochs: int, batch_size: int, shuffle: bool,
             callbacks: list[Any], verbose: int, run_dir: RunDirectory | None) -> None:
    spec = trainer.spec
    callbacks = _spec_callbacks(spec, run_dir, model, trainer) + callbacks
    _check_monitors(callbacks, spec, model.output_names, validating=val_feeds is not None)
    augmenter = Augmenter([make_augmentation(a.name, **a.args) for a in spec.augment]) if spec.augment else None
    n = len(next(iter(feeds.values())))
    progress = Progress(epochs, math.ceil(n / batch_size), verbose=verbose)
    image_inputs = [v.name for v in model.graph.inputs if v.type.rank == 4 and v.type.dtype in ("f32", "f64")]
    plan = _EpochPlan(feeds, val_feeds, epochs, batch_size, shuffle, callbacks, progress, augmenter, image_inputs)
    if run_dir is not None:
        run_dir.start(model)
    try:
        _run(model, trainer, state, plan, run_dir)
    finally:
        if run_dir is not None:
            run_dir.release()


def _run(model, trainer: Trainer, state: TrainingState, plan: _EpochPlan, run_dir: RunDirectory | None) -> None:
    """The callbacks' begin, the epochs and their end; what an interruption or a failure leaves is said."""
    callbacks, progress = plan.callbacks, plan.progress
    for callback in callbacks:
        callback.on_train_begin(state)
    resumed, trainer.resumed_callbacks = trainer.resumed_callbacks, None
    for key, callback in _keyed_callbacks(callbacks):
        if resumed and key in resumed and hasattr(callback, "load_state_dict"):
            callback.load_state_dict(resumed[key])  # what it had seen before the run was interrupted
    trainer.callbacks = callbacks  # checkpoints carry their state
    try:
        _train_epochs(model, trainer, state, plan, run_dir)
    except KeyboardInterrupt:
        progress.interrupted()
        if run_dir is None:
            raise
        raise run_dir.interrupted(model, state, progress) from None
    except NndError as error:  # a diverging loss, bad data in a later batch, a full disk: say what the run kept
        progress.interrupted()
        if run_dir is None or (run_dir.epochs_saved is None and run_dir.resumed_from is None):
            raise
        kept = Diagnostic(run_dir.resume_advice(" once this is fixed"), severity="note")
        raise NndError([*error.diagnostics, kept], error.sources) from None
    for callback in callbacks:
        callback.on_train_end(state)
    if run_dir is not None:
        run_dir.finish(model)


def _train_epochs(model, trainer: Trainer, state: TrainingState, plan: _EpochPlan,
                  run_dir: RunDirectory | None) -> None:
    n = len(next(iter(plan.feeds.values())))
    data_rng = model.data_rng  # shuffling and augmentation; checkpointed so --resume continues the sequence
    for epoch in range(state.epoch, plan.epochs):
        state.epoch = epoch
        plan.progress.epoch_begin(epoch)
        batches = _training_batches(plan.feeds, plan.batch_size, data_rng if plan.shuffle else None,
                                    plan.augmenter, plan.image_inputs, data_rng)
        logs = trainer.run_epoch(batches, model.output_names, training=True, on_batch=plan.progress.batch_end)
        if plan.val_feeds is not None:
            val_batches = plain_batches(plan.val_feeds, model._slice_size(VALIDATION_BATCH))
            val_logs = trainer.run_epoch(val_batches, model.output_names, training=False)
            logs.update({f"val_{k}": v for k, v in val_logs.items()})
        logs["lr"] = float(trainer.optimizer.lr)
        model.history.append(logs)
        plan.progress.epoch_end(logs, n)
        for callback in plan.callbacks:
            callback.on_epoch_end(state, logs)
        if run_dir is not None:
            run_dir.end_epoch(model, trainer, state)
        if state.stop_training:
            plan.progress.message(f"stopped early after epoch {epoch + 1}")
            break


def _check_monitors(callbacks: list[Any], spec, outputs: list[str], validating: bool) -> None:
    """Fail before the first epoch, not after it, when a callback watches a figure that is never logged."""
    logged = [name for name in epoch_log_names(spec, outputs) if validating or not name.startswith("val_")]
    for callback in callbacks:
        if isinstance(callback, (EarlyStopping, ReduceLROnPlateau, BestCheckpoint)):
            check_logged(callback.name, callback.monitor, logged)


def _spec_callbacks(spec, run_dir: RunDirectory | None, model, trainer: Trainer) -> list[Any]:
    result = []
    for configured in spec.callbacks:
        if configured.name == "best_checkpoint":
            if run_dir is None:  # a best checkpoint needs somewhere to go
                warnings.warn(NndWarning("the train section's best_checkpoint is skipped: it writes into a run "
                                         "directory, so give fit run_dir=... (nnd train always has one)"),
                              stacklevel=4)
                continue
            # The epoch's full checkpoint (RNG states included), so --resume works from best.npz too; written
            # with it, once every callback has seen the epoch, so their states in it are the epoch's.
            mark = lambda path, state, logs: run_dir.mark_best()  # noqa: E731
            result.append(BestCheckpoint(run_dir.best, save=mark, **configured.args))
        else:
            result.append(make_callback(configured.name, **configured.args))
    return result


def plain_batches(feeds: dict[str, np.ndarray], batch_size: int) -> Iterator[tuple[dict[str, np.ndarray], int]]:
    n = len(next(iter(feeds.values())))
    for start in range(0, n, batch_size):
        batch = {k: v[start:start + batch_size] for k, v in feeds.items()}
        yield batch, len(next(iter(batch.values())))


def _training_batches(feeds, batch_size, order_rng, augmenter, image_inputs, rng):
    n = len(next(iter(feeds.values())))
    order = order_rng.permutation(n) if order_rng is not None else None
    for start in range(0, n, batch_size):
        if order is None:
            batch = {k: v[start:start + batch_size] for k, v in feeds.items()}
        else:
            index = order[start:start + batch_size]
            batch = {k: v[index] for k, v in feeds.items()}
        if augmenter is not None:
            for name in image_inputs:
                batch[name] = augmenter.apply(batch[name], rng)
        yield batch, len(next(iter(batch.values())))


def _atomic_text(path: Path, text: str) -> None:
    ckpt.atomic_write(path, lambda f: f.write(text.encode("utf-8")), "metrics file")
