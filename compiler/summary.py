"""A Keras-like model summary: one row per layer with output shape, parameters and FLOPs."""
from __future__ import annotations

import math
import os
from dataclasses import dataclass

from nnd.compiler.ir import Graph
from nnd.compiler.tensor_type import TensorType

BYTES = {"f32": 4, "f64": 8, "i32": 4, "i64": 8, "bool": 1}


@dataclass(frozen=True)
class SummaryRow:
    name: str
    kind: str
    shape: str
    params: int
    flops: int
    source: str


@dataclass(frozen=True)
class Summary:
    model: str
    rows: tuple[SummaryRow, ...]
    total_params: int
    trainable_params: int
    flops_per_sample: int
    activation_bytes_per_sample: int

    def render(self, batch_size: int = 32) -> str:
        headers = ("Layer (type)", "Output Shape", "Param #", "FLOPs", "Source")
        cells = [(f"{r.name} ({r.kind})", r.shape, f"{r.params:,}", _si(r.flops), r.source) for r in self.rows]
        widths = [max(len(h), *(len(c[i]) for c in cells)) if cells else len(h) for i, h in enumerate(headers)]
        right = (False, False, True, True, False)

        def line(values) -> str:
            parts = [v.rjust(w) if r else v.ljust(w) for v, w, r in zip(values, widths, right)]
            return "  ".join(parts).rstrip()

        rule = "=" * len(line(headers))
        out = [f'Model: "{self.model}"', rule, line(headers), rule]
        out += [line(c) for c in cells]
        frozen = self.total_params - self.trainable_params
        activation = self.activation_bytes_per_sample * batch_size
        out += [rule,
                f"Total params: {self.total_params:,} ({_bytes(self.total_params * 4)})",
                f"Trainable params: {self.trainable_params:,}",
                f"Non-trainable params: {frozen:,}",
                f"FLOPs per sample (forward): {_si(self.flops_per_sample)}",
                f"Activation memory at batch {batch_size} (forward): {_bytes(activation)}"]
        return "\n".join(out)


def summarize(graph: Graph) -> Summary:
    rows = [SummaryRow(v.name or "", "input", _keras_shape(v.type), 0, 0, "") for v in graph.inputs]
    for record in graph.layers:
        if "." in record.name:
            continue  # a layer inside a wrapper (bidirectional.forward_lstm): counted in its wrapper's row
        inner = [r for r in graph.layers if r.name.startswith(record.name + ".")]
        params = sum(math.prod(graph.param_info[p].type.shape) for r in [record, *inner] for p in r.params)
        flops = record.flops + sum(r.flops for r in inner)
        where = f"{os.path.basename(record.span.file)}:{record.span.line}" if record.span else ""
        shapes = [_keras_shape(t) for t in (record.output.type, *record.further)]
        shape = shapes[0] if len(shapes) == 1 else "[" + ", ".join(shapes) + "]"  # as Keras lists them
        rows.append(SummaryRow(record.name, record.kind, shape, params, flops, where))
    total = sum(math.prod(p.type.shape) for p in graph.param_info.values())
    trainable = sum(math.prod(p.type.shape) for p in graph.param_info.values() if p.trainable)
    flops = sum(r.flops for r in graph.layers)
    activations = sum(_per_sample(v.type) * BYTES[v.type.dtype] for v in graph.inputs)
    # Every layer's output, those inside wrappers too (the two halves of a bidirectional layer, the layers
    # that time_distributed runs on every step).
    activations += sum(_per_sample(r.output.type) * BYTES[r.output.type.dtype] for r in graph.layers)
    return Summary(graph.name, tuple(rows), total, trainable, flops, activations)


def _per_sample(type: TensorType) -> int:
    """Elements per sample; a batch merged with the steps (N*6, inside time_distributed) counts its steps."""
    size = type.concrete_size()
    for dim in type.shape:
        if isinstance(dim, str):
            size *= math.prod(int(part) for part in dim.split("*") if part.isdigit())
    return size


def _keras_shape(type: TensorType) -> str:
    dims = ["None" if isinstance(d, str) else str(d) for d in type.shape]
    return "(" + ", ".join(dims) + ")"


def _si(value: int) -> str:
    for unit, scale in (("G", 1e9), ("M", 1e6), ("K", 1e3)):
        if value >= scale:
            return f"{value / scale:.2f} {unit}"
    return str(value)


def _bytes(value: float) -> str:
    for unit, scale in (("GB", 1 << 30), ("MB", 1 << 20), ("KB", 1 << 10)):
        if value >= scale:
            return f"{value / scale:.2f} {unit}"
    return f"{int(value)} B"


def training_recipe(spec, graph: Graph) -> str:
    """The train section as it will run, defaults included: what `nnd summary` prints after the table."""
    from nnd.compiler.output_losses import loss_for, loss_weight  # imports this module's users

    names = list(graph.outputs)
    losses = {name: _configured_text(loss_for(spec, name, graph.outputs)) for name in names}
    weights = {name: loss_weight(spec, name, names) for name in names}
    loss = next(iter(losses.values())) if len(set(losses.values())) == 1 else ", ".join(
        f"{name}: {text}" for name, text in losses.items())
    parts = [f"optimizer {_configured_text(spec.optimizer)}", f"loss {loss}"]
    if any(weight != 1.0 for weight in weights.values()):
        parts.append("loss weights " + ", ".join(f"{name}: {weight:g}" for name, weight in weights.items()))
    if spec.metrics:
        parts.append("metrics " + ", ".join(_configured_text(m) for m in spec.metrics))
    run = [f"{spec.epochs} epoch{'s' if spec.epochs != 1 else ''}", f"batch {spec.batch_size}",
           f"data {spec.data or '(none: give --data)'}"]
    if spec.validation_split:
        run.append(f"validation split {spec.validation_split:g}")
    if spec.lr_schedule is not None:
        run.append(f"schedule {_configured_text(spec.lr_schedule)}")
    if spec.callbacks:
        run.append("callbacks " + ", ".join(_configured_text(c) for c in spec.callbacks))
    if spec.augment:
        run.append("augment " + ", ".join(_configured_text(a) for a in spec.augment))
    if spec.target is not None:
        run.append(f"target {spec.target}" + (f" from {', '.join(spec.columns)}" if spec.columns else ""))
    run.append(f"seed {spec.seed}")
    return "Training: " + "; ".join(parts) + "\n          " + "; ".join(run)


def _configured_text(configured) -> str:
    args = ", ".join(f"{key}={_value_text(value)}" for key, value in configured.args.items())
    return f"{configured.name}({args})" if args else configured.name


def _value_text(value) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return f"{value:g}" if isinstance(value, float) else str(value)
