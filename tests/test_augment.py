"""The batched ops (libml/augment.py, libml/geometry.py) and views (libml/views.py) against hand-computed
results; the engine's two paths (partitioned / XLA), row independence, the --augment grammar.
Pillow parity of every op: tests/test_parity_*.py."""
import types

import numpy as np
import pytest
import tensorflow as tf

import cta
from libml import augment
from libml import geometry
from libml import views
from libml.utils import UserError

SEED = tf.constant([3, 7], tf.int64)


def levels(rows):
    """(1, H, W, 1) float32 image of 8-bit levels."""
    return tf.constant(np.asarray(rows, np.float32)[None, :, :, None])


def run(name, images, value=0.0, value2=0.0, centre=(0, 0)):
    """One engine op on every image (same parameters)."""
    n = images.shape[0]
    full = [tf.fill([n], tf.constant(v, tf.float64)) for v in (value, value2)]
    out, _ = augment.apply_step(tf.constant(images, tf.float32), None, tf.fill([n], augment.OPS.index(name)), *full,
                                tf.constant([centre] * n, tf.int32), used=(name,))
    return out.numpy()


def info(shape=(16, 16, 3), name='cifar10', flip=True, pad=2):
    return types.SimpleNamespace(name=name, shape=shape, flip=flip, pad=pad)


# ------------------------------------------------------------------------------ levels, blend, tone ops

def test_level_conversions_are_exact():
    v = tf.range(256, dtype=tf.float32)
    np.testing.assert_array_equal(augment.from_levels(v), v.numpy() / np.float32(255))
    np.testing.assert_array_equal(augment.from_levels(v, xla=True), v.numpy() / np.float32(255))
    np.testing.assert_array_equal(augment.to_levels(v / 255.0), v)
    grey = augment.from_levels(tf.constant([[7.0, 9.0]]), alpha=tf.constant([[0.0, 255.0]])).numpy()
    assert grey[0, 0] == 0.5 and grey[0, 1] == np.float32(9 / 255)


def test_blend_truncates_in_float32_and_clips():
    a = tf.reshape(tf.constant([100.0, 200.0, 10.0, 0.0]), [4, 1, 1, 1])
    b = tf.reshape(tf.constant([200.0, 10.0, 250.0, 3.0]), [4, 1, 1, 1])
    out = augment.blend(a, b, tf.constant([0.37, 1.5, 1.9, 0.5], tf.float64)).numpy()  # a weight per image
    assert out.ravel().tolist() == [137, 0, 255, 1]  # 100 + 37, 200 - 285 < 0, 466 > 255, trunc(1.5)


def test_autocontrast_uses_the_double_formula():
    out = run('autocontrast', np.asarray([[[[50], [100], [150]]], [[[0], [25], [13]]]], np.float32), 1.0)
    assert out[0, 0, :, 0].tolist() == [0, 127, 255]  # int((v - 50) * 2.55)
    assert out[1, 0, :, 0].tolist() == [0, 254, 132]  # 25 * (255 / 25) = 254.99999999999997 -> 254
    flat = run('autocontrast', np.full([1, 2, 2, 1], 77, np.float32), 1.0)
    assert (flat == 77).all()  # a single level is unchanged


def test_equalize_known_histogram():
    # 512 pixels: 256 at 10, 128 at 20, 127 at 30, 1 at 40 -> step = 511 // 255 = 2, lut[i] =
    # (1 + below(i)) // 2: 10 -> 0, 20 -> 128, 30 -> 192, 40 -> 256 clipped to 255.
    image = np.array([10] * 256 + [20] * 128 + [30] * 127 + [40]).reshape(1, 32, 16, 1).astype(np.float32)
    image = np.concatenate([image, np.full_like(image, 99)], -1)  # second channel: one level, unchanged
    out = run('equalize', image, 1.0)
    for k, v in {10: 0, 20: 128, 30: 192, 40: 255}.items():
        assert (out[..., 0][image[..., 0] == k] == v).all()
    assert (out[..., 1] == 99).all()


