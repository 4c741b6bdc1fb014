"""Sequence layers as a user writes them: one-layer models compiled from text, run in float64 and compared
with PyTorch (forward, the loss, the gradient of every parameter and of the input) with the weights mapped
from Keras' layouts; masking against unpadded sequences run one at a time; the 1-D convolution and
pooling against torch; the wrappers against running their layer per step or per frame; finite-difference
checks of whole models; Keras' parameter counts.

The scan ops have op-level checks of their own (test_recurrent_kernels.py, gradcheck_cases.py); these
check the layers' lowering: the input projection, the bias handling, the gate order, the wrappers and the
mask plumbing.
"""
from __future__ import annotations

import re

import numpy as np
import pytest
from click.testing import CliRunner

import nnd
from nnd.cli import main
from nnd.compiler.autodiff import differentiate
from nnd.compiler.layers import INFER, TRAIN
from nnd.compiler.summary import summarize
from nnd.compiler.tensor_type import FLOAT_DTYPES
from nnd.compiler.training_graph import LOSS, TARGET_PREFIX, build_loss_graph
from nnd.runtime.executor import Executor

torch = pytest.importorskip("torch")
F = torch.nn.functional

TOL = 1e-5
MERGES = {"concat": lambda a, b: np.concatenate([a, b], axis=-1), "sum": lambda a, b: a + b,
          "mul": lambda a, b: a * b, "ave": lambda a, b: (a + b) / 2}
TORCH_MERGES = {"concat": lambda a, b: torch.cat([a, b], dim=-1), "sum": lambda a, b: a + b,
                "mul": lambda a, b: a * b, "ave": lambda a, b: (a + b) / 2}


def rng(seed):
    return np.random.default_rng(seed)


def model_of(*body: str, shape: str = "[6, 3]", loss: str = "mse") -> nnd.Model:
    """A float64 model `m` with one input x of `shape` and the given statements, trained with `loss`."""
    text = "\n".join(["model m {", f"    input x: {shape}", *(f"    {line}" for line in body), "}"]) + "\n"
    return nnd.loads(text, dtype="float64").compile(loss=loss)


def close(got, expected, what):
    np.testing.assert_allclose(np.asarray(got), np.asarray(expected), rtol=TOL, atol=1e-8, err_msg=what)


def feeds_of(model, x, y):
    xs = x if isinstance(x, dict) else {model.input_names[0]: x}
    ys = y if isinstance(y, dict) else {model.output_names[0]: y}
    return {**xs, **{TARGET_PREFIX + name: value for name, value in ys.items()}}


def input_gradients(model, x, y) -> dict[str, np.ndarray]:
    """The gradient of the training loss with respect to every float input of the model."""
    names = [v.name for v in model.graph.inputs if v.type.dtype in FLOAT_DTYPES]
    graph = differentiate(build_loss_graph(model.program, model.name, model.spec, TRAIN).graph, LOSS, names)
    result = Executor(graph, "numpy", np.float64).run(feeds_of(model, x, y), model.params)
    return {name: np.asarray(result["grad:" + name]) for name in names}


def check_gradients(model, x, y, eps=1e-6, tol=1e-6):
    """Every parameter's gradient against central differences of the loss (float64)."""
    loss, grads = model.loss_and_gradients(x, y)
    forward = Executor(build_loss_graph(model.program, model.name, model.spec, INFER).graph, "numpy", np.float64)
    feeds = feeds_of(model, x, y)
    params = {name: np.array(value) for name, value in model.params.items()}
    assert float(forward.run(feeds, params)[LOSS]) == pytest.approx(loss, rel=1e-12)
    assert set(grads) == set(params)
    for name, value in params.items():
        numeric = np.zeros_like(value)
        for index in np.ndindex(value.shape):
            for sign in (1.0, -1.0):
                moved = value.copy()
                moved[index] += sign * eps
                numeric[index] += sign * float(forward.run(feeds, {**params, name: moved})[LOSS]) / (2 * eps)
        scale = max(np.max(np.abs(numeric)), np.max(np.abs(grads[name])), 1e-3)
        error = np.max(np.abs(numeric - grads[name])) / scale
        assert error < tol, f"{name}: relative error {error:.2e}"


def random_params(model, seed, scale=0.5):
    r = rng(seed)
    values = {name: r.uniform(-scale, scale, value.shape) for name, value in model.parameters().items()}
    model.set_parameters(values)
    return values


# ---------------------------------------------------------------------------------------------------
# PyTorch layers and Keras layouts

TORCH_LAYERS = {"lstm": "LSTM", "gru": "GRU", "simple_rnn": "RNN"}


def torch_layer(kind, features, units, seed, bidirectional=False):
    torch.manual_seed(seed)
    layer = getattr(torch.nn, TORCH_LAYERS[kind])(features, units, batch_first=True,
                                                  bidirectional=bidirectional).double()
    with torch.no_grad():  # larger than torch's default, so the gates leave their linear range
        for p in layer.parameters():
            p.uniform_(-0.7, 0.7)
    return layer


def _keras_gates(kind, w, units):
    """Torch's GRU gates r, z, n along the first axis in Keras' order z, r, h; LSTM and RNN keep theirs."""
    if kind != "gru":
        return w
    return np.concatenate([w[units:2 * units], w[:units], w[2 * units:]])


def keras_weights(kind, layer, prefix, units, suffix="", grad=False):
    """The Keras parameters (or, grad=True, their gradients) of one direction of a torch layer."""
    def get(name):
        p = getattr(layer, f"{name}_l0{suffix}")
        return (p.grad if grad else p).detach().numpy()

    w_ih, w_hh, b_ih, b_hh = (_keras_gates(kind, get(n), units)
                              for n in ("weight_ih", "weight_hh", "bias_ih", "bias_hh"))
    if kind == "gru":
        bias = np.stack([b_ih, b_hh])  # reset_after: input bias, recurrent bias
    else:
        bias = b_ih if grad else b_ih + b_hh  # Keras has one bias; both torch biases get its gradient
    return {f"{prefix}.kernel": w_ih.T, f"{prefix}.recurrent_kernel": w_hh.T, f"{prefix}.bias": bias}


