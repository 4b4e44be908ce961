"""FlexMatch: thresholds from hand-computed counts, the per-image state update (one and several
replicas), the loss on fixed logits, label-bias add-ons, and a short Fashion-MNIST run that learns
and whose checkpoint restores the state exactly."""
import json
import os
import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf

import fakes
from fakes import TableModel, rows
import flexmatch
from conftest import ROOT, ml_data
from libml import data
from libml import settings as settings_lib
from libml import train
from reference import nll_rows, softmax


def effect(selected, nclass=3, warmup=True, beta=(0., 0., 0.)):
    return flexmatch.learning_effect(tf.constant(selected, tf.int64), tf.constant(beta, tf.float32), nclass,
                                     warmup).numpy()


def test_learning_effect_and_thresholds_on_hand_counts():
    selected = [-1] * 5 + [0, 0, 0, 1, 2]  # sigma_-1 = 5, sigma = (3, 1, 1)
    np.testing.assert_allclose(effect(selected), [3 / 5, 1 / 5, 1 / 5], rtol=1e-6)  # warm-up: / max(5, 3, 1, 1)
    np.testing.assert_allclose(effect(selected, warmup=False), [1, 1 / 3, 1 / 3], rtol=1e-6)  # / max(3, 1, 1)
    # thresholds tau * M(beta), M(x) = x / (2 - x): 0.95 * (0.6 / 1.4), 0.95 * (0.2 / 1.8); without warm-up 0.95, 0.19
    beta = effect(selected)
    np.testing.assert_allclose(0.95 * beta / (2 - beta), [0.95 * 3 / 7, 0.95 / 9, 0.95 / 9], rtol=1e-6)
    beta = effect(selected, warmup=False)
    np.testing.assert_allclose(0.95 * beta / (2 - beta), [0.95, 0.19, 0.19], rtol=1e-6)
    # one value holding every image: beta keeps its previous value (0 at the start: all -1)
    np.testing.assert_array_equal(effect([-1] * 6), [0, 0, 0])
    np.testing.assert_allclose(effect([1] * 6, beta=(0.3, 0.9, 0.1)), [0.3, 0.9, 0.1], rtol=1e-6)
    np.testing.assert_allclose(effect([1] * 5 + [-1], beta=(0.3, 0.9, 0.1)), [0, 1, 0])  # warm-up: 5 / max(1, 5)


def test_selection_update():
    selected = tf.constant([-1, 0, -1, -1, 2, -1], tf.int64)
    index = tf.constant([4, 1, 4, 2, 3, 3], tf.int64)  # images 4 and 3 twice in the batch
    label = tf.constant([0, 2, 1, 1, 2, 0], tf.int64)
    chosen = tf.constant([True, True, True, False, True, False])
    got = flexmatch.updated_selection(selected, index, label, chosen).numpy()
    # 4: its last chosen row (1); 1: 2; 2: not chosen, kept; 3: its chosen row (2) wins over the later unchosen one
    np.testing.assert_array_equal(got, [-1, 2, -1, 2, 1, -1])
    nothing = flexmatch.updated_selection(selected, index, label, tf.zeros([6], tf.bool)).numpy()
    np.testing.assert_array_equal(nothing, selected.numpy())


TABLE = np.array([[2., 0., 0.], [0., 1., 0.],                           # 0-1 labeled x, labels 0 and 1
                  [2., 0., 0.],   # 2 weak: p = 0.787, class 0 (threshold 0.95): masked, not selected
                  [0., 1., 0.],   # 3 weak: p = e / (e + 2) = 0.576 >= 0.19 (class 1): counted, not selected
                  [0., 0., 4.],   # 4 weak: p = 0.965: counted and selected as class 2
                  [5., 0., 0.],   # 5 weak: p = 0.987: counted and selected as class 0
                  [0., 1., 0.], [1., 0., 2.], [0., 0., 1.], [3., 0., 1.]])  # 6-9 strong views
SELECTED = [-1, 0, 0, 1, -1, 2, 0]  # 7 unlabeled images: sigma_-1 = 2, sigma = (3, 1, 1)


