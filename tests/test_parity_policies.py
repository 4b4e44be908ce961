"""Whole views (RandAugment, AutoAugment, CTAugment, with their weak part and cutouts) against the reference
done with Pillow image by image, with the same sampled parameters; the statistics of the sampling."""
import types

import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

import pil_reference as ref
from cta import ctaugment
from cta import CTAugment
from libml import augment
from libml import geometry
from libml import policies
from libml import views

pytestmark = pytest.mark.filterwarnings('ignore::DeprecationWarning')
SEED = tf.constant([4, 2], tf.int64)


def info(shape, name='cifar10', flip=True, pad=4):
    return types.SimpleNamespace(name=name, shape=shape, flip=flip, pad=pad)


def inputs(kind, n):
    """[0, 1] float32 images and their uint8 RGB form (grey as R = G = B)."""
    rgb = ref.fashion_mnist()[:n] if kind == 'fashion' else ref.synthetic_rgb(n)
    stored = rgb[..., :1] if kind == 'fashion' else rgb
    return tf.constant(stored / 255.0, tf.float32), stored.shape[1:]


def as_rgb_levels(images):
    levels = np.round(np.asarray(images) * 255).astype(np.uint8)
    return np.repeat(levels, 3, -1) if levels.shape[-1] == 1 else levels


def weak_of(view, images, params):
    """The view's weak part alone (tests/test_augment.py checks it against numpy reflect padding)."""
    flip, pad = view._weak_args()
    return as_rgb_levels(geometry.weak(images, params['flip'], params['offset'], pad))


def final_cutout(array, view, params, i):
    if view.cutout_side <= 0:
        return array
    centre = geometry.centre_pixels(params['cutout'][i:i + 1], *view.shape[:2]).numpy()[0]
    return ref.cutout(array, centre, view.cutout_side, 0.5)


def assert_views_equal(ours, theirs, what):
    ours = np.asarray(ours)
    ours = np.repeat(ours, 3, -1) if ours.shape[-1] == 1 else ours
    diff = np.abs(np.round(ours * 510) - np.round(np.asarray(theirs) * 510)) / 2  # 0.5 -> exactly 127.5 levels
    assert diff.mean() <= 1.0, f'{what}: mean |diff| {diff.mean():.3f} levels'
    assert diff.max() == 0, f'{what}: {(diff > 0).mean():.2%} of pixels differ (mean {diff.mean():.4f} levels)'


@pytest.mark.parametrize('code,kind', [('rac', 'fashion'), ('ra', 'rgb'), ('rac', 'rgb'), ('r3_7_50', 'rgb'),
                                       ('rac4', 'fashion')])
def test_randaugment_view_matches_reference(code, kind):
    images, shape = inputs(kind, 40)
    view = views.make_view(code, info(shape))
    params = view.sample(40, SEED)
    ours = view.apply(images, params)
    weak = weak_of(view, images, params)
    p = {k: v.numpy() for k, v in params.items()}
    theirs = []
    for i in range(40):
        steps = [(policies.RA_OPS[p['ra_ops'][i, k]], p['level'][i, k], p['negate'][i, k], None)
                 for k in range(view.nops) if p['active'][i, k]]
        theirs.append(final_cutout(ref.apply_policy(weak[i], steps), view, params, i))
    assert_views_equal(ours, theirs, f'{code} on {kind}')


@pytest.mark.parametrize('code,kind,group', [('aac', 'rgb', 'cifar10'), ('aa', 'fashion', 'cifar10'),
                                             ('aa', 'rgb', 'svhn_noextra')])
def test_autoaugment_view_matches_reference(code, kind, group):
    n = 96
    images, shape = inputs(kind, n)
    view = views.make_view(code, info(shape, name=group))
    assert view.group == policies.policy_group(group)
    params = view.sample(n, SEED)
    ours = view.apply(images, params)
    weak = weak_of(view, images, params)
    names, _, levels = policies.policy_table(view.group)
    p = {k: v.numpy() for k, v in params.items()}
    theirs = []
    for i in range(n):
        sub = p['policy'][i]
        steps = [(policies.NAMES[names[sub, k]], levels[sub, k], p['negate'][i, k],
                  geometry.centre_pixels(p['centre'][i:i + 1, k], *shape[:2]).numpy()[0])
                 for k in range(2) if p['active'][i, k]]
        theirs.append(final_cutout(ref.apply_policy(weak[i], steps), view, params, i))
    assert_views_equal(ours, theirs, f'{code} on {kind}')


