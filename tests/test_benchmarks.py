"""benchmarks/compare.py measures like against like and runs: the PyTorch twins hold the nnd models'
parameters, and a one-step run of the script prints its table."""
from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path

import pytest

import nnd
from nnd.compiler.summary import summarize

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = ROOT / "benchmarks" / "compare.py"


def _compare_module():
    spec = importlib.util.spec_from_file_location("compare", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("model_file", sorted({f for f, _, _ in _compare_module().WORKLOADS.values()}))
def test_every_pytorch_twin_has_the_nnd_models_trainable_parameters(model_file):
    pytest.importorskip("torch")
    net, shape, classes = _compare_module().torch_model(model_file)
    # PyTorch's LSTM keeps two bias vectors where Keras (and nnd) keep one; batchnorm's moving statistics
    # are buffers there and non-trainable parameters here
    theirs = sum(p.numel() for name, p in net.named_parameters() if "bias_hh" not in name)
    model = nnd.load(ROOT / "examples" / model_file)
    assert theirs == summarize(model.graph).trainable_params
    assert tuple(model.graph.inputs[0].type.shape[1:]) in (shape, (*shape[1:], shape[0]))  # NCHW or NHWC
    assert next(iter(model.graph.outputs.values())).type.shape[-1] == classes


def test_the_comparison_runs_and_prints_its_table():
    result = subprocess.run([sys.executable, str(SCRIPT), "--rounds", "1", "--steps", "1",
                             "--workloads", "lstm-infer-32", "--no-torch"],
                            capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert result.returncode == 0, result.stderr
    rows = [line.split() for line in result.stdout.splitlines() if line.startswith("lstm-infer-32")]
    assert [row[1:3] for row in rows] == [["nnd", "-O0"], ["nnd", "-O2"]]
    assert all(float(row[3].replace(",", "")) > 0 for row in rows)
