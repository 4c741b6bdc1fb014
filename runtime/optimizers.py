"""Gradient-descent optimizers with Keras 3 semantics, updating flat parameter buffers in place.

An optimizer owns one contiguous flat buffer for the parameters, one for the gradients and one per slot
(momentum, first/second moments, ...). `bind(params)` copies the parameters into the flat buffer and
rebinds every entry of the dict to a view into it, so a step is a handful of vectorized in-place ops over
the whole model, whatever its number of tensors:

    opt = make_optimizer("adam", lr=1e-3)
    params = opt.bind(params)          # same dict, entries are now views into opt's flat buffer
    opt.step(grads)                    # grads: name -> array, copied into the flat gradient buffer
    opt.lr = schedule(opt.iterations)  # learning rate is settable (schedules, ReduceLROnPlateau)

Gradients can also be written straight into `opt.grad_views()` and passed back to `step`, skipping the copy.

All math is written against an array module `xp` (numpy by default; cupy works the same way).

Keras defaults are used throughout. Notably the Keras `epsilon` for adam/adamw/rmsprop/adagrad is 1e-7
and it sits where Keras puts it, which is not where torch puts it:
  adam:    p -= lr*sqrt(1-b2^t)/(1-b1^t) * m / (sqrt(v) + eps)   (torch: eps added after bias-correcting v)
  rmsprop: p -= lr * g / sqrt(v + eps)                            (torch: sqrt(v) + eps)
  adagrad: p -= lr * g / sqrt(acc + eps)                          (torch: sqrt(acc) + eps)
Weight decay is decoupled as in Keras 3 for every optimizer: before the update, p -= p * weight_decay * lr.
"""
from __future__ import annotations

import math
from types import ModuleType
from typing import Any, Callable

import numpy as np

from nnd.compiler.diagnostics import NndError, did_you_mean

__all__ = ["Optimizer", "SGD", "Adam", "AdamW", "RMSprop", "Adagrad", "make_optimizer", "OPTIMIZERS"]

_CLIP_OPTIONS = ("clipnorm", "global_clipnorm", "clipvalue")

# One-pass updates by array module name (the native kernels register them for numpy, the CUDA ones for
# cupy); each returns True when it updated the buffers in place, False to leave it to the array ops.
# Adam: fn(p, g, m, v, alpha, beta_1, beta_2, epsilon); SGD with momentum: fn(p, g, m, lr, momentum,
# nesterov); RMSprop, not centered: fn(p, g, v, m or None, lr, rho, epsilon, momentum).
ADAM_UPDATES: dict[str, Callable[..., bool]] = {}
SGD_MOMENTUM_UPDATES: dict[str, Callable[..., bool]] = {}
RMSPROP_UPDATES: dict[str, Callable[..., bool]] = {}


def _to_numpy(a: Any) -> np.ndarray:
    """A host copy of a numpy or cupy array."""
    get = getattr(a, "get", None)
    return np.array(get() if callable(get) else a, copy=True)


