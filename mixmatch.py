#!/usr/bin/env python
"""MixMatch (Berthelot et al., NeurIPS 2019).

Paper setting, CIFAR-10 with 250 labels, WRN-28-2, 64 labeled + 64 unlabeled images a step:
  python mixmatch.py --dataset=cifar10.3@250-1 --train_dir=./experiments/mixmatch
(time not measured for this port.)
Small local run on a CPU (Fashion-MNIST, 250 labels, 16 kimg = 500 steps of 32; time not measured
since --local became WRN-10-1 with XLA):
  python mixmatch.py --dataset=fashion_mnist.1@250-1 --local

Loss, with K = --nu views u_1..u_K of each unlabeled image (u_1 the W view of --augment=L.W.S,
u_2..u_K the S view, as the reference's pair datasets) and p(.) = softmax(model(.)):
  guess     q = sharpen(mean_k p(u_k), T),  sharpen(p, T)_c = p_c^(1/T) / sum_j p_j^(1/T)
  batches   X = (x, onehot(y)) labeled,  U = ((u_k, q))_k unlabeled,  W = shuffle(X u U)
  MixUp     X'_i = mix(X_i, W_i),  U'_i = mix(U_i, W_{|X|+i}),
            mix((a, s), (b, r)) = (l a + (1-l) b, l s + (1-l) r),  l = max(l0, 1-l0),  l0 ~ Beta(beta, beta)
  L = mean_{X'} H(s', model(x')) + wu * r(t) * mean_{U'} d(q', model(u')),  r(t) = min(1, t / warmup)
H is the soft cross-entropy; d is --consistency, by default mse: mean_c (q'_c - p_c(u'))^2 (mean over
classes, as the reference code). The guess is a constant (no gradient); as the reference it comes
from one training-mode forward pass per view (each normalised by its own batch statistics) that
leaves the batch-norm moving statistics alone (--joint_bn, departing from the reference: one pass
over all K views). beta = 0.75 is the paper's value; the reference code used 0.5.

Batch norm: the reference split the mixed batch into chunks and interleaved labeled and
unlabeled images among them so that each chunk's batch-norm statistics cover both. Here every
mixed image, X' and U' together, goes through ONE forward pass: its statistics cover both directly.

Training setup (SGD, cosine lr, weight decay, EMA) is this code base's common one; the paper
used Adam with a constant learning rate and decoupled weight decay, closest here to
--optimizer=adam --lr_schedule=constant (its lr and decay values are not checked here).

DeSSL (Schmutz et al., ICLR 2023), unbiased under MCAR labels for any lambda = --wu:
  --debiased  K weak views of each labeled image are treated as unlabeled images (guess from the
              model, not the label; mixed with partners from W) and their term is subtracted:
              L - wu * r(t) * mean d(q', model(x_u')).
Pure loss, for any training loop: mixmatch_loss(labels, logits_views_u, logits_mixed, partners, lam, T, wu,
ramp); the caller draws the plan (losses.mixmatch_plan), mixes the images and runs the model.
"""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from libml import utils  # noqa: E402

utils.quiet_tensorflow()
import tensorflow as tf  # noqa: E402

from libml import views  # noqa: E402
from libml import debias  # noqa: E402
from libml import keys  # noqa: E402
from libml import losses  # noqa: E402
from libml import train  # noqa: E402
from libml.settings import Param, above, at_least  # noqa: E402

MIX_SALT = 1  # step_seed salt of the MixUp partners and lambdas


