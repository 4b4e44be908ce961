"""The FixMatch ablations of the reference's ablation/ folder, as flags of fixmatch.py: their losses
on fixed logits against hand computations, the optimizer and schedule options, and their views."""
import re
import types

import keras
import numpy as np
import pytest
import tensorflow as tf

import fakes
import fixmatch
from conftest import run_scripts
from libml import settings as settings_lib
from libml import state
from libml import train
from libml import utils
from reference import log_softmax, nll_rows, softmax


class TableModel:
    """A fake model: image i, a (1,) vector holding the number i, has logits table[i]. Records each
    call as (kind, rows, training), kind 'call' (may update batch norm) or 'stateless'."""

    def __init__(self, table):
        self.table = tf.constant(table, tf.float32)
        self.calls = []
        self.trainable_variables, self.non_trainable_variables = [], []

    def logits(self, kind, images, training):
        rows = tf.cast(images[:, 0], tf.int32)
        self.calls.append((kind, rows.numpy().tolist(), training))
        return tf.gather(self.table, rows)

    def __call__(self, images, training=False):
        return self.logits('call', images, training)

    def stateless_call(self, trainable, non_trainable, images, training=False):
        return self.logits('stateless', images, training), non_trainable


def rows(*indexes):
    return tf.constant([[float(i)] for i in indexes])


def make(model, ema_model=None, **settings):
    trainer = fakes.fake_trainer(fixmatch.FixMatch, model, **settings)
    if ema_model is not None:
        trainer.classify_ema = lambda images, training=False: ema_model.stateless_call([], [], images, training)[0]
    return fixmatch.FixMatch(trainer)


TABLE = np.array([[2., 0., 0.], [0., 1., 0.],                   # 0-1 labeled x, labels 0 and 2
                  [4., 0., 0.],    # 2 weak: p = e^4 / (e^4 + 2) = 0.965 >= 0.95; q (T = 0.5) = 0.9993
                  [2.5, 0., 0.],   # 3 weak: p = 0.859 < 0.95, but q (T = 0.5) = e^5 / (e^5 + 2) = 0.987
                  [0., 0., 1.],    # 4 weak: p = 0.576, q = e^2 / (e^2 + 2) = 0.787: masked either way
                  [0., 1., 0.], [1., 0., 2.], [3., 0., 0.],     # 5-7 first strong view
                  [3., 0., 1.], [0., 2., 1.], [2., 2., 0.],     # 8-10 second strong view (--nstrong=2)
                  [1., 0., 0.], [0., 0., 3.]])                  # 11-12 labeled, strong view
BATCH = dict(x=rows(0, 1), label=tf.constant([0, 2]), u_weak=rows(2, 3, 4), u_strong=rows(5, 6, 7))
XE = nll_rows(TABLE[[0, 1]], [0, 2]).mean()
WEAK, STRONG, STRONG1 = TABLE[[2, 3, 4]], TABLE[[5, 6, 7]], TABLE[[8, 9, 10]]


def soft_xe(targets, logits):
    return -(targets * log_softmax(logits)).sum(axis=1)


def value(x):
    return float(np.asarray(x))


def test_fixmatch_default_by_hand():
    loss, logs = make(TableModel(TABLE)).loss(BATCH, 0)
    h = np.array([nll_rows(STRONG[[0]], [0])[0], 0, 0])  # only image 2 passes tau = 0.95
    assert value(logs['monitors/mask']) == pytest.approx(1 / 3)
    assert value(loss) == pytest.approx(XE + h.mean(), rel=1e-5)


def test_sharpened_mask_by_hand():
    """ab_fixmatch_sharpen: hard labels argmax q, mask on max q >= tau, q = softmax(weak / T)."""
    q = softmax(WEAK / 0.5)
    assert q.max(axis=1) @ [1, 0, 0] > 0.95 and q[1].max() > 0.95 > softmax(WEAK[1]).max() and q[2].max() < 0.95
    h = np.array([nll_rows(STRONG[[0]], [0])[0], nll_rows(STRONG[[1]], [0])[0], 0])
    loss, logs = make(TableModel(TABLE), sharpen='mask', T=0.5).loss(BATCH, 0)
    assert value(logs['monitors/mask']) == pytest.approx(2 / 3)
    assert value(loss) == pytest.approx(XE + h.mean(), rel=1e-5)
    same, _ = make(TableModel(TABLE), sharpen='mask', T=1.0).loss(BATCH, 0)  # T = 1: FixMatch
    assert value(same) == pytest.approx(value(make(TableModel(TABLE)).loss(BATCH, 0)[0]), rel=1e-6)


