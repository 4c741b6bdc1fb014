"""Saved model directories (`Model.save`, `nnd.load(DIR)`): the source tree keeps its imports working
wherever the files stood, the manifest brings back the settings, and a save that fails or is interrupted
never leaves new source beside old weights."""
from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest

import nnd
from nnd import NndError
from nnd.runtime import checkpoint, saved_model

ROOT = Path(__file__).resolve().parent.parent
TINY = """
model tiny {
    input x: [4]
    dense(8, activation=relu)
    dense(3, activation=softmax)
}
train tiny {
    loss = sparse_categorical_crossentropy
    metrics = [accuracy]
}
"""
X = np.random.default_rng(0).normal(size=(6, 4)).astype(np.float32)


def _files(directory: Path) -> list[str]:
    return sorted(str(p.relative_to(directory)) for p in directory.rglob("*") if p.is_file())


def test_a_file_importing_from_a_parent_directory_saves_and_loads(tmp_path):
    (tmp_path / "common.nnd").write_text("block head(x) {\n    return x -> dense(3)\n}\n")
    (tmp_path / "models").mkdir()
    (tmp_path / "models" / "m.nnd").write_text('import "../common.nnd"\n'
                                               "model m {\n    input x: [4]\n    output head(x)\n}\n")
    model = nnd.load(tmp_path / "models" / "m.nnd", seed=2)
    model.save(tmp_path / "saved")
    assert _files(tmp_path / "saved") == ["model.json", "source/common.nnd", "source/models/m.nnd", "weights.npz"]
    assert np.array_equal(nnd.load(tmp_path / "saved").predict(X), model.predict(X))


def test_text_with_imports_saves_under_its_base_directory(tmp_path):
    model = nnd.loads((ROOT / "examples" / "vgg_blocks.nnd").read_text(), base_dir=ROOT / "examples", seed=1)
    model.save(tmp_path / "saved")
    assert _files(tmp_path / "saved") == ["model.json", "source/lib/blocks.nnd", "source/model.nnd", "weights.npz"]
    again = nnd.load(tmp_path / "saved")
    images = np.random.default_rng(1).random((2, *again.graph.inputs[0].type.shape[1:]), dtype=np.float32)
    assert np.array_equal(again.predict(images), model.predict(images))


def test_compile_choices_dtype_and_precision_come_back(tmp_path):
    model = nnd.loads(TINY, dtype="float64")
    model.compile(optimizer="sgd", lr=0.5, momentum=0.9, loss="categorical_crossentropy", metrics="mae")
    model.save(tmp_path / "a")
    again = nnd.load(tmp_path / "a")
    assert again.dtype == np.float64
    assert (again.spec.optimizer.name, again.spec.optimizer.args) == ("sgd", {"lr": 0.5, "momentum": 0.9})
    assert again.spec.loss.name == "categorical_crossentropy"
    assert [m.name for m in again.spec.metrics] == ["mae"]
    assert nnd.load(tmp_path / "a", dtype="float32").dtype == np.float32  # an explicit argument wins


def test_mixed_precision_comes_back(tmp_path):
    nnd.loads(TINY, mixed_precision=True).save(tmp_path / "m")
    assert nnd.load(tmp_path / "m").mixed_precision == "float16"
    assert nnd.load(tmp_path / "m", mixed_precision=False).mixed_precision is None


def test_compile_on_one_model_leaves_another_of_the_same_program_alone():
    first = nnd.loads(TINY)
    second = nnd.Model(first.program)
    second.compile(optimizer="sgd", lr=0.5)
    assert first.spec.optimizer.name == "adam"


def test_an_interrupted_save_leaves_no_model_that_loads_with_the_wrong_weights(tmp_path, monkeypatch):
    nnd.loads(TINY.replace("dense(8", "dense(16")).save(tmp_path / "d")

    def interrupted(path, params):
        raise KeyboardInterrupt

    monkeypatch.setattr(checkpoint, "save_weights", interrupted)
    with pytest.raises(KeyboardInterrupt):
        nnd.loads(TINY).save(tmp_path / "d")
    monkeypatch.undo()
    # nothing was replaced: the earlier model loads whole, and no staged file is left behind
    assert nnd.load(tmp_path / "d").parameters()["dense.kernel"].shape == (4, 16)
    assert _files(tmp_path / "d") == ["model.json", "source/model.nnd", "weights.npz"]


