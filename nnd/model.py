"""`nnd.Model`: a compiled `.nnd` model with its parameters, trained and run from Python.

Plain NumPy arrays go in and come out. A model with one input takes an array; with several, a dict
keyed by input name (or a list in declaration order). Targets follow the same rule over the outputs.
"""
from __future__ import annotations

import dataclasses
import functools
import json
import math
import os
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Any, Mapping, Sequence

import numpy as np

from nnd.compiler.diagnostics import NndError, NndWarning, did_you_mean
from nnd.compiler.frontend import CheckedProgram
from nnd.compiler.output_checks import check_outputs
from nnd.compiler.summary import summarize
from nnd.compiler.tensor_type import TensorType
from nnd.compiler.training import LOSS_ALIASES, LOSSES, OPTIMIZERS, Configured, TrainSpec, check_configured
from nnd.compiler.training_graph import TARGET_PREFIX, loss_for, target_type
from nnd.runtime import checkpoint as ckpt
from nnd.runtime.datasets import check_inputs
from nnd.runtime.executor import Executor
from nnd.runtime.fit import plain_batches
from nnd.runtime.history import History
from nnd.runtime.initializers import initialize
from nnd.runtime.saved_model import write_model_files
from nnd.runtime.metrics import make_metric
from nnd.runtime.precision import mixed_precision_dtype
from nnd.runtime.trainer import Trainer, TrainingState

if TYPE_CHECKING:
    from nnd.runtime.fit import RunDirectory

DTYPES = {"float32": np.float32, "float64": np.float64}
# predict's slices: activations of about this many bytes stay in cache (measured on the seed CNN: slices of
# 32 samples infer 2.3x faster than one slice of 1000), but never fewer samples than MIN_SLICE.
CACHE_BYTES = 4 << 20
MIN_SLICE = 8
PREDICT_BATCH = 256  # predict's and evaluate's largest slice unless given
Arrays = Any  # an ndarray, a dict name -> ndarray, or a list of ndarrays


