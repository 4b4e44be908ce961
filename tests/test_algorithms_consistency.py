"""Pi-model, Mean Teacher, VAT, ICT, Pseudo-Label and the supervised baselines: losses on fixed
logits against hand computations, the consistency distances, the ramp-up, DeSSL, batch-norm
choices, command lines and a short Fashion-MNIST run of each that learns."""

import keras
import numpy as np
import pytest
import tensorflow as tf

import fully_supervised
import ict
import mean_teacher
import pi_model
import pseudo_label
import vat
import fakes
from conftest import run_scripts
from libml import data
from libml import losses
from libml import settings as settings_lib
from libml import state
from libml import train
from reference import nll_rows, softmax

# ---------------------------------------------------------------------------------------------
# Fakes and hand computations in numpy (float64).


class TableModel:
    """A fake model: image i, a (1,) vector holding the number i, has logits table[i]. Records the
    `training` flag and the kind ('call' may update batch norm, 'stateless' may not) of each call."""

    def __init__(self, table):
        self.table = tf.constant(table, tf.float32)
        self.calls = []
        self.trainable_variables, self.non_trainable_variables = [], []

    def __call__(self, images, training=False):
        self.calls.append(('call', training))
        return tf.gather(self.table, tf.cast(images[:, 0], tf.int32))

    def stateless_call(self, trainable, non_trainable, images, training=False):
        self.calls.append(('stateless', training))
        return tf.gather(self.table, tf.cast(images[:, 0], tf.int32)), non_trainable


def fake_trainer(cls, model, teacher=None, **settings):
    """A trainer holding `model`; the EMA teacher is `teacher` (a model) or, without EMA, the model's
    weights through the real Trainer.classify_ema."""
    trainer = fakes.fake_trainer(cls, model, **settings)
    if teacher is None:
        trainer.classify_ema = lambda images, training=False: train.Trainer.classify_ema(trainer, images, training)
    else:
        trainer.classify_ema = lambda images, training=False: teacher.stateless_call([], [], images, training)[0]
    return trainer


def rows(*indexes):
    """Fake images: (N, 1) float32 holding the table rows of a TableModel."""
    return tf.constant([[float(i)] for i in indexes])


def nll(logits, labels):
    """-log softmax(logits)[y] per row."""
    return nll_rows(logits, labels)


def kl(q, p):
    """KL(q || p) per row, 0 log 0 = 0."""
    q, p = np.asarray(q, np.float64), np.asarray(p, np.float64)
    return np.sum(np.where(q > 0, q * np.log(np.where(q > 0, q, 1) / p), 0), axis=-1)


def distance_by_hand(kind, q, logits):
    p = softmax(np.asarray(logits, np.float64))
    if kind == 'mse':
        return np.mean((p - q) ** 2, axis=-1)
    if kind == 'l1':
        return np.mean(np.abs(p - q), axis=-1)
    if kind == 'kl':
        return kl(q, p)
    m = (p + q) / 2
    return (kl(q, m) + kl(p, m)) / 2


def linear_model(kernel, bias):
    """A Keras softmax-regression model logits = x @ kernel + bias (no batch norm)."""
    model = keras.Sequential([keras.Input((kernel.shape[0],)), keras.layers.Dense(kernel.shape[1])])
    model.set_weights([kernel.astype(np.float32), bias.astype(np.float32)])
    return model


def value(x):
    return float(np.asarray(x))


# ---------------------------------------------------------------------------------------------
# The consistency distances of libml/losses.py.

Q = np.array([[0.2, 0.3, 0.5], [1.0, 0.0, 0.0]])
LOGITS = np.array([[1.0, -0.5, 0.25], [0.0, 2.0, -1.0]])


@pytest.mark.parametrize('kind', losses.CONSISTENCIES)
def test_consistency_distances_by_hand(kind):
    p0 = [np.exp(1.0), np.exp(-0.5), np.exp(0.25)]
    p0 = [v / sum(p0) for v in p0]  # softmax of the first row, written out
    by_hand = {'mse': sum((a - b) ** 2 for a, b in zip(p0, Q[0])) / 3,
               'l1': sum(abs(a - b) for a, b in zip(p0, Q[0])) / 3,
               'kl': sum(b * np.log(b / a) for a, b in zip(p0, Q[0])),
               'jsd': sum(b * np.log(2 * b / (a + b)) + a * np.log(2 * a / (a + b)) for a, b in zip(p0, Q[0])) / 2}
    got = losses.consistency(kind, tf.constant(Q, tf.float32), tf.constant(LOGITS, tf.float32)).numpy()
    assert got[0] == pytest.approx(by_hand[kind], rel=1e-5)
    assert got[1] == pytest.approx(distance_by_hand(kind, Q[1], LOGITS[1]), rel=1e-5)  # q with a zero: 0 log 0 = 0
    assert np.all(np.isfinite(got)) and np.all(got > 0)


def test_jensen_shannon_is_symmetric_bounded_and_zero_for_equal_distributions():
    a = tf.constant([[2.0, 0.0, -1.0], [0.0, 0.0, 9.0]])
    b = tf.constant([[-1.0, 1.0, 0.5], [9.0, 0.0, 0.0]])
    ab = losses.consistency('jsd', tf.nn.softmax(a), b).numpy()
    ba = losses.consistency('jsd', tf.nn.softmax(b), a).numpy()
    np.testing.assert_allclose(ab, ba, rtol=1e-5)
    assert np.all(ab > 0) and np.all(ab <= np.log(2) + 1e-6)
    np.testing.assert_allclose(ab, distance_by_hand('jsd', softmax(a.numpy()), b.numpy()), rtol=1e-5)
    assert np.log(2) - 0.01 < ab[1] < np.log(2)  # almost disjoint supports
    np.testing.assert_allclose(losses.consistency('jsd', tf.nn.softmax(a), a).numpy(), 0, atol=1e-6)
    # The SSL methods notebook averaged p_1 with itself (m = p_1), which leaves KL(p_1 || p_2) / 2: not a JSD.
    notebook = kl(softmax(a.numpy()), softmax(b.numpy())) / 2
    assert not np.allclose(ab, notebook, rtol=1e-2)


