"""Native CPU kernels: the C LSTM and GRU scans against the NumPy paths they replace (forward, backward,
every option, odd sizes, several threads), max pooling, direct convolution (also over random geometry),
batchnorm, whole training steps of the CNN examples, and the loader's build, cache and fallbacks.
Finite-difference and PyTorch checks of the LSTM and GRU in float64 (gradcheck_cases.py,
test_recurrent_kernels.py, test_sequence_layers.py) run through the native path too, since it is the
NumPy backend's default whenever a C compiler is present."""
from __future__ import annotations

import os
import shutil
import signal
import time

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from nnd.compiler.diagnostics import NndError
from nnd.runtime import native
from nnd.runtime.kernel_table import KernelContext, kernels_for

KERNELS = kernels_for("numpy")
HAS_COMPILER = shutil.which(os.environ.get("CC") or "cc") is not None
needs_compiler = pytest.mark.skipif(not HAS_COMPILER, reason="no C compiler on this machine")


@pytest.fixture
def fresh_loader(monkeypatch, tmp_path):
    """A loader that has not tried to build yet, caching under tmp_path; restored afterwards."""
    monkeypatch.setattr(native, "_library", None)
    monkeypatch.setattr(native, "_status", None)
    monkeypatch.setenv("NND_CACHE_DIR", str(tmp_path))
    monkeypatch.delenv("NND_NATIVE", raising=False)
    return tmp_path


def lstm_inputs(n, t, u, dtype, seed, recurrent_dropout=False):
    r = np.random.default_rng(seed)
    rmask = (r.random((n, u)) > 0.3) / 0.7 if recurrent_dropout else np.array(1.0)
    arrays = (r.normal(size=(n, t, 4 * u)), r.normal(scale=0.5, size=(n, u)), r.normal(scale=0.5, size=(n, u)),
              r.normal(scale=0.5, size=(u, 4 * u)), np.array(1.0), rmask)
    return [np.asarray(a, dtype=dtype) for a in arrays]


def run_both_paths(n, t, u, dtype, attrs, recurrent_dropout=False, d_out_kind="full"):
    """(native, numpy) results: the forward outputs then the gradients, with the same incoming gradients."""
    ctx = KernelContext(np, np.random.default_rng(0), dtype)
    attrs = {"units": u, **attrs}
    inputs = lstm_inputs(n, t, u, dtype, seed=n * 100 + t, recurrent_dropout=recurrent_dropout)
    r = np.random.default_rng(1)
    out_shape = (n, t, u) if attrs.get("return_sequences") else (n, u)
    d_out = {"full": lambda: r.normal(size=out_shape), "scalar": lambda: np.array(0.0),
             "broadcast": lambda: np.broadcast_to(r.normal(size=u), out_shape)}[d_out_kind]()
    d_h, d_c = r.normal(size=(n, u)), r.normal(size=(n, u))
    results = []
    for enabled in (True, False):
        native.set_enabled(enabled)
        try:
            forward = KERNELS["lstm_scan"](ctx, attrs, *inputs)
            _, _, _, hs, cs, gates = forward
            h0, c0, kernel, mask, rmask = inputs[1:]
            grads = KERNELS["lstm_scan_grad"](ctx, attrs, h0, c0, kernel, mask, rmask, hs, cs, gates,
                                              np.asarray(d_out, dtype), d_h.astype(dtype), d_c.astype(dtype))
        finally:
            native.set_enabled(None)
        results.append([*forward, *grads])
    return results


CASES = [
    ({}, False), ({"return_sequences": True}, False), ({"go_backwards": True}, False),
    ({"return_sequences": True, "go_backwards": True}, True), ({}, True),
]


@needs_compiler
@pytest.mark.parametrize("attrs, recurrent_dropout", CASES)
@pytest.mark.parametrize("n, t, u", [(32, 7, 16), (5, 4, 3), (9, 3, 20)])
def test_native_lstm_equals_numpy_float64(n, t, u, attrs, recurrent_dropout):
    assert native.library() is not None
    got, expected = run_both_paths(n, t, u, np.float64, attrs, recurrent_dropout)
    for g, e in zip(got, expected):
        assert g.dtype == np.float64 and g.shape == e.shape
        np.testing.assert_allclose(g, e, rtol=1e-11, atol=1e-13)


