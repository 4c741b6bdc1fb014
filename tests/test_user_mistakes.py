"""Mistakes and extremes met by users of the language and the command line: each ends in a located error
or a usage error, never an internal error, and programs at the extremes that are valid still compile."""
from __future__ import annotations

import contextlib
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

import nnd
from nnd import NndError
from nnd.cli import main
from nnd.compiler.ir import print_graph
from nnd.runtime.divergence import divergence_message


def check(text: str) -> str:
    """The rendered diagnostics of compiling `text` as m.nnd."""
    with pytest.raises(NndError) as caught:
        nnd.loads(text, name="m.nnd")
    return caught.value.render()


DENSE = "model m {{\n    input x: [8]\n    dense({units})\n}}\n"
TRAIN = "model m {{\n    input x: [8]\n    dense(1)\n}}\ntrain m {{\n    loss = mse\n    {setting}\n}}\n"


def test_a_size_beyond_int32_is_refused_at_its_argument():
    assert check(DENSE.format(units="99999999999999999999999")).startswith(
        "m.nnd:3:11: error: dense argument 'units': must be at most 2,147,483,647, "
        "got 99,999,999,999,999,999,999,999")


def test_parameters_too_large_to_allocate_are_one_error():
    with pytest.raises(NndError, match=r"cannot allocate the 160,002,000,000,000 parameters of model 'm'"):
        nnd.loads("model m {\n    input x: [80000]\n    dense(2000000000)\n}\n")


def test_a_negative_seed_is_refused_in_the_file_the_api_and_the_command_line(tmp_path):
    assert check(TRAIN.format(setting="seed = -5")).startswith(
        "m.nnd:7:12: error: seed: must be at least 0, got -5")
    for seed in (-1, 1.5, True):
        with pytest.raises(NndError, match="seed must be a non-negative int"):
            nnd.loads(DENSE.format(units=2), seed=seed)
    (tmp_path / "m.nnd").write_text(TRAIN.format(setting="epochs = 1"))
    result = CliRunner().invoke(main, ["train", str(tmp_path / "m.nnd"), "--seed", "-5"])
    assert result.exit_code == 2 and "-5 is not in the range x>=0" in result.stderr


@pytest.mark.parametrize("flag", ["--validation-split", "--lr"])
def test_nan_is_not_a_number_for_the_command_line(tmp_path, flag):
    (tmp_path / "m.nnd").write_text(TRAIN.format(setting="epochs = 1"))
    result = CliRunner().invoke(main, ["train", str(tmp_path / "m.nnd"), flag, "nan"])
    assert result.exit_code == 2 and "nan is not a finite number" in result.stderr


def test_an_optimization_level_is_checked_for_every_emit(tmp_path):
    (tmp_path / "m.nnd").write_text(DENSE.format(units=2))
    for emit in ("ast", "ir"):
        result = CliRunner().invoke(main, ["compile", str(tmp_path / "m.nnd"), "--emit", emit, "-O", "5"])
        assert result.exit_code == 1
        assert result.stderr == "error: -O5 is not an optimization level; use -O0, -O1 or -O2\n"
    with pytest.raises(NndError, match="opt_level must be 0, 1 or 2, got '2'"):
        nnd.loads(DENSE.format(units=2), opt_level="2")


@pytest.mark.parametrize("schedule, message", [
    ("cosine_decay()", "7:19: error: cosine_decay needs argument decay_steps"),
    ("exponential_decay(decay_steps=5)", "7:19: error: exponential_decay needs argument decay_rate"),
    ("warmup(warmup_steps=3, then=cosine)", "7:42: error: warmup with then=cosine needs decay_steps"),
    ("warmup(warmup_steps=3, alpha=0.1)", "7:42: error: warmup argument 'alpha' is only used with then=cosine"),
])
def test_a_schedule_missing_what_it_needs_is_found_by_check(schedule, message):
    assert message in check(TRAIN.format(setting=f"lr_schedule = {schedule}"))


def test_a_complete_warmup_trains():
    model = nnd.loads(TRAIN.format(setting="lr_schedule = warmup(warmup_steps=2, then=cosine, decay_steps=4, "
                                           "alpha=0.1, start=0.0001)"))
    x = np.ones((8, 8), np.float32)
    model.fit(x, np.zeros(8, np.float32), epochs=1, batch_size=2, verbose=0)


