"""DASO (Oh et al., CVPR 2022): distribution-aware semantics-oriented pseudo-labels, an add-on of FixMatch and
FlexMatch (--daso), as USB's semilearn/imb_algorithms/daso implements it (differences: README).

State (checkpointed; every replica holds the same values):
  queue[K, L, D]  a balanced queue of the pooled features of labeled images, L = --daso_queue per class; the
                  j-th feature ever pushed to class c sits in slot j mod L (a ring: the last L stay, FIFO);
  pushed[K]       features pushed to class c so far (the class holds min(pushed_c, L) of them);
  pl_dist[K]      the pseudo-label histogram of the last finished window of E = --daso_every steps;
  pl_window[K]    the histogram of the window in progress.
Each step t, f(.) the pooled features (layer 'pool'), W the warm-up (--daso_warmup_kimg) in steps:
  1. queue <- the EMA weights' features of the labeled batch (training-mode batch statistics, none updated,
     no gradient), the whole global batch; prototypes C_c = mean of class c's queue (0 while empty);
  2. p = softmax(weak logits); q = softmax(cos(f(weak(u)), C) / T_proto) (no gradient), T_proto = --daso_T;
  3. from step W on: rho = SumNorm(pl_dist^(1/T_dist)) / max (T_dist = --daso_T_dist; all classes 1 while pl_dist
     is empty), c = argmax p, blend = (1 - rho_c) p + rho_c q, pseudo-label argmax blend; the mask stays the
     method's, on p (USB): the pseudo-label logits handed to the method are the weak logits with the entries of
     argmax p and argmax blend swapped (same confidence, DASO's class);
     before step W: the method's own pseudo-label argmax p;
  4. pl_window += histogram of the step's pseudo-labels (every unlabeled image, masked or not, global batch);
     after the steps t with (t + 1) mod E = 0: pl_dist <- pl_window, pl_window <- 0 (USB's counting);
  5. from step W on: loss += lambda * mean_u CE_soft(cos(f(strong(u)), C) / T_proto, q), lambda = --daso_lambda.
"""
import threading

import tensorflow as tf

from libml import devices
from libml import keys
from libml import models
from libml import utils
from libml.settings import Param, above, at_least

COSINE_EPS = 1e-8
USB_WARMUP = 5120 / 262144  # USB: 5120 warm-up iterations of its 262144

PARAMS = dict(
    daso=Param(False, 'DASO (Oh et al., CVPR 2022): pseudo-labels blended with a similarity to class prototypes of '
               'labeled features by the pseudo-label distribution, plus a semantic alignment loss (FixMatch, '
               'FlexMatch).'),
    daso_warmup_kimg=Param(-1.0, 'DASO: plain training (kimg) before the blend and the alignment loss; -1 = '
                           '5120/262144 of --train_kimg (USB: 5120 iterations).', check=at_least(-1)),
    daso_queue=Param(256, 'DASO: labeled features kept per class (the balanced queue).', check=at_least(1)),
    daso_T=Param(0.05, 'DASO: temperature T_proto of the similarities to the prototypes.', check=above(0)),
    daso_T_dist=Param(1.5, 'DASO: temperature T_dist of the pseudo-label distribution (rho = (pl/max pl)^(1/T)).',
                      check=above(0)),
    daso_lambda=Param(1.0, 'DASO: weight of the semantic alignment loss.', check=at_least(0)),
    daso_every=Param(100, 'DASO: steps per window of the pseudo-label histogram.', check=at_least(1)),
)


def check(settings) -> None:
    """UserError for a DASO setting outside its domain or a combination it cannot take."""
    s = settings
    if not s.get('daso'):
        return
    w = s.daso_warmup_kimg
    if -1 < w < 0:
        raise utils.UserError(f'--daso_warmup_kimg={w:g}: give a duration >= 0, or -1 for 5120/262144 of --train_kimg')
    for other in ('darp', 'abc'):
        if s.get(other):
            raise utils.UserError(f'--daso and --{other} both change the pseudo-labels (USB runs one imbalanced '
                                  f'algorithm at a time); choose one')
    if s.get('teacher', 'model') != 'model':
        raise utils.UserError(f'--daso blends the pseudo-labels with the weak views\' features of the trained pass, '
                              f'which --teacher={s.teacher} leaves out; use --teacher=model')
    if s.get('sharpen', 'none') == 'target':
        raise utils.UserError('--daso gives hard pseudo-labels; --sharpen=target trains on soft ones: drop one')


def warmup_steps(settings, kimg_to_steps) -> int:
    """The first step of the blend and the alignment loss."""
    kimg = settings.daso_warmup_kimg
    return kimg_to_steps(settings.train_kimg * USB_WARMUP if kimg < 0 else kimg)


# ---- pure functions