@needs_compiler
@pytest.mark.parametrize("attrs, recurrent_dropout", CASES)
def test_native_lstm_equals_numpy_float32(attrs, recurrent_dropout):
    got, expected = run_both_paths(16, 12, 8, np.float32, attrs, recurrent_dropout)
    for g, e in zip(got, expected):
        assert g.dtype == np.float32
        np.testing.assert_allclose(g, e, rtol=1e-4, atol=2e-5)


def run_gru_both_paths(n, t, u, dtype, attrs, recurrent_dropout=False):
    """(native, numpy) results of a reset_after GRU: forward outputs, then the gradients."""
    ctx = KernelContext(np, np.random.default_rng(0), dtype)
    attrs = {"units": u, **attrs}
    r = np.random.default_rng(n * 10 + t)
    rmask = (r.random((n, u)) > 0.3) / 0.7 if recurrent_dropout else np.array(1.0)
    xproj, h0 = r.normal(size=(n, t, 3 * u)), r.normal(scale=0.5, size=(n, u))
    kernel, bias = np.asfortranarray(r.normal(scale=0.5, size=(u, 3 * u))), r.normal(size=3 * u)
    inputs = [np.asarray(a, dtype=dtype) for a in (xproj, h0, kernel, bias, np.array(1.0), rmask)]
    d_out = r.normal(size=(n, t, u) if attrs.get("return_sequences") else (n, u)).astype(dtype)
    d_h = r.normal(size=(n, u)).astype(dtype)
    results = []
    for enabled in (True, False):
        native.set_enabled(enabled)
        try:
            forward = KERNELS["gru_scan"](ctx, attrs, *inputs)
            _, _, hs, gates, aux = forward
            grads = KERNELS["gru_scan_grad"](ctx, attrs, inputs[1], inputs[2], inputs[4], inputs[5], hs, gates, aux,
                                             d_out, d_h)
        finally:
            native.set_enabled(None)
        results.append([*forward, *grads])
    return results


@needs_compiler
@pytest.mark.parametrize("attrs, recurrent_dropout", CASES)
@pytest.mark.parametrize("n, t, u", [(32, 7, 16), (5, 4, 3), (9, 3, 20)])
def test_native_gru_equals_numpy_float64(n, t, u, attrs, recurrent_dropout):
    got, expected = run_gru_both_paths(n, t, u, np.float64, attrs, recurrent_dropout)
    for g, e in zip(got, expected):
        assert g.dtype == np.float64 and g.shape == e.shape
        np.testing.assert_allclose(g, e, rtol=1e-11, atol=1e-13)


@needs_compiler
@pytest.mark.parametrize("attrs, recurrent_dropout", CASES)
def test_native_gru_equals_numpy_float32(attrs, recurrent_dropout):
    got, expected = run_gru_both_paths(16, 12, 8, np.float32, attrs, recurrent_dropout)
    for g, e in zip(got, expected):
        assert g.dtype == np.float32
        np.testing.assert_allclose(g, e, rtol=1e-4, atol=2e-5)


@needs_compiler
@pytest.mark.parametrize("d_out_kind", ["scalar", "broadcast"])
def test_native_lstm_takes_any_incoming_gradient_layout(d_out_kind):
    attrs = {"return_sequences": d_out_kind == "broadcast"}
    got, expected = run_both_paths(6, 5, 4, np.float64, attrs, d_out_kind=d_out_kind)
    for g, e in zip(got, expected):
        np.testing.assert_allclose(g, e, rtol=1e-11, atol=1e-13)


@needs_compiler
@pytest.mark.parametrize("threads", ["1", "2", "3", "8"])
def test_native_lstm_is_the_same_on_any_thread_count(monkeypatch, threads):
    """Rows are independent, so splitting the batch changes nothing, bit for bit."""
    monkeypatch.setenv("NND_NUM_THREADS", "1")
    single = run_both_paths(21, 6, 8, np.float32, {"return_sequences": True})[0]
    monkeypatch.setenv("NND_NUM_THREADS", threads)
    split = run_both_paths(21, 6, 8, np.float32, {"return_sequences": True})[0]
    for a, b in zip(single, split):
        np.testing.assert_array_equal(a, b)