@pytest.mark.parametrize("expression", ["b", "b * 2"])
def test_a_constant_used_before_its_definition_says_so(expression):
    text = f"const a = {expression}\nconst b = 3\n" + DENSE.format(units="a")
    assert check(text).startswith("m.nnd:1:11: error: constant 'b' is used before its definition\n")
    assert "note: 'b' is defined at m.nnd:2:7; a constant must come before its uses" in check(text)


def test_a_second_train_section_points_at_the_first():
    text = TRAIN.format(setting="epochs = 1") + "train m {\n    loss = mae\n}\n"
    assert "note: the first train section for 'm' is at m.nnd:5:7" in check(text)


def test_a_dilated_window_is_reported_with_the_extent_it_spans():
    text = "model m {\n    input x: [8, 8, 1]\n    conv2d(4, 3, dilation_rate=5)\n}\n"
    assert "error: conv2d window 3x3 at dilation_rate 5x5 spans 11x11, more than its 8x8 input" in check(text)


def test_long_chains_compile_and_run():
    links = 2000
    text = (f"const width = {' + '.join(['1'] * links)}\nmodel m {{\n    input x: [8]\n"
            f"    h = x{' -> relu()' * links}\n    output h -> dense(width)\n}}\n")
    model = nnd.loads(text)
    assert model.predict(np.ones((2, 8), np.float32)).shape == (2, links)


def test_blocks_nested_beyond_the_stack_are_one_error():
    blocks = "block b0(x) {\n    return relu(x)\n}\n" + "".join(
        f"block b{i}(x) {{\n    return b{i - 1}(x)\n}}\n" for i in range(1, 1500))
    text = blocks + "model m {\n    input x: [8]\n    output b1499(x)\n}\n"
    assert check(text).startswith("m.nnd:1:1: error: the program is nested too deeply to check")


def test_the_command_line_starts_without_loading_the_compiler():
    # so that a Ctrl-C in the first moments lands in code that reports it in one line
    loaded = subprocess.run([sys.executable, "-c", "import sys, nnd.cli; print('nnd.model' in sys.modules)"],
                            capture_output=True, text=True, check=True).stdout.strip()
    assert loaded == "False"


def test_every_bad_item_of_a_list_and_every_bad_argument_of_a_call_is_reported():
    text = TRAIN.format(setting="optimizer = sgd(lr=0.1, clipnorm=-1, clipvalue=0)\n"
                                "    metrics = [top_k_accuracy(k=0), mae(x=1)]")
    rendered = check(text)
    for message in ("7:29: error: sgd argument 'clipnorm': must be positive, got -1",
                    "7:42: error: sgd argument 'clipvalue': must be positive, got 0",
                    "8:31: error: top_k_accuracy argument 'k': must be at least 1, got 0",
                    "8:41: error: mae takes no arguments, got 'x'"):
        assert message in rendered
    with pytest.raises(NndError) as caught:
        nnd.loads(DENSE.format(units=1)).compile(optimizer="sgd", clipnorm=-1, clipvalue=0)
    assert len(caught.value.diagnostics) == 2


UNUSED = """\
block twice(x) {
    forgotten = x -> dense(5)
    return x -> dense(4)
}
model m {
    input a: [8]
    u = a -> dense(8)
    v = a -> dense(4) -> relu()
    p = twice(a)
    q = twice(a)
    output p + q
}
model s {
    input source: [20, 8]
    _, h, c = source -> lstm(32, return_state=true)
    output h
}
"""


def test_a_layer_whose_result_reaches_no_output_is_warned_about_once_at_the_end_of_its_chain():
    program = nnd.loads(UNUSED, name="u.nnd").program
    rendered = [w.render(program.sources) for w in program.warnings["m"]]
    assert [r.splitlines()[0] for r in rendered] == [
        "u.nnd:7:14: warning: the result of this dense is never used",
        "u.nnd:8:26: warning: the result of this relu is never used",
        "u.nnd:2:22: warning: the result of this dense is never used",
    ]
    assert "note: its parameters are still created, counted and saved" in rendered[0]
    assert program.warnings["s"] == []  # the sequence output left as _ is no mistake


def test_no_unused_warning_follows_an_error():
    assert "never used" not in check("model m {\n    input x: [8]\n    x -> dense(3) -> bogus()\n}\n")


def test_check_strict_fails_on_an_unused_layer(tmp_path):
    (tmp_path / "u.nnd").write_text(UNUSED)
    result = CliRunner().invoke(main, ["check", "--strict", str(tmp_path / "u.nnd")])
    assert result.exit_code == 1 and result.stderr.count("is never used") == 3


