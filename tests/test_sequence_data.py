import json
import re
from pathlib import Path

import numpy as np
import pytest

from nnd.compiler.diagnostics import NndError
from nnd.runtime import sequence_data as sd
from nnd.runtime.sequence_data import (CharVocabulary, SeriesStats, chronological_split, load_moving_fashion_mnist,
                                       load_stats, load_text_windows, load_time_series_csv, mask_from_padding,
                                       moving_images, pad_sequences, save_stats, stack_sequences)

FASHION_DIR = Path("/usr/share/datasets/fashion-mnist")


def _msg(excinfo) -> str:
    return excinfo.value.diagnostics[0].message


def _csv(tmp_path, text, name="series.csv"):
    p = tmp_path / name
    p.write_text(text)
    return p


@pytest.fixture
def series(tmp_path):
    """t = 0..19 and v = 100 + t, with a header."""
    return _csv(tmp_path, "t,v\n" + "".join(f"{i},{100 + i}\n" for i in range(20)))


# ============================================================================================ time series

def test_windows_and_next_value_on_a_known_series(series):
    x, y = load_time_series_csv(series, ["t"], "v", window=3)
    assert x.dtype == np.float32 and y.dtype == np.float32
    assert x.shape == (17, 3, 1) and y.shape == (17, 1)
    for i in range(17):
        np.testing.assert_array_equal(x[i, :, 0], [i, i + 1, i + 2])
        assert y[i, 0] == 100 + i + 3


def test_all_columns_include_the_target(series):
    x, y = load_time_series_csv(series, None, "v", window=4)
    assert x.shape == (16, 4, 2)
    np.testing.assert_array_equal(x[5], [[5, 105], [6, 106], [7, 107], [8, 108]])
    np.testing.assert_array_equal(y[:, 0], 100 + np.arange(4, 20))


def test_column_order_follows_the_columns_argument(series):
    x, _ = load_time_series_csv(series, ["v", "t"], "t", window=2)
    np.testing.assert_array_equal(x[0], [[100, 0], [101, 1]])
    x2, _ = load_time_series_csv(series, np.array(["v", "t"]), "t", window=2)
    np.testing.assert_array_equal(x2, x)


def test_horizon_and_stride(series):
    x, y = load_time_series_csv(series, ["t"], "v", window=3, horizon=3, stride=2)
    # starts 0, 2, ..., 14: start + 3 + 3 <= 20
    assert x.shape == (8, 3, 1) and y.shape == (8, 3)
    for i in range(8):
        s = 2 * i
        np.testing.assert_array_equal(x[i, :, 0], [s, s + 1, s + 2])
        np.testing.assert_array_equal(y[i], [100 + s + 3, 100 + s + 4, 100 + s + 5])


def test_horizon_zero_gives_windows_to_forecast_from(series):
    x, y = load_time_series_csv(series, ["t"], "v", window=3, horizon=0)
    assert x.shape == (18, 3, 1) and y.shape == (18, 0)
    np.testing.assert_array_equal(x[-1, :, 0], [17, 18, 19])


def test_exactly_one_window(tmp_path):
    p = _csv(tmp_path, "1,10\n2,20\n3,30\n")
    x, y = load_time_series_csv(p, [0], 1, window=2)
    np.testing.assert_array_equal(x, [[[1], [2]]])
    np.testing.assert_array_equal(y, [[30]])


def test_headerless_file_with_indices(tmp_path):
    p = _csv(tmp_path, "".join(f"{i},{i * 0.5},{-i}\n" for i in range(6)))
    x, y = load_time_series_csv(p, [0, 1], -1, window=2, horizon=2)
    assert x.shape == (3, 2, 2) and y.shape == (3, 2)
    np.testing.assert_allclose(x[1], [[1, 0.5], [2, 1.0]])
    np.testing.assert_array_equal(y[1], [-3, -4])
    x2, _ = load_time_series_csv(p, None, 2, window=2, header=False)
    assert x2.shape == (4, 2, 3)


