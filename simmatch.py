#!/usr/bin/env python
"""SimMatch (Zheng et al., CVPR 2022): pseudo-labels and instance targets from a labeled memory bank, as USB.

Paper setting (CIFAR-10, 40 labels, WRN-28-2; USB's error 5.18%): python simmatch.py --dataset=cifar10.1@40-1

A projection head on the pooled features, Dense(F)-ReLU-Dense(128), gives L2-normalised embeddings e.
State (checkpointed): bank (128, n_l), one column per labeled image (random normal, columns normalised),
labels_bank (n_l,) (their classes), queue (32, K) of the last batch means of p (uniform at first), the
head. With p = stop_gradient(softmax(model(weak(u)))), e_w = stop_gradient(e(weak(u))), e_s = e(strong(u)):
  alignment  queue <- this global batch's mean p (row t mod 32);  p_w = SumNorm(p (1/K + 1e-6) / (mean queue
             + 1e-6));
  t0 = softmax(e_w . bank / T) (n, n_l);  unfolding t[i,k] = SumNorm_k(t0[i,k] p_w[i, labels_bank[k]]);
  aggregation agg[i,c] = sum_{k: labels_bank[k] = c} t0[i,k];  p~ = alpha p_w + (1-alpha) agg;
  L_u = mean_u[1(max p~ >= tau) H(p~, model(strong(u)))],  L_in = mean_u sum_k -t[i,k] log softmax(e_s . bank/T)_k;
  L = mean_l H(y, x) + wu L_u + w_in L_in;  before --start_kimg (1024 steps of 64): p~ = p_w, L_in = 0.
After the loss, every labeled image j of the global batch: bank[:, j] <- normalise(0.7 bank[:, j] + 0.3 e(x_j))
(per column; an image drawn twice in one step uses the mean of its embeddings). T 0.1, alpha 0.9, tau 0.95.
Label-bias add-ons: --CAI multiplies tau by its per-class factor; --CAP, --CADR, --mnar_estimate (on L_u),
--debiased (subtracts L_u and L_in computed on the labeled images: weak x gives the targets of strong x).
Pure loss, for any training loop: simmatch_loss(labels, logits_x, logits_weak, logits_strong, emb_x, emb_weak,
emb_strong, x_index, bank, labels_bank, queue, step, ...) -> (loss, logs, (bank, queue)); the caller runs the
model and the projection head.
"""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from libml import utils  # noqa: E402

utils.quiet_tensorflow()
import keras  # noqa: E402
import tensorflow as tf  # noqa: E402

from libml import debias  # noqa: E402
from libml import devices  # noqa: E402
from libml import keys  # noqa: E402
from libml import losses  # noqa: E402
from libml import models  # noqa: E402
from libml import train  # noqa: E402
from libml import views  # noqa: E402
from libml.settings import Param, above, at_least, in_range  # noqa: E402

QUEUE = 32  # batch means of p in the distribution-alignment queue
BANK_MOMENTUM = 0.7


def similarity_targets(probs_w, emb_weak, bank, labels_bank, T=0.1, alpha=0.9):
    """(p~ = alpha p_w + (1-alpha) agg (n, K), unfolded t (n, n_l)) from the aligned p_w and the weak embeddings."""
    t0 = tf.nn.softmax(tf.matmul(emb_weak, bank) / T)
    onehot = tf.one_hot(labels_bank, probs_w.shape[-1])  # (n_l, K)
    unfolded = t0 * tf.matmul(probs_w, onehot, transpose_b=True)  # t0[i,k] p_w[i, labels_bank[k]]
    unfolded = unfolded / tf.reduce_sum(unfolded, 1, keepdims=True)
    return alpha * probs_w + (1 - alpha) * tf.matmul(t0, onehot), unfolded


def instance_term(unfolded, emb_strong, bank, T=0.1):
    """sum_k -t[i,k] log softmax(e_s . bank / T)[k] per image."""
    return losses.soft_cross_entropy(tf.stop_gradient(unfolded), tf.matmul(emb_strong, bank) / T)


