"""Attention layers with Keras' semantics: attention (Keras' Attention, dot-product or Luong style) and
multi_head_attention (Keras' MultiHeadAttention).

Both take a query, a value and optionally a key (Keras' call(query, value, key)), written as their
tensor inputs: `attention(q, v)`, `q -> attention(v, k)`, `attention([q, v])`. multi_head_attention
also takes one value alone, as self-attention: `x -> multi_head_attention(2, 16)` is
`multi_head_attention(x, x, 2, 16)`. Keras' call argument use_causal_mask is a layer argument here.

Padding masks (from embedding(mask_zero=true) or masking()) work as Keras': keys that are padding get
Keras' large negative number added to their scores before the softmax (the `attention_bias` op), and the
output keeps the query's mask. multi_head_attention also masks the score rows of padded queries, from
Keras' attention mask query[:, :, None] & value[:, None, :] (& key); attention instead zeroes the output
at padded queries.
"""
from __future__ import annotations

import math
from typing import Any

from nnd.compiler.args import (BOOL, INITIALIZER, INT, NAME, POSITIVE_INT, RATE, REGULARIZER, ArgError, ArgKind,
                               ArgSpec, choice)
from nnd.compiler.ir import Initializer, Value
from nnd.compiler.layers.base import LayerContext, LayerError, layer
from nnd.compiler.layers.recurrent import sequence_notes

_ROLES = ("query", "value", "key")


def _sequences(ctx: LayerContext, inputs: list[Value]) -> list[Value]:
    """The query, value and key (the value when no key is given), each a float sequence, with the key as
    long as the value."""
    for role, x in zip(_ROLES, inputs):
        if x.type.dtype not in ("f32", "f64"):
            raise LayerError(f"{ctx.kind} expects float features for its {role}, got {x.type}",
                             ["map integer ids to vectors with embedding(input_dim, output_dim) first"])
        if x.type.rank != 3:
            raise LayerError(f"{ctx.kind} expects a sequence (batch, steps, features) for its {role}, "
                             f"got {x.type}", sequence_notes(x))
    query, value = inputs[0], inputs[1] if len(inputs) > 1 else inputs[0]
    key = inputs[2] if len(inputs) > 2 else value
    if key.type.shape[1] != value.type.shape[1]:
        raise LayerError(f"{ctx.kind}: the key and the value must have the same number of steps, got value "
                         f"{value.type} and key {key.type}")
    return [query, value, key]


def _keep_mask(ctx: LayerContext, query: Value, value: Value, multi_head: bool) -> Value | None:
    """Keras' attention mask from the inputs' padding masks, [N, Tq or 1, Tv or 1]: 1 where a query may
    attend a key. Keras' Attention masks by the value's mask alone; its MultiHeadAttention also by the
    key's (a key given apart from the value) and, as rows, the query's."""
    masks = ctx.input_masks + [None] * (3 - len(ctx.input_masks))
    if len(ctx.input_masks) == 1:  # self-attention: the one input is query and value
        masks = [masks[0], masks[0], None]
    n, tq, tv = query.type.shape[0], query.type.shape[1], value.type.shape[1]
    keep = None
    for mask in masks[1:] if multi_head else masks[1:2]:
        if mask is not None:
            column = ctx.emit("reshape", [mask], shape=(n, 1, tv))
            keep = column if keep is None else ctx.emit("mul", [keep, column])
    if multi_head and masks[0] is not None:
        row = ctx.emit("reshape", [masks[0]], shape=(n, tq, 1))
        keep = row if keep is None else ctx.emit("mul", [row, keep])
    return keep


def _bias(ctx: LayerContext, keep: Value | None, steps: tuple[int, int], causal: bool) -> Value | None:
    """The additive score mask, or None when nothing is masked."""
    if keep is None and not causal:
        return None
    return ctx.emit("attention_bias", [keep] if keep is not None else [], steps=steps, causal=causal)


