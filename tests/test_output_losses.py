"""Per-output losses and loss weights (train section and compile()), and fit's sample_weight and
class_weight: the losses and gradients against PyTorch in float64, at every optimization level."""
from __future__ import annotations

import numpy as np
import pytest

import nnd
from nnd import NndError
from nnd.compiler.training import Configured

torch = pytest.importorskip("torch")  # the independent reference

TWO_OUTPUTS = """
model two {
    input x: [4]
    h = x -> dense(6, activation=tanh)
    output label = h -> dense(3, activation=softmax)
    output score = h -> dense(2)
}
train two {
    loss = [sparse_categorical_crossentropy, huber(delta=0.5)]
    loss_weights = [0.7, 2.5]
}
"""


def _data(n: int = 12, seed: int = 0):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, 4))
    labels = rng.integers(0, 3, n)
    scores = rng.normal(size=(n, 2))
    return x, {"label": labels, "score": scores}, rng.uniform(0.0, 3.0, n)


def _torch_losses(params: dict[str, np.ndarray], x, y, weights, loss_weights=(0.7, 2.5)):
    """Each output's weighted mean loss, the total and the parameter gradients, by PyTorch in float64."""
    p = {k: torch.tensor(v, dtype=torch.float64, requires_grad=True) for k, v in params.items()}
    h = torch.tanh(torch.tensor(x) @ p["dense.kernel"] + p["dense.bias"])
    logits = h @ p["dense_1.kernel"] + p["dense_1.bias"]
    score = h @ p["dense_2.kernel"] + p["dense_2.bias"]
    w = torch.tensor(weights, dtype=torch.float64)
    ce = torch.nn.functional.cross_entropy(logits, torch.tensor(y["label"]), reduction="none")
    huber = torch.nn.functional.huber_loss(score, torch.tensor(y["score"]), delta=0.5, reduction="none").mean(-1)
    label_loss, score_loss = (ce * w).mean(), (huber * w).mean()  # Keras: divided by the batch size
    total = loss_weights[0] * label_loss + loss_weights[1] * score_loss
    total.backward()
    grads = {k: v.grad.numpy() for k, v in p.items()}
    return label_loss.item(), score_loss.item(), total.item(), grads


@pytest.mark.parametrize("opt_level", [0, 1, 2])
@pytest.mark.parametrize("weighted", [False, True])
def test_two_output_losses_and_gradients_match_pytorch(opt_level, weighted):
    model = nnd.loads(TWO_OUTPUTS, dtype="float64", opt_level=opt_level)
    x, y, weights = _data()
    weights = weights if weighted else np.ones(len(x))
    label_loss, score_loss, total, grads = _torch_losses(model.parameters(), x, y, weights)
    loss, ours = model.loss_and_gradients(x, y, sample_weight=weights if weighted else None)
    assert loss == pytest.approx(total, rel=1e-12)
    for name, grad in grads.items():
        np.testing.assert_allclose(ours[name], grad, rtol=1e-10, atol=1e-13, err_msg=name)
    logs = model.evaluate(x, y, sample_weight=weights if weighted else None)
    assert logs["loss"] == pytest.approx(total, rel=1e-12)
    assert logs["label_loss"] == pytest.approx(label_loss, rel=1e-12)  # unweighted by loss_weights, as Keras
    assert logs["score_loss"] == pytest.approx(score_loss, rel=1e-12)


def test_compile_per_output_losses_by_dict_and_list_match_pytorch():
    model = nnd.loads(TWO_OUTPUTS.split("train")[0], dtype="float64")
    x, y, weights = _data(seed=1)
    label_loss, score_loss, total, grads = _torch_losses(model.parameters(), x, y, weights, (1.5, 0.0))
    model.compile(loss={"score": Configured("huber", {"delta": 0.5}), "label": "sparse_categorical_crossentropy"},
                  loss_weights={"label": 1.5, "score": 0})
    loss, ours = model.loss_and_gradients(x, y, sample_weight=weights)
    assert loss == pytest.approx(total, rel=1e-12)
    for name, grad in grads.items():
        np.testing.assert_allclose(ours[name], grad, rtol=1e-10, atol=1e-13, err_msg=name)
    model.compile(loss=["sparse_categorical_crossentropy", "mse"], loss_weights=[1.0, 1.0])
    logs = model.evaluate(x, y)
    assert logs["loss"] == pytest.approx(logs["label_loss"] + logs["score_loss"], rel=1e-12)
    assert logs["score_loss"] == pytest.approx(np.mean((model.predict(x)["score"] - y["score"]) ** 2), rel=1e-12)


