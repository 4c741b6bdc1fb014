"""The front-end commands of the `nnd` CLI: check, summary, compile, graph, layers.

Most tests drive the click app in-process (`CliRunner`; click 8.2+ keeps stderr apart from stdout);
one runs the installed console script in a subprocess, as a user would.
"""
from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest
from click.testing import CliRunner

from nnd.cli import main
from nnd.compiler.frontend import compile_file
from nnd.compiler.ir import print_graph
from nnd.compiler.layers import LAYERS
from nnd.compiler.passes import PASSES

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = sorted(str(p) for p in (ROOT / "examples").glob("*.nnd"))
MNIST = str(ROOT / "examples" / "mnist_cnn.nnd")
TWO_INPUTS = str(ROOT / "examples" / "two_inputs.nnd")

PASS_LIST = ", ".join(PASSES)
MNIST_SHAPES = ["(None, 28, 28, 1)", "(None, 26, 26, 32)", "(None, 13, 13, 32)", "(None, 11, 11, 64)",
                "(None, 5, 5, 64)", "(None, 3, 3, 64)", "(None, 576)", "(None, 64)", "(None, 10)"]


def run(*args: str):
    return CliRunner().invoke(main, list(args))


@pytest.fixture
def bad_file(tmp_path) -> str:
    path = tmp_path / "bad.nnd"
    path.write_text("model m {\n    input x: [4]\n    dense(0)\n    tanh(0.5)\n}\n")
    return str(path)


# ---------------------------------------------------------------- summary

def test_summary_of_the_mnist_cnn():
    result = run("summary", MNIST)
    assert result.exit_code == 0, result.output
    rows = result.stdout.splitlines()
    shapes = [shape for row in rows for shape in MNIST_SHAPES if shape in row]
    assert shapes == MNIST_SHAPES  # one row each, in order
    assert "Total params: 93,322" in result.stdout
    assert "Trainable params: 93,322" in result.stdout
    assert any(row.startswith("conv2d_1 (conv2d)") and "18,496" in row for row in rows)
    assert any(row.startswith("dense_1 (dense)") and row.rstrip().endswith("mnist_cnn.nnd:12") for row in rows)


def _activation_megabytes(text: str, batch: int) -> float:
    match = re.search(rf"Activation memory at batch {batch} \(forward\): ([\d.]+) MB", text)
    assert match, text
    return float(match.group(1))


def test_batch_size_scales_the_activation_memory():
    default = run("summary", MNIST)
    bigger = run("summary", "--batch-size", "64", MNIST)
    assert default.exit_code == bigger.exit_code == 0
    ratio = _activation_megabytes(bigger.stdout, 64) / _activation_megabytes(default.stdout, 32)
    assert ratio == pytest.approx(2.0, rel=0.01)
    # Nothing else in the summary depends on the batch size.
    strip = lambda text: [line for line in text.splitlines() if "Activation memory" not in line]  # noqa: E731
    assert strip(default.stdout) == strip(bigger.stdout)


def test_batch_size_must_be_positive():
    result = run("summary", "--batch-size", "0", MNIST)
    assert result.exit_code == 2
    assert "Traceback" not in result.output


def test_summary_ends_with_the_training_recipe_defaults_included():
    assert run("summary", MNIST).stdout.splitlines()[-2:] == [
        "Training: optimizer adam(lr=0.001); loss sparse_categorical_crossentropy; metrics accuracy",
        "          10 epochs; batch 32; data fashion_mnist; seed 0"]
    two = str(Path(MNIST).parent / "two_inputs.nnd")  # no loss named: each output gets its activation's
    assert run("summary", two).stdout.splitlines()[-2:] == [
        "Training: optimizer adam; loss label: sparse_categorical_crossentropy, score: mse",
        "          1 epoch; batch 32; data (none: give --data); seed 0"]
    assert run("summary", str(Path(MNIST).parent / "vgg_blocks.nnd")).stdout.splitlines()[-1].endswith(
        "augment random_shift(fraction=0.1), random_flip(mode=horizontal); seed 0")
    assert run("summary", str(Path(MNIST).parent / "forecast.nnd")).stdout.splitlines()[-1].endswith(
        "target temperature; seed 0")


