"""nnd on CuPy next to PyTorch CUDA (eager, fp32) on one GPU: the seed CNN and the seed LSTM.

    python benchmarks/gpu_bench.py [--rounds 2] [--steps 12] [--workloads cnn-train-128 ...] [--out FILE]

Both systems run in this one process on the same device, alternating round by round. Inputs live on the
GPU before timing starts (nnd runs its executors on device arrays; PyTorch gets CUDA tensors), and every
timed step ends with a device synchronization. TF32 is off on both sides (PyTorch's cuDNN allows it by
default; CuPy's cuBLAS does not use it unless CUPY_TF32=1), so both compute in plain fp32. The table
gives the median samples/s with the min-max range over all timed steps of all rounds, the ratio of nnd to
the faster PyTorch variant, and the GPU memory that system's allocator held after the workload (CuPy's
pool, PyTorch's reserved memory; each grows over the run, so read it as a running peak; the `graphs`
systems hold their captured activations in pools of their own, which this column leaves out).
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(Path(__file__).resolve().parent))

from compare import torch_model  # noqa: E402  (the PyTorch twins of the seed models)

# name -> (model file, batch, training?)
WORKLOADS = {
    "cnn-train-32": ("mnist_cnn.nnd", 32, True),
    "cnn-train-128": ("mnist_cnn.nnd", 128, True),
    "cnn-train-512": ("mnist_cnn.nnd", 512, True),
    "cnn-infer-1000": ("mnist_cnn.nnd", 1000, False),
    "lstm-train-32": ("lstm_classifier.nnd", 32, True),
    "lstm-infer-32": ("lstm_classifier.nnd", 32, False),
}
# nnd systems: "nnd cupy -O<level>" and options: steps (the per-step LSTM kernels, where the default is one
# launch per scan), graphs (each
# step replayed as one captured CUDA graph), fp16 / bf16 (mixed precision in float16 / bfloat16)
SYSTEMS = ("nnd cupy -O2", "nnd cupy -O0", "nnd cupy -O2 steps", "nnd cupy -O2 graphs", "nnd cupy -O2 steps graphs",
           "nnd cupy -O2 fp16", "nnd cupy -O2 bf16", "torch cuda", "torch cuda channels_last")
# Measured only when --systems names them: the mixed-precision runs.
OPTIONAL_SYSTEMS = ("nnd cupy -O2 fp16", "nnd cupy -O2 bf16")
PRECISIONS = {"fp16": "float16", "bf16": "bfloat16"}


def nnd_step(model_file: str, batch: int, training: bool, level: int, mixed_precision: str | None = None,
             cuda_graphs: bool = False):
    import cupy

    import nnd
    from nnd.compiler.passes import PassManager
    from nnd.runtime.executor import Executor

    model = nnd.load(ROOT / "examples" / model_file, backend="cupy", seed=0, opt_level=level,
                     mixed_precision=mixed_precision, cuda_graphs=cuda_graphs)
    rng = np.random.default_rng(0)
    value = model.graph.inputs[0]
    x = rng.random((batch, *value.type.shape[1:]), dtype=np.float32)
    sync = cupy.cuda.Device().synchronize
    if not training:
        graph = PassManager.for_level(level, verify=False).run(model.graph)
        executor = Executor(graph, "cupy", model.compute_dtype, seed=0, cuda_graphs=cuda_graphs)
        feeds = {value.name: cupy.asarray(x)}

        def infer():
            executor.run(feeds, model.params)
            sync()
        return infer
    output = next(iter(model.graph.outputs.values()))
    classes = output.type.shape[-1]
    y = rng.integers(0, 2, (batch, 1)).astype(np.float32) if classes == 1 else rng.integers(0, classes, batch)
    trainer = model._get_trainer()
    # on the device once, the weights of 1 too, as a training loop's batches would be
    feeds = {name: cupy.asarray(array) for name, array in trainer.with_sample_weights(model._feeds(x, y)).items()}

    def train():
        trainer.step(feeds)
        sync()
    return train


def torch_step(model_file: str, batch: int, training: bool, channels_last: bool):
    import torch
    from torch import nn

    torch.backends.cudnn.allow_tf32 = False
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.manual_seed(0)
    device = torch.device("cuda")
    net, shape, classes = torch_model(model_file)
    net = net.to(device)
    x = torch.rand(batch, *shape, device=device)
    if len(shape) == 3 and channels_last:
        net, x = net.to(memory_format=torch.channels_last), x.to(memory_format=torch.channels_last)
    sync = torch.cuda.synchronize
    if not training:
        def infer():
            with torch.no_grad():
                out = net(x)
                out = torch.sigmoid(out) if classes == 1 else out.softmax(dim=1)
            sync()
        return infer
    optimizer = torch.optim.Adam(net.parameters(), lr=1e-3)
    if classes == 1:
        loss_fn, y = nn.BCEWithLogitsLoss(), torch.randint(0, 2, (batch, 1), device=device).float()
    else:
        loss_fn, y = nn.CrossEntropyLoss(), torch.randint(0, classes, (batch,), device=device)

    def train():
        optimizer.zero_grad(set_to_none=True)
        loss_fn(net(x), y).backward()
        optimizer.step()
        sync()
    return train


def make_step(workload: str, system: str):
    model_file, batch, training = WORKLOADS[workload]
    if not system.startswith("nnd"):
        return torch_step(model_file, batch, training, system.endswith("channels_last"))
    words = system.split()
    level, options = int(words[2][-1]), set(words[3:])
    precision = next((PRECISIONS[o] for o in options if o in PRECISIONS), None)
    step = nnd_step(model_file, batch, training, level, mixed_precision=precision, cuda_graphs="graphs" in options)
    if "steps" not in options:
        return step

    def per_step():  # the scan mode is read when a kernel runs (or is captured)
        os.environ["NND_CUDA_SCAN"] = "steps"
        try:
            step()
        finally:
            os.environ.pop("NND_CUDA_SCAN")
    return per_step


def applicable(workload: str, system: str) -> bool:
    if "steps" in system.split():
        return workload.startswith("lstm")
    return not (system.endswith("channels_last") and not workload.startswith("cnn"))


def held_mb(system: str) -> float:
    if system.startswith("nnd"):
        import cupy
        return cupy.get_default_memory_pool().total_bytes() / 2**20
    import torch
    return torch.cuda.memory_reserved() / 2**20


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--steps", type=int, default=12)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--workloads", nargs="+", default=list(WORKLOADS), choices=list(WORKLOADS))
    parser.add_argument("--systems", nargs="+", default=[s for s in SYSTEMS if s not in OPTIONAL_SYSTEMS],
                        choices=list(SYSTEMS))
    parser.add_argument("--out", help="also write the table to this file")
    args = parser.parse_args()

    systems = list(args.systems)
    try:
        import torch
        if not torch.cuda.is_available():
            print("PyTorch sees no CUDA device: nnd's figures only")
            systems = [s for s in systems if s.startswith("nnd")]
    except ImportError:
        print("PyTorch is not installed: nnd's figures only")
        systems = [s for s in systems if s.startswith("nnd")]
    steps: dict[tuple[str, str], object] = {}
    times: dict[tuple[str, str], list[float]] = {}
    memory: dict[tuple[str, str], float] = {}
    failures: dict[tuple[str, str], str] = {}
    try:
        for round_index in range(args.rounds):
            for workload in args.workloads:
                for system in systems:
                    measure(workload, system, round_index, args, steps, times, memory, failures)
            print(f"round {round_index + 1}/{args.rounds} done", file=sys.stderr)
    except KeyboardInterrupt:  # a time limit's SIGINT: print what was measured so far
        print("interrupted: the table holds the steps timed so far", file=sys.stderr)
    text = table(times, memory, failures, args.workloads, systems)
    print(text)
    if args.out:
        Path(args.out).write_text(text + "\n")


def measure(workload: str, system: str, round_index: int, args, steps: dict, times: dict, memory: dict,
            failures: dict) -> None:
    """One round of one (workload, system): warm-up steps in the first round, then `args.steps` timed."""
    key = (workload, system)
    if not applicable(workload, system) or key in failures:
        return
    try:
        if key not in steps:
            steps[key] = make_step(workload, system)
        step = steps[key]
        for _ in range(args.warmup if round_index == 0 else 1):
            step()
        for _ in range(args.steps):
            start = time.perf_counter()
            step()
            times.setdefault(key, []).append(time.perf_counter() - start)
        memory[key] = held_mb(system)
    except Exception as exc:  # one broken workload must not hide the others
        failures[key] = f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
        print(f"{workload} / {system} failed: {failures[key]}", file=sys.stderr)


def table(times, memory, failures, workloads, systems) -> str:
    try:
        import cupy
        device = cupy.cuda.runtime.getDeviceProperties(0)["name"].decode()
    except Exception:
        device = "unknown device"
    lines = [f"GPU: {device}; fp32, TF32 off; median over timed steps",
             f"{'workload':<17}{'system':<27}{'samples/s':>12}{'min-max':>22}{'vs torch':>10}{'GPU MB':>9}"]
    for workload in workloads:
        batch = WORKLOADS[workload][1]
        torch_rates = [batch / statistics.median(times[(workload, s)]) for s in systems
                       if s.startswith("torch") and (workload, s) in times]
        best = max(torch_rates, default=None)
        for system in systems:
            key = (workload, system)
            if key in failures:
                lines.append(f"{workload:<17}{system:<27}  failed: {failures[key][:60]}")
                continue
            if key not in times:
                continue
            rates = [batch / t for t in times[key]]
            median = batch / statistics.median(times[key])
            ratio = f"{median / best:.2f}" if best and system.startswith("nnd") else ""
            spread = f"{min(rates):,.0f}-{max(rates):,.0f}"
            lines.append(f"{workload:<17}{system:<27}{median:>12,.0f}{spread:>22}{ratio:>10}"
                         f"{memory.get(key, 0.0):>9,.0f}")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