def test_posterize_solarize_invert():
    row = np.array([[[[183], [255], [7], [128]]]], np.float32)  # 183 = 0b10110111
    assert run('posterize', row, 3)[0, 0, :, 0].tolist() == [160, 224, 0, 128]
    assert run('posterize', row, 0)[0, 0, :, 0].tolist() == [0, 0, 0, 0]  # 0 bits: black
    assert run('solarize', row, 128)[0, 0, :, 0].tolist() == [72, 0, 7, 127]
    assert run('invert', row, 1.0)[0, 0, :, 0].tolist() == [72, 0, 248, 127]
    assert run('invert', row, 0.5)[0, 0, :, 0].tolist() == [127, 127, 127, 127]  # trunc(v + (255 - 2v) / 2)


def test_luma_and_enhancers():
    pixel = np.array([[[[255, 0, 0], [0, 255, 0], [0, 0, 255], [100, 50, 200]]]], np.float32)
    np.testing.assert_array_equal(augment.luma(pixel)[0, 0, :, 0], [76, 150, 29, 82])  # (19595 R + ...) >> 16
    assert run('color', pixel, 0.0)[0, 0, 3].tolist() == [82, 82, 82]
    image = np.array([[[[0], [255]], [[100], [150]]]], np.float32)  # mean level 126.25 -> 126
    assert run('contrast', image, 0.5)[0, :, :, 0].tolist() == [[63, 190], [113, 138]]
    assert run('brightness', image, 1.5)[0, :, :, 0].tolist() == [[0, 255], [150, 225]]


def test_smooth_and_blur_kernels_keep_the_border():
    impulse = np.zeros([1, 9, 9, 1], np.float32)
    impulse[0, 4, 4] = impulse[0, 0, 0] = 255
    smooth = run('smooth', impulse, 1.0)[0, :, :, 0]
    assert smooth[4, 4] == 98 and smooth[3, 3] == 20 and smooth[0, 0] == 255 and smooth[1, 1] == 20
    blur = run('blur', impulse, 1.0)[0, :, :, 0]
    assert blur[3, 3] == 0 and blur[4, 2] == 16 and blur[0, 0] == 255  # the 5x5 ring / 16
    assert blur[2, 2] == 32  # both impulses on its ring: floor(510 / 16 + 0.5)


# ------------------------------------------------------------------------------ geometry

def test_warps_follow_pils_pixel_centres():
    square = np.arange(25, dtype=np.float32).reshape(1, 5, 5, 1)
    np.testing.assert_array_equal(run('rotate', square, 90)[0, :, :, 0], np.rot90(square[0, :, :, 0]))
    point = np.zeros([1, 8, 10, 1], np.float32)
    point[0, 4, 2] = 200
    def where(out):
        return [tuple(p) for p in np.argwhere(out[0, :, :, 0] == 200)]
    assert where(run('translate_x', point, -3)) == [(4, 5)]  # output x reads input x - 3
    assert where(run('translate_y', point, 2.6)) == [(1, 2)]  # floor(y + 0.5 + 2.6) = 4 -> y = 1
    assert where(run('shear_x', point, 0.5)) == [(4, 0)]  # floor(x + 0.5 + 0.5 (4 + 0.5)) = 2
    assert where(run('translate_x', point, 9)) == []  # moved out; uncovered pixels are 0
    assert (run('rotate', np.full([1, 9, 9, 1], 9, np.float32), 45)[0, 0, 0] == 0).all()


def test_resize_weights_sum_to_one_and_level_zero_rescale_is_identity():
    for method in geometry.METHODS:
        for in_size, out_size in [(16, 32), (32, 32), (45, 17)]:
            matrix = geometry.filter_matrix(in_size, out_size, method)
            np.testing.assert_allclose(matrix.sum(1), 2 ** 22, atol=4, err_msg=method)
    images = np.random.default_rng(0).integers(0, 256, [6, 12, 12, 3]).astype(np.float32)
    out = geometry.rescale(images, tf.zeros([6], tf.float64), tf.range(6)).numpy()
    np.testing.assert_array_equal(out, images)