def compare_with_torch(model, x, y, torch_forward, torch_layers):
    """Outputs, loss, parameter and input gradients of `model` against torch_forward(x_tensors) (a dict of
    outputs) under the same summed MSE. `torch_layers`: (kind, layer, prefix, units, suffix) per direction."""
    xs = x if isinstance(x, dict) else {model.input_names[0]: x}
    ys = y if isinstance(y, dict) else {model.output_names[0]: y}
    tx = {name: torch.tensor(value, requires_grad=True) for name, value in xs.items()}
    outputs = torch_forward(tx)
    got = model.predict(x)
    got = got if isinstance(got, dict) else {model.output_names[0]: got}
    for name, expected in outputs.items():
        close(got[name], expected.detach().numpy(), f"output {name}")
    torch_loss = sum(F.mse_loss(outputs[name], torch.tensor(ys[name])) for name in outputs)
    torch_loss.backward()
    loss, grads = model.loss_and_gradients(x, y)
    assert loss == pytest.approx(torch_loss.item(), rel=TOL)
    for kind, layer, prefix, units, suffix in torch_layers:
        for name, expected in keras_weights(kind, layer, prefix, units, suffix, grad=True).items():
            close(grads[name], expected, f"gradient of {name}")
    for name, value in input_gradients(model, x, y).items():
        close(value, tx[name].grad.numpy(), f"gradient of input {name}")


# ---------------------------------------------------------------------------------------------------
# One recurrent layer against torch

@pytest.mark.parametrize("kind", ["lstm", "gru", "simple_rnn"])
@pytest.mark.parametrize("return_sequences", [False, True])
@pytest.mark.parametrize("go_backwards", [False, True])
def test_recurrent_layer_matches_torch(kind, return_sequences, go_backwards):
    n, t, f, u = 3, 5, 4, 6
    options = f"return_sequences={str(return_sequences).lower()}, go_backwards={str(go_backwards).lower()}"
    if kind == "gru":
        options += ", reset_after=true"
    model = model_of(f"{kind}({u}, {options})", shape=f"[{t}, {f}]")
    layer = torch_layer(kind, f, u, seed=1)
    model.set_parameters(keras_weights(kind, layer, kind, u))
    x = rng(2).normal(size=(n, t, f))
    y = rng(3).normal(size=(n, t, u) if return_sequences else (n, u))

    def forward(tx):
        seq = tx["x"].flip(1) if go_backwards else tx["x"]  # Keras returns the reversed sequence as it ran
        out, _ = layer(seq)
        return {"output": out if return_sequences else out[:, -1]}

    compare_with_torch(model, x, y, forward, [(kind, layer, kind, u, "")])


def test_simple_rnn_relu_matches_torch():
    n, t, f, u = 3, 5, 4, 6
    model = model_of(f"simple_rnn({u}, activation=relu, return_sequences=true)", shape=f"[{t}, {f}]")
    torch.manual_seed(0)
    layer = torch.nn.RNN(f, u, nonlinearity="relu", batch_first=True).double()
    model.set_parameters(keras_weights("simple_rnn", layer, "simple_rnn", u))
    x = rng(60).normal(size=(n, t, f))
    compare_with_torch(model, x, rng(61).normal(size=(n, t, u)), lambda tx: {"output": layer(tx["x"])[0]},
                       [("simple_rnn", layer, "simple_rnn", u, "")])


def test_gru_reset_after_false_matches_keras_formula():
    """Keras' original GRU: one input bias, and the reset gate applied before the recurrent product."""
    n, t, f, u = 3, 5, 4, 3
    model = model_of(f"gru({u}, reset_after=false, return_sequences=true)", shape=f"[{t}, {f}]")
    weights = random_params(model, seed=62, scale=0.7)
    assert weights["gru.bias"].shape == (3 * u,)
    kernel, recurrent, bias = (weights[f"gru.{k}"] for k in ("kernel", "recurrent_kernel", "bias"))
    x = rng(63).normal(size=(n, t, f))
    h = np.zeros((n, u))
    expected = []
    for step in range(t):
        xz, xr, xh = np.split(x[:, step] @ kernel + bias, 3, axis=1)
        z = 1 / (1 + np.exp(-(xz + h @ recurrent[:, :u])))
        r = 1 / (1 + np.exp(-(xr + h @ recurrent[:, u:2 * u])))
        candidate = np.tanh(xh + (r * h) @ recurrent[:, 2 * u:])
        h = z * h + (1 - z) * candidate
        expected.append(h)
    close(model.predict(x), np.stack(expected, axis=1), "gru reset_after=false")
    check_gradients(model, x, rng(64).normal(size=(n, t, u)))


def test_lstm_starts_with_a_forget_bias_of_one():
    bias = model_of("lstm(4)").parameters()["lstm.bias"]
    assert bias.tolist() == [0.0] * 4 + [1.0] * 4 + [0.0] * 8
    assert not model_of("lstm(4, unit_forget_bias=false)").parameters()["lstm.bias"].any()
    assert "lstm.bias" not in model_of("lstm(4, use_bias=false)").parameters()


def test_input_dropout_is_off_in_predict_and_one_mask_per_sequence_in_training():
    x = rng(65).normal(size=(4, 6, 3))
    dropped = model_of("gru(5, dropout=0.5, return_sequences=true)")
    weights = random_params(dropped, seed=66)
    plain = model_of("gru(5, return_sequences=true)")
    plain.set_parameters(weights)
    close(dropped.predict(x), plain.predict(x), "dropout is off in predict")
    y = rng(67).normal(size=(4, 6, 5))
    first, second = dropped.loss_and_gradients(x, y)[0], dropped.loss_and_gradients(x, y)[0]
    assert first != second and first != plain.loss_and_gradients(x, y)[0]  # a fresh mask every training step
    # With no recurrence and every step alike, a mask shared by the steps gives every step the same output.
    still = model_of("simple_rnn(8, dropout=0.5, return_sequences=true)", shape="[6, 16]")
    weights = random_params(still, seed=68)
    still.set_parameters({**weights, "simple_rnn.recurrent_kernel": np.zeros((8, 8))})
    x = np.repeat(rng(69).normal(size=(4, 1, 16)), 6, axis=1)
    trainer = still._get_trainer()
    feeds = trainer.with_sample_weights(still._feeds(x, np.zeros((4, 6, 8))))  # each sample weighing 1
    outputs = trainer.train_executor.run(feeds, still.params)["output"]
    assert np.all(outputs == outputs[:, :1])
    assert not np.allclose(outputs, still.predict(x))


