"""ABC: balancing rates and Bernoulli masks with fixed draws, the loss on hand-made logits, one-line refusals,
and a tiny synthetic FixMatch --abc run whose evaluation, evaluate.py and export.py use the auxiliary head
(exact resume: test_resume.py)."""
import os
import sys

import numpy as np
import pytest
import tensorflow as tf

import fixmatch
import mixmatch
import uda
from libml import abc_head
from libml import debias
from libml import settings as settings_lib
from libml import state
from libml import train
from libml import utils
from reference import nll_rows, softmax
from conftest import ROOT
from test_resume import SHORT, tiny_data, tiny_data_root  # noqa: F401 (fixtures)

sys.path.insert(0, os.path.join(ROOT, 'scripts'))
import evaluate as evaluate_script  # noqa: E402
import export as export_script  # noqa: E402


def test_balancing_rates_by_hand():
    np.testing.assert_allclose(abc_head.balancing_rates([100, 50, 10]), [0.1, 0.2, 1.0])
    np.testing.assert_allclose(abc_head.balancing_rates([1500, 15, 0]), [0.01, 1.0, 1.0])  # no label: 1


RATES = tf.constant([0.1, 0.2, 1.0])


def test_labeled_mask_with_fixed_draws():
    mask = abc_head.labeled_mask(tf.constant([0, 1, 2, 0, 1]), RATES, tf.constant([.05, .3, .99, .2, .1]))
    np.testing.assert_array_equal(mask.numpy(), [1, 0, 1, 0, 1])  # u < r[y]: .05 < .1, .3 >= .2, ...


def test_unlabeled_mask_with_fixed_draws():
    probs = tf.constant([[.97, .02, .01], [.01, .96, .03], [.5, .4, .1], [.01, .01, .98]])
    draws = tf.constant([.5, .5, .0, .99])
    # progress 0: keep = 1 for every class; only the confidence counts (row 2 is below 0.95)
    np.testing.assert_array_equal(abc_head.unlabeled_mask(probs, RATES, 0., draws, 0.95).numpy(), [1, 1, 0, 1])
    # progress 0.5: keep = 1 - 0.5 (1 - r) = 0.55, 0.6, ., 1.0
    np.testing.assert_array_equal(abc_head.unlabeled_mask(probs, RATES, .5, draws, 0.95).numpy(), [1, 1, 0, 1])
    # progress 1: keep = r = 0.1, 0.2, ., 1.0: rows 0 and 1 drop (draw .5)
    np.testing.assert_array_equal(abc_head.unlabeled_mask(probs, RATES, 1., draws, 0.95).numpy(), [0, 0, 0, 1])


def test_abc_terms_on_hand_made_logits():
    aux_x = np.array([[2., 0, 0], [0, 1, 0], [0, 0, 3]], np.float32)
    labels = [0, 1, 2]
    aux_weak = np.array([[5., 0, 0], [0, 0, 1], [0, 6., 0]], np.float32)  # p max: 0.987, 0.576, 0.995
    aux_strong = np.array([[1., 0, 0], [0, 2, 0], [1, 1, 1]], np.float32)
    draws_l = tf.constant([.5, .1, .5])   # mask_l = (.5 < .1, .1 < .2, .5 < 1) = 0, 1, 1
    draws_u = tf.constant([.5, .0, .5])   # progress .5: keep = .55, ., .6 -> 1, (confidence 0), 1
    term_l, term_u, mask_u = abc_head.abc_terms(aux_x, labels, aux_weak, aux_strong, RATES, 0.5, draws_l, draws_u,
                                                0.95)
    assert float(term_l) == pytest.approx((nll_rows(aux_x[[1]], [1])[0] + nll_rows(aux_x[[2]], [2])[0]) / 3,
                                          rel=1e-5)
    assert softmax(aux_weak).max(1)[1] < 0.95
    expected_u = (nll_rows(aux_strong[[0]], [0])[0] + nll_rows(aux_strong[[2]], [1])[0]) / 3
    assert float(term_u) == pytest.approx(expected_u, rel=1e-5)
    np.testing.assert_array_equal(mask_u.numpy(), [1, 0, 1])


def check(cls, **settings):
    debias.check(settings_lib.resolve(cls.all_params(), settings), cls.label_bias, cls.__name__)


def test_refusals_are_one_line():
    for cls in (mixmatch.MixMatch, uda.UDA):
        with pytest.raises(utils.UserError, match=f'--abc needs .* which {cls.__name__} does not have') as e:
            check(cls, abc=True)
        assert '\n' not in str(e.value)
    with pytest.raises(utils.UserError, match='abc_confidence'):
        settings_lib.resolve(fixmatch.FixMatch.all_params(), dict(abc_confidence=0))
    check(fixmatch.FixMatch, abc=True)


def test_fixmatch_teacher_ema_refuses_abc(tiny_data, tmp_path):
    values = {**SHORT, 'train_dir': str(tmp_path / 'runs'), 'abc': True, 'teacher': 'ema'}
    with pytest.raises(utils.UserError, match='--abc trains its head .* use --teacher=model'):
        train.Trainer(fixmatch.FixMatch, settings_lib.resolve(fixmatch.FixMatch.all_params(), values))
    assert not os.path.exists(tmp_path / 'runs')  # refused before anything is written


def test_tiny_run_evaluates_and_exports_through_the_auxiliary_head(tiny_data, tmp_path):
    import keras
    values = {**SHORT, 'train_dir': str(tmp_path / 'runs'), 'abc': True, 'train_kimg': 0.0625,
              'report_kimg': 0.0625, 'save_kimg': 0.0625}
    trainer = train.Trainer(fixmatch.FixMatch, settings_lib.resolve(fixmatch.FixMatch.all_params(), values))
    assert any(v is trainer.abc.head.kernel for v in trainer.trainable)
    result = trainer.train()
    logits, labels = trainer.reporter.logits('test', ema=True)
    images = next(iter(trainer.data.eval_dataset('test', 1000, None)))[0]
    averages = {id(v): a for v, a in zip(trainer.trainable, trainer.ema.averages)}
    np.testing.assert_allclose(logits, trainer.abc.classify(images, averages).numpy(), rtol=1e-5, atol=1e-5)
    main = trainer.classify_ema(images).numpy()
    assert np.abs(main - logits).max() > 1e-3  # not the main head
    assert result['accuracy'] == pytest.approx(100 * np.mean(logits.argmax(1) == labels), abs=1e-6)
    # evaluate.py and export.py rebuild the auxiliary classifier from args.json and the checkpoint
    _, _, model, _ = state.load_ema_model(trainer.run_dir)
    np.testing.assert_allclose(model(images, training=False).numpy(), logits, rtol=1e-5, atol=1e-5)
    assert evaluate_script.evaluate(trainer.run_dir)['accuracy'] == pytest.approx(result['accuracy'], abs=1e-6)
    out = export_script.export(trainer.run_dir, str(tmp_path / 'export'))
    exported = keras.models.load_model(os.path.join(out, 'model.keras'))
    raw = np.round((images.numpy() + 1) * 255 / 2).astype(np.uint8)
    np.testing.assert_allclose(exported(raw).numpy(), tf.nn.softmax(logits).numpy(), atol=1e-4)
