#!/usr/bin/env python
"""FixMatch (Sohn et al., NeurIPS 2020).

Paper setting, CIFAR-10 with 40 labels, WRN-28-2, 2^20 steps:
  python fixmatch.py --dataset=cifar10.1@40-1 --train_dir=./experiments/fixmatch
(about 4 days with the original code on one GPU; measured times for this port are in the README.)
Small local run on a CPU (Fashion-MNIST, 40 labels; 13.5 minutes on 2 cores, 75.1% EMA test accuracy
against 53.1% for the same model on the labels alone, trained and printed by the same command):
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

Class-imbalanced add-ons (README, "Class-imbalanced add-ons"; the imbalanced protocol's targets
<base>_IMB_<gamma>_U<M1>_<gamma_u>):
  --darp   pseudo-labels and mask from the DARP-refined rows of the unlabeled set (libml/darp.py);
  --abc    an auxiliary class-balanced head on the pooled features, used for evaluation (libml/abc_head.py);
  --daso   pseudo-labels blended with the similarity to balanced feature prototypes (libml/daso.py);
  --crest=G [--crest_plus]  G generations, each adding its class-rebalanced pseudo-labels (libml/crest.py).
  python fixmatch.py --dataset=cifar10_IMB_100_U3000_100.1@1500-1 --uratio=2 --lr_schedule=constant --abc

The ablations of the reference's ablation/ folder (ab_fixmatch_*.py), as flags:
  --sharpen=mask --T=t     hard label, mask on max softmax(weak / t) >= tau (ab_fixmatch_sharpen)
  --sharpen=target --T=t   soft target softmax(weak / t), mask on max p_w >= tau (a tau <= 1/K such
                           as --confidence=1e-6: no mask) (ab_fixmatch_sharpen_conditional_consistency)
  --teacher=ema            pseudo-labels from the EMA weights in inference mode; the weak views leave
                           the trained model's pass (ab_fixmatch_meanteacher); --teacher=ema_train:
                           the EMA weights in training mode on the weak batch (..._meanteacher_train)
  --nstrong=K              K strong views per image, each trained on the weak view's pseudo-label
                           (augmentation anchoring; the term averages over the K views)
  --augment=d.cta.cta      pseudo-labels from a strong view (ab_fixmatch_anchoring --anchoring=strong.strong)
  --augment=d.d.ctap       strong views without the final cutout (ab_fixmatch_nocutout)
  --optimizer=adam --lr=0.002, --momentum=m --nonesterov, --lr_schedule=linear --lr_end=0.02
                           (ab_fixmatch_adam, ab_fixmatch_momentum, ab_fixmatch_linearlr)
Batch norm as the reference: every view of the step goes through ONE training-mode forward pass.
Pure loss, for any training loop: fixmatch_loss(labels, logits_x, logits_weak, logits_strong, confidence, wu).
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
from libml.params import COMMON  # noqa: E402
from libml.settings import Param, above, at_least, in_range  # noqa: E402


class FixMatch(train.Algorithm):
    params = dict(
        # --local (the quick start): mu 3 and tau 0.8 give more accuracy per CPU minute; the paper's are 7 and 0.95
        uratio=Param(7, 'Unlabeled images per labeled image in a step (mu).', check=at_least(1), local=3),
        confidence=Param(0.95, 'Confidence threshold tau of the pseudo-labels.', check=in_range(0, 1, low_open=True),
                         local=0.8),
        train_kimg=COMMON['train_kimg'].with_local(192.),
        report_kimg=COMMON['report_kimg'].with_local(8.),
        wu=Param(1.0, 'Weight of the unlabeled term (0 = complete-case baseline).', check=at_least(0)),
        augment=views.augment_param('d.d.cta', 'Augmentation L.W.S of the labeled, weak and strong views'),
        sup_strong=Param(False, 'DeFixMatch supervised term: mean of the cross-entropies of a weak and a strong '
                         'view of each labeled image.'),
        nstrong=Param(1, 'Strong views of each unlabeled image, each trained on the weak view\'s pseudo-label '
                      '(augmentation anchoring); the unlabeled term averages over them.', check=at_least(1)),
        sharpen=Param('none', 'Pseudo-label ablations with q = softmax(weak / T): none (FixMatch), mask (hard label, '
                      'mask max q >= tau: ab_fixmatch_sharpen), target (soft target q, mask max p >= tau: '
                      'ab_fixmatch_sharpen_conditional_consistency).', choices=losses.SHARPEN),
        T=Param(1.0, 'Temperature of --sharpen (T < 1 sharpens).', check=above(0)),
        teacher=Param('model', 'Pseudo-labels of the weak views from: model (FixMatch: the trained model, same pass), '
                      'ema (EMA weights, inference mode: ab_fixmatch_meanteacher), ema_train (EMA weights, training '
                      'mode on the weak batch alone: ab_fixmatch_meanteacher_train).',
                      choices=('model', 'ema', 'ema_train')),
        momentum=Param(0.9, 'Momentum of --optimizer=sgd (ab_fixmatch_momentum).',
                       check=in_range(0, 1, high_open=True)),
        nesterov=Param(True, 'Nesterov momentum for --optimizer=sgd (ab_fixmatch_momentum --nonesterov).'),
        lr_end=Param(0.0, 'Learning rate at the end of --lr_schedule=linear: lr + (lr_end - lr) t/T '
                     '(ab_fixmatch_linearlr: 0.02).', check=at_least(0)),
    )
    label_bias = debias.Support(threshold=True, labeled_term=True, unlabeled_term=True, darp=True, abc=True)

    def __init__(self, trainer):
        super().__init__(trainer)
        s = self.settings
        if s.lr_end and s.lr_schedule != 'linear':
            raise utils.UserError(f'--lr_end={s.lr_end:g} is the end of the linear schedule; add --lr_schedule=linear')
        if s.abc and s.teacher != 'model':
            raise utils.UserError(f'--abc trains its head on the weak views of the trained pass, which --teacher='
                                  f'{s.teacher} leaves out; use --teacher=model')
        if s.nstrong < 1:
            raise utils.UserError(f'--nstrong={s.nstrong}: at least one strong view is needed; use --nstrong=1 or more')

    def strong_names(self, first):
        """The view names of the --nstrong strong views: first, first1, first2, ..."""
        return [first] + [f'{first}{k}' for k in range(1, self.settings.nstrong)]

    def views(self):
        labeled_strong = self.settings.sup_strong or self.bias.needs_labeled_term
        labeled, unlabeled = self.standard_views(labeled_strong=labeled_strong)
        unlabeled.update({name: unlabeled[keys.U_STRONG] for name in self.strong_names(keys.U_STRONG)})
        if self.bias.needs_labeled_term:
            labeled.update({name: labeled[keys.X_STRONG] for name in self.strong_names(keys.X_STRONG)})
        return labeled, unlabeled

    def loss(self, batch, step):
        s = self.settings
        x_strong, u_strong = self.strong_names(keys.X_STRONG), self.strong_names(keys.U_STRONG)
        weak = [keys.U_WEAK] if s.teacher == 'model' else []  # an EMA teacher labels the weak views itself
        logits, features = self.forward_views(batch, keys.X, *x_strong, *weak, *u_strong, features=True)
        teacher_x = logits[keys.X]
        if s.teacher != 'model':
            training = s.teacher == 'ema_train'
            logits[keys.U_WEAK] = self.forward_ema(batch[keys.U_WEAK], training=training)
            if self.bias.needs_labeled_term:
                teacher_x = self.forward_ema(batch[keys.X], training=training)
        self.bias.update(logits[keys.U_WEAK])
        thresholds = self.bias.thresholds(s.confidence)
        h_labeled = fixmatch_term(teacher_x, [logits[name] for name in x_strong], thresholds, s.sharpen, s.T)[0] \
            if self.bias.needs_labeled_term else None
        weak = self.bias.pseudo_logits(batch.get(keys.U_INDEX), logits[keys.U_WEAK], step)  # --darp: refined rows
        labeled_views = [logits[keys.X]] + ([logits[keys.X_STRONG]] if s.sup_strong else [])
        loss, logs = fixmatch_loss(batch[keys.LABEL], labeled_views, weak, [logits[name] for name in u_strong],
                                   thresholds, s.wu, s.sharpen, s.T, means=losses.Corrected(self.bias, h_labeled))
        balanced, balanced_logs = self.balanced_head_loss(features, batch, step)  # --abc (0 without)
        return loss + balanced, {**logs, **balanced_logs}


def fixmatch_term(logits_weak, logits_strong, confidence, sharpen='none', T=1.0):
    """(1(max p_w >= tau) H(argmax p_w, strong) per image (uB,), averaged over the strong views of
    `logits_strong` (one (uB, K) tensor or a list), mask (uB,) in {0, 1}); losses.pseudo_label_term."""
    terms = [losses.pseudo_label_term(logits_weak, logits, confidence, sharpen, T) for logits in losses.as_list(
        logits_strong)]
    return losses.mean_over_views(h for h, _ in terms), terms[0][1]


def fixmatch_loss(labels, logits_x, logits_weak, logits_strong, confidence=0.95, wu=1.0, sharpen='none', T=1.0,
                  means=None):
    """FixMatch's loss of one batch from logits, p_w = stop_gradient(softmax(logits_weak)):
      L = mean_l H(y, x) + wu * mean_u[1(max p_w >= tau) H(argmax p_w, strong)]   (nats).
    labels int (B,); logits_x (B, K), or a list of labeled views whose H are averaged (--sup_strong);
    logits_weak, logits_strong (uB, K) (logits_strong may be a list of strong views: the term averages
    them); confidence tau a scalar or per-class (K,); sharpen, T the ablations of losses.pseudo_label_term;
    means: losses.Means(wu) by default. Returns (L, {losses/xe, losses/xeu, monitors/mask})."""
    means = means or losses.Means(wu)
    xe = means.labeled(losses.mean_over_views(losses.cross_entropy(labels, x) for x in losses.as_list(logits_x)),
                       labels)
    h_unlabeled, mask = fixmatch_term(logits_weak, logits_strong, confidence, sharpen, T)
    unlabeled, xeu = means.unlabeled(h_unlabeled, labels)
    return xe + unlabeled, {keys.XE: xe, keys.XEU: xeu, keys.MASK: tf.reduce_mean(mask)}


if __name__ == '__main__':
    train.main(FixMatch)
