"""CTAugment (cta/ctaugment.py): probabilities, sampling, sequential rate update, checkpoints, graph use."""
import numpy as np
import pytest
import tensorflow as tf

from cta import CTAugment, Policy, proximity
from cta import ctaugment
from libml import augment

SEED = tf.constant([5, 11], tf.int64)


def param_slice(op, slot=0):
    """Slice of the flat rates vector holding parameter `slot` of op `op`."""
    p = ctaugment.PARAMS.index((ctaugment.OP_NAMES.index(op), slot))
    offset = ctaugment.PARAM_OFFSET[p]
    return slice(offset, offset + ctaugment.PARAM_BINS[p])


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
    assert np.allclose(p[param_slice('posterize')], 1.0)
    assert np.allclose(p[param_slice('blur')], 1.0)


def test_sampling_frequencies_follow_p():
    cta = CTAugment()
    rng = np.random.default_rng(0)
    cta.rates.assign(rng.uniform(0.6, 1.0, ctaugment.NUM_BINS).astype(np.float32))
    p = cta.probabilities().numpy()
    n = 20000
    policy = cta.sample_policy(n, SEED)
    ops, bins, values = policy.ops.numpy(), policy.bins.numpy(), policy.values.numpy()
    op_counts = np.bincount(ops.ravel(), minlength=19)
    expected_op = 2 * n / 19
    assert np.abs(op_counts - expected_op).max() < 5 * np.sqrt(expected_op)  # ops uniform
    for op_name in ('rotate', 'posterize', 'rescale', 'smooth'):
        op = ctaugment.OP_NAMES.index(op_name)
        for slot in range(len(ctaugment.OPS[op][1])):
            chosen = bins[:, :, slot][ops == op]
            p_param = p[param_slice(op_name, slot)]
            counts = np.bincount(chosen, minlength=len(p_param))
            expected = len(chosen) * p_param / p_param.sum()
            assert (counts[p_param == 0] == 0).all(), op_name
            assert 0 < (p_param == 0).sum() < len(p_param) or op_name == 'rescale'
            sigma = np.sqrt(expected * (1 - p_param / p_param.sum())) + 1
            assert (np.abs(counts - expected) < 5 * sigma).all(), (op_name, counts, expected)
            level = values[:, :, slot][ops == op]
            nbins = len(p_param)
            assert ((level >= chosen / nbins) & (level < (chosen + 1) / nbins)).all()
    identity = ops == ctaugment.OP_NAMES.index('identity')
    assert (bins[identity] == -1).all() and (values[identity] == 0).all()
    single = ops != ctaugment.OP_NAMES.index('rescale')
    assert (bins[:, :, 1][single] == -1).all()


def test_random_policy_is_uniform():
    cta = CTAugment()
    cta.rates.assign(tf.zeros([ctaugment.NUM_BINS]))  # a probe ignores the rates
    policy = cta.random_policy(4000, SEED)
    ops, bins, values = policy.ops.numpy(), policy.bins.numpy(), policy.values.numpy()
    nbins = ctaugment.OP_NBINS[ops]
    present = nbins > 0
    assert ((bins == np.floor(values * nbins).astype(int)) | ~present).all()
    assert (bins[~present] == -1).all() and (values[~present] == 0).all()
    level = values[:, :, 0][ops == ctaugment.OP_NAMES.index('rotate')]
    assert abs(level.mean() - 0.5) < 0.05 and level.min() >= 0 and level.max() < 1
    assert np.abs(np.bincount(ops.ravel(), minlength=19) - 8000 / 19).max() < 5 * np.sqrt(8000 / 19)


def sequential_update(rates, policy, prox, decay):
    """Reference: the per-image, per-op, per-parameter loop in float64."""
    rates = rates.astype(np.float64).copy()
    for i in range(policy.ops.shape[0]):
        for step in range(policy.ops.shape[1]):
            op = int(policy.ops[i, step])
            for slot in range(len(ctaugment.OPS[op][1])):
                p = ctaugment.PARAMS.index((op, slot))
                b = ctaugment.PARAM_OFFSET[p] + int(policy.bins[i, step, slot])
                rates[b] = decay * rates[b] + (1 - decay) * prox[i]
    return rates


