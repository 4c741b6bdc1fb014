"""Recurrent scans: forward and gradients against PyTorch's nn.LSTM / nn.GRU / nn.RNN with weights mapped
from Keras layouts, against a plain per-sample NumPy loop, and the mask semantics; shape rules and the
gradient rules' contract. (Finite-difference checks of every option live in gradcheck_cases.py.)"""
from __future__ import annotations

import numpy as np
import pytest

from nnd.compiler.autodiff import differentiate
from nnd.compiler.builder import GraphBuilder
from nnd.compiler.diagnostics import NndError
from nnd.compiler.ir import Graph
from nnd.compiler.ops import NOT_DIFFERENTIABLE, Fusion, get_op
from nnd.compiler.tensor_type import ShapeError, TensorType
from nnd.runtime.executor import Executor
from nnd.runtime.kernel_table import KernelContext, kernels_for

KERNELS = kernels_for("numpy")
CTX = KernelContext(np, np.random.default_rng(0), np.float64)
GATES = {"lstm": 4, "gru": 3, "rnn": 1}


def rng(seed):
    return np.random.default_rng(seed)


# ---------------------------------------------------------------------------------------------------
# A layer-shaped graph: xproj = x @ kernel + bias, then the scan; loss = sum of outputs times fixed weights


def build_layer(kind, n, t, f, u, attrs, loss_on=("outputs", "h_last", "c_last")):
    """Inputs x, kernel, bias, recurrent_kernel, h0 (c0, recurrent_bias), mask and loss weights w_*; no
    recurrent dropout (the scans' recurrent mask is the scalar 1)."""
    g = Graph(f"{kind}_layer")
    b = GraphBuilder(g)
    gates = GATES[kind]
    x = b.add_input("x", TensorType((n, t, f), "f64"))
    kernel = b.add_input("kernel", TensorType((f, gates * u), "f64"))
    bias = b.add_input("bias", TensorType((gates * u,), "f64"))
    rk = b.add_input("recurrent_kernel", TensorType((u, gates * u), "f64"))
    h0 = b.add_input("h0", TensorType((n, u), "f64"))
    mask = b.add_input("mask", TensorType((n, t), "f64"))
    no_drop = b.emit1("constant", [], {"value": 1.0, "dtype": "f64"})
    xproj = b.emit1("add", [b.emit1("matmul", [x, kernel]), bias])
    attrs = {"units": u, **attrs}
    if kind == "lstm":
        c0 = b.add_input("c0", TensorType((n, u), "f64"))
        results = b.emit("lstm_scan", [xproj, h0, c0, rk, mask, no_drop], attrs)
        named = dict(zip(("outputs", "h_last", "c_last"), results[:3]))
    elif kind == "gru":
        rb = b.add_input("recurrent_bias", TensorType((3 * u,), "f64"))
        results = b.emit("gru_scan", [xproj, h0, rk, rb, mask, no_drop], attrs)
        named = dict(zip(("outputs", "h_last"), results[:2]))
    else:
        results = b.emit("rnn_scan", [xproj, h0, rk, mask, no_drop], attrs)
        named = dict(zip(("outputs", "h_last"), results[:2]))
    loss = None
    for name, value in named.items():
        g.outputs[name] = value
        if name not in loss_on:
            continue
        w = b.add_input(f"w_{name}", value.type)
        term = b.emit1("reduce_sum", [b.emit1("mul", [value, w])], {"axes": None})
        loss = term if loss is None else b.emit1("add", [loss, term])
    g.outputs["loss"] = loss
    return g


def layer_feeds(kind, n, t, f, u, seed, mask=None, scale=0.5):
    r = rng(seed)
    gates = GATES[kind]
    feeds = {
        "x": r.normal(size=(n, t, f)),
        "kernel": r.normal(scale=scale, size=(f, gates * u)),
        "bias": r.normal(scale=scale, size=(gates * u,)),
        "recurrent_kernel": r.normal(scale=scale, size=(u, gates * u)),
        "h0": r.normal(scale=0.5, size=(n, u)),
        "mask": np.ones((n, t)) if mask is None else np.asarray(mask, dtype=np.float64),
    }
    if kind == "lstm":
        feeds["c0"] = r.normal(scale=0.5, size=(n, u))
    if kind == "gru":
        feeds["recurrent_bias"] = r.normal(scale=scale, size=(3 * u,))
    return feeds


