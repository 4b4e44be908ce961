"""The training loop: schedule, weight decay, EMA, FixMatch's loss, resume, devices, learning,
TensorBoard, bad settings and NaN losses."""
import json
import math
import os
import socket
import subprocess
import sys
import textwrap
import time
import types
import urllib.request

import numpy as np
import pytest
import tensorflow as tf

import fixmatch
import fakes
from conftest import ROOT, ml_data
from libml import models
from libml import settings as settings_lib
from libml import state
from libml import train
from libml import utils

# A WRN-10-0.5 on Fashion-MNIST with small batches: a few seconds per kimg on 2 CPU cores; evaluations
# on the first 1,000 images of each split (TEST_EVAL), not all 10,000 test images.
TEST_EVAL = 1000
TINY = dict(filters=8, repeat=1, batch=16, uratio=2, augment='d.d.rac', ema=0.99, bn_momentum=0.99,
            keep_ckpt=100, eval_size=TEST_EVAL)


def test_cosine_schedule_values():
    for progress, expected in ((0, 0.03), (0.5, 0.03 * math.cos(7 * math.pi / 32)),
                               (1, 0.03 * math.cos(7 * math.pi / 16)), (2, 0.03 * math.cos(7 * math.pi / 16))):
        assert float(state.cosine_lr(0.03, tf.constant(float(progress)))) == pytest.approx(expected, rel=1e-6)
    assert 0.03 * math.cos(7 * math.pi / 16) == pytest.approx(0.0058527, rel=1e-4)


def test_weight_decay_term_and_variables():
    assert float(state.weight_l2([tf.Variable([1., 2.]), tf.Variable([[3.]])])) == pytest.approx(7.0)  # (1+4+9)/2
    model = models.create_model('wrn', 10, (32, 32, 1), filters=4, repeat=1, scales=2)
    decayed = models.decay_variables(model)
    assert all(v.path.endswith('kernel') for v in decayed)
    assert not any('gamma' in v.path or 'beta' in v.path or 'bias' in v.path for v in decayed)
    assert len(decayed) == 8  # stem + 2 stages x (2 convs + 1x1 shortcut) + dense
    l2 = sum(float(np.sum(np.square(v.numpy()))) for v in decayed) / 2
    assert float(state.weight_l2(decayed)) == pytest.approx(l2, rel=1e-5)


def test_ema_update():
    value = tf.Variable([1.0, -2.0])
    ema = state.EMA([types.SimpleNamespace(value=value, path='w')], decay=0.9)
    value.assign([3.0, 0.0])
    ema.update([types.SimpleNamespace(value=value)])
    np.testing.assert_allclose(ema.averages[0].numpy(), [0.9 * 1 + 0.1 * 3, 0.9 * -2 + 0.1 * 0])  # [1.2, -1.8]
    value.assign([5.0, 1.0])
    ema.update([types.SimpleNamespace(value=value)])
    np.testing.assert_allclose(ema.averages[0].numpy(), [0.9 * 1.2 + 0.5, 0.9 * -1.8 + 0.1], rtol=1e-6)


def nll(logits, label):
    """-log softmax(logits)[label], by hand."""
    return -(logits[label] - math.log(sum(math.exp(v) for v in logits)))


def fake_trainer(logits, **settings):
    """A trainer whose model returns fixed logits (rows in the order of the forward pass)."""
    return fakes.fake_trainer(fixmatch.FixMatch, lambda x, training: logits, nclass=logits.shape[1], **settings)


def test_fixmatch_loss_by_hand():
    labeled = [[2., 0., 0.], [0., 1., 0.]]
    weak = [[10., 0., 0.],   # confidence 0.99991 >= 0.95: pseudo-label 0
            [1., 0., 0.],    # confidence 0.576: masked
            [0., 0., 5.]]    # confidence e^5 / (e^5 + 2) = 0.9867: pseudo-label 2
    strong = [[0., 1., 0.], [3., 3., 3.], [1., 1., 2.]]
    logits = tf.constant(labeled + weak + strong)
    algorithm = fixmatch.FixMatch(fake_trainer(logits, wu=2.0))
    batch = dict(x=tf.zeros([2, 1]), label=tf.constant([0, 2]), u_weak=tf.zeros([3, 1]), u_strong=tf.zeros([3, 1]))
    loss, logs = algorithm.loss(batch, tf.constant(0))
    xe = (nll(labeled[0], 0) + nll(labeled[1], 2)) / 2
    xeu = (nll(strong[0], 0) + 0 + nll(strong[2], 2)) / 3
    assert float(logs['losses/xe']) == pytest.approx(xe, rel=1e-6)
    assert float(logs['losses/xeu']) == pytest.approx(xeu, rel=1e-6)
    assert float(logs['monitors/mask']) == pytest.approx(2 / 3)
    assert float(loss) == pytest.approx(xe + 2.0 * xeu, rel=1e-6)


