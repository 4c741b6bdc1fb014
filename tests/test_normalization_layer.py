"""normalization: Keras' Normalization preprocessing layer. Given statistics and learned ones against
PyTorch in float64 (outputs and gradients), model.adapt against NumPy's mean and var, invert, the
errors, the refusal to run without statistics, and nnd train adapting a tabular model by itself."""
from __future__ import annotations

import numpy as np
import pytest
from click.testing import CliRunner

import nnd
from nnd import NndError
from nnd.cli import main
from nnd.runtime.checkpoint import load_checkpoint, load_weights

torch = pytest.importorskip("torch")  # the independent reference
from torch_reference import assert_matches_torch, randomized, torch_parameters  # noqa: E402

EPSILON = 1e-7  # Keras' backend.epsilon()

MEAN = [0.5, -1.0, 2.0, 0.0, 3.0]
VARIANCE = [4.0, 0.25, 1.0, 0.0, 9.0]  # the fourth feature's zero variance meets Keras' epsilon floor

GIVEN = """model m {{
    input x: [5]
    dense(5, name=pre)
    normalization({args})
    dense(3)
}}
train m {{ loss = mse }}
"""

LEARNED = """model m {
    input x: [5]
    normalization(name=norm)
    dense(3)
}
train m { loss = mse }
"""


def _spread(variance) -> torch.Tensor:
    return torch.clamp(torch.sqrt(torch.tensor(variance, dtype=torch.float64)), min=EPSILON)


def _data(seed: int = 2, n: int = 6) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    return rng.normal(size=(n, 5)), rng.normal(size=(n, 3))


@pytest.mark.parametrize("level", [0, 1, 2])
@pytest.mark.parametrize("invert", [False, True])
def test_given_statistics_match_torch(level, invert):
    # `pre` puts parameters before the layer, so that the gradient through it is checked too
    args = f"mean={MEAN}, variance={VARIANCE}, invert={'true' if invert else 'false'}"
    model = randomized(GIVEN.format(args=args), level)
    assert not any(name.startswith("normalization") for name in model.parameters())  # constants, as in Keras
    x, y = _data()
    p = torch_parameters(model)
    h = torch.tensor(x) @ p["pre.kernel"] + p["pre.bias"]
    mean, spread = torch.tensor(MEAN, dtype=torch.float64), _spread(VARIANCE)
    normed = h * spread + mean if invert else (h - mean) / spread
    assert_matches_torch(model, x, y, normed @ p["dense.kernel"] + p["dense.bias"], p, every_parameter_used=True)


@pytest.mark.parametrize("level", [0, 2])
def test_scalar_statistics_broadcast_over_the_features(level):
    model = randomized(GIVEN.format(args="mean=1.5, variance=[2.0]"), level)
    x, y = _data(3)
    p = torch_parameters(model)
    h = torch.tensor(x) @ p["pre.kernel"] + p["pre.bias"]
    out = ((h - 1.5) / np.sqrt(2.0)) @ p["dense.kernel"] + p["dense.bias"]
    assert_matches_torch(model, x, y, out, p)


def _learned_model(level: int, mean, variance) -> nnd.Model:
    model = randomized(LEARNED, level)
    model.set_parameters({"norm.mean": np.asarray(mean), "norm.variance": np.asarray(variance),
                          "norm.count": np.asarray(10.0)}, strict=False)
    return model


@pytest.mark.parametrize("level", [0, 1, 2])
def test_learned_statistics_match_torch_and_get_no_gradient(level):
    model = _learned_model(level, MEAN, VARIANCE)
    x, y = _data(4)
    p = torch_parameters(model)
    out = ((torch.tensor(x) - p["norm.mean"]) / _spread(VARIANCE)) @ p["dense.kernel"] + p["dense.bias"]
    loss = ((out - torch.tensor(y)) ** 2).mean()
    loss.backward()
    np.testing.assert_allclose(model.predict(x), out.detach().numpy(), rtol=1e-10, atol=1e-12)
    value, grads = model.loss_and_gradients(x, y)
    assert value == pytest.approx(float(loss.detach()), rel=1e-10)
    assert set(grads) == {"dense.kernel", "dense.bias"}  # the statistics are not trained
    for name, grad in grads.items():
        np.testing.assert_allclose(grad, p[name].grad.numpy(), rtol=1e-9, atol=1e-12)


