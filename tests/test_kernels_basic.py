"""Forward kernels of the basic ops against independent NumPy formulas and against PyTorch."""
from __future__ import annotations

import math
import warnings

import numpy as np
import pytest

from nnd.runtime.backend import get_backend
from nnd.runtime.kernel_table import KernelContext
from nnd.runtime.kernels_basic import EPSILON, erf

KERNELS = get_backend("numpy").kernels


def run(op, attrs, *inputs, dtype=np.float64, seed=0):
    ctx = KernelContext(np, np.random.default_rng(seed), dtype)
    with warnings.catch_warnings():
        warnings.simplefilter("error")      # overflow or invalid values mean an unstable formula
        return KERNELS[op](ctx, attrs, *inputs)


def rand(*shape, seed=0, scale=1.0):
    return np.random.default_rng(seed).normal(size=shape) * scale


@pytest.fixture(scope="module")
def torch():
    return pytest.importorskip("torch")


def t64(torch, a):
    return torch.tensor(np.asarray(a, dtype=np.float64))


# ------------------------------------------------------------------------------------- elementwise

def test_erf_matches_math_erf():
    x = np.linspace(-6.0, 6.0, 4001)
    expected = np.array([math.erf(v) for v in x])
    np.testing.assert_allclose(erf(np, x), expected, rtol=0, atol=1e-15)
    assert erf(np, np.array(0.0)) == 0.0


