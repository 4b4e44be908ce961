"""Pixel-position ops on batches of 8-bit level images, reproducing PIL exactly: nearest-neighbour affine
warps (rotate, shear, translate), PIL's resize filters (one separable resampling routine), the crop-and-
resize of CTAugment's rescale, the weak view (flip + reflect-pad crop) and cutout squares.

Conventions: images are (N, H, W, C) tensors of whole levels 0..255 (float32; any dtype for the gathers)
with STATIC H, W, C; per-image parameters have first axis N. Every op is a gather, a comparison or an exact
integer / float64 matmul, so results do not depend on the batch split, on XLA, or on the device.

Facts measured on Pillow (tests/test_parity_*.py check them against Pillow itself):
- Image.transform(AFFINE, (a, b, c, d, e, f)), NEAREST: output pixel (x, y) reads input
  (X >> 16, Y >> 16) with 16.16 fixed-point X = FIX(c + (a + b)/2) + x FIX(a) + y FIX(b),
  Y = FIX(f + (d + e)/2) + x FIX(d) + y FIX(e), FIX(v) = floor(65536 v + 0.5); pixels reading outside the
  image get 0 in every band. Image.rotate(deg) uses a = e = round(cos t, 15), b = -d = round(sin t, 15),
  t = -radians(deg % 360), about the centre (W/2, H/2); rotate(0) is a copy.
- resize(filter): per axis, output o has centre (o + 0.5) s (s = in/out), support = r max(s, 1) (r = 0.5 box,
  1 bilinear/hamming, 2 bicubic (a = -0.5), 3 lanczos); taps are input pixels [int(centre - support + 0.5),
  int(centre + support + 0.5)) clipped to the image, weight k((i - centre + 0.5) / max(s, 1)), normalised,
  then quantised to 22-bit fixed point (round half away from zero); each pass rounds to 8 bits
  (floor((sum + 2^21) / 2^22), clipped). The horizontal pass runs first unless
  (in_h - out_h) > 2 max(in_w - out_w, 0). NEAREST reads floor(v_o), v_0 = s/2, v_{o+1} = v_o + s
  accumulated in double. Image.crop rounds a float box half-to-even.
"""
import functools
import math

import numpy as np
import tensorflow as tf

FIXED_ONE = 65536  # 16.16 fixed point of the affine warps
RESAMPLE_BITS = 22  # fixed-point precision of the resize weights
METHODS = ('lanczos', 'bicubic', 'bilinear', 'box', 'hamming', 'nearest')  # CTAugment rescale order
AFFINE_KINDS = ('none', 'rotate', 'shear_x', 'shear_y', 'translate_x', 'translate_y')


def rounded(x: tf.Tensor) -> tf.Tensor:
    """x, with its rounding forced: keeps XLA from fusing the product x into a following add (one FMA
    rounding where Python and PIL round twice). min(x, big) is x for every x we use (|x| < 1e38)."""
    return tf.minimum(x, tf.constant(3e38 if x.dtype == tf.float32 else 1e300, x.dtype))


def fixed(value) -> tf.Tensor:
    """FIX(v) = floor(65536 v + 0.5) of float64 values, as int32."""
    return tf.cast(tf.floor(tf.cast(value, tf.float64) * FIXED_ONE + 0.5), tf.int32)


# ------------------------------------------------------------------------------------------------
# Affine warps

@functools.lru_cache(maxsize=None)
def rotation_table(height: int, width: int) -> np.ndarray:
    """(361, 6) int32 fixed-point [FIX(a), FIX(b), x0, FIX(d), FIX(e), y0] of PIL's rotate by
    -180..180 whole degrees (row deg + 180) of a (height, width) image; x0 = FIX(c + (a + b)/2)."""
    rows = []
    for degrees in range(-180, 181):
        theta = -math.radians(degrees % 360.0)
        a, b = round(math.cos(theta), 15), round(math.sin(theta), 15)
        d, e = round(-math.sin(theta), 15), round(math.cos(theta), 15)
        cx, cy = width / 2.0, height / 2.0
        c = a * -cx + b * -cy + cx
        f = d * -cx + e * -cy + cy
        if degrees % 360 == 0:
            a, b, c, d, e, f = 1.0, 0.0, 0.0, 0.0, 1.0, 0.0
        rows.append([math.floor(v * FIXED_ONE + 0.5) for v in (a, b, c + 0.5 * (a + b), d, e, f + 0.5 * (d + e))])
    return np.asarray(rows, np.int32)


