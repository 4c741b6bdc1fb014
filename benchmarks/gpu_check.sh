#!/usr/bin/env bash
# The device check of the cupy backend, for a machine with an NVIDIA GPU, cupy, numpy, click, pytest and
# torch, but no lark, no network and no install of this repository:
#
#     bash benchmarks/gpu_check.sh          (from anywhere; bring the lark wheel in .whl/)
#
# 1. makes nnd importable without installing it: lark from the wheel in .whl/ (unpacked: it is pure
#    Python), and nnd from a symlink farm mapping the package layout of pyproject.toml (nnd/ with
#    nnd/compiler, nnd/runtime, nnd/grammar) onto this checkout; every Python here runs from a scratch
#    directory, so the checkout's own nnd/ folder (which lacks the subpackages) never shadows the farm;
# 2. runs the `gpu` tests of tests/test_gpu.py and tests/test_cuda_blas.py in parts (generated fused
#    kernels against their NumPy bodies, nnd's cuBLAS products against CuPy's, two training steps of every
#    example (float32 and mixed precision), every op forward and backward, captured CUDA graphs against
#    eager runs, the LSTM and GRU examples again with the per-step kernels), each under its own time
#    limit, so that a slow part cannot starve the others;
# 3. runs `nnd train --compare-backends` (numpy against cupy, every op of one training step) on the
#    seed CNN with random images;
# 4. breaks a training step of the seed CNN (batch 128 and 512) and the seed LSTM (batch 32) down per op
#    (`nnd bench --backend cupy`);
# 5. times the seed CNN and the seed LSTM against PyTorch CUDA (benchmarks/gpu_bench.py).
#
# Logs go to $OUT when it is set (else ./gpu_check_out): env.txt, tests.log, parity.txt, profile.txt,
# bench.txt, bench.log.
# The whole run takes about two and a half minutes on an H200. Each part has a time limit, and the whole
# check a budget (GPU_CHECK_BUDGET, default 540 s): the parts' limits add up to more than a device command
# may run (600 s), so a part gets at most what the budget has left, and parts past it are skipped; the
# benchmark then still writes its table. GPU_CHECK_BENCH_ARGS overrides the benchmark's arguments.
# Without a usable cupy backend the check stops after env.txt (exit 3): no later part could run.
set -u
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
OUT=${OUT:-$ROOT/gpu_check_out}
mkdir -p "$OUT"
SCRATCH=$(mktemp -d /tmp/nnd_gpu_check.XXXXXX)
PY=${PYTHON:-python3}
START=$SECONDS
BUDGET=${GPU_CHECK_BUDGET:-540}
MIN_PART=10  # a part with less time than this left is skipped, not started

part_limit() {  # name, own limit in seconds: prints the limit to use, or nothing (and why, on stderr) to skip
    local left=$((BUDGET - (SECONDS - START)))
    if [ "$left" -lt "$MIN_PART" ]; then
        echo "== $1: skipped, the check's budget of ${BUDGET}s is spent" >&2
        return
    fi
    echo $(($2 < left ? $2 : left))
}

# ---------------------------------------------------------------------------------- importable nnd
mkdir -p "$SCRATCH/site" "$SCRATCH/farm/nnd" "$SCRATCH/run"
if ! (cd "$SCRATCH/run" && "$PY" -c "import lark" 2>/dev/null); then
    wheel=$(ls "$ROOT"/.whl/lark-*.whl 2>/dev/null | head -n 1)
    if [ -z "$wheel" ]; then
        echo "lark is not installed and no lark wheel is in $ROOT/.whl/" | tee "$OUT/env.txt"
        exit 2
    fi
    "$PY" -c "import sys, zipfile; zipfile.ZipFile(sys.argv[1]).extractall(sys.argv[2])" "$wheel" "$SCRATCH/site"
