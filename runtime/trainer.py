"""The training loop: batches through the compiled training graph, optimizer steps, metrics, callbacks.

The trainer owns the executors of the training graph (forward + backward) and of the evaluation graph
(inference mode + loss), the optimizer bound to the model's parameters, and the per-epoch history.
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np

from nnd.compiler.autodiff import GRAD_PREFIX
from nnd.compiler.diagnostics import NndError
from nnd.compiler.layers import INFER
from nnd.compiler.passes import PassManager
from nnd.compiler.summary import summarize
from nnd.compiler.training import Configured, TrainSpec, loss_log_names, metric_log_name, metric_names
from nnd.compiler.training_graph import (LOSS, LOSS_SCALE, MASK_PREFIX, OUTPUT_LOSS_PREFIX, WEIGHT_PREFIX,
                                         build_loss_graph, build_training_graph)
from nnd.runtime.divergence import divergence_message
from nnd.runtime.executor import Executor
from nnd.runtime.layout_costs import cost_model
from nnd.runtime.loss_scaling import LossScaler
from nnd.runtime.metrics import make_metric
from nnd.runtime.optimizers import Optimizer, make_optimizer
from nnd.runtime.precision import mixed_precision_dtype, needs_loss_scaling
from nnd.runtime.schedules import make_schedule

UPDATE_PREFIX = "update:"


@dataclass
class TrainingState:
    """What callbacks see and may change: parameters in place, the optimizer's lr, stop_training."""

    params: dict[str, np.ndarray]
    optimizer: Optimizer
    epoch: int = 0
    stop_training: bool = False
    history: list[dict[str, float]] = field(default_factory=list)


Batches = Callable[[], Any]  # yields (feeds, targets) dicts per batch


def make_configured_optimizer(spec: Configured, xp=np) -> Optimizer:
    return make_optimizer(spec.name, xp=xp, **spec.args)


