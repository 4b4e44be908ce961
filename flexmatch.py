#!/usr/bin/env python
"""FlexMatch (Zhang et al., NeurIPS 2021): FixMatch with per-class thresholds, as USB implements it.

Paper setting (CIFAR-10, 40 labels, WRN-28-2; published error 4.97%): python flexmatch.py --dataset=cifar10.1@40-1

State (checkpointed): selected[n] for unlabeled image n (its position in the unlabeled set), -1 at
first; beta (K,), 0 at first. sigma_c = #{n: selected[n] = c}, sigma_-1 = #{n: selected[n] = -1}.
After each step, every image of the global batch (all replicas) with max p_w >= tau gets
selected[n] = argmax p_w, then, unless one value holds every image, beta_c = sigma_c /
max(sigma_-1, sigma_0, ..) with threshold warm-up (--warmup, default) or sigma_c / max_c sigma_c
without. With p_w = stop_gradient(softmax(model(weak(u)))) and the threshold of class c
  T_c = tau * M(beta_c),  M(x) = x / (2 - x)  (the convex mapping),
  L = mean_l H(y, x) + wu * mean_u[1(max p_w >= T_{argmax p_w}) H(argmax p_w, model(strong(u)))].
Label-bias add-ons as FixMatch: --CAI multiplies T_c by its class-aware factor; --CAP, --CADR, --debiased;
--darp (pseudo-label and mask from the refined rows; beta still counts the model's own p), --abc.
Pure loss, for any training loop: flexmatch_loss(labels, logits_x, logits_weak, logits_strong, index, selected, beta)
-> (loss, logs, (selected, beta)).
"""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from libml import utils  # noqa: E402

utils.quiet_tensorflow()
import tensorflow as tf  # noqa: E402

from libml import debias  # noqa: E402
from libml import keys  # noqa: E402
from libml import losses  # noqa: E402
from libml import train  # noqa: E402
from libml import views  # noqa: E402
from libml.settings import Param, at_least, in_range  # noqa: E402


def updated_selection(selected, index, label, chosen):
    """selected (N,) with selected[index[j]] = label[j] for every chosen row j (the last chosen row of
    an image listed twice wins); rows not chosen write to a spare slot N that is dropped."""
    order = tf.argsort(index * 2 + tf.cast(chosen, index.dtype), stable=True)  # an image's chosen rows last
    index, label, chosen = (tf.gather(v, order) for v in (index, label, chosen))
    last = tf.concat([index[1:] != index[:-1], [True]], 0)
    spare = tf.size(selected, out_type=index.dtype)
    target = tf.where(last & chosen, index, spare)[:, None]
    padded = tf.concat([tf.convert_to_tensor(selected), -tf.ones([1], selected.dtype)], 0)
    return tf.tensor_scatter_nd_update(padded, target, tf.cast(label, selected.dtype))[:-1]


def learning_effect(selected, beta, nclass, warmup=True):
    """beta_c = sigma_c / max(sigma_-1, sigma_0..) (warm-up) or sigma_c / max_c sigma_c; the previous
    `beta` when a single value (-1 or one class) holds every image."""
    counts = tf.math.unsorted_segment_sum(tf.ones_like(selected, tf.float32), selected + 1, nclass + 1)
    denominator = tf.reduce_max(counts if warmup else counts[1:])
    fresh = counts[1:] / tf.maximum(denominator, 1.)
    return tf.where(tf.reduce_max(counts) < tf.cast(tf.size(selected), tf.float32), fresh, beta)


