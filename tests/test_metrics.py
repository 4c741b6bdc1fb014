import numpy as np
import pytest

from nnd.compiler.diagnostics import NndError
from nnd.runtime.metrics import make_metric

PRED = np.array([[0.1, 0.7, 0.2], [0.5, 0.3, 0.2], [0.2, 0.2, 0.6], [0.3, 0.4, 0.3]])
LABELS = np.array([1, 1, 2, 0])  # correct, wrong, correct, wrong


def test_sparse_categorical_accuracy_streaming():
    m = make_metric("sparse_categorical_accuracy")
    assert m.result() == 0.0
    m.update(PRED[:3], LABELS[:3])
    m.update(PRED[3:], LABELS[3:].reshape(-1, 1))
    assert m.result() == pytest.approx(0.5)
    m.reset()
    m.update(PRED[:1], LABELS[:1])
    assert m.result() == 1.0


def test_categorical_accuracy():
    m = make_metric("categorical_accuracy")
    m.update(PRED, np.eye(3)[LABELS])
    assert m.result() == pytest.approx(0.5)


def test_binary_accuracy_threshold():
    pred = np.array([[0.9], [0.4], [0.6], [0.2]])
    target = np.array([[1.0], [1.0], [0.0], [0.0]])
    m = make_metric("binary_accuracy")
    m.update(pred, target)
    assert m.result() == pytest.approx(0.5)
    m = make_metric("binary_accuracy", threshold=0.3)
    m.update(pred, target.ravel())
    assert m.result() == pytest.approx(0.75)  # only 0.6 (target 0) is wrong at this threshold
    m = make_metric("binary_accuracy", threshold=0.95)
    m.update(pred, target)
    assert m.result() == pytest.approx(0.5)  # everything predicted 0


def test_accuracy_auto_detects_form():
    sparse = make_metric("accuracy")
    sparse.update(PRED, LABELS)
    col = make_metric("acc")
    col.update(PRED, LABELS[:, None].astype(np.float32))
    onehot = make_metric("accuracy")
    onehot.update(PRED, np.eye(3)[LABELS])
    binary = make_metric("accuracy")
    binary.update(np.array([[0.9], [0.1]]), np.array([[1], [1]]))
    assert sparse.result() == col.result() == onehot.result() == pytest.approx(0.5)
    assert binary.result() == pytest.approx(0.5)


def test_top_k_accuracy():
    pred = np.array([[0.5, 0.3, 0.2, 0.0], [0.1, 0.2, 0.3, 0.4], [0.25, 0.25, 0.25, 0.25]])
    m = make_metric("top_k_accuracy", k=2)
    m.update(pred, np.array([1, 0, 3]))  # rank 2 ok, rank 4 no, tie counts as in top k
    assert m.result() == pytest.approx(2 / 3)
    m5 = make_metric("sparse_top_k_categorical_accuracy")
    m5.update(pred, np.array([1, 0, 3]))
    assert m5.k == 5 and m5.result() == 1.0


def test_mae_mse_weight_by_element():
    m, s = make_metric("mae"), make_metric("mean_squared_error")
    for pred, tgt in [(np.array([[1.0, 2.0]]), np.array([[0.0, 0.0]])), (np.array([[3.0, 3.0], [1.0, 1.0]]),
                                                                       np.array([[3.0, 3.0], [1.0, 0.0]]))]:
        m.update(pred, tgt)
        s.update(pred, tgt)
    assert m.result() == pytest.approx((1 + 2 + 0 + 0 + 0 + 1) / 6)
    assert s.result() == pytest.approx((1 + 4 + 1) / 6)


def test_errors():
    with pytest.raises(NndError, match="unknown metric 'acuracy'; did you mean 'accuracy'"):
        make_metric("acuracy")
    with pytest.raises(NndError,
                       match="unknown argument 'kk' for metric 'top_k_accuracy'; did you mean 'k'\\? \\(valid: k\\)"):
        make_metric("top_k_accuracy", kk=3)
    m = make_metric("sparse_categorical_accuracy")
    with pytest.raises(NndError, match="label 7 at index 1 is out of range for 3 classes"):
        m.update(PRED[:2], np.array([0, 7]))
    with pytest.raises(NndError, match=r"batch size 4 \(4, 3\) but targets have 3"):
        m.update(PRED, LABELS[:3])
    with pytest.raises(NndError, match=r"metric 'accuracy' \(as categorical_accuracy\): one-hot targets of shape "
                                       r"\(4, 2\)"):
        make_metric("accuracy").update(PRED, np.zeros((4, 2)))
    with pytest.raises(NndError, match="k must be a positive integer"):
        make_metric("top_k_accuracy", k=0)
