#!/usr/bin/env python
"""Pseudo-Label (Lee, ICML 2013 workshop), as in Oliver et al. (2018).

Paper setting (Oliver et al.: CIFAR-10, 4000 labels, WRN-28-2; time not measured):
  python pseudo_label.py --dataset=cifar10.1@4000-1 --train_dir=./experiments/pseudo_label
Small local run on a CPU (16 kimg; time not measured):
  python pseudo_label.py --dataset=fashion_mnist.1@250-1 --local

The model labels each unlabeled image with its own confident prediction and trains on it, both
on the same (weak flip + crop) view: with p(u) = stop_gradient(softmax(model(u))), tau = --threshold,
  L = mean_l H(y, model(x)) + wu * min(1, t / warmup) * mean_u[ 1(max p(u) >= tau) * H(argmax p(u), model(u)) ]
The mean runs over all unlabeled images (masked ones count as 0). --debiased subtracts the same
term computed on the labeled images (pseudo-labels from the model, not the true labels).

Batch norm as the reference: separate training-mode passes over the labeled and the unlabeled
batch, each normalised by its own batch statistics; only the labeled pass updates the moving
statistics. --joint_bn (departs from the reference) makes them one pass. The reference masks with
max p > tau (strictly); here max p >= tau, as every other threshold of this code base.

Optimizer: the FixMatch setup (SGD 0.03, cosine). Oliver et al. used Adam: --optimizer=adam --lr=3e-4.
Pure loss, for any training loop: pseudo_label_loss(labels, logits_x, logits_u, threshold, wu, ramp).
"""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from libml import utils  # noqa: E402

utils.quiet_tensorflow()
import tensorflow as tf  # noqa: E402

from libml import consistency_methods as cm  # noqa: E402
from libml import debias  # noqa: E402
from libml import keys  # noqa: E402
from libml import losses  # noqa: E402
from libml import train  # noqa: E402
from libml.settings import Param, at_least, in_range  # noqa: E402


class PseudoLabel(train.Algorithm):
    params = dict(
        uratio=cm.UNLABELED_RATIO,
        wu=Param(1.0, 'Maximum weight of the pseudo-label term (Oliver et al.: 1), reached after --warmup_kimg; '
                 '0 = complete case.', check=at_least(0)),
        warmup_kimg=cm.WARMUP_KIMG,
        threshold=Param(0.95, 'Confidence threshold tau: only predictions with max softmax >= tau become labels.',
                        check=in_range(0, 1, low_open=True)),
        joint_bn=cm.JOINT_BN,
    )
    label_bias = debias.Support(threshold=True, labeled_term=True, unlabeled_term=True, darp=True)

    def views(self):
        return {keys.X: 'd'}, {keys.U_WEAK: 'd'}

    def loss(self, batch, step):
        s = self.settings
        logits = cm.separate_views(self, batch, keys.X, keys.U_WEAK)
        logits_x, logits_u = logits[keys.X], logits[keys.U_WEAK]
        self.bias.update(logits_u)
        thresholds = self.bias.thresholds(s.threshold)
        weak = self.bias.pseudo_logits(batch.get(keys.U_INDEX), logits_u, step)  # --darp: refined rows
        h_labeled = losses.pseudo_label_term(logits_x, logits_x, thresholds)[0] if self.bias.needs_labeled_term \
            else None
        return pseudo_label_loss(batch[keys.LABEL], logits_x, logits_u, thresholds, s.wu, cm.rampup(self, step),
                                 logits_pseudo=weak, means=losses.Corrected(self.bias, h_labeled))


def pseudo_label_loss(labels, logits_x, logits_u, threshold=0.95, wu=1.0, ramp=1.0, logits_pseudo=None, means=None):
    """Pseudo-Label's loss from logits, p = stop_gradient(softmax(logits_u)):
      L = mean_l H(y, x) + r wu mean_u[1(max p >= tau) H(argmax p, u)],  r = `ramp`.
    labels int (B,), logits_x (B, K), logits_u (uB, K) of the one unlabeled view (with its gradient);
    threshold tau scalar or per-class (K,); logits_pseudo: logits the pseudo-labels and mask come from
    instead of logits_u (--darp's refined rows). Returns (L, {losses/xe, losses/xeu, monitors/wu, monitors/mask})."""
    h_unlabeled, mask = losses.pseudo_label_term(logits_u if logits_pseudo is None else logits_pseudo, logits_u,
                                                 threshold)
    loss, logs = losses.ramped_loss(labels, logits_x, h_unlabeled, wu, ramp, means)
    return loss, {**logs, keys.MASK: tf.reduce_mean(mask)}


if __name__ == '__main__':
    train.main(PseudoLabel)