def updated_bank(bank, index, emb, momentum=BANK_MOMENTUM):
    """bank (D, n_l) with columns `index` set to normalise(m bank[:, j] + (1-m) e_j), each column to unit
    norm; a column listed several times takes the mean of its embeddings."""
    onehot = tf.one_hot(index, tf.shape(bank)[1])  # (n, n_l)
    counts = tf.reduce_sum(onehot, 0)
    mean = tf.matmul(emb, onehot, transpose_a=True) / tf.maximum(counts, 1.)  # (D, n_l)
    fresh = tf.math.l2_normalize(momentum * bank + (1 - momentum) * mean, axis=0)
    return tf.where(counts > 0, fresh, bank)


class SimMatch(train.Algorithm):
    params = dict(
        uratio=Param(7, 'Unlabeled images per labeled image in a step (mu).', check=at_least(1)),
        confidence=Param(0.95, 'Confidence threshold tau on the combined pseudo-label p~.',
                         check=in_range(0, 1, low_open=True)),
        wu=Param(1.0, 'Weight of the unlabeled term L_u (0 = complete-case baseline).', check=at_least(0)),
        w_in=Param(1.0, 'Weight of the instance term L_in.', check=at_least(0)),
        T=Param(0.1, 'Temperature of the similarities to the bank.', check=above(0)),
        alpha=Param(0.9, 'p~ = alpha p_w + (1 - alpha) aggregated bank similarities.', check=in_range(0, 1)),
        proj_size=Param(128, 'Embedding size of the projection head.', check=at_least(1)),
        start_kimg=Param(64.0, 'Before this many kimg (1024 steps of 64) p~ = p_w and L_in = 0.', check=at_least(0)),
        augment=views.augment_param('d.d.rac', 'Augmentation L.W.S of the labeled, weak and strong views'),
    )
    label_bias = debias.Support(threshold=True, labeled_term=True, unlabeled_term=True)

    def build(self):
        first = tf.VariableAggregation.ONLY_FIRST_REPLICA  # every replica computes the same new value
        self.classifier = models.with_features(self.trainer.model)
        width = self.classifier.outputs[1].shape[-1]
        self.head = keras.Sequential([keras.layers.Dense(width, activation='relu', dtype='float32'),
                                      keras.layers.Dense(self.settings.proj_size, dtype='float32')], name='head')
        self.head.build((None, width))
        labels = self.trainer.data.labeled.labels
        start = tf.random.stateless_normal([self.settings.proj_size, len(labels)], [self.settings.seed, 23])
        self.bank = tf.Variable(tf.math.l2_normalize(start, axis=0), trainable=False, name='bank', aggregation=first)
        self.labels_bank = tf.Variable(tf.constant(labels, tf.int64), trainable=False, name='labels_bank')
        self.queue = tf.Variable(tf.fill([QUEUE, self.nclass], 1 / self.nclass), trainable=False, name='queue',
                                 aggregation=first)
        return dict(bank=self.bank, labels_bank=self.labels_bank, queue=self.queue, head=self.head)

    def extra_trainable_variables(self):
        return list(self.head.trainable_variables)

    def embed(self, features):
        return tf.math.l2_normalize(self.head(tf.cast(features, tf.float32)), axis=1)

    def loss(self, batch, step):
        s = self.settings
        names = [name for name in (keys.X, keys.X_STRONG, keys.U_WEAK, keys.U_STRONG) if name in batch]
        logits, features = self.classifier(tf.concat([batch[name] for name in names], 0), training=True)
        sizes = [tf.shape(batch[name])[0] for name in names]
        logits = dict(zip(names, tf.split(tf.cast(logits, tf.float32), sizes, 0)))
        emb = dict(zip(names, tf.split(self.embed(features), sizes, 0)))
        self.bias.update(logits[keys.U_WEAK])
        x_strong = (logits[keys.X_STRONG], emb[keys.X_STRONG]) if self.bias.needs_labeled_term else None
        loss, logs, (bank, queue) = simmatch_loss(
            batch[keys.LABEL], logits[keys.X], logits[keys.U_WEAK], logits[keys.U_STRONG], emb[keys.X],
            emb[keys.U_WEAK], emb[keys.U_STRONG], batch[keys.X_INDEX], self.bank, self.labels_bank, self.queue, step,
            self.trainer.kimg_to_steps(s.start_kimg), self.bias.thresholds(s.confidence), s.T, s.alpha, s.wu, s.w_in,
            x_strong, s.debiased, gather=devices.global_rows, means=losses.Corrected(self.bias))
        self.queue.assign(queue)
        with tf.control_dependencies([loss]):  # the bank changes after the loss has read it
            self.bank.assign(bank)
        return loss, logs