@needs_compiler
def test_float32_exp_is_accurate_across_its_range():
    """tanh and the sigmoid come from the C float32 exp: compare the gates of one step against float64
    math over pre-activations from -90 to 90."""
    u = 256
    z = np.linspace(-90, 90, 4 * u).reshape(1, 1, 4 * u)
    zero = np.zeros((1, u))
    ctx = KernelContext(np, np.random.default_rng(0), np.float32)
    native.set_enabled(True)
    try:
        gates = KERNELS["lstm_scan"](ctx, {"units": u}, z.astype(np.float32), zero.astype(np.float32),
                                     zero.astype(np.float32), np.zeros((u, 4 * u), np.float32),
                                     np.array(1.0), np.array(1.0))[5][0, 0]
    finally:
        native.set_enabled(None)
    sigmoid = 1 / (1 + np.exp(-z[0, 0]))
    expected = np.concatenate([sigmoid[:2 * u], np.tanh(z[0, 0, 2 * u:3 * u]), sigmoid[3 * u:]])
    np.testing.assert_allclose(gates, expected, rtol=3e-7, atol=3e-7)


POOLS = [
    ({"pool": (2, 2)}, (5, 26, 26, 32)),                                  # windows tile the input
    ({"pool": (2, 2)}, (3, 11, 11, 70)),                                  # a last row and column left out
    ({"pool": (3, 3), "strides": (2, 2), "padding": ((1, 1), (1, 1))}, (2, 9, 8, 3)),   # overlap, padding
    ({"pool": (2, 3), "strides": (3, 1)}, (3, 10, 9, 5)),                 # gaps down, overlap across
    ({"pool": (2, 2), "padding": ((0, 2), (2, 0))}, (2, 4, 4, 3)),        # windows of padding only
]


@needs_compiler
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("attrs, shape", POOLS)
def test_native_max_pooling_equals_numpy(attrs, shape, dtype):
    from nnd.runtime import kernels_conv

    r = np.random.default_rng(len(shape) + shape[-1])
    x = np.maximum(r.normal(size=shape), 0).astype(dtype)  # a relu output: ties at 0 in many windows
    x[:, ::3, ::2, 0] = 1.5                                 # and ties at the maximum
    ctx = KernelContext(np, np.random.default_rng(0), dtype)
    native.set_enabled(True)
    y = KERNELS["maxpool2d"](ctx, attrs, x)
    np.testing.assert_array_equal(y, kernels_conv.maxpool2d(ctx, attrs, x))
    dy = r.normal(size=y.shape).astype(dtype)
    for relu in (False, True):
        grad_attrs = dict(attrs, relu=relu)
        got = KERNELS["maxpool2d_grad"](ctx, grad_attrs, dy, x)
        expected = kernels_conv.maxpool2d_grad(ctx, grad_attrs, dy, x)
        assert got.dtype == dtype
        # overlapping windows add their shares in another order
        np.testing.assert_allclose(got, expected, rtol=1e-6, atol=1e-6 if dtype == np.float32 else 1e-14)
    native.set_enabled(None)


# Stride 1 has a direct input gradient, larger strides col2im; the last but two pads beyond the window.
CONVOLUTIONS = [
    ({}, (5, 13, 13, 32, 64)),
    ({"padding": ((1, 1), (1, 1))}, (4, 10, 11, 16, 16)),
    ({"padding": ((2, 1), (0, 2)), "dilation": (2, 2)}, (2, 9, 9, 5, 7)),
    ({"padding": ((3, 3), (0, 0))}, (2, 6, 7, 1, 20)),
    ({"strides": (2, 1), "padding": ((1, 2), (0, 1)), "dilation": (1, 2)}, (3, 9, 9, 5, 4)),
    ({"strides": (3, 3), "padding": ((2, 2), (2, 2))}, (2, 7, 8, 3, 6)),
    ({"padding": ((1, 1), (1, 1))}, (2, 3, 100, 3, 5)),  # rows wider than a block of the filter gradient
]


