"""Gradient checking of one op: autodiff's gradients against central finite differences in float64.

`check_node_gradients(op, inputs, attrs)` builds the graph

    outputs = op[attrs](x0, x1, ...)
    loss    = sum_k reduce_sum(outputs[k] * w_k)          (w_k fixed random weights, fed as inputs)

differentiates `loss` with respect to the checked inputs, runs it in float64 and compares every gradient
element with (loss(x + eps) - loss(x - eps)) / (2 eps).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Sequence, Union

import numpy as np

from nnd.compiler.autodiff import differentiate
from nnd.compiler.builder import GraphBuilder
from nnd.compiler.ir import Graph
from nnd.compiler.tensor_type import FLOAT_DTYPES, NUMPY_DTYPES, TensorType
from nnd.runtime.executor import Executor

# An input: a shape (float64; may contain the batch symbol 'N'), a TensorType, or a concrete array.
InputSpec = Union[tuple, TensorType, np.ndarray]
# gen(rng, concrete_shape, input_index) -> array for that input
Generator = Callable[[np.random.Generator, tuple, int], np.ndarray]


@dataclass
class GradCase:
    """One gradient check of an op: its inputs, attributes and how to draw input values.

    `gen` draws every input not given as an array (default: `away_from_zero`); `wrt` lists the checked
    inputs (default: every float input); `outputs` lists the outputs entering the loss (default: every
    float output); `batch` is the value of 'N'.
    """

    inputs: Sequence[InputSpec]
    attrs: dict[str, Any] = field(default_factory=dict)
    gen: Generator | None = None
    wrt: Sequence[int] | None = None
    outputs: Sequence[int] | None = None
    batch: int = 2
    tol: float = 1e-6
    note: str = ""


def away_from_zero(rng: np.random.Generator, shape: tuple, index: int) -> np.ndarray:
    """Values in ±[0.1, 1]: clear of the kinks at 0 (relu, abs, sign) and of the finite-difference step."""
    return rng.uniform(0.1, 1.0, shape) * rng.choice([-1.0, 1.0], shape)


def positive(rng: np.random.Generator, shape: tuple, index: int) -> np.ndarray:
    return rng.uniform(0.5, 2.0, shape)


def _resolve(spec: InputSpec, batch: int) -> tuple[TensorType, tuple | None, np.ndarray | None]:
    if isinstance(spec, np.ndarray):
        dtype = {"float32": "f64", "float64": "f64", "int32": "i32", "int64": "i64", "bool": "bool"}[
            spec.dtype.name]
        return TensorType(spec.shape, dtype), spec.shape, spec
    t = spec if isinstance(spec, TensorType) else TensorType(tuple(spec), "f64")
    concrete = tuple(batch if isinstance(d, str) else d for d in t.shape)
    return t, concrete, None


def check_node_gradients(op: str, inputs: Sequence[InputSpec], attrs: dict[str, Any] | None = None, *,
                         gen: Generator | None = None, wrt: Sequence[int] | None = None,
                         outputs: Sequence[int] | None = None, batch: int = 2, seed: int = 0,
                         eps: float = 1e-6, tol: float = 1e-6) -> dict[int, float]:
    """Check the gradient of every input in `wrt`; returns the relative error per checked input and
    raises AssertionError when one is `tol` or more (or a gradient has the wrong shape)."""
    rng = np.random.default_rng(seed)
    gen = gen or away_from_zero
    graph = Graph(f"gradcheck_{op}")
    builder = GraphBuilder(graph)
    feeds: dict[str, np.ndarray] = {}
    values = []
    for i, spec in enumerate(inputs):
        t, shape, array = _resolve(spec, batch)
        value = builder.add_input(f"x{i}", t)
        values.append(value)
        if array is None:
            array = np.asarray(gen(rng, shape, i))
        feeds[f"x{i}"] = array.astype(np.float64 if t.dtype in FLOAT_DTYPES else NUMPY_DTYPES[t.dtype])
    results = builder.emit(op, values, attrs or {})
    chosen = range(len(results)) if outputs is None else outputs
    loss = None
    for k in chosen:
        out = results[k]
        if out.type.dtype not in FLOAT_DTYPES:
            continue
        w = builder.add_input(f"w{k}", TensorType(out.type.shape, "f64"))
        shape = tuple(batch if isinstance(d, str) else d for d in out.type.shape)
        feeds[f"w{k}"] = rng.uniform(0.5, 1.5, shape) * rng.choice([-1.0, 1.0], shape)
        term = builder.emit1("reduce_sum", [builder.emit1("mul", [out, w])], {"axes": None})
        loss = term if loss is None else builder.emit1("add", [loss, term])
    assert loss is not None, f"{op} has no float output to check"
    graph.outputs["loss"] = loss

    checked = [i for i, v in enumerate(values) if v.type.dtype in FLOAT_DTYPES] if wrt is None else list(wrt)
    names = [f"x{i}" for i in checked]
    grad_graph = differentiate(graph, "loss", names)
    analytic = Executor(grad_graph, dtype=np.float64).run(feeds)
    forward = Executor(graph, dtype=np.float64)

    def loss_at(name: str, array: np.ndarray) -> float:
        return float(forward.run({**feeds, name: array})["loss"])

    errors: dict[int, float] = {}
    for i, name in zip(checked, names):
        base = feeds[name]
        got = np.asarray(analytic[f"grad:{name}"])
        assert got.shape == base.shape, f"{op}: gradient of input {i} has shape {got.shape}, not {base.shape}"
        assert got.dtype == np.float64, f"{op}: gradient of input {i} is {got.dtype}, not float64"
        numeric = np.zeros_like(base)
        for index in np.ndindex(base.shape):
            plus = base.copy()
            plus[index] += eps
            minus = base.copy()
            minus[index] -= eps
            numeric[index] = (loss_at(name, plus) - loss_at(name, minus)) / (2 * eps)
        scale = max(float(np.max(np.abs(numeric), initial=0.0)), float(np.max(np.abs(got), initial=0.0)),
                    1e-3)
        errors[i] = float(np.max(np.abs(got - numeric), initial=0.0)) / scale
        assert errors[i] < tol, (f"{op}{attrs or ''}: gradient of input {i} is off by a relative "
                                 f"{errors[i]:.2e}\nautodiff:\n{got}\nfinite differences:\n{numeric}")
    return errors


def check_case(op: str, case: GradCase, seed: int = 0) -> dict[int, float]:
    return check_node_gradients(op, case.inputs, case.attrs, gen=case.gen, wrt=case.wrt,
                                outputs=case.outputs, batch=case.batch, seed=seed, tol=case.tol)
