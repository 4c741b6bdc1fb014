"""The `train` section: its settings checked against a schema, giving a `TrainSpec`.

The compiler knows the names of optimizers, losses, metrics, callbacks, schedules and augmentations and
the arguments each takes, so a misspelling is reported at its position in the file; the runtime builds
the objects from the `Configured` entries.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

from nnd.compiler import syntax as S
from nnd.compiler.args import (BOOL, FLOAT, NAME, NON_NEGATIVE_FLOAT, NON_NEGATIVE_INT, POSITIVE_FLOAT,
                               POSITIVE_INT, RATE, UNIT_FLOAT, ArgError, ArgKind, CallValue, Symbol, choice, describe,
                               or_none, python_word_hint)
from nnd.compiler.diagnostics import Diagnostic, DiagnosticBag, NndError, did_you_mean
from nnd.compiler.source import Span

# Every optimizer takes Keras 3's decoupled weight decay and gradient clipping.
_COMMON = {"weight_decay": or_none(NON_NEGATIVE_FLOAT), "clipnorm": or_none(POSITIVE_FLOAT),
           "global_clipnorm": or_none(POSITIVE_FLOAT), "clipvalue": or_none(POSITIVE_FLOAT)}
_LR = {"lr": POSITIVE_FLOAT}

# name -> {argument: kind}; positional arguments bind in this order.
OPTIMIZERS: dict[str, dict[str, ArgKind]] = {
    "sgd": {**_LR, "momentum": UNIT_FLOAT, "nesterov": BOOL, **_COMMON},
    "adam": {**_LR, "beta_1": UNIT_FLOAT, "beta_2": UNIT_FLOAT, "epsilon": POSITIVE_FLOAT, "amsgrad": BOOL,
             **_COMMON},
    "adamw": {**_LR, "weight_decay": NON_NEGATIVE_FLOAT, "beta_1": UNIT_FLOAT, "beta_2": UNIT_FLOAT,
              "epsilon": POSITIVE_FLOAT, "amsgrad": BOOL, **_COMMON},
    "rmsprop": {**_LR, "rho": UNIT_FLOAT, "momentum": UNIT_FLOAT, "epsilon": POSITIVE_FLOAT, "centered": BOOL,
                **_COMMON},
    "adagrad": {**_LR, "initial_accumulator_value": NON_NEGATIVE_FLOAT, "epsilon": POSITIVE_FLOAT, **_COMMON},
}

LOSSES: dict[str, dict[str, ArgKind]] = {
    "sparse_categorical_crossentropy": {"from_logits": BOOL},
    "categorical_crossentropy": {"from_logits": BOOL},
    "binary_crossentropy": {"from_logits": BOOL},
    "mse": {}, "mae": {}, "huber": {"delta": POSITIVE_FLOAT},
}
LOSS_ALIASES = {"mean_squared_error": "mse", "mean_absolute_error": "mae"}

METRIC_ALIASES = {"acc": "accuracy", "sparse_top_k_categorical_accuracy": "top_k_accuracy",
                  "sparse_top_k_accuracy": "top_k_accuracy", "mean_absolute_error": "mae",
                  "mean_squared_error": "mse"}
METRICS: dict[str, dict[str, ArgKind]] = {
    "accuracy": {}, "sparse_categorical_accuracy": {}, "categorical_accuracy": {},
    "binary_accuracy": {"threshold": UNIT_FLOAT}, "top_k_accuracy": {"k": POSITIVE_INT},
    "mae": {}, "mse": {},
    "precision": {"threshold": UNIT_FLOAT}, "recall": {"threshold": UNIT_FLOAT}, "auc": {},
}

_MONITOR = {"monitor": NAME}
# Keras' mode: auto maximizes an accuracy-like monitor (accuracy, auc, precision, recall) and minimizes the
# rest; nnd.runtime.callbacks reads the metric from the monitor's name.
_MODE = {"mode": choice(("auto", "min", "max"), "mode")}
CALLBACKS: dict[str, dict[str, ArgKind]] = {
    "early_stopping": {**_MONITOR, "patience": NON_NEGATIVE_INT, "min_delta": FLOAT, **_MODE,
                       "restore_best": BOOL},
    "reduce_lr_on_plateau": {**_MONITOR, "factor": UNIT_FLOAT, "patience": NON_NEGATIVE_INT,
                             "min_delta": FLOAT, "min_lr": FLOAT, "cooldown": NON_NEGATIVE_INT, **_MODE},
    "best_checkpoint": {**_MONITOR, **_MODE},
}

SCHEDULES: dict[str, dict[str, ArgKind]] = {
    "step_decay": {"drop": UNIT_FLOAT, "every": POSITIVE_INT},
    "exponential_decay": {"decay_rate": UNIT_FLOAT, "decay_steps": POSITIVE_INT, "staircase": BOOL},
    "cosine_decay": {"decay_steps": POSITIVE_INT, "alpha": UNIT_FLOAT},
    "warmup": {"warmup_steps": POSITIVE_INT, "then": choice(("constant", "cosine"), "schedule"),
               "decay_steps": or_none(POSITIVE_INT), "alpha": UNIT_FLOAT, "start": NON_NEGATIVE_FLOAT},
}
# The schedules' arguments without a default.
SCHEDULE_REQUIRED: dict[str, tuple[str, ...]] = {
    "exponential_decay": ("decay_rate", "decay_steps"),
    "cosine_decay": ("decay_steps",),
    "warmup": ("warmup_steps",),
}

AUGMENTATIONS: dict[str, dict[str, ArgKind]] = {
    "random_flip": {"mode": choice(("horizontal", "vertical", "horizontal_and_vertical"), "flip mode")},
    "random_shift": {"fraction": UNIT_FLOAT},
    "random_crop": {"padding": POSITIVE_INT},
    "random_rotation": {"degrees": FLOAT},
    "gaussian_noise": {"stddev": POSITIVE_FLOAT},
}

NAMED_DATASETS = ("fashion_mnist", "mnist", "moving_fashion_mnist")


@dataclass(frozen=True)
class Configured:
    """A named thing with arguments: `adam(lr=0.001)` → Configured('adam', {'lr': 0.001})."""

    name: str
    args: dict[str, Any] = field(default_factory=dict, hash=False)
    span: Span | None = field(default=None, compare=False)
    arg_spans: dict[str, Span | None] = field(default_factory=dict, compare=False, hash=False)

    def arg_span(self, key: str) -> Span | None:
        return self.arg_spans.get(key) or self.span


@dataclass
class TrainSpec:
    model: str
    data: str | None = None  # a named dataset or a path
    optimizer: Configured = field(default_factory=lambda: Configured("adam"))
    # one loss for every output, one per output in output order, or (from Python) one per output by name
    loss: Configured | list[Configured] | dict[str, Configured] | None = None
    loss_weights: list[float] | dict[str, float] | None = None  # each output's factor in the total loss
    metrics: list[Configured] = field(default_factory=list)
    epochs: int = 1
    batch_size: int = 32
    validation_split: float = 0.0
    seed: int = 0
    callbacks: list[Configured] = field(default_factory=list)
    lr_schedule: Configured | None = None
    augment: list[Configured] = field(default_factory=list)
    # the CSV column holding labels, the series a sequence model forecasts, or an input the model reproduces
    target: str | None = None
    target_span: Span | None = None
    columns: list[str] | None = None  # the CSV columns a sequence model reads at each step
    span: Span | None = None
    loss_span: Span | None = None  # where the loss and loss_weights settings are written
    loss_weights_span: Span | None = None


class _SettingError(Exception):
    def __init__(self, message: str, span: Span | None, notes: tuple[str, ...] = ()):
        super().__init__(message)
        self.message, self.span, self.notes = message, span, notes


class _SettingErrors(Exception):
    """Several independent mistakes in one setting (its list items, a call's arguments): all are reported."""

    def __init__(self, errors: list[_SettingError]):
        super().__init__("; ".join(e.message for e in errors))
        self.errors = errors


def _each(items: Sequence[Any], convert: Callable[[Any], Any]) -> list[Any]:
    """`convert` applied to every item; the errors of all of them, not just the first, when any fail."""
    results, errors = [], []
    for item in items:
        try:
            results.append(convert(item))
        except _SettingError as err:
            errors.append(err)
        except _SettingErrors as errs:
            errors.extend(errs.errors)
    if errors:
        raise errors[0] if len(errors) == 1 else _SettingErrors(errors)
    return results


# Keras' longer spellings of two arguments.
_KEYWORD_ALIASES = {"learning_rate": "lr", "restore_best_weights": "restore_best"}


def _configured(value: Any, table: dict[str, dict[str, ArgKind]], what: str, span: Span | None,
                aliases: dict[str, str] | None = None) -> Configured:
    if isinstance(value, str):  # Keras' spelling, optimizer="adam": the same name in quotes
        value = Symbol(value, span)
    if isinstance(value, Symbol):
        name, positional, keywords, span = value.name, (), (), value.span or span
    elif isinstance(value, CallValue):
        name, positional, keywords, span = value.callee, value.args, value.kwargs, value.span or span
    else:
        raise _SettingError(f"expected {what} name, got {describe(value)}", span)
    name = (aliases or {}).get(name, name)
    if name not in table:
        hint = did_you_mean(name, list(table) + list(aliases or {}))
        raise _SettingError(f"unknown {what} '{name}'" + (f"; did you mean '{hint}'?" if hint else ""), span,
                            (f"valid: {', '.join(table)}",))
    schema = table[name]
    keys = list(schema)
    if len(positional) > len(keys):
        raise _SettingError(f"{name} takes at most {len(keys)} positional arguments", span)
    raw = {key: (arg, span) for key, arg in zip(keys, positional)}
    for index, (written, arg) in enumerate(keywords):
        key = _KEYWORD_ALIASES.get(written, written)
        arg_span = value.kwarg_span(index) if isinstance(value, CallValue) else span
        if key not in schema:
            if not keys:
                raise _SettingError(f"{name} takes no arguments, got '{key}'", arg_span)
            hint = did_you_mean(key, keys)
            raise _SettingError(f"{name} has no argument '{key}'" + (f"; did you mean '{hint}'?" if hint else ""),
                                arg_span, (f"valid: {', '.join(keys)}",))
        if key in raw:  # given by position and by name, or twice by name (lr and learning_rate)
            raise _SettingError(f"argument '{written}' of {name} given twice", arg_span)
        raw[key] = (arg, arg_span)

    def convert(key: str) -> Any:
        arg, arg_span = raw[key]
        try:
            return schema[key].convert(arg)
        except ArgError as err:
            python = python_word_hint(arg, schema[key])
            if python:
                raise _SettingError(f"{name} argument '{key}': {err.message}; {python}", arg_span) from None
            _undefined_word(arg, schema[key], f"{name} argument '{key}'", arg_span)
            raise _SettingError(f"{name} argument '{key}': {err.message}", arg_span, err.notes) from None

    # none asks for an argument's default: left out, as if not given
    args = {key: value for key, value in zip(raw, _each(list(raw), convert)) if value is not None}
    return Configured(name, args, span, {key: arg_span for key, (_, arg_span) in raw.items() if key in args})


def _schedule(schedule: Configured) -> Configured:
    """What the schedule's table cannot say: the arguments it needs, and warmup's decay_steps rule."""
    name, args = schedule.name, schedule.args
    missing = [key for key in SCHEDULE_REQUIRED.get(name, ()) if key not in args]
    if missing:
        raise _SettingError(f"{name} needs argument{'s' if len(missing) > 1 else ''} {', '.join(missing)}",
                            schedule.span, (f"valid: {', '.join(SCHEDULES[name])}",))
    if name == "warmup":
        cosine = args.get("then") == "cosine"
        if cosine and "decay_steps" not in args:
            raise _SettingError("warmup with then=cosine needs decay_steps (counted from the end of the warmup)",
                                schedule.arg_span("then"))
        for key in ("decay_steps", "alpha"):
            if not cosine and key in args:
                raise _SettingError(f"warmup argument '{key}' is only used with then=cosine", schedule.arg_span(key))
    return schedule


def _undefined_word(value: Any, kind: ArgKind, what: str, span: Span | None) -> None:
    """A bare word where a number or flag is wanted can only be a constant that does not exist."""
    if isinstance(value, Symbol) and not kind.symbolic:
        raise _SettingError(f"undefined value '{value.name}'", value.span or span,
                            (f"{what} expects {kind.expected}",))


def check_configured(name: str, args: dict[str, Any], table: dict[str, dict[str, ArgKind]], what: str,
                     aliases: dict[str, str] | None = None) -> Configured:
    """Check a setting given from Python (`Model.compile`) exactly as the train section's is checked; the
    name may be the language's call, "sparse_categorical_crossentropy(from_logits=true)", with `args`
    added to the arguments it writes."""
    from nnd.compiler.setting_text import parse_setting  # it evaluates with the checker, which imports this

    written = parse_setting(name, what) if "(" in name else CallValue(name, (), ())
    try:
        return _configured(CallValue(written.callee, written.args, written.kwargs + tuple(args.items())), table,
                           what, None, aliases)
    except _SettingError as err:
        raise NndError(Diagnostic(err.message, None, err.notes)) from None
    except _SettingErrors as errs:
        raise NndError([Diagnostic(err.message, None, err.notes) for err in errs.errors]) from None


def _list(value: Any, span: Span | None) -> list[Any]:
    if isinstance(value, list):
        return value
    return [value]


def _convert(kind: ArgKind, value: Any, key: str, span: Span | None) -> Any:
    try:
        return kind.convert(value)
    except ArgError as err:
        _undefined_word(value, kind, key, span)
        raise _SettingError(f"{key}: {err.message}", span, err.notes) from None


def _loss(value: Any, span: Span | None) -> Configured | list[Configured]:
    """One loss for every output, or a list of them, one per output in output order."""
    if not isinstance(value, list):
        return _one_loss(value, span)
    if not value:
        raise _SettingError("loss: an empty list; give one loss, or a list with one per output", span)
    return _each(value, lambda item: _one_loss(item, span))


def _one_loss(value: Any, span: Span | None) -> Configured:
    if isinstance(value, Symbol) and value.name == "none":  # Keras' None: an output left out of training
        raise _SettingError("every output needs a loss; to leave one out of the total, give it weight 0 "
                            "in loss_weights", value.span or span)
    return _configured(value, LOSSES, "loss", span, LOSS_ALIASES)


def _loss_weights(value: Any, span: Span | None) -> list[float]:
    """A list with each output's factor in the total loss, in output order."""
    if not isinstance(value, list) or not value:
        got = "an empty list" if isinstance(value, list) else describe(value)
        raise _SettingError(f"loss_weights: expected a list with one weight per output, got {got}", span,
                            ("such as loss_weights = [1.0, 0.5] for a model with two outputs",))
    return _each(list(enumerate(value)), lambda item: _loss_weight(item[0], item[1], span))


def _loss_weight(index: int, value: Any, span: Span | None) -> float:
    try:
        return NON_NEGATIVE_FLOAT.convert(value)
    except ArgError as err:
        _undefined_word(value, NON_NEGATIVE_FLOAT, "loss_weights", span)
        raise _SettingError(f"loss_weights: the weight of output {index + 1}: {err.message}", span,
                            err.notes) from None


def _data(value: Any, span: Span | None) -> str:
    if isinstance(value, str):
        return value
    if isinstance(value, Symbol):
        if value.name not in NAMED_DATASETS:
            hint = did_you_mean(value.name, NAMED_DATASETS)
            raise _SettingError(f"unknown dataset '{value.name}'" + (f"; did you mean '{hint}'?" if hint else ""),
                                span, (f"named datasets: {', '.join(NAMED_DATASETS)}; or give a file path "
                                       'in quotes, such as "data.npz"',))
        return value.name
    raise _SettingError(f"data: expected a dataset name or a file path, got {describe(value)}", span)


def loss_log_names(outputs: Sequence[str]) -> list[str]:
    """Each output's own loss in the epoch logs, as Keras logs it: `<output>_loss`, for a model with
    several outputs (one output's loss is the total)."""
    return [f"{output}_loss" for output in outputs] if len(outputs) > 1 else []


def metric_log_name(metric: str, output: str, outputs: Sequence[str]) -> str:
    """A metric's name in the epoch logs: prefixed by its output when the model has several."""
    return metric if len(outputs) == 1 else f"{output}_{metric}"


def metric_names(metrics: Sequence[Configured]) -> list[str]:
    """Each metric's name, made distinct as Keras makes it: a second `precision` (another threshold, say)
    is `precision_1`, so that neither replaces the other in the logs."""
    seen: dict[str, int] = {}
    names = []
    for metric in metrics:
        count = seen.get(metric.name, 0)
        names.append(metric.name if count == 0 else f"{metric.name}_{count}")
        seen[metric.name] = count + 1
    return names


def epoch_log_names(spec: TrainSpec, outputs: Sequence[str]) -> list[str]:
    """Every figure an epoch of training logs: the loss and the metrics, the same measured on the
    validation data (val_), and the learning rate."""
    measured = ["loss"] + loss_log_names(outputs) + [metric_log_name(name, output, outputs) for output in outputs
                           for name in metric_names(spec.metrics)]
    return measured + [f"val_{name}" for name in measured] + ["lr"]


def log_name_clash(spec: TrainSpec, outputs: Sequence[str]) -> tuple[str, str] | None:
    """Figures the epoch logs would give one name, as a message and the output to rename, or None: an
    output called `val` logs its own loss as `val_loss`, the validation loss's name, and outputs `x` and
    `val_x` both log `val_x_mae`. Keras lets the later figure overwrite the earlier; here it is an error."""
    logged = epoch_log_names(spec, outputs)
    clashes = sorted({name for name in logged if logged.count(name) > 1})
    if not clashes:
        return None
    culprit = next((output for output in outputs if output == "val" or output.startswith("val_")), outputs[-1])
    return (f"the training logs would give two figures the name {', '.join(map(repr, clashes))}: rename output "
            f"'{culprit}' (validation figures are logged as val_...)", culprit)


def check_monitors(spec: TrainSpec, outputs: Sequence[str], bag: DiagnosticBag) -> None:
    """A callback watching a figure that no epoch logs would fail after the first epoch; say so now."""
    logged = epoch_log_names(spec, outputs)
    for callback in spec.callbacks:
        monitor = callback.args.get("monitor", "val_loss")
        if monitor in logged:
            continue
        hint = did_you_mean(monitor, logged)
        bag.error(f"{callback.name} monitors '{monitor}', which training does not log"
                  + (f"; did you mean '{hint}'?" if hint else ""), callback.arg_span("monitor"),
                  [f"logged: {', '.join(logged)}"])


SETTINGS = ("data", "optimizer", "loss", "loss_weights", "metrics", "epochs", "batch_size", "validation_split", "seed",
            "callbacks", "lr_schedule", "augment", "target", "columns")


def check_train(section: S.TrainDef, values: dict[str, tuple[Any, Span | None]], bag: DiagnosticBag) -> TrainSpec:
    """Build a TrainSpec from evaluated settings, reporting each bad setting at its position."""
    spec = TrainSpec(model=section.model, span=section.span)
    for key, (value, span) in values.items():
        try:
            _apply_setting(spec, key, value, span)
        except _SettingError as err:
            bag.error(err.message, err.span, err.notes)
        except _SettingErrors as errs:
            for err in errs.errors:
                bag.error(err.message, err.span, err.notes)
    return spec


def _apply_setting(spec: TrainSpec, key: str, value: Any, span: Span | None) -> None:
    if key == "data":
        spec.data = _data(value, span)
    elif key == "optimizer":
        spec.optimizer = _configured(value, OPTIMIZERS, "optimizer", span)
    elif key == "loss":
        spec.loss, spec.loss_span = _loss(value, span), span
    elif key == "loss_weights":
        spec.loss_weights, spec.loss_weights_span = _loss_weights(value, span), span
    elif key == "metrics":
        spec.metrics = _each(_list(value, span), lambda v: _configured(v, METRICS, "metric", span, METRIC_ALIASES))
    elif key == "callbacks":
        spec.callbacks = _each(_list(value, span), lambda v: _configured(v, CALLBACKS, "callback", span))
    elif key == "augment":
        spec.augment = _each(_list(value, span), lambda v: _configured(v, AUGMENTATIONS, "augmentation", span))
    elif key == "lr_schedule":
        spec.lr_schedule = _schedule(_configured(value, SCHEDULES, "learning-rate schedule", span))
    elif key == "epochs":
        spec.epochs = _convert(POSITIVE_INT, value, key, span)
    elif key == "batch_size":
        spec.batch_size = _convert(POSITIVE_INT, value, key, span)
    elif key == "validation_split":
        spec.validation_split = _convert(RATE, value, key, span)
    elif key == "seed":
        spec.seed = _convert(NON_NEGATIVE_INT, value, key, span)
    elif key == "target":
        spec.target = value if isinstance(value, str) else _convert(NAME, value, key, span)
        spec.target_span = span
    elif key == "columns":
        spec.columns = [v if isinstance(v, str) else _convert(NAME, v, key, span) for v in _list(value, span)]
    else:
        hint = did_you_mean(key, SETTINGS)
        raise _SettingError(f"unknown train setting '{key}'" + (f"; did you mean '{hint}'?" if hint else ""), span,
                            (f"valid: {', '.join(SETTINGS)}",))
