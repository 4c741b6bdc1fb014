"""`target = <input>`: a model trained to reproduce one of its inputs (an autoencoder), checked where the
train section says so.

The output must have the input's shape, and the augmentations may only add noise: a flip, shift, crop or
rotation would move the input and not the target, teaching the model to undo the transform. Noise alone
makes a denoising autoencoder: the noisy input, the clean target.
"""
from __future__ import annotations

from nnd.compiler.diagnostics import Diagnostic
from nnd.compiler.ir import Graph, Value
from nnd.compiler.training import TrainSpec

NOISE_AUGMENTATIONS = ("gaussian_noise",)


def reproduced_input(spec: TrainSpec, input_names: list[str]) -> str | None:
    """The input a model is trained to reproduce, when its target names one."""
    return spec.target if spec.target in input_names else None


def check_reconstruction(spec: TrainSpec, graph: Graph) -> list[Diagnostic]:
    name = reproduced_input(spec, [v.name for v in graph.inputs])
    if name is None:
        return []
    source = next(v for v in graph.inputs if v.name == name)
    errors = []
    if len(graph.outputs) != 1:
        errors.append(Diagnostic(f"target = {name} trains the model to reproduce input '{name}', which needs one "
                                 f"output; model '{graph.name}' has {len(graph.outputs)}", spec.target_span,
                                 ("train several outputs from Python, with a dict of targets",)))
    else:
        output_name, output = next(iter(graph.outputs.items()))
        if output.type.shape[1:] != source.type.shape[1:]:
            errors.append(Diagnostic(
                f"target = {name} trains the model to reproduce input '{name}' {_dims(source)}, but its output "
                f"'{output_name}' has shape {_dims(output)}", spec.target_span,
                ("the layers after the bottleneck must give back the input's height, width and channels",)))
    for augmentation in spec.augment:
        if augmentation.name not in NOISE_AUGMENTATIONS:
            errors.append(Diagnostic(
                f"{augmentation.name} would transform input '{name}' and not its copy the model must reproduce",
                augmentation.span, ("only gaussian_noise fits a reproduced input: noisy in, clean out",)))
    return errors


def _dims(value: Value) -> tuple:
    return tuple(value.type.shape[1:])
