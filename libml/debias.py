"""Label-bias corrections as add-ons any algorithm can take: DeSSL, the MNAR moment estimate, CAP,
CAI and CADR; and the flags and checks of the class-imbalanced add-ons DARP (libml/darp.py), ABC
(libml/abc_head.py) and CReST (libml/crest.py; CReST+ aligns the pseudo-labels through `pseudo_logits`).

An algorithm declares what it has (`Support`): a confidence threshold (CAI applies), a plain
per-sample labeled cross-entropy (CAP applies) and a per-sample unlabeled term H that can also be
computed on the labeled images (DeSSL, MNAR and CADR subtract it). `LabelBias` holds the state
(p_hat) and computes the corrected terms; with no correction switched on it is the plain
  mean_l H(y, x) + wu * mean_u H(u).

  p_hat    EMA (0.99, from uniform) of the mean weak-view softmax of the unlabeled batch;
  q_k      = n_lk / (n p_hat_k), the estimated P(labeled | y = k), clipped to [1e-3, 1];
  --CAI    per-class thresholds tau_k = tau * (p_hat_k / max_j p_hat_j)^beta (Hu et al., ICLR 2022);
  --CAP    labeled image i weighted by w_i = (1/q_y_i) / mean_batch(1/q_y): released form
           mean_l[H - log w_i] (gradient unweighted, as the released code), or ipw mean_l[w_i H];
  --CADR   subtracts wu * mean_l[w_i * H_i] (H on the labeled images, CAI-masked; needs --CAP);
  --debiased (DeSSL, Schmutz et al., ICLR 2023) subtracts wu * mean_l H;
  --mnar_estimate=moment (Sportisse et al., ICML 2023): labeled term (n_l/n) mean_l[CE/phi_y] and
           subtracts wu * n_l/(n - n_l) * mean_l[H (1 - phi_y)/phi_y], phi = q.
"""
import dataclasses

import numpy as np
import tensorflow as tf

from libml import abc_head
from libml import crest as crest_lib
from libml import darp as darp_lib
from libml import daso as daso_lib
from libml import utils
from libml.settings import Param, at_least

MOMENTUM = 0.99                  # p_hat <- 0.99 p_hat + 0.01 mean_u softmax(weak view)
MIN_LABELING_PROBABILITY = 1e-3  # guards 1 / phi_k when p_hat_k grows past n_lk / n

PARAMS = dict(
    debiased=Param(False, 'DeSSL (Schmutz et al., ICLR 2023): also compute the unlabeled term(s) on the labeled images '
                   '(as if unlabeled) and subtract them (lambda = --wu); unbiased under labels missing at random.'),
    mnar_estimate=Param('none', 'Sportisse et al. (ICML 2023): estimate the per-class labeling probabilities '
                        'phi_k = n_lk / (n p_k) during training (moment) and train on the debiased risk they give.',
                        choices=('none', 'moment')),
    CAP=Param(False, 'CADR class-aware propensity: weight the labeled term by 1/q_y (see --cap_form).'),
    cap_form=Param('released', 'released: -log p(y|x) - log w (as the released code; gradient unweighted); '
                   'ipw: w * -log p(y|x).', choices=('released', 'ipw')),
    CAI=Param(False, 'CADR class-aware imputation: per-class thresholds tau*(p_hat_k/max p_hat)^beta.'),
    cai_beta=Param(0.5, 'Exponent beta of the CAI thresholds.', check=at_least(0)),
    CADR=Param(False, 'CADR doubly robust correction: subtract the CAP-weighted imputed term of the labeled batch '
               '(needs --CAP).'),
    **darp_lib.PARAMS,
    **abc_head.PARAMS,
    **daso_lib.PARAMS,
    **crest_lib.PARAMS,
)


@dataclasses.dataclass(frozen=True)
class Support:
    """What an algorithm offers the corrections: a confidence threshold, a plain per-sample labeled
    cross-entropy, a per-sample unlabeled term computable on the labeled images."""
    threshold: bool = False
    labeled_term: bool = False
    unlabeled_term: bool = False
    darp: bool = False  # hard pseudo-labels and a confidence mask from the weak view's p, which DARP may replace
    abc: bool = False   # a labeled view and weak and strong unlabeled views in one pass, whose features ABC takes

    @property
    def daso(self) -> bool:
        """DASO needs both: the pseudo-label hook DARP uses and the features of one pass ABC takes."""
        return self.darp and self.abc


