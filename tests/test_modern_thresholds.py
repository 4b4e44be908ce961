"""FreeMatch, SoftMatch, AdaMatch, SimMatch and Dash: each rule against numbers computed here with numpy,
the refused label-bias add-ons, and short runs on the tiny synthetic data (finite loss, state changed,
one under XLA). Their exact resume is in tests/test_resume.py (ALGORITHMS)."""
import numpy as np
import pytest
import tensorflow as tf

import adamatch
import dash
import fakes
from fakes import TableModel, rows
import freematch
import simmatch
import softmatch
from libml import debias
from libml import losses
from libml import settings as settings_lib
from libml import train
from libml import utils
from reference import log_softmax, softmax
from test_resume import SHORT
from test_resume import tiny_data, tiny_data_root  # noqa: F401

PROBS = np.array([[0.7, 0.2, 0.1], [0.1, 0.8, 0.1], [0.3, 0.3, 0.4], [0.05, 0.05, 0.9]])


def t(x, dtype=tf.float32):
    return tf.constant(x, dtype)


# ---- FreeMatch

def test_freematch_statistics_and_mask_by_hand():
    m = 0.5
    time_p, p_model, label_hist = freematch.updated_statistics(t(1 / 3), t([1 / 3] * 3), t([1 / 3] * 3), t(PROBS), m)
    expected_time = 0.5 / 3 + 0.5 * (0.7 + 0.8 + 0.4 + 0.9) / 4  # = 0.516667
    expected_model = 0.5 / 3 + 0.5 * PROBS.mean(0)  # (0.35417, 0.35417, 0.35833)... spelled out below
    np.testing.assert_allclose(expected_model, [1 / 6 + 0.14375, 1 / 6 + 0.16875, 1 / 6 + 0.1875], rtol=1e-6)
    np.testing.assert_allclose(float(time_p), expected_time, rtol=1e-6)
    np.testing.assert_allclose(p_model.numpy(), expected_model, rtol=1e-6)
    np.testing.assert_allclose(label_hist.numpy(), [1 / 6 + 0.5 / 4, 1 / 6 + 0.5 / 4, 1 / 6 + 0.5 / 2], rtol=1e-6)
    thresholds = freematch.self_adaptive_thresholds(time_p, p_model).numpy()
    np.testing.assert_allclose(thresholds, expected_time * expected_model / expected_model.max(), rtol=1e-6)
    # thresholds ~ (0.4655, 0.4885, 0.5167): rows 0, 1, 3 pass; row 2 (0.4, class 2) does not
    mask = freematch.losses.confidence_mask(t(PROBS), thresholds).numpy()
    np.testing.assert_array_equal(mask, [1, 1, 0, 1])


def fairness_by_hand(logits_strong, mask, p_model, label_hist):
    q = softmax(logits_strong)[mask > 0]
    share = np.bincount(q.argmax(1), minlength=q.shape[1]) / len(q)
    inv = lambda x: np.where(x > 0, 1 / np.where(x > 0, x, 1), 0)  # noqa: E731
    a = p_model * inv(label_hist)
    b = q.mean(0) * inv(share)
    a, b = a / a.sum(), b / b.sum()
    return np.sum(a * np.log(b + 1e-12))


def test_freematch_fairness_term_value_sign_and_gradient():
    strong = np.array([[2., 0., 0.], [0., 1., 0.5], [1., 1., 1.], [0., 0., 3.]])
    mask = np.array([1., 1., 0., 0.])
    p_model, label_hist = np.array([0.5, 0.3, 0.2]), np.array([0.4, 0.4, 0.2])
    expected = fairness_by_hand(strong, mask, p_model, label_hist)
    # share h_S = (1/2, 1/2, 0): class 2 has inv0 = 0, so b has no mass there while a has 0.2 / 1.0 -> log 1e-12
    assert expected < -5
    logits = tf.Variable(strong, dtype=tf.float32)
    with tf.GradientTape() as tape:
        value = freematch.fairness_term(logits, t(mask), t(p_model), t(label_hist))
    assert float(value) == pytest.approx(expected, rel=1e-4)
    grad = tape.gradient(value, logits).numpy()
    assert np.abs(grad[:2]).sum() > 0 and not grad[2:].any()  # only the masked images' q carry the gradient
    mask = np.array([1., 1., 0., 1.])  # every class present in S
    value = float(freematch.fairness_term(t(strong), t(mask), t(p_model), t(label_hist)))
    expected = fairness_by_hand(strong, mask, p_model, label_hist)
    assert value == pytest.approx(expected, rel=1e-5) and -np.log(3) - 1 < expected < 0  # -H(a, b) <= -H(a)
    assert float(freematch.fairness_term(t(strong), t([0.] * 4), t(p_model), t(label_hist))) == 0


