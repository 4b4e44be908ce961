"""Label-bias methods: class-distribution EMA, CAI thresholds, CAP weights (both forms), the CADR
term, the Sportisse et al. moment estimate and MNAR risk, and resume of the estimates."""
import math

import numpy as np
import pytest
import tensorflow as tf

import fixmatch
import fully_supervised
import ict
import mean_teacher
import mixmatch
import pi_model
import pseudo_label
import remixmatch
import uda
import vat
from libml import debias
from libml import losses
from libml import settings as settings_lib
from libml import splits
from libml import train
from libml import utils
import fakes
from reference import softmax
from test_train import TINY, nll, run_tiny, trained_state


def make_fixmatch(logits=None, labeled_labels=(0, 1, 2, 2), n_total=100, **settings):
    """FixMatch on a fake trainer: fixed logits from the model, a labeled split with the given classes
    and a training set of n_total images (labeled ones included)."""
    nclass = 3 if logits is None else logits.shape[1]
    trainer = fakes.fake_trainer(fixmatch.FixMatch, lambda x, training: logits, nclass=nclass,
                                 labeled_labels=labeled_labels, n_total=n_total, label_probs=[0.1, 0.2, 0.3],
                                 **settings)
    return fixmatch.FixMatch(trainer)


def test_class_distribution_ema_starts_uniform():
    algorithm = make_fixmatch(CAI=True)
    np.testing.assert_allclose(algorithm.bias.p_hat.numpy(), [1 / 3] * 3)
    logits = [[2., 0., 0.], [0., 1., 3.]]
    mean = np.mean([softmax(r) for r in logits], axis=0)
    algorithm.bias.update(tf.constant(logits))
    np.testing.assert_allclose(algorithm.bias.p_hat.numpy(), 0.99 / 3 + 0.01 * mean, rtol=1e-6)
    algorithm.bias.update(tf.constant(logits))
    np.testing.assert_allclose(algorithm.bias.p_hat.numpy(), 0.99 * (0.99 / 3 + 0.01 * mean) + 0.01 * mean, rtol=1e-6)


def test_cai_thresholds_and_mask():
    algorithm = make_fixmatch(CAI=True)
    p_hat = tf.constant([0.5, 0.3, 0.2])
    algorithm.bias.p_hat.assign(p_hat)
    thresholds = algorithm.bias.thresholds(0.95).numpy()
    np.testing.assert_allclose(thresholds, [0.95, 0.95 * math.sqrt(0.6), 0.95 * math.sqrt(0.4)], rtol=1e-6)
    # confidence 0.65 passes only where the predicted class has a low threshold (class 2: 0.601)
    weak = tf.math.log(tf.constant([[0.65, 0.2, 0.15], [0.15, 0.2, 0.65]]))
    _, mask = losses.pseudo_label_term(weak, tf.zeros([2, 3]), thresholds)
    np.testing.assert_array_equal(mask.numpy(), [0, 1])
    assert make_fixmatch().bias.thresholds(0.95) == 0.95  # without --CAI: the global tau


def test_cap_weights_and_both_forms_by_hand():
    # labeled classes [0, 1, 2, 2], n = 100, p_hat = [0.5, 0.3, 0.2] -> q = n_lk / (n p_k) = [0.02, 1/30, 0.1]
    labels = tf.constant([0, 1, 2, 2])
    algorithm = make_fixmatch(CAP=True)
    algorithm.bias.p_hat.assign([0.5, 0.3, 0.2])
    q = np.array([1 / 50, 1 / 30, 2 / 20])
    np.testing.assert_allclose(algorithm.bias.labeling_probabilities().numpy(), q, rtol=1e-5)
    inverse = 1 / q[[0, 1, 2, 2]]                       # [50, 30, 10, 10]
    weights = inverse / inverse.mean()                  # [2, 1.2, 0.4, 0.4]
    np.testing.assert_allclose(algorithm.bias.propensity_weights(labels).numpy(), weights, rtol=1e-5)
    assert weights.mean() == pytest.approx(1.0)
    ce = tf.constant([0.5, 1.0, 2.0, 0.1])
    released = algorithm.bias.labeled(ce, labels)
    assert float(released) == pytest.approx(np.mean(ce.numpy() - np.log(weights)), rel=1e-5)
    ipw = make_fixmatch(CAP=True, cap_form='ipw')
    ipw.bias.p_hat.assign([0.5, 0.3, 0.2])
    assert float(ipw.bias.labeled(ce, labels)) == pytest.approx(np.mean(weights * ce.numpy()), rel=1e-5)