def test_defixmatch_loss_by_hand():
    labeled = [[6., 0., 0.],         # confidence e^6 / (e^6 + 2) = 0.995: pseudo-label 0
               [0., 0., 1.]]         # confidence 0.576: masked
    labeled_strong = [[1., 2., 0.], [0., 0., 3.]]
    weak = [[10., 0., 0.], [1., 0., 0.]]
    strong = [[0., 1., 0.], [3., 3., 3.]]
    logits = tf.constant(labeled + labeled_strong + weak + strong)
    batch = dict(x=tf.zeros([2, 1]), x_strong=tf.zeros([2, 1]), label=tf.constant([0, 2]),
                 u_weak=tf.zeros([2, 1]), u_strong=tf.zeros([2, 1]))
    xe = (nll(labeled[0], 0) + nll(labeled_strong[0], 0) + nll(labeled[1], 2) + nll(labeled_strong[1], 2)) / 4
    h_u = (nll(strong[0], 0) + 0) / 2
    h_l = (nll(labeled_strong[0], 0) + 0) / 2  # pseudo-label from the model, not the true label
    loss, logs = fixmatch.FixMatch(fake_trainer(logits, wu=0.5, debiased=True, sup_strong=True)).loss(batch, 0)
    assert float(logs['losses/xe']) == pytest.approx(xe, rel=1e-6)
    assert float(loss) == pytest.approx(xe + 0.5 * (h_u - h_l), rel=1e-6)
    complete_case, _ = fixmatch.FixMatch(fake_trainer(logits, wu=0.0, debiased=True, sup_strong=True)).loss(batch, 0)
    assert float(complete_case) == pytest.approx(xe, rel=1e-6)
    views, _ = fixmatch.FixMatch(fakes.fake_trainer(fixmatch.FixMatch, debiased=True)).views()
    assert views == {'x': 'd', 'x_strong': 'cta'}


def test_settings_local_defaults_names_and_errors():
    params = fixmatch.FixMatch.all_params()
    paper = settings_lib.resolve(params, {})
    assert (paper.filters, paper.batch, paper.train_kimg, paper.lr, paper.augment) == (32, 64, 65536, 0.03, 'd.d.cta')
    local = settings_lib.resolve(params, dict(local=True, filters=8))
    assert (local.filters, local.repeat, local.batch, local.xla) == (8, 1, 32, False)
    # FixMatch's own quick-start values under --local (README): mu 3, tau 0.8, 192 kimg, a report every 8 kimg
    assert (local.uratio, local.confidence, local.train_kimg, local.report_kimg) == (3, 0.8, 192, 8)
    assert (local.baseline, local.first_report_kimg, paper.baseline, paper.first_report_kimg) == (True, 1, False, 0)
    assert settings_lib.run_name('FixMatch', params, local) == 'FixMatch_local_filters8'
    assert settings_lib.run_name('FixMatch', params, settings_lib.resolve(params, dict(lr=0.05, wu=0))) == \
        'FixMatch_lr0.05_wu0'
    with pytest.raises(utils.UserError, match='unknown setting.*nonsense'):
        settings_lib.resolve(params, dict(nonsense=1))
    with pytest.raises(utils.UserError, match="--arch='vgg' is not a model source; use wrn"):
        settings_lib.resolve(params, dict(arch='vgg'))


def run_tiny(train_dir, **overrides):
    """48 steps of 16 labeled images, a checkpoint every 16 steps, one evaluation at the end."""
    settings = dict(TINY, dataset='fashion_mnist.1@40-1', train_dir=str(train_dir), train_kimg=0.75,
                    report_kimg=0.75, save_kimg=0.25)
    settings.update(overrides)
    return fixmatch.FixMatch.run(**settings)