def test_a_save_that_fails_while_swapping_leaves_a_directory_load_refuses(tmp_path, monkeypatch):
    nnd.loads(TINY.replace("dense(8", "dense(16")).save(tmp_path / "d")
    real_replace = os.replace

    def failing_replace(source, target):
        if Path(target).name == "weights.npz":
            raise OSError(28, "No space left on device", str(target))
        real_replace(source, target)

    monkeypatch.setattr(saved_model.os, "replace", failing_replace)
    with pytest.raises(NndError, match="cannot save the model to .*No space left on device"):
        nnd.loads(TINY).save(tmp_path / "d")
    monkeypatch.undo()
    with pytest.raises(NndError, match="holds no saved model"):
        nnd.load(tmp_path / "d")


def test_a_manifest_path_that_is_a_directory_is_an_error_not_a_traceback(tmp_path):
    (tmp_path / "d" / "model.json").mkdir(parents=True)
    with pytest.raises(NndError, match="model.json is a directory"):
        nnd.loads(TINY).save(tmp_path / "d")


def test_a_stray_file_where_the_source_tree_goes_is_replaced(tmp_path):
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "source").write_text("not a directory")
    nnd.loads(TINY).save(tmp_path / "d")
    assert nnd.load(tmp_path / "d").name == "tiny"


@pytest.mark.parametrize("text, message", [
    ("{", "cannot read .*model.json"),
    ("[]", "not an nnd model manifest"),
    ("{}", "not an nnd model manifest"),
])
def test_a_broken_manifest_is_named(tmp_path, text, message):
    nnd.loads(TINY).save(tmp_path / "d")
    (tmp_path / "d" / "model.json").write_text(text)
    with pytest.raises(NndError, match=message):
        nnd.load(tmp_path / "d")


def test_a_manifest_records_the_root_file_relative_to_the_source_tree(tmp_path):
    nnd.loads(TINY, name="mine.nnd").save(tmp_path / "d")
    manifest = json.loads((tmp_path / "d" / "model.json").read_text())
    assert manifest["source"] == "mine.nnd" and manifest["dtype"] == "float32"
    assert "compile" not in manifest  # nothing was overridden


@pytest.mark.parametrize("path", [None, 3])
def test_save_and_load_refuse_what_is_not_a_path(path):
    with pytest.raises(NndError, match="must be a path"):
        nnd.loads(TINY).save(path)
    with pytest.raises(NndError, match="takes the path"):
        nnd.load(path)


def test_a_trained_model_saves_its_optimizer_so_that_fit_after_load_goes_on(tmp_path):
    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(64, 4)).astype(np.float32), rng.integers(0, 3, 64)
    trained = nnd.loads(TINY, seed=1)
    trained.fit(x, y, epochs=1, batch_size=16, shuffle=False, verbose=0)
    trained.save(tmp_path / "t")
    assert _files(tmp_path / "t") == ["model.json", "optimizer.npz", "source/model.nnd", "weights.npz"]
    loaded = nnd.load(tmp_path / "t")
    nnd.load(tmp_path / "t").save(tmp_path / "again")  # kept through a load and a save
    assert (tmp_path / "again" / "optimizer.npz").is_file()
    for model in (trained, loaded):
        model.fit(x, y, epochs=1, batch_size=16, shuffle=False, verbose=0)
    for name, value in trained.parameters().items():  # Adam's moments and step count came back
        np.testing.assert_array_equal(loaded.parameters()[name], value)
    nnd.loads(TINY).save(tmp_path / "t")  # an untrained model leaves no stale state behind
    assert "optimizer.npz" not in _files(tmp_path / "t")
