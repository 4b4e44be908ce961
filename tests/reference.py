"""Numpy reference computations that tests compare the TensorFlow code against."""
import numpy as np


def softmax(logits):
    """softmax over the last axis."""
    logits = np.asarray(logits, np.float64)
    e = np.exp(logits - np.max(logits, axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


def log_softmax(logits):
    return np.log(softmax(logits))


def nll_rows(logits, labels):
    """-log softmax(logits)[y] per row, logits (N, K), labels (N,)."""
    return -log_softmax(logits)[np.arange(len(labels)), labels]
