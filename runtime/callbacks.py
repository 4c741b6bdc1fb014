"""Training callbacks with Keras semantics: EarlyStopping, ReduceLROnPlateau, BestCheckpoint.

A callback sees a training-state object with `params` (name -> array, changed in place), `optimizer`
(with a settable `lr` and `state_dict()`), `epoch` (0-based) and `stop_training`, and the epoch's logs
(e.g. {"loss": ..., "val_loss": ..., "val_accuracy": ...}):

    on_train_begin(state); on_epoch_end(state, logs) after every epoch; on_train_end(state)

`state_dict()` / `load_state_dict(d)` carry what a callback has seen (best value, epochs waited, best
weights) through a checkpoint, so a resumed run behaves as the uninterrupted one; `load_state_dict` is
called after `on_train_begin`. Values are JSON numbers or None, or ndarrays.

mode="auto" maximizes a monitor whose metric (the last part of its name, after `val_` and an output's
name: `val_speed_mae` is an mae) is accuracy-like (an accuracy, auc, precision, recall, f1) and
minimizes everything else (losses, mae, mse, lr).
"""
from __future__ import annotations

import contextlib
import math
from pathlib import Path
from typing import Any, Callable, Mapping

import numpy as np

from nnd.compiler.diagnostics import NndError, did_you_mean
from nnd.runtime.named import build

__all__ = ["Callback", "EarlyStopping", "ReduceLROnPlateau", "BestCheckpoint", "KerasHooks", "make_callback",
           "as_callbacks", "CALLBACKS", "check_logged"]

# The metrics that grow as a model improves, by the last word of their names (top_k_accuracy, auc, ...).
_GROWING = frozenset(("accuracy", "acc", "auc", "precision", "recall", "f1"))


def _direction(owner: str, monitor: str, mode: str) -> str:
    if mode not in ("auto", "min", "max"):
        hint = did_you_mean(str(mode), ("auto", "min", "max"))
        raise NndError(f"{owner}: mode must be 'auto', 'min' or 'max', got {mode!r}"
                       + (f"; did you mean '{hint}'?" if hint else ""))
    if mode != "auto":
        return mode
    return "max" if _grows(monitor) else "min"


def _grows(monitor: str) -> bool:
    """Whether a logged figure grows as the model improves, read from its last word: an output's name and
    `val_` come before the metric (`val_accel_mae` is an error, `loss_head_accuracy` an accuracy), and a
    count after it tells a repeated metric apart (`precision_1`)."""
    words = monitor.lower().split("_")
    while len(words) > 1 and words[-1].isdigit():
        words.pop()
    return words[-1] in _GROWING


def _monitored(owner: str, monitor: str, logs: Mapping[str, Any]) -> float:
    check_logged(owner, monitor, list(logs))
    return float(logs[monitor])


def check_logged(owner: str, monitor: str, logged: list[str]) -> None:
    """Raise the error a callback gives when the figure it watches is not among those logged."""
    if monitor in logged:
        return
    hint = did_you_mean(monitor, logged)
    extra = ""
    if monitor.startswith("val_") and not any(k.startswith("val_") for k in logged):
        extra = " (there is no validation data; set validation_split or monitor a training figure)"
    raise NndError(f"{owner} monitors '{monitor}', which is not in the epoch logs"
                   + (f"; did you mean '{hint}'?" if hint else "") + extra
                   + f" (logged: {', '.join(logged) or 'nothing'})")


def _check_number(owner: str, key: str, value: Any, lo: float = -math.inf, hi: float = math.inf,
                  integer: bool = False, hi_open: bool = False) -> float:
    ok = isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(value, bool)
    ok = ok and math.isfinite(value) and lo <= value and (value < hi if hi_open else value <= hi)
    ok = ok and (not integer or float(value) == int(value))
    if not ok:
        if hi != math.inf:
            rng = f" in [{lo:g}, {hi:g}{')' if hi_open else ']'}"
        else:
            rng = f" >= {lo:g}" if lo != -math.inf else ""
        raise NndError(f"{owner}: {key} must be {'an integer' if integer else 'a number'}{rng}, got {value!r}")
    return int(value) if integer else float(value)