class Model:
    def __init__(self, program: CheckedProgram, name: str | None = None, *, backend: str = "numpy",
                 dtype: str = "float32", seed: int | None = None, opt_level: int = 2,
                 mixed_precision: bool | str = False, tf32: bool = False, cuda_graphs: bool = False):
        if dtype not in DTYPES:
            raise NndError(f"dtype must be float32 or float64, not {dtype!r}")
        low = mixed_precision_dtype(mixed_precision)
        if low is not None and dtype != "float32":
            raise NndError(f"mixed precision computes in {low.name} on float32 weights: it needs dtype float32, "
                           f"not {dtype!r}")
        self.mixed_precision = None if low is None else low.name  # "float16", "bfloat16" or None
        if tf32:
            _allow_tf32(backend)
        if cuda_graphs and backend != "cupy":
            raise NndError(f"CUDA graphs replay GPU work: they need the cupy backend, not {backend!r}")
        self.cuda_graphs = cuda_graphs
        self.program = program
        self.name = program.model_name(name)
        self.graph = program.graphs[self.name]
        # a copy, which compile() may change without touching other models of the same program
        self.spec: TrainSpec = dataclasses.replace(program.train_spec(self.name))
        self._compiled: dict[str, Any] = {}  # what compile() set (Configured or a list of them), kept by save()
        self.backend = backend
        self.dtype = DTYPES[dtype]
        if seed is not None and (isinstance(seed, (bool, np.bool_)) or not isinstance(seed, (int, np.integer))
                                 or seed < 0):
            raise NndError(f"seed must be a non-negative int, got {seed!r}")
        self.seed = self.spec.seed if seed is None else int(seed)
        if isinstance(opt_level, bool) or opt_level not in (0, 1, 2):
            raise NndError(f"opt_level must be 0, 1 or 2, got {opt_level!r}")
        self.opt_level = opt_level
        from nnd.runtime.backend import get_backend

        self._backend = get_backend(backend)  # fails early, with a clear message, for an unavailable backend
        # Parameters live where the backend computes: on the GPU for cupy, drawn there once from host values.
        self.params = {name: self._backend.asarray(value) for name, value in self._initial_values().items()}
        self.history = History()
        self.stop_training = False  # Keras' flag, which callbacks with Keras' hooks set to end a fit
        self.data_rng = np.random.default_rng(self.seed + 1)  # shuffling and augmentation
        self._trainer: Trainer | None = None
        self._predictor: Executor | None = None

    def _initial_values(self) -> dict[str, np.ndarray]:
        try:
            return initialize(self.graph.param_info, self.seed, self.dtype)
        except (MemoryError, ValueError) as err:  # NumPy's refusals of a huge array
            count = summarize(self.graph).total_params
            raise NndError(f"cannot allocate the {count:,} parameters of model '{self.name}' "
                           f"({count * np.dtype(self.dtype).itemsize / 2 ** 30:,.1f} GiB): {err}") from None

    # ------------------------------------------------------------------------------ introspection

    def __repr__(self) -> str:
        count = summarize(self.graph).total_params
        inputs = ", ".join(f"{v.name}: {self._shown(v.type)}" for v in self.graph.inputs)
        outputs = ", ".join(f"{name}: {self._shown(v.type)}" for name, v in self.graph.outputs.items())
        return (f"<nnd.Model '{self.name}' ({inputs}) -> ({outputs}), {count:,} parameters, "
                f"{self.backend} {np.dtype(self.dtype).name}>")

    def _shown(self, type: TensorType) -> TensorType:
        """A value's type with the dtype this model computes floats in (the graphs are typed in f32)."""
        return type.with_dtype("f64") if type.dtype == "f32" and self.dtype == np.float64 else type

    @property
    def compute_dtype(self) -> Any:
        """What the graphs run in: float16 or bfloat16 under mixed precision, else the parameters' dtype."""
        return self.dtype if self.mixed_precision is None else mixed_precision_dtype(self.mixed_precision)

    @property
    def input_names(self) -> list[str]:
        return [v.name for v in self.graph.inputs]

    @property
    def output_names(self) -> list[str]:
        return list(self.graph.outputs)

    def summary(self, batch_size: int = 32, print_fn=print) -> str:
        text = summarize(self.graph).render(_positive_int(batch_size, "batch_size"))
        if print_fn is not None:
            print_fn(text)
        return text

    def parameters(self) -> dict[str, np.ndarray]:
        """Copies of every parameter, under Keras names and layouts (conv kernel (kh, kw, in, out))."""
        return {name: np.array(self._backend.to_numpy(value), copy=True) for name, value in self.params.items()}

    def set_parameters(self, values: Mapping[str, np.ndarray], strict: bool = True, *,
                       source: str = "the given dict") -> None:
        """Overwrite parameters in place; `strict` wants every parameter and no others. `source` names
        where the values came from in error messages. Every value is checked before any is written."""
        if not isinstance(values, Mapping):
            raise NndError(f"set_parameters takes a dict of parameter name -> array (as parameters() gives), "
                           f"got {type(values).__name__}")
        expected = {name: tuple(p.type.shape) for name, p in self.graph.param_info.items()}
        ckpt.check_compatible(expected, {k: np.shape(v) for k, v in values.items()}, strict=strict, source=source)
        converted = {name: _parameter_array(value, f"parameter {name!r} from {source}", self.dtype)
                     for name, value in values.items() if name in self.params}
        for name, value in converted.items():
            self.params[name][...] = self._backend.asarray(value)

    # ------------------------------------------------------------------------------ configuration

    def compile(self, optimizer: str | Configured | None = None, loss: str | Configured | None = None,
                metrics: Sequence[str | Configured] | None = None, **optimizer_args: Any) -> "Model":
        """Override the file's train section, Keras style: compile(optimizer="sgd", lr=0.1, loss="mse")."""
        spec = self.spec
        # Every name and argument is checked before anything changes, as the train section's would be.
        new_optimizer, new_loss, new_metrics = spec.optimizer, spec.loss, spec.metrics
        if optimizer is not None or optimizer_args:
            base = _configured(optimizer) if optimizer is not None else spec.optimizer
            new_optimizer = _checked(Configured(base.name, {**base.args, **optimizer_args}), OPTIMIZERS,
                                     "optimizer")
        if loss is not None:
            new_loss = _checked(_configured(loss), LOSSES, "loss", LOSS_ALIASES)
        if metrics is not None:
            new_metrics = [_configured(m) for m in ([metrics] if isinstance(metrics, (str, Configured)) else metrics)]
            for metric in new_metrics:
                make_metric(metric.name, **metric.args)
        spec.optimizer, spec.loss, spec.metrics = new_optimizer, new_loss, new_metrics
        if optimizer is not None or optimizer_args:
            self._compiled["optimizer"] = new_optimizer
        if loss is not None:
            self._compiled["loss"] = new_loss
        if metrics is not None:
            self._compiled["metrics"] = new_metrics
        self._trainer = None
        return self

    def _check_outputs(self) -> None:
        """Refuse a loss or metric that cannot work on this model's outputs; warn about one that most
        likely does not fit them (the file's train section, or what compile() set)."""
        errors, mismatches = check_outputs(self.spec, self.graph)
        if errors:
            raise NndError(errors, self.program.sources)
        for mismatch in mismatches:
            warnings.warn(NndWarning(mismatch.render(self.program.sources)), stacklevel=3)

    def _get_trainer(self) -> Trainer:
        if self._trainer is None:
            self._trainer = Trainer(self.program, self.name, self.spec, self.params, backend=self.backend,
                                    dtype=self.dtype, opt_level=self.opt_level, seed=self.seed,
                                    mixed_precision=self.mixed_precision, cuda_graphs=self.cuda_graphs)
        return self._trainer

    # ------------------------------------------------------------------------------ running

    def predict(self, x: Arrays, batch_size: int | None = None, verbose: int = 0) -> Any:
        """Outputs for x: an array for a one-output model, else a dict name -> array.

        On the CPU the batch runs through the network in slices whose activations fit in cache (a few
        dozen samples for a small CNN), which is faster than whole batches; `batch_size` (default 256)
        caps the slice. `verbose` is accepted as Keras' is; prediction prints nothing.
        """
        batch_size = _positive_int(PREDICT_BATCH if batch_size is None else batch_size, "batch_size")
        inputs = self._inputs(x)
        if self._predictor is None:
            from nnd.compiler.passes import PassManager
            from nnd.runtime.layout_costs import cost_model

            passes = PassManager.for_level(self.opt_level, verify=False,
                                           layout_costs=cost_model(self.backend, self.compute_dtype))
            graph = passes.run(self.graph)
            self._predictor = Executor(graph, self.backend, self.compute_dtype, seed=self.seed,
                                       cuda_graphs=self.cuda_graphs)
        n = _count(inputs)
        step = self._slice_size(batch_size)
        parts: dict[str, list[np.ndarray]] = {name: [] for name in self.output_names}
        for start in range(0, n, step):
            batch = {k: v[start:start + step] for k, v in inputs.items()}
            result = self._predictor.run(batch, self.params)
            for name in self.output_names:
                # half-precision results under mixed precision come back in the weights' dtype, as Keras' do
                parts[name].append(np.asarray(self._backend.to_numpy(result[name]), dtype=self.dtype))
        outputs = {name: np.concatenate(chunks) if chunks else self._no_samples(name) for name, chunks in parts.items()}
        return outputs[self.output_names[0]] if len(outputs) == 1 else outputs

    def _no_samples(self, output: str) -> np.ndarray:
        return np.zeros((0, *self.graph.outputs[output].type.shape[1:]), dtype=self.dtype)

    @functools.cached_property
    def _activation_bytes_per_sample(self) -> int:
        return max(1, summarize(self.graph).activation_bytes_per_sample)

    def _slice_size(self, batch_size: int) -> int:
        if self.backend != "numpy":
            return batch_size  # a GPU wants the whole batch at once
        return max(MIN_SLICE, min(batch_size, CACHE_BYTES // self._activation_bytes_per_sample))

    def evaluate(self, x: Arrays, y: Arrays, batch_size: int | None = None, verbose: int = 0) -> dict[str, float]:
        """The loss and the train section's metrics over (x, y), in inference mode, in slices of at most
        `batch_size` samples (default 256). `verbose` is accepted as Keras' is; evaluation prints nothing."""
        batch_size = _positive_int(PREDICT_BATCH if batch_size is None else batch_size, "batch_size")
        feeds = self._feeds(x, y)
        if _count(feeds) == 0:
            raise NndError("no samples to evaluate: x and y are empty")
        trainer = self._get_trainer()
        return trainer.run_epoch(plain_batches(feeds, self._slice_size(batch_size)), self.output_names,
                                 training=False)

    def loss_and_gradients(self, x: Arrays, y: Arrays) -> tuple[float, dict[str, np.ndarray]]:
        """The training loss on one batch and its gradient for every trainable parameter; no update."""
        feeds = self._feeds(x, y)
        if _count(feeds) == 0:
            raise NndError("no samples: x and y are empty")
        loss, grads = self._get_trainer().gradients(feeds)
        return loss, {name: np.array(self._backend.to_numpy(g)) for name, g in grads.items()}

    def fit(self, x: Arrays, y: Arrays, epochs: int | None = None, batch_size: int | None = None, *,
            validation_data: tuple[Arrays, Arrays] | None = None, validation_split: float | None = None,
            shuffle: bool = True, callbacks: Sequence[Any] | None = None, verbose: int = 1, initial_epoch: int = 0,
            run_dir: "str | Path | RunDirectory | None" = None) -> History:
        """Train; returns this call's History (per-epoch loss, metrics and validation figures), as Keras
        does; `model.history` holds every epoch the model has trained, across calls and resumed runs.

        `callbacks` are `nnd.Callback`s (EarlyStopping, ReduceLROnPlateau, or subclasses) or objects with
        Keras' hooks; `run_dir` gets what `nnd train --out` writes (checkpoints, metrics, weights)."""
        from nnd.runtime.callbacks import as_callbacks
        from nnd.runtime.fit import RunDirectory, fit_loop

        spec = self.spec
        self._check_outputs()
        epochs = spec.epochs if epochs is None else epochs
        batch_size = spec.batch_size if batch_size is None else batch_size
        epochs, batch_size = _positive_int(epochs, "epochs"), _positive_int(batch_size, "batch_size")
        feeds = self._feeds(x, y)
        if _count(feeds) == 0:
            raise NndError("no training samples: x and y are empty")
        split = spec.validation_split if validation_split is None else _fraction(validation_split)
        val_feeds = self._validation_feeds(validation_data)
        if val_feeds is None and split:
            feeds, val_feeds = _split(feeds, split)
        hooks = as_callbacks(callbacks, self)
        if run_dir is not None and not isinstance(run_dir, RunDirectory):
            run_dir = RunDirectory(_path(run_dir, "run_dir"))
        trainer = self._get_trainer()
        state = TrainingState(self.params, trainer.optimizer, epoch=initial_epoch)
        first = len(self.history.epochs)
        fit_loop(self, trainer, state, feeds, val_feeds, epochs, batch_size, shuffle, hooks, verbose, run_dir)
        return self.history.since(first)

    def _validation_feeds(self, data: Any) -> dict[str, np.ndarray] | None:
        if data is None:
            return None
        if not isinstance(data, (tuple, list)) or len(data) != 2:
            count = f"{len(data)} items" if isinstance(data, (tuple, list)) else type(data).__name__
            raise NndError(f"validation_data must be a pair (x_val, y_val), got {count}"
                           + (" (sample weights are not supported)" if isinstance(data, (tuple, list))
                              and len(data) == 3 else ""))
        feeds = self._feeds(*data)
        if _count(feeds) == 0:
            raise NndError("validation_data holds no samples")
        return feeds

    # ------------------------------------------------------------------------------ saving

    def save(self, directory: str | Path) -> Path:
        """Write weights.npz, the model source and a manifest with the dtype, precision and what compile()
        set into `directory`; `nnd.load(directory)` rebuilds the same model."""
        directory = _path(directory, "the save directory")
        write_model_files(directory, self.program, self.name, self.input_names, self.output_names,
                          weights=self.parameters(), settings=self.saved_settings())
        return directory

    def saved_settings(self) -> dict[str, Any]:
        """What a saved model's manifest records beyond its source: dtype, precision, compile()'s choices."""
        settings: dict[str, Any] = {"dtype": np.dtype(self.dtype).name, "mixed_precision": self.mixed_precision}
        if self._compiled:
            settings["compile"] = {key: [_as_json(m) for m in value] if isinstance(value, list) else _as_json(value)
                                   for key, value in self._compiled.items()}
        return settings

    def load_weights(self, path: str | Path) -> "Model":
        path = Path(path)
        if path.is_dir():
            path = path / "weights.npz"
        self.set_parameters(ckpt.load_weights(path), source=f"weights file {path}")
        return self

    # ------------------------------------------------------------------------------ data

    def _inputs(self, x: Arrays) -> dict[str, np.ndarray]:
        arrays = _by_name(x, self.input_names, "input")
        for value in self.graph.inputs:
            dims = tuple(value.type.shape[1:])
            array = _as_array(arrays[value.name], f"input '{value.name}'")
            allow_int = value.type.dtype in ("i32", "i64")
            checked = check_inputs(array, dims, value.name, allow_int=allow_int)
            arrays[value.name] = _integer_input(checked, value.name, value.type.dtype) if allow_int else \
                _float_input(checked)
        _same_count(arrays, "inputs")
        return arrays

    def _feeds(self, x: Arrays, y: Arrays) -> dict[str, np.ndarray]:
        feeds = self._inputs(x)
        targets = _by_name(y, self.output_names, "target")
        for name, output in self.graph.outputs.items():
            loss = loss_for(self.spec, output).name
            target = _as_array(targets[name], f"target '{name}'")
            feeds[TARGET_PREFIX + name] = _check_target(target, target_type(loss, output), output, name, loss)
        _same_count(feeds, "inputs and targets")
        return feeds


def _allow_tf32(backend: str) -> None:
    """Let cuBLAS run float32 GEMMs on Tensor Cores in TF32 (10-bit mantissa inputs, float32 sums).

    CuPy decides per dtype at its first GEMM from CUPY_TF32, so this takes effect for a process whose
    GPU has not multiplied float32 matrices yet."""
    if backend != "cupy":
        raise NndError(f"tf32 runs float32 GEMMs on a GPU's Tensor Cores: it needs the cupy backend, not {backend!r}")
    os.environ["CUPY_TF32"] = "1"


def _fraction(value: Any) -> float:
    """validation_split: a number in [0, 1)."""
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, float, np.integer, np.floating)) \
            or not 0 <= value < 1:
        raise NndError(f"validation_split must be a number from 0 up to (not including) 1, got {value!r}")
    return float(value)