def _attend(ctx: LayerContext, scores: Value, value: Value, bias: Value | None, rate: float) -> Value:
    """softmax(scores + bias) over the keys, dropout on those weights in training, then the weighted sum
    of the value: scores [..., Tq, Tv], value [..., Tv, d] -> [..., Tq, d]."""
    if bias is not None:
        if bias.type.rank == 3 and scores.type.rank == 4:  # one mask for every head
            n, rows, cols = bias.type.shape
            bias = ctx.emit("reshape", [bias], shape=(n, 1, rows, cols))
        scores = ctx.emit("add", [scores, bias])
    weights = ctx.emit("softmax", [scores], axis=-1)
    if ctx.training and rate > 0.0:
        weights = ctx.emit("mul", [weights, ctx.emit("dropout_mask", [weights], rate=rate,
                                                     stream=ctx.random_stream())])
    return ctx.emit("batch_matmul", [weights, value])


# ---------------------------------------------------------------- attention (Luong)

_SCORE_MODE = choice(("dot", "concat"), "score mode")


@layer("attention", ArgSpec("use_scale", BOOL, False), ArgSpec("score_mode", _SCORE_MODE, "dot"),
       ArgSpec("dropout", RATE, 0.0), ArgSpec("seed", INT, None), ArgSpec("use_causal_mask", BOOL, False),
       ArgSpec("name", NAME, None), inputs=(2, 3))
def _attention(ctx: LayerContext, inputs: list[Value], args: dict[str, Any]) -> Value:
    """attention(query, value[, key]): Keras' Attention, the value's steps weighed by softmax(query . key)

    Dot-product (Luong) attention. Inputs query (N, Tq, d), value (N, Tv, dv) and optionally key (N, Tv, d),
    which defaults to the value; the output is (N, Tq, dv). score_mode=dot scores query . key; concat
    scores concat_score_weight * sum(tanh(query + key)) over the features. use_scale adds a learned
    scalar `scale` (Keras' weight of that name), multiplying the dot scores or the sum inside the tanh;
    concat learns `concat_score_weight`. Both start at 1. dropout drops attention weights while training.
    """
    query, value, key = _comparable_sequences(ctx, inputs)
    scale = ctx.param("scale", (), Initializer("ones")) if args["use_scale"] else None
    if args["score_mode"] == "dot":
        scores = ctx.emit("batch_matmul", [query, key], transpose_b=True)
        ctx.count(2 * query.type.shape[1] * key.type.shape[1] * key.type.shape[2])
        if scale is not None:
            scores = ctx.emit("mul", [scores, scale])
    else:
        scores = _concat_scores(ctx, query, key, scale)
    return _weighted_values(ctx, query, value, scores, args)


@layer("additive_attention", ArgSpec("use_scale", BOOL, True), ArgSpec("dropout", RATE, 0.0),
       ArgSpec("seed", INT, None), ArgSpec("use_causal_mask", BOOL, False), ArgSpec("name", NAME, None),
       inputs=(2, 3))
def _additive_attention(ctx: LayerContext, inputs: list[Value], args: dict[str, Any]) -> Value:
    """additive_attention(query, value[, key]): Keras' AdditiveAttention (Bahdanau), the value's steps
    weighed by softmax over the keys of sum_d scale[d] * tanh(query[i, d] + key[j, d]). use_scale learns
    the vector `scale` (glorot_uniform, as Keras'); without it every feature weighs 1. Masks, the causal
    mask and dropout as attention's."""
    query, value, key = _comparable_sequences(ctx, inputs)
    n, tq, d = query.type.shape
    tv = key.type.shape[1]
    pairs = ctx.emit("tanh", [ctx.emit("add", [ctx.emit("reshape", [query], shape=(n, tq, 1, d)),
                                                ctx.emit("reshape", [key], shape=(n, 1, tv, d))])])
    if args["use_scale"]:
        init = Initializer("glorot_uniform", (("fan_in", d), ("fan_out", d)))  # Keras' fans of a vector
        pairs = ctx.emit("mul", [pairs, ctx.param("scale", (d,), init)])
    scores = ctx.emit("reduce_sum", [pairs], axes=(3,), keepdims=False)
    ctx.count(4 * tq * tv * d)
    return _weighted_values(ctx, query, value, scores, args)