def make(table=TABLE, selected=SELECTED, **settings):
    algorithm = flexmatch.FlexMatch(fakes.fake_trainer(flexmatch.FlexMatch, TableModel(table), nclass=3,
                                                       labeled_labels=(0, 1, 2), n_total=8, **settings))
    state = algorithm.build()
    assert set(state) == {'selected', 'beta'} and state['selected'].shape == (7,)
    algorithm.selected.assign(selected)
    algorithm.beta.assign(effect(selected, warmup=algorithm.settings.warmup))
    return algorithm


BATCH = dict(x=rows(0, 1), label=tf.constant([0, 1]), u_weak=rows(2, 3, 4, 5), u_strong=rows(6, 7, 8, 9),
             u_index=tf.constant([4, 0, 1, 6], tf.int64))


def test_flexmatch_loss_and_state_update_by_hand():
    algorithm = make()
    np.testing.assert_allclose(algorithm.beta.numpy(), [1, 1 / 3, 1 / 3], rtol=1e-6)  # thresholds 0.95, 0.19, 0.19
    loss, logs = algorithm.loss(BATCH, 0)
    xe = nll_rows(TABLE[[0, 1]], [0, 1]).mean()
    h = np.array([0, nll_rows(TABLE[[7]], [1])[0], nll_rows(TABLE[[8]], [2])[0], nll_rows(TABLE[[9]], [0])[0]])
    assert float(logs['monitors/mask']) == pytest.approx(3 / 4)
    assert float(loss) == pytest.approx(xe + h.mean(), rel=1e-5)
    # after the step: images 1 -> 2 and 6 -> 0 (confidence >= 0.95); 4 and 0 below tau stay
    np.testing.assert_array_equal(algorithm.selected.numpy(), [-1, 2, 0, 1, -1, 2, 0])
    np.testing.assert_allclose(algorithm.beta.numpy(), [1, 0.5, 1], rtol=1e-6)  # sigma (2, 1, 2), sigma_-1 = 2
    assert float(logs['monitors/selected']) == pytest.approx(5 / 7)


def test_flexmatch_starts_with_every_image_counted_and_without_warmup():
    start = make(selected=[-1] * 7)  # beta = 0: every threshold 0
    loss, logs = start.loss(BATCH, 0)
    assert float(logs['monitors/mask']) == 1
    strong = TABLE[[6, 7, 8, 9]]
    h = nll_rows(strong, np.argmax(TABLE[[2, 3, 4, 5]], axis=1))
    assert float(loss) == pytest.approx(nll_rows(TABLE[[0, 1]], [0, 1]).mean() + h.mean(), rel=1e-5)
    np.testing.assert_allclose(start.beta.numpy(), [1 / 5, 0, 1 / 5], rtol=1e-6)  # sigma (1, 0, 1), sigma_-1 = 5
    cold = make(warmup=False, selected=[-1] * 7)
    cold.loss(BATCH, 0)
    np.testing.assert_allclose(cold.beta.numpy(), [1, 0, 1], rtol=1e-6)  # / max_c sigma_c = 1


def test_flexmatch_with_label_bias_addons():
    algorithm = make(CAI=True)
    _, logs = algorithm.loss(BATCH, 0)
    p_hat = 0.99 / 3 + 0.01 * softmax(TABLE[[2, 3, 4, 5]]).mean(axis=0)
    tau = 0.95 * np.sqrt(p_hat / p_hat.max())  # CAI, beta 0.5
    thresholds = tau * np.array([1, 1 / 3, 1 / 3]) / (2 - np.array([1, 1 / 3, 1 / 3]))
    p = softmax(TABLE[[2, 3, 4, 5]])
    mask = p.max(axis=1) >= thresholds[p.argmax(axis=1)]
    assert float(logs['monitors/mask']) == pytest.approx(mask.mean())
    for settings in (dict(CAP=True), dict(CAP=True, CAI=True, CADR=True), dict(debiased=True)):
        batch = dict(BATCH, x_strong=rows(6, 7))
        loss, _ = make(**settings).loss(batch, 0)
        assert np.isfinite(float(loss)), settings
    assert make(debiased=True).views() == ({'x': 'd', 'x_strong': 'rac'}, {'u_weak': 'd', 'u_strong': 'rac'})


