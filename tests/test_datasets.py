import gzip
import hashlib
from pathlib import Path

import numpy as np
import pytest

from nnd.compiler.diagnostics import NndError
from nnd.runtime import datasets as ds
from nnd.runtime.datasets import (IDX_FILES, batches, check_inputs, check_labels, load_arrays, load_csv,
                                  load_named, read_idx, search_dirs, train_validation_split, write_idx)

REAL_ROOT = Path("/usr/share/datasets")


@pytest.fixture(autouse=True)
def _isolated(monkeypatch, tmp_path):
    """No network, no real home cache, no system dataset directory unless a test asks for it."""
    monkeypatch.setenv("NND_OFFLINE", "1")
    monkeypatch.delenv("NND_DATA", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.setattr(ds, "SYSTEM_DATA_ROOT", tmp_path / "system")


def _fake_set(directory: Path, n_train=6, n_test=4, gz=True, seed=0):
    directory.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    arrays = {"x_train": rng.integers(0, 256, (n_train, 28, 28), dtype=np.uint8),
              "y_train": rng.integers(0, 10, n_train, dtype=np.uint8),
              "x_test": rng.integers(0, 256, (n_test, 28, 28), dtype=np.uint8),
              "y_test": rng.integers(0, 10, n_test, dtype=np.uint8)}
    for key, stem in IDX_FILES.items():
        write_idx(directory / (stem + (".gz" if gz else "")), arrays[key])
    return arrays


# ---------------------------------------------------------------------------------------------- IDX

@pytest.mark.parametrize("dtype", [np.uint8, np.int8, np.int16, np.int32, np.float32, np.float64])
@pytest.mark.parametrize("suffix", ["", ".gz"])
def test_idx_round_trip(tmp_path, dtype, suffix):
    a = (np.arange(24).reshape(2, 3, 4) - 5).astype(dtype)
    p = tmp_path / f"a.idx{suffix}"
    write_idx(p, a)
    b = read_idx(p)
    assert b.dtype == np.dtype(dtype).newbyteorder("=") and b.shape == a.shape
    np.testing.assert_array_equal(a, b)
    if suffix:
        assert p.read_bytes()[:2] == b"\x1f\x8b"


def test_idx_bad_magic(tmp_path):
    p = tmp_path / "bad-idx1-ubyte"
    p.write_bytes(b"\x00\x01\x08\x01\x00\x00\x00\x01\x05")
    with pytest.raises(NndError, match=r"bad-idx1-ubyte is not an IDX file: bad magic number 0x00010801"):
        read_idx(p)
    p.write_bytes(b"\x00")
    with pytest.raises(NndError, match="only 1 bytes long"):
        read_idx(p)


def test_idx_truncated_and_corrupt(tmp_path):
    p = tmp_path / "images-idx3-ubyte"
    write_idx(p, np.zeros((3, 4, 4), np.uint8))
    data = p.read_bytes()
    p.write_bytes(data[:-5])
    with pytest.raises(NndError, match=r"images-idx3-ubyte is truncated: shape \(3, 4, 4\) needs 48 bytes of data "
                                       r"but only 43 are present"):
        read_idx(p)
    p.write_bytes(data[:10])
    with pytest.raises(NndError, match="announces 3 dimensions"):
        read_idx(p)
    p.write_bytes(data + b"xx")
    with pytest.raises(NndError, match="is corrupt"):
        read_idx(p)
    gz = tmp_path / "images-idx3-ubyte.gz"
    gz.write_bytes(gzip.compress(data)[:-12])
    with pytest.raises(NndError, match=r"images-idx3-ubyte.gz is a corrupt or truncated gzip file"):
        read_idx(gz)
    with pytest.raises(NndError, match="file not found: .*nope"):
        read_idx(tmp_path / "nope")


# ------------------------------------------------------------------------------------------ named sets

def test_load_named_from_data_dir_scaled_and_typed(tmp_path):
    arrays = _fake_set(tmp_path / "d")
    x, y, xt, yt = load_named("fashion_mnist", data_dir=tmp_path / "d")
    assert x.shape == (6, 28, 28, 1) and x.dtype == np.float32
    assert xt.shape == (4, 28, 28, 1) and yt.dtype == np.int64 and y.dtype == np.int64
    np.testing.assert_allclose(x[..., 0], arrays["x_train"] / 255.0, rtol=1e-6)
    np.testing.assert_array_equal(yt, arrays["y_test"])
    assert 0.0 <= x.min() and x.max() <= 1.0


def test_search_order(tmp_path, monkeypatch):
    env = tmp_path / "env"
    monkeypatch.setenv("NND_DATA", str(env))
    dirs = search_dirs("fashion-mnist", data_dir=tmp_path / "dd")
    home = tmp_path / "home" / ".cache" / "nnd"
    assert dirs == [tmp_path / "dd", tmp_path / "dd" / "fashion_mnist", tmp_path / "dd" / "fashion-mnist",
                    env, env / "fashion_mnist", env / "fashion-mnist",
                    home / "fashion_mnist", home / "fashion-mnist",
                    tmp_path / "system" / "fashion_mnist", tmp_path / "system" / "fashion-mnist"]
    # Earlier locations win: system < cache < NND_DATA < data_dir.
    _fake_set(tmp_path / "system" / "fashion-mnist", n_train=1, gz=False)
    assert len(load_named("fashion_mnist")[0]) == 1
    _fake_set(home / "fashion_mnist", n_train=2)
    assert len(load_named("fashion_mnist")[0]) == 2
    _fake_set(env / "fashion-mnist", n_train=3)
    assert len(load_named("fashion_mnist")[0]) == 3
    _fake_set(tmp_path / "dd", n_train=5)
    assert len(load_named("fashion_mnist", data_dir=tmp_path / "dd")[0]) == 5


def test_a_data_dir_given_by_name_is_never_passed_over_for_another_copy(tmp_path):
    partial = tmp_path / "dd"
    _fake_set(partial)
    (partial / "t10k-labels-idx1-ubyte.gz").unlink()
    _fake_set(tmp_path / "system" / "fashion-mnist")  # a complete copy where the search would go next
    with pytest.raises(NndError) as e:
        load_named("fashion_mnist", data_dir=partial)
    assert str(e.value).startswith(f"error: --data-dir {partial} holds no complete fashion_mnist; searched:\n"
                                   f"  {partial} (incomplete: missing t10k-labels-idx1-ubyte)\n")


def test_offline_missing_message(tmp_path, monkeypatch):
    partial = tmp_path / "dd"
    _fake_set(partial)
    (partial / "t10k-labels-idx1-ubyte.gz").unlink()
    monkeypatch.setenv("NND_DATA", str(partial))  # a default, not a directory asked for by name
    with pytest.raises(NndError) as e:
        load_named("fashion_mnist")
    msg = str(e.value)
    assert "dataset 'fashion_mnist' not found; searched:" in msg
    assert f"{partial} (incomplete: missing t10k-labels-idx1-ubyte)" in msg
    for d in search_dirs("fashion_mnist", partial)[1:]:
        assert str(d) in msg
    assert "NND_OFFLINE" in msg and "apt-get install dataset-fashion-mnist" in msg and "--data-dir" in msg
    with pytest.raises(NndError, match="unknown dataset 'fashion'; did you mean 'fashion_mnist'"):
        load_named("fashion")


def _serve(files: dict[str, bytes], calls: list):
    def downloader(url, dest, timeout):
        calls.append(url)
        name = url.rsplit("/", 1)[1]
        if name not in files:
            raise OSError("connection refused")
        Path(dest).write_bytes(files[name])
    return downloader


def _gz_idx(a):
    head = bytes([0, 0, 8, a.ndim]) + b"".join(int(d).to_bytes(4, "big") for d in a.shape)
    return gzip.compress(head + a.tobytes())


def test_download_with_checksums(tmp_path, monkeypatch):
    payload = {"train-images-idx3-ubyte.gz": _gz_idx(np.zeros((2, 28, 28), np.uint8)),
               "train-labels-idx1-ubyte.gz": _gz_idx(np.array([1, 2], np.uint8)),
               "t10k-images-idx3-ubyte.gz": _gz_idx(np.ones((1, 28, 28), np.uint8)),
               "t10k-labels-idx1-ubyte.gz": _gz_idx(np.array([3], np.uint8))}
    spec = dict(ds.NAMED_DATASETS["mnist"])
    spec["mirrors"] = ("https://mirror-a.invalid/", "https://mirror-b.invalid/")
    spec["md5"] = {k: hashlib.md5(v).hexdigest() for k, v in payload.items()}
    monkeypatch.setitem(ds.NAMED_DATASETS, "mnist", spec)
    calls: list = []
    # Mirror a is down for one file; mirror b serves it.
    served = {k: v for k, v in payload.items() if k != "t10k-images-idx3-ubyte.gz"}

    def downloader(url, dest, timeout):
        calls.append(url)
        name = url.rsplit("/", 1)[1]
        if "mirror-a" in url and name not in served:
            raise OSError("timed out")
        Path(dest).write_bytes(payload[name])

    x, y, xt, yt = load_named("mnist", download=True, downloader=downloader)
    assert x.shape == (2, 28, 28, 1) and list(y) == [1, 2] and xt.max() == pytest.approx(1 / 255)
    cache = tmp_path / "home" / ".cache" / "nnd" / "mnist"
    assert sorted(p.name for p in cache.iterdir()) == sorted(payload)
    assert len(calls) == 5
    # A second load finds the cache and downloads nothing.
    load_named("mnist", download=True, downloader=_serve({}, calls))
    assert len(calls) == 5


def test_download_checksum_mismatch_is_reported(tmp_path):
    calls: list = []
    bad = {name: b"not the dataset" for name in ds.NAMED_DATASETS["mnist"]["md5"]}
    with pytest.raises(NndError) as e:
        load_named("mnist", download=True, downloader=_serve(bad, calls))
    msg = str(e.value)
    assert "downloading failed" in msg and "checksum mismatch" in msg and "expected f68b3c2d" in msg
    cache = tmp_path / "home" / ".cache" / "nnd" / "mnist"
    assert list(cache.iterdir()) == []  # nothing unverified is kept


def test_offline_env_blocks_download():
    calls: list = []
    with pytest.raises(NndError, match="downloading is disabled"):
        load_named("mnist", downloader=_serve({}, calls))
    assert calls == []


@pytest.mark.skipif(not any((REAL_ROOT / d).is_dir() for d in ("fashion-mnist", "fashion_mnist")),
                    reason="Debian dataset-fashion-mnist not installed")
def test_real_fashion_mnist_smoke(monkeypatch):
    monkeypatch.setattr(ds, "SYSTEM_DATA_ROOT", REAL_ROOT)
    x, y, xt, yt = load_named("fashion_mnist")
    assert x.shape == (60000, 28, 28, 1) and xt.shape == (10000, 28, 28, 1)
    assert y.shape == (60000,) and yt.shape == (10000,)
    assert x.dtype == np.float32 and y.dtype == np.int64
    assert set(np.unique(y)) == set(range(10)) and 0.0 <= x.min() and x.max() <= 1.0


# -------------------------------------------------------------------------------------- npz / npy / csv

def test_load_arrays_layouts(tmp_path):
    x, y = np.zeros((5, 3), np.float32), np.arange(5)
    np.savez(tmp_path / "a.npz", x=x, y=y)
    out = load_arrays(tmp_path / "a.npz")
    assert set(out) == {"x", "y"} and out["x"].shape == (5, 3)
    np.savez(tmp_path / "b.npz", x_train=x, y_train=y, x_test=x[:2], y_test=y[:2])
    assert set(load_arrays(tmp_path / "b.npz")) == {"x_train", "y_train", "x_test", "y_test"}
    np.save(tmp_path / "c.npy", x)
    assert load_arrays(tmp_path / "c.npy")["x"].shape == (5, 3)


def test_load_arrays_errors(tmp_path):
    np.savez(tmp_path / "k.npz", data=np.zeros(3), labels=np.zeros(3))
    with pytest.raises(NndError, match="k.npz holds arrays data, labels; expected keys x and y"):
        load_arrays(tmp_path / "k.npz")
    np.savez(tmp_path / "m.npz", x=np.zeros((4, 2)), y=np.zeros(3))
    with pytest.raises(NndError, match=r"'x' has 4 samples \(4, 2\) but 'y' has 3"):
        load_arrays(tmp_path / "m.npz")
    np.savez(tmp_path / "o.npz", x=np.array([{"a": 1}], dtype=object))
    with pytest.raises(NndError, match=r"o.npz holds Python objects \(an object array\), which nnd does not load"):
        load_arrays(tmp_path / "o.npz")
    np.save(tmp_path / "o.npy", np.array([None, "a"], dtype=object), allow_pickle=True)
    with pytest.raises(NndError, match=r"o.npy holds Python objects \(an object array\), which nnd does not load"):
        load_arrays(tmp_path / "o.npy")
    np.savez(tmp_path / "t.npz", x=np.zeros(100))
    (tmp_path / "t.npz").write_bytes((tmp_path / "t.npz").read_bytes()[:50])
    with pytest.raises(NndError, match="t.npz: the file is corrupt or truncated"):
        load_arrays(tmp_path / "t.npz")
    (tmp_path / "g.npz").write_bytes(b"hello")
    with pytest.raises(NndError, match="g.npz: the file is corrupt or truncated"):
        load_arrays(tmp_path / "g.npz")
    with pytest.raises(NndError, match="array file not found"):
        load_arrays(tmp_path / "none.npz")
    (tmp_path / "x.txt").write_text("1")
    with pytest.raises(NndError, match="expected .npz or .npy"):
        load_arrays(tmp_path / "x.txt")


def test_load_csv(tmp_path):
    p = tmp_path / "d.csv"
    p.write_text("a,b,label\n1,2,0\n3.5,4,1\n\n5,6,2\n")
    x, y = load_csv(p, target="label")
    assert x.dtype == np.float32 and x.shape == (3, 2) and y.dtype == np.int64 and list(y) == [0, 1, 2]
    x, y = load_csv(p, target=0)
    assert x.tolist() == [[2, 0], [4, 1], [6, 2]] and y.dtype == np.float32
    q = tmp_path / "n.csv"
    q.write_text("1,2,3\n4,5,6\n")
    x, y = load_csv(q, target=-1)
    assert x.shape == (2, 2) and list(y) == [3, 6]
    x, y = load_csv(q)
    assert x.shape == (2, 3) and y is None


def test_load_csv_errors(tmp_path):
    p = tmp_path / "d.csv"
    p.write_text("a,b,label\n1,2,0\n3,x,1\n")
    with pytest.raises(NndError, match=r"column 'lable' not found in .*d.csv; did you mean 'label'\? "
                                       r"\(available columns: a, b, label\)"):
        load_csv(p, target="lable")
    with pytest.raises(NndError, match=r"d.csv line 3, column 2 \('b'\): 'x', which is not a number"):
        load_csv(p, target="label")
    p.write_text("a,b\n1,2\n3\n")
    with pytest.raises(NndError, match="line 3 has 1 field but the header has 2"):
        load_csv(p, target="b")
    p.write_text("1,2\n")
    with pytest.raises(NndError, match="no header row"):
        load_csv(p, target="b")
    with pytest.raises(NndError, match="target column index 5 is out of range"):
        load_csv(p, target=5)
    with pytest.raises(NndError, match="CSV file not found"):
        load_csv(tmp_path / "none.csv", target=0)


# ----------------------------------------------------------------------------------- splits, batches

def test_train_validation_split():
    x, y = np.arange(20).reshape(10, 2), np.arange(10)
    xt, yt, xv, yv = train_validation_split(x, y, 0.2, seed=3)
    assert len(xt) == 8 and len(xv) == 2
    assert sorted(np.concatenate([yt, yv]).tolist()) == list(range(10))
    np.testing.assert_array_equal(xt[:, 0] // 2, yt)
    again = train_validation_split(x, y, 0.2, seed=3)
    np.testing.assert_array_equal(again[3], yv)
    _, _, _, tail = train_validation_split(x, y, 0.3, seed=None)
    assert tail.tolist() == [7, 8, 9]
    _, _, _, tail = train_validation_split(x[:9], y[:9], 0.3, seed=None)  # 2.7 samples round to 3
    assert tail.tolist() == [6, 7, 8]
    with pytest.raises(NndError, match="strictly between 0 and 1"):
        train_validation_split(x, y, 1.0)
    with pytest.raises(NndError, match="leaves 0 for validation"):
        train_validation_split(x, y, 0.01)


def test_batches_cover_all_and_are_reproducible():
    x, y = np.arange(10) * 10, np.arange(10)
    plain = list(batches(x, y, 4))
    assert [len(b[0]) for b in plain] == [4, 4, 2]
    a = [yb.tolist() for _, yb in batches(x, y, 3, shuffle=True, rng=7)]
    b = [yb.tolist() for _, yb in batches(x, y, 3, shuffle=True, rng=np.random.default_rng(7))]
    assert a == b and sorted(sum(a, [])) == list(range(10)) and sum(a, []) != list(range(10))
    for xb, yb in batches(x, y, 3, shuffle=True, rng=1):
        np.testing.assert_array_equal(xb, yb * 10)
    with pytest.raises(NndError, match="batch size must be a positive integer"):
        list(batches(x, y, 0))
    with pytest.raises(NndError, match="x has 10 samples"):
        list(batches(x, y[:3], 2))


# ---------------------------------------------------------------------------------------------- checks

def test_check_inputs():
    x = np.zeros((3, 28, 28, 1), np.float32)
    assert check_inputs(x, (28, 28, 1)) is x
    check_inputs(x, (None, 28, 1))
    with pytest.raises(NndError, match=r"input 'images' has shape \(3, 28, 28\) but the model expects "
                                       r"\(batch, 28, 28, 1\)"):
        check_inputs(x[..., 0], (28, 28, 1), "images")
    bad = x.copy()
    bad[2, 5, 6, 0] = np.nan
    with pytest.raises(NndError, match=r"input 'x' contains NaN at index \(2, 5, 6, 0\)"):
        check_inputs(bad, (28, 28, 1))
    bad[2, 5, 6, 0] = np.inf
    with pytest.raises(NndError, match="contains an infinite value"):
        check_inputs(bad, (28, 28, 1))
    with pytest.raises(NndError, match=r"input 'x' has dtype uint8 but a floating-point array is needed"):
        check_inputs(x.astype(np.uint8), (28, 28, 1))
    check_inputs(np.zeros((2, 5), np.int64), (5,), allow_int=True)
    with pytest.raises(NndError, match="dtype <U1"):
        check_inputs(np.array([["a"]]), (1,))


def test_check_labels():
    assert check_labels(np.array([[1], [2]], np.uint8), 3).tolist() == [1, 2]
    assert check_labels(np.array([0.0, 2.0]), 3).dtype == np.int64
    with pytest.raises(NndError, match=r"label 10 at index 3 of 'y' is out of range for 10 classes \(expected 0..9\)"):
        check_labels(np.array([0, 1, 9, 10, 11]), 10)
    with pytest.raises(NndError, match="label -1 at index 0"):
        check_labels(np.array([-1]), 10)
    with pytest.raises(NndError, match="value 1.5 at index 1, which is not a class id"):
        check_labels(np.array([1.0, 1.5]), 10)
    onehot = np.eye(3)[[0, 2]]
    assert check_labels(onehot, 3) is not None
    with pytest.raises(NndError, match=r"value 2.0 at index \(0, 0\)"):
        check_labels(onehot * 2, 3)
    with pytest.raises(NndError, match=r"labels 'y' have shape \(2, 2, 2\)"):
        check_labels(np.zeros((2, 2, 2)), 3)


def test_load_arrays_for_prediction_reads_inputs_alone(tmp_path):
    x = np.zeros((3, 2), np.float32)
    np.savez(tmp_path / "s.npz", x_train=x, y_train=np.arange(3), x_test=x[:1], y_test=np.arange(1))
    assert load_arrays(tmp_path / "s.npz", inputs_only=True)["x"].shape == (1, 2)  # the test split first
    np.savez(tmp_path / "t.npz", x_train=x)  # no y_train: prediction needs none
    assert set(load_arrays(tmp_path / "t.npz", inputs_only=True)) == {"x"}
    np.savez(tmp_path / "k.npz", data=x)
    with pytest.raises(NndError, match=r"k.npz holds arrays data; prediction reads its inputs from an array named x "
                                       r"\(or x_test, or x_train\), and needs no y"):
        load_arrays(tmp_path / "k.npz", inputs_only=True)
