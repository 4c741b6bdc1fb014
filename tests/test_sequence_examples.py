"""The sequence examples, each trained briefly on small data: the LSTM classifier, CSV forecasting,
the character language model with `nnd generate`, the video CNN+LSTM, and (marked slow) the row-LSTM
on real Fashion-MNIST. Then the data mistakes a user of these examples makes, with their messages.
"""
from __future__ import annotations

import json
import math
import shutil
import time
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

import nnd
from nnd.cli import main
from nnd.compiler.diagnostics import NndError
from nnd.runtime.data_source import fit_to_input
from nnd.runtime.datasets import load_named
from nnd.runtime.sequence_data import CharVocabulary, load_text_windows, moving_images

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


def nnd_cli(*args):
    return CliRunner().invoke(main, [str(a) for a in args])


def succeeded(result):
    assert result.exit_code == 0, (result.exit_code, result.output, result.exception)
    return result


def failed(result):
    assert result.exit_code == 1, (result.exit_code, result.output)
    assert "Traceback" not in result.output and "internal error" not in result.stderr
    return result.stderr.strip()


@pytest.fixture
def workdir(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("NND_OFFLINE", "1")
    return tmp_path


def sample_text() -> str:
    words = "the quick brown fox jumps over a lazy dog while seven small birds sing".split()
    r = np.random.default_rng(0)
    return "\n".join(" ".join(r.choice(words, size=10)) + "." for _ in range(60)) + "\n"


# ---------------------------------------------------------------------------------------------------
# The examples

def test_lstm_classifier_learns_the_sign_of_a_mean():
    """The seed's model (two stacked lstm(64), dense(1, sigmoid), binary cross-entropy, Adam). To keep the test
    short its input is cut from 100 steps to 20 by editing the example's text; the layers are unchanged."""
    text = (EXAMPLES / "lstm_classifier.nnd").read_text()
    assert "input x: [100, 64]" in text
    model = nnd.loads(text.replace("input x: [100, 64]", "input x: [20, 64]"), seed=0)
    r = np.random.default_rng(0)
    x = r.normal(size=(400, 20, 64)).astype(np.float32)
    x[:, :, 0] += r.uniform(0.1, 0.6, size=(400, 1)) * r.choice([-1, 1], size=(400, 1))
    y = (x[:, :, 0].mean(axis=1) > 0).astype(np.float32)  # the label: the sign of feature 0's mean
    history = model.fit(x[:300], y[:300], epochs=4, batch_size=32, verbose=0)
    assert history.history["loss"][-1] < history.history["loss"][0]
    logs = model.evaluate(x[300:], y[300:])
    assert logs["accuracy"] >= 0.8, logs  # measured 0.86 to 0.90 over seeds 0-2; chance is 0.5


def test_forecast_trains_from_the_csv_and_saves_its_statistics(workdir):
    result = succeeded(nnd_cli("train", EXAMPLES / "forecast.nnd", "--epochs", 2, "--out", "run"))
    assert "epoch 2/2" in result.output
    epochs = json.loads((workdir / "run" / "metrics.json").read_text())
    assert len(epochs) == 2
    # The target is standardized on the training rows, so predicting its mean scores an MSE of about 1.
    assert epochs[-1]["val_loss"] < 1.0, epochs  # measured 0.04
    stats = json.loads((workdir / "run" / "series_stats.json").read_text())
    assert stats["target"] == "temperature" and stats["window"] == 30 and stats["horizon"] == 1
    assert stats["target_std"] > 0
    assert (f"note: series.csv: the loss and metrics are in standardized units of temperature (1.0 = "
            f"{stats['target_std']:.4g} in the file's units)") in result.output


def _last_loss(output: str) -> float:
    return float(output.split("loss ")[-1].split()[0])


def test_forecast_predicts_and_evaluates_with_the_statistics_of_its_training(workdir):
    series = np.loadtxt(EXAMPLES / "data" / "series.csv", delimiter=",", skiprows=1)[:, 1]
    trained = succeeded(nnd_cli("train", EXAMPLES / "forecast.nnd", "--epochs", 2, "--out", "run"))
    result = succeeded(nnd_cli("predict", EXAMPLES / "forecast.nnd", "--weights", "run", "--input",
                               EXAMPLES / "data" / "series.csv", "--output", "forecast.csv"))
    forecast = np.loadtxt("forecast.csv", delimiter=",", skiprows=1)
    # one window per row from the 30th on; window i forecasts row i + 30, the last one the day after the file
    assert forecast.shape == (len(series) - 29,)
    assert result.output.startswith(f"wrote forecast.csv: {len(series) - 29:,} forecasts of temperature; the "
                                    f"last, past the end of series.csv: {forecast[-1]:.6g}")
    # in degrees, not standardized units: the series has mean 12.9 and std 6.9
    error = np.sqrt(np.mean((forecast[:-1] - series[30:]) ** 2))
    assert error < 0.5 * series.std(), error  # measured 1.4 after two epochs
    # evaluate reads the file as training did: the same test split, the same figures
    evaluated = succeeded(nnd_cli("evaluate", EXAMPLES / "forecast.nnd", "--weights", "run"))
    assert _last_loss(evaluated.output) == pytest.approx(_last_loss(trained.output.split("test:")[1]), rel=1e-5)
    # Swings twice as wide are standardized with the training statistics, not their own (which would give
    # the same figures as the original series), so the errors in training units double too.
    wider = np.column_stack([np.arange(len(series)), 2 * series])
    np.savetxt("wider.csv", wider, delimiter=",", header="day,temperature", comments="", fmt="%g")
    scaled = succeeded(nnd_cli("evaluate", EXAMPLES / "forecast.nnd", "--weights", "run", "--data", "wider.csv"))
    assert _last_loss(scaled.output) > 2 * _last_loss(evaluated.output)


def test_forecasting_without_the_statistics_of_training_is_refused(workdir):
    nnd.load(EXAMPLES / "forecast.nnd").save("fresh")  # weights alone, no series_stats.json
    shutil.copy(EXAMPLES / "data" / "series.csv", workdir / "series.csv")
    assert failed(nnd_cli("predict", EXAMPLES / "forecast.nnd", "--weights", "fresh", "--input", "series.csv",
                          "--output", "p.npy")) == (
        "error: --input series.csv: a sequence model reads its CSV standardized with the statistics its training "
        "saved (series_stats.json); give --weights the run directory that holds them")
    assert not (workdir / "p.npy").exists()


def test_char_lm_trains_on_a_text_and_generates_from_its_vocabulary(workdir):
    (workdir / "text.txt").write_text(sample_text())
    succeeded(nnd_cli("train", EXAMPLES / "char_lm.nnd", "--data", "text.txt", "--epochs", 1, "--limit", 500,
                      "--out", "lm"))
    vocabulary = CharVocabulary.load(workdir / "lm" / "vocabulary.json")
    assert set(vocabulary.chars) == set(sample_text())
    result = succeeded(nnd_cli("generate", EXAMPLES / "char_lm.nnd", "--weights", "lm", "--prompt", "the ",
                               "--length", 20))
    text = result.output[:-1]  # echo ends the text with a newline of its own
    assert text.startswith("the ") and len(text) == 24
    assert set(text[4:]) <= set(vocabulary.chars)


def test_evaluating_a_character_model_on_another_text_keeps_the_vocabulary_of_its_training(workdir):
    (workdir / "text.txt").write_text(sample_text())
    succeeded(nnd_cli("train", EXAMPLES / "char_lm.nnd", "--data", "text.txt", "--epochs", 1, "--limit", 200,
                      "--out", "lm"))
    other = "zebras quietly graze by the river. " * 40  # other letters: a vocabulary of its own would differ
    (workdir / "other.txt").write_text(other)
    result = succeeded(nnd_cli("evaluate", EXAMPLES / "char_lm.nnd", "--weights", "lm", "--data", "other.txt"))
    model = nnd.load(EXAMPLES / "char_lm.nnd").load_weights(workdir / "lm")
    steps = model.graph.inputs[0].type.shape[1]
    x, y, _ = load_text_windows(workdir / "other.txt", steps, vocabulary=workdir / "lm" / "vocabulary.json")
    cut = len(x) - max(1, int(len(x) * 0.1))
    assert _last_loss(result.output) == pytest.approx(model.evaluate(x[cut:], y[cut:])["loss"], rel=1e-4)
    assert CharVocabulary.from_text(other).chars != CharVocabulary.load(workdir / "lm" / "vocabulary.json").chars


def test_generate_from_an_untrained_model_stays_in_the_vocabulary(workdir):
    """The softmax has 128 classes but the text only 16 characters: ids past the vocabulary are never drawn."""
    nnd.load(EXAMPLES / "char_lm.nnd").save("fresh")
    CharVocabulary.from_text("abcdefghijklmno ").save(workdir / "fresh" / "vocabulary.json")
    result = succeeded(nnd_cli("generate", EXAMPLES / "char_lm.nnd", "--weights", "fresh", "--prompt", "abc",
                               "--length", 30, "--temperature", 2.0))
    assert set(result.output[3:-1]) <= set("abcdefghijklmno ")


def test_video_cnn_lstm_learns_from_moving_synthetic_images():
    """Clips of ten synthetic 12x12 glyphs (a bar at a row and a column of their own) drifting across the
    example's 32x32 canvas; one epoch takes the loss below chance (log 10)."""
    glyphs = np.zeros((10, 12, 12), np.float32)
    for k in range(10):
        glyphs[k, k + 1, 1:11] = 1.0
        glyphs[k, 1:11, (7 * k) % 10 + 1] = 1.0
    picks = np.random.default_rng(0).integers(0, 10, size=300)
    x, y = moving_images(glyphs[picks], picks, frames=6, canvas=32, rng=1)
    assert x.shape == (300, 6, 32, 32, 1)
    model = nnd.load(EXAMPLES / "video_cnn_lstm.nnd", seed=0)
    history = model.fit(x, y, epochs=1, batch_size=32, verbose=0)
    assert np.isfinite(history.history["loss"][0])
    logs = model.evaluate(x, y)
    assert np.isfinite(logs["loss"]) and logs["loss"] < math.log(10), logs  # measured 2.24 after one epoch


@pytest.fixture(scope="module")
def fashion():
    try:
        return load_named("fashion_mnist", download=False)
    except NndError:
        pytest.skip("Fashion-MNIST is not installed (Debian: apt install dataset-fashion-mnist)")


@pytest.mark.slow
def test_row_lstm_learns_fashion_mnist(fashion):
    """One epoch at batch 128 on the first 12,000 training images, tested on 2,000 test images.
    Measured: 0.73, 0.73 and 0.72 test accuracy (seeds 0-2) in 3.4 s (3,500 samples/s) on two idle cores.
    One epoch of the whole training set (`nnd train examples/row_lstm_fashion.nnd --epochs 1`) reached 0.82
    test accuracy at 3,500 samples/s."""
    x_train, y_train, x_test, y_test = fashion
    model = nnd.load(EXAMPLES / "row_lstm_fashion.nnd")
    start = time.perf_counter()
    model.fit(fit_to_input(x_train[:12000], (28, 28)), y_train[:12000], epochs=1, batch_size=128, verbose=0)
    seconds = time.perf_counter() - start
    logs = model.evaluate(fit_to_input(x_test[:2000], (28, 28)), y_test[:2000])
    print(f"\nrow_lstm: 12,000 images in {seconds:.1f} s ({12000 / seconds:.0f} samples/s); "
          f"test accuracy {logs['accuracy']:.3f}")
    assert logs["accuracy"] >= 0.65


# ---------------------------------------------------------------------------------------------------
# Data mistakes

FORECAST_WITH_TARGET = """model forecast {
    input window: [10, 1]
    gru(4)
    dense(1)
}

train forecast {
    data   = "series.csv"
    target = TARGET
    loss   = mse
}
"""


@pytest.mark.parametrize("target, expected", [
    ("temprature", "error: target column 'temprature' not found in series.csv; did you mean 'temperature'? "
                   "(available columns: day, temperature)"),
    ("nope", "error: target column 'nope' not found in series.csv (available columns: day, temperature)"),
])
def test_a_csv_column_that_does_not_exist(workdir, target, expected):
    shutil.copy(EXAMPLES / "data" / "series.csv", workdir / "series.csv")
    (workdir / "model.nnd").write_text(FORECAST_WITH_TARGET.replace("TARGET", target))
    assert failed(nnd_cli("train", "model.nnd", "--epochs", 1, "--out", "run")) == expected
    assert not (workdir / "run").exists()


SMALL_LM = """model lm {
    input chars: int32[8]
    embedding(10, 4)
    gru(8)
    dense(10, activation=softmax)
}
"""


def test_a_text_with_more_characters_than_the_models_classes(workdir):
    (workdir / "lm.nnd").write_text(SMALL_LM)
    (workdir / "text.txt").write_text(sample_text())
    distinct = len(set(sample_text()))
    assert failed(nnd_cli("train", "lm.nnd", "--data", "text.txt", "--epochs", 1, "--out", "run")) == (
        f"error: text.txt has {distinct} distinct characters ({distinct + 1} ids with padding), more than the "
        f"model's 10 output classes; raise the embedding's input_dim and the output layer's units to at least "
        f"{distinct + 1}")


@pytest.mark.parametrize("bad", [10, 57, -1])
def test_embedding_ids_out_of_range_at_predict_time(bad):
    model = nnd.loads(SMALL_LM)
    ids = np.array([[1, 2, 3, 4, 5, 6, 7, 8], [1, 2, 3, bad, 5, 6, 7, 8]])
    with pytest.raises(NndError) as info:
        model.predict(ids)
    assert str(info.value) == (f"error: index {bad} at position (1, 3) is out of range for an embedding of 10 rows "
                               "(input_dim=10: valid ids are 0 to 9)")
    assert model.predict(ids[:1]).shape == (1, 10)  # the model still runs on good ids