def _comparable_sequences(ctx: LayerContext, inputs: list[Value]) -> list[Value]:
    """The query, value and key of the single-head layers, whose scores compare query and key features
    one to one."""
    query, value, key = _sequences(ctx, inputs)
    if query.type.shape[2] != key.type.shape[2]:
        which = "key" if len(inputs) > 2 else "value (the key when none is given)"
        raise LayerError(f"{ctx.kind} compares the query's features with the {which}'s: the query has "
                         f"{query.type.shape[2]}, the {which.split(' ')[0]} {key.type.shape[2]} ({query.type} and "
                         f"{key.type})", ["project one of them with dense(...) first, or use "
                                          "multi_head_attention, which projects both"])
    return [query, value, key]


def _weighted_values(ctx: LayerContext, query: Value, value: Value, scores: Value, args: dict[str, Any]) -> Value:
    """What Keras' Attention does with its scores (N, Tq, Tv): masks, softmax, dropout, the weighted sum
    of the value's steps, and zeros at padded queries."""
    n, tq, tv = query.type.shape[0], query.type.shape[1], value.type.shape[1]
    keep = _keep_mask(ctx, query, value, multi_head=False)
    bias = _bias(ctx, keep, (tq, tv), args["use_causal_mask"])
    result = _attend(ctx, scores, value, bias, args["dropout"])
    ctx.count(2 * tq * tv * value.type.shape[2] + 5 * tq * tv)
    query_mask = ctx.input_masks[0] if ctx.input_masks else None
    if query_mask is not None:  # Keras zeroes the output at padded queries
        result = ctx.emit("mul", [result, ctx.emit("reshape", [query_mask], shape=(n, tq, 1))])
    ctx.output_mask = query_mask
    return result


def _concat_scores(ctx: LayerContext, query: Value, key: Value, scale: Value | None) -> Value:
    """concat_score_weight * sum_d tanh(scale * (query[:, i, d] + key[:, j, d])): the pairs through a
    broadcast sum (N, Tq, 1, d) + (N, 1, Tv, d)."""
    n, tq, d = query.type.shape
    tv = key.type.shape[1]
    pairs = ctx.emit("add", [ctx.emit("reshape", [query], shape=(n, tq, 1, d)),
                             ctx.emit("reshape", [key], shape=(n, 1, tv, d))])
    if scale is not None:
        pairs = ctx.emit("mul", [pairs, scale])
    summed = ctx.emit("reduce_sum", [ctx.emit("tanh", [pairs])], axes=(3,), keepdims=False)
    ctx.count(3 * tq * tv * d)
    return ctx.emit("mul", [summed, ctx.param("concat_score_weight", (), Initializer("ones"))])


# ---------------------------------------------------------------- multi-head attention

def _output_shape(value: Any) -> tuple[int, ...]:
    items = value if isinstance(value, list) else [value]
    if not items:
        raise ArgError("expected a positive int or a list of them, got an empty list")
    return tuple(POSITIVE_INT.convert(v) for v in items)


_OUTPUT_SHAPE = ArgKind("a positive int or a list of them", _output_shape)


@layer("multi_head_attention", ArgSpec("num_heads", POSITIVE_INT), ArgSpec("key_dim", POSITIVE_INT),
       ArgSpec("value_dim", POSITIVE_INT, None), ArgSpec("dropout", RATE, 0.0), ArgSpec("use_bias", BOOL, True),
       ArgSpec("output_shape", _OUTPUT_SHAPE, None), ArgSpec("use_causal_mask", BOOL, False),
       ArgSpec("kernel_initializer", INITIALIZER, Initializer("glorot_uniform")),
       ArgSpec("bias_initializer", INITIALIZER, Initializer("zeros")),
       ArgSpec("kernel_regularizer", REGULARIZER, None), ArgSpec("bias_regularizer", REGULARIZER, None),
       ArgSpec("seed", INT, None), ArgSpec("name", NAME, None), inputs=(1, 3))
