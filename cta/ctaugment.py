"""CTAugment (control theory augment) as batched, stateless TensorFlow ops.

Each of the 19 ops has 0, 1 or 2 parameters; a parameter is a level in [0, 1] split into bins, and
every bin has a rate (an EMA of how well the EMA model still classifies images augmented with it).
Op levels (l) map to the engine parameters of libml.augment like this:
  autocontrast, blur, equalize, invert, smooth (17 bins): blend(x, op(x), l)
  brightness, color, contrast, sharpness (17 bins): PIL enhance factor 0.1 + 1.9 l
  cutout (17 bins): gray square of side 1 + int(l * min(H, W) * 0.499) at a random centre
  identity: no parameter
  posterize (8 bins): 1 + int(7.999 l) bits
  rescale (17 bins x 6 bins): centre crop of side (1 - 2 * 0.25 * l) of the image, resized back with
      method RESCALE_METHODS[int(6 l2)] = lanczos3, bicubic, bilinear, area, mitchellcubic, nearest
  rotate (17 bins): (2l - 1) * 45 degrees, counter-clockwise
  shear_x, shear_y (17 bins): (2l - 1) * 0.3
  solarize (17 bins): threshold level int(255.999 l)
  translate_x, translate_y (17 bins): (2l - 1) * 0.3 of the image width / height. The reference
      applied this value as a shift of 0.3 pixel at most (a no-op with nearest sampling); this port
      applies it as the fraction of the image size it was meant to be.

All bin rates of all parameters live in ONE float32 tf.Variable (a flat vector, initialised to 1,
trainable=False, aggregation ONLY_FIRST_REPLICA), so tf.train.Checkpoint saves and restores it and it
works under tf.distribute strategies. Training reads it through sample_policy (inside tf.data maps
too: the variable is captured by reference) and writes it through update.
"""
from typing import NamedTuple

import numpy as np
import tensorflow as tf

from libml import augment

# (name, bins per parameter), in the reference's alphabetical order.
OPS = (
    ('autocontrast', (17,)),
    ('blur', (17,)),
    ('brightness', (17,)),
    ('color', (17,)),
    ('contrast', (17,)),
    ('cutout', (17,)),
    ('equalize', (17,)),
    ('identity', ()),
    ('invert', (17,)),
    ('posterize', (8,)),
    ('rescale', (17, 6)),
    ('rotate', (17,)),
    ('sharpness', (17,)),
    ('shear_x', (17,)),
    ('shear_y', (17,)),
    ('smooth', (17,)),
    ('solarize', (17,)),
    ('translate_x', (17,)),
    ('translate_y', (17,)),
)
OP_NAMES = tuple(name for name, _ in OPS)
MAX_PARAMS = augment.NUM_PARAMS
MAX_BINS = max(max(bins, default=0) for _, bins in OPS)

# Flat layout of the rates: parameter p = (op, slot) owns bins [PARAM_OFFSET[p], + PARAM_BINS[p]).
PARAMS = tuple((op, slot) for op, (_, bins) in enumerate(OPS) for slot in range(len(bins)))
PARAM_BINS = tuple(OPS[op][1][slot] for op, slot in PARAMS)
PARAM_OFFSET = tuple(int(x) for x in np.cumsum((0,) + PARAM_BINS[:-1]))
NUM_BINS = sum(PARAM_BINS)


def _param_table(fill, value):
    """(len(OPS), MAX_PARAMS) int table: value(p) for each parameter p of each op, `fill` where absent."""
    table = np.full([len(OPS), MAX_PARAMS], fill, np.int32)
    for p, (op, slot) in enumerate(PARAMS):
        table[op, slot] = value(p)
    return table


OP_PARAM = _param_table(len(PARAMS), lambda p: p)  # absent -> a dummy parameter index
OP_NBINS = _param_table(0, lambda p: PARAM_BINS[p])
OP_OFFSET = _param_table(NUM_BINS, lambda p: PARAM_OFFSET[p])  # absent -> a dummy bin
BIN_PARAM = np.repeat(np.arange(len(PARAMS)), PARAM_BINS).astype(np.int32)
# (len(PARAMS), MAX_BINS) flat bin index of each parameter's bins, padded with NUM_BINS.
BIN_INDEX = np.full([len(PARAMS), MAX_BINS], NUM_BINS, np.int32)
for _p, (_offset, _bins) in enumerate(zip(PARAM_OFFSET, PARAM_BINS)):
    BIN_INDEX[_p, :_bins] = np.arange(_offset, _offset + _bins)


class Policy(NamedTuple):
    """Per-image op choices: ops (n, depth) int32 indexes OPS; bins (n, depth, MAX_PARAMS) int32
    (-1 where the op has no such parameter); values (n, depth, MAX_PARAMS) float32 levels in [0, 1]
    (0 where absent); seed (2,) for the ops' own randomness (cutout centres)."""
    ops: tf.Tensor
    bins: tf.Tensor
    values: tf.Tensor
    seed: tf.Tensor


