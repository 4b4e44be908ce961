"""CTAugment (cta/ctaugment.py): probabilities, sampling, the sequential rate update, checkpoints, graph use,
the old Policy interface. Pillow parity of its ops and policies: tests/test_parity_*.py."""
import numpy as np
import pytest
import tensorflow as tf

from cta import CTAugment, Policy, proximity
from cta import ctaugment

SEED = tf.constant([5, 11], tf.int64)


def param_slice(op, slot=0):
    """Slice of the flat rates vector holding parameter `slot` of op `op`."""
    p = ctaugment.PARAMS.index((ctaugment.OP_NAMES.index(op), slot))
    offset = ctaugment.PARAM_OFFSET[p]
    return slice(offset, offset + ctaugment.PARAM_BINS[p])


def policy_of(ops, levels):
    """Params of a hand-written policy: ops names (n, depth), levels (n, depth, 2)."""
    ops = tf.constant([[ctaugment.OP_NAMES.index(name) for name in row] for row in ops], tf.int32)
    levels = tf.constant(levels, tf.float64)
    return {'ops': ops, 'levels': levels, 'bins': ctaugment.update_bins(ops, levels),
            'centre': tf.zeros(levels.shape, tf.float64)}


def test_layout_and_variable():
    assert len(ctaugment.OPS) == 19
    assert ctaugment.NUM_BINS == 16 * 17 + 8 + 17 + 6
    cta = CTAugment()
    assert (cta.depth, cta.threshold, cta.decay) == (2, 0.8, 0.99)
    assert cta.rates.shape == (ctaugment.NUM_BINS,) and cta.rates.dtype == tf.float32
    assert not cta.rates.trainable and (cta.rates.numpy() == 1).all()
    assert cta.rates.aggregation == tf.VariableAggregation.ONLY_FIRST_REPLICA
    assert list(cta.trainable_variables) == [] and len(cta.variables) == 1


def test_probabilities_and_threshold():
    cta = CTAugment()
    assert np.allclose(cta.probabilities(), 1.0)
    rates = np.ones(ctaugment.NUM_BINS, np.float32)
    rates[param_slice('rotate')] = 0.5
    rates[param_slice('rotate').start + 3] = 1.0
    rates[param_slice('rotate').start + 4] = 0.8  # (0.8 + 0.01) / 1.01 = 0.802: kept
    rates[param_slice('rotate').start + 5] = 0.79  # 0.792: dropped
    rates[param_slice('posterize')] = 0.2  # all equal: every bin p = 1
    cta.rates.assign(rates)
    p = cta.probabilities().numpy()
    rotate = p[param_slice('rotate')]
    assert rotate[3] == pytest.approx(1.0) and rotate[4] == pytest.approx(0.81 / 1.01)
    assert (np.delete(rotate, [3, 4]) == 0).all()
    assert np.allclose(p[param_slice('posterize')], 1.0) and np.allclose(p[param_slice('blur')], 1.0)


def test_training_sampling_follows_p_and_bins_follow_the_update_rule():
    cta = CTAugment()
    cta.rates.assign(np.random.default_rng(0).uniform(0.6, 1.0, ctaugment.NUM_BINS).astype(np.float32))
    p = cta.probabilities().numpy()
    n = 20000
    params = {k: v.numpy() for k, v in cta.sample_training(n, SEED).items()}
    ops, levels, bins = params['ops'], params['levels'], params['bins']
    expected_op = 2 * n / 19
    assert np.abs(np.bincount(ops.ravel(), minlength=19) - expected_op).max() < 5 * np.sqrt(expected_op)
    for op_name in ('rotate', 'posterize', 'rescale', 'smooth'):
        op = ctaugment.OP_NAMES.index(op_name)
        for slot in range(len(ctaugment.OPS[op][1])):
            p_param = p[param_slice(op_name, slot)]
            nbins = len(p_param)
            level = levels[:, :, slot][ops == op]
            sampled = np.floor(level * nbins).astype(int)  # level = (bin + U) / nbins
            counts = np.bincount(sampled, minlength=nbins)
            expected = len(level) * p_param / p_param.sum()
            assert (counts[p_param == 0] == 0).all(), op_name
            sigma = np.sqrt(expected * (1 - p_param / p_param.sum())) + 1
            assert (np.abs(counts - expected) < 5 * sigma).all(), (op_name, counts, expected)
            np.testing.assert_array_equal(bins[:, :, slot][ops == op], np.floor(level * nbins * 0.999).astype(int))
    identity = ops == ctaugment.OP_NAMES.index('identity')
    assert (bins[identity] == -1).all() and (levels[identity] == 0).all()
    assert (bins[:, :, 1][ops != ctaugment.OP_NAMES.index('rescale')] == -1).all()
    assert params['centre'].shape == (n, 2, 2) and 0 <= params['centre'].min() and params['centre'].max() < 1