# ---------------------------------------------------------------------------------------------
# Losses on fixed logits.

PI_TABLE = np.array([[2., 0., 0.], [0., 1., 0.],                  # 0-1 labeled x
                     [1., 0., 0.], [0., 3., 0.], [0., 0., 1.],    # 2-4 unlabeled, target view
                     [0., 1., 0.], [0., 3., 1.], [2., 0., 1.],    # 5-7 unlabeled, student view
                     [1., 1., 0.], [0., 0., 2.]])                 # 8-9 labeled, student view
PI_BATCH = dict(x=rows(0, 1), label=tf.constant([0, 2]), u_weak=rows(2, 3, 4), u_strong=rows(5, 6, 7),
                x_strong=rows(8, 9))


@pytest.mark.parametrize('kind', losses.CONSISTENCIES)
def test_pi_model_loss_by_hand(kind):
    xe = nll(PI_TABLE[[0, 1]], [0, 2]).mean()
    h_u = distance_by_hand(kind, softmax(PI_TABLE[[2, 3, 4]]), PI_TABLE[[5, 6, 7]])
    model = TableModel(PI_TABLE)
    loss, logs = pi_model.PiModel(fake_trainer(pi_model.PiModel, model, wu=20., warmup_kimg=0,
                                               consistency=kind)).loss(PI_BATCH, 0)
    assert value(logs['losses/xe']) == pytest.approx(xe, rel=1e-5)
    assert value(logs['losses/xeu']) == pytest.approx(h_u.mean(), rel=1e-5)
    assert value(loss) == pytest.approx(xe + 20 * h_u.mean(), rel=1e-5)
    # the reference: one pass per view (x, a(u), b(u), and the batch's b(x)); only x's may update batch norm
    assert model.calls == [('call', True)] + [('stateless', True)] * 3
    joint = TableModel(PI_TABLE)
    joint_loss, _ = pi_model.PiModel(fake_trainer(pi_model.PiModel, joint, wu=20., warmup_kimg=0, consistency=kind,
                                                  joint_bn=True)).loss(PI_BATCH, 0)
    assert value(joint_loss) == pytest.approx(value(loss), rel=1e-6)
    assert joint.calls == [('call', True)]  # --joint_bn: one forward pass over x and both views


def test_pi_model_debiased_by_hand_and_complete_case():
    h_u = distance_by_hand('mse', softmax(PI_TABLE[[2, 3, 4]]), PI_TABLE[[5, 6, 7]])
    h_l = distance_by_hand('mse', softmax(PI_TABLE[[0, 1]]), PI_TABLE[[8, 9]])  # targets from x, not labels
    xe = nll(PI_TABLE[[0, 1]], [0, 2]).mean()
    model = TableModel(PI_TABLE)
    loss, _ = pi_model.PiModel(fake_trainer(pi_model.PiModel, model, wu=3., warmup_kimg=0,
                                            debiased=True)).loss(PI_BATCH, 0)
    assert value(loss) == pytest.approx(xe + 3 * (h_u.mean() - h_l.mean()), rel=1e-5)
    assert model.calls == [('call', True)] + [('stateless', True)] * 3
    complete, _ = pi_model.PiModel(fake_trainer(pi_model.PiModel, TableModel(PI_TABLE), wu=0., warmup_kimg=0,
                                                debiased=True)).loss(PI_BATCH, 0)
    assert value(complete) == pytest.approx(xe, rel=1e-6)
    views, _ = pi_model.PiModel(fake_trainer(pi_model.PiModel, model, debiased=True, augment='d.x.ra')).views()
    assert views == {'x': 'd', 'x_strong': 'ra'}


def test_linear_rampup_of_the_unlabeled_weight():
    # batch 64: --warmup_kimg=1 is 16 steps; r(t) = min(1, t / 16)
    xe = nll(PI_TABLE[[0, 1]], [0, 2]).mean()
    h = distance_by_hand('mse', softmax(PI_TABLE[[2, 3, 4]]), PI_TABLE[[5, 6, 7]]).mean()
    algorithm = pi_model.PiModel(fake_trainer(pi_model.PiModel, TableModel(PI_TABLE), wu=20., warmup_kimg=1.))
    for step, ramp in ((0, 0.), (4, 0.25), (8, 0.5), (16, 1.), (1000, 1.)):
        loss, logs = algorithm.loss(PI_BATCH, tf.constant(step, tf.int64))
        assert value(loss) == pytest.approx(xe + 20 * ramp * h, rel=1e-5), step
        assert value(logs['monitors/wu']) == pytest.approx(20 * ramp), step
    assert pi_model.PiModel.all_params()['warmup_kimg'].default == pytest.approx(0.4 * 65536)
    local = settings_lib.resolve(pi_model.PiModel.all_params(), dict(local=True))
    assert local.warmup_kimg == pytest.approx(0.4 * local.train_kimg)


TEACHER_TABLE = np.array([[0., 0., 3.], [1., 2., 0.], [0., 1., 0.], [4., 0., 0.], [0., 0., 2.],
                          [9., 9., 9.], [9., 9., 9.], [9., 9., 9.], [9., 9., 9.], [9., 9., 9.]])


