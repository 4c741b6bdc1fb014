"""The Python API of the training path (`nnd.loads` → Model): fit, gradients, losses, parameters, saving,
train-only layers, reproducibility, resume, callbacks, optimizers and bad input. Every model is tiny."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

import nnd
from nnd import NndError
from nnd.compiler.summary import summarize
from nnd.model import CACHE_BYTES, MIN_SLICE
from nnd.runtime.callbacks import EarlyStopping, ReduceLROnPlateau
from nnd.runtime.run_directory import RunDirectory, resume

ROOT = Path(__file__).resolve().parent.parent


def _separable(n: int = 300, dims: int = 4, classes: int = 3, seed: int = 0):
    """Points labelled by the argmax of a fixed linear map, keeping only those with a clear margin."""
    rng = np.random.default_rng(seed)
    w = rng.normal(size=(dims, classes))
    x = rng.normal(size=(4 * n, dims))
    scores = x @ w
    top2 = np.sort(scores, axis=1)[:, -2:]
    keep = (top2[:, 1] - top2[:, 0]) > 0.5
    x, y = x[keep][:n], np.argmax(scores[keep], axis=1)[:n]
    return x.astype(np.float32), y


def _softmax(z):
    z = z - z.max(axis=-1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=-1, keepdims=True)


def _sigmoid(z):
    return 1.0 / (1.0 + np.exp(-z))


def _log_softmax(z):
    m = z.max(axis=-1, keepdims=True)
    return z - m - np.log(np.exp(z - m).sum(axis=-1, keepdims=True))


CLASSIFIER = """
model clf {
    input x: [4]
    dense(16, activation=relu)
    dense(3, activation=softmax)
}
train clf {
    optimizer  = adam(lr=0.02)
    loss       = sparse_categorical_crossentropy
    metrics    = [accuracy]
    batch_size = 32
}
"""


# ------------------------------------------------------------------------------------------ fit


def test_fit_learns_a_separable_problem_and_the_loss_falls():
    x, y = _separable()
    model = nnd.loads(CLASSIFIER, seed=1)
    before = model.evaluate(x, y)
    history = model.fit(x, y, epochs=8, verbose=0)
    losses = history.history["loss"]
    assert len(losses) == 8
    assert losses[-1] < 0.5 * losses[0]
    after = model.evaluate(x, y)
    assert after["loss"] < before["loss"]
    assert after["accuracy"] >= 0.9
    assert before["accuracy"] < 0.8  # the threshold means something: the untrained model is not there


def test_history_keys_with_validation_split_and_validation_data():
    x, y = _separable(200)
    model = nnd.loads(CLASSIFIER)
    history = model.fit(x, y, epochs=2, validation_split=0.25, verbose=0)
    assert {"loss", "accuracy", "val_loss", "val_accuracy", "lr"} <= set(history.history)
    assert all(len(v) == 2 for v in history.history.values())

    model = nnd.loads(CLASSIFIER)
    history = model.fit(x[:150], y[:150], epochs=2, validation_data=(x[150:], y[150:]), verbose=0)
    assert {"loss", "accuracy", "val_loss", "val_accuracy"} <= set(history.history)
    # the last epoch's validation figures are those of the final weights on the validation data
    logs = model.evaluate(x[150:], y[150:])
    assert history.history["val_loss"][-1] == pytest.approx(logs["loss"], rel=1e-5)
    assert history.history["val_accuracy"][-1] == pytest.approx(logs["accuracy"])

    model = nnd.loads(CLASSIFIER)
    assert not any(k.startswith("val_") for k in model.fit(x, y, epochs=1, verbose=0).history)


# ------------------------------------------------------------------------------------------ gradients

CONV_MODEL = """
model conv {
    input image: [6, 6, 2]
    conv2d(3, kernel=3, activation=tanh)
    maxpool2d(2)
    flatten()
    dense(5, activation=tanh)
    dense(3, activation=softmax)
}
train conv { loss = sparse_categorical_crossentropy }
"""

BINARY_MODEL = """
model bin {
    input x: [5]
    dense(4, activation=tanh, kernel_regularizer=l2(0.05))
    dense(1, activation=sigmoid, kernel_regularizer=l2(0.02))
}
train bin { loss = binary_crossentropy }
"""


def _check_gradients(model, x, y, eps=1e-6, tol=1e-6):
    loss, grads = model.loss_and_gradients(x, y)
    params = model.parameters()
    assert set(grads) == set(params)
    for name, value in params.items():
        numeric = np.zeros_like(value)
        for index in np.ndindex(value.shape):
            for sign in (1.0, -1.0):
                moved = {k: v.copy() for k, v in params.items()}
                moved[name][index] += sign * eps
                model.set_parameters(moved)
                numeric[index] += sign * model.loss_and_gradients(x, y)[0] / (2 * eps)
        model.set_parameters(params)
        assert grads[name].shape == value.shape
        assert grads[name].dtype == np.float64
        scale = max(np.max(np.abs(numeric)), np.max(np.abs(grads[name])), 1e-8)
        error = np.max(np.abs(numeric - grads[name])) / scale
        assert error < tol, f"{name}: relative error {error:.2e}"
    assert model.loss_and_gradients(x, y)[0] == pytest.approx(loss, rel=1e-12)  # no update happened


def test_gradients_of_conv_pool_dense_softmax_ce_match_finite_differences():
    model = nnd.loads(CONV_MODEL, dtype="float64", seed=3)
    rng = np.random.default_rng(1)
    x = rng.normal(size=(5, 6, 6, 2))
    y = rng.integers(0, 3, size=5)
    _check_gradients(model, x, y)


def test_gradients_of_sigmoid_binary_ce_with_l2_match_finite_differences():
    model = nnd.loads(BINARY_MODEL, dtype="float64", seed=2)
    rng = np.random.default_rng(2)
    x = rng.normal(size=(7, 5))
    y = rng.integers(0, 2, size=7).astype(np.float64)
    _check_gradients(model, x, y)
    # the regularization is part of the total loss
    p = model.parameters()
    hidden = np.tanh(x @ p["dense.kernel"] + p["dense.bias"])
    z = (hidden @ p["dense_1.kernel"] + p["dense_1.bias"])[:, 0]
    bce = np.mean(np.maximum(z, 0) - z * y + np.log1p(np.exp(-np.abs(z))))
    l2 = 0.05 * np.sum(p["dense.kernel"] ** 2) + 0.02 * np.sum(p["dense_1.kernel"] ** 2)
    assert model.loss_and_gradients(x, y)[0] == pytest.approx(bce + l2, rel=1e-12)


def test_fused_softmax_cross_entropy_equals_numpy_even_for_extreme_logits():
    model = nnd.loads("model m { input x: [4]\n dense(3, activation=softmax) }", seed=0)
    rng = np.random.default_rng(4)
    x = rng.normal(size=(16, 4)).astype(np.float32)
    y = rng.integers(0, 3, size=16)
    p = model.parameters()
    logits = x.astype(np.float64) @ p["dense.kernel"] + p["dense.bias"]
    expected = np.mean(-_log_softmax(logits)[np.arange(16), y])
    assert model.evaluate(x, y)["loss"] == pytest.approx(expected, rel=1e-5)
    assert model.loss_and_gradients(x, y)[0] == pytest.approx(expected, rel=1e-5)

    # Logits far apart: float32 softmax underflows to 0, yet the fused loss stays exact (not clipped to 16.1).
    big = {"dense.kernel": p["dense.kernel"] * 300, "dense.bias": p["dense.bias"]}
    model.set_parameters(big)
    logits = x.astype(np.float64) @ big["dense.kernel"].astype(np.float64) + big["dense.bias"]
    expected = np.mean(-_log_softmax(logits)[np.arange(16), y])
    assert expected > 50
    loss, grads = model.loss_and_gradients(x, y)
    assert np.isfinite(loss) and loss == pytest.approx(expected, rel=1e-4)
    assert all(np.all(np.isfinite(g)) for g in grads.values())


# ------------------------------------------------------------------------------------------ parameters

LAYOUT_MODEL = """
model layout {
    input image: [5, 5, 2]
    conv2d(3, kernel=[2, 3])
    flatten()
    dense(4)
}
"""


def test_parameter_names_and_keras_layouts_and_what_they_compute():
    model = nnd.loads(LAYOUT_MODEL, seed=5)
    params = model.parameters()
    assert {k: v.shape for k, v in params.items()} == {
        "conv2d.kernel": (2, 3, 2, 3), "conv2d.bias": (3,), "dense.kernel": (4 * 3 * 3, 4), "dense.bias": (4,)}
    rng = np.random.default_rng(0)
    new = {k: rng.normal(size=v.shape).astype(np.float32) for k, v in params.items()}
    model.set_parameters(new)
    got = model.parameters()
    assert all(np.array_equal(got[k], new[k]) for k in new)
    got["dense.bias"][...] = 99  # copies: changing them does not change the model
    assert not np.any(model.parameters()["dense.bias"] == 99)

    # an independent forward pass under the Keras layouts: conv kernel (kh, kw, in, out), dense (in, out)
    x = rng.normal(size=(3, 5, 5, 2)).astype(np.float32)
    k = new["conv2d.kernel"].astype(np.float64)
    conv = np.zeros((3, 4, 3, 3))
    for i in range(4):
        for j in range(3):
            conv[:, i, j, :] = np.einsum("nabc,abco->no", x[:, i:i + 2, j:j + 3, :], k)
    conv += new["conv2d.bias"]
    expected = conv.reshape(3, -1) @ new["dense.kernel"] + new["dense.bias"]
    np.testing.assert_allclose(model.predict(x), expected, rtol=1e-4, atol=1e-4)


def test_set_parameters_mismatch_names_parameter_and_both_shapes():
    model = nnd.loads(LAYOUT_MODEL)
    params = model.parameters()
    params["dense.kernel"] = np.zeros((35, 4), np.float32)
    with pytest.raises(NndError) as info:
        model.set_parameters(params)
    message = str(info.value)
    assert "dense.kernel" in message and "(35, 4)" in message and "(36, 4)" in message
    with pytest.raises(NndError, match="conv2d.bias"):
        model.set_parameters({k: v for k, v in model.parameters().items() if k != "conv2d.bias"})
    before = model.parameters()
    with pytest.raises(NndError):
        model.set_parameters(params)
    assert all(np.array_equal(before[k], v) for k, v in model.parameters().items())  # nothing half-applied


# ------------------------------------------------------------------------------------------ predict

TWO_WAY = """
model two {
    input image: [6, 6, 1]
    input meta: [3]
    features = image -> conv2d(2, 3, activation=relu) -> global_maxpool2d()
    context  = meta -> dense(4, activation=relu)
    joint    = concat(features, context) -> dense(8, activation=relu)
    output label = joint -> dense(3, activation=softmax)
    output score = joint -> dense(1)
}
train two { loss = mse }
"""


def test_predict_shapes_and_batching():
    model = nnd.loads(CLASSIFIER)
    x = np.random.default_rng(0).normal(size=(37, 4)).astype(np.float32)
    whole = model.predict(x)
    assert whole.shape == (37, 3) and whole.dtype == np.float32
    np.testing.assert_allclose(whole.sum(axis=1), 1.0, rtol=1e-5)
    np.testing.assert_allclose(model.predict(x, batch_size=5), whole, rtol=1e-6, atol=1e-7)
    assert model.predict(x[:1]).shape == (1, 3)


def test_input_and_output_shapes_read_as_keras_gives_them():
    model = nnd.loads(TWO_WAY)
    assert model.input_shape == [(None, 6, 6, 1), (None, 3)]
    assert model.output_shape == [(None, 3), (None, 1)]
    single = nnd.loads(CLASSIFIER)
    assert single.input_shape == (None, 4) and single.output_shape == (None, 3)


def test_two_inputs_two_outputs():
    model = nnd.loads(TWO_WAY, seed=2)
    rng = np.random.default_rng(1)
    image, meta = rng.normal(size=(10, 6, 6, 1)), rng.normal(size=(10, 3))
    out = model.predict({"image": image, "meta": meta})
    assert isinstance(out, dict) and set(out) == {"label", "score"}
    assert out["label"].shape == (10, 3) and out["score"].shape == (10, 1)
    as_list = model.predict([image, meta])
    assert all(np.array_equal(out[k], as_list[k]) for k in out)
    targets = {"label": np.eye(3)[rng.integers(0, 3, 10)], "score": rng.normal(size=(10, 1))}
    history = model.fit([image, meta], targets, epochs=2, batch_size=5, verbose=0)
    assert len(history.history["loss"]) == 2
    with pytest.raises(NndError, match="meta"):
        model.predict({"image": image})


# ------------------------------------------------------------------------------------------ saving


def test_save_then_load_gives_identical_predictions(tmp_path):
    x, y = _separable(64)
    model = nnd.loads(CLASSIFIER, seed=4)
    model.fit(x, y, epochs=1, verbose=0)
    model.save(tmp_path / "saved")
    again = nnd.load(tmp_path / "saved")
    assert np.array_equal(again.predict(x), model.predict(x))

    fresh = nnd.loads(CLASSIFIER, seed=9)
    assert not np.array_equal(fresh.predict(x), model.predict(x))
    fresh.load_weights(tmp_path / "saved" / "weights.npz")
    assert np.array_equal(fresh.predict(x), model.predict(x))
    other = nnd.loads(CLASSIFIER, seed=9).load_weights(tmp_path / "saved")  # a directory works too
    assert np.array_equal(other.predict(x), model.predict(x))


def test_a_saved_model_of_a_file_with_several_models_loads_as_itself(tmp_path):
    source = CLASSIFIER + "\nmodel other {\n    input x: [4]\n    dense(3, activation=softmax)\n}\n"
    model = nnd.loads(source, "clf", seed=3)
    assert nnd.loads(source).name == "other"  # the last model is the default
    model.save(tmp_path / "saved")
    again = nnd.load(tmp_path / "saved")
    assert again.name == "clf"
    x = _separable(8)[0]
    assert np.array_equal(again.predict(x), model.predict(x))


def test_load_weights_of_another_model_names_the_parameter(tmp_path):
    nnd.loads(CLASSIFIER).save(tmp_path / "a")
    wider = nnd.loads(CLASSIFIER.replace("dense(16", "dense(12"))
    with pytest.raises(NndError, match=r"dense\.kernel.*\(4, 16\).*\(4, 12\)"):
        wider.load_weights(tmp_path / "a")


# ------------------------------------------------------------------------------------------ train-only layers

DROPOUT_MODEL = """
model drop {
    input x: [6]
    dense(32, activation=relu)
    dropout(0.5)
    dense(3, activation=softmax)
}
train drop { optimizer = adam(lr=0.01)  loss = sparse_categorical_crossentropy  batch_size = 16 }
"""


def test_dropout_is_active_in_training_and_off_in_predict():
    model = nnd.loads(DROPOUT_MODEL, seed=0)
    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(20, 6)).astype(np.float32), rng.integers(0, 3, 20)
    first, second = model.loss_and_gradients(x, y)[0], model.loss_and_gradients(x, y)[0]
    assert first != second  # a fresh dropout mask per training step
    a, b = model.predict(x), model.predict(x)
    assert np.array_equal(a, b)
    p = model.parameters()
    hidden = np.maximum(x @ p["dense.kernel"] + p["dense.bias"], 0)
    expected = _softmax(hidden @ p["dense_1.kernel"] + p["dense_1.bias"])
    np.testing.assert_allclose(a, expected, rtol=1e-4, atol=1e-6)  # no dropout, no rescaling
    model.fit(x, y, epochs=1, verbose=0)
    assert np.array_equal(model.predict(x), model.predict(x))


BATCHNORM_MODEL = """
model bn {
    input x: [4]
    dense(6)
    batchnorm()
    relu()
    dense(2, activation=softmax)
}
train bn { optimizer = sgd(lr=0.05)  loss = sparse_categorical_crossentropy  batch_size = 16 }
"""


def test_batchnorm_moving_statistics_change_in_fit_and_serve_predict():
    model = nnd.loads(BATCHNORM_MODEL, seed=1)
    rng = np.random.default_rng(3)
    x = (rng.normal(size=(64, 4)) * 2 + 3).astype(np.float32)
    y = (x[:, 0] > 3).astype(np.int64)
    before = model.parameters()
    assert np.all(before["batchnorm.moving_mean"] == 0) and np.all(before["batchnorm.moving_variance"] == 1)
    model.fit(x, y, epochs=2, verbose=0)
    p = model.parameters()
    assert not np.allclose(p["batchnorm.moving_mean"], 0)
    assert not np.allclose(p["batchnorm.moving_variance"], 1)

    def forward(mean, var):
        h = x @ p["dense.kernel"] + p["dense.bias"]
        h = (h - mean) / np.sqrt(var + 1e-3) * p["batchnorm.gamma"] + p["batchnorm.beta"]
        return _softmax(np.maximum(h, 0) @ p["dense_1.kernel"] + p["dense_1.bias"])

    got = model.predict(x)
    np.testing.assert_allclose(got, forward(p["batchnorm.moving_mean"], p["batchnorm.moving_variance"]),
                               rtol=1e-4, atol=1e-5)
    h = x @ p["dense.kernel"] + p["dense.bias"]
    assert not np.allclose(got, forward(h.mean(axis=0), h.var(axis=0)), atol=1e-3)  # not the batch statistics
    # predict and evaluate leave the moving statistics alone
    model.evaluate(x, y)
    assert np.array_equal(model.parameters()["batchnorm.moving_mean"], p["batchnorm.moving_mean"])


def test_batchnorm_moving_statistics_follow_keras_update():
    model = nnd.loads(BATCHNORM_MODEL.replace("batchnorm()", "batchnorm(momentum=0.9)"), dtype="float64")
    rng = np.random.default_rng(3)
    x = rng.normal(size=(16, 4)) * 2 + 3
    y = (x[:, 0] > 3).astype(np.int64)
    p = model.parameters()
    h = x @ p["dense.kernel"] + p["dense.bias"]
    model.fit(x, y, epochs=1, batch_size=16, verbose=0)  # one step, on the whole batch
    q = model.parameters()
    np.testing.assert_allclose(q["batchnorm.moving_mean"], 0.1 * h.mean(axis=0), rtol=1e-12, atol=1e-12)
    # the biased batch variance, as Keras (PyTorch would use the unbiased one)
    np.testing.assert_allclose(q["batchnorm.moving_variance"], 0.9 + 0.1 * h.var(axis=0), rtol=1e-12)


# ------------------------------------------------------------------------------------------ reproducibility


def test_same_seed_same_weights_different_seed_different_weights():
    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(48, 6)).astype(np.float32), rng.integers(0, 3, 48)

    def trained(seed):
        model = nnd.loads(DROPOUT_MODEL, seed=seed)
        model.fit(x, y, epochs=2, validation_split=0.25, verbose=0)
        return model.parameters()

    a, b, c = trained(7), trained(7), trained(8)
    assert all(np.array_equal(a[k], b[k]) for k in a)
    assert not any(np.array_equal(a[k], c[k]) for k in a if k.endswith("kernel"))


RESUME_MODEL = """
model res {
    input x: [6]
    dense(16)
    batchnorm()
    relu()
    dropout(0.3)
    dense(3, activation=softmax)
}
train res {
    optimizer  = adam(lr=0.01)
    loss       = sparse_categorical_crossentropy
    metrics    = [accuracy]
    batch_size = 16
    lr_schedule = exponential_decay(decay_rate=0.5, decay_steps=5)
}
"""


def test_resume_from_a_checkpoint_matches_an_uninterrupted_run(tmp_path):
    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(80, 6)).astype(np.float32), rng.integers(0, 3, 80)

    straight = nnd.loads(RESUME_MODEL, seed=5)
    straight.fit(x, y, epochs=3, validation_split=0.2, verbose=0)

    first = nnd.loads(RESUME_MODEL, seed=5)
    first.fit(x, y, epochs=1, validation_split=0.2, verbose=0, run_dir=RunDirectory(tmp_path / "run"))
    assert (tmp_path / "run" / "checkpoint.npz").is_file()

    resumed = nnd.loads(RESUME_MODEL, seed=5)
    done = resume(resumed, resumed._get_trainer(), tmp_path / "run" / "checkpoint.npz")
    assert done == 1
    resumed.fit(x, y, epochs=3, validation_split=0.2, verbose=0, initial_epoch=done)

    a, b = straight.parameters(), resumed.parameters()
    for name in a:
        assert np.array_equal(a[name], b[name]), name
    assert resumed.history.history == straight.history.history
    sa, sb = straight._get_trainer().optimizer.state_dict(), resumed._get_trainer().optimizer.state_dict()
    assert set(sa) == set(sb) and all(np.array_equal(sa[k], sb[k]) for k in sa)


RESUME_CALLBACKS = {
    # reduce_lr_on_plateau under a schedule: its reduction is kept as a scale on the scheduled lr
    "plateau-under-schedule": """