TABLE = np.array([[2., 0., 0.], [0., 1., 0.], [2., 0., 0.], [0., 3., 0.], [0., 0., 4.], [5., 0., 0.],
                  [0., 1., 0.], [1., 0., 2.], [0., 0., 1.], [3., 0., 1.]])  # 0-1 x, 2-5 weak u, 6-9 strong u
BATCH = dict(x=rows(0, 1), label=tf.constant([0, 1]), u_weak=rows(2, 3, 4, 5), u_strong=rows(6, 7, 8, 9),
             x_index=tf.constant([0, 1], tf.int64), u_index=tf.constant([0, 1, 2, 3], tf.int64))


def make(cls, **settings):
    algorithm = cls(fakes.fake_trainer(cls, TableModel(TABLE), nclass=3, labeled_labels=(0, 1, 2), n_total=8,
                                       **settings))
    algorithm.build()
    return algorithm


def test_freematch_loss_wires_the_rules():
    algorithm = make(freematch.FreeMatch, ema_p=0.9, lambda_f=0.5)
    loss, logs = algorithm.loss(BATCH, 0)
    p = softmax(TABLE[2:6])
    time_p = 0.9 / 3 + 0.1 * p.max(1).mean()
    p_model = 0.9 / 3 + 0.1 * p.mean(0)
    label_hist = 0.9 / 3 + 0.1 * np.bincount(p.argmax(1), minlength=3) / 4
    assert float(algorithm.time_p.numpy()) == pytest.approx(time_p, rel=1e-6)
    np.testing.assert_allclose(algorithm.label_hist.numpy(), label_hist, rtol=1e-6)
    mask = p.max(1) >= time_p * p_model[p.argmax(1)] / p_model.max()
    h = -log_softmax(TABLE[6:10])[np.arange(4), p.argmax(1)] * mask
    xe = -log_softmax(TABLE[:2])[[0, 1], [0, 1]].mean()
    fair = fairness_by_hand(TABLE[6:10], mask.astype(float), p_model, label_hist)
    assert float(logs['monitors/mask']) == pytest.approx(mask.mean())
    assert float(loss) == pytest.approx(xe + h.mean() + 0.5 * fair, rel=1e-5)


# ---- SoftMatch

def test_softmatch_alignment_and_truncated_gaussian_by_hand():
    first = losses.first_batch_ema(t([1 / 3] * 3), t(0.), tf.reduce_mean(t(PROBS), 0), 0.999).numpy()
    np.testing.assert_allclose(first, PROBS.mean(0), rtol=1e-6)  # the first batch's mean, not an EMA step
    later = losses.first_batch_ema(t([0.2, 0.3, 0.5]), t(1.), tf.reduce_mean(t(PROBS), 0), 0.9).numpy()
    np.testing.assert_allclose(later, 0.9 * np.array([0.2, 0.3, 0.5]) + 0.1 * PROBS.mean(0), rtol=1e-6)
    p_model = np.array([0.2, 0.3, 0.5])
    aligned = losses.smoothed_alignment(t(PROBS), 1 / 3, t(p_model)).numpy()
    raw = PROBS * (1 / 3 + 1e-6) / (p_model + 1e-6)
    np.testing.assert_allclose(aligned, raw / raw.sum(1, keepdims=True), rtol=1e-5)
    # row 0: (0.7/0.2, 0.2/0.3, 0.1/0.5) = (3.5, 0.667, 0.2) / 4.367 -> 0.8015 (no second softmax)
    assert aligned[0, 0] == pytest.approx(3.5 / (3.5 + 2 / 3 + 0.2), rel=1e-4)
    m = np.array([0.9, 0.5, 0.6, 0.7])
    mu, var = softmatch.updated_gaussian(t(0.5), t(1.0), t(m), 0.9)
    assert float(mu) == pytest.approx(0.9 * 0.5 + 0.1 * 0.675, rel=1e-6)
    assert float(var) == pytest.approx(0.9 + 0.1 * np.var(m, ddof=1), rel=1e-6)  # unbiased: / (n - 1)
    weights = softmatch.truncated_gaussian_weights(t(m), t(0.6), t(0.01), 2.).numpy()
    # at or above mu: 1; 0.5 is one sigma/2 below: exp(-0.01 / (2 * 0.01 / 4)) = exp(-2)
    np.testing.assert_allclose(weights, [1, np.exp(-2), 1, 1], rtol=1e-5)


