"""Batched image augmentation as TensorFlow ops: weak view, RandAugment, and the op engine CTAugment uses.

Conventions (every function here):
- images: float32 tensors (N, H, W, C) in [0, 1], C = 1 (grayscale) or 3 (RGB); outputs stay in [0, 1].
- magnitudes: one value per image, shape (N,) (a scalar is broadcast to the batch).
- randomness is stateless: `seed` is an int32/int64 tensor of shape [2]; the same seed gives the same
  output. Sub-seeds come from tf.random.experimental.stateless_split.
- no Python loop over images: the ops run on whole batches, inside tf.function and tf.data map
  functions (not under XLA: ImageProjectiveTransformV3 has no XLA kernel).
- ops that PIL defines on 8-bit levels (posterize, solarize, equalize, autocontrast) quantize to the
  256 levels round(x * 255) internally and return levels / 255.

Choices and differences from PIL:
- rotate/shear/translate use nearest-neighbour sampling (PIL's default resample) and fill uncovered
  pixels with 0 (black, PIL's default fill). Rotation is counter-clockwise about the image centre
  ((W-1)/2, (H-1)/2 in pixel-index coordinates); shears are about the top-left pixel
  (input x = x + shear * y for shear_x); translate_x by a fraction f samples input x = x + f * W,
  i.e. the content moves left by f * W pixels for f > 0.
- Per RandAugment/CTAugment step, every image whose op is affine goes through ONE
  ImageProjectiveTransformV3 call with its own 3x3 matrix. Consecutive steps are not fused into one
  matrix, so two affine steps behave exactly as two PIL calls (two resamplings, two border checks).
- blur/smooth keep the outer ring of width kernel_size // 2 unchanged, as PIL's 3x3/5x5 filters do;
  this also gives sharpness its unchanged border pixels. Filters, blends and geometric ops work in
  float and do not round to 8-bit levels.
- contrast blends with the mean grey level rounded to an integer level, like PIL
  (int(mean(L) + 0.5)); the grey image L = 0.299 R + 0.587 G + 0.114 B is not rounded.
- autocontrast stretches each channel's [lo, hi] levels to [0, 255] with floor((v - lo) * 255 / (hi - lo))
  (PIL's int(v * scale + offset)).
- rescale resamples with separable per-image weight matrices (one batched matmul per axis, any mix
  of crop sizes and methods in one batch); kernels read the true neighbours outside the crop
  window instead of replicating the crop's edge, and weights are renormalised at the image border.
"""
import math

import tensorflow as tf


GRAY = 0.5  # cutout fill value
GEOMETRIC_FILL = 0.0  # value of pixels a rotate/shear/translate uncovers
INTERPOLATION = 'NEAREST'
NUM_PARAMS = 2  # parameters per op in the engine (only rescale uses two)

# The op engine: one op per image, natural parameters (N, NUM_PARAMS) per image.
#   identity                                        -
#   autocontrast, equalize, invert, blur, smooth    p0 = blend alpha (1 = the op's full effect)
#   brightness, color, contrast, sharpness          p0 = PIL ImageEnhance factor (1 = unchanged)
#   posterize                                       p0 = bits kept (1..8)
#   solarize                                        p0 = threshold level (0..256)
#   rotate                                          p0 = degrees, counter-clockwise
#   shear_x, shear_y                                p0 = shear coefficient
#   translate_x, translate_y                        p0 = fraction of the image width / height
#   rescale                                         p0 = crop level in [0, 1], p1 = method index
#   cutout                                          p0 = square side in pixels
OPS = ('identity', 'autocontrast', 'equalize', 'invert', 'blur', 'smooth', 'brightness', 'color',
       'contrast', 'sharpness', 'posterize', 'solarize', 'rotate', 'shear_x', 'shear_y',
       'translate_x', 'translate_y', 'rescale', 'cutout')
GEOMETRIC_OPS = ('rotate', 'shear_x', 'shear_y', 'translate_x', 'translate_y')  # contiguous in OPS
RESCALE_METHODS = ('lanczos3', 'bicubic', 'bilinear', 'area', 'mitchellcubic', 'nearest')

# RandAugment as FixMatch-RA: 14 ops, magnitude m in 1..9, two ops per image, then cutout.
RA_OPS = ('identity', 'autocontrast', 'equalize', 'rotate', 'solarize', 'color', 'contrast',
          'brightness', 'sharpness', 'shear_x', 'shear_y', 'translate_x', 'translate_y', 'posterize')
