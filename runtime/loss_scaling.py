"""Dynamic loss scaling for mixed-precision training (float16 compute, float32 master weights).

float16 keeps 10 bits of mantissa and flushes magnitudes below about 6e-8 to zero, where many gradients
live. The training graph therefore differentiates the loss times `scale`; the gradients come back in
float16, are converted to float32 and divided by the scale before the optimizer sees them. A step whose
gradients overflowed (inf or nan) is skipped and the scale halved; after `growth_interval` good steps in
a row it doubles again, up to `maximum` (float16's largest power of two below its limit of 65,504, so
the scale itself stays representable). This is the scheme of PyTorch's GradScaler and Keras'
LossScaleOptimizer, with their defaults for the interval and the factor.
"""
from __future__ import annotations

from typing import Any

MAXIMUM_SCALE = 2.0 ** 15


class LossScaler:
    def __init__(self, initial: float = MAXIMUM_SCALE, growth_interval: int = 2000, factor: float = 2.0,
                 minimum: float = 1.0, maximum: float = MAXIMUM_SCALE):
        self.scale = float(initial)
        self.growth_interval = growth_interval
        self.factor = factor
        self.minimum, self.maximum = minimum, maximum
        self.good_steps = 0
        self.skipped = 0

    def unscale(self, grads: dict[str, Any], xp, dtype: Any) -> dict[str, Any] | None:
        """The gradients in `dtype` divided by the scale, or None (and a smaller scale) on overflow."""
        unscaled = {name: grad.astype(dtype) / dtype(self.scale) for name, grad in grads.items()}
        if all(bool(xp.isfinite(g).all()) for g in unscaled.values()):
            self.good_steps += 1
            if self.good_steps >= self.growth_interval:
                self.scale = min(self.scale * self.factor, self.maximum)
                self.good_steps = 0
            return unscaled
        self.scale = max(self.scale / self.factor, self.minimum)
        self.good_steps = 0
        self.skipped += 1
        return None

    def state(self) -> dict[str, float]:
        return {"scale": self.scale, "good_steps": self.good_steps, "skipped": self.skipped}

    def load_state(self, state: dict[str, Any]) -> None:
        self.scale = float(state.get("scale", self.scale))
        self.good_steps = int(state.get("good_steps", 0))
        self.skipped = int(state.get("skipped", 0))
