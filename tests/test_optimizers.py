import math

import numpy as np
import pytest

from nnd.compiler.diagnostics import NndError
from nnd.runtime.optimizers import make_optimizer

SHAPES = {"dense.w": (4, 3), "dense.b": (3,), "conv.k": (2, 2, 1, 2)}
STEPS = 6


def _params(dtype=np.float64, seed=0):
    rng = np.random.default_rng(seed)
    return {k: rng.normal(size=s).astype(dtype) for k, s in SHAPES.items()}


def _grads(steps=STEPS, dtype=np.float64, seed=1):
    rng = np.random.default_rng(seed)
    return [{k: rng.normal(size=s).astype(dtype) for k, s in SHAPES.items()} for _ in range(steps)]


def _run_nnd(name, grads, params=None, **hyper):
    opt = make_optimizer(name, **hyper)
    params = opt.bind(params if params is not None else _params())
    for g in grads:
        opt.step(g)
    return {k: np.array(v) for k, v in params.items()}, opt


# ----------------------------------------------------------------------------- torch references

TORCH_CASES = [
    # (nnd name, nnd hyper, torch class, torch kwargs). Epsilons are 0 where Keras and torch place epsilon
    # differently; the Keras placement is checked against hand-written references below.
    ("sgd", dict(lr=0.1), "SGD", dict(lr=0.1)),
    ("sgd", dict(lr=0.05, momentum=0.9), "SGD", dict(lr=0.05, momentum=0.9)),
    ("sgd", dict(lr=0.05, momentum=0.9, nesterov=True), "SGD", dict(lr=0.05, momentum=0.9, nesterov=True)),
    ("sgd", dict(lr=0.1, weight_decay=0.01), "SGD", dict(lr=0.1, weight_decay=0.01)),
    ("adam", dict(lr=0.01, epsilon=0.0), "Adam", dict(lr=0.01, eps=0.0)),
    ("adam", dict(lr=0.01, beta_1=0.8, beta_2=0.99, epsilon=0.0, amsgrad=True), "Adam",
     dict(lr=0.01, betas=(0.8, 0.99), eps=0.0, amsgrad=True)),
    ("adamw", dict(lr=0.01, epsilon=0.0, weight_decay=0.1), "AdamW", dict(lr=0.01, eps=0.0, weight_decay=0.1)),
    ("rmsprop", dict(lr=0.01, rho=0.9, epsilon=0.0), "RMSprop", dict(lr=0.01, alpha=0.9, eps=0.0)),
    ("rmsprop", dict(lr=0.01, momentum=0.5, centered=True, epsilon=0.0), "RMSprop",
     dict(lr=0.01, alpha=0.9, eps=0.0, momentum=0.5, centered=True)),
    ("adagrad", dict(lr=0.1, initial_accumulator_value=0.1, epsilon=0.0), "Adagrad",
     dict(lr=0.1, initial_accumulator_value=0.1, eps=0.0)),
]


@pytest.mark.parametrize("name,hyper,tname,tkw", TORCH_CASES,
                         ids=[f"{c[0]}-{c[2]}-{i}" for i, c in enumerate(TORCH_CASES)])
def test_matches_torch(name, hyper, tname, tkw):
    torch = pytest.importorskip("torch")
    grads = _grads()
    tparams = {k: torch.tensor(v) for k, v in _params().items()}
    for t in tparams.values():
        t.requires_grad_(True)
    topt = getattr(torch.optim, tname)(list(tparams.values()), **tkw)
    for g in grads:
        for k, t in tparams.items():
            t.grad = torch.tensor(g[k])
        topt.step()
    got, _ = _run_nnd(name, grads, **hyper)
    for k in SHAPES:
        np.testing.assert_allclose(got[k], tparams[k].detach().numpy(), rtol=1e-10, atol=1e-12, err_msg=k)


# ----------------------------------------------------------------------------- hand-written Keras references

