from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pytest

from nnd.compiler.diagnostics import NndError
from nnd.runtime.callbacks import BestCheckpoint, EarlyStopping, ReduceLROnPlateau, make_callback
from nnd.runtime.checkpoint import load_checkpoint
from nnd.runtime.optimizers import make_optimizer


@dataclass
class State:
    params: dict
    optimizer: Any
    epoch: int = 0
    stop_training: bool = False
    history: list = field(default_factory=list)


def _state(lr=0.1):
    opt = make_optimizer("sgd", lr=lr)
    params = opt.bind({"w": np.zeros(3), "b": np.zeros(1)})
    return State(params, opt)


def _train(callbacks, values, key="val_loss", state=None, on_epoch=None):
    """Run epochs feeding `values` of the monitored figure; params['w'] holds the epoch number."""
    state = state or _state()
    for cb in callbacks:
        cb.on_train_begin(state)
    for epoch, value in enumerate(values):
        state.epoch = epoch
        state.params["w"][...] = epoch  # in place, as an optimizer step would
        if on_epoch:
            on_epoch(state)
        logs = {"loss": 1.0, key: value}
        for cb in callbacks:
            cb.on_epoch_end(state, logs)
        if state.stop_training:
            break
    for cb in callbacks:
        cb.on_train_end(state)
    return state


def test_early_stopping_patience():
    es = EarlyStopping(patience=2)
    state = _train([es], [1.0, 0.9, 0.95, 0.96, 0.97, 0.5])
    assert state.stop_training and es.stopped_epoch == 3 and es.best == 0.9 and es.best_epoch == 1
    es0 = EarlyStopping(patience=0)
    _train([es0], [1.0, 0.9, 0.95, 0.5])
    assert es0.stopped_epoch == 2


def test_early_stopping_min_delta_and_max_mode():
    es = EarlyStopping(monitor="val_accuracy", patience=1, min_delta=0.05)
    assert es._tracker.direction == "max"
    _train([es], [0.5, 0.52, 0.53], key="val_accuracy")  # +0.02 is not an improvement
    assert es.stopped_epoch == 1 and es.best == 0.5
    es = EarlyStopping(monitor="val_accuracy", patience=1, mode="min")
    _train([es], [0.5, 0.6], key="val_accuracy")
    assert es.stopped_epoch == 1


@pytest.mark.parametrize("monitor, direction", [
    ("val_accel_mae", "min"),             # an output named accel: its mae is an error whatever the name holds
    ("val_loss_head_accuracy", "max"),    # an output named loss_head: its accuracy grows
    ("val_precision_1", "max"),           # the second precision metric
    ("top_k_accuracy", "max"), ("val_auc", "max"), ("recall", "max"),
    ("val_loss", "min"), ("speed_loss", "min"), ("mse", "min"), ("lr", "min"), ("val_acc", "max"),
])
def test_mode_auto_reads_the_metric_from_the_last_word_of_the_monitor(monitor, direction):
    for callback in (EarlyStopping(monitor=monitor), ReduceLROnPlateau(monitor=monitor),
                     BestCheckpoint("best.npz", monitor=monitor)):
        assert callback._tracker.direction == direction, callback


def test_restore_best_on_early_stop_and_at_epoch_limit():
    es = EarlyStopping(patience=1, restore_best=True)
    state = _train([es], [1.0, 0.5, 0.7, 0.8])
    assert es.stopped_epoch == 2 and state.params["w"].tolist() == [1, 1, 1]
    # Training reaches its last epoch without stopping: the best epoch (1) is still restored, in place,
    # into the optimizer's flat buffer.
    es = EarlyStopping(patience=10, restore_best=True)
    state = _train([es], [1.0, 0.5, 0.7, 0.8])
    assert not state.stop_training
    assert state.params["w"].tolist() == [1, 1, 1]
    assert np.shares_memory(state.params["w"], state.optimizer.flat_params)
    assert state.optimizer.flat_params[:3].tolist() == [1, 1, 1]
    es = EarlyStopping(patience=10)  # without restore_best nothing is touched
    state = _train([es], [1.0, 0.5, 0.7, 0.8])
    assert state.params["w"].tolist() == [3, 3, 3]


