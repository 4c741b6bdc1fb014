"""Loading programs that span several files."""
from __future__ import annotations

import os

import pytest

from nnd.compiler.diagnostics import NndError
from nnd.compiler.imports import Program, load_program, load_program_text
from nnd.compiler.syntax import ConstDef, Import, ModelDef


def write(root, files: dict[str, str]):
    for rel, text in files.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")


def const_names(program: Program) -> list[str]:
    return [item.name for module in program.modules for item in module.items if isinstance(item, ConstDef)]


@pytest.fixture
def in_dir(tmp_path):
    old = os.getcwd()
    os.chdir(tmp_path)
    try:
        yield tmp_path
    finally:
        os.chdir(old)


def test_single_file(tmp_path):
    write(tmp_path, {"main.nnd": "const a = 1\nmodel m {}\n"})
    program = load_program(tmp_path / "main.nnd")
    assert program.modules == [program.root]
    assert program.root.file == str(tmp_path / "main.nnd")
    assert [type(i) for i in program.root.items] == [ConstDef, ModelDef]
    assert set(program.sources) == {str(tmp_path / "main.nnd")}


def test_nested_imports_resolve_relative_to_the_importing_file(in_dir):
    write(in_dir, {
        "main.nnd": 'import "lib/a.nnd"\nconst main = 1\n',
        "lib/a.nnd": 'import "deeper/b.nnd"\nconst a = 1\n',
        "lib/deeper/b.nnd": 'import "../c.nnd"\nconst b = 1\n',
        "lib/c.nnd": "const c = 1\n",
    })
    program = load_program("main.nnd")
    assert [m.file for m in program.modules] == [
        os.path.join("lib", "c.nnd"), os.path.join("lib", "deeper", "b.nnd"), os.path.join("lib", "a.nnd"),
        "main.nnd",
    ]
    assert const_names(program) == ["c", "b", "a", "main"]
    assert program.root is program.modules[-1]
    assert set(program.sources) == {m.file for m in program.modules}
    assert program.sources["main.nnd"].text.startswith('import "lib/a.nnd"')


def test_diamond_imports_load_each_file_once(tmp_path):
    write(tmp_path, {
        "main.nnd": 'import "left.nnd"\nimport "right.nnd"\nconst main = 1\n',
        "left.nnd": 'import "base.nnd"\nconst left = 1\n',
        "right.nnd": 'import "./base.nnd"\nconst right = 1\n',
        "base.nnd": "const base = 1\n",
    })
    program = load_program(tmp_path / "main.nnd")
    assert const_names(program) == ["base", "left", "right", "main"]


def test_imports_from_text(tmp_path):
    write(tmp_path, {"lib/blocks.nnd": "const width = 4\n"})
    program = load_program_text('import "lib/blocks.nnd"\nmodel m {}', name="<cli>", base_dir=tmp_path)
    assert program.root.file == "<cli>"
    assert program.root.items[0] == Import("lib/blocks.nnd")
    assert const_names(program) == ["width"]
    assert "<cli>" in program.sources and len(program.sources) == 2


def test_text_imports_default_to_the_working_directory(in_dir):
    write(in_dir, {"x.nnd": "const x = 1\n"})
    program = load_program_text('import "x.nnd"')
    assert [m.file for m in program.modules] == ["x.nnd", "<string>"]


def test_missing_import(in_dir):
    write(in_dir, {"main.nnd": 'const a = 1\nimport "lib/nope.nnd"\n'})
    with pytest.raises(NndError) as info:
        load_program("main.nnd")
    assert info.value.render() == (
        'main.nnd:2:8: error: cannot import "lib/nope.nnd": no such file\n'
        '    import "lib/nope.nnd"\n'
        "           ^~~~~~~~~~~~~~\n"
        f"  note: the path resolves to {in_dir.resolve() / 'lib' / 'nope.nnd'}"
    )