def test_summary_of_an_unknown_model():
    result = run("summary", MNIST, "--model", "mnist")
    assert result.exit_code == 1
    assert result.stderr.strip() == "error: no model named 'mnist'; did you mean 'mnist_cnn'? (models: mnist_cnn)"


# ---------------------------------------------------------------- check

def test_check_accepts_every_example_one_by_one():
    for path in EXAMPLES:
        result = run("check", path)
        assert result.exit_code == 0, result.output
        assert result.stdout.startswith(f"{path}: ok (")
        assert result.stderr == ""


def test_check_accepts_several_files_at_once():
    result = run("check", *EXAMPLES)
    assert result.exit_code == 0, result.output
    assert len(result.stdout.splitlines()) == len(EXAMPLES)


def test_check_reports_a_bad_file_on_stderr(bad_file):
    result = run("check", bad_file)
    assert result.exit_code == 1
    assert result.stdout == ""
    assert result.stderr == (
        f"{bad_file}:3:11: error: dense argument 'units': must be at least 1, got 0\n"
        "        dense(0)\n"
        "              ^\n"
        f"{bad_file}:4:10: error: tanh takes no arguments besides its input\n"
        "        tanh(0.5)\n"
        "             ^~~\n")
    assert "Traceback" not in result.output


def test_check_goes_on_after_a_bad_file(bad_file):
    result = run("check", bad_file, MNIST)
    assert result.exit_code == 1
    assert result.stdout == f"{MNIST}: ok (mnist_cnn)\n"
    assert "error: dense argument 'units'" in result.stderr


def test_check_of_a_missing_file(tmp_path):
    missing = str(tmp_path / "nope.nnd")
    result = run("check", missing)
    assert result.exit_code == 1
    assert result.stderr == f'error: cannot read "{missing}": no such file\n'


def test_check_needs_a_file():
    result = run("check")
    assert result.exit_code == 2
    assert "Missing argument" in result.stderr


# ---------------------------------------------------------------- compile

def test_compile_emits_the_ast():
    result = run("compile", "--emit", "ast", MNIST)
    assert result.exit_code == 0, result.output
    assert result.stdout.startswith("Module\n")
    assert "callee: 'conv2d'" in result.stdout


def test_compile_emits_the_ir():
    result = run("compile", "--emit", "ir", TWO_INPUTS)
    assert result.exit_code == 0, result.output
    assert result.stdout == print_graph(compile_file(TWO_INPUTS).graphs["two_inputs"]) + "\n"


def test_compile_ir_is_the_default():
    assert run("compile", TWO_INPUTS).stdout == run("compile", "--emit", "ir", TWO_INPUTS).stdout


def test_compile_emits_the_optimized_graph():
    result = run("compile", "--emit", "optimized", MNIST)
    assert result.exit_code == 0, result.output
    assert result.stdout.startswith("graph mnist_cnn(%image: f32[N,28,28,1]) {")
    assert "output output = " in result.stdout


def test_compile_dumps_after_a_pass():
    result = run("compile", "--emit", "optimized", "--dump-after", "dce", MNIST)
    assert result.exit_code == 0, result.output
    assert result.stdout.startswith("// after dce\ngraph mnist_cnn(")
    assert result.stdout.count("graph mnist_cnn(") == 2  # the dump, then the result


@pytest.mark.parametrize("option", ["--no", "--dump-after"])
def test_compile_rejects_an_unknown_pass(option):
    result = run("compile", "--emit", "optimized", option, "bogus", MNIST)
    assert result.exit_code == 1
    assert result.stdout == ""
    assert result.stderr == f"error: unknown pass 'bogus' (passes: {PASS_LIST})\n"


def test_compile_suggests_a_pass_name():
    result = run("compile", "--emit", "optimized", "--no", "dcee", MNIST)
    assert result.exit_code == 1
    assert result.stderr == f"error: unknown pass 'dcee'; did you mean 'dce'? (passes: {PASS_LIST})\n"


def test_compile_rejects_an_unknown_level():
    result = run("compile", "--emit", "optimized", "-O", "7", MNIST)
    assert result.exit_code == 1
    assert result.stderr == "error: -O7 is not an optimization level; use -O0, -O1 or -O2\n"


