"""Classification metrics against hand-computed values, for 3 and for 100 classes."""
import math

import numpy as np
import pytest

from libml import metrics


def test_three_classes_by_hand():
    logits = np.array([[2., 0., 0.],    # true 0, predicted 0
                       [0., 1., 0.],    # true 0, predicted 1
                       [0., 3., 0.],    # true 1, predicted 1
                       [0., 0., 1.],    # true 2, predicted 2
                       [1., 0., 0.]])   # true 2, predicted 0
    labels = np.array([0, 0, 1, 2, 2])
    m = metrics.classification_metrics(logits, labels, 3)
    assert m['accuracy'] == pytest.approx(60.0)
    assert m['per_class'] == pytest.approx([50.0, 100.0, 50.0])
    assert m['balanced_accuracy'] == pytest.approx(200 / 3)
    assert m['worst_class_accuracy'] == pytest.approx(50.0)
    assert m['gm_accuracy'] == pytest.approx(100 * (0.5 * 1.0 * 0.5) ** (1 / 3))
    assert m['confusion'] == [[1, 1, 0], [0, 1, 0], [1, 0, 1]]
    # cross-entropy: mean of -log softmax(row)[label]
    def nll(row, k):
        return -(row[k] - math.log(sum(math.exp(v) for v in row)))
    assert m['cross_entropy'] == pytest.approx(np.mean([nll(r, k) for r, k in zip(logits, labels)]))


def test_expected_calibration_error_by_hand():
    # confidences 0.9 (correct), 0.9 (wrong), 0.6 (correct): bins [0.8667, 0.9333) and [0.6, 0.6667)
    probs = np.array([[0.9, 0.1], [0.1, 0.9], [0.6, 0.4]])
    labels = np.array([0, 0, 0])
    ece = metrics.expected_calibration_error(probs, labels)
    assert ece == pytest.approx(100 * (2 / 3 * abs(0.5 - 0.9) + 1 / 3 * abs(1.0 - 0.6)))


def test_one_hundred_classes():
    nclass = 100
    labels = np.repeat(np.arange(nclass), 3)
    predictions = np.where(labels % 2 == 0, labels, (labels + 1) % nclass)  # odd classes always wrong
    logits = np.eye(nclass)[predictions] * 5
    m = metrics.classification_metrics(logits, labels, nclass)
    assert m['accuracy'] == pytest.approx(50.0)
    assert m['balanced_accuracy'] == pytest.approx(50.0)
    assert m['worst_class_accuracy'] == 0.0
    # 50 classes at 100% and 50 at 0%, a zero counting as 1/(100 K) = 1e-4: 100 * sqrt(1 * 1e-4) = 1%
    assert m['gm_accuracy'] == pytest.approx(1.0)
    assert len(m['per_class']) == nclass and np.array(m['confusion']).sum() == 300


def test_class_missing_from_the_test_set_is_left_out():
    logits = np.array([[3., 0., 0.], [0., 3., 0.]])
    m = metrics.classification_metrics(logits, np.array([0, 0]), 3)
    assert m['per_class'][1] is None and m['per_class'][2] is None
    assert m['balanced_accuracy'] == pytest.approx(50.0) and m['worst_class_accuracy'] == pytest.approx(50.0)