class MixMatch(train.Algorithm):
    params = dict(
        uratio=Param(1, 'Unlabeled images per labeled image in a step.', check=at_least(1)),
        wu=Param(75.0, 'Weight of the unlabeled term after the ramp-up (0 = labeled term only).', check=at_least(0)),
        warmup_kimg=Param(1024.0, 'The unlabeled weight ramps linearly from 0 to wu over this many kimg.', local=8.0,
                          check=at_least(0)),
        nu=Param(2, 'K: weak views of each unlabeled image averaged into the label guess.', check=at_least(1)),
        T=Param(0.5, 'Sharpening temperature of the label guess.', check=above(0)),
        beta=Param(0.75, 'MixUp lambda ~ Beta(beta, beta), lambda\' = max(lambda, 1 - lambda) (paper 0.75, '
                   'reference code 0.5).', check=above(0)),
        consistency=Param('mse', 'Unlabeled term between the mixed guess and the prediction: mse or l1 (mean over '
                          'classes), kl KL(guess || p), jsd Jensen-Shannon.', choices=losses.CONSISTENCIES),
        augment=views.augment_param('d.d.d', 'Augmentation L.W.S: L of the labeled images, W of the first of the '
                                      'K unlabeled views, S of the others (the reference\'s CTA variant: ctap.d.ctap)'),
        joint_bn=Param(False, 'Departs from the reference: guess the labels with ONE training-mode pass over all K '
                       'views (their joint batch statistics) instead of one pass per view.'),
    )
    label_bias = debias.Support(unlabeled_term=True)  # the labeled term is on mixed images: no CAP

    def views(self):
        labeled, weak, strong = views.parse_augment(self.settings.augment)
        labeled_views = {keys.X: labeled}
        codes = {k: weak if k == 0 else strong for k in range(self.settings.nu)}
        if self.settings.debiased:
            labeled_views.update({f'x_weak{k}': code for k, code in codes.items()})
        return labeled_views, {f'u_weak{k}': code for k, code in codes.items()}

    def guess_logits(self, views_u, views_x):
        """Logits of the K views of the unlabeled (and labeled, if any) images for the label guess:
        training-mode passes, one per view (--joint_bn: one for all), without moving-statistics updates."""
        parts = [*views_u, *views_x]
        logits = self.forward(*parts, update_bn=False) if self.settings.joint_bn else \
            [self.forward(part, update_bn=False)[0] for part in parts]
        return logits[:len(views_u)], logits[len(views_u):]

    def loss(self, batch, step):
        s = self.settings
        views_u = [batch[f'u_weak{k}'] for k in range(s.nu)]
        views_x = [batch[f'x_weak{k}'] for k in range(s.nu)] if s.debiased else []
        logits_u, logits_x = self.guess_logits(views_u, views_x)
        # Rows: labeled x | K unlabeled views | (--debiased) K labeled views treated as unlabeled.
        images = tf.concat([batch[keys.X], *views_u, *views_x], 0)
        n_pool = tf.shape(batch[keys.X])[0] + s.nu * tf.shape(views_u[0])[0]
        partners, lam = losses.mixmatch_plan(tf.shape(images)[0], n_pool, s.beta,
                                             losses.step_seed(s.seed, step, MIX_SALT))
        logits = self.forward(losses.mix_images(images, partners, lam))[0]  # ONE pass: statistics over X' and U'
        return mixmatch_loss(batch[keys.LABEL], logits_u, logits, partners, lam, s.T, s.wu,
                             losses.linear_rampup(step, self.trainer.kimg_to_steps(s.warmup_kimg)), s.consistency,
                             logits_x or None, means=losses.Corrected(self.bias))


def mixmatch_loss(labels, logits_views_u, logits_mixed, partners, lam, T=0.5, wu=75.0, ramp=1.0, consistency='mse',
                  logits_views_x=None, means=None):
    """MixMatch's loss (the module docstring's equations) from the caller's passes: logits_views_u, a list of K
    (uB, K) logits of the unlabeled views (the guess q = sharpen(mean_k softmax, T), a constant), and
    logits_mixed (B + K uB [+ K B], C) = model(Mix(W)) of the rows [x | u_1..u_K | (DeSSL) x_1..x_K] mixed
    with `partners`, `lam` (losses.mixmatch_plan, losses.mix_images). labels int (B,); ramp r(t) on wu;
    logits_views_x: DeSSL's K views of the labeled images treated as unlabeled (their term goes to
    means.unlabeled as h_on_labeled). Returns (L, {losses/xe, losses/xeu, monitors/wu})."""
    means = means or losses.Means(wu)
    guess_u = losses.guess_label([tf.stop_gradient(tf.nn.softmax(p)) for p in logits_views_u], T)
    views_x = logits_views_x or []
    guess_x = losses.guess_label([tf.stop_gradient(tf.nn.softmax(p)) for p in views_x], T) if views_x else None
    nclass = logits_mixed.shape[-1]
    targets = tf.concat([tf.one_hot(tf.cast(labels, tf.int32), nclass)] + [guess_u] * len(logits_views_u)
                        + [guess_x] * len(views_x), 0)
    n_x, n_u = tf.shape(labels)[0], len(logits_views_u) * tf.shape(guess_u)[0]
    sizes = [n_x, n_u, tf.shape(targets)[0] - n_x - n_u]
    logits_x, logits_u, logits_xu = tf.split(logits_mixed, sizes, 0)
    targets_x, targets_u, targets_xu = tf.split(losses.mix_targets(targets, partners, lam), sizes, 0)
    xe = tf.reduce_mean(losses.soft_cross_entropy(targets_x, logits_x))
    h_u = losses.consistency(consistency, targets_u, logits_u)
    h_x = ramp * losses.consistency(consistency, targets_xu, logits_xu) if views_x else None
    unlabeled, _ = means.unlabeled(ramp * h_u, h_on_labeled=h_x)
    return xe + unlabeled, {keys.XE: xe, keys.XEU: tf.reduce_mean(h_u), keys.WU: wu * ramp}


if __name__ == '__main__':
    train.main(MixMatch)
