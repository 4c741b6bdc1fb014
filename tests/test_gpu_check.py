"""benchmarks/gpu_check.sh on the host, with a stand-in `cupy` module ahead of any real one: the device
check must stop at once when the cupy backend cannot run, and must keep within its time budget, since a
device command is killed after 600 seconds and device minutes are few."""
from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = ROOT / "benchmarks" / "gpu_check.sh"

pytestmark = pytest.mark.skipif(shutil.which("bash") is None or shutil.which("timeout") is None,
                                reason="needs bash and coreutils' timeout")


def run_check(tmp_path: Path, cupy_source: str, budget: str) -> tuple[subprocess.CompletedProcess, Path]:
    """The check with `cupy` on PYTHONPATH made of `cupy_source`, its logs in tmp_path/out."""
    stand_in = tmp_path / "stand_in" / "cupy"
    stand_in.mkdir(parents=True)
    (stand_in / "__init__.py").write_text(cupy_source)
    out = tmp_path / "out"
    env = {"PATH": "/usr/bin:/bin", "HOME": str(tmp_path), "PYTHON": sys.executable, "OUT": str(out),
           "PYTHONPATH": str(stand_in.parent), "GPU_CHECK_BUDGET": budget, "NND_OFFLINE": "1"}
    result = subprocess.run(["bash", str(SCRIPT)], env=env, capture_output=True, text=True, timeout=120)
    return result, out


def test_without_a_usable_cupy_backend_the_check_stops_after_saying_why(tmp_path):
    result, out = run_check(tmp_path, "def is_available():\n    return False\n", "540")
    assert result.returncode == 3, result.stdout + result.stderr
    env = (out / "env.txt").read_text()
    assert "error: no CUDA device is available for the cupy backend" in env
    assert "Traceback" not in env  # the backend's one line, not a traceback
    assert "the cupy backend is not usable here" in result.stdout
    assert "== tests:" not in result.stdout and not (out / "tests.log").exists()


def test_parts_past_the_budget_are_skipped_not_started(tmp_path):
    result, out = run_check(tmp_path, "def is_available():\n    return True\n", "0")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "cupy backend: ok" in (out / "env.txt").read_text()
    text = result.stdout + result.stderr
    for part in ("tests: fused", "tests: blas", "tests: training", "tests: ops", "tests: graphs", "tests: steps",
                 "parity", "profile: mnist_cnn at batch 128", "profile: lstm_classifier at batch 32", "benchmark"):
        assert f"== {part}: skipped, the check's budget of 0s is spent" in text, part
    assert "(limit" not in text.replace("== profile (limit 90s)", "")  # no part started
    assert not (out / "bench.txt").exists() and not (out / "parity.txt").exists()
