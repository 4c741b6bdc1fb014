"""Bad programs and the exact diagnostics they must produce, as a user sees them.

Each case is one program and the full rendered text of `NndError`: `FILE:LINE:COL: error: MESSAGE`,
the quoted source line, the caret line and the notes. Changing a message means changing its line here,
on purpose.
"""
from __future__ import annotations

import pytest

from nnd.compiler.args import ACTIVATIONS, INITIALIZERS
from nnd.compiler.diagnostics import NndError
from nnd.compiler.frontend import compile_file, compile_text
from nnd.compiler.layers import LAYERS
from nnd.compiler.training import LOSSES, METRICS, NAMED_DATASETS, OPTIMIZERS, SETTINGS


def lines(*parts: str) -> str:
    return "\n".join(parts)


def program(*parts: str) -> str:
    return "\n".join(parts) + "\n"


def render(source: str, **options) -> str:
    with pytest.raises(NndError) as info:
        compile_text(source, name="bad.nnd", **options)
    return info.value.render()


# A model around one statement, for the cases about a single layer call: the statement is line 3.
def one(statement: str, shape: str = "[4]") -> str:
    return program("model m {", f"    input x: {shape}", f"    {statement}", "}")


def train(*settings: str) -> str:
    return program("model m {", "    input x: [4]", "    dense(3)", "}", "train m {",
                   *(f"    {s}" for s in settings), "}")


# The lists of valid names in notes grow with the catalog, so they are spelled from it; the rest is literal.
def valid(names) -> str:
    return "  note: valid: " + ", ".join(names)


DENSE_ARGS = valid(a.name for a in LAYERS["dense"].args)

