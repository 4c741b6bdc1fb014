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
PATHS = sorted(EXAMPLES.glob("*.nnd"))  # examples/lib/ holds block libraries, not models


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


@pytest.mark.parametrize("path", PATHS, ids=[p.stem for p in PATHS])
def test_ir(path, update):
    graphs = compile_file(path).graphs
    assert graphs, f"{path.name} defines no model"
    for model, graph in graphs.items():
        compare(print_graph(graph), GOLDEN / f"{path.stem}.{model}.ir", update)
    stale = {p.name for p in GOLDEN.glob(f"{path.stem}.*.ir")} - {f"{path.stem}.{m}.ir" for m in graphs}
    if update:
        for name in stale:
            (GOLDEN / name).unlink()
    else:
        assert not stale, f"golden files of models {path.name} no longer defines: {sorted(stale)}"


def test_no_stale_golden_files():
    """Every golden IR file belongs to an example that still exists (its models are checked above)."""
    stems = {p.stem for p in PATHS}
    assert {p.name for p in GOLDEN.glob("*.ir") if p.name.split(".")[0] not in stems} == set()


def test_printing_is_deterministic():
    """Two compilations of one file print the same text: value numbers do not leak into the output."""
    path = EXAMPLES / "tiny_resnet.nnd"
    first, second = compile_file(path), compile_file(path)
    assert print_graph(first.graphs["tiny_resnet"]) == print_graph(second.graphs["tiny_resnet"])


def test_ast_of_a_small_example(update, monkeypatch):
    monkeypatch.chdir(ROOT)
    result = CliRunner().invoke(main, ["compile", "--emit", "ast", "examples/two_inputs.nnd"])
    assert result.exit_code == 0, result.output
    compare(result.stdout, GOLDEN / "two_inputs.ast", update)