def test_released_cap_leaves_the_gradient_unweighted():
    labels = tf.constant([0, 1, 2, 2])
    logits = tf.Variable([[1., 0., 0.], [0., 2., 0.], [0., 0., 1.], [1., 1., 0.]])
    gradients = {}
    for form in ('none', 'released', 'ipw'):
        algorithm = make_fixmatch(CAP=form != 'none', cap_form='ipw' if form == 'ipw' else 'released')
        if form != 'none':
            algorithm.bias.p_hat.assign([0.5, 0.3, 0.2])
        with tf.GradientTape() as tape:
            loss = algorithm.bias.labeled(losses.cross_entropy(labels, logits), labels)
        gradients[form] = tape.gradient(loss, logits).numpy()
    np.testing.assert_allclose(gradients['released'], gradients['none'], rtol=1e-6)
    assert not np.allclose(gradients['ipw'], gradients['none'])


def test_cadr_loss_by_hand():
    labeled = [[6., 0., 0.], [0., 0., 1.]]        # class 0 confident (0.995); class 2 not (0.576)
    labeled_strong = [[1., 2., 0.], [0., 0., 3.]]
    weak = [[10., 0., 0.], [1., 0., 0.]]
    strong = [[0., 1., 0.], [3., 3., 3.]]
    logits = tf.constant(labeled + labeled_strong + weak + strong)
    algorithm = make_fixmatch(logits, labeled_labels=(0, 2), n_total=100, CAP=True, CADR=True, cap_form='ipw',
                              wu=1.0)
    batch = dict(x=tf.zeros([2, 1]), x_strong=tf.zeros([2, 1]), label=tf.constant([0, 2]),
                 u_weak=tf.zeros([2, 1]), u_strong=tf.zeros([2, 1]))
    loss, logs = algorithm.loss(batch, 0)
    p_hat = 0.99 / 3 + 0.01 * np.mean([softmax(weak[0]), softmax(weak[1])], axis=0)
    q = np.array([1, 0, 1]) / (100 * p_hat)             # one labeled image of class 0 and one of class 2
    inverse = 1 / q[[0, 2]]
    w = inverse / inverse.mean()
    xe = np.mean(w * [nll(labeled[0], 0), nll(labeled[1], 2)])
    h_u = (nll(strong[0], 0) + 0) / 2
    h_l = np.array([nll(labeled_strong[0], 0), 0.0])   # imputed: pseudo-label 0 on the first, masked second
    expected = xe + 1.0 * h_u - 1.0 * np.mean(w * h_l)
    assert float(loss) == pytest.approx(expected, rel=1e-5)
    np.testing.assert_allclose(algorithm.bias.p_hat.numpy(), p_hat, rtol=1e-6)


def check(cls, **settings):
    debias.check(settings_lib.resolve(cls.all_params(), settings), cls.label_bias, cls.__name__)


def test_invalid_combinations():
    with pytest.raises(utils.UserError, match='--CADR needs --CAP'):
        check(fixmatch.FixMatch, CADR=True)
    with pytest.raises(utils.UserError, match='drop --debiased'):
        check(fixmatch.FixMatch, CAP=True, CADR=True, debiased=True)
    with pytest.raises(utils.UserError, match='choose one'):
        check(fixmatch.FixMatch, CAP=True, mnar_estimate='moment')
    # corrections an algorithm cannot take: one line naming what is missing
    with pytest.raises(utils.UserError, match='--CAI needs a confidence threshold, which MixMatch does not have'):
        check(mixmatch.MixMatch, CAI=True)
    with pytest.raises(utils.UserError, match='--CAP needs a plain labeled cross-entropy, which ReMixMatch'):
        check(remixmatch.ReMixMatch, CAP=True)
    with pytest.raises(utils.UserError, match='--CADR needs'):
        check(pi_model.PiModel, CAP=True, CADR=True)
    with pytest.raises(utils.UserError, match='--debiased needs'):
        check(fully_supervised.FullySupervised, debiased=True)
    for cls in (fixmatch.FixMatch, uda.UDA, pseudo_label.PseudoLabel):  # every thresholded method takes them all
        check(cls, CAP=True, CAI=True, CADR=True)
    for cls in (pi_model.PiModel, mean_teacher.MeanTeacher, vat.VAT, ict.ICT):
        check(cls, CAP=True)
        check(cls, mnar_estimate='moment')


