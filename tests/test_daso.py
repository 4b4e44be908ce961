"""DASO: the balanced queue (FIFO per class, cap), prototypes, the similarity pseudo-label q, rho from the
pseudo-label histogram, the blend, the relabeled logits and the alignment loss on hand-made tensors; the state of
one run step by step on hand-made features; one-line refusals; a short long-tailed Fashion-MNIST run that learns
and whose checkpoint holds the state (exact resume: test_resume.py)."""
import os

import keras
import numpy as np
import pytest
import tensorflow as tf

from conftest import ml_data
import fixmatch
import flexmatch
import mixmatch
import uda
from libml import daso
from libml import debias
from libml import keys
from libml import settings as settings_lib
from libml import train
from libml import utils
from test_resume import SHORT, tiny_data, tiny_data_root  # noqa: F401 (fixtures)


def softmax(z):
    z = np.asarray(z, np.float64)
    e = np.exp(z - z.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


def test_queue_is_fifo_per_class_with_a_cap():
    queue, pushed = tf.zeros([2, 2, 2]), tf.zeros([2], tf.int64)
    # class 0 gets 3 rows in one batch: only the last 2 (f2, f3) stay; class 1 gets f1
    features = tf.constant([[1., 0], [0, 1], [2, 0], [3, 0]])
    queue, pushed = daso.enqueue(queue, pushed, features, tf.constant([0, 1, 0, 0]))
    assert pushed.numpy().tolist() == [3, 1]
    np.testing.assert_array_equal(queue.numpy()[0], [[3, 0], [2, 0]])  # f2 -> slot (0 + 1) % 2, f3 -> (0 + 2) % 2
    np.testing.assert_array_equal(queue.numpy()[1], [[0, 1], [0, 0]])
    np.testing.assert_allclose(daso.prototypes(queue, pushed).numpy(), [[2.5, 0], [0, 1]])  # the empty slot: not counted
    # the next row of class 0 replaces the oldest (f2): f3, f4 stay; class 1 fills its second slot
    queue, pushed = daso.enqueue(queue, pushed, tf.constant([[4., 0], [5, 5]]), tf.constant([0, 1]))
    np.testing.assert_array_equal(queue.numpy()[0], [[3, 0], [4, 0]])
    np.testing.assert_allclose(daso.prototypes(queue, pushed).numpy(), [[3.5, 0], [2.5, 3]])
    queue, pushed = daso.enqueue(queue, pushed, tf.constant([[6., 0]]), tf.constant([0]))  # f4, f6
    np.testing.assert_allclose(daso.prototypes(queue, pushed).numpy()[0], [5, 0])
    assert pushed.numpy().tolist() == [5, 2]
    # a class never pushed has the zero prototype
    np.testing.assert_array_equal(daso.prototypes(tf.ones([3, 2, 2]), tf.constant([0, 1, 9], tf.int64)).numpy(),
                                  [[0, 0], [1, 1], [1, 1]])


CENTERS = tf.constant([[2., 0], [0, 3], [0, 0]])  # the third class: no feature yet


def test_similarity_probs_by_hand():
    features = tf.constant([[1., 0], [1, 1], [-2, 0]])
    # cos: (1, 0, 0), (1/sqrt 2, 1/sqrt 2, 0), (-1, 0, 0): the zero prototype has similarity 0
    np.testing.assert_allclose(daso.cosine(features, CENTERS).numpy(),
                               [[1, 0, 0], [2 ** -.5, 2 ** -.5, 0], [-1, 0, 0]], atol=1e-6)
    q = daso.similarity_probs(features, CENTERS, 0.05).numpy()
    e20, e14 = np.exp(20.), np.exp(20 * 2 ** -.5)
    np.testing.assert_allclose(q[0], [e20 / (e20 + 2), 1 / (e20 + 2), 1 / (e20 + 2)], rtol=1e-5)
    np.testing.assert_allclose(q[1], [e14 / (2 * e14 + 1), e14 / (2 * e14 + 1), 1 / (2 * e14 + 1)], rtol=1e-5)
    np.testing.assert_allclose(q[2], [np.exp(-20) / (np.exp(-20) + 2), .5, .5], rtol=1e-5)


def test_distribution_weights_by_hand():
    # (pl / max pl)^(1/T): T = 2 -> sqrt(1, 1/4, 0, 1/25)
    np.testing.assert_allclose(daso.distribution_weights(tf.constant([100., 25, 0, 4]), 2.).numpy(),
                               [1, .5, 0, .2], rtol=1e-6)
    # T = 1.5 (USB): (2/3)^(2/3) = 0.76314, (1/3)^(2/3) = 0.48075
    np.testing.assert_allclose(daso.distribution_weights(tf.constant([2., 3, 1]), 1.5).numpy(),
                               [0.76314, 1, 0.48075], rtol=1e-4)
    np.testing.assert_array_equal(daso.distribution_weights(tf.zeros([3]), 1.5).numpy(), [1, 1, 1])  # none yet


def test_blend_and_relabeled_logits_by_hand():
    probs = tf.constant([[.6, .3, .1], [.2, .7, .1]])
    q = tf.constant([[.1, .1, .8], [.5, .4, .1]])
    rho = tf.constant([.5, .25, 1.])
    # row 0: c = 0, rho 0.5: (.35, .2, .45); row 1: c = 1, rho 0.25: (.275, .625, .1)
    mixed = daso.blend(probs, q, rho).numpy()
    np.testing.assert_allclose(mixed, [[.35, .2, .45], [.275, .625, .1]], rtol=1e-6)
    logits = tf.constant([[3., 1, 2], [0, 5, 1]])
    relabeled = daso.relabel_logits(logits, tf.constant(np.argmax(mixed, 1))).numpy()
    np.testing.assert_array_equal(relabeled, [[2, 1, 3], [0, 5, 1]])  # row 0: classes 0 and 2 swapped; row 1 kept
    assert softmax(relabeled).max(1) == pytest.approx(softmax(logits.numpy()).max(1))  # the confidence of p


def test_alignment_loss_by_hand():
    strong = tf.constant([[0., 1], [1, 1]])
    q = tf.constant([[.2, .7, .1], [.5, .5, 0.]])
    # logits cos / 0.05: (0, 20, 0) and (20/sqrt 2, 20/sqrt 2, 0)
    log0 = np.log(softmax([0, 20, 0]))
    log1 = np.log(softmax([20 * 2 ** -.5, 20 * 2 ** -.5, 0]))
    expected = (-(np.array([.2, .7, .1]) * log0).sum() - (.5 * log1[0] + .5 * log1[1])) / 2
    assert float(daso.alignment_loss(strong, CENTERS, q, 0.05)) == pytest.approx(expected, rel=1e-5)
    # the gradient reaches the strong features only
    with tf.GradientTape() as tape:
        tape.watch(strong)
        loss = daso.alignment_loss(strong, CENTERS, q, 0.05)
    assert np.abs(tape.gradient(loss, strong).numpy()).max() > 0


def test_histogram_window_refreshes_after_every_e_steps():
    dist, window = tf.constant([5., 5, 5]), tf.constant([1., 0, 2])
    dist, window = daso.refresh(dist, window, daso.histogram(tf.constant([0, 0, 2]), 3), 98, 100)
    np.testing.assert_array_equal(dist.numpy(), [5, 5, 5])  # step 98: (98 + 1) % 100 != 0
    np.testing.assert_array_equal(window.numpy(), [3, 0, 3])
    dist, window = daso.refresh(dist, window, daso.histogram(tf.constant([1]), 3), 99, 100)
    np.testing.assert_array_equal(dist.numpy(), [3, 1, 3])  # after step 99: the window of steps 0..99
    np.testing.assert_array_equal(window.numpy(), [0, 0, 0])


# ---------------------------------------------------------------------------------------------
# The state of one run step by step: a model whose pooled features are its 2-d inputs.

def make_state(**settings):
    inputs = keras.Input((2,))
    pooled = keras.layers.Identity(name='pool')(inputs)
    model = keras.Model(inputs, keras.layers.Dense(3)(pooled))
    settings = settings_lib.resolve(fixmatch.FixMatch.all_params(), dict(daso=True, daso_queue=2, daso_every=2,
                                                                         daso_T_dist=1., **settings))
    state = daso.Daso(settings, model, 3, warmup=1)
    assert sorted(state.build()) == ['daso_pl_dist', 'daso_pl_window', 'daso_pushed', 'daso_queue']
    return state


WEAK_FEATURES = tf.constant([[1., 0], [0, 1], [2, 1]])  # q: about (1, 0, 0), (0, 1, 0), (0.99987, 1.3e-4, 0)
STRONG_FEATURES = tf.constant([[0., 1], [1, 1], [1, 0]])
WEAK_LOGITS = tf.constant([[0., 2, 0], [0, 3, 0], [0, 0, 1]])  # argmax p: 1, 1, 2


def test_state_step_by_step_on_hand_made_features():
    state = make_state()
    centers = np.array([[1, 0], [0, 1], [0, 0]], np.float32)
    q = daso.similarity_probs(WEAK_FEATURES, centers, 0.05).numpy()

    def step(t):
        state.push(tf.constant([[1., 0], [0, 1]]), tf.constant([0, 1]))  # the EMA features: the inputs
        state.observe({keys.U_WEAK: WEAK_FEATURES, keys.U_STRONG: STRONG_FEATURES})
        logits = state.pseudo_logits(WEAK_LOGITS, tf.constant(t, tf.int64)).numpy()
        loss, logs = state.loss(tf.constant(t, tf.int64))
        return logits, float(loss), logs

    # step 0, the warm-up: the model's pseudo-labels (1, 1, 2), no loss; the queue has one feature per class
    logits, loss, logs = step(0)
    np.testing.assert_array_equal(logits, WEAK_LOGITS.numpy())
    np.testing.assert_allclose(daso.prototypes(state.queue, state.pushed).numpy(), centers)
    expected = daso.alignment_loss(STRONG_FEATURES, centers, q, 0.05).numpy()
    assert loss == 0 and float(logs['losses/daso_align']) == pytest.approx(expected, rel=1e-6)
    np.testing.assert_array_equal(state.pl_window.numpy(), [0, 2, 1])
    np.testing.assert_array_equal(state.pl_dist.numpy(), [0, 0, 0])
    # step 1: pl_dist still empty, rho = 1: the pseudo-labels are argmax q = (0, 1, 0); then the window of steps
    # 0 and 1 becomes pl_dist (2, 3, 1)
    logits, loss, logs = step(1)
    np.testing.assert_array_equal(logits, [[2, 0, 0], [0, 3, 0], [1, 0, 0]])
    assert float(logs['monitors/daso_relabeled']) == pytest.approx(2 / 3)
    assert loss == pytest.approx(expected, rel=1e-6)  # lambda 1; the queue holds the same features twice now
    np.testing.assert_array_equal(state.pl_dist.numpy(), [2, 3, 1])
    np.testing.assert_array_equal(state.pl_window.numpy(), [0, 0, 0])
    # step 2: rho = (2/3, 1, 1/3) (T_dist 1); rows 0, 1 (c = 1, rho 1): q's class; row 2 (c = 2, rho 1/3):
    # 2/3 p + 1/3 q = (0.475, 0.141, 0.384): class 0
    p = softmax(WEAK_LOGITS.numpy())
    row2 = 2 / 3 * p[2] + 1 / 3 * q[2]
    assert np.argmax(row2) == 0 and row2[0] == pytest.approx(0.4746, abs=1e-3)
    logits, _, _ = step(2)
    np.testing.assert_array_equal(logits, [[2, 0, 0], [0, 3, 0], [1, 0, 0]])
    np.testing.assert_array_equal(state.pl_window.numpy(), [2, 1, 0])
    assert state.pushed.numpy().tolist() == [3, 3, 0]
    assert state.report_scalars() == {'daso/rho/000': pytest.approx(2 / 3), 'daso/rho/001': 1.0,
                                      'daso/rho/002': pytest.approx(1 / 3)}


def test_lambda_weighs_the_alignment_loss():
    state = make_state(daso_lambda=0.5)
    state.push(tf.constant([[1., 0], [0, 1]]), tf.constant([0, 1]))
    state.observe({keys.U_WEAK: WEAK_FEATURES, keys.U_STRONG: STRONG_FEATURES})
    loss, logs = state.loss(tf.constant(5, tf.int64))
    assert float(loss) == pytest.approx(0.5 * float(logs['losses/daso_align']), rel=1e-6)


# ---------------------------------------------------------------------------------------------
# Refusals

def check(cls, **settings):
    debias.check(settings_lib.resolve(cls.all_params(), settings), cls.label_bias, cls.__name__)


def test_refusals_are_one_line():
    for cls in (mixmatch.MixMatch, uda.UDA):
        with pytest.raises(utils.UserError, match=f'--daso needs .* which {cls.__name__} does not have') as e:
            check(cls, daso=True)
        assert '\n' not in str(e.value)
    refused = [(dict(darp=True), '--daso and --darp both change'), (dict(abc=True), '--daso and --abc both change'),
               (dict(teacher='ema'), 'use --teacher=model'), (dict(sharpen='target'), '--sharpen=target'),
               (dict(daso_warmup_kimg=-0.5), '--daso_warmup_kimg=-0.5')]
    for extra, message in refused:
        with pytest.raises(utils.UserError, match=message) as e:
            check(fixmatch.FixMatch, daso=True, **extra)
        assert '\n' not in str(e.value)
    for name, value in (('daso_queue', 0), ('daso_T', 0), ('daso_every', 0), ('daso_lambda', -1)):
        with pytest.raises(utils.UserError, match=name):
            settings_lib.resolve(fixmatch.FixMatch.all_params(), {name: value})
    check(fixmatch.FixMatch, daso=True, debiased=True)
    check(fixmatch.FixMatch, daso=True, CAP=True, CAI=True, CADR=True)
    check(flexmatch.FlexMatch, daso=True, CAI=True)


def test_refused_before_anything_is_written(tiny_data, tmp_path):
    values = {**SHORT, 'train_dir': str(tmp_path / 'runs'), 'daso': True, 'teacher': 'ema'}
    with pytest.raises(utils.UserError, match='use --teacher=model'):
        train.Trainer(fixmatch.FixMatch, settings_lib.resolve(fixmatch.FixMatch.all_params(), values))
    assert not os.path.exists(tmp_path / 'runs')


def test_warmup_default_is_usb_fraction():
    settings = settings_lib.resolve(fixmatch.FixMatch.all_params(), dict(daso=True, train_kimg=16384, batch=64))
    assert daso.warmup_steps(settings, lambda kimg: int(round(kimg * 1024 / 64))) == 5120


# ---------------------------------------------------------------------------------------------
# A short long-tailed Fashion-MNIST run: labels int(100 * 10^(-c/9)) (403), unlabeled int(1000 * 10^(-c/9))
# (5084), WRN-10 with 8 filters, 192 steps of 32 labeled and 32 unlabeled images (weak views only: the
# short run cannot afford RandAugment on 2 CPU cores); DASO from step 64, histogram windows of 16 steps.

LONG_TAILED = dict(dataset='fashion_mnist_IMB_10_U1000_10.1@100-1', filters=8, repeat=1, batch=32, ema=0.9,
                   bn_momentum=0.9, uratio=1, eval_size=1000, augment='d.d.d', train_kimg=6, report_kimg=6,
                   save_kimg=6, daso=True, daso_warmup_kimg=2, daso_every=16, daso_queue=32)


@pytest.fixture(scope='module')
def daso_run(fashion_mnist_root, tmp_path_factory):
    train_dir = str(tmp_path_factory.mktemp('daso'))
    with ml_data(fashion_mnist_root):
        return fixmatch.FixMatch.run(train_dir=train_dir, **LONG_TAILED), train_dir


def test_short_long_tailed_run_learns(daso_run):
    result, _ = daso_run
    assert result['step'] == 192
    assert result['accuracy'] > 40, result  # chance is 10%; 49.9% measured (FixMatch alone: 50.4%)


def test_checkpoint_holds_the_daso_state(daso_run, fashion_mnist):
    result, train_dir = daso_run
    reader = tf.train.load_checkpoint(os.path.join(result['run_dir'], 'tf'))
    value = lambda name: reader.get_tensor(f'algorithm/daso_{name}/.ATTRIBUTES/VARIABLE_VALUE')  # noqa: E731
    pushed, pl_dist, pl_window = value('pushed'), value('pl_dist'), value('pl_window')
    assert pushed.sum() == 192 * 32 and (pushed > 0).all() and pushed[0] > pushed[9]  # every labeled image
    assert pl_dist.sum() == 16 * 32 and pl_window.sum() == 0  # step 191 closes a window of 16 steps of 32
    assert value('queue').shape == (10, 32, 32)  # 10 classes, 32 features each, 32 channels (8 << 2)
    settings = settings_lib.resolve(fixmatch.FixMatch.all_params(), dict(LONG_TAILED, train_dir=train_dir))
    trainer = train.Trainer(fixmatch.FixMatch, settings)
    assert trainer.run_dir == result['run_dir'] and trainer.restore() == 192
    np.testing.assert_array_equal(trainer.daso.queue.numpy(), value('queue'))
    np.testing.assert_array_equal(trainer.daso.pushed.numpy(), pushed)
    np.testing.assert_array_equal(trainer.daso.pl_dist.numpy(), pl_dist)


MULTI_REPLICA = r'''
import json, sys
sys.path[:0] = [sys.argv[1], sys.argv[1] + '/tests']
import tensorflow as tf
cpu = tf.config.list_physical_devices('CPU')[0]
tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
from libml import keys
import test_daso
strategy = tf.distribute.MirroredStrategy(['/cpu:0', '/cpu:1'])
with strategy.scope():
    state = test_daso.make_state()
labeled = [[[1., 0], [0, 1]], [[3., 0], [0, 2]]]
labels = [[0, 1], [0, 2]]
weak_logits = [[[0., 2, 0]], [[0., 0, 1]]]  # argmax p: 1 and 2 (the warm-up's pseudo-labels)
def run(ctx):
    r = ctx.replica_id_in_sync_group
    return (tf.constant(labeled[r]), tf.constant(labels[r]), tf.constant(weak_logits[r]))
values = strategy.experimental_distribute_values_from_function(run)
strong = [[[1., 0]], [[0., 1]]]  # each replica's own strong features, read after the collectives
def replica(x, y, logits):
    r = tf.distribute.get_replica_context().replica_id_in_sync_group
    state.push(x, y)
    state.observe({keys.U_WEAK: tf.ones([1, 2]), keys.U_STRONG: tf.gather(tf.constant(strong), r)})
    state.pseudo_logits(logits, tf.constant(0, tf.int64))
    return state.loss(tf.constant(0, tf.int64))[1]['losses/daso_align']
aligns = tf.function(lambda v: strategy.run(replica, v))(values)
print(json.dumps([[v.numpy().tolist() for v in var.values] for var in (state.queue, state.pushed, state.pl_window)]
                 + [[float(a) for a in strategy.experimental_local_results(aligns)]]))
'''


def test_every_replica_keeps_the_global_batch_state():
    import json
    import subprocess
    import sys
    from conftest import ROOT
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL='3', CUDA_VISIBLE_DEVICES='')
    done = subprocess.run([sys.executable, '-c', MULTI_REPLICA, ROOT], capture_output=True, text=True, env=env,
                          timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    queues, pushed, windows, aligns = json.loads(done.stdout.strip().splitlines()[-1])
    assert len(queues) == len(pushed) == len(windows) == 2  # one copy per replica, the same values
    for queue in queues:  # class 0: (1, 0) then replica 1's (3, 0); class 1: (0, 1); class 2: (0, 2)
        np.testing.assert_array_equal(queue, [[[1, 0], [3, 0]], [[0, 1], [0, 0]], [[0, 2], [0, 0]]])
    assert pushed == [[2, 1, 1]] * 2
    assert windows == [[0, 1, 1]] * 2  # both replicas' pseudo-labels
    # each replica's loss from its own features: q = softmax(cos((1, 1), C) / 0.05), C = (2, 0), (0, 1), (0, 2)
    centers = tf.constant([[2., 0], [0, 1], [0, 2]])
    q = daso.similarity_probs(tf.ones([1, 2]), centers, 0.05)
    for align, strong in zip(aligns, ([[1., 0]], [[0., 1]])):
        assert align == pytest.approx(float(daso.alignment_loss(tf.constant(strong), centers, q, 0.05)), rel=1e-5)
    assert abs(aligns[0] - aligns[1]) > 1