def run_layer(kind, feeds, attrs, loss_on=("outputs", "h_last", "c_last"), grads=True, dtype=np.float64):
    n, t, f = feeds["x"].shape
    u = feeds["h0"].shape[1]
    graph = build_layer(kind, n, t, f, u, attrs, loss_on)
    r = rng(99)
    feeds = dict(feeds)
    for value in graph.inputs:
        if value.name.startswith("w_"):
            feeds[value.name] = r.uniform(-1.0, 1.0, value.type.shape)
    if grads:
        wrt = [v.name for v in graph.inputs if not v.name.startswith("w_") and v.name != "mask"]
        graph = differentiate(graph, "loss", wrt)
    result = Executor(graph, dtype=dtype).run(feeds)
    return {k: np.asarray(v) for k, v in result.items()}, feeds


# ---------------------------------------------------------------------------------------------------
# PyTorch with Keras weights


torch_cases = []
for _kind in ("lstm", "gru", "rnn"):
    for _seq in (False, True):
        for _back in (False, True):
            torch_cases.append((_kind, _seq, _back))


def _torch_module(kind, feeds, activation):
    torch = pytest.importorskip("torch")
    f = feeds["x"].shape[2]
    u = feeds["h0"].shape[1]
    k, bias, rk = feeds["kernel"], feeds["bias"], feeds["recurrent_kernel"]
    if kind == "lstm":
        module = torch.nn.LSTM(f, u, batch_first=True)
        w_ih, w_hh, b_ih, b_hh = k.T, rk.T, bias, np.zeros_like(bias)
    elif kind == "gru":
        module = torch.nn.GRU(f, u, batch_first=True)
        order = np.concatenate([np.arange(u, 2 * u), np.arange(u), np.arange(2 * u, 3 * u)])  # r, z, n
        w_ih, w_hh = k[:, order].T, rk[:, order].T
        b_ih, b_hh = bias[order], feeds["recurrent_bias"][order]
    else:
        module = torch.nn.RNN(f, u, batch_first=True, nonlinearity=activation)
        w_ih, w_hh, b_ih, b_hh = k.T, rk.T, bias, np.zeros_like(bias)
    module = module.double()
    with torch.no_grad():
        for name, value in (("weight_ih_l0", w_ih), ("weight_hh_l0", w_hh), ("bias_ih_l0", b_ih),
                            ("bias_hh_l0", b_hh)):
            getattr(module, name).copy_(torch.from_numpy(np.ascontiguousarray(value)))
    return torch, module


def torch_layer(kind, feeds, weights, seq, backwards, activation="tanh"):
    """Forward and gradients of the same loss in PyTorch, mapped back to Keras names and layouts."""
    torch, module = _torch_module(kind, feeds, activation)
    u = feeds["h0"].shape[1]
    x = torch.tensor(feeds["x"], requires_grad=True)
    h0 = torch.tensor(feeds["h0"][None], requires_grad=True)
    inp = torch.flip(x, dims=[1]) if backwards else x
    if kind == "lstm":
        c0 = torch.tensor(feeds["c0"][None], requires_grad=True)
        out, (hn, cn) = module(inp, (h0, c0))
    else:
        out, hn = module(inp, h0)
    outputs = out if seq else hn[0]
    named = {"outputs": outputs, "h_last": hn[0]}
    if kind == "lstm":
        named["c_last"] = cn[0]
    loss = sum((value * torch.from_numpy(weights[f"w_{name}"])).sum()
               for name, value in named.items() if f"w_{name}" in weights)
    loss.backward()
    result = {name: value.detach().numpy() for name, value in named.items()}
    w_ih, w_hh = module.weight_ih_l0.grad.numpy(), module.weight_hh_l0.grad.numpy()
    b_ih, b_hh = module.bias_ih_l0.grad.numpy(), module.bias_hh_l0.grad.numpy()
    if kind == "gru":
        order = np.concatenate([np.arange(u, 2 * u), np.arange(u), np.arange(2 * u, 3 * u)])
        back = np.argsort(order)
        result["grad:kernel"] = w_ih.T[:, back]
        result["grad:recurrent_kernel"] = w_hh.T[:, back]
        result["grad:bias"] = b_ih[back]
        result["grad:recurrent_bias"] = b_hh[back]
    else:
        result["grad:kernel"] = w_ih.T
        result["grad:recurrent_kernel"] = w_hh.T
        result["grad:bias"] = b_ih           # the Keras bias stands for torch's b_ih + b_hh
        assert np.allclose(b_ih, b_hh)
    result["grad:x"] = x.grad.numpy()
    result["grad:h0"] = h0.grad.numpy()[0]
    if kind == "lstm":
        result["grad:c0"] = c0.grad.numpy()[0]
    return result