def test_rescale_level_one_nearest_doubles_the_centre_half():
    ramp = np.tile(np.arange(16, dtype=np.float32)[:, None], [1, 16])[None, :, :, None]
    out = geometry.rescale(ramp, tf.constant([1.0], tf.float64), tf.constant([5])).numpy()  # nearest
    assert out[0, :, 0, 0].tolist() == [4, 4, 5, 5, 6, 6, 7, 7, 8, 8, 9, 9, 10, 10, 11, 11]  # crop [4, 12)


def test_cutout_square_is_clipped_and_filled():
    zeros = np.zeros([3, 12, 12, 1], np.float32)
    out = run('cutout', zeros, 6, centre=(0, 11))
    assert (out[0, :3, 8:, 0] == 127).all() and (out[0] == 127).sum() == 3 * 4  # rows [-3, 3), cols [8, 14)
    assert (run('cutout', zeros[:1], 7, centre=(6, 6)) == 127).sum() == 36  # side 7 fills 2 * (7 // 2)
    mask = geometry.square_mask(12, 12, tf.constant([[5, 5]]), tf.constant([16])).numpy()
    assert mask.sum() == 12 * 12  # larger than the image: everything


def reflect_crops(image, pad):
    """All (flipped, dy, dx) crops of the reflect-padded image."""
    h, w = image.shape[:2]
    crops = {}
    for flipped in (False, True):
        padded = np.pad(image[:, ::-1] if flipped else image, [[pad, pad], [pad, pad], [0, 0]], mode='reflect')
        for dy in range(2 * pad + 1):
            for dx in range(2 * pad + 1):
                crops[(flipped, dy, dx)] = padded[dy:dy + h, dx:dx + w]
    return crops


@pytest.mark.parametrize('flip', [False, True])
def test_weak_view_is_flip_and_reflect_crop(flip):
    base = np.arange(8 * 8 * 3, dtype=np.float32).reshape(8, 8, 3) / 192
    images = tf.constant(np.stack([base] * 32))
    out = augment.weak(images, SEED, flip=flip, pad=2).numpy()
    crops = reflect_crops(base, 2)
    found = [next(key for key, crop in crops.items() if np.array_equal(crop, image)) for image in out]
    assert {key[0] for key in found} == ({False, True} if flip else {False})
    assert len({key[1:] for key in found}) > 5
    np.testing.assert_array_equal(augment.weak(images, SEED, flip=False, pad=0), images)


# ------------------------------------------------------------------------------ the engine

def random_program(n, depth, seed):
    rng = np.random.default_rng(seed)
    return {'op': tf.constant(rng.integers(0, len(augment.OPS), [n, depth]), tf.int32),
            'value': tf.constant(rng.uniform(0, 1.9, [n, depth]) * np.where(rng.random([n, depth]) < 0.5, 1, 20)),
            'value2': tf.constant(rng.integers(0, 6, [n, depth]).astype(np.float64)),
            'centre': tf.constant(rng.integers(0, 16, [n, depth, 2]), tf.int32)}


@pytest.mark.parametrize('with_alpha', [False, True])
def test_engine_paths_agree_and_rows_are_independent(with_alpha):
    n = 40
    images = tf.constant(np.random.default_rng(1).integers(0, 256, [n, 16, 16, 3]).astype(np.float32))
    alpha = tf.fill([n, 16, 16, 1], 255.0) if with_alpha else None
    program = random_program(n, 3, 2)
    fast, fast_alpha = augment.apply_program(images, program, alpha=alpha)
    xla, xla_alpha = augment.apply_program(images, program, alpha=alpha, xla=True)
    np.testing.assert_array_equal(fast, xla)
    part, _ = augment.apply_program(images[5:17], {k: v[5:17] for k, v in program.items()},
                                    alpha=None if alpha is None else alpha[5:17])
    np.testing.assert_array_equal(part, fast[5:17])
    assert set(np.unique(fast.numpy())) <= set(range(256))
    if with_alpha:
        np.testing.assert_array_equal(fast_alpha, xla_alpha)
        assert set(np.unique(fast_alpha.numpy())) <= {0.0, 255.0} and (fast_alpha.numpy() == 0).any()