CASES = [
    # ---------------------------------------------------------------- syntax
    ("syntax_missing_paren",
     program("model m {", "    input x: [4]", "    dense(3", "}"),
     lines("bad.nnd:4:1: error: expected ')' or ',' but found '}'",
           "    }",
           "    ^")),
    ("syntax_end_of_input",
     program("model m {", "    input x: [4]", "    dense(3)"),
     lines("bad.nnd:3:13: error: unexpected end of input, expected '}'",
           "        dense(3)",
           "                ^",
           "  note: the '{' opened at 1:9 is never closed")),
    ("syntax_end_of_input_in_call",
     program("model m {", "    input x: [4]", "    dense(3, 4"),
     lines("bad.nnd:3:15: error: unexpected end of input, expected ')' or ','",
           "        dense(3, 4",
           "                  ^",
           "  note: the '(' opened at 3:10 is never closed")),
    ("syntax_stray_character",
     program("model m {", "    input x: [4] $", "    dense(3)", "}"),
     lines("bad.nnd:2:18: error: unexpected character '$'",
           "        input x: [4] $",
           "                     ^")),
    ("syntax_unterminated_block",
     program("block b(x) {", "    relu(x)", "", "model m {", "    input x: [4]", "}"),
     lines("bad.nnd:4:1: error: expected '}' but found keyword 'model'",
           "    model m {",
           "    ^~~~~")),
    ("syntax_missing_model_name",
     program("model {", "    input x: [4]", "}"),
     lines("bad.nnd:1:7: error: expected a name but found '{'",
           "    model {",
           "          ^")),
    ("syntax_unterminated_string",
     program('import "lib.nnd'),
     lines("bad.nnd:1:8: error: unterminated string: a string must end with '\"' on the same line",
           '    import "lib.nnd',
           "           ^")),

    # ---------------------------------------------------------------- names
    ("unknown_layer",
     one("x -> dense(3) -> bogus_layer()"),
     lines("bad.nnd:3:22: error: unknown layer 'bogus_layer'",
           "        x -> dense(3) -> bogus_layer()",
           "                         ^~~~~~~~~~~",
           "  note: see `nnd layers` for the catalog")),
    ("unknown_layer_suggestion",
     one("x -> dence(3)"),
     lines("bad.nnd:3:10: error: unknown layer 'dence'; did you mean 'dense'?",
           "        x -> dence(3)",
           "             ^~~~~")),
    ("undefined_value",
     one("y -> dense(3)"),
     lines("bad.nnd:3:5: error: undefined value 'y'",
           "        y -> dense(3)",
           "        ^")),
    ("undefined_value_suggestion",
     program("model m {", "    input image: [4]", "    imag -> dense(3)", "}"),
     lines("bad.nnd:3:5: error: undefined value 'imag'; did you mean 'image'?",
           "        imag -> dense(3)",
           "        ^~~~")),
    ("undefined_block_parameter_suggestion",
     program("block b(x, chanels) { dense(channels) }", "model m {", "    input x: [4]", "    b(x, 3)", "}"),
     lines("bad.nnd:1:29: error: undefined value 'channels'; did you mean 'chanels'?",
           "    block b(x, chanels) { dense(channels) }",
           "                                ^~~~~~~~",
           "  note: dense argument 'units' expects a positive int",
           "  note: in block 'b' called at bad.nnd:4:5")),
    ("layer_used_as_value",
     one("output relu"),
     lines("bad.nnd:3:12: error: 'relu' is a layer, not a value",
           "        output relu",
           "               ^~~~",
           "  note: call it: x -> relu(...)")),
    ("duplicate_input",
     program("model m {", "    input x: [4]", "    input x: [5]", "    dense(3)", "}"),
     lines("bad.nnd:3:5: error: duplicate name 'x'",
           "        input x: [5]",
           "        ^~~~~~~~~~~~",
           "  note: each input needs a name of its own")),
    ("duplicate_block",
     program("block b(x) { relu(x) }", "block b(x, n) { dense(n) }", "model m {", "    input x: [4]", "    b(3)", "}"),
     lines("bad.nnd:2:7: error: duplicate block 'b'",
           "    block b(x, n) { dense(n) }",
           "          ^",
           "  note: 'b' is first defined as a block at bad.nnd:1:7")),
    ("duplicate_model",
     program("model m {", "    input x: [4]", "}", "model m {", "    input y: [4]", "}"),
     lines("bad.nnd:4:7: error: duplicate model 'm'",
           "    model m {",
           "          ^",
           "  note: 'm' is first defined as a model at bad.nnd:1:7")),
    ("duplicate_constant",
     program("const w = 3", 'const w = "wide"', "model m {", "    input x: [4]", "    dense(w)", "}"),
     lines("bad.nnd:2:7: error: duplicate constant 'w'",
           '    const w = "wide"',
           "          ^",
           "  note: 'w' is first defined as a constant at bad.nnd:1:7")),
    ("constant_named_like_block",
     program("block b(x, n) { dense(n) }", "const b = 3", "model m {", "    input x: [4]", "    dense(b)", "}"),
     lines("bad.nnd:2:7: error: duplicate constant 'b'",
           "    const b = 3",
           "          ^",
           "  note: 'b' is first defined as a block at bad.nnd:1:7")),
    ("duplicate_layer_name",
     program("model m {", "    input x: [4]", "    dense(3, name=head)", "    dense(3, name=head)", "}"),
     lines("bad.nnd:4:14: error: duplicate layer name 'head'",
           "        dense(3, name=head)",
           "                 ^~~~~~~~~",
           "  note: 'head' already names the layer at bad.nnd:3:5")),
    ("duplicate_output_name",
     program("model m {", "    input x: [4]", "    output y = x -> dense(3)", "    output y = x -> dense(2)", "}"),
     lines("bad.nnd:4:5: error: duplicate output name 'y'",
           "        output y = x -> dense(2)",
           "        ^~~~~~~~~~~~~~~~~~~~~~~~",
           "  note: 'y' is first declared at bad.nnd:3:5")),
    ("unknown_keyword_suggestion",
     one("dense(3, activaton=relu)"),
     lines("bad.nnd:3:14: error: dense has no argument 'activaton'; did you mean 'activation'?",
           "        dense(3, activaton=relu)",
           "                 ^~~~~~~~~~~~~~",
           DENSE_ARGS)),
    ("unknown_activation_suggestion",
     one("dense(3, activation=rellu)"),
     lines("bad.nnd:3:25: error: dense argument 'activation': unknown activation 'rellu'; did you mean 'relu'?",
           "        dense(3, activation=rellu)",
           "                            ^~~~~",
           valid(ACTIVATIONS))),
    ("unknown_initializer_suggestion",
     one("dense(3, kernel_initializer=he_normall)"),
     lines("bad.nnd:3:33: error: dense argument 'kernel_initializer': unknown initializer 'he_normall';"
           " did you mean 'he_normal'?",
           "        dense(3, kernel_initializer=he_normall)",
           "                                    ^~~~~~~~~~",
           valid(INITIALIZERS))),
    ("initializer_argument_suggestion",
     one("dense(3, kernel_initializer=random_normal(stdev=0.1))"),
     lines("bad.nnd:3:33: error: dense argument 'kernel_initializer': random_normal has no argument 'stdev';"
           " did you mean 'stddev'?",
           "        dense(3, kernel_initializer=random_normal(stdev=0.1))",
           "                                    ^~~~~~~~~~~~~",
           "  note: valid: mean, stddev")),
    ("regularizer_without_factor",
     one("dense(3, kernel_regularizer=l2)"),
     lines("bad.nnd:3:33: error: dense argument 'kernel_regularizer': l2 needs parentheses and a factor",
           "        dense(3, kernel_regularizer=l2)",
           "                                    ^~",
           "  note: write l2(0.01)")),
    ("regularizer_extra_argument",
     one("dense(3, kernel_regularizer=l2(0.01, 0.02))"),
     lines("bad.nnd:3:33: error: dense argument 'kernel_regularizer': l2 takes at most 1 positional argument, got 2",
           "        dense(3, kernel_regularizer=l2(0.01, 0.02))",
           "                                    ^~")),
    ("initializer_as_regularizer",
     one("dense(3, kernel_regularizer=he_normal)"),
     lines("bad.nnd:3:33: error: dense argument 'kernel_regularizer': expected a regularizer: l1(F), l2(F) or"
           " l1_l2(l1=F, l2=F), got the name 'he_normal'",
           "        dense(3, kernel_regularizer=he_normal)",
           "                                    ^~~~~~~~~")),

    # ---------------------------------------------------------------- arguments
    ("wrong_argument_type",
     one('conv2d("a", 3)', "[8, 8, 1]"),
     lines("bad.nnd:3:12: error: conv2d argument 'filters': expected an int, got a string (\"a\")",
           '        conv2d("a", 3)',
           "               ^~~")),
    ("dropout_rate_out_of_range",
     one("dropout(1.5)"),
     lines("bad.nnd:3:13: error: dropout argument 'rate': must be in [0, 1), got 1.5",
           "        dropout(1.5)",
           "                ^~~")),
    ("conv_zero_filters",
     one("conv2d(0, 3)", "[8, 8, 1]"),
     lines("bad.nnd:3:12: error: conv2d argument 'filters': must be at least 1, got 0",
           "        conv2d(0, 3)",
           "               ^")),
    ("missing_required_argument",
     one("dense()"),
     lines("bad.nnd:3:5: error: dense needs argument 'units' (a positive int)",
           "        dense()",
           "        ^~~~~")),
    ("too_many_positional_arguments",
     one("dense(3, relu, true, glorot_uniform, zeros, none, none, 5)"),
     lines("bad.nnd:3:61: error: dense takes at most 7 positional arguments besides its input, got 8",
           "        dense(3, relu, true, glorot_uniform, zeros, none, none, 5)",
           "                                                                ^")),
    ("argument_to_layer_without_options",
     one("relu(0.5)"),
     lines("bad.nnd:3:10: error: relu takes no arguments besides its input",
           "        relu(0.5)",
           "             ^~~")),
    ("tensor_after_config_arguments",
     one("dense(3, x)"),
     lines("bad.nnd:3:14: error: tensor inputs of dense must come before its other arguments",
           "        dense(3, x)",
           "                 ^")),
    ("positional_after_keyword",
     program("model m {", "    input x: [4]", "    input y: [4]", "    concat(x, axis=1, y)", "}"),
     lines("bad.nnd:4:23: error: positional argument after keyword argument",
           "        concat(x, axis=1, y)",
           "                          ^")),
    ("argument_given_twice",
     one("dense(3, units=4)"),
     lines("bad.nnd:3:14: error: argument 'units' of dense given twice",
           "        dense(3, units=4)",
           "                 ^~~~~~~")),
    ("keyword_given_twice",
     one("dense(units=3, units=4)"),
     lines("bad.nnd:3:20: error: argument 'units' of dense given twice",
           "        dense(units=3, units=4)",
           "                       ^~~~~~~")),
    ("option_word_in_number_position",
     one("conv2d(8, same)", "[8, 8, 1]"),
     lines("bad.nnd:3:15: error: conv2d argument 'kernel_size': expected an int, got the name 'same'",
           "        conv2d(8, same)",
           "                  ^~~~")),

    # ---------------------------------------------------------------- shapes
    ("dense_needs_flatten",
     one("dense(3)", "[5, 5, 64]"),
     lines("bad.nnd:3:5: error: dense expects a flat input, got f32[N,5,5,64]",
           "        dense(3)",
           "        ^~~~~",
           "  note: insert flatten() before this layer")),
    ("add_shape_mismatch",
     program("model m {", "    input x: [4]", "    input y: [5]", "    output x + y", "}"),
     lines("bad.nnd:4:12: error: cannot add f32[N,4] and f32[N,5]: the shapes differ",
           "        output x + y",
           "               ^~~~~")),
    ("pool_larger_than_input",
     one("maxpool2d(8)", "[4, 4, 1]"),
     lines("bad.nnd:3:5: error: maxpool2d window 8x8 is larger than its 4x4 input",
           "        maxpool2d(8)",
           "        ^~~~~~~~~",
           "  note: use padding=same or a smaller window")),
    ("conv_kernel_larger_than_input",
     one("conv2d(8, 5)", "[4, 4, 1]"),
     lines("bad.nnd:3:5: error: conv2d window 5x5 is larger than its 4x4 input",
           "        conv2d(8, 5)",
           "        ^~~~~~",
           "  note: use padding=same or a smaller window")),
    ("concat_mismatched_axes",
     program("model m {", "    input x: [4, 4, 2]", "    input y: [5, 4, 2]", "    concat(x, y)", "}"),
     lines("bad.nnd:4:5: error: concat along axis -1 needs equal sizes on the other axes,"
           " got f32[N,4,4,2] and f32[N,5,4,2]",
           "        concat(x, y)",
           "        ^~~~~~")),
    ("reshape_element_count",
     one("reshape([5, 5])", "[4, 4, 2]"),
     lines("bad.nnd:3:5: error: cannot reshape f32[N,4,4,2] to (5, 5): 32 elements per sample, the target holds 25",
           "        reshape([5, 5])",
           "        ^~~~~~~")),
    ("global_pool_on_vectors",
     one("global_avgpool2d()", "[16]"),
     lines("bad.nnd:3:5: error: global_avgpool2d expects an image batch (N, height, width, channels), got f32[N,16]",
           "        global_avgpool2d()",
           "        ^~~~~~~~~~~~~~~~",
           "  note: reshape the input to (height, width, channels)")),
    ("softmax_on_batch_axis",
     one("x -> softmax(axis=0)"),
     lines("bad.nnd:3:10: error: axis 0 is the batch axis; choose another",
           "        x -> softmax(axis=0)",
           "             ^~~~~~~")),

    # ---------------------------------------------------------------- blocks
    ("block_too_many_arguments",
     program("block b(x, n) { dense(n) }", "model m {", "    input x: [4]", "    b(x, 3, 4)", "}"),
     lines("bad.nnd:4:5: error: block 'b' takes 2 arguments, got 3",
           "        b(x, 3, 4)",
           "        ^",
           "  note: block b(x, n) is defined at bad.nnd:1:7")),
    ("block_implicit_first_argument",
     program("block b(n) { dense(n) }", "model m {", "    input x: [4]", "    b(3)", "}"),
     lines("bad.nnd:4:5: error: block 'b' takes 1 argument, got 2",
           "        b(3)",
           "        ^",
           "  note: block b(n) is defined at bad.nnd:1:7",
           "  note: the running value of the sequential form is its first argument")),
    ("block_missing_argument",
     program("block b(x, n) { dense(n) }", "model m {", "    input x: [4]", "    b(x)", "}"),
     lines("bad.nnd:4:5: error: block 'b' needs argument 'n'",
           "        b(x)",
           "        ^",
           "  note: block b(x, n) is defined at bad.nnd:1:7")),
    ("block_unknown_parameter",
     program("block b(x, units=4) { dense(units) }", "model m {", "    input x: [4]", "    b(x, unit=3)", "}"),
     lines("bad.nnd:4:10: error: block 'b' has no parameter 'unit'; did you mean 'units'?",
           "        b(x, unit=3)",
           "             ^~~~~~",
           "  note: block b(x, units=...) is defined at bad.nnd:1:7")),
    ("block_argument_given_twice",
     program("block b(x, n) { dense(n) }", "model m {", "    input x: [4]", "    b(x, n=3, x=x)", "}"),
     lines("bad.nnd:4:15: error: argument 'x' of block 'b' given twice",
           "        b(x, n=3, x=x)",
           "                  ^~~")),
    ("block_recursion_direct",
     program("block b(x) { b(x) }", "model m {", "    input x: [4]", "    b(x)", "}"),
     lines("bad.nnd:1:14: error: block 'b' calls itself (b -> b); recursion is not allowed",
           "    block b(x) { b(x) }",
           "                 ^",
           "  note: use repeat N { ... } to apply a block several times",
           "  note: in block 'b' called at bad.nnd:4:5")),
    ("block_recursion_mutual",
     program("block a(x) { b(x) }", "block b(x) { a(x) }", "model m {", "    input x: [4]", "    a(x)", "}"),
     lines("bad.nnd:2:14: error: block 'a' calls itself (a -> b -> a); recursion is not allowed",
           "    block b(x) { a(x) }",
           "                 ^",
           "  note: use repeat N { ... } to apply a block several times",
           "  note: in block 'b' called at bad.nnd:1:14",
           "  note: in block 'a' called at bad.nnd:5:5")),
    ("error_inside_nested_blocks",
     program("block inner(x) { dense(0) }", "block outer(x) { inner(x) }", "model m {", "    input x: [4]",
             "    outer(x)", "}"),
     lines("bad.nnd:1:24: error: dense argument 'units': must be at least 1, got 0",
           "    block inner(x) { dense(0) }",
           "                           ^",
           "  note: in block 'inner' called at bad.nnd:2:18",
           "  note: in block 'outer' called at bad.nnd:5:5")),
    ("input_inside_block",
     program("block b(x) {", "    input y: [3]", "    relu(x)", "}", "model m {", "    input x: [4]", "    b(x)", "}"),
     lines("bad.nnd:2:5: error: input is only allowed in a model; a block takes its inputs as parameters",
           "        input y: [3]",
           "        ^~~~~~~~~~~~",
           "  note: in block 'b' called at bad.nnd:7:5")),
    ("output_inside_block",
     program("block b(x) {", "    output relu(x)", "}", "model m {", "    input x: [4]", "    b(x)", "}"),
     lines("bad.nnd:2:5: error: output is only allowed in a model; a block ends with return",
           "        output relu(x)",
           "        ^~~~~~~~~~~~~~",
           "  note: in block 'b' called at bad.nnd:6:5")),
    ("return_in_model",
     one("return x"),
     lines("bad.nnd:3:5: error: return is only allowed inside a block",
           "        return x",
           "        ^~~~~~~~",
           "  note: a model names its results with: output NAME = VALUE")),
    ("statement_after_return",
     program("block b(x) {", "    return relu(x)", "    dense(3)", "}", "model m {", "    input x: [4]", "    b(x)", "}"),
     lines("bad.nnd:3:5: error: statement after return is never reached",
           "        dense(3)",
           "        ^~~~~~~~",
           "  note: in block 'b' called at bad.nnd:7:5")),
    ("block_named_like_layer",
     program("block dense(x) { relu(x) }", "model m {", "    input x: [4]", "}"),
     lines("bad.nnd:1:7: error: block 'dense' has the name of a built-in layer",
           "    block dense(x) { relu(x) }",
           "          ^~~~~",
           "  note: choose another name")),

    # ---------------------------------------------------------------- train section
    ("train_unknown_model",
     program("model mnist {", "    input x: [4]", "}", "train mnst {", "    epochs = 1", "}"),
     lines("bad.nnd:4:7: error: train section names unknown model 'mnst'; did you mean 'mnist'?",
           "    train mnst {",
           "          ^~~~")),
    ("train_unknown_optimizer",
     train("optimizer = adma(lr=0.1)"),
     lines("bad.nnd:6:17: error: unknown optimizer 'adma'; did you mean 'adam'?",
           "        optimizer = adma(lr=0.1)",
           "                    ^~~~",
           valid(OPTIMIZERS))),
    ("train_unknown_loss",
     train("loss = hinge"),
     lines("bad.nnd:6:12: error: unknown loss 'hinge'",
           "        loss = hinge",
           "               ^~~~~",
           valid(LOSSES))),
    ("train_unknown_metric",
     train("metrics = [accuracy, precison]"),
     lines("bad.nnd:6:26: error: unknown metric 'precison'",
           "        metrics = [accuracy, precison]",
           "                             ^~~~~~~~",
           valid(METRICS))),
    ("train_unknown_setting",
     train("epoch = 3"),
     lines("bad.nnd:6:13: error: unknown train setting 'epoch'; did you mean 'epochs'?",
           "        epoch = 3",
           "                ^",
           valid(SETTINGS))),
    ("train_zero_epochs",
     train("epochs = 0"),
     lines("bad.nnd:6:14: error: epochs: must be at least 1, got 0",
           "        epochs = 0",
           "                 ^")),
    ("train_validation_split_one",
     train("validation_split = 1.0"),
     lines("bad.nnd:6:24: error: validation_split: must be in [0, 1), got 1",
           "        validation_split = 1.0",
           "                           ^~~")),
    ("train_unknown_dataset",
     train("data = fashion_mnst"),
     lines("bad.nnd:6:12: error: unknown dataset 'fashion_mnst'; did you mean 'fashion_mnist'?",
           "        data = fashion_mnst",
           "               ^~~~~~~~~~~~",
           f"  note: named datasets: {', '.join(NAMED_DATASETS)}; or give a file path in quotes,"
           ' such as "data.npz"')),
    ("train_setting_given_twice",
     train("epochs = 3", "epochs = 4"),
     lines("bad.nnd:7:5: error: setting 'epochs' given twice",
           "        epochs = 4",
           "        ^~~~~~",
           "  note: first given at bad.nnd:6:5")),
    ("train_undefined_value",
     train("optimizer = adam(lr=rate)"),
     lines("bad.nnd:6:25: error: undefined value 'rate'",
           "        optimizer = adam(lr=rate)",
           "                            ^~~~",
           "  note: adam argument 'lr' expects a positive number")),
    ("train_unknown_optimizer_argument",
     train("optimizer = sgd(lr=0.1, momentun=0.9)"),
     lines("bad.nnd:6:17: error: sgd has no argument 'momentun'; did you mean 'momentum'?",
           "        optimizer = sgd(lr=0.1, momentun=0.9)",
           "                    ^~~",
           valid(OPTIMIZERS["sgd"]))),

    # ---------------------------------------------------------------- constants, repeat, inputs
    ("const_division_by_zero",
     program("const n = 4 / 0", "model m {", "    input x: [4]", "    dense(n, activation=relu)", "    x -> dense(n)",
             "}"),
     lines("bad.nnd:1:11: error: division by zero",
           "    const n = 4 / 0",
           "              ^~~~~")),
    ("undefined_constant",
     program("const a = b * 2", "model m {", "    input x: [4]", "    dense(a)", "}"),
     lines("bad.nnd:1:11: error: undefined value 'b'",
           "    const a = b * 2",
           "              ^")),
    ("undefined_constant_suggestion",
     program("const width = 16", "model m {", "    input x: [4]", "    dense(widht)", "}"),
     lines("bad.nnd:4:11: error: undefined value 'widht'; did you mean 'width'?",
           "        dense(widht)",
           "              ^~~~~",
           "  note: dense argument 'units' expects a positive int")),
    ("constant_reassigned",
     program("const w = 3", "model m {", "    input x: [4]", "    w = x -> dense(3)", "}"),
     lines("bad.nnd:4:5: error: 'w' is a constant and cannot be reassigned",
           "        w = x -> dense(3)",
           "        ^~~~~~~~~~~~~~~~~")),
    ("repeat_negative_count",
     one("repeat -1 { dense(3) }"),
     lines("bad.nnd:3:12: error: repeat count must be a non-negative int, got an int (-1)",
           "        repeat -1 { dense(3) }",
           "               ^~")),
    ("repeat_undefined_count",
     one("repeat n { dense(3) }"),
     lines("bad.nnd:3:12: error: undefined value 'n'",
           "        repeat n { dense(3) }",
           "               ^")),
    ("repeat_index_reaches_bad_value",
     one("repeat 3 as i { dense(i) }"),
     lines("bad.nnd:3:27: error: dense argument 'units': must be at least 1, got 0",
           "        repeat 3 as i { dense(i) }",
           "                              ^")),
    ("unknown_dtype_no_cascade",
     program("model m {", "    input x: f16[4]", "    dense(3)", "}"),
     lines("bad.nnd:2:5: error: unknown dtype 'f16'; did you mean 'f64'?",
           "        input x: f16[4]",
           "        ^~~~~~~~~~~~~~~",
           "  note: valid: float32 (f32), float64 (f64), int32 (i32), int64 (i64), bool")),
    ("zero_input_dimension",
     program("model m {", "    input x: [0, 3]", "    dense(3)", "}"),
     lines("bad.nnd:2:15: error: input dimensions must be positive ints, got an int (0)",
           "        input x: [0, 3]",
           "                  ^")),
    ("model_without_input",
     program("model m {", "    dense(0)", "}"),
     lines("bad.nnd:1:7: error: model 'm' declares no input",
           "    model m {",
           "          ^",
           "  note: add a line such as: input image: [28, 28, 1]",
           "bad.nnd:2:11: error: dense argument 'units': must be at least 1, got 0",
           "        dense(0)",
           "              ^")),

    # ---------------------------------------------------------------- several errors in one run
    ("several_independent_errors",
     program("model m {", "    input x: [4]", "    h = y -> dense(3) -> dense(0)", "    dense(3, activation=rellu)",
             "    dropout(1.5)", "}", "train m {", "    epochs = 0", "}"),
     lines("bad.nnd:3:9: error: undefined value 'y'",
           "        h = y -> dense(3) -> dense(0)",
           "            ^",
           "bad.nnd:3:32: error: dense argument 'units': must be at least 1, got 0",
           "        h = y -> dense(3) -> dense(0)",
           "                                   ^",
           "bad.nnd:4:25: error: dense argument 'activation': unknown activation 'rellu'; did you mean 'relu'?",
           "        dense(3, activation=rellu)",
           "                            ^~~~~",
           valid(ACTIVATIONS),
           "bad.nnd:5:13: error: dropout argument 'rate': must be in [0, 1), got 1.5",
           "        dropout(1.5)",
           "                ^~~",
           "bad.nnd:8:14: error: epochs: must be at least 1, got 0",
           "        epochs = 0",
           "                 ^")),
]


