"""What the Python API does with the arguments a Keras user passes: Keras' defaults and spellings work
(None, NumPy integers, verbose, objects with Keras' callback hooks), and everything else is one NndError
that names the argument, never a traceback from inside nnd."""
from __future__ import annotations

import numpy as np
import pytest

import nnd
from nnd import NndError

TINY = """
model tiny {
    input x: [4]
    dense(8, activation=relu)
    dense(3, activation=softmax)
}
train tiny {
    optimizer = adam(lr=0.01)
    loss = sparse_categorical_crossentropy
    metrics = [accuracy]
    epochs = 3
    batch_size = 16
}
"""
RNG = np.random.default_rng(0)
X = RNG.normal(size=(64, 4)).astype(np.float32)
Y = RNG.integers(0, 3, 64)


# ------------------------------------------------------------------------------------------ fit


def test_numpy_integers_and_none_are_accepted_where_keras_accepts_them():
    model = nnd.loads(TINY)
    history = model.fit(X, Y, epochs=np.int64(2), batch_size=np.int32(8), callbacks=None, verbose=0)
    assert len(history.history["loss"]) == 2
    assert model.predict(X, batch_size=None, verbose=0).shape == (64, 3)
    assert set(model.evaluate(X, Y, batch_size=None, verbose=0)) == {"loss", "accuracy"}


@pytest.mark.parametrize("arguments, message", [
    ({"epochs": 0}, "epochs must be a positive int, got 0"),
    ({"batch_size": 1.5}, "batch_size must be a positive int, got 1.5"),
    ({"validation_split": "0.2"}, "validation_split must be a number from 0 up to"),
    ({"validation_split": float("nan")}, "validation_split must be a number from 0 up to"),
    ({"validation_split": 1.0}, "validation_split must be a number from 0 up to"),
    ({"validation_data": (X, Y, np.ones(len(X)), None)}, r"validation_data must be a pair \(x_val, y_val\) or a "
                                                        r"triple \(x_val, y_val, sample_weight_val\), got 4 items"),
    ({"validation_data": (X, Y, np.ones(3))}, rf"validation_data: sample_weight has shape \(3,\), but there are "
                                              rf"{len(X)} samples: it needs shape \({len(X)},\)"),
    ({"validation_data": (X[:0], Y[:0])}, "validation_data holds no samples"),
    ({"callbacks": [print]}, "is neither an nnd.Callback nor an object with any of Keras' hooks"),
])
def test_bad_fit_arguments_are_named(arguments, message):
    with pytest.raises(NndError, match=message):
        nnd.loads(TINY).fit(X, Y, verbose=0, **{"epochs": 1, **arguments})


@pytest.mark.parametrize("call", ["predict", "evaluate"])
@pytest.mark.parametrize("batch_size", [0, -5, 2.5])
def test_bad_inference_batch_sizes_are_named(call, batch_size):
    model = nnd.loads(TINY)
    args = (X,) if call == "predict" else (X, Y)
    with pytest.raises(NndError, match=f"batch_size must be a positive int, got {batch_size}"):
        getattr(model, call)(*args, batch_size=batch_size)


def test_validation_split_holds_out_the_last_samples_as_keras_does():
    model = nnd.loads(TINY)
    history = model.fit(X, Y, epochs=1, validation_split=0.25, shuffle=False, verbose=0)
    # the validation figures are those of the final weights on the last quarter, in inference mode
    assert history.history["val_loss"][0] == pytest.approx(model.evaluate(X[48:], Y[48:])["loss"], rel=1e-6)


def test_validation_split_rounds_the_training_part_down_as_keras_does():
    # Keras trains on x[:int(n * (1 - validation_split))]: of 10 samples at 0.25, 7 train and 3 validate
    # (rounding the validation part instead would hold out 2).
    n, fraction = 10, 0.25
    split_at = int(n * (1 - fraction))
    model = nnd.loads(TINY)
    history = model.fit(X[:n], Y[:n], epochs=1, validation_split=fraction, shuffle=False, verbose=0)
    assert history.history["val_loss"][0] == pytest.approx(
        model.evaluate(X[split_at:n], Y[split_at:n])["loss"], rel=1e-6)


