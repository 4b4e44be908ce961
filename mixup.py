#!/usr/bin/env python
"""MixUp (Zhang et al., ICLR 2018): the reference's semi-supervised MixUp baseline (mixup.py) and,
with --wu=0 --all_labels, its fully supervised MixUp (fully_supervised/fs_mixup.py).

Paper setting (the reference's default: CIFAR-10, 250 labels, WRN-28-2; time not measured):
  python mixup.py --dataset=cifar10.3@250-1 --train_dir=./experiments/mixup
MixUp on the labeled images only (--wu=0), and fully supervised on every training label (fs_mixup.py):
  python mixup.py --dataset=cifar10.3@250-1 --wu=0
  python mixup.py --dataset=cifar10.1@4000-1 --all_labels --wu=0 --wd=0.002
Small local run on a CPU (time not measured):
  python mixup.py --dataset=fashion_mnist.1@250-1 --local

For each image i of a batch of n: lambda_i ~ Beta(beta, beta), lambda_i <- max(lambda_i, 1 - lambda_i),
partner n-1-i (the batch reversed, as the reference): Mix(a)_i = lambda_i a_i + (1 - lambda_i) a_{n-1-i}.
With q(u) = stop_gradient(softmax(model(u))), the model's own prediction of the weak view u,
  L = mean_l H(Mix(onehot(y)), model(Mix(x))) + wu * mean_u H(Mix(q(u)), model(Mix(u)))
H the soft cross-entropy; the unlabeled term is not ramped up (the reference); --wu=0 leaves the
labeled term and draws no unlabeled views.

Batch norm as the reference: separate training-mode passes over Mix(x), u and Mix(u), each normalised
by its own batch statistics; only the labeled pass updates the moving statistics.
Optimizer as the reference: Adam at a constant lr 0.002, then decoupled weight decay on the kernels
after each step, w <- w * (1 - lr * wd) with wd = 0.02 (fs_mixup.py: 0.002).
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
from libml.settings import Param, above, at_least  # noqa: E402

LABELED_STREAM, UNLABELED_STREAM = 1, 2  # step_seed salts of the labeled / unlabeled lambdas


class MixUp(train.Algorithm):
    params = dict(
        uratio=cm.UNLABELED_RATIO,
        wu=Param(1.0, 'Weight of the unlabeled MixUp term (the reference: 1, not ramped up); 0 = labeled images only.',
                 check=at_least(0)),
        beta=Param(0.5, 'MixUp lambda ~ Beta(beta, beta) per image, then max(lambda, 1 - lambda).', check=above(0)),
        all_labels=Param(False, 'Train on every labeled training image (unlabeled pool minus validation) instead of '
                         'the labeled split (with --wu=0: the fully supervised fs_mixup.py).'),
        **cm.ADAM_SETUP,
    )
    label_bias = debias.Support()  # the labeled term is on mixed images: no CAP

    @classmethod
    def adapt_data(cls, data, settings):
        return data.with_all_labels() if settings.all_labels else data

    def views(self):
        return {keys.X: 'd'}, ({keys.U_WEAK: 'd'} if self.settings.wu else {})

    def mixed(self, images, targets, step, stream):
        """(Mix(images), Mix(targets)) with per-image lambdas and the reversed batch as partners."""
        n = tf.shape(images)[0]
        lam = losses.mixup_lambda(n, self.settings.beta, losses.step_seed(self.settings.seed, step, stream))
        return losses.mixup(images, targets, losses.reversed_partners(n), lam)

    def loss(self, batch, step):
        s = self.settings
        labels = tf.one_hot(tf.cast(batch[keys.LABEL], tf.int32), self.nclass)
        x, targets_x = self.mixed(batch[keys.X], labels, step, LABELED_STREAM)
        xe = tf.reduce_mean(losses.soft_cross_entropy(targets_x, self.forward(x)[0]))
        if not s.wu:
            return xe, {keys.XE: xe}
        guess = tf.stop_gradient(tf.nn.softmax(self.forward(batch[keys.U_WEAK], update_bn=False)[0]))
        u, targets_u = self.mixed(batch[keys.U_WEAK], guess, step, UNLABELED_STREAM)
        xeu = tf.reduce_mean(losses.soft_cross_entropy(targets_u, self.forward(u, update_bn=False)[0]))
        return xe + s.wu * xeu, {keys.XE: xe, keys.XEU: xeu}


if __name__ == '__main__':
    train.main(MixUp)