class FlexMatch(train.Algorithm):
    params = dict(
        uratio=Param(7, 'Unlabeled images per labeled image in a step (mu).', check=at_least(1)),
        confidence=Param(0.95, 'Base threshold tau: thresholds tau * M(beta_c); images reaching tau are selected.',
                         check=in_range(0, 1, low_open=True)),
        wu=Param(1.0, 'Weight of the unlabeled term (0 = complete-case baseline).', check=at_least(0)),
        warmup=Param(True, 'Threshold warm-up: the never-selected images count in the normalisation of beta.'),
        augment=views.augment_param('d.d.rac', 'Augmentation L.W.S of the labeled, weak and strong views'),
    )
    label_bias = debias.Support(threshold=True, labeled_term=True, unlabeled_term=True, darp=True, abc=True)

    def build(self):
        first = tf.VariableAggregation.ONLY_FIRST_REPLICA  # every replica computes the same new value
        self.selected = tf.Variable(tf.fill([len(self.trainer.data.unlabeled)], tf.constant(-1, tf.int64)),
                                    trainable=False, name='selected', aggregation=first)
        self.beta = tf.Variable(tf.zeros([self.nclass]), trainable=False, name='beta', aggregation=first)
        return dict(selected=self.selected, beta=self.beta)

    def update(self, index, probs):
        """The state update after a step, from every replica's images (`flexmatch_update`)."""
        self.assign(flexmatch_update(self.selected, self.beta, index, probs, self.settings.confidence,
                                     self.settings.warmup, every_replica))

    def assign(self, state):
        self.selected.assign(state[0])
        self.beta.assign(state[1])

    def loss(self, batch, step):
        logits, features = self.forward_views(batch, keys.X, keys.X_STRONG, keys.U_WEAK, keys.U_STRONG, features=True)
        self.bias.update(logits[keys.U_WEAK])
        thresholds = flexible_thresholds(self.bias.thresholds(self.settings.confidence), self.beta)
        h_labeled = losses.pseudo_label_term(logits[keys.X], logits[keys.X_STRONG], thresholds)[0] \
            if self.bias.needs_labeled_term else None
        weak = self.bias.pseudo_logits(batch.get(keys.U_INDEX), logits[keys.U_WEAK], step)  # --darp: refined rows
        loss, logs, state = flexmatch_loss(
            batch[keys.LABEL], logits[keys.X], logits[keys.U_WEAK], logits[keys.U_STRONG], batch[keys.U_INDEX],
            self.selected, self.beta, thresholds, self.settings.confidence, self.settings.wu, self.settings.warmup,
            logits_pseudo=weak, gather=every_replica, means=losses.Corrected(self.bias, h_labeled))
        self.assign(state)
        balanced, balanced_logs = self.balanced_head_loss(features, batch, step)  # --abc (0 without)
        return loss + balanced, {**logs, **balanced_logs,
                                 'monitors/selected': tf.reduce_mean(tf.cast(self.selected >= 0, tf.float32))}


def every_replica(values):
    """Every replica's rows of `values` (the state counts every replica's images)."""
    return tf.distribute.get_replica_context().all_gather(values, 0)


def flexible_thresholds(tau, beta):
    """T_c = tau M(beta_c), M(x) = x / (2 - x) (the convex mapping); tau scalar or per class."""
    return tau * beta / (2 - beta)


def flexmatch_loss(labels, logits_x, logits_weak, logits_strong, index, selected, beta, thresholds=None,
                   confidence=0.95, wu=1.0, warmup=True, logits_pseudo=None, gather=None, means=None):
    """FlexMatch's loss and state update from logits, p_w = stop_gradient(softmax(logits_weak)):
      L = mean_l H(y, x) + wu mean_u[1(max p_w >= T_c) H(c, strong)],  c = argmax p_w,  T_c = tau M(beta_c);
    then selected[index_i] = c_i where max p_w,i >= tau, and beta from `learning_effect`.
    labels int (B,); logits (B, K) and (uB, K); index int64 (uB,) positions of the unlabeled images;
    selected int64 (N,), beta (K,): the state before the step; thresholds: the T_c to use (default
    flexible_thresholds(confidence, beta)); logits_pseudo: logits the pseudo-labels and mask come from
    (--darp); gather(v) -> the global batch's rows of v (default: this batch).
    Returns (L, {losses/xe, losses/xeu, monitors/mask}, (selected, beta) after the step)."""
    means = means or losses.Means(wu)
    thresholds = flexible_thresholds(confidence, beta) if thresholds is None else thresholds
    xe = means.labeled(losses.cross_entropy(labels, logits_x), labels)
    pseudo = logits_weak if logits_pseudo is None else logits_pseudo
    h_unlabeled, mask = losses.pseudo_label_term(pseudo, logits_strong, thresholds)
    unlabeled, xeu = means.unlabeled(h_unlabeled, labels)
    state = flexmatch_update(selected, beta, index, tf.nn.softmax(tf.stop_gradient(logits_weak)), confidence, warmup,
                             gather)
    return xe + unlabeled, {keys.XE: xe, keys.XEU: xeu, keys.MASK: tf.reduce_mean(mask)}, state


def flexmatch_update(selected, beta, index, probs, confidence=0.95, warmup=True, gather=None):
    """(selected, beta) after a step: selected[index_i] = argmax p_i for the images with max p_i >= tau
    (`updated_selection`), then beta from `learning_effect`; probs (uB, K); gather(v) -> the global batch's
    rows of v (default: this batch)."""
    chosen = tf.reduce_max(probs, 1) >= confidence  # gathered as int64: all_gather takes no bool
    gather = gather or (lambda v: v)
    index, label, chosen = (gather(tf.cast(v, tf.int64)) for v in (index, tf.argmax(probs, 1), chosen))
    selected = updated_selection(selected, index, label, chosen > 0)
    return selected, learning_effect(selected, beta, beta.shape[-1], warmup)


if __name__ == '__main__':
    train.main(FlexMatch)