def test_each_fit_returns_its_own_history_and_the_model_keeps_them_all():
    model = nnd.loads(TINY)
    first = model.fit(X, Y, epochs=2, verbose=0)
    second = model.fit(X, Y, epochs=1, validation_split=0.25, verbose=0)
    assert first is not second
    assert len(first.history["loss"]) == 2 and "val_loss" not in first.history
    assert len(second.history["loss"]) == 1 and len(second.history["val_loss"]) == 1
    assert len(model.history.history["loss"]) == 3


class KerasStyle:
    """A callback written for Keras: its hooks take (epoch, logs) and it stops training through the model."""

    def __init__(self):
        self.seen: list[tuple[int, list[str]]] = []
        self.began = self.ended = False

    def on_train_begin(self, logs=None):
        self.began = True

    def on_epoch_end(self, epoch, logs=None):
        self.seen.append((epoch, sorted(logs)))
        if epoch == 1:
            self.model.stop_training = True

    def on_train_end(self, logs=None):
        self.ended = True


def test_an_object_with_keras_hooks_is_called_as_keras_calls_it():
    model = nnd.loads(TINY)
    hooks = KerasStyle()
    history = model.fit(X, Y, epochs=5, callbacks=[hooks], verbose=0)
    assert hooks.began and hooks.ended and hooks.model is model
    assert hooks.seen == [(0, ["accuracy", "loss", "lr"]), (1, ["accuracy", "loss", "lr"])]
    assert len(history.history["loss"]) == 2  # stopped after the second epoch
    assert len(model.fit(X, Y, epochs=2, verbose=0).history["loss"]) == 2  # the flag is reset for the next fit


def test_callbacks_are_exported_and_take_keras_spellings(tmp_path):
    model = nnd.loads(TINY)
    stop = nnd.EarlyStopping(monitor="loss", patience=0, restore_best_weights=True)
    model.fit(X, Y, epochs=2, callbacks=[stop], verbose=0, run_dir=str(tmp_path / "run"))
    assert stop.restore_best
    written = {p.name for p in (tmp_path / "run").iterdir()}
    assert {"checkpoint.npz", "model.json", "weights.npz", "metrics.json"} <= written


# ------------------------------------------------------------------------------------------ evaluate


def _reference_figures(model) -> tuple[float, float]:
    """The crossentropy and accuracy of the model's predictions, in float64."""
    p = model.predict(X).astype(np.float64)
    return float(-np.log(p[np.arange(len(Y)), Y]).mean()), float((p.argmax(axis=1) == Y).mean())


def test_evaluate_return_dict_false_gives_keras_list_of_loss_then_metrics():
    model = nnd.loads(TINY)
    loss, accuracy = model.evaluate(X, Y, return_dict=False)
    expected = _reference_figures(model)
    assert (loss, accuracy) == pytest.approx(expected, rel=1e-5)
    assert model.evaluate(X, Y) == pytest.approx({"loss": expected[0], "accuracy": expected[1]}, rel=1e-5)


def test_evaluate_return_dict_false_without_metrics_gives_the_loss_alone():
    model = nnd.loads(TINY.replace("    metrics = [accuracy]\n", ""))
    score = model.evaluate(X, Y, return_dict=False)
    assert isinstance(score, float) and score == pytest.approx(_reference_figures(model)[0], rel=1e-5)


@pytest.mark.parametrize("key", [0, np.int64(1), slice(0, 2)])
def test_evaluate_dict_read_by_position_says_to_pass_return_dict_false(key):
    logs = nnd.loads(TINY).evaluate(X, Y)
    with pytest.raises(NndError) as caught:
        logs[key]
    assert str(caught.value) == ("error: evaluate returns the figures by name (loss, accuracy), not by position: "
                                 "write result['loss'], or call evaluate(..., return_dict=False) for Keras' list "
                                 "[loss, accuracy]")
    assert isinstance(caught.value, KeyError)  # what a dict's missing key raises, for code that catches that
    assert logs["accuracy"] == logs.get("accuracy") and dict(logs) == logs


def test_evaluate_return_dict_must_be_a_bool():
    with pytest.raises(NndError, match="return_dict must be True or False, got 'no'"):
        nnd.loads(TINY).evaluate(X, Y, return_dict="no")


# ------------------------------------------------------------------------------------------ data


def test_empty_inputs_predict_an_empty_batch_of_the_output_shape():
    model = nnd.loads(TINY)
    assert model.predict(X[:0]).shape == (0, 3)
    with pytest.raises(NndError, match="no samples to evaluate"):
        model.evaluate(X[:0], Y[:0])
    with pytest.raises(NndError, match="no samples"):
        model.loss_and_gradients(X[:0], Y[:0])