RA_SIGNED = ('rotate', 'shear_x', 'shear_y', 'translate_x', 'translate_y')
RA_DEPTH = 2
RA_MAX_MAGNITUDE = 9


_BLUR_KERNEL = [[1, 1, 1, 1, 1], [1, 0, 0, 0, 1], [1, 0, 0, 0, 1], [1, 0, 0, 0, 1], [1, 1, 1, 1, 1]]
_SMOOTH_KERNEL = [[1, 1, 1], [1, 5, 1], [1, 1, 1]]
_LUMA = (0.299, 0.587, 0.114)


# ----------------------------------------------------------------------------------------------
# Helpers

def split_seed(seed, num):
    """`num` independent stateless seeds (each shape [2]) derived from `seed`."""
    return tf.unstack(tf.random.experimental.stateless_split(seed, num))


def batch_vector(value, images, dtype=tf.float32):
    """`value` (scalar or (N,)) as a (N,) tensor of `dtype`."""
    return tf.broadcast_to(tf.cast(value, dtype), tf.shape(images)[:1])


def _per_image(vector):
    """(N,) -> (N, 1, 1, 1), to broadcast against images."""
    return tf.reshape(vector, [-1, 1, 1, 1])


def _height_width(images):
    shape = tf.shape(images)
    return shape[1], shape[2]


def select(condition, a, b):
    """a where condition else b, broadcasting; as a * m + b * (1 - m), exact for finite a and b and
    several times faster than tf.where (SelectV2) on CPU."""
    mask = tf.cast(condition, tf.float32)
    return a * mask + b * (1.0 - mask)


def to_levels(images):
    """8-bit levels round(x * 255) as float32."""
    return tf.round(images * 255.0)


def blend(a, b, alpha):
    """PIL Image.blend: a * (1 - alpha) + b * alpha, per-image alpha, clipped to [0, 1]."""
    alpha = _per_image(batch_vector(alpha, a))
    return tf.clip_by_value(a * (1.0 - alpha) + b * alpha, 0.0, 1.0)


def grayscale(images):
    """L = 0.299 R + 0.587 G + 0.114 B as (N, H, W, 1); a 1-channel image is returned as is."""
    if images.shape[-1] == 1:
        return images
    red, green, blue = images[..., 0:1], images[..., 1:2], images[..., 2:3]
    return _LUMA[0] * red + _LUMA[1] * green + _LUMA[2] * blue


# ----------------------------------------------------------------------------------------------
# Pixel ops

def identity(images):
    return tf.identity(images)


def invert(images):
    """1 - x."""
    return 1.0 - images


def autocontrast(images):
    """Per image and channel, maps levels [lo, hi] to [0, 255]: floor((v - lo) * 255 / (hi - lo)).

    A channel with a single level (hi == lo) is unchanged. The floor gets 1e-3 of slack so that
    float rounding cannot turn an exact integer (e.g. 255 at v = hi) into the level below; true
    fractional parts are at most 1 - 1/255, so the slack never changes a level otherwise.
    """
    levels = to_levels(images)
    lo = tf.reduce_min(levels, axis=[1, 2], keepdims=True)
    span = tf.reduce_max(levels, axis=[1, 2], keepdims=True) - lo
    lo = tf.where(span > 0, lo, 0.0)
    scale = tf.where(span > 0, 255.0 / tf.maximum(span, 1.0), 1.0)
    return tf.floor((levels - lo) * scale + 1e-3) / 255.0


