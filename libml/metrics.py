"""Classification metrics of logits against labels, for any number of classes K (numpy).

Accuracies are in percent. Per-class accuracy of a class with no test image is NaN and is
left out of the class averages.
"""
import numpy as np

ECE_BINS = 15


def softmax(logits):
    z = logits - logits.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


def confusion_matrix(labels, predictions, nclass):
    """Counts (K, K): row = true class, column = predicted class."""
    return np.bincount(labels * nclass + predictions, minlength=nclass * nclass).reshape(nclass, nclass)


def per_class_accuracy(confusion):
    """100 * correct_k / count_k for each class k (NaN where count_k = 0)."""
    counts = confusion.sum(axis=1).astype(np.float64)
    with np.errstate(invalid='ignore', divide='ignore'):
        return 100 * np.diag(confusion) / counts


def geometric_mean_accuracy(per_class, nclass):
    """CADR's metric: 100 * (prod_k a_k)^(1/K) with a_k in [0, 1], a zero counted as 1/(100 K)."""
    fractions = per_class[~np.isnan(per_class)] / 100
    fractions = np.where(fractions > 0, fractions, 1 / (100 * nclass))
    return float(100 * np.exp(np.mean(np.log(fractions))))


def cross_entropy(logits, labels):
    """Mean of -log softmax(logits)[label], in nats."""
    z = logits - logits.max(axis=1, keepdims=True)
    log_probs = z - np.log(np.exp(z).sum(axis=1, keepdims=True))
    return float(-np.mean(log_probs[np.arange(len(labels)), labels]))


def expected_calibration_error(probs, labels, bins=ECE_BINS):
    """100 * sum_b (n_b / N) |accuracy_b - confidence_b| over equal-width confidence bins."""
    confidence = probs.max(axis=1)
    correct = probs.argmax(axis=1) == labels
    which = np.minimum((confidence * bins).astype(np.int64), bins - 1)
    total = 0.0
    for b in range(bins):
        members = which == b
        if members.any():
            total += members.mean() * abs(correct[members].mean() - confidence[members].mean())
    return float(100 * total)


def classification_metrics(logits, labels, nclass):
    """Every metric of one evaluation set. Returns a dict of floats plus 'per_class' (list of K)
    and 'confusion' (K x K nested list)."""
    logits = np.asarray(logits, np.float64)
    labels = np.asarray(labels, np.int64)
    predictions = logits.argmax(axis=1)
    confusion = confusion_matrix(labels, predictions, nclass)
    per_class = per_class_accuracy(confusion)
    present = per_class[~np.isnan(per_class)]
    return dict(
        accuracy=float(100 * np.mean(predictions == labels)),
        balanced_accuracy=float(present.mean()),
        worst_class_accuracy=float(present.min()),
        gm_accuracy=geometric_mean_accuracy(per_class, nclass),
        cross_entropy=cross_entropy(logits, labels),
        ece=expected_calibration_error(softmax(logits), labels),
        per_class=[None if np.isnan(a) else float(a) for a in per_class],
        confusion=confusion.tolist())