def _positive_int(value: Any, name: str) -> int:
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, np.integer)) or value < 1:
        raise NndError(f"{name} must be a positive int, got {value!r}")
    return int(value)


def _parameter_array(value: Any, what: str, dtype: Any) -> np.ndarray:
    """`value` as a finite numeric array of `dtype`, or an NndError naming it (NaN weights would only
    surface later, as NaN predictions or a loss that seems to diverge)."""
    array = np.asarray(value)
    if array.dtype.kind not in "biuf":
        raise NndError(f"{what} must hold numbers, got dtype {array.dtype}")
    array = array.astype(dtype, copy=False)
    finite = np.isfinite(array)
    if not finite.all():
        index = tuple(int(i) for i in np.argwhere(~finite)[0])
        raise NndError(f"{what} holds {array[index]} at index {index}")
    return array


def _as_json(value: Configured) -> dict[str, Any]:
    """A checked optimizer, loss or metric as model.json keeps it; compile(**configured) reads it back."""
    args = {k: v.item() if isinstance(v, np.generic) else v for k, v in value.args.items()}
    try:
        json.dumps(args)
    except TypeError:
        raise NndError(f"{value.name}: arguments must be numbers, strings or booleans to be saved, "
                       f"got {args!r}") from None
    return {"name": value.name, "args": args}