@needs_compiler
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("attrs, sizes", CONVOLUTIONS)
def test_native_convolution_and_its_gradients_equal_numpy(attrs, sizes, dtype):
    """The direct kernels and the kernel table's choices (direct or im2col, col2im) against NumPy's."""
    from nnd.runtime import kernels_conv, kernels_fused
    from nnd.runtime import kernels_native_conv as direct

    n, h, w_, c, f = sizes
    r = np.random.default_rng(c)
    x, w = r.normal(size=(n, h, w_, c)).astype(dtype), r.normal(size=(3, 3, c, f)).astype(dtype)
    bias = r.normal(size=f).astype(dtype)
    ctx = KernelContext(np, np.random.default_rng(0), dtype)
    # sums of up to 9 * 64 products of unit normals, added in another order: float32 rounding near 1e-5
    tolerance = {"rtol": 1e-5, "atol": 1e-4} if dtype == np.float32 else {"rtol": 1e-12, "atol": 1e-12}
    native.set_enabled(True)
    assert direct.uses_direct_kernels(attrs, x, w)
    expected = kernels_conv.conv2d(ctx, attrs, x, w)
    for got in (KERNELS["conv2d"](ctx, attrs, x, w), direct.direct_forward(attrs, x, w, None, "linear")):
        np.testing.assert_allclose(got, expected, **tolerance)
    for activation in ("linear", "relu", "sigmoid", "tanh"):
        fused = dict(attrs, activation=activation)
        expected = kernels_fused.conv2d_epilogue(ctx, fused, x, w, bias)
        for got in (KERNELS["conv2d_epilogue"](ctx, fused, x, w, bias),
                    direct.direct_forward(attrs, x, w, bias, activation)):
            np.testing.assert_allclose(got, expected, **tolerance)
        a = x.reshape(-1, c)
        got = KERNELS["matmul_epilogue"](ctx, {"activation": activation}, a, w[0, 0], bias)
        expected = kernels_fused.matmul_epilogue(ctx, {"activation": activation}, a, w[0, 0], bias)
        np.testing.assert_allclose(got, expected, **tolerance)
    dy = r.normal(size=kernels_conv.conv2d(ctx, attrs, x, w).shape).astype(dtype)
    grad_attrs = dict(attrs, input_hw=(h, w_))
    expected = kernels_conv.conv2d_grad_input(ctx, grad_attrs, dy, w)
    results = [KERNELS["conv2d_grad_input"](ctx, grad_attrs, dy, w)]
    if attrs.get("strides", (1, 1)) == (1, 1):  # the input gradient is a convolution
        results.append(direct.direct_input_gradient(grad_attrs, dy, w))
    for got in results:
        assert got.shape == x.shape and got.dtype == dtype
        np.testing.assert_allclose(got, expected, **tolerance)
    filter_attrs = dict(attrs, kernel_hw=(3, 3))
    expected = kernels_conv.conv2d_grad_filter(ctx, filter_attrs, x, dy)
    for got in (KERNELS["conv2d_grad_filter"](ctx, filter_attrs, x, dy),
                direct.direct_filter_gradient(filter_attrs, x, dy)):
        assert got.shape == w.shape and got.dtype == dtype
        np.testing.assert_allclose(got, expected, rtol=tolerance["rtol"], atol=tolerance["atol"] * 10)
    native.set_enabled(None)


@needs_compiler
def test_the_direct_kernels_take_large_convolutions_and_leave_small_ones_to_blas():
    from nnd.runtime import kernels_native_conv as direct

    same = {"padding": ((1, 1), (1, 1))}
    x, w = np.zeros((64, 32, 32, 16), np.float32), np.zeros((3, 3, 16, 16), np.float32)
    dy = np.zeros((64, 32, 32, 16), np.float32)
    assert direct.direct_pays(same, x, (32, 32), w)
    assert direct.direct_input_gradient_pays(dict(same, input_hw=(32, 32)), dy, w)
    assert not direct.direct_pays(same, x[:1, :5, :5], (5, 5), w)  # 25 output pixels
    assert not direct.direct_pays(same, x[..., :1], (32, 32), w[:, :, :1])  # one input channel
    valid = {"input_hw": (13, 13)}  # windows reach 1.4 times the output's cells: col2im
    assert not direct.direct_input_gradient_pays(valid, dy[:, :11, :11], w)
    assert not direct.direct_input_gradient_pays(dict(same, strides=(2, 2), input_hw=(32, 32)), dy[:, :16, :16], w)
    for filters, direct_wins in ((256, True), (512, False)):  # with many filters BLAS's blocking wins
        dy_wide, w_wide = np.zeros((8, 32, 32, filters), np.float32), np.zeros((3, 3, 16, filters), np.float32)
        assert direct.direct_input_gradient_pays(dict(same, input_hw=(32, 32)), dy_wide, w_wide) == direct_wins


