"""DARP (Kim et al., NeurIPS 2020): distribution-aligning refinement of pseudo-labels, an add-on of the
threshold-based methods (--darp; FixMatch, FlexMatch, UDA, Pseudo-Label).

State (checkpointed), indexed by the unlabeled image's position n in the unlabeled set:
  pseudo_orig[N_u, K]    the last weak-view softmax p of image n (1/K until it is seen);
  pseudo_refine[N_u, K]  the last refinement of pseudo_orig (1/K until the first one).
Target column sums t (sum N_u): --darp_target=labeled: the labeled class proportions * N_u; estimate: the
mean row of pseudo_orig * N_u (the model's own estimate of the unlabeled class distribution).
Each step: pseudo_orig[batch] <- p (the whole global batch, every replica). From step W (the warm-up,
--darp_warmup_kimg) on, at steps W, W + E, W + 2E, ... (E = --darp_every) pseudo_refine <- refine(pseudo_orig, t)
BEFORE the batch reads it; from step W on the batch's rows of pseudo_refine replace p: pseudo-label
argmax, mask max >= tau (the refined confidence, as the original DARP).

refine(P, t):
  selection  per class i with n_i = int(2 t_i): S[n, i] = 1 for the n_i rows with the largest P[n, i];
             w_i = (t_i + 1e-6) / (sum_n S[n, i] P[n, i] + 1e-6); A = SumNorm_rows(P * S * w + 1e-6);
  weights    H_n = entropy of row n of A (row weight 1/H_n);
  scaling    M[n, i] = A[n, i] x_n exp(-y_i H_n), y = 0 at first; 10 passes of:
               rows     x_n = 1 / sum_i A[n, i] exp(-y_i H_n)                 (rows of M sum to one)
               columns  per class, Newton on y_i (from the previous y_i; at most 30 iterations, it stops
                        once a step is below 0.1) for sum_n A[n, i] x_n exp(-y_i H_n) = t_i
             then the rows once more; returns M (rows sum to one; columns near t).
  A column's scaling acts through 1/H_n = the row weight: confident rows (small entropy) hardly move.
"""
import tensorflow as tf

from libml import utils
from libml.settings import Param, at_least

SMOOTHING = 1e-6
PASSES = 10
NEWTON_ITERATIONS = 30
NEWTON_TOLERANCE = 0.1
USB_WARMUP = 200 / 256  # USB: refinement after 200 of 256 "epochs"

PARAMS = dict(
    darp=Param(False, 'DARP (Kim et al., NeurIPS 2020): pseudo-labels from the rows of the weak-view predictions of '
               'the whole unlabeled set, refined to the target class distribution (threshold-based methods).'),
    darp_target=Param('labeled', 'DARP target distribution of the unlabeled set: labeled (the labeled class '
                      'proportions) or estimate (the mean stored prediction of the unlabeled set).',
                      choices=('labeled', 'estimate')),
    darp_warmup_kimg=Param(-1.0, 'DARP: training (kimg) before the first refinement; -1 = 200/256 of --train_kimg '
                           '(USB: 200 of 256 epochs).', check=at_least(-1)),
    darp_every=Param(10, 'DARP: steps between refinements.', check=at_least(1)),
)


def check(settings) -> None:
    """UserError for a DARP setting outside its domain."""
    w = settings.get('darp_warmup_kimg', -1)
    if -1 < w < 0:
        raise utils.UserError(f'--darp_warmup_kimg={w:g}: give a duration >= 0, or -1 for 200/256 of --train_kimg')


def warmup_steps(settings, kimg_to_steps) -> int:
    """The step of the first refinement."""
    kimg = settings.darp_warmup_kimg
    return kimg_to_steps(settings.train_kimg * USB_WARMUP if kimg < 0 else kimg)


def sum_norm(x, axis=1):
    return x / tf.reduce_sum(x, axis, keepdims=True)


def top_selection(probs, counts):
    """S (N, K) float: S[n, i] = 1 for the counts[i] rows with the largest probs[:, i] (ties: the lower row)."""
    n = tf.shape(probs)[0]
    order = tf.argsort(-probs, axis=0, stable=True)  # order[r, i]: the row of rank r in column i
    ranks = tf.argsort(order, axis=0, stable=True)   # ranks[n, i]: the rank of row n in column i
    return tf.cast(ranks < tf.minimum(tf.cast(counts, tf.int32), n)[None, :], probs.dtype)


def selected_start(probs, target):
    """A = SumNorm_rows(P * S * w + 1e-6), S the top-int(2 t_i) selection, w_i = (t_i + 1e-6) / (sum S P + 1e-6)."""
    selection = top_selection(probs, tf.cast(2 * target, tf.int32))
    weights = (target + SMOOTHING) / (tf.reduce_sum(probs * selection, 0) + SMOOTHING)
    return sum_norm(probs * selection * weights[None, :] + SMOOTHING)


