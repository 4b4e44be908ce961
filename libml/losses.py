"""Loss terms and building blocks shared by the algorithms.

Per-sample values (shape (N,)) unless stated; the caller averages. Logits are float32 (N, K);
probabilities p = softmax(logits). Targets passed as probabilities are constants (the caller
stops their gradient where the method says so).
"""
import tensorflow as tf

from libml import keys

CONSISTENCIES = ('mse', 'l1', 'kl', 'jsd')


def cross_entropy(labels, logits):
    """H(y, x) = -log softmax(logits)[y] per sample, y int (N,)."""
    return tf.nn.sparse_softmax_cross_entropy_with_logits(labels=tf.cast(labels, tf.int32), logits=logits)


def soft_cross_entropy(target_probs, logits):
    """-sum_k q_k log softmax(logits)_k per sample, q a distribution (N, K)."""
    return tf.nn.softmax_cross_entropy_with_logits(labels=target_probs, logits=logits)


def pseudo_label_term(logits_weak, logits_strong, threshold, sharpen='none', temperature=1.0):
    """FixMatch's unlabeled term per sample, with p = stop_gradient(softmax(logits_weak)) and
    q = stop_gradient(softmax(logits_weak / T)), T = `temperature`:
      sharpen='none'    1(max p >= tau) * H(argmax p, strong)     (FixMatch)
      sharpen='mask'    1(max q >= tau) * H(argmax q, strong)     (ab_fixmatch_sharpen)
      sharpen='target'  1(max p >= tau) * H(q, strong), soft      (ab_fixmatch_sharpen_conditional_consistency)
    `threshold` is a scalar tau or per-class thresholds (K,), then image i uses the threshold of
    its predicted class argmax p. Returns (masked cross-entropy (N,), mask (N,) in {0,1}).
    """
    logits_weak = tf.stop_gradient(logits_weak)
    probs = tf.nn.softmax(logits_weak)
    sharp = tf.nn.softmax(logits_weak / temperature) if sharpen != 'none' else probs
    mask = confidence_mask(sharp if sharpen == 'mask' else probs, threshold)
    if sharpen == 'target':
        return soft_cross_entropy(sharp, logits_strong) * mask, mask
    return cross_entropy(tf.argmax(probs, axis=1), logits_strong) * mask, mask


SHARPEN = ('none', 'mask', 'target')


def confidence_mask(probs, threshold):
    """1(max_k p_k >= tau) per row as float32 (N,); tau a scalar or per-class thresholds (K,), then
    row i uses the threshold of its predicted class argmax p."""
    threshold = tf.convert_to_tensor(threshold, tf.float32)
    if threshold.shape.rank == 1:
        threshold = tf.gather(threshold, tf.argmax(probs, axis=1))
    return tf.cast(tf.reduce_max(probs, axis=1) >= threshold, tf.float32)


def kl_divergence(target_probs, logits):
    """KL(q || softmax(logits)) = sum_k q_k (log q_k - log p_k) per sample (0 log 0 = 0)."""
    log_q = tf.math.log(tf.maximum(target_probs, 1e-30))
    return tf.reduce_sum(target_probs * (log_q - tf.nn.log_softmax(logits)), axis=1)


def consistency(kind, target_probs, logits):
    """Consistency between a target distribution q (N, K) and the model's p = softmax(logits), per sample:
      mse: mean_k (p_k - q_k)^2         l1: mean_k |p_k - q_k|
      kl:  KL(q || p)                   jsd: (KL(q || m) + KL(p || m)) / 2, m = (p + q) / 2
    """
    probs = tf.nn.softmax(logits)
    if kind == 'mse':
        return tf.reduce_mean(tf.square(probs - target_probs), axis=1)
    if kind == 'l1':
        return tf.reduce_mean(tf.abs(probs - target_probs), axis=1)
    if kind == 'kl':
        return kl_divergence(target_probs, logits)
    if kind == 'jsd':
        middle = (probs + target_probs) / 2
        log_m = tf.math.log(tf.maximum(middle, 1e-30))
        kl_q = tf.reduce_sum(target_probs * (tf.math.log(tf.maximum(target_probs, 1e-30)) - log_m), axis=1)
        kl_p = tf.reduce_sum(probs * (tf.nn.log_softmax(logits) - log_m), axis=1)
        return (kl_q + kl_p) / 2
    raise ValueError(f'unknown consistency {kind!r}; one of {CONSISTENCIES}')


