"""Parsing to the syntax tree: every construct, the spans, and the wording of syntax errors."""
from __future__ import annotations

import textwrap

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from nnd.compiler.diagnostics import NndError
from nnd.compiler.parser import parse, parse_text
from nnd.compiler.source import SourceFile, Span
from nnd.compiler.syntax import (
    Arg, Assign, BinaryOp, BlockDef, Bool, Call, ConstDef, ExprStmt, Import, InputDecl, ListExpr, ModelDef,
    Module, Name, Number, Output, Param, Pipe, Repeat, Return, Setting, String, TrainDef, Unary,
)


def items(text: str):
    return parse_text(text, "t.nnd").items


def body(text: str):
    """The statements of a model whose body is `text`."""
    (model,) = items("model m {\n" + text + "\n}")
    return model.body


def expr(text: str):
    """The value of `const c = text`."""
    (const,) = items("const c = " + text)
    return const.value


def call(callee, *args, **kwargs):
    return Call(callee, tuple(Arg(None, a) for a in args) + tuple(Arg(k, v) for k, v in kwargs.items()))


def n(value):
    return Number(value)


def name(text):
    return Name(text)


def error_text(text: str, file: str = "t.nnd") -> str:
    with pytest.raises(NndError) as info:
        parse(SourceFile(file, text))
    assert len(info.value.diagnostics) == 1
    return info.value.render()


# ---------------------------------------------------------------- top level


def test_module_records_its_file():
    assert parse_text("", "x.nnd") == Module("x.nnd", ())


def test_import():
    assert items('import "lib/blocks.nnd"') == (Import("lib/blocks.nnd"),)


def test_const():
    assert items("const width = 16") == (ConstDef("width", n(16)),)


def test_block_with_params_and_defaults():
    (block,) = items("block residual(x, channels, kernel=3) { return relu(x) }")
    assert block == BlockDef(
        "residual",
        (Param("x", None), Param("channels", None), Param("kernel", n(3))),
        (Return(call("relu", name("x"))),),
    )


def test_block_params_may_be_empty_or_trail_a_comma():
    assert items("block b() {}") == (BlockDef("b", (), ()),)
    assert items("block b(a, k=1,) {}") == (BlockDef("b", (Param("a", None), Param("k", n(1))), ()),)


def test_model():
    assert items("model m {}") == (ModelDef("m", ()),)


def test_train():
    (train,) = items("""
        train mnist_cnn {
            data = fashion_mnist
            optimizer = adam(lr=0.001)
            metrics = [accuracy, top_k_accuracy(k=5)]
            epochs = 10
            validation_split = 0.1
        }""")
    assert train == TrainDef("mnist_cnn", (
        Setting("data", name("fashion_mnist")),
        Setting("optimizer", call("adam", lr=n(0.001))),
        Setting("metrics", ListExpr((name("accuracy"), call("top_k_accuracy", k=n(5))))),
        Setting("epochs", n(10)),
        Setting("validation_split", n(0.1)),
    ))


def test_items_in_any_order():
    kinds = [type(i) for i in items('train t {} model m {} const a = 1 import "x.nnd" block b() {}')]
    assert kinds == [TrainDef, ModelDef, ConstDef, Import, BlockDef]


# ---------------------------------------------------------------- statements


def test_inputs():
    assert body("input image: [28, 28, 1]  input tokens: int32[100]  input s: []") == (
        InputDecl("image", (n(28), n(28), n(1)), None),
        InputDecl("tokens", (n(100),), "int32"),
        InputDecl("s", (), None),
    )


def test_input_dims_are_expressions():
    assert body("input x: [w * 2, n,]") == (InputDecl("x", (BinaryOp("*", name("w"), n(2)), name("n")), None),)


def test_assign_output_return():
    assert body("h = x\noutput h\noutput logits = dense(h, 10)\nreturn h") == (
        Assign("h", name("x")),
        Output(None, name("h")),
        Output("logits", call("dense", name("h"), n(10))),
        Return(name("h")),
    )


def test_expression_statements():
    assert body("conv2d(32, kernel=3, activation=relu)\nx -> relu()\nrepeat 2 { f() }") == (
        ExprStmt(call("conv2d", n(32), kernel=n(3), activation=name("relu"))),
        ExprStmt(Pipe(name("x"), call("relu"))),
        ExprStmt(Repeat(n(2), None, (ExprStmt(call("f")),))),
    )


