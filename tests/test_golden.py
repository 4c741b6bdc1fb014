"""Golden IR: the printed inference graph of every model of every example, compared to tests/golden/.

After an intended change to lowering or printing, run `pytest tests/test_golden.py --update-golden`
and review the diff of tests/golden/ like any other change.
"""
from __future__ import annotations

from pathlib import Path

import pytest
from click.testing import CliRunner

from nnd.cli import main
from nnd.compiler.frontend import compile_file
from nnd.compiler.ir import print_graph

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = ROOT / "examples"
GOLDEN = Path(__file__).resolve().parent / "golden"


def _cases() -> list[tuple[Path, str]]:
    cases = []
    for path in sorted(EXAMPLES.glob("*.nnd")):  # examples/lib/ holds block libraries, not models
        for model in compile_file(path).graphs:
            cases.append((path, model))
    return cases


CASES = _cases()


@pytest.fixture
def update(request) -> bool:
    return request.config.getoption("--update-golden")


def compare(text: str, golden: Path, update: bool) -> None:
    text = text if text.endswith("\n") else text + "\n"
    if update:
        golden.parent.mkdir(parents=True, exist_ok=True)
        golden.write_text(text, encoding="utf-8")
        return
    assert golden.exists(), f"{golden.name} is missing; run pytest with --update-golden to create it"
    expected = golden.read_text(encoding="utf-8")
    assert text == expected, f"{golden.name} differs; if the change is intended, rerun with --update-golden"


def test_every_example_has_a_model():
    assert {path.name for path, _ in CASES} == {path.name for path in EXAMPLES.glob("*.nnd")}


@pytest.mark.parametrize("path, model", CASES, ids=[f"{p.stem}.{m}" for p, m in CASES])
def test_ir(path, model, update):
    graph = compile_file(path).graphs[model]
    compare(print_graph(graph), GOLDEN / f"{path.stem}.{model}.ir", update)


def test_no_stale_golden_files():
    expected = {f"{path.stem}.{model}.ir" for path, model in CASES}
    assert {p.name for p in GOLDEN.glob("*.ir")} <= expected


def test_printing_is_deterministic():
    """Two compilations of one file print the same text: value numbers do not leak into the output."""
    path, model = CASES[0]
    assert print_graph(compile_file(path).graphs[model]) == print_graph(compile_file(path).graphs[model])


def test_ast_of_a_small_example(update, monkeypatch):
    monkeypatch.chdir(ROOT)
    result = CliRunner().invoke(main, ["compile", "--emit", "ast", "examples/two_inputs.nnd"])
    assert result.exit_code == 0, result.output
    compare(result.stdout, GOLDEN / "two_inputs.ast", update)
