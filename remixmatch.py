#!/usr/bin/env python
"""ReMixMatch (Berthelot et al., ICLR 2020).

Paper setting, CIFAR-10 with 250 labels, WRN-28-2, 64 labeled + 64 unlabeled images a step, K = 8:
  python remixmatch.py --dataset=cifar10.3@250-1 --train_dir=./experiments/remixmatch
(time not measured for this port.)
Small local run on a CPU (Fashion-MNIST, 250 labels, K = 2 under --local, 16 kimg = 500 steps of 32;
time not measured since --local became WRN-10-1 with XLA):
  python remixmatch.py --dataset=fashion_mnist.1@250-1 --local

Views as the reference's CTAugment pool (--augment=ctap.d.ctap): the labeled image x under a
CTAugment policy without cutout, u_0 a weak view and u_1..u_K strong views (CTAugment policies
without cutout) of each unlabeled image; CTAugment's probe is the weak labeled image under a random
policy. Without CTAugment (the reference's remixmatch_no_cta.py): --augment=d.d.d, or RandAugment
views such as --augment=d.d.ra. Loss, with p(.) = softmax(model(.)):
  alignment  q~ = normalize(p(u_0) * p_labeled / p_model),  p_labeled the labeled class distribution,
             p_model the mean of p(u_0) over the last 128 batches (this one included)
  guess      q = sharpen(q~, T)  (a constant: no gradient)
  MixUp      as MixMatch on X = (x, onehot(y)) and U = ((u_k, q))_{k=1..K}: X', U'
  L = mean_{X'} H(s', model(x')) + wu * r(t) * mean_{U'} H(q', model(u'))
    + w_kl * r(t) * mean_u H(q, model(u_1))                      (pre-MixUp, first strong view)
    + w_rot * mean_u H(rot, rotation_head(features(rotate(u_1, 90 * rot))))
with H the (soft) cross-entropy, r(t) = min(1, t / warmup), rot uniform in {0, 1, 2, 3} per image and
`features` the pooled features of the classifier. wu is the paper's lambda_U (w_match). The
rotation term is not ramped: its target is exact from the start. p_labeled and the last 128
p_model batch means (initially uniform) are checkpointed. The guess pass runs in training mode
without updating the batch-norm moving statistics; the mixed images, the first strong views and
the rotated images then go through ONE forward pass. Images must be square (for the rotations).

Training setup as the reference code: SGD with Nesterov momentum, cosine lr, L2 weight decay, EMA
(the paper used Adam with a constant learning rate: --optimizer=adam --lr_schedule=constant).

DeSSL (Schmutz et al., ICLR 2023), --debiased: each labeled image is also treated as unlabeled
(guess from its labeled view x, K strong views) and every unlabeled term, computed on it, is
subtracted with its own weight: the match term with lambda = --wu, the first-view term with w_kl
and the rotation term with w_rot. --wu=0 --w_kl=0 --w_rot=0 leaves the labeled term only.
Pure loss, for any training loop: remixmatch_loss(labels, logits_weak, p_labeled, p_model_history, step,
logits_mixed, partners, lam, K, logits_first, logits_rot, turns, ...) -> (loss, logs, p_model_history); the
caller mixes and rotates the images and runs the model and the rotation head.
"""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from libml import utils  # noqa: E402

utils.quiet_tensorflow()
import keras  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

from libml import views  # noqa: E402
from libml import debias  # noqa: E402
from libml import keys  # noqa: E402
from libml import losses  # noqa: E402
from libml import models  # noqa: E402
from libml import train  # noqa: E402
from libml.settings import Param, above, at_least  # noqa: E402

ALIGNMENT_BATCHES = 128  # p_model averages the guess-pass predictions of this many last batches
MIX_SALT, ROTATION_SALT = 1, 2  # step_seed salts


def class_distribution(labels, nclass):
    """(nclass,) float32 fraction of each class among integer labels."""
    counts = np.bincount(np.asarray(labels, np.int64), minlength=nclass)[:nclass]
    return (counts / max(counts.sum(), 1)).astype(np.float32)


def rotate_quarter_turns(images, turns):
    """Image i (N, H, H, C), square, rotated counter-clockwise by turns[i] * 90 degrees."""
    def transpose(x):
        return tf.transpose(x, [0, 2, 1, 3])
    rotations = [images, transpose(tf.reverse(images, [2])), tf.reverse(images, [1, 2]),
                 transpose(tf.reverse(images, [1]))]
    return tf.gather(tf.stack(rotations, axis=1), turns, batch_dims=1)


