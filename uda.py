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
    + we * mean_u entropy(softmax(model(strong(u))))
The means over u run over all uratio * batch unlabeled images (masked ones count as 0); all views
go through ONE forward pass. T sharpens the target (T < 1); the confidence mask uses the
unsharpened p_w. Training-signal annealing (TSA) of the paper is not implemented.

DeSSL (Schmutz et al., ICLR 2023), --debiased: the unlabeled terms are also computed on the labeled
images (weak view = the labeled view x, plus a strong view) and subtracted:
L - wu * mean_l[mask * KL] - we * mean_l entropy. --wu=0 --we=0 leaves the labeled term only.
"""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from libml import utils  # noqa: E402

utils.quiet_tensorflow()
import tensorflow as tf  # noqa: E402

from libml import views  # noqa: E402
from libml import losses  # noqa: E402
from libml import train  # noqa: E402
from libml.settings import Param  # noqa: E402


def uda_term(logits_weak, logits_strong, temperature, threshold):
    """Per sample 1(max p_w >= tau) * KL(softmax(weak / T) || softmax(strong)), p_w = softmax(weak);
    the weak side is a constant. Returns (masked KL (N,), mask (N,) in {0, 1})."""
    logits_weak = tf.stop_gradient(logits_weak)
    mask = tf.cast(tf.reduce_max(tf.nn.softmax(logits_weak), axis=1) >= threshold, tf.float32)
    return losses.kl_divergence(tf.nn.softmax(logits_weak / temperature), logits_strong) * mask, mask


class UDA(train.Algorithm):
    params = dict(
        uratio=Param(7, 'Unlabeled images per labeled image in a step.'),
        wu=Param(1.0, 'Weight of the consistency term (0 = labeled term only).'),
        T=Param(0.4, 'Temperature of the target softmax(weak / T) (T < 1 sharpens).'),
        confidence=Param(0.95, 'Only unlabeled images whose weak-view max softmax reaches this count.'),
        we=Param(0.0, 'Weight of the entropy of the strong-view prediction (entropy minimisation).'),
        augment=views.augment_param('d.d.rac', 'Augmentation L.W.S of the labeled, weak and strong views'),
        debiased=train.DEBIASED,
    )

    def views(self):
        labeled, weak, strong = views.parse_augment(self.settings.augment)
        make = self.trainer.view_fn
        labeled_views = {'x': make(labeled)}
        if self.settings.debiased:
            labeled_views['x_strong'] = make(strong)
        return labeled_views, {'u_weak': make(weak), 'u_strong': make(strong)}

    def loss(self, batch, step):
        s = self.settings
        parts = [batch['x']] + ([batch['x_strong']] if s.debiased else []) + [batch['u_weak'], batch['u_strong']]
        logits = self.forward(*parts)
        logits_x, logits_weak, logits_strong = logits[0], logits[-2], logits[-1]
        xe = tf.reduce_mean(losses.cross_entropy(batch['label'], logits_x))
        h_u, mask = uda_term(logits_weak, logits_strong, s.T, s.confidence)
        h_x = uda_term(logits_x, logits[1], s.T, s.confidence)[0] if s.debiased else None
        unlabeled, kl = self.unlabeled_loss(h_u, h_x)
        entropy = losses.dessl_mean(losses.entropy(logits_strong), losses.entropy(logits[1]) if s.debiased else None)
        return xe + unlabeled + s.we * entropy, {'losses/xe': xe, 'losses/xeu': kl, 'losses/entropy': entropy,
                                                 'monitors/mask': tf.reduce_mean(mask)}


if __name__ == '__main__':
    train.main(UDA)