model clf { input x: [4]
 dense(8, activation=relu)
 dense(3, activation=softmax) }
train clf { optimizer = sgd(lr=0.1)  batch_size = 16
 lr_schedule = exponential_decay(decay_rate=0.5, decay_steps=4)
 callbacks = [reduce_lr_on_plateau(monitor=loss, factor=0.5, patience=1, min_delta=100)] }
""",
    # the best epoch comes before the interruption; its weights must survive it
    "early-stopping-restore-best": """
model clf { input x: [4]
 dense(32, activation=relu)
 dense(3, activation=softmax) }
train clf { optimizer = adam(lr=0.05)  batch_size = 16
 callbacks = [early_stopping(monitor=val_loss, patience=3, restore_best=true)] }
""",
}


@pytest.mark.parametrize("case", list(RESUME_CALLBACKS))
def test_resume_keeps_what_callbacks_had_seen(tmp_path, case):
    source = RESUME_CALLBACKS[case]
    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(64, 4)).astype(np.float32), rng.integers(0, 3, 64)
    xv, yv = rng.normal(size=(32, 4)).astype(np.float32), rng.integers(0, 3, 32)

    straight = nnd.loads(source, seed=1)
    straight.fit(x, y, epochs=5, validation_data=(xv, yv), verbose=0)
    first = nnd.loads(source, seed=1)
    first.fit(x, y, epochs=2, validation_data=(xv, yv), verbose=0, run_dir=RunDirectory(tmp_path))
    resumed = nnd.loads(source, seed=1)
    done = resume(resumed, resumed._get_trainer(), tmp_path / "checkpoint.npz")
    resumed.fit(x, y, epochs=5, validation_data=(xv, yv), verbose=0, initial_epoch=done)

    assert resumed.history.history == straight.history.history
    a, b = straight.parameters(), resumed.parameters()
    assert all(np.array_equal(a[k], b[k]) for k in a)
    lr = straight.history.history["lr"]
    if case.startswith("plateau"):
        assert lr[2] < 0.5 * lr[1]  # a plateau reduction on top of the schedule happened after the resume
    else:
        val = straight.history.history["val_loss"]
        assert int(np.argmin(val)) < 2  # the best epoch was before the interruption
        assert straight.evaluate(xv, yv)["loss"] == pytest.approx(min(val), rel=1e-5)


def test_resume_continues_the_augmentation_and_shuffling_sequence(tmp_path):
    source = """
