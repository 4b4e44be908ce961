"""Batched augmentation ops (libml/augment.py) against hand-computed results."""
import numpy as np
import pytest
import tensorflow as tf

from libml import augment
from libml import views
from libml.utils import UserError

SEED = tf.constant([3, 7], tf.int64)


def levels_image(levels, channels=1):
    """(1, H, W, channels) float image from a 2-D list of 8-bit levels (same levels in every channel)."""
    array = np.asarray(levels, np.float32)[None, :, :, None] / 255.0
    return tf.constant(np.repeat(array, channels, axis=3))


def as_levels(images):
    return np.round(np.asarray(images) * 255.0).astype(np.int64)


def point_image(height, width, y, x):
    image = np.zeros([1, height, width, 1], np.float32)
    image[0, y, x, 0] = 1.0
    return tf.constant(image)


def bright_points(images):
    """(y, x) of the pixels equal to 1 in the first image."""
    return [tuple(p) for p in np.argwhere(np.asarray(images)[0, :, :, 0] == 1.0)]


# ------------------------------------------------------------------------------ pixel ops

def test_invert():
    image = levels_image([[0, 51, 255]])
    np.testing.assert_allclose(augment.invert(image)[0, 0, :, 0], [1.0, 0.8, 0.0], atol=1e-6)


def test_solarize_threshold_per_image():
    row = [0, 100, 127, 128, 200, 255]
    images = tf.concat([levels_image([row]), levels_image([row])], axis=0)
    out = as_levels(augment.solarize(images, [128, 256]))
    assert out[0, 0, :, 0].tolist() == [0, 100, 127, 127, 55, 0]
    assert out[1, 0, :, 0].tolist() == row  # threshold 256: nothing inverted


def test_posterize_bits():
    images = tf.concat([levels_image([[183, 255, 7]])] * 4, axis=0)  # 183 = 0b10110111
    out = as_levels(augment.posterize(images, [1, 3, 4, 8]))[:, 0, :, 0]
    assert out.tolist() == [[128, 128, 0], [160, 224, 0], [176, 240, 0], [183, 255, 7]]


def test_autocontrast_stretches_each_channel():
    image = np.zeros([1, 1, 3, 3], np.float32)
    image[0, 0, :, 0] = np.array([50, 100, 150]) / 255.0
    image[0, 0, :, 1] = np.array([0, 255, 128]) / 255.0  # already full range
    image[0, 0, :, 2] = 77 / 255.0  # a single level: unchanged
    out = as_levels(augment.autocontrast(tf.constant(image)))[0, 0]
    assert out[:, 0].tolist() == [0, 127, 255]  # floor((v - 50) * 255 / 100)
    assert out[:, 1].tolist() == [0, 255, 128]
    assert out[:, 2].tolist() == [77, 77, 77]


def test_equalize_known_histogram():
    # 256 pixels: 128 at level 10, 64 at 20, 63 at 30, 1 at 40 -> step = (256 - 1) // 255 = 1,
    # lut = exclusive cumulative counts: 10 -> 0, 20 -> 128, 30 -> 192, 40 -> 255.
    levels = np.array([10] * 128 + [20] * 64 + [30] * 63 + [40]).reshape(16, 16)
    out = as_levels(augment.equalize(levels_image(levels)))[0, :, :, 0]
    expected = {10: 0, 20: 128, 30: 192, 40: 255}
    assert all((out[levels == k] == v).all() for k, v in expected.items())


def test_equalize_rounds_and_clips_lut():
    # 512 pixels: 256 at 10, 128 at 20, 127 at 30, 1 at 40 -> step = 511 // 255 = 2, lut[i] =
    # (1 + below(i)) // 2: 10 -> 0, 20 -> 128, 30 -> 192, 40 -> 256 clipped to 255.
    levels = np.array([10] * 256 + [20] * 128 + [30] * 127 + [40]).reshape(32, 16)
    flat = np.full([32, 16], 99)  # a single level: left unchanged
    image = np.stack([levels, flat, levels.T.reshape(32, 16)], axis=-1)[None] / 255.0
    out = as_levels(augment.equalize(tf.constant(image, tf.float32)))[0]
    for k, v in {10: 0, 20: 128, 30: 192, 40: 255}.items():
        assert (out[:, :, 0][levels == k] == v).all()
        assert (out[:, :, 2][levels.T.reshape(32, 16) == k] == v).all()
    assert (out[:, :, 1] == 99).all()