def entropy(logits):
    """-sum_k p_k log p_k per sample."""
    return -tf.reduce_sum(tf.nn.softmax(logits) * tf.nn.log_softmax(logits), axis=1)


def sharpen(probs, temperature):
    """p_k^(1/T) / sum_j p_j^(1/T) per row (MixMatch's temperature sharpening)."""
    powered = tf.pow(probs, 1 / temperature)
    return powered / tf.reduce_sum(powered, axis=1, keepdims=True)


GAMMA_PROPOSALS = 8  # Marsaglia-Tsang proposals per Gamma draw: all rejected with probability < 0.05^8


def stateless_gamma(n, alpha: float, seed) -> tf.Tensor:
    """(n,) float64 Gamma(alpha, 1) draws, a function of `seed`, from ops XLA compiles (TensorFlow's
    StatelessRandomGamma has no XLA kernel). Marsaglia & Tsang (2000): for a >= 1, d = a - 1/3,
    c = 1/sqrt(9d), z ~ N(0, 1), u ~ U(0, 1), v = (1 + cz)^3; d v is accepted when v > 0 and
    log u < z^2/2 + d - dv + d log v (probability >= 0.95); the first accepted of GAMMA_PROPOSALS
    proposals is kept. alpha < 1: Gamma(alpha) = Gamma(alpha + 1) U^(1/alpha)."""
    a = alpha + 1 if alpha < 1 else alpha
    d = a - 1 / 3
    c = 1 / (9 * d) ** 0.5
    seeds = tf.random.experimental.stateless_split(seed, 3)
    z = tf.random.stateless_normal([n, GAMMA_PROPOSALS], seeds[0], dtype=tf.float64)
    u = tf.random.stateless_uniform([n, GAMMA_PROPOSALS], seeds[1], dtype=tf.float64)
    v = (1 + c * z) ** 3
    positive = v > 0
    v = tf.where(positive, v, tf.ones_like(v))  # rejected anyway; keeps log v finite
    accepted = positive & (tf.math.log(u) < 0.5 * z * z + d - d * v + d * tf.math.log(v))
    first = tf.argmax(tf.cast(accepted, tf.int32), axis=1, output_type=tf.int32)  # 0 when none (p < 4e-11)
    draws = d * tf.gather(v, first, axis=1, batch_dims=1)
    if alpha < 1:
        boost = tf.random.stateless_uniform([n], seeds[2], dtype=tf.float64)
        draws *= boost ** (1 / alpha)
    return draws


def mixup_lambda(n, alpha, seed):
    """(n,) mixing weights lambda' = max(lambda, 1 - lambda), lambda ~ Beta(alpha, alpha), stateless and
    XLA-compilable. lambda = a / (a + b), a, b ~ Gamma(alpha) drawn in float64 (`stateless_gamma`; a small
    alpha gives Gamma draws that underflow float32; 0 / 0 gives lambda = 0, lambda' = 1)."""
    seed_a, seed_b = tf.unstack(tf.random.experimental.stateless_split(seed, 2))
    a = stateless_gamma(n, float(alpha), seed_a)
    b = stateless_gamma(n, float(alpha), seed_b)
    lam = tf.cast(tf.math.divide_no_nan(a, a + b), tf.float32)
    return tf.maximum(lam, 1 - lam)


def reversed_partners(n):
    """(n,) int32 n-1, ..., 1, 0: the MixUp partner of row i is row n-1-i (the batch reversed, x[::-1],
    as the reference's ICT and MixUp)."""
    return tf.range(n - 1, -1, -1)


def mixup(x, y, partner_index, lam):
    """(lam x + (1 - lam) x[partner], lam y + (1 - lam) y[partner]), lam per row (N,)."""
    return mix_images(x, partner_index, lam), mix_targets(y, partner_index, lam)


