"""CReST and CReST+: the per-class selection counts and the chosen images by hand (a non-head class 0), the
t_g schedule and the alignment values by hand, one-line refusals, the labeled set of a generation, and a tiny
long-tailed FixMatch --crest=2 --crest_plus run that learns, whose generation files check against a
recomputation, and which, stopped in generation 1 and resumed, ends with the same bits (and relabels the
same selection when generation 0's file is missing); a short long-tailed Fashion-MNIST --crest=2 --crest_plus
run that learns, whose selection is mostly right and rebalanced toward the tail."""
import json
import os
import shutil
import sys

import numpy as np
import pytest
import tensorflow as tf

import fixmatch
import flexmatch
import mixmatch
import pseudo_label
import uda
from conftest import ROOT
from libml import crest
from libml import data as data_lib
from libml import debias
from libml import settings as settings_lib
from libml import state
from libml import train
from libml import utils
from test_daso import LONG_TAILED
from test_resume import SHORT, op_determinism, tiny_data, tiny_data_root  # noqa: F401 (fixtures)
from test_train import trained_state

sys.path.insert(0, os.path.join(ROOT, 'scripts'))
import aggregate_accuracy  # noqa: E402
import evaluate as evaluate_script  # noqa: E402


# ---------------------------------------------------------------------------------------------
# The selection by hand.

def test_frequency_ranks_put_the_head_first_whatever_its_index():
    np.testing.assert_array_equal(crest.frequency_ranks([2, 8, 4]), [2, 0, 1])
    np.testing.assert_array_equal(crest.frequency_ranks([5, 5, 1]), [0, 1, 2])  # ties: the lower class first


def test_selection_counts_by_hand_with_a_tail_class_zero():
    # labeled counts 2, 8, 4: gamma_hat = 4, K = 3, mu = (1/4)^(1/2) = 0.5; ranks 2, 0, 1 -> exponents K-1-r = 0, 2, 1
    labeled, predicted = [2, 8, 4], [5, 10, 7]
    # alpha 1: rates 1, 0.25, 0.5 -> int(5), int(2.5), int(3.5)
    np.testing.assert_allclose(crest.selection_rates(labeled, 1), [1, .25, .5])
    np.testing.assert_array_equal(crest.selection_counts(predicted, labeled, 1), [5, 2, 3])
    # alpha 3: rates 1, 0.25^(1/3) = 0.62996, 0.5^(1/3) = 0.79370 -> int(5), int(6.2996), int(5.5559)
    np.testing.assert_allclose(crest.selection_rates(labeled, 3), [1, .629961, .793701], rtol=1e-6)
    np.testing.assert_array_equal(crest.selection_counts(predicted, labeled, 3), [5, 6, 5])
    # USB's class index instead of the rank would give class 0 (here the tail) the head's rate 0.25
    assert crest.selection_counts(predicted, labeled, 1)[0] != int(5 * .25)
    # balanced labels: every pseudo-label joins
    np.testing.assert_array_equal(crest.selection_counts([3, 4], [6, 6], 3), [3, 4])


def test_select_takes_the_most_confident_of_each_predicted_class():
    probs = np.array([[.6, .3, .1],    # 0: class 0 (.6)
                      [.2, .7, .1],    # 1: class 1 (.7)
                      [.9, .05, .05],  # 2: class 0 (.9)
                      [.1, .1, .8],    # 3: class 2 (.8)
                      [.3, .6, .1],    # 4: class 1 (.6)
                      [.1, .85, .05],  # 5: class 1 (.85)
                      [.1, .7, .2],    # 6: class 1 (.7, tie with row 1: row 1 first)
                      [.2, .2, .6]])   # 7: class 2 (.6)
    # n = 2, 4, 2; labeled 2, 8, 4 and alpha 1: k = int(2 * 1), int(4 * .25), int(2 * .5) = 2, 1, 1
    positions, labels, take = crest.select(probs, [2, 8, 4], 1)
    np.testing.assert_array_equal(take, [2, 1, 1])
    np.testing.assert_array_equal(positions, [2, 0, 5, 3])
    np.testing.assert_array_equal(labels, [0, 0, 1, 2])
    # alpha 2: k = 2, int(4 * .5) = 2, int(2 * .7071) = 1; class 1's tie goes to the lower row
    positions, labels, _ = crest.select(probs, [2, 8, 4], 2)
    np.testing.assert_array_equal(positions, [2, 0, 5, 1, 3])
    np.testing.assert_array_equal(labels, [0, 0, 1, 1, 2])


