"""Losses that do not fit the outputs they apply to: an error when nothing can be learned, warnings for the
classic silent mistakes, from `nnd check`, `nnd train` and `Model.fit`."""
from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

import nnd
from nnd.cli import main
from nnd.compiler.frontend import compile_file, compile_text

EXAMPLES = sorted((Path(__file__).resolve().parent.parent / "examples").glob("*.nnd"))


def model(last_layer: str, loss: str) -> str:
    return (f"model m {{\n    input x: [5]\n    {last_layer}\n}}\n"
            f"train m {{\n    loss = {loss}\n}}\n")


def warnings_of(source: str) -> list[str]:
    program = compile_text(source, name="m.nnd")
    return [w.render(program.sources) for w in program.warnings["m"]]


@pytest.mark.parametrize("last_layer, loss, message, advice", [
    ("dense(10)", "sparse_categorical_crossentropy",
     "sparse_categorical_crossentropy reads probabilities, but output 'output' has no activation at its end "
     "(raw scores)", "end the model with activation=softmax, or set from_logits=true for raw scores"),
    ("dense(10, activation=relu)", "categorical_crossentropy",
     "categorical_crossentropy reads probabilities, but output 'output' ends in relu",
     "end the model with activation=softmax, or set from_logits=true for raw scores"),
    ("dense(1, activation=tanh)", "binary_crossentropy",
     "binary_crossentropy reads probabilities, but output 'output' ends in tanh",
     "end the model with activation=sigmoid, or set from_logits=true for raw scores"),
    ("dense(10, activation=softmax)", "binary_crossentropy",
     "binary_crossentropy treats each of the 10 units of output 'output' as an independent probability, but "
     "its softmax makes them compete",
     "use sigmoid for independent labels, or categorical_crossentropy for one class out of 10"),
    ("dense(10, activation=softmax)", "sparse_categorical_crossentropy(from_logits=true)",
     "sparse_categorical_crossentropy with from_logits=true applies a softmax of its own, but output 'output' "
     "already ends in softmax", "set from_logits=false, or drop the final activation"),
    ("dense(1, activation=sigmoid)", "binary_crossentropy(from_logits=true)",
     "binary_crossentropy with from_logits=true applies a sigmoid of its own, but output 'output' already "
     "ends in sigmoid", "set from_logits=false, or drop the final activation"),
])
def test_a_loss_that_does_not_fit_its_output_is_a_warning_at_the_loss(last_layer, loss, message, advice):
    width = len(loss.split("(")[0])
    assert warnings_of(model(last_layer, loss)) == [
        f"m.nnd:6:12: warning: {message}\n"
        f"        loss = {loss}\n"
        f"               {'^' + '~' * (width - 1)}\n"
        f"  note: output 'output' is made by dense at m.nnd:3:5\n"
        f"  note: {advice}"]


@pytest.mark.parametrize("last_layer, loss", [
    ("dense(10, activation=softmax)", "sparse_categorical_crossentropy"),
    ("dense(10)", "categorical_crossentropy(from_logits=true)"),
    ("dense(1, activation=sigmoid)", "binary_crossentropy"),
    ("dense(3)", "binary_crossentropy(from_logits=true)"),
    ("dense(3, activation=relu)", "mse"),
])
def test_fitting_losses_give_no_warning(last_layer, loss):
    assert warnings_of(model(last_layer, loss)) == []


def test_no_example_gets_a_warning():
    for path in EXAMPLES:
        assert compile_file(path).warnings.get(compile_file(path).model_name(), []) == [], path.name


def test_a_class_loss_over_one_unit_is_an_error():
    with pytest.raises(nnd.NndError) as error:
        compile_text(model("dense(1, activation=sigmoid)", "categorical_crossentropy"), name="m.nnd")
    assert error.value.render() == (
        "m.nnd:6:12: error: categorical_crossentropy over output 'output' of a single unit: a softmax of one unit "
        "is always 1, so there is nothing to learn\n"
        "        loss = categorical_crossentropy\n"
        "               ^~~~~~~~~~~~~~~~~~~~~~~~\n"
        "  note: output 'output' is made by dense at m.nnd:3:5\n"
        "  note: for two classes use dense(1, activation=sigmoid) with binary_crossentropy, or "
        "dense(2, activation=softmax)")