@pytest.mark.parametrize("kind, seq, backwards", torch_cases)
def test_forward_and_gradients_match_pytorch(kind, seq, backwards):
    feeds = layer_feeds(kind, n=3, t=5, f=4, u=3, seed=1)
    attrs = {"return_sequences": seq, "go_backwards": backwards}
    ours, full = run_layer(kind, feeds, attrs)
    weights = {k: v for k, v in full.items() if k.startswith("w_")}
    ref = torch_layer(kind, feeds, weights, seq, backwards)
    for name, expected in ref.items():
        assert ours[name].shape == expected.shape, name
        np.testing.assert_allclose(ours[name], expected, rtol=1e-5, atol=1e-9, err_msg=name)


@pytest.mark.parametrize("kind, loss_on", [("lstm", ("outputs",)), ("lstm", ("c_last",)),
                                           ("gru", ("h_last",)), ("rnn", ("outputs",))])
def test_missing_incoming_gradients_are_zeros(kind, loss_on):
    """Only some outputs reach the loss: autodiff passes a scalar zero for the others."""
    feeds = layer_feeds(kind, n=2, t=4, f=3, u=2, seed=2)
    ours, full = run_layer(kind, feeds, {"return_sequences": True}, loss_on=loss_on)
    weights = {k: v for k, v in full.items() if k.startswith("w_")}
    ref = torch_layer(kind, feeds, weights, True, False)
    for name in ("grad:x", "grad:kernel", "grad:recurrent_kernel", "grad:h0"):
        np.testing.assert_allclose(ours[name], ref[name], rtol=1e-5, atol=1e-9, err_msg=name)


def test_simple_rnn_relu_matches_pytorch():
    feeds = layer_feeds("rnn", n=2, t=6, f=3, u=4, seed=3)
    ours, full = run_layer("rnn", feeds, {"activation": "relu", "return_sequences": True})
    weights = {k: v for k, v in full.items() if k.startswith("w_")}
    ref = torch_layer("rnn", feeds, weights, True, False, activation="relu")
    for name, expected in ref.items():
        np.testing.assert_allclose(ours[name], expected, rtol=1e-5, atol=1e-9, err_msg=name)


# ---------------------------------------------------------------------------------------------------
# An independent reference: one sample and one step at a time, Keras' formulas written out


def _np_act(name, v):
    return {"tanh": np.tanh, "sigmoid": lambda a: 1.0 / (1.0 + np.exp(-a)),
            "hard_sigmoid": lambda a: np.clip(a / 6.0 + 0.5, 0.0, 1.0),
            "relu": lambda a: np.maximum(a, 0.0), "linear": lambda a: a}[name](v)


def reference_scan(kind, xproj, h0, rk, mask, c0=None, rb=None, rmask=None, activation="tanh",
                   recurrent_activation="sigmoid", go_backwards=False, return_sequences=False,
                   reset_after=True):
    """rmask: the recurrent dropout mask [N, u], multiplying h wherever it meets the recurrent kernel."""
    n, t, _ = xproj.shape
    u = h0.shape[1]
    rmask = np.ones((n, u)) if rmask is None else rmask
    outs = np.zeros((n, t, u))
    h_last, c_last = np.zeros((n, u)), np.zeros((n, u))
    for b in range(n):
        h = h0[b].copy()
        c = c0[b].copy() if c0 is not None else None
        order = list(range(t))[::-1] if go_backwards else list(range(t))
        for k, step in enumerate(order):
            x = xproj[b, step]
            if mask[b, step]:
                hm = h * rmask[b]
                if kind == "lstm":
                    z = x + hm @ rk
                    i = _np_act(recurrent_activation, z[:u])
                    f = _np_act(recurrent_activation, z[u:2 * u])
                    cc = _np_act(activation, z[2 * u:3 * u])
                    o = _np_act(recurrent_activation, z[3 * u:])
                    c = f * c + i * cc
                    h = o * _np_act(activation, c)
                elif kind == "gru":
                    if reset_after:
                        rec = hm @ rk + rb
                        zg = _np_act(recurrent_activation, x[:u] + rec[:u])
                        r = _np_act(recurrent_activation, x[u:2 * u] + rec[u:2 * u])
                        hh = _np_act(activation, x[2 * u:] + r * rec[2 * u:])
                    else:
                        zg = _np_act(recurrent_activation, x[:u] + hm @ rk[:, :u] + rb[:u])
                        r = _np_act(recurrent_activation, x[u:2 * u] + hm @ rk[:, u:2 * u] + rb[u:2 * u])
                        hh = _np_act(activation, x[2 * u:] + (r * hm) @ rk[:, 2 * u:] + rb[2 * u:])
                    h = zg * h + (1.0 - zg) * hh
                else:
                    h = _np_act(activation, x + hm @ rk)
            outs[b, k] = h
        h_last[b] = h
        if c is not None:
            c_last[b] = c
    outputs = outs if return_sequences else h_last
    return (outputs, h_last, c_last) if kind == "lstm" else (outputs, h_last)