def test_gelu_both_forms_match_formulas_and_torch(torch):
    x = np.concatenate([rand(200, scale=3.0), [0.0, -40.0, 40.0]])
    exact = 0.5 * x * (1 + np.array([math.erf(v / math.sqrt(2)) for v in x]))
    tanh_form = 0.5 * x * (1 + np.tanh(math.sqrt(2 / math.pi) * (x + 0.044715 * x ** 3)))
    np.testing.assert_allclose(run("gelu", {"approximate": False}, x), exact, rtol=1e-13, atol=1e-15)
    np.testing.assert_allclose(run("gelu", {}, x), exact, rtol=1e-13, atol=1e-15)
    np.testing.assert_allclose(run("gelu", {"approximate": True}, x), tanh_form, rtol=1e-13, atol=1e-15)
    F = torch.nn.functional
    np.testing.assert_allclose(run("gelu", {"approximate": False}, x), F.gelu(t64(torch, x)).numpy(),
                               rtol=1e-12, atol=1e-14)
    np.testing.assert_allclose(run("gelu", {"approximate": True}, x),
                               F.gelu(t64(torch, x), approximate="tanh").numpy(), rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("op, attrs, reference", [
    ("elu", {"alpha": 0.7}, lambda F, t: F.elu(t, alpha=0.7)),
    ("elu", {}, lambda F, t: F.elu(t)),
    ("leaky_relu", {"alpha": 0.1}, lambda F, t: F.leaky_relu(t, 0.1)),
    ("swish", {}, lambda F, t: F.silu(t)),
    ("sigmoid", {}, lambda F, t: t.sigmoid()),
    ("tanh", {}, lambda F, t: t.tanh()),
    ("softplus", {}, lambda F, t: F.softplus(t)),
    ("relu", {}, lambda F, t: F.relu(t)),
    ("gelu", {"approximate": True}, lambda F, t: F.gelu(t, approximate="tanh")),
    ("gelu", {"approximate": False}, lambda F, t: F.gelu(t)),
])
def test_activations_and_their_gradients_match_torch(torch, op, attrs, reference):
    x = np.concatenate([rand(300, scale=4.0), [-800.0, -30.0, 0.5, 30.0, 800.0]])
    dy = rand(x.size, seed=1)
    t = t64(torch, x).requires_grad_(True)
    y = reference(torch.nn.functional, t)
    y.backward(t64(torch, dy))
    got = run(op, attrs, x)
    np.testing.assert_allclose(got, y.detach().numpy(), rtol=1e-12, atol=1e-14)
    helpers = {"elu": ("elu_grad", x), "leaky_relu": ("leaky_relu_grad", x), "swish": ("swish_grad", x),
               "sigmoid": ("sigmoid_grad", got), "tanh": ("tanh_grad", got), "relu": ("relu_grad", got),
               "gelu": ("gelu_grad", x)}
    if op in helpers:
        helper, second = helpers[op]
        np.testing.assert_allclose(run(helper, attrs, dy, second), t.grad.numpy(), rtol=1e-10, atol=1e-14)


def test_sigmoid_and_softplus_are_stable_at_extremes():
    x = np.array([-1000.0, -50.0, 0.0, 50.0, 1000.0], dtype=np.float32)
    s = run("sigmoid", {}, x, dtype=np.float32)
    assert s.dtype == np.float32
    np.testing.assert_allclose(s, [0.0, math.exp(-50), 0.5, 1.0, 1.0], rtol=1e-6)
    sp = run("softplus", {}, x, dtype=np.float32)
    np.testing.assert_allclose(sp, [0.0, math.exp(-50), math.log(2), 50.0, 1000.0], rtol=1e-6)
    e = run("elu", {"alpha": 1.0}, x, dtype=np.float32)
    np.testing.assert_allclose(e, [-1.0, -1.0, 0.0, 50.0, 1000.0])


def test_unary_kernels_match_numpy():
    x = np.abs(rand(3, 4)) + 0.1
    for op, expected in [("neg", -x), ("exp", np.exp(x)), ("log", np.log(x)), ("sqrt", np.sqrt(x)),
                         ("square", x ** 2), ("abs", np.abs(-x)), ("sign", np.sign(x - 0.5))]:
        arg = -x if op == "abs" else (x - 0.5 if op == "sign" else x)
        np.testing.assert_allclose(run(op, {}, arg), expected, rtol=1e-15)


# ------------------------------------------------------------------------------------------ softmax

@pytest.mark.parametrize("axis", [-1, 0, 1])
def test_softmax_and_log_softmax(torch, axis):
    x = rand(3, 4, 5, scale=3.0)
    e = np.exp(x)
    expected = e / e.sum(axis=axis, keepdims=True)
    np.testing.assert_allclose(run("softmax", {"axis": axis}, x), expected, rtol=1e-13)
    np.testing.assert_allclose(run("log_softmax", {"axis": axis}, x), np.log(expected), rtol=1e-12, atol=1e-14)
    np.testing.assert_allclose(run("softmax", {"axis": axis}, x), torch.softmax(t64(torch, x), axis).numpy(),
                               rtol=1e-13)
    np.testing.assert_allclose(run("log_softmax", {"axis": axis}, x),
                               torch.log_softmax(t64(torch, x), axis).numpy(), rtol=1e-13, atol=1e-14)


def test_softmax_is_stable_for_large_logits():
    x = np.array([[1000.0, 1000.0, -1000.0], [-1e4, 0.0, 1e4]], dtype=np.float32)
    s = run("softmax", {"axis": -1}, x, dtype=np.float32)
    np.testing.assert_allclose(s, [[0.5, 0.5, 0.0], [0.0, 0.0, 1.0]])
    ls = run("log_softmax", {"axis": -1}, x, dtype=np.float32)
    assert np.all(np.isfinite(ls)) and ls.dtype == np.float32
    np.testing.assert_allclose(ls[0, :2], [-math.log(2)] * 2, rtol=1e-6)


def test_softmax_gradient_kernels_match_torch(torch):
    x, dy = rand(4, 5, scale=2.0), rand(4, 5, seed=3)
    for op, helper, fn in [("softmax", "softmax_grad", torch.softmax),
                           ("log_softmax", "log_softmax_grad", torch.log_softmax)]:
        t = t64(torch, x).requires_grad_(True)
        fn(t, 1).backward(t64(torch, dy))
        y = run(op, {"axis": 1}, x)
        np.testing.assert_allclose(run(helper, {"axis": 1}, dy, y), t.grad.numpy(), rtol=1e-11, atol=1e-14)


# ------------------------------------------------------------------------------------------- losses

def test_sparse_softmax_cross_entropy_matches_torch(torch):
    logits, labels = rand(6, 5, scale=3.0), np.array([0, 4, 2, 2, 1, 3])
    t = t64(torch, logits).requires_grad_(True)
    loss = torch.nn.functional.cross_entropy(t, torch.tensor(labels), reduction="none")
    dloss = rand(6, seed=2)
    loss.backward(t64(torch, dloss))
    np.testing.assert_allclose(run("sparse_softmax_cross_entropy", {}, logits, labels), loss.detach().numpy(),
                               rtol=1e-13)
    np.testing.assert_allclose(run("sparse_softmax_cross_entropy_grad", {}, dloss, logits, labels),
                               t.grad.numpy(), rtol=1e-12, atol=1e-15)
    # float labels (as Keras often feeds them) and large logits
    big = np.array([[1000.0, -1000.0, 0.0]])
    np.testing.assert_allclose(run("sparse_softmax_cross_entropy", {}, big, np.array([1.0])), [2000.0])


def test_softmax_cross_entropy_matches_torch(torch):
    logits = rand(5, 4, scale=2.0)
    targets = np.random.default_rng(1).dirichlet(np.ones(4), size=5)
    dloss = rand(5, seed=4)
    t = t64(torch, logits).requires_grad_(True)
    loss = torch.nn.functional.cross_entropy(t, t64(torch, targets), reduction="none")
    loss.backward(t64(torch, dloss))
    np.testing.assert_allclose(run("softmax_cross_entropy", {}, logits, targets), loss.detach().numpy(),
                               rtol=1e-13)
    np.testing.assert_allclose(run("softmax_cross_entropy_grad", {"axis": -1}, dloss, logits, targets),
                               t.grad.numpy(), rtol=1e-12, atol=1e-15)
    # along axis 0: the same numbers transposed
    np.testing.assert_allclose(run("softmax_cross_entropy", {"axis": 0}, logits.T, targets.T),
                               loss.detach().numpy(), rtol=1e-13)


def test_sigmoid_cross_entropy_matches_torch(torch):
    x = np.concatenate([rand(20, scale=5.0), [-500.0, 500.0]])
    targets = np.random.default_rng(2).uniform(0, 1, x.size)
    dloss = rand(x.size, seed=5)
    t = t64(torch, x).requires_grad_(True)
    loss = torch.nn.functional.binary_cross_entropy_with_logits(t, t64(torch, targets), reduction="none")
    loss.backward(t64(torch, dloss))
    np.testing.assert_allclose(run("sigmoid_cross_entropy", {}, x, targets), loss.detach().numpy(), rtol=1e-12)
    s = run("sigmoid", {}, x)
    np.testing.assert_allclose(dloss * (s - targets), t.grad.numpy(), rtol=1e-12, atol=1e-15)


@pytest.mark.parametrize("delta", [1.0, 0.3, 2.5])
def test_huber_matches_torch(torch, delta):
    pred, target = rand(30, scale=3.0), rand(30, seed=1)
    dloss = rand(30, seed=6)
    t = t64(torch, pred).requires_grad_(True)
    loss = torch.nn.functional.huber_loss(t, t64(torch, target), reduction="none", delta=delta)
    loss.backward(t64(torch, dloss))
    np.testing.assert_allclose(run("huber", {"delta": delta}, pred, target), loss.detach().numpy(), rtol=1e-13)
    np.testing.assert_allclose(run("huber_grad", {"delta": delta}, dloss, pred, target), t.grad.numpy(),
                               rtol=1e-13)
    assert run("huber", {}, np.array([3.0]), np.array([0.0]))[0] == 2.5        # default delta 1


def test_binary_crossentropy_clips_like_keras(torch):
    p = np.array([0.0, 1e-9, 0.2, 0.5, 0.9, 1.0])
    t = np.array([1.0, 1.0, 0.0, 1.0, 0.3, 0.0])
    pc = np.clip(p, EPSILON, 1 - EPSILON)
    expected = -(t * np.log(pc) + (1 - t) * np.log(1 - pc))
    np.testing.assert_allclose(run("binary_crossentropy", {}, p, t), expected, rtol=1e-13)
    inside = slice(2, 5)
    ref = torch.nn.functional.binary_cross_entropy(t64(torch, p[inside]), t64(torch, t[inside]), reduction="none")
    np.testing.assert_allclose(run("binary_crossentropy", {}, p[inside], t[inside]), ref.numpy(), rtol=1e-13)
    grad = run("binary_crossentropy_grad", {}, np.ones(6), p, t)
    assert grad[0] == 0.0 and grad[1] == 0.0 and grad[5] == 0.0          # clipped: no gradient
    pi, ti = p[inside], t[inside]
    np.testing.assert_allclose(grad[inside], -(ti / pi) + (1 - ti) / (1 - pi), rtol=1e-13)


def test_categorical_crossentropy_normalizes_and_clips_like_keras():
    p = np.array([[2.0, 1.0, 1.0], [0.0, 0.5, 0.5], [0.7, 0.2, 0.1]])
    t = np.array([[1.0, 0.0, 0.0], [1.0, 0.0, 0.0], [0.0, 0.5, 0.5]])
    q = np.clip(p / p.sum(-1, keepdims=True), EPSILON, 1 - EPSILON)
    expected = -(t * np.log(q)).sum(-1)
    got = run("categorical_crossentropy", {}, p, t)
    np.testing.assert_allclose(got, expected, rtol=1e-13)
    np.testing.assert_allclose(got[:2], [math.log(2.0), -math.log(EPSILON)], rtol=1e-12)


def test_sparse_categorical_crossentropy_normalizes_and_clips_like_keras():
    # Keras: p / sum(p), clipped to [EPSILON, 1 - EPSILON], then -log of the label's entry
    p = np.array([[0.2, 0.8], [0.0, 1.0], [0.5, 0.5], [0.2, 0.2]])
    labels = np.array([1, 0, 0, 1])
    got = run("sparse_categorical_crossentropy", {}, p, labels)
    np.testing.assert_allclose(got, [-math.log(0.8), -math.log(EPSILON), math.log(2.0), math.log(2.0)],
                               rtol=1e-12)
    one_hot = np.eye(2)[labels]
    np.testing.assert_allclose(got, run("categorical_crossentropy", {}, p, one_hot), rtol=1e-12)
    grad = run("sparse_categorical_crossentropy_grad", {}, np.ones(4), p, labels)
    # d/dp of -log(p_y / sum p): 1/sum(p) for every entry, less 1/p_y at the label (0 where clipped)
    np.testing.assert_allclose(grad, [[1.0, -0.25], [0.0, 0.0], [-1.0, 1.0], [2.5, -2.5]], rtol=1e-13)


# ---------------------------------------------------------------------------------------- reductions

@pytest.mark.parametrize("axes, keepdims", [((1,), False), ((0, 2), True), (None, False), ((-1,), True), ((), False)])
def test_reductions_match_numpy(axes, keepdims):
    x = rand(3, 4, 2)
    np_axes = None if axes is None else tuple(axes)
    for op, fn in [("reduce_sum", np.sum), ("reduce_mean", np.mean), ("reduce_max", np.max)]:
        got = run(op, {"axes": axes, "keepdims": keepdims}, x)
        np.testing.assert_allclose(got, fn(x, axis=np_axes, keepdims=keepdims), rtol=1e-14)


@pytest.mark.parametrize("axes", [(1, 2), (0, 1), (0, 1, 2), (2,), (1, 2, 3)])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_sums_and_means_over_inner_runs_of_axes_match_numpy(axes, dtype):
    """Consecutive axes before the last (bias gradients, global pooling) take products with ones."""
    x = rand(3, 4, 5, 6, 2).astype(dtype)
    tolerance = 1e-5 if dtype == np.float32 else 1e-13
    for keepdims in (False, True):
        for op, fn in [("reduce_sum", np.sum), ("reduce_mean", np.mean)]:
            got = run(op, {"axes": axes, "keepdims": keepdims}, x)
            assert got.dtype == dtype
            np.testing.assert_allclose(got, fn(x, axis=axes, keepdims=keepdims), rtol=tolerance)


def test_broadcast_like_spreads_and_averages():
    x = np.zeros((2, 3, 4))
    dy = rand(2, 4)
    got = run("broadcast_like", {"axes": (1,), "keepdims": False}, dy, x)
    np.testing.assert_array_equal(got, np.broadcast_to(dy[:, None, :], x.shape))
    assert got.flags.writeable
    dy = rand(1, 1, 4, seed=1)
    got = run("broadcast_like", {"axes": (0, 1), "keepdims": True, "mean": True}, dy, x)
    np.testing.assert_allclose(got, np.broadcast_to(dy / 6, x.shape))


def test_reduce_max_grad_goes_to_the_first_maximum():
    x = np.array([[1.0, 3.0, 3.0], [2.0, 2.0, 0.0], [5.0, 5.0, 5.0]])
    dy = np.array([10.0, 20.0, 30.0])
    got = run("reduce_max_grad", {"axes": (1,)}, dy, x)
    np.testing.assert_array_equal(got, [[0, 10, 0], [20, 0, 0], [30, 0, 0]])
    got = run("reduce_max_grad", {"axes": (0,), "keepdims": True}, np.array([[1.0, 2.0, 3.0]]), x)
    np.testing.assert_array_equal(got, [[0, 0, 0], [0, 0, 0], [1, 2, 3]])


def test_reduce_max_grad_ties_across_several_axes_use_row_major_order():
    x = np.zeros((2, 3, 2))
    x[0, 2, 1] = x[1, 0, 0] = x[1, 2, 1] = 7.0             # j=2: a tie between (i, k) = (0, 1) and (1, 1)
    x[:, 1, :] = [[4.0, 4.0], [1.0, 4.0]]                  # j=1: a tie between (0, 0), (0, 1) and (1, 1)
    dy = np.array([1.0, 2.0, 3.0])                         # one per kept index j
    got = run("reduce_max_grad", {"axes": (0, 2)}, dy, x)
    expected = np.zeros_like(x)
    expected[1, 0, 0] = 1.0                                # j=0: only maximum at (1, 0)
    expected[0, 1, 0] = 2.0                                # j=1: first of (0,0), (0,1), (1,1)
    expected[0, 2, 1] = 3.0                                # j=2: (0,1) comes before (1,1)
    np.testing.assert_array_equal(got, expected)
    got = run("reduce_max_grad", {"axes": None}, np.array(5.0), x)
    assert got.sum() == 5.0 and got[0, 2, 1] == 5.0        # all axes: first 7 in row-major order


# ------------------------------------------------------------------------------------ other kernels

def test_matmul_and_matmul_tn_match_einsum():
    a, b, dy = rand(2, 3, 4), rand(4, 5, seed=1), rand(2, 3, 5, seed=2)
    np.testing.assert_allclose(run("matmul", {}, a, b), np.einsum("ijk,km->ijm", a, b), rtol=1e-13)
    np.testing.assert_allclose(run("matmul", {}, a[0, 0], b), a[0, 0] @ b, rtol=1e-13)
    np.testing.assert_allclose(run("matmul_tn", {}, a, dy), np.einsum("ijk,ijm->km", a, dy), rtol=1e-13)


@pytest.mark.parametrize("transpose_a, transpose_b, subscripts", [
    (False, False, "nhmk,nhkp->nhmp"), (False, True, "nhmk,nhpk->nhmp"),
    (True, False, "nhkm,nhkp->nhmp"), (True, True, "nhkm,nhpk->nhmp")])
def test_batch_matmul_matches_einsum(transpose_a, transpose_b, subscripts):
    a = rand(2, 3, 4, 5) if not transpose_a else rand(2, 3, 5, 4)
    b = rand(2, 3, 5, 6, seed=1) if not transpose_b else rand(2, 3, 6, 5, seed=1)
    attrs = {"transpose_a": transpose_a, "transpose_b": transpose_b}
    np.testing.assert_allclose(run("batch_matmul", attrs, a, b), np.einsum(subscripts, a, b), rtol=1e-13)
    assert run("batch_matmul", attrs, a.astype(np.float32), b.astype(np.float32), dtype=np.float32).dtype == np.float32


def test_data_movement_kernels():
    x = rand(2, 3, 4)
    pads = ((0, 0), (1, 2), (0, 1))
    padded = run("pad", {"pads": pads, "value": 9.0}, x)
    np.testing.assert_array_equal(padded, np.pad(x, pads, constant_values=9.0))
    np.testing.assert_array_equal(run("crop", {"pads": pads}, padded), x)
    np.testing.assert_array_equal(run("reshape", {"shape": ("N", 12)}, x), x.reshape(2, 12))
    np.testing.assert_array_equal(run("transpose", {"perm": (2, 0, 1)}, x), x.transpose(2, 0, 1))
    parts = [run("slice", {"axis": 2, "start": s, "stop": e}, x) for s, e in [(0, 1), (1, 3), (3, 4)]]
    np.testing.assert_array_equal(run("concat", {"axis": 2}, *parts), x)
    np.testing.assert_array_equal(run("slice", {"axis": 1, "start": -2, "stop": None}, x), x[:, -2:])


def test_dtype_follows_float32_inputs():
    x = rand(3, 4).astype(np.float32)
    labels = np.array([0, 1, 3])
    for op, attrs, args in [("gelu", {}, (x,)), ("gelu", {"approximate": True}, (x,)), ("elu", {}, (x,)),
                            ("softplus", {}, (x,)), ("softmax", {"axis": -1}, (x,)),
                            ("reduce_mean", {"axes": (0,)}, (x,)), ("sparse_softmax_cross_entropy", {}, (x, labels)),
                            ("sparse_softmax_cross_entropy_grad", {}, (x[:, 0], x, labels)),
                            ("huber", {}, (x, x[::-1])), ("binary_crossentropy", {}, (np.abs(x) / 4, x > 0)),
                            ("add", {}, (x, np.arange(4))), ("matmul", {}, (x, x.T)),
                            ("reduce_max_grad", {"axes": (1,)}, (x[:, 0], x)),
                            ("broadcast_like", {"axes": (1,), "mean": True}, (x[:, 0], x))]:
        assert run(op, attrs, *args, dtype=np.float32).dtype == np.float32, op


def test_constant_and_cast_use_the_executor_float_dtype():
    assert run("constant", {"value": 1.5, "dtype": "f32"}, dtype=np.float64).dtype == np.float64
    assert run("constant", {"value": 1.5, "dtype": "f64"}, dtype=np.float32).dtype == np.float32
    assert run("constant", {"value": 3, "dtype": "i32"}).dtype == np.int32
    assert run("cast", {"dtype": "f32"}, np.array([1, 2]), dtype=np.float64).dtype == np.float64
    assert run("cast", {"dtype": "i64"}, np.array([1.7, -2.2])).tolist() == [1, -2]


def test_dropout_mask():
    x = np.ones((200, 50), dtype=np.float32)
    mask = run("dropout_mask", {"rate": 0.25}, x, dtype=np.float32, seed=3)
    assert mask.dtype == np.float32 and mask.shape == x.shape
    assert set(np.unique(mask).tolist()) == {0.0, np.float32(1 / 0.75)}
    assert abs((mask == 0).mean() - 0.25) < 0.02
    np.testing.assert_array_equal(mask, run("dropout_mask", {"rate": 0.25}, x, dtype=np.float32, seed=3))
    assert np.all(run("dropout_mask", {"rate": 0.0}, x, dtype=np.float32) == 1.0)
