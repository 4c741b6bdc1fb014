"""The `.nnd` grammar (`nnd.lark`) and the LALR parser built from it."""
from __future__ import annotations

import importlib.util
from functools import lru_cache
from importlib import resources
from pathlib import Path

import lark

GRAMMAR_FILE = "nnd.lark"
# The grammar on disk; read it through `grammar_text()`, which also works from a zipped install.
GRAMMAR_PATH = Path(__file__).with_name(GRAMMAR_FILE)


def grammar_text() -> str:
    return resources.files(__name__).joinpath(GRAMMAR_FILE).read_text(encoding="utf-8")


def strict_available() -> bool:
    """Lark's strict mode also checks the terminals for collisions, which needs `interegular`."""
    return importlib.util.find_spec("interegular") is not None


def build_parser(strict: bool = False, **options) -> lark.Lark:
    """A fresh LALR parser; with `strict=True` any grammar conflict raises `lark.exceptions.GrammarError`."""
    settings = dict(parser="lalr", lexer="basic", propagate_positions=True, maybe_placeholders=True)
    settings.update(options)
    if strict:
        settings["strict"] = True
    return lark.Lark(grammar_text(), **settings)


@lru_cache(maxsize=1)
def parser() -> lark.Lark:
    """The shared parser, built once per process (strict whenever lark can check strictly)."""
    return build_parser(strict=strict_available())


__all__ = ["GRAMMAR_FILE", "GRAMMAR_PATH", "build_parser", "grammar_text", "parser", "strict_available"]