@pytest.mark.parametrize("layer", ["lstm(5, recurrent_dropout=0.5, return_sequences=true)",
                                   "gru(5, recurrent_dropout=0.4, reset_after=false)",
                                   "simple_rnn(5, recurrent_dropout=0.3, go_backwards=true)",
                                   "bidirectional(gru(5, recurrent_dropout=0.5))"])
def test_recurrent_dropout_changes_training_losses_and_leaves_predict_alone(layer):
    x = rng(70).normal(size=(4, 6, 3))
    dropped = model_of(layer)
    weights = random_params(dropped, seed=71)
    plain = model_of(re.sub(r"recurrent_dropout=[0-9.]+", "recurrent_dropout=0", layer))
    plain.set_parameters(weights)
    first_prediction = dropped.predict(x)
    close(dropped.predict(x), first_prediction, "predict is deterministic")
    close(first_prediction, plain.predict(x), "recurrent dropout is off in predict")
    y = rng(72).normal(size=first_prediction.shape)
    losses = [dropped.loss_and_gradients(x, y)[0] for _ in range(2)]
    assert losses[0] != losses[1]                                     # a fresh mask every training step
    assert plain.loss_and_gradients(x, y)[0] == plain.loss_and_gradients(x, y)[0]
    # One [batch, units] mask per scan, drawn from the layer's input and fed as its recurrent mask.
    graph = dropped._get_trainer().train_graph
    scans = [node for node in graph.nodes if node.op.endswith("_scan")]
    for scan in scans:
        producer = scan.inputs[-1].producer
        assert producer is not None and producer.op == "dropout_mask"
        assert scan.inputs[-1].type.shape == ("N", 5)
    assert len(scans) == (2 if layer.startswith("bidirectional") else 1)
    assert not any(node.op == "dropout_mask" for node in dropped._get_trainer().eval_graph.nodes)


@pytest.mark.parametrize("kind", ["lstm", "gru"])
@pytest.mark.parametrize("merge", sorted(MERGES))
@pytest.mark.parametrize("return_sequences", [False, True])
def test_bidirectional_matches_torch(kind, merge, return_sequences):
    n, t, f, u = 2, 5, 3, 4
    model = model_of(f"bidirectional({kind}({u}, return_sequences={str(return_sequences).lower()}), "
                     f"merge={merge})", shape=f"[{t}, {f}]")
    layer = torch_layer(kind, f, u, seed=4, bidirectional=True)
    directions = [(kind, layer, f"bidirectional.forward_{kind}", u, ""),
                  (kind, layer, f"bidirectional.backward_{kind}", u, "_reverse")]
    model.set_parameters({k: v for d in directions for k, v in keras_weights(*d).items()})
    x = rng(5).normal(size=(n, t, f))
    width = 2 * u if merge == "concat" else u
    y = rng(6).normal(size=(n, t, width) if return_sequences else (n, width))

    def forward(tx):
        out, _ = layer(tx["x"])  # (n, t, 2u): the backward half aligned with the input's steps
        ahead, behind = out[..., :u], out[..., u:]
        if not return_sequences:  # each direction's last step: the end for one, the start for the other
            ahead, behind = ahead[:, -1], behind[:, 0]
        return {"output": TORCH_MERGES[merge](ahead, behind)}

    compare_with_torch(model, x, y, forward, directions)


@pytest.mark.parametrize("merge", ["sum", "mul", "ave"])
def test_bidirectional_merges_two_independent_runs(merge):
    """bidirectional(merge=...) equals a forward layer and a go_backwards layer run on their own."""
    n, t, f, u = 3, 6, 3, 5
    x = rng(7).normal(size=(n, t, f))
    for return_sequences in ("true", "false"):
        both = model_of(f"bidirectional(gru({u}, return_sequences={return_sequences}), merge={merge})",
                        shape=f"[{t}, {f}]")
        weights = random_params(both, seed=8)
        ahead = model_of(f"gru({u}, return_sequences={return_sequences})", shape=f"[{t}, {f}]")
        behind = model_of(f"gru({u}, return_sequences={return_sequences}, go_backwards=true)",
                          shape=f"[{t}, {f}]")
        for half, direction in ((ahead, "forward"), (behind, "backward")):
            prefix = f"bidirectional.{direction}_gru."
            half.set_parameters({"gru." + k[len(prefix):]: v for k, v in weights.items() if k.startswith(prefix)})
        a, b = ahead.predict(x), behind.predict(x)
        if return_sequences == "true":
            b = b[:, ::-1]
        close(both.predict(x), MERGES[merge](a, b), f"merge={merge} return_sequences={return_sequences}")


def test_return_state_unpacks_the_final_states():
    n, t, f, u = 3, 6, 4, 8
    model = nnd.loads("model m {\n    input x: [6, 4]\n"
                      "    out, h, c = x -> lstm(8, return_sequences=true, return_state=true)\n"
                      "    output out\n    output h\n    output c\n}\n", dtype="float64").compile(loss="mse")
    assert model.output_names == ["out", "h", "c"]
    layer = torch_layer("lstm", f, u, seed=9)
    model.set_parameters(keras_weights("lstm", layer, "lstm", u))
    x = rng(10).normal(size=(n, t, f))
    y = {"out": rng(11).normal(size=(n, t, u)), "h": rng(12).normal(size=(n, u)),
         "c": rng(13).normal(size=(n, u))}

    def forward(tx):
        out, (h, c) = layer(tx["x"])
        return {"out": out, "h": h[0], "c": c[0]}

    compare_with_torch(model, x, y, forward, [("lstm", layer, "lstm", u, "")])


