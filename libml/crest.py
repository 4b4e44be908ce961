"""CReST and CReST+ (Wei et al., CVPR 2021): class-rebalancing self-training in generations, an add-on of the
threshold-based methods (--crest=G, --crest_plus; FixMatch, FlexMatch, UDA, Pseudo-Label, ...).

Generations g = 0 .. G-1 each train a NEW model (initialisation, EMA, optimizer, schedule and step from zero)
for --train_kimg / G. Generation g > 0 trains on the ORIGINAL labeled set plus the selection made after
generation g-1 (selections are recomputed each generation, not accumulated, as USB); the selected images stay
in the unlabeled set too. After generation g < G-1 its EMA model labels the whole unlabeled set (no
augmentation, inference mode) and, per predicted class c sorted by confidence (ties: lower position first),
the first
  k_c = int(n_c * (mu^(K-1-r_c))^(1/alpha))
images are selected with the pseudo-label c: n_c = unlabeled images predicted as c, mu = (1/gamma_hat)^(1/(K-1)),
gamma_hat = max / min labeled class count (the classes with labels), alpha = --crest_alpha, r_c = the rank of c
by labeled count (0 = most frequent; ties: lower class first).

CReST+ (--crest_plus): progressive distribution alignment of the weak-view p before the pseudo-label and
the mask (LabelBias.pseudo_logits):
  t_g = 1 - 0.5 g / (G-1)  (1 when G = 1);  p_target = SumNorm(pi_l^t_g), pi_l the original labeled proportions;
  p_model <- 0.999 p_model + 0.001 mean_batch p  (the first batch of the run sets it; later generations start
             from the previous generation's final p_model, as USB's hook lives across generations);
  p~ = SumNorm(p * (p_target + 1e-6) / (p_model + 1e-6)).

Files: generation g < G-1 trains in <run>/crest/gen_<g>/ (a run directory of its own); the last generation
trains in <run> itself, so the run's metrics, evaluate.py and export.py are the last generation's. The
selection after generation g is <run>/crest/selection_<g>.json (positions in the unlabeled set, pseudo-labels,
the counts, CReST+'s p_model), written atomically before the next generation starts; a resumed run starts at
the first generation without a selection file and resumes its checkpoint.
"""
import dataclasses
import os

import numpy as np
import tensorflow as tf

from libml import data as data_lib
from libml import losses
from libml import utils
from libml.settings import Param, above, at_least

FOLDER = 'crest'
ALIGN_MOMENTUM = 0.999
SMOOTHING = 1e-6
T_MIN = 0.5  # t of the last generation (USB's dist_align_t)

PARAMS = dict(
    crest=Param(0, 'CReST (Wei et al., CVPR 2021): number of self-training generations (0 = off); each trains a '
                'new model for --train_kimg / G on the labeled set plus the class-rebalanced pseudo-labels of the '
                'previous generation.', check=at_least(0)),
    crest_plus=Param(False, 'CReST+: progressive distribution alignment of the pseudo-labels toward the labeled '
                     'class distribution^t, t from 1 to 0.5 over the generations (needs --crest).'),
    crest_alpha=Param(3.0, 'CReST: sampling exponent alpha of the per-class selection rates (mu^(K-1-rank))^(1/alpha).',
                      check=above(0)),
)


def check(settings) -> None:
    """UserError for --crest_plus without --crest and the combinations CReST does not take."""
    s = settings
    if s.get('crest_plus') and not s.get('crest'):
        raise utils.UserError('--crest_plus aligns the pseudo-labels of CReST generations; add --crest=G '
                              '(e.g. --crest=6)')
    if not s.get('crest'):
        return
    for name, why in (('darp', 'both rebalance the pseudo-labels of a long tail'),
                      ('abc', 'both rebalance the long tail; CReST labels its selection with the main head, '
                       'not ABC\'s'),
                      ('daso', 'both rebalance the pseudo-labels of a long tail'),
                      ('debiased', 'DeSSL assumes labels missing at random, which the selected pseudo-labels are '
                       'not')):
        if s.get(name):
            raise utils.UserError(f'--crest does not combine with --{name} ({why}); drop one of them')
    if s.get('mnar_estimate', 'none') != 'none':
        raise utils.UserError('--crest does not combine with --mnar_estimate (its moment estimate counts the labeled '
                              'images among the training images, where the selected ones would count twice); drop '
                              'one of them')


