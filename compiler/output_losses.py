"""Which loss, and which weight in the total, each output of a model gets.

As in Keras, `loss` is one loss for every output, a list with one per output in output order, or (from
Python) a dict keyed by output name; `loss_weights` is a list or dict alike. The total loss is the sum
over the outputs of weight x that output's mean loss (weight 1 where none is given), plus regularization.
An output without a loss of its own gets the one a Keras user would pick for its final activation. A
model with several outputs logs each output's own loss, unweighted, as `<output>_loss`.
"""
from __future__ import annotations

from typing import Mapping, Sequence

from nnd.compiler.diagnostics import Diagnostic, counted, did_you_mean
from nnd.compiler.ir import Value
from nnd.compiler.training import Configured, TrainSpec


def default_loss(output: Value) -> Configured:
    """The loss a Keras user would pick for how the output ends: class ids for a softmax, binary labels
    for a sigmoid, mse otherwise."""
    producer = output.producer
    if producer is not None and producer.op == "softmax":
        return Configured("sparse_categorical_crossentropy")
    if producer is not None and producer.op == "sigmoid":
        return Configured("binary_crossentropy")
    return Configured("mse")


def given_loss(spec: TrainSpec, name: str, outputs: Sequence[str]) -> Configured | None:
    """The loss the train section or compile() names for output `name`, None where it names none."""
    loss = spec.loss
    if isinstance(loss, list):
        index = list(outputs).index(name)
        return loss[index] if index < len(loss) else None
    if isinstance(loss, dict):
        return loss.get(name)
    return loss


def loss_for(spec: TrainSpec, name: str, outputs: Mapping[str, Value]) -> Configured:
    """The loss output `name` (one of `outputs`) trains with: the one given for it, else its default."""
    return given_loss(spec, name, list(outputs)) or default_loss(outputs[name])


def loss_weight(spec: TrainSpec, name: str, outputs: Sequence[str]) -> float:
    """Output `name`'s factor in the total loss: 1 unless loss_weights gives another."""
    weights = spec.loss_weights
    if isinstance(weights, list):
        index = list(outputs).index(name)
        return weights[index] if index < len(weights) else 1.0
    if isinstance(weights, dict):
        return weights.get(name, 1.0)
    return 1.0


def check_output_losses(spec: TrainSpec, model: str, outputs: Sequence[str]) -> list[Diagnostic]:
    """A per-output loss or weight list whose length is not the model's number of outputs, or a dict
    naming an output the model does not have: each an error at the setting."""
    errors = []
    for key, value, span in (("loss", spec.loss, spec.loss_span), ("loss_weights", spec.loss_weights,
                                                                   spec.loss_weights_span)):
        problem = _misfit(key, value, model, list(outputs))
        if problem is not None:
            errors.append(Diagnostic(problem[0], span, problem[1]))
    return errors


def _misfit(key: str, value, model: str, outputs: list[str]) -> tuple[str, tuple[str, ...]] | None:
    listed = f"model '{model}' has {counted(len(outputs), 'output')}: {', '.join(outputs)}"
    if isinstance(value, list) and len(value) != len(outputs):
        what = (f"{len(value)} loss" + "es" * (len(value) != 1)) if key == "loss" else counted(len(value), "weight")
        return (f"{key} lists {what}, one per output, but {listed}",
                ("the list follows the order of the model's outputs",))
    if isinstance(value, dict):
        for name in value:
            if name not in outputs:
                hint = did_you_mean(str(name), outputs)
                return (f"{key} names output '{name}', which model '{model}' does not have"
                        + (f"; did you mean '{hint}'?" if hint else ""), (listed,))
    return None