def check(settings, support: Support, algorithm: str) -> None:
    """UserError for a correction the algorithm cannot take or a combination that makes no sense."""
    s = settings
    usual = 'fixmatch.py, uda.py, pseudo_label.py'  # algorithms that take the correction, for the message
    needs = [('CAI', s.CAI, support.threshold, 'a confidence threshold', usual),
             ('CAP', s.CAP, support.labeled_term, 'a plain labeled cross-entropy', usual),
             ('CADR', s.CADR, support.threshold and support.labeled_term and support.unlabeled_term,
              'a thresholded unlabeled term and a plain labeled cross-entropy', usual),
             ('debiased', s.debiased, support.unlabeled_term, 'a per-image unlabeled term', usual),
             ('mnar_estimate', s.mnar_estimate != 'none', support.labeled_term and support.unlabeled_term,
              'a plain labeled cross-entropy and a per-image unlabeled term', usual),
             ('darp', s.get('darp'), support.darp, 'pseudo-labels of a confidence threshold taken from the weak '
              'view\'s prediction', 'fixmatch.py, flexmatch.py, pseudo_label.py'),
             ('abc', s.get('abc'), support.abc, 'a labeled view and weak and strong unlabeled views in one forward '
              'pass', 'fixmatch.py, flexmatch.py'),
             ('daso', s.get('daso'), support.daso, 'hard pseudo-labels from the weak view\'s prediction and weak and '
              'strong unlabeled views in one forward pass', 'fixmatch.py, flexmatch.py'),
             ('crest', s.get('crest'), support.threshold, 'pseudo-labels of a confidence threshold to self-train '
              'on', 'fixmatch.py, flexmatch.py, uda.py, pseudo_label.py'),
             ('crest_plus', s.get('crest_plus'), support.darp, 'pseudo-labels of a confidence threshold taken from '
              'the weak view\'s prediction', 'fixmatch.py, flexmatch.py, uda.py, pseudo_label.py')]
    for name, wanted, available, what, examples in needs:
        if wanted and not available:
            raise utils.UserError(f'--{name} needs {what}, which {algorithm} does not have; use it with an algorithm '
                                  f'that has (e.g. {examples})')
    darp_lib.check(s)
    daso_lib.check(s)
    crest_lib.check(s)
    if s.CADR and not s.CAP:
        raise utils.UserError('--CADR needs --CAP (its correction is weighted by the propensities); add --CAP')
    if s.CADR and (s.debiased or s.mnar_estimate != 'none'):
        raise utils.UserError('--CADR already subtracts the weighted labeled term; drop --debiased/--mnar_estimate')
    if s.CAP and s.mnar_estimate != 'none':
        raise utils.UserError('--CAP and --mnar_estimate both reweight the labeled term; choose one')


