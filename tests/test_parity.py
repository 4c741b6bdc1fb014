"""Backend parity (`nnd train --compare-backends`): the comparison finds the first op where two backends
part, through the API and the command line. Without a GPU the second backend is a NumPy backend, as is
or with one kernel perturbed."""
from __future__ import annotations

import importlib.util

import numpy as np
import pytest
from click.testing import CliRunner

import nnd
from nnd.cli import main
from nnd.runtime.backend import Backend
from nnd.runtime.parity import compare_backends, first_divergence, format_parity

MODEL = """model small {
    input x: [6, 6, 1]
    conv2d(4, 3, activation=relu)
    maxpool2d(2)
    flatten()
    dense(8, activation=relu)
    dense(3, activation=softmax)
}

train small {
    optimizer  = adam(lr=0.01)
    loss       = sparse_categorical_crossentropy
    batch_size = 8
}
"""


def numpy_backend_with(op: str | None = None, factor: float = 1.0) -> Backend:
    backend = Backend("numpy", np)
    if op is not None:
        kernel = backend.kernels[op]
        backend.kernels = dict(backend.kernels, **{op: lambda ctx, attrs, *a: kernel(ctx, attrs, *a) * factor})
    return backend


def step_inputs(level=2):
    model = nnd.loads(MODEL, seed=3, opt_level=level)
    rng = np.random.default_rng(0)
    trainer = model._get_trainer()
    feeds = trainer.with_sample_weights(model._feeds(rng.normal(size=(8, 6, 6, 1)).astype(np.float32),
                                                     rng.integers(0, 3, 8)))
    return trainer.train_graph, feeds, model.params


def test_identical_backends_agree_exactly():
    graph, feeds, params = step_inputs()
    differences = compare_backends(graph, feeds, params, (numpy_backend_with(), numpy_backend_with()))
    assert len(differences) == len(graph.nodes)
    assert all(d.max_abs == 0 for d in differences)
    assert first_divergence(differences, np.float32) is None
    assert format_parity(differences, ("numpy", "numpy"), np.float32, "t").splitlines()[-1].startswith("agree")


@pytest.mark.parametrize("op", ["relu_grad", "matmul_epilogue", "maxpool2d"])
def test_the_first_op_that_differs_is_named_with_its_layer(op):
    graph, feeds, params = step_inputs(level=2 if op != "relu_grad" else 1)
    differences = compare_backends(graph, feeds, params, (numpy_backend_with(), numpy_backend_with(op, 1.01)))
    first = first_divergence(differences, np.float32)
    assert first is not None and first.node.op == op
    assert first.scaled == pytest.approx(0.01, rel=1e-3)
    earlier = differences[:[d.node for d in differences].index(first.node)]
    assert all(d.max_abs == 0 for d in earlier)
    report = format_parity(differences, ("numpy", "perturbed"), np.float32, "t")
    assert report.splitlines()[-1].startswith(f"differ: first beyond 0.0001 at {op} (layer ")


def test_float64_rounding_differences_within_tolerance_agree():
    graph, feeds, params = step_inputs()
    rounding = numpy_backend_with("matmul_epilogue", 1 + 1e-13)
    differences = compare_backends(graph, feeds, params, (numpy_backend_with(), rounding), dtype=np.float64)
    assert first_divergence(differences, np.float64) is None
    assert max(d.scaled for d in differences) > 0


@pytest.fixture
def project(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "small.nnd").write_text(MODEL)
    rng = np.random.default_rng(0)
    np.savez(tmp_path / "data.npz", x_train=rng.normal(size=(20, 6, 6, 1)).astype(np.float32),
             y_train=rng.integers(0, 3, 20))
    return tmp_path


def test_cli_compares_one_step_and_trains_nothing(project):
    result = CliRunner().invoke(main, ["train", "small.nnd", "--data", "data.npz", "--compare-backends", "numpy,numpy"])
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    assert lines[0] == ("backend parity, numpy against numpy: one training step of small on 8 samples of "
                        "data.npz (float32, -O2)")
    assert any(line.split()[:2] == ["conv2d_epilogue", "conv2d"] for line in lines)
    assert lines[-1].startswith("agree: every op within 0.0001")
    assert not (project / "runs").exists()


def test_cli_rejects_a_malformed_pair(project):
    result = CliRunner().invoke(main, ["train", "small.nnd", "--data", "data.npz", "--compare-backends", "numpy"])
    assert result.exit_code == 2
    assert "expected two backends as A,B, got 'numpy'" in result.output


@pytest.mark.skipif(importlib.util.find_spec("cupy") is not None, reason="cupy is installed")
def test_cli_without_cupy_is_one_line(project):
    result = CliRunner().invoke(main, ["train", "small.nnd", "--data", "data.npz", "--compare-backends"])
    assert result.exit_code == 1
    assert result.stderr.strip().startswith("error: the cupy backend needs CuPy: pip install cupy-cuda13x")


@pytest.mark.parametrize("extra, named", [
    (["--mixed-precision"], "--mixed-precision"),
    (["--tf32", "--cuda-graphs"], "--tf32, --cuda-graphs"),
    (["--backend", "numpy", "--epochs", "3", "--out", "run"], "--epochs, --backend, --out"),
])
def test_cli_refuses_training_options_the_comparison_would_ignore(project, extra, named):
    result = CliRunner().invoke(main, ["train", "small.nnd", "--data", "data.npz", "--compare-backends",
                                       "numpy,numpy", *extra])
    assert result.exit_code == 2
    assert ("--compare-backends runs one float32 training step on the two backends it names; it does not take "
            f"{named}") in result.output
    assert not (project / "run").exists()