# ------------------------------------------------------------------------------ views and the grammar

def test_parse_augment_and_view_fields():
    assert views.parse_augment('d.d.rac') == ('d', 'd', 'rac')
    assert views.parse_augment('ctap.d.cta') == ('ctap', 'd', 'cta')
    assert views.parse_augment('aa.r2_10_50.rac7') == ('aa', 'r2_10_50', 'rac7')
    shape = info((32, 32, 3))
    assert views.make_view('rac', shape).cutout_side == 16 and views.make_view('ra', shape).cutout_side == 0
    assert views.make_view('rac', info((96, 96, 3))).cutout_side == 16  # fixed at every size
    r = views.make_view('r3_7_25', shape)
    assert (r.nops, r.magnitude, r.fixed, r.cutout_side) == (3, 7, True, 8)  # int(0.25 * 32)
    assert views.make_view('rac4', shape).magnitude == 4 and views.make_view('aac', shape).cutout_side == 16
    assert views.make_view('aa', info(name='svhn_noextra')).group == 'svhn'
    assert views.make_view('aa', info(name='cifar100')).group == 'cifar10'
    assert views.uses_cta('d.d.ctap') and not views.uses_cta('d.d.rac')
    with pytest.raises(ValueError):
        views.make_view('cta', shape)


@pytest.mark.parametrize('spec', ['d.d', 'd.d.rac.x', 'd.d.foo', '', 'D.d.rac', 'd..rac', 'd.d.rac ', 'd.d.rac1',
                                  'd.d.r0_5_10', 'd.d.r2_16_10', 'd.d.r2_5_101', 'd.d.rac11', 'd.d.ra c'])
def test_parse_augment_errors(spec):
    with pytest.raises(UserError) as error:
        views.parse_augment(spec)
    message = str(error.value)
    assert '\n' not in message and 'e.g. --augment=d.d.rac' in message
    assert all(code in message for code in ('d (', 'x (', 'aac (', 'rac (', 'racM (', 'rN_M_C (', 'cta (', 'ctap ('))


CODES = ['x', 'm', 'd', 'aa', 'aac', 'ra', 'rac', 'rac3', 'r2_10_50', 'cta', 'ctap']


def test_every_view_samples_and_applies_row_by_row():
    augmenter = cta.CTAugment()
    images = tf.round(tf.random.stateless_uniform([12, 16, 16, 3], [1, 3]) * 255) / 255
    for code in CODES:
        view = views.make_view(code, info(), augmenter)
        params = view.sample(12, SEED)
        assert all(v.shape[0] == 12 for v in params.values()), code
        again = view.sample(12, SEED)
        assert all(np.array_equal(params[k], again[k]) for k in params), code
        out = view.apply(images, params).numpy()
        assert out.shape == images.shape and out.min() >= 0 and out.max() <= 1, code
        rows = view.apply(images[4:9], {k: v[4:9] for k, v in params.items()})
        np.testing.assert_array_equal(rows, out[4:9], err_msg=code)
        np.testing.assert_array_equal(view.apply(images, params, xla=True), out, err_msg=code)  # the XLA path
        if code != 'x':
            other = view.sample(12, SEED + 1)
            assert any(not np.array_equal(params[k], other[k]) for k in params), code
            assert not np.array_equal(view.apply(images, other), out), code


