"""`nnd.Model`: a compiled `.nnd` model with its parameters, trained and run from Python.

Plain NumPy arrays go in and come out. A model with one input takes an array; with several, a dict
keyed by input name (or a list in declaration order). Targets follow the same rule over the outputs.
"""
from __future__ import annotations

import functools
import math
import os
import warnings
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

from nnd.compiler.diagnostics import NndError, NndWarning, did_you_mean
from nnd.compiler.frontend import CheckedProgram
from nnd.compiler.output_checks import check_outputs
from nnd.compiler.summary import summarize
from nnd.compiler.training import LOSS_ALIASES, LOSSES, OPTIMIZERS, Configured, TrainSpec, check_configured
from nnd.compiler.training_graph import LOSS, TARGET_PREFIX, loss_for, target_type
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

DTYPES = {"float32": np.float32, "float64": np.float64}
# predict's slices: activations of about this many bytes stay in cache (measured on the seed CNN: slices of
# 32 samples infer 2.3x faster than one slice of 1000), but never fewer samples than MIN_SLICE.
CACHE_BYTES = 4 << 20
MIN_SLICE = 8
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
        self.spec: TrainSpec = program.train_spec(self.name)
        self.backend = backend
        self.dtype = DTYPES[dtype]
        self.seed = self.spec.seed if seed is None else seed
        self.opt_level = opt_level
        from nnd.runtime.backend import get_backend

        self._backend = get_backend(backend)  # fails early, with a clear message, for an unavailable backend
        # Parameters live where the backend computes: on the GPU for cupy, drawn there once from host values.
        self.params = {name: self._backend.asarray(value) for name, value in
                       initialize(self.graph.param_info, self.seed, self.dtype).items()}
        self.history = History()
        self.data_rng = np.random.default_rng(self.seed + 1)  # shuffling and augmentation
        self._trainer: Trainer | None = None
        self._predictor: Executor | None = None

    # ------------------------------------------------------------------------------ introspection

    def __repr__(self) -> str:
        count = summarize(self.graph).total_params
        inputs = ", ".join(f"{v.name}: {v.type}" for v in self.graph.inputs)
        outputs = ", ".join(f"{name}: {v.type}" for name, v in self.graph.outputs.items())
        return (f"<nnd.Model '{self.name}' ({inputs}) -> ({outputs}), {count:,} parameters, "
                f"{self.backend} {np.dtype(self.dtype).name}>")

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
        text = summarize(self.graph).render(batch_size)
        if print_fn is not None:
            print_fn(text)
        return text

    def parameters(self) -> dict[str, np.ndarray]:
        """Copies of every parameter, under Keras names and layouts (conv kernel (kh, kw, in, out))."""
        return {name: np.array(self._backend.to_numpy(value), copy=True) for name, value in self.params.items()}

    def set_parameters(self, values: Mapping[str, np.ndarray], strict: bool = True, *,
                       source: str = "the given dict") -> None:
        """Overwrite parameters in place; `strict` wants every parameter and no others. `source` names
        where the values came from in error messages."""
        expected = {name: tuple(p.type.shape) for name, p in self.graph.param_info.items()}
        ckpt.check_compatible(expected, {k: np.shape(v) for k, v in values.items()}, strict=strict, source=source)
        for name, value in values.items():
            if name in self.params:
                self.params[name][...] = self._backend.asarray(np.asarray(value, dtype=self.dtype))

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
            new_metrics = [_configured(m) for m in metrics]
            for metric in new_metrics:
                make_metric(metric.name, **metric.args)
        spec.optimizer, spec.loss, spec.metrics = new_optimizer, new_loss, new_metrics
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

    def predict(self, x: Arrays, batch_size: int = 256) -> Any:
        """Outputs for x: an array for a one-output model, else a dict name -> array.

        On the CPU the batch runs through the network in slices whose activations fit in cache (a few
        dozen samples for a small CNN), which is faster than whole batches; `batch_size` caps the slice.
        """
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
        outputs = {name: np.concatenate(chunks) if chunks else np.zeros((0,)) for name, chunks in parts.items()}
        return outputs[self.output_names[0]] if len(outputs) == 1 else outputs

    @functools.cached_property
    def _activation_bytes_per_sample(self) -> int:
        return max(1, summarize(self.graph).activation_bytes_per_sample)

    def _slice_size(self, batch_size: int) -> int:
        if self.backend != "numpy":
            return batch_size  # a GPU wants the whole batch at once
        return max(MIN_SLICE, min(batch_size, CACHE_BYTES // self._activation_bytes_per_sample))

    def evaluate(self, x: Arrays, y: Arrays, batch_size: int = 256) -> dict[str, float]:
        """The loss and the train section's metrics over (x, y), in inference mode."""
        trainer = self._get_trainer()
        feeds = self._feeds(x, y)
        return trainer.run_epoch(plain_batches(feeds, self._slice_size(batch_size)), self.output_names,
                                 training=False)

    def loss_and_gradients(self, x: Arrays, y: Arrays) -> tuple[float, dict[str, np.ndarray]]:
        """The training loss on one batch and its gradient for every trainable parameter; no update."""
        trainer = self._get_trainer()
        result = trainer.train_executor.run(self._feeds(x, y), self.params)
        grads = {name: np.array(self._backend.to_numpy(result["grad:" + name])) for name in trainer.trainable}
        return float(result[LOSS]), grads

    def fit(self, x: Arrays, y: Arrays, epochs: int | None = None, batch_size: int | None = None, *,
            validation_data: tuple[Arrays, Arrays] | None = None, validation_split: float | None = None,
            shuffle: bool = True, callbacks: Sequence[Any] = (), verbose: int = 1, initial_epoch: int = 0,
            run_dir: "Any | None" = None) -> History:
        """Train; returns the History (per-epoch loss, metrics and validation figures)."""
        from nnd.runtime.fit import fit_loop

        spec = self.spec
        self._check_outputs()
        epochs = spec.epochs if epochs is None else epochs
        batch_size = spec.batch_size if batch_size is None else batch_size
        for flag, value in (("epochs", epochs), ("batch_size", batch_size)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise NndError(f"{flag} must be a positive int, got {value!r}")
        feeds = self._feeds(x, y)
        if _count(feeds) == 0:
            raise NndError("no training samples: x and y are empty")
        split = spec.validation_split if validation_split is None else validation_split
        val_feeds = self._feeds(*validation_data) if validation_data is not None else None
        if val_feeds is None and split:
            feeds, val_feeds = _split(feeds, split, self.seed)
        trainer = self._get_trainer()
        state = TrainingState(self.params, trainer.optimizer, epoch=initial_epoch)
        fit_loop(self, trainer, state, feeds, val_feeds, epochs, batch_size, shuffle, list(callbacks),
                 verbose, run_dir)
        return self.history

    # ------------------------------------------------------------------------------ saving

    def save(self, directory: str | Path) -> Path:
        """Write weights.npz, the model source and a small manifest into `directory`."""
        directory = Path(directory)
        write_model_files(directory, self.program, self.name, self.input_names, self.output_names)
        ckpt.save_weights(directory / "weights.npz", self.parameters())
        return directory

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
            array = np.asarray(arrays[value.name])
            allow_int = value.type.dtype in ("i32", "i64")
            arrays[value.name] = _as_input(check_inputs(array, dims, value.name, allow_int=allow_int), allow_int)
        _same_count(arrays, "inputs")
        return arrays

    def _feeds(self, x: Arrays, y: Arrays) -> dict[str, np.ndarray]:
        feeds = self._inputs(x)
        targets = _by_name(y, self.output_names, "target")
        for name, output in self.graph.outputs.items():
            loss = loss_for(self.spec, output).name
            feeds[TARGET_PREFIX + name] = _check_target(np.asarray(targets[name]), target_type(loss, output),
                                                        output, name, loss)
        _same_count(feeds, "inputs and targets")
        return feeds


def _allow_tf32(backend: str) -> None:
    """Let cuBLAS run float32 GEMMs on Tensor Cores in TF32 (10-bit mantissa inputs, float32 sums).

    CuPy decides per dtype at its first GEMM from CUPY_TF32, so this takes effect for a process whose
    GPU has not multiplied float32 matrices yet."""
    if backend != "cupy":
        raise NndError(f"tf32 runs float32 GEMMs on a GPU's Tensor Cores: it needs the cupy backend, not {backend!r}")
    os.environ["CUPY_TF32"] = "1"


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


def _as_input(array: np.ndarray, allow_int: bool) -> np.ndarray:
    return array if allow_int else array.astype(np.float32, copy=False) if array.dtype != np.float64 else array


def _check_target(y: np.ndarray, type, output, name: str, loss: str) -> np.ndarray:
    label = f"target '{name}'" if name != "output" else "y"
    if type.dtype == "i64":
        classes = output.type.shape[-1]
        if y.ndim == len(type.shape) + 1 and y.shape[-1] == 1:
            y = y[..., 0]
        if y.dtype.kind == "f":
            if not np.all(np.isfinite(y)) or not np.all(y == np.round(y)):
                raise NndError(f"{label} must hold integer class ids for {loss}, got non-integer values")
        elif y.dtype.kind not in "iu":
            raise NndError(f"{label} must hold integer class ids, got dtype {y.dtype}")
        if y.ndim != len(type.shape):
            hint = " (one-hot targets need categorical_crossentropy)" if y.ndim == len(type.shape) + 1 else ""
            raise NndError(f"{label} has shape {y.shape}; {loss} expects class ids of shape "
                           f"(batch{', ' if len(type.shape) > 1 else ''}"
                           f"{', '.join(str(d) for d in type.shape[1:])}){hint}")
        if y.size:
            low, high = int(y.min()), int(y.max())
            if low < 0 or high >= classes:
                bad = low if low < 0 else high
                index = int(np.argmax(y == bad))
                raise NndError(f"{label} holds label {bad} at index {index}, outside the {classes} classes "
                               f"(0 to {classes - 1}) of output '{name}'")
        return y.astype(np.int64, copy=False)
    dims = tuple(type.shape[1:])
    if y.ndim == 1 and dims == (1,):
        y = y[:, None]
    return check_inputs(y.astype(np.float32, copy=False) if y.dtype.kind in "iub" else y, dims, label)


def _count(arrays: Mapping[str, np.ndarray]) -> int:
    return len(next(iter(arrays.values())))


def _same_count(arrays: Mapping[str, np.ndarray], what: str) -> None:
    counts = {k: len(v) for k, v in arrays.items()}
    if len(set(counts.values())) > 1:
        listing = ", ".join(f"{k.replace(TARGET_PREFIX, 'target ')}: {n}" for k, n in counts.items())
        raise NndError(f"the {what} have different numbers of samples ({listing})")


def _split(feeds: dict[str, np.ndarray], fraction: float, seed: int):
    n = _count(feeds)
    n_val = int(math.floor(n * fraction))
    if n_val < 1 or n_val >= n:
        raise NndError(f"validation_split {fraction} leaves no samples on one side of {n}")
    order = np.random.default_rng(seed).permutation(n)
    val_idx, train_idx = order[:n_val], order[n_val:]
    return ({k: v[train_idx] for k, v in feeds.items()}, {k: v[val_idx] for k, v in feeds.items()})


__all__ = ["Model"]
