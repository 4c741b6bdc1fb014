"""Initial parameter values, drawn as Keras draws them (variance scaling with a truncated normal)."""
from __future__ import annotations

import math

import numpy as np

from nnd.compiler.ir import Initializer, Parameter

# The standard deviation of a unit normal truncated at two standard deviations; Keras divides by it
# so truncated draws keep the intended variance.
_TRUNCATED_STD = 0.87962566103423978


def _fans(shape: tuple[int, ...]) -> tuple[int, int]:
    if len(shape) == 0:
        return 1, 1
    if len(shape) == 1:
        return shape[0], shape[0]
    receptive = math.prod(shape[:-2])
    return shape[-2] * receptive, shape[-1] * receptive


def _truncated_normal(rng: np.random.Generator, shape, mean: float, stddev: float) -> np.ndarray:
    values = rng.standard_normal(shape)
    bad = np.abs(values) > 2.0
    while bad.any():
        values[bad] = rng.standard_normal(int(bad.sum()))
        bad = np.abs(values) > 2.0
    return mean + stddev * values


def _variance_scaling(rng, shape, scale: float, mode: str, distribution: str, fans: tuple[int, int]):
    fan_in, fan_out = fans
    fan = {"fan_in": fan_in, "fan_out": fan_out, "fan_avg": (fan_in + fan_out) / 2.0}[mode]
    variance = scale / max(1.0, fan)
    if distribution == "uniform":
        limit = math.sqrt(3.0 * variance)
        return rng.uniform(-limit, limit, shape)
    return _truncated_normal(rng, shape, 0.0, math.sqrt(variance) / _TRUNCATED_STD)


_SCALING = {  # name -> (scale, mode, distribution)
    "glorot_uniform": (1.0, "fan_avg", "uniform"), "glorot_normal": (1.0, "fan_avg", "normal"),
    "he_uniform": (2.0, "fan_in", "uniform"), "he_normal": (2.0, "fan_in", "normal"),
    "lecun_uniform": (1.0, "fan_in", "uniform"), "lecun_normal": (1.0, "fan_in", "normal"),
}


def draw(init: Initializer, shape: tuple[int, ...], rng: np.random.Generator) -> np.ndarray:
    args = dict(init.args)
    if init.name in _SCALING:
        fans = _fans(shape)
        fans = (int(args.get("fan_in", fans[0])), int(args.get("fan_out", fans[1])))
        return _variance_scaling(rng, shape, *_SCALING[init.name], fans)
    if init.name == "zeros":
        return np.zeros(shape)
    if init.name == "ones":
        return np.ones(shape)
    if init.name == "constant":
        return np.full(shape, args.get("value", 0.0))
    if init.name == "random_normal":
        return rng.normal(args.get("mean", 0.0), args.get("stddev", 0.05), shape)
    if init.name == "random_uniform":
        return rng.uniform(args.get("minval", -0.05), args.get("maxval", 0.05), shape)
    if init.name == "truncated_normal":
        return _truncated_normal(rng, shape, args.get("mean", 0.0), args.get("stddev", 0.05))
    if init.name == "orthogonal":
        return _orthogonal(rng, shape, args.get("gain", 1.0))
    if init.name == "unit_forget_bias":
        # An LSTM bias: the layer's bias initializer, with the forget gate's quarter set to one.
        units = int(args["units"])
        values = draw(Initializer(str(args["base"]), tuple(args.get("base_args", ()))), shape, rng)
        values[units:2 * units] = 1.0
        return values
    raise ValueError(f"unknown initializer {init.name!r}")


def _orthogonal(rng: np.random.Generator, shape: tuple[int, ...], gain: float) -> np.ndarray:
    rows, cols = math.prod(shape[:-1]), shape[-1]
    flat = rng.standard_normal((max(rows, cols), min(rows, cols)))
    q, r = np.linalg.qr(flat)
    q *= np.sign(np.diag(r))  # makes the result uniformly distributed over orthogonal matrices
    if rows < cols:
        q = q.T
    return gain * q[:rows, :cols].reshape(shape)


def initialize(params: dict[str, Parameter], seed: int, dtype=np.float32) -> dict[str, np.ndarray]:
    """Fresh values for every parameter, in declaration order, reproducible from `seed`."""
    rng = np.random.default_rng(seed)
    return {name: draw(p.initializer, tuple(p.type.shape), rng).astype(dtype) for name, p in params.items()}