def test_the_table_is_large_and_unique():
    names = [name for name, _, _ in CASES]
    assert len(names) >= 40
    assert len(set(names)) == len(names)


@pytest.mark.parametrize("source, expected", [(s, e) for _, s, e in CASES], ids=[n for n, _, _ in CASES])
def test_diagnostic(source, expected):
    assert render(source) == expected


# ---------------------------------------------------------------- imports (files on disk)

def test_missing_import(tmp_path):
    source = program('import "nope.nnd"', "model m {", "    input x: [4]", "}")
    assert render(source, base_dir=tmp_path) == lines(
        'bad.nnd:1:8: error: cannot import "nope.nnd": no such file',
        '    import "nope.nnd"',
        "           ^~~~~~~~~~",
        f"  note: the path resolves to {(tmp_path / 'nope.nnd').resolve()}")


def test_import_of_a_directory(tmp_path):
    (tmp_path / "lib").mkdir()
    source = program('import "lib"', "model m {", "    input x: [4]", "}")
    assert render(source, base_dir=tmp_path) == lines(
        'bad.nnd:1:8: error: cannot import "lib": it is a directory',
        '    import "lib"',
        "           ^~~~~",
        f"  note: the path resolves to {(tmp_path / 'lib').resolve()}")


def test_import_cycle(tmp_path, monkeypatch):
    (tmp_path / "a.nnd").write_text(program('import "b.nnd"', "model m {", "    input x: [4]", "}"))
    (tmp_path / "b.nnd").write_text(program('import "a.nnd"', "block blk(x) { relu(x) }"))
    monkeypatch.chdir(tmp_path)
    with pytest.raises(NndError) as info:
        compile_file("a.nnd")
    assert info.value.render() == lines(
        "b.nnd:1:8: error: import cycle: a.nnd -> b.nnd -> a.nnd",
        '    import "a.nnd"',
        "           ^~~~~~~")