@needs_compiler
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("name, options", [("adamw", {}), ("sgd", {"momentum": 0.9}),
                                           ("sgd", {"momentum": 0.8, "nesterov": True}), ("rmsprop", {}),
                                           ("rmsprop", {"momentum": 0.5})])
def test_native_optimizer_updates_equal_numpy(dtype, name, options):
    from nnd.runtime.optimizers import make_optimizer

    r = np.random.default_rng(0)
    params = {"w": r.normal(size=(300, 70)).astype(dtype), "b": r.normal(size=5).astype(dtype)}
    grads = [{k: r.normal(size=v.shape).astype(dtype) for k, v in params.items()} for _ in range(4)]
    results = []
    for enabled in (True, False):
        native.set_enabled(enabled)
        try:
            optimizer = make_optimizer(name, lr=0.01, **options)
            bound = optimizer.bind({k: v.copy() for k, v in params.items()})
            for step in grads:
                optimizer.step(step)
            results.append({k: np.array(v) for k, v in bound.items()})
        finally:
            native.set_enabled(None)
    tolerance = 1e-6 if dtype == np.float32 else 1e-14
    for name in params:
        np.testing.assert_allclose(results[0][name], results[1][name], rtol=tolerance, atol=tolerance)
        assert not np.allclose(results[0][name], params[name])


def test_row_chunks_cover_the_batch_on_tile_boundaries():
    assert native.row_chunks(32, 2) == [(0, 16), (16, 32)]
    assert native.row_chunks(5, 4) == [(0, 4), (4, 5)]
    assert native.row_chunks(3, 8) == [(0, 3)]
    assert native.row_chunks(3, 8, align=1) == [(0, 1), (1, 2), (2, 3)]
    for rows in range(1, 40):
        for threads in range(1, 6):
            chunks = native.row_chunks(rows, threads)
            assert chunks[0][0] == 0 and chunks[-1][1] == rows and len(chunks) <= threads
            assert all(a[1] == b[0] for a, b in zip(chunks, chunks[1:]))
            assert all(begin % 4 == 0 and begin < end for begin, end in chunks)


def test_thread_count_setting(monkeypatch):
    monkeypatch.setenv("NND_NUM_THREADS", "3")
    assert native.thread_count() == 3
    monkeypatch.setenv("NND_NUM_THREADS", "many")
    for value in ("many", "0", "-1"):
        monkeypatch.setenv("NND_NUM_THREADS", value)
        with pytest.raises(NndError, match=f"NND_NUM_THREADS must be a whole number of at least 1, not '{value}'"):
            native.thread_count()


def test_an_unknown_native_setting_is_refused_not_read_as_auto(fresh_loader, monkeypatch):
    monkeypatch.setenv("NND_NATIVE", "off")
    with pytest.raises(NndError, match="NND_NATIVE must be 0 \\(off\\), 1 \\(required\\) or unset"):
        native.library()


# ---------------------------------------------------------------------------------------------------
# The loader


@needs_compiler
def test_builds_once_into_the_cache_and_reloads(fresh_loader):
    assert native.library() is not None
    assert native.status().startswith("on (")
    built = list(fresh_loader.glob("nnd_native_*.so"))
    assert len(built) == 1 and not list(fresh_loader.glob(".build-*"))
    stamp = built[0].stat().st_mtime_ns
    native._library, native._status = None, None
    assert native.library() is not None
    assert built[0].stat().st_mtime_ns == stamp