def mix_images(x, partner_index, lam):
    """lam x + (1 - lam) x[partner] per row of a batch x (N, ...), lam (N,)."""
    lam_x = tf.reshape(lam, [-1] + [1] * (len(x.shape) - 1))
    return lam_x * x + (1 - lam_x) * tf.gather(x, partner_index)


def mix_targets(y, partner_index, lam):
    """lam y + (1 - lam) y[partner] per row of targets y (N, K), lam (N,)."""
    return lam[:, None] * y + (1 - lam[:, None]) * tf.gather(y, partner_index)


def linear_rampup(step, ramp_steps):
    """min(1, step / ramp_steps) (1 when ramp_steps <= 0), as a float32 scalar."""
    if ramp_steps <= 0:
        return tf.constant(1.0)
    return tf.clip_by_value(tf.cast(step, tf.float32) / ramp_steps, 0.0, 1.0)


def step_seed(seed, step, salt):
    """Stateless seed [2] of one kind of randomness (`salt`) at one training step.

    A function of (seed, step, salt, replica id) only: a resumed run draws exactly what an
    uninterrupted one would, and the replicas of a multi-device step draw independently."""
    context = tf.distribute.get_replica_context()
    replica = context.replica_id_in_sync_group if context is not None else 0
    key = tf.stack([tf.cast(seed, tf.int64), tf.cast(step, tf.int64)])
    key = tf.random.experimental.stateless_fold_in(key, salt)
    return tf.random.experimental.stateless_fold_in(key, tf.cast(replica, tf.int64))


def dessl_mean(h_unlabeled, h_labeled=None):
    """mean_u h - mean_l h (DeSSL, unbiased under MCAR labels); mean_u h when h_labeled is None."""
    mean = tf.reduce_mean(h_unlabeled)
    return mean if h_labeled is None else mean - tf.reduce_mean(h_labeled)


def guess_label(probs_views, temperature):
    """MixMatch's label guess: sharpen(mean_k p_k, T) over K views' probabilities, each (N, C)."""
    return sharpen(tf.add_n(list(probs_views)) / len(probs_views), temperature)


def smoothed_alignment(probs, p_target, p_model, smoothing=1e-6):
    """USB's distribution alignment: SumNorm(p (p_target + smoothing) / (p_model + smoothing)) per row; probs (N, K),
    p_target (K,) or a scalar (1/K: the uniform target), p_model (K,)."""
    aligned = probs * (p_target + smoothing) / (p_model + smoothing)
    return aligned / tf.reduce_sum(aligned, -1, keepdims=True)


def first_batch_ema(average, started, mean, momentum):
    """`mean` (the batch mean, (K,)) when `started` is 0 (the first batch sets the average), else the EMA step
    momentum * average + (1 - momentum) * mean."""
    return tf.where(started > 0, momentum * average + (1 - momentum) * mean, mean)


def distribution_alignment(probs, p_labeled, p_model):
    """ReMixMatch: normalize(p * p_labeled / p_model) per row; p (N, C), p_labeled and p_model (C,)."""
    aligned = probs * p_labeled / p_model
    return aligned / tf.reduce_sum(aligned, axis=1, keepdims=True)


def mixup_partners(n_rows, n_pool, seed):
    """(n_rows,) int32 MixUp partners in [0, n_pool): rows [j n_pool, (j+1) n_pool) take the pool
    in an independent uniformly shuffled order, so the first n_pool rows meet every pool row once
    (MixMatch's shuffled union of labeled and unlabeled images)."""
    blocks = (n_rows + n_pool - 1) // n_pool
    keys = tf.random.stateless_uniform(tf.stack([blocks, n_pool]), seed)
    return tf.reshape(tf.argsort(keys, axis=1, stable=True), [-1])[:n_rows]


def mixmatch_plan(n_rows, n_pool, alpha, seed):
    """(partners (n_rows,), lambda' (n_rows,)) of a MixMatch MixUp: partners from the first n_pool
    rows (`mixup_partners`), lambda' = max(lambda, 1 - lambda), lambda ~ Beta(alpha, alpha)."""
    partner_seed, lambda_seed = tf.unstack(tf.random.experimental.stateless_split(seed, 2))
    return mixup_partners(n_rows, n_pool, partner_seed), mixup_lambda(n_rows, alpha, lambda_seed)


