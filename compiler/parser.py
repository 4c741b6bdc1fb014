"""Parsing: `.nnd` text to the syntax tree of `nnd.compiler.syntax`, or one syntax-error diagnostic.

Every node carries a `Span`. Nodes that introduce or use a name point at that name
(`Call`, `ConstDef`, `BlockDef`, `ModelDef`, `TrainDef`, `Param`, `Setting`); an `Import`
points at its path string; every other node spans its whole text.
"""
from __future__ import annotations

import math

from lark import Lark, Token, Tree
from lark.exceptions import UnexpectedCharacters, UnexpectedEOF, UnexpectedInput, UnexpectedToken

from nnd.compiler import syntax as ast
from nnd.compiler.diagnostics import Diagnostic, NndError
from nnd.compiler.source import SourceFile, Span
from nnd.grammar import parser as _lark_parser

__all__ = ["parse", "parse_text"]


def parse(source: SourceFile) -> ast.Module:
    """Parse one file; a syntax error raises `NndError` with exactly one diagnostic."""
    lark_parser = _lark_parser()
    try:
        tree = lark_parser.parse(source.text)
    except UnexpectedInput as error:
        raise NndError(_describe_error(error, source, lark_parser), {source.name: source}) from None
    try:
        return _Builder(source).module(tree)
    except _BuildError as error:
        raise NndError(Diagnostic(error.message, error.span), {source.name: source}) from None
    except RecursionError:
        raise NndError(Diagnostic("the program is nested too deeply to parse", Span(source.name, 1, 1, 1, 1)),
                       {source.name: source}) from None


def parse_text(text: str, name: str = "<string>") -> ast.Module:
    """Parse source text held in memory (handy for tests and tools)."""
    return parse(SourceFile(name, text))


# ---------------------------------------------------------------- tree to syntax

class _BuildError(Exception):
    def __init__(self, message: str, span: Span):
        super().__init__(message)
        self.message = message
        self.span = span


_BINARY = {"add": "+", "sub": "-", "mul": "*", "div": "/", "floordiv": "//", "mod": "%"}
_ESCAPES = {"n": "\n", "t": "\t", "r": "\r", "\\": "\\", '"': '"', "0": "\0"}


