"""nnd next to PyTorch on the CPU: the seed CNN, the seed LSTM, the row-LSTM, the small ResNet, the
convolutional autoencoder and the small MobileNet, training and inference.

    python benchmarks/compare.py [--rounds 3] [--steps 20] [--workloads cnn-train-32 ...] [--no-torch]

Every (workload, system) pair runs in a fresh process, so each one's peak memory (RSS) is its own; the
rounds alternate between the systems so that the machine's drift hits all of them alike. The table gives
the median samples/s over the rounds with the min-max range, the ratio of nnd to the best PyTorch variant,
and the peak RSS. nnd runs at -O0 and at full optimization (-O2); PyTorch in NCHW and channels_last for
the CNNs, with the same number of threads and the optimizer of the model's train section. Without
PyTorch only nnd's figures are printed.
"""
from __future__ import annotations

import argparse
import importlib.util
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

# name -> (model file, batch, training?)
WORKLOADS = {
    "cnn-train-32": ("mnist_cnn.nnd", 32, True),
    "cnn-train-128": ("mnist_cnn.nnd", 128, True),
    "cnn-infer-1000": ("mnist_cnn.nnd", 1000, False),
    "lstm-train-32": ("lstm_classifier.nnd", 32, True),
    "lstm-infer-32": ("lstm_classifier.nnd", 32, False),
    "rowlstm-train-128": ("row_lstm_fashion.nnd", 128, True),
    "resnet-train-64": ("tiny_resnet.nnd", 64, True),
    "autoencoder-train-64": ("conv_autoencoder.nnd", 64, True),
    "mobilenet-train-64": ("mobilenet_fashion.nnd", 64, True),
}
RECONSTRUCTIONS = ("conv_autoencoder.nnd",)  # trained to reproduce their input: the targets are the inputs
SYSTEMS = ("nnd -O0", "nnd -O2", "torch", "torch channels_last")


# ----------------------------------------------------------------------------------------- one measurement

def median_step_seconds(step, steps: int, warmup: int) -> float:
    for _ in range(warmup):
        step()
    times = []
    for _ in range(steps):
        start = time.perf_counter()
        step()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def nnd_step(model_file: str, batch: int, training: bool, level: int):
    import nnd  # before NumPy, so that its OpenBLAS settings apply

    import numpy as np

    model = nnd.load(ROOT / "examples" / model_file, seed=0, opt_level=level)
    rng = np.random.default_rng(0)
    value = model.graph.inputs[0]
    x = rng.random((batch, *value.type.shape[1:]), dtype=np.float32)
    if not training:
        return lambda: model.predict(x, batch_size=batch)
    output = next(iter(model.graph.outputs.values()))
    classes = output.type.shape[-1]
    y = rng.integers(0, 2, (batch, 1)).astype(np.float32) if classes == 1 else rng.integers(0, classes, batch)
    if model_file in RECONSTRUCTIONS:
        y = x
    trainer = model._get_trainer()
    feeds = model._feeds(x, y)
    return lambda: trainer.step(feeds)