def test_softmatch_loss_wires_the_rules():
    algorithm = make(softmatch.SoftMatch, ema_p=0.9)
    loss, logs = algorithm.loss(BATCH, 0)
    p = softmax(TABLE[2:6])
    p_model = p.mean(0)  # the first step: the batch mean
    aligned = p * (1 / 3 + 1e-6) / (p_model + 1e-6)
    aligned /= aligned.sum(1, keepdims=True)
    m = aligned.max(1)
    mu, var = 0.9 / 3 + 0.1 * m.mean(), 0.9 + 0.1 * np.var(m, ddof=1)
    np.testing.assert_allclose(algorithm.p_model.numpy(), p_model, rtol=1e-6)
    assert float(algorithm.mu.numpy()) == pytest.approx(mu, rel=1e-6)
    assert float(algorithm.var.numpy()) == pytest.approx(var, rel=1e-6)
    weights = np.exp(-np.minimum(m - mu, 0) ** 2 / (2 * var / 4))
    h = -log_softmax(TABLE[6:10])[np.arange(4), TABLE[2:6].argmax(1)]
    xe = -log_softmax(TABLE[:2])[[0, 1], [0, 1]].mean()
    assert float(logs['monitors/mask']) == pytest.approx(weights.mean(), rel=1e-6)
    assert float(loss) == pytest.approx(xe + (weights * h).mean(), rel=1e-5)
    algorithm.loss(BATCH, 1)  # the second step: an EMA step (the same batch: p_model stays)
    np.testing.assert_allclose(algorithm.p_model.numpy(), p_model, rtol=1e-6)


# ---- AdaMatch

def test_adamatch_relative_threshold_and_alignment_by_hand():
    labeled = np.array([[0.9, 0.05, 0.05], [0.2, 0.8, 0.0]])
    c_tau = float(adamatch.relative_threshold(t(labeled), 0.95))
    assert c_tau == pytest.approx(0.95 * 0.85, rel=1e-6)
    p_target, p_model = np.array([0.5, 0.25, 0.25]), np.array([0.25, 0.25, 0.5])
    aligned = losses.smoothed_alignment(t(PROBS), t(p_target), t(p_model)).numpy()
    raw = PROBS * np.array([2., 1., 0.5])  # (p_target + 1e-6) / (p_model + 1e-6)
    np.testing.assert_allclose(aligned, raw / raw.sum(1, keepdims=True), rtol=1e-5)
    # aligned max: 1.4/1.65 = 0.848, 0.8/1.05 = 0.762, 0.6/1.1 = 0.545, 0.45/0.6 = 0.75 vs c_tau 0.8075
    strong = t(np.zeros([4, 3]))
    h, mask = adamatch.pseudo_label_term(t(aligned), strong, c_tau)
    np.testing.assert_array_equal(mask.numpy(), [1, 0, 0, 0])
    np.testing.assert_allclose(h.numpy(), [np.log(3), 0, 0, 0], rtol=1e-5)
    # the pseudo-label is argmax of the ALIGNED probabilities: row 2 raw argmax 2, aligned argmax 0
    assert PROBS[2].argmax() == 2 and aligned[2].argmax() == 0