# ---------------------------------------------------------------------------------------------
# CReST+ by hand.

def test_alignment_exponents():
    np.testing.assert_allclose([crest.alignment_exponent(g, 6) for g in range(6)], [1, .9, .8, .7, .6, .5])
    assert [crest.alignment_exponent(g, 2) for g in range(2)] == [1, .5]
    assert crest.alignment_exponent(0, 1) == 1


def test_progressive_target_and_alignment_by_hand():
    # pi = (.8, .2), t = .5: sqrt ratio 2:1 -> (2/3, 1/3); t = 1: pi itself
    np.testing.assert_allclose(crest.progressive_target([.8, .2], .5), [2 / 3, 1 / 3])
    np.testing.assert_allclose(crest.progressive_target([.8, .2], 1), [.8, .2])
    # p = (.5, .5), p_model = (.25, .75): .5 (2/3) / .25 : .5 (1/3) / .75 = 4/3 : 2/9 = 6 : 1
    aligned = crest.align(tf.constant([[.5, .5]]), tf.constant([2 / 3, 1 / 3]), tf.constant([.25, .75]))
    np.testing.assert_allclose(aligned.numpy(), [[6 / 7, 1 / 7]], rtol=1e-5)


def test_label_bias_aligns_the_pseudo_labels_and_keeps_p_model():
    settings = settings_lib.resolve(fixmatch.FixMatch.all_params(), dict(crest=2, crest_plus=True))
    bias = debias.LabelBias(settings, [0, 0, 0, 0, 1], 10, 2, alignment=crest.Alignment([.8, .2], .5))
    state_ = bias.build()
    assert set(state_) == {'crest_p_model', 'crest_started'}
    # first batch: p_model = its mean (.5, .5), so p~ = SumNorm(p * p_target / p_model) = p_target
    out = bias.pseudo_logits(None, tf.math.log(tf.constant([[.5, .5], [.5, .5]])), tf.constant(0, tf.int64))
    np.testing.assert_allclose(tf.nn.softmax(out).numpy(), [[2 / 3, 1 / 3]] * 2, rtol=1e-5)
    # second batch (.9, .1): p_model = .999 (.5, .5) + .001 (.9, .1) = (.5004, .4996)
    out = bias.pseudo_logits(None, tf.math.log(tf.constant([[.9, .1]])), tf.constant(1, tf.int64))
    np.testing.assert_allclose(bias.alignment.p_model.numpy(), [.5004, .4996], rtol=1e-6)
    a, b = .9 * (2 / 3 + 1e-6) / (.5004 + 1e-6), .1 * (1 / 3 + 1e-6) / (.4996 + 1e-6)
    np.testing.assert_allclose(tf.nn.softmax(out).numpy(), [[a / (a + b), b / (a + b)]], rtol=1e-5)
    # a later generation starts from the previous generation's p_model
    later = crest.Alignment([.8, .2], 1., p_model_start=[.3, .7])
    later.build()
    later(tf.constant([[.5, .5]]))
    np.testing.assert_allclose(later.p_model.numpy(), [.999 * .3 + .0005, .999 * .7 + .0005], rtol=1e-6)


# ---------------------------------------------------------------------------------------------
# Refusals, one line each, before anything is written.

def check(cls, **settings):
    debias.check(settings_lib.resolve(cls.all_params(), settings), cls.label_bias, cls.__name__)


