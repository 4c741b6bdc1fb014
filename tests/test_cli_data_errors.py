"""Messages of `nnd generate / predict / evaluate` about the files they are given: a vocabulary, an --input,
a --weights directory; each one line, exit 1, no traceback, no warning."""
from __future__ import annotations

import json
import zipfile
import warnings

import numpy as np
import pytest
from click.testing import CliRunner

import nnd
from nnd.cli import main
from nnd.runtime.data_source import table_target
from nnd.runtime.sequence_data import CharVocabulary

CHAR_MODEL = """model chars {
    input text: int32[8]
    embedding(16, 4)
    lstm(8)
    dense(16, activation=softmax)
}
"""

TABLE_MODEL = """model table {
    input x: [4]
    dense(3, activation=softmax)
}

train table {
    loss = sparse_categorical_crossentropy
}
"""

SPLIT_MODEL = """model split {
    input x: [4]
    hidden = x -> dense(8, activation=relu)
    output label = hidden -> dense(3, activation=softmax)
    output score = hidden -> dense(1)
}
"""


@pytest.fixture
def project(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("NND_OFFLINE", "1")
    (tmp_path / "chars.nnd").write_text(CHAR_MODEL)
    nnd.load("chars.nnd", seed=0).save("lm")
    CharVocabulary.from_text("abc ").save(tmp_path / "lm" / "vocabulary.json")
    (tmp_path / "table.nnd").write_text(TABLE_MODEL)
    nnd.load("table.nnd", seed=0).save("run")
    return tmp_path


def nnd_cli(*args):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        result = CliRunner().invoke(main, [str(a) for a in args])
    assert [str(w.message) for w in caught] == []
    return result


def failure(result) -> str:
    """The one-line message of a command that failed cleanly."""
    assert result.exit_code == 1, (result.exit_code, result.output)
    assert "Traceback" not in result.output and "internal error" not in result.stderr
    lines = result.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and lines[0].count("error:") == 1, lines
    return lines[0]


def generate(*args):
    return nnd_cli("generate", "chars.nnd", "--weights", "lm", "--length", 5, *args)


# ------------------------------------------------------------------------------------------- generate

def test_an_empty_vocabulary_is_named_as_such(project):
    (project / "empty.json").write_text(json.dumps(
        {"format": "nnd-char-vocabulary", "version": 1, "padding_id": 0, "chars": []}))
    message = failure(generate("--vocab", "empty.json", "--prompt", "ab"))
    assert message == "error: empty.json: the vocabulary is empty (its \"chars\" list holds no character)"


def test_prompt_characters_the_vocabulary_lacks_are_refused(project):
    assert failure(generate("--prompt", "ZZZ")) == (
        "error: --prompt: the vocabulary lm/vocabulary.json lacks 'Z' (it has 4 characters)")
    assert failure(generate("--prompt", "abé€c")) == (
        "error: --prompt: the vocabulary lm/vocabulary.json lacks 'é', '€' (it has 4 characters)")


def test_a_prompt_of_known_characters_is_continued(project):
    result = generate("--prompt", "ab c")
    assert result.exit_code == 0, result.output
    assert result.output.startswith("ab c") and set(result.output[4:-1]) <= set("abc ")


def test_a_malformed_vocabulary_has_one_error_prefix(project):
    (project / "v4.json").write_text(json.dumps({"format": "nnd-char-vocabulary", "chars": [1]}))
    assert failure(generate("--vocab", "v4.json", "--prompt", "ab")) == (
        "error: v4.json: vocabulary entry 0 is 1; every entry must be a single character")


# -------------------------------------------------------------------------------------------- predict

def predict(*args):
    return nnd_cli("predict", "table.nnd", "--weights", "run", "--output", "y.npy", *args)


def test_an_npz_without_x_says_what_predict_reads(project):
    np.savez(project / "k.npz", data=np.zeros((2, 4)))
    assert failure(predict("--input", "k.npz")) == (
        "error: k.npz holds arrays data; prediction reads its inputs from an array named x (or x_test, or "
        "x_train), and needs no y")


def test_predict_reads_inputs_alone_from_x_test(project):
    np.savez(project / "t.npz", x_test=np.zeros((2, 4), np.float32))
    result = predict("--input", "t.npz")
    assert result.exit_code == 0, result.output
    assert np.load(project / "y.npy").shape == (2, 3)


def test_an_unsupported_input_extension_names_the_accepted_ones(project):
    (project / "garbage.nnd").write_text("model m {}\n")
    assert failure(predict("--input", "garbage.nnd")) == (
        "error: --input garbage.nnd: predict reads a .npy, .npz or .csv file, not .nnd")
    (project / "noext").write_text("1,2,3,4\n")
    assert failure(predict("--input", "noext")) == "error: --input noext: predict reads a .npy, .npz or .csv file"


def test_an_object_npy_is_refused_as_python_objects(project):
    np.save(project / "o.npy", np.array([{"a": 1}, None], dtype=object), allow_pickle=True)
    assert failure(predict("--input", "o.npy")) == (
        "error: o.npy holds Python objects (an object array), which nnd does not load: no pickle, as unpickling "
        "can run code; save numeric arrays")


def test_csv_cells_are_numbered_from_one(project):
    (project / "n1.csv").write_text("1,2,3,4\nabc,5,6,7\n")
    assert failure(predict("--input", "n1.csv")) == (
        "error: n1.csv line 2, column 1: 'abc', which is not a number")


# ------------------------------------------------------------------------------------ weights, evaluate

def test_a_weights_directory_without_weights_says_so(project):
    (project / "empty_run").mkdir()
    np.save(project / "x.npy", np.zeros((2, 4), np.float32))
    expected = ("error: --weights empty_run: the directory holds no weights.npz (a run directory gets one when "
                "training finishes)")
    assert failure(predict("--input", "x.npy", "--weights", "empty_run")) == expected
    assert failure(nnd_cli("evaluate", "table.nnd", "--weights", "empty_run", "--data", "x.npy")) == expected
    assert failure(nnd_cli("generate", "chars.nnd", "--weights", "empty_run", "--prompt", "ab")) == expected
    assert failure(nnd_cli("train", "table.nnd", "--weights", "empty_run", "--data", "x.npy")) == expected


def test_evaluate_without_data_speaks_of_evaluation_data(project):
    message = failure(nnd_cli("evaluate", "table.nnd", "--weights", "run"))
    assert message.startswith("error: no evaluation data: give --data NAME|PATH or set `data = ...` in the train "
                              "section")
    assert "training" not in message


def test_evaluate_refuses_a_model_of_two_outputs_in_its_own_words(project):
    (project / "split.nnd").write_text(SPLIT_MODEL)
    nnd.load("split.nnd", seed=0).save("split_run")
    np.savez(project / "d.npz", x=np.zeros((2, 4), np.float32), y=np.zeros(2))
    assert failure(nnd_cli("evaluate", "split.nnd", "--weights", "split_run", "--data", "d.npz")) == (
        "error: model 'split' has 1 input and 2 outputs; the command line evaluates one-input, one-output "
        "models: use the Python API with dicts of arrays (model.evaluate({...}, {...}))")
    assert failure(nnd_cli("train", "split.nnd", "--data", "d.npz")).startswith(
        "error: model 'split' has 1 input and 2 outputs; the command line trains one-input, one-output models")


# ------------------------------------------------------------------------------------ image tables

IMAGE_MODEL = """model img {
    input image: [2, 2, 1]
    flatten()
    dense(3, activation=softmax)
}

train img {
    loss = sparse_categorical_crossentropy
    epochs = 1
}
"""


def test_a_label_first_image_csv_trains_and_predicts_on_scaled_pixels(project):
    """Kaggle's MNIST layout: a `label` column first, then pixels as whole numbers from 0 to 255."""
    (project / "img.nnd").write_text(IMAGE_MODEL)
    rows = ["label,p0,p1,p2,p3", "2,0,255,128,64", "0,255,255,0,0", "1,3,2,1,0"]
    (project / "kaggle.csv").write_text("\n".join(rows) + "\n")
    result = nnd_cli("train", "img.nnd", "--data", "kaggle.csv", "--out", "img_run")
    assert result.exit_code == 0, result.stderr
    assert "note: kaggle.csv: pixel values 0-255 scaled to [0, 1] (divided by 255)" in result.output
    model = nnd.load("img_run")
    pixels = np.array([[0, 255, 128, 64], [255, 255, 0, 0], [3, 2, 1, 0]], np.float32).reshape(3, 2, 2, 1) / 255
    result = nnd_cli("predict", "img.nnd", "--weights", "img_run", "--input", "kaggle.csv", "--output", "p.npy")
    assert result.exit_code == 0, result.stderr
    np.testing.assert_allclose(np.load(project / "p.npy"), model.predict(pixels), rtol=1e-6)
    assert table_target(project / "kaggle.csv", None) == (0, 5)


def test_header_less_files_keep_the_label_column_training_found_by_name(project):
    """A run trained on a file whose header put the labels first; evaluate and predict given the same
    table without its header drop that column, not the last one, and say which they dropped."""
    (project / "img.nnd").write_text(IMAGE_MODEL)
    (project / "named.csv").write_text("label,p0,p1,p2,p3\n2,0,255,128,64\n0,255,255,0,0\n1,3,2,1,0\n")
    assert nnd_cli("train", "img.nnd", "--data", "named.csv", "--out", "img_run").exit_code == 0
    assert json.loads((project / "img_run" / "label_column.json").read_text()) == {"label_column": 0, "columns": 5}
    (project / "bare.csv").write_text("2,0,255,128,64\n0,255,255,0,0\n1,3,2,1,0\n")
    result = nnd_cli("predict", "img.nnd", "--weights", "img_run", "--input", "bare.csv", "--output", "p.npy")
    assert result.exit_code == 0, result.stderr
    assert "note: bare.csv: column 0 left out as the labels" in result.output
    pixels = np.array([[0, 255, 128, 64], [255, 255, 0, 0], [3, 2, 1, 0]], np.float32).reshape(3, 2, 2, 1) / 255
    model = nnd.load("img_run")
    np.testing.assert_allclose(np.load(project / "p.npy"), model.predict(pixels), rtol=1e-6)
    named = nnd_cli("evaluate", "img.nnd", "--weights", "img_run", "--data", "named.csv")
    bare = nnd_cli("evaluate", "img.nnd", "--weights", "img_run", "--data", "bare.csv")
    assert named.exit_code == bare.exit_code == 0, bare.stderr
    figures = [line.split(":", 1)[1] for line in named.output.splitlines() if "loss" in line]
    assert figures and figures == [line.split(":", 1)[1] for line in bare.output.splitlines() if "loss" in line]


def test_a_header_less_file_of_another_width_than_the_training_table_is_refused(project):
    (project / "wide.nnd").write_text(TABLE_MODEL.replace("[4]", "[5]"))
    (project / "named.csv").write_text("label,a,b,c,d,e\n2,0,1,2,3,4\n0,5,6,7,8,9\n")
    assert nnd_cli("train", "wide.nnd", "--data", "named.csv", "--out", "wide_run", "--epochs", "1").exit_code == 0
    (project / "short.csv").write_text("0,1,2,3,4\n5,6,7,8,9\n")  # the features alone: still predicts
    assert nnd_cli("predict", "wide.nnd", "--weights", "wide_run", "--input", "short.csv",
                   "--output", "p.npy").exit_code == 0
    (project / "bare.csv").write_text("2,0,1,2,3\n0,5,6,7,8\n")
    assert failure(nnd_cli("evaluate", "wide.nnd", "--weights", "wide_run", "--data", "bare.csv")) == (
        "error: bare.csv has 5 columns and no header, but the training table had 6 with its labels in column 0; "
        "give the file a header row naming its columns")


def test_predict_scales_pixels_as_the_run_did_whatever_the_file_holds(project):
    (project / "img.nnd").write_text(IMAGE_MODEL)
    (project / "bytes.csv").write_text("label,p0,p1,p2,p3\n2,0,255,128,64\n0,255,255,0,0\n1,3,2,1,0\n")
    assert nnd_cli("train", "img.nnd", "--data", "bytes.csv", "--out", "img_run").exit_code == 0
    (project / "flags.csv").write_text("p0,p1,p2,p3\n0,0,0,1\n0,1,1,0\n")  # its largest value is 1
    result = nnd_cli("predict", "img.nnd", "--weights", "img_run", "--input", "flags.csv", "--output", "p.npy")
    assert "note: flags.csv: pixel values 0-255 scaled to [0, 1]" in result.output
    pixels = np.array([[0, 0, 0, 1], [0, 1, 1, 0]], np.float32).reshape(2, 2, 2, 1) / 255
    np.testing.assert_allclose(np.load(project / "p.npy"), nnd.load("img_run").predict(pixels), rtol=1e-6)


@pytest.mark.parametrize("write, message", [
    (lambda: np.savez("f.npz", x=np.float32(3), y=np.int64(1)),
     "f.npz: 'x' is a single value, not an array of samples"),
    (lambda: zipfile.ZipFile("f.npz", "w").writestr("x.npy", b"hello"),
     "cannot read f.npz: its member 'x' is not a NumPy array (the file is corrupt)"),
])
def test_npz_members_that_are_no_arrays_of_samples_are_named(project, write, message):
    write()
    assert failure(nnd_cli("train", "table.nnd", "--data", "f.npz")) == f"error: {message}" + (
        " (its first axis counts the samples)" if "single value" in message else "")


@pytest.mark.parametrize("arrays, key, message", [
    ({"x_train": np.zeros((6, 4)), "y_train": np.zeros((6, 2), np.int64)}, "y_train",
     "has shape (6, 2); sparse_categorical_crossentropy expects class ids of shape (batch) (one-hot targets "
     "need categorical_crossentropy)"),
    ({"x_train": np.zeros((6, 4)), "y_train": np.zeros(6, np.int64), "x_test": np.zeros((2, 4)),
      "y_test": np.array([0, 5])}, "y_test",
     "holds label 5 at index 1, outside the 3 classes (0 to 2) of output 'output'"),
    ({"x": np.zeros((6, 4)), "y": np.full(6, 0.5)}, "y",
     "must hold integer class ids for sparse_categorical_crossentropy, got non-integer values"),
])
@pytest.mark.parametrize("command", ["train", "evaluate"])
def test_a_target_that_does_not_fit_is_named_by_its_key_in_the_file(project, arrays, key, message, command):
    np.savez("d.npz", **arrays)
    weights = ["--weights", "run"] if command == "evaluate" else ["--out", "out"]
    assert failure(nnd_cli(command, "table.nnd", "--data", "d.npz", *weights)) == \
        f"error: --data d.npz: target '{key}' {message}"


def test_a_first_row_with_an_empty_cell_is_data_not_a_header(project):
    (project / "f.csv").write_text("1,2,,4,0\n5,6,7,8,1\n")
    assert failure(nnd_cli("train", "table.nnd", "--data", "f.csv")) == "error: f.csv line 1, column 3: an empty value"


def test_a_target_name_given_to_two_columns_is_ambiguous(project):
    (project / "dup.csv").write_text("a,b,label,d,label\n1,2,0,4,1\n5,6,1,8,2\n")
    (project / "named.nnd").write_text(TABLE_MODEL.replace("table", "named").replace(
        "loss = sparse_categorical_crossentropy", "loss = sparse_categorical_crossentropy\n    target = label"))
    assert failure(nnd_cli("train", "named.nnd", "--data", "dup.csv")) == (
        "error: dup.csv has 2 columns named 'label' (columns 3, 5): the target column is ambiguous; rename one")