@pytest.mark.parametrize('kind', ('mse', 'jsd'))
def test_mean_teacher_loss_by_hand(kind):
    xe = nll(PI_TABLE[[0, 1]], [0, 2]).mean()
    h_u = distance_by_hand(kind, softmax(TEACHER_TABLE[[2, 3, 4]]), PI_TABLE[[5, 6, 7]])
    h_l = distance_by_hand(kind, softmax(TEACHER_TABLE[[0, 1]]), PI_TABLE[[8, 9]])
    student, teacher = TableModel(PI_TABLE), TableModel(TEACHER_TABLE)
    batch = PI_BATCH
    loss, logs = mean_teacher.MeanTeacher(fake_trainer(mean_teacher.MeanTeacher, student, teacher, wu=8.,
                                                       warmup_kimg=0, consistency=kind)).loss(batch, 0)
    assert value(loss) == pytest.approx(xe + 8 * h_u.mean(), rel=1e-5)
    assert value(logs['losses/xeu']) == pytest.approx(h_u.mean(), rel=1e-5)
    # student: x (may update batch norm), then b(u) and the batch's b(x) on their own; teacher in training mode
    assert student.calls == [('call', True), ('stateless', True), ('stateless', True)]
    assert teacher.calls == [('stateless', True)]
    debiased, _ = mean_teacher.MeanTeacher(fake_trainer(mean_teacher.MeanTeacher, TableModel(PI_TABLE), teacher,
                                                        wu=8., warmup_kimg=0, consistency=kind,
                                                        debiased=True)).loss(batch, 0)
    assert value(debiased) == pytest.approx(xe + 8 * (h_u.mean() - h_l.mean()), rel=1e-5)
    complete, _ = mean_teacher.MeanTeacher(fake_trainer(mean_teacher.MeanTeacher, TableModel(PI_TABLE), teacher,
                                                        wu=0., warmup_kimg=0, debiased=True)).loss(batch, 0)
    assert value(complete) == pytest.approx(xe, rel=1e-6)


PL_TABLE = np.array([[6., 0., 0.],      # 0 labeled: confidence e^6 / (e^6 + 2) = 0.995 >= 0.95
                     [0., 0., 1.],      # 1 labeled: 0.576, masked
                     [10., 0., 0.],     # 2 unlabeled: pseudo-label 0
                     [1., 0., 0.],      # 3 unlabeled: masked
                     [0., 0., 5.]])     # 4 unlabeled: 0.987, pseudo-label 2


def test_pseudo_label_loss_by_hand():
    xe = nll(PL_TABLE[[0, 1]], [1, 2]).mean()  # the true label of x0 is 1, its pseudo-label 0
    h_u = np.array([nll(PL_TABLE[[2]], [0])[0], 0, nll(PL_TABLE[[4]], [2])[0]])
    h_l = np.array([nll(PL_TABLE[[0]], [0])[0], 0])
    batch = dict(x=rows(0, 1), label=tf.constant([1, 2]), u_weak=rows(2, 3, 4))
    model = TableModel(PL_TABLE)
    loss, logs = pseudo_label.PseudoLabel(fake_trainer(pseudo_label.PseudoLabel, model, wu=2., warmup_kimg=0,
                                                       debiased=True)).loss(batch, 0)
    assert value(loss) == pytest.approx(xe + 2 * (h_u.mean() - h_l.mean()), rel=1e-5)
    assert value(logs['monitors/mask']) == pytest.approx(2 / 3)
    assert model.calls == [('call', True), ('stateless', True)]  # x, then u on its own
    plain, _ = pseudo_label.PseudoLabel(fake_trainer(pseudo_label.PseudoLabel, model, wu=2., warmup_kimg=0,
                                                     threshold=0.99)).loss(batch, 0)
    assert value(plain) == pytest.approx(xe + 2 * h_u[0] / 3, rel=1e-5)  # only the 0.99991 prediction passes
    complete, _ = pseudo_label.PseudoLabel(fake_trainer(pseudo_label.PseudoLabel, model, wu=0., warmup_kimg=0,
                                                        debiased=True)).loss(batch, 0)
    assert value(complete) == pytest.approx(xe, rel=1e-6)


def test_fully_supervised_loss_by_hand():
    batch = dict(x=rows(0, 1), x_strong=rows(3, 4), label=tf.constant([0, 2]))
    model = TableModel(PL_TABLE)
    loss, logs = fully_supervised.FullySupervised(fake_trainer(fully_supervised.FullySupervised, model)).loss(batch, 0)
    assert value(loss) == pytest.approx(nll(PL_TABLE[[0, 1]], [0, 2]).mean(), rel=1e-6)
    assert set(logs) == {'losses/xe'}
    both, _ = fully_supervised.FullySupervised(fake_trainer(fully_supervised.FullySupervised, model,
                                                            sup_strong=True)).loss(batch, 0)
    assert value(both) == pytest.approx((nll(PL_TABLE[[0, 1]], [0, 2]).mean() + nll(PL_TABLE[[3, 4]], [0, 2]).mean())
                                        / 2, rel=1e-6)
    assert model.calls == [('call', True), ('call', True)]
    algorithm = fully_supervised.FullySupervised(fake_trainer(fully_supervised.FullySupervised, model,
                                                              sup_strong=True))
    assert algorithm.views() == ({'x': 'd', 'x_strong': 'rac'}, {})
    assert 'uratio' not in fully_supervised.FullySupervised.all_params()  # no unlabeled images


# ---------------------------------------------------------------------------------------------
# VAT on a linear softmax model: KL(p || softmax(W(x + r) + b)) has gradient W^T (q - p) in r.

