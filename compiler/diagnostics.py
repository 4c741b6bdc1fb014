"""Compiler-grade diagnostics: `FILE:LINE:COL: error: MESSAGE`, the source line, a caret, notes."""
from __future__ import annotations

import re
from dataclasses import dataclass, field

from nnd.compiler.source import SourceFile, Span


@dataclass(frozen=True)
class Diagnostic:
    message: str
    span: Span | None = None
    notes: tuple[str, ...] = ()
    severity: str = "error"

    def render(self, sources: dict[str, SourceFile] | None = None) -> str:
        head = f"{self.span}: " if self.span else ""
        lines = [f"{head}{self.severity}: {self.message}"]
        source = (sources or {}).get(self.span.file) if self.span else None
        if source is not None and self.span is not None:
            text = source.line_text(self.span.line)
            if text or self.span.column == 1:
                lines.append(f"    {text}")
                lines.append("    " + _caret(text, self.span))
        lines.extend(f"  note: {note}" for note in self.notes)
        return "\n".join(lines)


def _caret(text: str, span: Span) -> str:
    start = span.column - 1
    if span.end_line == span.line:
        width = max(1, span.end_column - span.column + 1)
    else:
        width = max(1, len(text) - start)
    # Keep tabs so the caret lines up with the quoted line in any terminal.
    prefix = "".join("\t" if ch == "\t" else " " for ch in text[:start])
    return prefix + "^" + "~" * (width - 1)


class NndError(Exception):
    """Every mistake a user can make ends in this exception, carrying one or more diagnostics."""

    def __init__(self, diagnostics: "list[Diagnostic] | Diagnostic | str",
                 sources: dict[str, SourceFile] | None = None):
        if isinstance(diagnostics, str):
            diagnostics = [Diagnostic(diagnostics)]
        elif isinstance(diagnostics, Diagnostic):
            diagnostics = [diagnostics]
        self.diagnostics: list[Diagnostic] = list(diagnostics)
        self.sources: dict[str, SourceFile] = dict(sources or {})
        super().__init__(self.render())

    def render(self) -> str:
        return "\n".join(d.render(self.sources) for d in self.diagnostics)

    def __str__(self) -> str:
        return self.render()


class NndWarning(UserWarning):
    """Something legal that is most likely a mistake (a loss that does not fit its output); the text is
    the rendered diagnostic."""


@dataclass
class DiagnosticBag:
    """Collects every error of a run so a file's mistakes are all reported together."""

    diagnostics: list[Diagnostic] = field(default_factory=list)

    def error(self, message: str, span: Span | None = None, notes: tuple[str, ...] | list[str] = ()) -> None:
        self.diagnostics.append(Diagnostic(message, span, tuple(notes)))

    def extend(self, error: NndError) -> None:
        self.diagnostics.extend(error.diagnostics)

    def __bool__(self) -> bool:
        return bool(self.diagnostics)

    def raise_if_any(self, sources: dict[str, SourceFile]) -> None:
        if self.diagnostics:
            raise NndError(self.diagnostics, sources)


def did_you_mean(name: str, candidates) -> str | None:
    """The closest candidate to a misspelled name, or None when nothing is close.

    Keras' spellings are tried too: its class names (`MaxPooling2D`, `SimpleRNN`, `SGD`) and its upper-case
    options (`"SAME"`) name the same things in snake case and lower case here."""
    import difflib

    pool = sorted(set(candidates))
    forms = [form for form in (name, name.lower(), snake_case(name)) if form]
    for form in forms[1:]:
        if form != name and form in pool:
            return form
    for form in dict.fromkeys(forms):
        matches = difflib.get_close_matches(form, pool, n=1, cutoff=0.6)
        if matches:
            return matches[0]
    return None


def snake_case(name: str) -> str:
    """A CamelCase class name in snake case, as Keras derives layer names: MaxPooling2D -> max_pooling2d,
    LeakyReLU -> leaky_relu, SimpleRNN -> simple_rnn."""
    words = re.sub(r"(.)([A-Z][a-z]+)", r"\1_\2", name)
    words = re.sub(r"([a-z])([A-Z])", r"\1_\2", words).lower()
    return words.replace("_re_lu", "_relu").replace("re_lu", "relu")


def counted(n: int, noun: str) -> str:
    """`n noun` for messages, the noun in the plural unless n is 1."""
    return f"{n} {noun}" if n == 1 else f"{n} {noun}s"