def test_unselected_text_column_is_ignored(tmp_path):
    p = _csv(tmp_path, "date,temp\n2024-01-01,3.5\n2024-01-02,4.0\n2024-01-03,2.5\n2024-01-04,1.0\n")
    x, y = load_time_series_csv(p, ["temp"], "temp", window=2)
    np.testing.assert_allclose(x[:, :, 0], [[3.5, 4.0], [4.0, 2.5]])
    np.testing.assert_allclose(y[:, 0], [2.5, 1.0])
    with pytest.raises(NndError, match=re.escape("line 2, column 1 ('date'): '2024-01-01', which is not a number "
                                                 "(choose numeric input columns with columns=[...])")):
        load_time_series_csv(p, None, "temp", window=2)


def test_chronological_split_keeps_order(series):
    x, y = load_time_series_csv(series, ["t"], "v", window=3)
    x_tr, y_tr, x_va, y_va = chronological_split(x, y, 0.25)
    assert len(x_tr) == 13 and len(x_va) == 4
    np.testing.assert_array_equal(x_tr, x[:13])
    np.testing.assert_array_equal(y_va, y[13:])
    assert x_va[0, 0, 0] > x_tr[-1, 0, 0]
    with pytest.raises(NndError, match="strictly between 0 and 1"):
        chronological_split(x, y, 1.5)


def test_standardization_uses_only_the_training_rows(tmp_path, series):
    x, y, stats = load_time_series_csv(series, ["t"], "v", window=3, standardize=True, validation_fraction=0.25)
    # 17 windows, 4 for validation: the 13 training windows read rows 0..15 (inputs 0..14, targets 3..15).
    assert stats.rows == 16 and stats.columns == ["t"] and stats.target == "v"
    np.testing.assert_allclose(stats.mean, [7.5])
    np.testing.assert_allclose(stats.std, [np.std(np.arange(16))])
    assert stats.target_mean == pytest.approx(107.5)
    np.testing.assert_allclose(x[0, :, 0], (np.array([0, 1, 2]) - 7.5) / np.std(np.arange(16)), rtol=1e-6)
    np.testing.assert_allclose(stats.inverse_target(y)[:, 0], 100 + np.arange(3, 20), rtol=1e-6)
    # Changing the rows only the validation windows see leaves the statistics as they were.
    lines = series.read_text().splitlines()
    changed = lines[:17] + [f"{i},{10_000 * i}" for i in range(16, 20)]
    other = _csv(tmp_path, "\n".join(changed) + "\n", "changed.csv")
    _, _, stats2 = load_time_series_csv(other, ["t"], "v", window=3, standardize=True, validation_fraction=0.25)
    np.testing.assert_array_equal(stats2.mean, stats.mean)
    assert stats2.target_mean == stats.target_mean and stats2.target_std == stats.target_std
    # Without a validation fraction every row counts.
    _, _, whole = load_time_series_csv(series, ["t"], "v", window=3, standardize=True)
    assert whole.rows == 20 and whole.mean[0] == pytest.approx(9.5)


def test_constant_column_is_not_divided_by_zero(tmp_path):
    p = _csv(tmp_path, "a,b\n" + "".join(f"5,{i}\n" for i in range(6)))
    x, _, stats = load_time_series_csv(p, ["a", "b"], "b", window=2, standardize=True)
    assert stats.std[0] == 0
    assert np.all(x[:, :, 0] == 0) and np.all(np.isfinite(x))


