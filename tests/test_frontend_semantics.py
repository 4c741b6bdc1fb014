"""What the front end makes of correct programs: names, blocks, repetition, constants, arithmetic,
several inputs and outputs, the train section, parameter counts and FLOPs, imports.
"""
from __future__ import annotations

import math
from pathlib import Path

import pytest

from nnd.compiler.diagnostics import NndError
from nnd.compiler.frontend import TRAIN, compile_file, compile_text
from nnd.compiler.ir import Graph, Regularizer
from nnd.compiler.summary import summarize
from nnd.compiler.training import Configured

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"


def graph_of(source: str, model: str = "m", **options) -> Graph:
    return compile_text(source, name="test.nnd", **options).graphs[model]


def model(*body: str, inputs: str = "input x: [4]") -> str:
    return "model m {\n    " + inputs + "\n    " + "\n    ".join(body) + "\n}\n"


def layer_names(graph: Graph) -> list[str]:
    return [record.name for record in graph.layers]


def param_shapes(graph: Graph) -> dict[str, tuple]:
    return {name: info.type.shape for name, info in graph.param_info.items()}


def ops(graph: Graph) -> list[str]:
    return [node.op for node in graph.nodes]


def count_params(graph: Graph, trainable: bool | None = None) -> int:
    return sum(math.prod(p.type.shape) for p in graph.param_info.values()
               if trainable is None or p.trainable == trainable)


def output_shape(graph: Graph, name: str = "output") -> tuple:
    return graph.outputs[name].type.shape


# ---------------------------------------------------------------- layer names

def test_layers_are_named_like_keras():
    graph = graph_of(model("conv2d(4, 3)", "conv2d(4, 3)", "maxpool2d(2)", "conv2d(4, 1)", "flatten()",
                           "dense(3)", "dense(2)", inputs="input x: [9, 9, 1]"))
    assert layer_names(graph) == ["conv2d", "conv2d_1", "maxpool2d", "conv2d_2", "flatten", "dense", "dense_1"]
    assert list(graph.params) == ["conv2d.kernel", "conv2d.bias", "conv2d_1.kernel", "conv2d_1.bias",
                                  "conv2d_2.kernel", "conv2d_2.bias", "dense.kernel", "dense.bias",
                                  "dense_1.kernel", "dense_1.bias"]


def test_explicit_names():
    graph = graph_of(model("dense(8, name=encoder)", "dense(4)", "dense(2, name=head)"))
    assert layer_names(graph) == ["encoder", "dense", "head"]
    assert param_shapes(graph)["encoder.kernel"] == (4, 8)
    assert param_shapes(graph)["head.bias"] == (2,)


def test_automatic_names_skip_names_taken_explicitly():
    graph = graph_of(model("dense(3, name=dense_1)", "dense(3)", "dense(3)"))
    assert layer_names(graph) == ["dense_1", "dense", "dense_2"]


def test_arithmetic_layers_are_named_by_their_operation():
    graph = graph_of(model("output x + x * 2"))
    assert layer_names(graph) == ["multiply", "add"]


# ---------------------------------------------------------------- blocks

BLOCK = "block proj(x, units) {\n    x -> dense(units) -> relu()\n}\n"


def test_each_block_call_makes_its_own_parameters():
    graph = graph_of(BLOCK + model("proj(8)", "proj(8)", "proj(2)"))
    assert layer_names(graph) == ["dense", "relu", "dense_1", "relu_1", "dense_2", "relu_2"]
    shapes = param_shapes(graph)
    assert shapes["dense.kernel"] == (4, 8)
    assert shapes["dense_1.kernel"] == (8, 8)
    assert shapes["dense_2.kernel"] == (8, 2)
    assert len({graph.params[name] for name in graph.params}) == 6  # six distinct values
    assert output_shape(graph) == ("N", 2)


def test_block_keyword_and_positional_arguments_with_defaults():
    source = ("block head(x, units, act=relu, scale=2) {\n    x -> dense(units * scale, activation=act)\n}\n"
              + model("a = head(x, 3)", "b = head(x, 3, tanh)", "c = head(x, units=2, scale=5)",
                      "d = x -> head(1, scale=1, act=sigmoid)",
                      "output a", "output b", "output c", "output d"))
    graph = graph_of(source)
    assert {name: v.type.shape for name, v in graph.outputs.items()} == {
        "a": ("N", 6), "b": ("N", 6), "c": ("N", 10), "d": ("N", 1)}
    assert [op for op in ops(graph) if op in ("relu", "tanh", "sigmoid")] == ["relu", "tanh", "relu", "sigmoid"]