def test_fit_logs_each_output_loss_and_monitors_may_watch_them():
    model = nnd.loads(TWO_OUTPUTS, dtype="float64")
    x, y, _ = _data(40)
    history = model.fit(x, y, epochs=2, batch_size=8, verbose=0, validation_split=0.25,
                        callbacks=[nnd.EarlyStopping(monitor="val_score_loss", patience=3)])
    assert list(history.history) == ["loss", "label_loss", "score_loss", "val_loss", "val_label_loss",
                                     "val_score_loss", "lr"]
    logs = model.evaluate(x[30:], {k: v[30:] for k, v in y.items()})
    assert history.history["val_loss"][-1] == pytest.approx(logs["loss"], rel=1e-12)
    assert logs["loss"] == pytest.approx(0.7 * logs["label_loss"] + 2.5 * logs["score_loss"], rel=1e-12)


def test_one_output_logs_no_output_loss():
    model = nnd.loads("model m {\n input x: [4]\n output y = x -> dense(3, activation=softmax)\n}\n")
    x, y, _ = _data()
    assert set(model.evaluate(x, y["label"])) == {"loss"}


# ------------------------------------------------------------------------------------- sample weights

CLASSIFIER = "model m {\n input x: [4]\n output y = x -> dense(5, activation=relu) -> dense(3, activation=softmax)\n}\n"


def _torch_classifier(params, x, labels, weights):
    p = {k: torch.tensor(v, dtype=torch.float64, requires_grad=True) for k, v in params.items()}
    h = torch.relu(torch.tensor(x) @ p["dense.kernel"] + p["dense.bias"])
    logits = h @ p["dense_1.kernel"] + p["dense_1.bias"]
    per_sample = torch.nn.functional.cross_entropy(logits, torch.tensor(labels), reduction="none")
    loss = (per_sample * torch.tensor(weights, dtype=torch.float64)).mean()
    loss.backward()
    return loss.item(), {k: v.grad.numpy() for k, v in p.items()}


@pytest.mark.parametrize("opt_level", [0, 1, 2])
def test_class_weight_equals_pytorch_with_per_sample_weights(opt_level):
    """class_weight's step is the step of the per-sample weighted mean, a class left out weighing 1."""
    x, y, _ = _data(16, seed=2)
    labels = y["label"]
    class_weight = {0: 3.0, 2: 0.25}
    weights = np.array([class_weight.get(int(c), 1.0) for c in labels])
    models = [nnd.loads(CLASSIFIER, dtype="float64", opt_level=opt_level).compile("sgd", lr=0.1) for _ in range(2)]
    before = models[0].parameters()
    _, grads = _torch_classifier(before, x, labels, weights)
    models[0].fit(x, labels, epochs=1, batch_size=16, verbose=0, shuffle=False, class_weight=class_weight)
    for name, grad in grads.items():
        np.testing.assert_allclose(models[0].parameters()[name], before[name] - 0.1 * grad, rtol=1e-10,
                                   atol=1e-13, err_msg=name)
    # one-hot targets with categorical_crossentropy take the same class weights
    models[1].compile(loss="categorical_crossentropy")
    models[1].fit(x, np.eye(3)[labels], epochs=1, batch_size=16, verbose=0, shuffle=False,
                  class_weight=class_weight)
    for name in grads:
        np.testing.assert_allclose(models[1].parameters()[name], models[0].parameters()[name], rtol=1e-12)


def test_the_weighted_loss_is_divided_by_the_batch_size_not_the_sum_of_weights():
    model = nnd.loads(CLASSIFIER, dtype="float64")
    x, y, _ = _data(10, seed=3)
    plain = model.evaluate(x, y["label"])["loss"]
    assert model.evaluate(x, y["label"], sample_weight=np.full(10, 2.0))["loss"] == pytest.approx(2 * plain)
    half = np.r_[np.ones(5), np.zeros(5)]
    first = model.evaluate(x[:5], y["label"][:5])["loss"]
    assert model.evaluate(x, y["label"], sample_weight=half)["loss"] == pytest.approx(first / 2)


