"""Mixed precision: float16 graphs on float32 master weights with dynamic loss scaling (on NumPy here;
CuPy runs the same code with its own float16 kernels); the TF32 switch of the cupy backend."""
from __future__ import annotations

import os
import sys
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

import nnd
from nnd.bench import _id_range, random_array
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


# ------------------------------------------------------------------------------------------ bfloat16

def test_bfloat16_trains_like_float32_without_loss_scaling():
    ml_dtypes = pytest.importorskip("ml_dtypes")
    x, y = data()
    histories, models = [], []
    for mixed in (False, "bfloat16"):
        model = nnd.loads(MODEL, seed=0, mixed_precision=mixed)
        histories.append([epoch["loss"] for epoch in model.fit(x, y, epochs=3, verbose=0).epochs])
        models.append(model)
    trainer = models[1]._trainer
    assert trainer.train_executor.dtype == ml_dtypes.bfloat16 and trainer.eval_executor.dtype == ml_dtypes.bfloat16
    assert trainer.scaler is None and LOSS_SCALE not in [v.name for v in trainer.train_graph.inputs]
    assert all(value.dtype == np.float32 for value in models[1].params.values())
    assert models[1].predict(x[:5]).dtype == np.float32
    np.testing.assert_allclose(histories[1], histories[0], rtol=0.05)
    assert models[1].evaluate(x, y)["accuracy"] > 0.9


EXAMPLES = sorted((Path(__file__).resolve().parent.parent / "examples").glob("*.nnd"))


@pytest.mark.parametrize("path", EXAMPLES, ids=[p.stem for p in EXAMPLES])
def test_every_example_steps_in_bfloat16_end_to_end(path):
    """Every float value of the training graph is bfloat16 (NumPy's matmul hands float32 back: the
    executor narrows it), and the first loss is float32's to bfloat16's precision (sums accumulate in
    float32: batchnorm's statistics over 8x32x32 values were 40 % off without)."""
    ml_dtypes = pytest.importorskip("ml_dtypes")
    losses = {}
    for mixed in (False, "bfloat16"):
        model = nnd.load(path, seed=0, mixed_precision=mixed)
        trainer = model._get_trainer()
        rng = np.random.default_rng(0)
        feeds = {v.name: random_array(v.type, 8, rng, _id_range(model, v)) for v in trainer.train_graph.inputs}
        seen = set()
        for step in trainer.train_executor.steps:
            step.kernel = _recording_input_dtypes(step.kernel, seen)
        result = trainer.step(feeds)
        losses[mixed] = float(result["loss"])
        if mixed:
            floats = seen | {v.dtype for v in result.values()}
            assert np.dtype(ml_dtypes.bfloat16) in floats
            assert not floats & {np.dtype(np.float16), np.dtype(np.float32), np.dtype(np.float64)}
            assert all(value.dtype == np.float32 for value in model.params.values())
    np.testing.assert_allclose(losses["bfloat16"], losses[False], rtol=0.03)


def _recording_input_dtypes(kernel, seen: set):
    def run(ctx, attrs, *args):
        seen.update(a.dtype for a in args if hasattr(a, "dtype") and a.dtype.kind not in "iub")
        return kernel(ctx, attrs, *args)
    return run


def test_train_command_takes_bfloat16(tmp_path, monkeypatch):
    pytest.importorskip("ml_dtypes")
    monkeypatch.chdir(tmp_path)
    (tmp_path / "tiny.nnd").write_text(MODEL)
    x, y = data(200)
    np.savez(tmp_path / "data.npz", x_train=x, y_train=y)
    result = CliRunner().invoke(main, ["train", "tiny.nnd", "--data", "data.npz", "--mixed-precision", "bfloat16",
                                       "--out", "run"])
    assert result.exit_code == 0, result.output
    assert "mixed precision (bfloat16)" in result.stdout
    result = CliRunner().invoke(main, ["train", "tiny.nnd", "--data", "data.npz", "--mixed-precision", "int8"])
    assert result.exit_code == 2 and "'int8' is not one of 'float16', 'bfloat16'" in result.output


def test_bfloat16_without_ml_dtypes_is_one_clear_error(monkeypatch):
    monkeypatch.setitem(sys.modules, "ml_dtypes", None)  # `import ml_dtypes` raises ImportError
    with pytest.raises(NndError, match=r"bfloat16 needs the ml_dtypes package: pip install ml_dtypes"):
        nnd.loads(MODEL, mixed_precision="bfloat16")
    with pytest.raises(NndError, match="mixed precision computes in float16 or bfloat16, not 'fp8'"):
        nnd.loads(MODEL, mixed_precision="fp8")


def test_two_byte_sums_accumulate_in_float32():
    ml_dtypes = pytest.importorskip("ml_dtypes")
    from nnd.runtime.precision import wide_mean, wide_sum

    assert float(np.sum(np.ones((4096, 3), dtype=ml_dtypes.bfloat16), axis=0)[0]) == 256  # what it avoids
    for dtype in (np.float16, ml_dtypes.bfloat16):
        ones = np.ones((4096, 3), dtype=dtype)
        total = wide_sum(np, ones, 0)
        assert total.dtype == dtype and np.all(total.astype(np.float32) == 4096)
        values = np.full((3, 4096), 0.1, dtype=dtype)
        assert np.allclose(wide_mean(np, values, 1, keepdims=True).astype(np.float32), 0.1, rtol=1e-2)
    float32 = np.ones(5, dtype=np.float32)
    assert wide_sum(np, float32).dtype == np.float32