def test_block_with_return():
    source = ("block gated(x, units) {\n    g = x -> dense(units, activation=sigmoid)\n"
              "    v = x -> dense(units)\n    return g * v\n}\n" + model("gated(5)"))
    graph = graph_of(source)
    assert output_shape(graph) == ("N", 5)
    assert layer_names(graph) == ["dense", "dense_1", "multiply"]


def test_block_default_may_use_a_constant():
    graph = graph_of("const width = 7\nblock b(x, n=width) { dense(n) }\n" + model("b()"))
    assert output_shape(graph) == ("N", 7)


# ---------------------------------------------------------------- repeat

def test_repeat_index():
    graph = graph_of(model("repeat 3 as i { dense(8 * (i + 1)) }"))
    assert [param_shapes(graph)[f"{name}.kernel"] for name in layer_names(graph)] == [(4, 8), (8, 16), (16, 24)]


def test_repeat_zero_times_is_the_identity():
    graph = graph_of(model("repeat 0 { dense(3) }", "output x"))
    assert graph.layers == [] and output_shape(graph, "x") == ("N", 4)


def test_repeat_rebinding_starts_from_the_named_value():
    source = BLOCK + model("h = x -> dense(3)", "y = x -> dense(7)", "h = repeat 2 { proj(h, 5) }",
                           "output h", "output y")
    graph = graph_of(source)
    shapes = param_shapes(graph)
    assert shapes["dense_2.kernel"] == (3, 5)  # from h, not from y, the latest value
    assert shapes["dense_3.kernel"] == (5, 5)
    assert output_shape(graph, "h") == ("N", 5)
    assert output_shape(graph, "y") == ("N", 7)


def test_tiny_resnet_rebinding_through_residual_blocks():
    graph = compile_file(EXAMPLES / "tiny_resnet.nnd").graphs["tiny_resnet"]
    kinds = [record.kind for record in graph.layers]
    assert kinds.count("add") == 3  # one residual sum per repetition
    adds = [node for node in graph.nodes if node.layer in ("add", "add_1", "add_2")]
    # Each residual adds its block's input: the first to the stem's relu, the next to the previous block.
    assert adds[0].inputs[0].producer.layer == "relu"
    assert adds[1].inputs[0].producer.layer == "relu_1"
    assert adds[2].inputs[0].producer.layer == "relu_2"


# ---------------------------------------------------------------- constants and arithmetic

def test_constants_with_arithmetic_in_dims_and_arguments():
    source = ("const base = 4\nconst side = base * 2 + 1\n"
              "model m {\n    input x: [side, side, base // 4]\n    conv2d(base * 4, base - 1, strides=base // 2)\n"
              "    flatten()\n    dense(base % 3 + 10)\n}\n")
    graph = graph_of(source)
    assert graph.inputs[0].type.shape == ("N", 9, 9, 1)
    assert param_shapes(graph)["conv2d.kernel"] == (3, 3, 1, 16)
    assert graph.layers[0].output.type.shape == ("N", 4, 4, 16)  # (9 - 3) // 2 + 1
    assert output_shape(graph) == ("N", 11)


def test_negative_and_float_constants():
    graph = graph_of("const rate = 1 / 4\nconst neg = -2\n" + model("dropout(rate)", "reshape([neg + 1])"))
    assert output_shape(graph) == ("N", 4)


def test_arithmetic_between_values_and_scalars():
    source = model("output sum = x + y", "output diff = x - y", "output scaled = x * 2",
                   "output shifted = 1 + x", "output halved = x / 2", "output negated = -x",
                   inputs="input x: [4]\n    input y: [4]")
    graph = graph_of(source)
    assert set(graph.outputs) == {"sum", "diff", "scaled", "shifted", "halved", "negated"}
    assert all(v.type.shape == ("N", 4) for v in graph.outputs.values())
    producer = {name: v.producer for name, v in graph.outputs.items()}
    assert producer["sum"].op == "add" and set(producer["sum"].inputs) == set(graph.inputs)
    assert producer["diff"].op == "sub" and list(producer["diff"].inputs) == graph.inputs
    assert producer["scaled"].op == "mul" and producer["scaled"].inputs[1].producer.attr("value") == 2.0
    assert producer["shifted"].op == "add" and producer["shifted"].inputs[0].producer.attr("value") == 1.0
    assert producer["halved"].op == "div"
    assert producer["negated"].op == "mul" and producer["negated"].inputs[1].producer.attr("value") == -1.0


def test_broadcasting_per_channel_scales_over_an_image():
    graph = graph_of(model("output x * y", inputs="input x: [5, 5, 3]\n    input y: [1, 1, 3]"))
    assert output_shape(graph) == ("N", 5, 5, 3)


