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
        CAP=Param(False, 'CADR class-aware propensity: weight the labeled term by 1/q_y (see --cap_form).'),
        CAI=Param(False, 'CADR class-aware imputation: per-class thresholds tau*(p_hat_k/max p_hat)^beta.'),
        CADR=Param(False, 'CADR doubly robust correction: subtract the CAP-weighted imputed term of the labeled '
                   'batch (needs --CAP).'),
        cap_form=Param('released', 'released: -log p(y|x) - log w (as the released code; gradient unweighted); '
                       'ipw: w * -log p(y|x).', choices=('released', 'ipw')),
        cai_beta=Param(0.5, 'Exponent beta of the CAI thresholds.'),
        debiased=train.DEBIASED,
        mnar_estimate=train.MNAR_ESTIMATE,
    )

    def __init__(self, trainer):
        super().__init__(trainer)
        s = self.settings
        if s.CADR and not s.CAP:
            raise utils.UserError('--CADR needs --CAP (its correction is weighted by the propensities); add --CAP')
        if s.CADR and (s.debiased or s.mnar_estimate != 'none'):
            raise utils.UserError('--CADR already subtracts the weighted labeled term; drop --debiased/--mnar_estimate')
        if s.CAP and s.mnar_estimate != 'none':
            raise utils.UserError('--CAP and --mnar_estimate both reweight the labeled term; choose one')

    def tracks_class_distribution(self):
        s = self.settings
        return s.CAP or s.CAI or s.CADR or super().tracks_class_distribution()

    def labeled_strong_view(self):
        s = self.settings
        return s.debiased or s.sup_strong or s.CADR or s.mnar_estimate != 'none'

    def thresholds(self, p_hat):
        """tau, or with --CAI the per-class tau_k = tau * (p_hat_k / max_j p_hat_j)^beta."""
        tau = self.settings.confidence
        if not self.settings.CAI:
            return tau
        return tau * tf.pow(p_hat / tf.reduce_max(p_hat), self.settings.cai_beta)

    def propensity_weights(self, labels):
        """w_i = (1 / q_y_i) / mean_batch(1 / q_y), q = labeling_probabilities(); mean 1 over the batch."""
        inverse = 1 / tf.gather(self.labeling_probabilities(), labels)
        return tf.stop_gradient(inverse / tf.reduce_mean(inverse))

    def labeled_term(self, per_sample, labels):
        """The supervised term: plain mean, CAP-weighted (released or ipw form), or the MNAR risk."""
        if not self.settings.CAP:
            return self.supervised_loss(per_sample, labels)
        weights = self.propensity_weights(labels)
        if self.settings.cap_form == 'ipw':
            return tf.reduce_mean(weights * per_sample)
        return tf.reduce_mean(per_sample - tf.math.log(weights))

    def views(self):
        labeled, weak, strong = views.parse_augment(self.settings.augment)
        make = self.trainer.view_fn
        labeled_views = {'x': make(labeled)}
        if self.labeled_strong_view():
            labeled_views['x_strong'] = make(strong)
        return labeled_views, {'u_weak': make(weak), 'u_strong': make(strong)}

    def loss(self, batch, step):
        s = self.settings
        labels = batch['label']
        strong_labeled = self.labeled_strong_view()
        parts = [batch['x']] + ([batch['x_strong']] if strong_labeled else []) + [batch['u_weak'], batch['u_strong']]
        logits = self.forward(*parts)
        logits_x, logits_weak, logits_strong = logits[0], logits[-2], logits[-1]
        p_hat = self.update_class_distribution(logits_weak) if self.tracks_class_distribution() else None
        thresholds = self.thresholds(p_hat)
        xe = losses.cross_entropy(labels, logits_x)
        if s.sup_strong:
            xe = (xe + losses.cross_entropy(labels, logits[1])) / 2
        xe = self.labeled_term(xe, labels)
        h_unlabeled, mask = losses.pseudo_label_term(logits_weak, logits_strong, thresholds)
        h_labeled = losses.pseudo_label_term(logits_x, logits[1], thresholds)[0] if strong_labeled else None
        unlabeled, xeu = self.unlabeled_loss(h_unlabeled, h_labeled, labels)
        if s.CADR:
            unlabeled -= s.wu * tf.reduce_mean(self.propensity_weights(labels) * h_labeled)
        return xe + unlabeled, {'losses/xe': xe, 'losses/xeu': xeu, 'monitors/mask': tf.reduce_mean(mask)}


if __name__ == '__main__':
    train.main(FixMatch)
