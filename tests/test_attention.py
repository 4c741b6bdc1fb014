"""attention and multi_head_attention: Keras' Attention and MultiHeadAttention, against PyTorch in float64
(outputs, the loss and every gradient, the layers' own parameters and those of the layers before them),
at -O0 and -O2; masks, dropout, parameter counts, the errors of a model that misuses them, and the ops
they lower to (batch_matmul, attention_bias)."""
from __future__ import annotations

import math

import numpy as np
import pytest

import nnd
from nnd import NndError
from nnd.compiler.ops import get_op
from nnd.compiler.tensor_type import ShapeError, TensorType
from nnd.runtime.kernel_table import KernelContext
from nnd.runtime.kernels_sequence import attention_bias

torch = pytest.importorskip("torch")  # the independent reference
from torch_reference import assert_matches_torch, randomized, torch_parameters  # noqa: E402

LEVELS = [0, 2]


def _randomized(source: str, level: int, scale: float = 0.5) -> nnd.Model:
    return randomized(source, level, scale)


def _check_against(model: nnd.Model, x, y: np.ndarray, reference) -> None:
    """The model's prediction, loss (mse) and every parameter's gradient equal the reference's."""
    p = torch_parameters(model)
    inputs = {k: torch.tensor(v) for k, v in x.items()} if isinstance(x, dict) else torch.tensor(x)
    assert_matches_torch(model, x, y, reference(inputs, p), p, every_parameter_used=True)


# ------------------------------------------------------------------------------ the torch reference

def torch_mha(p: dict, prefix: str, query, value, key=None, *, heads: int, key_dim: int, keep=None,
              causal: bool = False, use_bias: bool = True, out_shape: tuple[int, ...] | None = None):
    """Keras' MultiHeadAttention written with torch ops: projections, scaled scores, Keras' additive mask
    (-1e9 where `keep` is 0 or the pair is in the future), softmax over the keys, the weighted sum, the
    output projection."""
    key = value if key is None else key

    def project(x, role):
        y = torch.einsum("ntd,dhk->nhtk", x, p[f"{prefix}.{role}_kernel"])
        return y + p[f"{prefix}.{role}_bias"][None, :, None, :] if use_bias else y

    q, k, v = project(query, "query"), project(key, "key"), project(value, "value")
    scores = (q / math.sqrt(key_dim)) @ k.transpose(-1, -2)
    allowed = torch.ones(scores.shape[-2:], dtype=torch.float64)
    if causal:
        allowed = torch.tril(allowed)
    if keep is not None:
        allowed = allowed * keep
    if causal or keep is not None:
        scores = scores + ((1.0 - allowed) * -1e9).unsqueeze(-3)
    mixed = torch.softmax(scores, dim=-1) @ v  # [N, heads, Tq, value_dim]
    kernel = p[f"{prefix}.attention_output_kernel"]
    out = torch.einsum("nhtv,hv...->nt...", mixed, kernel)
    return out + p[f"{prefix}.attention_output_bias"] if use_bias else out


def torch_attention(p: dict, prefix: str, query, value, key=None, *, scale: bool = False, concat: bool = False,
                    keep=None, causal: bool = False, query_keep=None):
    """Keras' Attention with torch ops: dot or concat scores, the value mask, softmax, weighted sum, and the
    output zeroed at padded queries."""
    key = value if key is None else key
    if concat:
        pairs = query[:, :, None, :] + key[:, None, :, :]
        if scale:
            pairs = pairs * p[f"{prefix}.scale"]
        scores = p[f"{prefix}.concat_score_weight"] * torch.tanh(pairs).sum(-1)
    else:
        scores = query @ key.transpose(-1, -2)
        if scale:
            scores = scores * p[f"{prefix}.scale"]
    allowed = torch.ones(scores.shape[-2:], dtype=torch.float64)
    if causal:
        allowed = torch.tril(allowed)
    if keep is not None:
        allowed = allowed * keep[:, None, :]
    if causal or keep is not None:
        scores = scores - 1e9 * (1.0 - allowed)
    out = torch.softmax(scores, dim=-1) @ value
    return out if query_keep is None else out * query_keep[:, :, None]


