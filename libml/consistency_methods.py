"""Settings and helpers shared by the consistency baselines: Pi-model, Mean Teacher, VAT, ICT and
Pseudo-Label (Oliver et al., NeurIPS 2018, "Realistic Evaluation of Deep Semi-Supervised Learning").

Each of them minimises
  L = mean_l H(y, x) + wu * r(t) * (mean_u h(u) [- mean_l h(x) with --debiased])
with h the method's per-sample unlabeled term and r(t) = min(1, t / warmup steps) a linear ramp-up
of the weight over --warmup_kimg. --debiased is DeSSL (Schmutz et al., ICLR 2023): h is also
computed on the labeled images treated as unlabeled (their labels unused) and subtracted, which
keeps the risk unbiased under MCAR labels for any wu. The other label-bias corrections
(libml/debias.py) apply the same way.

Batch norm as the reference: each image batch (labeled view, each unlabeled view, ...) goes through
its OWN training-mode forward pass, normalised by its own batch statistics, and only the first
(labeled) pass updates the moving statistics (`separate_passes`). --joint_bn instead runs one pass
over all of them (statistics of the whole batch, which updates the moving statistics).
"""
import dataclasses

import tensorflow as tf

from libml import debias
from libml import keys
from libml import losses
from libml import params as params_lib
from libml import train
from libml.settings import Param, at_least

# Oliver et al. ramp the weight up over 200k of their 500k iterations: 0.4 of the schedule, here
# 0.4 * 65536 kimg; --local: 0.4 * 16 kimg.
WARMUP_KIMG = Param(0.4 * (1 << 16), 'The unlabeled weight grows linearly from 0 to --wu over this many kimg '
                    '(0.4 of training as Oliver et al.: 200k of 500k iterations).', local=6.4,
                    check=at_least(0))
UNLABELED_RATIO = Param(1, 'Unlabeled images per labeled image in a step.', check=at_least(1))
# A plain labeled cross-entropy and a per-image unlabeled term: DeSSL, MNAR and CAP apply.
LABEL_BIAS = debias.Support(labeled_term=True, unlabeled_term=True)


# The reference's VAT, ICT and MixUp optimisation: Adam at a constant lr 0.002, then after each step
# w <- w * (1 - lr * wd) on the kernels with wd = 0.02 (state.AdamW).
ADAM_SETUP = {name: dataclasses.replace(params_lib.COMMON[name], default=default) for name, default in
              dict(optimizer='adam', lr=0.002, lr_schedule='constant', wd=0.02).items()}

JOINT_BN = Param(False, 'Departs from the reference: ONE training-mode forward pass over the labeled and unlabeled '
                 'views, normalised by the statistics of them all (and updating the moving statistics). The '
                 'reference (default) makes a separate pass per view, each normalised by its own batch; only the '
                 'labeled pass updates the moving statistics.')


def separate_passes(algorithm, *parts, joint=None):
    """Logits of each image batch of `parts`, in order. Reference: one training-mode pass per batch,
    normalised by its own batch statistics; only the first (the labeled view) updates the moving
    statistics. With --joint_bn (or joint=True): ONE pass over all of them, which updates them."""
    joint = algorithm.settings.get('joint_bn', False) if joint is None else joint
    if joint:
        return algorithm.forward(*parts)
    return [algorithm.forward(parts[0])[0]] + [algorithm.forward(part, update_bn=False)[0] for part in parts[1:]]


def separate_views(algorithm, batch, *names):
    """{name: logits} of the named views present in `batch` (the first one the labeled view), as
    `separate_passes`."""
    present = [name for name in names if name in batch]
    return dict(zip(present, separate_passes(algorithm, *(batch[name] for name in present))))


def consistency_param(default='mse'):
    """--consistency: the distance between a target distribution q and the prediction p."""
    return Param(default, 'Consistency between target q and prediction p: mse mean_k (p-q)^2, l1 mean_k |p-q|, '
                 'kl KL(q||p), jsd Jensen-Shannon divergence.', choices=losses.CONSISTENCIES)


def rampup(algorithm, step):
    """r(t) = min(1, t / steps of --warmup_kimg), a float32 scalar in [0, 1]."""
    return losses.linear_rampup(step, algorithm.trainer.kimg_to_steps(algorithm.settings.warmup_kimg))


def ramped_unlabeled_loss(algorithm, h_unlabeled, h_labeled, labels, step):
    """r(t) * (wu * mean_u h - [--debiased] wu * mean_l h) (see debias.LabelBias.unlabeled) and its logs.

    h_unlabeled (Nu,), h_labeled (Nl,) or None: per-sample unlabeled terms. Returns (scalar loss,
    {XEU: mean_u h, WU: the ramped weight r(t) * wu})."""
    ramp = rampup(algorithm, step)
    loss, mean_u = algorithm.bias.unlabeled(h_unlabeled, h_labeled, labels)
    return ramp * loss, {keys.XEU: mean_u, keys.WU: ramp * algorithm.settings.wu}


def supervised_xe(algorithm, batch, logits):
    """The labeled term of the labeled view's logits: mean_l H(y, x), or its label-bias correction."""
    labels = batch[keys.LABEL]
    return algorithm.bias.labeled(losses.cross_entropy(labels, logits), labels)


def plain_supervised_xe(labels, logits):
    """mean_l H(y, x): cross-entropy of the labeled batch, a scalar."""
    return tf.reduce_mean(losses.cross_entropy(labels, logits))
