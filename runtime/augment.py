"""Seeded image augmentation of NHWC float batches, for training batches only (never validation/test).

Each augmentation is a callable `aug(batch, rng) -> new batch` drawing one independent random transform per
sample from the NumPy Generator `rng`, vectorized over the batch (index arithmetic, no per-sample loop).
The input batch is never modified. Pixels that come from outside the image are filled with `fill` (0).

    aug = Augmenter([make_augmentation("random_flip", mode="horizontal"),
                     make_augmentation("random_rotation", degrees=10)])
    xb = aug.apply(xb, rng)
"""
from __future__ import annotations

import math
from typing import Any, Callable, Sequence

import numpy as np

from nnd.compiler.diagnostics import NndError, did_you_mean
from nnd.runtime.named import build

__all__ = ["Augmentation", "RandomFlip", "RandomTranslation", "RandomCrop", "RandomRotation", "GaussianNoise",
           "Augmenter", "make_augmentation", "AUGMENTATIONS"]


def _check_batch(name: str, batch: Any) -> np.ndarray:
    if not isinstance(batch, np.ndarray):
        raise NndError(f"augmentation '{name}' needs a NumPy array batch, got {type(batch).__name__}")
    if batch.ndim != 4:
        raise NndError(f"augmentation '{name}' needs image batches of shape (batch, height, width, channels), "
                       f"got shape {batch.shape}")
    if batch.dtype.kind != "f":
        raise NndError(f"augmentation '{name}' needs a floating-point batch, got dtype {batch.dtype}")
    return batch


def _as_rng(rng: Any) -> np.random.Generator:
    if isinstance(rng, np.random.Generator):
        return rng
    if isinstance(rng, (int, np.integer)) and not isinstance(rng, bool):
        return np.random.default_rng(int(rng))
    raise TypeError(f"augmentation needs a numpy Generator or an int seed, got {rng!r}")


def _number(aug: str, key: str, v: Any, lo: float = 0.0, hi: float = math.inf, integer: bool = False) -> float:
    ok = isinstance(v, (int, float, np.integer, np.floating)) and not isinstance(v, bool) and math.isfinite(v)
    ok = ok and lo <= v <= hi and (not integer or float(v) == int(v))
    if not ok:
        kind = "an integer" if integer else "a number"
        rng = f"in [{lo:g}, {hi:g}]" if hi != math.inf else f">= {lo:g}"
        raise NndError(f"augmentation '{aug}': {key} must be {kind} {rng}, got {v!r}")
    return int(v) if integer else float(v)


