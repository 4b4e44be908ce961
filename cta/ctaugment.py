"""CTAugment (control theory augment) as batched, stateless TensorFlow ops, exactly as the reference.

Each of the 19 ops has 0, 1 or 2 parameters; a parameter is a level in [0, 1) split into bins, and every
bin has a rate (an EMA of how well the EMA model still classifies images augmented with it). Images go to
8-bit levels round(255 x) and the ops act on the RGB image as the reference's PIL ops (libml.augment):
  autocontrast, blur, equalize, invert, smooth (17 bins): Image.blend(x, op(x), l)
  brightness, color, contrast, sharpness (17 bins): PIL enhance factor 0.1 + 1.9 l
  cutout (17 bins): square of side 1 + int(l min(W, H) 0.499), rows and columns [c - side//2, c + side//2)
      clipped, centre uniform, filled with level 127
  identity: no parameter
  posterize (8 bins): 1 + int(7.999 l) bits; solarize (17 bins): threshold int(255.999 l)
  rescale (17 x 6 bins): crop (s W, s H, W (1 - s), H (1 - s)), s = 0.25 l, resized back with
      geometry.METHODS[int(5.99 l2)] = lanczos, bicubic, bilinear, box, hamming, nearest
  rotate (17 bins): int(round((2l - 1) 45)) whole degrees; shear_x, shear_y (17 bins): (2l - 1) 0.3;
      geometric fill black
  translate_x, translate_y (17 bins): (2l - 1) 0.3 of the image width / height. The reference applied
      this value as a shift of 0.3 pixel at most (a no-op with nearest sampling); this port applies it as
      the fraction of the image size it was meant to be.

All bin rates live in ONE float32 tf.Variable (a flat vector, initialised to 1, trainable=False,
aggregation ONLY_FIRST_REPLICA): tf.train.Checkpoint saves it and it works under tf.distribute.

Interface: sample_training(n, seed) / sample_random(n, seed) -> params {'ops' (n, depth) int32,
'levels' (n, depth, 2) float64, 'bins' (n, depth, 2) int32 = int(level nbins 0.999) (-1 where absent),
'centre' (n, depth, 2) float64 cutout-centre fractions}; apply(images, params, xla) -> images;
update(ops, bins, proximity).
"""
from typing import NamedTuple

import numpy as np
import tensorflow as tf

from libml import augment
from libml import geometry

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
MAX_PARAMS = 2
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
ENGINE_IDS = np.array([augment.OPS.index(name) for name in OP_NAMES], np.int32)


class Policy(NamedTuple):
    """Old interface: ops (n, depth) int32; bins (n, depth, 2) int32 (-1 where absent); values (n, depth, 2)
    float32 levels (0 where absent); seed (2,) of the cutout centres."""
    ops: tf.Tensor
    bins: tf.Tensor
    values: tf.Tensor
    seed: tf.Tensor


def update_bins(ops, levels) -> tf.Tensor:
    """The reference's bin of each level for the rate update: int(level * nbins * 0.999); -1 where absent."""
    nbins = tf.gather(tf.constant(OP_NBINS), ops)
    bins = tf.cast(tf.floor(tf.cast(levels, tf.float64) * tf.cast(nbins, tf.float64) * 0.999), tf.int32)
    return tf.where(nbins > 0, bins, -1)