def _path(value: Any, what: str) -> Path:
    if not isinstance(value, (str, os.PathLike)):
        raise NndError(f"{what} must be a path, got {type(value).__name__}")
    if "\0" in os.fspath(value):
        raise NndError(f"{what} {os.fspath(value)!r} holds a NUL character")
    return Path(value)


def _configured(value: str | Configured) -> Configured:
    return value if isinstance(value, Configured) else Configured(str(value))


def _checked(value: Configured, table, what: str, aliases=None) -> Configured:
    args = {k: v.item() if isinstance(v, np.generic) else v for k, v in value.args.items()}
    return check_configured(value.name, args, table, what, aliases)


def _by_name(values: Arrays, names: list[str], what: str) -> dict[str, np.ndarray]:
    if isinstance(values, Mapping):
        missing = [n for n in names if n not in values]
        unknown = [k for k in values if k not in names]
        listed = f" (its {what}s: {', '.join(names)})"
        if unknown:
            hint = did_you_mean(str(unknown[0]), missing or names)
            raise NndError(f"the model has no {what} named {unknown[0]!r}"
                           + (f"; did you mean '{hint}'?" if hint else "") + listed)
        if missing:
            raise NndError(f"no array given for {what} {', '.join(map(repr, missing))}" + listed)
        return {n: values[n] for n in names}
    if isinstance(values, (list, tuple)) and len(names) > 1:
        if len(values) != len(names):
            raise NndError(f"expected {len(names)} {what} arrays ({', '.join(names)}), got {len(values)}")
        return dict(zip(names, values))
    if len(names) != 1:
        raise NndError(f"the model has {len(names)} {what}s ({', '.join(names)}): pass a dict keyed by name")
    return {names[0]: values}