def test_expression_statement_pipe_sources():
    assert body("x + y -> relu()  conv(1) * 2 -> f()  repeat 2 { g() } -> h()") == (
        ExprStmt(Pipe(BinaryOp("+", name("x"), name("y")), call("relu"))),
        ExprStmt(Pipe(BinaryOp("*", call("conv", n(1)), n(2)), call("f"))),
        ExprStmt(Pipe(Repeat(n(2), None, (ExprStmt(call("g")),)), call("h"))),
    )


def test_statements_need_no_separators():
    assert body("h = f() g = x y = [1] z = -1") == (
        Assign("h", call("f")),
        Assign("g", name("x")),
        Assign("y", ListExpr((n(1),))),
        Assign("z", Unary("-", n(1))),
    )


def test_repeat_forms():
    assert body("h = repeat 3 { residual(h, width) }\nrepeat 2 as i { conv2d(16 * (i + 1), 3) maxpool2d(2) }") == (
        Assign("h", Repeat(n(3), None, (ExprStmt(call("residual", name("h"), name("width"))),))),
        ExprStmt(Repeat(n(2), "i", (
            ExprStmt(call("conv2d", BinaryOp("*", n(16), BinaryOp("+", name("i"), n(1))), n(3))),
            ExprStmt(call("maxpool2d", n(2))),
        ))),
    )


def test_repeat_count_is_an_expression():
    assert expr("repeat depth * 2 as k {}") == Repeat(BinaryOp("*", name("depth"), n(2)), "k", ())


# ---------------------------------------------------------------- expressions


def test_pipe_is_left_associative():
    assert expr("x -> conv2d(width, 3) -> batchnorm() -> relu()") == Pipe(
        Pipe(Pipe(name("x"), call("conv2d", name("width"), n(3))), call("batchnorm")), call("relu"))


def test_pipe_binds_loosest():
    assert expr("a + b -> f(c + d)") == Pipe(BinaryOp("+", name("a"), name("b")),
                                            call("f", BinaryOp("+", name("c"), name("d"))))


def test_arithmetic_precedence_and_associativity():
    assert expr("1 + 2 * 3 - 4") == BinaryOp("-", BinaryOp("+", n(1), BinaryOp("*", n(2), n(3))), n(4))
    assert expr("a / b // c % d") == BinaryOp("%", BinaryOp("//", BinaryOp("/", name("a"), name("b")), name("c")),
                                              name("d"))
    assert expr("(1 + 2) * 3") == BinaryOp("*", BinaryOp("+", n(1), n(2)), n(3))
    assert expr("-a * -(b)") == BinaryOp("*", Unary("-", name("a")), Unary("-", name("b")))
    assert expr("--1") == Unary("-", Unary("-", n(1)))
    assert expr("a - -1") == BinaryOp("-", name("a"), Unary("-", n(1)))


@pytest.mark.parametrize("text, value", [
    ("0", 0), ("42", 42), ("007", 7), ("0.001", 0.001), ("1e-3", 1e-3), ("2.5E+2", 250.0), (".5", 0.5),
    ("3.", 3.0), ("1e3", 1000.0),
])
def test_numbers(text, value):
    result = expr(text)
    assert result == Number(value)
    assert type(result.value) is type(value)


def test_strings_bools_lists():
    assert expr('"plain"') == String("plain")
    assert expr(r'"say \"hi\"\n\\ \q"') == String('say "hi"\n\\ \\q')
    assert expr("true") == Bool(True)
    assert expr("false") == Bool(False)
    assert expr("[]") == ListExpr(())
    assert expr("[1, [a], f(),]") == ListExpr((n(1), ListExpr((name("a"),)), call("f")))


def test_call_arguments():
    assert expr("f(1, x, k=2, s=\"same\",)") == call("f", n(1), name("x"), k=n(2), s=String("same"))
    assert expr("f()") == call("f")
    # Keyword and positional arguments keep their written order.
    assert expr("f(k=1, 2)") == Call("f", (Arg("k", n(1)), Arg(None, n(2))))


def test_comments_and_layout_are_ignored():
    assert items("# head\nconst   a=1# tail\n\n\tconst b =\n 2") == (ConstDef("a", n(1)), ConstDef("b", n(2)))