fi
for file in "$ROOT"/nnd/*.py; do
    ln -s "$file" "$SCRATCH/farm/nnd/$(basename "$file")"
done
ln -s "$ROOT/compiler" "$SCRATCH/farm/nnd/compiler"
ln -s "$ROOT/runtime" "$SCRATCH/farm/nnd/runtime"
ln -s "$ROOT/grammar" "$SCRATCH/farm/nnd/grammar"
export PYTHONPATH="$SCRATCH/farm:$SCRATCH/site${PYTHONPATH:+:$PYTHONPATH}"
export PYTHONDONTWRITEBYTECODE=1
cd "$SCRATCH/run"

{
    echo "== $(date -u +%FT%TZ) on $(hostname)"
    nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader 2>&1 || true
    "$PY" - <<'EOF'
import sys
print("python", sys.version.split()[0])
import numpy, lark
print("numpy", numpy.__version__, "| lark", lark.__version__, "from", lark.__file__)
import nnd, nnd.compiler, nnd.runtime
print("nnd from", nnd.__file__, "| compiler from", nnd.compiler.__file__)
try:
    import cupy
    print("cupy", cupy.__version__, "| available:", cupy.is_available(), "| CUDA runtime", cupy.cuda.runtime.runtimeGetVersion())
except Exception as exc:
    print("cupy:", type(exc).__name__, exc)
try:
    import torch
    print("torch", torch.__version__, "| cuda:", torch.cuda.is_available())
except Exception as exc:
    print("torch:", type(exc).__name__, exc)
from nnd.compiler.diagnostics import NndError
from nnd.runtime.backend import get_backend
try:
    get_backend("cupy")
except NndError as err:
    sys.exit(err.render())  # its one line, and exit status 1
print("cupy backend: ok")
EOF
} 2>&1 | tee "$OUT/env.txt"
if [ "${PIPESTATUS[0]}" -ne 0 ]; then
    echo "== the cupy backend is not usable here (see the error above, in $OUT/env.txt): nothing to check"
    rm -rf "$SCRATCH"
    exit 3
fi

# ---------------------------------------------------------------------------------- tests
run_tests() {  # name, time limit in seconds, pytest arguments...
    local name=$1 limit
    limit=$(part_limit "tests: $1" "$2" 2>>"$OUT/tests.log")
    shift 2
    if [ -z "$limit" ]; then
        tail -n 1 "$OUT/tests.log"
        return
    fi
    echo "== tests: $name (limit ${limit}s)" | tee -a "$OUT/tests.log"
    # SIGINT first: pytest then stops where it is and still prints its summary of what ran
    timeout -s INT -k 15 "$limit" "$PY" -m pytest -c "$ROOT/pyproject.toml" --rootdir "$ROOT" -p no:cacheprovider -q -rfE \
        --durations=5 "$@" 2>&1 | tee -a "$OUT/tests.log" | tail -n 25
    local status=${PIPESTATUS[0]}
    echo "== tests: $name exit $status after $((SECONDS - START))s"
}
TEST_FILE="$ROOT/tests/test_gpu.py"
run_tests fused 50 -m gpu "$TEST_FILE" -k "generated_kernel"
run_tests blas 40 -m gpu "$ROOT/tests/test_cuda_blas.py"
run_tests training 75 -m gpu "$TEST_FILE" -k "training_steps and not captured"
run_tests ops 90 -m gpu "$TEST_FILE" -k "every_op"
run_tests graphs 75 -m gpu "$TEST_FILE" -k "captured"
export NND_CUDA_SCAN=steps  # the per-step LSTM and GRU kernels, where the default is one launch per scan
run_tests steps 50 -m gpu "$TEST_FILE" -k "training_steps and (lstm or forecast)"
unset NND_CUDA_SCAN

# ---------------------------------------------------------------------------------- parity
limit=$(part_limit parity 40)
if [ -n "$limit" ]; then
    echo "== parity: numpy against cupy (limit ${limit}s)"
    "$PY" -c "import numpy as np; r = np.random.default_rng(0); np.savez('parity.npz', x_train=r.random((32, 28, 28, 1), dtype=np.float32), y_train=r.integers(0, 10, 32))"
    timeout -s INT -k 10 "$limit" "$PY" -c "from nnd.cli import main; main()" train "$ROOT/examples/mnist_cnn.nnd" \
        --data parity.npz --compare-backends numpy,cupy > "$OUT/parity.txt" 2>&1
    echo "== parity exit $? after $((SECONDS - START))s"
    tail -n 2 "$OUT/parity.txt"
fi

# ---------------------------------------------------------------------------------- profile
echo "== profile (limit 90s)"
for spec in "mnist_cnn 128" "mnist_cnn 512" "lstm_classifier 32"; do
    set -- $spec
    limit=$(part_limit "profile: $1 at batch $2" 30)
    [ -n "$limit" ] || continue
    timeout -s INT -k 10 "$limit" "$PY" -c "from nnd.cli import main; main()" bench "$ROOT/examples/$1.nnd" \
        --backend cupy -b "$2" --steps 10 >> "$OUT/profile.txt" 2>&1
    echo >> "$OUT/profile.txt"
done
echo "== profile done after $((SECONDS - START))s"

# ---------------------------------------------------------------------------------- benchmark
limit=$(part_limit benchmark 120)
if [ -n "$limit" ]; then
    echo "== benchmark (limit ${limit}s)"
    # shellcheck disable=SC2086
    timeout -s INT -k 10 "$limit" "$PY" "$ROOT/benchmarks/gpu_bench.py" ${GPU_CHECK_BENCH_ARGS:---rounds 2 --steps 12} \
        --out "$OUT/bench.txt" 2>"$OUT/bench.log"
    echo "== benchmark exit $? after $((SECONDS - START))s"
    tail -n 5 "$OUT/bench.log"
fi
echo "== done after $((SECONDS - START))s"
rm -rf "$SCRATCH"