def test_adamatch_state_updates():
    algorithm = make(adamatch.AdaMatch, ema_p=0.9)
    _, logs = algorithm.loss(BATCH, 0)
    px, pu = softmax(TABLE[:2]), softmax(TABLE[2:6])
    np.testing.assert_allclose(algorithm.p_target.numpy(), 0.9 / 3 + 0.1 * px.mean(0), rtol=1e-6)
    np.testing.assert_allclose(algorithm.p_model.numpy(), pu.mean(0), rtol=1e-6)  # the first batch's mean
    assert float(logs['monitors/c_tau']) == pytest.approx(0.95 * px.max(1).mean(), rel=1e-6)
    algorithm.loss(BATCH, 1)
    np.testing.assert_allclose(algorithm.p_model.numpy(), pu.mean(0), rtol=1e-6)  # same batch: EMA stays


# ---- SimMatch

def test_simmatch_unfolding_aggregation_and_bank_by_hand():
    bank = np.array([[1., 0., 0.6], [0., 1., 0.8]])  # 3 labeled images, 2-d unit columns
    labels_bank = np.array([0, 1, 1])
    emb = np.array([[1., 0.], [0.6, 0.8]])
    probs_w = np.array([[0.7, 0.3], [0.4, 0.6]])
    combined, unfolded = simmatch.similarity_targets(t(probs_w), t(emb), t(bank), t(labels_bank, tf.int64), 0.5, 0.8)
    t0 = softmax(emb @ bank / 0.5)
    unf = t0 * probs_w[:, labels_bank]
    unf /= unf.sum(1, keepdims=True)
    agg = np.stack([t0[:, 0], t0[:, 1] + t0[:, 2]], 1)
    np.testing.assert_allclose(unfolded.numpy(), unf, rtol=1e-5)
    np.testing.assert_allclose(combined.numpy(), 0.8 * probs_w + 0.2 * agg, rtol=1e-5)
    np.testing.assert_allclose(combined.numpy().sum(1), [1, 1], rtol=1e-6)
    strong = np.array([[0., 1.], [1., 0.]])
    inst = simmatch.instance_term(unfolded, t(strong), t(bank), 0.5).numpy()
    np.testing.assert_allclose(inst, -(unf * log_softmax(strong @ bank / 0.5)).sum(1), rtol=1e-5)
    # bank: column 2 twice (mean of its embeddings), column 0 once, column 1 untouched; per-column unit norm
    e = np.array([[0., 1.], [1., 0.], [0., 1.]])
    new = simmatch.updated_bank(t(bank), t([2, 0, 2], tf.int64), t(e)).numpy()
    col0 = 0.7 * bank[:, 0] + 0.3 * e[1]
    col2 = 0.7 * bank[:, 2] + 0.3 * e[[0, 2]].mean(0)
    np.testing.assert_allclose(new[:, 0], col0 / np.linalg.norm(col0), rtol=1e-5)
    np.testing.assert_allclose(new[:, 1], bank[:, 1])
    np.testing.assert_allclose(new[:, 2], col2 / np.linalg.norm(col2), rtol=1e-5)
    np.testing.assert_allclose(np.linalg.norm(new, axis=0), [1, 1, 1], rtol=1e-5)


FEATURES = np.array([[1., 0.], [0., 1.], [1., 1.], [0.6, 0.8], [-1., 0.2], [0.3, -1.], [1., 0.1], [0.2, 1.],
                     [1., -1.], [0.5, 0.5]])  # the embeddings (before normalisation) of the TABLE images


