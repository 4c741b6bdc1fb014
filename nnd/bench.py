"""`nnd bench FILE`: time a model's training step (or inference) and break the time down per layer and op."""
from __future__ import annotations

import statistics
import time

import numpy as np

from nnd.compiler.diagnostics import counted
from nnd.compiler.tensor_type import TensorType
from nnd.compiler.training_graph import TARGET_PREFIX


def random_array(type: TensorType, batch: int, rng: np.random.Generator, classes: int | None = None) -> np.ndarray:
    shape = tuple(batch if isinstance(d, str) else d for d in type.shape)
    if type.dtype in ("i32", "i64"):
        return rng.integers(0, classes or 2, shape)
    return rng.random(shape, dtype=np.float32)


def bench(model, batch: int, steps: int, train: bool, seed: int = 0) -> str:
    from nnd.runtime.executor import Executor

    rng = np.random.default_rng(seed)
    if train:
        trainer = model._get_trainer()
        graph = trainer.train_graph
        inputs = {}
        for value in graph.inputs:
            classes = _id_range(model, value)
            inputs[value.name] = random_array(value.type, batch, rng, classes)
        executor = Executor(graph, model.backend, model.dtype, seed=seed, profile=True)
        run = lambda: executor.run(inputs, model.params)  # noqa: E731
    else:
        from nnd.compiler.passes import PassManager
        from nnd.runtime.layout_costs import cost_model

        passes = PassManager.for_level(model.opt_level, verify=False,
                                       layout_costs=cost_model(model.backend, model.dtype))
        graph = passes.run(model.graph)
        inputs = {v.name: random_array(v.type, batch, rng, _id_range(model, v)) for v in graph.inputs}
        executor = Executor(graph, model.backend, model.dtype, seed=seed, profile=True)
        run = lambda: executor.run(inputs, model.params)  # noqa: E731
    for _ in range(2):
        run()
    executor.step_seconds = [0.0] * len(executor.steps)
    times = []
    for _ in range(steps):
        start = time.perf_counter()
        run()
        times.append(time.perf_counter() - start)
    return _report(model.name, executor, times, batch, train)


def _id_range(model, value) -> int | None:
    """Class labels stay below the output's class count; embedding ids below the table's rows."""
    if value.name.startswith(TARGET_PREFIX):
        output = model.graph.outputs.get(value.name[len(TARGET_PREFIX):])
        return int(output.type.shape[-1]) if output is not None else None
    for info in model.graph.param_info.values():
        if info.name.endswith(".embeddings"):
            return int(info.type.shape[0])
    return None


def _report(name: str, executor, times: list[float], batch: int, train: bool) -> str:
    median = statistics.median(times)
    runs = len(times)
    what = "training step" if train else "inference"
    lines = [f"{name}: {what} at batch {batch}, median {median * 1000:.2f} ms over {counted(runs, 'run')} "
             f"(min {min(times) * 1000:.2f}, max {max(times) * 1000:.2f}) = {batch / median:,.0f} samples/s"]
    if executor.backend.name == "numpy":
        from nnd.runtime import native

        status, threads = native.status(), native.thread_count()
        if status.startswith("on"):
            status += f", {threads} thread{'s' if threads != 1 else ''}"
        lines.append(f"native kernels: {status}")
    lines.append("")
    total = sum(executor.step_seconds) or 1.0
    by_layer: dict[str, float] = {}
    by_op: dict[str, float] = {}
    for step, seconds in zip(executor.steps, executor.step_seconds):
        layer = step.node.layer or "(graph)"
        by_layer[layer] = by_layer.get(layer, 0.0) + seconds
        by_op[step.node.op] = by_op.get(step.node.op, 0.0) + seconds
    for title, table in (("layer", by_layer), ("op", by_op)):
        width = max(len(title), *(len(k) for k in table))
        lines.append(f"{title:<{width}}  {'ms/run':>8}  {'share':>6}")
        for key, seconds in sorted(table.items(), key=lambda kv: -kv[1]):
            lines.append(f"{key:<{width}}  {seconds / runs * 1000:>8.3f}  {seconds / total:>6.1%}")
        lines.append("")
    return "\n".join(lines).rstrip()