def program(ops, levels, centre, height: int, width: int) -> dict:
    """Engine program (libml.augment) of CTA ops (N, D) at levels (N, D, 2) float64."""
    level, level2 = tf.cast(levels[..., 0], tf.float64), tf.cast(levels[..., 1], tf.float64)
    signed = geometry.rounded((2.0 * level - 1.0) * 0.3)
    mapped = {
        'level': level,
        'factor': 0.1 + geometry.rounded(1.9 * level),
        'cutout': 1.0 + tf.floor(level * min(height, width) * 0.499),
        'none': tf.zeros_like(level),
        'bits': 1.0 + tf.floor(level * 7.999),
        'degrees': tf.round((2.0 * level - 1.0) * 45.0),
        'shift': signed,
        'shift_x': signed * width,
        'shift_y': signed * height,
        'threshold': tf.floor(level * 255.999),
    }
    mapping = {'autocontrast': 'level', 'blur': 'level', 'equalize': 'level', 'invert': 'level', 'smooth': 'level',
               'brightness': 'factor', 'color': 'factor', 'contrast': 'factor', 'sharpness': 'factor',
               'cutout': 'cutout', 'identity': 'none', 'posterize': 'bits', 'rescale': 'level', 'rotate': 'degrees',
               'shear_x': 'shift', 'shear_y': 'shift', 'solarize': 'threshold', 'translate_x': 'shift_x',
               'translate_y': 'shift_y'}
    kinds = list(mapped)
    kind = tf.gather(tf.constant([kinds.index(mapping[name]) for name in OP_NAMES], tf.int32), ops)
    value = tf.gather(tf.stack([mapped[k] for k in kinds], -1), kind, batch_dims=2)
    method = tf.floor(level2 * 5.99)
    value2 = tf.where(tf.equal(ops, OP_NAMES.index('rescale')), method, tf.zeros_like(method))
    centre = tf.stack([geometry.centre_pixels(centre[:, k], height, width) for k in range(centre.shape[1])], 1)
    return {'op': tf.gather(tf.constant(ENGINE_IDS), ops), 'value': value, 'value2': value2, 'centre': centre}


def proximity(probs, labels) -> tf.Tensor:
    """1 - 0.5 * sum_k |probs_k - onehot(label)_k| per row: 1 = certain and right, 0 = certain and wrong."""
    probs = tf.convert_to_tensor(probs, tf.float32)
    onehot = tf.one_hot(tf.cast(labels, tf.int32), tf.shape(probs)[-1], dtype=tf.float32)
    return 1.0 - 0.5 * tf.reduce_sum(tf.abs(probs - onehot), axis=-1)


