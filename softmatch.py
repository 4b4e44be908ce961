#!/usr/bin/env python
"""SoftMatch (Chen et al., ICLR 2023): truncated-Gaussian sample weights after uniform alignment, as USB.

Paper setting (CIFAR-10, 40 labels, WRN-28-2; USB's error 5.06%): python softmatch.py --dataset=cifar10.1@40-1

State (checkpointed): p_model (K,) (set to the first batch's mean, then EMA), started (0 or 1), mu = 1/K,
var = 1. With p = stop_gradient(softmax(model(weak(u)))) of the global batch (all replicas), m = --ema_p:
  p_model <- mean_i p_i at the first step, then m p_model + (1-m) mean_i p_i   (before aligning);
  uniform alignment  p~_i = SumNorm(p_i * (1/K + 1e-6) / (p_model + 1e-6)),  m_i = max_c p~_ic;
  mu <- m mu + (1-m) mean_i m_i,  var <- m var + (1-m) var_unbiased(m_i)   (before the weights);
  w_i = exp(-min(m_i - mu, 0)^2 / (2 var / n_sigma^2)),  n_sigma = --n_sigma;
  L = mean_l H(y, x) + wu mean_u[w_i H(argmax weak logits_i, model(strong(u_i)))].
The aligned probabilities are not put through a second softmax (USB did before April 2023; see README).
Label-bias add-ons: --CAP, --debiased, --mnar_estimate (the term on the labeled images with the same
mu, var and p_model); no confidence threshold: --CAI and --CADR are refused.
Pure loss, for any training loop: softmatch_loss(labels, logits_x, logits_weak, logits_strong, p_model, mu,
var, started, ema_p, n_sigma, wu) -> (loss, logs, (p_model, mu, var, started)).
"""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from libml import utils  # noqa: E402

utils.quiet_tensorflow()
import tensorflow as tf  # noqa: E402

from libml import debias  # noqa: E402
from libml import devices  # noqa: E402
from libml import keys  # noqa: E402
from libml import losses  # noqa: E402
from libml import train  # noqa: E402
from libml import views  # noqa: E402
from libml.settings import Param, above, at_least, in_range  # noqa: E402



def updated_gaussian(mu, var, max_probs, momentum):
    """(mu, var) after one EMA step with the mean and the unbiased variance of max_probs (n,)."""
    n = tf.cast(tf.size(max_probs), tf.float32)
    mean = tf.reduce_mean(max_probs)
    unbiased = tf.reduce_sum(tf.square(max_probs - mean)) / tf.maximum(n - 1, 1.)
    return momentum * mu + (1 - momentum) * mean, momentum * var + (1 - momentum) * unbiased


def truncated_gaussian_weights(max_probs, mu, var, n_sigma=2.):
    """exp(-min(m - mu, 0)^2 / (2 var / n_sigma^2)): 1 at or above mu."""
    return tf.exp(-tf.square(tf.minimum(max_probs - mu, 0.)) / (2 * var / n_sigma ** 2))