RNG = np.random.default_rng(7)
KERNEL, BIAS = RNG.normal(size=(4, 3)), RNG.normal(size=3)
X_LABELED, X_UNLABELED = RNG.normal(size=(2, 4)), RNG.normal(size=(3, 4))


def vat_term_by_hand(x, direction, eps, xi):
    """KL(p(x) || p(x + r_adv)) per row with r_adv = eps g / |g|, g = W^T (p(x + xi d/|d|) - p(x))."""
    p = softmax(x @ KERNEL + BIAS)
    unit = direction / np.linalg.norm(direction, axis=1, keepdims=True)
    g = (softmax((x + xi * unit) @ KERNEL + BIAS) - p) @ KERNEL.T
    r_adv = eps * g / np.linalg.norm(g, axis=1, keepdims=True)
    return kl(p, softmax((x + r_adv) @ KERNEL + BIAS)), r_adv


def test_vat_adversarial_direction_by_hand():
    p = softmax(X_UNLABELED @ KERNEL + BIAS)
    direction = RNG.normal(size=X_UNLABELED.shape)
    logits_fn = linear_model(KERNEL, BIAS)
    r_adv = vat.adversarial_perturbation(logits_fn, X_UNLABELED, tf.constant(p, tf.float32), direction, 2.0, 0.1)
    assert r_adv.dtype == tf.float32
    np.testing.assert_allclose(r_adv.numpy(), vat_term_by_hand(X_UNLABELED, direction, 2.0, 0.1)[1], atol=1e-4)
    np.testing.assert_allclose(np.linalg.norm(r_adv.numpy(), axis=1), 2.0, rtol=1e-6)
    # As xi -> 0 one power iteration gives the direction of H d, H = W^T (diag(p) - p p^T) W the Hessian of the KL.
    # (In float32 the finite difference q - p carries an absolute error of about 1e-7: the direction's error
    # grows like 2e-6 / xi here, so xi = 1e-6 would give noise on this model.)
    unit = direction / np.linalg.norm(direction, axis=1, keepdims=True)
    hessian_d = np.stack([KERNEL @ (np.diag(pi) - np.outer(pi, pi)) @ KERNEL.T @ di for pi, di in zip(p, unit)])
    small = vat.adversarial_perturbation(logits_fn, X_UNLABELED, tf.constant(p, tf.float32), direction, 2.0, 0.01)
    cosine = np.sum(small.numpy() * hessian_d, 1) / 2 / np.linalg.norm(hessian_d, axis=1)
    assert np.all(cosine > 0.999), cosine
    # float16 inputs and logits (mixed precision): the perturbation is still computed in float32
    half = vat.adversarial_perturbation(lambda z: tf.cast(logits_fn(z), tf.float16), tf.constant(X_UNLABELED,
                                        tf.float16), tf.constant(p, tf.float32), direction, 2.0, 0.1)
    exact = vat_term_by_hand(X_UNLABELED, direction, 2.0, 0.1)[1]
    assert half.dtype == tf.float32
    np.testing.assert_allclose(np.linalg.norm(half.numpy(), axis=1), 2.0, rtol=1e-6)
    assert np.all(np.sum(half.numpy() * exact, 1) / 4 > 0.99)


def test_unit_vectors_survive_tiny_gradients():
    d = np.array([[3e-30, -4e-30, 0.], [1., 2., 2.], [0., 0., 0.]], np.float32)  # (3e-30)^2 underflows float32
    np.testing.assert_allclose(vat.unit_vectors(d).numpy(), [[0.6, -0.8, 0.], [1 / 3, 2 / 3, 2 / 3], [0, 0, 0]],
                               rtol=1e-6)


@pytest.mark.parametrize('entmin_weight', (0., 0.06))
def test_vat_loss_by_hand(entmin_weight):
    batch = dict(x=tf.constant(X_LABELED, tf.float32), label=tf.constant([0, 2]), u_weak=tf.constant(X_UNLABELED,
                                                                                                 tf.float32))
    step = 5
    settings = dict(wu=0.3, warmup_kimg=0, vat_eps=2.0, vat_xi=0.1, entmin_weight=entmin_weight, seed=3)
    directions = [tf.random.stateless_normal(shape, losses.step_seed(3, step, stream)).numpy()
                  for shape, stream in ((X_UNLABELED.shape, vat.UNLABELED_STREAM),
                                        (X_LABELED.shape, vat.LABELED_STREAM))]
    h_u = vat_term_by_hand(X_UNLABELED, directions[0], 2.0, 0.1)[0]
    h_l = vat_term_by_hand(X_LABELED, directions[1], 2.0, 0.1)[0]
    xe = nll(X_LABELED @ KERNEL + BIAS, [0, 2]).mean()

    def entropy(x):
        p = softmax(x @ KERNEL + BIAS)
        return -np.sum(p * np.log(p), axis=1).mean()
    loss, logs = vat.VAT(fake_trainer(vat.VAT, linear_model(KERNEL, BIAS), **settings)).loss(batch, step)
    assert value(logs['losses/xeu']) == pytest.approx(h_u.mean(), rel=1e-4)
    assert value(loss) == pytest.approx(xe + 0.3 * h_u.mean() + entmin_weight * entropy(X_UNLABELED), rel=1e-4)
    debiased, _ = vat.VAT(fake_trainer(vat.VAT, linear_model(KERNEL, BIAS), debiased=True,
                                       **settings)).loss(batch, step)
    entropy_term = entmin_weight * (entropy(X_UNLABELED) - entropy(X_LABELED))
    assert value(debiased) == pytest.approx(xe + 0.3 * (h_u.mean() - h_l.mean()) + entropy_term, rel=1e-4)
    complete, _ = vat.VAT(fake_trainer(vat.VAT, linear_model(KERNEL, BIAS), **dict(settings, wu=0., entmin_weight=0.,
                                                                                   debiased=True))).loss(batch, step)
    assert value(complete) == pytest.approx(xe, rel=1e-6)
    other_step, _ = vat.VAT(fake_trainer(vat.VAT, linear_model(KERNEL, BIAS), **settings)).loss(batch, step + 1)
    assert value(other_step) != pytest.approx(value(loss), rel=1e-7)  # a new random direction every step