def test_missing_import_in_an_imported_file(in_dir):
    write(in_dir, {"main.nnd": 'import "lib/a.nnd"\n', "lib/a.nnd": '\nimport "gone.nnd"\n'})
    with pytest.raises(NndError) as info:
        load_program("main.nnd")
    (diagnostic,) = info.value.diagnostics
    assert diagnostic.message == 'cannot import "gone.nnd": no such file'
    assert (diagnostic.span.file, diagnostic.span.line, diagnostic.span.column) == (os.path.join("lib", "a.nnd"), 2, 8)
    assert diagnostic.notes == (f"the path resolves to {in_dir.resolve() / 'lib' / 'gone.nnd'}",)
    assert 'import "gone.nnd"' in info.value.render()


def test_importing_a_directory(tmp_path):
    (tmp_path / "dir.nnd").mkdir()
    with pytest.raises(NndError) as info:
        load_program_text('import "dir.nnd"', base_dir=tmp_path)
    assert info.value.diagnostics[0].message == 'cannot import "dir.nnd": it is a directory'


def test_import_cycle(in_dir):
    write(in_dir, {
        "a.nnd": 'import "b.nnd"\nconst a = 1\n',
        "b.nnd": 'const b = 1\nimport "a.nnd"\n',
    })
    with pytest.raises(NndError) as info:
        load_program("a.nnd")
    assert info.value.render() == (
        "b.nnd:2:8: error: import cycle: a.nnd -> b.nnd -> a.nnd\n"
        '    import "a.nnd"\n'
        "           ^~~~~~~"
    )


def test_longer_cycle_below_the_root_names_files_relative_to_the_root(tmp_path):
    write(tmp_path, {
        "main.nnd": 'import "lib/x.nnd"\n',
        "lib/x.nnd": 'import "y.nnd"\n',
        "lib/y.nnd": 'import "../lib/x.nnd"\n',
    })
    with pytest.raises(NndError) as info:
        load_program(tmp_path / "main.nnd")
    (diagnostic,) = info.value.diagnostics
    assert diagnostic.message == (
        f"import cycle: {os.path.join('lib', 'x.nnd')} -> {os.path.join('lib', 'y.nnd')} -> "
        f"{os.path.join('lib', 'x.nnd')}"
    )
    assert diagnostic.span.file == str(tmp_path / "lib" / "y.nnd")


def test_self_import(in_dir):
    write(in_dir, {"a.nnd": 'import "a.nnd"\n'})
    with pytest.raises(NndError) as info:
        load_program("a.nnd")
    assert info.value.diagnostics[0].message == "import cycle: a.nnd -> a.nnd"


def test_syntax_error_in_an_imported_file_quotes_that_file(in_dir):
    write(in_dir, {"main.nnd": 'import "bad.nnd"\n', "bad.nnd": "model {}\n"})
    with pytest.raises(NndError) as info:
        load_program("main.nnd")
    assert info.value.render() == (
        "bad.nnd:1:7: error: expected a name but found '{'\n"
        "    model {}\n"
        "          ^"
    )
    assert set(info.value.sources) == {"main.nnd", "bad.nnd"}


def test_every_broken_import_is_reported(in_dir):
    write(in_dir, {"main.nnd": 'import "a.nnd"\nimport "b.nnd"\n'})
    with pytest.raises(NndError) as info:
        load_program("main.nnd")
    assert [d.message for d in info.value.diagnostics] == [
        'cannot import "a.nnd": no such file', 'cannot import "b.nnd": no such file',
    ]


def test_unreadable_root(tmp_path):
    with pytest.raises(NndError) as info:
        load_program(tmp_path / "absent.nnd")
    (diagnostic,) = info.value.diagnostics
    assert diagnostic.span is None
    assert diagnostic.message == f'cannot read "{tmp_path / "absent.nnd"}": no such file'
    with pytest.raises(NndError) as info:
        load_program(tmp_path)
    assert info.value.diagnostics[0].message == f'cannot read "{tmp_path}": it is a directory'


def test_root_that_is_not_utf8(tmp_path):
    (tmp_path / "bin.nnd").write_bytes(b"\xff\xfe\x00")
    with pytest.raises(NndError) as info:
        load_program(tmp_path / "bin.nnd")
    assert "not valid UTF-8" in info.value.diagnostics[0].message