def enqueue(queue, pushed, features, labels):
    """(queue, pushed) after pushing `features` (N, D) of classes `labels` (N,) in order: row j of class c (the
    r-th of its class in the batch) goes to slot (pushed_c + r) mod L of queue (K, L, D); of more than L rows of a
    class, the last L. pushed (K,) int64 counts every row ever pushed to the class."""
    nclass, length = queue.shape[0], queue.shape[1]
    labels = tf.cast(labels, tf.int64)
    onehot = tf.one_hot(labels, nclass, dtype=tf.int64)
    rank = tf.reduce_sum(tf.cumsum(onehot, axis=0, exclusive=True) * onehot, 1)  # r: earlier rows of its class
    new = tf.reduce_sum(onehot, 0)
    slot = (tf.gather(pushed, labels) + rank) % length
    kept = rank >= tf.gather(new, labels) - length
    flat = tf.reshape(queue, [nclass * length, -1])
    spare = tf.constant(nclass * length, tf.int64)
    target = tf.where(kept, labels * length + slot, spare)
    padded = tf.concat([flat, tf.zeros_like(flat[:1])], 0)
    flat = tf.tensor_scatter_nd_update(padded, target[:, None], tf.cast(features, queue.dtype))[:-1]
    return tf.reshape(flat, tf.shape(queue)), pushed + new


def prototypes(queue, pushed):
    """(K, D): the mean of each class's min(pushed_c, L) queued features; 0 for a class with none."""
    length = queue.shape[1]
    size = tf.minimum(pushed, length)
    valid = tf.cast(tf.range(length, dtype=tf.int64)[None, :] < size[:, None], queue.dtype)
    total = tf.reduce_sum(queue * valid[:, :, None], 1)
    return total / tf.maximum(tf.cast(size, queue.dtype), 1.)[:, None]


def cosine(features, centers):
    """(N, K): cos(f_i, C_k) = f_i . C_k / max(|f_i| |C_k|, 1e-8) (0 against a zero prototype)."""
    features = tf.cast(features, tf.float32)
    norms = tf.norm(features, axis=1)[:, None] * tf.norm(centers, axis=1)[None, :]
    return tf.matmul(features, centers, transpose_b=True) / tf.maximum(norms, COSINE_EPS)


def similarity_probs(features, centers, temperature):
    """q = softmax(cos(f, C) / T_proto) (N, K), no gradient."""
    return tf.stop_gradient(tf.nn.softmax(cosine(tf.stop_gradient(features), centers) / temperature))


def distribution_weights(pl_dist, temperature):
    """rho (K,): d = pl_dist / sum, d^(1/T), / sum, / max (USB's steps); every class 1 while pl_dist is all 0."""
    counts = tf.cast(pl_dist, tf.float32)
    counts = tf.where(tf.reduce_sum(counts) > 0, counts, tf.ones_like(counts))
    d = tf.pow(counts / tf.reduce_sum(counts), 1. / temperature)
    d = d / tf.reduce_sum(d)
    return d / tf.reduce_max(d)


def blend(probs, sim_probs, rho):
    """(1 - rho_c) p + rho_c q per row, c = argmax p (the class the model predicts)."""
    weight = tf.gather(rho, tf.argmax(probs, 1))[:, None]
    return (1 - weight) * probs + weight * sim_probs


def relabel_logits(logits, labels):
    """The logits with, per row, the entries of argmax(logits) and `labels` swapped: the softmax's largest value
    (the confidence) is kept and its class becomes `labels` (unchanged rows where they agree)."""
    nclass = logits.shape[-1]
    top = tf.argmax(logits, 1)
    at_top = tf.reduce_max(logits, 1, keepdims=True)
    at_label = tf.gather(logits, labels, batch_dims=1)[:, None]
    is_top = tf.one_hot(top, nclass, on_value=True, off_value=False)
    is_label = tf.one_hot(labels, nclass, on_value=True, off_value=False)
    return tf.where(is_label, at_top, tf.where(is_top, at_label, logits))


def alignment_loss(strong_features, centers, sim_probs, temperature):
    """mean_i -sum_k q_ik log softmax(cos(f_strong_i, C) / T_proto)_k (gradient through the strong features)."""
    log_probs = tf.nn.log_softmax(cosine(strong_features, centers) / temperature)
    return tf.reduce_mean(-tf.reduce_sum(sim_probs * log_probs, 1))


def histogram(labels, nclass):
    """Counts (K,) float32 of the integer labels."""
    return tf.reduce_sum(tf.one_hot(labels, nclass, dtype=tf.float32), 0)


def refresh(pl_dist, pl_window, counts, step, every):
    """(pl_dist, pl_window) after adding the step's `counts`: after a step t with (t + 1) mod E = 0 the window
    becomes pl_dist and starts again from 0."""
    window = pl_window + counts
    due = (tf.cast(step, tf.int64) + 1) % every == 0
    return tf.where(due, window, pl_dist), tf.where(due, tf.zeros_like(window), window)


# ---- the state of one run

