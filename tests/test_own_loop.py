"""Each method's loss outside the trainer: every entry script exposes a pure `<module>_loss`, the README's
own-loop example runs, FixMatch's by hand, and the stateful methods return the state their class assigns."""
import importlib
import math
import os
import re

import numpy as np
import pytest
import tensorflow as tf

import adamatch
import dash
import fakes
import fixmatch
import freematch
import pseudo_label
import softmatch
from fakes import TableModel, rows
from libml import commands
from libml import losses
from reference import softmax

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ln = math.log


def t(x, dtype=tf.float32):
    return tf.constant(x, dtype)


def test_every_entry_script_exposes_its_pure_loss():
    missing = []
    for module, cls in commands.entry_scripts(ROOT):
        function = getattr(importlib.import_module(module), f'{module}_loss', None)
        if not callable(function) or not function.__doc__:
            missing.append(f'{module}.py ({cls})')
    assert not missing, f'no documented pure loss function <module>_loss in {missing}'
    assert len(commands.entry_scripts(ROOT)) >= 17


def readme_block(heading):
    """The first ```python block after `heading` in README.md."""
    readme = open(os.path.join(ROOT, 'README.md')).read()
    section = readme[readme.index(heading):]
    return re.search(r'```python\n(.*?)```', section, re.S).group(1)


def test_readme_own_loop_example_trains_with_fit():
    code = readme_block("## Use a method's loss in your own loop")
    assert 'fixmatch_loss' in code and 'train_step' in code and '.fit(' in code
    namespace = {}
    exec(compile(code, 'README own loop', 'exec'), namespace)  # noqa: S102 (the README's own example)
    history = namespace['history'].history
    assert len(history['loss']) == 2 and all(np.isfinite(history['loss']))
    assert all(0 <= m <= 1 for m in history['mask']) and all(np.isfinite(history['xeu']))
    assert 0 <= namespace['accuracy'] <= 1
    assert int(namespace['model'].optimizer.iterations) == 8  # 2 epochs of 4 steps


# FixMatch by hand, tau = 0.75: the weak rows give max p 0.8 (class 0), 1/3 (masked) and 0.9 (class 1).
LABELS = [0, 2]
LOGITS_X = [[0., 0., 0.], [ln(4), 0., ln(4)]]                   # H = ln 3 and ln(9/4)
LOGITS_WEAK = [[ln(8), 0., 0.], [0., 0., 0.], [0., ln(18), 0.]]  # p = (.8, .1, .1), 1/3 each, (.05, .9, .05)
LOGITS_STRONG = [[0., ln(3), 0.], [5., -3., 1.], [ln(2), ln(2), 0.]]  # H(0) = ln 5, -, H(1) = ln(5/2)


def test_fixmatch_loss_by_hand():
    loss, logs = fixmatch.fixmatch_loss(t(LABELS, tf.int64), t(LOGITS_X), t(LOGITS_WEAK), t(LOGITS_STRONG),
                                        confidence=0.75, wu=0.5)
    xe = (ln(3) + ln(9 / 4)) / 2
    xeu = (ln(5) + 0 + ln(5 / 2)) / 3
    assert float(logs['losses/xe']) == pytest.approx(xe, rel=1e-6)
    assert float(logs['losses/xeu']) == pytest.approx(xeu, rel=1e-6)
    assert float(logs['monitors/mask']) == pytest.approx(2 / 3, rel=1e-6)
    assert float(loss) == pytest.approx(xe + 0.5 * xeu, rel=1e-6)
    # per-class thresholds (0.7, 0.95, 0.5): row 0 (0.8 for class 0) passes, row 2 (0.9 for class 1) does not
    _, logs = fixmatch.fixmatch_loss(t(LABELS, tf.int64), t(LOGITS_X), t(LOGITS_WEAK), t(LOGITS_STRONG),
                                     confidence=t([0.7, 0.95, 0.5]))
    assert float(logs['losses/xeu']) == pytest.approx(ln(5) / 3, rel=1e-6)
    assert float(logs['monitors/mask']) == pytest.approx(1 / 3, rel=1e-6)


def test_fixmatch_loss_gradient_flows_through_the_strong_view_only():
    weak, strong, labeled = (tf.Variable(v) for v in (LOGITS_WEAK, LOGITS_STRONG, LOGITS_X))
    with tf.GradientTape() as tape:
        loss, _ = fixmatch.fixmatch_loss(t(LABELS, tf.int64), labeled, weak, strong, confidence=0.75, wu=1.0)
    grad_weak, grad_strong, grad_x = tape.gradient(loss, [weak, strong, labeled])
    assert grad_weak is None  # the pseudo-labels are constants
    # d/dz H(c, z) = softmax(z) - onehot(c), over 3 unlabeled images; the masked row has none
    expected = np.zeros([3, 3])
    expected[0] = (softmax(np.array(LOGITS_STRONG[0])) - [1, 0, 0]) / 3
    expected[2] = (softmax(np.array(LOGITS_STRONG[2])) - [0, 1, 0]) / 3
    np.testing.assert_allclose(grad_strong.numpy(), expected, atol=1e-6)
    assert np.abs(grad_x.numpy()).sum() > 0


