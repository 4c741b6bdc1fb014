"""Property tests over the whole front end: whatever the text, `compile_text` either succeeds or raises
`NndError` with diagnostics that render. Any other exception is a compiler bug.

Inputs are token soups drawn from the language's own vocabulary, and mutations (deleted, duplicated,
swapped and replaced tokens or lines) of every example program, so most of them get past the parser
and exercise the checker, the layer catalog and the train-section schema.
"""
from __future__ import annotations

import os
import re
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, note, settings
from hypothesis import strategies as st

from nnd.compiler.diagnostics import NndError
from nnd.compiler.frontend import compile_text
from nnd.compiler.ir import print_graph
from nnd.compiler.layers import LAYERS
from nnd.compiler.summary import summarize
from nnd.compiler.training import CALLBACKS, LOSSES, METRICS, OPTIMIZERS, SETTINGS

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"
EXAMPLE_FILES = sorted(EXAMPLES.glob("*.nnd"))
EXAMPLE_TEXTS = [path.read_text(encoding="utf-8") for path in EXAMPLE_FILES]

KEYWORDS = ["model", "block", "const", "import", "input", "output", "return", "repeat", "as", "train",
            "true", "false"]
PUNCTUATION = ["(", ")", "{", "}", "[", "]", ",", "=", ":", "->", "+", "-", "*", "/", "//", "%"]
WORDS = ["x", "y", "h", "n", "width", "residual", "conv_bn", "vgg_stage", "b", "m", "image", "stage",
         "relu", "softmax", "same", "valid", "none", "he_normal", "l2", "l1_l2", "adam", "sgd", "accuracy",
         "fashion_mnist", "val_loss", "kernel", "filters", "units", "activation", "padding", "strides",
         "name", "axis", "rate", "lr", "f32", "int64", "f16"]
NUMBERS = ["0", "1", "2", "3", "8", "16", "28", "0.5", "1.0", "1.5", "2.5", ".5", "1e3", "1e400", "-1",
           "99999999999999999999", "10000", "100000000"]
STRINGS = ['"a"', '"lib/blocks.nnd"', '"missing.nnd"', '"data.npz"', '""', '"\\n"']
TRAIN_WORDS = sorted(set(OPTIMIZERS) | set(LOSSES) | set(METRICS) | set(CALLBACKS) | set(SETTINGS))
VOCABULARY = (KEYWORDS + PUNCTUATION + WORDS + NUMBERS + STRINGS + sorted(LAYERS) + TRAIN_WORDS
              + ["\n", "# note\n", "$", '"open'])

# Lexing for mutations: strings, comments, numbers, names, two-character operators, any other character.
TOKEN = re.compile(r'"(?:[^"\\\n]|\\.)*"|#[^\n]*|\d+\.\d*(?:[eE][+-]?\d+)?|\.\d+|\d+(?:[eE][+-]?\d+)?'
                   r"|[A-Za-z_]\w*|->|//|\S")


def check(text: str) -> None:
    """The property: success, or an NndError whose diagnostics all render."""
    note(text)
    try:
        program = compile_text(text, name="fuzz.nnd", base_dir=EXAMPLES)
    except NndError as err:
        rendered = err.render()
        assert err.diagnostics and rendered
        for diagnostic in err.diagnostics:
            assert diagnostic.message
            if diagnostic.span is not None:
                assert diagnostic.span.line >= 1 and diagnostic.span.column >= 1
        return
    for graph in program.graphs.values():
        print_graph(graph)
        summarize(graph).render()


# CI runs a fixed set; NND_FUZZ_EXAMPLES=20000 runs a longer, randomly seeded search.
LONG_RUN = "NND_FUZZ_EXAMPLES" in os.environ
FUZZ = settings(max_examples=int(os.environ.get("NND_FUZZ_EXAMPLES", "550")), deadline=None,
                derandomize=not LONG_RUN, database=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                                       HealthCheck.filter_too_much])


@FUZZ
@given(st.lists(st.sampled_from(VOCABULARY), max_size=40))
def test_token_soup(tokens):
    check(" ".join(tokens))


# Well-formed statements with random layers and arguments: nearly all reach the checker and lowering.
# They are drawn from a seeded `random.Random` that hypothesis supplies: much faster than composing
# strategies, which matters for a CI budget of a few seconds per test.
LAYER_NAMES = sorted(LAYERS)
KEYS = sorted({a.name for spec in LAYERS.values() for a in spec.args} | {"kernel", "pool", "shape", "alpha"})
ATOMS = NUMBERS + STRINGS + ["true", "false", "x", "h", "n", "k", "i", "relu", "same", "valid", "none",
                             "he_normal", "glorot_uniform", "horizontal", "softmax", "zzz"]