def test_error_inside_an_imported_block(tmp_path, monkeypatch):
    (tmp_path / "lib").mkdir()
    (tmp_path / "lib" / "blocks.nnd").write_text(
        program("block head(x, n) {", "    x -> dense(n, activation=softmx)", "}"))
    (tmp_path / "net.nnd").write_text(program('import "lib/blocks.nnd"', "model m {", "    input x: [4]",
                                              "    head(10)", "}"))
    monkeypatch.chdir(tmp_path)
    with pytest.raises(NndError) as info:
        compile_file("net.nnd")
    assert info.value.render() == lines(
        "lib/blocks.nnd:2:30: error: dense argument 'activation': unknown activation 'softmx';"
        " did you mean 'softmax'?",
        "        x -> dense(n, activation=softmx)",
        "                                 ^~~~~~",
        valid(ACTIVATIONS),
        "  note: in block 'head' called at net.nnd:4:5")


def test_local_block_shadowing_an_imported_one(tmp_path):
    """The duplicate is reported once; calls written for either definition add nothing."""
    (tmp_path / "blocks.nnd").write_text(program("block head(x, n) { dense(n) }"))
    source = program('import "blocks.nnd"', "block head(x) { relu(x) }", "model m {", "    input x: [4]",
                     "    head()", "}")
    assert render(source, base_dir=tmp_path) == lines(
        "bad.nnd:2:7: error: duplicate block 'head'",
        "    block head(x) { relu(x) }",
        "          ^~~~",
        f"  note: 'head' is first defined as a block at {tmp_path}/blocks.nnd:1:7")


def test_syntax_error_in_an_imported_file(tmp_path):
    (tmp_path / "broken.nnd").write_text(program("block b(x) {", "    relu(x"))
    source = program('import "broken.nnd"', "model m {", "    input x: [4]", "}")
    assert render(source, base_dir=tmp_path) == lines(
        f"{tmp_path}/broken.nnd:2:11: error: unexpected end of input, expected ')' or ','",
        "        relu(x",
        "              ^",
        "  note: the '(' opened at 2:9 is never closed")


def test_a_mistake_in_a_block_is_reported_at_each_call():
    """A block called twice reports its mistake once per call site, each with its own chain."""
    source = program("block b(x) { dense(0) }", "model m {", "    input x: [4]", "    b(x)", "    b(x)", "}")
    rendered = render(source)
    assert rendered.count("error:") == 2
    assert "in block 'b' called at bad.nnd:4:5" in rendered
    assert "in block 'b' called at bad.nnd:5:5" in rendered