def test_binary_class_weight_and_fit_logs_the_weighted_loss_with_unweighted_metrics():
    source = "model m {\n input x: [4]\n output y = x -> dense(1, activation=sigmoid)\n}\n"
    x, _, _ = _data(20, seed=4)
    labels = (x[:, 0] > 0).astype(np.float64)
    model = nnd.loads(source, dtype="float64").compile("sgd", lr=1e-9, metrics=["binary_accuracy"])
    p = model.predict(x)[:, 0]
    per_sample = -(labels * np.log(p) + (1 - labels) * np.log(1 - p))
    weights = np.where(labels == 1, 4.0, 0.5)
    history = model.fit(x, labels, epochs=1, batch_size=20, verbose=0, class_weight={0: 0.5, 1: 4.0})
    assert history.history["loss"][0] == pytest.approx(np.mean(per_sample * weights), rel=1e-9)
    assert history.history["binary_accuracy"][0] == pytest.approx(np.mean((p > 0.5) == labels))


def test_validation_split_keeps_sample_weights_but_not_class_weights():
    x, y, weights = _data(20, seed=5)
    labels = y["label"]
    tail = slice(15, 20)
    for kwargs, val_weights in (({"sample_weight": weights}, weights[tail]), ({"class_weight": {1: 5.0}}, None)):
        model = nnd.loads(CLASSIFIER, dtype="float64").compile("sgd", lr=1e-3)
        history = model.fit(x, labels, epochs=1, batch_size=5, verbose=0, validation_split=0.25, **kwargs)
        expected = model.evaluate(x[tail], labels[tail], sample_weight=val_weights)["loss"]
        assert history.history["val_loss"][0] == pytest.approx(expected, rel=1e-12)


def test_validation_data_takes_sample_weights():
    x, y, weights = _data(10, seed=6)
    model = nnd.loads(CLASSIFIER, dtype="float64").compile("sgd", lr=1e-3)
    history = model.fit(x, y["label"], epochs=1, verbose=0, validation_data=(x, y["label"], weights))
    assert history.history["val_loss"][0] == pytest.approx(
        model.evaluate(x, y["label"], sample_weight=weights)["loss"], rel=1e-12)


def test_sample_weights_per_output_by_dict():
    model = nnd.loads(TWO_OUTPUTS, dtype="float64")
    x, y, weights = _data()
    ones = np.ones(len(x))
    logs = model.evaluate(x, y, sample_weight={"score": weights})
    assert logs["label_loss"] == pytest.approx(model.evaluate(x, y)["label_loss"])
    assert logs["score_loss"] == pytest.approx(model.evaluate(x, y, sample_weight=weights)["score_loss"])
    assert model.evaluate(x, y, sample_weight=[ones, weights])["loss"] == pytest.approx(logs["loss"])


def test_masked_sequence_loss_with_sample_weights_is_keras_masked_mean():
    """sum(loss * mask * weight) / sum(mask), as Keras' apply_mask with sample weights."""
    source = ("model s {\n input ids: i32[5]\n h = ids -> embedding(7, 3, mask_zero=true) -> "
              "lstm(4, return_sequences=true)\n output y = h -> dense(2)\n}\n")
    model = nnd.loads(source, dtype="float64")
    ids = np.array([[1, 2, 3, 0, 0], [4, 5, 0, 0, 0], [6, 1, 2, 3, 4]])
    target = np.random.default_rng(7).normal(size=(3, 5, 2))
    weights = np.array([2.0, 0.0, 0.5])
    mask = ids != 0
    per_step = ((model.predict(ids) - target) ** 2).mean(-1)
    expected = (per_step * mask * weights[:, None]).sum() / mask.sum()
    assert model.evaluate(ids, target, sample_weight=weights)["loss"] == pytest.approx(expected, rel=1e-10)


# ------------------------------------------------------------------------------------- mistakes

@pytest.mark.parametrize("kwargs, message", [
    ({"sample_weight": np.ones(9)}, "sample_weight has shape (9,), but there are 10 samples: it needs shape (10,)"),
    ({"sample_weight": np.ones((10, 2))}, "sample_weight has shape (10, 2), but there are 10 samples"),
    ({"sample_weight": np.r_[np.ones(9), -1.0]}, "sample_weight holds -1 at index 9; weights must be finite"),
    ({"sample_weight": np.r_[np.nan, np.ones(9)]}, "sample_weight holds nan at index 0"),
    ({"sample_weight": np.array(["a"] * 10)}, "sample_weight must hold numbers"),
    ({"class_weight": [1.0, 2.0]}, "class_weight must be a dict of class id -> weight, got list"),
    ({"class_weight": {3: 1.0}}, "class_weight gives a weight for class 3, but the output has 3 classes (0 to 2)"),
    ({"class_weight": {"a": 1.0}}, "class_weight keys are class ids (ints), got 'a'"),
    ({"class_weight": {0: -1.0}}, "class_weight[0] must be a finite number of at least 0, got -1.0"),
    ({"class_weight": {0: 1.0}, "sample_weight": np.ones(10)}, "fit takes class_weight or sample_weight, not both"),
])
def test_fit_weight_mistakes_are_one_clear_error(kwargs, message):
    x, y, _ = _data(10)
    model = nnd.loads(CLASSIFIER)
    with pytest.raises(NndError, match=None) as err:
        model.fit(x, y["label"], verbose=0, **kwargs)
    assert message in str(err.value)