def test_update_equals_sequential_loop():
    cta = CTAugment()
    rng = np.random.default_rng(1)
    start = rng.uniform(0.2, 1.0, ctaugment.NUM_BINS).astype(np.float32)
    cta.rates.assign(start)
    policy = cta.random_policy(300, SEED)  # many images hit the same bins
    # Two images using the same bin twice in one policy (both steps the same op and bin).
    ops = policy.ops.numpy()
    bins = policy.bins.numpy()
    values = policy.values.numpy()
    ops[:2] = ctaugment.OP_NAMES.index('blur')
    bins[:2] = [[4, -1], [4, -1]]
    policy = Policy(tf.constant(ops), tf.constant(bins), tf.constant(values), policy.seed)
    prox = rng.uniform(0, 1, 300).astype(np.float32)
    policy_np = Policy(ops, bins, values, None)
    expected = sequential_update(start, policy_np, prox, 0.99)
    returned = cta.update(policy, prox)
    np.testing.assert_allclose(cta.rates.numpy(), expected, atol=2e-6)
    np.testing.assert_allclose(returned, expected, atol=2e-6)
    assert np.abs(cta.rates.numpy() - start).max() > 0.01
    untouched = np.ones(ctaugment.NUM_BINS, bool)
    for i, step in np.ndindex(300, 2):
        for slot in range(len(ctaugment.OPS[ops[i, step]][1])):
            p = ctaugment.PARAMS.index((ops[i, step], slot))
            untouched[ctaugment.PARAM_OFFSET[p] + bins[i, step, slot]] = False
    assert np.array_equal(cta.rates.numpy()[untouched], start[untouched])


def test_update_in_tf_function():
    cta = CTAugment()
    policy = cta.random_policy(64, SEED)
    prox = tf.linspace(0.0, 1.0, 64)
    expected = sequential_update(cta.rates.numpy(), Policy(*[t.numpy() for t in policy[:3]], None),
                                 prox.numpy(), 0.99)
    tf.function(cta.update)(policy, prox)
    np.testing.assert_allclose(cta.rates.numpy(), expected, atol=2e-6)


def test_proximity():
    probs = [[1.0, 0.0, 0.0], [1.0, 0.0, 0.0], [0.5, 0.5, 0.0], [0.2, 0.3, 0.5]]
    out = proximity(probs, [0, 1, 0, 2]).numpy()
    np.testing.assert_allclose(out, [1.0, 0.0, 0.5, 0.5], atol=1e-6)


def test_checkpoint_round_trip(tmp_path):
    cta = CTAugment()
    cta.update(cta.random_policy(32, SEED), tf.fill([32], 0.25))
    saved = cta.rates.numpy()
    path = tf.train.Checkpoint(cta=cta).save(str(tmp_path / 'ckpt'))
    restored = CTAugment()
    assert not np.array_equal(restored.rates.numpy(), saved)
    tf.train.Checkpoint(cta=restored).restore(path).assert_consumed()
    assert np.array_equal(restored.rates.numpy(), saved)


def test_engine_parameters_mapping():
    names = ['autocontrast', 'brightness', 'cutout', 'identity', 'posterize', 'rescale', 'rotate',
             'shear_x', 'solarize', 'translate_y', 'posterize', 'rotate']
    ops = [ctaugment.OP_NAMES.index(name) for name in names]
    levels = [[0.3, 0], [0.5, 0], [1.0, 0], [0, 0], [0.99, 0], [0.5, 0.99], [1.0, 0], [0.0, 0],
              [0.5, 0], [0.75, 0], [0.0, 0], [0.25, 0]]
    op_ids, params = ctaugment.engine_parameters(ops, tf.constant(levels, tf.float32), 32, 32)
    assert [augment.OPS[i] for i in op_ids.numpy()] == names
    expected = [[0.3, 0], [1.05, 0], [16, 0], [0, 0], [8, 0], [0.5, 5], [45, 0], [-0.3, 0],
                [127, 0], [0.15, 0], [1, 0], [-22.5, 0]]
    np.testing.assert_allclose(params, expected, atol=1e-5)