def test_simmatch_loss_wires_the_rules():
    import keras
    inputs = keras.Input((1,))
    pool = keras.layers.Dense(4, name='pool')(inputs)
    model = keras.Model(inputs, keras.layers.Dense(3)(pool))
    algorithm = simmatch.SimMatch(fakes.fake_trainer(simmatch.SimMatch, model, nclass=3, labeled_labels=(2, 0, 1),
                                                     n_total=8, start_kimg=0, T=0.5, alpha=0.8, confidence=0.79))
    state = algorithm.build()
    assert set(state) == {'bank', 'labels_bank', 'queue', 'head'} and state['bank'].shape == (128, 3)
    np.testing.assert_allclose(np.linalg.norm(algorithm.bank.numpy(), axis=0), [1, 1, 1], rtol=1e-5)
    np.testing.assert_array_equal(algorithm.labels_bank.numpy(), [2, 0, 1])
    assert len(algorithm.extra_trainable_variables()) == 4  # two Dense layers of the head
    # the network replaced by tables, the head by the identity, a 2-d bank
    algorithm.classifier = lambda images, training: (tf.gather(t(TABLE), tf.cast(images[:, 0], tf.int32)),
                                                     tf.gather(t(FEATURES), tf.cast(images[:, 0], tf.int32)))
    algorithm.embed = lambda features: tf.math.l2_normalize(features, axis=1)
    bank = np.array([[1., 0., 0.6], [0., 1., 0.8]])
    algorithm.bank = tf.Variable(t(bank))
    loss, logs = algorithm.loss(BATCH, tf.constant(5, tf.int64))
    e = FEATURES / np.linalg.norm(FEATURES, axis=1, keepdims=True)
    p = softmax(TABLE[2:6])
    queue = np.full([32, 3], 1 / 3)
    queue[5] = p.mean(0)
    np.testing.assert_allclose(algorithm.queue.numpy(), queue, rtol=1e-6)
    p_w = p * (1 / 3 + 1e-6) / (queue.mean(0) + 1e-6)
    p_w /= p_w.sum(1, keepdims=True)
    labels_bank = np.array([2, 0, 1])
    t0 = softmax(e[2:6] @ bank / 0.5)
    unfolded = t0 * p_w[:, labels_bank]
    unfolded /= unfolded.sum(1, keepdims=True)
    aggregated = np.stack([t0[:, labels_bank == c].sum(1) for c in range(3)], 1)
    target = 0.8 * p_w + 0.2 * aggregated
    mask = target.max(1) >= 0.79  # (0.680, 0.823, 0.786, 0.802)
    l_u = (mask * -(target * log_softmax(TABLE[6:10])).sum(1)).mean()
    l_in = -(unfolded * log_softmax(e[6:10] @ bank / 0.5)).sum(1).mean()
    xe = -log_softmax(TABLE[:2])[[0, 1], [0, 1]].mean()
    assert 0 < mask.mean() < 1 and float(logs['monitors/mask']) == pytest.approx(mask.mean())
    assert float(logs['losses/in']) == pytest.approx(l_in, rel=1e-5)
    assert float(loss) == pytest.approx(xe + l_u + l_in, rel=1e-5)
    # after the loss: the columns of the labeled images 0 and 1 (x_index) move towards their embeddings
    new = bank.copy()
    for column, row in ((0, 0), (1, 1)):
        new[:, column] = 0.7 * bank[:, column] + 0.3 * e[row]
        new[:, column] /= np.linalg.norm(new[:, column])
    np.testing.assert_allclose(algorithm.bank.numpy(), new, rtol=1e-5)
    # before --start_kimg: p~ = p_w, no instance term
    late = simmatch.SimMatch(fakes.fake_trainer(simmatch.SimMatch, model, nclass=3, labeled_labels=(2, 0, 1),
                                                n_total=8, start_kimg=1, T=0.5, alpha=0.8, confidence=0.79))
    late.build()
    late.classifier, late.embed, late.bank = algorithm.classifier, algorithm.embed, tf.Variable(t(bank))
    late.queue.assign(algorithm.queue)  # row 5 already holds this batch's mean: the same p_w
    loss, logs = late.loss(BATCH, tf.constant(5, tf.int64))
    mask = p_w.max(1) >= 0.79  # (0.784, 0.910, 0.965, 0.986)
    l_u = (mask * -(p_w * log_softmax(TABLE[6:10])).sum(1)).mean()
    assert float(logs['losses/in']) == 0 and float(loss) == pytest.approx(xe + l_u, rel=1e-5)


# ---- Dash