def test_check_prints_warnings_and_succeeds_unless_strict(tmp_path):
    path = tmp_path / "m.nnd"
    path.write_text(model("dense(10)", "sparse_categorical_crossentropy"))
    result = CliRunner().invoke(main, ["check", str(path)])
    assert result.exit_code == 0
    assert result.stdout == f"{path}: ok (m)\n"
    assert "warning: sparse_categorical_crossentropy reads probabilities" in result.stderr
    strict = CliRunner().invoke(main, ["check", "--strict", str(path)])
    assert strict.exit_code == 1 and strict.stdout == "" and strict.stderr == result.stderr
    clean = tmp_path / "clean.nnd"
    clean.write_text(model("dense(10, activation=softmax)", "sparse_categorical_crossentropy"))
    assert CliRunner().invoke(main, ["check", "--strict", str(clean)]).exit_code == 0


def test_fit_warns_in_python_and_train_says_it_once(tmp_path, monkeypatch):
    source = model("dense(3)", "sparse_categorical_crossentropy")
    x, y = np.random.default_rng(0).normal(size=(16, 5)).astype(np.float32), np.arange(16) % 3
    with pytest.warns(nnd.NndWarning, match="reads probabilities, but output 'output' has no activation"):
        nnd.loads(source).fit(x, y, epochs=1, verbose=0)
    fixed = nnd.loads(source).compile(loss="sparse_categorical_crossentropy")
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # compile() gave no from_logits either: still a mismatch
        with pytest.raises(nnd.NndWarning):
            fixed.fit(x, y, epochs=1, verbose=0)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        nnd.loads(source).compile(loss="mse").fit(x, np.zeros((16, 3)), epochs=1, verbose=0)
    monkeypatch.chdir(tmp_path)
    (tmp_path / "m.nnd").write_text(source)
    np.savez(tmp_path / "d.npz", x=x, y=y)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        result = CliRunner().invoke(main, ["train", "m.nnd", "--data", "d.npz", "--epochs", "1", "-q"])
    assert result.exit_code == 0, result.output
    assert result.stderr.count("warning: sparse_categorical_crossentropy reads probabilities") == 1
    assert not [w for w in caught if issubclass(w.category, nnd.NndWarning)]


def test_an_output_that_is_not_a_layer_product_is_given_the_benefit_of_the_doubt():
    heads = ("a = x -> dense(3, activation=softmax)\n    b = x -> dense(3, activation=softmax)\n"
             "    output p = average(a, b)")
    assert warnings_of(model(heads, "sparse_categorical_crossentropy")) == []
    assert len(warnings_of(model("dense(3, use_bias=false)", "sparse_categorical_crossentropy"))) == 1
    assert len(warnings_of(model("reshape([5, 1])\n    conv1d(4, 5)\n    flatten()",
                                 "categorical_crossentropy"))) == 0  # a reshape of scores: not told


def test_binary_metrics_on_class_ids_are_an_error_and_a_top_k_over_k_classes_a_warning():
    source = model("dense(3, activation=softmax)", "sparse_categorical_crossentropy").replace(
        "    loss =", "    metrics = [accuracy, auc, top_k_accuracy]\n    loss =")
    with pytest.raises(nnd.NndError) as error:
        compile_text(source, name="m.nnd")
    assert error.value.render() == (
        "m.nnd:6:26: error: auc counts binary decisions element by element, but the targets of output 'output' "
        "are class ids (sparse_categorical_crossentropy)\n"
        "        metrics = [accuracy, auc, top_k_accuracy]\n"
        "                             ^~~\n"
        "  note: for two classes use dense(1, activation=sigmoid) with binary_crossentropy; for more, one-hot "
        "targets with categorical_crossentropy\n"
        "m.nnd:6:31: warning: top_k_accuracy with k=5 over the 3 classes of output 'output' is always 1\n"
        "        metrics = [accuracy, auc, top_k_accuracy]\n"
        "                                  ^~~~~~~~~~~~~~\n"
        "  note: choose k below 3")
    assert warnings_of(source.replace("auc, top_k_accuracy", "top_k_accuracy(k=2)")) == []
    # k equal to the number of classes puts every class in the top k as well
    assert [w.splitlines()[0] for w in warnings_of(source.replace("auc, top_k_accuracy", "top_k_accuracy(k=3)"))] == [
        "m.nnd:6:26: warning: top_k_accuracy with k=3 over the 3 classes of output 'output' is always 1"]
    binary = model("dense(1, activation=sigmoid)", "binary_crossentropy").replace(
        "    loss =", "    metrics = [auc, precision, recall]\n    loss =")
    assert warnings_of(binary) == []
    x, y = np.random.default_rng(1).normal(size=(8, 5)).astype(np.float32), np.arange(8) % 3
    with pytest.raises(nnd.NndError, match="precision counts binary decisions"):
        nnd.loads(model("dense(3, activation=softmax)", "sparse_categorical_crossentropy")).compile(
            metrics=["precision"]).fit(x, y, epochs=1, verbose=0)