class Means:
    """How a method's per-sample terms become its loss, as the papers write it: the labeled term
    mean_l H_i and the unlabeled term wu * mean_u h_i. Every method's pure loss function (the
    `<method>_loss` of each entry script) takes such an object as `means` (default Means(wu));
    the training loop passes `Corrected` for its label-bias add-ons."""

    def __init__(self, wu=1.0):
        self.wu = wu

    def labeled(self, h_labeled, labels):
        """mean_l H, a scalar, from per-sample labeled cross-entropies (B,)."""
        del labels
        return tf.reduce_mean(h_labeled)

    def unlabeled(self, h_unlabeled, labels=None, term=None, h_on_labeled=None):
        """(wu * mean_u h, mean_u h) from the per-sample unlabeled term (uB,). For `Corrected`: term(logits_weak,
        logits_strong) -> (h, ...), the method's per-sample term with this step's state; h_on_labeled, the
        term on the labeled images where the method computes it itself (MixMatch's DeSSL rows)."""
        del labels, term, h_on_labeled
        mean_u = tf.reduce_mean(h_unlabeled)
        return self.wu * mean_u, mean_u


class Corrected(Means):
    """The means of libml/debias.LabelBias `bias`: its corrected labeled term (CAP, MNAR) and its
    unlabeled term minus the correction computed from the method's unlabeled term on the labeled
    images (DeSSL, MNAR, CADR): `h_on_labeled` (B,) (or a function giving it), or the method's `term` applied to
    `views_on_labeled` = (weak logits, strong logits) of the labeled images; None when no correction needs it.
    update_between(): a label-bias state update to run after the labeled term and before the unlabeled one."""

    def __init__(self, bias, h_on_labeled=None, views_on_labeled=None, update_between=None):
        super().__init__(bias.settings.get('wu', 1.0))
        self.bias = bias
        self.h_on_labeled = h_on_labeled
        self.views_on_labeled = views_on_labeled
        self.update_between = update_between  # Mean Teacher: p_hat's update after the labeled term

    def labeled(self, h_labeled, labels):
        return self.bias.labeled(h_labeled, labels)

    def unlabeled(self, h_unlabeled, labels=None, term=None, h_on_labeled=None):
        if self.update_between is not None:
            self.update_between()
        h_on_labeled = self.h_on_labeled if h_on_labeled is None else h_on_labeled
        if callable(h_on_labeled):  # computed here, after the unlabeled term (VAT: the order of its passes)
            h_on_labeled = h_on_labeled()
        if self.views_on_labeled is not None:
            h_on_labeled = term(*self.views_on_labeled)[0]
        return self.bias.unlabeled(h_unlabeled, h_on_labeled, labels)


def mean_over_views(terms):
    """The mean of per-sample terms over views: the term itself for one view, else add_n / count."""
    terms = list(terms)
    return terms[0] if len(terms) == 1 else tf.add_n(terms) / len(terms)


def as_list(logits):
    """[logits] for one tensor, list(logits) for a list or tuple of views."""
    return list(logits) if isinstance(logits, (list, tuple)) else [logits]


def ramped_loss(labels, logits_x, h_unlabeled, wu, ramp=1.0, means=None):
    """The loss of the consistency baselines (libml/consistency_methods.py) from per-sample terms:
      L = mean_l H(y, x) + r * wu * mean_u h,   r = `ramp` (the step's ramp-up weight in [0, 1]).
    labels int (B,), logits_x (B, K), h_unlabeled (uB,); means: Means(wu) by default.
    Returns (L, {losses/xe, losses/xeu: mean_u h, monitors/wu: r * wu})."""
    means = means or Means(wu)
    xe = means.labeled(cross_entropy(labels, logits_x), labels)
    unlabeled, mean_u = means.unlabeled(h_unlabeled, labels)
    return xe + ramp * unlabeled, {keys.XE: xe, keys.XEU: mean_u, keys.WU: ramp * wu}