def test_bidirectional_return_state_gives_each_directions_states():
    n, t, f, u = 2, 5, 3, 4
    model = nnd.loads("model m {\n    input x: [5, 3]\n"
                      "    o, fh, fc, bh, bc = x -> bidirectional(lstm(4, return_state=true))\n"
                      "    output o\n    output fh\n    output fc\n    output bh\n    output bc\n}\n",
                      dtype="float64")
    layer = torch_layer("lstm", f, u, seed=14, bidirectional=True)
    model.set_parameters({**keras_weights("lstm", layer, "bidirectional.forward_lstm", u),
                          **keras_weights("lstm", layer, "bidirectional.backward_lstm", u, "_reverse")})
    x = rng(15).normal(size=(n, t, f))
    got = model.predict(x)
    out, (h, c) = layer(torch.tensor(x))
    expected = {"o": torch.cat([out[:, -1, :u], out[:, 0, u:]], dim=-1), "fh": h[0], "fc": c[0], "bh": h[1],
                "bc": c[1]}
    for name, value in expected.items():
        close(got[name], value.detach().numpy(), name)


def test_initial_state_from_an_encoder_matches_torch():
    """Encoder-decoder: the decoder starts from the encoder's final (h, c)."""
    n, u = 3, 8
    model = nnd.loads("""model m {
    input enc: [7, 3]
    input dec: [5, 2]
    _, h, c = enc -> lstm(8, return_state=true)
    dec -> lstm(8, initial_state=[h, c], return_sequences=true)
}
""", dtype="float64").compile(loss="mse")
    encoder, decoder = torch_layer("lstm", 3, u, seed=16), torch_layer("lstm", 2, u, seed=17)
    model.set_parameters({**keras_weights("lstm", encoder, "lstm", u),
                          **keras_weights("lstm", decoder, "lstm_1", u)})
    x = {"enc": rng(18).normal(size=(n, 7, 3)), "dec": rng(19).normal(size=(n, 5, 2))}
    y = rng(20).normal(size=(n, 5, u))

    def forward(tx):
        _, state = encoder(tx["enc"])
        out, _ = decoder(tx["dec"], state)
        return {"output": out}

    compare_with_torch(model, x, y, forward, [("lstm", encoder, "lstm", u, ""), ("lstm", decoder, "lstm_1", u, "")])


# ---------------------------------------------------------------------------------------------------
# Masks: padded batches equal their unpadded sequences run one at a time

LENGTHS = [6, 4, 1, 3, 2]


def _pad(sequences, steps, where, filler):
    rows = []
    for seq in sequences:
        pad = np.full((steps - len(seq),) + seq.shape[1:], filler, dtype=seq.dtype)
        rows.append(np.concatenate([seq, pad] if where == "post" else [pad, seq]))
    return np.stack(rows)


def _per_sequence(make, weights, sequences):
    """Each sequence alone through a model built for its own length, with the same weights."""
    results = []
    for seq in sequences:
        single = make(len(seq))
        single.set_parameters(weights)
        results.append(single.predict(seq[None])[0])
    return np.stack(results)


def _mean_gradients(make, weights, sequences, targets):
    total = None
    for seq, target in zip(sequences, targets):
        single = make(len(seq))
        single.set_parameters(weights)
        grads = single.loss_and_gradients(seq[None], target[None])[1]
        total = grads if total is None else {k: total[k] + grads[k] for k in grads}
    return {k: v / len(sequences) for k, v in total.items()}


@pytest.mark.parametrize("where", ["post", "pre"])
def test_embedding_mask_zero_lstm_equals_unpadded_sequences(where):
    r = rng(21)
    sequences = [r.integers(1, 7, size=length) for length in LENGTHS]  # ids 1..6; 0 is padding

    def make(steps):
        return model_of("embedding(7, 3, mask_zero=true)", "lstm(4)", shape=f"int32[{steps}]")

    model = make(6)
    weights = random_params(model, seed=22, scale=0.8)
    padded = _pad(sequences, 6, where, 0)
    close(model.predict(padded), _per_sequence(make, weights, sequences), f"{where}-padded batch")
    targets = r.normal(size=(len(sequences), 4))
    grads = model.loss_and_gradients(padded, targets)[1]
    for name, value in _mean_gradients(make, weights, sequences, targets).items():
        close(grads[name], value, f"gradient of {name}")
    assert np.all(grads["embedding.embeddings"][0] == 0)  # the padding id's vector never reaches the loss
    check_gradients(model, padded, targets)


@pytest.mark.parametrize("where", ["post", "pre"])
def test_masking_layer_gru_equals_unpadded_sequences(where):
    r = rng(23)
    sequences = [r.uniform(0.2, 1.0, size=(length, 3)) * r.choice([-1, 1], size=(length, 3)) for length in LENGTHS]

    def make(steps):
        return model_of("masking(mask_value=0)", "gru(4)", shape=f"[{steps}, 3]")

    model = make(6)
    weights = random_params(model, seed=24, scale=0.8)
    padded = _pad(sequences, 6, where, 0.0)
    close(model.predict(padded), _per_sequence(make, weights, sequences), f"{where}-padded batch")
    targets = r.normal(size=(len(sequences), 4))
    grads = model.loss_and_gradients(padded, targets)[1]
    for name, value in _mean_gradients(make, weights, sequences, targets).items():
        close(grads[name], value, f"gradient of {name}")
    check_gradients(model, padded, targets)
    input_grad = input_gradients(model, padded, targets)["x"]
    pads = _pad([np.zeros((len(s), 3)) for s in sequences], 6, where, 1.0).astype(bool)
    assert np.all(input_grad[pads] == 0)  # padded steps do not move the output


@pytest.mark.parametrize("where", ["post", "pre"])
def test_masked_bidirectional_equals_unpadded_sequences(where):
    r = rng(25)
    sequences = [r.integers(1, 7, size=length) for length in LENGTHS]

    def make(steps):
        return model_of("embedding(7, 3, mask_zero=true)", "bidirectional(simple_rnn(4))", shape=f"int32[{steps}]")

    model = make(6)
    weights = random_params(model, seed=26, scale=0.8)
    close(model.predict(_pad(sequences, 6, where, 0)), _per_sequence(make, weights, sequences), where)