def cta_reference(weak, params, shape, final_cutout_centre=None):
    p = {k: v.numpy() for k, v in params.items()}
    out = []
    for i in range(len(weak)):
        image = Image.fromarray(weak[i])
        for k in range(p['ops'].shape[1]):
            centre = geometry.centre_pixels(p['centre'][i:i + 1, k], *shape[:2]).numpy()[0]
            image = ref.cta_op(image, ctaugment.OP_NAMES[p['ops'][i, k]], p['levels'][i, k], centre)
        if final_cutout_centre is not None:
            image = ref.cta_op(image, 'cutout', [1.0, 0.0], final_cutout_centre[i])
        out.append(np.asarray(image) / 255.0)
    return out


@pytest.mark.parametrize('kind', ['fashion', 'rgb'])
def test_ctaugment_views_and_probe_match_reference(kind):
    n = 96
    images, shape = inputs(kind, n)
    cta = CTAugment()
    cta.rates.assign(tf.random.stateless_uniform([ctaugment.NUM_BINS], [7, 7], 0.5, 1.0))
    for code in ('cta', 'ctap'):
        view = views.make_view(code, info(shape), cta)
        params = view.sample(n, SEED)
        centres = geometry.centre_pixels(params['cutout'], *shape[:2]).numpy() if code == 'cta' else None
        weak = weak_of(view, images, params)
        assert_views_equal(view.apply(images, params), cta_reference(weak, params, shape, centres), f'{code} {kind}')
    probe = cta.sample_random(n, SEED + 1)  # the probe: the random policy on the labeled view's weak image
    labeled = views.make_view('d', info(shape))
    weak_images = labeled.apply(images, labeled.sample(n, SEED))
    assert_views_equal(cta.apply(weak_images, probe), cta_reference(as_rgb_levels(weak_images), probe, shape),
                       f'probe {kind}')


def test_cta_mapping_examples():
    """Hand-computed parameters of the reference's formulas."""
    ops = [ctaugment.OP_NAMES.index(name) for name in ('rotate', 'rotate', 'posterize', 'solarize', 'cutout',
                                                         'translate_x', 'brightness', 'rescale')]
    levels = tf.constant([[[0.75, 0]], [[0.625, 0]], [[0.99, 0]], [[0.5, 0]], [[1.0, 0]], [[0.0, 0]],
                          [[0.5, 0]], [[0.5, 0.5]]], tf.float64)
    prog = ctaugment.program(tf.constant(ops)[:, None], levels, tf.zeros([8, 1, 2], tf.float64), 32, 32)
    # rotate round(22.5) = 22 (half to even), round(11.25) = 11; posterize 1 + int(7.92) = 8;
    # solarize int(127.9995) = 127; cutout 1 + int(15.968) = 16; translate -0.3 * 32 px; factor 1.05;
    # rescale method int(0.5 * 5.99) = 2 (bilinear)
    np.testing.assert_allclose(prog['value'][:, 0], [22, 11, 8, 127, 16, -9.6, 1.05, 0.5], atol=1e-12)
    assert prog['value2'][7, 0] == 2 and geometry.METHODS[2] == 'bilinear'


def test_randaugment_untouched_fraction_is_a_quarter():
    n = 4000
    images, shape = inputs('rgb', 8)
    view = views.make_view('ra', info(shape))
    params = view.sample(n, SEED)
    untouched = ~params['active'].numpy().any(axis=1)
    sigma = np.sqrt(0.25 * 0.75 / n)
    assert abs(untouched.mean() - 0.25) < 4 * sigma  # each of the 2 ops applied with p = 1/2
    level = params['level'].numpy()
    assert level.min() == 1 and level.max() == 9 and len(np.unique(params['ra_ops'].numpy())) == 14
    small = {k: v[:64] for k, v in params.items()}
    tiled = tf.tile(images, [8, 1, 1, 1])
    out = view.apply(tiled, small).numpy()
    weak = geometry.weak(tiled, small['flip'], small['offset'], 4).numpy()
    still = untouched[:64]
    assert still.any() and (out[still] == weak[still]).all()
    changed = np.abs(out - weak).max(axis=(1, 2, 3)) > 0
    assert changed[~still].mean() > 0.7  # an applied op changes the image (unless Identity or a no-op)