model aug {
    input image: [6, 6, 1]
    conv2d(3, 3, activation=relu)
    global_avgpool2d()
    dense(2, activation=softmax)
}
train aug {
    optimizer = adam(lr=0.01)
    batch_size = 8
    augment = [random_flip(horizontal), random_shift(0.2), gaussian_noise(0.1)]
}
"""
    rng = np.random.default_rng(2)
    x, y = rng.random(size=(24, 6, 6, 1)).astype(np.float32), rng.integers(0, 2, 24)
    straight = nnd.loads(source, seed=4)
    straight.fit(x, y, epochs=3, verbose=0)
    first = nnd.loads(source, seed=4)
    first.fit(x, y, epochs=1, verbose=0, run_dir=RunDirectory(tmp_path))
    resumed = nnd.loads(source, seed=4)
    done = resume(resumed, resumed._get_trainer(), tmp_path / "checkpoint.npz")
    resumed.fit(x, y, epochs=3, verbose=0, initial_epoch=done)
    a, b = straight.parameters(), resumed.parameters()
    assert all(np.array_equal(a[k], b[k]) for k in a)


# ------------------------------------------------------------------------------------------ callbacks


def test_early_stopping_from_the_train_section_restores_the_best_weights():
    source = """
model es {
    input x: [8]
    dense(64, activation=relu)
    dense(4, activation=softmax)
}
train es {
    optimizer = adam(lr=0.05)
    loss      = sparse_categorical_crossentropy
    batch_size = 16
    callbacks = [early_stopping(monitor=val_loss, patience=1, restore_best=true)]
}
"""
    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(48, 8)).astype(np.float32), rng.integers(0, 4, 48)  # labels are noise: it overfits
    xv, yv = rng.normal(size=(48, 8)).astype(np.float32), rng.integers(0, 4, 48)
    model = nnd.loads(source, seed=0)
    history = model.fit(x, y, epochs=30, validation_data=(xv, yv), verbose=0).history
    assert len(history["val_loss"]) < 30  # stopped early
    best = int(np.argmin(history["val_loss"]))
    assert best < len(history["val_loss"]) - 1  # the last epoch was not the best one
    assert model.evaluate(xv, yv)["loss"] == pytest.approx(history["val_loss"][best], rel=1e-5)


def test_reduce_lr_on_plateau_lowers_the_logged_lr():
    source = CLASSIFIER.replace("batch_size = 32", "batch_size = 32\n callbacks = "
                                "[reduce_lr_on_plateau(monitor=loss, factor=0.5, patience=1, min_delta=100)]")
    x, y = _separable(64)
    history = nnd.loads(source).fit(x, y, epochs=4, verbose=0).history
    # each epoch logs the lr it trained with; no epoch after the first improves by 100, so from the
    # second epoch on each one halves the lr for the next
    assert history["lr"] == pytest.approx([0.02, 0.02, 0.01, 0.005])


def test_a_monitor_that_is_never_logged_fails_before_the_first_epoch():
    x, y = _separable(64)
    model = nnd.loads(CLASSIFIER)
    before = model.parameters()
    with pytest.raises(NndError, match="early_stopping monitors 'val_loss'.*no validation data"):
        model.fit(x, y, epochs=2, verbose=0, callbacks=[EarlyStopping(monitor="val_loss")])
    with pytest.raises(NndError, match="did you mean 'accuracy'"):
        model.fit(x, y, epochs=2, verbose=0, callbacks=[ReduceLROnPlateau(monitor="acuracy")])
    assert all(np.array_equal(before[k], v) for k, v in model.parameters().items())  # nothing trained
    assert model.history.history == {}
    history = model.fit(x, y, epochs=1, verbose=0, validation_split=0.25,
                        callbacks=[EarlyStopping(monitor="val_accuracy")]).history
    assert len(history["val_accuracy"]) == 1


def test_lr_schedule_sets_the_lr_per_step():
    source = CLASSIFIER.replace("batch_size = 32", "batch_size = 8\n lr_schedule = step_decay(drop=0.5, every=4)")
    x, y = _separable(32)  # 4 steps per epoch: the lr halves once per epoch
    model = nnd.loads(source)
    history = model.fit(x, y, epochs=3, verbose=0).history
    assert history["lr"] == pytest.approx([0.02, 0.01, 0.005])


def test_augmentation_runs_only_in_training():
    source = """