@pytest.mark.parametrize("where", ["post", "pre"])
def test_masked_bidirectional_sequences_are_zero_at_the_padding(where):
    """Keras' Bidirectional zeroes both halves' outputs at padded steps (zero_output_for_mask); the real
    steps equal the unpadded sequence's."""
    r = rng(48)
    sequences = [r.integers(1, 7, size=length) for length in LENGTHS]

    def make(steps):
        return model_of("embedding(7, 3, mask_zero=true)", "bidirectional(lstm(4, return_sequences=true))",
                        shape=f"int32[{steps}]")

    model = make(6)
    weights = random_params(model, seed=49, scale=0.8)
    got = model.predict(_pad(sequences, 6, where, 0))
    for row, seq in zip(got, sequences):
        single = make(len(seq))
        single.set_parameters(weights)
        real = slice(0, len(seq)) if where == "post" else slice(6 - len(seq), 6)
        close(row[real], single.predict(seq[None])[0], f"{where}-padded, real steps")
        assert np.all(np.delete(row, np.arange(6)[real], axis=0) == 0)


def test_masked_return_sequences_keeps_the_mask_for_the_next_layer():
    """lstm(return_sequences) passes the mask on: a second lstm over it also skips the padding."""
    r = rng(27)
    sequences = [r.integers(1, 5, size=length) for length in LENGTHS]

    def make(steps):
        return model_of("embedding(5, 3, mask_zero=true)", "lstm(4, return_sequences=true)", "gru(3)",
                        shape=f"int32[{steps}]")

    model = make(6)
    weights = random_params(model, seed=28, scale=0.8)
    close(model.predict(_pad(sequences, 6, "post", 0)), _per_sequence(make, weights, sequences), "stacked")


SEQUENCE_HEADS = [("dense(2)", "mse", 2), ("time_distributed(dense(2, activation=sigmoid))", "binary_crossentropy", 2),
                  ("dense(3, activation=softmax)", "sparse_categorical_crossentropy", 3)]


def _sequence_targets(r, loss, lengths, steps, width, where):
    """Per-sequence targets for the real steps, and the padded batch's targets with junk at the padding."""
    if loss == "sparse_categorical_crossentropy":
        real = [r.integers(0, width, size=length) for length in lengths]
        return real, _pad(real, steps, where, width - 1)
    if loss == "binary_crossentropy":
        real = [r.integers(0, 2, size=(length, width)).astype(np.float64) for length in lengths]
        return real, _pad(real, steps, where, 1.0)
    real = [r.normal(size=(length, width)) for length in lengths]
    return real, _pad(real, steps, where, 7.5)


@pytest.mark.parametrize("where", ["post", "pre"])
@pytest.mark.parametrize("head, loss, width", SEQUENCE_HEADS)
def test_masked_sequence_loss_counts_the_real_steps_only(head, loss, width, where):
    """A sequence output under a padding mask: the loss of the padded batch and its gradients equal those of
    the unpadded sequences run one at a time, each weighted by its number of real steps (the mean over all
    real steps of the batch); the padded steps' targets do not matter."""
    r = rng(73)
    sequences = [r.integers(1, 7, size=length) for length in LENGTHS]

    def make(steps):
        return model_of("embedding(7, 3, mask_zero=true)", "lstm(4, return_sequences=true)", head,
                        shape=f"int32[{steps}]", loss=loss)

    model = make(6)
    weights = random_params(model, seed=74, scale=0.8)
    real, targets = _sequence_targets(r, loss, LENGTHS, 6, width, where)
    padded = _pad(sequences, 6, where, 0)
    loss_value, grads = model.loss_and_gradients(padded, targets)
    expected_loss, expected = 0.0, {}
    for seq, target in zip(sequences, real):
        single = make(len(seq))
        single.set_parameters(weights)
        one_loss, one_grads = single.loss_and_gradients(seq[None], target[None])
        expected_loss += len(seq) * one_loss
        for name, value in one_grads.items():
            expected[name] = expected.get(name, 0.0) + len(seq) * value
    total_steps = sum(LENGTHS)
    assert loss_value == pytest.approx(expected_loss / total_steps, rel=1e-10)
    for name, value in expected.items():
        close(grads[name], value / total_steps, f"gradient of {name}")
    other_junk = _sequence_targets(rng(75), loss, LENGTHS, 6, width, where)[1]
    for k, seq in enumerate(sequences):   # the real steps' targets as before, the padding's changed
        real_steps = slice(0, len(seq)) if where == "post" else slice(6 - len(seq), 6)
        other_junk[k][real_steps] = targets[k][real_steps]
    assert model.loss_and_gradients(padded, other_junk)[0] == pytest.approx(loss_value, rel=1e-12)
    check_gradients(model, padded, targets)


def test_masked_sequence_loss_of_a_batch_without_real_steps_is_zero():
    model = model_of("embedding(5, 3, mask_zero=true)", "gru(3, return_sequences=true)", "dense(2)",
                     shape="int32[4]")
    random_params(model, seed=76)
    loss, grads = model.loss_and_gradients(np.zeros((2, 4), dtype=np.int64), rng(77).normal(size=(2, 4, 2)))
    assert loss == 0.0 and all(not np.any(g) for g in grads.values())


def test_unmasked_outputs_keep_the_plain_mean():
    """Without a mask (or when the output is not a sequence) the loss stays the mean over every element."""
    model = model_of("lstm(3, return_sequences=true)", "dense(2)")
    random_params(model, seed=78)
    x, y = rng(79).normal(size=(3, 6, 3)), rng(80).normal(size=(3, 6, 2))
    assert model.loss_and_gradients(x, y)[0] == pytest.approx(np.mean((model.predict(x) - y) ** 2), rel=1e-12)
    pooled = model_of("embedding(5, 3, mask_zero=true)", "lstm(3)", "dense(2)", shape="int32[4]")
    assert "output" not in pooled.graph.output_masks   # the mask ends at a recurrent layer without sequences
    sequence = model_of("embedding(5, 3, mask_zero=true)", "lstm(3, return_sequences=true)", "dense(2)",
                        shape="int32[4]")
    assert sequence.graph.output_masks["output"].producer.op == "nonzero_mask"


