"""nnd inside another program: a model loaded once and called many times (every batch size, results that
later calls leave alone, inputs left as they were), from several threads, copied, refused by pickle,
and every wrong argument one NndError rather than an exception from deep inside."""
from __future__ import annotations

import copy
import io
import pickle
import threading
from pathlib import Path

import numpy as np
import pytest
import torch

import nnd
from nnd import NndError
from nnd.runtime.progress import Progress

ROOT = Path(__file__).resolve().parent.parent

SOURCE = """
model small {
    input x: [5]
    dense(16, activation=tanh)
    dense(3, activation=softmax)
}
train small {
    optimizer  = adam(lr=0.01)
    loss       = sparse_categorical_crossentropy
    metrics    = [accuracy]
    batch_size = 8
    seed       = 3
}
"""


@pytest.fixture
def model() -> nnd.Model:
    return nnd.loads(SOURCE)


def _data(n: int = 40, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, 5)).astype(np.float32)
    return x, (x[:, 0] > 0).astype(np.int64) + (x[:, 1] > 1)


def _reference(model: nnd.Model, x: np.ndarray) -> np.ndarray:
    """The two dense layers in float64 PyTorch, from the model's own parameters."""
    weights = {k: torch.from_numpy(v.astype(np.float64)) for k, v in model.parameters().items()}
    kernels = sorted(k for k in weights if k.endswith("kernel"))
    hidden = torch.tanh(torch.from_numpy(x.astype(np.float64)) @ weights[kernels[0]]
                        + weights[kernels[0].replace("kernel", "bias")])
    logits = hidden @ weights[kernels[1]] + weights[kernels[1].replace("kernel", "bias")]
    return torch.softmax(logits, dim=-1).numpy()


# ------------------------------------------------------------------------------------ many small calls

@pytest.mark.parametrize("batch_size", [1, 2, 7, 8, 9, 39, 40, 41, 1000])
def test_every_batch_size_gives_the_reference_outputs(model, batch_size):
    x, _ = _data(40)
    np.testing.assert_allclose(model.predict(x, batch_size=batch_size), _reference(model, x), atol=1e-6)


def test_no_samples_give_an_empty_result_of_the_output_shape(model):
    out = model.predict(np.zeros((0, 5), np.float32), batch_size=1)
    assert out.shape == (0, 3) and out.dtype == np.float32


def test_a_result_is_not_overwritten_by_the_next_call_and_inputs_are_left_alone(model):
    x, _ = _data(20)
    for given in (x, x.astype(np.float64), np.asfortranarray(x)):
        before = given.copy()
        first = model.predict(given[:1])
        kept = first.copy()
        model.predict(given[1:2] * 3)
        np.testing.assert_array_equal(first, kept)
        np.testing.assert_array_equal(given, before)


def test_read_only_memory_mapped_and_strided_inputs_predict_as_a_plain_array(model, tmp_path):
    x, _ = _data(12)
    expected = model.predict(x)
    np.save(tmp_path / "x.npy", x)
    mapped = np.load(tmp_path / "x.npy", mmap_mode="r")
    strided = np.repeat(x, 2, axis=0)[::2]
    for given in (mapped, strided, torch.from_numpy(x)):
        np.testing.assert_allclose(model.predict(given), expected, atol=1e-7)


def test_concurrent_predictions_on_one_model_and_on_two_give_each_caller_its_own_result():
    first, second = nnd.loads(SOURCE, seed=1), nnd.loads(SOURCE, seed=2, dtype="float64")
    batches = [_data(n, seed=n)[0] for n in (1, 3, 9, 17)]
    expected = [(first.predict(b), second.predict(b)) for b in batches]
    wrong: list[int] = []

    def work(offset: int) -> None:
        for k in range(30):
            index = (offset + k) % len(batches)
            if not (np.array_equal(first.predict(batches[index]), expected[index][0])
                    and np.array_equal(second.predict(batches[index]), expected[index][1])):
                wrong.append(index)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not wrong


# ------------------------------------------------------------------------------------ copies and pickle

@pytest.mark.parametrize("make_copy", [copy.copy, copy.deepcopy])
def test_a_copy_trains_on_its_own_weights(model, make_copy):
    x, y = _data()
    model.fit(x, y, epochs=1, verbose=0, shuffle=False)
    twin = make_copy(model)
    np.testing.assert_array_equal(twin.predict(x), model.predict(x))
    before = model.parameters()
    twin.fit(x, y, epochs=1, verbose=0, shuffle=False)
    for name, value in model.parameters().items():
        np.testing.assert_array_equal(value, before[name])
    # the copy's optimizer went on from the original's state: the original's second epoch is the same
    model.fit(x, y, epochs=1, verbose=0, shuffle=False)
    for name, value in model.parameters().items():
        np.testing.assert_allclose(twin.parameters()[name], value, atol=1e-7)
    assert len(twin.history.epochs) == len(model.history.epochs) == 2


def test_a_copy_keeps_what_compile_set(model):
    model.compile(optimizer="sgd", lr=0.5, loss="categorical_crossentropy")
    twin = copy.deepcopy(model)
    assert twin.spec.optimizer == model.spec.optimizer and twin.spec.loss.name == "categorical_crossentropy"
    assert twin.saved_settings() == model.saved_settings()


def test_pickling_a_model_says_to_save_it(model):
    with pytest.raises(NndError, match=r"model\.save\(directory\)"):
        pickle.dumps(model)


# ------------------------------------------------------------------------------------ wrong arguments

def _tensor_that_requires_grad() -> torch.Tensor:
    return torch.zeros((2, 5), requires_grad=True)