def _keras_adam(p, grads, lr=0.001, b1=0.9, b2=0.999, eps=1e-7, amsgrad=False, wd=0.0):
    p = {k: v.copy() for k, v in p.items()}
    m = {k: np.zeros_like(v) for k, v in p.items()}
    v_ = {k: np.zeros_like(v) for k, v in p.items()}
    vh = {k: np.zeros_like(v) for k, v in p.items()}
    for t, g in enumerate(grads, start=1):
        alpha = lr * math.sqrt(1 - b2 ** t) / (1 - b1 ** t)
        for k in p:
            p[k] = p[k] - p[k] * wd * lr
            m[k] = m[k] + (g[k] - m[k]) * (1 - b1)
            v_[k] = v_[k] + (g[k] ** 2 - v_[k]) * (1 - b2)
            vv = v_[k]
            if amsgrad:
                vh[k] = np.maximum(vh[k], v_[k])
                vv = vh[k]
            p[k] = p[k] - alpha * m[k] / (np.sqrt(vv) + eps)
    return p


def _keras_rmsprop(p, grads, lr=0.001, rho=0.9, momentum=0.0, eps=1e-7, centered=False):
    p = {k: v.copy() for k, v in p.items()}
    vel = {k: np.zeros_like(v) for k, v in p.items()}
    mom = {k: np.zeros_like(v) for k, v in p.items()}
    avg = {k: np.zeros_like(v) for k, v in p.items()}
    for g in grads:
        for k in p:
            vel[k] = rho * vel[k] + (1 - rho) * g[k] ** 2
            if centered:
                avg[k] = rho * avg[k] + (1 - rho) * g[k]
                den = vel[k] - avg[k] ** 2 + eps
            else:
                den = vel[k] + eps
            inc = lr * g[k] / np.sqrt(den)
            if momentum > 0:
                mom[k] = momentum * mom[k] + inc
                p[k] = p[k] - mom[k]
            else:
                p[k] = p[k] - inc
    return p


def _keras_adagrad(p, grads, lr=0.001, init=0.1, eps=1e-7):
    p = {k: v.copy() for k, v in p.items()}
    acc = {k: np.full_like(v, init) for k, v in p.items()}
    for g in grads:
        for k in p:
            acc[k] = acc[k] + g[k] ** 2
            p[k] = p[k] - lr * g[k] / np.sqrt(acc[k] + eps)
    return p


def _keras_sgd(p, grads, lr=0.01, momentum=0.0, nesterov=False, wd=0.0):
    p = {k: v.copy() for k, v in p.items()}
    m = {k: np.zeros_like(v) for k, v in p.items()}
    for g in grads:
        for k in p:
            p[k] = p[k] - p[k] * wd * lr
            if momentum:
                m[k] = m[k] * momentum - g[k] * lr
                p[k] = p[k] + (m[k] * momentum - g[k] * lr if nesterov else m[k])
            else:
                p[k] = p[k] - g[k] * lr
    return p


KERAS_CASES = [
    ("adam", {}, lambda p, g: _keras_adam(p, g)),
    ("adam", dict(lr=0.01, amsgrad=True, epsilon=1e-3),
     lambda p, g: _keras_adam(p, g, lr=0.01, amsgrad=True, eps=1e-3)),
    ("adamw", {}, lambda p, g: _keras_adam(p, g, wd=0.004)),
    ("rmsprop", {}, lambda p, g: _keras_rmsprop(p, g)),
    ("rmsprop", dict(momentum=0.9, centered=True, epsilon=1e-2),
     lambda p, g: _keras_rmsprop(p, g, momentum=0.9, centered=True, eps=1e-2)),
    ("adagrad", {}, lambda p, g: _keras_adagrad(p, g)),
    ("adagrad", dict(epsilon=0.5, initial_accumulator_value=0.0), lambda p, g: _keras_adagrad(p, g, init=0.0, eps=0.5)),
    ("sgd", {}, lambda p, g: _keras_sgd(p, g)),
    ("sgd", dict(momentum=0.9, nesterov=True, weight_decay=0.1),
     lambda p, g: _keras_sgd(p, g, momentum=0.9, nesterov=True, wd=0.1)),
]


