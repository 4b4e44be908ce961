"""Every engine op (libml.augment, libml.geometry) against the same operation done with Pillow, on real
Fashion-MNIST images and synthetic RGB images (square and not), at several parameter values.

Parity measure: mean absolute difference on 0..255; required <= 1.0 for every op, and in fact 0 (the ops
reproduce Pillow bit for bit: the tests assert it, with the mean difference in the message).
"""
import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

import pil_reference as ref
from libml import augment
from libml import geometry

pytestmark = pytest.mark.filterwarnings('ignore::DeprecationWarning')


@pytest.fixture(scope='module')
def groups():
    """name -> uint8 (N, H, W, 3) images; grey images have R = G = B."""
    return {'fashion': ref.fashion_mnist()[:3], 'rgb': ref.synthetic_rgb(4),
            'rgb_24x40': ref.synthetic_rgb(4, 24, 40, seed=1)}


def engine(images, name, values, values2=None, centres=None):
    """The engine op on every image x every value (one batch): uint8 (N * V, H, W, C) levels."""
    n, v = len(images), len(values)
    x = np.repeat(images, v, axis=0)
    grey = (images[..., 0] == images[..., 1]).all() and (images[..., 0] == images[..., 2]).all()
    x = x[..., :1] if grey else x  # grey images run as 1 channel
    levels = tf.constant(x.astype(np.float32))
    value = np.tile(np.asarray(values, np.float64), n)
    value2 = np.tile(np.asarray(values2 if values2 is not None else [0.0] * v, np.float64), n)
    centre = np.tile(np.asarray(centres if centres is not None else [[0, 0]] * v, np.int32), [n, 1])
    out, _ = augment.apply_step(levels, None, tf.fill([n * v], augment.OPS.index(name)), value, value2, centre,
                                used=(name,))
    out = out.numpy()
    return np.repeat(out, 3, axis=-1) if grey else out


def pillow(images, name, values, values2=None, centres=None):
    out = []
    for image in images:
        for k, value in enumerate(values):
            result = ref.engine_op(Image.fromarray(image), name, value, values2[k] if values2 is not None else 0,
                                   centres[k] if centres is not None else (0, 0))
            out.append(np.asarray(result))
    return np.asarray(out)


def assert_parity(ours, theirs, what):
    diff = np.abs(ours.astype(np.int64) - theirs.astype(np.int64))
    mad = diff.mean()
    assert mad <= 1.0, f'{what}: mean |diff| {mad:.3f} > 1 level'
    assert diff.max() == 0, f'{what}: not bit-exact ({(diff > 0).mean():.2%} pixels differ, mean |diff| {mad:.4f})'


OP_VALUES = {
    'autocontrast': [1.0, 0.3, 0.77], 'equalize': [1.0, 0.41], 'invert': [1.0, 0.5, 0.13],
    'blur': [1.0, 0.66, 0.2], 'smooth': [1.0, 0.35],
    'brightness': [0.1, 0.55, 1.0, 1.37, 1.9], 'color': [0.1, 0.64, 1.0, 1.46, 1.9],
    'contrast': [0.1, 0.28, 1.0, 1.64, 1.9], 'sharpness': [0.1, 0.46, 1.0, 1.82, 1.9],
    'posterize': [1, 2, 3, 4, 7, 8], 'solarize': [0, 1, 77, 128, 231, 255, 256],
    'rotate': [-45, -30, -27, -13, -1, 1, 7, 26, 30, 45, 90, 180],
    'shear_x': [-0.3, -0.27, -0.12, -0.03, 0.03, 0.12, 0.17, 0.3],
    'shear_y': [-0.3, -0.21, -0.12, 0.06, 0.12, 0.3],
    'translate_x': [-10, -9.6, -3.2, -1, 1, 4, 6.123, 9.6], 'translate_y': [-10, -2.7, 1, 3, 9.6],
}


@pytest.mark.parametrize('name', sorted(OP_VALUES))
def test_op_matches_pillow(groups, name):
    for group, images in groups.items():
        values = OP_VALUES[name]
        assert_parity(engine(images, name, values), pillow(images, name, values), f'{name} on {group}')


def test_rescale_matches_pillow_for_every_level_and_method(groups):
    levels = [0.0, 0.03, 0.3, 0.5, 0.77, 0.9999]
    values = [level for level in levels for _ in range(6)]
    methods = [m for _ in levels for m in range(6)]
    for group, images in groups.items():
        assert_parity(engine(images, 'rescale', values, methods), pillow(images, 'rescale', values, methods),
                      f'rescale on {group}')


