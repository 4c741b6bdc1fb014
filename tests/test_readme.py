"""The README's `.nnd` snippets are valid programs, and its test command is the one CI runs."""
from __future__ import annotations

import re
from pathlib import Path

import pytest

from nnd.compiler.frontend import compile_text

ROOT = Path(__file__).resolve().parent.parent
README = (ROOT / "README.md").read_text()
SNIPPETS = re.findall(r"```nnd\n(.*?)```", README, flags=re.DOTALL)


def test_the_readme_has_nnd_snippets():
    assert len(SNIPPETS) >= 3


@pytest.mark.parametrize("index", range(len(SNIPPETS)))
def test_every_nnd_snippet_of_the_readme_compiles(index):
    program = compile_text(SNIPPETS[index], name=f"README snippet {index + 1}")
    assert program.graphs
    assert all(not warnings for warnings in program.warnings.values())


def test_ci_runs_the_readme_test_command():
    command = re.search(r"Run the tests.*?```sh\n(.*?)\n```", README, flags=re.DOTALL).group(1).strip()
    assert command == "python -m pytest -q"
    assert command in (ROOT / ".ci" / "run").read_text()


def test_the_readme_lists_every_callback_schedule_and_augmentation_with_its_arguments():
    from nnd.compiler.training import AUGMENTATIONS, CALLBACKS, SCHEDULES

    for table in (CALLBACKS, SCHEDULES, AUGMENTATIONS):
        for name, arguments in table.items():
            assert f"`{name}({', '.join(arguments)})`" in README, name