def test_moment_estimate_recovers_known_labeling_probabilities():
    phi = np.array([0.3, 0.1, 0.05])
    pool = np.repeat(np.arange(3), [6000, 3000, 1000])
    labeled = pool[splits.pick_mnar(pool, phi, seed=7)]
    algorithm = make_fixmatch(labeled_labels=labeled, n_total=len(pool), mnar_estimate='moment')
    rng = np.random.default_rng(0)
    for _ in range(800):  # a model that predicts the true class of every unlabeled image
        batch = pool[rng.integers(0, len(pool), 64)]
        algorithm.bias.update(tf.one_hot(batch, 3) * 30.0)
    np.testing.assert_allclose(algorithm.bias.p_hat.numpy(), [0.6, 0.3, 0.1], atol=0.02)
    estimate = algorithm.bias.labeling_probabilities().numpy()
    np.testing.assert_allclose(estimate, phi, rtol=0.12)
    scalars = algorithm.report_scalars()
    assert scalars['mnar/phi_true/002'] == 0.3 and scalars['mnar/phi_estimate/000'] == pytest.approx(estimate[0])


def test_mnar_risk_by_hand():
    labeled = [[6., 0., 0.], [0., 0., 1.]]
    labeled_strong = [[1., 2., 0.], [0., 0., 3.]]
    weak = [[10., 0., 0.], [1., 0., 0.]]
    strong = [[0., 1., 0.], [3., 3., 3.]]
    logits = tf.constant(labeled + labeled_strong + weak + strong)
    algorithm = make_fixmatch(logits, labeled_labels=(0, 2), n_total=10, mnar_estimate='moment', wu=0.5)
    batch = dict(x=tf.zeros([2, 1]), x_strong=tf.zeros([2, 1]), label=tf.constant([0, 2]),
                 u_weak=tf.zeros([2, 1]), u_strong=tf.zeros([2, 1]))
    loss, _ = algorithm.loss(batch, 0)
    p_hat = 0.99 / 3 + 0.01 * np.mean([softmax(weak[0]), softmax(weak[1])], axis=0)
    phi = np.clip(np.array([1, 0, 1]) / (10 * p_hat), 1e-3, 1)[[0, 2]]
    n_l, n = 2, 10
    supervised = n_l / n * np.mean(np.array([nll(labeled[0], 0), nll(labeled[1], 2)]) / phi)
    h_u = (nll(strong[0], 0) + 0) / 2
    h_l = np.array([nll(labeled_strong[0], 0), 0.0])
    expected = supervised + 0.5 * (h_u - n_l / (n - n_l) * np.mean(h_l * (1 - phi) / phi))
    assert float(loss) == pytest.approx(expected, rel=1e-5)


def test_class_distribution_is_checkpointed_and_restored(fashion_mnist, tmp_path):
    result = run_tiny(tmp_path, CAI=True, train_kimg=0.25, report_kimg=0.25)
    saved = trained_state(result['run_dir'])['algorithm/p_hat/.ATTRIBUTES/VARIABLE_VALUE']
    assert saved.sum() == pytest.approx(1, abs=1e-5) and not np.allclose(saved, 0.1)
    trainer = train.Trainer(fixmatch.FixMatch, settings_lib.resolve(
        fixmatch.FixMatch.all_params(), dict(TINY, dataset='fashion_mnist.1@40-1', train_dir=str(tmp_path),
                                             CAI=True, train_kimg=0.25, report_kimg=0.25, save_kimg=0.25)))
    assert trainer.restore() == 16
    np.testing.assert_array_equal(trainer.algorithm.bias.p_hat.numpy(), saved)