def test_vat_defaults_and_unramped_entropy():
    s = settings_lib.resolve(vat.VAT.all_params(), {})
    # the reference's vat.py: Adam at a constant 0.002, wd 0.02 x lr after each step, VAT+EM weights
    assert (s.optimizer, s.lr, s.lr_schedule, s.wd, s.wu, s.vat_eps, s.vat_xi, s.entmin_weight, s.uratio) == (
        'adam', 0.002, 'constant', 0.02, 0.3, 6., 1e-6, 0.06, 1)
    batch = dict(x=tf.constant(X_LABELED, tf.float32), label=tf.constant([0, 2]),
                 u_weak=tf.constant(X_UNLABELED, tf.float32))
    p = softmax(X_UNLABELED @ KERNEL + BIAS)
    entropy = -np.sum(p * np.log(p), axis=1).mean()
    xe = nll(X_LABELED @ KERNEL + BIAS, [0, 2]).mean()
    # step 0 of a 1-kimg warm-up: the VAT term is ramped to 0, the entropy term is not ramped
    loss, logs = vat.VAT(fake_trainer(vat.VAT, linear_model(KERNEL, BIAS), warmup_kimg=1.)).loss(batch, 0)
    assert value(loss) == pytest.approx(xe + 0.06 * entropy, rel=1e-5)
    assert value(logs['losses/entropy']) == pytest.approx(entropy, rel=1e-5)


# ---------------------------------------------------------------------------------------------
# ICT on a linear student and a linear teacher.

TEACHER_KERNEL = RNG.normal(size=(4, 3))


class LinearTeacher:
    """The EMA teacher of the ICT tests: logits = x @ TEACHER_KERNEL; records the training flag."""

    def __init__(self):
        self.calls = []

    def stateless_call(self, trainable, non_trainable, images, training=False):
        self.calls.append(('stateless', training))
        return tf.matmul(tf.cast(images, tf.float32), tf.constant(TEACHER_KERNEL, tf.float32)), non_trainable


def ict_term_by_hand(x, step, stream, kind='mse', beta=0.5, seed=0):
    """The reference's ICT term: per-image lambda = max(l, 1 - l), l ~ Beta(beta, beta), partner x[::-1]."""
    lam = losses.mixup_lambda(len(x), beta, losses.step_seed(seed, step, stream)).numpy()
    assert np.all((lam >= 0.5) & (lam <= 1)) and len(set(lam)) == len(x)  # one lambda per image
    lam = lam[:, None]
    q = softmax(x @ TEACHER_KERNEL)
    mixed_x, mixed_q = lam * x + (1 - lam) * x[::-1], lam * q + (1 - lam) * q[::-1]
    return distance_by_hand(kind, mixed_q, mixed_x @ KERNEL + BIAS)


@pytest.mark.parametrize('kind', ('mse', 'kl'))
def test_ict_loss_by_hand(kind):
    batch = dict(x=tf.constant(X_LABELED, tf.float32), label=tf.constant([1, 0]),
                 u_weak=tf.constant(X_UNLABELED, tf.float32))
    step = 11
    xe = nll(X_LABELED @ KERNEL + BIAS, [1, 0]).mean()
    h_u = ict_term_by_hand(X_UNLABELED, step, ict.UNLABELED_STREAM, kind)
    h_l = ict_term_by_hand(X_LABELED, step, ict.LABELED_STREAM, kind)
    teacher = LinearTeacher()
    settings = dict(wu=100., warmup_kimg=0, consistency=kind)
    loss, logs = ict.ICT(fake_trainer(ict.ICT, linear_model(KERNEL, BIAS), teacher, **settings)).loss(batch, step)
    assert value(logs['losses/xeu']) == pytest.approx(h_u.mean(), rel=1e-4)
    assert value(loss) == pytest.approx(xe + 100 * h_u.mean(), rel=1e-4)
    assert teacher.calls == [('stateless', True)]
    debiased, _ = ict.ICT(fake_trainer(ict.ICT, linear_model(KERNEL, BIAS), teacher, debiased=True,
                                       **settings)).loss(batch, step)
    assert value(debiased) == pytest.approx(xe + 100 * (h_u.mean() - h_l.mean()), rel=1e-4)
    complete, _ = ict.ICT(fake_trainer(ict.ICT, linear_model(KERNEL, BIAS), teacher, debiased=True,
                                       **dict(settings, wu=0.))).loss(batch, step)
    assert value(complete) == pytest.approx(xe, rel=1e-6)