class Killed(Exception):
    pass


def trained_state(run_dir):
    """Every variable of the newest checkpoint of a run, by name."""
    reader = tf.train.load_checkpoint(os.path.join(run_dir, 'tf'))
    return {name: reader.get_tensor(name) for name in reader.get_variable_to_shape_map()
            if not name.startswith('_CHECKPOINTABLE_OBJECT_GRAPH')}


def test_kill_and_resume_equals_uninterrupted_run(fashion_mnist, tmp_path, monkeypatch):
    straight = run_tiny(tmp_path / 'a')
    # Killed mid-epoch (step 20, after the checkpoint of step 16), then resumed.
    original_check = train.Trainer.check_finite

    def kill_at_20(self):
        original_check(self)
        if int(self.step.numpy()) >= 20:
            raise Killed()
    monkeypatch.setattr(train.Trainer, 'check_finite', kill_at_20)
    with pytest.raises(Killed):
        run_tiny(tmp_path / 'b')
    monkeypatch.setattr(train.Trainer, 'check_finite', original_check)
    killed_dir = straight['run_dir'].replace(str(tmp_path / 'a'), str(tmp_path / 'b'))
    assert trained_state(killed_dir)['step/.ATTRIBUTES/VARIABLE_VALUE'] == 16
    resumed = run_tiny(tmp_path / 'b')
    assert resumed['step'] == straight['step'] == 48
    a, b = trained_state(straight['run_dir']), trained_state(resumed['run_dir'])
    assert a.keys() == b.keys()
    assert any('ema' in k for k in a) and any('optimizer' in k for k in a) and any('moving_mean' in k for k in a)
    for name in a:
        np.testing.assert_allclose(a[name], b[name], rtol=1e-5, atol=1e-6, err_msg=name)
    assert [s['step'] for s in json_lines(resumed['run_dir'])] == [48]
    assert resumed['accuracy'] == pytest.approx(straight['accuracy'], abs=0.02)


def json_lines(run_dir):
    with open(os.path.join(run_dir, 'stats', 'epochs.jsonl')) as f:
        return [json.loads(line) for line in f]


def test_baseline_settings_and_result_line():
    settings = settings_lib.resolve(fixmatch.FixMatch.all_params(),
                                    dict(local=True, dataset='fashion_mnist.1@40-1', augment='m.d.rac', seed=3, xla=True))
    baseline = train.baseline_settings(settings)
    assert baseline['augment'] == 'm.d.d' and baseline['baseline'] is False and baseline['local'] is True
    assert (baseline['filters'], baseline['repeat'], baseline['batch'], baseline['seed'], baseline['xla']) == \
        (16, 1, 32, 3, True)
    assert baseline['train_kimg'] == baseline['report_kimg'] == baseline['save_kimg'] == settings.train_kimg
    assert settings.first_report_kimg == 1 and baseline['first_report_kimg'] == 0
    assert 'uratio' not in baseline and 'confidence' not in baseline  # FixMatch's own settings stay out
    assert settings.baseline and not settings_lib.resolve(fixmatch.FixMatch.all_params(), {}).baseline
    result = dict(accuracy=78.5, last20=70.25, run_dir='runs/a', baseline=dict(accuracy=55.25))
    assert train.result_line('FixMatch', 'd.1@40-1', result) == (
        'FixMatch on d.1@40-1: EMA test accuracy 78.50% (median of the last 20 epochs 70.25%); the same model on '
        'the labeled images alone: 55.25% (+23.25 points from the unlabeled images); run directory runs/a')