def affine_coefficients(kind, value, height: int, width: int) -> tf.Tensor:
    """(N, 6) int32 fixed-point warp of each image: kind (N,) indexes AFFINE_KINDS; value (N,) float64 is
    whole degrees (rotate, counter-clockwise), the shear coefficient (PIL matrix (1, v, 0, 0, 1, 0) for
    shear_x, (1, 0, 0, v, 1, 0) for shear_y) or the shift in pixels (input x = x + v for translate_x)."""
    value = tf.cast(value, tf.float64)
    one = tf.fill(tf.shape(value), FIXED_ONE)
    zero, half = 0 * one, one // 2
    degrees = tf.clip_by_value(tf.cast(tf.round(value), tf.int32), -180, 180)
    rotation = tf.gather(tf.constant(rotation_table(height, width)), degrees + 180)
    shear, shift = fixed(value), fixed(rounded(value) + 0.5)
    sheared = fixed(0.5 * (1.0 + rounded(value)))
    candidates = tf.stack([
        tf.stack([one, zero, half, zero, one, half], -1),
        rotation,
        tf.stack([one, shear, sheared, zero, one, half], -1),
        tf.stack([one, zero, half, shear, one, sheared], -1),
        tf.stack([one, zero, shift, zero, one, half], -1),
        tf.stack([one, zero, half, zero, one, shift], -1),
    ], axis=1)
    return tf.gather(candidates, tf.cast(kind, tf.int32), batch_dims=1)


def gather_pixels(images, rows, cols, valid=None):
    """images[n, rows[n, i, j], cols[n, i, j]] as (N, h, w, C) for each tensor of `images` (one tensor or a
    tuple sharing H and W); 0 where `valid` is False."""
    if isinstance(images, (tuple, list)):
        return tuple(gather_pixels(x, rows, cols, valid) for x in images)
    height, width, channels = images.shape[1:]
    n = tf.shape(images)[0]
    flat = tf.reshape(tf.clip_by_value(rows, 0, height - 1) * width + tf.clip_by_value(cols, 0, width - 1), [n, -1])
    pixels = tf.gather(tf.reshape(images, [n, height * width, channels]), flat, batch_dims=1)
    pixels = tf.reshape(pixels, tf.concat([tf.shape(rows), [channels]], 0))
    if valid is not None:
        pixels *= tf.cast(valid, pixels.dtype)[..., None]
    return pixels


def warp(images, coefficients):
    """PIL's nearest-neighbour affine transform of each image (a tensor, or a tuple of tensors moved alike)
    with its (N, 6) fixed-point coefficients; uncovered pixels become 0 in every channel."""
    height, width = (images[0] if isinstance(images, (tuple, list)) else images).shape[1:3]
    c = [coefficients[:, k, None, None] for k in range(6)]
    y = tf.range(height)[None, :, None]
    x = tf.range(width)[None, None, :]
    cols = tf.math.floordiv(c[2] + x * c[0] + y * c[1], FIXED_ONE)
    rows = tf.math.floordiv(c[5] + x * c[3] + y * c[4], FIXED_ONE)
    valid = (cols >= 0) & (cols < width) & (rows >= 0) & (rows < height)
    return gather_pixels(images, rows, cols, valid)


# ------------------------------------------------------------------------------------------------
# Resampling (PIL resize filters)

def _sinc(x):
    return 1.0 if x == 0.0 else math.sin(math.pi * x) / (math.pi * x)


def _bicubic(x, a=-0.5):
    x = abs(x)
    if x < 1.0:
        return ((a + 2.0) * x - (a + 3.0)) * x * x + 1.0
    if x < 2.0:
        return (((x - 5.0) * x + 8.0) * x - 4.0) * a
    return 0.0


FILTERS = {  # name: (support, kernel)
    'box': (0.5, lambda x: 1.0 if -0.5 < x <= 0.5 else 0.0),
    'bilinear': (1.0, lambda x: max(0.0, 1.0 - abs(x))),
    'hamming': (1.0, lambda x: 0.0 if abs(x) >= 1.0 else _sinc(x) * (0.54 + 0.46 * math.cos(math.pi * x))),
    'bicubic': (2.0, _bicubic),
    'lanczos': (3.0, lambda x: _sinc(x) * _sinc(x / 3.0) if abs(x) < 3.0 else 0.0),
}