class Callback:
    def on_train_begin(self, state: Any) -> None:
        pass

    def on_epoch_end(self, state: Any, logs: Mapping[str, Any]) -> None:
        pass

    def on_train_end(self, state: Any) -> None:
        pass

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        pass


KERAS_HOOKS = ("on_train_begin", "on_epoch_end", "on_train_end")


class KerasHooks(Callback):
    """An object that is not a `Callback` but has any of Keras' hooks, called as Keras calls them:
    on_train_begin(logs), on_epoch_end(epoch, logs), on_train_end(logs). As in Keras, it finds the model
    in its `model` attribute (or gets it through `set_model`) and stops training by setting
    `model.stop_training = True`."""

    def __init__(self, hooks: Any, model: Any):
        self.hooks, self.model = hooks, model

    def on_train_begin(self, state):
        self.model.stop_training = False
        if callable(getattr(self.hooks, "set_model", None)):
            self.hooks.set_model(self.model)
        else:
            with contextlib.suppress(AttributeError):  # a read-only object can still use its hooks
                self.hooks.model = self.model
        self._call("on_train_begin", {})

    def on_epoch_end(self, state, logs):
        self._call("on_epoch_end", state.epoch, dict(logs))
        if self.model.stop_training:
            state.stop_training = True

    def on_train_end(self, state):
        self._call("on_train_end", {})

    def _call(self, hook: str, *args: Any) -> None:
        method = getattr(self.hooks, hook, None)
        if callable(method):
            method(*args)


def as_callbacks(values: Any, model: Any) -> list[Callback]:
    """fit()'s `callbacks`: None, or a list of Callbacks and objects with Keras' hooks."""
    if values is None:
        return []
    if isinstance(values, Callback) or not isinstance(values, (list, tuple)):
        values = [values]
    result: list[Callback] = []
    for value in values:
        if isinstance(value, Callback):
            result.append(value)
        elif any(callable(getattr(value, hook, None)) for hook in KERAS_HOOKS):
            result.append(KerasHooks(value, model))
        else:
            raise NndError(f"callbacks: {value!r} is neither an nnd.Callback nor an object with any of Keras' "
                           f"hooks ({', '.join(KERAS_HOOKS)})")
    return result


def _int_or_none(value: Any) -> int | None:
    return None if value is None else int(value)


class _Monitor:
    """Best-value tracking shared by the callbacks: is `current` better than `best` by more than min_delta?"""

    def __init__(self, owner: str, monitor: str, mode: str, min_delta: float):
        if not isinstance(monitor, str) or not monitor:
            raise NndError(f"{owner}: monitor must be the name of a logged figure, got {monitor!r}")
        self.owner, self.monitor = owner, monitor
        self.direction = _direction(owner, monitor, mode)
        self.min_delta = abs(_check_number(owner, "min_delta", min_delta))
        self.best = math.inf if self.direction == "min" else -math.inf

    def reset(self) -> None:
        self.best = math.inf if self.direction == "min" else -math.inf

    def improved(self, current: float) -> bool:
        if self.direction == "min":
            return current < self.best - self.min_delta
        return current > self.best + self.min_delta