def test_ict_mixing_is_stateless_per_image_and_reversed():
    seed = losses.step_seed(0, 3, ict.UNLABELED_STREAM)
    first, again = ict.mixing(6, 0.5, seed), ict.mixing(6, 0.5, seed)
    for a, b in zip(first, again):
        np.testing.assert_array_equal(a.numpy(), b.numpy())
    np.testing.assert_array_equal(first[1].numpy(), [5, 4, 3, 2, 1, 0])  # the batch reversed, x[::-1]
    lam = ict.mixing(20000, 0.5, seed)[0].numpy()
    # max(l, 1 - l), l ~ Beta(1/2, 1/2) = arcsine law: P(max <= m) = (4/pi) arcsin(sqrt(m)) - 1 on [1/2, 1],
    # mean 1/2 + 1/pi
    assert lam.min() >= 0.5 and lam.max() <= 1 and len(np.unique(lam)) > 19000
    assert lam.mean() == pytest.approx(0.5 + 1 / np.pi, abs=0.005)
    assert np.mean(lam <= 0.75) == pytest.approx(4 / np.pi * np.arcsin(np.sqrt(0.75)) - 1, abs=0.01)
    small = ict.mixing(2000, 0.1, losses.step_seed(1, 0, 1))[0].numpy()  # Gamma(0.1) draws underflow float32
    assert np.all(np.isfinite(small)) and np.all((small >= 0.5) & (small <= 1))
    assert np.mean(small > 0.95) > 0.6  # Beta(0.1, 0.1) piles up at 0 and 1
    s = settings_lib.resolve(ict.ICT.all_params(), {})
    assert (s.optimizer, s.lr, s.lr_schedule, s.wd, s.wu, s.beta, s.consistency) == ('adam', 0.002, 'constant', 0.02,
                                                                                      50., 0.5, 'mse')


# ---------------------------------------------------------------------------------------------
# Gradients: targets are constants (stop_gradient), only the trained prediction moves.

def gradient(loss_fn, model):
    with tf.GradientTape() as tape:
        loss = loss_fn()
    return [g.numpy() for g in tape.gradient(loss, model.trainable_variables)]


def test_targets_carry_no_gradient():
    x, u_a, u_b = (tf.constant(RNG.normal(size=shape), tf.float32) for shape in ((2, 4), (3, 4), (3, 4)))
    labels = tf.constant([0, 2])
    model = linear_model(KERNEL, BIAS)

    def xe():
        return tf.reduce_mean(losses.cross_entropy(labels, model(x)))
    q_pi = tf.constant(tf.nn.softmax(model(u_a)).numpy())
    p_u = tf.constant(tf.nn.softmax(model(u_a)).numpy())
    direction = tf.random.stateless_normal(u_a.shape, losses.step_seed(0, 0, vat.UNLABELED_STREAM))
    r_adv = tf.constant(vat.adversarial_perturbation(model, u_a, p_u, direction, 6.0, 1e-6).numpy())
    pseudo = tf.argmax(model(u_a), axis=1)
    mask = tf.cast(tf.reduce_max(p_u, axis=1) >= 0.5, tf.float32)
    cases = [  # (algorithm, its batch, settings, the loss with the target as a constant)
        (pi_model.PiModel, dict(u_weak=u_a, u_strong=u_b), dict(wu=20.),
         lambda: xe() + 20 * tf.reduce_mean(losses.consistency('mse', q_pi, model(u_b)))),
        (vat.VAT, dict(u_weak=u_a), dict(wu=0.3), lambda: xe() + 0.3 * tf.reduce_mean(losses.kl_divergence(
            p_u, model(u_a + r_adv))) + 0.06 * tf.reduce_mean(losses.entropy(model(u_a)))),  # entropy: with gradient
        (pseudo_label.PseudoLabel, dict(u_weak=u_a), dict(wu=2., threshold=0.5),
         lambda: xe() + 2 * tf.reduce_mean(mask * losses.cross_entropy(pseudo, model(u_a)))),
    ]
    for cls, images, settings, reference in cases:
        algorithm = cls(fake_trainer(cls, model, warmup_kimg=0, **settings))
        got = gradient(lambda: algorithm.loss(dict(images, x=x, label=labels), 0)[0], model)
        for a, b in zip(got, gradient(reference, model)):
            np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6, err_msg=cls.__name__)
    assert float(tf.reduce_sum(mask)) >= 1


# ---------------------------------------------------------------------------------------------
# Batch norm: which passes update the moving statistics.

def bn_model():
    """x (N, 4) -> batch norm (momentum 0.5, moving mean starts at 0) -> dense 3."""
    model = keras.Sequential([keras.Input((4,)), keras.layers.BatchNormalization(momentum=0.5, name='bn'),
                              keras.layers.Dense(3)])
    model.get_layer('bn').moving_mean.assign(np.zeros(4, np.float32))
    return model


BN_X = RNG.normal(size=(2, 4)).astype(np.float32) + 1
BN_U = [RNG.normal(size=(3, 4)).astype(np.float32) - 2 for _ in range(2)]


def ict_mixed(u, step=2):
    lam = losses.mixup_lambda(len(u), 0.5, losses.step_seed(0, step, ict.UNLABELED_STREAM)).numpy()[:, None]
    return lam * u + (1 - lam) * u[::-1]