def test_the_class_and_the_function_give_the_same_loss():
    table = np.array(LOGITS_X + LOGITS_WEAK + LOGITS_STRONG)
    algorithm = fixmatch.FixMatch(fakes.fake_trainer(fixmatch.FixMatch, TableModel(table), confidence=0.75, wu=0.5))
    batch = dict(x=rows(0, 1), label=t(LABELS, tf.int64), u_weak=rows(2, 3, 4), u_strong=rows(5, 6, 7))
    loss, logs = algorithm.loss(batch, 0)
    expected, expected_logs = fixmatch.fixmatch_loss(t(LABELS, tf.int64), t(LOGITS_X), t(LOGITS_WEAK),
                                                     t(LOGITS_STRONG), 0.75, 0.5)
    assert float(loss) == float(expected)
    assert {k: float(v) for k, v in logs.items()} == {k: float(v) for k, v in expected_logs.items()}


# ---- Stateful methods: the state the function returns is what the class assigns.

TABLE = np.array([[2., 0., 0.], [0., 1., 0.], [2., 0., 0.], [0., 3., 0.], [0., 0., 4.], [5., 0., 0.],
                  [0., 1., 0.], [1., 0., 2.], [0., 0., 1.], [3., 0., 1.]])  # 0-1 x, 2-5 weak u, 6-9 strong u
BATCH = dict(x=rows(0, 1), label=tf.constant([0, 1], tf.int64), u_weak=rows(2, 3, 4, 5), u_strong=rows(6, 7, 8, 9),
             x_index=tf.constant([0, 1], tf.int64), u_index=tf.constant([0, 1, 2, 3], tf.int64))
X, WEAK, STRONG = (t(TABLE[i]) for i in ([0, 1], [2, 3, 4, 5], [6, 7, 8, 9]))


def make(cls, **settings):
    algorithm = cls(fakes.fake_trainer(cls, TableModel(TABLE), nclass=3, n_total=8, **settings))
    algorithm.build()
    return algorithm


def test_freematch_returns_the_state_its_class_assigns():
    algorithm = make(freematch.FreeMatch, ema_p=0.9, lambda_f=0.5)
    uniform = t([1 / 3] * 3)
    loss, logs, (p_model, label_hist, time_p) = freematch.freematch_loss(
        BATCH['label'], X, WEAK, STRONG, uniform, uniform, t(1 / 3), ema_p=0.9, lambda_f=0.5)
    class_loss, _ = algorithm.loss(BATCH, 0)
    assert float(class_loss) == float(loss)
    np.testing.assert_array_equal(algorithm.p_model.numpy(), p_model.numpy())
    np.testing.assert_array_equal(algorithm.label_hist.numpy(), label_hist.numpy())
    assert float(algorithm.time_p.numpy()) == float(time_p)
    p = softmax(TABLE[2:6])  # by hand: one EMA step from uniform, m = 0.9
    assert float(time_p) == pytest.approx(0.3 + 0.1 * p.max(1).mean(), rel=1e-6)
    np.testing.assert_allclose(label_hist.numpy(), 0.3 + 0.1 * np.array([2, 1, 1]) / 4, rtol=1e-6)
    assert float(logs['monitors/time_p']) == float(time_p)


def test_softmatch_returns_the_state_its_class_assigns():
    algorithm = make(softmatch.SoftMatch, ema_p=0.9)
    _, _, (p_model, mu, var, started) = softmatch.softmatch_loss(
        BATCH['label'], X, WEAK, STRONG, t([1 / 3] * 3), t(1 / 3), t(1.), t(0.), ema_p=0.9)
    algorithm.loss(BATCH, 0)
    np.testing.assert_array_equal(algorithm.p_model.numpy(), p_model.numpy())
    assert (float(algorithm.mu.numpy()), float(algorithm.var.numpy())) == (float(mu), float(var))
    assert float(algorithm.started.numpy()) == float(started) == 1.0
    p = softmax(TABLE[2:6])  # first step: p_model is the batch mean itself
    np.testing.assert_allclose(p_model.numpy(), p.mean(0), rtol=1e-6)
    aligned = p * (1 / 3 + 1e-6) / (p.mean(0) + 1e-6)
    confidence = (aligned / aligned.sum(1, keepdims=True)).max(1)
    assert float(mu) == pytest.approx(0.9 / 3 + 0.1 * confidence.mean(), rel=1e-5)
    assert float(var) == pytest.approx(0.9 + 0.1 * confidence.var(ddof=1), rel=1e-5)