def test_random_policy_is_uniform_and_ignores_the_rates():
    cta = CTAugment()
    cta.rates.assign(tf.zeros([ctaugment.NUM_BINS]))
    params = {k: v.numpy() for k, v in cta.sample_random(4000, SEED).items()}
    ops, levels, bins = params['ops'], params['levels'], params['bins']
    nbins = ctaugment.OP_NBINS[ops]
    present = nbins > 0
    assert ((bins == np.floor(levels * nbins * 0.999).astype(int)) | ~present).all()
    assert (bins[~present] == -1).all() and (levels[~present] == 0).all()
    level = levels[:, :, 0][ops == ctaugment.OP_NAMES.index('rotate')]
    assert abs(level.mean() - 0.5) < 0.05 and level.min() >= 0 and level.max() < 1
    assert np.abs(np.bincount(ops.ravel(), minlength=19) - 8000 / 19).max() < 5 * np.sqrt(8000 / 19)


def sequential_update(rates, ops, bins, prox, decay):
    """Reference: the per-image, per-op, per-parameter loop in float64."""
    rates = rates.astype(np.float64).copy()
    for i in range(ops.shape[0]):
        for step in range(ops.shape[1]):
            op = int(ops[i, step])
            for slot in range(len(ctaugment.OPS[op][1])):
                b = ctaugment.PARAM_OFFSET[ctaugment.PARAMS.index((op, slot))] + int(bins[i, step, slot])
                rates[b] = decay * rates[b] + (1 - decay) * prox[i]
    return rates


def test_update_equals_sequential_loop():
    cta = CTAugment()
    rng = np.random.default_rng(1)
    start = rng.uniform(0.2, 1.0, ctaugment.NUM_BINS).astype(np.float32)
    cta.rates.assign(start)
    params = cta.sample_random(300, SEED)  # many images hit the same bins
    ops, bins = params['ops'].numpy(), params['bins'].numpy()
    ops[:2] = ctaugment.OP_NAMES.index('blur')  # the same bin twice in one policy
    bins[:2] = [[4, -1], [4, -1]]
    prox = rng.uniform(0, 1, 300).astype(np.float32)
    expected = sequential_update(start, ops, bins, prox, 0.99)
    returned = cta.update(tf.constant(ops), tf.constant(bins), prox)
    np.testing.assert_allclose(cta.rates.numpy(), expected, atol=2e-6)
    np.testing.assert_allclose(returned, expected, atol=2e-6)
    untouched = np.ones(ctaugment.NUM_BINS, bool)
    for i, step in np.ndindex(300, 2):
        for slot in range(len(ctaugment.OPS[ops[i, step]][1])):
            p = ctaugment.PARAMS.index((ops[i, step], slot))
            untouched[ctaugment.PARAM_OFFSET[p] + bins[i, step, slot]] = False
    assert np.array_equal(cta.rates.numpy()[untouched], start[untouched]) and not untouched.all()


def test_update_in_tf_function_under_xla_and_old_call():
    cta = CTAugment()
    params = cta.sample_random(64, SEED)
    prox = tf.linspace(0.0, 1.0, 64)
    expected = sequential_update(cta.rates.numpy(), params['ops'].numpy(), params['bins'].numpy(), prox.numpy(), 0.99)
    tf.function(cta.update, jit_compile=True)(params['ops'], params['bins'], prox)
    np.testing.assert_allclose(cta.rates.numpy(), expected, atol=2e-6)
    again = sequential_update(cta.rates.numpy(), params['ops'].numpy(), params['bins'].numpy(), prox.numpy(), 0.99)
    tf.function(cta.update)(Policy(params['ops'], params['bins'], None, None), prox)  # update(policy, proximity)
    np.testing.assert_allclose(cta.rates.numpy(), again, atol=2e-6)


def test_proximity():
    probs = [[1.0, 0.0, 0.0], [1.0, 0.0, 0.0], [0.5, 0.5, 0.0], [0.2, 0.3, 0.5]]
    np.testing.assert_allclose(proximity(probs, [0, 1, 0, 2]).numpy(), [1.0, 0.0, 0.5, 0.5], atol=1e-6)