def test_brightness_factor():
    image = levels_image([[0, 100, 200]])
    np.testing.assert_allclose(augment.brightness(image, 0.5)[0, 0, :, 0], [0, 50 / 255, 100 / 255], atol=1e-6)
    np.testing.assert_allclose(augment.brightness(image, 1.5)[0, 0, :, 0], [0, 150 / 255, 1.0], atol=1e-6)


def test_color_factor():
    pixel = np.array([[[[1.0, 0.5, 0.0]]]], np.float32)
    gray = 0.299 + 0.587 * 0.5
    np.testing.assert_allclose(augment.color(pixel, 0.0)[0, 0, 0], [gray] * 3, atol=1e-6)
    np.testing.assert_allclose(augment.color(pixel, 1.0)[0, 0, 0], pixel[0, 0, 0], atol=1e-6)
    np.testing.assert_allclose(augment.color(pixel, 2.0)[0, 0, 0], np.clip(2 * pixel[0, 0, 0] - gray, 0, 1),
                               atol=1e-6)


def test_contrast_factor_uses_rounded_mean_gray_level():
    image = levels_image([[0, 255], [100, 150]])  # mean level 126.25 -> 126
    out = augment.contrast(image, 0.5)[0, :, :, 0].numpy()
    expected = 0.5 * np.array([[0, 255], [100, 150]]) / 255 + 0.5 * 126 / 255
    np.testing.assert_allclose(out, expected, atol=1e-6)
    np.testing.assert_allclose(augment.contrast(image, 0.0)[0, :, :, 0], np.full([2, 2], 126 / 255), atol=1e-6)


def test_blend_levels_zero_and_one():
    a = tf.random.stateless_uniform([2, 4, 4, 3], [1, 1])
    b = tf.random.stateless_uniform([2, 4, 4, 3], [1, 2])
    assert np.array_equal(augment.blend(a, b, 0.0), a)
    assert np.array_equal(augment.blend(a, b, 1.0), b)
    np.testing.assert_allclose(augment.blend(a, b, [0.25, 0.75]), np.stack([0.75 * a[0] + 0.25 * b[0],
                                                                            0.25 * a[1] + 0.75 * b[1]]),
                               atol=1e-6)


def test_engine_blend_ops_at_levels_zero_and_one():
    images = tf.random.stateless_uniform([2, 8, 8, 3], [2, 2])
    for name in ('autocontrast', 'equalize', 'invert', 'blur', 'smooth'):
        op_ids = tf.fill([2], augment.OPS.index(name))
        out = augment.apply_ops(images, op_ids, [[0.0, 0.0], [1.0, 0.0]], SEED)
        assert np.array_equal(out[0], images[0]), name
        np.testing.assert_allclose(out[1], getattr(augment, name)(images[1:])[0], atol=1e-6, err_msg=name)


def impulse(size, y, x):
    return point_image(size, size, y, x)


def test_smooth_kernel_on_impulse():
    out = augment.smooth(impulse(9, 4, 4))[0, :, :, 0].numpy()
    expected = np.zeros([9, 9])
    expected[3:6, 3:6] = 1 / 13
    expected[4, 4] = 5 / 13
    np.testing.assert_allclose(out, expected, atol=1e-6)


def test_blur_kernel_on_impulse():
    out = augment.blur(impulse(9, 4, 4))[0, :, :, 0].numpy()
    expected = np.zeros([9, 9])
    expected[2:7, 2:7] = 1 / 16
    expected[3:6, 3:6] = 0
    np.testing.assert_allclose(out, expected, atol=1e-6)


