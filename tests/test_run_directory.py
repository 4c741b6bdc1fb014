"""Run directories (`nnd train --out`, `fit(run_dir=...)`) when things go wrong: a place that cannot be
written, a second run into the same directory, Ctrl-C after a resume, and the files a run leaves: what
it says about them must be true, and nothing may be lost or mixed."""
from __future__ import annotations

import json
import os
import warnings
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

import nnd
from nnd import NndError, NndWarning
from nnd.cli import main
from nnd.runtime import saved_model
from nnd.runtime.run_directory import RunLock
from nnd.runtime.trainer import Trainer

MODEL = """model tiny {
    input x: [4]
    dense(8, activation=relu)
    dense(3, activation=softmax)
}

train tiny {
    loss = sparse_categorical_crossentropy
    metrics = [accuracy]
    callbacks = [best_checkpoint(monitor=loss), early_stopping(monitor=loss, patience=5)]
    batch_size = 16
    epochs = 1
}
"""


@pytest.fixture
def project(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    rng = np.random.default_rng(0)
    np.savez("d.npz", x=rng.normal(size=(48, 4)).astype(np.float32), y=rng.integers(0, 3, 48))
    Path("m.nnd").write_text(MODEL)
    return tmp_path


def train(*args: str):
    return CliRunner().invoke(main, ["train", "m.nnd", "--data", "d.npz", "-q", *args])


def test_an_out_directory_that_cannot_be_made_is_one_error(project):
    Path("afile").write_text("not a directory")
    result = train("--out", "afile/run")
    assert result.exit_code == 1
    assert result.stderr.startswith("error: cannot create the run directory afile/run: ")


def test_a_failed_save_whose_cleanup_fails_too_reports_the_save(tmp_path, monkeypatch):
    def read_only(*args, **kwargs):
        raise OSError(30, "Read-only file system", str(tmp_path / "d"))

    monkeypatch.setattr(saved_model.tempfile, "mkdtemp", read_only)
    monkeypatch.setattr(Path, "unlink", read_only)  # what removing the staged weights meets on such a place
    with pytest.raises(NndError, match="cannot save the model to .*Read-only file system"):
        nnd.loads(MODEL).save(tmp_path / "d")


def test_a_metrics_file_that_cannot_be_written_names_the_checkpoint_that_survives(project):
    Path("run").mkdir()
    Path("run/metrics.json").mkdir()  # what the run's metrics.json is renamed onto cannot take a file
    result = train("--out", "run")
    assert result.exit_code == 1
    assert "error: cannot write metrics file run/metrics.json" in result.stderr
    assert result.stderr.endswith("note: run/checkpoint.npz holds the end of epoch 1: --resume run/checkpoint.npz "
                                  "continues from there once this is fixed\n")
    assert not [p.name for p in Path("run").iterdir() if p.name.endswith(".tmp")]


def test_a_second_run_into_a_directory_in_use_is_refused(project):
    Path("run").mkdir()
    lock = RunLock(Path("run"))  # as a run in another process holds it
    try:
        result = train("--out", "run")
    finally:
        lock.release()
    assert result.exit_code == 1
    assert result.stderr == ("error: run is in use by another training run; wait for it to finish or choose "
                             "another --out\n")
    assert train("--out", "run").exit_code == 0  # released when that run ends


def test_ctrl_c_in_a_resumed_run_points_at_the_checkpoint_it_began_from(project, monkeypatch):
    assert train("--out", "first").exit_code == 0
    step = Trainer.step

    def interrupted(self, feeds):
        raise KeyboardInterrupt

    monkeypatch.setattr(Trainer, "step", interrupted)
    result = train("--out", "second", "--resume", "first/checkpoint.npz", "--epochs", "3")
    assert result.exit_code == 130
    assert ("no epoch of this run finished: --resume first/checkpoint.npz still continues from the end of "
            "epoch 1") in result.stderr
    monkeypatch.setattr(Trainer, "step", step)
    again = train("--out", "second")
    assert again.exit_code == 1  # second holds the interrupted weights, and no checkpoint to suggest
    assert again.stderr == ("error: --out second already holds a run (weights.npz); choose another --out, or add "
                            "--overwrite\n")


def test_best_npz_is_the_epoch_checkpoint_with_every_callback_state(project):
    assert train("--out", "run").exit_code == 0
    assert Path("run/best.npz").read_bytes() == Path("run/checkpoint.npz").read_bytes()


def test_run_files_follow_the_umask(project):
    old = os.umask(0o022)
    try:
        assert train("--out", "run").exit_code == 0
        nnd.load("m.nnd").save("saved")
    finally:
        os.umask(old)
    for path in ("run/weights.npz", "run/checkpoint.npz", "run/model.json", "run/metrics.json",
                 "saved/weights.npz", "saved/model.json"):
        assert Path(path).stat().st_mode & 0o777 == 0o644, path
    assert Path("saved/source").stat().st_mode & 0o777 == 0o755


def test_lr_given_with_resume_overrides_the_checkpoint(project):
    assert train("--out", "run").exit_code == 0
    assert train("--out", "run", "--resume", "run/checkpoint.npz", "--epochs", "2", "--lr", "0.5").exit_code == 0
    epochs = json.loads(Path("run/metrics.json").read_text())
    assert [e["lr"] for e in epochs] == [pytest.approx(0.001), pytest.approx(0.5)]


def test_fit_refuses_a_run_dir_that_holds_a_run_and_says_when_it_skips_a_best_checkpoint(project):
    assert train("--out", "run").exit_code == 0
    data = np.load("d.npz")
    model = nnd.load("m.nnd")
    with pytest.raises(NndError, match=r"run_dir run already holds a run \(weights.npz, checkpoint.npz, best.npz\)"):
        model.fit(data["x"], data["y"], run_dir="run", verbose=0)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        model.fit(data["x"], data["y"], verbose=0)
    assert [str(w.message) for w in caught if w.category is NndWarning] == [
        "the train section's best_checkpoint is skipped: it writes into a run directory, so give fit "
        "run_dir=... (nnd train always has one)"]


def test_load_refuses_a_run_directory_without_weights(project):
    nnd.load("m.nnd").save("saved")
    Path("saved/weights.npz").unlink()
    with pytest.raises(NndError, match=r"saved holds no weights.npz \(a run directory gets one when its "
                                       r"training finishes\)"):
        nnd.load("saved")


def test_a_metric_listed_twice_logs_both_under_distinct_names(project):
    source = MODEL.replace("metrics = [accuracy]", "metrics = [accuracy, top_k_accuracy(k=1), top_k_accuracy(k=2)]")
    source = source.replace("best_checkpoint(monitor=loss), ", "")
    data = np.load("d.npz")
    history = nnd.loads(source).fit(data["x"], data["y"], epochs=1, verbose=0, validation_split=0.25,
                                    callbacks=[nnd.EarlyStopping(monitor="val_top_k_accuracy_1")])
    assert {"top_k_accuracy", "top_k_accuracy_1", "val_top_k_accuracy_1"} <= set(history.history)
    assert history.history["top_k_accuracy"] == history.history["accuracy"]  # k=1 is accuracy
    assert history.history["top_k_accuracy_1"][0] >= history.history["accuracy"][0]


def test_resume_without_out_goes_on_in_the_checkpoints_directory(project):
    assert train("--out", "run").exit_code == 0
    assert train("--resume", "run/checkpoint.npz", "--epochs", "2").exit_code == 0
    assert len(json.loads(Path("run/metrics.json").read_text())) == 2
    assert not Path("runs").exists()


def test_validation_split_holds_out_what_keras_holds_out(project):
    from nnd.arguments import validation_count

    assert [validation_count(n, v) for n, v in ((256, 0.1), (100, 0.29), (50, 0.58))] == [26, 29, 29]
    result = CliRunner().invoke(main, ["train", "m.nnd", "--data", "d.npz", "--out", "run", "--validation-split",
                                       "0.1"])
    assert "48 samples (5 held out for validation)" in result.output