class Daso:
    """The DASO state of one run, made in the strategy scope with the model; `averages()` gives the EMA weights
    {id(trained variable): average} (None without EMA)."""

    def __init__(self, settings, model, nclass: int, warmup: int, averages=lambda: None):
        self.settings = settings
        self.nclass = nclass
        self.warmup = warmup
        self.features_model = models.with_features(model)
        self.dim = self.features_model.outputs[1].shape[-1]
        self.averages = averages
        # this replica's step: its pooled features by view name (from Algorithm.forward_views) and the share of
        # pseudo-labels DASO changed; per thread, as MirroredStrategy traces each replica in its own thread
        self.current = threading.local()

    def build(self) -> dict:
        first = tf.VariableAggregation.ONLY_FIRST_REPLICA  # every replica computes the same new value
        k = self.nclass
        self.queue = tf.Variable(tf.zeros([k, self.settings.daso_queue, self.dim]), trainable=False,
                                 name='daso_queue', aggregation=first)
        self.pushed = tf.Variable(tf.zeros([k], tf.int64), trainable=False, name='daso_pushed', aggregation=first)
        self.pl_dist = tf.Variable(tf.zeros([k]), trainable=False, name='daso_pl_dist', aggregation=first)
        self.pl_window = tf.Variable(tf.zeros([k]), trainable=False, name='daso_pl_window', aggregation=first)
        return dict(daso_queue=self.queue, daso_pushed=self.pushed, daso_pl_dist=self.pl_dist,
                    daso_pl_window=self.pl_window)

    def ema_features(self, images):
        """Pooled features of the EMA weights (raw ones without EMA) in training mode (batch statistics of
        `images`), the moving statistics not updated, no gradient."""
        model = self.features_model
        averages = self.averages() or {}
        weights = [averages.get(id(v), v) for v in model.trainable_variables]
        outputs = model.stateless_call(weights, model.non_trainable_variables, images, training=True)[0]
        return tf.stop_gradient(tf.cast(outputs[1], tf.float32))

    def push(self, images, labels) -> None:
        """Step 1: the EMA features of this replica's labeled images, with every replica's, into the queue."""
        features = devices.global_rows(self.ema_features(images))
        labels = devices.global_rows(tf.cast(labels, tf.int64))
        queue, pushed = enqueue(self.queue, self.pushed, features, labels)
        self.queue.assign(queue)
        self.pushed.assign(pushed)

    def observe(self, features: dict) -> None:
        """This replica's pooled features of the step by view name, from the method's forward pass."""
        self.current.features = dict(features)

    def view_features(self, name):
        found = getattr(self.current, 'features', {}).get(name)
        if found is None:
            raise utils.UserError(f'--daso needs the pooled features of the {name} view from the method\'s forward '
                                  f'pass; use it with fixmatch.py or flexmatch.py')
        return tf.cast(found, tf.float32)

    def pseudo_logits(self, logits, step):
        """Steps 2-4: the weak-view logits to pseudo-label this replica's unlabeled batch with."""
        logits = tf.stop_gradient(logits)
        probs = tf.nn.softmax(tf.cast(logits, tf.float32))
        q = similarity_probs(self.view_features(keys.U_WEAK), prototypes(self.queue, self.pushed),
                             self.settings.daso_T)
        mixed = blend(probs, q, distribution_weights(self.pl_dist, self.settings.daso_T_dist))
        active = tf.cast(step, tf.int64) >= self.warmup
        labels = tf.where(active, tf.argmax(mixed, 1), tf.argmax(probs, 1))
        counts = tf.distribute.get_replica_context().all_reduce('SUM', histogram(labels, self.nclass))
        pl_dist, pl_window = refresh(self.pl_dist, self.pl_window, counts, step, self.settings.daso_every)
        self.pl_dist.assign(pl_dist)
        self.pl_window.assign(pl_window)
        self.current.relabeled = tf.reduce_mean(tf.cast(labels != tf.argmax(probs, 1), tf.float32))
        return relabel_logits(logits, labels)

    def loss(self, step):
        """Step 5: (lambda * the alignment loss from step W on, 0 before; logs)."""
        q = similarity_probs(self.view_features(keys.U_WEAK), prototypes(self.queue, self.pushed),
                             self.settings.daso_T)
        align = alignment_loss(self.view_features(keys.U_STRONG), prototypes(self.queue, self.pushed), q,
                               self.settings.daso_T)
        active = tf.cast(tf.cast(step, tf.int64) >= self.warmup, tf.float32)
        logs = {'losses/daso_align': align}
        if getattr(self.current, 'relabeled', None) is not None:
            logs['monitors/daso_relabeled'] = self.current.relabeled
        self.current.features, self.current.relabeled = {}, None
        return self.settings.daso_lambda * active * align, logs

    def report_scalars(self) -> dict:
        """TensorBoard scalars at each evaluation: rho per class (the blend weight of a class predicted by p)."""
        rho = distribution_weights(self.pl_dist, self.settings.daso_T_dist).numpy()
        return {f'daso/rho/{k:03d}': float(v) for k, v in enumerate(rho)}