class ReMixMatch(train.Algorithm):
    params = dict(
        uratio=Param(1, 'Unlabeled images per labeled image in a step.', check=at_least(1)),
        K=Param(8, 'Strong (CTAugment) views of each unlabeled image, all anchored to the weak view\'s guess.',
                local=2, check=at_least(1)),
        wu=Param(1.5, 'Weight lambda_U (w_match) of the mixed unlabeled term after the ramp-up.', check=at_least(0)),
        w_kl=Param(0.5, 'Weight of the pre-MixUp cross-entropy of the first strong view against the guess.',
                   check=at_least(0)),
        w_rot=Param(0.5, 'Weight of the rotation-prediction loss.', check=at_least(0)),
        warmup_kimg=Param(1024.0, 'wu and w_kl ramp linearly from 0 over this many kimg.', local=8.0,
                          check=at_least(0)),
        T=Param(0.5, 'Sharpening temperature of the label guess.', check=above(0)),
        beta=Param(0.75, 'MixUp lambda ~ Beta(beta, beta), lambda\' = max(lambda, 1 - lambda).', check=above(0)),
        augment=views.augment_param('ctap.d.ctap', 'Augmentation L.W.S of the labeled, weak and K strong views '
                                      '(the reference: CTAugment without cutout on the labeled and strong views)'),
    )
    label_bias = debias.Support(unlabeled_term=True)  # the labeled term is on mixed images: no CAP

    def build(self):
        """Distribution-alignment statistics and the rotation head (4 classes on the pooled features)."""
        self.classifier = models.with_features(self.trainer.model)
        self.p_labeled = tf.Variable(class_distribution(self.trainer.data.labeled.labels, self.nclass),
                                     trainable=False, name='p_labeled')
        self.p_model_history = tf.Variable(tf.fill([ALIGNMENT_BATCHES, self.nclass], 1 / self.nclass),
                                           trainable=False, name='p_model_history',
                                           aggregation=tf.VariableAggregation.MEAN)
        self.rotation_head = keras.layers.Dense(4, kernel_initializer=keras.initializers.GlorotNormal(),
                                                dtype='float32', name='rotation_head')
        self.rotation_head.build((None, self.classifier.outputs[1].shape[-1]))
        return dict(p_labeled=self.p_labeled, p_model_history=self.p_model_history, rotation_head=self.rotation_head)

    def extra_trainable_variables(self):
        return list(self.rotation_head.trainable_variables)

    def views(self):
        labeled, weak, strong = views.parse_augment(self.settings.augment)
        labeled_views = {keys.X: labeled}
        if self.settings.debiased:
            labeled_views.update({f'x_strong{k}': strong for k in range(self.settings.K)})
        unlabeled_views = {keys.U_WEAK: weak}
        unlabeled_views.update({f'u_strong{k}': strong for k in range(self.settings.K)})
        return labeled_views, unlabeled_views

    def loss(self, batch, step):
        s = self.settings
        strong_u = [batch[f'u_strong{k}'] for k in range(s.K)]
        strong_x = [batch[f'x_strong{k}'] for k in range(s.K)] if s.debiased else []
        # The guess pass: training mode, batch norm left alone; weak u (and, --debiased, the labeled views x).
        weak_logits = self.forward(batch[keys.U_WEAK], *([batch[keys.X]] if s.debiased else []), update_bn=False)
        # MixUp rows: labeled x | K strong views of u | (--debiased) K strong views of x, treated as unlabeled.
        images = tf.concat([batch[keys.X], *strong_u, *strong_x], 0)
        n_pool, n_rows = tf.shape(batch[keys.X])[0] + s.K * tf.shape(batch[keys.U_WEAK])[0], tf.shape(images)[0]
        partners, lam = losses.mixmatch_plan(n_rows, n_pool, s.beta, losses.step_seed(s.seed, step, MIX_SALT))
        # Rotations of the first strong view of every unlabeled (then, with --debiased, labeled) image.
        first = tf.concat([strong_u[0], *strong_x[:1]], 0)
        n_first = tf.shape(first)[0]
        turns = tf.random.stateless_uniform([n_first], losses.step_seed(s.seed, step, ROTATION_SALT), 0, 4,
                                            dtype=tf.int32)
        logits, features = self.classifier(tf.concat([losses.mix_images(images, partners, lam), first,
                                                      rotate_quarter_turns(first, turns)], 0), training=True)
        logits_mixed, logits_first, _ = tf.split(logits, [n_rows, n_first, n_first], 0)
        logits_rot = self.rotation_head(tf.split(features, [n_rows + n_first, n_first], 0)[1])
        loss, logs, history = remixmatch_loss(
            batch[keys.LABEL], weak_logits[0], self.p_labeled, self.p_model_history, step, logits_mixed, partners, lam,
            s.K, logits_first, logits_rot, turns, s.T, s.wu, s.w_kl, s.w_rot,
            losses.linear_rampup(step, self.trainer.kimg_to_steps(s.warmup_kimg)),
            weak_logits[1] if s.debiased else None, means=losses.Corrected(self.bias))
        self.p_model_history.assign(history)
        return loss, logs


