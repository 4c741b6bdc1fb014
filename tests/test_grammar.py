"""The grammar itself: conflict-free under LALR(1), and it accepts every construct of the language."""
from __future__ import annotations

import logging
from pathlib import Path

import lark
import pytest

from nnd.grammar import GRAMMAR_PATH, build_parser, grammar_text, parser, strict_available

EXAMPLES = sorted((Path(__file__).resolve().parent.parent / "examples").glob("*.nnd"))

EVERYTHING = """\
# a comment on its own line
import "lib/blocks.nnd"   # and one after an import
import "../shared/other.nnd"
const width = 16
const depth = width * 2 + 1
const rate = 1e-3
const half = .5
const ratio = 2.5e+2 / 3 // 1 % 7 - -1
const name = "a \\"quoted\\" string"
const flags = [true, false, [], [1, 2, 3,],]
block residual(x, channels, kernel=3) {
    y = x -> conv2d(channels, kernel, padding=same, activation=relu)
          -> conv2d(channels, kernel, padding=same)
    return relu(x + y)
}
block nothing() { return identity() }
block trailing(a, b=2,) { return a }
model mnist_cnn {
    input image: [28, 28, 1]
    input tokens: int32[100]
    input scalar: []
    input dyn: float32[n, 2 * n,]
    conv2d(32, kernel=3, activation=relu)
    h = x -> conv2d(width, 3) -> batchnorm() -> relu()
    h = repeat 3 { residual(h, width) }
    repeat 2 as i { conv2d(16 * (i + 1), 3) maxpool2d(2) }
    repeat depth { dense(8) } -> relu()
    x -> dense(3)
    x + y -> relu()
    x * 2 - y // 3 -> dense(1,)
    conv2d(3) + skip -> relu()
    h = (a + b) * -c
    h = -(x) -> relu()
    h = concat([a, b], axis=-1)
    output h -> global_avgpool2d() -> dense(10, activation=softmax)
    output logits = dense(h, 10)
    output h
    return h
}
model empty {}
train mnist_cnn {
    data       = fashion_mnist
    optimizer  = adam(lr=0.001)
    loss       = sparse_categorical_crossentropy
    metrics    = [accuracy, top_k_accuracy(k=5)]
    epochs     = 10
    batch_size = 32
    validation_split = 0.1
    seed = 42
    callbacks = [early_stopping(monitor=val_loss, patience=3)]
    note = "text"
    shuffle = true
}
train empty {}
"""


def test_grammar_file_is_packaged():
    assert GRAMMAR_PATH.name == "nnd.lark"
    assert GRAMMAR_PATH.is_file()
    assert grammar_text() == GRAMMAR_PATH.read_text(encoding="utf-8")


@pytest.mark.skipif(not strict_available(), reason="lark's strict mode needs the interegular package")
def test_grammar_builds_in_strict_mode():
    strict = build_parser(strict=True)
    assert strict.options.parser == "lalr"
    strict.parse(EVERYTHING)


def _logged_conflicts(text: str) -> list[str]:
    """Build in debug mode, where lark logs each shift/reduce conflict it would resolve silently."""
    records: list[str] = []

    class Collect(logging.Handler):
        def emit(self, record):
            records.append(record.getMessage())

    handler = Collect(logging.DEBUG)
    level = lark.logger.level
    lark.logger.addHandler(handler)
    lark.logger.setLevel(logging.DEBUG)
    try:
        lark.Lark(text, parser="lalr", lexer="basic", debug=True)
    finally:
        lark.logger.removeHandler(handler)
        lark.logger.setLevel(level)
    return [r for r in records if "conflict" in r.lower() or "collision" in r.lower()]


def test_grammar_has_no_lalr_conflicts():
    # The check works without interegular too: it sees a textbook conflict ...
    assert _logged_conflicts('start: e\ne: e "+" e | "x"\n')
    # ... and none in ours.
    assert _logged_conflicts(grammar_text()) == []


def test_shared_parser_is_cached():
    assert parser() is parser()
    assert parser().options.propagate_positions


def test_every_construct_parses():
    tree = parser().parse(EVERYTHING)
    kinds = {t.data for t in tree.iter_subtrees()}
    for kind in ["import_stmt", "const_def", "block_def", "model_def", "train_def", "input_decl", "assign",
                 "output_expr", "output_named", "return_stmt", "expr_stmt", "pipe", "add", "sub", "mul", "div",
                 "floordiv", "mod", "neg", "number", "string", "true", "false", "name", "call", "kw_arg",
                 "pos_arg", "list", "repeat", "param", "setting"]:
        assert kind in kinds, kind


@pytest.mark.parametrize("path", EXAMPLES, ids=[p.name for p in EXAMPLES])
def test_examples_parse(path):
    parser().parse(path.read_text(encoding="utf-8"))


def test_layout_does_not_matter():
    one_line = " ".join(line.split("#")[0] for line in EVERYTHING.splitlines())
    assert parser().parse(one_line) == parser().parse(EVERYTHING)


@pytest.mark.parametrize("text", [
    "model m { x }",                 # a bare name is no statement
    "model m { 3 -> f() }",          # nor may one begin with a number
    "model m { (x) -> f() }",        # or a parenthesis
    "model m { -x -> f() }",         # or a minus sign
    "model m { x -> y }",            # every pipe stage is a call
    "model m { x = a -> (f()) }",
    "model input { }",               # keywords are reserved
    "const repeat = 3",
    "block b(x, y=1 z) {}",
    "train t { epochs: 3 }",
    "const s = 'single quotes'",
    'const s = "no newline\n inside"',
])
def test_rejected_constructs(text):
    with pytest.raises(lark.exceptions.UnexpectedInput):
        parser().parse(text)


@pytest.mark.parametrize("text", [
    "model m { h = f() g = 2 }",     # statements need no separator
    "model m { h = x y = x }",
    "const a = 1 const b = 2",
    "",
    "# nothing but a comment",
    "model m{input x:[1]output x}",
])
def test_accepted_layouts(text):
    parser().parse(text)