WRONG_CALLS = {
    "load weights=3": (lambda m: nnd.load(ROOT / "examples" / "mnist_cnn.nnd", weights=3), "weights must be a path"),
    "load NUL path": (lambda m: nnd.load("a\0b.nnd"), "NUL character"),
    "load dtype list": (lambda m: nnd.loads(SOURCE, dtype=["float32"]), "dtype must be float32 or float64"),
    "loads name=3": (lambda m: nnd.loads(SOURCE, name=3), "name .* must be a str"),
    "loads base_dir=3": (lambda m: nnd.loads(SOURCE, base_dir=3), "base_dir must be a path"),
    "load_weights(3)": (lambda m: m.load_weights(3), "weights file must be a path"),
    "load_weights(None)": (lambda m: m.load_weights(None), "weights file must be a path"),
    "compile metrics=3": (lambda m: m.compile(metrics=3), "metrics must be a list"),
    "Configured args list": (lambda m: m.compile(loss=nnd.Configured("huber", [1])), "arguments must be a dict"),
    "fit verbose str": (lambda m: m.fit(*_data(), epochs=1, verbose="yes"), "verbose must be"),
    "fit initial_epoch str": (lambda m: m.fit(*_data(), epochs=1, verbose=0, initial_epoch="a"),
                              "initial_epoch must be a non-negative int"),
    "fit initial_epoch -1": (lambda m: m.fit(*_data(), epochs=1, verbose=0, initial_epoch=-1),
                             "initial_epoch must be a non-negative int"),
    "summary print_fn=3": (lambda m: m.summary(print_fn=3), "print_fn must be a function"),
    "predict tensor with grad": (lambda m: m.predict(_tensor_that_requires_grad()),
                                 "input 'x' cannot be read as a NumPy array .*detach"),
}


@pytest.mark.parametrize("case", list(WRONG_CALLS))
def test_a_wrong_argument_is_one_nnd_error(model, case):
    call, message = WRONG_CALLS[case]
    with pytest.raises(NndError, match=message):
        call(model)


@pytest.mark.parametrize("verbose", [0, 1, 2, True, False, "auto"])
def test_keras_verbose_values_are_accepted(model, verbose, capsys):
    model.fit(*_data(), epochs=1, verbose=verbose)
    printed = capsys.readouterr().out
    assert (printed == "") == (verbose in (0, False))


def test_verbose_2_never_draws_the_live_bar():
    class Terminal(io.StringIO):
        def isatty(self) -> bool:
            return True

    assert Progress(1, 10, stream=Terminal(), verbose=1).live
    assert not Progress(1, 10, stream=Terminal(), verbose=2).live


def test_loading_predicting_and_training_leave_the_process_global_state_alone(capsys):
    import os
    import signal
    import warnings

    np.random.seed(5)
    state, options, filters = np.random.get_state()[1].copy(), np.get_printoptions(), list(warnings.filters)
    handler, cwd = signal.getsignal(signal.SIGINT), os.getcwd()
    model = nnd.loads(SOURCE)
    x, y = _data()
    model.predict(x)
    model.fit(x, y, epochs=1, verbose=0)
    model.evaluate(x, y)
    np.testing.assert_array_equal(np.random.get_state()[1], state)
    assert np.get_printoptions() == options and warnings.filters == filters
    assert signal.getsignal(signal.SIGINT) is handler and os.getcwd() == cwd
    assert capsys.readouterr().out == ""


def test_keras_list_form_of_the_weights_round_trips_in_layer_order():
    model = nnd.loads("model m { input x: [3]\n dense(4)\n batchnorm()\n dense(2) }", seed=0)
    weights = model.get_weights()
    assert [w.shape for w in weights] == [(3, 4), (4,), (4,), (4,), (4,), (4,), (4, 2), (2,)]  # Keras' order
    other = nnd.loads("model m { input x: [3]\n dense(4)\n batchnorm()\n dense(2) }", seed=1)
    other.set_weights(weights)
    x = np.random.default_rng(0).normal(size=(5, 3)).astype(np.float32)
    np.testing.assert_array_equal(other.predict(x), model.predict(x))
    weights[0][...] = 7  # a copy: the model keeps its own
    assert not np.any(model.get_weights()[0] == 7)
    with pytest.raises(NndError, match=r"set_weights got 7 arrays, but the model has 8 parameters \(dense.kernel"):
        other.set_weights(weights[:7])
    with pytest.raises(NndError, match="set_weights takes a list of arrays .*; set_parameters takes a dict by name"):
        other.set_weights(model.parameters())
    with pytest.raises(NndError, match="'dense.kernel' .*shape"):
        other.set_weights([weights[1], *weights[1:]])


def test_parameters_that_are_not_numbers_are_named_as_such():
    model = nnd.loads("model m { input x: [3]\n dense(2) }", seed=0)
    with pytest.raises(NndError, match="parameter 'dense.kernel' from the given dict must hold numbers, got dtype <U1"):
        model.set_parameters({"dense.kernel": "x", "dense.bias": np.zeros(2)})


def test_threads_predicting_at_once_build_one_predictor(monkeypatch):
    """The first predict compiles the model; threads that make theirs at the same moment wait for that
    one instead of each compiling their own."""
    import threading

    import nnd.model

    model = nnd.loads("model m { input x: [3]\n dense(2) }", seed=0)
    built, start = [], threading.Barrier(4)
    make = nnd.model.Model._make_predictor

    def counted(self):
        built.append(1)
        return make(self)

    monkeypatch.setattr(nnd.model.Model, "_make_predictor", counted)
    x = np.ones((2, 3), np.float32)
    results = []

    def predict():
        start.wait()
        results.append(model.predict(x))

    threads = [threading.Thread(target=predict) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(built) == 1 and len(results) == 4
    assert all(np.array_equal(r, results[0]) for r in results)