def test_ctaugment_rates_are_checkpointed(fashion_mnist, tmp_path, monkeypatch):
    result = run_tiny(tmp_path, augment='d.d.cta', train_kimg=0.25, report_kimg=0.25, baseline=True,
                      first_report_kimg=0.125)
    assert [s['step'] for s in json_lines(result['run_dir'])] == [8, 16]  # the early evaluation, then the end's
    # --baseline: the supervised baseline trained the same steps of the same model beside the run
    assert os.path.basename(os.path.dirname(result['baseline']['run_dir'])) == \
        os.path.basename(os.path.dirname(result['run_dir']))
    assert os.path.basename(result['baseline']['run_dir']).startswith('FullySupervised')
    assert result['baseline']['step'] == result['step'] == 16 and 0 <= result['baseline']['accuracy'] <= 100
    base_args = json.load(open(os.path.join(result['baseline']['run_dir'], 'args.json')))
    assert (base_args['filters'], base_args['augment'], base_args['baseline']) == (8, 'd.d.d', False)
    rates = trained_state(result['run_dir'])['cta/rates/.ATTRIBUTES/VARIABLE_VALUE']
    assert rates.shape == (303,) and np.all(rates <= 1) and np.any(rates < 1)  # the probes updated them
    trainer = train.Trainer(fixmatch.FixMatch, settings_lib.resolve(
        fixmatch.FixMatch.all_params(), dict(TINY, dataset='fashion_mnist.1@40-1', train_dir=str(tmp_path),
                                             augment='d.d.cta', train_kimg=0.25, report_kimg=0.25, save_kimg=0.25)))
    assert trainer.restore() == 16
    np.testing.assert_array_equal(trainer.cta.rates.numpy(), rates)


def test_refuses_to_resume_with_other_settings(fashion_mnist, tmp_path):
    settings = settings_lib.resolve(fixmatch.FixMatch.all_params(),
                                    dict(TINY, dataset='fashion_mnist.1@40-1', train_dir=str(tmp_path)))
    args_path = os.path.join(train.Trainer(fixmatch.FixMatch, settings).run_dir, 'args.json')
    saved = json.load(open(args_path))
    assert saved['algorithm'] == 'FixMatch' and saved['filters'] == 8
    saved['confidence'] = 0.5
    utils.write_json(args_path, saved)
    with pytest.raises(utils.UserError, match=r'made with different settings \(confidence: 0.5 -> 0.95\)'):
        train.Trainer(fixmatch.FixMatch, settings)


class ExplodingFixMatch(fixmatch.FixMatch):
    """FixMatch whose loss becomes NaN from step 20 on."""

    def loss(self, batch, step):
        loss, logs = super().loss(batch, step)
        return tf.where(step >= 20, tf.constant(float('nan')), loss), logs


def test_nan_loss_stops_with_the_step_and_keeps_the_last_good_checkpoint(fashion_mnist, tmp_path):
    settings = dict(TINY, dataset='fashion_mnist.1@40-1', train_dir=str(tmp_path), train_kimg=0.75,
                    report_kimg=0.75, save_kimg=0.25)
    with pytest.raises(train.TrainingDiverged, match=r'NaN or infinite at step 20.*ckpt-16.*is kept'):
        ExplodingFixMatch.run(**settings)
    run_dir = next(os.path.join(root, d) for root, dirs, _ in os.walk(tmp_path) for d in dirs if d.startswith('Expl'))
    state = trained_state(run_dir)
    assert state['step/.ATTRIBUTES/VARIABLE_VALUE'] == 16
    assert all(np.all(np.isfinite(v)) for v in state.values() if np.issubdtype(np.asarray(v).dtype, np.floating))


@pytest.fixture(scope='module')
def learned_run(fashion_mnist_root, tmp_path_factory):
    """One short FixMatch run (CTAugment strong views) on Fashion-MNIST with 250 labels, shared by the
    tests below."""
    with ml_data(fashion_mnist_root):
        yield fixmatch.FixMatch.run(
            dataset='fashion_mnist.1@250-1', train_dir=str(tmp_path_factory.mktemp('learn')), filters=16, repeat=1,
            batch=32, uratio=3, augment='d.d.cta', ema=0.99, bn_momentum=0.99, lr=0.03, train_kimg=10,
            report_kimg=5, save_kimg=5, xla=True, eval_size=2000)


def test_short_fashion_mnist_run_learns(learned_run):
    # chance is 10%; 320 steps with 250 labels reach about 65% here (XLA-compiled step: faster on the CPU)
    assert learned_run['accuracy'] > 55, learned_run
    final = learned_run['final']
    assert len(final['ema/test']['per_class']) == 10
    assert set(final) >= {'ema/train_labeled', 'ema/valid', 'raw/train_labeled', 'raw/valid'}


def free_port():
    with socket.socket() as s:
        s.bind(('127.0.0.1', 0))
        return s.getsockname()[1]