@pytest.mark.parametrize("name,hyper,ref", KERAS_CASES, ids=[f"{c[0]}-{i}" for i, c in enumerate(KERAS_CASES)])
def test_matches_keras_formulas(name, hyper, ref):
    grads = [{k: v * 1e-3 for k, v in g.items()} for g in _grads()]  # small grads make epsilon matter
    got, _ = _run_nnd(name, grads, **hyper)
    want = ref(_params(), grads)
    for k in SHAPES:
        np.testing.assert_allclose(got[k], want[k], rtol=1e-10, atol=1e-13, err_msg=k)


def test_keras_defaults():
    assert make_optimizer("sgd").lr == 0.01
    adam = make_optimizer("adam")
    assert (adam.lr, adam.beta_1, adam.beta_2, adam.epsilon, adam.amsgrad) == (0.001, 0.9, 0.999, 1e-7, False)
    assert make_optimizer("adamw").weight_decay == 0.004
    rms = make_optimizer("rmsprop")
    assert (rms.rho, rms.momentum, rms.epsilon, rms.centered) == (0.9, 0.0, 1e-7, False)
    ada = make_optimizer("Adagrad")
    assert (ada.initial_accumulator_value, ada.epsilon) == (0.1, 1e-7)


def test_float32_step_keeps_dtype_and_views():
    params = _params(np.float32)
    opt = make_optimizer("adam", learning_rate=0.01)
    bound = opt.bind(params)
    assert bound is params
    for v in params.values():
        assert v.dtype == np.float32 and np.shares_memory(v, opt.flat_params)
    before = {k: v.copy() for k, v in params.items()}
    opt.step(_grads(1, np.float32)[0])
    assert all(not np.array_equal(before[k], params[k]) for k in params)
    assert opt.flat_params.dtype == np.float32


def test_grad_views_skip_copy():
    grads = _grads(3)
    ref, _ = _run_nnd("rmsprop", grads, lr=0.01)
    opt = make_optimizer("rmsprop", lr=0.01)
    params = opt.bind(_params())
    for g in grads:
        views = opt.grad_views()
        for k, v in views.items():
            v[...] = g[k]
        opt.step(views)
    for k in SHAPES:
        np.testing.assert_allclose(params[k], ref[k], rtol=1e-12)


# ----------------------------------------------------------------------------- clipping

def _sgd_delta(grads, **clip):
    opt = make_optimizer("sgd", lr=1.0, **clip)
    params = opt.bind({k: np.zeros(s) for k, s in SHAPES.items()})
    opt.step(grads)
    return {k: -params[k] for k in SHAPES}


def test_clipnorm_is_per_parameter():
    g = {k: np.full(s, 3.0) for k, s in SHAPES.items()}
    g["dense.b"] = np.full(3, 0.01)  # small norm: untouched
    d = _sgd_delta(g, clipnorm=1.0)
    for k in SHAPES:
        norm = np.linalg.norm(g[k])
        want = g[k] * (1.0 / max(norm, 1.0))
        np.testing.assert_allclose(d[k], want, rtol=1e-12)
    assert np.isclose(np.linalg.norm(d["dense.w"]), 1.0)


def test_global_clipnorm():
    g = _grads(1)[0]
    total = math.sqrt(sum(float(np.sum(v ** 2)) for v in g.values()))
    d = _sgd_delta(g, global_clipnorm=1.0)
    for k in SHAPES:
        np.testing.assert_allclose(d[k], g[k] / total, rtol=1e-12)
    d = _sgd_delta(g, global_clipnorm=total * 2)
    for k in SHAPES:
        np.testing.assert_allclose(d[k], g[k], rtol=1e-12)


def test_clipvalue():
    g = _grads(1)[0]
    d = _sgd_delta(g, clipvalue=0.5)
    for k in SHAPES:
        np.testing.assert_allclose(d[k], np.clip(g[k], -0.5, 0.5))


def test_clip_options_exclusive_and_positive():
    with pytest.raises(NndError, match="only one of clipnorm"):
        make_optimizer("adam", clipnorm=1.0, global_clipnorm=1.0)
    with pytest.raises(NndError, match="clipvalue must be a positive number"):
        make_optimizer("adam", clipvalue=-1)