def test_saved_stats_prepare_new_data_like_the_training_data(tmp_path, series):
    x, y, stats = load_time_series_csv(series, ["t", "v"], "v", window=3, standardize=True,
                                       validation_fraction=0.2)
    run = tmp_path / "run"
    path = save_stats(stats, run)
    assert path == run / "series_stats.json"
    data = json.loads(path.read_text())
    assert data["format"] == "nnd-series-stats" and data["columns"] == ["t", "v"]
    loaded = load_stats(run)
    assert loaded.columns == stats.columns and loaded.rows == stats.rows
    assert (loaded.window, loaded.horizon) == (3, 1)
    np.testing.assert_array_equal(loaded.mean, stats.mean)
    np.testing.assert_array_equal(loaded.std, stats.std)
    assert SeriesStats.load(run).target_std == stats.target_std
    # New data prepared with the saved statistics (by object or by run directory) matches exactly.
    x2, y2, used = load_time_series_csv(series, ["t", "v"], "v", window=3, stats=run)
    np.testing.assert_array_equal(x2, x)
    np.testing.assert_array_equal(y2, y)
    assert used.rows == stats.rows
    np.testing.assert_allclose(loaded.transform(np.array([[10.0, 110.0]])), x[8:9, 2], rtol=1e-6)
    np.testing.assert_allclose(loaded.inverse_transform(x[0]), [[0, 100], [1, 101], [2, 102]], atol=1e-4)
    with pytest.raises(NndError, match=re.escape("the statistics were computed for input columns [t, v] with "
                                                 "target 'v', but")):
        load_time_series_csv(series, ["t"], "v", window=3, stats=stats)
    with pytest.raises(NndError, match=r"last axis must have 2"):
        loaded.transform(np.zeros((4, 3)))


def test_stats_file_errors(tmp_path):
    with pytest.raises(NndError, match=r"no series statistics found: .*series_stats.json does not exist"):
        load_stats(tmp_path)
    bad = tmp_path / "bad.json"
    bad.write_text("{nope")
    with pytest.raises(NndError, match=r"bad.json is not valid JSON \(line 1"):
        load_stats(bad)
    bad.write_text('{"format": "something-else"}')
    with pytest.raises(NndError, match="not an nnd series-statistics file"):
        load_stats(bad)
    bad.write_text('{"format": "nnd-series-stats", "columns": ["a"]}')
    with pytest.raises(NndError, match="lacks the field"):
        load_stats(bad)


def test_missing_column_names_it_with_a_suggestion_and_the_list(series):
    with pytest.raises(NndError) as e:
        load_time_series_csv(series, ["t"], "vv", window=3)
    assert _msg(e) == (f"target column 'vv' not found in {series}; did you mean 'v'? "
                            f"(available columns: t, v)")
    with pytest.raises(NndError, match=re.escape("input column 'time' not found in")):
        load_time_series_csv(series, ["time"], "v", window=3)
    with pytest.raises(NndError, match=re.escape("input column index 7 is out of range for")):
        load_time_series_csv(series, [7], "v", window=3)


def test_name_without_header(tmp_path):
    p = _csv(tmp_path, "1,2\n3,4\n5,6\n")
    with pytest.raises(NndError, match="has no header row, so the target column 'v' cannot be found by name; "
                                       r"give its index instead \(0..1\)"):
        load_time_series_csv(p, None, "v", window=1)


def test_too_few_rows(series):
    with pytest.raises(NndError) as e:
        load_time_series_csv(series, ["t"], "v", window=18, horizon=3)
    assert _msg(e) == (f"{series} has 20 data rows, too few for one window: window=18 + horizon=3 "
                            f"needs at least 21 rows")


def test_bad_cells_name_file_line_and_column(tmp_path):
    p = _csv(tmp_path, "t,v\n0,1\n1,abc\n2,3\n")
    with pytest.raises(NndError) as e:
        load_time_series_csv(p, ["t"], "v", window=1)
    assert _msg(e) == f"{p} line 3, column 2 ('v'): 'abc', which is not a number"
    p = _csv(tmp_path, "t,v\n0,1\n1,\n", "empty_cell.csv")
    with pytest.raises(NndError, match=r"line 3, column 2 \('v'\): an empty value"):
        load_time_series_csv(p, ["t"], "v", window=1)
    p = _csv(tmp_path, "t,v\n0,1\n1,nan\n", "nan.csv")
    with pytest.raises(NndError, match=r"line 3, column 2 \('v'\): 'nan' is not a finite number"):
        load_time_series_csv(p, ["t"], "v", window=1)
    p = _csv(tmp_path, "0,1\n1,abc\n", "headerless.csv")
    with pytest.raises(NndError) as e:
        load_time_series_csv(p, [0], 1, window=1)
    assert _msg(e) == f"{p} line 2, column 2: 'abc', which is not a number"  # counted from 1, as lines are
    p = _csv(tmp_path, "0,1\n1\n", "ragged.csv")
    with pytest.raises(NndError, match="line 2 has 1 field but the first row has 2"):
        load_time_series_csv(p, [0], 1, window=1)