class _Builder:
    def __init__(self, source: SourceFile):
        self.file = source.name

    # spans

    def token_span(self, token: Token) -> Span:
        return Span(self.file, token.line, token.column, token.end_line, token.end_column - 1)

    def tree_span(self, tree: Tree) -> Span:
        meta = tree.meta
        return Span(self.file, meta.line, meta.column, meta.end_line, meta.end_column - 1)

    # top level

    def module(self, tree: Tree) -> ast.Module:
        return ast.Module(file=self.file, items=tuple(self.item(child) for child in tree.children))

    def item(self, tree: Tree) -> ast.Item:
        kind = tree.data
        children = tree.children
        if kind == "import_stmt":
            path = children[0]
            return ast.Import(self.string_value(path), span=self.token_span(path))
        if kind == "const_def":
            name, value = children
            return ast.ConstDef(str(name), self.expr(value), span=self.token_span(name))
        if kind == "block_def":
            name, params, *body = children
            return ast.BlockDef(str(name), tuple(self.param(p) for p in params.children),
                                self.stmts(body), span=self.token_span(name))
        if kind == "model_def":
            name, *body = children
            return ast.ModelDef(str(name), self.stmts(body), span=self.token_span(name))
        if kind == "train_def":
            name, *settings = children
            return ast.TrainDef(str(name), tuple(self.setting(s) for s in settings), span=self.token_span(name))
        raise AssertionError(f"unknown item {kind}")

    def param(self, tree: Tree) -> ast.Param:
        name, default = tree.children
        return ast.Param(str(name), None if default is None else self.expr(default), span=self.token_span(name))

    def setting(self, tree: Tree) -> ast.Setting:
        key, value = tree.children
        return ast.Setting(str(key), self.expr(value), span=self.token_span(key))

    # statements

    def stmts(self, trees) -> tuple[ast.Stmt, ...]:
        return tuple(self.stmt(tree) for tree in trees)

    def stmt(self, tree: Tree) -> ast.Stmt:
        kind = tree.data
        children = tree.children
        span = self.tree_span(tree)
        if kind == "input_decl":
            name, dtype, *dims = children
            return ast.InputDecl(str(name), tuple(self.expr(d) for d in dims),
                                 None if dtype is None else str(dtype), span=span)
        if kind == "assign":
            target, value = children
            return ast.Assign(str(target), self.expr(value), span=span)
        if kind == "unpack":
            *targets, value = children
            return ast.Unpack(tuple(str(t) for t in targets), self.expr(value), span=span)
        if kind == "output_expr":
            return ast.Output(None, self.expr(children[0]), span=span)
        if kind == "output_named":
            name, value = children
            return ast.Output(str(name), self.expr(value), span=span)
        if kind == "return_stmt":
            return ast.Return(self.expr(children[0]), span=span)
        if kind == "expr_stmt":
            return ast.ExprStmt(self.expr(children[0]), span=span)
        raise AssertionError(f"unknown statement {kind}")

    # expressions

    def expr(self, node) -> ast.Expr:
        # Walk a left-leaning chain (`a -> f() -> g()`, `a + b + c`) without recursing once per link.
        chain = []
        while isinstance(node, Tree) and (node.data == "pipe" or node.data in _BINARY):
            chain.append(node)
            node = node.children[0]
        result = self.operand(node)
        for tree in reversed(chain):
            span = self.tree_span(tree)
            right = tree.children[1]
            if tree.data == "pipe":
                result = ast.Pipe(result, self.call(right), span=span)
            else:
                result = ast.BinaryOp(_BINARY[tree.data], result, self.expr(right), span=span)
        return result

    def operand(self, node) -> ast.Expr:
        kind = node.data
        children = node.children
        if kind == "name":
            return ast.Name(str(children[0]), span=self.token_span(children[0]))
        if kind == "number":
            return ast.Number(self.number_value(children[0]), span=self.token_span(children[0]))
        if kind == "string":
            return ast.String(self.string_value(children[0]), span=self.token_span(children[0]))
        if kind in ("true", "false"):
            return ast.Bool(kind == "true", span=self.token_span(children[0]))
        if kind == "call":
            return self.call(node)
        if kind == "list":
            return ast.ListExpr(tuple(self.expr(item) for item in children), span=self.tree_span(node))
        if kind == "neg":
            return ast.Unary("-", self.expr(children[0]), span=self.tree_span(node))
        if kind == "repeat":
            count, index, *body = children
            return ast.Repeat(self.expr(count), None if index is None else str(index), self.stmts(body),
                              span=self.tree_span(node))
        raise AssertionError(f"unknown expression {kind}")

    def call(self, tree: Tree) -> ast.Call:
        name, args = tree.children
        return ast.Call(str(name), tuple(self.arg(a) for a in args.children), span=self.token_span(name))

    def arg(self, tree: Tree) -> ast.Arg:
        if tree.data == "kw_arg":
            name, value = tree.children
            return ast.Arg(str(name), self.expr(value), span=self.tree_span(tree))
        value = self.expr(tree.children[0])
        return ast.Arg(None, value, span=value.span)

    # literals

    def number_value(self, token: Token) -> int | float:
        text = str(token)
        try:
            if any(ch in text for ch in ".eE"):
                value = float(text)
                if math.isinf(value):
                    raise _BuildError(f"number {text} is too large (beyond the largest float, about 1.8e308)",
                                      self.token_span(token))
                return value
            return int(text)
        except ValueError:
            raise _BuildError(f"number literal is too long ({len(text)} digits)", self.token_span(token)) from None

    def string_value(self, token: Token) -> str:
        body = str(token)[1:-1]
        if "\\" not in body:
            return body
        out = []
        i = 0
        while i < len(body):
            ch = body[i]
            if ch == "\\" and i + 1 < len(body):
                nxt = body[i + 1]
                # An unknown escape keeps its backslash, so Windows-style paths survive.
                out.append(_ESCAPES.get(nxt, "\\" + nxt))
                i += 2
            else:
                out.append(ch)
                i += 1
        return "".join(out)


# ---------------------------------------------------------------- syntax errors

# What each token kind is called in messages; literal keywords and punctuation are quoted.
_WORDS = {"NAME": "a name", "NUMBER": "a number", "STRING": "a string", "$END": "end of input"}
_CLOSERS = {")", "]", "}", ","}
# The tokens that can begin an expression: when all are possible they read as "an expression".
_EXPRESSION_START = {"NAME", "NUMBER", "STRING", "TRUE", "FALSE", "LPAR", "LSQB", "MINUS", "REPEAT"}
# Arithmetic that could continue an expression; listing it only hides the useful alternatives.
_OPERATORS = {"+", "-", "*", "/", "//", "%"}
_MAX_LISTED = 5
_PAIRS = {")": "(", "]": "[", "}": "{"}


def _literal(lark_parser: Lark, terminal: str) -> str | None:
    """The fixed text of a keyword or punctuation terminal, or None for NAME, NUMBER and the like."""
    try:
        pattern = lark_parser.get_terminal(terminal).pattern
    except KeyError:
        return None
    return pattern.value if pattern.type == "str" else None


def _expected_words(lark_parser: Lark, terminals) -> list[str]:
    terminals = set(terminals)
    literals = {t: _literal(lark_parser, t) for t in terminals}
    closers = {t for t in terminals if literals[t] in _CLOSERS}
    # Inside brackets the closers are what matters; a lone ',' (as in `a, b = ...`) is no closer.
    if closers and any(literals[t] != "," for t in closers):
        terminals = closers
    elif len(terminals) > 1:
        terminals.discard("$END")  # "end of input" helps nobody next to real alternatives
    words = set()
    if _EXPRESSION_START <= terminals:
        terminals -= _EXPRESSION_START
        words.add("an expression")
    structural = {t for t in terminals if literals.get(t) not in _OPERATORS}
    if structural or words:
        terminals = structural
    for terminal in terminals:
        literal = literals.get(terminal) or _literal(lark_parser, terminal)
        if literal is not None:
            words.add(f"'{literal}'")
        else:
            words.add(_WORDS.get(terminal, terminal.lower()))
    return sorted(words)