model aug {
    input image: [8, 8, 1]
    conv2d(4, 3, activation=relu)
    global_avgpool2d()
    dense(2, activation=softmax)
}
train aug {
    optimizer = adam(lr=0.01)
    batch_size = 8
    augment = [random_flip(horizontal), random_shift(0.1), random_crop(padding=1), random_rotation(10),
               gaussian_noise(0.05)]
}
"""
    rng = np.random.default_rng(0)
    x = rng.random(size=(16, 8, 8, 1)).astype(np.float32)
    y = rng.integers(0, 2, 16)
    augmented = nnd.loads(source, seed=1)
    plain = nnd.loads(source.replace("augment", "# augment").replace("               gaussian", "# "), seed=1)
    assert not plain.spec.augment and len(augmented.spec.augment) == 5
    augmented.fit(x, y, epochs=1, verbose=0)
    plain.fit(x, y, epochs=1, verbose=0)
    a, b = augmented.parameters(), plain.parameters()
    assert not np.array_equal(a["conv2d.kernel"], b["conv2d.kernel"])
    assert np.array_equal(augmented.predict(x), augmented.predict(x))
    assert augmented.evaluate(x, y)["loss"] == augmented.evaluate(x, y)["loss"]


# ------------------------------------------------------------------------------------------ optimizers

OPTIMIZERS = [
    ("sgd", {"lr": 0.1}),
    ("sgd", {"lr": 0.05, "momentum": 0.9}),
    ("sgd", {"lr": 0.05, "momentum": 0.9, "nesterov": True}),
    ("adam", {"lr": 0.01}),
    ("adamw", {"lr": 0.01, "weight_decay": 0.01}),
    ("rmsprop", {"lr": 0.01}),
    ("adagrad", {"lr": 0.1}),
    ("sgd", {"lr": 0.1, "clipnorm": 0.5}),
    ("adam", {"lr": 0.01, "clipvalue": 0.1}),
    ("adam", {"lr": 0.01, "global_clipnorm": 1.0}),
]


@pytest.mark.parametrize("name,args", OPTIMIZERS, ids=[f"{n}-{'-'.join(a)}" for n, a in OPTIMIZERS])
def test_every_optimizer_decreases_the_loss(name, args):
    x, y = _separable(96)
    model = nnd.loads(CLASSIFIER, seed=0).compile(optimizer=name, **args)
    assert model.spec.optimizer.name == name
    start = model.evaluate(x, y)["loss"]
    model.fit(x, y, epochs=3, batch_size=16, verbose=0)
    assert model.evaluate(x, y)["loss"] < 0.8 * start


def test_compile_keeps_the_weights_and_switches_the_optimizer():
    x, y = _separable(64)
    model = nnd.loads(CLASSIFIER)
    model.fit(x, y, epochs=1, verbose=0)
    weights = model.parameters()
    model.compile(optimizer="sgd", lr=0.1)
    assert all(np.array_equal(weights[k], v) for k, v in model.parameters().items())
    model.fit(x, y, epochs=1, verbose=0)
    assert model.history.history["lr"][-1] == pytest.approx(0.1)


# ------------------------------------------------------------------------------------------ losses


def _two_heads(activation: str, units: int) -> str:
    """A model whose output is a probability that no softmax/sigmoid node produced (the unfused path)."""
    return f"""
    a = x -> dense({units}, activation={activation})
    b = x -> dense({units}, activation={activation})
    output out = average(a, b)"""


def _loss_case(output: str, loss: str) -> str:
    return (f"model l {{\n    input x: [4]\n{output}\n}}\n"
            f"train l {{\n    optimizer = sgd(lr=0.1)\n    loss = {loss}\n}}\n")


def _clip(p):
    return np.clip(p, 1e-7, 1 - 1e-7)


LOSS_CASES = {
    # name: (model body, loss setting, target kind, numpy loss of (params, x, prediction, target))
    "sparse_ce_fused": ("    dense(3, activation=softmax)", "sparse_categorical_crossentropy", "labels",
                        lambda p, x, out, t: -np.log(out[np.arange(len(t)), t])),
    "sparse_ce_probabilities": (_two_heads("softmax", 3), "sparse_categorical_crossentropy", "labels",
                                lambda p, x, out, t: -np.log(_clip(out[np.arange(len(t)), t]))),
    "sparse_ce_logits": ("    dense(3)", "sparse_categorical_crossentropy(from_logits=true)", "labels",
                         lambda p, x, out, t: -_log_softmax(out)[np.arange(len(t)), t]),
    "categorical_ce_fused": ("    dense(3, activation=softmax)", "categorical_crossentropy", "soft",
                             lambda p, x, out, t: -np.sum(t * np.log(out), axis=-1)),
    "categorical_ce_probabilities": (_two_heads("softmax", 3), "categorical_crossentropy", "soft",
                                     lambda p, x, out, t: -np.sum(t * np.log(_clip(out)), axis=-1)),
    "categorical_ce_logits": ("    dense(3)", "categorical_crossentropy(from_logits=true)", "soft",
                              lambda p, x, out, t: -np.sum(t * _log_softmax(out), axis=-1)),
    "binary_ce_fused": ("    dense(2, activation=sigmoid)", "binary_crossentropy", "binary",
                        lambda p, x, out, t: -(t * np.log(out) + (1 - t) * np.log(1 - out))),
    "binary_ce_probabilities": (_two_heads("sigmoid", 2), "binary_crossentropy", "binary",
                                lambda p, x, out, t: -(t * np.log(_clip(out)) + (1 - t) * np.log(_clip(1 - out)))),
    "binary_ce_logits": ("    dense(2)", "binary_crossentropy(from_logits=true)", "binary",
                         lambda p, x, out, t: -(t * np.log(_sigmoid(out)) + (1 - t) * np.log(1 - _sigmoid(out)))),
    "mse": ("    dense(2)", "mse", "real", lambda p, x, out, t: (out - t) ** 2),
    "mean_squared_error": ("    dense(2)", "mean_squared_error", "real", lambda p, x, out, t: (out - t) ** 2),
    "mae": ("    dense(2)", "mae", "real", lambda p, x, out, t: np.abs(out - t)),
    "huber": ("    dense(2)", "huber(delta=0.5)", "real",
              lambda p, x, out, t: np.where(np.abs(out - t) <= 0.5, 0.5 * (out - t) ** 2,
                                            0.5 * (np.abs(out - t) - 0.25))),
}


@pytest.mark.parametrize("case", list(LOSS_CASES))
def test_every_loss_matches_numpy_and_trains(case):
    body, loss, kind, formula = LOSS_CASES[case]
    model = nnd.loads(_loss_case(body, loss), seed=3, dtype="float64")
    rng = np.random.default_rng(5)
    x = rng.normal(size=(12, 4))
    if kind == "labels":
        t = rng.integers(0, 3, 12)
    elif kind == "soft":
        t = rng.dirichlet(np.ones(3), size=12)
    elif kind == "binary":
        t = rng.integers(0, 2, size=(12, 2)).astype(np.float64)
    else:
        t = rng.normal(size=(12, 2)) * 2
    out = model.predict(x)
    expected = float(np.mean(formula(model.parameters(), x, out, t)))
    assert model.evaluate(x, t)["loss"] == pytest.approx(expected, rel=1e-9)
    assert model.loss_and_gradients(x, t)[0] == pytest.approx(expected, rel=1e-9)
    before = model.parameters()
    history = model.fit(x, t, epochs=2, batch_size=12, shuffle=False, verbose=0).history
    assert all(np.isfinite(history["loss"]))
    assert history["loss"][0] == pytest.approx(expected, rel=1e-9)  # the first step's loss, before its update
    assert history["loss"][1] < history["loss"][0]
    assert any(not np.array_equal(before[k], v) for k, v in model.parameters().items())


# ------------------------------------------------------------------------------------------ bad input


@pytest.fixture(scope="module")
def small():
    return nnd.loads(CLASSIFIER)


def _x(n=10):
    return np.zeros((n, 4), np.float32)


def test_wrong_input_shape_names_both_shapes(small):
    with pytest.raises(NndError, match=r"\(10, 5\).*\(batch, 4\)"):
        small.fit(np.zeros((10, 5)), np.zeros(10, int), epochs=1, verbose=0)
    with pytest.raises(NndError, match=r"\(3, 2, 2\).*\(batch, 4\)"):
        small.predict(np.zeros((3, 2, 2)))


def test_label_out_of_range_names_the_label_and_class_count(small):
    with pytest.raises(NndError, match=r"label 3 .*3 classes"):
        small.fit(_x(), np.array([0, 1, 2, 3, 0, 1, 2, 0, 1, 2]), epochs=1, verbose=0)
    with pytest.raises(NndError, match=r"label -1 .*3 classes"):
        small.evaluate(_x(), np.full(10, -1))
    with pytest.raises(NndError, match="integer class ids"):
        small.fit(_x(), np.full(10, 0.5), epochs=1, verbose=0)


def test_nan_and_inf_in_x_are_refused(small):
    x = _x()
    x[3, 2] = np.nan
    with pytest.raises(NndError, match=r"NaN at index \(3, 2\)"):
        small.fit(x, np.zeros(10, int), epochs=1, verbose=0)
    x[3, 2] = np.inf
    with pytest.raises(NndError, match="infinite"):
        small.predict(x)


def test_wrong_dtype_is_refused(small):
    with pytest.raises(NndError, match="dtype"):
        small.fit(np.full((10, 4), "a"), np.zeros(10, int), epochs=1, verbose=0)
    with pytest.raises(NndError, match="dtype"):
        small.fit(_x(), np.array(["cat"] * 10), epochs=1, verbose=0)


def test_sample_count_mismatch(small):
    with pytest.raises(NndError, match=r"different numbers of samples.*10.*7"):
        small.fit(_x(), np.zeros(7, int), epochs=1, verbose=0)
    with pytest.raises(NndError, match="no training samples"):
        small.fit(_x(0), np.zeros(0, int), epochs=1, verbose=0)


def test_compile_checks_names_and_arguments_with_suggestions():
    model = nnd.loads(CLASSIFIER)
    with pytest.raises(NndError, match=r"unknown optimizer 'adamm'; did you mean 'adam'\?"):
        model.compile(optimizer="adamm")
    with pytest.raises(NndError, match=r"unknown loss 'msee'; did you mean 'mse'\?"):
        model.compile(loss="msee")
    with pytest.raises(NndError, match=r"did you mean 'accuracy'"):
        model.compile(metrics=["acuracy"])
    with pytest.raises(NndError, match=r"did you mean 'momentum'"):
        model.compile(optimizer="sgd", momentom=0.9)
    with pytest.raises(NndError, match="lr"):
        model.compile(optimizer="sgd", lr=-1.0)
    assert model.spec.optimizer.name == "adam" and model.spec.loss.name == "sparse_categorical_crossentropy"
    x, y = _separable(32)
    model.fit(x, y, epochs=1, verbose=0)  # the failed calls changed nothing


def test_bad_fit_arguments():
    model = nnd.loads(CLASSIFIER)
    x, y = _separable(20)
    with pytest.raises(NndError, match="epochs"):
        model.fit(x, y, epochs=0, verbose=0)
    with pytest.raises(NndError, match="validation_split"):
        model.fit(x, y, epochs=1, validation_split=1.5, verbose=0)
    with pytest.raises(NndError, match="dtype"):
        nnd.loads(CLASSIFIER, dtype="float16")


def test_predict_runs_large_batches_in_cache_sized_slices_with_the_same_results():
    model = nnd.load(ROOT / "examples" / "mnist_cnn.nnd", seed=0)
    per_sample = summarize(model.graph).activation_bytes_per_sample
    slice_size = model._slice_size(1000)
    assert MIN_SLICE <= slice_size < 1000
    assert slice_size == max(MIN_SLICE, CACHE_BYTES // per_sample)
    x = np.random.default_rng(0).random((70, 28, 28, 1), dtype=np.float32)
    whole = np.concatenate([model.predict(x[i:i + 1], batch_size=1) for i in range(len(x))])
    np.testing.assert_allclose(model.predict(x, batch_size=1000), whole, rtol=1e-5, atol=1e-6)


SLICEABLE = """
model m {
    input x: [12, 12, 1]
    conv2d(4, 3, activation=relu, kernel_regularizer=l2(0.01))
    maxpool2d(2)
    flatten()
    dropout(0.0)
    dense(3, activation=softmax)
}
"""


def test_a_batch_trained_in_slices_gives_the_same_step_as_the_whole_batch():
    rng = np.random.default_rng(0)
    x, y = rng.random((30, 12, 12, 1)), rng.integers(0, 3, 30)
    models = [nnd.loads(SLICEABLE, dtype="float64", seed=1) for _ in range(2)]
    sliced, whole = (m._get_trainer() for m in models)
    sliced.slice_target, whole.slice_target = 7, None  # 30 samples: slices of 7 or 8
    for _ in range(2):
        a = sliced.step(models[0]._feeds(x, y))
        b = whole.step(models[1]._feeds(x, y))
        assert float(a["loss"]) == pytest.approx(float(b["loss"]), rel=1e-12)
        np.testing.assert_allclose(a["output"], b["output"], rtol=1e-12)
    for name, value in models[1].parameters().items():
        np.testing.assert_allclose(models[0].parameters()[name], value, rtol=1e-10, atol=1e-13)


def test_batches_with_batchnorm_or_a_gpu_run_whole():
    bn = nnd.loads("model m { input x: [4] dense(3) batchnorm() dense(2, activation=softmax) }")
    assert bn._get_trainer().slice_target is None
    plain = nnd.loads("model m { input x: [4] dense(3) dense(2, activation=softmax) }")
    assert plain._get_trainer().slice_target >= 16


def test_repr_names_the_model_its_signature_size_and_backend():
    assert repr(nnd.loads(CLASSIFIER)) == ("<nnd.Model 'clf' (x: f32[N,4]) -> (output: f32[N,3]), 131 parameters, "
                                           "numpy float32>")


def test_inputs_and_targets_given_by_name_are_checked_by_name():
    model = nnd.loads(TWO_WAY)
    image, meta = np.zeros((2, 6, 6, 1), np.float32), np.zeros((2, 3), np.float32)
    with pytest.raises(NndError, match=r"the model has no input named 'img'; did you mean 'image'\? "
                                       r"\(its inputs: image, meta\)"):
        model.predict({"img": image, "meta": meta})
    with pytest.raises(NndError, match=r"no array given for input 'meta' \(its inputs: image, meta\)"):
        model.predict({"image": image})
    with pytest.raises(NndError, match=r"the model has no target named 'scores'; did you mean 'score'\?"):
        model.fit({"image": image, "meta": meta}, {"label": np.zeros((2, 3)), "scores": np.zeros((2, 1))},
                  verbose=0)


def test_a_wrong_shape_is_reported_before_a_wrong_dtype():
    with pytest.raises(NndError, match=r"input 'x' has shape \(3,\) but the model expects \(batch, 4\)"):
        nnd.loads(CLASSIFIER).predict([1, 2, 3])
    with pytest.raises(NndError, match=r"input 'x' has dtype int64 but a floating-point array is needed"):
        nnd.loads(CLASSIFIER).predict(np.ones((2, 4), np.int64))


def test_a_binary_classifier_logs_auc_precision_and_recall_and_early_stopping_maximizes_auc():
    source = BINARY_MODEL.replace("train bin { loss = binary_crossentropy }", """train bin {
    optimizer = adam(lr=0.05)
    loss      = binary_crossentropy
    metrics   = [accuracy, auc, precision(threshold=0.5), recall]
    callbacks = [early_stopping(monitor=val_auc, patience=2)]
}""")
    rng = np.random.default_rng(0)
    x = rng.normal(size=(200, 5)).astype(np.float32)
    y = (x[:, 0] + 0.5 * rng.normal(size=200) > 0).astype(np.float32)[:, None]
    model = nnd.loads(source, seed=0)
    history = model.fit(x, y, epochs=4, batch_size=32, validation_split=0.25, verbose=0).history
    assert {"auc", "precision", "recall", "val_auc", "val_precision", "val_recall"} <= set(history)
    assert history["val_auc"][-1] > 0.8  # the first feature decides the label, up to noise
    logs = model.evaluate(x[150:], y[150:])
    scores = model.predict(x[150:])[:, 0]
    positive = y[150:, 0] != 0
    wins = (scores[positive][:, None] > scores[~positive][None, :]).mean()
    assert logs["auc"] == pytest.approx(wins, abs=1e-6)  # no ties among float scores


@pytest.mark.parametrize("mode, lrs", [("max", [0.02, 0.02, 0.01, 0.005]), ("min", [0.02] * 4)])
def test_reduce_lr_on_plateau_takes_mode_in_the_train_section_as_in_python(mode, lrs):
    # the training loss falls every epoch: an improvement only when smaller is better
    callback = f"reduce_lr_on_plateau(monitor=loss, factor=0.5, patience=1, min_delta=0, mode={mode})"
    x, y = _separable(64)
    in_file = nnd.loads(CLASSIFIER.replace("batch_size = 32", f"batch_size = 32\n callbacks = [{callback}]"))
    from_python = nnd.loads(CLASSIFIER)
    python = ReduceLROnPlateau(monitor="loss", factor=0.5, patience=1, min_delta=0, mode=mode)
    history = in_file.fit(x, y, epochs=4, verbose=0).history
    assert np.all(np.diff(history["loss"]) < 0)
    assert history["lr"] == pytest.approx(lrs)
    assert from_python.fit(x, y, epochs=4, verbose=0, callbacks=[python]).history["lr"] == pytest.approx(lrs)


def test_best_checkpoint_takes_mode(tmp_path):
    # with mode=max on a falling loss, the first epoch stays the best
    source = CLASSIFIER.replace("batch_size = 32", "batch_size = 32\n callbacks = [best_checkpoint(monitor=loss, "
                                                   "mode=max)]")
    x, y = _separable(64)
    first = nnd.loads(source, seed=3)
    first.fit(x, y, epochs=1, verbose=0, run_dir=tmp_path / "one")
    model = nnd.loads(source, seed=3)
    model.fit(x, y, epochs=3, verbose=0, run_dir=tmp_path / "run")
    best = nnd.loads(source).load_weights(tmp_path / "run" / "best.npz").parameters()
    assert all(np.array_equal(best[k], v) for k, v in first.parameters().items())
    assert not np.array_equal(best["dense.kernel"], model.parameters()["dense.kernel"])
