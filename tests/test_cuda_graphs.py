"""The CUDA-graph runner (`nnd.runtime.cuda_graphs`) on the CPU, through a simulated capture: the kernels run
in capture mode once, and each replay runs them again and writes the results into the arrays of the first
run, as a replayed graph rewrites its buffers. A replay here re-runs Python, so it re-decides what a real
graph would have fixed at capture: that kernels decide nothing from the data under capture is checked on
their helpers below, and on a device by the `gpu` tests in test_gpu.py (stream capture itself, the private
memory pool, a padded batch replayed through a graph captured on an unpadded one)."""
from __future__ import annotations

import json
import sys
import types
import warnings
from pathlib import Path

import numpy as np
import pytest

import nnd
from capture_sim import simulate
from nnd.bench import _id_range, random_array
from test_train_cli import MODEL as TINY_MODEL
from nnd.compiler.diagnostics import NndError
from nnd.runtime import cuda_graphs
from nnd.runtime.cuda_graphs import CupyCapture
from nnd.runtime.kernel_table import CaptureUnsupported, KernelContext
from nnd.runtime.kernels_recurrent import _valid_steps

EXAMPLES = sorted((Path(__file__).resolve().parent.parent / "examples").glob("*.nnd"))


def feeds_for(trainer, model, batch: int, seed: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {v.name: random_array(v.type, batch, rng, _id_range(model, v)) for v in trainer.train_graph.inputs}


@pytest.mark.parametrize("path", EXAMPLES, ids=[p.stem for p in EXAMPLES])
def test_captured_training_steps_equal_eager_ones(path):
    """Four steps (eager, capture, two replays) against four eager steps: same losses, same weights; the
    examples with dropout draw the same masks in the same order."""
    losses, params = {}, {}
    for mode in ("eager", "graphs"):
        model = nnd.load(path, seed=0, dtype="float64")
        trainer = model._get_trainer()
        graphs = simulate(trainer.train_executor) if mode == "graphs" else None
        losses[mode] = [float(trainer.step(feeds_for(trainer, model, 6, step))["loss"]) for step in range(4)]
        params[mode] = model.parameters()
        if graphs is not None:
            assert (graphs.captures, graphs.replays) == (1, 3)
    np.testing.assert_allclose(losses["graphs"], losses["eager"], rtol=1e-12)
    for name, want in params["eager"].items():
        np.testing.assert_allclose(params["graphs"][name], want, rtol=1e-10, atol=1e-12, err_msg=name)


def test_captured_inference_equals_eager_for_each_batch_shape():
    model = nnd.load(EXAMPLES[0].parent / "mnist_cnn.nnd", seed=0)
    x = np.random.default_rng(0).random((10, 28, 28, 1), dtype=np.float32)
    model.predict(x[:1])
    executor = model._predictor
    batches = [x[:4], x[4:8], x[8:]]  # shapes 4, 4 and 2
    want = [executor.run({"image": batch}, model.params)["output"].copy() for batch in batches]
    graphs = simulate(executor)
    for _ in range(3):
        for batch, expected in zip(batches, want):
            got = executor.run({"image": batch}, model.params)["output"]
            np.testing.assert_allclose(got, expected, rtol=1e-6, atol=1e-7)
    # shape 4: eager, captured at its second run, then replayed; shape 2: eager, then captured at the next
    assert graphs.captures == 2 and graphs.replays == 7


def test_an_out_of_range_id_is_caught_after_a_replay():
    source = "model m {\n input x: int32[3]\n embedding(4, 2)\n flatten()\n dense(1)\n}\n"
    model = nnd.loads(source, seed=0)
    good = np.array([[0, 1, 2], [3, 2, 1]], dtype=np.int32)
    model.predict(good)
    simulate(model._predictor)
    model.predict(good)
    model.predict(good)
    with pytest.raises(NndError, match=r"index 7 at position \(1, 2\) is out of range for an embedding of 4 rows"):
        model.predict(np.array([[0, 1, 2], [3, 2, 7]], dtype=np.int32))


def test_a_failed_capture_warns_once_and_runs_eagerly():
    model = nnd.load(EXAMPLES[0].parent / "mnist_cnn.nnd", seed=0)
    x = np.random.default_rng(0).random((3, 28, 28, 1), dtype=np.float32)
    want = model.predict(x)
    graphs = simulate(model._predictor)
    step = model._predictor.steps[0]
    kernel = step.kernel

    def reads_the_device(ctx, attrs, *args):
        if ctx.capturing:
            raise CaptureUnsupported("a kernel reads a computed scalar on the host")
        return kernel(ctx, attrs, *args)

    step.kernel = reads_the_device
    model.predict(x)
    with pytest.warns(RuntimeWarning, match="runs without CUDA graphs: its capture failed"):
        np.testing.assert_allclose(model.predict(x), want, rtol=1e-6)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        np.testing.assert_allclose(model.predict(x), want, rtol=1e-6)
    assert graphs.captures == 0 and not model._predictor.ctx.capturing


def test_new_parameter_arrays_drop_the_graphs_that_read_the_old_ones(tmp_path):
    model = nnd.load(EXAMPLES[0].parent / "mnist_cnn.nnd", seed=0)
    x = np.random.default_rng(0).random((2, 28, 28, 1), dtype=np.float32)
    model.predict(x)
    graphs = simulate(model._predictor)
    model.predict(x)
    model.predict(x)
    other = nnd.load(EXAMPLES[0].parent / "mnist_cnn.nnd", seed=5)
    model.params = {name: value.copy() for name, value in other.params.items()}  # new arrays, new addresses
    np.testing.assert_allclose(model.predict(x), other.predict(x), rtol=1e-6)
    assert graphs.graphs == {} and graphs.captures == 1
    model.predict(x)  # the second run with the new arrays captures again
    assert graphs.captures == 2


def test_graphs_stop_at_max_graphs(monkeypatch):
    monkeypatch.setattr(cuda_graphs, "MAX_GRAPHS", 2)
    model = nnd.load(EXAMPLES[0].parent / "mnist_cnn.nnd", seed=0)
    model.predict(np.zeros((1, 28, 28, 1), dtype=np.float32))
    graphs = simulate(model._predictor)
    for batch in (1, 2, 3, 4):
        for _ in range(3):
            model.predict(np.zeros((batch, 28, 28, 1), dtype=np.float32))
    assert graphs.captures == 2 and len(graphs.graphs) == 2


def test_a_wrong_input_shape_is_the_eager_error():
    model = nnd.load(EXAMPLES[0].parent / "mnist_cnn.nnd", seed=0)
    model.predict(np.zeros((1, 28, 28, 1), dtype=np.float32))
    simulate(model._predictor)
    with pytest.raises(NndError, match=r"input 'image' has shape \(2, 28, 27, 1\) but the graph expects"):
        model._predictor.run({"image": np.zeros((2, 28, 27, 1), dtype=np.float32)}, model.params)


# ------------------------------------------------------------------------------------------ kernel side

def test_under_capture_random_draws_become_buffers_drawn_later():
    ctx = KernelContext(np, np.random.default_rng(0), np.float32, capturing=True)
    buffer = ctx.host_random(lambda rng: rng.random((2, 3)), (2, 3), np.float32)
    assert buffer.shape == (2, 3) and len(ctx.draws) == 1 and ctx.draws[0][2] is buffer
    assert ctx.rng.bit_generator.state == np.random.default_rng(0).bit_generator.state  # nothing drawn yet


def test_under_capture_only_constants_are_read_on_the_host():
    ctx = KernelContext(np, np.random.default_rng(0), np.float32, capturing=True)
    constant = np.full((), 1.0, dtype=np.float32)
    ctx.host_values[id(constant)] = 1.0
    assert ctx.scalar(constant) == 1.0
    with pytest.raises(CaptureUnsupported):
        ctx.scalar(np.full((), 2.0, dtype=np.float32))
    ctx.capturing = False
    assert ctx.scalar(np.full((), 2.0, dtype=np.float32)) == 2.0


def test_under_capture_checks_wait_for_the_replay():
    ctx = KernelContext(np, np.random.default_rng(0), np.float32, capturing=True)
    ctx.check(np.asarray(True), lambda: NndError("bad"))
    assert len(ctx.checks) == 1
    ctx.capturing = False
    with pytest.raises(NndError, match="bad"):
        ctx.check(np.asarray(True), lambda: NndError("bad"))


def test_under_capture_an_all_valid_mask_still_masks():
    mask = np.ones((2, 3), dtype=np.float32)
    eager = KernelContext(np, np.random.default_rng(0), np.float32)
    assert _valid_steps(eager, mask, 2, 3, False) is None
    captured = KernelContext(np, np.random.default_rng(0), np.float32, capturing=True)
    valid = _valid_steps(captured, mask, 2, 3, False)
    assert valid.shape == (3, 2, 1) and valid.all()


def test_cuda_graphs_need_the_cupy_backend_and_are_off_on_numpy_by_default():
    with pytest.raises(NndError, match="CUDA graphs replay GPU work: they need the cupy backend, not 'numpy'"):
        nnd.load(EXAMPLES[0].parent / "mnist_cnn.nnd", cuda_graphs=True)
    assert nnd.load(EXAMPLES[0].parent / "mnist_cnn.nnd").cuda_graphs is False
    assert nnd.load(EXAMPLES[0].parent / "mnist_cnn.nnd", cuda_graphs=False).cuda_graphs is False


def test_a_profiled_executor_runs_eagerly():
    model = nnd.load(EXAMPLES[0].parent / "mnist_cnn.nnd", seed=0)
    x = np.zeros((2, 28, 28, 1), dtype=np.float32)
    model.predict(x)
    graphs = simulate(model._predictor)
    model._predictor.profile = True
    for _ in range(3):
        model.predict(x)
    assert graphs.captures == 0 and sum(model._predictor.step_seconds) > 0


# ------------------------------------------------------------------------------------------ CuPy's side

class RecordingCupy:
    """Just the CuPy API that `CupyCapture` uses, recording the calls."""

    def __init__(self):
        self.calls: list[str] = []
        self.ndarray = np.ndarray
        recorder = self

        class Stream:
            def __init__(self, non_blocking=False):
                recorder.calls.append(f"Stream(non_blocking={non_blocking})")

            def __enter__(self):
                recorder.calls.append("enter stream")
                return self

            def __exit__(self, *exc):
                recorder.calls.append("leave stream")

            def begin_capture(self):
                recorder.calls.append("begin_capture")

            def end_capture(self):
                recorder.calls.append("end_capture")
                return Graph()

        class Graph:
            def launch(self, stream=None):
                recorder.calls.append(f"launch({stream})")

        class MemoryPool:
            def __init__(self):
                self.index = len(recorder.pools)
                recorder.pools.append(self)

            def malloc(self, size):
                raise AssertionError("not called here")

        class UsingAllocator:
            def __init__(self, allocator):
                self.pool = allocator.__self__
                recorder.calls.append(f"using_allocator(pool {self.pool.index})")

            def __enter__(self):
                recorder.allocators.append(self.pool)
                return self

            def __exit__(self, *exc):
                recorder.allocators.pop()
                recorder.calls.append("allocator restored")

        self.pools: list[MemoryPool] = []
        self.allocators: list[MemoryPool] = []
        self.cuda = types.SimpleNamespace(Stream=Stream, MemoryPool=MemoryPool, using_allocator=UsingAllocator)

    def empty(self, shape, dtype):
        self.calls.append(f"empty{tuple(shape)} from pool {self.allocators[-1].index}")
        return np.empty(shape, dtype)


def test_cupy_capture_records_on_its_stream_with_a_private_pool_and_replays_on_the_current_one():
    fake = RecordingCupy()
    api = CupyCapture(fake)
    result, replay = api.capture(lambda: fake.calls.append("record") or "outputs")
    assert result == "outputs"
    assert fake.calls == ["Stream(non_blocking=True)", "using_allocator(pool 0)", "enter stream",
                          "begin_capture", "record", "end_capture", "leave stream", "allocator restored"]
    fake.calls.clear()
    replay()
    replay()
    assert fake.calls == ["launch(None)", "launch(None)"]  # None: the caller's current stream


def test_a_buffer_the_host_fills_before_replays_comes_from_a_pool_the_graphs_kernels_never_use():
    """Memory of the graph's pool may be a temporary that a kernel frees during the capture: a random draw
    uploaded there would be overwritten by that kernel on every replay, after the upload."""
    fake = RecordingCupy()
    api = CupyCapture(fake)
    _, replay = api.capture(lambda: api.uploaded_buffer((2, 3), np.float32))
    assert "empty(2, 3) from pool 1" in fake.calls
    graph_pool, uploads_pool = fake.pools
    assert replay.pool is graph_pool and replay.uploads is uploads_pool  # both live as long as the graph


def test_captured_draws_come_from_the_capture_apis_uploaded_buffers():
    model = nnd.load(EXAMPLES[0].parent / "tiny_resnet.nnd", seed=0)  # dropout before the classifier
    trainer = model._get_trainer()
    graphs = simulate(trainer.train_executor)
    handed_out = []
    original = graphs.api.uploaded_buffer
    graphs.api.uploaded_buffer = lambda shape, dtype: handed_out.append(original(shape, dtype)) or handed_out[-1]
    for step in range(2):
        trainer.step(feeds_for(trainer, model, 4, step))
    (captured,) = graphs.graphs.values()
    assert len(captured.draws) == 1 and [buffer for _, _, buffer in captured.draws] == handed_out
    assert trainer.train_executor.ctx.uploaded_buffer is None  # only while recording


def test_cupy_capture_leaves_capture_mode_when_recording_fails():
    fake = RecordingCupy()
    api = CupyCapture(fake)

    def failing():
        raise RuntimeError("cudaErrorStreamCaptureUnsupported")

    with pytest.raises(RuntimeError, match="StreamCaptureUnsupported"):
        api.capture(failing)
    assert fake.calls[-3:] == ["end_capture", "leave stream", "allocator restored"]


def test_replayed_gradients_land_in_the_optimizers_buffer():
    model = nnd.load(EXAMPLES[0].parent / "mnist_cnn.nnd", seed=0)
    trainer = model._get_trainer()
    graphs = simulate(trainer.train_executor)
    views = trainer.optimizer.grad_views()
    copies = []
    original_step = trainer.optimizer.step
    trainer.optimizer.step = lambda grads: copies.append(sum(g is not views[k] for k, g in grads.items())) \
        or original_step(grads)
    for step in range(3):
        trainer.step(feeds_for(trainer, model, 4, step))
    assert copies[0] == len(views) and copies[1:] == [0, 0]  # eager first; then the graph writes in place
    assert set(graphs.output_targets) == {"grad:" + name for name in views}


def test_running_out_of_memory_while_capturing_is_one_clear_error():
    model = nnd.load(EXAMPLES[0].parent / "mnist_cnn.nnd", seed=0)
    x = np.zeros((3, 28, 28, 1), dtype=np.float32)
    model.predict(x)
    graphs = simulate(model._predictor)
    model.predict(x)

    class OutOfMemoryError(Exception):  # how CuPy's allocator fails, recognized by name and module
        __module__ = "cupy.cuda.memory"

    def exhausted(record):
        raise OutOfMemoryError("Out of memory allocating 1,048,576 bytes (allocated so far: 79,993,765,888 bytes).")

    graphs.api.capture = exhausted
    with pytest.raises(NndError, match=r"out of GPU memory capturing a CUDA graph of '\w+' at batch size 3: Out of "
                                       r"memory allocating 1,048,576 bytes .*; try a smaller batch size, or run "
                                       r"without CUDA graphs"):
        model.predict(x)


# ------------------------------------------------------------------------------------------ end to end

def test_train_and_predict_commands_with_cuda_graphs_on_a_host_stand_in(tmp_path, monkeypatch):
    """`--backend cupy` (CUDA graphs by default) from the command line to the executors of training,
    validation and prediction (the cupy module a NumPy stand-in, the capture simulated): the same metrics
    and outputs as the run with `--no-cuda-graphs`, with every executor replaying."""
    from click.testing import CliRunner
    from host_cuda import FakeCupy

    from nnd.cli import main
    from nnd.runtime import backend as backend_module
    from nnd.runtime import kernels_cupy

    monkeypatch.chdir(tmp_path)
    monkeypatch.setitem(sys.modules, "cupy", FakeCupy(tmp_path / "kernels"))
    monkeypatch.setattr(backend_module, "_CACHE", {})
    monkeypatch.setattr(kernels_cupy, "_COMPILED", {})
    runners = []

    def simulated(executor, api):
        runners.append(simulate(executor))
        return runners[-1]

    monkeypatch.setattr(cuda_graphs, "capture_api", lambda backend: None)
    monkeypatch.setattr(cuda_graphs, "CudaGraphs", simulated)
    (tmp_path / "tiny.nnd").write_text(TINY_MODEL)
    rng = np.random.default_rng(0)
    x = rng.normal(size=(100, 4)).astype(np.float32)
    y = np.argmax(x[:, :3], axis=1)
    np.savez(tmp_path / "data.npz", x_train=x[:80], y_train=y[:80], x_test=x[80:], y_test=y[80:])
    np.save(tmp_path / "x.npy", x[:7])
    outputs = {}
    for flags in (["--no-cuda-graphs"], []):
        run = "eager" if flags else "graphs"
        result = CliRunner().invoke(main, ["train", "tiny.nnd", "--data", "data.npz", "--backend", "cupy", "-q",
                                           "--out", run, *flags])
        assert result.exit_code == 0, result.output
        result = CliRunner().invoke(main, ["predict", "tiny.nnd", "--weights", run, "--input", "x.npy",
                                           "--output", f"{run}.npy", "--backend", "cupy", *flags])
        assert result.exit_code == 0, result.output
        outputs[run] = (json.loads((tmp_path / run / "metrics.json").read_text()), np.load(f"{run}.npy"))
    assert outputs["eager"][0] == outputs["graphs"][0]
    np.testing.assert_array_equal(outputs["graphs"][1], outputs["eager"][1])
    # training (80 = 5 batches of 16), validation (one batch of 20), prediction: all captured and replayed
    assert len(runners) == 3 and all(r.captures >= 1 and r.replays >= 1 for r in runners[:2])