# ---------------------------------------------------------------------------------------------
# The selection.

def frequency_ranks(labeled_counts) -> np.ndarray:
    """r_c: 0 for the class with the most labels, K-1 for the fewest (ties: the lower class first)."""
    counts = np.asarray(labeled_counts, np.int64)
    order = np.argsort(-counts, kind='stable')
    ranks = np.empty(len(counts), np.int64)
    ranks[order] = np.arange(len(counts))
    return ranks


def selection_rates(labeled_counts, alpha: float) -> np.ndarray:
    """(mu^(K-1-r_c))^(1/alpha) per class, mu = (1/gamma_hat)^(1/(K-1)), float64."""
    counts = np.asarray(labeled_counts, np.float64)
    k = len(counts)
    present = counts[counts > 0]
    if k < 2 or not len(present):
        return np.ones(k)
    mu = (present.min() / present.max()) ** (1 / (k - 1))
    return (mu ** (k - 1 - frequency_ranks(counts)).astype(np.float64)) ** (1 / alpha)


def selection_counts(predicted_counts, labeled_counts, alpha: float) -> np.ndarray:
    """k_c = int(n_c * rate_c): how many of the n_c images predicted as class c join the labeled set."""
    n = np.asarray(predicted_counts, np.float64)
    return np.floor(n * selection_rates(labeled_counts, alpha)).astype(np.int64)


def select(probs, labeled_counts, alpha: float):
    """(positions int64, pseudo-labels int64, k per class) of the selection from the class probabilities (N, K)
    of the unlabeled set: per predicted class, the k_c most confident images (ties: the lower position first),
    classes in order."""
    probs = np.asarray(probs)
    nclass = probs.shape[1]
    predicted, confidence = probs.argmax(1), probs.max(1)
    take = selection_counts(np.bincount(predicted, minlength=nclass), labeled_counts, alpha)
    positions, labels = [], []
    for c in range(nclass):
        members = np.flatnonzero(predicted == c)
        chosen = members[np.argsort(-confidence[members], kind='stable')][:take[c]]
        positions.append(chosen)
        labels.append(np.full(len(chosen), c))
    return (np.concatenate(positions).astype(np.int64), np.concatenate(labels).astype(np.int64), take)


# ---------------------------------------------------------------------------------------------
# CReST+'s progressive distribution alignment.

def alignment_exponent(generation: int, generations: int) -> float:
    """t_g = 1 - (1 - 0.5) g / (G-1); 1 when G = 1."""
    if generations <= 1:
        return 1.0
    return 1.0 - (1.0 - T_MIN) * generation / (generations - 1)


def progressive_target(proportions, t: float) -> np.ndarray:
    """SumNorm(pi_l^t) (float64)."""
    powered = np.asarray(proportions, np.float64) ** t
    return powered / powered.sum()


def align(probs, p_target, p_model):
    """SumNorm_rows(p * (p_target + 1e-6) / (p_model + 1e-6)): losses.smoothed_alignment."""
    return losses.smoothed_alignment(probs, p_target, p_model, SMOOTHING)


class Alignment:
    """CReST+'s p_model (checkpointed) and the alignment of the weak-view probabilities."""

    def __init__(self, proportions, t: float, p_model_start=None):
        self.target = tf.constant(progressive_target(proportions, t), tf.float32)
        self.start = None if p_model_start is None else np.asarray(p_model_start, np.float32)
        self.nclass = len(proportions)

    def build(self) -> dict:
        first = tf.VariableAggregation.ONLY_FIRST_REPLICA  # every replica computes the same new value
        start = self.start if self.start is not None else np.full(self.nclass, 1 / self.nclass, np.float32)
        self.p_model = tf.Variable(start, trainable=False, name='crest_p_model', aggregation=first)
        self.started = tf.Variable(int(self.start is not None), dtype=tf.int64, trainable=False,
                                   name='crest_started', aggregation=first)
        return dict(crest_p_model=self.p_model, crest_started=self.started)

    def __call__(self, probs):
        """Updates p_model with the global batch's mean p (the first batch of the run sets it) and returns p~."""
        probs = tf.cast(tf.stop_gradient(probs), tf.float32)
        mean = tf.distribute.get_replica_context().all_reduce('MEAN', tf.reduce_mean(probs, 0))
        self.p_model.assign(losses.first_batch_ema(self.p_model, self.started, mean, ALIGN_MOMENTUM))
        self.started.assign(1)
        return align(probs, self.target, self.p_model)


