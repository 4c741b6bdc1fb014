"""From a model to its training graph: targets, the loss (fused with softmax/sigmoid where it can be),
regularization, and the gradients of every trainable parameter, by the autodiff pass.

Each model output gets a target input named `target:<output>`; the training graph's outputs are the
model outputs (for metrics), `loss` and one `grad:<parameter>` per trainable parameter. `loss` is the
sum over the outputs of each one's loss weight times its mean loss over the batch
(`compiler/output_losses.py`), plus regularization; a model with several outputs also has each one's
unweighted mean loss as the output `loss:<output>`, for the logs.

With `sample_weights`, each model output also gets an input `sample_weight:<output>` holding one factor
per sample, as Keras' fit(sample_weight=...) and class_weight: the loss of every sample is multiplied by
its factor and the batch's loss is the mean of these products over the batch (Keras divides by the batch
size, not by the sum of the weights). A sequence output's steps share their sample's factor.

A sequence output that carries a padding mask (`Graph.output_masks`: downstream of embedding(mask_zero)
or masking()) leaves its padded steps out of the loss, as Keras does: the loss of each step (the loss
function's value, averaged over the last axis where it is elementwise, as Keras' mse or binary
cross-entropy do) is weighted by the mask and the total divided by the number of real steps in the
batch, sum(loss * mask) / max(sum(mask), 1); a batch without any real step adds 0. (Keras divides by
sum(mask) + epsilon.) The mask is also an output, `mask:<output>`, so that the metrics of that output
count the real steps only.
"""
from __future__ import annotations

from dataclasses import dataclass

from nnd.compiler.autodiff import differentiate
from nnd.compiler.builder import GraphBuilder
from nnd.compiler.diagnostics import Diagnostic, NndError
from nnd.compiler.ir import Graph, Value
from nnd.compiler.layers import INFER, TRAIN
from nnd.compiler.tensor_type import FLOAT_DTYPES, TensorType
from nnd.compiler.output_losses import loss_for, loss_weight
from nnd.compiler.training import Configured, TrainSpec

TARGET_PREFIX = "target:"
MASK_PREFIX = "mask:"
WEIGHT_PREFIX = "sample_weight:"
LOSS = "loss"
OUTPUT_LOSS_PREFIX = "loss:"   # each output's own mean loss, in a model with several
LOSS_SCALE = "loss_scale"      # the scalar input that multiplies the loss under loss scaling
SCALED_LOSS = "scaled_loss"    # the output the gradients are taken of, then

# The loss each final activation fuses with: the stable form works on the activation's input.
_FUSED = {("sparse_categorical_crossentropy", "softmax"): "sparse_softmax_cross_entropy",
          ("categorical_crossentropy", "softmax"): "softmax_cross_entropy",
          ("binary_crossentropy", "sigmoid"): "sigmoid_cross_entropy"}
_ON_PROBABILITIES = {"sparse_categorical_crossentropy": "sparse_categorical_crossentropy",
                     "categorical_crossentropy": "categorical_crossentropy",
                     "binary_crossentropy": "binary_crossentropy"}
_FROM_LOGITS = {"sparse_categorical_crossentropy": "sparse_softmax_cross_entropy",
                "categorical_crossentropy": "softmax_cross_entropy",
                "binary_crossentropy": "sigmoid_cross_entropy"}


@dataclass
class TrainingGraph:
    graph: Graph
    targets: dict[str, str]  # model output -> target input name
    trainable: list[str]


def target_type(loss: str, output: Value) -> TensorType:
    """Sparse losses take integer class labels, one per prediction vector; the others a float array."""
    if loss == "sparse_categorical_crossentropy":
        return TensorType(output.type.shape[:-1], "i64")
    return output.type


def build_training_graph(program, model: str, spec: TrainSpec | None = None,
                         loss_scaling: bool = False, sample_weights: bool = False) -> TrainingGraph:
    """The training graph of `model` in `program` (a CheckedProgram) under the loss of `spec`.

    With `loss_scaling`, the gradients are those of the loss times the scalar input `loss_scale` (mixed
    precision: small float16 gradients stay above the underflow); the `loss` output stays unscaled."""
    loss_graph = build_loss_graph(program, model, spec, TRAIN, sample_weights)
    graph = loss_graph.graph
    trainable = [name for name, info in graph.param_info.items() if info.trainable]
    differentiated = LOSS
    if loss_scaling:
        builder = GraphBuilder(graph)
        scale = builder.add_input(LOSS_SCALE, TensorType((), graph.outputs[LOSS].type.dtype))
        graph.outputs[SCALED_LOSS] = builder.emit1("mul", [graph.outputs[LOSS], scale])
        differentiated = SCALED_LOSS
    return TrainingGraph(differentiate(graph, differentiated, trainable), loss_graph.targets, trainable)


def build_loss_graph(program, model: str, spec: TrainSpec | None = None, mode: str = INFER,
                     sample_weights: bool = False) -> TrainingGraph:
    """The model in `mode` with target inputs and a `loss` output, without gradients (for evaluation)."""
    spec = spec or program.train_spec(model)
    graph = program.lower(model, mode)
    if mode == INFER:
        graph = graph.copy_shallow()  # the program's cached inference graph stays as it is
    builder = GraphBuilder(graph)
    targets: dict[str, str] = {}
    terms: list[Value] = []
    extra: dict[str, Value] = {}  # each output's own loss and mask
    outputs = dict(graph.outputs)
    for name, output in outputs.items():
        loss = loss_for(spec, name, outputs)
        target = builder.add_input(TARGET_PREFIX + name, target_type(loss.name, output))
        targets[name] = target.name
        weight = (builder.add_input(WEIGHT_PREFIX + name, TensorType(output.type.shape[:1], "f32"))
                  if sample_weights else None)
        with builder.origin(loss.span, "loss"):
            term, mask = _mean_loss(builder, loss, output, target, graph.output_masks.get(name), weight)
            if len(outputs) > 1:
                extra[OUTPUT_LOSS_PREFIX + name] = term
            terms.append(_weighted_term(builder, term, loss_weight(spec, name, list(outputs))))
        if mask is not None:
            extra[MASK_PREFIX + name] = mask
    with builder.origin(spec.loss_span, "loss"):
        total = _sum(builder, terms)
        for term in _regularization(builder, graph):
            total = builder.emit1("add", [total, term])
    graph.outputs[LOSS] = total
    graph.outputs.update(extra)
    return TrainingGraph(graph, targets, [])