MULTI_REPLICA = r'''
import json, sys
sys.path[:0] = [sys.argv[1], sys.argv[1] + '/tests']
import tensorflow as tf
cpu = tf.config.list_physical_devices('CPU')[0]
tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
import fakes, flexmatch
strategy = tf.distribute.MirroredStrategy(['/cpu:0', '/cpu:1'])
with strategy.scope():
    algorithm = flexmatch.FlexMatch(fakes.fake_trainer(flexmatch.FlexMatch, None, nclass=3, n_total=9))
    algorithm.build()
index = [[0, 3], [5, 3]]  # image 3 on both replicas
probs = [[[0.96, 0.02, 0.02], [0.1, 0.85, 0.05]], [[0.01, 0.01, 0.98], [0.0, 0.99, 0.01]]]
values = strategy.experimental_distribute_values_from_function(
    lambda ctx: (tf.constant(index[ctx.replica_id_in_sync_group], tf.int64),
                 tf.constant(probs[ctx.replica_id_in_sync_group])))
tf.function(lambda v: strategy.run(lambda i, p: algorithm.update(i, p), v))(values)
print(json.dumps([[v.numpy().tolist() for v in algorithm.selected.values],
                  [v.numpy().tolist() for v in algorithm.beta.values]]))
'''


def test_every_replica_applies_every_replicas_updates():
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL='3', CUDA_VISIBLE_DEVICES='')
    done = subprocess.run([sys.executable, '-c', MULTI_REPLICA, ROOT], capture_output=True, text=True, env=env,
                          timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    selected, beta = json.loads(done.stdout.strip().splitlines()[-1])
    assert len(selected) == len(beta) == 2  # one copy per replica
    for copy in selected:  # replica 0 selected image 0, replica 1 images 5 and 3 (replica 0's row of 3: 0.85)
        assert copy == [0, -1, -1, 1, -1, 2, -1, -1]
    for copy in beta:  # sigma (1, 1, 1), sigma_-1 = 5
        np.testing.assert_allclose(copy, [0.2, 0.2, 0.2], rtol=1e-6)


# ---------------------------------------------------------------------------------------------
# A short Fashion-MNIST run: 250 labels, WRN-10 with 8 filters, 192 steps of 32 labeled and 32
# unlabeled images (weak views only: the short run cannot afford RandAugment on 2 CPU cores).

SHORT = dict(dataset='fashion_mnist.1@250-1', filters=8, repeat=1, batch=32, ema=0.9, bn_momentum=0.9, uratio=1, eval_size=2000,
             augment='d.d.d', train_kimg=6, report_kimg=6, save_kimg=6)


@pytest.fixture(scope='module')
def flexmatch_run(fashion_mnist_root, tmp_path_factory):
    train_dir = str(tmp_path_factory.mktemp('flexmatch'))
    with ml_data(fashion_mnist_root):
        return flexmatch.FlexMatch.run(train_dir=train_dir, **SHORT), train_dir


def test_short_flexmatch_run_learns(flexmatch_run):
    result, _ = flexmatch_run
    assert result['step'] == 192
    # chance is 10%; 47.7% measured (beta stays near 0 this early: almost every pseudo-label counts)
    assert result['accuracy'] > 47.7 - 5, result


def test_flexmatch_checkpoint_restores_the_selection_exactly(flexmatch_run, fashion_mnist):
    result, train_dir = flexmatch_run
    reader = tf.train.load_checkpoint(os.path.join(result['run_dir'], 'tf'))
    selected = reader.get_tensor('algorithm/selected/.ATTRIBUTES/VARIABLE_VALUE')
    beta = reader.get_tensor('algorithm/beta/.ATTRIBUTES/VARIABLE_VALUE')
    unlabeled = data.load(SHORT['dataset']).unlabeled
    assert selected.shape == (len(unlabeled),) and 0 < np.sum(selected >= 0) < 192 * 32
    np.testing.assert_allclose(beta, effect(selected, 10, beta=beta), rtol=1e-6)
    # indexed by the position in the unlabeled set: the selected classes agree with the true labels
    chosen = selected >= 0
    assert np.mean(selected[chosen] == unlabeled.labels[chosen]) > 0.4  # chance is 0.1
    settings = settings_lib.resolve(flexmatch.FlexMatch.all_params(), dict(SHORT, train_dir=train_dir))
    trainer = train.Trainer(flexmatch.FlexMatch, settings)
    assert trainer.run_dir == result['run_dir'] and trainer.restore() == 192
    np.testing.assert_array_equal(trainer.algorithm.selected.numpy(), selected)
    np.testing.assert_array_equal(trainer.algorithm.beta.numpy(), beta)