def test_adamatch_returns_the_state_its_class_assigns():
    algorithm = make(adamatch.AdaMatch, ema_p=0.9)
    uniform = t([1 / 3] * 3)
    loss, logs, (p_target, p_model, started) = adamatch.adamatch_loss(
        BATCH['label'], X, WEAK, STRONG, uniform, uniform, t(0.), confidence=0.95, ema_p=0.9)
    class_loss, class_logs = algorithm.loss(BATCH, 0)
    assert float(class_loss) == float(loss)
    np.testing.assert_array_equal(algorithm.p_target.numpy(), p_target.numpy())
    np.testing.assert_array_equal(algorithm.p_model.numpy(), p_model.numpy())
    assert float(algorithm.started.numpy()) == float(started) == 1.0
    p_l = softmax(TABLE[0:2])
    np.testing.assert_allclose(p_target.numpy(), 0.3 + 0.1 * p_l.mean(0), rtol=1e-6)
    assert float(logs['monitors/c_tau']) == pytest.approx(0.95 * p_l.max(1).mean(), rel=1e-6)


def test_the_default_means_are_the_papers():
    """losses.Means: mean_l H and (wu mean_u h, mean_u h)."""
    means = losses.Means(wu=2.0)
    assert float(means.labeled(t([1., 3.]), None)) == 2.0
    weighted, mean_u = means.unlabeled(t([1., 2., 6.]))
    assert (float(weighted), float(mean_u)) == (6.0, 3.0)


def test_dash_loss_measures_rho_init_then_selects_by_hand():
    """warm-up 4 steps: step 3 (the last quarter) measures mean_l H into rho_sum; the unlabeled term is off
    until step 4, where rho = C rho_init (k = 0) selects the weak rows whose own loss H(q, weak) <= rho."""
    labels = t([0, 1], tf.int64)
    xe = float(np.mean([-np.log(softmax(TABLE[0])[0]), -np.log(softmax(TABLE[1])[1])]))
    loss, logs, (rho_sum, rho_count, rho_init) = dash.dash_loss(labels, X, WEAK, STRONG, t(3, tf.int64), t(0.),
                                                                t(0.), warmup_steps=4, every_steps=2)
    assert (float(rho_sum), float(rho_count), float(rho_init)) == pytest.approx((xe, 1., xe), rel=1e-6)
    assert float(loss) == pytest.approx(xe, rel=1e-6) and float(logs['monitors/mask']) == 0
    # step 4, from rho_sum 0.2 over 1 step: past the window, rho_init 0.2, rho = 0.20002 passes rows 1-3
    _, logs, (rho_sum, rho_count, rho_init) = dash.dash_loss(labels, X, WEAK, STRONG, t(4, tf.int64), t(0.2), t(1.),
                                                             warmup_steps=4, every_steps=2, wu=1.0)
    assert (float(rho_sum), float(rho_count), float(rho_init)) == pytest.approx((0.2, 1., 0.2), rel=1e-6)
    rho = 1.0001 * 0.2
    assert float(logs['monitors/rho']) == pytest.approx(rho, rel=1e-6)
    q = softmax(TABLE[2:6] / 0.5)  # soft targets while rho > 0.05
    own_loss = -(q * np.log(softmax(TABLE[2:6]))).sum(1)
    np.testing.assert_array_equal(own_loss <= rho, [False, True, True, True])  # own losses .31, .11, .04, .01
    assert float(logs['monitors/mask']) == pytest.approx(0.75, rel=1e-6)
    h = -(q * np.log(softmax(TABLE[6:10]))).sum(1) * (own_loss <= rho)
    assert float(logs['losses/xeu']) == pytest.approx(h.mean(), rel=1e-5)


def test_pseudo_label_loss_ramps_its_unlabeled_term():
    """r = 0.25: L = xe + 0.25 wu mean_u[1(max p >= tau) H(argmax p, u)] on the one unlabeled view."""
    labels = t([0, 1], tf.int64)
    loss, logs = pseudo_label.pseudo_label_loss(labels, X, WEAK, threshold=0.9, wu=2.0, ramp=0.25)
    p = softmax(TABLE[2:6])
    h = -np.log(p.max(1)) * (p.max(1) >= 0.9)
    xe = np.mean([-np.log(softmax(TABLE[0])[0]), -np.log(softmax(TABLE[1])[1])])
    assert float(logs['monitors/mask']) == pytest.approx(np.mean(p.max(1) >= 0.9))
    assert float(loss) == pytest.approx(xe + 0.25 * 2.0 * h.mean(), rel=1e-6)
    assert float(logs['monitors/wu']) == pytest.approx(0.5)