def test_argument_and_file_errors(tmp_path, series):
    with pytest.raises(NndError, match="CSV file not found"):
        load_time_series_csv(tmp_path / "none.csv", None, 0, window=1)
    with pytest.raises(NndError, match="is empty"):
        load_time_series_csv(_csv(tmp_path, "", "e.csv"), None, 0, window=1)
    with pytest.raises(NndError, match="has a header but no data rows"):
        load_time_series_csv(_csv(tmp_path, "a,b\n", "h.csv"), None, "a", window=1)
    with pytest.raises(NndError, match="window must be a positive integer, got 0"):
        load_time_series_csv(series, None, "v", window=0)
    with pytest.raises(NndError, match="horizon must be a non-negative integer, got -1"):
        load_time_series_csv(series, None, "v", window=2, horizon=-1)
    with pytest.raises(NndError, match="stride must be a positive integer"):
        load_time_series_csv(series, None, "v", window=2, stride=1.5)
    with pytest.raises(NndError, match="header must be 'auto', true or false"):
        load_time_series_csv(series, None, "v", window=2, header="yes")
    with pytest.raises(NndError, match="input column 't' is listed twice"):
        load_time_series_csv(series, ["t", 0], "v", window=2)
    with pytest.raises(NndError, match="columns is empty"):
        load_time_series_csv(series, [], "v", window=2)
    with pytest.raises(NndError, match="columns must be a list"):
        load_time_series_csv(series, "t", "v", window=2)
    with pytest.raises(NndError, match="needs standardize=True"):
        load_time_series_csv(series, None, "v", window=2, validation_fraction=0.2)
    with pytest.raises(NndError, match="not both"):
        load_time_series_csv(series, None, "v", window=2, standardize=True, stats=tmp_path)
    with pytest.raises(NndError, match=r"validation fraction 0.01 of 18 windows leaves 0 for validation"):
        load_time_series_csv(series, None, "v", window=2, standardize=True, validation_fraction=0.01)


# ============================================================================================ character text

def test_vocabulary_ids_round_trip_and_unknowns(tmp_path):
    v = CharVocabulary.from_text("hello, world\n")
    assert v.chars == sorted(set("hello, world\n"))
    assert v.size == len(v.chars) + 1 == len(v)
    ids = v.encode("hello")
    assert ids.dtype == np.int64
    np.testing.assert_array_equal(ids, [v.chars.index(c) + 1 for c in "hello"])
    assert v.decode(ids) == "hello"
    assert 0 not in v.encode("hello, world\n")
    unk = v.encode("hex!")
    np.testing.assert_array_equal(unk[[2, 3]], [0, 0])
    assert v.decode(unk) == "he" and v.decode(unk, unknown="?") == "he??"
    assert v.decode([]) == "" and v.encode("").shape == (0,)
    with pytest.raises(NndError, match=re.escape("character 'x' at position 2 is not in the vocabulary "
                                                 "(2 unknown characters: '!x')")):
        v.encode("hex!", strict=True)
    with pytest.raises(NndError, match=rf"id 99 at position 1 is outside the vocabulary \(ids 0..{v.size - 1}\)"):
        v.decode([1, 99])
    with pytest.raises(NndError, match="decode needs a 1-D sequence"):
        v.decode(np.ones((2, 2), dtype=np.int64))


def test_vocabulary_save_load(tmp_path):
    v = CharVocabulary.from_text("naïve café\t→ \"quoted\"\n")
    p = v.save(tmp_path / "vocab.json")
    w = CharVocabulary.load(p)
    assert w == v and w.chars == v.chars
    text = "café → naïve"
    np.testing.assert_array_equal(w.encode(text), v.encode(text))
    assert w.decode(w.encode(text)) == text
    with pytest.raises(NndError, match="vocabulary file not found"):
        CharVocabulary.load(tmp_path / "missing.json")
    bad = tmp_path / "bad.json"
    bad.write_text('{"chars": ["a"]}')
    with pytest.raises(NndError, match="is not an nnd character vocabulary"):
        CharVocabulary.load(bad)
    bad.write_text('{"format": "nnd-char-vocabulary", "chars": ["a", "bc"]}')
    with pytest.raises(NndError, match="vocabulary entry 1 is 'bc'; every entry must be a single character"):
        CharVocabulary.load(bad)
    with pytest.raises(NndError, match="more than once"):
        CharVocabulary(["a", "b", "a"])