def _weighted_term(builder: GraphBuilder, term: Value, factor: float) -> Value:
    """An output's loss times its loss weight; a weight of 1 adds nothing to the graph."""
    if factor == 1.0:
        return term
    scale = builder.emit1("constant", [], {"value": float(factor), "dtype": "f32"})
    return builder.emit1("mul", [term, scale])


def _mean_loss(builder: GraphBuilder, loss: Configured, output: Value, target: Value,
               mask: Value | None, weight: Value | None) -> tuple[Value, Value | None]:
    """The batch's loss for one output, and the float mask it used (None where it used none)."""
    per_element = _loss_values(builder, loss, output, target)
    if weight is not None:
        per_element = _sample_weighted(builder, per_element, weight)
    if mask is not None:
        per_step = _per_step(builder, per_element, mask)
        if per_step is not None:
            return _masked_mean(builder, per_step, mask)
    axes = tuple(range(per_element.type.rank))
    return builder.emit1("reduce_mean", [per_element], {"axes": axes, "keepdims": False}), None


def _sample_weighted(builder: GraphBuilder, per_element: Value, weight: Value) -> Value:
    """Every element of a sample's loss times the sample's weight: [N] broadcast as [N, 1, ...]."""
    rank = per_element.type.rank
    if rank > 1:
        weight = builder.emit1("reshape", [weight], {"shape": (*weight.type.shape, *(1,) * (rank - 1))})
    if weight.type.dtype != per_element.type.dtype:
        weight = builder.emit1("cast", [weight], {"dtype": per_element.type.dtype})
    return builder.emit1("mul", [per_element, weight])


def _per_step(builder: GraphBuilder, per_element: Value, mask: Value) -> Value | None:
    """The loss of each step, shaped like the mask: elementwise losses are averaged over the last axis
    (the features of a step); None when the loss does not line up with the mask's steps."""
    shape = per_element.type.shape
    if shape == mask.type.shape:
        return per_element
    if len(shape) == mask.type.rank + 1 and shape[:-1] == mask.type.shape:
        return builder.emit1("reduce_mean", [per_element], {"axes": (len(shape) - 1,), "keepdims": False})
    return None


def _masked_mean(builder: GraphBuilder, per_step: Value, mask: Value) -> tuple[Value, Value]:
    """sum(loss * mask) / max(sum(mask), 1): the mean over the real steps of the batch."""
    if mask.type.dtype not in FLOAT_DTYPES:
        mask = builder.emit1("cast", [mask], {"dtype": per_step.type.dtype})
    axes = tuple(range(per_step.type.rank))
    total = builder.emit1("reduce_sum", [builder.emit1("mul", [per_step, mask])], {"axes": axes, "keepdims": False})
    count = builder.emit1("reduce_sum", [mask], {"axes": axes, "keepdims": False})
    one = builder.emit1("constant", [], {"value": 1.0, "dtype": "f32"})
    return builder.emit1("div", [total, builder.emit1("maximum", [count, one])]), mask


def _loss_values(builder: GraphBuilder, loss: Configured, output: Value, target: Value) -> Value:
    name = loss.name
    if name in ("mse", "mae"):
        diff = builder.emit1("sub", [output, target])
        return builder.emit1("square" if name == "mse" else "abs", [diff])
    if name == "huber":
        return builder.emit1("huber", [output, target], {"delta": loss.args.get("delta", 1.0)})
    if loss.args.get("from_logits", False):
        return builder.emit1(_FROM_LOGITS[name], [output, target])
    producer = output.producer
    activation = producer.op if producer is not None else None
    fused = _FUSED.get((name, activation or ""))
    if fused is not None and (activation != "softmax" or producer.attr("axis") in (-1, output.type.rank - 1)):
        return builder.emit1(fused, [producer.inputs[0], target])
    if name == "sparse_categorical_crossentropy" and output.type.rank < 2:
        raise NndError(Diagnostic(f"sparse_categorical_crossentropy needs class scores, got {output.type}",
                                  loss.span, ("use binary_crossentropy or mse for a single output",)))
    return builder.emit1(_ON_PROBABILITIES[name], [output, target])


def _regularization(builder: GraphBuilder, graph: Graph) -> list[Value]:
    terms = []
    for name, info in graph.param_info.items():
        reg = info.regularizer
        if reg is None:
            continue
        weight = graph.params[name]
        axes = tuple(range(weight.type.rank))
        for factor, op in ((reg.l1, "abs"), (reg.l2, "square")):
            if factor:
                total = builder.emit1("reduce_sum", [builder.emit1(op, [weight])], {"axes": axes, "keepdims": False})
                scale = builder.emit1("constant", [], {"value": float(factor), "dtype": "f32"})
                terms.append(builder.emit1("mul", [total, scale]))
    return terms


def _sum(builder: GraphBuilder, terms: list[Value]) -> Value:
    total = terms[0]
    for term in terms[1:]:
        total = builder.emit1("add", [total, term])
    return total
