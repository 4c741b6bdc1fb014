"""Gradient-check cases, keyed by op name: every differentiable op in the registry needs an entry
(tests/test_ops_registry.py fails otherwise). To cover a new op, add

    GRADCHECK_CASES["my_op"] = [GradCase(inputs=[("N", 3), (3,)], attrs={...}), ...]

Inputs are shapes (float64, 'N' allowed), TensorTypes (for integer inputs) or concrete arrays; `gen`
draws the values (default: ±[0.1, 1], clear of kinks at 0). Keep inputs small: every element costs two
forward runs.
"""
from __future__ import annotations

import numpy as np

from gradcheck import GradCase, away_from_zero, positive
from nnd.compiler.tensor_type import TensorType

N = "N"


def labels(classes: int):
    """Integer labels for the inputs typed as integers, `away_from_zero` for the others."""
    def gen(rng, shape, index):
        if index == 1:
            return rng.integers(0, classes, shape)
        return away_from_zero(rng, shape, index)
    return gen


def per_input(*gens):
    """A different generator for each input, by position."""
    def gen(rng, shape, index):
        return gens[index](rng, shape, index)
    return gen


def distinct(rng, shape, index):
    """Values at least 0.05 apart, so a maximum is never tied within a finite-difference step."""
    size = int(np.prod(shape))
    return (rng.permutation(size) - size / 2).reshape(shape) * 0.05 + 0.01


def probabilities(rng, shape, index):
    p = rng.uniform(0.1, 1.0, shape)
    return p / p.sum(axis=-1, keepdims=True)


def unit_interval(rng, shape, index):
    return rng.uniform(0.05, 0.95, shape)


def maximum_gen(rng, shape, index):
    """Two disjoint grids for maximum's two inputs: never within 0.2 of each other."""
    grid = np.array([-0.9, -0.5, -0.1, 0.3, 0.7]) + (0.2 if index == 1 else 0.0)
    return rng.choice(grid, shape)


def huber_gen(rng, shape, index):
    if index == 1:
        return np.zeros(shape)
    return rng.choice(np.array([-2.5, -1.7, -0.6, -0.2, 0.3, 0.7, 1.6, 2.2]), shape)


_SMALL = [("N", 3)]