def test_engine_in_tf_function_with_constant_ops_and_empty_groups():
    """Constant ops let Grappler fold the partition (it miscompiled dynamic_partition of the images there)."""
    images = tf.constant(np.random.default_rng(5).integers(0, 256, [6, 16, 16, 3]).astype(np.float32))
    zeros, centre = tf.zeros([6], tf.float64), tf.zeros([6, 2], tf.int32)

    @tf.function
    def constant_ops(x):
        same, _ = augment.apply_step(x, None, tf.zeros([6], tf.int32), zeros, zeros, centre)  # every group empty
        mixed, _ = augment.apply_step(x, None, tf.constant([0, 1, 12, 12, 17, 2]), zeros + 0.5, zeros + 1, centre)
        return same, mixed

    same, mixed = constant_ops(images)
    np.testing.assert_array_equal(same, images)
    expected, _ = augment.apply_step(images, None, tf.constant([0, 1, 12, 12, 17, 2]), zeros + 0.5, zeros + 1, centre)
    np.testing.assert_array_equal(mixed, expected)


def test_engine_and_samplers_compile_with_xla_and_match():
    """jit_compile=True on CPU: the engine's select path (every family, with an alpha) and the samplers of
    RandAugment, AutoAugment and CTAugment views give exactly the eager results."""
    n = 24
    images = tf.constant(np.random.default_rng(3).integers(0, 256, [n, 16, 16, 3]).astype(np.float32))
    alpha = tf.fill([n, 16, 16, 1], 255.0)
    program = random_program(n, 1, 4)
    compiled = tf.function(lambda x, a, p: augment.apply_program(x, p, alpha=a, xla=True), jit_compile=True)
    for got, expected in zip(compiled(images, alpha, program), augment.apply_program(images, program, alpha=alpha)):
        np.testing.assert_array_equal(got, expected)
    augmenter = cta.CTAugment()
    augmenter.rates.assign(tf.random.stateless_uniform([augmenter.rates.shape[0]], [2, 2], 0.3, 1.0))
    samplers = [views.make_view(code, info(), augmenter) for code in ('rac', 'cta')]
    drawn = tf.function(lambda seed: [view.sample(n, seed) for view in samplers], jit_compile=True)(SEED)
    for view, params in zip(samplers, drawn):
        plain = view.sample(n, SEED)
        assert all(np.array_equal(params[k], plain[k]) for k in plain), view.code


def test_view_fn_old_interface_in_tf_data():
    images = tf.round(tf.random.stateless_uniform([16, 16, 16, 3], [2, 5]) * 255) / 255
    fn = views.view_fn('rac', True, 2)
    dataset = tf.data.Dataset.from_tensor_slices(images).batch(8).enumerate()
    batches = [b.numpy() for b in dataset.map(lambda i, x: fn(x, tf.stack([SEED[0], i])))]
    np.testing.assert_array_equal(batches[1], fn(images[8:], tf.constant([3, 1], tf.int64)))
    np.testing.assert_array_equal(views.view_fn('x', True, 4)(images, SEED), images)
    with pytest.raises(UserError):
        views.view_fn('y', True, 4)
    with pytest.raises(ValueError):
        views.view_fn('cta', True, 4)


def test_cutout_only_view_keeps_the_weak_image_outside_one_grey_square():
    """'c' (ab_fixmatch_onlycutout): the weak view, then a 16-px grey square (clipped at the border)."""
    info = types.SimpleNamespace(name='x', shape=(32, 32, 1), flip=True, pad=4)
    images = tf.random.stateless_uniform([8, 32, 32, 1], [4, 2]) * 0.4  # never 0.5
    view, weak = views.make_view('c', info), views.make_view('d', info)
    params = view.sample(8, tf.constant([1, 2], tf.int64))
    out = view.apply(images, params).numpy()
    expected = weak.apply(images, {k: params[k] for k in ('flip', 'offset')}).numpy()
    grey = out == 0.5
    np.testing.assert_array_equal(out[~grey], expected[~grey])
    for mask in grey[..., 0]:
        rows, cols = np.flatnonzero(mask.any(axis=1)), np.flatnonzero(mask.any(axis=0))
        assert mask.sum() == len(rows) * len(cols) and len(rows) <= 16 and len(cols) <= 16  # one square
    assert grey[..., 0].sum(axis=(1, 2)).max() == 256  # unclipped: 16 x 16
