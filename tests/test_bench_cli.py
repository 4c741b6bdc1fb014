"""`nnd bench FILE`: timing on random data with per-layer and per-op breakdowns (the figures themselves
are machine-dependent and not asserted)."""
from __future__ import annotations

import os
import re

import pytest
from click.testing import CliRunner

from nnd.cli import main

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MNIST = os.path.join(ROOT, "examples", "mnist_cnn.nnd")
LSTM = os.path.join(ROOT, "examples", "lstm_classifier.nnd")


def tables(output: str) -> dict[str, dict[str, float]]:
    """The layer and op tables: title -> {row name: ms per run}."""
    result, current = {}, None
    for line in output.splitlines():
        header = re.match(r"^(layer|op)\s+ms/run\s+share$", line)
        if header:
            current = result.setdefault(header.group(1), {})
        elif current is not None and line.strip():
            name, ms, share = line.split()
            assert share.endswith("%")
            current[name] = float(ms)
    return result


@pytest.mark.parametrize("path, args, what", [
    (MNIST, [], "training step at batch 4"),
    (MNIST, ["--infer", "-O0"], "inference at batch 4"),
    (LSTM, [], "training step at batch 4"),
])
def test_bench_times_the_model_and_breaks_it_down(path, args, what):
    result = CliRunner().invoke(main, ["bench", path, "-b", "4", "--steps", "2", *args])
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    assert re.match(rf"^\w+: {what}, median [\d.]+ ms over 2 runs \(min [\d.]+, max [\d.]+\) = [\d,]+ samples/s$",
                    lines[0]), lines[0]
    assert re.match(r"^native kernels: (on \(.+\), \d+ threads?|off: .+)$", lines[1]), lines[1]
    found = tables(result.stdout)
    assert set(found) == {"layer", "op"}
    if path == MNIST:
        assert {"conv2d", "conv2d_1", "conv2d_2", "maxpool2d", "dense"} <= set(found["layer"])
        assert ("conv2d" if "-O0" in args else "conv2d_epilogue") in found["op"]
        assert ("maxpool2d_grad" in found["op"]) == (what.startswith("training"))
    else:
        assert {"lstm", "lstm_1", "dense"} <= set(found["layer"]) and "lstm_scan_grad" in found["op"]


def test_bench_of_a_missing_model_is_a_clear_error():
    result = CliRunner().invoke(main, ["bench", MNIST, "--model", "nope"])
    assert result.exit_code == 1
    assert "nope" in result.stderr and "Traceback" not in result.output