GRADCHECK_CASES: dict[str, list[GradCase]] = {
    # unary elementwise
    "neg": [GradCase(_SMALL)],
    "relu": [GradCase(_SMALL)],
    "leaky_relu": [GradCase(_SMALL, {"alpha": 0.1}), GradCase(_SMALL)],
    "elu": [GradCase(_SMALL, {"alpha": 0.7}), GradCase(_SMALL)],
    "gelu": [GradCase([(2, 4)], {"approximate": False}, gen=lambda r, s, i: r.uniform(-3, 3, s)),
             GradCase([(2, 4)], {"approximate": True}, gen=lambda r, s, i: r.uniform(-3, 3, s))],
    "sigmoid": [GradCase([(2, 4)], gen=lambda r, s, i: r.uniform(-4, 4, s))],
    "tanh": [GradCase(_SMALL)],
    "swish": [GradCase([(2, 4)], gen=lambda r, s, i: r.uniform(-4, 4, s))],
    "softplus": [GradCase([(2, 4)], gen=lambda r, s, i: r.uniform(-4, 4, s))],
    "exp": [GradCase(_SMALL)],
    "log": [GradCase(_SMALL, gen=positive)],
    "sqrt": [GradCase(_SMALL, gen=positive)],
    "square": [GradCase(_SMALL)],
    "abs": [GradCase(_SMALL)],
    # relu_grad(a, b) = a * (b > 0): the thresholded relu's forward op; b is kept away from 0
    "relu_grad": [GradCase([("N", 3), ("N", 3)])],
    # binary, with broadcasting reduced by autodiff
    "add": [GradCase([("N", 3), (3,)]), GradCase([(2, 1, 3), (4, 1)])],
    "sub": [GradCase([("N", 3), ("N", 1)]), GradCase([(), (2, 3)])],
    "mul": [GradCase([(2, 3), ()]), GradCase([("N", 3), (1, 3)])],
    "div": [GradCase([("N", 3), (3,)], gen=per_input(away_from_zero, positive)),
            GradCase([(), (2, 2)], gen=per_input(away_from_zero, positive))],
    "maximum": [GradCase([("N", 3), ("N", 3)], gen=maximum_gen), GradCase([(2, 3), (3,)], gen=maximum_gen)],
    # softmax
    "softmax": [GradCase([("N", 4)]), GradCase([(3, 2, 2)], {"axis": 1})],
    "log_softmax": [GradCase([("N", 4)]), GradCase([(3, 2, 2)], {"axis": 0})],
    # matmul
    "matmul": [GradCase([("N", 3), (3, 2)]), GradCase([(2, 2, 3), (3, 2)]), GradCase([(3,), (3, 2)])],
    "matmul_tn": [GradCase([("N", 3), ("N", 2)]), GradCase([(2, 2, 3), (2, 2, 2)])],
    "batch_matmul": [GradCase([("N", 3, 2), ("N", 2, 4)]),
                     GradCase([("N", 3, 2), ("N", 4, 2)], {"transpose_b": True}),
                     GradCase([(2, 2, 3), (2, 2, 4)], {"transpose_a": True}),
                     GradCase([(2, 1, 2, 3), (2, 1, 4, 2)], {"transpose_a": True, "transpose_b": True}),
                     GradCase([(3, 2), (2, 2)])],
    # reductions
    "reduce_sum": [GradCase([("N", 3)], {"axes": (1,)}), GradCase([(2, 3, 2)], {"axes": (0, 2), "keepdims": True}),
                   GradCase([("N", 3)], {"axes": None})],
    "reduce_mean": [GradCase([("N", 3)], {"axes": (0,)}), GradCase([(2, 3, 2)], {"axes": (-1,), "keepdims": True}),
                    GradCase([("N", 2, 2)], {"axes": None})],
    "reduce_max": [GradCase([("N", 4)], {"axes": (1,)}, gen=distinct),
                   GradCase([(2, 3, 2)], {"axes": (0, 2), "keepdims": True}, gen=distinct),
                   GradCase([(3, 2)], {"axes": None}, gen=distinct)],
    "broadcast_like": [GradCase([("N",), ("N", 3)], {"axes": (1,)}),
                       GradCase([(1, 3, 1), (2, 3, 2)], {"axes": (0, 2), "keepdims": True, "mean": True})],
    # data movement
    "reshape": [GradCase([("N", 2, 3)], {"shape": ("N", 6)}), GradCase([(2, 3)], {"shape": (3, -1)})],
    "transpose": [GradCase([(2, 3, 2)], {"perm": (1, 2, 0)}), GradCase([(2, 3)])],
    "pad": [GradCase([("N", 3)], {"pads": ((0, 0), (1, 2)), "value": 0.5})],
    "crop": [GradCase([("N", 5)], {"pads": ((0, 0), (1, 2))})],
    "concat": [GradCase([("N", 2), ("N", 1), ("N", 3)], {"axis": 1}), GradCase([(1, 2), (2, 2)], {"axis": 0})],
    "slice": [GradCase([("N", 4)], {"axis": 1, "start": 1, "stop": 3}),
              GradCase([(3, 2)], {"axis": 0, "start": -2, "stop": None})],
    # losses (targets and labels are constants: only the predictions are checked)
    "sparse_softmax_cross_entropy": [GradCase([("N", 4), TensorType(("N",), "i64")], gen=labels(4), batch=3),
                                     GradCase([(2, 2, 3), TensorType((2, 2), "i32")], gen=labels(3))],
    "softmax_cross_entropy": [GradCase([("N", 4), ("N", 4)], gen=per_input(away_from_zero, probabilities), wrt=(0,)),
                              GradCase([(3, 2), (3, 2)], {"axis": 0}, gen=per_input(away_from_zero, probabilities),
                                       wrt=(0,))],
    "sigmoid_cross_entropy": [GradCase([("N", 3), ("N", 3)], gen=per_input(lambda r, s, i: r.uniform(-4, 4, s),
                                                                           unit_interval), wrt=(0,))],
    "binary_crossentropy": [GradCase([("N", 3), ("N", 3)], gen=unit_interval, wrt=(0,)),
                            GradCase([("N", 3), ("N", 1)], gen=unit_interval, wrt=(0,))],
    "categorical_crossentropy": [GradCase([("N", 4), ("N", 4)], gen=per_input(positive, probabilities), wrt=(0,))],
    "sparse_categorical_crossentropy": [
        GradCase([("N", 4), TensorType(("N",), "i64")],
                 gen=per_input(unit_interval, lambda r, s, i: r.integers(0, 4, s)))],
    "huber": [GradCase([("N", 4), ("N", 4)], {"delta": 1.0}, gen=huber_gen, wrt=(0,)),
              GradCase([(2, 4), (2, 4)], {"delta": 0.5}, gen=huber_gen, wrt=(0,))],
}