def test_a_byte_order_mark_starts_a_file_without_being_part_of_it(tmp_path):
    (tmp_path / "lib.nnd").write_bytes("\ufeffblock b(x) {\n    return relu(x)\n}\n".encode())
    (tmp_path / "m.nnd").write_bytes(('\ufeffimport "lib.nnd"\n' + DENSE.format(units=2)).encode())
    assert nnd.load(tmp_path / "m.nnd").name == "m"


def test_weights_holding_nan_are_refused_when_loaded(tmp_path):
    model = nnd.loads(DENSE.format(units=2))
    weights = model.parameters()
    weights["dense.kernel"][1, 0] = np.nan
    np.savez(tmp_path / "w.npz", **weights)
    with pytest.raises(NndError, match=r"parameter 'dense.kernel' from weights file .*w.npz holds nan at "
                                       r"index \(1, 0\)"):
        model.load_weights(tmp_path / "w.npz")


def test_augmentations_on_a_model_without_images_are_warned_about():
    program = nnd.loads(TRAIN.format(setting="augment = [random_shift(0.1)]"), name="m.nnd").program
    assert [w.render(program.sources).splitlines()[0] for w in program.warnings["m"]] == [
        "m.nnd:7:16: warning: random_shift does nothing here: augmentations transform image inputs, and "
        "model 'm' has none (x: f32[N,8])"]


