"""What the compiler can tell about a train section's loss and metrics from the outputs they apply to.

Keras accepts a crossentropy on any output; the classic mistakes then train silently and badly: a
probability loss on raw scores (`dense(10)` with sparse_categorical_crossentropy: the negative scores are
clipped and give no gradient), `from_logits=true` on an output that already ends in its softmax (applied
twice, the gradients shrink), binary crossentropy on a softmax (its units compete), a class loss over a
single unit (a softmax of one unit is always 1). The first three are warnings, the last an error.
Among the metrics: precision, recall and auc count binary decisions, which class-id targets are not (an
error), and top_k_accuracy with k at least the number of classes is always 1 (a warning).
"""
from __future__ import annotations

from nnd.compiler.args import ACTIVATIONS
from nnd.compiler.diagnostics import Diagnostic
from nnd.compiler.ir import Graph, Value
from nnd.compiler.output_losses import given_loss, loss_for
from nnd.compiler.training import TrainSpec

BINARY_METRICS = ("precision", "recall", "auc")

CLASS_LOSSES = ("sparse_categorical_crossentropy", "categorical_crossentropy")
# ops whose result is a layer's raw product (its bias add is recognized by the parameter it adds)
PRODUCTS = ("matmul", "conv2d")
# the activation whose probabilities each crossentropy reads
EXPECTED = {"sparse_categorical_crossentropy": "softmax", "categorical_crossentropy": "softmax",
            "binary_crossentropy": "sigmoid"}


def check_outputs(spec: TrainSpec, graph: Graph) -> tuple[list[Diagnostic], list[Diagnostic]]:
    """(errors, warnings) about the train section's loss and metrics on each output of `graph`; each
    output is checked against its own loss when the losses are given per output."""
    errors, warnings = _check_loss(spec, graph)
    metric_errors, metric_warnings = _check_metrics(spec, graph)
    return errors + metric_errors, warnings + metric_warnings


def loss_warnings(spec: TrainSpec, graph: Graph) -> list[Diagnostic]:
    """The warnings about the loss alone: what most likely explains a loss that is not finite."""
    return _check_loss(spec, graph)[1]


def _check_metrics(spec: TrainSpec, graph: Graph) -> tuple[list[Diagnostic], list[Diagnostic]]:
    errors: list[Diagnostic] = []
    warnings: list[Diagnostic] = []
    for metric in spec.metrics:
        for name, output in graph.outputs.items():
            loss = loss_for(spec, name, graph.outputs).name
            if metric.name in BINARY_METRICS and loss == "sparse_categorical_crossentropy":
                errors.append(Diagnostic(
                    f"{metric.name} counts binary decisions element by element, but the targets of output "
                    f"'{name}' are class ids ({loss})", metric.span,
                    ("for two classes use dense(1, activation=sigmoid) with binary_crossentropy; for more, "
                     "one-hot targets with categorical_crossentropy",)))
                break
            classes = output.type.shape[-1] if output.type.rank >= 2 else 1
            k = metric.args.get("k", 5)
            if metric.name == "top_k_accuracy" and isinstance(classes, int) and k >= classes:
                warnings.append(Diagnostic(
                    f"top_k_accuracy with k={k} over the {classes} classes of output '{name}' is always 1",
                    metric.span, (f"choose k below {classes}",), severity="warning"))
                break
    return errors, warnings


def _check_loss(spec: TrainSpec, graph: Graph) -> tuple[list[Diagnostic], list[Diagnostic]]:
    errors: list[Diagnostic] = []
    warnings: list[Diagnostic] = []
    params = set(graph.params.values())
    for name, output in graph.outputs.items():
        loss = given_loss(spec, name, list(graph.outputs))
        if loss is None or loss.name not in EXPECTED:
            continue  # no loss named (the output gets the one its activation implies), or a regression loss
        where = _made_at(name, output)
        if loss.name in CLASS_LOSSES and output.type.rank >= 2 and output.type.shape[-1] == 1:
            errors.append(Diagnostic(
                f"{loss.name} over output '{name}' of a single unit: a softmax of one unit is always 1, so "
                "there is nothing to learn", loss.span,
                (*where, "for two classes use dense(1, activation=sigmoid) with binary_crossentropy, or "
                 "dense(2, activation=softmax)")))
            continue
        problem = _mismatch(loss.name, bool(loss.args.get("from_logits", False)), name, output, params)
        if problem is not None:
            message, advice = problem
            warnings.append(Diagnostic(message, loss.span, (*where, advice), severity="warning"))
    return errors, warnings


def _mismatch(loss: str, from_logits: bool, name: str, output: Value, params: set[Value]
              ) -> tuple[str, str] | None:
    """(message, advice) when `loss` does not fit how `output` ends, else None."""
    expected = EXPECTED[loss]
    final = final_activation(output, params)
    if final is None:
        return None
    if from_logits:
        if final in ("softmax", "sigmoid"):
            return (f"{loss} with from_logits=true applies a {expected} of its own, but output '{name}' already "
                    f"ends in {final}", "set from_logits=false, or drop the final activation")
        return None
    if final == expected:
        return None
    units = output.type.shape[-1] if output.type.rank >= 2 else 1
    if loss == "binary_crossentropy" and final == "softmax" and units != 1:
        return (f"binary_crossentropy treats each of the {units} units of output '{name}' as an independent "
                "probability, but its softmax makes them compete",
                f"use sigmoid for independent labels, or categorical_crossentropy for one class out of {units}")
    ending = f"ends in {final}" if final != "linear" else "has no activation at its end (raw scores)"
    return (f"{loss} reads probabilities, but output '{name}' {ending}",
            f"end the model with activation={expected}, or set from_logits=true for raw scores")


def final_activation(output: Value, params: set[Value]) -> str | None:
    """The activation the output ends in: an activation op's name, "linear" for a layer's own product
    (a matmul or convolution, with or without its bias), None when it cannot be told (an average of two
    softmax heads is a distribution too)."""
    producer = output.producer
    if producer is None:
        return None
    if producer.op in ACTIVATIONS:
        return producer.op
    if producer.op.endswith("_epilogue"):
        return producer.attr("activation", "linear")
    if producer.op in PRODUCTS or (producer.op == "add" and any(v in params for v in producer.inputs)):
        return "linear"
    return None


def _made_at(name: str, output: Value) -> tuple[str, ...]:
    producer = output.producer
    if producer is None or producer.span is None:
        return ()
    layer = f" by {producer.layer}" if producer.layer else ""
    return (f"output '{name}' is made{layer} at {producer.span}",)