def test_dash_schedule_and_selection_by_hand():
    def rho(step):
        return float(dash.dash_threshold(tf.constant(step, tf.int64), t(2.0), 10, 5))
    assert rho(0) == rho(10) == rho(14) == pytest.approx(2 * 1.0001)  # k = 0 until 5 steps after the warm-up
    assert rho(15) == pytest.approx(2 * 1.0001 / 1.27, rel=1e-6)
    assert rho(27) == pytest.approx(2 * 1.0001 / 1.27 ** 3, rel=1e-6)
    assert rho(10 + 5 * 20) == pytest.approx(0.05)  # 2 / 1.27^20 = 0.017 -> rho_min
    logits = np.array([[3., 0., 0.], [1., 0.5, 0.], [0., 0., 0.2]])
    q = softmax(logits / 0.5)
    h = -(q * log_softmax(logits)).sum(1)  # about 0.11, 0.89, 1.08
    targets, mask = dash.dash_selection(t(logits), t(1.0), 0.5)
    np.testing.assert_allclose(targets.numpy(), q, rtol=1e-5)
    np.testing.assert_array_equal(mask.numpy(), h <= 1.0)
    assert mask.numpy().tolist() == [1, 1, 0]
    targets, mask = dash.dash_selection(t(logits), t(0.05), 0.5)  # rho at rho_min: hard labels
    np.testing.assert_array_equal(targets.numpy(), np.eye(3)[[0, 0, 2]])
    np.testing.assert_array_equal(mask.numpy(), -log_softmax(logits)[[0, 1, 2], [0, 0, 2]] <= 0.05)


def test_dash_measures_rho_init_on_the_labeled_batches_of_the_warmup_end():
    algorithm = make(dash.Dash, batch=16, warmup_kimg=0.125, gamma_kimg=0.0625)  # warm-up 8 steps, window 6, 7
    xe = -log_softmax(TABLE[:2])[[0, 1], [0, 1]].mean()
    for step in range(6):
        _, logs = algorithm.loss(BATCH, tf.constant(step, tf.int64))
        assert float(algorithm.rho_count.numpy()) == 0 and float(logs['monitors/mask']) == 0
    for step in (6, 7):
        algorithm.loss(BATCH, tf.constant(step, tf.int64))
    assert float(algorithm.rho_count.numpy()) == 2
    assert float(algorithm.rho_init.numpy()) == pytest.approx(xe, rel=1e-6)
    loss, logs = algorithm.loss(BATCH, tf.constant(12, tf.int64))  # k = 1
    assert float(logs['monitors/rho']) == pytest.approx(max(1.0001 * xe / 1.27, 0.05), rel=1e-6)
    assert float(algorithm.rho_count.numpy()) == 2


# ---- label-bias add-ons

@pytest.mark.parametrize('cls, flag', [(softmatch.SoftMatch, 'CAI'), (dash.Dash, 'CAI'),
                                       (softmatch.SoftMatch, 'CADR'), (dash.Dash, 'CADR')])
def test_threshold_addons_are_refused_in_one_line(cls, flag):
    settings = settings_lib.resolve(cls.all_params(), {flag: True, 'CAP': True})
    with pytest.raises(utils.UserError) as caught:
        debias.check(settings, cls.label_bias, cls.__name__)
    assert str(caught.value).startswith(f'--{flag} needs') and '\n' not in str(caught.value)


@pytest.mark.parametrize('cls', [freematch.FreeMatch, adamatch.AdaMatch, softmatch.SoftMatch, dash.Dash])
def test_addons_give_finite_losses(cls):
    batch = dict(BATCH, x_strong=rows(6, 7))
    cases = [dict(CAP=True), dict(debiased=True), dict(mnar_estimate='moment')]
    if cls.label_bias.threshold:
        cases += [dict(CAP=True, CAI=True, CADR=True)]
    for settings in cases:
        settings_lib_settings = settings_lib.resolve(cls.all_params(), settings)
        debias.check(settings_lib_settings, cls.label_bias, cls.__name__)
        algorithm = make(cls, warmup_kimg=0, **settings) if cls is dash.Dash else make(cls, **settings)
        loss, _ = algorithm.loss(batch, tf.constant(3, tf.int64))
        assert np.isfinite(float(loss)), (cls, settings)
    assert make(cls, debiased=True).views()[0] == {'x': 'd', 'x_strong': 'rac'}


# ---- short runs on the tiny synthetic data

