"""Shared pytest options and fixtures."""
from __future__ import annotations

import os

# select-layout measures convolutions on the machine it runs on, so two runs may choose differently for
# a convolution whose layouts cost about the same. Tests pin the language's layout to keep their figures
# reproducible; tests/test_layout.py covers the measured and the forced choices.
os.environ.setdefault("NND_LAYOUT", "NHWC")


def pytest_addoption(parser):
    parser.addoption("--update-golden", action="store_true", default=False,
                     help="Rewrite the golden files under tests/golden/ instead of comparing against them.")