class SoftMatch(train.Algorithm):
    params = dict(
        uratio=Param(7, 'Unlabeled images per labeled image in a step (mu).', check=at_least(1)),
        wu=Param(1.0, 'Weight of the unlabeled term (0 = complete-case baseline).', check=at_least(0)),
        ema_p=Param(0.999, 'Momentum of the EMAs p_model, mu and var.', check=in_range(0, 1)),
        n_sigma=Param(2.0, 'Width of the Gaussian in standard deviations (the weight is 1 at or above mu).',
                      check=above(0)),
        augment=views.augment_param('d.d.rac', 'Augmentation L.W.S of the labeled, weak and strong views'),
    )
    label_bias = debias.Support(threshold=False, labeled_term=True, unlabeled_term=True)

    def build(self):
        first = tf.VariableAggregation.ONLY_FIRST_REPLICA  # every replica computes the same new value
        self.p_model = tf.Variable(tf.fill([self.nclass], 1 / self.nclass), trainable=False, name='p_model',
                                   aggregation=first)
        self.started = tf.Variable(0., trainable=False, name='started', aggregation=first)
        self.mu = tf.Variable(1 / self.nclass, trainable=False, name='mu', aggregation=first)
        self.var = tf.Variable(1., trainable=False, name='var', aggregation=first)
        return dict(p_model=self.p_model, started=self.started, mu=self.mu, var=self.var)

    def loss(self, batch, step):
        s = self.settings
        logits = self.forward_views(batch, keys.X, keys.X_STRONG, keys.U_WEAK, keys.U_STRONG)
        self.bias.update(logits[keys.U_WEAK])
        on_labeled = (logits[keys.X], logits[keys.X_STRONG]) if self.bias.needs_labeled_term else None
        loss, logs, state = softmatch_loss(
            batch[keys.LABEL], logits[keys.X], logits[keys.U_WEAK], logits[keys.U_STRONG], self.p_model, self.mu,
            self.var, self.started, s.ema_p, s.n_sigma, s.wu, gather=devices.global_rows,
            means=losses.Corrected(self.bias, views_on_labeled=on_labeled))
        for variable, value in zip((self.p_model, self.mu, self.var, self.started), state):
            variable.assign(value)
        return loss, logs


def softmatch_term(logits_weak, logits_strong, p_model, mu, var, n_sigma=2.):
    """(w_i H(argmax weak_i, strong_i) (n,), w (n,)), w the truncated-Gaussian weight of the aligned max p."""
    aligned = losses.smoothed_alignment(tf.nn.softmax(tf.stop_gradient(logits_weak)), 1 / logits_weak.shape[-1],
                                        p_model)
    weights = truncated_gaussian_weights(tf.reduce_max(aligned, 1), mu, var, n_sigma)
    return weights * losses.cross_entropy(tf.argmax(logits_weak, 1), logits_strong), weights


def softmatch_loss(labels, logits_x, logits_weak, logits_strong, p_model, mu, var, started, ema_p=0.999, n_sigma=2.,
                   wu=1.0, gather=None, means=None):
    """SoftMatch's loss and state update from logits (the module docstring's equations): p_model, then mu
    and var step on p = stop_gradient(softmax(logits_weak)) first, then
      L = mean_l H(y, x) + wu mean_u[w_i H(argmax weak_i, strong_i)].
    labels int (B,); logits (B, K), (uB, K); p_model (K,), mu, var, started (0 before the first step, then
    1): the state before the step; gather(v) -> the global batch's rows of v (default: this batch).
    Returns (L, {losses/xe, losses/xeu, monitors/mask: mean w, monitors/mu}, (p_model, mu, var, started))."""
    means = means or losses.Means(wu)
    every = (gather or tf.identity)(tf.nn.softmax(tf.stop_gradient(logits_weak)))
    p_model = losses.first_batch_ema(p_model, started, tf.reduce_mean(every, 0), ema_p)
    max_aligned = tf.reduce_max(losses.smoothed_alignment(every, 1 / every.shape[-1], p_model), 1)
    mu, var = updated_gaussian(mu, var, max_aligned, ema_p)

    def term(weak, strong):
        return softmatch_term(weak, strong, p_model, mu, var, n_sigma)

    xe = means.labeled(losses.cross_entropy(labels, logits_x), labels)
    h_unlabeled, weights = term(logits_weak, logits_strong)
    unlabeled, xeu = means.unlabeled(h_unlabeled, labels, term)
    return xe + unlabeled, {keys.XE: xe, keys.XEU: xeu, keys.MASK: tf.reduce_mean(weights),
                            'monitors/mu': tf.convert_to_tensor(mu)}, (p_model, mu, var, tf.ones([]))


if __name__ == '__main__':
    train.main(SoftMatch)