@pytest.mark.parametrize('confidence', (0.95, 1e-6))
def test_sharpened_soft_targets_by_hand(confidence):
    """ab_fixmatch_sharpen_conditional_consistency: soft target q = softmax(weak / T), mask on the
    unsharpened max p >= tau; a tau at most 1/K (max p >= 1/K always) drops the mask."""
    q = softmax(WEAK / 0.5)
    mask = (softmax(WEAK).max(axis=1) >= confidence).astype(float)
    assert list(mask) == ([1, 0, 0] if confidence > 0.5 else [1, 1, 1])
    h = mask * soft_xe(q, STRONG)
    loss, logs = make(TableModel(TABLE), sharpen='target', T=0.5, confidence=confidence).loss(BATCH, 0)
    assert value(logs['monitors/mask']) == pytest.approx(mask.mean())
    assert value(logs['losses/xeu']) == pytest.approx(h.mean(), rel=1e-5)
    assert value(loss) == pytest.approx(XE + h.mean(), rel=1e-5)
    hard = mask * nll_rows(STRONG, np.argmax(WEAK, axis=1))
    assert np.abs(h - hard).max() > (0.1 if confidence < 0.5 else 1e-4)  # soft targets, not the hard labels


TEACHER = TABLE.copy()
TEACHER[[2, 3, 4]] = [[0., 0., 1.], [0., 5., 0.], [0., 0., 6.]]  # the EMA teacher labels 3 -> 1 and 4 -> 2


@pytest.mark.parametrize('mode', ('ema', 'ema_train'))
def test_pseudo_labels_from_the_ema_teacher_by_hand(mode):
    """ab_fixmatch_meanteacher(_train): the EMA weights label the weak views (inference or training
    mode, no statistics update); the trained model's one pass holds x and the strong views only."""
    student, teacher = TableModel(TABLE), TableModel(TEACHER)
    loss, logs = make(student, teacher, teacher=mode).loss(BATCH, 0)
    p = softmax(TEACHER[[2, 3, 4]])
    assert list(p.max(axis=1) >= 0.95) == [False, True, True]
    h = np.array([0, nll_rows(STRONG[[1]], [1])[0], nll_rows(STRONG[[2]], [2])[0]])
    assert value(logs['monitors/mask']) == pytest.approx(2 / 3)
    assert value(loss) == pytest.approx(XE + h.mean(), rel=1e-5)
    assert student.calls == [('call', [0, 1, 5, 6, 7], True)]
    assert teacher.calls == [('stateless', [2, 3, 4], mode == 'ema_train')]


def test_several_strong_views_by_hand():
    """--nstrong=2 (augmentation anchoring): each strong view is trained on the weak view's
    pseudo-label; the unlabeled term averages over the views; all views in ONE pass."""
    algorithm = make(TableModel(TABLE), nstrong=2)
    assert algorithm.views() == ({'x': 'd'}, {'u_weak': 'd', 'u_strong': 'cta', 'u_strong1': 'cta'})
    loss, logs = algorithm.loss(dict(BATCH, u_strong1=rows(8, 9, 10)), 0)
    h = (np.array([nll_rows(STRONG[[0]], [0])[0], 0, 0]) + np.array([nll_rows(STRONG1[[0]], [0])[0], 0, 0])) / 2
    assert value(logs['losses/xeu']) == pytest.approx(h.mean(), rel=1e-5)
    assert value(loss) == pytest.approx(XE + h.mean(), rel=1e-5)
    assert algorithm.trainer.model.calls == [('call', [0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10], True)]
    debiased = make(TableModel(TABLE), nstrong=2, debiased=True, augment='d.d.rac')
    assert debiased.views() == ({'x': 'd', 'x_strong': 'rac', 'x_strong1': 'rac'},
                                {'u_weak': 'd', 'u_strong': 'rac', 'u_strong1': 'rac'})
    loss, _ = debiased.loss(dict(BATCH, u_strong1=rows(8, 9, 10), x_strong=rows(11, 12), x_strong1=rows(12, 11)), 0)
    # labeled images as unlabeled: x0 (p = e^2 / (e^2 + 2) = 0.79) and x1 are both below tau: nothing to subtract
    assert value(loss) == pytest.approx(XE + h.mean(), rel=1e-5)
    with pytest.raises(utils.UserError):
        make(TableModel(TABLE), nstrong=0)