def test_long_chains_do_not_exhaust_the_stack():
    value = expr("x" + " -> f()" * 3000)
    depth = 0
    while isinstance(value, Pipe):
        value = value.source
        depth += 1
    assert depth == 3000
    assert isinstance(expr(" + ".join(["1"] * 3000)), BinaryOp)


# ---------------------------------------------------------------- spans

SPANNED = textwrap.dedent("""\
    const width = 16
    model m {
        input image: int32[28, 28]
        h = x -> conv2d(width, 3)
              -> relu()
        output logits = dense(h, k=10)
    }
    """)


def test_spans():
    const, model = items(SPANNED)
    assert const.span == Span("t.nnd", 1, 7, 1, 11)  # a definition points at its name
    assert const.value.span == Span("t.nnd", 1, 15, 1, 16)
    assert model.span == Span("t.nnd", 2, 7, 2, 7)
    inp, assign, output = model.body
    assert inp.span == Span("t.nnd", 3, 5, 3, 30)
    assert inp.dims[1].span == Span("t.nnd", 3, 28, 3, 29)
    assert assign.span == Span("t.nnd", 4, 5, 5, 19)
    pipe = assign.value
    assert pipe.span == Span("t.nnd", 4, 9, 5, 19)
    assert pipe.stage.span == Span("t.nnd", 5, 14, 5, 17)  # a call points at its callee only
    assert pipe.source.span == Span("t.nnd", 4, 9, 4, 29)
    assert pipe.source.stage.span == Span("t.nnd", 4, 14, 4, 19)
    assert pipe.source.source.span == Span("t.nnd", 4, 9, 4, 9)
    dense = output.value
    assert output.span == Span("t.nnd", 6, 5, 6, 34)
    assert dense.span == Span("t.nnd", 6, 21, 6, 25)
    assert dense.args[0].span == Span("t.nnd", 6, 27, 6, 27)
    assert dense.args[1].span == Span("t.nnd", 6, 30, 6, 33)


def test_spans_of_other_nodes():
    imp, block, train = items('import "a.nnd"\nblock b(x, k=-1) { return [x] }\ntrain m { epochs = 2 }')
    assert imp.span == Span("t.nnd", 1, 8, 1, 14)  # an import points at its path
    assert block.span == Span("t.nnd", 2, 7, 2, 7)
    assert block.params[1].span == Span("t.nnd", 2, 12, 2, 12)
    assert block.params[1].default.span == Span("t.nnd", 2, 14, 2, 15)
    assert block.body[0].span == Span("t.nnd", 2, 20, 2, 29)
    assert block.body[0].value.span == Span("t.nnd", 2, 27, 2, 29)
    assert train.span == Span("t.nnd", 3, 7, 3, 7)
    assert train.settings[0].span == Span("t.nnd", 3, 11, 3, 16)


def test_every_node_has_a_span():
    from dataclasses import fields, is_dataclass

    def walk(node):
        if isinstance(node, tuple):
            for child in node:
                walk(child)
        elif is_dataclass(node):
            if not isinstance(node, Module):
                assert node.span is not None, node
                assert node.span.file == "t.nnd"
                assert (node.span.line, node.span.column) <= (node.span.end_line, node.span.end_column)
            for f in fields(node):
                if f.name != "span":
                    walk(getattr(node, f.name))

    walk(parse_text(SPANNED + 'import "x.nnd" block b(a=1) { repeat 2 as i { f(-a, [true]) } } train m { d = "s" }',
                    "t.nnd"))


# ---------------------------------------------------------------- syntax errors


def test_missing_closing_parenthesis():
    assert error_text("model m {\n    conv2d(32, 3\n    maxpool2d(2)\n}\n") == (
        "t.nnd:3:5: error: expected ')' or ',' but found name 'maxpool2d'\n"
        "        maxpool2d(2)\n"
        "        ^~~~~~~~~"
    )


def test_unclosed_block_at_end_of_input():
    assert error_text("model m { input x: [3]\n") == (
        "t.nnd:1:23: error: unexpected end of input, expected '}'\n"
        "    model m { input x: [3]\n"
        "                          ^\n"
        "  note: the '{' opened at 1:9 is never closed"
    )


def test_end_of_input_inside_a_call():
    assert error_text("model m {\n    conv2d(32,") == (
        "t.nnd:2:15: error: unexpected end of input, expected ')'\n"
        "        conv2d(32,\n"
        "                  ^\n"
        "  note: the '(' opened at 2:11 is never closed"
    )