def test_invert_undoes_the_normalization_with_the_same_statistics():
    source = f"""model m {{
        input x: [5]
        normalization(mean={MEAN}, variance={[v + 1 for v in VARIANCE]})
        normalization(mean={MEAN}, variance={[v + 1 for v in VARIANCE]}, invert=true)
    }}"""
    model = nnd.loads(source, dtype="float64")
    x, _ = _data(5)
    np.testing.assert_allclose(model.predict(x), x, rtol=1e-12, atol=1e-12)
    single = nnd.loads(source.replace("    normalization(mean", "    # normalization(mean", 1), dtype="float64")
    expected = x * np.sqrt(np.asarray(VARIANCE) + 1) + np.asarray(MEAN)
    np.testing.assert_allclose(single.predict(x), expected, rtol=1e-12)


def test_zero_variance_divides_by_keras_epsilon():
    model = nnd.loads("model m { input x: [2]\n normalization(mean=1, variance=0) }", dtype="float64")
    np.testing.assert_allclose(model.predict(np.array([[1.5, 0.0]])), [[0.5 / EPSILON, -1.0 / EPSILON]])


# ---------------------------------------------------------------------------------------------- adapt

def test_adapt_computes_numpy_mean_and_population_variance():
    model = nnd.loads(LEARNED, dtype="float64")
    x = np.random.default_rng(6).normal(3.0, 2.0, size=(37, 5))
    model.adapt(x)
    p = model.parameters()
    np.testing.assert_array_equal(p["norm.mean"], np.mean(x, axis=0))
    np.testing.assert_array_equal(p["norm.variance"], np.var(x, axis=0))
    assert p["norm.count"] == 37
    np.testing.assert_allclose(model.predict(x[:3]), ((x[:3] - x.mean(0)) / x.std(0)) @ p["dense.kernel"]
                               + p["dense.bias"], rtol=1e-12)


def test_adapt_reduces_every_axis_but_the_features_of_a_sequence_and_takes_inputs_by_name():
    source = """model m {
        input steps: [4, 3]
        input table: [2]
        a = steps -> normalization(name=per_step) -> flatten()
        b = table -> normalization(name=per_column)
        output concat(a, b) -> dense(1)
    }"""
    model = nnd.loads(source)
    rng = np.random.default_rng(7)
    steps, table = rng.normal(size=(20, 4, 3)), rng.uniform(0, 100, size=(20, 2))
    model.adapt({"steps": steps, "table": table})
    p = model.parameters()
    np.testing.assert_allclose(p["per_step.mean"], steps.mean(axis=(0, 1)), rtol=1e-6)
    np.testing.assert_allclose(p["per_step.variance"], steps.var(axis=(0, 1)), rtol=1e-6)
    np.testing.assert_allclose(p["per_column.variance"], table.var(axis=0), rtol=1e-6)
    assert p["per_step.count"] == 80 and p["per_column.count"] == 20
    assert p["per_step.mean"].dtype == np.float32


