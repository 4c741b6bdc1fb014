"""Training progress written to a log (no terminal): one line per epoch, and a line every LOG_EVERY
seconds of a long epoch so that it does not look hung."""
from __future__ import annotations

import io

from nnd.runtime import progress
from nnd.runtime.progress import Progress


def test_a_long_epoch_writes_a_line_every_interval_and_a_short_one_none(monkeypatch):
    clock = iter([0.0, 0.0, 10.0, 31.0, 40.0, 62.0, 70.0, 75.0])  # made, epoch begins, 5 batches, epoch ends
    monkeypatch.setattr(progress.time, "perf_counter", lambda: next(clock))
    out = io.StringIO()
    bar = Progress(1, 6, stream=out)
    bar.epoch_begin(0)  # t = 0
    for index, _ in enumerate(range(5)):  # t = 10, 31, 40, 62, 70
        bar.batch_end(index, {"loss": 1.0 / (index + 1)})
    bar.epoch_end({"loss": 0.2}, 60)  # t = 75
    assert out.getvalue().splitlines() == [
        "epoch 1/1: 2/6 steps - loss 0.5000 - 31.0s",
        "epoch 1/1: 4/6 steps - loss 0.2500 - 62.0s",
        "epoch 1/1: loss 0.2000 - 75.0s (1 samples/s)",
    ]


def test_quiet_progress_writes_nothing(monkeypatch):
    clock = iter([0.0, 0.0, 100.0, 200.0, 300.0])
    monkeypatch.setattr(progress.time, "perf_counter", lambda: next(clock))
    out = io.StringIO()
    bar = Progress(1, 3, stream=out, verbose=0)
    bar.epoch_begin(0)
    bar.batch_end(0, {"loss": 1.0})
    bar.epoch_end({"loss": 1.0}, 3)
    assert out.getvalue() == ""