def scan_inputs(kind, n, t, u, seed, mask=None):
    r = rng(seed)
    gates = GATES[kind]
    inputs = {"xproj": r.normal(size=(n, t, gates * u)), "h0": r.normal(scale=0.5, size=(n, u)),
              "rk": r.normal(scale=0.5, size=(u, gates * u)),
              "mask": np.ones((n, t)) if mask is None else np.asarray(mask, dtype=np.float64),
              "rmask": np.array(1.0)}
    if kind == "lstm":
        inputs["c0"] = r.normal(scale=0.5, size=(n, u))
    if kind == "gru":
        inputs["rb"] = r.normal(scale=0.5, size=(3 * u,))
    return inputs


SCAN_ARGS = {"lstm": ("xproj", "h0", "c0", "rk", "mask", "rmask"), "gru": ("xproj", "h0", "rk", "rb", "mask", "rmask"),
             "rnn": ("xproj", "h0", "rk", "mask", "rmask")}


def run_scan(kind, inputs, **attrs):
    attrs = {"units": inputs["h0"].shape[1], **attrs}
    return KERNELS[f"{kind}_scan"](CTX, attrs, *(inputs[a] for a in SCAN_ARGS[kind]))


MIXED_MASK = np.array([[1, 1, 1, 1, 0, 0], [0, 0, 1, 1, 1, 1], [1, 0, 1, 0, 0, 1], [0, 0, 0, 0, 0, 0]])

reference_cases = [
    ("lstm", {}), ("lstm", {"return_sequences": True, "go_backwards": True}),
    ("lstm", {"activation": "relu", "recurrent_activation": "hard_sigmoid", "return_sequences": True}),
    ("lstm", {"activation": "linear", "recurrent_activation": "tanh", "go_backwards": True}),
    ("lstm", {"activation": "sigmoid", "return_sequences": True}),
    ("gru", {}), ("gru", {"reset_after": False, "return_sequences": True}),
    ("gru", {"reset_after": False, "go_backwards": True, "activation": "relu",
             "recurrent_activation": "hard_sigmoid"}),
    ("gru", {"return_sequences": True, "go_backwards": True, "activation": "sigmoid",
             "recurrent_activation": "tanh"}),
    ("gru", {"activation": "linear", "return_sequences": True}),
    ("rnn", {}), ("rnn", {"activation": "relu", "return_sequences": True, "go_backwards": True}),
    ("rnn", {"activation": "sigmoid", "return_sequences": True}), ("rnn", {"activation": "linear"}),
]