RUNS = {
    'freematch': (freematch.FreeMatch, dict(xla=True), ('time_p', 'p_model', 'label_hist')),
    'softmatch': (softmatch.SoftMatch, dict(), ('p_model', 'mu', 'var')),
    'adamatch': (adamatch.AdaMatch, dict(), ('p_target', 'p_model')),
    'simmatch': (simmatch.SimMatch, dict(start_kimg=0.0625, debiased=True), ('bank', 'queue')),
    'dash': (dash.Dash, dict(warmup_kimg=0.125, gamma_kimg=0.0625), ('rho_init',)),
}


@pytest.mark.parametrize('name', sorted(RUNS))
def test_short_run_trains_and_changes_the_state(name, tiny_data, tmp_path):  # noqa: F811
    cls, overrides, state = RUNS[name]
    values = {**SHORT, 'train_dir': str(tmp_path), 'save_kimg': 0.25, 'deterministic': False, **overrides}
    trainer = train.Trainer(cls, settings_lib.resolve(cls.all_params(), values))
    before = {n: getattr(trainer.algorithm, n).numpy().copy() for n in state}
    result = trainer.train()  # a NaN or infinite loss stops it with TrainingDiverged
    assert result['step'] == 16 and np.isfinite(result['accuracy'])
    for n in state:
        after = getattr(trainer.algorithm, n).numpy()
        assert np.all(np.isfinite(after)) and not np.array_equal(before[n], after), n
    if name == 'dash':
        assert 0 < float(trainer.algorithm.rho_init.numpy()) < 10



# 250 Fashion-MNIST labels, WRN-10 with 8 filters, 192 steps of 32 labeled and 32 unlabeled images (weak views
# only), as tests/test_flexmatch.py; the warm-up and start settings scaled to the short run.
LEARN = dict(dataset='fashion_mnist.1@250-1', filters=8, repeat=1, batch=32, ema=0.9, bn_momentum=0.9, uratio=1,
             augment='d.d.d', train_kimg=6, report_kimg=6, save_kimg=6)


MEASURED = {freematch.FreeMatch: 48.3, softmatch.SoftMatch: 48.15, adamatch.AdaMatch: 58.32,
            simmatch.SimMatch: 61.9, dash.Dash: 62.54}  # EMA test accuracy %, chance 10%


def test_every_method_learns_on_fashion_mnist(fashion_mnist, tmp_path):
    extra = {simmatch.SimMatch: dict(start_kimg=1), dash.Dash: dict(warmup_kimg=2, gamma_kimg=1)}
    for cls, measured in MEASURED.items():
        result = cls.run(train_dir=str(tmp_path), **LEARN, **extra.get(cls, {}))
        assert result['step'] == 192 and result['accuracy'] > measured - 5, (cls.__name__, result)

def test_batches_carry_the_labeled_positions(tiny_data):  # noqa: F811
    from libml import data
    from test_resume import TINY_DATASET
    ssl = data.load(TINY_DATASET)
    for element in ssl.input_stream(16, 32, seed=3, end_step=3).as_numpy_iterator():
        assert element['x_index'].shape == (16,) and element['x_index'].max() < len(ssl.labeled)
        np.testing.assert_array_equal(np.asarray(ssl.labeled.labels)[element['x_index']], element['label'])
        np.testing.assert_array_equal(np.asarray(ssl.labeled.images)[element['x_index']], element['x_images'])