class Trainer:
    """With `mixed_precision` ("float16" or True, "bfloat16"), the graphs run in that dtype on copies of the
    float32 parameters, which the optimizer updates in float32; float16 gradients come loss-scaled
    (`nnd.runtime.loss_scaling`), bfloat16 ones need no scaling (`nnd.runtime.precision`). With
    `cuda_graphs` (cupy), both graphs run as captured CUDA graphs (`nnd.runtime.cuda_graphs`); the
    optimizer's update stays outside them, so learning-rate changes need no new capture."""

    def __init__(self, program, model: str, spec: TrainSpec, params: dict[str, np.ndarray], *,
                 backend: str = "numpy", dtype: Any = np.float32, opt_level: int = 2, seed: int = 0,
                 mixed_precision: bool | str = False, cuda_graphs: bool = False):
        self.spec = spec
        self.master_dtype = np.dtype(dtype)
        low = mixed_precision_dtype(mixed_precision)
        if low is not None and self.master_dtype != np.float32:
            raise NndError(f"mixed precision keeps float32 master weights; the model is {self.master_dtype}")
        compute = self.master_dtype if low is None else low
        scaling = low is not None and needs_loss_scaling(low)
        self.scaler = LossScaler() if scaling else None
        passes = PassManager.for_level(opt_level, verify=False, layout_costs=cost_model(backend, compute))
        # Both graphs take sample weights; batches without any are fed weights of 1 (see `with_sample_weights`).
        training = build_training_graph(program, model, spec, loss_scaling=scaling, sample_weights=True)
        evaluation = build_loss_graph(program, model, spec, INFER, sample_weights=True)
        self.targets = training.targets
        self.model_graph = program.graphs[model]  # what a loss that stops being finite is explained by
        self.weight_inputs = [WEIGHT_PREFIX + output for output in training.targets]
        self._ones: dict[int, np.ndarray] = {}
        self.train_graph = passes.run(training.graph)
        self.eval_graph = passes.run(evaluation.graph)
        self.train_executor = Executor(self.train_graph, backend, compute, seed=seed, cuda_graphs=cuda_graphs)
        self.eval_executor = Executor(self.eval_graph, backend, compute, seed=seed, cuda_graphs=cuda_graphs)
        self.trainable = training.trainable
        self.optimizer = make_configured_optimizer(spec.optimizer, self.train_executor.backend.xp)
        if self.trainable:  # a model without any can still be evaluated
            trainable_views = self.optimizer.bind({k: params[k] for k in self.trainable})
            params.update(trainable_views)  # the model's dict now holds views into the optimizer's flat buffer
        self.params = params
        self.schedule = None
        if spec.lr_schedule is not None:
            self.schedule = make_schedule(spec.lr_schedule.name, initial=self.optimizer.lr, **spec.lr_schedule.args)
        # A callback such as reduce_lr_on_plateau rescales the lr; under a schedule the change is kept as a
        # factor on the scheduled value rather than overwritten at the next step.
        self.lr_scale = 1.0
        self._scheduled_lr: float | None = None
        self.state_names = list(self.train_graph.state_updates)
        self.slice_target = _training_slice(self.train_graph, program.graphs[model], backend)
        self.callbacks: list[Any] = []  # those of the running fit, whose state checkpoints carry
        self.resumed_callbacks: dict[str, dict[str, Any]] | None = None  # restored by --resume, for the next fit

    # ------------------------------------------------------------------------------------------ steps

    def step(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """One optimizer step on one batch; returns the training graph's outputs (loss, predictions)."""
        if not self.trainable:
            raise NndError(f"model '{self.train_graph.name}' has no trainable parameters: there is nothing to train")
        if self.schedule is not None:
            self._apply_schedule()
        feeds = self.with_sample_weights(feeds)
        if self.scaler is not None:
            feeds = {**feeds, LOSS_SCALE: np.asarray(self.scaler.scale, dtype=np.float32)}
        self._graph_gradients_into_optimizer()
        # Overflow is the loss scaler's signal, and a diverging run is reported below in one line, not by
        # NumPy's warnings from whichever op met the first infinity.
        with np.errstate(over="ignore", invalid="ignore", divide="ignore"):
            result = self._forward_backward(feeds)
        loss = float(result[LOSS])
        if not np.isfinite(loss):
            raise NndError(divergence_message(loss, self.optimizer.iterations + 1, self.spec, self.model_graph,
                                              np.dtype(self.train_executor.dtype)))
        grads = {name: result[GRAD_PREFIX + name] for name in self.trainable}
        if self.scaler is not None:
            grads = self.scaler.unscale(grads, self.train_executor.backend.xp, self.master_dtype.type)
        else:
            grads = {name: g if g.dtype == self.master_dtype else g.astype(self.master_dtype)
                     for name, g in grads.items()}
        if grads is not None:  # None: the scaled gradients overflowed, the step is skipped
            self.optimizer.step(grads)
        for name in self.state_names:
            self.params[name][...] = result[UPDATE_PREFIX + name]
        return result

    def gradients(self, feeds: dict[str, np.ndarray]) -> tuple[float, dict[str, Any]]:
        """The loss on one batch and every trainable parameter's gradient in the master dtype; no step.
        Under loss scaling the gradients are computed at the current scale and divided back, or at a
        scale of 1 when that overflows; the scaler itself is left as it was."""
        xp = self.train_executor.backend.xp
        feeds = self.with_sample_weights(feeds)
        for scale in (1.0,) if self.scaler is None else (self.scaler.scale, 1.0):
            run_feeds = feeds if self.scaler is None else {**feeds, LOSS_SCALE: np.asarray(scale, np.float32)}
            with np.errstate(over="ignore", invalid="ignore", divide="ignore"):
                result = self._forward_backward(run_feeds)
            grads = {name: result[GRAD_PREFIX + name].astype(self.master_dtype.type) / self.master_dtype.type(scale)
                     for name in self.trainable}
            if self.scaler is None or all(bool(xp.isfinite(g).all()) for g in grads.values()):
                break
        return float(result[LOSS]), grads

    def _graph_gradients_into_optimizer(self) -> None:
        """Under CUDA graphs, the graph writes its gradients into the optimizer's flat gradient buffer
        (converting float16 or bfloat16 to float32 on the way), which the update then reads in place. Not
        with loss scaling: the scaler checks and rescales the raw gradients first."""
        graphs = self.train_executor.graphs
        if graphs is None or graphs.output_targets or self.scaler is not None:
            return
        graphs.output_targets = {GRAD_PREFIX + name: view for name, view in self.optimizer.grad_views().items()}

    def _forward_backward(self, feeds: dict[str, Any]) -> dict[str, Any]:
        """The training graph on one batch; a batch much larger than the cache runs as slices whose
        gradients add up, weighted by their share of the batch, to the batch's own (exact for these
        graphs: the loss is a mean over samples and nothing couples samples, such as batchnorm)."""
        n = len(next(iter(feeds.values())))
        count = math.ceil(n / self.slice_target) if self.slice_target else 1
        if count <= 1:
            return self.train_executor.run(feeds, self.params)
        bounds = [round(n * k / count) for k in range(count + 1)]
        merged: dict[str, Any] = {}
        pieces: dict[str, list[Any]] = {}
        for start, stop in zip(bounds, bounds[1:]):
            part = self.train_executor.run({k: v[start:stop] for k, v in feeds.items()}, self.params)
            share = (stop - start) / n
            for key, value in part.items():
                if key == LOSS or key.startswith((GRAD_PREFIX, OUTPUT_LOSS_PREFIX)):
                    weighted = value * share
                    merged[key] = weighted if key not in merged else merged[key] + weighted
                else:
                    pieces.setdefault(key, []).append(value)
        xp = self.train_executor.backend.xp
        merged.update({key: xp.concatenate(parts) for key, parts in pieces.items()})
        return merged

    def _apply_schedule(self) -> None:
        if self._scheduled_lr is not None and self.optimizer.lr != self._scheduled_lr and self._scheduled_lr > 0:
            self.lr_scale *= self.optimizer.lr / self._scheduled_lr
        self._scheduled_lr = self.schedule(self.optimizer.iterations) * self.lr_scale
        self.optimizer.lr = self._scheduled_lr

    def schedule_state(self) -> dict[str, Any]:
        """The lr scale that callbacks left on the schedule, and the loss scaler's state: checkpointed so
        --resume keeps them."""
        state: dict[str, Any] = {"lr_scale": self.lr_scale, "scheduled_lr": self._scheduled_lr}
        if self.scaler is not None:
            state["loss_scaler"] = self.scaler.state()
        return state

    def load_schedule_state(self, state: dict[str, Any]) -> None:
        self.lr_scale = float(state.get("lr_scale", 1.0))
        scheduled = state.get("scheduled_lr")
        self._scheduled_lr = None if scheduled is None else float(scheduled)
        if self.scaler is not None and state.get("loss_scaler"):
            self.scaler.load_state(state["loss_scaler"])

    def evaluate_batch(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        return self.eval_executor.run(self.with_sample_weights(feeds), self.params)

    def with_sample_weights(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """`feeds` with a weight of 1 for every sample of each output whose sample weights are not given."""
        missing = [name for name in self.weight_inputs if name not in feeds]
        if not missing:
            return feeds
        n = len(next(iter(feeds.values())))
        if n not in self._ones:
            self._ones[n] = np.ones(n, dtype=np.float32)
        return {**feeds, **{name: self._ones[n] for name in missing}}

    def metrics(self, outputs: list[str]) -> dict[str, Any]:
        """Fresh metric objects, keyed by their log name (prefixed by the output when there are several)."""
        result = {}
        for output in outputs:
            for name, metric in zip(metric_names(self.spec.metrics), self.spec.metrics):
                result[metric_log_name(name, output, outputs)] = (output, make_metric(metric.name, **metric.args))
        return result

    def run_epoch(self, batches, outputs: list[str], training: bool,
                  on_batch: Callable[[int, dict[str, float]], None] | None = None) -> dict[str, float]:
        """One pass over `batches`: the loss (each batch's weighted by its size), each output's own loss
        when there are several, and the metrics, which ignore sample weights as Keras' `metrics` do."""
        metrics = self.metrics(outputs)
        losses = dict(zip(["loss", *loss_log_names(outputs)], [LOSS, *(OUTPUT_LOSS_PREFIX + o for o in outputs)]))
        totals = dict.fromkeys(losses, 0.0)
        count = 0
        logs: dict[str, float] = {}
        for index, (feeds, size) in enumerate(batches):
            result = self.step(feeds) if training else self.evaluate_batch(feeds)
            for log, key in losses.items():
                totals[log] += float(result[key]) * size
            count += size
            for output, metric in metrics.values():
                metric.update(result[output], feeds[self.targets[output]], result.get(MASK_PREFIX + output))
            logs = {**{log: total / count for log, total in totals.items()},
                    **{k: m.result() for k, (_, m) in metrics.items()}}
            if on_batch is not None:
                on_batch(index, logs)
        return logs


# A training batch whose forward activations exceed this many bytes runs in slices (see _forward_backward):
# the seed CNN trains 15 % faster per sample at batch 32-64 than at 128.
TRAIN_SLICE_BYTES = 8 << 20


def _training_slice(train_graph, model_graph, backend: str) -> int | None:
    """Samples per slice of a training batch, or None when batches must run whole: on a GPU, and for
    graphs whose batch statistics couple the samples (batchnorm updates) or whose loss is a masked mean."""
    if backend != "numpy" or train_graph.state_updates or train_graph.output_masks:
        return None
    if any(node.op == "batchnorm_train" for node in train_graph.nodes):
        return None
    per_sample = max(1, summarize(model_graph).activation_bytes_per_sample)
    return max(16, TRAIN_SLICE_BYTES // per_sample)


def timed(fn: Callable[[], Any]) -> tuple[Any, float]:
    start = time.perf_counter()
    value = fn()
    return value, time.perf_counter() - start
