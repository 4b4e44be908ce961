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
        xe = cm.supervised_xe(self, batch, logits[keys.X])
        h_unlabeled = pi_term(s.consistency, logits[keys.U_WEAK], logits[keys.U_STRONG])
        h_labeled = pi_term(s.consistency, logits[keys.X], logits[keys.X_STRONG]) \
            if self.bias.needs_labeled_term else None
        unlabeled, logs = cm.ramped_unlabeled_loss(self, h_unlabeled, h_labeled, batch[keys.LABEL], step)
        return xe + unlabeled, {keys.XE: xe, **logs}


def pi_term(kind, logits_target, logits_student):
    """d(stop_gradient(softmax(target view)), softmax(student view)) per sample (N,)."""
    return losses.consistency(kind, tf.stop_gradient(tf.nn.softmax(logits_target)), logits_student)


if __name__ == '__main__':
    train.main(PiModel)