def test_refusals_are_one_line():
    for cls in (fixmatch.FixMatch, flexmatch.FlexMatch, uda.UDA, pseudo_label.PseudoLabel):
        check(cls, crest=2, crest_plus=True)
        check(cls, crest=3, CAP=True, CAI=True, CADR=True)
    cases = [(mixmatch.MixMatch, dict(crest=2), '--crest needs pseudo-labels .* which MixMatch does not have'),
             (fixmatch.FixMatch, dict(crest_plus=True), '--crest_plus aligns .* add --crest=G'),
             (fixmatch.FixMatch, dict(crest=2, darp=True), '--crest does not combine with --darp'),
             (fixmatch.FixMatch, dict(crest=2, abc=True), '--crest does not combine with --abc'),
             (fixmatch.FixMatch, dict(crest=2, daso=True), '--crest does not combine with --daso'),
             (fixmatch.FixMatch, dict(crest=2, debiased=True), '--crest does not combine with --debiased'),
             (uda.UDA, dict(crest=2, mnar_estimate='moment'), '--crest does not combine with --mnar_estimate')]
    for cls, settings, message in cases:
        with pytest.raises(utils.UserError, match=message) as e:
            check(cls, **settings)
        assert '\n' not in str(e.value)
    try:
        import freematch
    except ImportError:
        return
    with pytest.raises(utils.UserError, match='--crest_plus needs .* which FreeMatch does not have'):
        check(freematch.FreeMatch, crest=2, crest_plus=True)


TINY_IMB = 'tinyfaults_IMB_4_U20_4.1@8-1'  # labels 8, 6, 5, 5, 4, 3, 3, 2, 2, 2; unlabeled 20 .. 5 (disjoint)


def test_runs_refused_before_anything_is_written(tiny_data, tmp_path):
    base = {**SHORT, 'dataset': TINY_IMB, 'train_dir': str(tmp_path / 'runs')}
    with pytest.raises(utils.UserError, match='--crest does not combine with --darp'):
        fixmatch.FixMatch.run(**base, crest=2, darp=True)
    with pytest.raises(utils.UserError, match='--crest does not combine with --daso'):
        fixmatch.FixMatch.run(**base, crest=2, daso=True)
    with pytest.raises(utils.UserError, match='--train_kimg=0.01 split over --crest=2 generations is less than one '
                                              'step'):
        fixmatch.FixMatch.run(**dict(base, crest=2, train_kimg=0.01))
    assert not os.path.exists(tmp_path / 'runs')


def test_a_generation_labeled_set_is_the_labeled_rows_then_the_selection(tiny_data):
    data = data_lib.load(TINY_IMB)
    np.testing.assert_array_equal(np.bincount(data.labeled.labels), [8, 6, 5, 5, 4, 3, 3, 2, 2, 2])
    generation = crest.Generation(1, 2, None, dict(positions=[3, 0, 7], labels=[9, 1, 1], p_model=None))
    extended = generation.training_data(data)
    np.testing.assert_array_equal(generation.labeled_counts, [8, 6, 5, 5, 4, 3, 3, 2, 2, 2])  # the original set
    n = len(data.labeled)
    np.testing.assert_array_equal(extended.labeled.images[:n].numpy(), data.labeled.images.numpy())
    np.testing.assert_array_equal(extended.labeled.images[n:].numpy(), tf.gather(data.unlabeled.images,
                                                                                 [3, 0, 7]).numpy())
    np.testing.assert_array_equal(extended.labeled.labels, np.concatenate([data.labeled.labels, [9, 1, 1]]))
    assert len(extended.unlabeled) == len(data.unlabeled) and len(data.labeled) == n  # they stay unlabeled too
    with pytest.raises(utils.UserError, match='corrupt CReST selection of generation 0 .* delete it'):
        bad = dict(positions=[len(data.unlabeled)], labels=[0], p_model=None)
        crest.Generation(1, 2, None, bad).training_data(data)


# ---------------------------------------------------------------------------------------------
# A tiny long-tailed run: generation files, learning, evaluate.py, and a stop in generation 1 resumed exactly.

RUN = dict(SHORT, dataset=TINY_IMB, train_kimg=2, report_kimg=1, save_kimg=0.25, lr=0.1, ema=0.9, filters=16,
           crest=2, crest_plus=True)  # 64 steps per generation, a checkpoint every 16