def test_view_codes_of_the_augmentation_ablations():
    assert make(None, augment='d.d.ctap').views()[1] == {'u_weak': 'd', 'u_strong': 'ctap'}  # ab_fixmatch_nocutout
    assert make(None, augment='d.cta.cta').views()[1] == {'u_weak': 'cta', 'u_strong': 'cta'}  # anchoring strong.strong
    # ab_fixmatch_momentum ran on the ReMixMatch CTA pool: labeled images under a policy, no cutout
    assert make(None, augment='ctap.d.ctap').views() == ({'x': 'ctap'}, {'u_weak': 'd', 'u_strong': 'ctap'})


# ---------------------------------------------------------------------------------------------
# Optimizer and schedule ablations.

def sgd_two_steps(momentum, nesterov, **settings):
    settings = settings_lib.resolve(fixmatch.FixMatch.all_params(), dict(momentum=momentum, nesterov=nesterov,
                                                                         **settings))
    w = keras.Variable(np.array([1., -2.], np.float32))
    optimizer = state.make_optimizer(settings, lambda: 0.1, [w], [w])
    for g in ([0.5, 1.0], [-1.0, 2.0]):
        optimizer.apply_gradients([(tf.constant(g), w)])
    return w.numpy()


@pytest.mark.parametrize('momentum, nesterov', [(0.5, False), (0.5, True), (0.9, True)])
def test_sgd_momentum_by_hand(momentum, nesterov):
    """ab_fixmatch_momentum: TF1's MomentumOptimizer, accumulator a <- m a + g, then
    w <- w - lr a (plain) or w <- w - lr (g + m a) (Nesterov), two steps at lr 0.1."""
    w, a = np.array([1., -2.]), np.zeros(2)
    for g in (np.array([0.5, 1.0]), np.array([-1.0, 2.0])):
        a = momentum * a + g
        w = w - 0.1 * ((g + momentum * a) if nesterov else a)
    np.testing.assert_allclose(sgd_two_steps(momentum, nesterov), w, rtol=1e-6)
    defaults = settings_lib.resolve(fixmatch.FixMatch.all_params(), {})
    assert (defaults.momentum, defaults.nesterov) == (0.9, True)


def test_linear_schedule_to_lr_end_by_hand():
    """ab_fixmatch_linearlr: lr + (lr_end - lr) t/T, 0.03 to 0.02."""
    progress = tf.constant([0., 0.25, 0.5, 1., 1.5])
    got = state.scheduled_lr('linear', 0.03, progress, lr_end=0.02).numpy()
    np.testing.assert_allclose(got, [0.03, 0.0275, 0.025, 0.02, 0.02], rtol=1e-6)
    np.testing.assert_allclose(state.scheduled_lr('linear', 0.03, progress).numpy(), [0.03, 0.0225, 0.015, 0, 0],
                               atol=1e-9)
    with pytest.raises(utils.UserError, match='--lr_schedule=linear'):
        make(None, lr_end=0.02)


def test_the_trainer_schedule_reaches_lr_end():
    settings = settings_lib.resolve(fixmatch.FixMatch.all_params(), dict(lr_schedule='linear', lr_end=0.02))
    trainer = types.SimpleNamespace(settings=settings, step=tf.Variable(100, dtype=tf.int64), steps_total=100)
    assert float(train.Trainer.learning_rate(trainer)) == pytest.approx(0.02)


# ---------------------------------------------------------------------------------------------
# Command lines of fixmatch.py (the ablation flags) and flexmatch.py.

def test_command_lines_list_the_ablation_and_flexmatch_flags(tmp_path):
    commands = [('fixmatch.py', '--help'), ('flexmatch.py', '--help'), ('fixmatch.py', '--sharpen=soft'),
                ('fixmatch.py', '--teacher=student')]
    done = run_scripts(commands, tmp_path)
    flags = {'fixmatch.py': ('sharpen', 'T', 'teacher', 'nstrong', 'momentum', 'nesterov', 'lr_end'),
             'flexmatch.py': ('confidence', 'warmup', 'wu', 'uratio', 'augment', 'CAI', 'CAP', 'debiased')}
    for script, names in flags.items():
        _, out, err = done[script, '--help']
        assert f'python {script} --dataset=' in out, err[-2000:]  # the docstring's paper command
        groups = [out.index(title) for title in ("own settings:", 'label-bias add-ons', 'common settings:', '--flagfile')]
        assert groups == sorted(groups), groups  # --help: the method's flags, the add-ons', the common ones, then files
        for name in names:
            assert re.search(rf'^  --(\[no\])?{name}: ', out, re.MULTILINE), (script, name)
    for command in commands[2:]:
        status, _, err = done[command]
        assert status == 2 and err.strip().splitlines()[-1].startswith('error:'), (command, status, err[-1000:])
