"""Learning-rate schedules: callables `schedule(step) -> lr`, with `step` the number of optimizer steps done.

Formulas follow Keras (`keras.optimizers.schedules`):
  step_decay(initial, drop, every)                      initial * drop ** floor(step / every)
  exponential_decay(initial, decay_rate, decay_steps,   initial * decay_rate ** (step / decay_steps)
                    staircase=False)                    (exponent floored when staircase)
  cosine_decay(initial, decay_steps, alpha=0.0)         initial * ((1 - alpha) * c + alpha), with
                                                        c = 0.5 * (1 + cos(pi * min(step, decay_steps) / decay_steps))
  warmup(warmup_steps, ...)                             linear from `start` at step 0 to the peak at step
                                                        `warmup_steps`, then the wrapped schedule (shifted by
                                                        warmup_steps), a constant, or a cosine decay
  constant(value)
"""
from __future__ import annotations

import math
from typing import Any, Callable

from nnd.compiler.diagnostics import NndError, did_you_mean
from nnd.runtime.named import check_arguments, lookup

__all__ = ["Schedule", "Constant", "StepDecay", "ExponentialDecay", "CosineDecay", "Warmup",
           "constant", "step_decay", "exponential_decay", "cosine_decay", "warmup", "make_schedule", "SCHEDULES"]


def _number(sched: str, key: str, v: Any, *, positive: bool = False, nonneg: bool = False,
            integer: bool = False) -> float:
    ok = isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)
    if ok and integer and float(v) != int(v):
        ok = False
    if ok and positive and not v > 0:
        ok = False
    if ok and nonneg and not v >= 0:
        ok = False
    if not ok:
        what = ("a positive" if positive else "a non-negative" if nonneg else "a finite") + (
            " integer" if integer else " number")
        raise NndError(f"schedule '{sched}': {key} must be {what}, got {v!r}")
    return int(v) if integer else float(v)


class Schedule:
    """Base class: a callable `step -> learning rate`; `lr(step)` is the same call."""

    name = "schedule"

    def __call__(self, step: int) -> float:
        if isinstance(step, bool) or not isinstance(step, int) and not (hasattr(step, "__index__")):
            raise NndError(f"schedule '{self.name}': step must be an integer, got {step!r}")
        step = int(step)
        if step < 0:
            raise NndError(f"schedule '{self.name}': step must be >= 0, got {step}")
        return float(self._lr(step))

    def lr(self, step: int) -> float:
        return self(step)

    def _lr(self, step: int) -> float:
        raise NotImplementedError

    def get_config(self) -> dict[str, Any]:
        return {k: v for k, v in vars(self).items() if not k.startswith("_")}

    def __repr__(self) -> str:
        return f"{self.name}({', '.join(f'{k}={v!r}' for k, v in self.get_config().items())})"


class Constant(Schedule):
    name = "constant"

    def __init__(self, value: float):
        self.value = _number(self.name, "value", value, nonneg=True)

    def _lr(self, step):
        return self.value