def test_compile_writes_to_a_file(tmp_path):
    out = tmp_path / "mnist.ir"
    result = run("compile", MNIST, "-o", str(out))
    assert result.exit_code == 0, result.output
    assert result.stdout == ""
    assert out.read_text() == print_graph(compile_file(MNIST).graphs["mnist_cnn"]) + "\n"


def test_compile_reports_errors_without_a_traceback(bad_file):
    result = run("compile", bad_file)
    assert result.exit_code == 1
    assert "Traceback" not in result.output
    assert result.stderr.startswith(f"{bad_file}:3:11: error:")


# ---------------------------------------------------------------- graph

def test_graph_is_dot_with_shapes():
    result = run("graph", TWO_INPUTS)
    assert result.exit_code == 0, result.output
    lines = result.stdout.strip().splitlines()
    assert lines[0] == 'digraph "two_inputs" {'
    assert lines[-1] == "}"
    body = lines[1:-1]
    node = re.compile(r'^  \w+ \[.*label=".*"\];$')
    edge = re.compile(r'^  \w+ -> \w+ \[label="\((N|\d+)(,\d+)*\)"\];$')
    for line in body:
        assert line.count('"') % 2 == 0, line
        assert node.match(line) or edge.match(line) or line in ("  rankdir=TB;",
                                                                   '  node [shape=box, fontname="Helvetica"];'), line
    # Every edge joins declared nodes.
    declared = {line.split()[0] for line in body if node.match(line)}
    for line in body:
        if edge.match(line):
            source, _, target = line.split()[:3]
            assert source in declared and target in declared, line
    assert 'label="(N,28,28,1)"' in result.stdout
    assert 'label="(N,16)"' in result.stdout  # the concat of the two branches
    assert 'out_label [shape=ellipse, label="label"];' in result.stdout


def test_graph_with_parameters():
    result = run("graph", "--params", MNIST)
    assert result.exit_code == 0, result.output
    assert 'label="conv2d.kernel\\nf32[3,3,1,32]"' in result.stdout


# ---------------------------------------------------------------- layers

def test_layers_lists_the_catalog():
    result = run("layers")
    assert result.exit_code == 0, result.output
    signatures = [line for line in result.stdout.splitlines() if not line.startswith(" ")]
    names = {line.split("(")[0] for line in signatures}
    assert names == {spec.name for spec in LAYERS.values()}
    assert ("dense(units, activation=linear, use_bias=true, kernel_initializer=glorot_uniform, "
            "bias_initializer=zeros, kernel_regularizer=none, bias_regularizer=none, name=none)") in signatures
    assert "dropout(rate, seed=none, name=none)" in signatures


# ---------------------------------------------------------------- the installed script

def test_installed_console_script():
    script = shutil.which("nnd")
    if script is None:
        pytest.skip("the nnd console script is not on PATH")
    done = subprocess.run([script, "summary", "examples/mnist_cnn.nnd"], cwd=ROOT, capture_output=True,
                          text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    for shape in MNIST_SHAPES:
        assert shape in done.stdout
    assert "Total params: 93,322" in done.stdout
    assert done.stderr == ""


def test_layers_lists_other_names_and_pasteable_defaults():
    text = run("layers").stdout
    assert "conv2d(filters, kernel_size|kernel, strides=1," in text
    assert "bidirectional(layer, merge_mode|merge=concat, name=none)" in text
    assert "zero_padding2d(padding=[1, 1], name=none)" in text
    assert "    also called: batch_normalization" in text


def test_dump_after_implies_the_optimized_graph_and_says_when_its_pass_does_not_run():
    result = run("compile", MNIST, "--dump-after", "fuse-epilogues", "-O0")
    assert result.exit_code == 0
    assert result.stderr == ("note: --dump-after fuse-epilogues: the pass does not run at -O0, so nothing is "
                             "dumped after it\n")
    assert run("compile", MNIST, "--dump-after", "dce").stdout.startswith("// after dce\n")


def test_summary_lists_every_result_of_a_return_state_layer_as_keras_does(tmp_path):
    path = tmp_path / "seq2seq.nnd"
    path.write_text("model m {\n    input source: [20, 8]\n    _, h, c = source -> lstm(32, return_state=true)\n"
                    "    output h\n}\n")
    text = run("summary", str(path)).stdout
    assert re.search(r"^lstm \(lstm\) +\[\(None, 32\), \(None, 32\), \(None, 32\)\]", text, re.M), text
