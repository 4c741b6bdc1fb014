import math

import numpy as np
import pytest

from nnd.compiler.diagnostics import NndError
from nnd.runtime.schedules import (cosine_decay, exponential_decay, make_schedule, step_decay, warmup)


def test_step_decay():
    s = step_decay(0.1, drop=0.5, every=10)
    assert [s(i) for i in (0, 9, 10, 19, 20, 35)] == pytest.approx([0.1, 0.1, 0.05, 0.05, 0.025, 0.0125])
    assert s.lr(10) == s(10)


def test_exponential_decay_smooth_and_staircase():
    s = exponential_decay(1.0, decay_rate=0.5, decay_steps=4)
    assert s(2) == pytest.approx(0.5 ** 0.5)
    assert s(8) == pytest.approx(0.25)
    st = exponential_decay(1.0, 0.5, 4, staircase=True)
    assert [st(i) for i in (0, 3, 4, 7, 8)] == pytest.approx([1, 1, 0.5, 0.5, 0.25])


def test_cosine_decay():
    s = cosine_decay(1.0, decay_steps=100, alpha=0.1)
    assert s(0) == pytest.approx(1.0)
    assert s(50) == pytest.approx(0.1 + 0.9 * 0.5)
    assert s(100) == pytest.approx(0.1)
    assert s(1000) == pytest.approx(0.1)
    assert s(25) == pytest.approx(0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi / 4)))


def test_warmup_linear_then_constant_and_cosine():
    w = warmup(10, initial=0.01)
    assert [w(i) for i in (0, 5, 10, 100)] == pytest.approx([0.0, 0.005, 0.01, 0.01])
    c = warmup(10, initial=1.0, then="cosine", decay_steps=20, start=0.5)
    assert c(0) == pytest.approx(0.5)
    assert c(5) == pytest.approx(0.75)
    assert c(10) == pytest.approx(1.0)
    assert c(20) == pytest.approx(0.5)
    assert c(30) == pytest.approx(0.0)


def test_warmup_wrapped():
    inner = step_decay(0.2, drop=0.1, every=5)
    w = warmup(4, wrapped=inner)
    assert w(2) == pytest.approx(0.1)
    assert w(4) == pytest.approx(0.2)
    assert w(9) == pytest.approx(0.02)


def test_make_schedule():
    s = make_schedule("cosine_decay", initial=0.1, decay_steps=10)
    assert s(10) == pytest.approx(0.0)
    s = make_schedule("warmup", warmup_steps=2, wrapped={"name": "exponential_decay", "initial": 1.0,
                                                         "decay_rate": 0.5, "decay_steps": 1})
    assert s(3) == pytest.approx(0.5)
    assert make_schedule("Step-Decay", initial=1.0)(10) == pytest.approx(0.5)
    assert make_schedule("constant", value=0.3)(np.int64(7)) == pytest.approx(0.3)


def test_errors():
    with pytest.raises(NndError, match="unknown learning-rate schedule 'cosine'; did you mean 'cosine_decay'"):
        make_schedule("cosine", initial=1.0)
    with pytest.raises(NndError, match=r"unknown argument 'decay_step' for schedule 'cosine_decay'; did you mean "
                                       r"'decay_steps'\? \(valid: initial, decay_steps, alpha\)"):
        make_schedule("cosine_decay", initial=1.0, decay_step=3)
    with pytest.raises(NndError, match="needs argument decay_steps"):
        make_schedule("cosine_decay", initial=1.0)
    with pytest.raises(NndError, match="decay_steps must be a positive integer, got 0"):
        cosine_decay(1.0, 0)
    with pytest.raises(NndError, match="every must be a positive integer, got 2.5"):
        step_decay(1.0, 0.5, 2.5)
    with pytest.raises(NndError, match="initial must be a non-negative number"):
        exponential_decay(-1.0, 0.5, 3)
    with pytest.raises(NndError, match="exactly one of initial"):
        warmup(5)
    with pytest.raises(NndError, match="needs decay_steps"):
        warmup(5, initial=1.0, then="cosine")
    with pytest.raises(NndError, match="did you mean 'cosine'"):
        warmup(5, initial=1.0, then="cosin")
    with pytest.raises(NndError, match="step must be >= 0"):
        step_decay(1.0)(-1)
    with pytest.raises(NndError, match="step must be an integer"):
        step_decay(1.0)(1.5)