BN_CASES = {  # algorithm, its batch, settings, the images of the one pass that updates the moving statistics
    # the reference: separate passes, only the labeled one updates the moving statistics
    'pi_model': (pi_model.PiModel, dict(x=BN_X, u_weak=BN_U[0], u_strong=BN_U[1]), {}, [BN_X]),
    'mean_teacher': (mean_teacher.MeanTeacher, dict(x=BN_X, u_weak=BN_U[0], u_strong=BN_U[1]), {}, [BN_X]),
    'vat': (vat.VAT, dict(x=BN_X, u_weak=BN_U[0]), {}, [BN_X]),  # clean and perturbed unlabeled passes: no update
    'ict': (ict.ICT, dict(x=BN_X, u_weak=BN_U[0]), {}, [BN_X]),
    'pseudo_label': (pseudo_label.PseudoLabel, dict(x=BN_X, u_weak=BN_U[0]), {}, [BN_X]),
    'fully_supervised': (fully_supervised.FullySupervised, dict(x=BN_X), {}, [BN_X]),
    # --joint_bn (departs from the reference): one pass over the student's views
    'pi_model_joint': (pi_model.PiModel, dict(x=BN_X, u_weak=BN_U[0], u_strong=BN_U[1]), dict(joint_bn=True),
                       [BN_X, *BN_U]),
    'mean_teacher_joint': (mean_teacher.MeanTeacher, dict(x=BN_X, u_weak=BN_U[0], u_strong=BN_U[1]),
                           dict(joint_bn=True), [BN_X, BN_U[1]]),
    'ict_joint': (ict.ICT, dict(x=BN_X, u_weak=BN_U[0]), dict(joint_bn=True), [BN_X, ict_mixed(BN_U[0])]),
    'pseudo_label_joint': (pseudo_label.PseudoLabel, dict(x=BN_X, u_weak=BN_U[0]), dict(joint_bn=True),
                           [BN_X, BN_U[0]]),
}


@pytest.mark.parametrize('name', sorted(BN_CASES))
def test_which_pass_updates_the_batch_norm_statistics(name):
    cls, images, settings, updating = BN_CASES[name]
    model = bn_model()
    settings = dict(settings, **({} if cls is fully_supervised.FullySupervised else dict(warmup_kimg=0)))
    batch = dict({k: tf.constant(v) for k, v in images.items()}, label=tf.constant([0, 1]))
    loss, _ = cls(fake_trainer(cls, model, **settings)).loss(batch, 2)
    assert np.isfinite(value(loss))
    # moving mean 0, momentum 0.5: after one update 0.5 * 0 + 0.5 * (mean of the updating pass's images)
    expected = 0.5 * 0 + 0.5 * np.concatenate(updating).mean(axis=0)
    np.testing.assert_allclose(model.get_layer('bn').moving_mean.numpy(), expected, rtol=1e-5, atol=1e-6)


def bn_logits_by_hand(model, images):
    """Logits of the bn_model in training mode on one batch: normalised by that batch's mean and
    (biased) variance, epsilon 1e-3, gamma 1, beta 0."""
    kernel, bias = (np.asarray(w, np.float64) for w in model.get_layer(index=1).get_weights())
    normed = (images - images.mean(axis=0)) / np.sqrt(images.var(axis=0) + 1e-3)
    return normed @ kernel + bias


@pytest.mark.parametrize('joint', (False, True))
def test_each_pass_is_normalised_by_its_own_batch(joint):
    """Pi-model on the bn_model: the reference normalises x, a(u) and b(u) each by its own batch
    statistics; --joint_bn by the statistics of all of them together."""
    model = bn_model()
    batch = dict(x=tf.constant(BN_X), u_weak=tf.constant(BN_U[0]), u_strong=tf.constant(BN_U[1]),
                 label=tf.constant([0, 1]))
    loss, logs = pi_model.PiModel(fake_trainer(pi_model.PiModel, model, wu=10., warmup_kimg=0,
                                               joint_bn=joint)).loss(batch, 0)
    parts = [BN_X, *BN_U]
    if joint:
        whole = bn_logits_by_hand(model, np.concatenate(parts).astype(np.float64))
        logits = np.split(whole, [2, 5])
    else:
        logits = [bn_logits_by_hand(model, part.astype(np.float64)) for part in parts]
    xe = nll(logits[0], [0, 1]).mean()
    h = distance_by_hand('mse', softmax(logits[1]), logits[2]).mean()
    assert value(logs['losses/xe']) == pytest.approx(xe, rel=1e-4)
    assert value(logs['losses/xeu']) == pytest.approx(h, rel=1e-4)
    assert value(loss) == pytest.approx(xe + 10 * h, rel=1e-4)


# ---------------------------------------------------------------------------------------------
# VAT and ICT optimisation: Adam, then w <- w * (1 - lr * wd) on the kernels after the step.

def adam_first_step(w, g, lr, beta_1=0.9, beta_2=0.999, epsilon=1e-8):
    """Adam's first update of w by hand: m = (1 - b1) g, v = (1 - b2) g^2,
    w - lr sqrt(1 - b2) / (1 - b1) * m / (sqrt(v) + eps)."""
    m, v = (1 - beta_1) * g, (1 - beta_2) * g * g
    return w - lr * np.sqrt(1 - beta_2) / (1 - beta_1) * m / (np.sqrt(v) + epsilon)


def test_adam_then_decoupled_weight_decay_by_hand():
    kernel0, bias0 = np.array([[1., -2.], [0.5, 3.]]), np.array([0.25, -1.])
    grads = np.array([[0.1, -0.2], [0.3, 0.0]]), np.array([1., -1.])

    def one_step(lr, wd, grads):
        settings = settings_lib.resolve(vat.VAT.all_params(), dict(lr=lr, wd=wd))
        kernel, bias = keras.Variable(kernel0.astype(np.float32)), keras.Variable(bias0.astype(np.float32))
        optimizer = state.make_optimizer(settings, lambda: lr, [kernel, bias], [kernel])
        optimizer.apply_gradients(zip([tf.constant(g, tf.float32) for g in grads], [kernel, bias]))
        return kernel.numpy(), bias.numpy()
    # large lr and wd make the order visible: the reference decays AFTER the step, (w - update)(1 - lr wd);
    # Keras's own AdamW decays before it, w (1 - lr wd) - update, 0.25 * update away here
    kernel, bias = one_step(0.5, 0.5, grads)
    after = adam_first_step(kernel0, grads[0], 0.5) * (1 - 0.5 * 0.5)
    np.testing.assert_allclose(kernel, after, rtol=2e-5, atol=2e-5)
    np.testing.assert_allclose(bias, adam_first_step(bias0, grads[1], 0.5), rtol=2e-5, atol=2e-5)  # biases: no decay
    before = kernel0 * (1 - 0.5 * 0.5) - (kernel0 - adam_first_step(kernel0, grads[0], 0.5))
    assert np.abs(kernel - before).max() > 0.05
    # the VAT / ICT defaults, no gradient: kernel <- kernel * (1 - 0.002 * 0.02) exactly, biases unchanged
    kernel, bias = one_step(0.002, 0.02, [np.zeros((2, 2)), np.zeros(2)])
    np.testing.assert_allclose(kernel, (kernel0 * (1 - 0.002 * 0.02)).astype(np.float32), rtol=1e-7)
    np.testing.assert_array_equal(bias, bias0.astype(np.float32))