@pytest.mark.parametrize('size', [28, 32, 96])
def test_cutout_sizes_and_fill(size):
    images = tf.fill([64, size, size, 3], 0.2)
    rac = views.make_view('rac', info((size, size, 3), pad=0, flip=False))
    params = rac.sample(64, SEED)
    params['active'] = tf.zeros_like(params['active'])  # no RandAugment op: only the cutout
    out = rac.apply(images, params).numpy()
    grey = (out == 0.5).all(-1)
    for k in range(64):
        rows, cols = np.nonzero(grey[k])
        assert len(rows) == (rows.max() + 1 - rows.min()) * (cols.max() + 1 - cols.min())  # one rectangle
        assert rows.max() + 1 - rows.min() in range(8, 17) and cols.max() + 1 - cols.min() in range(8, 17)
    assert grey.sum(axis=(1, 2)).max() == 256  # side 16 at every size
    cta = CTAugment()
    strong = views.make_view('cta', info((size, size, 3), pad=0, flip=False), cta)
    params = strong.sample(64, SEED)
    params['ops'] = tf.fill(tf.shape(params['ops']), ctaugment.OP_NAMES.index('identity'))
    filled = (strong.apply(images, params).numpy() == np.float32(127 / 255)).all(-1).sum(axis=(1, 2))
    side = 1 + int(size * 0.499)  # the cutout op at level 1
    assert filled.max() == (2 * (side // 2)) ** 2 and filled.min() >= (side // 2) ** 2


def test_every_randaugment_and_autoaugment_op_at_every_level_matches_reference():
    """Each op of RA_OPS + Invert + Cutout, levels 0..10, both signs, one step on the RGBA image."""
    for kind in ('fashion', 'rgb'):
        images, shape = inputs(kind, 2)
        combos = [(name, level, negate) for name in policies.NAMES for level in range(11) for negate in (False, True)
                  if not (name == 'Posterize' and level == 10)]  # 0 bits: Pillow >= 10 refuses it
        n = len(combos) * 2
        names = tf.constant([[policies.NAMES.index(c[0])] for c in combos] * 2, tf.int32)
        level = tf.constant([[c[1]] for c in combos] * 2, tf.int32)
        negate = tf.constant([[c[2]] for c in combos] * 2)
        centre = tf.fill([n, 1, 2], 13)
        prog = policies._program(names, level, negate, tf.fill([n, 1], True), centre)
        x = tf.repeat(images, len(combos), axis=0)
        levels, alpha = augment.apply_program(augment.to_levels(x), prog, alpha=tf.fill([n, *shape[:2], 1], 255.0))
        ours = augment.from_levels(levels, alpha)
        rgb = as_rgb_levels(x)
        theirs = [ref.apply_policy(rgb[i], [(*combos[i % len(combos)], (13, 13))]) for i in range(n)]
        assert_views_equal(ours, theirs, f'RA/AA ops on {kind}')


def test_every_ctaugment_op_at_several_levels_matches_reference():
    grid = [0.0, 0.1, 0.3, 0.5, 0.77, 0.99]
    for kind in ('fashion', 'rgb'):
        images, shape = inputs(kind, 2)
        combos = [(op, l, l2) for op in range(len(ctaugment.OPS)) for l in grid
                  for l2 in (grid if ctaugment.OP_NAMES[op] == 'rescale' else [0.0])]
        n = len(combos) * 2
        params = {'ops': tf.constant([[c[0]] for c in combos] * 2, tf.int32),
                  'levels': tf.constant([[[c[1], c[2]]] for c in combos] * 2, tf.float64),
                  'centre': tf.fill([n, 1, 2], tf.constant(0.4, tf.float64))}
        params['bins'] = ctaugment.update_bins(params['ops'], params['levels'])
        x = tf.repeat(images, len(combos), axis=0)
        assert_views_equal(CTAugment().apply(x, params), cta_reference(as_rgb_levels(x), params, shape),
                           f'CTA ops on {kind}')