def test_filters_keep_the_border_ring():
    corner = impulse(9, 0, 0)
    smoothed = augment.smooth(corner)[0, :, :, 0].numpy()
    assert smoothed[0, 0] == 1.0 and smoothed[1, 1] == pytest.approx(1 / 13)  # ring kept, inside filtered
    blurred = augment.blur(corner)[0, :, :, 0].numpy()
    assert blurred[0, 0] == 1.0 and blurred[2, 2] == pytest.approx(1 / 16) and blurred[1, 1] == 0.0
    ring2 = impulse(9, 1, 4)  # inside the 1-pixel ring of smooth, in the 2-pixel ring of blur
    assert float(augment.blur(ring2)[0, 1, 4, 0]) == 1.0
    assert float(augment.smooth(ring2)[0, 1, 4, 0]) == pytest.approx(5 / 13)


def test_sharpness_blends_with_smooth_and_keeps_border():
    images = tf.random.stateless_uniform([1, 8, 8, 3], [4, 4])
    assert np.allclose(augment.sharpness(images, 1.0), images, atol=1e-6)
    soft = augment.sharpness(images, 0.0).numpy()
    np.testing.assert_allclose(soft, augment.smooth(images), atol=1e-6)
    sharp = augment.sharpness(images, 2.0).numpy()
    assert np.array_equal(sharp[0, 0], images[0, 0]) and np.array_equal(sharp[0, :, -1], images[0, :, -1])
    np.testing.assert_allclose(sharp, np.clip(2 * images - augment.smooth(images), 0, 1), atol=1e-6)


# ------------------------------------------------------------------------------ geometric ops

def test_rotate_90_counter_clockwise():
    pattern = np.arange(20, dtype=np.float32).reshape(1, 4, 5, 1)  # asymmetric, not square
    square = np.arange(25, dtype=np.float32).reshape(1, 5, 5, 1) / 25
    assert np.array_equal(augment.rotate(square, 90.0)[0, :, :, 0], np.rot90(square[0, :, :, 0]))
    assert np.array_equal(augment.rotate(square, -90.0)[0, :, :, 0], np.rot90(square[0, :, :, 0], -1))
    assert np.array_equal(augment.rotate(pattern / 20, 180.0)[0, :, :, 0], np.rot90(pattern[0, :, :, 0] / 20, 2))


def test_rotate_fills_with_zero():
    out = augment.rotate(tf.ones([1, 9, 9, 1]), 45.0)[0, :, :, 0].numpy()
    assert out[0, 0] == 0.0 and out[4, 4] == 1.0


def test_shear_of_a_point():
    image = point_image(8, 8, 4, 2)
    assert bright_points(augment.shear_x(image, 0.5)) == [(4, 0)]  # input x = x + 0.5 y
    assert bright_points(augment.shear_y(image, 0.5)) == [(3, 2)]  # input y = y + 0.5 x
    assert bright_points(augment.shear_x(image, -0.5)) == [(4, 4)]


def test_translate_of_a_point():
    image = point_image(8, 10, 4, 2)
    assert bright_points(augment.translate_x(image, -0.3)) == [(4, 5)]  # 0.3 * 10 px
    assert bright_points(augment.translate_y(image, -0.25)) == [(6, 2)]  # 0.25 * 8 px
    assert bright_points(augment.translate_x(image, 0.2)) == [(4, 0)]
    assert bright_points(augment.translate_y(image, 0.75)) == []  # moved out, filled with 0


def test_geometric_ops_take_per_image_magnitudes():
    images = tf.concat([point_image(8, 8, 4, 4)] * 3, axis=0)
    out = augment.translate_x(images, [0.0, 0.25, -0.25]).numpy()
    assert [tuple(np.argwhere(o[:, :, 0] == 1)[0]) for o in out] == [(4, 4), (4, 2), (4, 6)]


# ------------------------------------------------------------------------------ rescale

def test_rescale_level_zero_is_identity_for_every_method():
    images = tf.random.stateless_uniform([6, 8, 8, 3], [5, 5])
    out = augment.rescale(images, 0.0, tf.range(6))
    np.testing.assert_allclose(out, images, atol=1e-6)