class Augmentation:
    name = "augmentation"

    def __call__(self, batch: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        batch = _check_batch(self.name, batch)
        return self._apply(batch, _as_rng(rng))

    def _apply(self, batch: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        raise NotImplementedError

    def __repr__(self) -> str:
        return f"{self.name}({', '.join(f'{k}={v!r}' for k, v in vars(self).items())})"


class RandomFlip(Augmentation):
    """Mirror each sample with probability 1/2: mode horizontal, vertical or horizontal_and_vertical."""

    name = "random_flip"
    _MODES = ("horizontal", "vertical", "horizontal_and_vertical")

    def __init__(self, mode: str = "horizontal"):
        if mode not in self._MODES:
            hint = did_you_mean(str(mode), self._MODES)
            raise NndError(f"augmentation 'random_flip': mode must be one of {', '.join(self._MODES)}, got {mode!r}"
                           + (f"; did you mean '{hint}'?" if hint else ""))
        self.mode = mode

    def _apply(self, batch, rng):
        out = batch
        n = batch.shape[0]
        if self.mode in ("horizontal", "horizontal_and_vertical"):
            flip = rng.random(n) < 0.5
            out = np.where(flip[:, None, None, None], out[:, :, ::-1, :], out)
        if self.mode in ("vertical", "horizontal_and_vertical"):
            flip = rng.random(n) < 0.5
            out = np.where(flip[:, None, None, None], out[:, ::-1, :, :], out)
        return out if out is not batch else batch.copy()


def _shift(batch: np.ndarray, dy: np.ndarray, dx: np.ndarray, fill: float) -> np.ndarray:
    """Translate sample k by (dy[k], dx[k]) whole pixels (positive = down/right), filling uncovered pixels."""
    n, h, w, _ = batch.shape
    rows = np.arange(h)[None, :] - dy[:, None]
    cols = np.arange(w)[None, :] - dx[:, None]
    valid = ((rows >= 0) & (rows < h))[:, :, None] & ((cols >= 0) & (cols < w))[:, None, :]
    gathered = batch[np.arange(n)[:, None, None], np.clip(rows, 0, h - 1)[:, :, None],
                     np.clip(cols, 0, w - 1)[:, None, :]]
    return np.where(valid[..., None], gathered, batch.dtype.type(fill))


class RandomTranslation(Augmentation):
    """Shift each sample by a whole number of pixels, uniform in +-round(factor * size), independently in
    height and width; uncovered pixels get `fill`."""

    name = "random_translation"

    def __init__(self, height_factor: float = 0.1, width_factor: float | None = None, fill: float = 0.0):
        self.height_factor = _number(self.name, "height_factor", height_factor, 0.0, 1.0)
        self.width_factor = self.height_factor if width_factor is None else _number(
            self.name, "width_factor", width_factor, 0.0, 1.0)
        self.fill = _number(self.name, "fill", fill, -math.inf)

    def _apply(self, batch, rng):
        n, h, w, _ = batch.shape
        my, mx = int(round(self.height_factor * h)), int(round(self.width_factor * w))
        dy = rng.integers(-my, my + 1, size=n)
        dx = rng.integers(-mx, mx + 1, size=n)
        return _shift(batch, dy, dx, self.fill)


def random_shift(fraction: float = 0.1, fill: float = 0.0) -> RandomTranslation:
    """RandomTranslation with the same fraction for height and width."""
    return RandomTranslation(fraction, fraction, fill)


class RandomCrop(Augmentation):
    """Pad by `padding` pixels of `fill` on every side, then crop a random window of the original size.

    Computed as the equivalent whole-pixel shift in [-padding, padding] without building the padded batch.
    """

    name = "random_crop"

    def __init__(self, padding: int = 4, fill: float = 0.0):
        self.padding = _number(self.name, "padding", padding, 0, integer=True)
        self.fill = _number(self.name, "fill", fill, -math.inf)

    def _apply(self, batch, rng):
        n = batch.shape[0]
        p = self.padding
        dy = rng.integers(-p, p + 1, size=n)
        dx = rng.integers(-p, p + 1, size=n)
        return _shift(batch, dy, dx, self.fill)


class RandomRotation(Augmentation):
    """Rotate each sample about its centre by an angle uniform in +-degrees; nearest or bilinear sampling."""

    name = "random_rotation"

    def __init__(self, degrees: float = 10.0, interpolation: str = "bilinear", fill: float = 0.0):
        self.degrees = _number(self.name, "degrees", degrees, 0.0, 180.0)
        if interpolation not in ("nearest", "bilinear"):
            raise NndError(f"augmentation 'random_rotation': interpolation must be 'nearest' or 'bilinear', "
                           f"got {interpolation!r}")
        self.interpolation = interpolation
        self.fill = _number(self.name, "fill", fill, -math.inf)

    def _apply(self, batch, rng):
        n = batch.shape[0]
        angles = np.deg2rad(rng.uniform(-self.degrees, self.degrees, size=n))
        return rotate(batch, angles, self.interpolation, self.fill)


def rotate(batch: np.ndarray, angles: np.ndarray, interpolation: str = "bilinear", fill: float = 0.0) -> np.ndarray:
    """Rotate sample k by angles[k] radians (counter-clockwise as displayed) about the image centre."""
    n, h, w, _ = batch.shape
    cy, cx = (h - 1) / 2.0, (w - 1) / 2.0
    i = np.arange(h, dtype=np.float64)[None, :, None] - cy
    j = np.arange(w, dtype=np.float64)[None, None, :] - cx
    cos, sin = np.cos(angles)[:, None, None], np.sin(angles)[:, None, None]
    # Inverse mapping: the source of output pixel (i, j) is the output position rotated back.
    ys = cy + cos * i + sin * j
    xs = cx - sin * i + cos * j
    nidx = np.arange(n)[:, None, None]
    fill_v = batch.dtype.type(fill)
    if interpolation == "nearest":
        yi, xi = np.rint(ys).astype(np.intp), np.rint(xs).astype(np.intp)
        valid = (yi >= 0) & (yi < h) & (xi >= 0) & (xi < w)
        out = batch[nidx, np.clip(yi, 0, h - 1), np.clip(xi, 0, w - 1)]
        return np.where(valid[..., None], out, fill_v)
    y0, x0 = np.floor(ys), np.floor(xs)
    wy, wx = (ys - y0)[..., None], (xs - x0)[..., None]
    y0, x0 = y0.astype(np.intp), x0.astype(np.intp)
    out = np.zeros(batch.shape, dtype=np.float64)
    for dy, wy_ in ((0, 1.0 - wy), (1, wy)):
        for dx, wx_ in ((0, 1.0 - wx), (1, wx)):
            yy, xx = y0 + dy, x0 + dx
            valid = ((yy >= 0) & (yy < h) & (xx >= 0) & (xx < w))[..., None]
            corner = np.where(valid, batch[nidx, np.clip(yy, 0, h - 1), np.clip(xx, 0, w - 1)], fill_v)
            out += wy_ * wx_ * corner
    return out.astype(batch.dtype)


class GaussianNoise(Augmentation):
    """Add independent N(0, stddev^2) noise to every pixel."""

    name = "gaussian_noise"

    def __init__(self, stddev: float = 0.1):
        self.stddev = _number(self.name, "stddev", stddev, 0.0)

    def _apply(self, batch, rng):
        work = batch.dtype if batch.dtype in (np.float32, np.float64) else np.dtype(np.float32)
        noise = rng.standard_normal(batch.shape, dtype=work)
        noise *= self.stddev
        return (batch + noise).astype(batch.dtype, copy=False)


AUGMENTATIONS: dict[str, Callable[..., Augmentation]] = {
    "random_flip": RandomFlip,
    "random_translation": RandomTranslation,
    "random_shift": random_shift,
    "random_crop": RandomCrop,
    "random_rotation": RandomRotation,
    "gaussian_noise": GaussianNoise,
}


def make_augmentation(name: str, **args: Any) -> Augmentation:
    """Build an augmentation by name; unknown names and arguments raise NndError with suggestions."""
    return build(AUGMENTATIONS, name, args, "augmentation")


class Augmenter:
    """A pipeline of augmentations applied in order to a training batch."""

    def __init__(self, augmentations: Sequence[Augmentation] = ()):
        self.augmentations = list(augmentations)
        for a in self.augmentations:
            if not callable(a):
                raise NndError(f"Augmenter: {a!r} is not an augmentation")

    def apply(self, batch: np.ndarray, rng: np.random.Generator | int) -> np.ndarray:
        batch = _check_batch("augmenter", batch)
        rng = _as_rng(rng)
        for aug in self.augmentations:
            batch = aug(batch, rng)
        return batch

    __call__ = apply

    def __bool__(self) -> bool:
        return bool(self.augmentations)

    def __repr__(self) -> str:
        return f"Augmenter({self.augmentations!r})"
