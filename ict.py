#!/usr/bin/env python
"""Interpolation Consistency Training (Verma et al., IJCAI 2019).

Paper setting (CIFAR-10, 4000 labels, WRN-28-2; time not measured):
  python ict.py --dataset=cifar10.1@4000-1 --train_dir=./experiments/ict
Small local run on a CPU (30 kimg; time not measured):
  python ict.py --dataset=fashion_mnist.1@250-1 --local

With the EMA teacher f' (decay --ema) in training mode, q(u) = stop_gradient(softmax(f'(u))),
one lambda ~ Beta(beta, beta) per step and a random permutation pi of the unlabeled batch:
  Mix(a, b) = lambda a + (1 - lambda) b
  L = mean_l H(y, f(x)) + wu * min(1, t / warmup) * mean_u d(Mix(q(u), q(u_pi)), softmax(f(Mix(u, u_pi))))
d = --consistency (default mse: mean_k (p_k - q_k)^2). lambda is the plain Beta draw (not
max(lambda, 1 - lambda) as MixMatch). --debiased mixes the labeled batch with a permutation of
itself the same way (its own lambda) and subtracts its term: the pairs are drawn within each batch,
so under MCAR labels both terms have the same expectation. Both views are the weak flip + crop.
lambda and pi are stateless functions of (--seed, step).

Batch norm: ONE student forward pass in training mode over x and Mix(u, u_pi) (and the mixed
labeled batch), updating the moving statistics; the teacher runs in training mode on its own batch
(u; x separately with --debiased) and never updates them.

Optimizer: Adam with decoupled weight decay (w <- w - lr * wd * w on the kernels), lr 0.002 (the
Adam rate of MixMatch, Berthelot et al. 2019), cosine decay. The SSL methods notebook used Adam 4e-4,
Verma et al. SGD; --optimizer=sgd --lr=0.03 gives the FixMatch setup.
"""
import dataclasses
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
from libml.settings import Param  # noqa: E402

UNLABELED_STREAM, LABELED_STREAM = 1, 2  # MixUp draws of the unlabeled / labeled batch


class ICT(train.Algorithm):
    params = dict(
        uratio=cm.UNLABELED_RATIO,
        wu=Param(100.0, 'Maximum weight of the interpolation consistency term (consistency coefficient of the SSL '
                 'methods notebook: 100), reached after --warmup_kimg; 0 = complete case.'),
        warmup_kimg=cm.WARMUP_KIMG,
        beta=Param(0.5, 'MixUp lambda ~ Beta(beta, beta) (Verma et al.: 1.0 on CIFAR-10, 0.1 on SVHN).'),
        consistency=cm.consistency_param('mse'),
        optimizer=dataclasses.replace(train.COMMON_PARAMS['optimizer'], default='adam'),
        lr=dataclasses.replace(train.COMMON_PARAMS['lr'], default=0.002),
    )
    label_bias = cm.LABEL_BIAS

    def views(self):
        return {keys.X: 'd'}, {keys.U_WEAK: 'd'}

    def mixed(self, images, step, stream):
        """(Mix(images, images_pi), Mix(q, q_pi), q) with q the teacher's softmax of each image."""
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
        logits = self.forward(*parts)
        xe = cm.supervised_xe(self, batch, logits[0])
        h_unlabeled = losses.consistency(s.consistency, q_unlabeled, logits[1])
        h_labeled = losses.consistency(s.consistency, q_labeled, logits[2]) if labeled_too else None
        unlabeled, logs = cm.ramped_unlabeled_loss(self, h_unlabeled, h_labeled, batch[keys.LABEL], step)
        return xe + unlabeled, {keys.XE: xe, **logs}


def mixing(n, beta, seed):
    """(lambda (n,), partner (n,)): one lambda ~ Beta(beta, beta) repeated n times and a uniform random
    permutation of range(n); stateless in seed [2]. lambda = a / (a + b), a, b ~ Gamma(beta), drawn in
    float64 (a small beta gives Gamma draws that underflow float32; 0 / 0 gives lambda = 0)."""
    seed_a, seed_b, seed_partner = tf.unstack(tf.random.experimental.stateless_split(seed, 3))
    a = tf.random.stateless_gamma([], seed_a, tf.constant(beta, tf.float64), dtype=tf.float64)
    b = tf.random.stateless_gamma([], seed_b, tf.constant(beta, tf.float64), dtype=tf.float64)
    lam = tf.cast(tf.math.divide_no_nan(a, a + b), tf.float32)
    return tf.fill([n], lam), losses.mixup_partners(n, n, seed_partner)


if __name__ == '__main__':
    train.main(ICT)