def test_text_windows_next_char(tmp_path):
    p = tmp_path / "t.txt"
    p.write_text("abcdefgh", encoding="utf-8")
    x, y, v = load_text_windows(p, seq_len=3)
    assert x.dtype == np.int64 and y.dtype == np.int64
    assert x.shape == (5, 3) and y.shape == (5,)
    text = "abcdefgh"
    for i in range(5):
        assert v.decode(x[i]) == text[i:i + 3]
        assert v.decode(y[i:i + 1]) == text[i + 3]
    xa, ya, _ = load_text_windows(p, seq_len=3, targets="all")
    np.testing.assert_array_equal(xa, x)
    assert ya.shape == (5, 3)
    for i in range(5):
        assert v.decode(ya[i]) == text[i + 1:i + 4]
    xs, ys, _ = load_text_windows(p, seq_len=3, step=2)
    assert [v.decode(r) for r in xs] == ["abc", "cde", "efg"]
    assert v.decode(ys) == "dfh"


def test_text_windows_with_a_given_vocabulary(tmp_path):
    p = tmp_path / "t.txt"
    p.write_text("abxab", encoding="utf-8")
    v = CharVocabulary.from_text("ab")
    x, y, v2 = load_text_windows(p, seq_len=2, vocabulary=v)
    assert v2 is v
    np.testing.assert_array_equal(x, [[1, 2], [2, 0], [0, 1]])
    np.testing.assert_array_equal(y, [0, 1, 2])
    saved = v.save(tmp_path / "v.json")
    x3, _, v3 = load_text_windows(p, seq_len=2, vocabulary=saved)
    assert v3 == v
    np.testing.assert_array_equal(x3, x)


def test_text_newlines_and_bom(tmp_path):
    p = tmp_path / "t.txt"
    p.write_bytes(b"\xef\xbb\xbfa\r\nb\rc\n")
    x, y, v = load_text_windows(p, seq_len=5)
    assert v.chars == ["\n", "a", "b", "c"]
    assert v.decode(x[0]) + v.decode(y) == "a\nb\nc\n"


def test_text_errors(tmp_path):
    p = tmp_path / "t.txt"
    p.write_bytes(b"")
    with pytest.raises(NndError, match="text file .*t.txt is empty"):
        load_text_windows(p, seq_len=2)
    p.write_text("abc")
    with pytest.raises(NndError) as e:
        load_text_windows(p, seq_len=3)
    assert _msg(e) == (f"text file {p} has 3 characters, but seq_len=3 needs at least 4 "
                            f"(one window and the character after it)")
    p.write_bytes(b"caf\xe9\nnext line\n")
    with pytest.raises(NndError, match=r"t.txt is not UTF-8 text: byte 0xE9 at offset 3 \(line 1\)"):
        load_text_windows(p, seq_len=2)
    with pytest.raises(NndError, match="text file not found"):
        load_text_windows(tmp_path / "none.txt", seq_len=2)
    p.write_text("abcdef")
    with pytest.raises(NndError, match="targets must be 'last'"):
        load_text_windows(p, seq_len=2, targets="next")
    with pytest.raises(NndError, match="seq_len must be a positive integer"):
        load_text_windows(p, seq_len=0)
    with pytest.raises(NndError, match="vocabulary must be a CharVocabulary"):
        load_text_windows(p, seq_len=2, vocabulary=["a"])


# ============================================================================================ padding

SEQS = [[1, 2, 3], [4, 5, 6, 7, 8], [9]]