def _join(words: list[str]) -> str:
    if len(words) > _MAX_LISTED:
        return ", ".join(words[:_MAX_LISTED]) + ", ..."
    if len(words) <= 1:
        return "".join(words)
    return ", ".join(words[:-1]) + " or " + words[-1]


def _found(lark_parser: Lark, token: Token) -> str:
    if token.type == "NAME":
        return f"name '{token}'"
    if token.type == "NUMBER":
        return f"number {token}"
    if token.type == "STRING":
        return f"string {token}"
    if token.type == "$END":
        return "end of input"
    literal = _literal(lark_parser, token.type) or str(token)
    if literal.isidentifier():
        return f"keyword '{literal}'"
    return f"'{literal}'"


def _unclosed_note(lark_parser: Lark, source: SourceFile) -> tuple[str, ...]:
    """A note naming the innermost bracket still open at the end of the file, if any."""
    stack: list[Token] = []
    try:
        for token in lark_parser.lex(source.text):
            if token.type in ("LPAR", "LSQB", "LBRACE"):
                stack.append(token)
            elif token.type in ("RPAR", "RSQB", "RBRACE"):
                opener = _PAIRS[str(token)]
                for depth in range(len(stack) - 1, -1, -1):
                    if stack[depth] == opener:
                        del stack[depth:]
                        break
    except UnexpectedInput:
        return ()
    if not stack:
        return ()
    opener = stack[-1]
    return (f"the '{opener}' opened at {opener.line}:{opener.column} is never closed",)


def _token_span(source: SourceFile, token: Token) -> Span:
    return Span(source.name, token.line, token.column, token.end_line, max(token.column, token.end_column - 1))


def _token_notes(found: str, expected: list[str], source: SourceFile, token: Token) -> tuple[str, ...]:
    """Hints for the misreadings that the grammar's words alone do not explain, Python's and Keras'
    habits among them."""
    if found in ("+", "-", "*", "/"):
        return ("'->' binds more loosely than arithmetic: to combine two chains, write (x -> f()) + (x -> g())",)
    if found == "}" and any("->" in word for word in expected):
        return ("a statement is an assignment, a layer call or a chain; a block hands back its value with "
                "return VALUE",)
    in_input = source.line_text(token.line).lstrip().startswith("input ")
    before = source.text[:token.start_pos].rstrip()
    if found == "(" and in_input and before.endswith(":"):
        return ("a shape is written in brackets: input image: [28, 28, 1]",)
    if found == "," and in_input and before.endswith("]"):
        return ("an input's dtype comes before its shape: input tokens: int32[200]",)
    if found == "," and expected == ["')'"]:
        return ("a list is written in brackets, as in kernel_size=[3, 3]; parentheses only group arithmetic",)
    if found == "=" and before.split()[-1:] == ["model"]:
        return ("a model is declared as model NAME { ... }, its input lines first and then its layers",)
    if found == "(" and before.endswith(")"):
        return ("a layer is applied to a value with '->': x = image -> dense(64), not dense(64)(image)",)
    return ()


# Characters that Python or Keras code would have where the language has none.
_CHARACTER_NOTES = {"'": "strings are written in double quotes: \"data.npz\"",
                    ";": "no ';' is needed: statements end by themselves"}


def _describe_error(error: UnexpectedInput, source: SourceFile, lark_parser: Lark) -> Diagnostic:
    if isinstance(error, UnexpectedCharacters):
        span = Span(source.name, error.line, error.column, error.line, error.column)
        char = source.text[error.pos_in_stream] if 0 <= error.pos_in_stream < len(source.text) else ""
        if char == '"':
            return Diagnostic("unterminated string: a string must end with '\"' on the same line", span)
        notes = (_CHARACTER_NOTES[char],) if char in _CHARACTER_NOTES else ()
        return Diagnostic(f"unexpected character {char!r}", span, notes)
    if isinstance(error, UnexpectedToken):
        try:
            expected = error.accepts or error.expected
        except Exception:  # the interactive re-parse behind `accepts` is only a refinement
            expected = error.expected
        token = error.token
        if token.type != "$END":
            words = _expected_words(lark_parser, expected)
            message = f"expected {_join(words)} but found {_found(lark_parser, token)}"
            return Diagnostic(message, _token_span(source, token), _token_notes(str(token), words, source, token))
    elif isinstance(error, UnexpectedEOF):
        expected = error.expected
    else:
        line, column = getattr(error, "line", -1), getattr(error, "column", -1)
        span = Span(source.name, line, column, line, column) if line > 0 and column > 0 else None
        return Diagnostic("syntax error", span)
    words = _expected_words(lark_parser, expected)
    message = "unexpected end of input" + (f", expected {_join(words)}" if words else "")
    return Diagnostic(message, source.end_span(), _unclosed_note(lark_parser, source))