class Optimizer:
    """Base class: flat-buffer bookkeeping, gradient clipping, weight decay, learning rate and state.

    Subclasses declare `name`, `_HYPER` (hyperparameter -> default) and implement `_slots()` (slot names
    and initial values) and `_update(lr, t)` working on `self._flat`, `self._grad`, `self._slot[...]` and
    the scratch buffer `self._tmp`.
    """

    name = "optimizer"
    _HYPER: dict[str, Any] = {}

    def __init__(self, *, lr: float | Callable[[int], float] | None = None, weight_decay: float | None = None,
                 clipnorm: float | None = None, global_clipnorm: float | None = None,
                 clipvalue: float | None = None, xp: ModuleType = np, **hyper: Any):
        self.xp = xp
        unknown = sorted(set(hyper) - set(self._HYPER))
        if unknown:
            raise NndError(_unknown_hyper_message(self.name, unknown[0], type(self)))
        for key, default in self._HYPER.items():
            setattr(self, key, hyper.get(key, default))
        self.weight_decay = None if weight_decay in (None, 0, 0.0) else _nonneg(self.name, "weight_decay", weight_decay)
        clips = {k: v for k, v in (("clipnorm", clipnorm), ("global_clipnorm", global_clipnorm),
                                    ("clipvalue", clipvalue)) if v is not None}
        if len(clips) > 1:
            raise NndError(f"optimizer '{self.name}': only one of clipnorm, global_clipnorm and clipvalue can be "
                           f"set (got {', '.join(f'{k}={v}' for k, v in clips.items())})")
        for k, v in clips.items():
            if not _is_number(v) or not v > 0:
                raise NndError(f"optimizer '{self.name}': {k} must be a positive number, got {v!r}")
        self.clipnorm = float(clipnorm) if clipnorm is not None else None
        self.global_clipnorm = float(global_clipnorm) if global_clipnorm is not None else None
        self.clipvalue = float(clipvalue) if clipvalue is not None else None
        self._schedule: Callable[[int], float] | None = None
        self._lr = 0.0
        self.lr = self._HYPER_LR if lr is None else lr
        self._validate()
        self.iterations = 0
        self._names: list[str] = []
        self._shapes: dict[str, tuple[int, ...]] = {}
        self._offsets: dict[str, tuple[int, int]] = {}
        self._flat = None
        self._grad = None
        self._tmp = None
        self._slot: dict[str, Any] = {}
        self._param_views: dict[str, Any] = {}
        self._grad_views: dict[str, Any] = {}
        self._segment_ids = None
        self._pending_state: dict[str, np.ndarray] | None = None

    _HYPER_LR = 0.001

    # ----------------------------------------------------------------- learning rate

    @property
    def lr(self) -> float:
        """The learning rate of the next step (a schedule, when one was given, is evaluated at `iterations`)."""
        if self._schedule is not None:
            return float(self._schedule(self.iterations))
        return self._lr

    @lr.setter
    def lr(self, value: float | Callable[[int], float]) -> None:
        if callable(value):
            self._schedule = value
            return
        if not _is_number(value) or not math.isfinite(float(value)) or float(value) < 0:
            raise NndError(f"optimizer '{self.name}': learning rate must be a finite number >= 0, got {value!r}")
        self._schedule = None
        self._lr = float(value)

    learning_rate = lr

    # ----------------------------------------------------------------- binding

    def bind(self, params: dict[str, Any]) -> dict[str, Any]:
        """Copy `params` into one flat buffer and rebind every entry of `params` to a view into it.

        Returns the same dict. Arrays previously held in it are no longer updated by `step`.
        """
        xp = self.xp
        if not params:
            raise NndError(f"optimizer '{self.name}': no parameters to optimize")
        dtypes = {np.dtype(p.dtype) for p in params.values()}
        if len(dtypes) > 1:
            listing = ", ".join(f"'{k}': {np.dtype(v.dtype)}" for k, v in params.items())
            raise NndError(f"optimizer '{self.name}': all parameters must share one float dtype, got {listing}")
        dtype = dtypes.pop()
        if dtype.kind != "f":
            raise NndError(f"optimizer '{self.name}': parameters must be floating point, got dtype {dtype}")
        names = list(params)
        shapes = {k: tuple(int(d) for d in params[k].shape) for k in names}
        offsets: dict[str, tuple[int, int]] = {}
        total = 0
        for k in names:
            size = int(np.prod(shapes[k], dtype=np.int64))
            offsets[k] = (total, total + size)
            total += size
        flat = xp.empty(total, dtype=dtype)
        for k in names:
            a, b = offsets[k]
            flat[a:b] = xp.asarray(params[k], dtype=dtype).reshape(-1)
        self._names, self._shapes, self._offsets = names, shapes, offsets
        self._flat = flat
        self._grad = xp.zeros(total, dtype=dtype)
        self._tmp = xp.empty(total, dtype=dtype)
        self._slot = {}
        for slot, init in self._slots():
            buf = xp.empty(total, dtype=dtype)
            buf.fill(init)
            self._slot[slot] = buf
        self._param_views = {k: self._view(flat, k) for k in names}
        self._grad_views = {k: self._view(self._grad, k) for k in names}
        self._segment_ids = None
        for k in names:
            params[k] = self._param_views[k]
        if self._pending_state is not None:
            pending, self._pending_state = self._pending_state, None
            self.load_state_dict(pending)
        return params

    def _view(self, buf: Any, name: str) -> Any:
        a, b = self._offsets[name]
        return buf[a:b].reshape(self._shapes[name])

    @property
    def params(self) -> dict[str, Any]:
        """The bound parameter views (name -> array view into the flat buffer)."""
        return dict(self._param_views)

    @property
    def flat_params(self) -> Any:
        self._require_bound("flat_params")
        return self._flat

    def grad_views(self) -> dict[str, Any]:
        """Views into the flat gradient buffer; write gradients there and pass this dict to `step` to skip copies."""
        self._require_bound("grad_views")
        return dict(self._grad_views)

    def _require_bound(self, what: str) -> None:
        if self._flat is None:
            raise NndError(f"optimizer '{self.name}': {what} called before bind(params)")

    # ----------------------------------------------------------------- stepping

    def step(self, grads: dict[str, Any]) -> None:
        """Apply one update from `grads` (name -> array, one per bound parameter).

        The flat gradient buffer is clipped in place and used as scratch space during the update, so arrays
        obtained from `grad_views()` hold garbage afterwards; the caller's own gradient arrays are untouched.
        """
        self._require_bound("step")
        xp = self.xp
        missing = [k for k in self._names if k not in grads]
        if missing:
            raise NndError(f"optimizer '{self.name}': no gradient for parameter '{missing[0]}'"
                           + (f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""))
        extra = [k for k in grads if k not in self._offsets]
        if extra:
            hint = did_you_mean(extra[0], self._names)
            raise NndError(f"optimizer '{self.name}': gradient given for unknown parameter '{extra[0]}'"
                           + (f"; did you mean '{hint}'?" if hint else ""))
        for k in self._names:
            g = grads[k]
            view = self._grad_views[k]
            if g is view:
                continue
            if tuple(g.shape) != self._shapes[k]:
                raise NndError(f"optimizer '{self.name}': gradient of '{k}' has shape {tuple(g.shape)} but the "
                               f"parameter has shape {self._shapes[k]}")
            view[...] = g
        self._clip()
        lr = self.lr
        if self.weight_decay is not None:
            xp.multiply(self._flat, self.weight_decay * lr, out=self._tmp)
            xp.subtract(self._flat, self._tmp, out=self._flat)
        self._update(lr, self.iterations + 1)
        self.iterations += 1

    def _clip(self) -> None:
        xp, g = self.xp, self._grad
        if self.clipnorm is not None:
            # Per-parameter L2 norms from one pass over the flat buffer, scale g_i * c / max(||g_i||, c).
            if self._segment_ids is None:
                sizes = np.array([b - a for a, b in (self._offsets[k] for k in self._names)], dtype=np.int64)
                ids = np.repeat(np.arange(len(self._names), dtype=np.int32), sizes)
                self._segment_ids = xp.asarray(ids)
            xp.multiply(g, g, out=self._tmp)
            sq = xp.bincount(self._segment_ids, weights=self._tmp, minlength=len(self._names))
            norms = xp.sqrt(sq)
            scale = (self.clipnorm / xp.maximum(norms, self.clipnorm)).astype(g.dtype)
            xp.multiply(g, scale[self._segment_ids], out=g)
        elif self.global_clipnorm is not None:
            norm = math.sqrt(float(xp.vdot(g, g)))
            if norm > self.global_clipnorm:
                xp.multiply(g, self.global_clipnorm / norm, out=g)
        elif self.clipvalue is not None:
            xp.clip(g, -self.clipvalue, self.clipvalue, out=g)

    # ----------------------------------------------------------------- subclass hooks

    def _slots(self) -> list[tuple[str, float]]:
        return []

    def _validate(self) -> None:
        pass

    def _update(self, lr: float, t: int) -> None:
        raise NotImplementedError

    # ----------------------------------------------------------------- state

    def state_dict(self) -> dict[str, np.ndarray]:
        """Host copies: `iterations`, `learning_rate` and one `<slot>/<param>` array per slot and parameter."""
        state: dict[str, np.ndarray] = {
            "iterations": np.array(self.iterations, dtype=np.int64),
            "learning_rate": np.array(self.lr, dtype=np.float64),
        }
        if self._flat is None:
            if self._pending_state is not None:
                state.update({k: v for k, v in self._pending_state.items() if "/" in k})
            return state
        for slot, buf in self._slot.items():
            for k in self._names:
                state[f"{slot}/{k}"] = _to_numpy(self._view(buf, k))
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore what `state_dict` returned. Before `bind`, the state is kept and applied when binding."""
        if "iterations" not in state:
            raise NndError(f"optimizer '{self.name}': optimizer state has no 'iterations' entry "
                           f"(keys: {', '.join(sorted(state)) or 'none'})")
        if self._flat is None:
            self._pending_state = {k: np.asarray(v) for k, v in state.items()}
            self.iterations = int(np.asarray(state["iterations"]))
            return
        expected = {f"{slot}/{k}": self._shapes[k] for slot in self._slot for k in self._names}
        slot_keys = {k for k in state if k not in ("iterations", "learning_rate")}
        missing = sorted(set(expected) - slot_keys)
        if missing:
            raise NndError(f"optimizer '{self.name}': optimizer state is missing '{missing[0]}'"
                           + (f" (and {len(missing) - 1} more)" if len(missing) > 1 else "")
                           + " - was it saved by a different optimizer or model?")
        unexpected = sorted(slot_keys - set(expected))
        if unexpected:
            raise NndError(f"optimizer '{self.name}': optimizer state has unexpected entry '{unexpected[0]}' "
                           f"- was it saved by a different optimizer or model?")
        for key, shape in expected.items():
            arr = np.asarray(state[key])
            if tuple(arr.shape) != shape:
                raise NndError(f"optimizer '{self.name}': optimizer state '{key}' has shape {tuple(arr.shape)} "
                               f"but the parameter has shape {shape}")
        for key in expected:
            slot, _, name = key.partition("/")
            self._view(self._slot[slot], name)[...] = self.xp.asarray(state[key])
        self.iterations = int(np.asarray(state["iterations"]))
        if "learning_rate" in state and self._schedule is None:
            self.lr = float(np.asarray(state["learning_rate"]))

    def get_config(self) -> dict[str, Any]:
        cfg = {"name": self.name, "lr": self.lr}
        cfg.update({k: getattr(self, k) for k in self._HYPER})
        for k in ("weight_decay",) + _CLIP_OPTIONS:
            if getattr(self, k) is not None:
                cfg[k] = getattr(self, k)
        return cfg

    def __repr__(self) -> str:
        return f"{type(self).__name__}({', '.join(f'{k}={v!r}' for k, v in self.get_config().items() if k != 'name')})"


class SGD(Optimizer):
    """SGD with optional (Nesterov) momentum, Keras form: m = momentum*m - lr*g; p += m."""

    name = "sgd"
    _HYPER = {"momentum": 0.0, "nesterov": False}
    _HYPER_LR = 0.01

    def _validate(self) -> None:
        self.momentum = _in_range(self.name, "momentum", self.momentum, 0.0, 1.0)
        self.nesterov = _flag(self.name, "nesterov", self.nesterov)

    def _slots(self):
        return [("momentum", 0.0)] if self.momentum != 0 else []

    def _update(self, lr, t):
        xp, p, g, tmp = self.xp, self._flat, self._grad, self._tmp
        if self.momentum == 0:
            xp.multiply(g, lr, out=tmp)
            xp.subtract(p, tmp, out=p)
            return
        m = self._slot["momentum"]
        fused = SGD_MOMENTUM_UPDATES.get(xp.__name__)
        if fused is not None and fused(p, g, m, lr, self.momentum, self.nesterov):
            return
        xp.multiply(g, lr, out=tmp)
        xp.multiply(m, self.momentum, out=m)
        xp.subtract(m, tmp, out=m)
        if self.nesterov:
            xp.multiply(m, self.momentum, out=g)  # the gradient buffer is free to reuse now
            xp.subtract(g, tmp, out=g)
            xp.add(p, g, out=p)
        else:
            xp.add(p, m, out=p)


class Adam(Optimizer):
    """Adam (optionally AMSGrad), Keras form with epsilon outside the square root of the raw v."""

    name = "adam"
    _HYPER = {"beta_1": 0.9, "beta_2": 0.999, "epsilon": 1e-7, "amsgrad": False}

    def _validate(self) -> None:
        self.beta_1 = _in_range(self.name, "beta_1", self.beta_1, 0.0, 1.0, hi_open=True)
        self.beta_2 = _in_range(self.name, "beta_2", self.beta_2, 0.0, 1.0, hi_open=True)
        self.epsilon = _nonneg(self.name, "epsilon", self.epsilon)
        self.amsgrad = _flag(self.name, "amsgrad", self.amsgrad)

    def _slots(self):
        slots = [("m", 0.0), ("v", 0.0)]
        return slots + [("vhat", 0.0)] if self.amsgrad else slots

    def _update(self, lr, t):
        xp, p, g, tmp = self.xp, self._flat, self._grad, self._tmp
        m, v = self._slot["m"], self._slot["v"]
        alpha = lr * math.sqrt(1.0 - self.beta_2 ** t) / (1.0 - self.beta_1 ** t)
        fused = ADAM_UPDATES.get(xp.__name__)
        if not self.amsgrad and fused is not None and fused(p, g, m, v, alpha, self.beta_1, self.beta_2, self.epsilon):
            return
        xp.subtract(g, m, out=tmp)                  # m += (g - m) * (1 - beta_1)
        xp.multiply(tmp, 1.0 - self.beta_1, out=tmp)
        xp.add(m, tmp, out=m)
        xp.multiply(g, g, out=tmp)                  # v += (g^2 - v) * (1 - beta_2)
        xp.subtract(tmp, v, out=tmp)
        xp.multiply(tmp, 1.0 - self.beta_2, out=tmp)
        xp.add(v, tmp, out=v)
        if self.amsgrad:
            vhat = self._slot["vhat"]
            xp.maximum(vhat, v, out=vhat)
            v = vhat
        xp.sqrt(v, out=tmp)                         # p -= alpha * m / (sqrt(v) + eps)
        xp.add(tmp, self.epsilon, out=tmp)
        xp.multiply(m, alpha, out=g)
        xp.divide(g, tmp, out=tmp)
        xp.subtract(p, tmp, out=p)


class AdamW(Adam):
    """Adam with decoupled weight decay (Keras default 0.004)."""

    name = "adamw"

    def __init__(self, *, weight_decay: float | None = 0.004, **kw: Any):
        super().__init__(weight_decay=weight_decay, **kw)


class RMSprop(Optimizer):
    """RMSprop, Keras form: v = rho*v + (1-rho)*g^2; step = lr*g/sqrt(v [- mg^2] + eps); optional momentum."""

    name = "rmsprop"
    _HYPER = {"rho": 0.9, "momentum": 0.0, "epsilon": 1e-7, "centered": False}

    def _validate(self) -> None:
        self.rho = _in_range(self.name, "rho", self.rho, 0.0, 1.0, hi_open=True)
        self.momentum = _in_range(self.name, "momentum", self.momentum, 0.0, 1.0)
        self.epsilon = _nonneg(self.name, "epsilon", self.epsilon)
        self.centered = _flag(self.name, "centered", self.centered)

    def _slots(self):
        slots = [("velocity", 0.0)]
        if self.momentum > 0:
            slots.append(("momentum", 0.0))
        if self.centered:
            slots.append(("average_gradient", 0.0))
        return slots

    def _update(self, lr, t):
        xp, p, g, tmp = self.xp, self._flat, self._grad, self._tmp
        v, rho = self._slot["velocity"], self.rho
        fused = RMSPROP_UPDATES.get(xp.__name__)
        momentum = self._slot["momentum"] if self.momentum > 0 else None
        if not self.centered and fused is not None and fused(p, g, v, momentum, lr, rho, self.epsilon,
                                                             self.momentum):
            return
        xp.multiply(g, g, out=tmp)                  # v = rho*v + (1-rho)*g^2
        xp.multiply(tmp, 1.0 - rho, out=tmp)
        xp.multiply(v, rho, out=v)
        xp.add(v, tmp, out=v)
        if self.centered:
            a = self._slot["average_gradient"]
            xp.multiply(g, 1.0 - rho, out=tmp)
            xp.multiply(a, rho, out=a)
            xp.add(a, tmp, out=a)
            xp.multiply(a, a, out=tmp)
            xp.subtract(v, tmp, out=tmp)
            xp.add(tmp, self.epsilon, out=tmp)
        else:
            xp.add(v, self.epsilon, out=tmp)
        xp.sqrt(tmp, out=tmp)
        xp.multiply(g, lr, out=g)
        xp.divide(g, tmp, out=tmp)                  # tmp = increment
        if self.momentum > 0:
            mom = self._slot["momentum"]
            xp.multiply(mom, self.momentum, out=mom)
            xp.add(mom, tmp, out=mom)
            xp.subtract(p, mom, out=p)
        else:
            xp.subtract(p, tmp, out=p)


class Adagrad(Optimizer):
    """Adagrad, Keras form: acc += g^2; p -= lr * g / sqrt(acc + eps)."""

    name = "adagrad"
    _HYPER = {"initial_accumulator_value": 0.1, "epsilon": 1e-7}

    def _validate(self) -> None:
        self.initial_accumulator_value = _nonneg(self.name, "initial_accumulator_value",
                                                 self.initial_accumulator_value)
        self.epsilon = _nonneg(self.name, "epsilon", self.epsilon)

    def _slots(self):
        return [("accumulator", self.initial_accumulator_value)]

    def _update(self, lr, t):
        xp, p, g, tmp = self.xp, self._flat, self._grad, self._tmp
        acc = self._slot["accumulator"]
        xp.multiply(g, g, out=tmp)
        xp.add(acc, tmp, out=acc)
        xp.add(acc, self.epsilon, out=tmp)
        xp.sqrt(tmp, out=tmp)
        xp.multiply(g, lr, out=g)
        xp.divide(g, tmp, out=tmp)
        xp.subtract(p, tmp, out=p)


OPTIMIZERS: dict[str, type[Optimizer]] = {
    "sgd": SGD, "adam": Adam, "adamw": AdamW, "rmsprop": RMSprop, "adagrad": Adagrad,
}

_COMMON = ("lr", "learning_rate", "weight_decay") + _CLIP_OPTIONS


def _valid_hyper(cls: type[Optimizer]) -> list[str]:
    return ["lr"] + list(cls._HYPER) + ["weight_decay", *_CLIP_OPTIONS]


def _unknown_hyper_message(name: str, key: str, cls: type[Optimizer]) -> str:
    valid = _valid_hyper(cls)
    hint = did_you_mean(key, valid + ["learning_rate"])
    return (f"unknown hyperparameter '{key}' for optimizer '{name}'"
            + (f"; did you mean '{hint}'?" if hint else "")
            + f" (valid: {', '.join(valid)})")


def make_optimizer(name: str, xp: ModuleType = np, **hyper: Any) -> Optimizer:
    """Build an optimizer by name: sgd, adam, adamw, rmsprop, adagrad (case-insensitive).

    `learning_rate` is accepted as a synonym of `lr`; `lr` may be a float or a schedule `step -> lr`.
    """
    key = str(name).strip().lower()
    cls = OPTIMIZERS.get(key)
    if cls is None:
        hint = did_you_mean(key, OPTIMIZERS)
        raise NndError(f"unknown optimizer '{name}'" + (f"; did you mean '{hint}'?" if hint else "")
                       + f" (available: {', '.join(OPTIMIZERS)})")
    if "learning_rate" in hyper:
        if "lr" in hyper:
            raise NndError(f"optimizer '{key}': give either lr or learning_rate, not both")
        hyper["lr"] = hyper.pop("learning_rate")
    for k in hyper:
        if k not in _COMMON and k not in cls._HYPER:
            raise NndError(_unknown_hyper_message(key, k, cls))
    return cls(xp=xp, **hyper)


# --------------------------------------------------------------------- validation helpers

def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float, np.integer, np.floating)) and not isinstance(v, (bool, np.bool_))


def _nonneg(opt: str, key: str, v: Any) -> float:
    if not _is_number(v) or not math.isfinite(float(v)) or float(v) < 0:
        raise NndError(f"optimizer '{opt}': {key} must be a finite number >= 0, got {v!r}")
    return float(v)


def _in_range(opt: str, key: str, v: Any, lo: float, hi: float, hi_open: bool = False) -> float:
    ok = _is_number(v) and lo <= float(v) and (float(v) < hi if hi_open else float(v) <= hi)
    if not ok:
        bracket = ")" if hi_open else "]"
        raise NndError(f"optimizer '{opt}': {key} must be in [{lo:g}, {hi:g}{bracket}, got {v!r}")
    return float(v)


def _flag(opt: str, key: str, v: Any) -> bool:
    if not isinstance(v, (bool, np.bool_)):
        raise NndError(f"optimizer '{opt}': {key} must be true or false, got {v!r}")
    return bool(v)
