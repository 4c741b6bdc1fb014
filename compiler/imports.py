"""Loading a program: the root file and every file it imports, each parsed once, dependencies first.

`import "path.nnd"` is resolved against the directory of the file that contains it.
A missing or unreadable import, an import cycle, or a syntax error in any file ends in
one `NndError` that carries every file read, so each diagnostic can quote its line.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

from nnd.compiler import syntax
from nnd.compiler.diagnostics import DiagnosticBag, NndError
from nnd.compiler.parser import parse
from nnd.compiler.source import SourceFile

__all__ = ["Program", "load_program", "load_program_text"]


@dataclass
class Program:
    root: syntax.Module
    modules: list[syntax.Module]  # each file once, every file after the files it imports, the root last
    sources: dict[str, SourceFile] = field(default_factory=dict)  # by the name spans use
    # by the same names: where each file stands, so that a copy of the program can keep the relative places
    # its imports name (the root given as text stands in the directory its imports resolve against)
    locations: dict[str, Path] = field(default_factory=dict)


def load_program(path: str | os.PathLike) -> Program:
    """Read and parse the file at `path` and everything it imports."""
    source = _read_root(Path(path))
    loader = _Loader(base_dir=Path(path).parent)
    return loader.load(source, Path(path).resolve(), display_dir=os.path.dirname(str(path)))


def load_program_text(text: str, name: str = "<string>", base_dir: str | os.PathLike | None = None) -> Program:
    """Parse `text` as the root file; its imports are resolved against `base_dir` (default: the working directory)."""
    source = SourceFile(name, text)
    directory = Path(base_dir) if base_dir is not None else Path.cwd()
    loader = _Loader(base_dir=directory)
    display_dir = str(base_dir) if base_dir is not None else ""
    return loader.load(source, None, display_dir=display_dir)


def _text_root_name(name: str) -> str:
    """The file name a root given as text is copied under: its own when it names a .nnd file."""
    base = os.path.basename(name)
    return base if base.endswith(".nnd") and base != ".nnd" else "model.nnd"


def _read_root(path: Path) -> SourceFile:
    try:
        return SourceFile.read(path)
    except OSError as error:
        raise NndError(f"cannot read \"{path}\": {_reason(error, path)}") from None
    except UnicodeDecodeError:
        raise NndError(f"cannot read \"{path}\": the file is not valid UTF-8 text") from None


def _reason(error: OSError, path: Path) -> str:
    if isinstance(error, FileNotFoundError):
        return "no such file"
    if isinstance(error, IsADirectoryError) or path.is_dir():
        return "it is a directory"
    if isinstance(error, PermissionError):
        return "permission denied"
    return error.strerror or str(error)


class _Loader:
    def __init__(self, base_dir: Path):
        self.base_dir = base_dir.resolve()
        self.sources: dict[str, SourceFile] = {}
        self.locations: dict[str, Path] = {}
        self.modules: list[syntax.Module] = []
        self.done: set[Path] = set()
        self.failed: set[Path] = set()
        self.stack: list[tuple[Path | None, str]] = []  # the chain of files being loaded: (real path, display name)
        self.bag = DiagnosticBag()

    def load(self, source: SourceFile, real: Path | None, display_dir: str) -> Program:
        self.sources[source.name] = source
        self.locations[source.name] = real if real is not None else self.base_dir / _text_root_name(source.name)
        root = self.visit(source, real, display_dir)
        self.bag.raise_if_any(self.sources)
        assert root is not None
        return Program(root=root, modules=list(self.modules), sources=dict(self.sources),
                       locations=dict(self.locations))

    def visit(self, source: SourceFile, real: Path | None, display_dir: str) -> syntax.Module | None:
        try:
            module = parse(source)
        except NndError as error:
            self.bag.extend(error)
            if real is not None:
                self.failed.add(real)
            return None
        directory = real.parent if real is not None else self.base_dir
        self.stack.append((real, source.name))
        for item in module.items:
            if isinstance(item, syntax.Import):
                self.follow(item, directory, display_dir)
        self.stack.pop()
        if real is not None:
            self.done.add(real)
        self.modules.append(module)
        return module

    def follow(self, item: syntax.Import, directory: Path, display_dir: str) -> None:
        target = Path(os.path.normpath(directory / item.path))
        try:
            target = target.resolve()
        except (OSError, RuntimeError):
            pass
        if target in self.done or target in self.failed:
            return
        chain = [real for real, _ in self.stack]
        if target in chain:
            start = chain.index(target)
            names = [self.cycle_name(real, name) for real, name in self.stack[start:]]
            names.append(names[0])
            self.bag.error(f"import cycle: {' -> '.join(names)}", item.span)
            return
        display = os.path.normpath(os.path.join(display_dir, item.path)) if item.path else item.path
        try:
            source = SourceFile(display, target.read_text(encoding="utf-8"))
        except OSError as error:
            reason = _reason(error, target)
            self.bag.error(f"cannot import \"{item.path}\": {reason}", item.span,
                           [f"the path resolves to {target}"])
            self.failed.add(target)
            return
        except UnicodeDecodeError:
            self.bag.error(f"cannot import \"{item.path}\": the file is not valid UTF-8 text", item.span,
                           [f"the path resolves to {target}"])
            self.failed.add(target)
            return
        self.sources.setdefault(source.name, source)
        self.locations.setdefault(source.name, target)
        self.visit(source, target, os.path.dirname(display))

    def cycle_name(self, real: Path | None, name: str) -> str:
        """A file's name in a cycle message: its path relative to the root file's directory."""
        if real is None:
            return name
        root_dir = self.stack[0][0].parent if self.stack[0][0] is not None else self.base_dir
        try:
            return os.path.relpath(real, root_dir)
        except ValueError:  # another drive on Windows
            return str(real)