def _value(rng, depth: int = 0) -> str:
    roll = rng.random() if depth < 2 else 0.0
    if roll < 0.6:
        return rng.choice(ATOMS)
    if roll < 0.7:
        return "[" + ", ".join(_value(rng, depth + 1) for _ in range(rng.randint(0, 3))) + "]"
    if roll < 0.8:
        return f"{_value(rng, depth + 1)} {rng.choice(['+', '-', '*', '/', '//', '%'])} {_value(rng, depth + 1)}"
    if roll < 0.9:
        callee = rng.choice(["l1", "l2", "l1_l2", "random_normal", "constant", "orthogonal", "he_normal"])
        return f"{callee}({', '.join(_value(rng, depth + 1) for _ in range(rng.randint(0, 2)))})"
    return _call(rng, depth + 1)


def _call(rng, depth: int = 0) -> str:
    args = [_value(rng, depth + 1) for _ in range(rng.randint(0, 3))]
    args += [f"{rng.choice(KEYS)}={_value(rng, depth + 1)}" for _ in range(rng.randint(0, 2))]
    return f"{rng.choice(LAYER_NAMES + ['blk', 'nope'])}({', '.join(args)})"


def _statement(rng) -> str:
    roll = rng.random()
    chain = " -> ".join(_call(rng) for _ in range(rng.randint(1, 3)))
    if roll < 0.25:
        return _call(rng)
    if roll < 0.45:
        return f"{rng.choice(['x', 'h', 'y'])} -> {chain}"
    if roll < 0.65:
        return f"{rng.choice(['h', 'y', 'n'])} = {rng.choice([_value(rng), 'x -> ' + chain])}"
    if roll < 0.75:
        body = " ".join(_call(rng) for _ in range(rng.randint(0, 2)))
        return f"repeat {rng.choice(['2', '0', 'n', '-1', '1.5'])} as i {{ {body} }}"
    if roll < 0.85:
        body = " ".join(_call(rng) for _ in range(rng.randint(0, 2)))
        return f"{rng.choice(['h', 'y', 'x'])} = repeat 2 {{ {body} }}"
    return rng.choice(["output h", "output x + h", "output y = x * 2", "return x", "input z: [3]", "blk()",
                       "h = blk(x, k=n)", "output blk(h)"])


def structured_program(rng) -> str:
    block = " ".join(_statement(rng) for _ in range(rng.randint(0, 2)))
    body = "\n    ".join(_statement(rng) for _ in range(rng.randint(0, 4)))
    shape = rng.choice(["[4]", "[8, 8, 3]", "[28, 28, 1]", "[2, 3, 4, 5]"])
    return (f"const n = 3\nblock blk(x, k=2) {{\n    {block}\n}}\n"
            f"model m {{\n    input x: {shape}\n    {body}\n}}\n")


@FUZZ
@given(st.randoms(use_true_random=False))
def test_structured_models(rng):
    check(structured_program(rng))


def _mutate(text: str, data) -> str:
    if data.draw(st.booleans(), label="by line"):
        lines = text.split("\n")
        for _ in range(data.draw(st.integers(1, 3), label="edits")):
            if not lines:
                break
            i = data.draw(st.integers(0, len(lines) - 1))
            op = data.draw(st.sampled_from(["delete", "duplicate", "swap"]))
            if op == "delete":
                del lines[i]
            elif op == "duplicate":
                lines.insert(i, lines[i])
            else:
                j = data.draw(st.integers(0, len(lines) - 1))
                lines[i], lines[j] = lines[j], lines[i]
        return "\n".join(lines)
    tokens = [t for t in TOKEN.findall(text) if not t.startswith("#")]  # joined on one line below
    for _ in range(data.draw(st.integers(1, 3), label="edits")):
        if not tokens:
            break
        i = data.draw(st.integers(0, len(tokens) - 1))
        op = data.draw(st.sampled_from(["delete", "duplicate", "swap", "replace", "replace"]))
        if op == "delete":
            del tokens[i]
        elif op == "duplicate":
            tokens.insert(i, tokens[i])
        elif op == "swap":
            j = data.draw(st.integers(0, len(tokens) - 1))
            tokens[i], tokens[j] = tokens[j], tokens[i]
        else:
            tokens[i] = data.draw(st.sampled_from(VOCABULARY))
    return " ".join(tokens)


@FUZZ
@given(st.sampled_from(EXAMPLE_TEXTS), st.data())
def test_mutated_examples(text, data):
    check(_mutate(text, data))


@pytest.mark.parametrize("path", EXAMPLE_FILES, ids=lambda p: p.name)
def test_token_join_preserves_examples(path):
    """The mutation lexer loses nothing that matters: the unmutated token stream still compiles."""
    tokens = TOKEN.findall(path.read_text(encoding="utf-8"))
    compile_text(" ".join(t for t in tokens if not t.startswith("#")), name="fuzz.nnd", base_dir=EXAMPLES)