def test_rescale_crops_the_centre_half_at_level_one():
    ramp = np.tile(np.arange(8, dtype=np.float32)[:, None] / 10, [1, 8])[None, :, :, None]
    images = tf.constant(np.repeat(ramp, 6, axis=0))
    out = augment.rescale(images, 1.0, tf.range(6)).numpy()[:, :, 0, 0]
    nearest = np.array([2, 2, 3, 3, 4, 4, 5, 5]) / 10  # rows 2..5 each twice
    linear = (2 + (np.arange(8) + 0.5) * 0.5 - 0.5) / 10  # the ramp at each output centre
    methods = augment.RESCALE_METHODS
    np.testing.assert_allclose(out[methods.index('nearest')], nearest, atol=1e-6)
    np.testing.assert_allclose(out[methods.index('area')], nearest, atol=1e-6)
    for name in ('bilinear', 'bicubic', 'mitchellcubic'):  # these reproduce linear ramps
        np.testing.assert_allclose(out[methods.index(name)], linear, atol=1e-5, err_msg=name)
    np.testing.assert_allclose(out[methods.index('lanczos3')], linear, atol=0.01)


# ------------------------------------------------------------------------------ cutout, weak

def test_cutout_area_and_fill():
    images = tf.fill([64, 16, 16, 3], 0.2)
    out = augment.cutout(images, SEED, 5).numpy()
    assert set(np.unique(out)) == {np.float32(0.2), np.float32(0.5)}
    for image in out:
        rows, cols = np.nonzero(image[:, :, 0] == 0.5)
        top, bottom, left, right = rows.min(), rows.max() + 1, cols.min(), cols.max() + 1
        assert len(rows) == (bottom - top) * (right - left)  # one filled rectangle
        assert (image[top:bottom, left:right] == 0.5).all()
        assert bottom - top == 5 or top == 0 or bottom == 16  # clipped only by the border
        assert right - left == 5 or left == 0 or right == 16
        assert bottom - top >= 3 and right - left >= 3  # the centre is inside the image
    assert (out == 0.5).all(axis=3).sum(axis=(1, 2)).max() == 25


def test_cutout_sizes():
    images = tf.zeros([2, 6, 6, 1])
    out = augment.cutout(images, SEED, [1, 12]).numpy()
    assert (out[0] == 0.5).sum() == 1
    assert (out[1] == 0.5).all()


def reflect_crops(image, pad):
    """All (flipped, dy, dx) crops of the reflect-padded image, as a dict."""
    crops = {}
    h, w = image.shape[:2]
    for flipped in (False, True):
        source = image[:, ::-1] if flipped else image
        padded = np.pad(source, [[pad, pad], [pad, pad], [0, 0]], mode='reflect')
        for dy in range(2 * pad + 1):
            for dx in range(2 * pad + 1):
                crops[(flipped, dy, dx)] = padded[dy:dy + h, dx:dx + w]
    return crops


@pytest.mark.parametrize('flip', [False, True])
def test_weak_flip_and_crop_within_pad(flip):
    pad = 2
    base = np.arange(8 * 8 * 3, dtype=np.float32).reshape(8, 8, 3) / 192
    images = tf.constant(np.stack([base] * 32))
    out = augment.weak(images, SEED, flip=flip, pad=pad).numpy()
    crops = reflect_crops(base, pad)
    found = []
    for image in out:
        matches = [key for key, crop in crops.items() if np.array_equal(crop, image)]
        assert matches, 'output is not a flip + reflect-padded crop within the pad'
        found.append(matches[0])
    flipped = {key[0] for key in found}
    assert flipped == ({False, True} if flip else {False})
    assert len({key[1:] for key in found}) > 5  # offsets vary per image
    assert np.array_equal(augment.weak(images, SEED, flip=flip, pad=pad), out)


def test_weak_without_pad_or_flip_is_identity():
    images = tf.random.stateless_uniform([4, 6, 6, 3], [1, 9])
    assert np.array_equal(augment.weak(images, SEED, flip=False, pad=0), images)


# ------------------------------------------------------------------------------ engine, RandAugment

