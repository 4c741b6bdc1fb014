"""examples/embed.py, the program that embeds nnd, runs as written and learns its rings."""
from __future__ import annotations

import importlib.util
from pathlib import Path

EXAMPLE = Path(__file__).resolve().parent.parent / "examples" / "embed.py"


def test_the_embedding_example_learns_the_rings(capsys):
    spec = importlib.util.spec_from_file_location("embed_example", EXAMPLE)
    example = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(example)
    accuracy = example.main()
    out = capsys.readouterr().out
    assert accuracy >= 0.83, out  # the classes overlap: the best possible accuracy is about 0.864
    assert out.startswith("test loss ") and ", auc " in out and "P(ring) for" in out