# ---------------------------------------------------------------------------------------------
# Command lines and data.

SCRIPTS = {'pi_model.py': ('Pi-model', '--consistency', '--warmup_kimg', '--wu', '--debiased', '--augment',
                           '--joint_bn'),
           'mean_teacher.py': ('Mean Teacher', '--consistency', '--warmup_kimg', '--wu', '--debiased', '--ema',
                               '--joint_bn'),
           'vat.py': ('Virtual Adversarial Training', '--vat_eps', '--vat_xi', '--entmin_weight', '--debiased',
                      '--optimizer'),
           'ict.py': ('Interpolation Consistency Training', '--beta', '--consistency', '--wu', '--debiased',
                      '--joint_bn'),
           'pseudo_label.py': ('Pseudo-Label', '--threshold', '--warmup_kimg', '--wu', '--debiased', '--joint_bn'),
           'fully_supervised.py': ('Supervised baselines', '--all_labels', '--sup_strong', '--augment')}
BAD_VALUES = {'pi_model.py': '--consistency=cosine', 'mean_teacher.py': '--consistency=l2',
              'vat.py': '--optimizer=rmsprop', 'ict.py': '--consistency=hinge'}


def test_command_lines_list_their_flags_and_refuse_bad_values(tmp_path):
    commands = [(script, '--help') for script in SCRIPTS] + list(BAD_VALUES.items())
    done = run_scripts(commands, tmp_path)
    for script, (title, *names) in SCRIPTS.items():
        status, out, err = done[script, '--help']
        assert out.splitlines()[0].startswith(title) and f'python {script} --dataset=' in out, \
            (script, status, err[-2000:])
        for name in names:
            assert f'{name}:' in out or f'--[no]{name[2:]}:' in out, (script, name)  # booleans: --[no]debiased
    for script, arg in BAD_VALUES.items():
        status, out, err = done[script, arg]
        assert status == 2 and err.strip().splitlines()[-1].startswith('error:'), (script, status, err[-1000:])


def test_all_labels_trains_on_every_labeled_training_image(fashion_mnist):
    loaded = data.load('fashion_mnist.1@250-1')
    params = fully_supervised.FullySupervised.all_params()
    split = fully_supervised.FullySupervised.adapt_data(loaded, settings_lib.resolve(params, {}))
    every = fully_supervised.FullySupervised.adapt_data(loaded, settings_lib.resolve(params, dict(all_labels=True)))
    assert len(split.labeled) == 250
    assert len(every.labeled) == len(loaded.unlabel_meta['indexes']) - 1 == 60000 - 1  # minus the validation image
    assert np.bincount(every.labeled.labels, minlength=10).min() >= 5990  # every class, 6000 each minus 1
    assert len(every.test) == 10000 and len(every.valid) == 1


# ---------------------------------------------------------------------------------------------
# Short Fashion-MNIST runs: 250 labels, WRN-10 with 8 filters, 192 steps of 32 labeled images,
# one evaluation at the end. bn_momentum and ema 0.9: the moving variance starts at 1 and keeps
# momentum^t of it (0.99^192 = 0.15, several times the true variance of the first layers here), and
# a 0.99 weight average lags a model that changes this fast; both hide what the model learned.

SHORT = dict(dataset='fashion_mnist.1@250-1', filters=8, repeat=1, batch=32, ema=0.9, bn_momentum=0.9, eval_size=2000,
             train_kimg=6, report_kimg=6, save_kimg=6)
RAMPED = dict(SHORT, warmup_kimg=2)  # full unlabeled weight from step 64 on


@pytest.mark.parametrize('cls, settings, observed', [
    pytest.param(fully_supervised.FullySupervised, SHORT, 64.8, id='fully_supervised'),
    pytest.param(pi_model.PiModel, RAMPED, 65.3, id='pi_model'),
    pytest.param(mean_teacher.MeanTeacher, RAMPED, 64.2, id='mean_teacher'),
    pytest.param(vat.VAT, RAMPED, 67.3, id='vat'),
    pytest.param(ict.ICT, RAMPED, 67.3, id='ict'),
    pytest.param(pseudo_label.PseudoLabel, RAMPED, 64.1, id='pseudo_label'),
])
def test_short_fashion_mnist_run_learns(fashion_mnist, tmp_path, cls, settings, observed):
    # `observed`: the EMA test accuracy (%) this run reached with the reference's batch norm, optimizers and
    # defaults (measured on 2 CPU cores; chance is 10%); the run must come within 5 points of it
    result = cls.run(train_dir=str(tmp_path), **settings)
    assert result['step'] == 192
    assert result['accuracy'] > observed - 5, (cls.__name__, result['accuracy'], observed)