def test_apply_ops_matches_each_op_on_its_images():
    names = [name for name in augment.OPS if name != 'cutout']
    params = {'brightness': 1.5, 'color': 0.3, 'contrast': 1.7, 'sharpness': 0.2, 'posterize': 3,
              'solarize': 100, 'rotate': 30, 'shear_x': 0.2, 'shear_y': -0.2, 'translate_x': 0.25,
              'translate_y': -0.25, 'rescale': 0.6}
    ids = [augment.OPS.index(name) for name in names][::-1] * 2
    images = tf.random.stateless_uniform([len(ids), 12, 12, 3], [6, 6])
    values = [[params.get(augment.OPS[i], 1.0), 2.0 if augment.OPS[i] == 'rescale' else 0.0] for i in ids]
    out = augment.apply_ops(images, ids, values, SEED).numpy()
    for k, (op_id, (value, method)) in enumerate(zip(ids, values)):
        name, image = augment.OPS[op_id], images[k:k + 1]
        if name == 'identity':
            expected = image
        elif name == 'rescale':
            expected = augment.rescale(image, value, int(method))
        elif name in augment.GEOMETRIC_OPS or name in ('brightness', 'color', 'contrast', 'sharpness',
                                                       'posterize', 'solarize'):
            expected = getattr(augment, name)(image, value)
        else:
            expected = getattr(augment, name)(image)
        np.testing.assert_allclose(out[k], expected[0], atol=1e-6, err_msg=name)


def test_apply_ops_cutout_and_unused_op_error():
    images = tf.zeros([3, 8, 8, 1])
    out = augment.apply_ops(images, [augment.OPS.index('cutout')] * 3, [[2, 0], [3, 0], [8 * 3, 0]], SEED)
    assert [(o == 0.5).sum() for o in out.numpy()][2] == 64
    with pytest.raises(tf.errors.InvalidArgumentError):
        augment.apply_ops(images, [augment.OPS.index('blur')] * 3, tf.zeros([3, 2]), SEED, used=augment.RA_OPS)


def test_randaugment_magnitude_mapping():
    ops = augment.RA_OPS
    m = tf.range(1, 10)
    for name, expected, sign in [
            ('rotate', 3.0 * np.arange(1, 10), -1), ('shear_x', 0.03 * np.arange(1, 10), 1),
            ('shear_y', 0.03 * np.arange(1, 10), -1), ('translate_x', np.arange(1, 10) / 32, 1),
            ('translate_y', np.arange(1, 10) / 16, -1), ('brightness', 0.18 * np.arange(1, 10) + 0.1, -1),
            ('color', 0.18 * np.arange(1, 10) + 0.1, 1), ('contrast', 0.18 * np.arange(1, 10) + 0.1, 1),
            ('sharpness', 0.18 * np.arange(1, 10) + 0.1, 1),
            ('solarize', [231, 205, 180, 154, 128, 103, 77, 52, 26], -1),
            ('posterize', [4, 4, 3, 3, 2, 2, 2, 1, 1], 1), ('autocontrast', [1] * 9, -1),
            ('equalize', [1] * 9, 1)]:
        op_ids, params = augment.randaugment_parameters(tf.fill([9], ops.index(name)), m, tf.fill([9], sign),
                                                        16, 32)
        assert (op_ids.numpy() == augment.OPS.index(name)).all()
        signed = sign if name in augment.RA_SIGNED else 1
        np.testing.assert_allclose(params[:, 0], signed * np.asarray(expected, np.float32), atol=1e-6,
                                   err_msg=name)


def test_randaugment_determinism_and_cutout():
    images = tf.random.stateless_uniform([16, 32, 32, 3], [8, 8])
    first = augment.randaugment(images, SEED).numpy()
    assert np.array_equal(first, augment.randaugment(images, SEED))
    assert not np.array_equal(first, augment.randaugment(images, SEED + 1))
    assert first.min() >= 0 and first.max() <= 1
    gray = (first == 0.5).all(axis=3).sum(axis=(1, 2))
    assert (gray >= 64).all() and (gray <= 256 + 32).all()  # a 16x16 square, at least a quarter inside
    plain = augment.randaugment(images, SEED, with_cutout=False).numpy()
    changed = plain != first
    assert changed.any() and (first[changed] == 0.5).all()  # the cutout is the only difference


def test_randaugment_changes_most_images():
    images = tf.random.stateless_uniform([64, 16, 16, 3], [8, 9])
    out = augment.randaugment(images, SEED, with_cutout=False).numpy()
    changed = np.abs(out - images).max(axis=(1, 2, 3)) > 1e-3
    assert changed.mean() > 0.9  # only identity twice (p = 1/196) leaves an image unchanged