def test_output_masks_follow_the_graph_through_copies_and_passes():
    from nnd.compiler.passes import PassManager, eliminate_dead_code

    graph = model_of("embedding(5, 3, mask_zero=true)", "lstm(3, return_sequences=true)", "dense(2)",
                     shape="int32[4]").graph
    assert graph.copy_shallow().output_masks == graph.output_masks
    twin = graph.clone()
    assert twin.output_masks["output"] is not graph.output_masks["output"]
    assert twin.output_masks["output"].producer in twin.nodes
    optimized = PassManager.for_level(2).run(graph)
    assert optimized.output_masks["output"].producer in optimized.nodes
    # Only the loss reads the mask of embedding -> dense: dead in the inference graph, so DCE drops the entry
    # along with the node, while the loss graph (built before any pass) still leaves the padding out.
    flat = model_of("embedding(5, 3, mask_zero=true)", "dense(2)", shape="int32[4]")
    assert "output" in flat.graph.output_masks and "output" not in eliminate_dead_code(flat.graph).output_masks
    random_params(flat, seed=84)
    ids = np.array([[1, 2, 0, 0], [3, 0, 0, 0]])
    y = rng(85).normal(size=(2, 4, 2))
    error = (flat.predict(ids) - y) ** 2
    assert flat.loss_and_gradients(ids, y)[0] == pytest.approx(error.mean(axis=-1)[ids != 0].mean(), rel=1e-12)


def test_metrics_of_a_masked_sequence_output_count_the_real_steps():
    r = rng(81)
    sequences = [r.integers(1, 7, size=length) for length in LENGTHS]
    padded = _pad(sequences, 6, "post", 0)
    real = padded != 0
    classifier = model_of("embedding(7, 3, mask_zero=true)", "lstm(4, return_sequences=true)",
                          "dense(3, activation=softmax)", shape="int32[6]", loss="sparse_categorical_crossentropy")
    classifier.compile(metrics=["accuracy"])
    random_params(classifier, seed=82, scale=1.5)
    labels = r.integers(0, 3, size=(len(LENGTHS), 6))
    hits = classifier.predict(padded).argmax(axis=-1) == labels
    assert classifier.evaluate(padded, labels, batch_size=2)["accuracy"] == pytest.approx(hits[real].mean(),
                                                                                          rel=1e-12)
    regressor = model_of("embedding(7, 3, mask_zero=true)", "gru(4, return_sequences=true)", "dense(2)",
                         shape="int32[6]")
    regressor.compile(metrics=["mae", "mse"])
    random_params(regressor, seed=83)
    targets = r.normal(size=(len(LENGTHS), 6, 2))
    error = regressor.predict(padded) - targets
    logs = regressor.evaluate(padded, targets, batch_size=2)
    assert logs["mae"] == pytest.approx(np.abs(error)[real].mean(), rel=1e-12)
    assert logs["mse"] == pytest.approx((error ** 2)[real].mean(), rel=1e-12)
    assert logs["loss"] != pytest.approx((error ** 2).mean(), rel=1e-6)


# ---------------------------------------------------------------------------------------------------
# conv1d and 1-D pooling against torch

