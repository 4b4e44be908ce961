"""PIL's 8-bit image ops as batched TensorFlow ops, and the op engine of RandAugment, AutoAugment and
CTAugment (one op per image per step, any mix of ops and parameters in one batch).

Engine images are float32 (N, H, W, C) whole levels 0..255 with static shapes, C = 3 (RGB) or 1 (grey,
treated as an RGB image with R = G = B, which every op maps to R = G = B), and, for RandAugment and
AutoAugment (the reference's PIL RGBA image), an alpha (N, H, W, 1) of 0 or 255 beside them.
Every op reproduces Pillow bit for bit (tests/test_parity_*.py), with exact integer or explicitly
rounded float arithmetic, so results are the same on every batch split, with or without XLA:
- blend(a, b, w) = Image.blend = trunc(a + f32(w) * (b - a)) in float32, clipped to 0..255; the
  enhancers blend with a degenerate image: brightness black, color the grey L = (19595 R + 38470 G +
  7471 B + 2^15) >> 16, contrast the uniform int(mean(L) + 0.5), sharpness smooth(x).
- autocontrast: per channel lut[v] = int(v * s + o), s = 255 / (hi - lo), o = -lo * s (doubles);
  equalize: lut[v] = min(255, (step // 2 + #{pixels < v}) // step), step = (H W - #{v = max}) // 255
  (unchanged when step = 0); posterize keeps `bits` bits (0 bits: black, the reference's old Pillow);
  solarize inverts levels >= threshold; invert 255 - v.
- smooth / blur: PIL's 3x3 [[1,1,1],[1,5,1],[1,1,1]] / 13 and 5x5 ring / 16 kernels,
  floor(sum / scale + 0.5), the outer 1 / 2 pixel ring unchanged.
- RGBA: autocontrast, equalize, invert, posterize, solarize act on RGB and reset alpha to 255 (the
  reference converts to RGB and back); warps move alpha with the pixels; cutout sets RGB 127, alpha 0.
Engine op parameters (per image and step): `value` float64 and `value2` float64, `centre` int32 (2,):
  autocontrast, equalize, invert, blur, smooth  value = blend weight w (1 = the op itself)
  brightness, color, contrast, sharpness        value = enhance factor (1 = unchanged)
  posterize / solarize                          value = bits kept / threshold level
  rotate / shear_x, shear_y / translate_x, _y   value = whole degrees / coefficient / pixels
  rescale                                       value = level (crop 0.25 level per side), value2 = method
  cutout                                        value = square side in pixels, centre = (row, column)
"""
import tensorflow as tf

from libml import geometry

OPS = ('identity', 'autocontrast', 'equalize', 'invert', 'blur', 'smooth', 'brightness', 'color',
       'contrast', 'sharpness', 'posterize', 'solarize', 'rotate', 'shear_x', 'shear_y',
       'translate_x', 'translate_y', 'rescale', 'cutout')
FAMILIES = {'tone': ('autocontrast', 'equalize', 'invert', 'brightness', 'contrast', 'posterize', 'solarize'),
            'affine': ('rotate', 'shear_x', 'shear_y', 'translate_x', 'translate_y'),
            'filter': ('blur', 'smooth', 'sharpness'), 'color': ('color',), 'rescale': ('rescale',),
            'cutout': ('cutout',)}
FAMILY_OF = {name: family for family, names in FAMILIES.items() for name in names}
RGB_CONVERTING = ('autocontrast', 'equalize', 'invert', 'posterize', 'solarize')
CUTOUT_FILL = 127.0


def uniform(seed, shape, dtype=tf.float64, minval=0, maxval=None) -> tf.Tensor:
    """Stateless Philox uniform numbers: [minval, maxval) ints, or [0, 1) floats k 2^-53 (float64) / k 2^-24
    (float32) from uniform integers k (TensorFlow's float draws differ under XLA; its integer draws do not)."""
    if dtype.is_integer:
        return tf.random.stateless_uniform(shape, seed, minval=minval, maxval=maxval, dtype=dtype, alg='philox')
    bits = 53 if dtype == tf.float64 else 24
    k = tf.random.stateless_uniform(shape, seed, minval=0, maxval=2 ** bits, dtype=tf.int64, alg='philox')
    return tf.cast(tf.cast(k, tf.float64) * 2.0 ** -bits, dtype)


