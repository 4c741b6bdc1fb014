"""The epoch loop behind `Model.fit` and `nnd train`: shuffling, augmentation, validation, callbacks,
progress, and the run directory (`runtime/run_directory.py`) that holds what a run keeps."""
from __future__ import annotations

import math
import warnings
from dataclasses import dataclass
from typing import Any, Iterator

import numpy as np

from nnd.compiler.diagnostics import Diagnostic, NndError, NndWarning
from nnd.compiler.training import epoch_log_names, log_name_clash
from nnd.runtime.augment import Augmenter, make_augmentation
from nnd.runtime.callbacks import BestCheckpoint, EarlyStopping, ReduceLROnPlateau, check_logged, make_callback
from nnd.runtime.progress import Progress
from nnd.runtime.run_directory import RunDirectory, keyed_callbacks
from nnd.runtime.trainer import Trainer, TrainingState

VALIDATION_BATCH = 256


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
    try:
        if run_dir is not None:
            run_dir.start(model)
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
    for key, callback in keyed_callbacks(callbacks):
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
    """Fail before the first epoch, not after it, when a callback watches a figure that is never logged
    or two figures would be logged under one name."""
    clash = log_name_clash(spec, outputs)
    if clash:
        raise NndError(clash[0])
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
