#!/usr/bin/env python
"""FreeMatch (Wang et al., ICLR 2023): self-adaptive thresholds and a fairness term, as USB implements it.

Paper setting (CIFAR-10, 40 labels, WRN-28-2; USB's error 4.97%): python freematch.py --dataset=cifar10.1@40-1

State (checkpointed): time_p = 1/K, p_model (K,) = 1/K, label_hist (K,) = 1/K. With p = stop_gradient(
softmax(model(weak(u)))) over the global batch (all replicas), n images, m = --ema_p, before the mask:
  time_p <- m time_p + (1-m) mean_i max_c p_ic,  p_model <- m p_model + (1-m) mean_i p_i,
  label_hist <- m label_hist + (1-m) bincount(argmax p_i) / n;
  w_i = 1(max p_i >= time_p * p_model[c_i] / max_c p_model[c]),  c_i = argmax p_i (hard pseudo-label);
  fairness over the masked images S (0 when S is empty), q_i = softmax(model(strong(u_i))) with its gradient,
  h_S[c] = share of S with argmax q = c, inv0(x) = 1/x (1/0 = 0), SumNorm(v) = v / sum(v):
  L_f = sum_c a_c log(b_c + 1e-12),  a = SumNorm(p_model inv0(label_hist)),  b = SumNorm(mean_S q_i inv0(h_S));
  L = mean_l H(y, x) + wu mean_u[w_i H(c_i, strong(u_i))] + lambda_f L_f   (L_f added, as USB and the paper).
lambda_f 0.001 as USB's classic CIFAR configs (its argument default is 0.01).
Label-bias add-ons: --CAI multiplies the per-class thresholds by its factor; --CAP, --CADR, --debiased,
--mnar_estimate (the unlabeled term on the labeled images: weak x labels strong x, same thresholds).
Pure loss, for any training loop: freematch_loss(labels, logits_x, logits_weak, logits_strong, p_model,
label_hist, time_p, ema_p, lambda_f, wu) -> (loss, logs, (p_model, label_hist, time_p)).
"""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from libml import utils  # noqa: E402

utils.quiet_tensorflow()
import tensorflow as tf  # noqa: E402

from libml import debias  # noqa: E402
from libml import devices  # noqa: E402
from libml import keys  # noqa: E402
from libml import losses  # noqa: E402
from libml import train  # noqa: E402
from libml import views  # noqa: E402
from libml.settings import Param, at_least, in_range  # noqa: E402


def updated_statistics(time_p, p_model, label_hist, probs, momentum):
    """(time_p, p_model, label_hist) after one EMA step on the probabilities (n, K) of the global batch."""
    nclass = probs.shape[-1]
    time_p = momentum * time_p + (1 - momentum) * tf.reduce_mean(tf.reduce_max(probs, 1))
    p_model = momentum * p_model + (1 - momentum) * tf.reduce_mean(probs, 0)
    hist = tf.reduce_mean(tf.one_hot(tf.argmax(probs, 1), nclass), 0)
    return time_p, p_model, momentum * label_hist + (1 - momentum) * hist


def self_adaptive_thresholds(time_p, p_model):
    """Per-class thresholds (K,) time_p * p_model[c] / max_c p_model[c]."""
    return time_p * p_model / tf.reduce_max(p_model)


def inverse_or_zero(x):
    return tf.math.divide_no_nan(tf.ones_like(x), x)


def fairness_term(logits_strong, mask, p_model, label_hist):
    """L_f = sum_c a_c log(b_c + 1e-12) over the images with mask 1 (0 when none); gradient through q."""
    probs = tf.nn.softmax(logits_strong)
    weights = tf.cast(mask, probs.dtype)[:, None]
    count = tf.reduce_sum(weights)
    share = tf.reduce_sum(weights * tf.one_hot(tf.argmax(probs, 1), probs.shape[-1]), 0) / tf.maximum(count, 1.)
    a = tf.stop_gradient(p_model * inverse_or_zero(label_hist))
    a = a / tf.reduce_sum(a)
    b = tf.reduce_sum(weights * probs, 0) / tf.maximum(count, 1.) * tf.stop_gradient(inverse_or_zero(share))
    b = b / tf.maximum(tf.reduce_sum(b), 1e-30)
    return tf.where(count > 0, tf.reduce_sum(a * tf.math.log(b + 1e-12)), 0.)


