#!/usr/bin/env python
"""Supervised baselines: the labeled term only, no unlabeled images.

Paper settings (WRN-28-2; time not measured): the complete-case baseline on the labeled split
(Oliver et al., CIFAR-10 with 4000 labels) and the fully supervised model on every training label:
  python fully_supervised.py --dataset=cifar10.1@4000-1 --train_dir=./experiments/supervised
  python fully_supervised.py --dataset=cifar10.1@4000-1 --all_labels --train_dir=./experiments/supervised
Small local run on a CPU (16 kimg; time not measured):
  python fully_supervised.py --dataset=fashion_mnist.1@250-1 --local --all_labels

Loss, H = cross-entropy, weak(x) = flip + crop, strong(x) = the S view of --augment=L.W.S:
  L = mean_l H(y, model(weak(x)))                                         (default)
  L = mean_l [H(y, model(weak(x))) + H(y, model(strong(x)))] / 2          (--sup_strong, as DeFixMatch)
--all_labels trains on every labeled image of the training set (the unlabeled pool minus the
validation images) instead of the labeled split.

No unlabeled images are drawn (there is no --uratio: it is 0).
Batch norm: ONE forward pass in training mode over the labeled views, updating the moving statistics.
Pure loss, for any training loop: fully_supervised_loss(labels, logits_x).
"""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from libml import utils  # noqa: E402

utils.quiet_tensorflow()

from libml import views  # noqa: E402
from libml import debias  # noqa: E402
from libml import keys  # noqa: E402
from libml import losses  # noqa: E402
from libml import train  # noqa: E402
from libml.settings import Param  # noqa: E402


class FullySupervised(train.Algorithm):
    params = dict(
        all_labels=Param(False, 'Train on every labeled training image (unlabeled pool minus validation) instead of '
                         'the labeled split.'),
        sup_strong=Param(False, 'Average the cross-entropies of a weak and a strong view of each labeled image.'),
        augment=views.augment_param('d.d.rac', 'Views L.W.S: L the labeled view, S the strong view of '
                                      '--sup_strong (W is not used: no unlabeled images)'),
    )

    @classmethod
    def adapt_data(cls, data, settings):
        return data.with_all_labels() if settings.all_labels else data

    label_bias = debias.Support()  # no unlabeled images: nothing to estimate the class distribution from

    def views(self):
        return self.standard_views(labeled_strong=self.settings.sup_strong)[0], {}

    def loss(self, batch, step):
        del step
        logits = self.forward_views(batch, keys.X, keys.X_STRONG)
        labeled_views = [logits[keys.X]] + ([logits[keys.X_STRONG]] if self.settings.sup_strong else [])
        return fully_supervised_loss(batch[keys.LABEL], labeled_views, means=losses.Corrected(self.bias))


def fully_supervised_loss(labels, logits_x, means=None):
    """L = mean_l H(y, x) (nats); labels int (B,), logits_x (B, K) or a list of views of the labeled
    images whose cross-entropies are averaged per image (--sup_strong). Returns (L, {losses/xe: L})."""
    means = means or losses.Means()
    xe = means.labeled(losses.mean_over_views(losses.cross_entropy(labels, x) for x in losses.as_list(logits_x)),
                       labels)
    return xe, {keys.XE: xe}


if __name__ == '__main__':
    train.main(FullySupervised)