@needs_compiler
def test_a_cached_library_cut_short_is_rebuilt_not_loaded(fresh_loader):
    """Mapping a truncated shared library kills the process with SIGBUS: the loader checks a library
    against the digest sealed beside it at build time before loading it."""
    assert native.library() is not None
    (built,) = fresh_loader.glob("nnd_native_*.so")
    assert native._intact(built)
    truncated = fresh_loader / "truncated"
    truncated.write_bytes(built.read_bytes()[:100_000])
    os.replace(truncated, built)  # a new file: the one this process has mapped stays whole
    assert not native._intact(built)
    native._library, native._status = None, None
    assert native.library() is not None and native._intact(built)
    assert native.status().startswith("on (")


def test_missing_compiler_falls_back_to_numpy(fresh_loader, monkeypatch):
    monkeypatch.setenv("CC", "nnd-no-such-compiler")
    assert native.library() is None
    assert native.status() == "off: no C compiler ('nnd-no-such-compiler' not found; set CC)"
    # the scan still runs, on the NumPy path
    ctx = KernelContext(np, np.random.default_rng(0), np.float64)
    outputs = KERNELS["lstm_scan"](ctx, {"units": 3}, *lstm_inputs(2, 4, 3, np.float64, seed=0))
    assert outputs[0].shape == (2, 3) and np.all(np.isfinite(outputs[0]))


def test_failing_compiler_is_reported(fresh_loader, monkeypatch):
    monkeypatch.setenv("CC", shutil.which("false") or "false")
    assert native.library() is None
    assert native.status().startswith("off: the C compiler failed")
    assert not list(fresh_loader.glob("*.so")) and not list(fresh_loader.glob(".build-*"))


@needs_compiler
def test_compiler_given_as_a_command_line(fresh_loader, monkeypatch):
    """CC may carry a wrapper and words of its own, as make reads it (`ccache gcc`); `env` stands in for
    the wrapper since it runs the rest of its line."""
    compiler = os.environ.get("CC") or "cc"
    monkeypatch.setenv("CC", f"env {compiler} -O2")
    assert native.library() is not None
    assert native.status() == f"on (env {compiler} -O2)"


def test_unparsable_compiler_command_is_reported(fresh_loader, monkeypatch):
    monkeypatch.setenv("CC", "gcc 'unclosed")
    assert native.library() is None
    assert native.status().startswith("off: CC=\"gcc 'unclosed\" is not a command line: ")


def test_required_native_kernels_fail_clearly(fresh_loader, monkeypatch):
    monkeypatch.setenv("CC", "nnd-no-such-compiler")
    monkeypatch.setenv("NND_NATIVE", "1")
    with pytest.raises(NndError, match="native kernels required by NND_NATIVE=1 are unavailable: no C compiler"):
        native.library()


def test_disabled_by_environment(fresh_loader, monkeypatch):
    monkeypatch.setenv("NND_NATIVE", "0")
    assert native.library() is None
    assert native.status() == "off: disabled (NND_NATIVE=0)"
    assert not list(fresh_loader.glob("*.so"))


@needs_compiler
@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork")
def test_a_forked_child_runs_the_threaded_kernels(monkeypatch):
    """Threads do not survive fork: a child must start its own pool rather than wait on the parent's."""
    monkeypatch.setenv("NND_NUM_THREADS", "2")
    expected = run_both_paths(8, 3, 4, np.float32, {})[0][0]  # the parent's pool now exists
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: run the same scan, report whether it matches
        try:
            got = run_both_paths(8, 3, 4, np.float32, {})[0][0]
            os.write(write, b"1" if np.array_equal(got, expected) else b"0")
        finally:
            os._exit(0)
    os.close(write)
    deadline = time.monotonic() + 60
    while os.waitpid(pid, os.WNOHANG) == (0, 0):  # a child stuck on the parent's dead threads never ends
        if time.monotonic() > deadline:
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
            pytest.fail("the forked child hung in the native kernels")
        time.sleep(0.05)
    assert os.read(read, 1) == b"1"