def newton_columns(a, entropy, target, y, iterations=NEWTON_ITERATIONS, tolerance=NEWTON_TOLERANCE):
    """y (K,) solving sum_n a[n, i] exp(-y_i H_n) = t_i per class by Newton from `y`: at most `iterations`
    steps; a class stops after its first step below `tolerance` (that step applied)."""
    h = entropy[:, None]

    def body(k, y, active):
        scaled = a * tf.exp(-y[None, :] * h)
        f = tf.reduce_sum(scaled, 0) - target
        slope = -tf.reduce_sum(scaled * h, 0)
        delta = tf.math.divide_no_nan(f, slope)
        y = tf.where(active, y - delta, y)
        return k + 1, y, active & (tf.abs(delta) >= tolerance)

    _, y, _ = tf.while_loop(lambda k, y, active: k < iterations, body,
                            (tf.constant(0), y, tf.ones_like(y, tf.bool)))
    return y


def refine(probs, target, passes=PASSES):
    """The DARP refinement of pseudo_orig `probs` (N, K) to column sums `target` (K,) (module docstring)."""
    probs = tf.convert_to_tensor(probs, tf.float32)
    target = tf.cast(target, tf.float32)
    a = selected_start(probs, target)
    entropy = -tf.reduce_sum(a * tf.math.log(a), 1)

    def rows(y):
        return 1 / tf.reduce_sum(a * tf.exp(-y[None, :] * entropy[:, None]), 1)

    def body(k, y):
        return k + 1, newton_columns(a * rows(y)[:, None], entropy, target, y)

    _, y = tf.while_loop(lambda k, y: k < passes, body, (tf.constant(0), tf.zeros_like(target)))
    return a * rows(y)[:, None] * tf.exp(-y[None, :] * entropy[:, None])


def scatter_rows(table, index, rows):
    """table (N, K) with table[index[j]] = rows[j] (of an image listed twice, the later row wins)."""
    index = tf.cast(index, tf.int64)
    order = tf.argsort(index, stable=True)
    index, rows = tf.gather(index, order), tf.gather(rows, order)
    last = tf.concat([index[1:] != index[:-1], [True]], 0)
    spare = tf.cast(tf.shape(table)[0], tf.int64)
    padded = tf.concat([table, tf.zeros_like(table[:1])], 0)
    return tf.tensor_scatter_nd_update(padded, tf.where(last, index, spare)[:, None], rows)[:-1]


class Darp:
    """The DARP state of one run; `build()` in the strategy scope, `pseudo_probs` in the loss."""

    def __init__(self, settings, labeled_counts, n_unlabeled: int, nclass: int, warmup: int):
        self.settings = settings
        self.nclass = nclass
        self.n_unlabeled = n_unlabeled
        self.warmup = warmup
        proportions = tf.constant(labeled_counts, tf.float32) / float(sum(labeled_counts))
        self.labeled_target = proportions * n_unlabeled

    def build(self) -> dict:
        first = tf.VariableAggregation.ONLY_FIRST_REPLICA  # every replica computes the same new value
        uniform = tf.fill([self.n_unlabeled, self.nclass], 1.0 / self.nclass)
        self.pseudo_orig = tf.Variable(uniform, trainable=False, name='pseudo_orig', aggregation=first)
        self.pseudo_refine = tf.Variable(uniform, trainable=False, name='pseudo_refine', aggregation=first)
        return dict(darp_pseudo_orig=self.pseudo_orig, darp_pseudo_refine=self.pseudo_refine)

    def target(self):
        if self.settings.darp_target == 'estimate':
            return tf.reduce_mean(self.pseudo_orig, 0) * self.n_unlabeled
        return self.labeled_target

    def pseudo_probs(self, index, probs, step):
        """Stores the batch's p (N, K) (every replica's rows), refines when due, and returns the rows to
        pseudo-label this replica's batch with: p before the warm-up, the refined rows after."""
        probs = tf.cast(tf.stop_gradient(probs), tf.float32)
        ctx = tf.distribute.get_replica_context()
        all_index, all_probs = ctx.all_gather(tf.cast(index, tf.int64), 0), ctx.all_gather(probs, 0)
        self.pseudo_orig.assign(scatter_rows(self.pseudo_orig, all_index, all_probs))
        step = tf.cast(step, tf.int64)
        due = (step >= self.warmup) & ((step - self.warmup) % self.settings.darp_every == 0)
        self.pseudo_refine.assign(tf.cond(due, lambda: refine(self.pseudo_orig, self.target()),
                                          lambda: tf.identity(self.pseudo_refine)))
        return tf.where(step >= self.warmup, tf.gather(self.pseudo_refine, tf.cast(index, tf.int64)), probs)
