import json
import os
import struct

import numpy as np
import pytest

from nnd.compiler.diagnostics import NndError
from nnd.runtime import checkpoint as ck
from nnd.runtime.checkpoint import check_compatible, load_checkpoint, load_weights, save_checkpoint, save_weights
from nnd.runtime.optimizers import make_optimizer


def _params():
    rng = np.random.default_rng(0)
    return {"dense/w": rng.normal(size=(4, 3)).astype(np.float32), "dense/b": np.zeros(3, np.float32),
            "bn.count": np.array(7, np.int64)}


def test_round_trip_with_optimizer_state(tmp_path):
    params = {k: v for k, v in _params().items() if v.dtype == np.float32}
    opt = make_optimizer("adam")
    opt.bind(params)
    opt.step({k: np.ones_like(v) for k, v in params.items()})
    rng = np.random.default_rng(3)
    state = rng.bit_generator.state
    path = tmp_path / "ckpt.npz"
    save_checkpoint(path, params, opt.state_dict(), epoch=4, rng_state=state, extra={"model": "mlp", "h": [1.5]})
    c = load_checkpoint(path)
    assert c.epoch == 4 and c.extra == {"model": "mlp", "h": [1.5]} and c.path == path
    assert list(c.params) == list(params)
    for k in params:
        np.testing.assert_array_equal(c.params[k], params[k])
        assert c.params[k].dtype == np.float32
    assert int(c.optimizer_state["iterations"]) == 1
    restored = np.random.default_rng()
    restored.bit_generator.state = c.rng_state
    assert restored.random() == rng.random()
    opt2 = make_optimizer("adam")
    opt2.bind({k: v.copy() for k, v in c.params.items()})
    opt2.load_state_dict(c.optimizer_state)
    assert opt2.iterations == 1
    raw = np.load(path, allow_pickle=False)
    assert {"param/dense/w", "opt/m/dense/w", "meta"} <= set(raw.files) and raw["meta"].dtype.kind == "U"


@pytest.mark.parametrize("rng_state", [b"\x00\x01binary", '{"json": "as text"}', None])
def test_rng_state_kinds(tmp_path, rng_state):
    save_checkpoint(tmp_path / "c.npz", _params(), {}, 1, rng_state)
    assert load_checkpoint(tmp_path / "c.npz").rng_state == rng_state


def test_failed_write_leaves_old_file_intact(tmp_path, monkeypatch):
    path = tmp_path / "ckpt.npz"
    save_checkpoint(path, _params(), {}, 1)
    before = path.read_bytes()

    def boom(fd):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(ck.os, "fsync", boom)
    with pytest.raises(NndError, match=r"cannot write checkpoint .*ckpt.npz: No space left on device"):
        save_checkpoint(path, {"other": np.ones(1000)}, {}, 2)
    assert path.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ckpt.npz"]  # no temporary left behind
    monkeypatch.undo()

    class Unserializable:
        pass

    with pytest.raises(NndError, match="metadata is not JSON-serializable"):
        save_checkpoint(path, _params(), {}, 3, extra={"x": Unserializable()})
    assert path.read_bytes() == before and load_checkpoint(path).epoch == 1


def test_interrupt_during_write_keeps_old_file(tmp_path, monkeypatch):
    path = tmp_path / "c.npz"
    save_checkpoint(path, _params(), {}, 1)
    before = path.read_bytes()
    real_savez = np.savez

    def partial(f, **arrays):
        f.write(b"PK\x03\x04partial")
        raise KeyboardInterrupt

    monkeypatch.setattr(ck.np, "savez", partial)
    with pytest.raises(KeyboardInterrupt):
        save_checkpoint(path, _params(), {}, 2)
    monkeypatch.setattr(ck.np, "savez", real_savez)
    assert path.read_bytes() == before and os.listdir(tmp_path) == ["c.npz"]