def torch_model(model_file: str):
    import torch
    from torch import nn

    class LastStep(nn.Module):
        def forward(self, output):
            return output[0][:, -1] if isinstance(output, tuple) else output[:, -1]

    class Sequence(nn.Module):
        def forward(self, output):
            return output[0]

    if model_file == "mnist_cnn.nnd":
        return nn.Sequential(
            nn.Conv2d(1, 32, 3), nn.ReLU(), nn.MaxPool2d(2), nn.Conv2d(32, 64, 3), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(64, 64, 3), nn.ReLU(), nn.Flatten(), nn.Linear(576, 64), nn.ReLU(), nn.Linear(64, 10)), \
            (1, 28, 28), 10
    class Residual(nn.Module):  # relu(x + batchnorm(conv(relu(conv(x))))), as tiny_resnet's block
        def __init__(self, channels: int):
            super().__init__()
            self.body = nn.Sequential(nn.Conv2d(channels, channels, 3, padding=1), nn.ReLU(),
                                      nn.Conv2d(channels, channels, 3, padding=1), batchnorm(channels))

        def forward(self, x):
            return torch.relu(x + self.body(x))

    def batchnorm(channels: int):  # Keras' defaults: momentum 0.99 (PyTorch's 0.01), epsilon 1e-3
        return nn.BatchNorm2d(channels, eps=1e-3, momentum=0.01)

    if model_file == "tiny_resnet.nnd":
        return nn.Sequential(
            nn.Conv2d(3, 16, 3, padding=1), batchnorm(16), nn.ReLU(), *(Residual(16) for _ in range(3)),
            nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Dropout(0.2), nn.Linear(16, 10)), (3, 32, 32), 10
    if model_file == "conv_autoencoder.nnd":  # PyTorch's symmetric pads where 'same' pads after: same sizes
        return nn.Sequential(
            nn.Conv2d(1, 32, 3, stride=2, padding=1), nn.ReLU(), nn.Conv2d(32, 64, 3, stride=2, padding=1), nn.ReLU(),
            nn.ConvTranspose2d(64, 64, 3, stride=2, padding=1, output_padding=1), nn.ReLU(),
            nn.ConvTranspose2d(64, 32, 3, stride=2, padding=1, output_padding=1), nn.ReLU(),
            nn.Conv2d(32, 1, 3, padding=1)), (1, 28, 28), 1
    if model_file == "mobilenet_fashion.nnd":  # depthwise-separable blocks, biasless convolutions, relu6
        def unit(cin: int, cout: int, kernel: int, stride: int, groups: int) -> list[nn.Module]:
            return [nn.Conv2d(cin, cout, kernel, stride=stride, padding=kernel // 2, groups=groups, bias=False),
                    nn.BatchNorm2d(cout, eps=1e-3, momentum=0.1), nn.ReLU6()]

        def separable(cin: int, cout: int, stride: int) -> list[nn.Module]:
            return unit(cin, cin, 3, stride, cin) + unit(cin, cout, 1, 1, 1)
        return nn.Sequential(*unit(1, 16, 3, 2, 1), *separable(16, 32, 1), *separable(32, 64, 2),
                             *separable(64, 64, 1), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(64, 10)), \
            (1, 28, 28), 10
    if model_file == "lstm_classifier.nnd":
        return nn.Sequential(nn.LSTM(64, 64, batch_first=True), Sequence(), nn.LSTM(64, 64, batch_first=True),
                             LastStep(), nn.Linear(64, 1)), (100, 64), 1
    return nn.Sequential(nn.LSTM(28, 128, batch_first=True), LastStep(), nn.Linear(128, 10)), (28, 28), 10


def torch_step(model_file: str, batch: int, training: bool, channels_last: bool):
    import torch
    from torch import nn

    torch.manual_seed(0)
    net, shape, classes = torch_model(model_file)
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    x = torch.rand(batch, *shape)
    if len(shape) == 3:
        net, x = net.to(memory_format=fmt), x.to(memory_format=fmt)
    if not training:
        def infer():
            with torch.no_grad():
                out = net(x)
                return torch.sigmoid(out) if classes == 1 else out.softmax(dim=1)
        return infer
    if model_file == "tiny_resnet.nnd":  # the optimizer of its train section
        optimizer = torch.optim.SGD(net.parameters(), lr=0.05, momentum=0.9, nesterov=True)
    else:
        optimizer = torch.optim.Adam(net.parameters(), lr=1e-3)
    if model_file in RECONSTRUCTIONS:  # the sigmoid output's binary crossentropy against the input itself
        loss_fn, y = nn.BCEWithLogitsLoss(), x
    elif classes == 1:
        loss_fn, y = nn.BCEWithLogitsLoss(), torch.randint(0, 2, (batch, 1)).float()
    else:
        loss_fn, y = nn.CrossEntropyLoss(), torch.randint(0, classes, (batch,))

    def train():
        optimizer.zero_grad(set_to_none=True)
        loss_fn(net(x), y).backward()
        optimizer.step()
    return train


def measure(workload: str, system: str, steps: int, threads: int) -> dict:
    """Runs inside the child process: samples/s and peak RSS of one system on one workload."""
    model_file, batch, training = WORKLOADS[workload]
    if system.startswith("nnd"):
        step = nnd_step(model_file, batch, training, int(system[-1]))
    else:
        import torch

        torch.set_num_threads(threads)
        step = torch_step(model_file, batch, training, system.endswith("channels_last"))
    seconds = median_step_seconds(step, steps, warmup=3)
    return {"rate": batch / seconds, "rss_mb": peak_rss_mb()}


def peak_rss_mb() -> float:
    """This process's peak resident memory. Linux's VmHWM belongs to the process image, while ru_maxrss
    also carries over the parent's size at fork across the exec, which would put a floor under every
    child's figure."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


# ----------------------------------------------------------------------------------------- the driver

def run_child(workload: str, system: str, steps: int, threads: int) -> dict | None:
    command = [sys.executable, __file__, "--child", workload, system, str(steps), str(threads)]
    environment = dict(os.environ, OPENBLAS_NUM_THREADS=str(threads), NND_NUM_THREADS=str(threads))
    result = subprocess.run(command, capture_output=True, text=True, cwd=ROOT, env=environment)
    if result.returncode != 0:
        print(f"  {workload} / {system} failed: {result.stderr.strip().splitlines()[-1:]}", file=sys.stderr)
        return None
    return json.loads(result.stdout.strip().splitlines()[-1])


def applicable(workload: str, system: str) -> bool:
    return not (system == "torch channels_last"
                and not workload.startswith(("cnn", "resnet", "autoencoder", "mobilenet")))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--threads", type=int, default=os.cpu_count())
    parser.add_argument("--workloads", nargs="+", default=list(WORKLOADS), choices=list(WORKLOADS))
    parser.add_argument("--no-torch", action="store_true", help="Measure nnd alone.")
    parser.add_argument("--child", nargs=4, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        workload, system, steps, threads = args.child
        print(json.dumps(measure(workload, system, int(steps), int(threads))))
        return
    systems = [s for s in SYSTEMS if s.startswith("nnd") or not args.no_torch]
    if not args.no_torch:
        if importlib.util.find_spec("torch") is None:  # not imported here: the children measure it
            print("PyTorch is not installed: nnd's figures only (pip install torch==2.13.0 to compare)")
            systems = [s for s in systems if s.startswith("nnd")]
    results: dict[tuple[str, str], list[dict]] = {}
    for round_index in range(args.rounds):
        for workload in args.workloads:
            for system in systems:
                if applicable(workload, system):
                    outcome = run_child(workload, system, args.steps, args.threads)
                    if outcome is not None:
                        results.setdefault((workload, system), []).append(outcome)
        print(f"round {round_index + 1}/{args.rounds} done", file=sys.stderr)
    print_table(results, args.workloads, systems)


def print_table(results: dict[tuple[str, str], list[dict]], workloads: list[str], systems: list[str]) -> None:
    width = max(len(w) for w in [*workloads, "workload"]) + 2
    print(f"{'workload':<{width}}{'system':<21}{'samples/s':>11}{'min-max':>17}{'vs torch':>10}{'peak RSS':>11}")
    for workload in workloads:
        torch_rates = [statistics.median(r["rate"] for r in results[(workload, s)]) for s in systems
                       if s.startswith("torch") and (workload, s) in results]
        best = max(torch_rates, default=None)
        for system in systems:
            runs = results.get((workload, system))
            if not runs:
                continue
            rates = [r["rate"] for r in runs]
            median = statistics.median(rates)
            ratio = f"{median / best:.2f}" if best and system.startswith("nnd") else ""
            rss = max(r["rss_mb"] for r in runs)
            print(f"{workload:<{width}}{system:<21}{median:>11,.0f}{f'{min(rates):,.0f}-{max(rates):,.0f}':>17}"
                  f"{ratio:>10}{rss:>9,.0f} MB")


if __name__ == "__main__":
    main()