def test_end_of_input_without_open_brackets():
    assert error_text("const a = 1 +\n\n") == (
        "t.nnd:1:14: error: unexpected end of input, expected an expression\n"
        "    const a = 1 +\n"
        "                 ^"
    )


def test_stray_character():
    assert error_text("model m {\n    conv2d(32) $\n}") == (
        "t.nnd:2:16: error: unexpected character '$'\n"
        "        conv2d(32) $\n"
        "                   ^"
    )


def test_unterminated_string():
    assert error_text('import "lib.nnd\n') == (
        "t.nnd:1:8: error: unterminated string: a string must end with '\"' on the same line\n"
        '    import "lib.nnd\n'
        "           ^"
    )


def test_missing_name():
    assert error_text("model { }") == (
        "t.nnd:1:7: error: expected a name but found '{'\n"
        "    model { }\n"
        "          ^"
    )


@pytest.mark.parametrize("text, message", [
    ("model m { x }", "t.nnd:1:13: error: expected '(', ',', '->' or '=' but found '}'"),
    ("model m { 5 }", "t.nnd:1:11: error: expected '}' but found number 5"),
    ("model m {} 5", "t.nnd:1:12: error: expected 'block', 'const', 'import', 'model' or 'train' but found number 5"),
    ("model input {}", "t.nnd:1:7: error: expected a name but found keyword 'input'"),
    ("const c = f(1 2)", "t.nnd:1:15: error: expected ')' or ',' but found number 2"),
    ("const c = [1 2]", "t.nnd:1:14: error: expected ',' or ']' but found number 2"),
    ("const c = }", "t.nnd:1:11: error: expected an expression but found '}'"),
    ("train t { epochs 3 }", "t.nnd:1:18: error: expected '=' but found number 3"),
    ('model m { input x "s" }', "t.nnd:1:19: error: expected ':' but found string \"s\""),
    ("const a = 1 2", "t.nnd:1:13: error: expected '->', 'block', 'const', 'import', 'model', ... but found number 2"),
])
def test_error_messages(text, message):
    assert error_text(text).splitlines()[0] == message


def test_too_long_number():
    rendered = error_text("const n = " + "9" * 5000)
    assert rendered.startswith("t.nnd:1:11: error: number literal is too long (5000 digits)")


# ---------------------------------------------------------------- fuzzing

VALID = textwrap.dedent("""\
    import "lib/blocks.nnd"
    const width = 16 * 2 + -1
    block residual(x, channels, kernel=3,) {
        y = x -> conv2d(channels, kernel, padding=same) -> relu()
        return relu(x + y)
    }
    model m {
        input image: int32[28, 28, 1]
        h = repeat 3 as i { residual(h, width // (i + 1)) }
        output logits = dense(h, 10, activation="softmax")
    }
    train m { optimizer = adam(lr=1e-3) metrics = [accuracy, true] }
    """)

TOKENS = ["import", "const", "block", "model", "train", "input", "output", "return", "repeat", "as", "true",
          "false", "x", "f", "1", "2.5", ".5", "1e-3", '"s"', '"', "(", ")", "[", "]", "{", "}", ",", "=", ":",
          "->", "-", "+", "*", "/", "//", "%", "#", "\n", " ", "$", "@", "\t", "é", "\\"]


def _parses_or_reports(text: str) -> None:
    try:
        module = parse(SourceFile("f.nnd", text))
    except NndError as error:
        assert len(error.diagnostics) == 1
        error.render()
    else:
        assert isinstance(module, Module)


FUZZ = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@FUZZ
@given(st.text(max_size=200))
def test_random_text_only_raises_nnd_error(text):
    _parses_or_reports(text)


@FUZZ
@given(st.lists(st.sampled_from(TOKENS), max_size=60))
def test_token_soup_only_raises_nnd_error(tokens):
    _parses_or_reports(" ".join(tokens))


@FUZZ
@given(st.data())
def test_mutated_program_only_raises_nnd_error(data):
    text = VALID
    for _ in range(data.draw(st.integers(1, 4))):
        start = data.draw(st.integers(0, len(text)))
        end = data.draw(st.integers(start, min(len(text), start + 8)))
        insert = data.draw(st.sampled_from(["", *TOKENS]))
        text = text[:start] + insert + text[end:]
    _parses_or_reports(text)