def test_resize_routine_matches_pillow_up_and_down_both_pass_orders():
    images = ref.synthetic_rgb(4, 30, 20, seed=3)
    for size in [(32, 32), (12, 40), (13, 7), (45, 9), (5, 18), (10, 30)]:  # (h, w); the last two rows first
        for method in ref.METHOD_ORDER:
            ours = geometry.resize(tf.constant(images.astype(np.float32)), size, method).numpy()
            theirs = np.asarray([np.asarray(Image.fromarray(x).resize(size[::-1], ref.PIL_METHODS[method]))
                                 for x in images])
            assert_parity(ours, theirs, f'resize {images.shape[1:3]} -> {size} {method}')
    assert geometry.vertical_first((30, 20), (5, 18)) and geometry.vertical_first((30, 20), (10, 30))
    assert geometry.vertical_first((30, 20), (12, 40)) and not geometry.vertical_first((30, 20), (13, 7))
    assert not geometry.vertical_first((30, 20), (45, 9))


def test_cutout_square_matches_reference(groups):
    images = groups['rgb']
    sides = [16, 16, 16, 1, 2, 7, 31, 64]
    centres = [[0, 0], [31, 31], [10, 20], [5, 5], [5, 5], [3, 29], [16, 16], [16, 16]]
    assert_parity(engine(images, 'cutout', sides, centres=centres), pillow(images, 'cutout', sides, centres=centres),
                  'cutout')
    filled = (engine(images[:1], 'cutout', [16], centres=[[10, 20]])[0] == 127).all(-1)
    assert filled[2:18, 12:28].all() and filled.sum() >= 256  # [c - 8, c + 8)


def test_rotation_table_is_pillows_matrix():
    assert geometry.rotation_table(32, 32)[180].tolist() == [65536, 0, 32768, 0, 65536, 32768]  # 0: identity
    for size in [(32, 32), (40, 24), (96, 96)]:
        table = geometry.rotation_table(size[1], size[0])
        for degrees in range(-180, 181):
            matrix = ref.rotation_matrix(size, degrees)
            if matrix is None:  # multiples of 90 degrees are transposes (test_op_matches_pillow covers them)
                assert degrees % 90 == 0
                continue
            a, b, c, d, e, f = matrix
            expected = [ref.fixed(a), ref.fixed(b), ref.fixed(c + 0.5 * (a + b)), ref.fixed(d), ref.fixed(e),
                        ref.fixed(f + 0.5 * (d + e))]
            assert table[degrees + 180].tolist() == expected, (size, degrees)


RGBA_OPS = {'autocontrast': 1.0, 'equalize': 1.0, 'invert': 1.0, 'posterize': 2, 'solarize': 100,
            'brightness': 1.4, 'color': 0.3, 'contrast': 1.7, 'sharpness': 1.9, 'rotate': 17, 'shear_x': 0.21,
            'translate_y': -5, 'cutout': 12}


@pytest.mark.parametrize('name', sorted(RGBA_OPS))
def test_rgba_ops_after_a_rotation_match_the_reference(groups, name):
    """The reference's RGBA image: rotate 30 degrees (uncovered pixels alpha 0), then the op; RGB ops reset
    alpha, enhancers keep it, cutout sets RGB 127 alpha 0; alpha-0 pixels end grey."""
    for images in (groups['fashion'], groups['rgb']):
        grey = images.shape[-1] == 3 and (images[..., 0] == images[..., 2]).all()
        x = tf.constant((images[..., :1] if grey else images).astype(np.float32))
        n = len(images)
        alpha = tf.fill(tf.shape(x[..., :1]), 255.0)
        zeros = np.zeros(n)
        x, alpha = augment.apply_step(x, alpha, tf.fill([n], augment.OPS.index('rotate')), zeros + 30, zeros,
                                      np.zeros([n, 2], np.int32), used=('rotate',))
        centre = np.tile([[12, 9]], [n, 1]).astype(np.int32)
        out, alpha = augment.apply_step(x, alpha, tf.fill([n], augment.OPS.index(name)), zeros + RGBA_OPS[name], zeros,
                                        centre, used=(name,))
        ours = augment.from_levels(out, alpha).numpy()
        ours = np.repeat(ours, 3, -1) if grey else ours
        theirs = []
        for image in images:
            rgba = Image.fromarray(image).convert('RGBA').rotate(30)
            if name in augment.RGB_CONVERTING:  # the reference converts to RGB and back
                rgba = ref.engine_op(rgba.convert('RGB'), name, RGBA_OPS[name]).convert('RGBA')
            elif name == 'cutout':
                rgba = Image.fromarray(ref.cutout(np.asarray(rgba), (12, 9), 12, (127, 127, 127, 0)), 'RGBA')
            else:
                rgba = ref.engine_op(rgba, name, RGBA_OPS[name])
            array = np.asarray(rgba)
            unwrapped = array[..., :3] / 255.0
            unwrapped[array[..., 3] == 0] = 0.5
            theirs.append(unwrapped)
        assert_parity(np.round(ours * 510), np.round(np.asarray(theirs) * 510), f'RGBA {name}')  # 0.5 -> 255