@pytest.mark.parametrize("padding,truncating,expected", [
    ("pre", "pre", [[0, 1, 2, 3], [5, 6, 7, 8], [0, 0, 0, 9]]),
    ("post", "pre", [[1, 2, 3, 0], [5, 6, 7, 8], [9, 0, 0, 0]]),
    ("pre", "post", [[0, 1, 2, 3], [4, 5, 6, 7], [0, 0, 0, 9]]),
    ("post", "post", [[1, 2, 3, 0], [4, 5, 6, 7], [9, 0, 0, 0]]),
])
def test_pad_sequences_padding_and_truncating(padding, truncating, expected):
    out = pad_sequences(SEQS, maxlen=4, padding=padding, truncating=truncating)
    assert out.dtype == np.int64
    np.testing.assert_array_equal(out, expected)


def test_pad_sequences_defaults_and_options():
    # Keras' defaults: pre-padding to the longest sequence.
    np.testing.assert_array_equal(pad_sequences(SEQS), [[0, 0, 1, 2, 3], [4, 5, 6, 7, 8], [0, 0, 0, 0, 9]])
    np.testing.assert_array_equal(pad_sequences([[1], [], [2, 3]], padding="post", value=-1),
                                  [[1, -1], [-1, -1], [2, 3]])
    out = pad_sequences([[0.5, 1.5], [2.5]], padding="post", dtype="float32")
    assert out.dtype == np.float32
    np.testing.assert_array_equal(out, [[0.5, 1.5], [2.5, 0]])
    vec = pad_sequences([np.ones((2, 3)), np.full((1, 3), 2.0)], padding="post", dtype=np.float32)
    assert vec.shape == (2, 2, 3)
    np.testing.assert_array_equal(vec[1], [[2, 2, 2], [0, 0, 0]])
    assert pad_sequences([], maxlen=3).shape == (0, 3)
    np.testing.assert_array_equal(pad_sequences(np.array([[1, 2], [3, 4]]), maxlen=1), [[2], [4]])


def test_pad_sequences_errors():
    with pytest.raises(NndError, match="padding must be 'pre' or 'post', got 'middle'"):
        pad_sequences(SEQS, padding="middle")
    with pytest.raises(NndError, match="truncating must be 'pre' or 'post'"):
        pad_sequences(SEQS, truncating="end")
    with pytest.raises(NndError, match="maxlen must be a positive integer, got -2"):
        pad_sequences(SEQS, maxlen=-2)
    with pytest.raises(NndError, match=r"sequence 1 has the non-integer value 0.5 at 0 but dtype is int64; "
                                       r"pass dtype='float32'"):
        pad_sequences([[1], [0.5]])
    with pytest.raises(NndError, match=r"sequence 1 has steps of shape \(2,\) but sequence 0 has steps of shape "
                                       r"\(3,\)"):
        pad_sequences([np.zeros((2, 3)), np.zeros((2, 2))], dtype="float32")
    with pytest.raises(NndError, match="sequence 2 is not a sequence of values: got int 7"):
        pad_sequences([[1], [2], 7])
    with pytest.raises(NndError, match="padding value 0.5 does not fit dtype int64"):
        pad_sequences(SEQS, value=0.5)


def test_masks_from_padding():
    x = pad_sequences(SEQS, maxlen=4, padding="post")
    m = mask_from_padding(x)
    assert m.dtype == np.float32 and m.shape == (3, 4)
    np.testing.assert_array_equal(m, [[1, 1, 1, 0], [1, 1, 1, 1], [1, 0, 0, 0]])
    np.testing.assert_array_equal(mask_from_padding(pad_sequences(SEQS, maxlen=4, value=-1), value=-1),
                                  [[0, 1, 1, 1], [1, 1, 1, 1], [0, 0, 0, 1]])
    feats = np.zeros((2, 3, 2), dtype=np.float32)
    feats[0, 0] = [1, 0]   # a step with one non-padding feature is real
    feats[1, 2] = [0, 3]
    np.testing.assert_array_equal(mask_from_padding(feats), [[1, 0, 0], [0, 0, 1]])
    with pytest.raises(NndError, match=r"needs a padded batch of shape \(n, T\)"):
        mask_from_padding(np.zeros(4))


