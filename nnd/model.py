"""`nnd.Model`: a compiled `.nnd` model with its parameters, trained and run from Python.

Plain NumPy arrays go in and come out. A model with one input takes an array; with several, a dict
keyed by input name (or a list in declaration order). Targets follow the same rule over the outputs.
"""
from __future__ import annotations

import copy
import dataclasses
import functools
import json
import os
import threading
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Any, Mapping, Sequence

import numpy as np

from nnd.adapt import require_adapted
from nnd.arguments import (Arrays, as_array, as_path, by_name, check_target, input_array, non_negative_int,
                           parameter_array, positive_int, same_count, sample_count, split_last, validation_fraction,
                           verbosity)
from nnd.compiler.diagnostics import NndError, NndWarning
from nnd.compiler.frontend import CheckedProgram
from nnd.compiler.output_checks import check_outputs
from nnd.compiler.summary import summarize
from nnd.compiler.tensor_type import TensorType
from nnd.compiler.output_losses import given_loss, loss_for
from nnd.compiler.training import METRIC_ALIASES, METRICS, OPTIMIZERS, Configured, TrainSpec
from nnd.compiler.training_graph import TARGET_PREFIX, WEIGHT_PREFIX, target_type
from nnd.compile_losses import as_saved, checked_setting, compile_loss, compile_loss_weights
from nnd.evaluation import check_return_dict, evaluation_result
from nnd.runtime import checkpoint as ckpt
from nnd.runtime.executor import Executor
from nnd.runtime.fit import plain_batches
from nnd.runtime.history import History
from nnd.runtime.initializers import initialize
from nnd.runtime.saved_model import write_model_files
from nnd.runtime.metrics import make_metric
from nnd.sample_weights import sample_weight_feeds, weight_feeds
from nnd.runtime.precision import mixed_precision_dtype
from nnd.runtime.trainer import Trainer, TrainingState

if TYPE_CHECKING:
    from nnd.runtime.run_directory import RunDirectory

DTYPES = {"float32": np.float32, "float64": np.float64}
# predict's slices: activations of about this many bytes stay in cache (measured on the seed CNN: slices of
# 32 samples infer 2.3x faster than one slice of 1000), but never fewer samples than MIN_SLICE.
CACHE_BYTES = 4 << 20
MIN_SLICE = 8
PREDICT_BATCH = 256  # predict's and evaluate's largest slice unless given