def test_corrupt_and_foreign_files(tmp_path):
    path = tmp_path / "c.npz"
    save_checkpoint(path, _params(), {}, 1)
    data = path.read_bytes()
    for name, blob in [("trunc.npz", data[: len(data) // 2]), ("garbage.npz", b"hello"), ("empty.npz", b"")]:
        p = tmp_path / name
        p.write_bytes(blob)
        with pytest.raises(NndError, match=f"checkpoint .*{name} is corrupt or truncated"):
            load_checkpoint(p)
        assert p.read_bytes() == blob  # nothing touched
    # Flip bytes inside the stored data: the zip CRC catches it.
    bad = bytearray(data)
    start = data.index(b"\x93NUMPY") + 200
    bad[start:start + 8] = b"\xff" * 8
    (tmp_path / "crc.npz").write_bytes(bytes(bad))
    with pytest.raises(NndError, match="crc.npz is corrupt or truncated"):
        load_checkpoint(tmp_path / "crc.npz")
    np.savez(tmp_path / "plain.npz", w=np.zeros(2))
    with pytest.raises(NndError, match="plain.npz is not an nnd checkpoint"):
        load_checkpoint(tmp_path / "plain.npz")
    with pytest.raises(NndError, match="checkpoint file not found"):
        load_checkpoint(tmp_path / "missing.npz")


@pytest.mark.parametrize("suffix", [".npz", ".safetensors"])
def test_weights_round_trip(tmp_path, suffix):
    params = _params()
    params["flag"] = np.array([True, False])
    params["half"] = np.arange(6, dtype=np.float16).reshape(2, 3)
    path = tmp_path / f"w{suffix}"
    save_weights(path, params)
    loaded = load_weights(path)
    assert set(loaded) == set(params)
    for k in params:
        assert loaded[k].dtype == params[k].dtype and loaded[k].shape == params[k].shape
        np.testing.assert_array_equal(loaded[k], params[k])


def test_safetensors_layout_by_hand(tmp_path):
    path = tmp_path / "w.safetensors"
    save_weights(path, {"b": np.array([1.0, 2.0], np.float32), "a": np.array([[3]], np.int64)})
    blob = path.read_bytes()
    (n,) = struct.unpack("<Q", blob[:8])
    assert n % 8 == 0
    header = json.loads(blob[8:8 + n])
    assert header["a"] == {"dtype": "I64", "shape": [1, 1], "data_offsets": [0, 8]}
    assert header["b"] == {"dtype": "F32", "shape": [2], "data_offsets": [8, 16]}
    assert blob[8 + n + 8:] == np.array([1.0, 2.0], "<f4").tobytes()


def test_safetensors_bf16_and_errors(tmp_path):
    values = np.array([1.5, -2.0], np.float32)
    bf16 = (values.view(np.uint32) >> 16).astype("<u2").tobytes()
    head = json.dumps({"x": {"dtype": "BF16", "shape": [2], "data_offsets": [0, 4]},
                       "__metadata__": {"format": "pt"}}).encode()
    p = tmp_path / "bf.safetensors"
    p.write_bytes(struct.pack("<Q", len(head)) + head + bf16)
    np.testing.assert_array_equal(load_weights(p)["x"], values)
    p.write_bytes(struct.pack("<Q", len(head)) + head + bf16[:3])
    with pytest.raises(NndError, match=r"bf.safetensors is corrupt or truncated: tensor 'x' \(BF16, shape \(2,\)\)"):
        load_weights(p)
    p.write_bytes(struct.pack("<Q", 1000) + b"{}")
    with pytest.raises(NndError, match="header length 1000 exceeds the file size"):
        load_weights(p)
    p.write_bytes(struct.pack("<Q", 2) + b"{x")
    with pytest.raises(NndError, match="unreadable safetensors header"):
        load_weights(p)
    with pytest.raises(NndError, match="unsupported extension '.h5'"):
        save_weights(tmp_path / "w.h5", {"a": np.zeros(1)})


def test_load_weights_from_checkpoint(tmp_path):
    save_checkpoint(tmp_path / "c.npz", _params(), {"iterations": np.array(1)}, 2)
    assert set(load_weights(tmp_path / "c.npz")) == set(_params())


def test_check_compatible_messages():
    expected = {"dense.w": (784, 64), "dense.b": (64,), "out.w": (64, 10)}
    check_compatible(expected, {"dense.w": np.zeros((784, 64)), "dense.b": (64,), "out.w": [64, 10]})
    with pytest.raises(NndError) as e:
        check_compatible(expected, {"dense.w": (784, 128), "dense.b": (64,), "out.W": (64, 10), "extra": (3,)})
    msg = str(e.value)
    assert "parameter 'dense.w' has shape (784, 128) in the checkpoint but the model expects (784, 64)" in msg
    assert "parameter 'out.w' (shape (64, 10)) is missing from the checkpoint; it has 'out.W' (shape (64, 10))" in msg
    assert "the checkpoint has unexpected parameter 'extra' (shape (3,))" in msg
    assert len(e.value.diagnostics) == 4
    # Non-strict: only shape mismatches count.
    check_compatible(expected, {"dense.b": (64,)}, strict=False)
    with pytest.raises(NndError, match="'dense.b' has shape \\(32,\\)"):
        check_compatible(expected, {"dense.b": (32,)}, strict=False)


def test_weights_of_another_model_are_summarized_in_one_error():
    expected = {f"layer{i}.w": (8, 8) for i in range(12)}
    other = {f"block{i}.w": (4, 4) for i in range(10)} | {"layer0.w": (2, 8), "layer1.w": (8, 8)}
    with pytest.raises(NndError) as e:
        check_compatible(expected, other, source="weights file w.npz")
    assert len(e.value.diagnostics) == 1
    diagnostic = e.value.diagnostics[0]
    assert diagnostic.message == ("weights file w.npz does not fit the model: 10 of the model's 12 parameters are "
                                  "missing; 1 has another shape; 10 are not the model's")
    assert diagnostic.notes[0] == ("parameter 'layer0.w' has shape (2, 8) in weights file w.npz but the model "
                                   "expects (8, 8)")
    assert list(diagnostic.notes[-2:]) == ["... and 17 more",
                                          "most parameters disagree: are these the weights of another model?"]
    assert len(diagnostic.notes) == 6


def test_safetensors_interop_with_reference_library(tmp_path):
    sn = pytest.importorskip("safetensors.numpy")
    params = {"w": np.arange(6, dtype=np.float32).reshape(2, 3), "b": np.array([1, 2], np.int64),
              "h": np.ones(3, np.float16), "f": np.array([True])}
    save_weights(tmp_path / "ours.safetensors", params)
    theirs = sn.load_file(str(tmp_path / "ours.safetensors"))
    sn.save_file(params, str(tmp_path / "theirs.safetensors"), metadata={"k": "v"})
    ours = load_weights(tmp_path / "theirs.safetensors")
    for k, v in params.items():
        np.testing.assert_array_equal(theirs[k], v)
        np.testing.assert_array_equal(ours[k], v)
        assert ours[k].dtype == v.dtype