def test_stack_sequences():
    out = stack_sequences([[1, 2], [3, 4]])
    np.testing.assert_array_equal(out, [[1, 2], [3, 4]])
    assert stack_sequences([[1, 2]], dtype=np.float32).dtype == np.float32
    with pytest.raises(NndError) as e:
        stack_sequences([[1, 2, 3], [1, 2, 3, 4, 5], [1, 2]])
    assert _msg(e) == "sequences have lengths 3, 5, 2; pad them with pad_sequences (or set maxlen)"
    many = [[0] * n for n in range(1, 11)]
    with pytest.raises(NndError, match=re.escape("sequences have lengths 1, 2, 3, 4, 5, 6, 7, 8, ...; pad them with "
                                                 "pad_sequences (or set maxlen) (10 sequences, lengths 1 to 10)")):
        stack_sequences(many)
    with pytest.raises(NndError, match="stack_sequences got no sequences"):
        stack_sequences([])


# ============================================================================================ moving images

def _images(n, h=28, w=28, seed=0):
    # No zero pixels, so the bounding box of a frame's non-zero pixels is exactly where the image sits.
    return np.random.default_rng(seed).uniform(0.1, 1.0, (n, h, w)).astype(np.float32)


def _positions(x, images):
    """Top-left (row, col) of the image in every frame, checking the image is there intact and alone."""
    n, frames = x.shape[:2]
    h, w = images.shape[1:3]
    pos = np.zeros((n, frames, 2), dtype=np.int64)
    for i in range(n):
        for t in range(frames):
            frame = x[i, t, :, :, 0]
            rows, cols = np.nonzero(frame)
            r, c = rows.min(), cols.min()
            assert (rows.max() - r + 1, cols.max() - c + 1) == (h, w)
            np.testing.assert_array_equal(frame[r:r + h, c:c + w], images[i])
            assert np.count_nonzero(frame) == h * w
            pos[i, t] = (r, c)
    return pos


def test_moving_images_shapes_and_intact_pixels():
    imgs = _images(6)
    labels = np.array([3, 1, 4, 1, 5, 9], dtype=np.uint8)
    x, y = moving_images(imgs, labels, frames=8, canvas=40, rng=0)
    assert x.shape == (6, 8, 40, 40, 1) and x.dtype == np.float32
    assert y.dtype == np.int64
    np.testing.assert_array_equal(y, labels)
    pos = _positions(x, imgs)
    assert pos.min() >= 0 and pos.max() <= 40 - 28
    # The image moves every frame, by at most `speed` (rounded) pixels per axis.
    step = np.abs(np.diff(pos, axis=1))
    assert np.all(step.sum(axis=2) > 0)
    assert step.max() <= 2


def test_moving_images_bounce_and_stay_in_the_canvas():
    imgs = _images(40, h=7, w=5, seed=1)
    x, _ = moving_images(imgs[..., None], np.zeros(40, dtype=np.int64), frames=12, canvas=16, rng=5, speed=3)
    pos = _positions(x, imgs)
    assert pos[..., 0].max() <= 16 - 7 and pos[..., 1].max() <= 16 - 5 and pos.min() >= 0
    assert np.all(np.abs(np.diff(pos, axis=1)).sum(axis=2) > 0)
    d = np.sign(np.diff(pos, axis=1))
    reversals = (d[:, 1:] * d[:, :-1] < 0).any(axis=(1, 2))
    assert reversals.sum() >= 10        # most clips cross a 9- or 11-pixel range within 12 frames
    touched_edge = (pos[..., 0] == 0) | (pos[..., 0] == 9) | (pos[..., 1] == 0) | (pos[..., 1] == 11)
    assert touched_edge[reversals].any(axis=1).all()


def test_moving_images_is_deterministic_with_a_seed():
    imgs = _images(5, seed=2)
    lab = np.arange(5)
    a, _ = moving_images(imgs, lab, frames=4, rng=7)
    b, _ = moving_images(imgs, lab, frames=4, rng=np.random.default_rng(7))
    c, _ = moving_images(imgs, lab, frames=4, rng=8)
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)