def _same_pads(steps, size, stride, dilation):
    """TensorFlow's 'same': the output has ceil(steps / stride) steps, the extra padding goes at the end."""
    span = (size - 1) * dilation + 1
    out = -(-steps // stride)
    total = max((out - 1) * stride + span - steps, 0)
    return total // 2, total - total // 2


@pytest.mark.parametrize("padding, size, stride, dilation", [
    ("valid", 3, 1, 1), ("valid", 2, 2, 1), ("valid", 3, 1, 2), ("same", 3, 1, 1), ("same", 4, 1, 1),
    ("same", 4, 2, 1), ("same", 3, 1, 3), ("causal", 3, 1, 1), ("causal", 3, 1, 2), ("causal", 2, 3, 1)])
def test_conv1d_matches_torch(padding, size, stride, dilation):
    n, t, c, filters = 2, 9, 3, 4
    model = model_of(f"conv1d({filters}, {size}, strides={stride}, padding={padding}, dilation_rate={dilation}, "
                     "activation=tanh)", shape=f"[{t}, {c}]")
    weights = random_params(model, seed=29)
    x = rng(30).normal(size=(n, t, c))
    tx = torch.tensor(x, requires_grad=True)
    kernel = torch.tensor(weights["conv1d.kernel"].transpose(2, 1, 0).copy(), requires_grad=True)  # (out, in, k)
    bias = torch.tensor(weights["conv1d.bias"], requires_grad=True)
    if padding == "causal":
        pads = ((size - 1) * dilation, 0)
    elif padding == "same":
        pads = _same_pads(t, size, stride, dilation)
    else:
        pads = (0, 0)
    out = torch.tanh(F.conv1d(F.pad(tx.transpose(1, 2), pads), kernel, bias, stride=stride, dilation=dilation))
    out = out.transpose(1, 2)
    got = model.predict(x)
    assert got.shape == tuple(out.shape)
    close(got, out.detach().numpy(), "conv1d output")
    y = rng(31).normal(size=got.shape)
    torch_loss = F.mse_loss(out, torch.tensor(y))
    torch_loss.backward()
    loss, grads = model.loss_and_gradients(x, y)
    assert loss == pytest.approx(torch_loss.item(), rel=TOL)
    close(grads["conv1d.kernel"], kernel.grad.numpy().transpose(2, 1, 0), "kernel gradient")
    close(grads["conv1d.bias"], bias.grad.numpy(), "bias gradient")
    close(input_gradients(model, x, y)["x"], tx.grad.numpy(), "input gradient")


def _pool_same(x, size, stride, reduce):
    """1-D pooling with 'same' padding in NumPy; padded positions take no part (TensorFlow's rule)."""
    left, _ = _same_pads(x.shape[1], size, stride, 1)
    out = []
    for i in range(-(-x.shape[1] // stride)):
        start = i * stride - left
        out.append(reduce(x[:, max(start, 0):start + size], axis=1))
    return np.stack(out, axis=1)


@pytest.mark.parametrize("kind, size, stride", [("maxpool1d", 2, None), ("maxpool1d", 3, 2),
                                                ("avgpool1d", 2, None), ("avgpool1d", 3, 1)])
def test_pool1d_valid_matches_torch(kind, size, stride):
    n, t, c = 2, 9, 3
    strides = "" if stride is None else f", strides={stride}"
    model = model_of("dense(3)", f"{kind}({size}{strides})", shape=f"[{t}, {c}]")
    model.set_parameters({"dense.kernel": np.eye(3), "dense.bias": np.zeros(3)})  # a path for the gradient
    x = rng(32).normal(size=(n, t, c))
    tx = torch.tensor(x, requires_grad=True)
    pool = F.max_pool1d if kind == "maxpool1d" else F.avg_pool1d
    out = pool(tx.transpose(1, 2), size, stride or size).transpose(1, 2)
    close(model.predict(x), out.detach().numpy(), kind)
    y = rng(33).normal(size=tuple(out.shape))
    F.mse_loss(out, torch.tensor(y)).backward()
    close(input_gradients(model, x, y)["x"], tx.grad.numpy(), f"{kind} input gradient")


@pytest.mark.parametrize("kind, reduce", [("maxpool1d", np.max), ("avgpool1d", np.mean)])
@pytest.mark.parametrize("size, stride", [(2, 2), (3, 2), (4, 1)])
def test_pool1d_same_matches_numpy(kind, reduce, size, stride):
    x = rng(34).normal(size=(2, 7, 3))
    model = model_of(f"{kind}({size}, strides={stride}, padding=same)", shape="[7, 3]")
    close(model.predict(x), _pool_same(x, size, stride, reduce), f"{kind} same")


@pytest.mark.parametrize("kind, reduce", [("global_maxpool1d", np.max), ("global_avgpool1d", np.mean)])
def test_global_pool1d_matches_numpy(kind, reduce):
    x = rng(35).normal(size=(3, 7, 4))
    close(model_of(f"{kind}()", shape="[7, 4]").predict(x), reduce(x, axis=1), kind)


def test_global_avgpool1d_averages_the_real_steps_of_a_masked_sequence():
    """Keras' GlobalAveragePooling1D divides by the number of real steps (embedding + average: a bag of
    words); global_maxpool1d, like Keras', ignores the mask."""
    ids = np.array([[3, 1, 4, 0, 0], [0, 0, 0, 2, 5], [1, 2, 3, 4, 5]])
    average = model_of("embedding(6, 3, mask_zero=true)", "dense(2)", "global_avgpool1d()", shape="int32[5]")
    weights = random_params(average, seed=50)
    vectors = weights["embedding.embeddings"][ids] @ weights["dense.kernel"] + weights["dense.bias"]
    real = (ids != 0)[..., None]
    close(average.predict(ids), (vectors * real).sum(axis=1) / real.sum(axis=1), "masked average")
    check_gradients(average, ids, rng(51).normal(size=(3, 2)))
    largest = model_of("embedding(6, 3, mask_zero=true)", "global_maxpool1d()", shape="int32[5]")
    largest.set_parameters({"embedding.embeddings": weights["embedding.embeddings"]})
    close(largest.predict(ids), weights["embedding.embeddings"][ids].max(axis=1), "max over every step")


# ---------------------------------------------------------------------------------------------------
# Wrappers and repeat_vector

def test_time_distributed_dense_equals_dense_per_step():
    n, t, f = 3, 5, 4
    wrapped = model_of("time_distributed(dense(6, activation=tanh))", shape=f"[{t}, {f}]")
    weights = random_params(wrapped, seed=36)
    plain = model_of("dense(6, activation=tanh)", shape=f"[{f}]")
    plain.set_parameters({"dense." + k.split(".")[-1]: v for k, v in weights.items()})
    x = rng(37).normal(size=(n, t, f))
    got = wrapped.predict(x)
    for step in range(t):
        close(got[:, step], plain.predict(x[:, step]), f"step {step}")
    # The mean loss over (n, t) steps is the mean over n*t separate vectors: the same gradients.
    y = rng(38).normal(size=(n, t, 6))
    loss, grads = wrapped.loss_and_gradients(x, y)
    flat_loss, flat_grads = plain.loss_and_gradients(x.reshape(n * t, f), y.reshape(n * t, 6))
    assert loss == pytest.approx(flat_loss, rel=1e-12)
    for name, value in grads.items():
        close(value, flat_grads["dense." + name.split(".")[-1]], name)


FRAME_BLOCK = """block frame(f) {
    f -> conv2d(3, 3, activation=relu) -> maxpool2d(2)
      -> conv2d(4, 2, activation=tanh) -> global_avgpool2d()
}
"""


def test_time_distributed_block_equals_the_block_per_frame():
    n, t = 2, 4
    video = nnd.loads(FRAME_BLOCK + "model m {\n    input x: [4, 10, 10, 2]\n    time_distributed(frame())\n}\n",
                      dtype="float64").compile(loss="mse")
    single = nnd.loads(FRAME_BLOCK + "model m {\n    input x: [10, 10, 2]\n    frame()\n}\n",
                       dtype="float64").compile(loss="mse")
    assert set(video.parameters()) == set(single.parameters())
    weights = random_params(video, seed=39)
    single.set_parameters(weights)
    x = rng(40).normal(size=(n, t, 10, 10, 2))
    got = video.predict(x)
    assert got.shape == (n, t, 4)
    for frame in range(t):
        close(got[:, frame], single.predict(x[:, frame]), f"frame {frame}")
    y = rng(41).normal(size=(n, t, 4))
    loss, grads = video.loss_and_gradients(x, y)
    flat_loss, flat_grads = single.loss_and_gradients(x.reshape(n * t, 10, 10, 2), y.reshape(n * t, 4))
    assert loss == pytest.approx(flat_loss, rel=1e-12)
    for name, value in grads.items():
        close(value, flat_grads[name], name)


def test_repeat_vector():
    x = rng(42).normal(size=(3, 5))
    got = model_of("repeat_vector(4)", shape="[5]").predict(x)
    assert got.shape == (3, 4, 5)
    close(got, np.repeat(x[:, None, :], 4, axis=1), "repeat_vector")


# ---------------------------------------------------------------------------------------------------
# Finite differences through whole models

def test_gradients_of_embedding_mask_bidirectional_gru_time_distributed_conv1d():
    model = model_of("embedding(6, 3, mask_zero=true)",
                     "bidirectional(gru(3, return_sequences=true), merge=concat)",
                     "time_distributed(dense(3, activation=tanh))",
                     "conv1d(2, 3, padding=causal, activation=tanh)",
                     "global_maxpool1d()",
                     shape="int32[5]")
    random_params(model, seed=43, scale=0.8)
    x = np.array([[3, 1, 4, 1, 5], [2, 5, 0, 0, 0], [0, 0, 4, 2, 3], [1, 0, 0, 0, 0]])
    y = rng(44).normal(size=(4, 2))
    check_gradients(model, x, y)


def test_gradients_of_repeat_vector_decoder_with_strided_conv_and_pooling():
    model = model_of("dense(3, activation=tanh)", "repeat_vector(6)",
                     "lstm(3, return_sequences=true, go_backwards=true)",
                     "conv1d(3, 2, strides=2, padding=same)", "maxpool1d(2, padding=same)",
                     "simple_rnn(2, return_sequences=true)", "avgpool1d(2, strides=1)", "global_avgpool1d()",
                     shape="[4]")
    random_params(model, seed=45, scale=0.8)
    x = rng(46).normal(size=(3, 4))
    y = rng(47).normal(size=(3, 2))
    check_gradients(model, x, y)


# ---------------------------------------------------------------------------------------------------
# Keras' parameter counts

def test_summary_of_the_seed_lstm_classifier_matches_keras():
    result = CliRunner().invoke(main, ["summary", "examples/lstm_classifier.nnd"])
    assert result.exit_code == 0, result.output
    rows = [line for line in result.output.splitlines() if line.startswith(("lstm", "dense"))]
    assert [row.split()[:2] for row in rows] == [["lstm", "(lstm)"], ["lstm_1", "(lstm)"], ["dense", "(dense)"]]
    assert "(None, 100, 64)" in rows[0] and "33,024" in rows[0]
    assert "(None, 64)" in rows[1] and "33,024" in rows[1]
    assert "(None, 1)" in rows[2] and "65" in rows[2]
    assert "Total params: 66,113" in result.output


@pytest.mark.parametrize("body, shape, expected", [
    ("gru(32, reset_after=true)", "[10, 8]", 3 * 32 * (8 + 32 + 2)),
    ("gru(32)", "[10, 8]", 4032),  # reset_after defaults to true, as in Keras 2
    ("gru(32, reset_after=false)", "[10, 8]", 3 * 32 * (8 + 32 + 1)),
    ("lstm(16)", "[10, 8]", 4 * 16 * (8 + 16 + 1)),
    ("simple_rnn(16)", "[10, 8]", 16 * (8 + 16 + 1)),
    ("bidirectional(lstm(16))", "[10, 8]", 3200),
    ("embedding(50, 8)", "int32[10]", 400),
    ("conv1d(16, 3)", "[10, 4]", 208),
    ("time_distributed(dense(5))", "[10, 4]", 25),
])
def test_parameter_counts_match_keras(body, shape, expected):
    model = model_of(body, shape=shape)
    assert sum(v.size for v in model.parameters().values()) == expected


def test_time_distributed_counts_the_flops_of_every_step():
    def flops(*body, shape):
        return summarize(model_of(*body, shape=shape).graph).flops_per_sample

    assert flops("time_distributed(dense(4, activation=tanh))", shape="[5, 3]") == \
        5 * flops("dense(4, activation=tanh)", shape="[3]")
    video = nnd.loads(FRAME_BLOCK + "model m {\n    input x: [4, 10, 10, 2]\n    time_distributed(frame())\n}\n")
    single = nnd.loads(FRAME_BLOCK + "model m {\n    input x: [10, 10, 2]\n    frame()\n}\n")
    assert summarize(video.graph).flops_per_sample == 4 * summarize(single.graph).flops_per_sample > 0


def test_summary_shows_a_time_distributed_block_as_one_row_like_keras():
    result = CliRunner().invoke(main, ["summary", "examples/video_cnn_lstm.nnd"])
    assert result.exit_code == 0, result.output
    rows = [line.split()[0] for line in result.output.splitlines()[4:] if line and not line.startswith("=")]
    assert rows[:4] == ["clip", "time_distributed", "lstm", "dense"]
    wrapper = next(line for line in result.output.splitlines() if line.startswith("time_distributed"))
    assert "(None, 6, 32)" in wrapper and "4,800" in wrapper  # conv2d 160 + conv2d_1 4,640, as Keras counts
    assert "Total params: 13,450" in result.output


def test_bidirectional_splits_initial_state_between_its_directions_as_keras_does():
    source = ("model m {\n    input x: [5, 3]\n    input fh: [4]\n    input fc: [4]\n    input bh: [4]\n"
              "    input bc: [4]\n    output x -> bidirectional(lstm(4, initial_state=[fh, fc, bh, bc]))\n}\n")
    model = nnd.loads(source)
    one_way = "model d {{\n    input x: [5, 3]\n    input h: [4]\n    input c: [4]\n" \
              "    output x -> lstm(4, initial_state=[h, c]{})\n}}\n"
    forward, backward = nnd.loads(one_way.format("")), nnd.loads(one_way.format(", go_backwards=true"))
    params = model.parameters()
    for single, direction in ((forward, "forward"), (backward, "backward")):
        single.set_parameters({k.replace(f"bidirectional.{direction}_lstm", "lstm"): v for k, v in params.items()
                               if direction in k})
    rng = np.random.default_rng(0)
    x = rng.normal(size=(2, 5, 3)).astype(np.float32)
    fh, fc, bh, bc = (rng.normal(size=(2, 4)).astype(np.float32) for _ in range(4))
    expected = np.concatenate([forward.predict({"x": x, "h": fh, "c": fc}),
                               backward.predict({"x": x, "h": bh, "c": bc})], axis=-1)
    np.testing.assert_allclose(model.predict({"x": x, "fh": fh, "fc": fc, "bh": bh, "bc": bc}), expected, atol=1e-6)
    with pytest.raises(nnd.NndError, match=r"bidirectional\(lstm\) takes 4 initial states \(forward h, forward c, "
                                           r"backward h, backward c\), got 2"):
        nnd.loads(source.replace("[fh, fc, bh, bc]", "[fh, fc]"))
