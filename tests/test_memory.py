"""The NumPy runtime keeps freed memory in the heap: steady-state training steps take no page faults."""
from __future__ import annotations

import resource
import sys

import numpy as np
import pytest

import nnd
from nnd.runtime.memory import keep_freed_memory

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's mallopt")


def test_steady_state_training_steps_reuse_the_heap():
    model = nnd.loads("""
        model m {
            input x: [28, 28, 1]
            conv2d(32, 3, activation=relu)
            maxpool2d(2)
            flatten()
            dense(10, activation=softmax)
        }""")
    assert keep_freed_memory()
    trainer = model._get_trainer()
    rng = np.random.default_rng(0)
    feeds = model._feeds(rng.random((64, 28, 28, 1), dtype=np.float32), rng.integers(0, 10, 64))
    for _ in range(3):
        trainer.step(feeds)
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    for _ in range(5):
        trainer.step(feeds)
    faults = (resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before) / 5
    # A step allocates about 40 MB of arrays; without the setting it faults in thousands of pages.
    assert faults < 100