def split_seed(seed, num: int) -> list:
    """`num` independent stateless seeds (each shape [2]) derived from `seed`."""
    return tf.unstack(tf.random.experimental.stateless_split(seed, num, alg='philox'))


def to_levels(images) -> tf.Tensor:
    """[0, 1] float images -> float32 whole levels round(255 x)."""
    return tf.clip_by_value(tf.round(tf.cast(images, tf.float32) * 255.0), 0.0, 255.0)


def from_levels(levels, alpha=None, xla: bool = False) -> tf.Tensor:
    """Levels -> [0, 1] float32 level / 255; with an alpha, alpha-0 pixels become 0.5 (grey: the reference's
    0 in [-1, 1]). Under XLA (which would turn the division into an inexact product) as
    float32(level * double(1/255)), equal for every level."""
    if alpha is not None:
        levels = select(alpha == 0.0, 127.5, levels)
    if xla:
        return tf.cast(tf.cast(levels, tf.float64) * (1.0 / 255.0), tf.float32)
    return levels / 255.0


def _rows(vector, rank=4):
    """(N,) -> (N, 1, ..., 1) of the given rank."""
    return tf.reshape(vector, [-1] + [1] * (rank - 1))


def select(condition, a, b) -> tf.Tensor:
    """a where condition else b, as b (1 - m) + a m: exact for finite values, several times faster than
    tf.where; the products with m stay at the shape of the condition (often (N, H, W, 1)) for a scalar a."""
    mask = tf.cast(condition, tf.float32)
    return b * (1.0 - mask) + a * mask


def blend(a, b, weight) -> tf.Tensor:
    """PIL Image.blend: trunc(a + f32(w) (b - a)) in float32, clipped to 0..255. `weight` is float64 (N,)
    or broadcastable; geometry.rounded keeps XLA from fusing the product and the sum into one FMA."""
    weight = tf.cast(weight, tf.float32)
    weight = _rows(weight) if weight.shape.rank == 1 else weight
    return tf.clip_by_value(tf.floor(a + geometry.rounded(weight * (b - a))), 0.0, 255.0)


def luma(colour: tf.Tensor) -> tf.Tensor:
    """PIL convert('L'): (19595 R + 38470 G + 7471 B + 2^15) >> 16 as (N, H, W, 1) (exact in float32);
    grey images as they are."""
    if colour.shape[-1] == 1:
        return colour
    total = colour[..., :1] * 19595.0 + colour[..., 1:2] * 38470.0 + colour[..., 2:3] * 7471.0 + 32768.0
    return tf.floor(total * (1.0 / 65536.0))