def test_checkpoint_round_trip(tmp_path):
    cta = CTAugment()
    params = cta.sample_random(32, SEED)
    cta.update(params['ops'], params['bins'], tf.fill([32], 0.25))
    saved = cta.rates.numpy()
    path = tf.train.Checkpoint(cta=cta).save(str(tmp_path / 'ckpt'))
    restored = CTAugment()
    assert not np.array_equal(restored.rates.numpy(), saved)
    tf.train.Checkpoint(cta=restored).restore(path).assert_consumed()
    assert np.array_equal(restored.rates.numpy(), saved)


def test_apply_known_policies():
    cta = CTAugment()
    images = tf.constant(np.random.default_rng(2).integers(0, 256, [3, 16, 16, 3]) / 255.0, tf.float32)
    params = policy_of([['invert', 'identity'], ['identity', 'invert'], ['brightness', 'invert']],
                       [[[1.0, 0], [0, 0]], [[0, 0], [0.5, 0]], [[0.0, 0], [1.0, 0]]])
    out = np.round(cta.apply(images, params).numpy() * 255)
    x = np.round(images.numpy() * 255)
    np.testing.assert_array_equal(out[0], 255 - x[0])
    np.testing.assert_array_equal(out[1], np.floor(x[1] + np.float32(0.5) * (255 - 2 * x[1])))  # blend 1/2
    np.testing.assert_array_equal(out[2], 255 - np.floor(np.float32(0.1) * x[2]))  # factor 0.1, then invert


def test_translate_is_a_fraction_of_the_size():
    cta = CTAugment()
    image = np.zeros([1, 20, 20, 1], np.float32)
    image[0, 10, 10, 0] = 1.0
    out = cta.apply(tf.constant(image), policy_of([['translate_x', 'identity']], [[[0.0, 0], [0, 0]]])).numpy()
    assert [tuple(p) for p in np.argwhere(out[0, :, :, 0] == 1)] == [(10, 16)]  # -0.3 * 20 = 6 px right


def test_strong_determinism_cutout_and_grey_images():
    cta = CTAugment()
    for channels in (3, 1):
        images = tf.round(tf.random.stateless_uniform([16, 32, 32, channels], [3, 3]) * 255) / 255
        first = cta.strong(images, SEED).numpy()
        assert first.shape == images.shape and first.min() >= 0 and first.max() <= 1
        np.testing.assert_array_equal(first, cta.strong(images, SEED))
        assert not np.array_equal(first, cta.strong(images, SEED + 1))
        filled = (first == np.float32(127 / 255)).all(axis=3).sum(axis=(1, 2))
        assert (filled >= 64).all()  # a 16x16 cutout (level 1 at 32 px), at least a quarter inside


def test_old_policy_interface():
    cta = CTAugment()
    images = tf.round(tf.random.stateless_uniform([8, 16, 16, 3], [4, 4]) * 255) / 255
    policy = cta.random_policy(8, SEED)
    assert isinstance(policy, Policy) and policy.ops.shape == (8, 2) and policy.bins.shape == (8, 2, 2)
    np.testing.assert_array_equal(policy.bins, ctaugment.update_bins(policy.ops, policy.values))
    out = cta.apply(images, policy).numpy()
    np.testing.assert_array_equal(out, cta.apply(images, policy))
    assert out.shape == images.shape and not np.array_equal(out, images)


def test_rates_table_and_image():
    cta = CTAugment()
    lines = cta.rates_table().splitlines()
    assert len(lines) == 20 and all(name in cta.rates_table() for name in ctaugment.OP_NAMES)
    assert lines[ctaugment.OP_NAMES.index('posterize')].split()[1:] == ['1.00'] * 8
    image = cta.rates_image()
    assert image.shape == (1, 19, 17, 1) and np.isclose(image.numpy().sum(), ctaugment.NUM_BINS)


def test_strong_inside_tf_data_reads_current_rates():
    cta = CTAugment()
    images = tf.round(tf.random.stateless_uniform([8, 16, 16, 3], [4, 1]) * 255) / 255
    dataset = tf.data.Dataset.from_tensors(images).map(lambda x: cta.strong(x, SEED))
    before = next(iter(dataset)).numpy()
    np.testing.assert_array_equal(before, cta.strong(images, SEED))
    cta.rates.assign(tf.random.stateless_uniform([ctaugment.NUM_BINS], [1, 1]))  # new p, new bins
    after = next(iter(dataset)).numpy()
    np.testing.assert_array_equal(after, cta.strong(images, SEED))
    assert not np.array_equal(before, after)