def test_resuming_from_a_changed_source_says_so(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    rng = np.random.default_rng(0)
    np.savez("d.npz", x=rng.normal(size=(16, 8)).astype(np.float32), y=rng.normal(size=16).astype(np.float32))
    Path("m.nnd").write_text(TRAIN.format(setting="epochs = 1"))
    runner = CliRunner()
    assert runner.invoke(main, ["train", "m.nnd", "--data", "d.npz", "--out", "run", "-q"]).exit_code == 0
    same = runner.invoke(main, ["train", "m.nnd", "--data", "d.npz", "--out", "run", "--resume",
                                "run/checkpoint.npz", "--epochs", "2", "-q"])
    assert same.exit_code == 0 and same.stderr == ""
    Path("m.nnd").write_text(TRAIN.format(setting="epochs = 3"))
    changed = runner.invoke(main, ["train", "m.nnd", "--data", "d.npz", "--out", "run", "--resume",
                                   "run/checkpoint.npz", "-q"])
    assert changed.exit_code == 0
    assert changed.stderr == ("warning: --resume run/checkpoint.npz: the model's source has changed since this "
                              "checkpoint was written; the run continues with the source as it is now\n")


def test_a_repeat_index_lives_inside_its_loop_and_hides_nothing():
    assert check("const width = 8\nmodel m {\n    input x: [3]\n    repeat 2 as width { dense(width + 1) }\n}\n"
                 ).startswith("m.nnd:4:5: error: repeat index 'width' would hide the constant 'width'")
    assert "m.nnd:4:11: error: undefined value 'i'" in check(
        "model m {\n    input x: [3]\n    repeat 2 as i { dense(i + 1) }\n    dense(i)\n}\n")


@pytest.mark.parametrize("text, message", [
    ("leaky_relu(1e400)", "m.nnd:3:16: error: number 1e400 is too large"),
    ("leaky_relu(1e300 * 1e300)", "m.nnd:3:16: error: '*' overflows: the result is beyond the largest float"),
])
def test_numbers_beyond_a_float_are_refused_where_they_appear(text, message):
    assert check(f"model m {{\n    input x: [3]\n    {text}\n}}\n").startswith(message)


@pytest.mark.parametrize("initializer, message", [
    ("random_normal(stddev=-1)", "random_normal: stddev must be at least 0, got -1"),
    ("truncated_normal(stddev=-0.5)", "truncated_normal: stddev must be at least 0, got -0.5"),
    ("random_uniform(minval=1)", "random_uniform: minval 1 is above maxval 0.05"),
])
def test_initializer_arguments_are_checked_at_the_argument(initializer, message):
    assert f"m.nnd:3:33: error: dense argument 'kernel_initializer': {message}" in check(
        f"model m {{\n    input x: [4]\n    dense(2, kernel_initializer={initializer})\n}}\n")


def test_dropout_on_ids_is_refused_by_check():
    assert check("model m {\n    input x: int32[4]\n    dropout(0.5)\n    dense(2)\n}\n").startswith(
        "m.nnd:3:5: error: dropout needs a float input, got i32[N,4]")


def test_an_unnamed_output_takes_the_first_free_name():
    model = nnd.loads("model m {\n    input x: [3]\n    output x -> dense(1)\n    output output_2 = x -> dense(5)\n"
                      "    output x -> dense(3)\n}\n")
    assert list(model.graph.outputs) == ["output", "output_2", "output_1"]


def test_no_unused_warning_in_a_program_with_an_error_elsewhere():
    text = ("const k = 1\nconst k = 2\nblock b(x) {\n    return x -> dense(3)\n}\n"
            "model m {\n    input x: [8]\n    u = b(x)\n    output x -> dense(1)\n}\n")
    assert "never used" not in check(text)


@pytest.mark.parametrize("body, message", [
    ("input x: int32[5, 2]\n    conv1d(2, 2)", "m.nnd:3:5: error: conv1d needs a float input, got i32[N,5,2]"),
    ("input x: int32[4, 4, 1]\n    global_avgpool2d()",
     "m.nnd:3:5: error: global_avgpool2d needs a float input, got i32[N,4,4,1]"),
    ("input x: [4]\n    batchnorm(epsilon=-1)", "m.nnd:3:23: error: batchnorm argument 'epsilon': must be at least 0"),
    ("input x: [6, 2]\n    maxpool1d(2, strides=[1])",
     "m.nnd:3:26: error: maxpool1d argument 'strides': expected an int"),
])
def test_layers_speak_of_themselves_not_of_the_ops_they_lower_to(body, message):
    rendered = check(f"model m {{\n    {body}\n}}\n")
    assert rendered.startswith(message)
    assert "conv2d" not in rendered and "batchnorm_infer" not in rendered and "reduce_mean" not in rendered


def test_a_bool_input_takes_flags_and_zeros_and_ones_but_no_threshold():
    model = nnd.loads("model m {\n    input x: bool[4]\n    dense(3)\n}\n")
    flags = np.array([[True, False, False, True]])
    assert np.array_equal(model.predict(np.array([[1, 0, 0, 1]])), model.predict(flags))
    for values in (np.array([[0.5, 0, 0, 0]]), np.array([[2, 3, 4, 1]])):
        with pytest.raises(NndError, match="input 'x' is bool: it takes True/False or 0/1 values, got other numbers"):
            model.predict(values)


def test_a_row_of_padding_alone_averages_to_zero():
    model = nnd.loads("model m {\n    input x: int32[3]\n    embedding(5, 2, mask_zero=true)\n"
                      "    global_avgpool1d()\n}\n")
    with np.errstate(all="raise"):
        assert np.array_equal(model.predict(np.array([[0, 0, 0]])), np.zeros((1, 2), np.float32))


@pytest.mark.parametrize("text, note", [
    ("model m {\n    input x: [4, 4, 1]\n    output x -> global_maxpool2d() + x -> global_avgpool2d()\n}\n",
     "note: '->' binds more loosely than arithmetic: to combine two chains, write (x -> f()) + (x -> g())"),
    ("block b(a, c) {\n    a + c\n}\nmodel m {\n    input x: [3]\n    output b(x, x)\n}\n",
     "note: a statement is an assignment, a layer call or a chain; a block hands back its value with return VALUE"),
])
def test_syntax_errors_that_are_misreadings_get_a_hint(text, note):
    assert note in check(text)


def test_a_block_may_return_the_several_values_of_a_layer():
    source = ("block encode(x) {\n    return x -> lstm(4, return_state=true)\n}\n"
              "model m {\n    input x: [5, 3]\n    sequence, h, c = encode(x)\n    output h\n}\n")
    assert list(nnd.loads(source).graph.outputs) == ["h"]


def test_train_sections_take_keras_metric_names_and_weight_decay_on_every_optimizer():
    text = TRAIN.format(setting="optimizer = rmsprop(weight_decay=0.01)\n    metrics = [mean_absolute_error]")
    spec = nnd.loads(text).spec
    assert spec.optimizer.args == {"weight_decay": 0.01} and [m.name for m in spec.metrics] == ["mae"]
    assert "adam argument 'weight_decay': must be at least 0" in check(
        TRAIN.format(setting="optimizer = adam(weight_decay=-1)"))


# ---------------------------------------------------------------- habits brought from Keras

LAYER = "model m {{\n    input x: [8, 8, 1]\n    {layer}\n    flatten()\n    dense(2)\n}}\n"


@pytest.mark.parametrize("layer, suggestion", [
    ("MaxPooling2D(2)", "unknown layer 'MaxPooling2D'; did you mean 'maxpool2d'?"),
    ("GlobalAveragePooling2D()", "unknown layer 'GlobalAveragePooling2D'; did you mean 'global_avgpool2d'?"),
    ("LeakyReLU(alpha=0.1)", "unknown layer 'LeakyReLU'; did you mean 'leaky_relu'?"),
    ("conv2d(2, 3, activation=ReLU)", "unknown activation 'ReLU'; did you mean 'relu'?"),
    ('conv2d(2, 3, padding="SAME")', "unknown padding 'SAME'; did you mean 'same'?"),
    ("conv2d(2, 3, use_bias=True)", "expected true or false, got the name 'True'; did you mean 'true'?"),
    ("maxpool2d(2, strides=None)", "maxpool2d argument 'strides': expected an int, got the name 'None'; "
                                   "did you mean 'none'?"),
    ("conv2d(2, 3, activation=None)", "unknown activation 'None'; did you mean 'none'?"),
])
def test_keras_class_names_and_spellings_suggest_the_catalog_names(layer, suggestion):
    assert suggestion in check(LAYER.format(layer=layer))


@pytest.mark.parametrize("layer, default", [
    ("conv2d(2, 3, name=none)", "conv2d(2, 3)"),
    ("dropout(0.5, seed=none)", "dropout(0.5)"),
])
def test_none_for_an_argument_whose_default_is_none_means_that_default(layer, default):
    def graph(text: str) -> str:
        return print_graph(nnd.loads(LAYER.format(layer=text)).graph)

    assert graph(layer) == graph(default)


def test_name_none_gives_the_automatic_names():
    model = nnd.loads("model m {\n    input x: [3]\n    dense(4, name=none)\n    dense(2, name=none)\n}\n")
    assert list(model.parameters()) == ["dense.kernel", "dense.bias", "dense_1.kernel", "dense_1.bias"]


def test_an_lstm_initial_state_of_none_starts_from_zeros():
    text = "model m {{\n    input t: [5, 3]\n    lstm(4{extra})\n}}\n"
    assert print_graph(nnd.loads(text.format(extra=", initial_state=none")).graph) == \
        print_graph(nnd.loads(text.format(extra="")).graph)


@pytest.mark.parametrize("layer, message", [
    ("dense(4, name=None)", "dense argument 'name': expected a name or none, got the name 'None'; "
                            "did you mean 'none'?"),
    ("dropout(0.5, seed=None)", "dropout argument 'seed': expected an int or none, got the name 'None'; "
                                "did you mean 'none'?"),
])
def test_python_none_for_an_optional_argument_suggests_none(layer, message):
    assert message in check(LAYER.format(layer=layer))


def test_keras_optimizer_and_loss_class_names_suggest_the_setting_names():
    rendered = check(TRAIN.format(setting="optimizer = SGD(learning_rate=0.1)\n    metrics = [acc]")
                     .replace("loss = mse", "loss = SparseCategoricalCrossentropy()"))
    assert "unknown optimizer 'SGD'; did you mean 'sgd'?" in rendered
    assert "unknown loss 'SparseCategoricalCrossentropy'; did you mean 'sparse_categorical_crossentropy'?" in rendered


def test_a_keras_layer_the_catalog_lacks_is_not_mistaken_for_another():
    rendered = check(LAYER.format(layer="TextVectorization()"))
    assert "unknown layer 'TextVectorization': the catalog has no such layer" in rendered
    assert "did you mean" not in rendered
    rendered = check(LAYER.format(layer="LayerNormalization()"))  # the catalog has this one
    assert "unknown layer 'LayerNormalization'; did you mean 'layer_normalization'?" in rendered


@pytest.mark.parametrize("layer, message, note", [
    ("conv2d(2, 3, input_shape=[8, 8, 1])", "3:18: error: conv2d has no argument 'input_shape'",
     "note: shapes come from the model's input lines, e.g. input image: [28, 28, 1] (the batch axis is implicit)"),
    ("dense(4, input_dim=64)", "3:14: error: dense has no argument 'input_dim'",
     "note: shapes come from the model's input lines"),
])
def test_keras_shape_arguments_point_at_the_input_line(layer, message, note):
    rendered = check(LAYER.format(layer=layer))
    assert message in rendered and note in rendered and "valid:" not in rendered


def test_embedding_input_length_points_at_the_input_line():
    rendered = check("model m {\n    input t: int32[20]\n    embedding(50, 4, input_length=20)\n}\n")
    assert "m.nnd:3:22: error: embedding has no argument 'input_length'" in rendered
    assert "note: a sequence's length comes from its input line, e.g. input tokens: int32[200]" in rendered


def test_a_misspelled_required_argument_is_one_error_not_two():
    rendered = check(LAYER.format(layer="conv2d(2, kernal_size=3)"))
    assert "conv2d has no argument 'kernal_size'; did you mean 'kernel_size'?" in rendered
    assert "needs argument" not in rendered


def test_a_none_dimension_says_the_batch_is_implicit_and_sizes_are_fixed():
    rendered = check("model m {\n    input x: [None, 28, 28, 1]\n    flatten()\n}\n")
    assert rendered.startswith("m.nnd:2:15: error: input dimensions must be fixed sizes, got None")
    assert "note: the batch axis is implicit: give the shape of one sample" in rendered
    assert "undefined value" not in rendered


@pytest.mark.parametrize("text, note", [
    (LAYER.format(layer="conv2d(2, kernel_size=(3, 3))"),
     "note: a list is written in brackets, as in kernel_size=[3, 3]; parentheses only group arithmetic"),
    ("model m {\n    input x: [8]\n    y = Dense(4)(x)\n    output y\n}\n",
     "note: a layer is applied to a value with '->': x = image -> dense(64), not dense(64)(image)"),
    ("model m {\n    input x: (28, 28, 1)\n}\n", "note: a shape is written in brackets: input image: [28, 28, 1]"),
    ("model m {\n    input t: [20], dtype=int32\n}\n",
     "note: an input's dtype comes before its shape: input tokens: int32[200]"),
    ("model = Sequential([dense(4)])\n",
     "note: a model is declared as model NAME { ... }, its input lines first and then its layers"),
    (TRAIN.format(setting="metrics = ['mae']"), "note: strings are written in double quotes"),
    (LAYER.format(layer="conv2d(2, 3);"), "note: no ';' is needed: statements end by themselves"),
])
def test_python_and_keras_syntax_gets_a_note_on_the_language_form(text, note):
    rendered = check(text)
    assert rendered.count("error:") == 1 and note in rendered


def test_train_settings_may_name_things_in_quotes_as_keras_does():
    quoted = nnd.loads(TRAIN.format(setting='optimizer = "sgd"\n    metrics = ["mae", "mse"]')
                       .replace("loss = mse", 'loss = "huber"')).spec
    bare = nnd.loads(TRAIN.format(setting="optimizer = sgd\n    metrics = [mae, mse]")
                     .replace("loss = mse", "loss = huber")).spec
    assert (quoted.optimizer, quoted.loss, quoted.metrics) == (bare.optimizer, bare.loss, bare.metrics)
    assert "unknown metric 'f1'" in check(TRAIN.format(setting='metrics = ["f1"]'))


@pytest.mark.parametrize("setting, message", [
    ("augment = [random_crop(32, padding=4)]", "7:32: error: argument 'padding' of random_crop given twice"),
    ("optimizer = adam(0.01, lr=0.1)", "7:28: error: argument 'lr' of adam given twice"),
    ("optimizer = adam(lr=0.01, learning_rate=0.1)", "7:31: error: argument 'learning_rate' of adam given twice"),
    ("callbacks = [early_stopping(loss, monitor=val_loss)]",
     "7:39: error: argument 'monitor' of early_stopping given twice"),
])
def test_a_train_argument_given_twice_is_an_error_not_silently_replaced(setting, message):
    assert message in check(TRAIN.format(setting=setting))


def test_merges_take_their_inputs_as_a_list_as_keras_merges_do():
    listed = nnd.loads("model m {\n    input a: [3]\n    input b: [3]\n    input c: [2]\n"
                       "    output concatenate([a, b, c]) -> dense(2)\n    output s = add([a, b])\n}\n", seed=3)
    spelled = nnd.loads("model m {\n    input a: [3]\n    input b: [3]\n    input c: [2]\n"
                        "    output concat(a, b, c) -> dense(2)\n    output s = add(a, b)\n}\n", seed=3)
    rng = np.random.default_rng(0)
    x = {"a": rng.normal(size=(4, 3)), "b": rng.normal(size=(4, 3)), "c": rng.normal(size=(4, 2))}
    got, want = listed.predict(x), spelled.predict(x)
    assert got.keys() == want.keys() and all(np.array_equal(got[k], want[k]) for k in got)
    np.testing.assert_allclose(got["s"], x["a"] + x["b"], rtol=1e-6)
    assert "add takes at least 2 inputs, got 1" in check("model m {\n    input a: [3]\n    output add([a])\n}\n")


IMAGE_MODEL = "model m {\n    input image: [6, 5, 2]\n    flatten()\n    dense(3, activation=softmax)\n}\n"


@pytest.mark.parametrize("shape, hint", [
    ((4, 2, 6, 5), "(channels first? the model takes channels last: x.transpose(0, 2, 3, 1))"),
    ((6, 5, 2), "(one sample? add the batch axis: x[None])"),
])
def test_arrays_in_another_layout_say_how_to_fix_them(shape, hint):
    model = nnd.loads(IMAGE_MODEL)
    with pytest.raises(NndError) as caught:
        model.predict(np.zeros(shape, np.float32))
    assert str(caught.value) == (f"error: input 'image' has shape {shape} but the model expects (batch, 6, 5, 2) "
                                 + hint)


def test_images_without_their_channel_axis_say_to_add_it():
    model = nnd.loads("model m {\n    input image: [6, 5, 1]\n    flatten()\n    dense(3)\n}\n")
    with pytest.raises(NndError, match=r"has shape \(4, 6, 5\) but the model expects \(batch, 6, 5, 1\) "
                                       r"\(add the channel axis: x\[\.\.\., None\]\)"):
        model.predict(np.zeros((4, 6, 5), np.float32))


def test_channels_first_data_for_the_command_line_says_so(tmp_path):
    (tmp_path / "m.nnd").write_text(IMAGE_MODEL)
    np.savez(tmp_path / "d.npz", x=np.zeros((4, 2, 6, 5), np.float32), y=np.zeros(4, np.int64))
    result = CliRunner().invoke(main, ["train", str(tmp_path / "m.nnd"), "--data", str(tmp_path / "d.npz"),
                                       "--out", str(tmp_path / "run")])
    assert result.exit_code == 1
    assert result.stderr.endswith("takes (6, 5, 2) (channels first? the model takes channels last: "
                                  "x.transpose(0, 2, 3, 1))\n")


def test_a_mistake_in_validation_data_names_validation_data():
    model = nnd.loads(IMAGE_MODEL)
    x, y = np.zeros((4, 6, 5, 2), np.float32), np.zeros(4, np.int64)
    with pytest.raises(NndError) as caught:
        model.fit(x, y, epochs=1, validation_data=(x[:, :5], y), verbose=0)
    assert str(caught.value).startswith("error: validation_data: input 'image' has shape (4, 5, 5, 2)")
    with pytest.raises(NndError, match="error: validation_data: target 'y' holds label 7 at index 0"):
        model.fit(x, y, epochs=1, validation_data=(x, y + 7), verbose=0)


@pytest.mark.parametrize("head, loss, message", [
    ("dense(1, activation=sigmoid)", "binary_crossentropy",
     "error: target 'y' has shape (6,) but the model expects (batch, 5, 1) (output 'output' gives one prediction "
     "per step; for one per sample, end the sequence with return_sequences=false or a global pooling)"),
    ("dense(3, activation=softmax)", "sparse_categorical_crossentropy",
     "error: target 'y' has shape (6,); sparse_categorical_crossentropy expects class ids of shape (batch, 5) "
     "(output 'output' gives one prediction per step; for one per sample, end the sequence with "
     "return_sequences=false or a global pooling)"),
])
def test_one_target_per_sample_for_a_per_step_output_names_return_sequences(head, loss, message):
    model = nnd.loads(f"model m {{\n    input x: [5, 2]\n    lstm(4, return_sequences=true)\n    {head}\n}}\n"
                      f"train m {{\n    loss = {loss}\n}}\n")
    with pytest.raises(NndError) as caught:
        model.fit(np.zeros((6, 5, 2), np.float32), np.zeros(6, np.int64), epochs=1, verbose=0)
    assert str(caught.value) == message


def test_targets_that_misfit_a_loss_the_model_did_not_name_say_where_it_came_from():
    model = nnd.loads("model m {\n    input x: [4]\n    dense(3, activation=softmax)\n}\n")
    with pytest.raises(NndError) as caught:
        model.fit(np.zeros((6, 4), np.float32), np.eye(3)[np.arange(6) % 3], epochs=1, verbose=0)
    assert str(caught.value).endswith(
        "note: no loss is set, so output 'output' gets sparse_categorical_crossentropy, the usual one for its final "
        "activation; set another with loss = ... in the train section or model.compile(loss=...)")
    named = nnd.loads("model m {\n    input x: [4]\n    dense(3, activation=softmax)\n}\n"
                      "train m {\n    loss = sparse_categorical_crossentropy\n}\n")
    with pytest.raises(NndError) as caught:
        named.fit(np.zeros((6, 4), np.float32), np.eye(3)[np.arange(6) % 3], epochs=1, verbose=0)
    assert "note:" not in str(caught.value)


def test_python_spellings_in_the_train_section_suggest_the_language_words():
    rendered = check(TRAIN.format(setting="optimizer = sgd(nesterov=True)"))
    assert "m.nnd:7:21: error: sgd argument 'nesterov': expected true or false, got the name 'True'; " \
           "did you mean 'true'?" in rendered


def test_activation_none_is_the_identity_as_keras_activation_none_is():
    text = "model m {{\n    input x: [3]\n    dense(2, activation={})\n}}\n"
    none, linear = nnd.loads(text.format("none"), seed=1), nnd.loads(text.format("linear"), seed=1)
    x = np.array([[1.0, -2.0, 3.0]], np.float32)
    kernel, bias = none.parameters()["dense.kernel"], none.parameters()["dense.bias"]
    np.testing.assert_allclose(none.predict(x), x.astype(np.float64) @ kernel + bias, rtol=1e-6)
    assert np.array_equal(none.predict(x), linear.predict(x))


# ---------------------------------------------------------------- a loss that stops being finite

RAW_SCORES = "model m {\n    input x: [4]\n    dense(3)\n}\ntrain m {\n    loss = sparse_categorical_crossentropy\n}\n"


def _first_fit_error(text: str, x: np.ndarray, y: np.ndarray) -> str:
    model = nnd.loads(text)
    with pytest.warns(nnd.NndWarning) if "dense(3)" in text else contextlib.nullcontext():
        with pytest.raises(NndError) as caught:
            model.fit(x, y, epochs=1, verbose=0)
    return str(caught.value)


def test_nan_at_the_first_step_points_at_the_missing_softmax_not_the_learning_rate():
    # all-zero inputs give all-zero scores, which a probability loss normalizes by their sum, 0
    message = _first_fit_error(RAW_SCORES, np.zeros((8, 4), np.float32), np.zeros(8, np.int64))
    assert message == ("error: the loss became nan at step 1, before any update, so not through the learning "
                       "rate; most likely: sparse_categorical_crossentropy reads probabilities, but output 'output' "
                       "has no activation at its end (raw scores) (end the model with activation=softmax, or set "
                       "from_logits=true for raw scores)")


def test_inf_at_the_first_step_without_a_loss_mismatch_points_at_the_data():
    text = "model m {\n    input x: [4]\n    dense(1)\n}\ntrain m {\n    loss = mse\n}\n"
    message = _first_fit_error(text, np.full((8, 4), 1e20, np.float32), np.zeros(8))
    assert message == ("error: the loss became inf at step 1, before any update, so not through the learning "
                       "rate; check the inputs and targets for extreme values")


def test_a_later_divergence_blames_the_learning_rate_and_still_names_the_loss_mismatch():
    model = nnd.loads(RAW_SCORES)
    message = divergence_message(float("nan"), 7, model.spec, model.graph, np.dtype(np.float16))
    assert message == ("the loss became nan at step 7; lower the learning rate (--lr, or lr= in compile()) or check "
                       "the data for extreme values; in float16, values may overflow: try without mixed precision; "
                       "also, sparse_categorical_crossentropy reads probabilities, but output 'output' has no "
                       "activation at its end (raw scores) (end the model with activation=softmax, or set "
                       "from_logits=true for raw scores)")


@pytest.mark.parametrize("setting, default", [
    ("optimizer = adam(lr=0.01, clipnorm=none, global_clipnorm=none, clipvalue=none, weight_decay=none)",
     "optimizer = adam(lr=0.01)"),
    ("lr_schedule = warmup(10, decay_steps=none)", "lr_schedule = warmup(10)"),
])
def test_a_train_argument_whose_keras_default_is_none_takes_none_as_that_default(setting, default):
    def spec(text: str):
        found = nnd.loads(TRAIN.format(setting=text)).spec
        return found.optimizer, found.lr_schedule

    assert spec(setting) == spec(default)


def test_compile_takes_pythons_none_for_an_optimizer_argument_whose_keras_default_is_none():
    model = nnd.loads(TRAIN.format(setting="")).compile(optimizer="sgd", lr=0.1, clipnorm=None)
    assert model.spec.optimizer == nnd.Configured("sgd", {"lr": 0.1})