class FreeMatch(train.Algorithm):
    params = dict(
        uratio=Param(7, 'Unlabeled images per labeled image in a step (mu).', check=at_least(1)),
        wu=Param(1.0, 'Weight of the unlabeled term (0 = complete-case baseline).', check=at_least(0)),
        ema_p=Param(0.999, 'Momentum m of the EMAs time_p, p_model and label_hist.', check=in_range(0, 1)),
        lambda_f=Param(0.001, 'Weight of the fairness term (USB: 0.001 in its CIFAR configs, 0.01 as argument '
                       'default).', check=at_least(0)),
        augment=views.augment_param('d.d.rac', 'Augmentation L.W.S of the labeled, weak and strong views'),
    )
    label_bias = debias.Support(threshold=True, labeled_term=True, unlabeled_term=True)

    def build(self):
        first = tf.VariableAggregation.ONLY_FIRST_REPLICA  # every replica computes the same new value
        uniform = tf.fill([self.nclass], 1 / self.nclass)
        self.time_p = tf.Variable(1 / self.nclass, trainable=False, name='time_p', aggregation=first)
        self.p_model = tf.Variable(uniform, trainable=False, name='p_model', aggregation=first)
        self.label_hist = tf.Variable(uniform, trainable=False, name='label_hist', aggregation=first)
        return dict(time_p=self.time_p, p_model=self.p_model, label_hist=self.label_hist)

    def loss(self, batch, step):
        s = self.settings
        logits = self.forward_views(batch, keys.X, keys.X_STRONG, keys.U_WEAK, keys.U_STRONG)
        self.bias.update(logits[keys.U_WEAK])
        on_labeled = (logits[keys.X], logits[keys.X_STRONG]) if self.bias.needs_labeled_term else None
        loss, logs, state = freematch_loss(
            batch[keys.LABEL], logits[keys.X], logits[keys.U_WEAK], logits[keys.U_STRONG], self.p_model,
            self.label_hist, self.time_p, s.ema_p, s.lambda_f, s.wu, self.bias.thresholds(1.0),
            gather=devices.global_rows, means=losses.Corrected(self.bias, views_on_labeled=on_labeled))
        for variable, value in zip((self.p_model, self.label_hist, self.time_p), state):
            variable.assign(value)
        return loss, logs


def freematch_loss(labels, logits_x, logits_weak, logits_strong, p_model, label_hist, time_p, ema_p=0.999,
                   lambda_f=0.001, wu=1.0, threshold_scale=1.0, gather=None, means=None):
    """FreeMatch's loss and state update from logits (the module docstring's equations): the EMAs step
    on p = stop_gradient(softmax(logits_weak)) first, then
      L = mean_l H(y, x) + wu mean_u[w_i H(c_i, strong_i)] + lambda_f L_f,
      w_i = 1(max p_i >= threshold_scale * time_p p_model[c_i] / max p_model),  c_i = argmax p_i.
    labels int (B,); logits (B, K), (uB, K); p_model, label_hist (K,), time_p (): the state before the step;
    threshold_scale: 1 or --CAI's per-class factor (K,); gather(v) -> the global batch's rows of v (default:
    this batch). Returns (L, {losses/xe, losses/xeu, monitors/mask, losses/fairness, monitors/time_p},
    (p_model, label_hist, time_p) after the step)."""
    means = means or losses.Means(wu)
    probs = tf.nn.softmax(tf.stop_gradient(logits_weak))
    time_p, p_model, label_hist = updated_statistics(time_p, p_model, label_hist, (gather or tf.identity)(probs),
                                                     ema_p)
    thresholds = threshold_scale * self_adaptive_thresholds(time_p, p_model)

    def term(weak, strong):
        return losses.pseudo_label_term(weak, strong, thresholds)

    xe = means.labeled(losses.cross_entropy(labels, logits_x), labels)
    h_unlabeled, mask = term(logits_weak, logits_strong)
    unlabeled, xeu = means.unlabeled(h_unlabeled, labels, term)
    fairness = fairness_term(logits_strong, mask, p_model, label_hist)
    return xe + unlabeled + lambda_f * fairness, {
        keys.XE: xe, keys.XEU: xeu, keys.MASK: tf.reduce_mean(mask), 'losses/fairness': fairness,
        'monitors/time_p': tf.convert_to_tensor(time_p)}, (p_model, label_hist, time_p)


if __name__ == '__main__':
    train.main(FreeMatch)
