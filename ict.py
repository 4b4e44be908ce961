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
Pure loss, for any training loop: ict_loss(labels, logits_x, logits_teacher, logits_mixed, lam, partner, wu,
ramp); the caller mixes the images (`mixing`, losses.mix_images) and runs teacher and student.
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
        """(teacher logits of the images, Mix(images), lambda, partner) (see `mixing`)."""
        lam, partner = mixing(tf.shape(images)[0], self.settings.beta, losses.step_seed(self.settings.seed, step,
                                                                                         stream))
        return self.forward_ema(images, training=True), losses.mix_images(images, partner, lam), lam, partner

    def loss(self, batch, step):
        s = self.settings
        teacher_u, u_mixed, lam_u, partner_u = self.mixed(batch[keys.U_WEAK], step, UNLABELED_STREAM)
        self.bias.update_probs(tf.nn.softmax(teacher_u))
        parts = [batch[keys.X], u_mixed]
        labeled_too = self.bias.needs_labeled_term
        if labeled_too:
            teacher_x, x_mixed, lam_x, partner_x = self.mixed(batch[keys.X], step, LABELED_STREAM)
            parts.append(x_mixed)
        logits = cm.separate_passes(self, *parts)
        h_labeled = ict_term(s.consistency, teacher_x, logits[2], lam_x, partner_x) if labeled_too else None
        return ict_loss(batch[keys.LABEL], logits[0], teacher_u, logits[1], lam_u, partner_u, s.wu,
                        cm.rampup(self, step), s.consistency, means=losses.Corrected(self.bias, h_labeled))


def ict_term(kind, logits_teacher, logits_mixed, lam, partner):
    """d(Mix(q), softmax(logits_mixed)) per image (n,), q = stop_gradient(softmax(logits_teacher)) (n, K),
    Mix(q)_i = lam_i q_i + (1 - lam_i) q_partner_i."""
    mixed_targets = losses.mix_targets(tf.stop_gradient(tf.nn.softmax(logits_teacher)), partner, lam)
    return losses.consistency(kind, mixed_targets, logits_mixed)


def ict_loss(labels, logits_x, logits_teacher, logits_mixed, lam, partner, wu=50.0, ramp=1.0, consistency='mse',
             means=None):
    """ICT's loss from logits: L = mean_l H(y, f(x)) + r wu mean_u d(Mix(q(u)), softmax(f(Mix(u)))), r = `ramp`.
    Needs the caller's passes: logits_teacher = f'(u) (uB, K) of the EMA teacher, logits_mixed = f(Mix(u))
    of the student on the images mixed with the same lam, partner (`mixing`, losses.mix_images); labels
    int (B,), logits_x (B, K). Returns (L, {losses/xe, losses/xeu, monitors/wu})."""
    h_unlabeled = ict_term(consistency, logits_teacher, logits_mixed, lam, partner)
    return losses.ramped_loss(labels, logits_x, h_unlabeled, wu, ramp, means)

def mixing(n, beta, seed):
    """(lambda (n,), partner (n,)) as the reference: lambda_i ~ Beta(beta, beta) per image, then
    max(lambda_i, 1 - lambda_i); partner n-1-i (the batch reversed). Stateless in seed [2]."""
    return losses.mixup_lambda(n, beta, seed), losses.reversed_partners(n)


if __name__ == '__main__':
    train.main(ICT)