EMBED = "model e {\n    input ids: int32[3]\n    embedding(10, 4)\n    flatten()\n    dense(1)\n}\n"


def test_integer_inputs_take_whole_numbers_within_their_type():
    model = nnd.loads(EMBED)
    ids = np.array([[3, 4, 5]])
    assert np.array_equal(model.predict(ids.astype(np.float64)), model.predict(ids))
    with pytest.raises(NndError, match=r"input 'ids' holds 4294967299 at index \(0, 0\), outside int32"):
        model.predict(ids + 2 ** 32)
    with pytest.raises(NndError, match=r"input 'ids' must hold whole numbers \(ids\), got 3.9 at index \(0, 0\)"):
        model.predict(np.array([[3.9, 4, 5]]))


BINARY = "model b {\n    input x: [4]\n    dense(1, activation=sigmoid)\n}\ntrain b { loss = binary_crossentropy }\n"
CATEGORICAL = TINY.replace("sparse_categorical_crossentropy", "categorical_crossentropy")


def test_probability_targets_outside_zero_to_one_are_refused():
    with pytest.raises(NndError, match=r"target 'y' holds 2.0 at index \(1, 0\); binary_crossentropy needs "
                                       "targets from 0 to 1"):
        nnd.loads(BINARY).evaluate(X[:3], np.array([0, 2, 1]))
    with pytest.raises(NndError, match=r"target 'y' holds -1.0 .*categorical_crossentropy"):
        nnd.loads(CATEGORICAL).evaluate(X[:2], np.array([[1, 0, 0], [-1, 1, 1]]))


def test_class_ids_for_a_categorical_loss_get_a_hint():
    with pytest.raises(NndError, match=r"target 'y' has shape \(64,\): class ids; categorical_crossentropy "
                                       r"expects one-hot rows .*use sparse_categorical_crossentropy"):
        nnd.loads(CATEGORICAL).evaluate(X, Y)


def test_a_target_of_the_wrong_shape_is_called_a_target():
    two = ("model two {\n    input x: [4]\n    a = x -> dense(2)\n    b = x -> dense(1)\n    output a\n"
           "    output b\n}\ntrain two { loss = mse }\n")
    with pytest.raises(NndError, match=r"^error: target 'a' has shape \(64, 3\) but the model expects"):
        nnd.loads(two).evaluate(X, {"a": np.zeros((64, 3)), "b": np.zeros((64, 1))})


# ------------------------------------------------------------------------------------------ the model


def test_loss_and_gradients_under_loss_scaling_match_float32():
    scaled, plain = nnd.loads(TINY, mixed_precision=True), nnd.loads(TINY)
    loss16, grads16 = scaled.loss_and_gradients(X, Y)
    loss32, grads32 = plain.loss_and_gradients(X, Y)
    assert loss16 == pytest.approx(loss32, abs=2e-3)
    for name, grad in grads32.items():
        assert grads16[name].dtype == np.float32
        np.testing.assert_allclose(grads16[name], grad, atol=5e-3 * np.abs(grad).max())
    assert scaled._get_trainer().scaler.good_steps == 0  # nothing was stepped


def test_set_parameters_checks_every_value_before_writing_any():
    model = nnd.loads(TINY)
    before = model.parameters()
    bad = {**before, "dense.kernel": np.full((4, 8), 7.0), "dense_1.bias": np.array(["a", "b", "c"])}
    with pytest.raises(NndError, match="parameter 'dense_1.bias' from the given dict must hold numbers"):
        model.set_parameters(bad)
    assert all(np.array_equal(model.parameters()[k], v) for k, v in before.items())
    for value in (list(before.values()), None):
        with pytest.raises(NndError, match="set_parameters takes a dict of parameter name -> array"):
            model.set_parameters(value)


def test_a_model_without_parameters_evaluates_but_does_not_train():
    model = nnd.loads("model s {\n    input x: [3]\n    softmax()\n}\ntrain s { loss = categorical_crossentropy }\n")
    x = np.zeros((2, 3), np.float32)
    assert model.evaluate(x, np.eye(3)[:2])["loss"] == pytest.approx(np.log(3), rel=1e-6)
    with pytest.raises(NndError, match="has no trainable parameters: there is nothing to train"):
        model.fit(x, np.eye(3)[:2], verbose=0)


