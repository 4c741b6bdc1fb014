"""The wheel carries every module and the grammar, and `import nnd` from it works."""
from __future__ import annotations

import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

CHECK = """
import importlib, pkgutil, sys
import nnd
root = sys.argv[1]
assert nnd.__file__.startswith(root), nnd.__file__
names = ["nnd"]
for package in ("nnd", "nnd.grammar", "nnd.compiler", "nnd.runtime"):
    module = importlib.import_module(package)
    assert module.__file__.startswith(root), module.__file__
    names += [info.name for info in pkgutil.walk_packages(module.__path__, package + ".")]
for name in names:
    importlib.import_module(name)
model = nnd.loads("model m { input x: [4] dense(2) }")
from nnd.runtime import native
assert native.SOURCE_DIR.is_dir() and str(native.SOURCE_DIR).startswith(root), native.SOURCE_DIR
status = native.status()
assert status.startswith("on") or "no C compiler" in status, status
print(len(names), model.predict(__import__("numpy").zeros((3, 4), "float32")).shape)
"""


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    pytest.importorskip("build")
    out = tmp_path_factory.mktemp("dist")
    result = subprocess.run([sys.executable, "-m", "build", "--wheel", "--no-isolation", "--outdir", str(out),
                             str(ROOT)], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    # setuptools warns when a folder of package data is importable but not declared as a package
    assert "would be ignored" not in result.stdout + result.stderr
    (path,) = out.glob("nnd-*.whl")
    return path


def test_wheel_holds_the_grammar_and_every_package(wheel: Path):
    names = zipfile.ZipFile(wheel).namelist()
    assert "nnd/grammar/nnd.lark" in names
    for module in ("nnd/__init__.py", "nnd/cli.py", "nnd/compiler/checker.py", "nnd/compiler/ops/basic.py",
                   "nnd/compiler/layers/conv.py", "nnd/runtime/executor.py", "nnd/runtime/csrc/nnd_native.c",
                   "nnd/runtime/csrc/scan_impl.h", "nnd/runtime/csrc/gemm_impl.h", "nnd/runtime/csrc/pool_impl.h"):
        assert module in names
    assert not any(name.startswith(("compiler/", "runtime/", "grammar/", "tests/")) for name in names)


def test_every_module_imports_from_the_wheel(wheel: Path, tmp_path: Path):
    site = tmp_path / "site"
    zipfile.ZipFile(wheel).extractall(site)
    env = dict(os.environ, PYTHONPATH=str(site))
    result = subprocess.run([sys.executable, "-c", CHECK, str(site)], capture_output=True, text=True, env=env,
                            cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    count, shape = result.stdout.split(maxsplit=1)
    assert int(count) > 25
    assert shape.strip() == "(3, 2)"