def dense(p: dict, name: str, x, activation=None):
    y = x @ p[f"{name}.kernel"] + p[f"{name}.bias"]
    return activation(y) if activation else y


# ------------------------------------------------------------------------------ multi_head_attention

SELF_MODEL = """model m {{
    input x: [5, 6]
    h = x -> dense(6, activation=tanh)
    a = h -> multi_head_attention({args})
    output a -> flatten() -> dense(2)
}}
train m {{ loss = mse }}
"""

SELF_CASES = [  # layer arguments, their meaning for the reference
    ("2, 4", {}),
    ("num_heads=3, key_dim=2, value_dim=5", {}),
    ("2, 3, output_shape=4", {"out_shape": (4,)}),
    ("2, 3, output_shape=[3, 2]", {"out_shape": (3, 2)}),
    ("1, 4, use_bias=false", {"use_bias": False}),
    ("2, 4, use_causal_mask=true", {"causal": True}),
]


@pytest.mark.parametrize("level", LEVELS)
@pytest.mark.parametrize("args, options", SELF_CASES, ids=[a for a, _ in SELF_CASES])
def test_self_attention_matches_torch(level, args, options):
    model = _randomized(SELF_MODEL.format(args=args), level)
    heads, key_dim = (int(s.split("=")[-1]) for s in args.split(", ")[:2])
    x = np.random.default_rng(2).normal(size=(3, 5, 6))
    y = np.random.default_rng(3).normal(size=(3, 2))

    def reference(x, p):
        h = dense(p, "dense", x, torch.tanh)
        a = torch_mha(p, "multi_head_attention", h, h, heads=heads, key_dim=key_dim,
                      use_bias=options.get("use_bias", True), causal=options.get("causal", False))
        return dense(p, "dense_1", a.reshape(len(x), -1))

    _check_against(model, x, y, reference)


CROSS_MODEL = """model m {{
    input q: [4, 6]
    input v: [7, 5]
    input k: [7, 3]
    query = q -> dense(6, activation=tanh)
    a = {call}
    output a -> flatten() -> dense(2)
}}
train m {{ loss = mse }}
"""


@pytest.mark.parametrize("level", LEVELS)
@pytest.mark.parametrize("call, with_key", [
    ("multi_head_attention(query, v, k, 2, 3)", True),
    ("query -> multi_head_attention(v, num_heads=2, key_dim=3, value_dim=4)", False),
    ("multi_head_attention(query, v, k, 2, 3, use_causal_mask=true)", True),  # a 4 x 7 lower triangle
])
def test_cross_attention_matches_torch(level, call, with_key):
    model = _randomized(CROSS_MODEL.format(call=call), level)
    rng = np.random.default_rng(4)
    x = {"q": rng.normal(size=(3, 4, 6)), "v": rng.normal(size=(3, 7, 5)), "k": rng.normal(size=(3, 7, 3))}
    y = rng.normal(size=(3, 2))

    def reference(x, p):
        query = dense(p, "dense", x["q"], torch.tanh)
        a = torch_mha(p, "multi_head_attention", query, x["v"], x["k"] if with_key else None, heads=2, key_dim=3,
                      causal="causal" in call)
        return dense(p, "dense_1", a.reshape(len(query), -1))

    if not with_key:  # value_dim=4: the value's projection has its own size
        assert model.parameters()["multi_head_attention.value_kernel"].shape == (5, 2, 4)
    _check_against(model, x, y, reference)


PADDED_MODEL = """model m {{
    input tokens: int32[6]
    e = tokens -> embedding(10, 6, mask_zero=true)
    a = {call}
    output a -> {head} -> dense(2)
}}
train m {{ loss = mse }}
"""
# global_avgpool1d averages the real steps (the output keeps the query's mask); flatten reads the padded
# queries' rows too, which Keras computes with every key masked
HEADS = ["global_avgpool1d()", "flatten()"]

TOKENS = np.array([[3, 1, 4, 0, 0, 0], [5, 9, 2, 6, 5, 3], [7, 0, 0, 0, 0, 0]])