@needs_compiler
def test_native_batchnorm_statistics_survive_a_far_mean_and_an_outlying_first_row():
    """The one-pass moments are taken around the first row; an outlier there and a mean of 10,000 at a
    standard deviation of 1 leave the float32 batch statistics as exact as float32 allows."""
    r = np.random.default_rng(3)
    x = (r.normal(size=(64, 8, 8, 4)) + 1e4).astype(np.float32)
    x[0, 0, 0] += 300.0  # the shift lies 300 standard deviations from the mean
    native.set_enabled(True)
    try:
        ctx = KernelContext(np, np.random.default_rng(0), np.float32)
        _, mean, var = KERNELS["batchnorm_train"](ctx, {"epsilon": 1e-3}, x, np.ones(4, np.float32),
                                                  np.zeros(4, np.float32))
    finally:
        native.set_enabled(None)
    exact = x.astype(np.float64).reshape(-1, 4)
    np.testing.assert_allclose(mean, exact.mean(axis=0), rtol=1e-7)
    np.testing.assert_allclose(var, exact.var(axis=0), rtol=1e-5)


@needs_compiler
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("shape", [(4, 5, 6, 16), (300, 7), (2, 3, 3, 3)])
def test_native_batchnorm_and_its_gradient_equal_numpy(shape, dtype):
    from nnd.runtime import kernels_conv
    from nnd.runtime.kernels_native import native_function

    r = np.random.default_rng(len(shape))
    x = (r.normal(size=shape) * 3 + 5).astype(dtype)  # a mean far from zero: the variance is centered
    gamma, beta = r.normal(size=shape[-1]).astype(dtype), r.normal(size=shape[-1]).astype(dtype)
    attrs = {"epsilon": 1e-3}
    ctx = KernelContext(np, np.random.default_rng(0), dtype)
    tolerance = {"rtol": 1e-5, "atol": 1e-5} if dtype == np.float32 else {"rtol": 1e-12, "atol": 1e-12}
    native.set_enabled(True)
    assert native_function("channel_affine", dtype) is not None
    for activation in ("linear", "relu"):  # relu: fuse-batchnorm-relu's
        fused = dict(attrs, activation=activation)
        got = KERNELS["batchnorm_train"](ctx, fused, x, gamma, beta)
        expected = kernels_conv.batchnorm_train(ctx, fused, x, gamma, beta)
        for g, e in zip(got, expected):
            assert g.shape == e.shape and g.dtype == dtype
            np.testing.assert_allclose(g, e, **tolerance)
    assert np.all(got[0] >= 0) and np.any(got[0] == 0)
    _, mean, var = expected
    dy = r.normal(size=shape).astype(dtype)
    got = KERNELS["batchnorm_train_grad"](ctx, attrs, dy, x, gamma, mean, var)
    expected = kernels_conv.batchnorm_train_grad(ctx, attrs, dy, x, gamma, mean, var)
    for g, e in zip(got, expected):
        assert g.shape == e.shape and g.dtype == dtype
        np.testing.assert_allclose(g, e, **tolerance)
    native.set_enabled(None)


@st.composite
def _convolutions(draw):
    """A random NHWC convolution: sizes, strides, dilation, padding (up to beyond the window), filters."""
    kh, kw = draw(st.integers(1, 4)), draw(st.integers(1, 4))
    stride, dilation = (draw(st.integers(1, 3)), draw(st.integers(1, 3))), (draw(st.integers(1, 2)),
                                                                              draw(st.integers(1, 2)))
    padding = tuple((draw(st.integers(0, 4)), draw(st.integers(0, 4))) for _ in range(2))
    reach = (dilation[0] * (kh - 1) + 1, dilation[1] * (kw - 1) + 1)
    h = draw(st.integers(max(1, reach[0] - sum(padding[0])), 12))
    w = draw(st.integers(max(1, reach[1] - sum(padding[1])), 12))
    sizes = (draw(st.integers(1, 3)), h, w, draw(st.integers(1, 9)), draw(st.integers(1, 21)))
    attrs = {"strides": stride, "dilation": dilation, "padding": padding}
    return attrs, (kh, kw), sizes, draw(st.sampled_from(["1", "2", "3"]))


