"""DARP: the refinement on hand-made matrices (selection, Newton, rows and columns), the per-image state
update, the loss of FixMatch --darp on fixed logits, and one-line refusals (exact resume: test_resume.py)."""
import numpy as np
import pytest
import tensorflow as tf

import fakes
import fixmatch
import mixmatch
from libml import darp
from libml import debias
from libml import losses
from libml import settings as settings_lib
from libml import utils
from test_flexmatch import BATCH, TABLE, TableModel


def test_top_selection_and_the_weighted_start_by_hand():
    probs = np.array([[.9, .1], [.6, .4], [.2, .8]], np.float32)
    target = np.array([1., 2.], np.float32)  # n = int(2 t) = 2 and 4 (more than the 3 rows: all)
    selection = darp.top_selection(tf.constant(probs), [2, 4]).numpy()
    np.testing.assert_array_equal(selection, [[1, 1], [1, 1], [0, 1]])
    np.testing.assert_array_equal(darp.top_selection(tf.constant(probs), [1, 1]).numpy(), [[1, 0], [0, 0], [0, 1]])
    w = np.array([(1 + 1e-6) / (1.5 + 1e-6), (2 + 1e-6) / (1.3 + 1e-6)])
    start = probs * selection * w + 1e-6
    np.testing.assert_allclose(darp.selected_start(tf.constant(probs), tf.constant(target)).numpy(),
                               start / start.sum(1, keepdims=True), rtol=1e-6)


def test_newton_solves_the_entropy_weighted_column_sum():
    # 0.5 exp(-y) + 0.5 exp(-2y) = 0.5: exp(-y) = (sqrt(5) - 1) / 2, y = 0.48121
    y = darp.newton_columns(tf.constant([[.5], [.5]]), tf.constant([1., 2.]), tf.constant([.5]), tf.zeros([1]))
    assert float(y[0]) == pytest.approx(-np.log((np.sqrt(5) - 1) / 2), abs=1e-3)


def test_refinement_rows_sum_to_one_and_columns_reach_the_target():
    probs = np.random.RandomState(0).dirichlet([.7, .7, .7], size=12).astype(np.float32)  # column sums 4.0, 5.5, 2.4
    target = np.array([6., 4., 2.], np.float32)
    refined = darp.refine(probs, target).numpy()
    assert (refined > 0).all()
    np.testing.assert_allclose(refined.sum(1), 1, rtol=1e-5)
    np.testing.assert_allclose(refined.sum(0), target, atol=0.1)  # within the Newton tolerance
    # a confident row stays confident: its entropy weights its scaling down
    confident = probs.max(1).argmax()
    assert refined[confident].argmax() == probs[confident].argmax()


def test_scatter_rows_writes_the_last_row_of_each_image():
    table = tf.zeros([4, 2])
    out = darp.scatter_rows(table, tf.constant([2, 0, 2], tf.int64), tf.constant([[1., 1], [2, 2], [3, 3]]))
    np.testing.assert_array_equal(out.numpy(), [[2, 2], [0, 0], [3, 3], [0, 0]])


def make(**settings):
    # 7 unlabeled images, labeled classes (0, 1, 2): target 7/3 per class
    algorithm = fixmatch.FixMatch(fakes.fake_trainer(fixmatch.FixMatch, TableModel(TABLE), nclass=3,
                                                     labeled_labels=(0, 1, 2), n_total=8, augment='d.d.d',
                                                     darp=True, **settings))
    algorithm.build()
    return algorithm


def expected_loss(weak_logits, thresholds=0.95):
    xe = losses.cross_entropy(BATCH['label'], tf.constant(TABLE[[0, 1]], tf.float32))
    h, mask = losses.pseudo_label_term(weak_logits, tf.constant(TABLE[[6, 7, 8, 9]], tf.float32), thresholds)
    return float(tf.reduce_mean(xe) + tf.reduce_mean(h)), float(tf.reduce_mean(mask))


