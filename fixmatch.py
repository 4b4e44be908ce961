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

DeFixMatch (Schmutz et al., ICLR 2023), unbiased under MCAR labels for any lambda = --wu:
  --debiased    also computes the unlabeled term H on the labeled images (pseudo-labels from the
                model, not the true labels) and subtracts it: L - wu * mean_l H(x);
  --sup_strong  the supervised term averages H(y, weak(x)) and H(y, strong(x));
  python fixmatch.py --dataset=cifar10.1@4000-1 --debiased --sup_strong --wu=0.5

CADR (Hu et al., ICLR 2022), for labels missing not at random; p_hat = EMA (0.99, from uniform) of
the mean weak-view softmax of the unlabeled batch, q_k = n_lk / (n p_hat_k) the estimated
probability that an image of class k is labeled, w_i = (1/q_y_i) / mean_batch(1/q_y):
  --CAI   class-aware thresholds tau_k = tau * (p_hat_k / max_j p_hat_j)^beta (beta = --cai_beta);
  --CAP   class-aware propensity on the labeled term: --cap_form=released (default) adds it in log
          space, mean_l[H - log w_i], as the released code (the gradient stays unweighted);
          --cap_form=ipw multiplies, mean_l[w_i H] (true inverse-propensity weighting);
  --CADR  doubly robust (needs --CAP): subtracts wu * mean_l[w_i 1(p >= tau_k) H(argmax p, strong(x))],
          the imputed term on the labeled batch weighted like CAP.
  python fixmatch.py --dataset=cifar10_LT_20.1@20-1 --CAP --CAI --CADR --train_kimg=8192
--mnar_estimate=moment (Sportisse et al., ICML 2023) trains on the debiased risk
  (n_l/n) mean_l[H/phi_y] + wu (mean_u H - n_l/(n - n_l) mean_l[H (1 - phi_y)/phi_y]),  phi = q.
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
from libml.settings import Param  # noqa: E402


class FixMatch(train.Algorithm):
    params = dict(
        uratio=Param(7, 'Unlabeled images per labeled image in a step (mu).'),
        confidence=Param(0.95, 'Confidence threshold tau of the pseudo-labels.'),
        wu=Param(1.0, 'Weight of the unlabeled term (0 = complete-case baseline).'),
        augment=views.augment_param('d.d.cta', 'Augmentation L.W.S of the labeled, weak and strong views'),
        sup_strong=Param(False, 'DeFixMatch supervised term: mean of the cross-entropies of a weak and a strong '
                         'view of each labeled image.'),
    )
    label_bias = debias.Support(threshold=True, labeled_term=True, unlabeled_term=True)

    def views(self):
        return self.standard_views(labeled_strong=self.settings.sup_strong or self.bias.needs_labeled_term)

    def loss(self, batch, step):
        s = self.settings
        logits = self.forward_views(batch, keys.X, keys.X_STRONG, keys.U_WEAK, keys.U_STRONG)
        self.bias.update(logits[keys.U_WEAK])
        thresholds = self.bias.thresholds(s.confidence)
        xe = losses.cross_entropy(batch[keys.LABEL], logits[keys.X])
        if s.sup_strong:
            xe = (xe + losses.cross_entropy(batch[keys.LABEL], logits[keys.X_STRONG])) / 2
        xe = self.bias.labeled(xe, batch[keys.LABEL])
        h_unlabeled, mask = losses.pseudo_label_term(logits[keys.U_WEAK], logits[keys.U_STRONG], thresholds)
        h_labeled = losses.pseudo_label_term(logits[keys.X], logits[keys.X_STRONG], thresholds)[0] \
            if self.bias.needs_labeled_term else None
        unlabeled, xeu = self.bias.unlabeled(h_unlabeled, h_labeled, batch[keys.LABEL])
        return xe + unlabeled, {keys.XE: xe, keys.XEU: xeu, keys.MASK: tf.reduce_mean(mask)}


if __name__ == '__main__':
    train.main(FixMatch)