# --------------------------------------------------------------------- conv, pooling, batch normalization

def _bn_gen(rng, shape, index):
    if index == 4:                         # moving variance
        return rng.uniform(0.5, 1.5, shape)
    return rng.uniform(-1.0, 1.0, shape)


GRADCHECK_CASES.update({
    "conv2d": [GradCase([(1, 4, 4, 2), (3, 3, 2, 2)],
                        {"strides": (1, 1), "padding": ((1, 1), (1, 1)), "dilation": (1, 1)}),
               GradCase([(2, 5, 4, 1), (2, 2, 1, 2)],
                        {"strides": (2, 1), "padding": ((0, 1), (0, 0)), "dilation": (1, 2)})],
    # the transposed convolution; in the first, the convolution never reads the last of the 5 rows
    "conv2d_grad_input": [GradCase([(2, 2, 4, 2), (3, 2, 3, 2)],
                                   {"strides": (2, 1), "padding": ((1, 0), (0, 1)), "dilation": (1, 1),
                                    "input_hw": (5, 4)}),
                          GradCase([(1, 3, 3, 1), (2, 2, 2, 1)],
                                   {"strides": (1, 1), "padding": ((0, 0), (0, 0)), "dilation": (2, 1),
                                    "input_hw": (5, 4)})],
    "maxpool2d": [GradCase([(1, 4, 4, 2)], {"pool": (2, 2), "strides": (2, 2)}, gen=distinct),
                  GradCase([(1, 5, 5, 1)], {"pool": (3, 3), "strides": (2, 2), "padding": ((1, 1), (1, 1))},
                           gen=distinct)],
    "avgpool2d": [GradCase([(1, 4, 4, 2)], {"pool": (2, 2), "strides": (2, 2)}),
                  GradCase([(1, 5, 5, 1)], {"pool": (3, 3), "strides": (2, 2), "padding": ((1, 1), (1, 1)),
                                            "count_pad": False})],
    "batchnorm_train": [GradCase([(4, 2, 3), (3,), (3,)], {"epsilon": 1e-3}, outputs=(0,),
                                 gen=lambda r, s, i: r.uniform(-1.0, 1.0, s))],
    "batchnorm_infer": [GradCase([(2, 2, 3), (3,), (3,), (3,), (3,)], {"epsilon": 1e-3}, wrt=(0, 1, 2),
                                 gen=_bn_gen)],
})


# ------------------------------------------------------------------------------------ recurrent scans
# Inputs: xproj[N, T, G*u], initial state(s), recurrent kernel (GRU: + recurrent bias), mask[N, T] and the
# recurrent dropout mask (scalar 1, or [N, u] of 0 and 1/(1-rate)); the masks are constants and the saved
# outputs (hs, cs, gates, aux) carry no gradient, so none of them is checked.

def _scan_gen(rng, shape, index):
    """Values in [-0.8, 0.8]: the recurrence stays in the activations' curved range."""
    return rng.uniform(-0.8, 0.8, shape)


_PAD_TAIL = np.array([[1.0, 1.0, 1.0, 0.0], [1.0, 1.0, 0.0, 0.0]])     # padded trailing steps
_PAD_LEAD = np.array([[0.0, 1.0, 1.0, 1.0], [0.0, 0.0, 1.0, 0.0]])     # leading and inner masked steps
_NO_MASK = np.ones((2, 4))
_NO_DROP = np.array(1.0)
_DROP = np.array([[2.5, 0.0], [0.0, 2.5]])                             # rate 0.6, a unit dropped per row
_DROP_SOME = np.array([[2.5, 2.5], [0.0, 2.5]])                        # one row keeps every unit


def _lstm_case(mask, u=2, drop=_NO_DROP, **attrs):
    attrs = {"units": u, **attrs}
    return GradCase([(2, 4, 4 * u), (2, u), (2, u), (u, 4 * u), mask, drop], attrs, gen=_scan_gen,
                    wrt=(0, 1, 2, 3), outputs=(0, 1, 2))


def _gru_case(mask, u=2, drop=_NO_DROP, **attrs):
    attrs = {"units": u, **attrs}
    return GradCase([(2, 4, 3 * u), (2, u), (u, 3 * u), (3 * u,), mask, drop], attrs, gen=_scan_gen,
                    wrt=(0, 1, 2, 3), outputs=(0, 1))


def _rnn_case(mask, u=2, drop=_NO_DROP, **attrs):
    attrs = {"units": u, **attrs}
    return GradCase([(2, 4, u), (2, u), (u, u), mask, drop], attrs, gen=_scan_gen, wrt=(0, 1, 2),
                    outputs=(0, 1))


