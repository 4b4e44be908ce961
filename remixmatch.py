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

    def p_model(self, probs, step):
        """Mean of the batch-mean predictions over the last ALIGNMENT_BATCHES steps, storing this
        step's (N, C) probs first (row step mod ALIGNMENT_BATCHES)."""
        row = tf.cast(step % ALIGNMENT_BATCHES, tf.int32)
        history = tf.tensor_scatter_nd_update(self.p_model_history, [[row]], [tf.reduce_mean(probs, 0)])
        self.p_model_history.assign(history)
        return tf.reduce_mean(history, 0)

    def guess(self, probs, p_model):
        """sharpen(normalize(p * p_labeled / p_model), T)."""
        return losses.sharpen(losses.distribution_alignment(probs, self.p_labeled, p_model), self.settings.T)

    def label_guesses(self, batch, step):
        """Aligned, sharpened guesses from the weak views of u and (--debiased) the labeled views x,
        through one training-mode pass that leaves batch norm alone; updates p_model with u's."""
        weak_logits = self.forward(batch[keys.U_WEAK], *([batch[keys.X]] if self.settings.debiased else []),
                                   update_bn=False)
        weak_probs = [tf.stop_gradient(tf.nn.softmax(logits)) for logits in weak_logits]
        p_model = self.p_model(weak_probs[0], step)
        return [self.guess(probs, p_model) for probs in weak_probs] + [None] * (2 - len(weak_probs))

    def loss(self, batch, step):
        s = self.settings
        strong_u = [batch[f'u_strong{k}'] for k in range(s.K)]
        strong_x = [batch[f'x_strong{k}'] for k in range(s.K)] if s.debiased else []
        guess_u, guess_x = self.label_guesses(batch, step)
        # MixUp rows: labeled x | K strong views of u | (--debiased) K strong views of x, treated as unlabeled.
        images = tf.concat([batch[keys.X], *strong_u, *strong_x], 0)
        targets = tf.concat([tf.one_hot(tf.cast(batch[keys.LABEL], tf.int32), self.nclass)] + [guess_u] * s.K
                            + [guess_x] * len(strong_x), 0)
        n_x, n_u = tf.shape(batch[keys.X])[0], tf.shape(batch[keys.U_WEAK])[0]
        n_pool, n_rows = n_x + s.K * n_u, tf.shape(images)[0]
        partners, lam = losses.mixmatch_plan(n_rows, n_pool, s.beta, losses.step_seed(s.seed, step, MIX_SALT))
        mixed_images, mixed_targets = losses.mixup(images, targets, partners, lam)
        # Rotations of the first strong view of every unlabeled (then, with --debiased, labeled) image.
        first = tf.concat([strong_u[0], *strong_x[:1]], 0)
        turns = tf.random.stateless_uniform([tf.shape(first)[0]], losses.step_seed(s.seed, step, ROTATION_SALT),
                                            0, 4, dtype=tf.int32)
        logits, features = self.classifier(tf.concat([mixed_images, first, rotate_quarter_turns(first, turns)], 0),
                                           training=True)
        n_first = tf.shape(first)[0]
        logits_mixed, logits_first, _ = tf.split(logits, [n_rows, n_first, n_first], 0)
        logits_rot = self.rotation_head(tf.split(features, [n_rows + n_first, n_first], 0)[1])
        sizes = [n_x, n_rows - n_x]
        logits_x, logits_mixed_u = tf.split(logits_mixed, sizes, 0)
        targets_x, targets_u = tf.split(mixed_targets, sizes, 0)
        xe = tf.reduce_mean(losses.soft_cross_entropy(targets_x, logits_x))
        h_match = losses.soft_cross_entropy(targets_u, logits_mixed_u)
        h_first = losses.soft_cross_entropy(tf.concat([guess_u, *([guess_x] if s.debiased else [])], 0), logits_first)
        h_rot = losses.cross_entropy(turns, logits_rot)
        u_rows, first_rows = [s.K * n_u, n_rows - n_pool], [n_u, n_first - n_u]
        (match_u, match_x), (first_u, first_x), (rot_u, rot_x) = (
            tf.split(h_match, u_rows, 0), tf.split(h_first, first_rows, 0), tf.split(h_rot, first_rows, 0))
        if not s.debiased:
            match_x = first_x = rot_x = None
        ramp = losses.linear_rampup(step, self.trainer.kimg_to_steps(s.warmup_kimg))
        match, _ = self.bias.unlabeled(ramp * match_u, None if match_x is None else ramp * match_x)
        kl = losses.dessl_mean(first_u, first_x)
        rot = losses.dessl_mean(rot_u, rot_x)
        loss = xe + match + s.w_kl * ramp * kl + s.w_rot * rot
        return loss, {keys.XE: xe, keys.XEU: tf.reduce_mean(match_u), 'losses/kl': tf.reduce_mean(first_u),
                      'losses/rot': tf.reduce_mean(rot_u), keys.WU: s.wu * ramp}


if __name__ == '__main__':
    train.main(ReMixMatch)