# ---------------------------------------------------------------------------------------------
# Generations and their files.

def selection_path(run_dir: str, generation: int) -> str:
    return os.path.join(run_dir, FOLDER, f'selection_{generation}.json')


def generation_dir(run_dir: str, generation: int, generations: int) -> str:
    """<run>/crest/gen_<g>/, the run directory itself for the last generation."""
    return run_dir if generation == generations - 1 else os.path.join(run_dir, FOLDER, f'gen_{generation}')


def read_selection(run_dir: str, generation: int) -> dict:
    path = selection_path(run_dir, generation)
    saved = utils.read_json(path, 'CReST selection')
    if not {'positions', 'labels', 'p_model'} <= saved.keys() or len(saved['positions']) != len(saved['labels']):
        raise utils.UserError(f'corrupt CReST selection {path}; delete it (generation {generation} labels the '
                              f'unlabeled set again when resumed)')
    return saved


@dataclasses.dataclass
class Generation:
    """Generation `index` of `count`, with the selection of the previous one (None for the first)."""
    index: int
    count: int
    settings: object
    selection: dict = None
    labeled_counts: np.ndarray = None  # of the original labeled set, set by training_data

    @property
    def last(self) -> bool:
        return self.index == self.count - 1

    def run_dir(self, top: str) -> str:
        return generation_dir(top, self.index, self.count)

    def training_data(self, data):
        """The data of this generation: the original labeled rows, then the selected unlabeled images."""
        self.labeled_counts = np.bincount(data.labeled.labels, minlength=data.nclass)[:data.nclass]
        if not isinstance(data.unlabeled, data_lib.Subset):
            raise utils.UserError(f'--crest labels the whole unlabeled set of {data.name} after each generation, '
                                  f'which needs its images in memory; use a machine with more memory')
        if not self.selection:
            return data
        try:
            return data.with_pseudo_labels(self.selection['positions'], self.selection['labels'])
        except ValueError as e:
            raise utils.UserError(f'corrupt CReST selection of generation {self.index - 1} ({e}); delete it: '
                                  f'the generation labels the unlabeled set again when resumed') from None

    def alignment(self):
        """CReST+'s Alignment (None without --crest_plus)."""
        if not self.settings.get('crest_plus'):
            return None
        start = self.selection['p_model'] if self.selection else None
        return Alignment(self.labeled_counts / self.labeled_counts.sum(), alignment_exponent(self.index, self.count),
                         start)


def first_generation(top: str, settings) -> Generation:
    """The generation to train (or resume): the first one without a selection file."""
    count = settings.crest
    index = 0
    while index < count - 1 and os.path.exists(selection_path(top, index)):
        index += 1
    return Generation(index, count, settings, read_selection(top, index - 1) if index else None)


def unlabeled_probs(trainer) -> np.ndarray:
    """Class probabilities (N_u, K) of the EMA model (raw without EMA), inference mode, no augmentation."""
    reporter = trainer.reporter
    predict = reporter.predict_ema if trainer.ema else reporter.predict_raw
    out = [tf.nn.softmax(tf.cast(predict(x), tf.float32)).numpy()
           for x, _ in trainer.data.eval_dataset('unlabeled', trainer.settings.eval_batch)]
    return np.concatenate(out)


def next_generation(trainer, generation: Generation, top: str) -> Generation:
    """After `generation` trained: labels the unlabeled set, selects, writes the selection file (chief) and
    returns the next generation."""
    positions, labels, take = select(unlabeled_probs(trainer), generation.labeled_counts, trainer.settings.crest_alpha)
    alignment = trainer.bias.alignment
    selection = dict(generation=generation.index, positions=positions.tolist(), labels=labels.tolist(),
                     counts=take.tolist(),
                     p_model=alignment.p_model.numpy().astype(float).tolist() if alignment else None)
    if trainer.is_chief:
        utils.write_json(selection_path(top, generation.index), selection)
    return Generation(generation.index + 1, generation.count, generation.settings, selection)
