"""`nnd train / evaluate / predict` on a tiny model and a tiny .npz dataset, through click's CliRunner."""
from __future__ import annotations

import json
import warnings

import numpy as np
import pytest
from click.testing import CliRunner

import nnd
from nnd.cli import main
from nnd.compiler.diagnostics import NndError
from nnd.runtime.checkpoint import load_checkpoint, load_weights
from nnd.runtime.trainer import Trainer

MODEL = """# a tiny classifier
model tiny {
    input x: [4]
    dense(8, activation=relu)
    dropout(0.2)
    dense(3, activation=softmax)
}

train tiny {
    optimizer  = adam(lr=0.01)
    loss       = sparse_categorical_crossentropy
    metrics    = [accuracy]
    epochs     = 2
    batch_size = 16
}
"""


@pytest.fixture
def project(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("NND_OFFLINE", "1")
    (tmp_path / "tiny.nnd").write_text(MODEL)
    rng = np.random.default_rng(0)
    x = rng.normal(size=(130, 4)).astype(np.float32)
    y = np.argmax(x[:, :3], axis=1)
    np.savez(tmp_path / "data.npz", x_train=x[:100], y_train=y[:100], x_test=x[100:], y_test=y[100:])
    np.save(tmp_path / "x.npy", x[:7])
    return tmp_path


def nnd_cli(*args):
    return CliRunner().invoke(main, [str(a) for a in args])


def train(*args):
    return nnd_cli("train", "tiny.nnd", "--data", "data.npz", *args)


def _clean_failure(result, code=1):
    assert result.exit_code == code, (result.exit_code, result.stdout, result.stderr)
    assert "Traceback" not in result.output and "internal error" not in result.stderr
    return result.stderr


def _bytes(path):
    return path.read_bytes()


def test_train_writes_the_run_directory_and_one_line_per_epoch(project):
    result = train("--epochs", 2, "--out", "run")
    assert result.exit_code == 0, result.output
    run = project / "run"
    for name in ("weights.npz", "checkpoint.npz", "metrics.json", "metrics.csv", "source/tiny.nnd"):
        assert (run / name).is_file(), name
    assert (run / "source" / "tiny.nnd").read_text() == MODEL
    epoch_lines = [line for line in result.stdout.splitlines() if line.startswith("epoch ")]
    assert [line.split(":")[0] for line in epoch_lines] == ["epoch 1/2", "epoch 2/2"]
    assert all("val_loss" in line and "accuracy" in line for line in epoch_lines)
    assert "\r" not in result.stdout and "\x1b" not in result.stdout  # no live bar when not on a terminal
    assert "test: loss" in result.stdout
    metrics = json.loads((run / "metrics.json").read_text())
    assert len(metrics) == 2 and {"loss", "accuracy", "val_loss", "val_accuracy", "lr"} <= set(metrics[0])
    csv_lines = (run / "metrics.csv").read_text().splitlines()
    assert len(csv_lines) == 3 and csv_lines[0].startswith("loss,")
    # the weights are the model's after training: they reproduce the reported test figures
    model = nnd.load(run)
    data = np.load(project / "data.npz")
    logs = model.evaluate(data["x_test"], data["y_test"])
    assert logs["loss"] == pytest.approx(metrics[-1]["val_loss"], rel=1e-5)


@pytest.mark.parametrize("split, warned", [("", True), ("    validation_split = 0.2\n", False)])
def test_a_callback_selecting_on_the_test_split_is_warned_about(project, split, warned):
    callbacks = "    callbacks = [early_stopping(patience=3), reduce_lr_on_plateau(monitor=loss)]\n"
    (project / "tiny.nnd").write_text(MODEL.replace("    epochs", callbacks + split + "    epochs"))
    result = train("--epochs", 1, "--out", "run")
    assert result.exit_code == 0, result.output
    line = next(n for n, text in enumerate(MODEL.splitlines(), 1) if text.startswith("    epochs"))
    warning = (f"tiny.nnd:{line}:18: warning: early_stopping monitors val_loss, which is measured on the test "
               "split because the recipe has no validation_split")
    assert (warning in result.stderr) == warned, result.stderr
    assert "reduce_lr_on_plateau monitors" not in result.stderr  # it monitors a training figure


def test_resume_continues_the_run_as_if_never_stopped(project):
    assert train("--epochs", 3, "--out", "straight", "-q").exit_code == 0
    assert train("--epochs", 2, "--out", "run", "-q").exit_code == 0
    result = train("--resume", "run/checkpoint.npz", "--epochs", 3, "--out", "run")
    assert result.exit_code == 0, result.output
    epoch_lines = [line for line in result.stdout.splitlines() if line.startswith("epoch ")]
    assert [line.split(":")[0] for line in epoch_lines] == ["epoch 3/3"]
    history = json.loads((project / "run" / "metrics.json").read_text())
    assert len(history) == 3
    assert history == json.loads((project / "straight" / "metrics.json").read_text())
    a, b = np.load(project / "straight" / "weights.npz"), np.load(project / "run" / "weights.npz")
    assert sorted(a.files) == sorted(b.files)
    assert all(np.array_equal(a[k], b[k]) for k in a.files)


def test_resume_of_a_finished_run_asks_for_more_epochs(project):
    assert train("--epochs", 2, "--out", "run", "-q").exit_code == 0
    before = _bytes(project / "run" / "checkpoint.npz")
    message = _clean_failure(train("--resume", "run/checkpoint.npz", "--epochs", 2, "--out", "run"))
    assert "already did 2 epochs" in message and "--epochs" in message
    assert _bytes(project / "run" / "checkpoint.npz") == before


def test_resume_and_weights_are_exclusive(project):
    assert train("--out", "run", "-q").exit_code == 0
    result = train("--resume", "run/checkpoint.npz", "--weights", "run/weights.npz", "--epochs", 3)
    assert result.exit_code != 0
    assert "Traceback" not in result.output
    assert "--resume and --weights are exclusive" in result.stderr


def test_start_from_weights(project):
    assert train("--out", "run", "-q").exit_code == 0
    result = train("--weights", "run/weights.npz", "--epochs", 1, "--out", "again", "-q")
    assert result.exit_code == 0, result.output
    assert len(json.loads((project / "again" / "metrics.json").read_text())) == 1


def test_corrupt_checkpoint_is_refused_and_left_untouched(project):
    assert train("--out", "run", "-q").exit_code == 0
    checkpoint = project / "run" / "checkpoint.npz"
    truncated = _bytes(checkpoint)[:400]
    checkpoint.write_bytes(truncated)
    message = _clean_failure(train("--resume", checkpoint, "--epochs", 3, "--out", "run"))
    assert "checkpoint.npz" in message and ("corrupt" in message or "truncated" in message)
    assert _bytes(checkpoint) == truncated
    checkpoint.write_bytes(b"not a checkpoint at all")
    message = _clean_failure(train("--resume", checkpoint, "--epochs", 3, "--out", "run"))
    assert "corrupt" in message
    assert _bytes(checkpoint) == b"not a checkpoint at all"
    message = _clean_failure(train("--resume", "run/nothing.npz", "--epochs", 3))
    assert "not found" in message and "nothing.npz" in message


def test_checkpoint_of_a_different_model_names_the_parameter(project):
    assert train("--out", "run", "-q").exit_code == 0
    (project / "wider.nnd").write_text(MODEL.replace("dense(8,", "dense(9,"))
    checkpoint = project / "run" / "checkpoint.npz"
    before = _bytes(checkpoint)
    result = nnd_cli("train", "wider.nnd", "--data", "data.npz", "--resume", checkpoint, "--epochs", 3,
                     "--out", "run")
    message = _clean_failure(result)
    assert "dense.kernel" in message and "(4, 8)" in message and "(4, 9)" in message
    assert _bytes(checkpoint) == before


def test_evaluate_prints_loss_and_accuracy(project):
    assert train("--out", "run", "-q").exit_code == 0
    result = nnd_cli("evaluate", "tiny.nnd", "--weights", "run", "--data", "data.npz")
    assert result.exit_code == 0, result.output
    assert "30 samples" in result.stdout
    data = np.load(project / "data.npz")
    logs = nnd.load("tiny.nnd", weights="run/weights.npz").evaluate(data["x_test"], data["y_test"])
    assert f"loss {logs['loss']:.4f}" in result.stdout
    assert f"accuracy {logs['accuracy']:.4f}" in result.stdout
    message = _clean_failure(nnd_cli("evaluate", "tiny.nnd", "--weights", "nowhere.npz", "--data", "data.npz"))
    assert "nowhere.npz" in message


def test_predict_writes_outputs_of_the_right_shape(project):
    assert train("--out", "run", "-q").exit_code == 0
    result = nnd_cli("predict", "tiny.nnd", "--weights", "run/weights.npz", "--input", "x.npy", "--output", "y.npy")
    assert result.exit_code == 0, result.output
    y = np.load(project / "y.npy")
    assert y.shape == (7, 3)
    expected = nnd.load("tiny.nnd", weights="run/weights.npz").predict(np.load(project / "x.npy"))
    np.testing.assert_array_equal(y, expected)
    np.testing.assert_allclose(y.sum(axis=1), 1.0, rtol=1e-5)
    np.save(project / "wrong.npy", np.zeros((5, 6), np.float32))
    message = _clean_failure(nnd_cli("predict", "tiny.nnd", "--weights", "run", "--input", "wrong.npy",
                                     "--output", "out.npy"))
    assert "(5, 6)" in message and "(batch, 4)" in message
    assert not (project / "out.npy").exists()


def test_predict_reads_a_csv_table_with_or_without_the_target_column_and_writes_csv_or_npz(project):
    nnd.load("tiny.nnd", seed=0).save("run")
    x = np.load(project / "x.npy")
    expected = nnd.load("tiny.nnd", weights="run/weights.npz").predict(x)
    np.savetxt(project / "features.csv", x, delimiter=",", header="a,b,c,d", comments="")
    np.savetxt(project / "labelled.csv", np.column_stack([x, np.arange(7)]), delimiter=",")
    for source in ("features.csv", "labelled.csv"):
        result = nnd_cli("predict", "tiny.nnd", "--weights", "run", "--input", source, "--output", "y.csv")
        assert result.exit_code == 0, result.output
        note = "note: labelled.csv: column 4 left out as the labels\n" if source == "labelled.csv" else ""
        assert result.stdout == note + "wrote y.csv: 7 predictions\n"
        lines = (project / "y.csv").read_text().splitlines()
        assert lines[0] == "class,output_0,output_1,output_2"  # a softmax output: the predicted class first
        written = np.loadtxt(project / "y.csv", delimiter=",", skiprows=1)
        np.testing.assert_array_equal(written[:, 0], expected.argmax(axis=1))
        np.testing.assert_allclose(written[:, 1:], expected, rtol=1e-6)
    label_inside = np.column_stack([x[:, :2], np.arange(7), x[:, 2:]])  # training reads the last column unless named
    np.savetxt(project / "named.csv", label_inside, delimiter=",", header="a,b,label,c,d", comments="")
    (project / "tiny.nnd").write_text(MODEL.replace("epochs     = 2", "epochs     = 2\n    target = label"))
    result = nnd_cli("predict", "tiny.nnd", "--weights", "run", "--input", "named.csv", "--output", "y.npz")
    assert result.exit_code == 0, result.output
    with np.load(project / "y.npz") as saved:
        np.testing.assert_allclose(saved["output"], expected, rtol=1e-6)


@pytest.mark.parametrize("arguments, message", [
    (("--input", "x.npy", "--output", "y.txt"), "error: --output y.txt: write a .npy, .npz or .csv file"),
    (("--input", "absent.csv", "--output", "y.npy"), "error: --input absent.csv: no such file"),
    (("--input", "notes.txt", "--output", "y.npy"),
     "error: --input notes.txt: to continue a text with a character model, use `nnd generate`"),
    (("--input", "wide.csv", "--output", "y.npy"),
     "error: --input wide.csv has 7 columns; the model reads 4 features per sample (and training read a target "
     "column beside them)"),
])
def test_predict_refuses_inputs_and_outputs_it_cannot_handle(project, arguments, message):
    nnd.load("tiny.nnd", seed=0).save("run")
    (project / "notes.txt").write_text("some text")
    np.savetxt(project / "wide.csv", np.zeros((3, 7)), delimiter=",")
    assert _clean_failure(nnd_cli("predict", "tiny.nnd", "--weights", "run", *arguments)).strip() == message
    assert not (project / "y.npy").exists()


def _interrupt_at_step(monkeypatch, step: int) -> None:
    """Ctrl-C during the `step`-th training step (counted from 1)."""
    real, calls = Trainer.step, []

    def interrupted(self, feeds):
        calls.append(1)
        if len(calls) == step:
            raise KeyboardInterrupt
        return real(self, feeds)
    monkeypatch.setattr(Trainer, "step", interrupted)


def test_ctrl_c_saves_the_weights_and_says_how_to_resume(project, monkeypatch):
    with monkeypatch.context() as patched:
        _interrupt_at_step(patched, 10)  # 100 samples at batch 16: 7 steps per epoch, so epoch 2's third
        result = train("--out", "run", "--epochs", 3)
    assert result.exit_code == 130, result.output
    assert result.stderr == ("interrupted in epoch 2/3, after 2 of 7 steps\n"
                             "  saved the weights as they were to run/weights.npz\n"
                             "  run/checkpoint.npz holds the end of epoch 1: --resume run/checkpoint.npz continues "
                             "from there\n")
    saved = load_weights(project / "run" / "weights.npz")
    epoch_one = load_checkpoint(project / "run" / "checkpoint.npz")
    assert epoch_one.epoch == 1
    assert any(not np.array_equal(saved[name], epoch_one.params[name]) for name in saved)  # two steps further
    resumed = train("--out", "run", "--epochs", 3, "--resume", "run/checkpoint.npz")
    assert resumed.exit_code == 0, resumed.output
    assert "epoch 2/3" in resumed.stdout and "epoch 3/3" in resumed.stdout


def test_ctrl_c_in_the_first_epoch_says_there_is_no_checkpoint(project, monkeypatch):
    _interrupt_at_step(monkeypatch, 3)
    result = train("--out", "run")
    assert result.exit_code == 130
    assert result.stderr.splitlines()[-1] == "  no epoch had finished, so there is no checkpoint to resume from"
    assert (project / "run" / "weights.npz").exists() and not (project / "run" / "checkpoint.npz").exists()


def test_a_diverging_run_stops_with_one_line_and_no_numpy_warnings(project):
    (project / "reg.nnd").write_text(
        "model reg {\n    input x: [4]\n    dense(8, activation=relu)\n    dense(1)\n}\n"
        "train reg {\n    optimizer = sgd(lr=5.0)\n    loss = mse\n    batch_size = 8\n}\n")
    rng = np.random.default_rng(0)
    x = rng.normal(size=(64, 4)).astype(np.float32) * 10
    np.savez(project / "reg.npz", x=x, y=x.sum(axis=1, keepdims=True) * 100)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        result = nnd_cli("train", "reg.nnd", "--data", "reg.npz", "--epochs", 3, "-q")
    assert [str(w.message) for w in caught if issubclass(w.category, RuntimeWarning)] == []
    assert result.exit_code == 1
    assert result.stderr == ("error: the loss became inf at step 3; lower the learning rate (--lr, or lr= in "
                             "compile()) or check the data for extreme values\n")


def test_missing_data_file(project):
    message = _clean_failure(nnd_cli("train", "tiny.nnd", "--data", "missing.npz"))
    assert "missing.npz" in message and "not found" in message


def test_bad_data_is_refused_with_a_clear_message(project):
    rng = np.random.default_rng(1)
    np.savez(project / "shape.npz", x_train=rng.normal(size=(20, 5)), y_train=rng.integers(0, 3, 20))
    np.savez(project / "labels.npz", x_train=rng.normal(size=(20, 4)), y_train=np.arange(20) % 5)
    x = rng.normal(size=(20, 4))
    x[4, 1] = np.nan
    np.savez(project / "nan.npz", x_train=x, y_train=rng.integers(0, 3, 20))
    message = _clean_failure(nnd_cli("train", "tiny.nnd", "--data", "shape.npz", "--out", "r1"))
    assert message.strip() == ("error: --data shape.npz holds 20 samples of shape (5,), but input 'x' of model "
                               "'tiny' takes (4,)")
    message = _clean_failure(nnd_cli("train", "tiny.nnd", "--data", "labels.npz", "--out", "r2"))
    assert "label 4" in message and "3 classes" in message
    message = _clean_failure(nnd_cli("train", "tiny.nnd", "--data", "nan.npz", "--out", "r3"))
    assert "NaN" in message
    assert not any((project / d).exists() for d in ("r1", "r2", "r3"))  # no empty run directories


def test_bad_flags(project):
    result = train("--lr", 0)
    assert result.exit_code == 2 and "--lr" in result.stderr and "Traceback" not in result.output
    result = train("--epochs", 0)
    assert result.exit_code == 2 and "--epochs" in result.stderr
    message = _clean_failure(train("--model", "tinny"))
    assert "no model named 'tinny'" in message and "did you mean 'tiny'" in message


def test_named_dataset_missing_offline_lists_the_places_searched(project, monkeypatch):
    from nnd.runtime import datasets

    monkeypatch.setattr(datasets, "SYSTEM_DATA_ROOT", project / "system")  # keep the real /usr/share out
    monkeypatch.setenv("HOME", str(project / "home"))
    monkeypatch.setenv("NND_DATA", str(project / "bogus"))
    result = nnd_cli("train", "tiny.nnd", "--data", "fashion_mnist", "--out", "run")
    message = _clean_failure(result)
    assert "dataset 'fashion_mnist' not found" in message
    assert str(project / "bogus") in message and str(project / "system") in message
    assert "NND_OFFLINE" in message and "--data-dir" in message
    assert not (project / "run").exists()
    # a --data-dir given by name is the only place looked at
    message = _clean_failure(nnd_cli("train", "tiny.nnd", "--data", "fashion_mnist", "--data-dir",
                                     project / "typo", "--out", "run"))
    assert message.startswith(f"error: --data-dir {project / 'typo'} holds no complete fashion_mnist")
    assert str(project / "system") not in message


IMAGES = """model img {
    input image: [6, 6, 1]
    conv2d(2, 3, activation=relu)
    flatten()
    dense(3, activation=softmax)
}
train img { batch_size = 8 }
"""


def test_uint8_images_are_scaled_to_the_unit_range_in_train_evaluate_and_predict(project):
    (project / "img.nnd").write_text(IMAGES)
    rng = np.random.default_rng(0)
    pixels = rng.integers(0, 256, (24, 6, 6), dtype=np.uint8)  # grey images as Keras datasets ship them
    np.savez(project / "img.npz", x=pixels, y=rng.integers(0, 3, 24))
    trained = nnd_cli("train", "img.nnd", "--data", "img.npz", "--epochs", 1, "--out", "run")
    assert trained.exit_code == 0, trained.output
    assert "note: img.npz: uint8 images scaled to [0, 1] (divided by 255)" in trained.stdout
    np.save(project / "pixels.npy", pixels[:5])
    predicted = nnd_cli("predict", "img.nnd", "--weights", "run", "--input", "pixels.npy", "--output", "p.npy")
    assert predicted.exit_code == 0 and predicted.stdout.startswith("note: pixels.npy: uint8 images scaled")
    model = nnd.load("img.nnd", weights="run/weights.npz")
    expected = model.predict((pixels[:5, :, :, None].astype(np.float32) * np.float32(1 / 255)))
    np.testing.assert_allclose(np.load(project / "p.npy"), expected, rtol=1e-6)
    evaluated = nnd_cli("evaluate", "img.nnd", "--weights", "run", "--data", "img.npz")
    assert evaluated.exit_code == 0 and "note: img.npz: uint8 images scaled" in evaluated.stdout


def test_uint8_ids_for_an_integer_input_are_not_scaled(project):
    (project / "ids.nnd").write_text("model ids {\n    input tokens: int32[5]\n    embedding(300, 4)\n"
                                     "    flatten()\n    dense(2, activation=softmax)\n}\n")
    rng = np.random.default_rng(1)
    np.savez(project / "ids.npz", x=rng.integers(0, 256, (16, 5), dtype=np.uint8), y=rng.integers(0, 2, 16))
    result = nnd_cli("train", "ids.nnd", "--data", "ids.npz", "--epochs", 1, "--out", "run")
    assert result.exit_code == 0, result.output
    assert "scaled" not in result.stdout


def test_a_run_directory_holding_a_run_is_not_overwritten_without_asking(project):
    assert train("--out", "run", "-q").exit_code == 0
    before = _bytes(project / "run" / "weights.npz")
    message = _clean_failure(train("--out", "run", "-q", "--seed", 7))
    assert message.strip() == ("error: --out run already holds a run (weights.npz, checkpoint.npz); continue it "
                               "with --resume run/checkpoint.npz, choose another --out, or add --overwrite")
    assert _bytes(project / "run" / "weights.npz") == before
    (project / "run" / "best.npz").write_bytes(b"an earlier run's best checkpoint")
    assert train("--out", "run", "-q", "--seed", 7, "--overwrite").exit_code == 0
    assert _bytes(project / "run" / "weights.npz") != before
    assert not (project / "run" / "best.npz").exists()  # this run keeps no best checkpoint: none is left


def test_default_run_directories_never_collide(project, monkeypatch):
    monkeypatch.setattr("time.strftime", lambda pattern: "20260101-000000")  # both runs in the same second
    assert train("-q").exit_code == 0 and train("-q").exit_code == 0
    assert sorted(p.name for p in (project / "runs").iterdir()) == ["tiny-20260101-000000",
                                                                     "tiny-20260101-000000-2"]


def test_a_csv_of_flattened_images_trains_and_predicts_an_image_model(project):
    (project / "img.nnd").write_text(IMAGES)
    rng = np.random.default_rng(2)
    pixels, labels = rng.random((24, 36)).astype(np.float32), rng.integers(0, 3, 24)
    header = ",".join([f"p{i}" for i in range(36)] + ["label"])
    np.savetxt(project / "flat.csv", np.column_stack([pixels, labels]), delimiter=",", header=header, comments="")
    assert nnd_cli("train", "img.nnd", "--data", "flat.csv", "--epochs", 1, "--out", "run", "-q").exit_code == 0
    np.savetxt(project / "rows.csv", pixels[:4], delimiter=",")
    result = nnd_cli("predict", "img.nnd", "--weights", "run", "--input", "rows.csv", "--output", "p.npy")
    assert result.exit_code == 0, result.output
    model = nnd.load("img.nnd", weights="run/weights.npz")
    np.testing.assert_allclose(np.load(project / "p.npy"), model.predict(pixels[:4].reshape(4, 6, 6, 1)),
                               rtol=1e-5)


def test_training_without_data_says_what_data_the_model_reads(project):
    (project / "img.nnd").write_text(IMAGES)
    assert _clean_failure(nnd_cli("train", "img.nnd")).strip() == (
        "error: no training data: give --data NAME|PATH or set `data = ...` in the train section (this model "
        "reads samples of shape (6, 6, 1): a .npz with x of shape (n, 6, 6, 1) and y would do)")


def test_an_error_in_a_later_epoch_names_the_checkpoint_that_survives_it(project, monkeypatch):
    real, calls = Trainer.step, []

    def failing(self, feeds):
        calls.append(1)
        if len(calls) == 10:  # epoch 2's third step
            raise NndError("the loss became nan at step 10; lower the learning rate (--lr)")
        return real(self, feeds)
    monkeypatch.setattr(Trainer, "step", failing)
    message = _clean_failure(train("--out", "run", "--epochs", 3, "-q"))
    assert message == ("error: the loss became nan at step 10; lower the learning rate (--lr)\n"
                       "note: run/checkpoint.npz holds the end of epoch 1: --resume run/checkpoint.npz continues from "
                       "there once this is fixed\n")


def test_validation_split_flag_holds_out_training_data_instead_of_the_test_split(project):
    callbacks = "    callbacks = [early_stopping(patience=3)]\n"
    (project / "tiny.nnd").write_text(MODEL.replace("    epochs", callbacks + "    epochs"))
    result = train("--epochs", 1, "--out", "run", "--validation-split", 0.25)
    assert result.exit_code == 0, result.output
    assert "warning" not in result.stderr  # the callback no longer selects on the test split
    assert "training tiny on data.npz: 100 samples (25 held out for validation), batch 16" in result.stdout
    bad = train("--validation-split", 1.5)
    assert bad.exit_code == 2 and "--validation-split" in bad.stderr


def test_lr_flag_overrides_the_learning_rate_of_the_train_section(project):
    assert "adam(lr=0.01)" in MODEL
    result = train("--epochs", 1, "--lr", 0.25, "--out", "run", "-q")
    assert result.exit_code == 0, result.output
    history = json.loads((project / "run" / "metrics.json").read_text())
    assert [epoch["lr"] for epoch in history] == [0.25]


def test_a_sigmoid_output_in_csv_gets_its_class_and_a_regression_output_none(project):
    rng = np.random.default_rng(3)
    x = rng.normal(size=(6, 4)).astype(np.float32)
    np.save(project / "x.npy", x)
    for last, header in (("dense(1, activation=sigmoid)", "class,output"), ("dense(2)", "output_0,output_1")):
        (project / "m.nnd").write_text(f"model m {{\n    input x: [4]\n    {last}\n}}\n")
        nnd.load("m.nnd", seed=0).save("run")
        assert nnd_cli("predict", "m.nnd", "--weights", "run", "--input", "x.npy", "--output", "p.csv",
                       ).exit_code == 0
        lines = (project / "p.csv").read_text().splitlines()
        assert lines[0] == header
        if header.startswith("class"):
            written = np.loadtxt(project / "p.csv", delimiter=",", skiprows=1)
            probabilities = nnd.load("m.nnd", weights="run/weights.npz").predict(x)[:, 0]
            np.testing.assert_array_equal(written[:, 0], probabilities > 0.5)


def test_evaluate_prints_a_confusion_matrix_for_a_classifier(project):
    assert train("--out", "run", "-q").exit_code == 0
    result = nnd_cli("evaluate", "tiny.nnd", "--weights", "run", "--data", "data.npz", "--confusion")
    assert result.exit_code == 0, result.output
    data = np.load(project / "data.npz")
    predicted = nnd.load("tiny.nnd", weights="run/weights.npz").predict(data["x_test"]).argmax(axis=1)
    table = result.stdout.splitlines()[1:]
    assert table[0].split() == ["true", "\\", "predicted", "0", "1", "2", "recall"]
    for k, line in enumerate(table[1:]):
        cells = line.split()
        counts = [int(np.sum((data["y_test"] == k) & (predicted == j))) for j in range(3)]
        assert [int(c) for c in cells[1:4]] == counts
        assert float(cells[4]) == pytest.approx(counts[k] / sum(counts), abs=5e-4)
    (project / "reg.nnd").write_text("model reg {\n    input x: [4]\n    dense(2)\n}\ntrain reg { loss = mse }\n")
    nnd.load("reg.nnd").save("reg_run")
    np.savez(project / "reg.npz", x=data["x_test"], y=np.zeros((30, 2)))
    refused = nnd_cli("evaluate", "reg.nnd", "--weights", "reg_run", "--data", "reg.npz", "--confusion")
    assert _clean_failure(refused).startswith("error: --confusion needs a classifier: output 'output'")
    assert refused.stdout == ""  # refused before any figure is computed
    (project / "reg.nnd").write_text("model reg {\n    input x: [4]\n    dense(2, activation=sigmoid)\n}\n"
                                     "train reg { loss = binary_crossentropy }\n")  # two independent labels
    message = _clean_failure(nnd_cli("evaluate", "reg.nnd", "--weights", "reg_run", "--data", "reg.npz",
                                     "--confusion"))
    assert "does not end in a softmax, or a sigmoid of one unit" in message