def test_a_float_from_division_is_no_int():
    source = "const half = 4 / 2\n" + model("dense(half)")
    with pytest.raises(NndError) as info:
        compile_text(source, name="test.nnd")
    assert "dense argument 'units': expected an int, got a float (2.0)" in info.value.render()


# ---------------------------------------------------------------- several inputs and outputs

def test_two_inputs_and_two_outputs():
    graph = compile_file(EXAMPLES / "two_inputs.nnd").graphs["two_inputs"]
    assert [(v.name, v.type.shape) for v in graph.inputs] == [("image", ("N", 28, 28, 1)), ("meta", ("N", 8))]
    assert {name: v.type.shape for name, v in graph.outputs.items()} == {"label": ("N", 10), "score": ("N", 1)}
    concat = next(node for node in graph.nodes if node.op == "concat")
    assert concat.outputs[0].type.shape == ("N", 16)


def test_output_names():
    graph = graph_of(model("h = x -> dense(3)", "output h", "output logits = h -> dense(2)", "output relu(h)"))
    assert list(graph.outputs) == ["h", "logits", "output"]


def test_the_last_value_is_the_output_without_an_output_statement():
    graph = graph_of(model("dense(3)", "x -> dense(5)"))
    assert list(graph.outputs) == ["output"] and output_shape(graph) == ("N", 5)


# ---------------------------------------------------------------- train section

def test_train_section_of_the_mnist_cnn():
    spec = compile_file(EXAMPLES / "mnist_cnn.nnd").trains["mnist_cnn"]
    assert spec.model == "mnist_cnn"
    assert spec.data == "fashion_mnist"
    assert spec.optimizer == Configured("adam", {"lr": 0.001})
    assert spec.loss == Configured("sparse_categorical_crossentropy")
    assert spec.metrics == [Configured("accuracy")]
    assert (spec.epochs, spec.batch_size, spec.validation_split) == (10, 32, 0.0)
    assert spec.callbacks == [] and spec.lr_schedule is None


def test_train_section_of_the_tiny_resnet():
    spec = compile_file(EXAMPLES / "tiny_resnet.nnd").trains["tiny_resnet"]
    assert spec.data is None
    assert spec.optimizer == Configured("sgd", {"lr": 0.05, "momentum": 0.9, "nesterov": True})
    assert spec.metrics == [Configured("accuracy"), Configured("top_k_accuracy", {"k": 3})]
    assert spec.lr_schedule == Configured("cosine_decay", {"decay_steps": 3910})
    assert (spec.epochs, spec.batch_size) == (5, 64)


def test_train_section_of_the_vgg_blocks():
    program = compile_file(EXAMPLES / "vgg_blocks.nnd")
    spec = program.trains["vgg_small"]
    assert spec.callbacks == [Configured("early_stopping", {"monitor": "val_loss", "patience": 2,
                                                            "restore_best": True})]
    assert spec.augment == [Configured("random_shift", {"fraction": 0.1}),
                            Configured("random_flip", {"mode": "horizontal"})]
    assert spec.validation_split == pytest.approx(0.1)
    assert program.graphs["vgg_small"].param_info["dense.kernel"].regularizer == Regularizer(l2=0.0005)


def test_train_settings_read_constants_and_aliases():
    source = ("const rate = 0.01\n" + model("dense(1)")
              + "train m {\n    optimizer = adam(learning_rate=rate)\n    loss = mean_squared_error\n"
                "    epochs = 2 * 3\n    data = \"points.npz\"\n    seed = 7\n    target = y\n}\n")
    spec = compile_text(source, name="test.nnd").trains["m"]
    assert spec.optimizer == Configured("adam", {"lr": 0.01})
    assert spec.loss == Configured("mse")
    assert (spec.epochs, spec.data, spec.seed, spec.target) == (6, "points.npz", 7, "y")


def test_a_model_without_a_train_section_gets_defaults():
    program = compile_file(EXAMPLES / "two_inputs.nnd")
    assert program.trains == {}
    spec = program.train_spec("two_inputs")
    assert spec.optimizer == Configured("adam") and spec.epochs == 1 and spec.batch_size == 32


# ---------------------------------------------------------------- parameters and FLOPs, by hand