class CTAugment(tf.Module):
    """CTAugment state (bin rates) and its batched sampling, application and update.

    depth ops per image; p = (rate + (1 - decay)) / max over the parameter's bins of the same quantity,
    bins with p < threshold get probability 0.
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
        parameter of absent slots) is 1 in bin 0."""
        padded = tf.concat([self.probabilities(), [0.0]], axis=0)
        return tf.concat([tf.gather(padded, BIN_INDEX), tf.one_hot([0], MAX_BINS)], axis=0)

    def _ops_and_centres(self, n, seed):
        op_seed, centre_seed, level_seed, bin_seed = augment.split_seed(seed, 4)
        ops = augment.uniform(op_seed, [n, self.depth], tf.int32, 0, len(OPS))
        return ops, augment.uniform(centre_seed, [n, self.depth, 2]), level_seed, bin_seed

    def sample_training(self, n, seed, cutout: bool = False) -> dict:
        """Training policy of n images: `depth` ops uniform per image; each parameter's bin drawn with
        probability p / sum(p) over its bins (inverse CDF of a uniform); level = (bin + U(0, 1)) / nbins.
        With `cutout`, also 'cutout' (n, 2): centre fractions of a final cutout at level 1 (FixMatch)."""
        ops, centre, level_seed, bin_seed = self._ops_and_centres(n, seed)
        p = tf.gather(self._bin_probabilities(), tf.gather(tf.constant(OP_PARAM), ops))  # (n, depth, 2, bins)
        target = tf.cast(augment.uniform(bin_seed, [n, self.depth, MAX_PARAMS]), tf.float32)
        total = 0.0
        for k in range(MAX_BINS):  # sums in a fixed order: the same floats with and without XLA
            total += p[..., k]
        target *= total
        bins, cumulative = tf.zeros_like(target, tf.int32), 0.0
        for k in range(MAX_BINS):  # bin = #{k: p_0 + ... + p_k <= u sum(p)}
            cumulative += p[..., k]
            bins += tf.cast(cumulative <= target, tf.int32)
        last = tf.reduce_max(tf.where(p > 0, tf.range(MAX_BINS), 0), axis=-1)
        bins = tf.minimum(bins, last)
        nbins = tf.cast(tf.gather(tf.constant(OP_NBINS), ops), tf.float64)
        u = augment.uniform(level_seed, [n, self.depth, MAX_PARAMS])
        levels = tf.where(nbins > 0, (tf.cast(bins, tf.float64) + u) / tf.maximum(nbins, 1.0), 0.0)
        params = {'ops': ops, 'levels': levels, 'bins': update_bins(ops, levels), 'centre': centre}
        if cutout:
            params['cutout'] = augment.uniform(augment.split_seed(seed, 5)[4], [n, 2])
        return params

    def sample_random(self, n, seed) -> dict:
        """Probe policy of n images: `depth` ops uniform per image, levels uniform in [0, 1)."""
        ops, centre, level_seed, _ = self._ops_and_centres(n, seed)
        nbins = tf.gather(tf.constant(OP_NBINS), ops)
        levels = tf.where(nbins > 0, augment.uniform(level_seed, [n, self.depth, MAX_PARAMS]), 0.0)
        return {'ops': ops, 'levels': levels, 'bins': update_bins(ops, levels), 'centre': centre}

    def apply(self, images, params, xla: bool = False) -> tf.Tensor:
        """The policy of `params` (and its final cutout when params has 'cutout') on [0, 1] images (N, H, W, C);
        an old-style Policy is accepted too."""
        if isinstance(params, Policy):
            params = self._from_policy(params)
        height, width = images.shape[1:3]
        prog = program(params['ops'], params['levels'], params['centre'], height, width)
        levels, _ = augment.apply_program(augment.to_levels(images), prog, xla=xla)
        if 'cutout' in params:  # the cutout op at level 1 on every image, as a last step
            side = tf.fill(tf.shape(params['ops'])[:1], 1 + int(min(height, width) * 0.499))
            mask = geometry.square_mask(height, width, geometry.centre_pixels(params['cutout'], height, width), side)
            levels = augment.select(mask, augment.CUTOUT_FILL, levels)
        return augment.from_levels(levels, xla=xla)

    def update(self, ops, bins, proximity=None) -> tf.Tensor:
        """rate[bin] = decay * rate[bin] + (1 - decay) * proximity, for every probe image in order and every
        (step, parameter) it used (bins >= 0), exactly as the sequential loop. Also update(policy, proximity).

        Closed form: a bin hit by updates q_1..q_K (in order) ends at decay^K rate + (1 - decay)
        sum_k decay^(K - k) q_k; K - k is counted with a reverse cumsum. Returns the new rates.
        """
        if proximity is None:  # old call: update(policy, proximity)
            ops, bins, proximity = ops.ops, ops.bins, bins
        offsets = tf.gather(tf.constant(OP_OFFSET), ops)
        bins = tf.cast(bins, tf.int32)
        flat_bins = tf.reshape(tf.where(bins >= 0, offsets + bins, NUM_BINS), [-1])
        prox = tf.reshape(tf.broadcast_to(tf.cast(proximity, tf.float32)[:, None, None], tf.shape(bins)), [-1])
        hits = tf.one_hot(flat_bins, NUM_BINS + 1, dtype=tf.float32)
        later_hits = tf.reduce_sum(tf.cumsum(hits, axis=0, exclusive=True, reverse=True) * hits, axis=1)
        weights = (1.0 - self.decay) * tf.pow(self.decay, later_hits) * prox
        added = tf.math.unsorted_segment_sum(weights, flat_bins, NUM_BINS + 1)[:NUM_BINS]
        counts = tf.reduce_sum(hits, axis=0)[:NUM_BINS]
        new_rates = tf.pow(self.decay, counts) * self.rates + added
        self.rates.assign(new_rates)
        return new_rates

    # ---- the old interface (policies with a seed), thin wrappers

    def _from_policy(self, policy):
        n = tf.shape(policy.ops)[0]
        return {'ops': policy.ops, 'levels': tf.cast(policy.values, tf.float64), 'bins': policy.bins,
                'centre': augment.uniform(policy.seed, [n, policy.ops.shape[1], 2])}

    def random_policy(self, n, seed):
        """Probe policy as a Policy (bins by the update rule int(level nbins 0.999))."""
        policy_seed, centre_seed = augment.split_seed(seed, 2)
        params = self.sample_random(n, policy_seed)
        return Policy(params['ops'], params['bins'], tf.cast(params['levels'], tf.float32), centre_seed)

    def strong(self, images, seed):
        """Training policy then a cutout at level 1 (side 16 at 32 px), from the current rates."""
        return self.apply(images, self.sample_training(tf.shape(images)[0], seed, cutout=True))

    # ---- monitoring

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
