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
Pure loss, for any training loop: mixup_loss(labels, logits_x_mixed, lam_x, logits_u, logits_u_mixed, lam_u, wu);
the caller mixes the images (losses.mixup_lambda, losses.mix_images) and runs the model.
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

    def lambdas(self, images, step, stream):
        """Per-image lambda' (n,) of one batch, a function of (--seed, step, stream, replica)."""
        return losses.mixup_lambda(tf.shape(images)[0], self.settings.beta, losses.step_seed(self.settings.seed, step,
                                                                                              stream))

    def loss(self, batch, step):
        s = self.settings
        lam_x = self.lambdas(batch[keys.X], step, LABELED_STREAM)
        x = losses.mix_images(batch[keys.X], losses.reversed_partners(tf.shape(batch[keys.X])[0]), lam_x)
        logits_x = self.forward(x)[0]
        if not s.wu:
            return mixup_loss(batch[keys.LABEL], logits_x, lam_x)
        u_images = batch[keys.U_WEAK]
        logits_u = self.forward(u_images, update_bn=False)[0]
        lam_u = self.lambdas(u_images, step, UNLABELED_STREAM)
        u = losses.mix_images(u_images, losses.reversed_partners(tf.shape(u_images)[0]), lam_u)
        return mixup_loss(batch[keys.LABEL], logits_x, lam_x, logits_u, self.forward(u, update_bn=False)[0], lam_u,
                          s.wu)


def mixup_loss(labels, logits_x_mixed, lam_x, logits_u=None, logits_u_mixed=None, lam_u=None, wu=1.0):
    """MixUp's loss from logits, partners the reversed batch (row n-1-i), q(u) = stop_gradient(softmax(logits_u)):
      L = mean_l H(Mix(onehot(y)), model(Mix(x))) + wu mean_u H(Mix(q(u)), model(Mix(u)))   (soft H, nats).
    Needs the caller's passes on the mixed images: logits_x_mixed (B, K) = model(Mix(x)) with lambdas lam_x (B,)
    (losses.mixup_lambda; Mix = losses.mix_images with losses.reversed_partners); logits_u (uB, K) of the clean
    u, logits_u_mixed = model(Mix(u)) with lam_u (uB,). Without logits_u (or wu = 0): the labeled term only.
    Returns (L, {losses/xe[, losses/xeu]})."""
    targets_x = losses.mix_targets(tf.one_hot(tf.cast(labels, tf.int32), logits_x_mixed.shape[-1]),
                                   losses.reversed_partners(tf.shape(labels)[0]), lam_x)
    xe = tf.reduce_mean(losses.soft_cross_entropy(targets_x, logits_x_mixed))
    if not wu or logits_u is None:
        return xe, {keys.XE: xe}
    guess = tf.stop_gradient(tf.nn.softmax(logits_u))
    targets_u = losses.mix_targets(guess, losses.reversed_partners(tf.shape(guess)[0]), lam_u)
    xeu = tf.reduce_mean(losses.soft_cross_entropy(targets_u, logits_u_mixed))
    return xe + wu * xeu, {keys.XE: xe, keys.XEU: xeu}


if __name__ == '__main__':
    train.main(MixUp)