def _as_array(value: Any, what: str) -> np.ndarray:
    """An array from whatever the caller passed (arrays, nested lists); a ragged list is an NndError."""
    try:
        return np.asarray(value)
    except ValueError as err:  # NumPy refuses sequences of unequal lengths
        raise NndError(f"{what} is not a rectangular array: {err}") from None


def _float_input(array: np.ndarray) -> np.ndarray:
    return array if array.dtype in (np.float32, np.float64) else array.astype(np.float32)


def _integer_input(array: np.ndarray, name: str, dtype: str) -> np.ndarray:
    """An integer input (ids): whole numbers that the input's integer type holds, converted to it, so that
    no id is silently truncated (3.9) or wrapped (2**32 + 3)."""
    target = np.dtype(np.int32 if dtype == "i32" else np.int64)
    if array.dtype.kind == "f":
        fractional = array != np.round(array)
        if fractional.any():
            index = tuple(int(i) for i in np.argwhere(fractional)[0])
            raise NndError(f"input '{name}' must hold whole numbers (ids), got {array[index]} at index {index}")
    limits = np.iinfo(target)
    if array.size and (array.min() < limits.min or array.max() > limits.max):
        outside = (array < limits.min) | (array > limits.max)
        index = tuple(int(i) for i in np.argwhere(outside)[0])
        raise NndError(f"input '{name}' holds {array[index]} at index {index}, outside {target.name}")
    return array.astype(target, copy=False)


