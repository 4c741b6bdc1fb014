"""Learning the statistics of a model's normalization layers from data (Keras' `Normalization.adapt`),
and refusing to run a model whose layers never learned them.

Keras would run such a layer with mean 0 and variance 1, which trains, badly, without a word; here
`fit`, `evaluate` and `predict` say which layer has no statistics and how to give it some.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Iterable

import numpy as np

from nnd.compiler.diagnostics import Diagnostic, NndError
from nnd.compiler.ir import Graph, LayerRecord, Value
from nnd.compiler.layers.preprocessing import COUNT, MEAN, VARIANCE_PARAM
from nnd.compiler.source import Span

if TYPE_CHECKING:
    from nnd.model import Model

KIND = "normalization"
ADAPT_SLICE = 1024  # samples run at once through the layers before a deeper normalization


@dataclass(frozen=True)
class Adaptable:
    """A normalization layer that learns its statistics: its name, where it is written, the value it
    normalizes (in the model's inference graph) and its parameters' names."""

    name: str
    span: Span | None
    source: Value

    def param(self, suffix: str) -> str:
        return f"{self.name}.{suffix}"


def adaptable_layers(graph: Graph) -> list[Adaptable]:
    """The normalization layers without statistics in the source, in the model's order."""
    return [Adaptable(record.name, record.span, _layer_input(graph, record))
            for record in graph.layers if record.kind == KIND and f"{record.name}.{COUNT}" in record.params]


def _layer_input(graph: Graph, record: LayerRecord) -> Value:
    """The one value the layer's nodes read that neither they nor a parameter make: its input."""
    params = set(graph.params.values())
    own = [node for node in graph.nodes if node.layer == record.name]
    made = {value for node in own for value in node.outputs}
    outside = {value for node in own for value in node.inputs if value not in made and value not in params}
    assert len(outside) == 1, (record.name, outside)  # the lowering reads its input and its parameters only
    return outside.pop()


def unadapted(model: "Model") -> list[Adaptable]:
    """The learning normalization layers whose statistics were never computed: count 0 and the initial
    mean 0 and variance 1. Keras 3's adapt leaves its `count` weight at 0, so weights brought from Keras
    with learned statistics count as adapted."""
    def untouched(layer: Adaptable) -> bool:
        mean, variance, count = (model._backend.to_numpy(model.params[layer.param(suffix)])
                                 for suffix in (MEAN, VARIANCE_PARAM, COUNT))
        return float(count) == 0 and not np.any(mean) and bool(np.all(variance == 1))

    return [layer for layer in adaptable_layers(model.graph) if untouched(layer)]


def require_adapted(model: "Model", doing: str) -> None:
    """Refuse to `doing` (fit, predict, ...) while a normalization layer has no statistics."""
    missing = unadapted(model)
    if not missing:
        return
    notes = ("call model.adapt(x) with the training inputs first (Keras' layer.adapt(data)), or give the layer "
             "mean= and variance=", "nnd train adapts such layers on the training data by itself")
    raise NndError([Diagnostic(f"cannot {doing}: normalization layer '{layer.name}' has no statistics yet "
                               "(its mean and variance were never computed)", layer.span, notes)
                    for layer in missing], model.program.sources)


def adapt(model: "Model", inputs: dict[str, np.ndarray], layers: Iterable[Adaptable] | None = None) -> list[str]:
    """Set each layer's mean and variance (population variance, as numpy.var) over every axis but the
    last, from `inputs` (checked arrays by input name), in float64; returns the names of the layers set.
    A layer deeper in the model sees the inputs run through the layers before it, the normalizations
    among them adapted first, as adapting each layer in turn in Keras would give."""
    chosen = adaptable_layers(model.graph) if layers is None else list(layers)
    if not chosen:
        raise NndError(f"model '{model.name}' has no normalization layer to adapt (one given mean= and variance= "
                       "keeps them)")
    if len(next(iter(inputs.values()))) == 0:
        raise NndError("adapt needs at least one sample: the inputs are empty")
    for layer in chosen:
        values = _values_at(model, layer.source, inputs)
        _set_statistics(model, layer, values)
    return [layer.name for layer in chosen]


def _values_at(model: "Model", source: Value, inputs: dict[str, np.ndarray]) -> np.ndarray:
    """What the layer normalizes, in float64: an input as given, or the inference graph run up to it."""
    if source in model.graph.inputs:
        return np.asarray(inputs[source.name], dtype=np.float64)
    from nnd.compiler.passes import PassManager
    from nnd.runtime.executor import Executor

    cut = model.graph.copy_shallow()
    cut.outputs, cut.output_masks, cut.state_updates = {"source": source}, {}, {}
    graph = PassManager.for_level(1, verify=False).run(cut)  # dead-code removal keeps what feeds `source`
    executor = Executor(graph, model.backend, model.compute_dtype, seed=model.seed)
    n = len(next(iter(inputs.values())))
    with np.errstate(over="ignore", invalid="ignore", divide="ignore"):  # a non-finite result is reported below
        parts = [model._backend.to_numpy(executor.run({k: v[start:start + ADAPT_SLICE] for k, v in inputs.items()},
                                                      model.params)["source"])
                 for start in range(0, n, ADAPT_SLICE)]
    return np.concatenate(parts).astype(np.float64)


def _set_statistics(model: "Model", layer: Adaptable, values: np.ndarray) -> None:
    if not np.isfinite(values).all():
        raise NndError(Diagnostic(f"cannot adapt normalization layer '{layer.name}': its input holds NaN or "
                                  "infinite values", layer.span, ("remove or fill the missing values first",)),
                       model.program.sources)
    axes = tuple(range(values.ndim - 1))  # every axis but the features
    statistics = {MEAN: values.mean(axis=axes), VARIANCE_PARAM: values.var(axis=axes),
                  COUNT: np.asarray(float(math.prod(values.shape[:-1])))}
    for suffix, value in statistics.items():
        target = model.params[layer.param(suffix)]
        target[...] = model._backend.asarray(value.astype(target.dtype))


__all__ = ["Adaptable", "adapt", "adaptable_layers", "require_adapted", "unadapted"]