def test_tensorboard_server_serves_the_scalars(learned_run):
    port = free_port()
    server = subprocess.Popen([sys.executable, '-m', 'tensorboard.main', '--logdir', learned_run['run_dir'],
                               '--host', '127.0.0.1', '--port', str(port)],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        url = f'http://127.0.0.1:{port}/data/plugin/scalars/scalars?run=tf&tag=accuracy'
        deadline, points = time.time() + 90, None
        while time.time() < deadline:
            try:
                with urllib.request.urlopen(url, timeout=5) as response:
                    points = json.loads(response.read())
                if points:
                    break
            except (OSError, ValueError):
                pass
            time.sleep(1)
        assert points, 'TensorBoard did not serve the accuracy scalar'
        steps = [p[1] for p in points]
        assert steps == [s['step'] for s in json_lines(learned_run['run_dir'])]
        assert points[-1][2] == pytest.approx(learned_run['accuracy'], abs=1e-3)
        with urllib.request.urlopen(f'http://127.0.0.1:{port}/data/plugin/scalars/tags', timeout=5) as response:
            tags = json.loads(response.read())['tf']
        for tag in ('accuracy/valid', 'accuracy/train_labeled', 'accuracy/raw/test', 'losses/xe', 'losses/xeu',
                    'losses/wd', 'monitors/lr', 'monitors/mask'):
            assert tag in tags, tag
    finally:
        server.terminate()
        server.wait(timeout=30)


# One device vs two logical CPUs under MirroredStrategy, on the same global batches. With synchronised
# batch norm the first step's losses are the same; later steps drift apart by float rounding only
# (Keras's cross-replica variance is E[x^2] - E[x]^2, one device uses two-pass moments).
MIRRORED_SCRIPT = textwrap.dedent('''
    import sys
    sys.path.insert(0, {root!r})
    import tensorflow as tf
    cpu = tf.config.list_physical_devices('CPU')[0]
    tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
    import fixmatch
    from libml import settings, train
    losses = {{}}
    for devices in (1, 2):
        s = settings.resolve(fixmatch.FixMatch.all_params(), dict(
            dataset='fashion_mnist.1@40-1', train_dir={train_dir!r} + str(devices), filters=8, repeat=1, batch=16,
            uratio=2, augment='d.d.rac', sync_bn=True, devicenum=devices, train_kimg=1))
        trainer = train.Trainer(fixmatch.FixMatch, s)
        assert trainer.strategy.num_replicas_in_sync == devices
        iterator = iter(trainer.train_dataset(0))
        losses[devices] = [{{k: float(v) for k, v in trainer.train_call(iterator, tf.constant(1, tf.int64)).items()}}
                           for _ in range(30)]
    for step, tolerance in ((0, 1e-5), (1, 1e-3)):
        for key in ('losses/xe', 'losses/xeu', 'losses/wd', 'monitors/mask', 'monitors/lr'):
            one, two = losses[1][step][key], losses[2][step][key]
            assert abs(one - two) <= tolerance * max(1, abs(one)), (step, key, one, two)
    first, last = (sum(l['losses/xe'] for l in losses[2][i:i + 5]) / 5 for i in (0, 25))
    assert last < 0.8 * first, ('two devices do not learn', first, last)  # about 2.4 -> 1.5 here
    print('same losses', losses[2][0], first, last)
''')


def test_two_logical_cpus_give_the_same_loss_as_one(fashion_mnist, tmp_path):
    script = MIRRORED_SCRIPT.format(root=ROOT, train_dir=str(tmp_path / 'run'))
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL='3')
    done = subprocess.run([sys.executable, '-c', script], capture_output=True, text=True, env=env, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    assert 'same losses' in done.stdout


def test_command_line_reports_bad_input_in_one_line(tmp_path):
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL='3', ML_DATA=str(tmp_path))
    done = subprocess.run([sys.executable, 'fixmatch.py', '--dataset=nosuch.1@40-1', f'--train_dir={tmp_path}'],
                          capture_output=True, text=True, env=env, cwd=ROOT, timeout=300)
    assert done.returncode == 2
    assert done.stderr.strip().splitlines()[-1].startswith("error: unknown dataset 'nosuch'")