def simmatch_terms(logits_weak, emb_weak, logits_strong, emb_strong, bank, labels_bank, p_model, confidence, started,
                   T=0.1, alpha=0.9):
    """(per-image masked H(p~, strong), per-image L_in (0 before `started`), mask) of one set of images."""
    probs_w = losses.smoothed_alignment(tf.nn.softmax(tf.stop_gradient(logits_weak)), 1 / logits_weak.shape[-1],
                                        p_model)
    combined, unfolded = similarity_targets(probs_w, tf.stop_gradient(emb_weak), bank, labels_bank, T, alpha)
    targets = tf.where(started, combined, probs_w)
    mask = losses.confidence_mask(targets, confidence)
    h = mask * losses.soft_cross_entropy(targets, logits_strong)
    return h, tf.cast(started, tf.float32) * instance_term(unfolded, emb_strong, bank, T), mask


def simmatch_loss(labels, logits_x, logits_weak, logits_strong, emb_x, emb_weak, emb_strong, x_index, bank, labels_bank,
                  queue, step, start_steps=0, confidence=0.95, T=0.1, alpha=0.9, wu=1.0, w_in=1.0, x_strong=None,
                  subtract_instance=False, gather=None, means=None):
    """SimMatch's loss and state update (the module docstring's equations): queue row t mod 32 <- mean p first,
    then L = mean_l H(y, x) + wu L_u + w_in L_in, and the bank columns of the labeled images x_index updated.
    logits (B, K), (uB, K); emb_* the L2-normalised embeddings of the same images (e_w, e_s, e(x));
    bank (D, n_l), labels_bank (n_l,), queue (32, K): the state before step t; start_steps: before it p~ = p_w,
    L_in = 0; confidence tau scalar or per-class; x_strong: (logits, embeddings) of the labeled images' strong
    view, whose L_u goes to means.unlabeled (label-bias corrections) and whose L_in is subtracted with
    subtract_instance (DeSSL); gather(v) -> the global batch's rows (default: this batch).
    Returns (L, {losses/xe, losses/xeu, monitors/mask, losses/in}, (bank, queue) after the step)."""
    means = means or losses.Means(wu)
    gather = gather or tf.identity
    mean_p = tf.reduce_mean(gather(tf.nn.softmax(tf.stop_gradient(logits_weak))), 0)
    queue = tf.tensor_scatter_nd_update(queue, [[tf.cast(step % queue.shape[0], tf.int32)]], [mean_p])
    started = step >= start_steps

    def terms(weak, emb_w, strong, emb_s):
        return simmatch_terms(weak, emb_w, strong, emb_s, bank, labels_bank, tf.reduce_mean(queue, 0), confidence,
                              started, T, alpha)

    xe = means.labeled(losses.cross_entropy(labels, logits_x), labels)
    h_u, in_u, mask = terms(logits_weak, emb_weak, logits_strong, emb_strong)
    h_x, in_x, _ = terms(logits_x, emb_x, *x_strong) if x_strong is not None else (None, None, None)
    unlabeled, xeu = means.unlabeled(h_u, labels, h_on_labeled=h_x)
    instance = losses.dessl_mean(in_u, in_x if subtract_instance else None)
    loss = xe + unlabeled + w_in * instance
    bank_after = updated_bank(bank, gather(x_index), gather(tf.stop_gradient(emb_x)))
    return loss, {keys.XE: xe, keys.XEU: xeu, keys.MASK: tf.reduce_mean(mask), 'losses/in': tf.reduce_mean(in_u)}, (
        bank_after, queue)


if __name__ == '__main__':
    train.main(SimMatch)