class EarlyStopping(Callback):
    """Stop when `monitor` has not improved by more than `min_delta` for `patience` epochs.

    With restore_best=True the parameters of the best epoch are written back at the end of training, also
    when training ran to its last epoch without stopping early (Keras only restores on an early stop).
    """

    name = "early_stopping"

    def __init__(self, monitor: str = "val_loss", patience: int = 0, min_delta: float = 0.0, mode: str = "auto",
                 restore_best: bool = False, *, restore_best_weights: bool | None = None):
        if restore_best_weights is not None:  # Keras' name
            restore_best = restore_best_weights
        self._tracker = _Monitor(self.name, monitor, mode, min_delta)
        self.monitor = monitor
        self.patience = _check_number(self.name, "patience", patience, 0, integer=True)
        if not isinstance(restore_best, bool):
            raise NndError(f"{self.name}: restore_best must be true or false, got {restore_best!r}")
        self.restore_best = restore_best
        self.wait = 0
        self.stopped_epoch: int | None = None
        self.best_epoch: int | None = None
        self.best_weights: dict[str, np.ndarray] | None = None

    @property
    def best(self) -> float:
        return self._tracker.best

    def on_train_begin(self, state):
        self._tracker.reset()
        self.wait = 0
        self.stopped_epoch = None
        self.best_epoch = None
        self.best_weights = None

    def _snapshot(self, state) -> dict[str, np.ndarray]:
        return {k: np.array(v, copy=True) for k, v in state.params.items()}

    def on_epoch_end(self, state, logs):
        current = _monitored(self.name, self.monitor, logs)
        if self.restore_best and self.best_weights is None:
            self.best_weights = self._snapshot(state)
            self.best_epoch = state.epoch
        self.wait += 1
        if self._tracker.improved(current):
            self._tracker.best = current
            self.best_epoch = state.epoch
            if self.restore_best:
                self.best_weights = self._snapshot(state)
            self.wait = 0
            return
        if self.wait >= self.patience and state.epoch > 0:
            self.stopped_epoch = state.epoch
            state.stop_training = True

    def state_dict(self) -> dict[str, Any]:
        state: dict[str, Any] = {"best": self._tracker.best, "wait": self.wait, "best_epoch": self.best_epoch,
                                 "stopped_epoch": self.stopped_epoch}
        for name, value in (self.best_weights or {}).items():
            state[f"best_weights/{name}"] = value
        return state

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self._tracker.best = float(state["best"])
        self.wait = int(state["wait"])
        self.best_epoch = _int_or_none(state.get("best_epoch"))
        self.stopped_epoch = _int_or_none(state.get("stopped_epoch"))
        weights = {k[len("best_weights/"):]: np.array(v, copy=True) for k, v in state.items()
                   if k.startswith("best_weights/")}
        self.best_weights = weights or None

    def on_train_end(self, state):
        if self.restore_best and self.best_weights is not None:
            for name, value in self.best_weights.items():
                if name in state.params:
                    state.params[name][...] = value


class ReduceLROnPlateau(Callback):
    """Multiply the optimizer's learning rate by `factor` after `patience` epochs without improvement."""

    name = "reduce_lr_on_plateau"

    def __init__(self, monitor: str = "val_loss", factor: float = 0.1, patience: int = 10, min_delta: float = 1e-4,
                 min_lr: float = 0.0, cooldown: int = 0, mode: str = "auto"):
        self._tracker = _Monitor(self.name, monitor, mode, min_delta)
        self.monitor = monitor
        self.factor = _check_number(self.name, "factor", factor, 0.0, 1.0, hi_open=True)
        if self.factor == 0.0:
            raise NndError(f"{self.name}: factor must be in (0, 1), got {factor!r}")
        self.patience = _check_number(self.name, "patience", patience, 0, integer=True)
        self.min_lr = _check_number(self.name, "min_lr", min_lr, 0.0)
        self.cooldown = _check_number(self.name, "cooldown", cooldown, 0, integer=True)
        self.wait = 0
        self.cooldown_counter = 0
        self.reductions: list[tuple[int, float, float]] = []  # (epoch, old lr, new lr)

    @property
    def best(self) -> float:
        return self._tracker.best

    def on_train_begin(self, state):
        self._tracker.reset()
        self.wait = 0
        self.cooldown_counter = 0

    def state_dict(self) -> dict[str, Any]:
        return {"best": self._tracker.best, "wait": self.wait, "cooldown_counter": self.cooldown_counter,
                "reductions": [list(r) for r in self.reductions]}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self._tracker.best = float(state["best"])
        self.wait = int(state["wait"])
        self.cooldown_counter = int(state["cooldown_counter"])
        self.reductions = [(int(e), float(a), float(b)) for e, a, b in state.get("reductions", [])]

    def on_epoch_end(self, state, logs):
        current = _monitored(self.name, self.monitor, logs)
        if self.cooldown_counter > 0:
            self.cooldown_counter -= 1
            self.wait = 0
        if self._tracker.improved(current):
            self._tracker.best = current
            self.wait = 0
        elif self.cooldown_counter <= 0:
            self.wait += 1
            if self.wait >= self.patience:
                old = float(state.optimizer.lr)
                if old > np.float32(self.min_lr):
                    new = max(old * self.factor, self.min_lr)
                    state.optimizer.lr = new
                    self.reductions.append((state.epoch, old, new))
                    self.cooldown_counter = self.cooldown
                    self.wait = 0


