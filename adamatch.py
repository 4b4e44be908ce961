#!/usr/bin/env python
"""AdaMatch (Berthelot et al., ICLR 2022) in USB's semi-supervised form: distribution alignment and a
threshold relative to the labeled batch's confidence.

Paper setting (CIFAR-10, 40 labels, WRN-28-2; USB's error 5.05%): python adamatch.py --dataset=cifar10.1@40-1

State (checkpointed): p_target (K,) = 1/K, p_model (K,) (the first batch's mean, then EMA), started. With
p = stop_gradient(softmax(model(weak(u)))) and p_l = stop_gradient(softmax(model(x))) from the same
training-mode pass, global batches (all replicas), m = --ema_p:
  p_target <- m p_target + (1-m) mean_l p_l;  p_model <- mean_i p_i at the first step, then its EMA;
  p~_i = SumNorm(p_i * (p_target + 1e-6) / (p_model + 1e-6));
  c_tau = tau * mean_l max_c p_l   (relative threshold, tau = --confidence);
  L = mean_l H(y, x) + wu mean_u[1(max p~_i >= c_tau) H(argmax p~_i, model(strong(u_i)))].
USB's form: without the paper's random logit interpolation, its source-only batch-norm pass and the
warm-up of the unlabeled weight (see README).
Label-bias add-ons: --CAI multiplies c_tau by its per-class factor; --CAP, --CADR, --debiased,
--mnar_estimate (the term on the labeled images: aligned weak x labels strong x).
Pure loss, for any training loop: adamatch_loss(labels, logits_x, logits_weak, logits_strong, p_target,
p_model, started, confidence, ema_p, wu) -> (loss, logs, (p_target, p_model, started)).
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



def relative_threshold(labeled_probs, tau):
    """c_tau = tau * mean over the labeled images of max_c p_l."""
    return tau * tf.reduce_mean(tf.reduce_max(labeled_probs, 1))


def pseudo_label_term(probs_aligned, logits_strong, threshold):
    """(1(max p~ >= threshold) H(argmax p~, strong) (n,), mask (n,)); threshold scalar or per class."""
    mask = losses.confidence_mask(probs_aligned, threshold)
    return mask * losses.cross_entropy(tf.argmax(probs_aligned, 1), logits_strong), mask


class AdaMatch(train.Algorithm):
    params = dict(
        uratio=Param(7, 'Unlabeled images per labeled image in a step (mu).', check=at_least(1)),
        confidence=Param(0.95, 'tau of the relative threshold tau * (mean labeled confidence).',
                         check=in_range(0, 1, low_open=True)),
        wu=Param(1.0, 'Weight of the unlabeled term (0 = complete-case baseline).', check=at_least(0)),
        ema_p=Param(0.999, 'Momentum of the EMAs p_target and p_model.', check=in_range(0, 1)),
        augment=views.augment_param('d.d.rac', 'Augmentation L.W.S of the labeled, weak and strong views'),
    )
    label_bias = debias.Support(threshold=True, labeled_term=True, unlabeled_term=True)

    def build(self):
        first = tf.VariableAggregation.ONLY_FIRST_REPLICA  # every replica computes the same new value
        uniform = tf.fill([self.nclass], 1 / self.nclass)
        self.p_target = tf.Variable(uniform, trainable=False, name='p_target', aggregation=first)
        self.p_model = tf.Variable(uniform, trainable=False, name='p_model', aggregation=first)
        self.started = tf.Variable(0., trainable=False, name='started', aggregation=first)
        return dict(p_target=self.p_target, p_model=self.p_model, started=self.started)

    def loss(self, batch, step):
        s = self.settings
        logits = self.forward_views(batch, keys.X, keys.X_STRONG, keys.U_WEAK, keys.U_STRONG)
        self.bias.update(logits[keys.U_WEAK])
        on_labeled = (logits[keys.X], logits[keys.X_STRONG]) if self.bias.needs_labeled_term else None
        loss, logs, state = adamatch_loss(
            batch[keys.LABEL], logits[keys.X], logits[keys.U_WEAK], logits[keys.U_STRONG], self.p_target, self.p_model,
            self.started, s.confidence, s.ema_p, s.wu, self.bias.thresholds(1.0), gather=devices.global_rows,
            means=losses.Corrected(self.bias, views_on_labeled=on_labeled))
        for variable, value in zip((self.p_target, self.p_model, self.started), state):
            variable.assign(value)
        return loss, logs


def adamatch_loss(labels, logits_x, logits_weak, logits_strong, p_target, p_model, started, confidence=0.95,
                  ema_p=0.999, wu=1.0, threshold_scale=1.0, gather=None, means=None):
    """AdaMatch's loss and state update from logits (the module docstring's equations): p_target and p_model
    step on p_l = stop_gradient(softmax(logits_x)) and p = stop_gradient(softmax(logits_weak)) first, then
      L = mean_l H(y, x) + wu mean_u[1(max p~_i >= c_tau) H(argmax p~_i, strong_i)],  c_tau = tau mean_l max p_l.
    labels int (B,); logits (B, K), (uB, K); p_target, p_model (K,), started (0 before the first step, then 1):
    the state before the step; threshold_scale: 1 or --CAI's per-class factor (K,) on c_tau; gather(v) -> the
    global batch's rows of v (default: this batch).
    Returns (L, {losses/xe, losses/xeu, monitors/mask, monitors/c_tau}, (p_target, p_model, started))."""
    means = means or losses.Means(wu)
    gather = gather or tf.identity
    probs_x, probs_u = (tf.nn.softmax(tf.stop_gradient(logits)) for logits in (logits_x, logits_weak))
    every_x, every_u = gather(probs_x), gather(probs_u)
    p_target = ema_p * p_target + (1 - ema_p) * tf.reduce_mean(every_x, 0)
    p_model = losses.first_batch_ema(p_model, started, tf.reduce_mean(every_u, 0), ema_p)
    c_tau = relative_threshold(every_x, confidence)
    thresholds = c_tau * threshold_scale

    def term(weak, strong):
        aligned = losses.smoothed_alignment(tf.nn.softmax(tf.stop_gradient(weak)), p_target, p_model)
        return pseudo_label_term(aligned, strong, thresholds)

    xe = means.labeled(losses.cross_entropy(labels, logits_x), labels)
    aligned_u = losses.smoothed_alignment(probs_u, p_target, p_model)
    h_unlabeled, mask = pseudo_label_term(aligned_u, logits_strong, thresholds)
    unlabeled, xeu = means.unlabeled(h_unlabeled, labels, term)
    return xe + unlabeled, {keys.XE: xe, keys.XEU: xeu, keys.MASK: tf.reduce_mean(mask),
                            'monitors/c_tau': c_tau}, (p_target, p_model, tf.ones([]))


if __name__ == '__main__':
    train.main(AdaMatch)