# ------------------------------------------------------------------------------ grayscale

def test_grayscale_everywhere():
    images = tf.random.stateless_uniform([4, 12, 12, 1], [9, 9])
    one = tf.fill([4], 1.0)
    for name in ('autocontrast', 'equalize', 'invert', 'blur', 'smooth', 'identity'):
        assert getattr(augment, name)(images).shape == images.shape, name
    for name, value in [('brightness', 1.5), ('contrast', 0.5), ('sharpness', 1.5), ('posterize', 2.0),
                        ('solarize', 128.0), ('rotate', 20.0), ('shear_x', 0.2), ('shear_y', 0.2),
                        ('translate_x', 0.2), ('translate_y', 0.2)]:
        out = getattr(augment, name)(images, one * value)
        assert out.shape == images.shape and 0 <= out.numpy().min() and out.numpy().max() <= 1, name
    assert np.array_equal(augment.color(images, 0.0), images)  # colour is the identity on grayscale
    assert augment.rescale(images, 0.5, 1).shape == images.shape
    assert augment.cutout(images, SEED, 4).shape == images.shape
    assert augment.weak(images, SEED).shape == images.shape
    out = augment.randaugment(images, SEED)
    assert out.shape == images.shape and out.numpy().max() <= 1


# ------------------------------------------------------------------------------ --augment grammar

def test_parse_augment():
    assert views.parse_augment('d.d.rac') == ('d', 'd', 'rac')
    assert views.parse_augment('x.d.cta') == ('x', 'd', 'cta')
    assert views.parse_augment('ra.ra.ra') == ('ra', 'ra', 'ra')


@pytest.mark.parametrize('spec', ['d.d', 'd.d.rac.x', 'd.d.foo', '', 'D.d.rac', 'd..rac', 'd.d.rac '])
def test_parse_augment_errors(spec):
    with pytest.raises(UserError) as error:
        views.parse_augment(spec)
    message = str(error.value)
    assert '\n' not in message and 'e.g. --augment=d.d.rac' in message
    assert all(code in message for code in ('d (', 'x (', 'ra (', 'rac (', 'cta ('))


def test_view_fn():
    images = tf.random.stateless_uniform([8, 16, 16, 3], [1, 3])
    assert np.array_equal(views.view_fn('x', True, 4)(images, SEED), images)
    weak_seed, strong_seed = augment.split_seed(SEED, 2)
    weak = augment.weak(images, weak_seed, flip=False, pad=2)
    assert np.array_equal(views.view_fn('d', False, 2)(images, SEED), weak)
    ra = views.view_fn('ra', False, 2)(images, SEED)
    assert np.array_equal(ra, augment.randaugment(weak, strong_seed, with_cutout=False))
    rac = views.view_fn('rac', False, 2)(images, SEED).numpy()
    assert np.array_equal(rac, augment.randaugment(weak, strong_seed))
    with pytest.raises(UserError):
        views.view_fn('y', True, 4)
    with pytest.raises(ValueError):
        views.view_fn('cta', True, 4)


# ------------------------------------------------------------------------------ graph mode

def test_inside_tf_function_and_tf_data_map():
    images = tf.random.stateless_uniform([16, 16, 16, 3], [2, 5])
    eager = views.view_fn('rac', True, 2)(images, SEED).numpy()
    graph = tf.function(views.view_fn('rac', True, 2), autograph=False)(images, SEED)
    np.testing.assert_allclose(graph, eager, atol=1e-6)  # graph rewrites may change the last bit
    dataset = tf.data.Dataset.from_tensor_slices(images).batch(8).enumerate()
    dataset = dataset.map(lambda i, x: views.view_fn('rac', True, 2)(x, tf.stack([SEED[0], i])))
    batches = [batch.numpy() for batch in dataset]
    second = views.view_fn('rac', True, 2)(images[8:], tf.constant([3, 1], tf.int64)).numpy()
    np.testing.assert_allclose(batches[1], second, atol=1e-6)
    assert batches[0].shape == (8, 16, 16, 3) and not np.allclose(batches[0], eager[:8])