def _multi_head_attention(ctx: LayerContext, inputs: list[Value], args: dict[str, Any]) -> Value:
    """multi_head_attention(query, value[, key], num_heads, key_dim): Keras' MultiHeadAttention

    num_heads scaled dot-product attentions over learned projections. Inputs query (N, Tq, dq), value
    (N, Tv, dv) and optionally key (N, Tv, dk), which defaults to the value; one input alone is
    self-attention (x -> multi_head_attention(2, 16)). Each head projects the query and key to key_dim
    features and the value to value_dim (default key_dim), scores query . key / sqrt(key_dim), takes the
    softmax over the keys and sums the projected value with those weights; the heads' results are
    projected together to output_shape (default dq). Parameters have Keras' shapes, named as Keras'
    sublayer/weight with an underscore for the slash: query_kernel (dq, num_heads, key_dim), query_bias
    (num_heads, key_dim), key_kernel, key_bias, value_kernel (dv, num_heads, value_dim), value_bias,
    attention_output_kernel (num_heads, value_dim, *output_shape), attention_output_bias (output_shape).
    """
    query, value, key = _sequences(ctx, inputs)
    heads, key_dim = args["num_heads"], args["key_dim"]
    value_dim = args["value_dim"] or key_dim
    q = _heads(ctx, args, "query", query, key_dim)
    k = _heads(ctx, args, "key", key, key_dim)
    v = _heads(ctx, args, "value", value, value_dim)
    q = ctx.emit("mul", [q, ctx.constant(1.0 / math.sqrt(key_dim))])  # Keras scales the query, not the scores
    scores = ctx.emit("batch_matmul", [q, k], transpose_b=True)  # [N, heads, Tq, Tv]
    n, tq, tv = query.type.shape[0], query.type.shape[1], value.type.shape[1]
    bias = _bias(ctx, _keep_mask(ctx, query, value, multi_head=True), (tq, tv), args["use_causal_mask"])
    mixed = _attend(ctx, scores, v, bias, args["dropout"])  # [N, heads, Tq, value_dim]
    merged = ctx.emit("reshape", [ctx.emit("transpose", [mixed], perm=(0, 2, 1, 3))], shape=(n, tq, heads * value_dim))
    out_shape = args["output_shape"] or (query.type.shape[2],)
    out_size = math.prod(out_shape)
    kernel = ctx.param("attention_output_kernel", (heads, value_dim, *out_shape), args["kernel_initializer"],
                       regularizer=args["kernel_regularizer"])
    y = ctx.emit("matmul", [merged, ctx.emit("reshape", [kernel], shape=(heads * value_dim, out_size))])
    if args["use_bias"]:
        out_bias = ctx.param("attention_output_bias", out_shape, args["bias_initializer"],
                             regularizer=args["bias_regularizer"])
        y = ctx.emit("add", [y, ctx.emit("reshape", [out_bias], shape=(out_size,))])
    ctx.count(2 * heads * tq * tv * (key_dim + value_dim) + 5 * heads * tq * tv + 2 * tq * heads * value_dim * out_size)
    ctx.output_mask = ctx.input_masks[0] if ctx.input_masks else None
    return y if len(out_shape) == 1 else ctx.emit("reshape", [y], shape=(n, tq, *out_shape))


def _heads(ctx: LayerContext, args: dict[str, Any], role: str, x: Value, size: int) -> Value:
    """x (N, T, d) projected to every head: (N, heads, T, size), through Keras' kernel (d, heads, size) and
    bias (heads, size) as one GEMM over the flattened heads."""
    n, steps, features = x.type.shape
    heads = args["num_heads"]
    kernel = ctx.param(f"{role}_kernel", (features, heads, size), args["kernel_initializer"],
                       regularizer=args["kernel_regularizer"])
    y = ctx.emit("matmul", [x, ctx.emit("reshape", [kernel], shape=(features, heads * size))])
    if args["use_bias"]:
        bias = ctx.param(f"{role}_bias", (heads, size), args["bias_initializer"], regularizer=args["bias_regularizer"])
        y = ctx.emit("add", [y, ctx.emit("reshape", [bias], shape=(heads * size,))])
    ctx.count(2 * steps * features * heads * size)
    return ctx.emit("transpose", [ctx.emit("reshape", [y], shape=(n, steps, heads, size))], perm=(0, 2, 1, 3))
