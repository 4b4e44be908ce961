#!/usr/bin/env python
"""Pi-model (Laine & Aila, ICLR 2017; Sajjadi et al., NeurIPS 2016), as in Oliver et al. (2018).

Paper setting (Oliver et al.: CIFAR-10, 4000 labels, WRN-28-2; time not measured):
  python pi_model.py --dataset=cifar10.1@4000-1 --train_dir=./experiments/pi_model
Small local run on a CPU (16 kimg; time not measured):
  python pi_model.py --dataset=fashion_mnist.1@250-1 --local

Loss, with two views a(u), b(u) of each unlabeled image (--augment=L.W.S: W gives a, S gives b),
q = stop_gradient(softmax(model(a(u)))), d = --consistency (default mse: mean_k (p_k - q_k)^2):
  L = mean_l H(y, model(x)) + wu * min(1, t / warmup) * mean_u d(q, softmax(model(b(u))))
--debiased subtracts wu * r(t) * mean_l d(q(x), softmax(model(b(x)))), with the labeled view x as
a(x) and an extra S view as b(x).

Batch norm as the reference: three forward passes in training mode, x, a(u) and b(u) (and b(x)
with --debiased), each normalised by its own batch statistics; only the labeled pass updates the
moving statistics. --joint_bn (departs from the reference) makes it one pass over all of them.
Pure loss, for any training loop: pi_model_loss(labels, logits_x, logits_a, logits_b, wu, ramp, consistency).

Optimizer: the FixMatch setup (SGD 0.03, cosine). Oliver et al. used Adam: --optimizer=adam --lr=3e-4.
"""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from libml import utils  # noqa: E402

utils.quiet_tensorflow()
import tensorflow as tf  # noqa: E402

from libml import views  # noqa: E402
from libml import consistency_methods as cm  # noqa: E402
from libml import keys  # noqa: E402
from libml import losses  # noqa: E402
from libml import train  # noqa: E402
from libml.settings import Param, at_least  # noqa: E402


class PiModel(train.Algorithm):
    params = dict(
        uratio=cm.UNLABELED_RATIO,
        wu=Param(10.0, 'Maximum weight of the consistency term (the reference\'s consistency_weight: 10; Oliver et al. '
                 'used 20), reached after --warmup_kimg; 0 = complete case.', check=at_least(0)),
        warmup_kimg=cm.WARMUP_KIMG,
        consistency=cm.consistency_param('mse'),
        augment=views.augment_param('d.d.d', 'Views L.W.S: labeled view, unlabeled view giving the target, '
                                      'unlabeled view trained on'),
        joint_bn=cm.JOINT_BN,
    )
    label_bias = cm.LABEL_BIAS

    def views(self):
        """Labeled X; unlabeled U_WEAK (target a, W) and U_STRONG (student b, S); X_STRONG = b(x)."""
        return self.standard_views(labeled_strong=self.bias.needs_labeled_term)

    def loss(self, batch, step):
        s = self.settings
        logits = cm.separate_views(self, batch, keys.X, keys.U_WEAK, keys.U_STRONG, keys.X_STRONG)
        self.bias.update(logits[keys.U_WEAK])
        h_labeled = pi_term(s.consistency, logits[keys.X], logits[keys.X_STRONG]) \
            if self.bias.needs_labeled_term else None
        return pi_model_loss(batch[keys.LABEL], logits[keys.X], logits[keys.U_WEAK], logits[keys.U_STRONG], s.wu,
                             cm.rampup(self, step), s.consistency, means=losses.Corrected(self.bias, h_labeled))


def pi_term(kind, logits_target, logits_student):
    """d(stop_gradient(softmax(target view)), softmax(student view)) per sample (N,)."""
    return losses.consistency(kind, tf.stop_gradient(tf.nn.softmax(logits_target)), logits_student)


def pi_model_loss(labels, logits_x, logits_a, logits_b, wu=10.0, ramp=1.0, consistency='mse', means=None):
    """The Pi-model's loss from logits: L = mean_l H(y, x) + r wu mean_u d(stop_gradient(softmax(a(u))),
    softmax(b(u))), r = `ramp`; labels int (B,), logits_x (B, K), logits_a, logits_b (uB, K) of the two
    views; d = losses.consistency(`consistency`). Returns (L, {losses/xe, losses/xeu, monitors/wu})."""
    return losses.ramped_loss(labels, logits_x, pi_term(consistency, logits_a, logits_b), wu, ramp, means)


if __name__ == '__main__':
    train.main(PiModel)