# ----------------------------------------------------------------------------- state, lr, errors

@pytest.mark.parametrize("name,hyper", [("adam", dict(amsgrad=True)), ("sgd", dict(momentum=0.9)),
                                        ("rmsprop", dict(momentum=0.5, centered=True)), ("adagrad", {})])
def test_state_round_trip(name, hyper):
    grads = _grads(5)
    straight, _ = _run_nnd(name, grads, **hyper)
    first, opt = _run_nnd(name, grads[:3], **hyper)
    state = opt.state_dict()
    assert int(state["iterations"]) == 3
    # Load into a fresh optimizer, both after and before binding.
    for load_first in (False, True):
        opt2 = make_optimizer(name, **hyper)
        if load_first:
            opt2.load_state_dict(state)
            params = opt2.bind({k: v.copy() for k, v in first.items()})
        else:
            params = opt2.bind({k: v.copy() for k, v in first.items()})
            opt2.load_state_dict(state)
        assert opt2.iterations == 3
        for g in grads[3:]:
            opt2.step(g)
        for k in SHAPES:
            np.testing.assert_array_equal(params[k], straight[k])


def test_state_mismatch_errors():
    _, opt = _run_nnd("adam", _grads(1))
    state = opt.state_dict()
    other = make_optimizer("sgd", momentum=0.9)
    other.bind(_params())
    with pytest.raises(NndError, match="missing 'momentum/"):
        other.load_state_dict(state)
    bad = dict(state)
    bad["m/dense.b"] = np.zeros(7)
    fresh = make_optimizer("adam")
    fresh.bind(_params())
    with pytest.raises(NndError, match=r"'m/dense.b' has shape \(7,\) but the parameter has shape \(3,\)"):
        fresh.load_state_dict(bad)


def test_lr_settable_and_schedule():
    opt = make_optimizer("sgd", lr=1.0)
    params = opt.bind({"w": np.zeros(2)})
    opt.lr = 0.5
    opt.step({"w": np.ones(2)})
    np.testing.assert_allclose(params["w"], -0.5)
    opt.lr = lambda step: 0.1 * (step + 1)
    assert opt.lr == pytest.approx(0.2)  # one step taken
    opt.step({"w": np.ones(2)})
    np.testing.assert_allclose(params["w"], -0.7)
    with pytest.raises(NndError, match="learning rate must be a finite number"):
        opt.lr = float("nan")


def test_unknown_name_and_hyperparameter():
    with pytest.raises(NndError, match="unknown optimizer 'adamm'; did you mean 'adam'"):
        make_optimizer("adamm")
    with pytest.raises(NndError) as e:
        make_optimizer("rmsprop", beta_1=0.9)
    assert "unknown hyperparameter 'beta_1' for optimizer 'rmsprop'" in str(e.value)
    assert "valid: lr, rho, momentum, epsilon, centered" in str(e.value)
    with pytest.raises(NndError, match="did you mean 'momentum'"):
        make_optimizer("sgd", momentun=0.9)
    with pytest.raises(NndError, match="beta_2 must be in"):
        make_optimizer("adam", beta_2=1.0)
    with pytest.raises(NndError, match="nesterov must be true or false"):
        make_optimizer("sgd", nesterov="yes")


def test_step_errors():
    opt = make_optimizer("sgd")
    with pytest.raises(NndError, match="before bind"):
        opt.step({})
    opt.bind(_params())
    g = _grads(1)[0]
    with pytest.raises(NndError, match="no gradient for parameter 'dense.w'"):
        opt.step({k: v for k, v in g.items() if k != "dense.w"})
    with pytest.raises(NndError, match=r"gradient of 'dense.b' has shape \(4,\) but the parameter has shape \(3,\)"):
        opt.step({**g, "dense.b": np.zeros(4)})
    with pytest.raises(NndError, match="unknown parameter 'dense.bb'; did you mean 'dense.b'"):
        opt.step({**g, "dense.bb": np.zeros(3)})
    with pytest.raises(NndError, match="share one float dtype"):
        make_optimizer("sgd").bind({"a": np.zeros(2, np.float32), "b": np.zeros(2)})
