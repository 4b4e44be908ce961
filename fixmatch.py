#!/usr/bin/env python
"""FixMatch (Sohn et al., NeurIPS 2020).

Paper setting, CIFAR-10 with 40 labels, WRN-28-2, 2^20 steps:
  python fixmatch.py --dataset=cifar10.1@40-1 --train_dir=./experiments/fixmatch
(about 4 days with the original code on one GPU; measured times for this port are in the README.)
Small local run on a CPU (about 15 minutes, Fashion-MNIST, 40 labels):
  python fixmatch.py --dataset=fashion_mnist.1@40-1 --local

Loss, with p_w = stop_gradient(softmax(model(weak(u)))), tau = --confidence, H = cross-entropy:
  L = mean_l H(y, model(weak(x)))
    + wu * mean_u[ 1(max p_w >= tau) * H(argmax p_w, model(strong(u))) ]
The mean over u runs over all uratio * batch unlabeled images (masked ones count as 0).
--wu=0 is the complete-case baseline (labeled term only).
"""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from libml import utils  # noqa: E402

utils.quiet_tensorflow()
import tensorflow as tf  # noqa: E402

from libml import losses  # noqa: E402
from libml import train  # noqa: E402
from libml.settings import Param  # noqa: E402


class FixMatch(train.Algorithm):
    params = dict(
        uratio=Param(7, 'Unlabeled images per labeled image in a step (mu).'),
        confidence=Param(0.95, 'Confidence threshold tau of the pseudo-labels.'),
        wu=Param(1.0, 'Weight of the unlabeled term (0 = complete-case baseline).'),
        augment=Param('d.d.cta', 'Augmentation of the labeled, weak and strong views: L.W.S with codes '
                      'd (flip + crop), x (none), ra (RandAugment), rac (RandAugment + cutout), cta (CTAugment).'),
    )

    def loss(self, batch, step):
        logits_x, logits_weak, logits_strong = self.forward(batch['x'], batch['u_weak'], batch['u_strong'])
        xe = tf.reduce_mean(losses.cross_entropy(batch['label'], logits_x))
        xeu, mask = losses.pseudo_label_term(logits_weak, logits_strong, self.settings.confidence)
        xeu = tf.reduce_mean(xeu)
        return xe + self.settings.wu * xeu, {'losses/xe': xe, 'losses/xeu': xeu, 'monitors/mask': tf.reduce_mean(mask)}


if __name__ == '__main__':
    train.main(FixMatch)