def files(top):
    return sorted(os.path.relpath(os.path.join(root, f), top) for root, _, names in os.walk(top) for f in names
                  if 'events' not in f and f != 'lock' and not f.startswith('ckpt') and f != 'checkpoint')


def test_crest_plus_run_learns_and_resumes_in_its_generation(tiny_data, tmp_path, monkeypatch, op_determinism):
    straight = fixmatch.FixMatch.run(**RUN, train_dir=str(tmp_path / 'a'))
    top = straight['run_dir']
    gen0 = os.path.join(top, 'crest', 'gen_0')
    first = [json.loads(line) for line in open(os.path.join(gen0, 'stats', 'epochs.jsonl'))][-1]
    print('generation 0:', first['accuracy'], 'generation 1:', straight['accuracy'])
    assert straight['step'] == first['step'] == trained_state(gen0)['step/.ATTRIBUTES/VARIABLE_VALUE'] == 64
    assert first['accuracy'] >= 20 and straight['accuracy'] >= 20  # 10 classes: chance is 10% (here 24% and 20%)
    with open(crest.selection_path(top, 0)) as f:
        selection = json.load(f)
    # the selection again, from generation 0's EMA model on the unlabeled set (no augmentation, inference mode)
    data = data_lib.load(TINY_IMB)
    _, _, model, _ = state.load_ema_model(gen0)
    images = next(iter(data.eval_dataset('unlabeled', 1000)))[0]
    probs = tf.nn.softmax(model(images, training=False)).numpy()
    positions, labels, take = crest.select(probs, np.bincount(data.labeled.labels), 3.)
    assert selection['positions'] == positions.tolist() and selection['labels'] == labels.tolist()
    assert selection['counts'] == take.tolist() == crest.selection_counts(
        np.bincount(probs.argmax(1), minlength=10), np.bincount(data.labeled.labels), 3.).tolist()
    assert 0 < len(positions) < len(data.unlabeled)
    assert len(selection['p_model']) == 10 and abs(sum(selection['p_model']) - 1) < 1e-5
    # generation 1 starts from generation 0's final p_model: the checkpoints' p_model differ
    final = trained_state(top)
    assert not np.array_equal(final['algorithm/crest_p_model/.ATTRIBUTES/VARIABLE_VALUE'],
                              trained_state(gen0)['algorithm/crest_p_model/.ATTRIBUTES/VARIABLE_VALUE'])
    # the run directory is the last generation's: evaluate.py gives the run's accuracy
    assert evaluate_script.evaluate(top)['accuracy'] == pytest.approx(straight['accuracy'], abs=1e-6)
    assert list(aggregate_accuracy.find_runs([str(tmp_path / 'a')])) == [top]  # one run, not one per generation

    # Stopped in generation 1 at step 40 (its last checkpoint: 32), then resumed: generation 0 is not redone.
    check = train.Trainer.check_finite

    def stop_in_generation_1(self):
        check(self)
        if self.generation.index == 1 and int(self.step.numpy()) >= 40:
            raise KeyboardInterrupt
    monkeypatch.setattr(train.Trainer, 'check_finite', stop_in_generation_1)
    with pytest.raises(KeyboardInterrupt):
        fixmatch.FixMatch.run(**RUN, train_dir=str(tmp_path / 'b'))
    monkeypatch.setattr(train.Trainer, 'check_finite', check)
    top_b = top.replace(str(tmp_path / 'a'), str(tmp_path / 'b'))
    assert trained_state(top_b)['step/.ATTRIBUTES/VARIABLE_VALUE'] == 32
    built = []
    init = train.Trainer.__init__

    def recording(self, cls, settings, generation=None, model=None):
        built.append(generation.index)
        init(self, cls, settings, generation, model=model)
    monkeypatch.setattr(train.Trainer, '__init__', recording)
    resumed = fixmatch.FixMatch.run(**RUN, train_dir=str(tmp_path / 'b'))
    assert built == [1] and resumed['step'] == 64
    assert files(top_b) == files(top)
    with open(crest.selection_path(top_b, 0)) as f:
        assert json.load(f) == selection
    for folder in (gen0, top):
        expected, got = trained_state(folder), trained_state(folder.replace(str(tmp_path / 'a'), str(tmp_path / 'b')))
        assert expected.keys() == got.keys()
        different = sorted(name for name in expected if not np.array_equal(expected[name], got[name]))
        assert not different, different
    assert resumed['accuracy'] == straight['accuracy']
    # killed after generation 0's last checkpoint, before its selection was written: it labels again, the same
    os.remove(crest.selection_path(top, 0))
    built.clear()
    again = fixmatch.FixMatch.run(**RUN, train_dir=str(tmp_path / 'a'))
    assert built == [0, 1] and again['accuracy'] == straight['accuracy']
    with open(crest.selection_path(top, 0)) as f:
        assert json.load(f) == selection
    shutil.rmtree(tmp_path / 'a')