@needs_compiler
@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(case=_convolutions())
def test_direct_convolution_over_random_geometry_and_threads_equals_numpy(monkeypatch, case):
    """Index arithmetic of the direct kernels: windows in and beyond the padding, tiles across rows and
    images, partial panels and channel tiles, any split between threads; float64, to rounding."""
    from nnd.runtime import kernels_conv
    from nnd.runtime import kernels_native_conv as direct

    attrs, (kh, kw), (n, h, w_, c, f), threads = case
    monkeypatch.setenv("NND_NUM_THREADS", threads)
    r = np.random.default_rng(n * 1000 + h * 100 + w_ * 10 + c)
    x, w = r.normal(size=(n, h, w_, c)), r.normal(size=(kh, kw, c, f))
    ctx = KernelContext(np, np.random.default_rng(0), np.float64)
    expected = kernels_conv.conv2d(ctx, attrs, x, w)
    np.testing.assert_allclose(direct.direct_forward(attrs, x, w, None, "linear"), expected, rtol=1e-12, atol=1e-12)
    dy = r.normal(size=expected.shape)
    filter_attrs = dict(attrs, kernel_hw=(kh, kw))
    np.testing.assert_allclose(direct.direct_filter_gradient(filter_attrs, x, dy),
                               kernels_conv.conv2d_grad_filter(ctx, filter_attrs, x, dy), rtol=1e-12, atol=1e-12)
    if attrs["strides"] == (1, 1):
        grad_attrs = dict(attrs, input_hw=(h, w_))
        np.testing.assert_allclose(direct.direct_input_gradient(grad_attrs, dy, w),
                                   kernels_conv.conv2d_grad_input(ctx, grad_attrs, dy, w), rtol=1e-12, atol=1e-12)


@needs_compiler
@pytest.mark.parametrize("name, batch", [("mnist_cnn", 12), ("tiny_resnet", 8), ("vgg_blocks", 16),
                                         ("mobilenet_fashion", 8)])
def test_cnn_examples_take_the_same_gradients_with_and_without_native_kernels(name, batch):
    """Whole training steps (direct convolutions, native batchnorm with its fused relu, pooling, Adam)
    against the array-module kernels, in float64; batches large enough for the direct kernels."""
    import nnd

    path = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "examples", f"{name}.nnd")
    results = []
    for enabled in (True, False):
        native.set_enabled(enabled)
        try:
            model = nnd.load(path, dtype="float64", seed=0)
            rng = np.random.default_rng(5)
            x = rng.standard_normal((batch, *model.graph.inputs[0].type.shape[1:]))
            y = rng.integers(0, 10, batch)
            loss, grads = model.loss_and_gradients(x, y)
            model.fit(x, y, epochs=1, batch_size=batch, shuffle=False, verbose=0, validation_data=(x, y))
            results.append((loss, grads, model.parameters()))
        finally:
            native.set_enabled(None)
    (loss_native, grads_native, after_native), (loss_numpy, grads_numpy, after_numpy) = results
    assert loss_native == pytest.approx(loss_numpy, rel=1e-12)
    for key in grads_numpy:
        np.testing.assert_allclose(grads_native[key], grads_numpy[key], rtol=1e-9, atol=1e-12, err_msg=key)
    for key in after_numpy:
        np.testing.assert_allclose(after_native[key], after_numpy[key], rtol=1e-9, atol=1e-12, err_msg=key)


@needs_compiler
def test_batchnorm_over_one_value_per_channel_is_exact_on_both_paths():
    """With one value per channel, x equals its mean: the output is beta and, behind a relu at beta = 0,
    every gradient is 0. Scaling x and the mean separately left a residue of about 1e-16 that relu passed."""
    import nnd

    source = ("model m {\n    input x: [6]\n    dense(8)\n    batchnorm()\n    relu()\n    dense(1)\n}\n"
              "train m {\n    optimizer = sgd(lr=0.1)\n    loss = mse\n}\n")
    x = np.random.default_rng(0).standard_normal((1, 6))
    for enabled in (True, False):
        native.set_enabled(enabled)
        try:
            _, grads = nnd.loads(source, dtype="float64", seed=0).loss_and_gradients(x, np.ones((1, 1)))
        finally:
            native.set_enabled(None)
        assert np.array_equal(grads["batchnorm.beta"], np.zeros(8)), enabled
        assert np.array_equal(grads["dense.kernel"], np.zeros((6, 8))), enabled