def remixmatch_loss(labels, logits_weak, p_labeled, p_model_history, step, logits_mixed, partners, lam, K,
                    logits_first, logits_rot, turns, T=0.5, wu=1.5, w_kl=0.5, w_rot=0.5, ramp=1.0, logits_weak_x=None,
                    means=None):
    """ReMixMatch's loss and alignment state from the caller's passes (the module docstring's equations):
    logits_weak (uB, C) of the weak views (guess pass); logits_mixed (B + K uB [+ K B], C) = model(Mix(W)) of
    the rows [x | K strong views of u | (DeSSL) K strong views of x] mixed with `partners`, `lam`
    (losses.mixmatch_plan, losses.mix_images); logits_first of the first strong view of each unlabeled
    (then DeSSL labeled) image and logits_rot (4 classes) of the rotation head on those images rotated by
    turns * 90 degrees. p_labeled (C,); p_model_history (128, C) of batch means: this step's goes to row
    step mod 128 first, p_model = its mean. labels int (B,); ramp r(t) on wu and w_kl; logits_weak_x: DeSSL's
    labeled views as unlabeled. Returns (L, {losses/xe, losses/xeu, losses/kl, losses/rot, monitors/wu}, history)."""
    means = means or losses.Means(wu)
    probs = [tf.stop_gradient(tf.nn.softmax(p)) for p in [logits_weak] + ([] if logits_weak_x is None else
                                                                          [logits_weak_x])]
    row = tf.cast(step % p_model_history.shape[0], tf.int32)
    history = tf.tensor_scatter_nd_update(p_model_history, [[row]], [tf.reduce_mean(probs[0], 0)])
    p_model = tf.reduce_mean(history, 0)
    guess_u, *guess_x = [losses.sharpen(losses.distribution_alignment(p, p_labeled, p_model), T) for p in probs]
    n_x, n_u = tf.shape(labels)[0], tf.shape(logits_weak)[0]
    targets = tf.concat([tf.one_hot(tf.cast(labels, tf.int32), logits_mixed.shape[-1])] + [guess_u] * K
                        + guess_x * K, 0)
    n_rows, n_first = tf.shape(targets)[0], tf.shape(logits_first)[0]
    logits_x, logits_mixed_u = tf.split(logits_mixed, [n_x, n_rows - n_x], 0)
    targets_x, targets_u = tf.split(losses.mix_targets(targets, partners, lam), [n_x, n_rows - n_x], 0)
    xe = tf.reduce_mean(losses.soft_cross_entropy(targets_x, logits_x))
    h_match = losses.soft_cross_entropy(targets_u, logits_mixed_u)
    h_first = losses.soft_cross_entropy(tf.concat([guess_u, *guess_x], 0), logits_first)
    h_rot = losses.cross_entropy(turns, logits_rot)
    u_rows, first_rows = [K * n_u, n_rows - n_x - K * n_u], [n_u, n_first - n_u]
    (match_u, match_x), (first_u, first_x), (rot_u, rot_x) = (
        tf.split(h_match, u_rows, 0), tf.split(h_first, first_rows, 0), tf.split(h_rot, first_rows, 0))
    if not guess_x:
        match_x = first_x = rot_x = None
    match, _ = means.unlabeled(ramp * match_u, h_on_labeled=None if match_x is None else ramp * match_x)
    kl = losses.dessl_mean(first_u, first_x)
    rot = losses.dessl_mean(rot_u, rot_x)
    loss = xe + match + w_kl * ramp * kl + w_rot * rot
    return loss, {keys.XE: xe, keys.XEU: tf.reduce_mean(match_u), 'losses/kl': tf.reduce_mean(first_u),
                  'losses/rot': tf.reduce_mean(rot_u), keys.WU: wu * ramp}, history


if __name__ == '__main__':
    train.main(ReMixMatch)