GRADCHECK_CASES.update({
    "lstm_scan": [
        _lstm_case(_NO_MASK),
        _lstm_case(_NO_MASK, return_sequences=True),
        _lstm_case(_PAD_TAIL, return_sequences=True, go_backwards=True),
        _lstm_case(_PAD_LEAD, activation="relu", recurrent_activation="hard_sigmoid"),
        _lstm_case(_PAD_LEAD, return_sequences=True, activation="sigmoid", recurrent_activation="tanh"),
        _lstm_case(_PAD_TAIL, activation="linear", go_backwards=True),
        _lstm_case(_NO_MASK, drop=_DROP),                                   # the default-activation path
        _lstm_case(_NO_MASK, drop=_DROP_SOME, return_sequences=True, go_backwards=True),
        _lstm_case(_PAD_LEAD, drop=_DROP, return_sequences=True, activation="relu",
                   recurrent_activation="hard_sigmoid"),
    ],
    "gru_scan": [
        _gru_case(_NO_MASK),
        _gru_case(_NO_MASK, return_sequences=True, reset_after=False),
        _gru_case(_PAD_TAIL, return_sequences=True, go_backwards=True),
        _gru_case(_PAD_LEAD, reset_after=False, go_backwards=True, activation="relu",
                  recurrent_activation="hard_sigmoid"),
        _gru_case(_PAD_LEAD, return_sequences=True, activation="sigmoid", recurrent_activation="tanh"),
        _gru_case(_PAD_TAIL, reset_after=False, return_sequences=True, activation="linear"),
        _gru_case(_NO_MASK, drop=_DROP, return_sequences=True),
        _gru_case(_NO_MASK, drop=_DROP_SOME, reset_after=False),
        _gru_case(_PAD_LEAD, drop=_DROP, reset_after=False, return_sequences=True, go_backwards=True),
        _gru_case(_PAD_TAIL, drop=_DROP_SOME, go_backwards=True, recurrent_activation="tanh"),
    ],
    "rnn_scan": [
        _rnn_case(_NO_MASK),
        _rnn_case(_NO_MASK, return_sequences=True, go_backwards=True),
        _rnn_case(_PAD_TAIL, return_sequences=True, activation="relu"),
        _rnn_case(_PAD_LEAD, go_backwards=True, activation="sigmoid"),
        _rnn_case(_PAD_LEAD, return_sequences=True, activation="linear"),
        _rnn_case(_NO_MASK, drop=_DROP, return_sequences=True),
        _rnn_case(_PAD_TAIL, drop=_DROP_SOME, go_backwards=True, activation="relu"),
    ],
})


# Sequence helper ops (nnd.compiler.ops.sequence).
GRADCHECK_CASES.update({
    "merge_batch": [GradCase([(2, 3, 2)])],
    "split_batch": [GradCase([(6, 2)], {"batch": 2, "steps": 3})],
    "flip": [GradCase([(N, 3, 2)], {"axis": 1}), GradCase([(2, 4)], {"axis": -1})],
    "tile_steps": [GradCase([(N, 3)], {"steps": 4})],
    "batch_zeros": [GradCase([(N, 3)], {"shape": (2,)}, wrt=())],
})
GRADCHECK_CASES.update({
    "gather_rows": [GradCase([TensorType((N, 5), "i64"), (4, 3)],
                             gen=per_input(lambda r, s, i: r.integers(0, 4, s), away_from_zero), wrt=(1,))],
    "nonzero_mask": [GradCase([(N, 3)], wrt=())],
    "attention_bias": [GradCase([(N, 3, 4)], {"steps": (3, 4), "causal": True}, wrt=()),
                       GradCase([(N, 1, 4)], {"steps": (3, 4)}, wrt=())],
})


# ------------------------------------------------------------------------------- depthwise convolution

GRADCHECK_CASES.update({
    "depthwise_conv2d": [GradCase([(2, 4, 5, 3), (3, 2, 3, 1)],
                                  {"strides": (1, 1), "padding": ((1, 1), (0, 1)), "dilation": (1, 1)}),
                         GradCase([(1, 5, 6, 2), (2, 3, 2, 2)],
                                  {"strides": (2, 3), "padding": ((0, 1), (1, 0)), "dilation": (1, 1)}),
                         GradCase([(1, 5, 5, 2), (2, 2, 2, 3)],
                                  {"strides": (1, 1), "padding": ((0, 0), (1, 1)), "dilation": (2, 2)})],
})