def _check_target(y: np.ndarray, type: TensorType, output, name: str, loss: str) -> np.ndarray:
    label = name if name != "output" else "y"
    if type.dtype == "i64":
        return _class_id_target(y, type, output.type.shape[-1], label, name, loss)
    return _value_target(y, type, label, loss)


def _class_id_target(y: np.ndarray, type: TensorType, classes: int, label: str, output: str,
                     loss: str) -> np.ndarray:
    if y.ndim == len(type.shape) + 1 and y.shape[-1] == 1:
        y = y[..., 0]
    if y.dtype.kind == "f":
        if not np.all(np.isfinite(y)) or not np.all(y == np.round(y)):
            raise NndError(f"target '{label}' must hold integer class ids for {loss}, got non-integer values")
    elif y.dtype.kind not in "iu":
        raise NndError(f"target '{label}' must hold integer class ids, got dtype {y.dtype}")
    if y.ndim != len(type.shape):
        hint = " (one-hot targets need categorical_crossentropy)" if y.ndim == len(type.shape) + 1 else ""
        raise NndError(f"target '{label}' has shape {y.shape}; {loss} expects class ids of shape "
                       f"(batch{', ' if len(type.shape) > 1 else ''}"
                       f"{', '.join(str(d) for d in type.shape[1:])}){hint}")
    if y.size:
        low, high = int(y.min()), int(y.max())
        if low < 0 or high >= classes:
            bad = low if low < 0 else high
            index = int(np.argmax(y == bad))
            raise NndError(f"target '{label}' holds label {bad} at index {index}, outside the {classes} classes "
                           f"(0 to {classes - 1}) of output '{output}'")
    return y.astype(np.int64, copy=False)