def test_tiny_resnet_parameter_count():
    conv = lambda k, cin, cout: k * k * cin * cout + cout  # noqa: E731  kernel and bias
    batchnorm = 4 * 16  # gamma, beta trainable; moving mean and variance not
    stem = conv(3, 3, 16) + batchnorm
    residual = 2 * conv(3, 16, 16) + batchnorm
    head = 16 * 10 + 10
    graph = compile_file(EXAMPLES / "tiny_resnet.nnd").graphs["tiny_resnet"]
    assert count_params(graph) == stem + 3 * residual + head == 14_794
    assert count_params(graph, trainable=False) == 4 * 2 * 16
    summary = summarize(graph)
    assert (summary.total_params, summary.trainable_params) == (14_794, 14_794 - 128)


def test_two_inputs_parameter_count():
    conv = 3 * 3 * 1 * 8 + 8
    meta = 8 * 8 + 8
    joint = (8 + 8) * 32 + 32  # global max pool of 8 channels, concatenated with 8 features
    heads = (32 * 10 + 10) + (32 * 1 + 1)
    graph = compile_file(EXAMPLES / "two_inputs.nnd").graphs["two_inputs"]
    assert count_params(graph) == conv + meta + joint + heads == 1_059


def test_mnist_cnn_parameter_count_matches_keras():
    graph = compile_file(EXAMPLES / "mnist_cnn.nnd").graphs["mnist_cnn"]
    assert count_params(graph) == 93_322


def test_dense_flops_in_the_summary():
    graph = graph_of(model("dense(5)", "dense(3, activation=relu)", inputs="input x: [20]"))
    rows = {row.name: row for row in summarize(graph).rows}
    assert rows["dense"].flops == 2 * 20 * 5 + 5  # multiply-adds, then the bias; a linear activation is free
    assert rows["dense_1"].flops == 2 * 5 * 3 + 3 + 3  # and the relu
    assert rows["dense"].params == 20 * 5 + 5
    assert summarize(graph).flops_per_sample == 205 + 36
    text = summarize(graph).render()
    assert "dense (dense)" in text and " 205 " in text


def test_dense_on_a_sequence_counts_every_step():
    graph = graph_of(model("dense(5, use_bias=false)", inputs="input x: [7, 20]"))
    assert output_shape(graph) == ("N", 7, 5)
    assert summarize(graph).rows[-1].flops == 2 * 20 * 5 * 7


# ---------------------------------------------------------------- modes

def test_dropout_only_in_the_training_graph():
    program = compile_text(model("dropout(0.5)", "dense(2)"), name="test.nnd")
    assert "dropout_mask" not in ops(program.graphs["m"])
    assert "dropout_mask" in ops(program.lower("m", TRAIN))


def test_batchnorm_updates_its_statistics_only_while_training():
    program = compile_text(model("batchnorm()"), name="test.nnd")
    assert program.graphs["m"].state_updates == {}
    train_graph = program.lower("m", TRAIN)
    assert set(train_graph.state_updates) == {"batchnorm.moving_mean", "batchnorm.moving_variance"}


# ---------------------------------------------------------------- imports

def test_imports_bring_blocks_into_scope(tmp_path):
    lib = tmp_path / "lib"
    lib.mkdir()
    (lib / "layers.nnd").write_text('import "basics.nnd"\nblock stack(x, n) { repeat n { proj(8) } }\n')
    (lib / "basics.nnd").write_text(BLOCK + "const hidden = 6\n")
    source = 'import "lib/layers.nnd"\n' + model("stack(2)", "dense(hidden)")
    program = compile_text(source, name="test.nnd", base_dir=tmp_path)
    graph = program.graphs["m"]
    assert layer_names(graph) == ["dense", "relu", "dense_1", "relu_1", "dense_2"]
    assert output_shape(graph) == ("N", 6)
    assert [module.file for module in program.program.modules][-1] == "test.nnd"  # the root comes last


def test_a_file_imported_twice_is_read_once(tmp_path):
    (tmp_path / "a.nnd").write_text(BLOCK)
    (tmp_path / "b.nnd").write_text('import "a.nnd"\n')
    source = 'import "a.nnd"\nimport "b.nnd"\n' + model("proj(3)")
    program = compile_text(source, name="test.nnd", base_dir=tmp_path)
    assert len(program.program.modules) == 3
    assert output_shape(program.graphs["m"]) == ("N", 3)


def test_the_vgg_example_uses_its_imported_library():
    graph = compile_file(EXAMPLES / "vgg_blocks.nnd").graphs["vgg_small"]
    files = {Path(record.span.file).name for record in graph.layers}
    assert files == {"blocks.nnd", "vgg_blocks.nnd"}
    assert [param_shapes(graph)[f"conv2d_{i}.kernel" if i else "conv2d.kernel"][3] for i in range(4)] == \
        [16, 16, 32, 32]
    assert "conv2d.bias" not in graph.params  # use_bias=false
    assert output_shape(graph) == ("N", 10)
