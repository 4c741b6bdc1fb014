"""Training progress: a live bar on a terminal, one line per epoch otherwise (logs, CI)."""
from __future__ import annotations

import sys
import time
from typing import TextIO

LOG_EVERY = 30.0  # seconds between the progress lines of an epoch written to a log


def format_logs(logs: dict[str, float]) -> str:
    return " - ".join(f"{k} {v:.4f}" for k, v in logs.items())


class Progress:
    def __init__(self, epochs: int, steps: int, stream: TextIO | None = None, verbose: int = 1):
        self.epochs = epochs
        self.steps = steps
        self.stream = stream or sys.stdout
        self.verbose = verbose
        # Keras' verbose=2: one line per epoch, never the live bar
        self.live = verbose == 1 and hasattr(self.stream, "isatty") and self.stream.isatty()
        self.started = time.perf_counter()
        self.last_draw = 0.0
        self.epoch, self.steps_done = 0, 0

    def epoch_begin(self, epoch: int) -> None:
        self.epoch = epoch
        self.steps_done = 0
        self.started = time.perf_counter()

    def batch_end(self, index: int, logs: dict[str, float]) -> None:
        self.steps_done = index + 1
        if not self.live:
            self._log_line(index, logs)
            return
        now = time.perf_counter()
        if now - self.last_draw < 0.1 and index + 1 < self.steps:
            return  # redrawing every batch would cost more than the batch
        self.last_draw = now
        done = (index + 1) / self.steps
        width = 24
        filled = int(width * done)
        bar = "=" * filled + (">" if filled < width else "") + "." * (width - filled - 1)
        self.stream.write(f"\repoch {self.epoch + 1}/{self.epochs} [{bar}] {index + 1}/{self.steps} "
                          f"{format_logs(logs)} {now - self.started:.1f}s")
        self.stream.flush()

    def _log_line(self, index: int, logs: dict[str, float]) -> None:
        """Without a terminal (a log file, CI), a line every LOG_EVERY seconds of a long epoch, so that a
        slow epoch does not look like a hung one."""
        if self.verbose <= 0 or index + 1 >= self.steps:
            return
        now = time.perf_counter()
        if now - max(self.started, self.last_draw) < LOG_EVERY:
            return
        self.last_draw = now
        self.stream.write(f"epoch {self.epoch + 1}/{self.epochs}: {index + 1:,}/{self.steps:,} steps - "
                          f"{format_logs(logs)} - {now - self.started:.1f}s\n")
        self.stream.flush()

    def epoch_end(self, logs: dict[str, float], samples: int) -> None:
        if self.verbose <= 0:
            return
        seconds = time.perf_counter() - self.started
        rate = samples / seconds if seconds > 0 else 0.0
        prefix = "\r" if self.live else ""
        self.stream.write(f"{prefix}epoch {self.epoch + 1}/{self.epochs}: {format_logs(logs)} - "
                          f"{seconds:.1f}s ({rate:,.0f} samples/s)\x1b[K\n" if self.live else
                          f"epoch {self.epoch + 1}/{self.epochs}: {format_logs(logs)} - "
                          f"{seconds:.1f}s ({rate:,.0f} samples/s)\n")
        self.stream.flush()

    def interrupted(self) -> None:
        """End the live bar's line, so that what is printed next starts on a line of its own."""
        if self.live:
            self.stream.write("\n")
            self.stream.flush()

    def message(self, text: str) -> None:
        if self.verbose > 0:
            self.stream.write(text + "\n")
            self.stream.flush()