class LabelBias:
    """The corrections of one run. `build()` (inside the strategy scope) creates p_hat when a
    correction needs it; the algorithm calls `update` with its weak-view unlabeled logits first."""

    def __init__(self, settings, labeled_labels: np.ndarray, n_total: int, nclass: int, n_unlabeled: int = 0,
                 kimg_to_steps=None, alignment=None):
        self.settings = settings
        self.nclass = nclass
        self.labeled_counts = np.bincount(np.asarray(labeled_labels, np.int64), minlength=nclass)[:nclass]
        self.n_labeled = float(len(labeled_labels))
        self.n_total = float(n_total)
        self.p_hat = None
        self.darp = None
        self.daso = None  # --daso: the trainer's daso.Daso (it needs the model), set after build
        self.alignment = alignment  # CReST+ (libml/crest.py)
        if settings.get('darp'):
            self.darp = darp_lib.Darp(settings, self.labeled_counts, n_unlabeled, nclass,
                                      darp_lib.warmup_steps(settings, kimg_to_steps))

    @property
    def mnar(self) -> bool:
        return self.settings.get('mnar_estimate', 'none') != 'none'

    @property
    def tracks(self) -> bool:
        """Whether p_hat, the moving average of the predicted class distribution, is kept."""
        s = self.settings
        return bool(s.get('CAP') or s.get('CAI') or s.get('CADR') or self.mnar)

    @property
    def needs_labeled_term(self) -> bool:
        """Whether the unlabeled term must also be computed on the labeled images."""
        return bool(self.settings.get('debiased') or self.settings.get('CADR') or self.mnar)

    def build(self) -> dict:
        """Creates p_hat when tracked and the DARP state; returns the trackables to checkpoint."""
        state = {**(self.darp.build() if self.darp else {}), **(self.alignment.build() if self.alignment else {})}
        if not self.tracks:
            return state
        self.p_hat = tf.Variable(tf.fill([self.nclass], 1.0 / self.nclass), trainable=False, name='p_hat',
                                 aggregation=tf.VariableAggregation.ONLY_FIRST_REPLICA)
        return {'p_hat': self.p_hat, **state}

    def pseudo_logits(self, index: tf.Tensor, logits: tf.Tensor, step: tf.Tensor) -> tf.Tensor:
        """The weak-view logits to pseudo-label the unlabeled images at positions `index` with: `logits`, with
        --darp the log of their DARP rows (libml/darp.py), with --daso the logits relabeled to DASO's
        pseudo-labels (libml/daso.py), with --crest_plus the log of the aligned p (libml/crest.py); the state
        is updated."""
        if self.daso is not None:
            return self.daso.pseudo_logits(logits, step)
        if self.darp is not None:
            return tf.cast(tf.math.log(self.darp.pseudo_probs(index, tf.nn.softmax(logits), step)), logits.dtype)
        if self.alignment is not None:
            return tf.cast(tf.math.log(self.alignment(tf.nn.softmax(logits))), logits.dtype)
        return logits

    def update(self, logits: tf.Tensor) -> None:
        """p_hat <- 0.99 p_hat + 0.01 mean softmax(logits), the mean over the global batch (all replicas).
        A no-op when p_hat is not tracked."""
        if self.p_hat is not None:
            self.update_probs(tf.nn.softmax(logits))

    def update_probs(self, probs: tf.Tensor) -> None:
        """As `update`, from class probabilities (N, K)."""
        if self.p_hat is None:
            return
        local = tf.reduce_mean(tf.stop_gradient(probs), axis=0)
        mean = tf.distribute.get_replica_context().all_reduce('MEAN', local)
        self.p_hat.assign(MOMENTUM * self.p_hat + (1 - MOMENTUM) * mean)

    def labeling_probabilities(self) -> tf.Tensor:
        """phi_k = P(labeled | y = k) = n_lk / (n p_hat_k) (moment estimate), clipped to [1e-3, 1]."""
        counts = tf.constant(self.labeled_counts, tf.float32)
        phi = counts / (self.n_total * tf.maximum(self.p_hat, 1e-12))
        return tf.clip_by_value(phi, MIN_LABELING_PROBABILITY, 1.0)

    def thresholds(self, tau: float):
        """tau, or with --CAI the per-class tau_k = tau * (p_hat_k / max_j p_hat_j)^beta."""
        if not self.settings.get('CAI'):
            return tau
        return tau * tf.pow(self.p_hat / tf.reduce_max(self.p_hat), self.settings.cai_beta)

    def propensity_weights(self, labels: tf.Tensor) -> tf.Tensor:
        """w_i = (1 / q_y_i) / mean_batch(1 / q_y); mean 1 over the batch; no gradient."""
        inverse = 1 / tf.gather(self.labeling_probabilities(), labels)
        return tf.stop_gradient(inverse / tf.reduce_mean(inverse))

    def labeled(self, per_sample: tf.Tensor, labels: tf.Tensor) -> tf.Tensor:
        """The labeled term from per-sample cross-entropies: mean, CAP (released or ipw), or MNAR."""
        s = self.settings
        if s.get('CAP'):
            weights = self.propensity_weights(labels)
            if s.cap_form == 'ipw':
                return tf.reduce_mean(weights * per_sample)
            return tf.reduce_mean(per_sample - tf.math.log(weights))
        if self.mnar:
            phi = tf.gather(self.labeling_probabilities(), labels)
            return self.n_labeled / self.n_total * tf.reduce_mean(per_sample / phi)
        return tf.reduce_mean(per_sample)

    def unlabeled(self, unlabeled_term: tf.Tensor, labeled_term: tf.Tensor = None, labels: tf.Tensor = None):
        """wu * mean_u H(u) minus the correction on the labeled images (DeSSL, MNAR or CADR).

        unlabeled_term, labeled_term: per-sample H on the unlabeled and the labeled images; labels:
        the labeled images' classes. Returns (loss, mean_u H)."""
        s = self.settings
        mean_u = tf.reduce_mean(unlabeled_term)
        loss = s.wu * mean_u
        if self.mnar:
            phi = tf.gather(self.labeling_probabilities(), labels)
            ratio = self.n_labeled / (self.n_total - self.n_labeled)
            loss -= s.wu * ratio * tf.reduce_mean(labeled_term * (1 - phi) / phi)
        elif s.get('debiased'):
            loss -= s.wu * tf.reduce_mean(labeled_term)
        if s.get('CADR'):
            loss -= s.wu * tf.reduce_mean(self.propensity_weights(labels) * labeled_term)
        return loss, mean_u

    def report_scalars(self, true_label_probs=None) -> dict:
        """TensorBoard scalars: p_hat and, with --mnar_estimate, the estimated vs true phi; with --daso its rho."""
        out = self.daso.report_scalars() if self.daso is not None else {}
        if self.p_hat is None:
            return out
        out.update({f'class_distribution/{k:03d}': float(v) for k, v in enumerate(self.p_hat.numpy())})
        if self.mnar:
            true = true_label_probs or [None] * self.nclass
            for k, (estimate, truth) in enumerate(zip(self.labeling_probabilities().numpy(), true)):
                out[f'mnar/phi_estimate/{k:03d}'] = float(estimate)
                if truth is not None:
                    out[f'mnar/phi_true/{k:03d}'] = float(truth)
        return out