def test_class_weight_refuses_models_and_outputs_without_one_class_per_sample():
    x, y, _ = _data(10)
    with pytest.raises(NndError, match="class_weight serves models with one output; this one has 2"):
        nnd.loads(TWO_OUTPUTS).fit(x, y, verbose=0, class_weight={0: 2.0})
    regression = nnd.loads("model r {\n input x: [4]\n output y = x -> dense(2)\n}\n")
    with pytest.raises(NndError, match="output 'y' trains with mse, whose targets are not classes"):
        regression.fit(x, y["score"], verbose=0, class_weight={0: 2.0})


@pytest.mark.parametrize("kwargs, message", [
    ({"loss": ["mse"]}, "loss has 1 entry, but the model has 2 outputs: one loss per output, in order"),
    ({"loss": {"lable": "mse", "score": "mse"}}, "loss names output 'lable', which the model does not have; "
                                                 "did you mean 'label'?"),
    ({"loss": {"label": "sparse_categorical_crossentropy"}}, "loss gives no loss for output 'score'"),
    ({"loss": ["mse", None]}, "loss['score'] is None: every output needs a loss"),
    ({"loss": ["mse", "msee"]}, "unknown loss 'msee'; did you mean 'mse'?"),
    ({"loss_weights": [1.0, -2.0]}, "loss_weights['score'] must be a finite number of at least 0, got -2.0"),
    ({"loss_weights": [1.0, float("inf")]}, "loss_weights['score'] must be a finite number of at least 0"),
    ({"loss_weights": [1.0, 2.0, 3.0]}, "loss_weights has 3 entries, but the model has 2 outputs"),
    ({"loss_weights": {"scor": 2.0}}, "loss_weights names output 'scor', which the model does not have"),
    ({"loss_weights": 2.0}, "loss_weights must be a list or a dict (one weight per output), got float"),
    ({"loss_weights": [1.0, True]}, "loss_weights['score'] must be a number, got bool"),
])
def test_compile_loss_mistakes_are_one_clear_error_and_change_nothing(kwargs, message):
    model = nnd.loads(TWO_OUTPUTS)
    with pytest.raises(NndError) as err:
        model.compile(**kwargs)
    assert message in str(err.value)
    assert isinstance(model.spec.loss, list) and model.spec.loss_weights == [0.7, 2.5]


@pytest.mark.parametrize("settings, message, column", [
    ("loss = [mse]", "loss lists 1 loss, one per output, but model 'two' has 2 outputs: label, score", 12),
    ("loss = [mse, mse, mse]", "loss lists 3 losses, one per output", 12),
    ("loss = []", "loss: an empty list; give one loss, or a list with one per output", 12),
    ("loss = [mse, none]", "every output needs a loss; to leave one out of the total, give it weight 0", 18),
    ("loss = [mse, msee]", "unknown loss 'msee'; did you mean 'mse'?", 18),
    ("loss_weights = [1, -1]", "loss_weights: the weight of output 2: must be at least 0, got -1", 20),
    ("loss_weights = [1]", "loss_weights lists 1 weight, one per output, but model 'two' has 2 outputs", 20),
    ("loss_weights = 2", "loss_weights: expected a list with one weight per output, got an int (2)", 20),
    ("loss_weights = [1, heavy]", "undefined value 'heavy'", 24),
])
def test_train_section_loss_mistakes_are_located(settings, message, column):
    source = TWO_OUTPUTS.split("train")[0] + f"train two {{\n    {settings}\n}}\n"
    with pytest.raises(NndError) as err:
        nnd.loads(source, name="two.nnd")
    diagnostic = err.value.diagnostics[0]
    assert message in diagnostic.message
    assert (diagnostic.span.line, diagnostic.span.column) == (9, column)


def test_loss_warnings_apply_to_each_output_at_its_own_loss():
    source = ("model two {\n input x: [4]\n h = x -> dense(6)\n output a = h -> dense(3)\n"
              " output b = h -> dense(1, activation=sigmoid)\n}\n"
              "train two {\n    loss = [sparse_categorical_crossentropy, binary_crossentropy(from_logits=true)]\n}\n")
    program = nnd.compiler.frontend.compile_text(source, name="two.nnd")
    found = [(w.message, w.span.column) for w in program.warnings["two"]]
    assert found == [
        ("sparse_categorical_crossentropy reads probabilities, but output 'a' has no activation at its end "
         "(raw scores)", 13),
        ("binary_crossentropy with from_logits=true applies a sigmoid of its own, but output 'b' already ends in "
         "sigmoid", 46)]