def test_reduce_lr_on_plateau():
    rl = ReduceLROnPlateau(factor=0.5, patience=2, min_lr=0.02)
    state = _train([rl], [1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0])
    # waits: epochs 1,2 -> reduce at 2 (0.05); epochs 3,4 -> reduce at 4 (0.025); 5,6 -> 0.02 (floor); then stays
    assert [r[0] for r in rl.reductions] == [2, 4, 6]
    assert state.optimizer.lr == pytest.approx(0.02)


def test_reduce_lr_cooldown_and_improvement_resets():
    rl = ReduceLROnPlateau(factor=0.1, patience=1, cooldown=2, min_delta=0.0)
    state = _train([rl], [1.0, 1.0, 1.0, 1.0, 1.0, 0.5, 0.6])
    # Keras counting: reduce at epoch 1 (cooldown 2); epoch 2 is cooldown, at epoch 3 the counter reaches 0
    # before the check, so epoch 3 counts again -> reduce; epoch 4 cooldown; 5 improves; 6 reduces.
    assert [r[0] for r in rl.reductions] == [1, 3, 6]
    assert state.optimizer.lr == pytest.approx(1e-4)


def test_best_checkpoint(tmp_path):
    path = tmp_path / "best.npz"
    bc = BestCheckpoint(path, monitor="val_loss")
    _train([bc], [1.0, 0.5, 0.7, 0.4, 0.9])
    assert bc.saves == 3 and bc.best_epoch == 3
    c = load_checkpoint(path)
    assert c.epoch == 4 and c.params["w"].tolist() == [3, 3, 3]
    assert c.extra["monitor"] == "val_loss" and c.extra["value"] == 0.4 and "iterations" in c.optimizer_state
    calls = []
    hook = BestCheckpoint(tmp_path / "x.npz", save=lambda p, s, logs: calls.append((p.name, s.epoch)))
    _train([hook], [2.0, 1.0, 3.0])
    assert calls == [("x.npz", 0), ("x.npz", 1)] and not (tmp_path / "x.npz").exists()


def test_missing_monitor_is_explained():
    with pytest.raises(NndError) as e:
        _train([EarlyStopping(monitor="val_loss")], [1.0], key="loss_other")
    msg = str(e.value)
    assert "early_stopping monitors 'val_loss', which is not in the epoch logs" in msg
    assert "no validation data" in msg and "logged: loss, loss_other" in msg
    with pytest.raises(NndError, match="did you mean 'val_accuracy'"):
        _train([ReduceLROnPlateau(monitor="val_acuracy")], [1.0], key="val_accuracy")


def test_make_callback():
    assert isinstance(make_callback("early_stopping", patience=3), EarlyStopping)
    assert isinstance(make_callback("EarlyStopping"), EarlyStopping)
    assert isinstance(make_callback("ReduceLROnPlateau", factor=0.5), ReduceLROnPlateau)
    assert isinstance(make_callback("best_checkpoint", path="b.npz"), BestCheckpoint)
    with pytest.raises(NndError, match="unknown callback 'early_stoping'; did you mean 'early_stopping'"):
        make_callback("early_stoping")
    with pytest.raises(NndError, match="unknown argument 'restore_bset' for callback 'early_stopping'; "
                                       "did you mean 'restore_best'"):
        make_callback("early_stopping", restore_bset=True)
    assert make_callback("early_stopping", restore_best_weights=True).restore_best  # Keras' name
    with pytest.raises(NndError, match="needs argument path"):
        make_callback("best_checkpoint")
    with pytest.raises(NndError, match=r"factor must be a number in \[0, 1\)"):
        make_callback("reduce_lr_on_plateau", factor=1.0)
    with pytest.raises(NndError, match="patience must be an integer >= 0"):
        make_callback("early_stopping", patience=-1)
    with pytest.raises(NndError, match="mode must be 'auto', 'min' or 'max'"):
        make_callback("early_stopping", mode="maximum")