def engine_parameters(ops, levels, height, width):
    """Engine (op_ids, params) of libml.augment for CTA ops (n,) at levels (n, MAX_PARAMS)."""
    ops = tf.cast(ops, tf.int32)
    level = levels[:, 0]
    signed = 2.0 * level - 1.0
    side = tf.cast(tf.minimum(height, width), tf.float32)
    mapped = {
        'level': level,
        'factor': 0.1 + 1.9 * level,
        'cutout': 1.0 + tf.floor(level * side * 0.499),
        'none': tf.zeros_like(level),
        'bits': 1.0 + tf.floor(7.999 * level),
        'degrees': signed * 45.0,
        'shift': signed * 0.3,
        'threshold': tf.floor(255.999 * level),
    }
    mapping = {'autocontrast': 'level', 'blur': 'level', 'equalize': 'level', 'invert': 'level',
               'smooth': 'level', 'brightness': 'factor', 'color': 'factor', 'contrast': 'factor',
               'sharpness': 'factor', 'cutout': 'cutout', 'identity': 'none', 'posterize': 'bits',
               'rescale': 'level', 'rotate': 'degrees', 'shear_x': 'shift', 'shear_y': 'shift',
               'solarize': 'threshold', 'translate_x': 'shift', 'translate_y': 'shift'}
    kinds = list(mapped)
    candidates = tf.stack([mapped[kind] for kind in kinds], axis=1)
    kind_of_op = tf.constant([kinds.index(mapping[name]) for name in OP_NAMES], tf.int32)
    first = tf.gather(candidates, tf.gather(kind_of_op, ops), batch_dims=1)
    methods = len(augment.RESCALE_METHODS)
    method = tf.minimum(tf.floor(levels[:, 1] * methods), methods - 1)
    second = tf.where(tf.equal(ops, OP_NAMES.index('rescale')), method, tf.zeros_like(method))
    op_ids = tf.gather(tf.constant([augment.OPS.index(name) for name in OP_NAMES], tf.int32), ops)
    return op_ids, tf.stack([first, second], axis=1)


def proximity(probs, labels):
    """1 - 0.5 * sum_k |probs_k - onehot(label)_k| per row: 1 = certain and right, 0 = certain and wrong."""
    probs = tf.convert_to_tensor(probs, tf.float32)
    onehot = tf.one_hot(tf.cast(labels, tf.int32), tf.shape(probs)[-1], dtype=tf.float32)
    return 1.0 - 0.5 * tf.reduce_sum(tf.abs(probs - onehot), axis=-1)