def mean_level(colour: tf.Tensor) -> tf.Tensor:
    """(N,) int(mean(L) + 0.5) of the grey image, as floor((2 sum + count) / (2 count)) on integers."""
    height, width = colour.shape[1:3]
    total = tf.cast(tf.reduce_sum(luma(colour), axis=[1, 2, 3]), tf.int32)
    return tf.cast((2 * total + height * width) // (2 * height * width), tf.float32)


# ------------------------------------------------------------------------------------------------
# Tone ops (per channel, pixel by pixel)

def autocontrast_lut(colour: tf.Tensor) -> tf.Tensor:
    """ImageOps.autocontrast tables (N, C, 256): int(v * s + o), s = 255 / (hi - lo), o = -lo * s (doubles)
    per image and channel, clipped; the identity when hi <= lo."""
    lo = tf.cast(tf.reduce_min(colour, axis=[1, 2]), tf.float64)[..., None]
    hi = tf.cast(tf.reduce_max(colour, axis=[1, 2]), tf.float64)[..., None]
    ramp = tf.range(256, dtype=tf.float64)
    scale = 255.0 / tf.maximum(hi - lo, 1.0)
    lut = tf.floor(geometry.rounded(ramp * scale) + geometry.rounded(-lo * scale))
    return tf.cast(tf.where(hi > lo, tf.clip_by_value(lut, 0.0, 255.0), ramp), tf.float32)


def equalize_lut(colour: tf.Tensor, xla: bool = False) -> tf.Tensor:
    """ImageOps.equalize tables (N, C, 256): lut[v] = min(255, (step // 2 + #{pixels < v}) // step),
    step = (H W - #{pixels at the top level}) // 255; the identity when step = 0. The histograms come from
    bincount, or unsorted_segment_sum under XLA (the same counts)."""
    n = tf.shape(colour)[0]
    height, width, channels = colour.shape[1:]
    bins = _lut_index(colour)
    if xla:
        histogram = tf.math.unsorted_segment_sum(tf.ones_like(bins), bins, n * channels * 256)
    else:
        histogram = tf.math.bincount(bins, minlength=n * channels * 256, maxlength=n * channels * 256)
    histogram = tf.reshape(histogram, [n, channels, 256])
    top = tf.cast(tf.reduce_max(colour, axis=[1, 2]), tf.int32)
    step = ((height * width - tf.gather(histogram, top, batch_dims=2)) // 255)[..., None]
    below = tf.cumsum(histogram, axis=-1, exclusive=True)
    lut = tf.minimum((step // 2 + below) // tf.maximum(step, 1), 255)
    return tf.cast(tf.where(step > 0, lut, tf.range(256)), tf.float32)


def _lut_index(colour):
    """Index of each pixel's level in its image and channel's row of a flattened (N, C, 256) table."""
    n, channels = tf.shape(colour)[0], colour.shape[-1]
    return (tf.range(n)[:, None, None, None] * channels + tf.range(channels)) * 256 + tf.cast(colour, tf.int32)


def apply_lut(colour: tf.Tensor, lut: tf.Tensor) -> tf.Tensor:
    """colour[n, y, x, c] -> lut[n, c, colour[n, y, x, c]] (one gather)."""
    return tf.gather(tf.reshape(lut, [-1]), _lut_index(colour))


def posterize(colour: tf.Tensor, bits) -> tf.Tensor:
    """ImageOps.posterize: keeps the top `bits` (N,) bits of each level (0 bits: black)."""
    quantum = _rows(tf.pow(2.0, 8.0 - tf.clip_by_value(tf.cast(bits, tf.float32), 0.0, 8.0)))
    return tf.floor(colour / quantum) * quantum  # exact: quantum is a power of two


def solarize(colour: tf.Tensor, threshold) -> tf.Tensor:
    """ImageOps.solarize: levels >= threshold (N,) become 255 - v."""
    return select(colour >= _rows(tf.cast(threshold, tf.float32)), 255.0 - colour, colour)


def _tone_family(colour, op, value, names, xla=False):
    ramp = tf.range(256, dtype=tf.float32)
    weight = tf.cast(value, tf.float32)[:, None, None]
    candidates = {  # blend(x, op(x), w) = a table of the level for autocontrast and equalize
        'autocontrast': lambda: apply_lut(colour, blend(ramp, autocontrast_lut(colour), weight)),
        'equalize': lambda: apply_lut(colour, blend(ramp, equalize_lut(colour, xla), weight)),
        'invert': lambda: blend(colour, 255.0 - colour, value),
        'brightness': lambda: blend(0.0, colour, value),
        'contrast': lambda: blend(_rows(mean_level(colour)), colour, value),
        'posterize': lambda: posterize(colour, value),
        'solarize': lambda: solarize(colour, value),
    }
    present = [name for name in FAMILIES['tone'] if name in names]
    out = candidates[present[0]]()
    for name in present[1:]:
        out = select(_rows(op == OPS.index(name)), candidates[name](), out)
    return out


# ------------------------------------------------------------------------------------------------
# Filters, colour

def _box(x, size):
    """Sums over size x size windows (valid positions), separably: (N, H - size + 1, W - size + 1, C)."""
    height, width = x.shape[1:3]
    rows = sum(x[:, :, k:width - size + 1 + k] for k in range(size))
    return sum(rows[:, k:height - size + 1 + k] for k in range(size))


def _kernel_filter(x, radius, scale):
    """PIL's SMOOTH (radius 1: [[1,1,1],[1,5,1],[1,1,1]] / 13) or BLUR (radius 2: the 5x5 ring of ones / 16)
    kernel filter: floor(sum / scale + 0.5) inside, the outer ring of width `radius` unchanged."""
    height, width = x.shape[1:3]
    if height <= 2 * radius or width <= 2 * radius:
        return x
    if radius == 1:
        total = _box(x, 3) + 4.0 * x[:, 1:-1, 1:-1]
    else:
        total = _box(x, 5) - _box(x[:, 1:-1, 1:-1], 3)
    # floor((2 sum + scale) / (2 scale)) exactly: the quotient is an integer or >= 1 / (2 scale) below the next
    # one, so +0.5 and a product by the rounded reciprocal (what XLA makes of a division) cannot cross it
    inside = tf.floor((2.0 * total + (scale + 0.5)) * (1.0 / (2 * scale)))
    r = radius
    middle = tf.concat([x[:, r:-r, :r], inside, x[:, r:-r, -r:]], axis=2)
    return tf.concat([x[:, :r], middle, x[:, -r:]], axis=1)


def smooth(colour: tf.Tensor) -> tf.Tensor:
    """ImageFilter.SMOOTH."""
    return _kernel_filter(colour, 1, 13)


def blur(colour: tf.Tensor) -> tf.Tensor:
    """ImageFilter.BLUR."""
    return _kernel_filter(colour, 2, 16)


def _filter_family(colour, op, value, names):
    """blur / smooth: blend(x, filter(x), w); sharpness: blend(smooth(x), x, factor)."""
    sharp = _rows(op == OPS.index('sharpness'))
    smoothed = smooth(colour) if {'smooth', 'sharpness'} & set(names) else colour
    if 'blur' in names:
        filtered = blur(colour) if len(names) == 1 else select(_rows(op == OPS.index('blur')), blur(colour), smoothed)
    else:
        filtered = smoothed
    if 'sharpness' not in names:
        return blend(colour, filtered, value)
    return blend(select(sharp, smoothed, colour), select(sharp, colour, filtered), value)


def color(colour: tf.Tensor, factor) -> tf.Tensor:
    """ImageEnhance.Color: blend(L, x, factor); the identity on grey images."""
    return blend(luma(colour), colour, factor)


# ------------------------------------------------------------------------------------------------
# The engine

def _apply_family(family, x, alpha, op, value, value2, centre, names, xla=False):
    """Family `family` on every image of (x, alpha) (images of other ops get values the caller drops)."""
    height, width = x.shape[1:3]
    if family == 'affine':
        kind_of_op = [geometry.AFFINE_KINDS.index(name) if name in geometry.AFFINE_KINDS else 0 for name in OPS]
        coefficients = geometry.affine_coefficients(tf.gather(tf.constant(kind_of_op), op), value, height, width)
        if alpha is None:
            return geometry.warp(x, coefficients), None
        return geometry.warp((x, alpha), coefficients)
    if family == 'tone':
        x = _tone_family(x, op, value, names, xla)
        if alpha is not None:
            reset = tf.reduce_any(tf.stack([op == OPS.index(name) for name in RGB_CONVERTING]), axis=0)
            alpha = select(_rows(reset), 255.0, alpha)
    elif family == 'filter':
        x = _filter_family(x, op, value, names)
    elif family == 'color':
        x = color(x, value)
    elif family == 'rescale':
        level = tf.clip_by_value(value, 0.0, 1.0)
        method = tf.clip_by_value(tf.cast(value2, tf.int32), 0, len(geometry.METHODS) - 1)
        x = geometry.rescale(x, level, method)
    elif family == 'cutout':
        side = tf.clip_by_value(tf.cast(value, tf.int32), 0, 2 * max(height, width))
        mask = geometry.square_mask(height, width, centre, side)
        x = select(mask, CUTOUT_FILL, x)
        alpha = None if alpha is None else select(mask, 0.0, alpha)
    return x, alpha


def _groups(used, xla):
    """Static groups of ops computed together: one per family (XLA) or one per op with the warps merged."""
    used = [name for name in OPS if name in used and name != 'identity']
    if xla:
        return [tuple(n for n in names if n in used) for names in FAMILIES.values() if set(names) & set(used)]
    affine = tuple(n for n in used if FAMILY_OF[n] == 'affine')
    return [(n,) for n in used if FAMILY_OF[n] != 'affine'] + ([affine] if affine else [])


def apply_step(x, alpha, op, value, value2, centre, used=OPS, xla: bool = False) -> tuple:
    """Engine op OPS[op[i]] on image i with its parameters; returns (x, alpha) (alpha None: no alpha).
    `used`: the op names that may occur (static).

    xla=False: images are partitioned by op group (tf.dynamic_partition of the row indices), each group
    computed on its own images only and written back with tensor_scatter_nd_update. xla=True: every group
    on every image, selected per image (static shapes, XLA-compilable). Both give identical results.
    """
    groups = _groups(used, xla)
    if not groups:
        return x, alpha
    group_of_op = [len(groups)] * len(OPS)  # identity and unused ops -> the pass-through group
    for g, names in enumerate(groups):
        for name in names:
            group_of_op[OPS.index(name)] = g
    op = tf.cast(op, tf.int32)
    value, value2 = tf.cast(value, tf.float64), tf.cast(value2, tf.float64)
    group = tf.gather(tf.constant(group_of_op), op)
    if xla:
        out_x, out_alpha = x, alpha
        for g, names in enumerate(groups):
            y, y_alpha = _apply_family(FAMILY_OF[names[0]], x, alpha, op, value, value2, centre, names, True)
            chosen = _rows(group == g)
            out_x = select(chosen, y, out_x)
            out_alpha = None if alpha is None else select(chosen, y_alpha, out_alpha)
        return out_x, out_alpha
    rows = tf.range(tf.shape(x)[0])
    parts = tf.dynamic_partition(rows, group, len(groups) + 1)[:-1]  # the pass-through rows are not gathered
    packed = tf.concat([tf.stack([tf.cast(op, tf.float64), value, value2], 1), tf.cast(centre, tf.float64)], 1)
    xs, alphas = [], []
    for names, idx in zip(groups, parts):
        p = tf.gather(packed, idx)
        part_alpha = None if alpha is None else tf.gather(alpha, idx)
        y, y_alpha = _apply_family(FAMILY_OF[names[0]], tf.gather(x, idx), part_alpha, tf.cast(p[:, 0], tf.int32),
                                   p[:, 1], p[:, 2], tf.cast(p[:, 3:], tf.int32), names)
        xs.append(y)
        alphas.append(y_alpha)
    changed = tf.concat(parts, 0)[:, None]  # each row at most once: x with the groups' rows replaced
    out = tf.tensor_scatter_nd_update(x, changed, tf.concat(xs, 0))
    if alpha is None:
        return out, None
    return out, tf.tensor_scatter_nd_update(alpha, changed, tf.concat(alphas, 0))


def apply_program(x, program: dict, used=OPS, alpha=None, xla: bool = False) -> tuple:
    """Runs a program (dict of op (N, D) int32, value, value2 (N, D) float64, centre (N, D, 2) int32) step
    by step, step 0 first; returns (x, alpha)."""
    for step in range(program['op'].shape[1]):
        x, alpha = apply_step(x, alpha, program['op'][:, step], program['value'][:, step],
                              program['value2'][:, step], program['centre'][:, step], used, xla)
    return x, alpha


# ------------------------------------------------------------------------------------------------
# The weak view (FixMatch's flip + pad-and-crop)

def sample_weak(n, seed, flip: bool = True, pad: int = 4) -> dict:
    """{'flip': (n,) bool (p = 1/2 when `flip`), 'offset': (n, 2) int32 uniform in [0, 2 pad]}."""
    flip_seed, offset_seed = split_seed(seed, 2)
    flips = uniform(flip_seed, [n], tf.float32) < 0.5
    if not flip:
        flips = tf.zeros_like(flips)
    return {'flip': flips, 'offset': uniform(offset_seed, [n, 2], tf.int32, 0, 2 * pad + 1)}


def weak(images, seed, flip: bool = True, pad: int = 4) -> tf.Tensor:
    """FixMatch weak view of [0, 1] images: mirror with p = 1/2 (when `flip`), reflect-pad by `pad`
    pixels, crop back at a uniform offset. (Sampling and application in one call.)"""
    params = sample_weak(tf.shape(images)[0], seed, flip, pad)
    return geometry.weak(images, params['flip'], params['offset'], pad)