class StepDecay(Schedule):
    name = "step_decay"

    def __init__(self, initial: float, drop: float = 0.5, every: int = 10):
        self.initial = _number(self.name, "initial", initial, nonneg=True)
        self.drop = _number(self.name, "drop", drop, positive=True)
        self.every = _number(self.name, "every", every, positive=True, integer=True)

    def _lr(self, step):
        return self.initial * self.drop ** (step // self.every)


class ExponentialDecay(Schedule):
    name = "exponential_decay"

    def __init__(self, initial: float, decay_rate: float, decay_steps: int, staircase: bool = False):
        self.initial = _number(self.name, "initial", initial, nonneg=True)
        self.decay_rate = _number(self.name, "decay_rate", decay_rate, positive=True)
        self.decay_steps = _number(self.name, "decay_steps", decay_steps, positive=True, integer=True)
        if not isinstance(staircase, bool):
            raise NndError(f"schedule '{self.name}': staircase must be true or false, got {staircase!r}")
        self.staircase = staircase

    def _lr(self, step):
        p = step / self.decay_steps
        if self.staircase:
            p = math.floor(p)
        return self.initial * self.decay_rate ** p


class CosineDecay(Schedule):
    name = "cosine_decay"

    def __init__(self, initial: float, decay_steps: int, alpha: float = 0.0):
        self.initial = _number(self.name, "initial", initial, nonneg=True)
        self.decay_steps = _number(self.name, "decay_steps", decay_steps, positive=True, integer=True)
        self.alpha = _number(self.name, "alpha", alpha, nonneg=True)
        if self.alpha > 1:
            raise NndError(f"schedule '{self.name}': alpha (the final fraction of the initial rate) must be "
                           f"in [0, 1], got {alpha!r}")

    def _lr(self, step):
        s = min(step, self.decay_steps)
        cosine = 0.5 * (1.0 + math.cos(math.pi * s / self.decay_steps))
        return self.initial * ((1.0 - self.alpha) * cosine + self.alpha)


class Warmup(Schedule):
    """Linear warmup from `start` (step 0) to the peak (step `warmup_steps`), then `after(step - warmup_steps)`.

    The peak is `after(0)`. Build it with `warmup(...)` to pick the schedule after the warmup.
    """

    name = "warmup"

    def __init__(self, warmup_steps: int, after: Callable[[int], float], start: float = 0.0):
        self.warmup_steps = _number(self.name, "warmup_steps", warmup_steps, positive=True, integer=True)
        if not callable(after):
            raise NndError(f"schedule '{self.name}': the wrapped schedule must be callable, got {after!r}")
        self.after = after
        self.start = _number(self.name, "start", start, nonneg=True)

    def _lr(self, step):
        if step < self.warmup_steps:
            peak = float(self.after(0))
            return self.start + (peak - self.start) * step / self.warmup_steps
        return float(self.after(step - self.warmup_steps))


def constant(value: float) -> Constant:
    return Constant(value)


def step_decay(initial: float, drop: float = 0.5, every: int = 10) -> StepDecay:
    return StepDecay(initial, drop, every)


def exponential_decay(initial: float, decay_rate: float, decay_steps: int, staircase: bool = False) -> ExponentialDecay:
    return ExponentialDecay(initial, decay_rate, decay_steps, staircase)


def cosine_decay(initial: float, decay_steps: int, alpha: float = 0.0) -> CosineDecay:
    return CosineDecay(initial, decay_steps, alpha)


def warmup(warmup_steps: int, initial: float | None = None, wrapped: Callable[[int], float] | None = None,
           then: str = "constant", decay_steps: int | None = None, alpha: float = 0.0,
           start: float = 0.0) -> Warmup:
    """Linear warmup over `warmup_steps`, then `wrapped`, or (with `initial`) a constant or a cosine decay.

    `then="cosine"` needs `decay_steps`, counted from the end of the warmup.
    """
    if (wrapped is None) == (initial is None):
        raise NndError("schedule 'warmup': give exactly one of initial (the peak learning rate) or wrapped "
                       "(the schedule to run after the warmup)")
    if wrapped is not None:
        if then != "constant" or decay_steps is not None:
            raise NndError("schedule 'warmup': then/decay_steps apply only with initial, not with wrapped")
        return Warmup(warmup_steps, wrapped, start)
    if then == "constant":
        if decay_steps is not None:
            raise NndError("schedule 'warmup': decay_steps is only used with then='cosine'")
        return Warmup(warmup_steps, Constant(initial), start)
    if then == "cosine":
        if decay_steps is None:
            raise NndError("schedule 'warmup': then='cosine' needs decay_steps")
        return Warmup(warmup_steps, CosineDecay(initial, decay_steps, alpha), start)
    hint = did_you_mean(str(then), ["constant", "cosine"])
    raise NndError(f"schedule 'warmup': then must be 'constant' or 'cosine', got {then!r}"
                   + (f"; did you mean '{hint}'?" if hint else ""))


SCHEDULES: dict[str, Callable[..., Schedule]] = {
    "constant": constant,
    "step_decay": step_decay,
    "exponential_decay": exponential_decay,
    "cosine_decay": cosine_decay,
    "warmup": warmup,
}


def make_schedule(name: str, **args: Any) -> Schedule:
    """Build a schedule by name with keyword arguments; errors name the schedule and the valid arguments."""
    key, fn = lookup(SCHEDULES, name, "learning-rate schedule")
    check_arguments(fn, args, "schedule", key)
    if key == "warmup" and isinstance(args.get("wrapped"), dict):
        inner = dict(args["wrapped"])
        if "name" not in inner:
            raise NndError("schedule 'warmup': a wrapped schedule given as a table needs a 'name'")
        args = {**args, "wrapped": make_schedule(inner.pop("name"), **inner)}
    return fn(**args)