class BestCheckpoint(Callback):
    """Save a checkpoint to `path` whenever `monitor` improves (epoch counted as epochs done).

    `save(path, state, logs)` replaces the default writer, e.g. to include RNG states.
    """

    name = "best_checkpoint"

    def __init__(self, path: str | Path, monitor: str = "val_loss", mode: str = "auto", min_delta: float = 0.0,
                 save: Callable[[Path, Any, Mapping[str, Any]], None] | None = None):
        self.path = Path(path)
        self._tracker = _Monitor(self.name, monitor, mode, min_delta)
        self.monitor = monitor
        self.save = save
        self.best_epoch: int | None = None
        self.saves = 0

    @property
    def best(self) -> float:
        return self._tracker.best

    def on_train_begin(self, state):
        self._tracker.reset()
        self.best_epoch = None

    def state_dict(self) -> dict[str, Any]:
        return {"best": self._tracker.best, "best_epoch": self.best_epoch, "saves": self.saves}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self._tracker.best = float(state["best"])
        self.best_epoch = _int_or_none(state.get("best_epoch"))
        self.saves = int(state.get("saves", 0))

    def on_epoch_end(self, state, logs):
        current = _monitored(self.name, self.monitor, logs)
        if not self._tracker.improved(current):
            return
        self._tracker.best = current
        self.best_epoch = state.epoch
        if self.save is not None:
            self.save(self.path, state, logs)
        else:
            from nnd.runtime.checkpoint import save_checkpoint

            optimizer = getattr(state, "optimizer", None)
            opt_state = optimizer.state_dict() if optimizer is not None else {}
            save_checkpoint(self.path, state.params, opt_state, state.epoch + 1, None,
                            {"monitor": self.monitor, "value": current, "logs": {k: float(v) for k, v in logs.items()
                                                                                 if _is_real(v)}})
        self.saves += 1


def _is_real(v: Any) -> bool:
    return isinstance(v, (int, float, np.integer, np.floating)) and not isinstance(v, bool)


CALLBACKS: dict[str, type[Callback]] = {
    "early_stopping": EarlyStopping,
    "reduce_lr_on_plateau": ReduceLROnPlateau,
    "best_checkpoint": BestCheckpoint,
}


def _normalize(name: str) -> str:
    return str(name).strip().lower().replace("_", "").replace("-", "")


def make_callback(name: str, **args: Any) -> Callback:
    """Build a callback by name (snake_case or Keras CamelCase, e.g. EarlyStopping)."""
    aliases = {_normalize(k): k for k in CALLBACKS}
    aliases.update({"reducelronplateau": "reduce_lr_on_plateau", "modelcheckpoint": "best_checkpoint"})
    return build(CALLBACKS, _normalize(name) if _normalize(name) in aliases else name, args, "callback", aliases)
