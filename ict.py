#!/usr/bin/env python
"""Interpolation Consistency Training (Verma et al., IJCAI 2019).

Paper setting (CIFAR-10, 4000 labels, WRN-28-2; time not measured):
  python ict.py --dataset=cifar10.1@4000-1 --train_dir=./experiments/ict
Small local run on a CPU (16 kimg; time not measured):
  python ict.py --dataset=fashion_mnist.1@250-1 --local

With the EMA teacher f' (decay --ema) in training mode, q(u) = stop_gradient(softmax(f'(u))), and
for each image i of the unlabeled batch (n images) its own lambda_i ~ Beta(beta, beta),
lambda_i <- max(lambda_i, 1 - lambda_i), and the partner n-1-i (the batch reversed, u[::-1]):
  Mix(a)_i = lambda_i a_i + (1 - lambda_i) a_{n-1-i}
  L = mean_l H(y, f(x)) + wu * min(1, t / warmup) * mean_u d(Mix(q(u)), softmax(f(Mix(u))))
d = --consistency (default mse: mean_k (p_k - q_k)^2), as the reference's ict.py. --debiased mixes
the labeled batch with its reverse the same way (its own lambdas) and subtracts its term: the
pairs are drawn within each batch, so under MCAR labels both terms have the same expectation. Both
views are the weak flip + crop. The lambdas are stateless functions of (--seed, step, replica).

Batch norm as the reference: the student makes separate training-mode passes over x and Mix(u)
(and the mixed labeled batch), each normalised by its own batch statistics; only the labeled pass
updates the moving statistics. The teacher runs in training mode on its own batch (u; x
separately with --debiased) and never updates them. --joint_bn (departs from the reference) makes
the student's passes one.

Optimizer as the reference: Adam at a constant lr 0.002, then decoupled weight decay on the kernels
after each step, w <- w * (1 - lr * wd) with wd = 0.02. --optimizer=sgd --lr=0.03 --wd=5e-4
--lr_schedule=cosine gives the FixMatch setup.
"""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from libml import utils  # noqa: E402

utils.quiet_tensorflow()
import tensorflow as tf  # noqa: E402

from libml import consistency_methods as cm  # noqa: E402
from libml import keys  # noqa: E402
from libml import losses  # noqa: E402
from libml import train  # noqa: E402
from libml.settings import Param, above, at_least  # noqa: E402

UNLABELED_STREAM, LABELED_STREAM = 1, 2  # MixUp draws of the unlabeled / labeled batch


class ICT(train.Algorithm):
    params = dict(
        uratio=cm.UNLABELED_RATIO,
        wu=Param(50.0, 'Maximum weight of the interpolation consistency term (the reference\'s consistency_weight: '
                 '50), reached after --warmup_kimg; 0 = complete case.', check=at_least(0)),
        warmup_kimg=cm.WARMUP_KIMG,
        beta=Param(0.5, 'MixUp lambda ~ Beta(beta, beta) per image, then max(lambda, 1 - lambda) (the reference: 0.5; '
                   'Verma et al.: 1.0 on CIFAR-10, 0.1 on SVHN).', check=above(0)),
        consistency=cm.consistency_param('mse'),
        joint_bn=cm.JOINT_BN,
        **cm.ADAM_SETUP,
    )
    label_bias = cm.LABEL_BIAS

    def views(self):
        return {keys.X: 'd'}, {keys.U_WEAK: 'd'}

    def mixed(self, images, step, stream):
        """(Mix(images), Mix(q), q) with q the teacher's softmax of each image (see `mixing`)."""
        seed = losses.step_seed(self.settings.seed, step, stream)
        lam, partner = mixing(tf.shape(images)[0], self.settings.beta, seed)
        teacher_probs = tf.stop_gradient(tf.nn.softmax(self.forward_ema(images, training=True)))
        return (*losses.mixup(images, teacher_probs, partner, lam), teacher_probs)

    def loss(self, batch, step):
        s = self.settings
        u_mixed, q_unlabeled, teacher_u = self.mixed(batch[keys.U_WEAK], step, UNLABELED_STREAM)
        self.bias.update_probs(teacher_u)
        parts = [batch[keys.X], u_mixed]
        labeled_too = self.bias.needs_labeled_term
        if labeled_too:
            x_mixed, q_labeled, _ = self.mixed(batch[keys.X], step, LABELED_STREAM)
            parts.append(x_mixed)
        logits = cm.separate_passes(self, *parts)
        xe = cm.supervised_xe(self, batch, logits[0])
        h_unlabeled = losses.consistency(s.consistency, q_unlabeled, logits[1])
        h_labeled = losses.consistency(s.consistency, q_labeled, logits[2]) if labeled_too else None
        unlabeled, logs = cm.ramped_unlabeled_loss(self, h_unlabeled, h_labeled, batch[keys.LABEL], step)
        return xe + unlabeled, {keys.XE: xe, **logs}


def mixing(n, beta, seed):
    """(lambda (n,), partner (n,)) as the reference: lambda_i ~ Beta(beta, beta) per image, then
    max(lambda_i, 1 - lambda_i); partner n-1-i (the batch reversed). Stateless in seed [2]."""
    return losses.mixup_lambda(n, beta, seed), losses.reversed_partners(n)


if __name__ == '__main__':
    train.main(ICT)