def test_adapt_runs_the_layers_before_a_deeper_normalization_adapting_earlier_ones_first():
    source = """model m {
        input x: [3]
        normalization(name=first)
        dense(4, name=mix)
        normalization(name=second)
    }"""
    model = nnd.loads(source, dtype="float64")
    x = np.random.default_rng(8).normal(5.0, 3.0, size=(2500, 3))  # more than one slice of the run
    model.adapt(x)
    p = model.parameters()
    hidden = (x - x.mean(0)) / x.std(0) @ p["mix.kernel"] + p["mix.bias"]
    np.testing.assert_allclose(p["second.mean"], hidden.mean(0), rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(p["second.variance"], hidden.var(0), rtol=1e-10)
    out = model.predict(x)
    np.testing.assert_allclose(out.mean(0), 0, atol=1e-10)
    np.testing.assert_allclose(out.var(0), 1, rtol=1e-10)


def test_adapt_errors_are_clear():
    given = nnd.loads("model m { input x: [2]\n normalization(mean=0, variance=1) }")
    with pytest.raises(NndError, match="has no normalization layer to adapt"):
        given.adapt(np.zeros((3, 2)))
    model = nnd.loads(LEARNED)
    with pytest.raises(NndError, match=r"input 'x' has shape \(3, 4\) but the model expects \(batch, 5\)"):
        model.adapt(np.zeros((3, 4)))
    with pytest.raises(NndError, match="at least one sample"):
        model.adapt(np.zeros((0, 5)))
    with pytest.raises(NndError, match=r"input 'x' contains NaN at index \(0, 1\)"):
        model.adapt(np.array([[1.0, np.nan, 0, 0, 0]]))
    deep = nnd.loads("model m {\n input x: [1]\n exponential()\n normalization(name=after)\n}")
    with pytest.raises(NndError, match=r"<string>:4:2: error: cannot adapt normalization layer 'after': its input "
                                       "holds NaN or infinite values"):
        deep.adapt(np.array([[1000.0]]))  # exp overflows float32


# ------------------------------------------------------------------------------------- without statistics

def test_a_layer_never_adapted_is_refused_by_fit_evaluate_predict_and_gradients():
    model = nnd.loads(LEARNED)
    x, y = _data(9)
    calls = {"fit": lambda: model.fit(x, y, epochs=1, verbose=0), "evaluate": lambda: model.evaluate(x, y),
             "predict": lambda: model.predict(x), "compute gradients": lambda: model.loss_and_gradients(x, y)}
    for doing, call in calls.items():
        with pytest.raises(NndError) as caught:
            call()
        text = str(caught.value)
        assert text.startswith(f"<string>:3:5: error: cannot {doing}: normalization layer 'norm' has no "
                               "statistics yet"), text
        assert "model.adapt(x)" in text and "mean= and variance=" in text
    model.adapt(x)
    model.fit(x, y, epochs=1, verbose=0)  # now it trains


def test_keras_3_weights_run_though_their_count_stayed_0():
    # Keras 3's adapt assigns mean and variance only: its count weight stays 0
    model = nnd.loads(LEARNED, dtype="float64")
    x, _ = _data(13)
    kernel, bias = model.parameters()["dense.kernel"], model.parameters()["dense.bias"]
    model.set_weights([np.asarray(MEAN), np.asarray(VARIANCE) + 1, np.asarray(0), kernel, bias])
    expected = (x - np.asarray(MEAN)) / np.sqrt(np.asarray(VARIANCE) + 1) @ kernel + bias
    np.testing.assert_allclose(model.predict(x), expected, rtol=1e-12)
    model.set_weights([np.zeros(5), np.ones(5), np.asarray(0), kernel, bias])  # what a layer never adapted holds
    with pytest.raises(NndError, match="cannot predict: normalization layer 'norm' has no statistics yet"):
        model.predict(x)


def test_statistics_survive_save_load_set_weights_and_a_copy(tmp_path):
    import copy

    model = nnd.loads(LEARNED)
    x, y = _data(10, n=40)
    model.adapt(x * 4 + 1)
    model.fit(x, y, epochs=1, verbose=0)
    saved = model.parameters()
    loaded = nnd.load(model.save(tmp_path / "saved"))
    for twin in (loaded, copy.deepcopy(model)):
        for name in ("norm.mean", "norm.variance", "norm.count"):
            np.testing.assert_array_equal(twin.parameters()[name], saved[name])
        np.testing.assert_array_equal(twin.predict(x), model.predict(x))
    fresh = nnd.loads(LEARNED)
    fresh.set_weights(model.get_weights())  # Keras' order: mean, variance, count, then the dense layer
    np.testing.assert_array_equal(fresh.predict(x), model.predict(x))


# ------------------------------------------------------------------------------------------------ errors

@pytest.mark.parametrize("layer, message", [
    ("normalization(axis=0)", "3:5: error: normalization keeps statistics per feature of the last axis (axis=-1), "
                              "got axis=0 for f32[N,4,3]"),
    ("normalization(axis=1)", "got axis=1 for f32[N,4,3]"),
    ("normalization(mean=[1, 2])", "3:5: error: normalization is given mean but no variance: give both"),
    ("normalization(variance=1)", "normalization is given variance but no mean"),
    ("normalization(mean=[1, 2], variance=1)", "normalization mean has 2 values, but its input f32[N,4,3] has 3 "
                                               "features on its last axis"),
    ("normalization(mean=0, variance=[1, -1, 1])", "3:36: error: normalization argument 'variance': must be at "
                                                   "least 0, got -1"),
    ("normalization(mean=relu, variance=1)", "normalization argument 'mean'"),
])
def test_mistakes_are_located(layer, message):
    with pytest.raises(NndError, match=None) as caught:
        nnd.loads(f"model m {{\n    input x: [4, 3]\n    {layer}\n}}")
    assert message in str(caught.value), str(caught.value)


def test_last_axis_by_number_and_integer_inputs():
    model = nnd.loads("model m { input x: [4, 3]\n normalization(axis=2, mean=1, variance=4) }", dtype="float64")
    np.testing.assert_allclose(model.predict(np.full((1, 4, 3), 3.0)), np.ones((1, 4, 3)))
    with pytest.raises(NndError, match="normalization needs a float input, got i32"):
        nnd.loads("model m { input x: int32[4]\n normalization() }")


def test_summary_counts_the_statistics_as_non_trainable():
    text = nnd.loads(LEARNED).summary(print_fn=None)
    assert "Trainable params: 18" in text and "Non-trainable params: 11" in text  # 5 + 5 + count, as Keras


# --------------------------------------------------------------------------------------------- nnd train

TABULAR = """model tab {
    input x: [4]
    normalization(name=norm)
    dense(8, activation=relu)
    dense(2, activation=softmax)
}
train tab {
    optimizer = adam(lr=0.05)
    loss = sparse_categorical_crossentropy
    metrics = [accuracy]
    epochs = 3
    validation_split = 0.25
}
"""


@pytest.fixture
def tabular(tmp_path, monkeypatch):
    """Features on scales far from 1 (thousands, hundredths), the case normalization is for."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "tab.nnd").write_text(TABULAR)
    rng = np.random.default_rng(11)
    x = rng.normal(size=(160, 4)) * [1000.0, 0.01, 1.0, 50.0] + [5000.0, 0.0, -3.0, 200.0]
    y = ((x[:, 0] - 5000) / 1000 + (x[:, 1]) / 0.01 > 0).astype(np.int64)
    np.savez(tmp_path / "tab.npz", x=x.astype(np.float32), y=y)
    lines = ["a,b,c,d,label"] + [",".join(f"{v:.6g}" for v in row) + f",{label}" for row, label in zip(x, y)]
    (tmp_path / "tab.csv").write_text("\n".join(lines) + "\n")
    return tmp_path, x.astype(np.float32)


@pytest.mark.parametrize("data", ["tab.npz", "tab.csv"])
def test_nnd_train_adapts_on_the_training_samples_then_trains(tabular, data):
    path, x = tabular
    result = CliRunner().invoke(main, ["train", "tab.nnd", "--data", data, "--out", "run", "--seed", "1"])
    assert result.exit_code == 0, result.output
    assert ("note: normalization 'norm': mean and variance per feature learned from the 120 training samples"
            in result.stdout)
    weights = load_weights(path / "run" / "weights.npz")
    trained = x[:120].astype(np.float64)  # validation_split holds out the last 40
    np.testing.assert_allclose(weights["norm.mean"], trained.mean(0), rtol=1e-4)
    np.testing.assert_allclose(weights["norm.variance"], trained.var(0), rtol=1e-4)
    assert weights["norm.count"] == 120
    accuracies = [float(line.split("val_accuracy ")[1].split()[0]) for line in result.stdout.splitlines()
                  if line.startswith("epoch")]
    assert accuracies[-1] >= 0.8, result.stdout  # the features on their own scales would stall training
    model = nnd.load(path / "run")
    assert model.evaluate(x, np.load(path / "tab.npz")["y"])["accuracy"] >= 0.8


def test_nnd_train_resumed_keeps_the_checkpoint_statistics_and_weights_keep_theirs(tabular):
    path, x = tabular
    runner = CliRunner()
    first = runner.invoke(main, ["train", "tab.nnd", "--data", "tab.npz", "--out", "run", "--epochs", "1"])
    assert first.exit_code == 0, first.output
    statistics = load_checkpoint(path / "run" / "checkpoint.npz")
    np.savez(path / "other.npz", x=x * 3, y=np.load(path / "tab.npz")["y"])
    result = runner.invoke(main, ["train", "tab.nnd", "--data", "other.npz", "--resume", "run/checkpoint.npz",
                                  "--epochs", "2"])
    assert result.exit_code == 0, result.output
    assert "normalization" not in result.stdout
    resumed = load_weights(path / "run" / "weights.npz")
    params = statistics.params
    for name in ("norm.mean", "norm.variance", "norm.count"):
        np.testing.assert_array_equal(resumed[name], params[name])
    result = runner.invoke(main, ["train", "tab.nnd", "--data", "other.npz", "--weights", "run", "--out", "again",
                                  "--epochs", "1"])
    assert result.exit_code == 0 and "normalization" not in result.stdout, result.output
    np.testing.assert_array_equal(load_weights(path / "again" / "weights.npz")["norm.mean"], resumed["norm.mean"])


def test_nnd_summary_shows_the_non_trainable_statistics(tabular):
    result = CliRunner().invoke(main, ["summary", "tab.nnd"])
    assert result.exit_code == 0, result.output
    assert "normalization" in result.stdout and "Non-trainable params: 9" in result.stdout


def test_keras_class_name_points_at_the_layer():
    with pytest.raises(NndError, match="unknown layer 'Normalization'; did you mean 'normalization'\\?"):
        nnd.loads("model m {\n    input x: [4]\n    Normalization()\n}")


# ------------------------------------------------------------------------------------------ cupy backend

CUPY_MODEL = f"""model m {{
    input x: [5]
    a = x -> normalization(mean={MEAN}, variance={[v + 1 for v in VARIANCE]}, name=given)
    b = x -> normalization(name=learned) -> dense(5, activation=relu)
    output concat(a, b) -> normalization(name=deeper, invert=true) -> dense(3)
}}
train m {{ loss = mse }}
"""


def test_training_steps_through_the_cupy_kernels_and_a_captured_graph_on_a_host_stand_in(tmp_path, monkeypatch):
    """The per-feature constant is made once, before the capture, and replays as the eager run computes."""
    import sys

    from capture_sim import simulate
    from host_cuda import FakeCupy
    from nnd.runtime import backend as backend_module
    from nnd.runtime import kernels_cupy

    monkeypatch.setitem(sys.modules, "cupy", FakeCupy(tmp_path))
    monkeypatch.setattr(backend_module, "_CACHE", {})
    monkeypatch.setattr(kernels_cupy, "_COMPILED", {})
    x, y = _data(12, n=8)
    losses, params = {}, {}
    for backend in ("numpy", "cupy"):
        model = nnd.loads(CUPY_MODEL, backend=backend, seed=0, dtype="float64", cuda_graphs=False)
        model.adapt(x * 3 + 2)
        trainer = model._get_trainer()
        graphs = simulate(trainer.train_executor) if backend == "cupy" else None
        losses[backend] = [float(trainer.step(model._feeds(x[i:i + 4], y[i:i + 4]))["loss"]) for i in (0, 4, 0)]
        params[backend] = model.parameters()
    assert (graphs.captures, graphs.replays) == (1, 2)
    np.testing.assert_allclose(losses["cupy"], losses["numpy"], rtol=1e-12)
    for name, want in params["numpy"].items():
        np.testing.assert_allclose(params["cupy"][name], want, rtol=1e-10, atol=1e-13, err_msg=name)