def test_compile_takes_one_metric_as_a_string():
    model = nnd.loads(TINY).compile(metrics="accuracy")
    assert [m.name for m in model.spec.metrics] == ["accuracy"]


def test_a_float64_model_shows_float64_types():
    assert "x: f64[N,4]" in repr(nnd.loads(TINY, dtype="float64"))


@pytest.mark.parametrize("text, message", [
    (b"model m {}", r"loads takes the model's source as a str, got bytes \(decode bytes first"),
    (None, "loads takes the model's source as a str, got NoneType"),
])
def test_loads_refuses_what_is_not_text(text, message):
    with pytest.raises(NndError, match=message):
        nnd.loads(text)


def test_ragged_lists_a_model_number_and_a_bad_summary_batch_are_named():
    model = nnd.loads(TINY)
    with pytest.raises(NndError, match="input 'x' is not a rectangular array"):
        model.predict([[1, 2, 3, 4], [1, 2]])
    with pytest.raises(NndError, match="target 'output' is not a rectangular array"):
        model.evaluate(X[:2], [[1], [1, 2]])
    with pytest.raises(NndError, match="batch_size must be a positive int, got 'x'"):
        model.summary(batch_size="x", print_fn=None)
    with pytest.raises(NndError, match=r"a model is chosen by its name, a str, not int \(models: tiny\)"):
        nnd.loads(TINY, model=3)


RAW = "model raw {\n    input x: [4]\n    dense(3)\n}\ntrain raw { loss = mse }\n"


def _torch_crossentropy(model) -> float:
    torch = pytest.importorskip("torch")
    logits = torch.tensor(model.predict(X), dtype=torch.float64)
    return float(torch.nn.functional.cross_entropy(logits, torch.tensor(Y)))


@pytest.mark.parametrize("loss", [
    "sparse_categorical_crossentropy(from_logits=true)",
    nnd.Configured("sparse_categorical_crossentropy", {"from_logits": True}),
])
def test_compile_sets_from_logits_by_the_languages_call_or_a_configured(loss, tmp_path):
    model = nnd.loads(RAW, seed=1).compile(loss=loss)
    assert model.spec.loss == nnd.Configured("sparse_categorical_crossentropy", {"from_logits": True})
    assert model.evaluate(X, Y)["loss"] == pytest.approx(_torch_crossentropy(model), rel=1e-5)
    assert nnd.load(model.save(tmp_path / "saved")).spec.loss == model.spec.loss


def test_compile_reads_calls_for_the_optimizer_and_metrics_with_keyword_arguments_added():
    model = nnd.loads(TINY).compile(optimizer="sgd(lr=0.5, momentum=0.9)", nesterov=True,
                                    metrics=["top_k_accuracy(k=2)", "accuracy"], loss="huber(2.0)")
    assert model.spec.optimizer == nnd.Configured("sgd", {"lr": 0.5, "momentum": 0.9, "nesterov": True})
    assert model.spec.metrics == [nnd.Configured("top_k_accuracy", {"k": 2}), nnd.Configured("accuracy")]
    assert model.spec.loss == nnd.Configured("huber", {"delta": 2.0})


@pytest.mark.parametrize("loss, message", [
    ("sparse_categorical_crossentropy(from_logits=True)",
     "sparse_categorical_crossentropy argument 'from_logits': expected true or false, got the name 'True'; "
     "did you mean 'true'?"),
    ("huber(delta=-1)", "huber argument 'delta': must be positive, got -1"),
    ("huber(delta=", "loss 'huber(delta=' is not a name or a call such as adam(lr=0.01): it ends before its "
                     "call is closed"),
    ("mse(} train q { loss = mse", "loss 'mse(} train q { loss = mse' is not a name or a call"),
    ("huber(1) + 1", "loss 'huber(1) + 1' is not a name or a call such as adam(lr=0.01): it is neither a name "
                     "nor a call"),
])
def test_a_compile_call_with_a_mistake_is_one_error_and_changes_nothing(loss, message):
    model = nnd.loads(TINY)
    with pytest.raises(NndError) as caught:
        model.compile(loss=loss)
    assert message in str(caught.value)
    assert model.spec.loss == nnd.Configured("sparse_categorical_crossentropy")