def test_moving_images_scales_integer_images():
    raw = np.full((2, 4, 4), 255, dtype=np.uint8)
    x, _ = moving_images(raw, [0, 1], frames=2, canvas=8, rng=0)
    assert x.max() == 1.0 and np.count_nonzero(x[0, 0]) == 16


def test_moving_images_errors():
    imgs = _images(3)
    with pytest.raises(NndError, match=r"canvas 28 must be larger than the images \(28x28\)"):
        moving_images(imgs, [0, 1, 2], canvas=28)
    with pytest.raises(NndError, match=r"labels have shape \(2,\) but 3 images \(3, 28, 28\) need labels of "
                                       r"shape \(3,\)"):
        moving_images(imgs, [0, 1])
    with pytest.raises(NndError, match=r"images must have shape \(n, height, width\)"):
        moving_images(np.zeros((3, 28)), [0, 1, 2])
    with pytest.raises(NndError, match="speed must be a number of pixels per frame, at least 1"):
        moving_images(imgs, [0, 1, 2], speed=0.5)
    with pytest.raises(NndError, match="frames must be a positive integer"):
        moving_images(imgs, [0, 1, 2], frames=0)


def test_load_moving_fashion_mnist_picks_images(monkeypatch):
    x_tr, x_te = _images(30, seed=3)[..., None], _images(10, seed=4)[..., None]
    y_tr, y_te = np.arange(30) % 10, np.arange(10)
    calls = []

    def fake_load_named(name, data_dir=None, download=None):
        calls.append((name, data_dir))
        return x_tr, y_tr, x_te, y_te

    monkeypatch.setattr(sd, "load_named", fake_load_named)
    a = load_moving_fashion_mnist(12, 5, frames=3, canvas=32, seed=1, data_dir="/data")
    assert calls == [("fashion_mnist", "/data")]
    assert a[0].shape == (12, 3, 32, 32, 1) and a[2].shape == (5, 3, 32, 32, 1)
    # Every clip shows one of the source images, with that image's label.
    for xs, ys, src, src_y in ((a[0], a[1], x_tr[..., 0], y_tr), (a[2], a[3], x_te[..., 0], y_te)):
        for clip, label in zip(xs, ys):
            frame = clip[0, :, :, 0]
            r, c = (v.min() for v in np.nonzero(frame))
            match = [k for k in range(len(src)) if np.array_equal(frame[r:r + 28, c:c + 28], src[k])]
            assert len(match) == 1 and src_y[match[0]] == label
    b = load_moving_fashion_mnist(12, 5, frames=3, canvas=32, seed=1)
    for u, v in zip(a, b):
        np.testing.assert_array_equal(u, v)
    with pytest.raises(NndError, match="n_train=31 but fashion_mnist has only 30 training images"):
        load_moving_fashion_mnist(31, 1)


@pytest.mark.skipif(not FASHION_DIR.is_dir(), reason="Fashion-MNIST is not installed")
def test_load_moving_fashion_mnist_real(monkeypatch):
    monkeypatch.setenv("NND_OFFLINE", "1")
    x_tr, y_tr, x_te, y_te = load_moving_fashion_mnist(8, 4, frames=3, canvas=36, seed=0,
                                                       data_dir=FASHION_DIR)
    assert x_tr.shape == (8, 3, 36, 36, 1) and x_te.shape == (4, 3, 36, 36, 1)
    assert y_tr.dtype == np.int64 and set(y_tr) | set(y_te) <= set(range(10))
    assert 0.0 <= x_tr.min() and x_tr.max() <= 1.0
    # Each frame holds the whole garment (same amount of ink in every frame of a clip).
    ink = x_tr.sum(axis=(2, 3, 4))
    np.testing.assert_allclose(ink, ink[:, :1].repeat(3, axis=1), rtol=1e-5)


def test_vocabulary_names_the_characters_it_lacks():
    vocabulary = CharVocabulary.from_text("abc")
    assert vocabulary.missing("abZcéZ€") == ["Z", "é", "€"]
    assert vocabulary.missing("cab") == []