class Model:
    def __init__(self, program: CheckedProgram, name: str | None = None, *, backend: str = "numpy",
                 dtype: str = "float32", seed: int | None = None, opt_level: int = 2,
                 mixed_precision: bool | str = False, tf32: bool = False, cuda_graphs: bool | None = None):
        if not isinstance(dtype, str) or dtype not in DTYPES:
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
        # On by default on the GPU, where a small batch's step is dozens to hundreds of launches from Python,
        # except under mixed precision, whose steps do not capture yet (they would run eagerly after a
        # warning); a capture that fails falls back to running eagerly (nnd.runtime.cuda_graphs).
        if cuda_graphs is None:
            cuda_graphs = backend == "cupy" and low is None
        self.cuda_graphs = bool(cuda_graphs)
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
        # a saved model's optimizer state, for the trainer once it is made (nnd.load of a trained model)
        self.pending_optimizer_state: dict[str, np.ndarray] | None = None
        self._predictor: Executor | None = None
        self._predictor_lock = threading.Lock()  # threads predicting at once build one predictor

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

    def __deepcopy__(self, memo: dict) -> "Model":
        """An independent model: the same program and settings with its own copies of the weights, of what
        compile() set, of the history and of a trained optimizer's state; training either changes nothing
        in the other."""
        twin = Model(self.program, self.name, backend=self.backend, dtype=np.dtype(self.dtype).name, seed=self.seed,
                     opt_level=self.opt_level, mixed_precision=self.mixed_precision or False,
                     cuda_graphs=self.cuda_graphs)
        memo[id(self)] = twin
        twin.spec = dataclasses.replace(self.spec)
        twin._compiled = dict(self._compiled)
        twin.set_parameters(self.parameters())
        twin.history = copy.deepcopy(self.history, memo)
        twin.data_rng = copy.deepcopy(self.data_rng, memo)
        state = self._optimizer_state()
        twin.pending_optimizer_state = None if state is None else {k: np.array(v, copy=True) for k, v in state.items()}
        return twin

    def __copy__(self) -> "Model":
        # A shallow copy would share the weights and the optimizer: fitting one would train both.
        return self.__deepcopy__({})

    def __reduce__(self):
        raise NndError("a Model cannot be pickled: save it with model.save(directory) and load it with "
                       "nnd.load(directory) (in another process too); copy.deepcopy(model) copies it in this one")

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

    @property
    def input_shape(self) -> Any:
        """Keras' input_shape: `(None, 28, 28, 1)`, None for the batch; a list for several inputs."""
        return _keras_shapes([v.type for v in self.graph.inputs])

    @property
    def output_shape(self) -> Any:
        """Keras' output_shape: `(None, 10)`, None for the batch; a list for several outputs."""
        return _keras_shapes([v.type for v in self.graph.outputs.values()])

    def summary(self, batch_size: int = 32, print_fn=print) -> str:
        if print_fn is not None and not callable(print_fn):
            raise NndError(f"print_fn must be a function that takes the text (or None), got {type(print_fn).__name__}")
        text = summarize(self.graph).render(positive_int(batch_size, "batch_size"))
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
        # numbers first, so that text or objects are not reported as arrays of another shape
        converted = {name: parameter_array(value, f"parameter {name!r} from {source}", self.dtype)
                     for name, value in values.items() if name in self.params}
        expected = {name: tuple(p.type.shape) for name, p in self.graph.param_info.items()}
        ckpt.check_compatible(expected, {k: np.shape(v) for k, v in values.items()}, strict=strict, source=source)
        for name, value in converted.items():
            self.params[name][...] = self._backend.asarray(value)

    def get_weights(self) -> list[np.ndarray]:
        """Keras' list form of `parameters()`: copies of every parameter, layer by layer in the order of the
        model (a batchnorm's gamma, beta, moving mean and variance), as Keras' get_weights lists them."""
        return list(self.parameters().values())

    def set_weights(self, weights: Sequence[np.ndarray]) -> None:
        """Keras' list form of `set_parameters`: one array per parameter, in `get_weights()`'s order."""
        names = list(self.params)
        if isinstance(weights, (str, bytes, Mapping)) or not isinstance(weights, Sequence):
            raise NndError(f"set_weights takes a list of arrays in get_weights()' order, got {type(weights).__name__}"
                           + ("; set_parameters takes a dict by name" if isinstance(weights, Mapping) else ""))
        if len(weights) != len(names):
            raise NndError(f"set_weights got {len(weights)} arrays, but the model has {len(names)} parameters "
                           f"({', '.join(names)})")
        self.set_parameters(dict(zip(names, weights)), source="set_weights")

    # ------------------------------------------------------------------------------ configuration

    def compile(self, optimizer: str | Configured | None = None, loss: Any = None,
                metrics: Sequence[str | Configured] | None = None, *, loss_weights: Any = None,
                **optimizer_args: Any) -> "Model":
        """Override the file's train section, Keras style: compile(optimizer="sgd", lr=0.1, loss="mse").

        Each is a name, or the train section's call with its arguments, in the language's words:
        loss="sparse_categorical_crossentropy(from_logits=true)", metrics=["top_k_accuracy(k=3)"]; or an
        `nnd.Configured(name, {argument: value})`, such as nnd.Configured("huber", {"delta": 2.0}).
        `loss` is one loss for every output, or one per output as a list (output order) or a dict (by
        output name); `loss_weights` (a list or dict alike) scales each output's loss in the total."""
        spec = self.spec
        # Every name and argument is checked before anything changes, as the train section's would be.
        new_optimizer, new_loss, new_metrics = spec.optimizer, spec.loss, spec.metrics
        new_weights = spec.loss_weights
        if optimizer is not None or optimizer_args:
            base = _configured(optimizer) if optimizer is not None else spec.optimizer
            new_optimizer = checked_setting(Configured(base.name, {**base.args, **optimizer_args}), OPTIMIZERS,
                                            "optimizer")
        if loss is not None:
            new_loss = compile_loss(loss, self.output_names)
        if loss_weights is not None:
            new_weights = compile_loss_weights(loss_weights, self.output_names)
        if metrics is not None:
            if not isinstance(metrics, (str, Configured, list, tuple)):
                raise NndError(f"metrics must be a list of names or nnd.Configured, got {type(metrics).__name__}")
            new_metrics = [_metric(m) for m in ([metrics] if isinstance(metrics, (str, Configured)) else metrics)]
            for metric in new_metrics:
                make_metric(metric.name, **metric.args)
        spec.optimizer, spec.loss, spec.metrics = new_optimizer, new_loss, new_metrics
        spec.loss_weights = new_weights
        if loss is not None:  # the file's spans no longer point at what is used
            spec.loss_span = None
        if loss_weights is not None:
            spec.loss_weights_span = None
        if optimizer is not None or optimizer_args:
            self._compiled["optimizer"] = new_optimizer
            self.pending_optimizer_state = None  # another optimizer starts afresh
        for key, given, value in (("loss", loss, new_loss), ("loss_weights", loss_weights, new_weights),
                                  ("metrics", metrics, new_metrics)):
            if given is not None:
                self._compiled[key] = value
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
            if self.pending_optimizer_state is not None:
                self._trainer.optimizer.load_state_dict(self.pending_optimizer_state)
                self.pending_optimizer_state = None
        return self._trainer

    # ------------------------------------------------------------------------------ running

    def adapt(self, x: Arrays) -> None:
        """Compute the mean and variance of every normalization layer that learns them (one given no
        mean= and variance=) from the inputs `x`, an array or a dict by input name, as Keras'
        `layer.adapt(data)` does: per feature (the last axis), over every other axis, the population
        variance. A layer deeper in the model is adapted on `x` run through the layers before it. `fit`
        does not adapt (nor does Keras'); `nnd train` does, before the first epoch."""
        from nnd.adapt import adapt

        adapt(self, self._inputs(x))

    def predict(self, x: Arrays, batch_size: int | None = None, verbose: int = 0) -> Any:
        """Outputs for x: an array for a one-output model, else a dict name -> array.

        On the CPU the batch runs through the network in slices whose activations fit in cache (a few
        dozen samples for a small CNN), which is faster than whole batches; `batch_size` (default 256)
        caps the slice. `verbose` is accepted as Keras' is; prediction prints nothing.
        """
        batch_size = positive_int(PREDICT_BATCH if batch_size is None else batch_size, "batch_size")
        inputs = self._inputs(x)
        require_adapted(self, "predict")
        if self._predictor is None:
            with self._predictor_lock:
                if self._predictor is None:
                    self._predictor = self._make_predictor()
        n = sample_count(inputs)
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

    def _make_predictor(self) -> Executor:
        from nnd.compiler.passes import PassManager
        from nnd.runtime.layout_costs import cost_model

        passes = PassManager.for_level(self.opt_level, verify=False,
                                       layout_costs=cost_model(self.backend, self.compute_dtype))
        return Executor(passes.run(self.graph), self.backend, self.compute_dtype, seed=self.seed,
                        cuda_graphs=self.cuda_graphs)

    def _no_samples(self, output: str) -> np.ndarray:
        return np.zeros((0, *self.graph.outputs[output].type.shape[1:]), dtype=self.dtype)

    @functools.cached_property
    def _activation_bytes_per_sample(self) -> int:
        return max(1, summarize(self.graph).activation_bytes_per_sample)

    def _slice_size(self, batch_size: int) -> int:
        if self.backend != "numpy":
            return batch_size  # a GPU wants the whole batch at once
        return max(MIN_SLICE, min(batch_size, CACHE_BYTES // self._activation_bytes_per_sample))

    def evaluate(self, x: Arrays, y: Arrays, batch_size: int | None = None, verbose: int = 0, *,
                 sample_weight: Arrays | None = None, return_dict: bool = True) -> Any:
        """The loss and the train section's metrics over (x, y), in inference mode, in slices of at most
        `batch_size` samples (default 256). `verbose` is accepted as Keras' is; evaluation prints nothing.
        `sample_weight` weighs each sample's loss as fit's does; the metrics stay unweighted.

        Returns a dict by name, {'loss': ..., 'accuracy': ...} (Keras' return_dict=True); reading it by
        position (`score[0]`) says so. `return_dict=False` gives Keras' default form: the loss alone when
        there are no metrics, else the list [loss, *metrics] in the dict's order."""
        return_dict = check_return_dict(return_dict)
        batch_size = positive_int(PREDICT_BATCH if batch_size is None else batch_size, "batch_size")
        feeds = self._feeds(x, y, sample_weight)
        if sample_count(feeds) == 0:
            raise NndError("no samples to evaluate: x and y are empty")
        require_adapted(self, "evaluate")
        trainer = self._get_trainer()
        logs = trainer.run_epoch(plain_batches(feeds, self._slice_size(batch_size)), self.output_names,
                                 training=False)
        return evaluation_result(logs, return_dict)

    def loss_and_gradients(self, x: Arrays, y: Arrays, sample_weight: Arrays | None = None
                           ) -> tuple[float, dict[str, np.ndarray]]:
        """The training loss on one batch and its gradient for every trainable parameter; no update.
        `sample_weight` weighs each sample's loss as fit's does."""
        feeds = self._feeds(x, y, sample_weight)
        if sample_count(feeds) == 0:
            raise NndError("no samples: x and y are empty")
        require_adapted(self, "compute gradients")
        loss, grads = self._get_trainer().gradients(feeds)
        return loss, {name: np.array(self._backend.to_numpy(g)) for name, g in grads.items()}

    def fit(self, x: Arrays, y: Arrays, epochs: int | None = None, batch_size: int | None = None, *,
            validation_data: tuple[Arrays, Arrays] | None = None, validation_split: float | None = None,
            shuffle: bool = True, callbacks: Sequence[Any] | None = None, verbose: int = 1, initial_epoch: int = 0,
            run_dir: "str | Path | RunDirectory | None" = None, sample_weight: Arrays | None = None,
            class_weight: Mapping[int, float] | None = None) -> History:
        """Train; returns this call's History (per-epoch loss, metrics and validation figures), as Keras
        does; `model.history` holds every epoch the model has trained, across calls and resumed runs.

        `callbacks` are `nnd.Callback`s (EarlyStopping, ReduceLROnPlateau, or subclasses) or objects with
        Keras' hooks; `run_dir` gets what `nnd train --out` writes (checkpoints, metrics, weights).

        `sample_weight` (one weight per sample) or `class_weight` (class id -> weight) multiply each
        sample's loss, as Keras' do: the batch's loss is the mean of the weighted losses over the batch.
        With validation_split the validation part keeps its sample weights, but not class weights."""
        from nnd.runtime.callbacks import as_callbacks
        from nnd.runtime.fit import fit_loop
        from nnd.runtime.run_directory import RunDirectory

        spec = self.spec
        self._check_outputs()
        epochs = spec.epochs if epochs is None else epochs
        batch_size = spec.batch_size if batch_size is None else batch_size
        epochs, batch_size = positive_int(epochs, "epochs"), positive_int(batch_size, "batch_size")
        verbose, initial_epoch = verbosity(verbose), non_negative_int(initial_epoch, "initial_epoch")
        feeds = self._feeds(x, y)
        if sample_count(feeds) == 0:
            raise NndError("no training samples: x and y are empty")
        require_adapted(self, "fit")
        feeds.update(weight_feeds(sample_weight, class_weight, feeds, self._output_losses(), sample_count(feeds)))
        split = spec.validation_split if validation_split is None else validation_fraction(validation_split)
        val_feeds = self._validation_feeds(validation_data)
        if val_feeds is None and split:
            feeds, val_feeds = split_last(feeds, split)
            if class_weight is not None:  # Keras weighs the training samples by class only
                val_feeds = {k: v for k, v in val_feeds.items() if not k.startswith(WEIGHT_PREFIX)}
        hooks = as_callbacks(callbacks, self)
        if run_dir is not None and not isinstance(run_dir, RunDirectory):
            run_dir = RunDirectory(as_path(run_dir, "run_dir"))
            held = run_dir.held()
            if held:
                raise NndError(f"run_dir {run_dir.path} already holds a run ({', '.join(held)}); "
                               "choose another directory, or remove that one first")
        trainer = self._get_trainer()
        state = TrainingState(self.params, trainer.optimizer, epoch=initial_epoch)
        first = len(self.history.epochs)
        fit_loop(self, trainer, state, feeds, val_feeds, epochs, batch_size, shuffle, hooks, verbose, run_dir)
        return self.history.since(first)

    def _validation_feeds(self, data: Any) -> dict[str, np.ndarray] | None:
        if data is None:
            return None
        if not isinstance(data, (tuple, list)) or len(data) not in (2, 3):
            count = f"{len(data)} items" if isinstance(data, (tuple, list)) else type(data).__name__
            raise NndError(f"validation_data must be a pair (x_val, y_val) or a triple (x_val, y_val, "
                           f"sample_weight_val), got {count}")
        try:
            feeds = self._feeds(*data)
        except NndError as err:  # say which data: the same names (input 'x', target 'y') serve fit's x and y
            raise NndError([dataclasses.replace(d, message=f"validation_data: {d.message}") for d in err.diagnostics],
                           err.sources) from None
        if sample_count(feeds) == 0:
            raise NndError("validation_data holds no samples")
        return feeds

    # ------------------------------------------------------------------------------ saving

    def save(self, directory: str | Path) -> Path:
        """Write weights.npz, the model source and a manifest with the dtype, precision and what compile()
        set into `directory`; `nnd.load(directory)` rebuilds the same model."""
        directory = as_path(directory, "the save directory")
        write_model_files(directory, self.program, self.name, self.input_names, self.output_names,
                          weights=self.parameters(), optimizer_state=self._optimizer_state(),
                          settings=self.saved_settings())
        return directory

    def _optimizer_state(self) -> dict[str, np.ndarray] | None:
        """The optimizer's state once it has taken a step, else the state a loaded model brought."""
        trained = self._trainer is not None and self._trainer.optimizer.iterations > 0
        return self._trainer.optimizer.state_dict() if trained else self.pending_optimizer_state

    def saved_settings(self) -> dict[str, Any]:
        """What a saved model's manifest records beyond its source: dtype, precision, compile()'s choices."""
        settings: dict[str, Any] = {"dtype": np.dtype(self.dtype).name, "mixed_precision": self.mixed_precision}
        if self._compiled:
            settings["compile"] = {key: _compiled_json(key, value) for key, value in self._compiled.items()}
        return settings

    def load_weights(self, path: str | Path) -> "Model":
        path = as_path(path, "the weights file")
        if path.is_dir():
            path = path / "weights.npz"
        self.set_parameters(ckpt.load_weights(path), source=f"weights file {path}")
        return self

    # ------------------------------------------------------------------------------ data

    def _inputs(self, x: Arrays) -> dict[str, np.ndarray]:
        arrays = by_name(x, self.input_names, "input")
        for value in self.graph.inputs:
            arrays[value.name] = input_array(arrays[value.name], value.name, value.type)
        same_count(arrays, "inputs")
        return arrays

    def _feeds(self, x: Arrays, y: Arrays, sample_weight: Arrays | None = None) -> dict[str, np.ndarray]:
        """Inputs, targets and, when `sample_weight` gives them, each output's sample weights, by the
        training graph's input names, checked (the trainer weighs samples without weights by 1)."""
        feeds = self._inputs(x)
        targets = by_name(y, self.output_names, "target")
        for name in self.output_names:
            feeds[TARGET_PREFIX + name] = self._target(name, targets[name])
        same_count(feeds, "inputs and targets")
        if sample_weight is not None:
            feeds.update(sample_weight_feeds(sample_weight, self.output_names, sample_count(feeds)))
        return feeds

    def _target(self, name: str, value: Any, label: str | None = None) -> np.ndarray:
        """Output `name`'s target, checked against its loss; `label` names it in messages (the command
        line's key in a data file), instead of fit's y or the output's name."""
        output = self.graph.outputs[name]
        loss = loss_for(self.spec, name, self.graph.outputs).name
        target = as_array(value, f"target '{label or name}'")
        try:
            return check_target(target, target_type(loss, output), output, name, loss, label)
        except NndError as err:
            if given_loss(self.spec, name, self.output_names) is not None:
                raise
            raise _with_note(err, f"no loss is set, so output '{name}' gets {loss}, the usual one for its "
                                  "final activation; set another with loss = ... in the train section or "
                                  "model.compile(loss=...)") from None

    def _output_losses(self) -> dict[str, tuple[Any, str]]:
        """Each output's graph value and the name of the loss it trains with."""
        outputs = self.graph.outputs
        return {name: (output, loss_for(self.spec, name, outputs).name) for name, output in outputs.items()}


def _keras_shapes(types: list[TensorType]) -> Any:
    """Shapes as Keras gives them: the symbolic batch as None, one tuple alone or a list of several."""
    shapes = [tuple(None if isinstance(d, str) else d for d in t.shape) for t in types]
    return shapes[0] if len(shapes) == 1 else shapes


def _with_note(error: NndError, note: str) -> NndError:
    """The same error with `note` added to each of its diagnostics."""
    return NndError([dataclasses.replace(d, notes=(*d.notes, note)) for d in error.diagnostics], error.sources)


def _allow_tf32(backend: str) -> None:
    """Let cuBLAS run float32 GEMMs on Tensor Cores in TF32 (10-bit mantissa inputs, float32 sums).

    CuPy decides per dtype at its first GEMM from CUPY_TF32, so this takes effect for a process whose
    GPU has not multiplied float32 matrices yet."""
    if backend != "cupy":
        raise NndError(f"tf32 runs float32 GEMMs on a GPU's Tensor Cores: it needs the cupy backend, not {backend!r}")
    os.environ["CUPY_TF32"] = "1"


def _as_json(value: Configured) -> dict[str, Any]:
    """A checked optimizer, loss or metric as model.json keeps it; compile(**configured) reads it back."""
    args = {k: v.item() if isinstance(v, np.generic) else v for k, v in value.args.items()}
    try:
        json.dumps(args)
    except TypeError:
        raise NndError(f"{value.name}: arguments must be numbers, strings or booleans to be saved, "
                       f"got {args!r}") from None
    return {"name": value.name, "args": args}


def _compiled_json(key: str, value: Any) -> Any:
    """What compile() set, as model.json keeps it (`nnd._compile_saved` reads it back)."""
    if key == "loss_weights":
        return dict(value)
    if key == "loss":
        return as_saved(value, _as_json)
    return [_as_json(m) for m in value] if isinstance(value, list) else _as_json(value)


def _configured(value: str | Configured) -> Configured:
    return value if isinstance(value, Configured) else Configured(str(value))


def _metric(value: str | Configured) -> Configured:
    """A metric for compile(): one written as the language's call, "top_k_accuracy(k=3)", is read as
    the train section's would be."""
    metric = _configured(value)
    return checked_setting(metric, METRICS, "metric", METRIC_ALIASES) if "(" in metric.name else metric


__all__ = ["Model"]
