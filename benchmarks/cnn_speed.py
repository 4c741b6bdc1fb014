"""Training and inference speed of the seed CNN (examples/mnist_cnn.nnd): nnd next to PyTorch.

    python benchmarks/cnn_speed.py [--rounds 3] [--steps 30] [--threads 2]

Each round times nnd and then PyTorch (NCHW and channels_last) on the same random batches, alternating so
that the machine's drift hits both; the table gives the median samples/s over rounds with the min-max
range and the nnd/PyTorch ratio against PyTorch's faster memory format. PyTorch is optional: without it
only nnd's figures are printed.
"""
from __future__ import annotations

import argparse
import os
import statistics
import time
from pathlib import Path
from typing import Callable

import numpy as np

ROOT = Path(__file__).resolve().parent.parent


def time_steps(step: Callable[[], None], steps: int, warmup: int = 3) -> float:
    """Seconds per step: the median over `steps` timed calls after `warmup` untimed ones."""
    for _ in range(warmup):
        step()
    times = []
    for _ in range(steps):
        start = time.perf_counter()
        step()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def nnd_steps(batch: int, infer_batch: int):
    import nnd

    model = nnd.load(ROOT / "examples" / "mnist_cnn.nnd", seed=0)
    trainer = model._get_trainer()
    rng = np.random.default_rng(0)
    x = rng.random((batch, 28, 28, 1), dtype=np.float32)
    y = rng.integers(0, 10, batch)
    feeds = model._feeds(x, y)
    x_infer = rng.random((infer_batch, 28, 28, 1), dtype=np.float32)
    return (lambda: trainer.step(feeds)), (lambda: model.predict(x_infer, batch_size=infer_batch))


def torch_steps(batch: int, infer_batch: int, channels_last: bool):
    import torch
    from torch import nn

    torch.manual_seed(0)
    net = nn.Sequential(
        nn.Conv2d(1, 32, 3), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(32, 64, 3), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(64, 64, 3), nn.ReLU(), nn.Flatten(),
        nn.Linear(576, 64), nn.ReLU(), nn.Linear(64, 10))
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    net = net.to(memory_format=fmt)
    optimizer = torch.optim.Adam(net.parameters(), lr=1e-3)
    loss_fn = nn.CrossEntropyLoss()
    x = torch.rand(batch, 1, 28, 28).to(memory_format=fmt)
    y = torch.randint(0, 10, (batch,))
    x_infer = torch.rand(infer_batch, 1, 28, 28).to(memory_format=fmt)

    def train() -> None:
        optimizer.zero_grad(set_to_none=True)
        loss_fn(net(x), y).backward()
        optimizer.step()

    def infer() -> None:
        with torch.no_grad():
            net(x_infer).softmax(dim=1)

    return train, infer


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--batches", type=int, nargs="+", default=[32, 128])
    parser.add_argument("--infer-batch", type=int, default=1000)
    parser.add_argument("--threads", type=int, default=os.cpu_count())
    args = parser.parse_args()
    try:
        import torch

        torch.set_num_threads(args.threads)
        rivals = {"torch NCHW": False, "torch channels_last": True}
    except ImportError:
        torch = None
        rivals = {}
        print("PyTorch is not installed: showing nnd's figures only (pip install torch==2.13.0 to compare)")

    results: dict[tuple[str, str], list[float]] = {}
    for _ in range(args.rounds):
        for batch in args.batches:
            contenders = {"nnd": lambda b=batch: nnd_steps(b, args.infer_batch)}
            for name, channels_last in rivals.items():
                contenders[name] = lambda b=batch, c=channels_last: torch_steps(b, args.infer_batch, c)
            for name, make in contenders.items():
                train, infer = make()
                results.setdefault((name, f"train b{batch}"), []).append(batch / time_steps(train, args.steps))
                if batch == args.batches[0]:
                    rate = args.infer_batch / time_steps(infer, max(3, args.steps // 5), warmup=1)
                    results.setdefault((name, f"infer b{args.infer_batch}"), []).append(rate)
    print_table(results, list(rivals))


def print_table(results: dict[tuple[str, str], list[float]], rivals: list[str]) -> None:
    workloads = list(dict.fromkeys(w for _, w in results))
    print(f"{'workload':<14}{'system':<22}{'samples/s (median)':>20}{'min-max':>22}{'nnd/best torch':>16}")
    for workload in workloads:
        best = max((statistics.median(results[(r, workload)]) for r in rivals if (r, workload) in results),
                   default=None)
        for (name, w), rates in results.items():
            if w != workload:
                continue
            median = statistics.median(rates)
            ratio = f"{median / best:.2f}" if name == "nnd" and best else ""
            spread = f"{min(rates):,.0f}-{max(rates):,.0f}"
            print(f"{workload:<14}{name:<22}{median:>20,.0f}{spread:>22}{ratio:>16}")


if __name__ == "__main__":
    main()