def equalize(images):
    """PIL ImageOps.equalize per image and channel.

    With h the 256-bin histogram, last = count of the highest level present, total = H * W:
    step = (total - last) // 255; lut[i] = min(255, (step // 2 + sum_{j<i} h[j]) // step);
    step == 0 (e.g. a single level) leaves the channel unchanged.
    """
    n = tf.shape(images)[0]
    height, width = _height_width(images)
    channels = tf.shape(images)[3]
    levels = tf.cast(to_levels(images), tf.int32)
    rows = n * channels  # one histogram row per (image, channel)
    row_of_pixel = tf.range(n)[:, None, None, None] * channels + tf.range(channels)
    bin_ids = levels + 256 * row_of_pixel
    histogram = tf.math.bincount(bin_ids, minlength=rows * 256, maxlength=rows * 256, dtype=tf.int32)
    histogram = tf.reshape(histogram, [rows, 256])
    top_level = tf.reshape(tf.reduce_max(levels, axis=[1, 2]), [rows])
    last_count = tf.gather(histogram, top_level, batch_dims=1)
    step = (height * width - last_count) // 255
    below = tf.cumsum(histogram, axis=1, exclusive=True)
    lut = tf.minimum((below + step[:, None] // 2) // tf.maximum(step, 1)[:, None], 255)
    lut = tf.where(step[:, None] > 0, lut, tf.range(256)[None, :])
    equalized = tf.gather(tf.reshape(lut, [-1]), bin_ids)
    return tf.cast(equalized, tf.float32) / 255.0


def _filter(images, kernel, scale):
    """Correlates every channel with kernel / scale; the outer ring of width k // 2 keeps its input."""
    size = len(kernel)
    radius = size // 2
    channels = images.shape[-1]
    weights = tf.constant(kernel, tf.float32)[:, :, None, None] / scale
    weights = tf.tile(weights, [1, 1, channels, 1])
    filtered = tf.nn.depthwise_conv2d(images, weights, [1, 1, 1, 1], 'SAME')
    height, width = _height_width(images)
    rows = tf.range(height)
    cols = tf.range(width)
    inside_rows = (rows >= radius) & (rows < height - radius)
    inside_cols = (cols >= radius) & (cols < width - radius)
    inside = (inside_rows[:, None] & inside_cols[None, :])[None, :, :, None]
    return select(inside, filtered, images)


def blur(images):
    """PIL ImageFilter.BLUR: 5x5 ring of ones (centre 3x3 zero) / 16; 2-pixel border unchanged."""
    return _filter(images, _BLUR_KERNEL, 16.0)


def smooth(images):
    """PIL ImageFilter.SMOOTH: [[1,1,1],[1,5,1],[1,1,1]] / 13; 1-pixel border unchanged."""
    return _filter(images, _SMOOTH_KERNEL, 13.0)


def brightness(images, factor):
    """PIL ImageEnhance.Brightness: blend(black, x, factor) = x * factor, clipped."""
    return blend(tf.zeros_like(images), images, factor)


def color(images, factor):
    """PIL ImageEnhance.Color: blend(grey L image, x, factor); identity on 1-channel images."""
    if images.shape[-1] == 1:
        return tf.identity(images)
    return blend(tf.broadcast_to(grayscale(images), tf.shape(images)), images, factor)


def contrast(images, factor):
    """PIL ImageEnhance.Contrast: blend(uniform image of the mean grey level, x, factor).

    The mean level is int(mean(255 * L) + 0.5) / 255 with L the grey image.
    """
    mean_level = tf.floor(tf.reduce_mean(grayscale(images) * 255.0, axis=[1, 2, 3], keepdims=True) + 0.5)
    degenerate = tf.broadcast_to(mean_level / 255.0, tf.shape(images))
    return blend(degenerate, images, factor)


def sharpness(images, factor):
    """PIL ImageEnhance.Sharpness: blend(smooth(x), x, factor); border pixels unchanged."""
    return blend(smooth(images), images, factor)


def posterize(images, bits):
    """Keeps the top `bits` bits of each 8-bit level: floor(v / 2^(8-bits)) * 2^(8-bits)."""
    quantum = _per_image(tf.pow(2.0, 8.0 - batch_vector(bits, images)))
    return tf.floor(to_levels(images) / quantum) * quantum / 255.0


def solarize(images, threshold):
    """Levels v >= threshold (0..256) become 255 - v."""
    levels = to_levels(images)
    threshold = _per_image(batch_vector(threshold, images))
    return select(levels >= threshold, 255.0 - levels, levels) / 255.0


# ----------------------------------------------------------------------------------------------
# Geometric ops: (N, 8) projective transforms mapping output pixel (x, y) to input
# ((a0 x + a1 y + a2) / k, (b0 x + b1 y + b2) / k), k = c0 x + c1 y + 1 (here c0 = c1 = 0).

def _transform(images, transforms):
    """One ImageProjectiveTransformV3 call with per-image transforms (N, 8)."""
    return tf.raw_ops.ImageProjectiveTransformV3(
        images=images, transforms=tf.cast(transforms, tf.float32), output_shape=tf.shape(images)[1:3],
        fill_value=GEOMETRIC_FILL, interpolation=INTERPOLATION, fill_mode='CONSTANT')


def _affine_rows(a0, a1, a2, b0, b1, b2):
    zeros = tf.zeros_like(a0)
    return tf.stack([a0, a1, a2, b0, b1, b2, zeros, zeros], axis=-1)


def rotation_transforms(degrees, height, width):
    """Counter-clockwise rotation by `degrees` (N,) about ((W-1)/2, (H-1)/2)."""
    theta = degrees * (math.pi / 180.0)
    cos, sin = tf.cos(theta), tf.sin(theta)
    cx = (tf.cast(width, tf.float32) - 1.0) / 2.0
    cy = (tf.cast(height, tf.float32) - 1.0) / 2.0
    return _affine_rows(cos, -sin, cx - cos * cx + sin * cy, sin, cos, cy - sin * cx - cos * cy)


def geometric_transforms(kind, value, height, width):
    """(N, 8) transforms; kind (N,) indexes GEOMETRIC_OPS, value (N,) is its engine parameter."""
    ones, zeros = tf.ones_like(value), tf.zeros_like(value)
    width_f, height_f = tf.cast(width, tf.float32), tf.cast(height, tf.float32)
    candidates = tf.stack([
        rotation_transforms(value, height, width),
        _affine_rows(ones, value, zeros, zeros, ones, zeros),  # shear_x: x_in = x + v y
        _affine_rows(ones, zeros, zeros, value, ones, zeros),  # shear_y: y_in = y + v x
        _affine_rows(ones, zeros, value * width_f, zeros, ones, zeros),  # translate_x
        _affine_rows(ones, zeros, zeros, zeros, ones, value * height_f),  # translate_y
    ], axis=1)
    return tf.gather(candidates, kind, batch_dims=1)


def _geometric(images, name, value):
    height, width = _height_width(images)
    kind = tf.fill(tf.shape(images)[:1], GEOMETRIC_OPS.index(name))
    return _transform(images, geometric_transforms(kind, batch_vector(value, images), height, width))


def rotate(images, degrees):
    """Rotates counter-clockwise by `degrees` about the centre; nearest sampling, fill 0."""
    return _geometric(images, 'rotate', degrees)


def shear_x(images, shear):
    """Input x = x + shear * y (about the top-left pixel); nearest sampling, fill 0."""
    return _geometric(images, 'shear_x', shear)


def shear_y(images, shear):
    """Input y = y + shear * x (about the top-left pixel); nearest sampling, fill 0."""
    return _geometric(images, 'shear_y', shear)


def translate_x(images, fraction):
    """Input x = x + fraction * W: content moves left by fraction * W pixels; fill 0."""
    return _geometric(images, 'translate_x', fraction)


def translate_y(images, fraction):
    """Input y = y + fraction * H: content moves up by fraction * H pixels; fill 0."""
    return _geometric(images, 'translate_y', fraction)


# ----------------------------------------------------------------------------------------------
# Rescale: centre crop then resize back, as one separable resampling per axis.

def _cubic(distance, b, c):
    """Mitchell-Netravali family on |x|: (b, c) = (0, 0.5) Keys bicubic, (1/3, 1/3) Mitchell."""
    x = distance
    near = ((12 - 9 * b - 6 * c) * x ** 3 + (-18 + 12 * b + 6 * c) * x ** 2 + (6 - 2 * b)) / 6
    far = ((-b - 6 * c) * x ** 3 + (6 * b + 30 * c) * x ** 2 + (-12 * b - 48 * c) * x + (8 * b + 24 * c)) / 6
    return tf.where(x < 1, near, tf.where(x < 2, far, tf.zeros_like(x)))


def _lanczos3(distance):
    x = tf.maximum(distance, 1e-6)
    sinc = tf.sin(math.pi * x) / (math.pi * x)
    sinc3 = tf.sin(math.pi * x / 3) / (math.pi * x / 3)
    return tf.where(distance < 1e-6, tf.ones_like(x), tf.where(distance < 3, sinc * sinc3, tf.zeros_like(x)))


def resample_weights(size, level, method):
    """(N, size, size) weights W with out[o] = sum_i W[o, i] in[i] along one axis.

    The crop keeps the window [s, size - s) (pixel-edge coordinates), s = 0.25 * level * size, i.e. a
    centre region of side (1 - 2 * 0.25 * level) * size, resampled to `size` with the kernel
    RESCALE_METHODS[method]; level 0 is the identity for every method (as PIL's resize to the same
    size). Output pixel o covers the input interval [s + o r, s + (o + 1) r),
    r = 1 - 0.5 * level, with its centre at index coordinate s + (o + 0.5) r - 0.5.
    """
    size_f = tf.cast(size, tf.float32)
    start = 0.25 * level * size_f
    ratio = 1.0 - 0.5 * level
    positions = tf.range(size_f)
    lo_edge = start[:, None] + positions[None, :] * ratio[:, None]
    hi_edge = lo_edge + ratio[:, None]
    centre = lo_edge + 0.5 * ratio[:, None] - 0.5
    distance = tf.abs(centre[:, :, None] - positions[None, None, :])
    nearest = tf.clip_by_value(tf.floor(centre + 0.5), 0.0, size_f - 1.0)
    overlap = tf.minimum(hi_edge[:, :, None], positions + 1.0) - tf.maximum(lo_edge[:, :, None], positions)
    candidates = tf.stack([
        _lanczos3(distance),
        _cubic(distance, 0.0, 0.5),
        tf.nn.relu(1.0 - distance),
        tf.nn.relu(overlap) / ratio[:, None, None],
        _cubic(distance, 1.0 / 3.0, 1.0 / 3.0),
        tf.cast(tf.equal(nearest[:, :, None], positions), tf.float32),
    ], axis=1)
    weights = tf.gather(candidates, method, batch_dims=1)
    weights = weights / tf.reduce_sum(weights, axis=-1, keepdims=True)
    uncropped = tf.equal(level, 0.0)[:, None, None]
    return tf.where(uncropped, tf.eye(size, dtype=tf.float32)[None], weights)


def rescale(images, level, method):
    """Centre crop of side (1 - 0.5 * level) * size, resized back with RESCALE_METHODS[method]."""
    height, width = _height_width(images)
    level = batch_vector(level, images)
    method = tf.clip_by_value(batch_vector(method, images, tf.int32), 0, len(RESCALE_METHODS) - 1)
    row_weights = resample_weights(height, level, method)
    col_weights = resample_weights(width, level, method)
    resized = tf.einsum('noi,niwc->nowc', row_weights, images)
    resized = tf.einsum('npj,nhjc->nhpc', col_weights, resized)
    return tf.clip_by_value(resized, 0.0, 1.0)


# ----------------------------------------------------------------------------------------------
# Cutout and the weak view

def cutout(images, seed, size):
    """Fills a square of side `size` (pixels, scalar or (N,)) with GRAY at a random centre per image.

    Centre (cy, cx) uniform over the pixels; rows [cy - size // 2, cy - size // 2 + size), same for
    columns; the square may extend past the border (then only its inside part is filled).
    """
    n = tf.shape(images)[0]
    height, width = _height_width(images)
    side = batch_vector(size, images, tf.int32)
    uniform = tf.random.stateless_uniform([n, 2], seed)
    cy = tf.cast(uniform[:, 0] * tf.cast(height, tf.float32), tf.int32)
    cx = tf.cast(uniform[:, 1] * tf.cast(width, tf.float32), tf.int32)
    top, left = cy - side // 2, cx - side // 2
    rows, cols = tf.range(height)[None, :], tf.range(width)[None, :]
    in_rows = (rows >= top[:, None]) & (rows < (top + side)[:, None])
    in_cols = (cols >= left[:, None]) & (cols < (left + side)[:, None])
    mask = in_rows[:, :, None, None] & in_cols[:, None, :, None]
    return select(mask, GRAY, images)


def reflect(index, size):
    """Source index in [0, size) of position `index` (may be negative or >= size) of an axis
    reflect-padded without repeating the edge (tf.pad's 'REFLECT'): -1 -> 1, size -> size - 2."""
    period = tf.maximum(2 * (size - 1), 1)
    index = tf.math.floormod(index, period)
    return tf.where(index < size, index, period - index)


def weak(images, seed, flip=True, pad=4):
    """FixMatch weak view: horizontal flip with p = 0.5 per image (when `flip`), then reflect-pad by
    `pad` pixels and crop back to (H, W) at a per-image offset uniform in [0, 2 * pad]^2.

    Computed as ONE gather: output pixel (i, j) of image n reads source row reflect(o_n + i - pad)
    and column reflect(c - pad), c = o'_n + j, or W + 2 pad - 1 - c when flipped (reflect padding
    commutes with the flip). No padded copy is made.
    """
    n = tf.shape(images)[0]
    height, width = _height_width(images)
    flip_seed, crop_seed = split_seed(seed, 2)
    offsets = tf.random.stateless_uniform([n, 2], crop_seed, 0, 2 * pad + 1, dtype=tf.int32)
    rows = offsets[:, :1] + tf.range(height)[None, :]
    cols = offsets[:, 1:] + tf.range(width)[None, :]
    if flip:
        flipped = tf.random.stateless_uniform([n, 1], flip_seed) < 0.5
        cols = tf.where(flipped, width + 2 * pad - 1 - cols, cols)
    rows, cols = reflect(rows - pad, height), reflect(cols - pad, width)
    flat = tf.reshape(rows[:, :, None] * width + cols[:, None, :], [n, -1])
    pixels = tf.reshape(images, [n, height * width, tf.shape(images)[3]])
    return tf.reshape(tf.gather(pixels, flat, batch_dims=1), tf.shape(images))


# ----------------------------------------------------------------------------------------------
# The op engine: one op per image, each op computed only on the images that chose it.

_BLEND_OPS = {'autocontrast': autocontrast, 'equalize': equalize, 'invert': invert, 'blur': blur,
              'smooth': smooth}
_FACTOR_OPS = {'brightness': brightness, 'color': color, 'contrast': contrast, 'sharpness': sharpness}


def _run_op(name, images, params, seed):
    """Engine op `name` on a sub-batch with its (n, NUM_PARAMS) parameters."""
    if name == 'identity':
        return images
    if name in _BLEND_OPS:
        return blend(images, _BLEND_OPS[name](images), params[:, 0])
    if name in _FACTOR_OPS:
        return _FACTOR_OPS[name](images, params[:, 0])
    if name == 'posterize':
        return posterize(images, params[:, 0])
    if name == 'solarize':
        return solarize(images, params[:, 0])
    if name == 'rescale':
        return rescale(images, params[:, 0], tf.cast(tf.round(params[:, 1]), tf.int32))
    if name == 'cutout':
        return cutout(images, seed, tf.cast(tf.round(params[:, 0]), tf.int32))
    raise ValueError(f'unknown engine op {name!r}')


def _groups(used):
    """Engine groups: every non-geometric op alone, all geometric ops together (one transform)."""
    singles = [(name,) for name in OPS if name in used and name not in GEOMETRIC_OPS]
    geometric = tuple(name for name in GEOMETRIC_OPS if name in used)
    return singles + ([geometric] if geometric else [])


def apply_ops(images, op_ids, params, seed, used=OPS):
    """Applies engine op OPS[op_ids[i]] with parameters params[i] to image i.

    op_ids: (N,) int; params: (N, NUM_PARAMS) float; `used`: the op names that may occur (only their
    branches are built; an id outside them is an error). Images are partitioned by op
    (tf.dynamic_partition), each op runs on its own images only (the geometric ones as one projective
    transform call) and the results are stitched back in order (tf.dynamic_stitch).
    """
    groups = _groups(used)
    group_of_op = [-1] * len(OPS)
    for group_index, names in enumerate(groups):
        for name in names:
            group_of_op[OPS.index(name)] = group_index
    op_ids = tf.cast(op_ids, tf.int32)
    params = tf.cast(params, tf.float32)
    group_ids = tf.gather(tf.constant(group_of_op, tf.int32), op_ids)
    index_parts = tf.dynamic_partition(tf.range(tf.shape(images)[0]), group_ids, len(groups))
    seeds = split_seed(seed, len(groups))
    height, width = _height_width(images)
    outputs = []
    for names, indices, group_seed in zip(groups, index_parts, seeds):
        part = tf.gather(images, indices)
        part_params = tf.gather(params, indices)
        if names[0] in GEOMETRIC_OPS:
            kind = tf.gather(op_ids, indices) - OPS.index(GEOMETRIC_OPS[0])
            part = _transform(part, geometric_transforms(kind, part_params[:, 0], height, width))
        else:
            part = _run_op(names[0], part, part_params, group_seed)
        outputs.append(part)
    result = tf.dynamic_stitch(index_parts, outputs)
    result.set_shape(images.shape)
    return result


# ----------------------------------------------------------------------------------------------
# RandAugment (FixMatch-RA)

def _ra_table():
    """(len(RA_OPS), RA_MAX_MAGNITUDE + 1) engine parameter of each RA op at magnitude m (unsigned).

    translate is in pixels here (m px); randaugment_parameters divides it by the image size.
    """
    def value(name, m):
        if name == 'identity':
            return 0.0
        if name in ('autocontrast', 'equalize'):
            return 1.0
        if name == 'rotate':
            return 3.0 * m
        if name == 'solarize':
            return float(256 - int(25.6 * m))
        if name in ('color', 'contrast', 'brightness', 'sharpness'):
            return 0.18 * m + 0.1
        if name in ('shear_x', 'shear_y'):
            return 0.03 * m
        if name in ('translate_x', 'translate_y'):
            return float(m)
        if name == 'posterize':
            return float(4 - int(0.4 * m))
        raise ValueError(name)
    return [[value(name, m) for m in range(RA_MAX_MAGNITUDE + 1)] for name in RA_OPS]


def randaugment_parameters(ra_ops, magnitude, sign, height, width):
    """Engine (op_ids, params) for RandAugment ops RA_OPS[ra_ops] at integer `magnitude` (1..9).

    rotate 3m degrees, shear 0.03m, translate m pixels (m / W or m / H of the size), all times
    `sign` (+-1); enhance factor 0.18m + 0.1; solarize threshold 256 - int(25.6m);
    posterize 4 - int(0.4m) bits; autocontrast/equalize at full strength.
    """
    ra_ops = tf.cast(ra_ops, tf.int32)
    magnitude = tf.cast(magnitude, tf.int32)
    table = tf.constant(_ra_table(), tf.float32)
    value = tf.gather_nd(table, tf.stack([ra_ops, magnitude], axis=-1))
    signed = tf.gather(tf.constant([name in RA_SIGNED for name in RA_OPS]), ra_ops)
    value = tf.where(signed, value * tf.cast(sign, tf.float32), value)
    pixels_per_unit = tf.gather(tf.stack([
        tf.cast(width, tf.float32) if name == 'translate_x' else
        tf.cast(height, tf.float32) if name == 'translate_y' else tf.constant(1.0)
        for name in RA_OPS]), ra_ops)
    value = value / pixels_per_unit
    op_ids = tf.gather(tf.constant([OPS.index(name) for name in RA_OPS], tf.int32), ra_ops)
    params = tf.stack([value, tf.zeros_like(value)], axis=-1)
    return op_ids, params


def randaugment(images, seed, with_cutout=True):
    """FixMatch-RA: per image RA_DEPTH ops drawn uniformly with replacement from RA_OPS, each with its
    own magnitude m uniform in 1..9 and a random sign (signed ops), applied in order; then, when
    `with_cutout`, a gray cutout of side min(H, W) // 2 (16 at 32 px)."""
    n = tf.shape(images)[0]
    height, width = _height_width(images)
    op_seed, magnitude_seed, sign_seed, apply_seed, cutout_seed = split_seed(seed, 5)
    ra_ops = tf.random.stateless_uniform([n, RA_DEPTH], op_seed, 0, len(RA_OPS), dtype=tf.int32)
    magnitude = tf.random.stateless_uniform([n, RA_DEPTH], magnitude_seed, 1, RA_MAX_MAGNITUDE + 1,
                                            dtype=tf.int32)
    sign = tf.where(tf.random.stateless_uniform([n, RA_DEPTH], sign_seed) < 0.5, -1.0, 1.0)
    for step, step_seed in enumerate(split_seed(apply_seed, RA_DEPTH)):
        op_ids, params = randaugment_parameters(ra_ops[:, step], magnitude[:, step], sign[:, step],
                                                height, width)
        images = apply_ops(images, op_ids, params, step_seed, used=RA_OPS)
    if with_cutout:
        images = cutout(images, cutout_seed, tf.minimum(height, width) // 2)
    return images