def filter_matrix(in_size: int, out_size: int, method: str) -> np.ndarray:
    """(out_size, in_size) float64 integer weights (sum 2^22 per row) of PIL's resize along one axis."""
    scale = in_size / out_size
    matrix = np.zeros([out_size, in_size])
    if method == 'nearest':
        position = 0.5 * scale
        for o in range(out_size):
            matrix[o, min(int(math.floor(position)), in_size - 1)] = 2.0 ** RESAMPLE_BITS
            position += scale
        return matrix
    support, kernel = FILTERS[method]
    filter_scale = max(scale, 1.0)
    support *= filter_scale
    for o in range(out_size):
        centre = (o + 0.5) * scale
        lo, hi = max(int(centre - support + 0.5), 0), min(int(centre + support + 0.5), in_size)
        weights = np.array([kernel((i - centre + 0.5) / filter_scale) for i in range(lo, hi)])
        total = weights.sum()
        weights = weights / total if total else weights
        matrix[o, lo:hi] = np.where(weights < 0, np.trunc(weights * 2.0 ** RESAMPLE_BITS - 0.5),
                                    np.trunc(weights * 2.0 ** RESAMPLE_BITS + 0.5))
    return matrix


def vertical_first(in_hw, out_hw) -> bool:
    """Whether PIL resizes the rows (vertical pass) before the columns."""
    return (in_hw[0] - out_hw[0]) > 2 * max(in_hw[1] - out_hw[1], 0)


def _pass(x, weights):
    """One PIL resampling pass along axis 1 of x (N, A, B, C): out[n, o, b, c] = q(sum_a w[n, o, a] x[n, a, b, c]),
    q(s) = clip(floor((s + 2^21) / 2^22), 0, 255); float64, exact."""
    shape = tf.shape(x)
    out = tf.matmul(weights, tf.reshape(x, [shape[0], shape[1], -1]))
    out = tf.clip_by_value(tf.floor((out + 2.0 ** 21) * 2.0 ** -RESAMPLE_BITS), 0.0, 255.0)
    return tf.reshape(out, tf.stack([shape[0], weights.shape[1], shape[2], shape[3]]))


def resample(images, row_weights, col_weights, rows_first: bool = False) -> tf.Tensor:
    """Separable resize of each image: per-image weights R (N, out_h, H) and C (N, out_w, W) in 2^-22 units;
    each pass rounds to 8-bit levels as PIL does. Exact (float64 integer arithmetic)."""
    x = tf.cast(images, tf.float64)
    if rows_first:
        x = _pass(x, row_weights)
        x = tf.transpose(_pass(tf.transpose(x, [0, 2, 1, 3]), col_weights), [0, 2, 1, 3])
    else:
        x = _pass(tf.transpose(x, [0, 2, 1, 3]), col_weights)  # (N, out_w, H, C)
        x = _pass(tf.transpose(x, [0, 2, 1, 3]), row_weights)
    return tf.cast(x, images.dtype)


def resize(images, size, method: str) -> tf.Tensor:
    """PIL Image.resize((w, h) = size[::-1], method) of every image (static sizes)."""
    height, width = images.shape[1:3]
    n = tf.shape(images)[0]
    row = tf.broadcast_to(tf.constant(filter_matrix(height, size[0], method)), [n, size[0], height])
    col = tf.broadcast_to(tf.constant(filter_matrix(width, size[1], method)), [n, size[1], width])
    return resample(images, row, col, vertical_first((height, width), size))