class CTAugment(tf.Module):
    """CTAugment state (bin rates) and its batched sampling, application and update.

    depth ops per image; p = (rate + (1 - decay)) / max over the parameter's bins of the same
    quantity, bins with p < threshold get probability 0.
    """

    def __init__(self, depth=2, threshold=0.8, decay=0.99, name='ctaugment'):
        super().__init__(name=name)
        self.depth = depth
        self.threshold = threshold
        self.decay = decay
        with self.name_scope:
            self.rates = tf.Variable(tf.ones([NUM_BINS], tf.float32), trainable=False, name='rates',
                                     aggregation=tf.VariableAggregation.ONLY_FIRST_REPLICA)

    def probabilities(self):
        """(NUM_BINS,) flat p per bin: (rate + 1 - decay) / its parameter's max, 0 below threshold."""
        p = self.rates + (1.0 - self.decay)
        top = tf.math.unsorted_segment_max(p, BIN_PARAM, len(PARAMS))
        p = p / tf.gather(top, BIN_PARAM)
        return tf.where(p < self.threshold, tf.zeros_like(p), p)

    def _bin_probabilities(self):
        """(len(PARAMS) + 1, MAX_BINS) p per parameter and bin, 0-padded; the last row (the dummy
        parameter of absent slots) is uniform."""
        padded = tf.concat([self.probabilities(), [0.0]], axis=0)
        return tf.concat([tf.gather(padded, BIN_INDEX), tf.ones([1, MAX_BINS])], axis=0)

    def sample_policy(self, n, seed):
        """Training policy for n images: `depth` ops uniform per image; each parameter's bin drawn with
        probability p / sum(p) over its bins; level = (bin + U(0, 1)) / nbins."""
        op_seed, bin_seed, value_seed, apply_seed = augment.split_seed(seed, 4)
        ops = tf.random.stateless_uniform([n, self.depth], op_seed, 0, len(OPS), dtype=tf.int32)
        params = tf.gather(tf.constant(OP_PARAM), ops)
        logits = tf.math.log(self._bin_probabilities())
        rows = tf.gather(logits, tf.reshape(params, [-1]))
        bins = tf.random.stateless_categorical(rows, 1, bin_seed, dtype=tf.int32)
        bins = tf.reshape(bins, tf.shape(params))
        nbins = tf.cast(tf.gather(tf.constant(OP_NBINS), ops), tf.float32)
        uniform = tf.random.stateless_uniform(tf.shape(params), value_seed)
        present = nbins > 0
        values = tf.where(present, (tf.cast(bins, tf.float32) + uniform) / tf.maximum(nbins, 1.0), 0.0)
        return Policy(ops, tf.where(present, bins, -1), values, apply_seed)

    def random_policy(self, n, seed):
        """Probe policy: `depth` ops uniform per image, levels uniform in [0, 1), bin = int(level * nbins)."""
        op_seed, value_seed, apply_seed = augment.split_seed(seed, 3)
        ops = tf.random.stateless_uniform([n, self.depth], op_seed, 0, len(OPS), dtype=tf.int32)
        nbins = tf.gather(tf.constant(OP_NBINS), ops)
        present = nbins > 0
        values = tf.random.stateless_uniform(tf.shape(nbins), value_seed)
        bins = tf.minimum(tf.cast(tf.floor(values * tf.cast(nbins, tf.float32)), tf.int32), nbins - 1)
        return Policy(ops, tf.where(present, bins, -1), tf.where(present, values, 0.0), apply_seed)

    def apply(self, images, policy):
        """Applies the policy's ops in order (step 0 first) with libml.augment's batched engine."""
        height, width = tf.shape(images)[1], tf.shape(images)[2]
        depth = policy.ops.shape[1]
        for step, step_seed in enumerate(augment.split_seed(policy.seed, depth)):
            op_ids, params = engine_parameters(policy.ops[:, step], policy.values[:, step], height, width)
            images = augment.apply_ops(images, op_ids, params, step_seed)
        return images

    def strong(self, images, seed):
        """Strong view: a sampled policy, then a full cutout (level 1: side 1 + int(0.499 min(H, W)))."""
        policy_seed, cutout_seed = augment.split_seed(seed, 2)
        images = self.apply(images, self.sample_policy(tf.shape(images)[0], policy_seed))
        side = 1 + tf.cast(tf.floor(tf.cast(tf.minimum(tf.shape(images)[1], tf.shape(images)[2]), tf.float32)
                                    * 0.499), tf.int32)
        return augment.cutout(images, cutout_seed, side)

    def update(self, policy, proximity_values):
        """rate[bin] = decay * rate[bin] + (1 - decay) * proximity, for every probe image in order
        and every (step, parameter) it used, exactly as the sequential loop.

        Closed form: a bin hit by updates q_1..q_K (in order) ends at
        decay^K rate + (1 - decay) sum_k decay^(K - k) q_k; K - k is counted with a reverse cumsum.
        Returns the new rates.
        """
        offsets = tf.gather(tf.constant(OP_OFFSET), policy.ops)
        present = policy.bins >= 0
        flat_bins = tf.reshape(tf.where(present, offsets + policy.bins, NUM_BINS), [-1])
        prox = tf.reshape(tf.broadcast_to(tf.cast(proximity_values, tf.float32)[:, None, None],
                                          tf.shape(policy.bins)), [-1])
        hits = tf.one_hot(flat_bins, NUM_BINS + 1, dtype=tf.float32)
        later_hits = tf.reduce_sum(tf.cumsum(hits, axis=0, exclusive=True, reverse=True) * hits, axis=1)
        weights = (1.0 - self.decay) * tf.pow(self.decay, later_hits) * prox
        added = tf.math.unsorted_segment_sum(weights, flat_bins, NUM_BINS + 1)[:NUM_BINS]
        counts = tf.reduce_sum(hits, axis=0)[:NUM_BINS]
        new_rates = tf.pow(self.decay, counts) * self.rates + added
        self.rates.assign(new_rates)
        return new_rates

    def rates_by_op(self):
        """{op name: list of numpy rate vectors, one per parameter}."""
        rates = self.rates.numpy()
        table = {name: [] for name in OP_NAMES}
        for (op, _), offset, bins in zip(PARAMS, PARAM_OFFSET, PARAM_BINS):
            table[OP_NAMES[op]].append(rates[offset:offset + bins])
        return table

    def rates_table(self):
        """Text table: one line per op parameter with its bin rates."""
        lines = []
        for name, vectors in self.rates_by_op().items():
            if not vectors:
                lines.append(f'{name:<13} (no parameter)')
            for slot, rates in enumerate(vectors):
                label = name if slot == 0 else ''
                lines.append(f'{label:<13} {" ".join(f"{r:.2f}" for r in rates)}')
        return '\n'.join(lines)

    def rates_image(self):
        """(1, len(PARAMS), MAX_BINS, 1) float32 image of the rates (row = parameter, 0-padded),
        for tf.summary.image; rates stay in [0, 1]."""
        padded = tf.concat([self.rates, [0.0]], axis=0)
        return tf.clip_by_value(tf.gather(padded, BIN_INDEX), 0.0, 1.0)[None, :, :, None]