@pytest.mark.parametrize("masked", [False, True], ids=["unmasked", "masked"])
@pytest.mark.parametrize("kind, attrs", reference_cases)
def test_matches_plain_numpy_loop(kind, attrs, masked):
    inputs = scan_inputs(kind, n=4, t=6, u=3, seed=4, mask=MIXED_MASK if masked else None)
    got = run_scan(kind, inputs, **attrs)
    ref = reference_scan(kind, inputs["xproj"], inputs["h0"], inputs["rk"], inputs["mask"], c0=inputs.get("c0"),
                         rb=inputs.get("rb"), **attrs)
    for k, expected in enumerate(ref):
        assert got[k].dtype == np.float64
        np.testing.assert_allclose(got[k], expected, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("kind", ["lstm", "gru", "rnn"])
def test_float32_stays_float32(kind):
    inputs = scan_inputs(kind, n=3, t=5, u=4, seed=5, mask=MIXED_MASK[:3, :5])
    ref = run_scan(kind, inputs, return_sequences=True)
    single = {k: v.astype(np.float32) for k, v in inputs.items()}
    ctx32 = KernelContext(np, np.random.default_rng(0), np.float32)
    attrs = {"units": 4, "return_sequences": True}
    got = KERNELS[f"{kind}_scan"](ctx32, attrs, *(single[a] for a in SCAN_ARGS[kind]))
    for g, r in zip(got, ref):
        assert g.dtype == np.float32
        np.testing.assert_allclose(g, r, rtol=1e-4, atol=1e-5)
    grads = run_layer(kind, layer_feeds(kind, 2, 4, 3, 4, seed=6), {"return_sequences": True},
                      dtype=np.float32)[0]
    assert all(v.dtype == np.float32 for k, v in grads.items() if k.startswith("grad:"))


def test_stable_sigmoid_at_extremes():
    inputs = scan_inputs("lstm", n=2, t=3, u=2, seed=7)
    inputs["xproj"] = inputs["xproj"] * 1e4
    with np.errstate(over="raise", invalid="raise", divide="raise"):
        got = run_scan("lstm", inputs, return_sequences=True)
    assert all(np.all(np.isfinite(g)) for g in got)


# ---------------------------------------------------------------------------------------------------
# Recurrent dropout: a fixed [N, u] mask on h where it meets the recurrent kernel, the same at every step


def dropout_mask(n, u, rate, seed):
    keep = rng(seed).random((n, u)) >= rate
    keep[0, 0], keep[0, 1] = False, True            # at least one unit dropped and one kept
    return keep / (1.0 - rate)


@pytest.mark.parametrize("masked", [False, True], ids=["unmasked", "masked"])
@pytest.mark.parametrize("kind, attrs", reference_cases)
def test_recurrent_mask_matches_plain_numpy_loop(kind, attrs, masked):
    """The kernels (the LSTM's default-activation path included) against the per-sample loop, which
    multiplies h by the same mask row at every step."""
    inputs = scan_inputs(kind, n=4, t=6, u=3, seed=12, mask=MIXED_MASK if masked else None)
    inputs["rmask"] = dropout_mask(4, 3, 0.4, seed=13)
    got = run_scan(kind, inputs, **attrs)
    ref = reference_scan(kind, inputs["xproj"], inputs["h0"], inputs["rk"], inputs["mask"], c0=inputs.get("c0"),
                         rb=inputs.get("rb"), rmask=inputs["rmask"], **attrs)
    plain = run_scan(kind, dict(inputs, rmask=np.array(1.0)), **attrs)
    for k, expected in enumerate(ref):
        np.testing.assert_allclose(got[k], expected, rtol=1e-10, atol=1e-12)
    assert not np.allclose(got[1], plain[1])          # the mask changed the result


def test_recurrent_mask_does_not_touch_the_carried_state():
    """A mask of zeros cuts the recurrent projection only: the LSTM still carries c, the GRU mixes in the
    unmasked h through z, and masked steps carry h unchanged."""
    mask = np.array([[1, 0, 1, 1], [0, 1, 1, 0]], dtype=np.float64)
    for kind, attrs in (("lstm", {}), ("gru", {}), ("gru", {"reset_after": False}), ("rnn", {})):
        inputs = scan_inputs(kind, n=2, t=4, u=3, seed=14, mask=mask)
        inputs["rmask"] = np.zeros((2, 3))
        got = run_scan(kind, inputs, return_sequences=True, **attrs)
        rk = np.zeros_like(inputs["rk"])    # the same step without any recurrent projection
        no_kernel = run_scan(kind, dict(inputs, rk=rk, rmask=np.array(1.0)), return_sequences=True, **attrs)
        for g, r in zip(got[:3], no_kernel[:3]):
            np.testing.assert_allclose(g, r, rtol=1e-12, atol=1e-14)
        np.testing.assert_array_equal(got[0][1, 0], inputs["h0"][1])     # a masked first step: h0 carried


@pytest.mark.parametrize("kind", ["lstm", "gru", "rnn"])
def test_all_ones_recurrent_mask_equals_no_mask(kind):
    for attrs in ({}, {"activation": "relu", "return_sequences": True}):
        inputs = scan_inputs(kind, n=3, t=5, u=2, seed=15)
        plain = run_scan(kind, inputs, **attrs)
        ones = run_scan(kind, dict(inputs, rmask=np.ones((3, 2))), **attrs)
        for p, o in zip(plain, ones):
            np.testing.assert_allclose(o, p, rtol=1e-13, atol=1e-15)


# ---------------------------------------------------------------------------------------------------
# Mask semantics


@pytest.mark.parametrize("kind", ["lstm", "gru", "rnn"])
@pytest.mark.parametrize("backwards", [False, True])
def test_padded_tail_equals_the_shorter_sequence(kind, backwards):
    """Padding steps (masked) at the end change neither h_last (nor c_last) nor the gradients; with
    go_backwards the padded steps come first and leave the initial state alone."""
    short = 3
    feeds = layer_feeds(kind, n=2, t=5, f=3, u=3, seed=8, mask=[[1, 1, 1, 0, 0]] * 2)
    feeds["x"][:, short:] = rng(9).normal(size=(2, 5 - short, 3)) * 10.0   # garbage in the padding
    attrs = {"go_backwards": backwards}
    padded, _ = run_layer(kind, feeds, attrs, loss_on=("h_last", "c_last"))
    short_feeds = dict(feeds, x=feeds["x"][:, :short], mask=feeds["mask"][:, :short])
    shorter, _ = run_layer(kind, short_feeds, attrs, loss_on=("h_last", "c_last"))
    for name in ("h_last", "c_last", "outputs", "grad:h0", "grad:kernel", "grad:recurrent_kernel", "grad:bias",
                 "grad:c0", "grad:recurrent_bias"):
        if name in shorter:
            np.testing.assert_allclose(padded[name], shorter[name], rtol=1e-12, atol=1e-13, err_msg=name)
    np.testing.assert_allclose(padded["grad:x"][:, :short], shorter["grad:x"], rtol=1e-12, atol=1e-13)
    assert not np.any(padded["grad:x"][:, short:])


@pytest.mark.parametrize("kind", ["lstm", "gru", "rnn"])
def test_masked_steps_carry_state_and_repeat_the_output(kind):
    mask = np.array([[0, 0, 1, 1, 0, 1], [1, 0, 0, 1, 1, 0]], dtype=np.float64)
    inputs = scan_inputs(kind, n=2, t=6, u=3, seed=10, mask=mask)
    outs, h_last = run_scan(kind, inputs, return_sequences=True)[:2]
    for b in range(2):
        prev = inputs["h0"][b]
        for t in range(6):
            if not mask[b, t]:
                np.testing.assert_array_equal(outs[b, t], prev)     # the carried h: h0 before any valid step
            prev = outs[b, t]
        np.testing.assert_array_equal(h_last[b], prev)
    # dropping the masked steps entirely gives the same valid outputs
    for b in range(2):
        keep = mask[b] > 0
        single = {k: (v[b:b + 1] if k in ("xproj", "h0", "c0", "mask") else v) for k, v in inputs.items()}
        single["xproj"] = single["xproj"][:, keep]
        single["mask"] = single["mask"][:, keep]
        compact = run_scan(kind, single, return_sequences=True)[0]
        np.testing.assert_allclose(outs[b, keep], compact[0], rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("kind", ["lstm", "gru", "rnn"])
def test_scalar_and_boolean_masks(kind):
    inputs = scan_inputs(kind, n=2, t=4, u=2, seed=11)
    full = run_scan(kind, inputs, return_sequences=True)
    for mask in (np.array(1.0), np.ones((2, 4), dtype=bool)):
        got = run_scan(kind, dict(inputs, mask=mask), return_sequences=True)
        for g, f in zip(got, full):
            np.testing.assert_array_equal(g, f)
    none = run_scan(kind, dict(inputs, mask=np.array(0.0)), return_sequences=True)
    np.testing.assert_array_equal(none[1], inputs["h0"])
    np.testing.assert_array_equal(none[0], np.repeat(inputs["h0"][:, None], 4, axis=1))


# ---------------------------------------------------------------------------------------------------
# Registry entries, shape rules and the gradient rules' contract


def test_registry_entries():
    for name in ("lstm_scan", "gru_scan", "rnn_scan"):
        op = get_op(name)
        assert op.fusion is Fusion.OPAQUE and op.differentiable
        grad = get_op(f"{name}_grad")
        assert grad.fusion is Fusion.OPAQUE and grad.grad is NOT_DIFFERENTIABLE


def _types(kind, u=3, n="N", t=5, width=None, mask=None, rmask=None):
    g = GATES[kind]
    x = TensorType((n, t, width or g * u), "f32")
    h = TensorType((n, u), "f32")
    k = TensorType((u, g * u), "f32")
    m = mask or TensorType((n, t), "f32")
    rm = rmask or TensorType((), "f32")
    if kind == "lstm":
        return [x, h, h, k, m, rm]
    if kind == "gru":
        return [x, h, k, TensorType((3 * u,), "f32"), m, rm]
    return [x, h, k, m, rm]


def test_shape_rules():
    lstm = get_op("lstm_scan").infer({"units": 3, "return_sequences": True}, _types("lstm"))
    assert [t.shape for t in lstm] == [("N", 5, 3), ("N", 3), ("N", 3), (5, "N", 3), (5, "N", 3), (5, "N", 12)]
    gru = get_op("gru_scan").infer({"units": 3}, _types("gru", mask=TensorType((), "f32")))
    assert [t.shape for t in gru] == [("N", 3), ("N", 3), (5, "N", 3), (5, "N", 9), (5, "N", 3)]
    rnn = get_op("rnn_scan").infer({"units": 3, "go_backwards": True}, _types("rnn", mask=TensorType(("N", 5), "bool")))
    assert [t.shape for t in rnn] == [("N", 3), ("N", 3), (5, "N", 3)]
    assert all(t.dtype == "f32" for t in lstm + gru + rnn)


@pytest.mark.parametrize("op, attrs, types, message", [
    ("lstm_scan", {}, _types("lstm"), "units"),
    ("lstm_scan", {"units": 3, "activation": "softmax"}, _types("lstm"), "activation must be one of"),
    ("lstm_scan", {"units": 3, "recurrent_activation": "relu"}, _types("lstm"), "recurrent_activation"),
    ("lstm_scan", {"units": 3, "go_backwards": 1}, _types("lstm"), "go_backwards"),
    ("lstm_scan", {"units": 3}, _types("lstm", width=9), "xproj must have shape"),
    ("lstm_scan", {"units": 2}, _types("lstm"), "xproj must have shape"),
    ("gru_scan", {"units": 3}, _types("gru")[:3] + [TensorType((2, 9), "f32")] + _types("gru")[4:],
     "recurrent_bias"),
    ("gru_scan", {"units": 3, "reset_after": "yes"}, _types("gru"), "reset_after"),
    ("rnn_scan", {"units": 3}, _types("rnn", mask=TensorType(("N", 4), "f32")), "mask must have shape"),
    ("rnn_scan", {"units": 3}, _types("rnn", mask=TensorType(("N", 5), "i32")), "mask must be float or bool"),
    ("rnn_scan", {"units": 3}, [TensorType(("N", 5, 3), "i32")] + _types("rnn")[1:], "float"),
    ("lstm_scan", {"units": 3}, _types("lstm", rmask=TensorType(("N", 4), "f32")), "recurrent_mask must have shape"),
    ("gru_scan", {"units": 3}, _types("gru", rmask=TensorType((5, "N", 3), "f32")), "recurrent_mask must have shape"),
    ("rnn_scan", {"units": 3}, _types("rnn", rmask=TensorType(("N", 3), "bool")), "recurrent_mask must be a float"),
])
def test_shape_rule_errors(op, attrs, types, message):
    with pytest.raises(ShapeError, match=message):
        get_op(op).infer(attrs, types)


def test_saved_outputs_carry_no_gradient():
    g = Graph("saved")
    b = GraphBuilder(g)
    ins = [b.add_input(f"i{k}", t) for k, t in enumerate(_types("rnn", n=2))]
    outputs, h_last, hs = b.emit("rnn_scan", ins, {"units": 3})
    g.outputs["loss"] = b.emit1("reduce_sum", [hs], {"axes": None})
    with pytest.raises(NndError, match="saved outputs"):
        differentiate(g, "loss", ["i0"])


def test_one_grad_node_per_scan():
    graph = differentiate(build_layer("gru", 2, 3, 2, 2, {}), "loss",
                          ["x", "kernel", "recurrent_kernel", "recurrent_bias", "h0"])
    ops = [node.op for node in graph.nodes]
    assert ops.count("gru_scan") == 1 and ops.count("gru_scan_grad") == 1
