"""Source files and positions inside them."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Span:
    """A range of source text: 1-based lines and columns, end inclusive of the last character."""

    file: str
    line: int
    column: int
    end_line: int
    end_column: int

    def __str__(self) -> str:
        return f"{self.file}:{self.line}:{self.column}"


BYTE_ORDER_MARK = "\ufeff"


@dataclass(frozen=True)
class SourceFile:
    """The text of one `.nnd` file, kept so diagnostics can quote its lines."""

    name: str
    text: str

    def __post_init__(self) -> None:
        # Editors on Windows often start a UTF-8 file with a byte-order mark; it is no part of the program.
        if self.text.startswith(BYTE_ORDER_MARK):
            object.__setattr__(self, "text", self.text[len(BYTE_ORDER_MARK):])

    @classmethod
    def read(cls, path: str | Path) -> "SourceFile":
        return cls(str(path), Path(path).read_text(encoding="utf-8"))

    def line_text(self, line: int) -> str:
        lines = self.text.splitlines()
        if 1 <= line <= len(lines):
            return lines[line - 1]
        return ""

    def end_span(self) -> Span:
        """The position just after the last character: where 'unexpected end of input' points."""
        lines = self.text.split("\n")
        # A trailing newline leaves an empty last line; point after the last real character instead.
        while len(lines) > 1 and lines[-1].strip() == "":
            lines.pop()
        line = len(lines)
        column = len(lines[-1]) + 1
        return Span(self.name, line, column, line, column)