def test_per_output_losses_and_weights_survive_save_load_and_the_run_directory(tmp_path):
    x, y, _ = _data(16)
    model = nnd.loads(TWO_OUTPUTS.split("train")[0], dtype="float64")
    model.compile(loss={"label": "sparse_categorical_crossentropy", "score": "mae"}, loss_weights=[0.0, 3.0])
    model.fit(x, y, epochs=1, verbose=0, run_dir=tmp_path / "run")
    model.save(tmp_path / "saved")
    for directory in ("saved", "run"):
        loaded = nnd.load(tmp_path / directory, dtype="float64")
        loaded.set_parameters(model.parameters())
        assert loaded.evaluate(x, y) == pytest.approx(model.evaluate(x, y), rel=1e-12)
        assert loaded.evaluate(x, y)["loss"] == pytest.approx(3.0 * loaded.evaluate(x, y)["score_loss"])


def test_summary_shows_each_output_loss_and_weight():
    from nnd.compiler.summary import training_recipe

    model = nnd.loads(TWO_OUTPUTS)
    assert ("loss label: sparse_categorical_crossentropy, score: huber(delta=0.5); loss weights label: 0.7, "
            "score: 2.5") in training_recipe(model.spec, model.graph)


def test_a_weighted_two_output_batch_trained_in_slices_gives_the_whole_batch_step():
    """Slices of a large batch add up to its loss, each output's loss and its gradients, weights included."""
    x, y, weights = _data(23, seed=8)
    models = [nnd.loads(TWO_OUTPUTS, dtype="float64", seed=1) for _ in range(2)]
    sliced, whole = (m._get_trainer() for m in models)
    sliced.slice_target, whole.slice_target = 5, None
    for _ in range(2):
        a = sliced.step(models[0]._feeds(x, y, weights))
        b = whole.step(models[1]._feeds(x, y, weights))
        for key in ("loss", "loss:label", "loss:score"):
            assert float(a[key]) == pytest.approx(float(b[key]), rel=1e-12)
    for name, value in models[1].parameters().items():
        np.testing.assert_allclose(models[0].parameters()[name], value, rtol=1e-10, atol=1e-13)


def test_a_train_section_may_monitor_an_output_loss_and_a_misspelled_one_gets_a_hint():
    model = TWO_OUTPUTS.split("train")[0]
    watched = model + "train two {\n    callbacks = [early_stopping(monitor=val_score_loss)]\n}\n"
    assert nnd.loads(watched).spec.callbacks[0].args["monitor"] == "val_score_loss"
    with pytest.raises(NndError, match="monitors 'val_scor_loss', which training does not log; did you mean "
                                       "'val_score_loss'"):
        nnd.loads(model + "train two {\n    callbacks = [early_stopping(monitor=val_scor_loss)]\n}\n")


@pytest.mark.parametrize("names, clash", [
    (("val", "other"), "'val_loss'"),
    (("speed", "val_speed"), "'val_speed_loss', 'val_speed_mae'"),
])
def test_outputs_whose_figures_would_share_a_log_name_are_refused(tmp_path, names, clash):
    """Keras lets the later of two figures logged under one name overwrite the earlier; an output named
    `val` would hide the validation loss. nnd check reports it, and so does fit for a model compiled
    from Python."""
    first, second = names
    source = f"""model m {{
    input x: [4]
    output {first} = x -> dense(1)
    output {second} = x -> dense(1)
}}
"""
    train = "train m {\n    loss = mse\n    metrics = [mae]\n}\n"
    culprit = first if first == "val" else second
    message = f"the training logs would give two figures the name {clash}: rename output '{culprit}'"
    with pytest.raises(NndError, match="rename output") as info:
        nnd.loads(source + train)
    line = 3 if first == "val" else 4  # at the output to rename
    assert message in str(info.value) and f":{line}:5: error:" in str(info.value)
    model = nnd.loads(source)
    model.compile(loss="mse", metrics=["mae"])
    x, y = np.zeros((4, 4)), {first: np.zeros((4, 1)), second: np.zeros((4, 1))}
    with pytest.raises(NndError, match="rename output"):
        model.fit(x, y, epochs=1, verbose=0, validation_split=0.5)
