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


def test_accuracy_of_one_score_per_sample_is_binary():
    # An output of shape (batch,) against targets of shape (batch,) is Keras' binary accuracy; read as
    # categorical, argmax over the batch axis would score the whole batch as one sample.
    pred = np.array([0.9, 0.2, 0.7, 0.4, 0.6])
    target = np.array([1.0, 0.0, 0.0, 1.0, 1.0])
    m = make_metric("accuracy")
    m.update(pred, target)
    assert m.result() == pytest.approx(np.mean((pred > 0.5) == (target == 1)))  # 3 of 5


def test_a_score_at_the_threshold_is_a_negative_as_in_keras():
    # Keras decides y_pred > threshold in binary_accuracy, precision and recall.
    pred = np.array([[0.5], [0.5], [0.8], [0.1]])
    target = np.array([[0.0], [0.0], [1.0], [0.0]])
    predicted, positive = pred > 0.5, target != 0
    true_positives = np.sum(predicted & positive)
    expected = {"binary_accuracy": np.mean(predicted == positive),
                "accuracy": np.mean(predicted == positive),
                "precision": true_positives / np.sum(predicted)}
    for name, want in expected.items():
        m = make_metric(name)
        m.update(pred, target)
        assert m.result() == pytest.approx(want), name


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


# ------------------------------------------------------------------------------------------ binary decisions

def _stream(metric, pred, target, mask=None, cut=7):
    """Feed the metric in two batches; with a mask, each batch gets its rows of it."""
    parts = [slice(0, cut), slice(cut, None)]
    for part in parts:
        metric.update(pred[part], target[part], None if mask is None else mask[part])
    return metric.result()


def test_precision_and_recall_of_the_keras_documentation():
    # keras.metrics.Precision / Recall, update_state([0, 1, 1, 1], [1, 0, 1, 1]) -> 0.6667 each
    target, pred = np.array([[0], [1], [1], [1]]), np.array([[1.0], [0.0], [1.0], [1.0]])
    assert _stream(make_metric("precision"), pred, target, cut=2) == pytest.approx(2 / 3)
    assert _stream(make_metric("recall"), pred, target, cut=2) == pytest.approx(2 / 3)


def test_precision_and_recall_count_every_element_with_the_threshold_and_the_mask():
    rng = np.random.default_rng(0)
    pred, target = rng.random((20, 6, 3)), (rng.random((20, 6, 3)) < 0.4).astype(np.float32)
    mask = (rng.random((20, 6)) < 0.7).astype(np.float32)  # a padding mask over (batch, steps)
    weight = np.broadcast_to(mask[..., None], pred.shape)
    predicted, positive = pred > 0.3, target != 0
    tp = (weight * (predicted & positive)).sum()
    assert _stream(make_metric("precision", threshold=0.3), pred, target, mask) == pytest.approx(
        tp / (weight * predicted).sum())
    assert _stream(make_metric("recall", threshold=0.3), pred, target, mask) == pytest.approx(
        tp / (weight * positive).sum())
    assert make_metric("precision").result() == 0.0  # nothing predicted positive yet


def _pairwise_auc(scores, positive, weights):
    """The probability that a positive outscores a negative (ties half), by comparing every pair."""
    p, n = positive, ~positive
    wins = (scores[p][:, None] > scores[n][None, :]) + 0.5 * (scores[p][:, None] == scores[n][None, :])
    pair_weights = weights[p][:, None] * weights[n][None, :]
    return (wins * pair_weights).sum() / pair_weights.sum()


def test_auc_is_the_exact_area_under_the_roc_curve():
    # keras.metrics.AUC(), update_state([0, 0, 1, 1], [0, 0.5, 0.3, 0.9]) -> 0.75
    assert _stream(make_metric("auc"), np.array([0, 0.5, 0.3, 0.9]), np.array([0, 0, 1, 1]), cut=1) == 0.75
    rng = np.random.default_rng(1)
    scores = np.round(rng.random((40, 5)), 1)  # many ties
    target = (rng.random((40, 5)) < scores).astype(np.int64)
    mask = (rng.random(40) < 0.8).astype(np.float32)
    weights = np.broadcast_to(mask[:, None], scores.shape).reshape(-1)
    want = _pairwise_auc(scores.reshape(-1), target.reshape(-1) != 0, weights)
    assert _stream(make_metric("auc"), scores, target, mask, cut=13) == pytest.approx(want, rel=1e-12)
    one_class = make_metric("auc")
    one_class.update(np.array([[0.2], [0.9]]), np.array([[1], [1]]))
    assert one_class.result() == 0.0


def test_binary_metrics_explain_class_id_targets_of_a_multi_class_output():
    with pytest.raises(NndError, match=r"metric 'auc': targets of shape \(4,\) do not match predictions of shape "
                                       r"\(4, 3\); it counts binary decisions element by element: give one-hot"):
        make_metric("auc").update(np.full((4, 3), 1 / 3), np.array([0, 1, 2, 1]))
    with pytest.raises(NndError, match=r"metric 'precision': threshold must be a number in \[0, 1\], got 2"):
        make_metric("precision", threshold=2)


def test_confusion_matrix_counts_true_classes_by_row():
    from nnd.runtime.metrics import confusion_matrix

    counts = confusion_matrix(np.array([0, 0, 1, 2, 2, 2]), np.array([0, 1, 1, 2, 0, 2]), 3)
    assert counts.tolist() == [[1, 1, 0], [0, 1, 0], [1, 0, 2]]
    with pytest.raises(NndError, match=r"label 3 at index 1 is outside the 3 classes \(0 to 2\)"):
        confusion_matrix(np.array([0, 3]), np.array([0, 1]), 3)
