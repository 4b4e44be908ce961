"""Loss terms shared by the algorithms. Per-sample values (shape (N,)) unless stated; the
caller averages. Logits are float32 (N, K); probabilities are softmax(logits)."""
import tensorflow as tf


def cross_entropy(labels, logits):
    """H(y, x) = -log softmax(logits)[y] per sample, y int (N,)."""
    return tf.nn.sparse_softmax_cross_entropy_with_logits(labels=tf.cast(labels, tf.int32), logits=logits)


def pseudo_label_term(logits_weak, logits_strong, threshold):
    """FixMatch's unlabeled term per sample: 1(max p_w >= tau) * H(argmax p_w, strong view).

    p_w = stop_gradient(softmax(logits_weak)). Returns (masked cross-entropy (N,), mask (N,) in {0,1}).
    """
    probs = tf.stop_gradient(tf.nn.softmax(logits_weak))
    mask = tf.cast(tf.reduce_max(probs, axis=1) >= threshold, tf.float32)
    return cross_entropy(tf.argmax(probs, axis=1), logits_strong) * mask, mask
