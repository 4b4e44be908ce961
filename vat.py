#!/usr/bin/env python
"""Virtual Adversarial Training (Miyato et al., TPAMI 2018), as in Oliver et al. (2018).

Paper setting (Oliver et al.: CIFAR-10, 4000 labels, WRN-28-2; time not measured):
  python vat.py --dataset=cifar10.1@4000-1 --train_dir=./experiments/vat
SVHN uses a smaller perturbation: --dataset=svhn.1@1000-1 --vat_eps=1; VAT without entropy
minimisation is --entmin_weight=0.
Small local run on a CPU (16 kimg; time not measured):
  python vat.py --dataset=fashion_mnist.1@250-1 --local

With p(x) = stop_gradient(softmax(model(x))) and d ~ N(0, I) (one power iteration, xi = --vat_xi):
  g     = grad_r KL(p(u) || softmax(model(u + r)))  at r = xi * d / ||d||
  r_adv = eps * g / ||g||                             (eps = --vat_eps, L2 norm per image)
  L = mean_l H(y, model(x)) + wu * min(1, t / warmup) * mean_u KL(p(u) || softmax(model(u + r_adv)))
      + entmin_weight * mean_u entropy(softmax(model(u)))
(the entropy term is not ramped up, as the reference).
--debiased also computes both unlabeled terms on the labeled images (their own r_adv) and
subtracts them. Both views are the weak flip + crop. The perturbation is computed in float32 (inputs,
direction and gradient are cast), also under mixed precision. xi = 1e-6 is Miyato et al.'s and
Oliver et al.'s value, but in float32 the finite difference softmax(x + xi d) - p(x) carries an
absolute error of about 1e-7, so the direction's error grows like 1e-7 / xi: on a linear softmax
model with unit-scale inputs its cosine to the exact power-iteration direction was 0.43 at xi = 1e-6
and above 0.999 at xi = 1e-2 (tests/test_algorithms_consistency.py).

Batch norm: the labeled pass updates the moving statistics. The clean unlabeled pass and the
perturbed passes run in training mode on their own batch and never update them, so the reference
p(u) and the perturbed predictions are normalised alike (a reference from a joint labeled +
unlabeled pass would differ from the probe by its batch statistics, and that difference, not the
curvature, would set the direction).

Optimizer as the reference: Adam at a constant lr 0.002, then decoupled weight decay on the kernels
after each step, w <- w * (1 - lr * wd) with wd = 0.02.
Pure loss, for any training loop: vat_loss(labels, logits_x, images_u, logits_u, logits_fn, direction, eps,
xi, wu, ramp, entmin_weight); logits_fn is the model (images -> logits).
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

UNLABELED_STREAM, LABELED_STREAM = 1, 2  # random directions of the unlabeled / labeled images


class VAT(train.Algorithm):
    params = dict(
        uratio=cm.UNLABELED_RATIO,
        wu=Param(0.3, 'Weight of the VAT term (vat_weight / max_consistency_coefficient of Oliver et al.: 0.3), '
                 'reached after --warmup_kimg; 0 = complete case.', check=at_least(0)),
        warmup_kimg=cm.WARMUP_KIMG,
        vat_eps=Param(6.0, 'L2 norm eps of the adversarial perturbation of an image in [-1, 1] pixels '
                      '(6 for CIFAR-10, 1 for SVHN).', check=above(0)),
        vat_xi=Param(1e-6, 'L2 norm xi of the probe perturbation of the power iteration.', check=above(0)),
        entmin_weight=Param(0.06, 'Weight of entropy minimisation on the unlabeled images (the reference: 0.06, '
                            'VAT+EM; 0 = plain VAT), not ramped up.', check=at_least(0)),
        **cm.ADAM_SETUP,
    )
    label_bias = cm.LABEL_BIAS

    def views(self):
        return {keys.X: 'd'}, {keys.U_WEAK: 'd'}

    def logits_no_bn_update(self, images):
        return self.forward(images, update_bn=False)[0]

    def direction(self, images, step, stream):
        """The random start d ~ N(0, I) of the power iteration, a function of (--seed, step, stream, replica)."""
        return tf.random.stateless_normal(tf.shape(images), losses.step_seed(self.settings.seed, step, stream))

    def loss(self, batch, step):
        s = self.settings
        logits_x = self.forward(batch[keys.X])[0]
        logits_u = self.logits_no_bn_update(batch[keys.U_WEAK])
        self.bias.update(logits_u)
        h_labeled = (lambda: vat_term(self.logits_no_bn_update, batch[keys.X], logits_x, self.direction(
            batch[keys.X], step, LABELED_STREAM), s.vat_eps, s.vat_xi)) if self.bias.needs_labeled_term else None
        return vat_loss(batch[keys.LABEL], logits_x, batch[keys.U_WEAK], logits_u, self.logits_no_bn_update,
                        self.direction(batch[keys.U_WEAK], step, UNLABELED_STREAM), s.vat_eps, s.vat_xi, s.wu,
                        cm.rampup(self, step), s.entmin_weight, logits_x if s.debiased else None,
                        means=losses.Corrected(self.bias, h_labeled))


def vat_term(logits_fn, images, logits, direction, eps=6.0, xi=1e-6):
    """KL(p(x) || softmax(logits_fn(x + r_adv))) per image (N,), p(x) = stop_gradient(softmax(logits)),
    r_adv from `adversarial_perturbation` started at the random `direction` (the shape of images)."""
    images = tf.cast(images, tf.float32)
    clean = tf.stop_gradient(tf.nn.softmax(tf.cast(logits, tf.float32)))
    r_adv = adversarial_perturbation(logits_fn, images, clean, direction, eps, xi)
    return losses.kl_divergence(clean, logits_fn(images + r_adv))


def vat_loss(labels, logits_x, images_u, logits_u, logits_fn, direction, eps=6.0, xi=1e-6, wu=0.3, ramp=1.0,
             entmin_weight=0.06, logits_x_entropy=None, means=None):
    """VAT's loss (the module docstring's equations). Needs the model: logits_fn(images) -> logits, called
    on perturbed unlabeled images (twice: the probe and r_adv). labels int (B,); logits_x (B, K);
    images_u (uB, ...) float in [-1, 1] and logits_u = logits_fn(images_u) (uB, K); direction (uB, ...)
    ~ N(0, I), the power iteration's start; eps, xi L2 norms per image; ramp r(t) on wu (not on the
    entropy); logits_x_entropy: with DeSSL, the labeled logits whose mean entropy is subtracted.
    Returns (L, {losses/xe, losses/xeu, monitors/wu, losses/entropy (with entmin_weight)})."""
    means = means or losses.Means(wu)
    xe = means.labeled(losses.cross_entropy(labels, logits_x), labels)
    unlabeled, mean_u = means.unlabeled(vat_term(logits_fn, images_u, logits_u, direction, eps, xi), labels)
    loss, logs = xe + ramp * unlabeled, {keys.XE: xe, keys.XEU: mean_u, keys.WU: ramp * wu}
    if entmin_weight:
        entropy_u = tf.reduce_mean(losses.entropy(logits_u))
        entropy = entropy_u if logits_x_entropy is None else entropy_u - tf.reduce_mean(losses.entropy(
            logits_x_entropy))
        loss += entmin_weight * entropy
        logs['losses/entropy'] = entropy_u
    return loss, logs


def unit_vectors(d):
    """d / ||d||_2 for each image (norm over all axes but the first), float32; 0 stays 0. d is first
    divided by max |d| so that the tiny gradients of the power iteration do not underflow when squared."""
    d = tf.cast(d, tf.float32)
    axes = list(range(1, d.shape.rank))
    d = tf.math.divide_no_nan(d, tf.reduce_max(tf.abs(d), axis=axes, keepdims=True))
    return tf.math.l2_normalize(d, axis=axes)


def adversarial_perturbation(logits_fn, images, clean_probs, direction, eps, xi):
    """r_adv = eps * g / ||g||, g = grad_r sum_i KL(p_i || softmax(logits_fn(x + r))_i) at r = xi * d / ||d||.

    One power iteration from the random `direction` d; images (N, ...) and the result are float32
    (the same shape); clean_probs p (N, K) is the constant target."""
    images = tf.cast(images, tf.float32)
    probe = xi * unit_vectors(direction)
    with tf.GradientTape(watch_accessed_variables=False) as tape:
        tape.watch(probe)
        kl = tf.reduce_sum(losses.kl_divergence(clean_probs, tf.cast(logits_fn(images + probe), tf.float32)))
    return eps * unit_vectors(tf.stop_gradient(tape.gradient(kl, probe)))


if __name__ == '__main__':
    train.main(VAT)
