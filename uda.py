#!/usr/bin/env python
"""UDA, Unsupervised Data Augmentation (Xie et al., NeurIPS 2020).

Paper setting, CIFAR-10 with 4000 labels, WRN-28-2, RandAugment (+ cutout, --augment=d.d.rac) strong views:
  python uda.py --dataset=cifar10.3@4000-1 --train_dir=./experiments/uda
(time not measured for this port.)
Small local run on a CPU (Fashion-MNIST, 250 labels, time not measured):
  python uda.py --dataset=fashion_mnist.1@250-1 --local

Loss, with p_w = softmax(model(weak(u))), q = softmax(model(weak(u)) / T) (both constants: no
gradient), tau = --confidence, H = cross-entropy:
  L = mean_l H(y, model(weak(x)))
    + wu * mean_u[ 1(max p_w >= tau) * KL(q || softmax(model(strong(u)))) ]
    + we * mean_u entropy(softmax(model(weak(u))))
The means over u run over all uratio * batch unlabeled images (masked ones count as 0); all views
go through ONE forward pass (batch norm as the reference). T < 1 sharpens the target (the
reference's default T = 1 leaves it as p_w); the confidence mask uses the unsharpened p_w. The
entropy term is on the weak view, with its gradient, as the reference. Training-signal annealing
(TSA, off by default in the reference) is not implemented.

DeSSL (Schmutz et al., ICLR 2023), --debiased: the unlabeled terms are also computed on the labeled
images (weak view = the labeled view x, plus a strong view) and subtracted:
L - wu * mean_l[mask * KL] - we * mean_l entropy. --wu=0 --we=0 leaves the labeled term only.
Pure loss, for any training loop: uda_loss(labels, logits_x, logits_weak, logits_strong, confidence, T, wu, we).
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
from libml.settings import Param, above, at_least, in_range  # noqa: E402


def uda_term(logits_weak, logits_strong, temperature, threshold):
    """Per sample 1(max p_w >= tau) * KL(softmax(weak / T) || softmax(strong)), p_w = softmax(weak);
    the weak side is a constant. tau is a scalar or per-class thresholds (K,) (--CAI), then image i
    uses the threshold of its predicted class. Returns (masked KL (N,), mask (N,) in {0, 1})."""
    logits_weak = tf.stop_gradient(logits_weak)
    mask = losses.confidence_mask(tf.nn.softmax(logits_weak), threshold)
    return losses.kl_divergence(tf.nn.softmax(logits_weak / temperature), logits_strong) * mask, mask


class UDA(train.Algorithm):
    params = dict(
        uratio=Param(7, 'Unlabeled images per labeled image in a step.', check=at_least(1)),
        wu=Param(1.0, 'Weight of the consistency term (0 = labeled term only).', check=at_least(0)),
        T=Param(1.0, 'Temperature of the target softmax(weak / T) (T < 1 sharpens; the reference: 1, the UDA paper: '
                '0.4).', check=above(0)),
        confidence=Param(0.95, 'Only unlabeled images whose weak-view max softmax reaches this count.',
                         check=in_range(0, 1, low_open=True)),
        we=Param(0.0, 'Weight of the entropy of the weak-view prediction (entropy minimisation).', check=at_least(0)),
        augment=views.augment_param('d.d.rac', 'Augmentation L.W.S of the labeled, weak and strong views'),
    )
    label_bias = debias.Support(threshold=True, labeled_term=True, unlabeled_term=True, darp=True)

    def loss(self, batch, step):
        s = self.settings
        logits = self.forward_views(batch, keys.X, keys.X_STRONG, keys.U_WEAK, keys.U_STRONG)
        self.bias.update(logits[keys.U_WEAK])
        thresholds = self.bias.thresholds(s.confidence)
        weak = self.bias.pseudo_logits(batch.get(keys.U_INDEX), logits[keys.U_WEAK], step)  # --darp: refined rows
        labeled_too = self.bias.needs_labeled_term
        h_x = uda_term(logits[keys.X], logits[keys.X_STRONG], s.T, thresholds)[0] if labeled_too else None
        return uda_loss(batch[keys.LABEL], logits[keys.X], logits[keys.U_WEAK], logits[keys.U_STRONG], thresholds,
                        s.T, s.wu, s.we, logits_target=weak, logits_x_entropy=logits[keys.X] if s.debiased else None,
                        means=losses.Corrected(self.bias, h_x))


def uda_loss(labels, logits_x, logits_weak, logits_strong, confidence=0.95, T=1.0, wu=1.0, we=0.0, logits_target=None,
             logits_x_entropy=None, means=None):
    """UDA's loss from logits (nats), p_w = softmax(weak), q = softmax(weak / T), both constants:
      L = mean_l H(y, x) + wu mean_u[1(max p_w >= tau) KL(q || softmax(strong))] + we mean_u entropy(weak)
    (the entropy with its gradient). labels int (B,); logits_x (B, K); logits_weak, logits_strong (uB, K);
    confidence tau scalar or per-class (K,); logits_target: logits the target and mask come from instead of
    logits_weak (--darp's refined rows); logits_x_entropy: with DeSSL, the labeled logits whose mean entropy
    is subtracted. Returns (L, {losses/xe, losses/xeu, losses/entropy, monitors/mask})."""
    means = means or losses.Means(wu)
    xe = means.labeled(losses.cross_entropy(labels, logits_x), labels)
    h_u, mask = uda_term(logits_weak if logits_target is None else logits_target, logits_strong, T, confidence)
    unlabeled, kl = means.unlabeled(h_u, labels)
    entropy = losses.dessl_mean(losses.entropy(logits_weak),
                                None if logits_x_entropy is None else losses.entropy(logits_x_entropy))
    return xe + unlabeled + we * entropy, {keys.XE: xe, keys.XEU: kl, 'losses/entropy': entropy,
                                           keys.MASK: tf.reduce_mean(mask)}


if __name__ == '__main__':
    train.main(UDA)