def test_apply_known_policy():
    cta = CTAugment()
    images = tf.random.stateless_uniform([3, 16, 16, 3], [1, 2])
    ops = [[ctaugment.OP_NAMES.index('invert'), ctaugment.OP_NAMES.index('identity')],
           [ctaugment.OP_NAMES.index('identity'), ctaugment.OP_NAMES.index('invert')],
           [ctaugment.OP_NAMES.index('brightness'), ctaugment.OP_NAMES.index('invert')]]
    values = [[[1.0, 0], [0, 0]], [[0, 0], [0.5, 0]], [[0.0, 0], [1.0, 0]]]
    policy = Policy(tf.constant(ops), tf.zeros([3, 2, 2], tf.int32), tf.constant(values), SEED)
    out = cta.apply(images, policy).numpy()
    np.testing.assert_allclose(out[0], 1 - images[0], atol=1e-6)
    np.testing.assert_allclose(out[1], 0.5, atol=1e-6)  # blend(x, 1 - x, 0.5)
    np.testing.assert_allclose(out[2], 1 - 0.1 * images[2], atol=1e-6)  # factor 0.1, then invert


def test_translate_is_a_fraction_of_the_size():
    cta = CTAugment()
    image = np.zeros([1, 20, 20, 1], np.float32)
    image[0, 10, 10, 0] = 1.0
    ops = [[ctaugment.OP_NAMES.index('translate_x'), ctaugment.OP_NAMES.index('identity')]]
    policy = Policy(tf.constant(ops), tf.zeros([1, 2, 2], tf.int32), tf.constant([[[0.0, 0], [0, 0]]]), SEED)
    out = cta.apply(tf.constant(image), policy).numpy()
    assert [tuple(p) for p in np.argwhere(out[0, :, :, 0] == 1)] == [(10, 16)]  # -0.3 * 20 = 6 px right


def test_strong_determinism_cutout_and_grayscale():
    cta = CTAugment()
    for channels in (3, 1):
        images = tf.random.stateless_uniform([16, 32, 32, channels], [3, 3])
        first = cta.strong(images, SEED).numpy()
        assert first.shape == images.shape and first.min() >= 0 and first.max() <= 1
        np.testing.assert_array_equal(first, cta.strong(images, SEED))
        assert not np.array_equal(first, cta.strong(images, SEED + 1))
        gray = (first == 0.5).all(axis=3).sum(axis=(1, 2))
        assert (gray >= 64).all()  # a 16x16 cutout (level 1 at 32 px), at least a quarter inside


def test_rates_table_and_image():
    cta = CTAugment()
    table = cta.rates_table()
    lines = table.splitlines()
    assert len(lines) == 20 and all(name in table for name in ctaugment.OP_NAMES)
    assert lines[ctaugment.OP_NAMES.index('posterize')].split()[1:] == ['1.00'] * 8
    image = cta.rates_image()
    assert image.shape == (1, 19, 17, 1)
    assert np.isclose(image.numpy().sum(), ctaugment.NUM_BINS)


def test_strong_inside_tf_data_reads_current_rates():
    cta = CTAugment()
    images = tf.random.stateless_uniform([8, 16, 16, 3], [4, 1])
    dataset = tf.data.Dataset.from_tensors(images).map(lambda x: cta.strong(x, SEED))
    before = next(iter(dataset)).numpy()
    np.testing.assert_allclose(before, cta.strong(images, SEED), atol=1e-6)
    cta.rates.assign(tf.random.stateless_uniform([ctaugment.NUM_BINS], [1, 1]))  # new p, new bins
    after = next(iter(dataset)).numpy()
    np.testing.assert_allclose(after, cta.strong(images, SEED), atol=1e-6)
    assert not np.allclose(before, after)
