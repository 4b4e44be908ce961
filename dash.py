#!/usr/bin/env python
"""Dash (Xu et al., ICML 2021): dynamic selection by a decreasing loss threshold, as USB implements it.

Paper setting (CIFAR-10, 40 labels, WRN-28-2; USB's error 15.01%): python dash.py --dataset=cifar10.1@40-1

Warm-up: the first --warmup_kimg (2048 steps of 64) train the labeled term only (the unlabeled images still
go through the pass, weight 0). rho_init (checkpointed, with its sum and count) is the mean labeled
cross-entropy of the global labeled batches of the last quarter of the warm-up steps (the model warmed up,
on the labeled set; USB measures it on the test set with EMA weights that were never updated);
--warmup_kimg=0 leaves rho_init 0: rho = rho_min (hard labels) from the start.
After the warm-up, k = floor((t - warm-up steps) / gamma steps), gamma steps = --gamma_kimg (10240 steps):
  rho = max(C gamma^-k rho_init, rho_min),  C = 1.0001, gamma = 1.27, rho_min = 0.05;
  q_i = softmax(weak_i / T) (T = 0.5) while rho > rho_min, then onehot(argmax weak_i), no gradient;
  w_i = 1(H(q_i, weak_i) <= rho)   (selection by the weak view's own loss);
  L = mean_l H(y, x) + wu mean_u[w_i H(q_i, model(strong(u_i)))].
Label-bias add-ons: --CAP, --debiased, --mnar_estimate (the term on the labeled images: weak x labels
strong x, same rho); the threshold is on a loss, not a confidence: --CAI and --CADR are refused.
Pure loss, for any training loop: dash_loss(labels, logits_x, logits_weak, logits_strong, step, rho_sum,
rho_count, warmup_steps, every_steps, T, wu) -> (loss, logs, (rho_sum, rho_count, rho_init)).
"""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from libml import utils  # noqa: E402

utils.quiet_tensorflow()
import tensorflow as tf  # noqa: E402

from libml import debias  # noqa: E402
from libml import keys  # noqa: E402
from libml import losses  # noqa: E402
from libml import train  # noqa: E402
from libml import views  # noqa: E402
from libml.settings import Param, above, at_least  # noqa: E402


def dash_threshold(step, rho_init, warmup_steps, every_steps, C=1.0001, gamma=1.27, rho_min=0.05):
    """rho = max(C gamma^-k rho_init, rho_min), k = floor((step - warmup_steps) / every_steps), k >= 0."""
    k = tf.maximum(tf.cast(step, tf.int64) - warmup_steps, 0) // max(int(every_steps), 1)
    return tf.maximum(C * tf.pow(gamma, -tf.cast(k, tf.float32)) * rho_init, rho_min)


def dash_selection(logits_weak, rho, temperature=0.5, rho_min=0.05):
    """(targets q (n, K), mask (n,)): soft q = softmax(weak / T) while rho > rho_min, else one-hot argmax;
    mask 1(H(q, weak) <= rho)."""
    logits_weak = tf.stop_gradient(logits_weak)
    hard = tf.one_hot(tf.argmax(logits_weak, 1), logits_weak.shape[-1])
    targets = tf.where(rho > rho_min, tf.nn.softmax(logits_weak / temperature), hard)
    return targets, tf.cast(losses.soft_cross_entropy(targets, logits_weak) <= rho, tf.float32)