@functools.lru_cache(maxsize=None)
def _crop_table(size):
    """Banded weights of resizing a crop of c = 0..size pixels back to `size`, for every method:
    (coef (6 * (size + 1), size, taps) float64, start (6 * (size + 1), size) int32). Only the crops that
    rescale can make (c >= size / 2 - 1) are filled."""
    taps = 8
    coef = np.zeros([len(METHODS), size + 1, size, taps])
    start = np.zeros([len(METHODS), size + 1, size], np.int32)
    for m, method in enumerate(METHODS):
        for crop in range(max(1, size // 2 - 1), size + 1):
            matrix = filter_matrix(crop, size, method)
            for o in range(size):
                nonzero = np.flatnonzero(matrix[o])
                first = nonzero[0] if len(nonzero) else 0
                width = (nonzero[-1] + 1 - first) if len(nonzero) else 0
                assert width <= taps, (method, crop, size)
                start[m, crop, o] = first
                coef[m, crop, o, :width] = matrix[o, first:first + width]
    return coef.reshape([-1, size, taps]), start.reshape([-1, size])


def crop_resize_weights(size: int, first, crop, method) -> tf.Tensor:
    """(N, size, size) weights resizing the window [first, first + crop) of an axis back to `size` pixels
    with METHODS[method]; first, crop, method: (N,) int32."""
    coef, start = _crop_table(size)
    row = method * (size + 1) + crop
    coef, start = tf.gather(tf.constant(coef), row), tf.gather(tf.constant(start), row)  # (N, out, taps)
    tap = tf.range(size)[None, None, :] - first[:, None, None] - start[:, :, None]  # (N, out, in)
    inside = (tap >= 0) & (tap < coef.shape[-1])
    weights = tf.gather(coef, tf.clip_by_value(tap, 0, coef.shape[-1] - 1), batch_dims=2)
    return tf.where(inside, weights, tf.zeros_like(weights))


def half_even(x) -> tf.Tensor:
    """Python's round(): half to even, float64 -> int32."""
    return tf.cast(tf.round(x), tf.int32)


def rescale(images, level, method) -> tf.Tensor:
    """CTAugment rescale: crop the box (s W, s H, W (1 - s), H (1 - s)), s = 0.25 level (rounded to whole
    pixels half-to-even, as Image.crop), resized back with METHODS[method] (the crop is never larger, so
    the horizontal pass runs first). level: (N,) float64; method: (N,) int32."""
    height, width = images.shape[1:3]
    s = tf.cast(level, tf.float64) * 0.25
    left, right = half_even(s * width), half_even(width * (1.0 - s))
    top, bottom = half_even(s * height), half_even(height * (1.0 - s))
    method = tf.cast(method, tf.int32)
    col = crop_resize_weights(width, left, right - left, method)
    row = crop_resize_weights(height, top, bottom - top, method)
    return resample(images, row, col)


# ------------------------------------------------------------------------------------------------
# Weak view and cutout

def reflect(index, size: int) -> tf.Tensor:
    """Source index in [0, size) of a position of an axis reflect-padded without repeating the edge
    (tf.pad 'REFLECT'): -1 -> 1, size -> size - 2."""
    period = max(2 * (size - 1), 1)
    index = tf.math.floormod(index, period)
    return tf.where(index < size, index, period - index)


def weak(images, flip, offset, pad: int) -> tf.Tensor:
    """Mirror the images where `flip` (N,) bool, reflect-pad by `pad` pixels and crop (H, W) at `offset`
    (N, 2) int32 in [0, 2 pad]: output (i, j) reads row reflect(o_y + i - pad), column reflect(o_x + j - pad)
    (mirrored: W + 2 pad - 1 - (o_x + j)). One gather; any dtype."""
    height, width = images.shape[1:3]
    rows = offset[:, :1] + tf.range(height)[None, :]
    cols = offset[:, 1:] + tf.range(width)[None, :]
    cols = tf.where(flip[:, None], width + 2 * pad - 1 - cols, cols)
    rows, cols = reflect(rows - pad, height), reflect(cols - pad, width)
    grid = tf.stack([tf.shape(images)[0], height, width])
    return gather_pixels(images, tf.broadcast_to(rows[:, :, None], grid), tf.broadcast_to(cols[:, None, :], grid))


def centre_pixels(fraction, height: int, width: int) -> tf.Tensor:
    """(N, 2) int32 (row, column) = floor(fraction * (H, W)) of uniform fractions (N, 2) in [0, 1): a centre
    uniform over the pixels, as np.random.randint."""
    size = tf.constant([height, width], tf.float64)
    return tf.cast(tf.floor(tf.cast(fraction, tf.float64) * size), tf.int32)


def square_mask(height: int, width: int, centre, side) -> tf.Tensor:
    """(N, H, W, 1) bool: rows [cy - side//2, cy + side//2) and the same columns, clipped to the image
    (create_cutout_mask: the filled side is 2 (side // 2)). centre (N, 2) int32, side (N,) int32."""
    half = tf.cast(side, tf.int32)[:, None] // 2
    rows, cols = tf.range(height)[None, :], tf.range(width)[None, :]
    in_rows = (rows >= centre[:, :1] - half) & (rows < centre[:, :1] + half)
    in_cols = (cols >= centre[:, 1:] - half) & (cols < centre[:, 1:] + half)
    return (in_rows[:, :, None] & in_cols[:, None, :])[..., None]