# losses whose targets are probabilities: anything outside [0, 1] gives a meaningless (even negative) loss
PROBABILITY_TARGETS = ("binary_crossentropy", "categorical_crossentropy")


def _value_target(y: np.ndarray, type: TensorType, label: str, loss: str) -> np.ndarray:
    dims = tuple(type.shape[1:])
    if y.ndim == 1 and dims == (1,):
        y = y[:, None]
    if loss == "categorical_crossentropy" and y.ndim == len(type.shape) - 1 and y.dtype.kind in "iu":
        raise NndError(f"target '{label}' has shape {y.shape}: class ids; {loss} expects one-hot rows of shape "
                       f"(batch, {', '.join(str(d) for d in dims)}) (use sparse_categorical_crossentropy for ids)")
    y = check_inputs(y.astype(np.float32, copy=False) if y.dtype.kind in "iub" else y, dims, label, kind="target")
    if loss in PROBABILITY_TARGETS:
        outside = (y < 0) | (y > 1)
        if outside.any():
            index = tuple(int(i) for i in np.argwhere(outside)[0])
            raise NndError(f"target '{label}' holds {y[index]} at index {index}; {loss} needs targets "
                           f"from 0 to 1")
    return y


def _count(arrays: Mapping[str, np.ndarray]) -> int:
    return len(next(iter(arrays.values())))


def _same_count(arrays: Mapping[str, np.ndarray], what: str) -> None:
    counts = {k: len(v) for k, v in arrays.items()}
    if len(set(counts.values())) > 1:
        listing = ", ".join(f"{k.replace(TARGET_PREFIX, 'target ')}: {n}" for k, n in counts.items())
        raise NndError(f"the {what} have different numbers of samples ({listing})")


def _split(feeds: dict[str, np.ndarray], fraction: float) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    """Hold out the last `fraction` of the samples, before any shuffling, as Keras' validation_split does
    (so a time series validates on its latest windows, never on ones between training windows)."""
    n = _count(feeds)
    n_val = int(math.floor(n * fraction))
    if n_val < 1 or n_val >= n:
        raise NndError(f"validation_split {fraction} leaves no samples on one side of {n}")
    return ({k: v[:n - n_val] for k, v in feeds.items()}, {k: v[n - n_val:] for k, v in feeds.items()})


__all__ = ["Model"]