MULTI_REPLICA = r'''
import json, sys
sys.path[:0] = [sys.argv[1], sys.argv[1] + '/tests']
import numpy as np
import tensorflow as tf
cpu = tf.config.list_physical_devices('CPU')[0]
tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
import keras
import fakes, adamatch, dash, freematch, simmatch, softmatch
from fakes import TableModel
from test_modern_thresholds import BATCH, FEATURES, TABLE
STATE = {'FreeMatch': ('time_p', 'p_model', 'label_hist'), 'SoftMatch': ('p_model', 'mu', 'var'),
         'AdaMatch': ('p_target', 'p_model'), 'Dash': ('rho_init',), 'SimMatch': ('bank', 'queue')}
inputs = keras.Input((1,))
FEATURED = keras.Model(inputs, keras.layers.Dense(3)(keras.layers.Dense(4, name='pool')(inputs)))
WIDE = np.pad(FEATURES, [(0, 0), (0, 126)]).astype(np.float32)  # 128-d embeddings for the built 128 x n_l bank


def tables(algorithm):
    # SimMatch's network and projection head replaced by the tables (as test_simmatch_loss_wires_the_rules)
    algorithm.classifier = lambda images, training: (tf.gather(tf.constant(TABLE, tf.float32), tf.cast(images[:, 0], tf.int32)),
                                                     tf.gather(tf.constant(WIDE), tf.cast(images[:, 0], tf.int32)))
    algorithm.embed = lambda features: tf.math.l2_normalize(features, axis=1)
SETTINGS = dict(ema_p=0.5, batch=16, warmup_kimg=0.0625, gamma_kimg=1, start_kimg=0)  # Dash: warm-up 4 steps, window step 3
strategy = tf.distribute.MirroredStrategy(['/cpu:0', '/cpu:1'])
out = {}
for cls in (freematch.FreeMatch, softmatch.SoftMatch, adamatch.AdaMatch, dash.Dash, simmatch.SimMatch):
    settings = {k: v for k, v in SETTINGS.items() if k in cls.all_params()}
    model = FEATURED if cls is simmatch.SimMatch else TableModel(TABLE)
    batch = dict(BATCH, x_index=tf.constant([1, 1], tf.int64)) if cls is simmatch.SimMatch else BATCH  # one column twice
    single = cls(fakes.fake_trainer(cls, model, nclass=3, n_total=8, **settings))
    single.build()
    if cls is simmatch.SimMatch:
        tables(single)
    single.loss(batch, tf.constant(3, tf.int64))
    with strategy.scope():
        split = cls(fakes.fake_trainer(cls, model, nclass=3, n_total=8, **settings))
        split.build()
    if cls is simmatch.SimMatch:
        tables(split)
    def half(ctx):
        r = ctx.replica_id_in_sync_group
        return {k: v[r:r + 1] if k in ('x', 'label', 'x_index') else v[2 * r:2 * r + 2] for k, v in batch.items()}
    values = strategy.experimental_distribute_values_from_function(half)
    tf.function(lambda v: strategy.run(lambda b: split.loss(b, tf.constant(3, tf.int64))[0], (v,)))(values)
    out[cls.__name__] = {n: [[float(x) for x in np.ravel(getattr(single, n).numpy())],
                             [[float(x) for x in np.ravel(c.numpy())] for c in getattr(split, n).values]]
                         for n in STATE[cls.__name__]}
print(json.dumps(out))
'''


def test_statistics_are_taken_over_every_replica():
    """Two replicas, each with half the batch, end with the state of one replica holding all of it."""
    import json
    import os
    import subprocess
    import sys
    from conftest import ROOT
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL='3', CUDA_VISIBLE_DEVICES='')
    done = subprocess.run([sys.executable, '-c', MULTI_REPLICA, ROOT], capture_output=True, text=True, env=env,
                          timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    out = json.loads(done.stdout.strip().splitlines()[-1])
    assert sorted(out) == ['AdaMatch', 'Dash', 'FreeMatch', 'SimMatch', 'SoftMatch']
    for name, state in out.items():
        for variable, (single, copies) in state.items():
            assert len(copies) == 2, (name, variable)
            for copy in copies:
                np.testing.assert_allclose(copy, single, rtol=1e-5, err_msg=f'{name}.{variable}')
    assert out['Dash']['rho_init'][0][0] > 0
    # SimMatch: both replicas' labeled image is column 1: it moves to the mean of their two embeddings
    start = tf.math.l2_normalize(tf.random.stateless_normal([128, 3], [0, 23]), axis=0).numpy()  # build()'s bank
    wide = np.pad(FEATURES[:2], [(0, 0), (0, 126)])
    column = 0.7 * start[:, 1] + 0.3 * (wide / np.linalg.norm(wide, axis=1, keepdims=True)).mean(0)
    expected = start.copy()
    expected[:, 1] = column / np.linalg.norm(column)
    np.testing.assert_allclose(np.reshape(out['SimMatch']['bank'][0], (128, 3)), expected, rtol=1e-5, atol=1e-6)