def _head(head: str, a, keep):
    """global_avgpool1d under a mask (the mean of the real steps), or flatten."""
    if head == "flatten()":
        return a.reshape(len(a), -1)
    return (a * keep[:, :, None]).sum(1) / keep.sum(1, keepdim=True).clamp(min=1.0)


@pytest.mark.parametrize("level", LEVELS)
@pytest.mark.parametrize("head", HEADS)
@pytest.mark.parametrize("causal", [False, True])
def test_padding_mask_matches_torch_with_an_additive_mask(level, head, causal):
    """Keras' attention mask: a query row and a key column are masked where the tokens are padding."""
    call = f"e -> multi_head_attention(2, 3, use_causal_mask={str(causal).lower()})"
    model = _randomized(PADDED_MODEL.format(call=call, head=head), level)
    y = np.random.default_rng(5).normal(size=(3, 2))

    def reference(tokens, p):
        keep = (tokens != 0).double()
        e = p["embedding.embeddings"][tokens]
        a = torch_mha(p, "multi_head_attention", e, e, heads=2, key_dim=3, causal=causal,
                      keep=keep[:, :, None] * keep[:, None, :])
        return dense(p, "dense", _head(head, a, keep))

    _check_against(model, TOKENS, y, reference)


@pytest.mark.parametrize("call", ["e -> multi_head_attention(2, 3)", "attention(e, e)"])
def test_padded_keys_get_no_weight(call):
    """Every padded step is embedding row 0: whatever that row holds, the real steps' results stay."""
    model = _randomized(PADDED_MODEL.format(call=call, head=HEADS[0]), 2)
    before = model.predict(TOKENS)
    params = model.parameters()
    params["embedding.embeddings"][0] = np.random.default_rng(6).normal(size=6) * 10
    model.set_parameters(params)
    np.testing.assert_allclose(model.predict(TOKENS), before, rtol=1e-12, atol=1e-12)
    tokens = TOKENS.copy()
    tokens[0, 3] = 8  # a real step changes the first sample alone
    changed = model.predict(tokens)
    assert not np.allclose(changed[0], before[0]) and np.allclose(changed[1:], before[1:], rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("level", LEVELS)
def test_value_padding_alone_masks_key_columns(level):
    """A masked value with an unmasked query: the keys' columns are masked, every query row attends."""
    source = """model m {
    input q: [3, 6]
    input tokens: int32[6]
    e = tokens -> embedding(10, 6, mask_zero=true)
    a = multi_head_attention(q, e, 2, 3)
    output a -> flatten() -> dense(2)
}
train m { loss = mse }
"""
    model = _randomized(source, level)
    rng = np.random.default_rng(7)
    x = {"q": rng.normal(size=(3, 3, 6)), "tokens": TOKENS}
    y = rng.normal(size=(3, 2))

    def reference(x, p):
        keep = (x["tokens"] != 0).double()
        e = p["embedding.embeddings"][x["tokens"]]
        a = torch_mha(p, "multi_head_attention", x["q"], e, heads=2, key_dim=3, keep=keep[:, None, :])
        return dense(p, "dense", a.reshape(3, -1))

    _check_against(model, x, y, reference)


KEY_TOKENS = np.array([[2, 2, 0, 0, 0, 0], [5, 0, 0, 0, 0, 0], [7, 1, 1, 1, 0, 0]])


@pytest.mark.parametrize("level", LEVELS)
@pytest.mark.parametrize("call", ["multi_head_attention(q, v, k, 2, 3)", "attention(q, v, k)"])
def test_a_separate_key_mask_counts_for_multi_head_attention_alone(level, call):
    """Keras' MultiHeadAttention masks by the key's mask and the value's; its Attention by the value's."""
    source = f"""model m {{
    input q: [3, 6]
    input value_ids: int32[6]
    input key_ids: int32[6]
    v = value_ids -> embedding(10, 6, mask_zero=true)
    k = key_ids -> embedding(10, 6, mask_zero=true)
    a = {call}
    output a -> flatten() -> dense(2)
}}
train m {{ loss = mse }}
"""
    model = _randomized(source, level)
    rng = np.random.default_rng(12)
    x = {"q": rng.normal(size=(3, 3, 6)), "value_ids": TOKENS, "key_ids": KEY_TOKENS}
    y = rng.normal(size=(3, 2))

    def reference(x, p):
        v = p["embedding.embeddings"][x["value_ids"]]
        k = p["embedding_1.embeddings"][x["key_ids"]]
        keep_v, keep_k = (x["value_ids"] != 0).double(), (x["key_ids"] != 0).double()
        if call.startswith("attention"):
            a = torch_attention(p, "attention", x["q"], v, k, keep=keep_v)
        else:
            a = torch_mha(p, "multi_head_attention", x["q"], v, k, heads=2, key_dim=3,
                          keep=(keep_v * keep_k)[:, None, :])
        return dense(p, "dense", a.reshape(3, -1))

    _check_against(model, x, y, reference)


def test_keras_parameter_count_shapes_and_order():
    """MultiHeadAttention(num_heads=2, key_dim=16) on 32 features: query, key and value each have a kernel
    (32, 2, 16) and a bias (2, 16), 1,056 parameters; the output kernel (2, 16, 32) and bias (32,) another
    1,056: 4,224 in all, Keras' figure."""
    model = nnd.loads("model m {\n input x: [10, 32]\n mha = x -> multi_head_attention(2, 16, name=mha)\n"
                      " output mha\n}")
    shapes = {name: value.shape for name, value in model.parameters().items()}
    assert list(shapes.items()) == [
        ("mha.query_kernel", (32, 2, 16)), ("mha.query_bias", (2, 16)), ("mha.key_kernel", (32, 2, 16)),
        ("mha.key_bias", (2, 16)), ("mha.value_kernel", (32, 2, 16)), ("mha.value_bias", (2, 16)),
        ("mha.attention_output_kernel", (2, 16, 32)), ("mha.attention_output_bias", (32,))]
    assert sum(math.prod(s) for s in shapes.values()) == 4224
    assert "Total params: 4,224" in model.summary(print_fn=lambda _: None)
    assert model.output_shape == (None, 10, 32)


def test_glorot_uses_keras_fans_of_the_three_axis_kernels():
    """Keras' fans of a kernel (d, heads, size): fan_in d * heads, fan_out d * size."""
    model = nnd.loads("model m {\n input x: [4, 64]\n multi_head_attention(4, 16)\n}")
    kernel = model.parameters()["multi_head_attention.query_kernel"]
    limit = math.sqrt(6.0 / (64 * 4 + 64 * 16))
    assert np.abs(kernel).max() <= limit and np.abs(kernel).max() > 0.9 * limit


# ------------------------------------------------------------------------------ attention (Luong)

LUONG_MODEL = """model m {{
    input q: [4, 3]
    input v: [6, 3]
    input k: [6, 3]
    query = q -> dense(3, activation=tanh)
    a = {call}
    output a -> flatten() -> dense(2)
}}
train m {{ loss = mse }}
"""

LUONG_CASES = [
    ("attention(query, v)", {}),
    ("attention([query, v, k])", {"key": True}),
    ("query -> attention(v, use_scale=true)", {"scale": True}),
    ("attention(query, v, k, score_mode=concat)", {"key": True, "concat": True}),
    ("attention(query, v, score_mode=concat, use_scale=true)", {"concat": True, "scale": True}),
    ("attention(query, v, use_causal_mask=true)", {"causal": True}),
]


@pytest.mark.parametrize("level", LEVELS)
@pytest.mark.parametrize("call, options", LUONG_CASES, ids=[c for c, _ in LUONG_CASES])
def test_attention_matches_torch(level, call, options):
    model = _randomized(LUONG_MODEL.format(call=call), level)
    if options.get("scale"):  # away from Keras' initial 1, so a wrong use of it shows
        model.set_parameters({**model.parameters(), "attention.scale": np.array(0.7)})
    rng = np.random.default_rng(8)
    x = {"q": rng.normal(size=(3, 4, 3)), "v": rng.normal(size=(3, 6, 3)), "k": rng.normal(size=(3, 6, 3))}
    y = rng.normal(size=(3, 2))

    def reference(x, p):
        query = dense(p, "dense", x["q"], torch.tanh)
        a = torch_attention(p, "attention", query, x["v"], x["k"] if options.get("key") else None,
                            scale=options.get("scale", False), concat=options.get("concat", False),
                            causal=options.get("causal", False))
        return dense(p, "dense_1", a.reshape(3, -1))

    _check_against(model, x, y, reference)


@pytest.mark.parametrize("level", LEVELS)
@pytest.mark.parametrize("head", HEADS)
def test_attention_masks_padded_keys_and_zeroes_padded_queries(level, head):
    model = _randomized(PADDED_MODEL.format(call="attention(e, e)", head=head), level)
    y = np.random.default_rng(9).normal(size=(3, 2))

    def reference(tokens, p):
        keep = (tokens != 0).double()
        e = p["embedding.embeddings"][tokens]
        a = torch_attention(p, "attention", e, e, keep=keep, query_keep=keep)
        return dense(p, "dense", _head(head, a, keep))

    _check_against(model, TOKENS, y, reference)


def torch_additive(p: dict, query, value, key=None, *, scale: bool = True, keep=None, causal: bool = False,
                   query_keep=None):
    """Keras' AdditiveAttention with torch ops: sum_d scale[d] * tanh(query[i, d] + key[j, d])."""
    key = value if key is None else key
    pairs = torch.tanh(query[:, :, None, :] + key[:, None, :, :])
    scores = (pairs * p["additive_attention.scale"] if scale else pairs).sum(-1)
    allowed = torch.ones(scores.shape[-2:], dtype=torch.float64)
    if causal:
        allowed = torch.tril(allowed)
    if keep is not None:
        allowed = allowed * keep[:, None, :]
    scores = scores - 1e9 * (1.0 - allowed)
    out = torch.softmax(scores, dim=-1) @ value
    return out if query_keep is None else out * query_keep[:, :, None]


ADDITIVE_CASES = [
    ("additive_attention(query, v)", {}),
    ("additive_attention(query, v, k, use_scale=false)", {"key": True, "scale": False}),
    ("query -> additive_attention(v, use_causal_mask=true)", {"causal": True}),
]


@pytest.mark.parametrize("level", LEVELS)
@pytest.mark.parametrize("call, options", ADDITIVE_CASES, ids=[c for c, _ in ADDITIVE_CASES])
def test_additive_attention_matches_torch(level, call, options):
    model = _randomized(LUONG_MODEL.format(call=call), level)
    rng = np.random.default_rng(10)
    x = {"q": rng.normal(size=(3, 4, 3)), "v": rng.normal(size=(3, 6, 3)), "k": rng.normal(size=(3, 6, 3))}
    y = rng.normal(size=(3, 2))

    def reference(x, p):
        query = dense(p, "dense", x["q"], torch.tanh)
        a = torch_additive(p, query, x["v"], x["k"] if options.get("key") else None,
                           scale=options.get("scale", True), causal=options.get("causal", False))
        return dense(p, "dense_1", a.reshape(3, -1))

    _check_against(model, x, y, reference)


@pytest.mark.parametrize("level", LEVELS)
def test_additive_attention_masks_padded_keys_and_zeroes_padded_queries(level):
    model = _randomized(PADDED_MODEL.format(call="additive_attention(e, e)", head="flatten()"), level)
    y = np.random.default_rng(11).normal(size=(3, 2))

    def reference(tokens, p):
        keep = (tokens != 0).double()
        e = p["embedding.embeddings"][tokens]
        a = torch_additive(p, e, e, keep=keep, query_keep=keep)
        return dense(p, "dense", _head("flatten()", a, keep))

    _check_against(model, TOKENS, y, reference)


def test_additive_attention_scale_is_a_keras_vector():
    model = nnd.loads(LUONG_MODEL.format(call="additive_attention(query, v)"))
    assert model.parameters()["additive_attention.scale"].shape == (3,)
    assert "additive_attention.scale" not in nnd.loads(LUONG_MODEL.format(
        call="additive_attention(query, v, use_scale=false)")).parameters()


def test_attention_parameters_are_keras_scalars():
    shapes = {k: v.shape for k, v in nnd.loads(LUONG_MODEL.format(
        call="attention(query, v, use_scale=true, score_mode=concat)")).parameters().items()}
    assert shapes["attention.scale"] == () and shapes["attention.concat_score_weight"] == ()
    assert not any(k.startswith("attention.") for k in nnd.loads(LUONG_MODEL.format(
        call="attention(query, v)")).parameters())


# ------------------------------------------------------------------------------ dropout

@pytest.mark.parametrize("call", ["h -> multi_head_attention(2, 3, dropout=0.5)", "attention(h, h, dropout=0.5)"])
def test_dropout_drops_attention_weights_in_training_only(call):
    source = """model m {{
    input x: [5, 4]
    h = x -> dense(4, activation=tanh)
    a = {call}
    output a -> flatten() -> dense(2)
}}
train m {{ loss = mse }}
"""
    with_dropout = _randomized(source.format(call=call), 2)
    without = _randomized(source.format(call=call.replace("0.5", "0.0")), 2)
    rng = np.random.default_rng(10)
    x, y = rng.normal(size=(4, 5, 4)), rng.normal(size=(4, 2))
    np.testing.assert_allclose(with_dropout.predict(x), without.predict(x), rtol=1e-12)
    loss, _ = with_dropout.loss_and_gradients(x, y)
    reference, _ = without.loss_and_gradients(x, y)
    assert loss != pytest.approx(reference, rel=1e-6)
    assert "dropout_mask" not in {n.op for n in with_dropout.graph.nodes}


# ------------------------------------------------------------------------------ training

def test_a_small_transformer_learns():
    """An embedding, self-attention with a residual connection and layer normalization, a feed-forward
    block and a pooled classifier learn whether a token sequence holds token 1 (wherever it is)."""
    source = """model transformer {
    input tokens: int32[8]
    e = tokens -> embedding(6, 16)
    a = e -> multi_head_attention(2, 8)
    h = add(e, a) -> layer_normalization()
    f = h -> dense(32, activation=relu) -> dense(16)
    output add(h, f) -> layer_normalization() -> global_avgpool1d() -> dense(1, activation=sigmoid)
}
train transformer {
    optimizer = adam(lr=0.01)
    loss = binary_crossentropy
    metrics = [accuracy]
}
"""
    model = nnd.loads(source, seed=0)
    rng = np.random.default_rng(11)
    tokens = rng.integers(2, 6, size=(256, 8))
    holds = rng.random(256) < 0.5
    tokens[holds, rng.integers(0, 8, size=holds.sum())] = 1
    history = model.fit(tokens, holds.astype(np.float32)[:, None], epochs=8, batch_size=32, verbose=0)
    losses = history.history["loss"]
    assert losses[-1] < 0.5 * losses[0], losses
    assert history.history["accuracy"][-1] > 0.9


# ------------------------------------------------------------------------------ mistakes

def _error(source: str) -> str:
    with pytest.raises(NndError) as info:
        nnd.loads(source)
    return str(info.value)


@pytest.mark.parametrize("body, expected", [
    ("input q: [4, 6]\n    input v: [7, 5]\n    output attention(q, v)",
     "<string>:4:12: error: attention compares the query's features with the value (the key when none is "
     "given)'s: the query has 6, the value 5 (f32[N,4,6] and f32[N,7,5])"),
    ("input q: [4, 6]\n    input v: [7, 5]\n    input k: [8, 5]\n    output multi_head_attention(q, v, k, 2, 4)",
     "<string>:5:12: error: multi_head_attention: the key and the value must have the same number of steps, got "
     "value f32[N,7,5] and key f32[N,8,5]"),
    ("input x: [6]\n    output x -> multi_head_attention(2, 4)",
     "<string>:3:17: error: multi_head_attention expects a sequence (batch, steps, features) for its query, got "
     "f32[N,6]"),
    ("input q: [4, 6]\n    input v: [7, 5, 2]\n    output attention(q, v)",
     "<string>:4:12: error: attention expects a sequence (batch, steps, features) for its value, got f32[N,7,5,2]"),
    ("input t: int32[6]\n    output t -> multi_head_attention(2, 4)",
     "<string>:3:17: error: multi_head_attention expects float features for its query, got i32[N,6]"),
    ("input x: [4, 6]\n    output x -> attention()",
     "<string>:3:17: error: attention takes 2 or 3 inputs, got 1"),
    ("input x: [4, 6]\n    output multi_head_attention(x, x, x, x, 2, 4)",
     "<string>:3:12: error: multi_head_attention takes 1 to 3 inputs, got 4"),
    ("input x: [4, 6]\n    output x -> multi_head_attention(0, 4)",
     "<string>:3:38: error: multi_head_attention argument 'num_heads': must be at least 1, got 0"),
    ("input x: [4, 6]\n    output x -> multi_head_attention(2)",
     "<string>:3:17: error: multi_head_attention needs argument 'key_dim' (a positive int)"),
    ("input x: [4, 6]\n    output x -> multi_head_attention(2, 4, dropout=1.5)",
     "<string>:3:52: error: multi_head_attention argument 'dropout': must be in [0, 1), got 1.5"),
    ("input x: [4, 6]\n    output x -> multi_head_attention(2, 4, output_shape=[])",
     "<string>:3:57: error: multi_head_attention argument 'output_shape': expected a positive int or a list of "
     "them, got an empty list"),
    ("input x: [4, 6]\n    output x -> MultiHeadAttention(2, 4)",
     "<string>:3:17: error: unknown layer 'MultiHeadAttention'; did you mean 'multi_head_attention'?"),
    ("input x: [4, 6]\n    output attention(x, x, score_mode=additive)",
     "<string>:3:39: error: attention argument 'score_mode': unknown score mode 'additive'"),
])
def test_mistakes_are_located_errors(body, expected):
    message = _error(f"model m {{\n    {body}\n}}\n")
    assert expected in message, message
    assert "Traceback" not in message


# ------------------------------------------------------------------------------ the ops

def test_batch_matmul_shape_rule_and_its_errors():
    infer = get_op("batch_matmul").infer
    a, b = TensorType(("N", 2, 3, 4)), TensorType(("N", 2, 5, 4))
    assert infer({"transpose_b": True}, [a, b])[0].shape == ("N", 2, 3, 5)
    assert infer({"transpose_a": True}, [a, TensorType(("N", 2, 3, 6))])[0].shape == ("N", 2, 4, 6)
    with pytest.raises(ShapeError, match=r"inner dimensions differ \(4 and 5\): \(N, 2, 3, 4\) @ \(N, 2, 5, 4\)"):
        infer({}, [a, b])
    with pytest.raises(ShapeError, match=r"\(N, 2, 3, 4\)\^T @ \(N, 2, 5, 4\)\^T"):
        infer({"transpose_a": True, "transpose_b": True}, [a, b])
    with pytest.raises(ShapeError, match="equal leading"):
        infer({"transpose_b": True}, [a, TensorType(("N", 3, 5, 4))])
    with pytest.raises(ShapeError, match="of one rank"):
        infer({}, [a, TensorType((4, 5))])


def test_attention_bias_is_keras_large_negative_and_finite_in_two_byte_floats():
    keep = np.array([[[1.0, 1.0, 0.0]]])
    bfloat16 = pytest.importorskip("ml_dtypes").bfloat16
    for dtype, big in ((np.float64, -1e9), (np.float32, -1e9), (np.float16, -3e4), (bfloat16, -1e9)):
        ctx = KernelContext(np, np.random.default_rng(0), dtype=dtype)
        bias = attention_bias(ctx, {"steps": (2, 3), "causal": True}, keep.astype(dtype))
        assert bias.dtype == dtype and np.isfinite(bias).all()
        np.testing.assert_array_equal(bias, np.array([[[0, big, big], [0, 0, big]]], dtype=dtype))
    causal = attention_bias(KernelContext(np, np.random.default_rng(0)), {"steps": (2, 2), "causal": True})
    np.testing.assert_array_equal(causal, [[0, -1e9], [0, 0]])


def test_mixed_precision_masked_attention_stays_finite():
    source = PADDED_MODEL.format(call="e -> multi_head_attention(2, 3)", head=HEADS[0])
    full = nnd.loads(source, seed=0)
    half = nnd.loads(source, seed=0, mixed_precision="float16")
    out = half.predict(TOKENS)
    assert np.isfinite(out).all()
    np.testing.assert_allclose(out, full.predict(TOKENS), atol=2e-2)