# ---------------------------------------------------------------------------------------------
# A short long-tailed Fashion-MNIST run: DASO's settings without DASO (test_daso.py: labels int(100 * 10^(-c/9)),
# unlabeled int(1000 * 10^(-c/9)), WRN-10 with 8 filters, batches of 32 + 32, weak views only), twice DASO's
# 192 steps so that each of the 2 generations trains 192.

FASHION = dict({name: value for name, value in LONG_TAILED.items() if not name.startswith('daso')},
               train_kimg=12, report_kimg=6, save_kimg=6, crest=2, crest_plus=True)


def test_long_tailed_fashion_mnist_run_learns_and_selects_toward_the_tail(fashion_mnist, tmp_path):
    result = fixmatch.FixMatch.run(**FASHION, train_dir=str(tmp_path))
    top = result['run_dir']
    gen0 = os.path.join(top, 'crest', 'gen_0')
    first = [json.loads(line) for line in open(os.path.join(gen0, 'stats', 'epochs.jsonl'))][-1]
    print('generation 0:', first['accuracy'], 'generation 1:', result['accuracy'])
    assert first['step'] == result['step'] == 192
    # 10 classes: chance is 10% (measured: generation 0 50.0%, generation 1 49.7% in a process of its own; 50.3%,
    # 48.6% after the tiny runs above in the same pytest process)
    assert first['accuracy'] > 40 and result['accuracy'] > 40, (first, result)
    data = data_lib.load(FASHION['dataset'])
    labeled = np.bincount(data.labeled.labels, minlength=10)
    assert labeled.tolist() == [100, 77, 59, 46, 35, 27, 21, 16, 12, 10]
    with open(crest.selection_path(top, 0)) as f:
        selection = json.load(f)
    positions, labels = np.array(selection['positions']), np.array(selection['labels'])
    # the selected pseudo-labels against the true labels of those unlabeled images (measured: 2252 and 2250 of
    # 4083 selected, 84.5% and 84.0% right; the head class alone is 24% of the unlabeled set)
    right = np.mean(data.unlabeled.labels[positions] == labels)
    print(f'selection: {len(positions)} of {len(data.unlabeled)} unlabeled images, {100 * right:.1f}% right')
    assert right > .7 and 1000 < len(positions) < len(data.unlabeled)
    # the counts: k_c = int(n_c rate_c), n_c from generation 0's EMA model on the unlabeled set; the rate is
    # (1/10)^(1/3) for the head class 0 and grows toward the tail, where class 9 keeps all its pseudo-labels
    _, _, model, _ = state.load_ema_model(gen0)
    probs = np.concatenate([tf.nn.softmax(model(x, training=False)).numpy()
                            for x, _ in data.eval_dataset('unlabeled', 1000)])
    predicted = np.bincount(probs.argmax(1), minlength=10)
    rates = crest.selection_rates(labeled, 3.)
    assert rates[0] == pytest.approx(.1 ** (1 / 3)) and rates[9] == 1 and (np.diff(rates) > 0).all()
    assert selection['counts'] == np.bincount(labels, minlength=10).tolist() == \
        np.floor(predicted * rates).astype(int).tolist()
    print('predicted', predicted.tolist(), 'selected', selection['counts'])