class Dash(train.Algorithm):
    params = dict(
        uratio=Param(7, 'Unlabeled images per labeled image in a step (mu).', check=at_least(1)),
        wu=Param(1.0, 'Weight of the unlabeled term (0 = complete-case baseline).', check=at_least(0)),
        warmup_kimg=Param(128.0, 'Supervised-only warm-up (128 kimg = 2048 steps of 64); rho_init is measured '
                          'over its last quarter.', check=at_least(0)),
        gamma_kimg=Param(640.0, 'rho shrinks by gamma every this many kimg (640 = 10240 steps of 64).',
                         check=above(0)),
        T=Param(0.5, 'Temperature of the soft pseudo-labels.', check=above(0)),
        augment=views.augment_param('d.d.rac', 'Augmentation L.W.S of the labeled, weak and strong views'),
    )
    label_bias = debias.Support(threshold=False, labeled_term=True, unlabeled_term=True)

    def build(self):
        first = tf.VariableAggregation.ONLY_FIRST_REPLICA  # every replica computes the same new value
        self.rho_sum = tf.Variable(0., trainable=False, name='rho_sum', aggregation=first)
        self.rho_count = tf.Variable(0., trainable=False, name='rho_count', aggregation=first)
        self.rho_init = tf.Variable(0., trainable=False, name='rho_init', aggregation=first)
        return dict(rho_sum=self.rho_sum, rho_count=self.rho_count, rho_init=self.rho_init)

    def loss(self, batch, step):
        s = self.settings
        logits = self.forward_views(batch, keys.X, keys.X_STRONG, keys.U_WEAK, keys.U_STRONG)
        self.bias.update(logits[keys.U_WEAK])
        ctx = tf.distribute.get_replica_context()
        on_labeled = (logits[keys.X], logits[keys.X_STRONG]) if self.bias.needs_labeled_term else None
        loss, logs, state = dash_loss(
            batch[keys.LABEL], logits[keys.X], logits[keys.U_WEAK], logits[keys.U_STRONG], step, self.rho_sum,
            self.rho_count, self.trainer.kimg_to_steps(s.warmup_kimg), self.trainer.kimg_to_steps(s.gamma_kimg), s.T,
            s.wu, replica_mean=lambda v: ctx.all_reduce('MEAN', v),
            means=losses.Corrected(self.bias, views_on_labeled=on_labeled))
        for variable, value in zip((self.rho_sum, self.rho_count, self.rho_init), state):
            variable.assign(value)
        return loss, logs


def dash_loss(labels, logits_x, logits_weak, logits_strong, step, rho_sum, rho_count, warmup_steps, every_steps,
              T=0.5, wu=1.0, replica_mean=None, means=None):
    """Dash's loss and state update from logits at step t (the module docstring's equations): the mean
    labeled H of the last quarter of the warm-up steps accumulates into rho_sum, rho_count first, then
    rho_init = rho_sum / max(rho_count, 1), rho = dash_threshold(t, ...), q_i from `dash_selection`, and
      L = mean_l H(y, x) + wu a(t) mean_u[1(H(q_i, weak_i) <= rho) H(q_i, strong_i)],  a(t) = 1(t >= warm-up).
    labels int (B,); logits (B, K), (uB, K); rho_sum, rho_count: the state before the step (0 at first);
    replica_mean(v) -> the mean of v over replicas (default: v). Returns (L, {losses/xe, losses/xeu,
    monitors/mask, monitors/rho}, (rho_sum, rho_count, rho_init) after the step)."""
    means = means or losses.Means(wu)
    h_x = losses.cross_entropy(labels, logits_x)
    measured = (replica_mean or tf.identity)(tf.reduce_mean(tf.stop_gradient(h_x)))
    window = tf.cast((step >= warmup_steps - max(warmup_steps // 4, 1)) & (step < warmup_steps), tf.float32)
    rho_sum, rho_count = rho_sum + window * measured, rho_count + window
    rho_init = rho_sum / tf.maximum(rho_count, 1.)
    rho = dash_threshold(step, rho_init, warmup_steps, every_steps)
    active = tf.cast(step >= warmup_steps, tf.float32)

    def term(weak, strong):
        targets, mask = dash_selection(weak, rho, T)
        return active * (mask * losses.soft_cross_entropy(targets, strong)), mask

    xe = means.labeled(h_x, labels)
    h_unlabeled, mask = term(logits_weak, logits_strong)
    unlabeled, xeu = means.unlabeled(h_unlabeled, labels, term)
    return xe + unlabeled, {keys.XE: xe, keys.XEU: xeu, keys.MASK: active * tf.reduce_mean(mask),
                            'monitors/rho': rho}, (rho_sum, rho_count, rho_init)


if __name__ == '__main__':
    train.main(Dash)