def test_state_update_and_the_refined_pseudo_labels():
    algorithm = make(darp_warmup_kimg=0, darp_every=10)
    state = algorithm.bias.darp
    p = tf.nn.softmax(tf.constant(TABLE[[2, 3, 4, 5]], tf.float32)).numpy()
    loss, logs = algorithm.loss(BATCH, tf.constant(0, tf.int64))  # step 0 = the warm-up's end: refined first
    orig = np.full([7, 3], 1 / 3, np.float32)
    orig[[4, 0, 1, 6]] = p
    np.testing.assert_allclose(state.pseudo_orig.numpy(), orig, rtol=1e-6)
    refined = darp.refine(orig, np.full(3, 7 / 3)).numpy()
    np.testing.assert_allclose(state.pseudo_refine.numpy(), refined, rtol=1e-5)
    expected, mask = expected_loss(np.log(refined[[4, 0, 1, 6]]))
    assert float(loss) == pytest.approx(expected, rel=1e-5) and float(logs['monitors/mask']) == pytest.approx(mask)
    # step 5: no refinement (the next is at step 10); the rows come from pseudo_refine, pseudo_orig moves
    batch = dict(BATCH, u_index=tf.constant([3, 3, 2, 5], tf.int64))
    loss, _ = algorithm.loss(batch, tf.constant(5, tf.int64))
    np.testing.assert_allclose(state.pseudo_refine.numpy(), refined, rtol=1e-5)
    orig[[3, 2, 5]] = p[[1, 2, 3]]  # image 3 listed twice: the later row wins
    np.testing.assert_allclose(state.pseudo_orig.numpy(), orig, rtol=1e-6)
    assert float(loss) == pytest.approx(expected_loss(np.log(refined[[3, 3, 2, 5]]))[0], rel=1e-5)


def test_before_the_warmup_the_loss_is_fixmatch():
    algorithm = make(darp_warmup_kimg=1)  # step 64 with --batch=16... any later step than 0
    loss, _ = algorithm.loss(BATCH, tf.constant(0, tf.int64))
    assert float(loss) == pytest.approx(expected_loss(tf.constant(TABLE[[2, 3, 4, 5]], tf.float32))[0], rel=1e-5)
    np.testing.assert_allclose(algorithm.bias.darp.pseudo_refine.numpy(), 1 / 3)


def test_targets_and_warmup_defaults():
    algorithm = make(train_kimg=256, batch=64)
    assert algorithm.bias.darp.warmup == 200 * 1024 // 64  # 200/256 of the run
    np.testing.assert_allclose(algorithm.bias.darp.target().numpy(), [7 / 3] * 3, rtol=1e-6)
    estimate = make(darp_target='estimate').bias.darp
    estimate.pseudo_orig.assign(np.tile([[.5, .3, .2]], [7, 1]))
    np.testing.assert_allclose(estimate.target().numpy(), [3.5, 2.1, 1.4], rtol=1e-6)


def check(cls, **settings):
    debias.check(settings_lib.resolve(cls.all_params(), settings), cls.label_bias, cls.__name__)


def test_refusals_are_one_line():
    with pytest.raises(utils.UserError, match='--darp needs pseudo-labels .* which MixMatch does not have') as e:
        check(mixmatch.MixMatch, darp=True)
    assert '\n' not in str(e.value)
    with pytest.raises(utils.UserError, match='--darp_warmup_kimg=-0.5'):
        check(fixmatch.FixMatch, darp=True, darp_warmup_kimg=-0.5)
    with pytest.raises(utils.UserError, match='darp_every'):
        settings_lib.resolve(fixmatch.FixMatch.all_params(), dict(darp_every=0))
    check(fixmatch.FixMatch, darp=True)


@pytest.mark.parametrize('path', ['flexmatch.FlexMatch', 'uda.UDA', 'pseudo_label.PseudoLabel'])
def test_other_threshold_methods_take_the_refined_rows(path):
    import importlib
    module, name = path.split('.')
    cls = getattr(importlib.import_module(module), name)
    one_pass = {'joint_bn': True} if 'joint_bn' in cls.all_params() else {}  # the table model has no stateless_call
    algorithm = cls(fakes.fake_trainer(cls, TableModel(TABLE), nclass=3, labeled_labels=(0, 1, 2), n_total=8,
                                       darp=True, darp_warmup_kimg=0, **one_pass))
    algorithm.build()
    loss, _ = algorithm.loss(dict(BATCH, u_index=tf.constant([4, 0, 1, 6], tf.int64)), tf.constant(0, tf.int64))
    state = algorithm.bias.darp
    assert np.isfinite(float(loss))
    assert np.abs(state.pseudo_orig.numpy()[[4, 0, 1, 6]] - 1 / 3).max() > 0.1  # stored
    assert np.abs(state.pseudo_refine.numpy() - 1 / 3).max() > 0.1  # refined at step 0
