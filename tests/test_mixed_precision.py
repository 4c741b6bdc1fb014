"""Mixed precision: float16 graphs on float32 master weights with dynamic loss scaling (on NumPy here;
CuPy runs the same code with its own float16 kernels); the TF32 switch of the cupy backend."""
from __future__ import annotations

import os

import numpy as np
import pytest
from click.testing import CliRunner

import nnd
from nnd.cli import main
from nnd.compiler.diagnostics import NndError
from nnd.compiler.frontend import compile_text
from nnd.compiler.training_graph import LOSS_SCALE, SCALED_LOSS, build_training_graph
from nnd.runtime.executor import Executor
from nnd.runtime.loss_scaling import MAXIMUM_SCALE, LossScaler

MODEL = """model tiny {
    input x: [4]
    dense(16, activation=relu)
    dense(3, activation=softmax)
}

train tiny {
    optimizer  = adam(lr=0.01)
    loss       = sparse_categorical_crossentropy
    metrics    = [accuracy]
    batch_size = 16
    epochs     = 2
}
"""
REGRESSION = """model big_targets {
    input x: [4]
    dense(1)
}

train big_targets {
    optimizer = sgd(lr=0.0001)
    loss      = mse
}
"""


def data(n=400):
    rng = np.random.default_rng(0)
    x = rng.normal(size=(n, 4)).astype(np.float32)
    return x, np.argmax(x[:, :3], axis=1)


def test_scaler_backs_off_on_overflow_and_grows_after_good_steps():
    scaler = LossScaler(initial=1024.0, growth_interval=3)
    finite = {"w": np.array([2048.0, -512.0], dtype=np.float16)}
    unscaled = scaler.unscale(finite, np, np.float32)
    assert unscaled["w"].dtype == np.float32 and np.array_equal(unscaled["w"], [2.0, -0.5])
    assert scaler.unscale({"w": np.array([np.inf], dtype=np.float16)}, np, np.float32) is None
    assert (scaler.scale, scaler.good_steps, scaler.skipped) == (512.0, 0, 1)
    for _ in range(3):
        assert scaler.unscale(finite, np, np.float32) is not None
    assert (scaler.scale, scaler.good_steps) == (1024.0, 0)
    scaler.scale = MAXIMUM_SCALE
    for _ in range(3):
        scaler.unscale(finite, np, np.float32)
    assert scaler.scale == MAXIMUM_SCALE  # never past what float16 can hold
    restored = LossScaler()
    restored.load_state(scaler.state())
    assert restored.state() == scaler.state()


def test_scaled_training_graph_gives_scaled_gradients():
    program = compile_text(MODEL)
    plain = build_training_graph(program, "tiny").graph
    scaled = build_training_graph(program, "tiny", loss_scaling=True).graph
    assert LOSS_SCALE in [v.name for v in scaled.inputs] and SCALED_LOSS in scaled.outputs
    rng = np.random.default_rng(1)
    x, y = data(8)
    feeds = {"x": x.astype(np.float64), "target:output": y}
    params = {name: rng.normal(scale=0.3, size=value.type.shape) for name, value in plain.params.items()}
    expected = Executor(plain, dtype=np.float64).run(feeds, params)
    got = Executor(scaled, dtype=np.float64).run({**feeds, LOSS_SCALE: np.float64(8.0)}, params)
    assert got["loss"] == pytest.approx(expected["loss"], rel=1e-12)
    for name in params:
        np.testing.assert_allclose(got["grad:" + name], 8.0 * expected["grad:" + name], rtol=1e-12)


def test_mixed_precision_trains_like_float32_on_float32_weights():
    x, y = data()
    histories, models = [], []
    for mixed in (False, True):
        model = nnd.loads(MODEL, seed=0, mixed_precision=mixed)
        histories.append([epoch["loss"] for epoch in model.fit(x, y, epochs=3, verbose=0).epochs])
        models.append(model)
    mixed = models[1]
    assert mixed._trainer.train_executor.dtype == np.float16 and mixed._trainer.eval_executor.dtype == np.float16
    assert all(value.dtype == np.float32 for value in mixed.params.values())
    assert mixed.predict(x[:5]).dtype == np.float32
    np.testing.assert_allclose(histories[1], histories[0], rtol=0.02)
    assert histories[1][-1] < 0.5 * histories[1][0]
    assert mixed.evaluate(x, y)["accuracy"] > 0.9


def test_an_overflowing_step_is_skipped_and_the_scale_halved():
    model = nnd.loads(REGRESSION, seed=0, mixed_precision=True)
    x = np.ones((8, 4), dtype=np.float32)
    y = np.full((8, 1), 100.0, dtype=np.float32)  # loss ~ 1e4: times 2^15 it overflows float16
    trainer = model._get_trainer()
    feeds = model._feeds(x, y)
    before = {k: np.array(v) for k, v in model.params.items()}
    trainer.step(feeds)
    assert trainer.scaler.scale == MAXIMUM_SCALE / 2 and trainer.scaler.skipped == 1
    assert trainer.optimizer.iterations == 0
    for name, value in before.items():
        np.testing.assert_array_equal(model.params[name], value)
    while trainer.optimizer.iterations == 0:  # backs off until the scaled gradients fit
        trainer.step(feeds)
    assert trainer.scaler.scale < MAXIMUM_SCALE / 2
    assert any(not np.array_equal(model.params[k], v) for k, v in before.items())
    state = trainer.schedule_state()["loss_scaler"]
    assert state["skipped"] == trainer.scaler.skipped >= 1


def test_mixed_precision_needs_float32_weights():
    with pytest.raises(NndError, match="mixed precision computes in float16 on float32 weights"):
        nnd.loads(MODEL, dtype="float64", mixed_precision=True)


def test_train_command_takes_mixed_precision(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "tiny.nnd").write_text(MODEL)
    x, y = data(200)
    np.savez(tmp_path / "data.npz", x_train=x, y_train=y)
    result = CliRunner().invoke(main, ["train", "tiny.nnd", "--data", "data.npz", "--mixed-precision",
                                       "--out", "run"])
    assert result.exit_code == 0, result.output
    assert "mixed precision (float16)" in result.stdout
    weights = np.load(tmp_path / "run" / "weights.npz", allow_pickle=False)
    assert all(weights[name].dtype == np.float32 for name in weights.files)


def test_tf32_needs_the_cupy_backend():
    with pytest.raises(NndError, match="tf32 runs float32 GEMMs on a GPU's Tensor Cores: it needs the cupy backend"):
        nnd.loads(MODEL, tf32=True)


def test_tf32_on_the_cupy_backend_sets_cupys_switch(tmp_path, monkeypatch):
    import sys

    from host_cuda import FakeCupy
    from nnd.runtime import backend as backend_module

    monkeypatch.setitem(sys.modules, "cupy", FakeCupy(tmp_path))
    monkeypatch.setattr(backend_module, "_CACHE", {})
    monkeypatch.setenv("CUPY_TF32", "0")  # and restored after the test, whatever the model sets
    nnd.loads(MODEL, backend="cupy", tf32=True)
    assert os.environ["CUPY_TF32"] == "1"
