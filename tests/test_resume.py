"""Resume is exact: a run SIGKILLed at a random moment and then during a checkpoint write, and a
stopped run of every algorithm that keeps state beyond the model, end with the same bits in every
variable of the final checkpoint as an uninterrupted run (--deterministic)."""
import glob
import importlib
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import textwrap
import time

import numpy as np
import pytest

from conftest import ROOT
from libml import settings as settings_lib
from libml import train
from libml import user_data
from test_train import TINY, trained_state

TINY_NAME = 'tinyfaults'
TINY_DATASET = TINY_NAME + '.1@40-1'
# 16 steps of 16 labeled images, a checkpoint every 4 steps, one evaluation (of 50 test images) at the end.
SHORT = dict(TINY, dataset=TINY_DATASET, augment='d.d.d', deterministic=True, train_kimg=0.25, report_kimg=0.25,
             save_kimg=0.0625)


def tiny_images(n, rng):
    """n 16x16 grey images of 10 classes: class k is a bright band at rows k..k+5 on dark noise."""
    labels = np.arange(n) % 10
    images = rng.randint(0, 60, size=(n, 16, 16, 1))
    for k in range(10):
        images[labels == k, k:k + 6, 2:14] += 150
    return images.astype(np.uint8), labels


@pytest.fixture(scope='session')
def tiny_data_root(tmp_path_factory):
    """A data root holding 'tinyfaults': 300 training and 50 test images (a fast evaluation)."""
    root = tmp_path_factory.mktemp('tiny_data')
    rng = np.random.RandomState(0)
    (x, y), (x_test, y_test) = tiny_images(300, rng), tiny_images(50, rng)
    np.savez(root / 'tiny.npz', x=x, y=y, x_test=x_test, y_test=y_test)
    user_data.convert_user(TINY_NAME, from_npz=str(root / 'tiny.npz'), root=str(root))
    return str(root)


@pytest.fixture
def tiny_data(tiny_data_root, monkeypatch):
    monkeypatch.setenv('ML_DATA', tiny_data_root)
    return tiny_data_root


@pytest.fixture
def op_determinism():
    """--deterministic switches TensorFlow's op determinism on for the process: off again afterwards."""
    from tensorflow.python.framework import config
    was = config.is_op_determinism_enabled()
    yield
    if not was:
        config.disable_op_determinism()


def find_run_dir(train_dir):
    found = glob.glob(os.path.join(str(train_dir), '*', '*', 'args.json'))
    assert len(found) == 1, found
    return os.path.dirname(found[0])


def live_state(trainer) -> list:
    """The values of every variable the trainer's objects hold (model, optimizer, EMA, CTAugment, the
    algorithm's and the label-bias attributes, Keras layers), found through their attributes, not
    through the checkpoint: a variable left out of the checkpoint shows here."""
    import keras
    import tensorflow as tf
    found, seen = [], set()

    def visit(obj, depth):
        if id(obj) in seen or depth > 4:
            return
        seen.add(id(obj))
        if isinstance(obj, (tf.Variable, keras.Variable)):
            found.append(np.array(obj.numpy()))
        elif isinstance(obj, (keras.layers.Layer, keras.optimizers.Optimizer)):
            for v in obj.variables:
                visit(v, depth + 1)
        elif isinstance(obj, (list, tuple)):
            for v in obj:
                visit(v, depth + 1)
        elif isinstance(obj, dict):
            for key in sorted(obj, key=str):
                visit(obj[key], depth + 1)
        elif type(obj).__module__.split('.')[0] in ('libml', 'cta') or obj is trainer.algorithm:
            for key in sorted(vars(obj)):
                if key not in ('trainer', 'settings', 'data', 'strategy', 'reporter', 'step_fn', 'writer'):
                    visit(vars(obj)[key], depth + 1)
    visit(trainer, 0)
    return found


def assert_same_bits(a: dict, b: dict):
    assert a.keys() == b.keys()
    different = sorted(name for name in a if not np.array_equal(a[name], b[name]))
    assert not different, different


# ---------------------------------------------------------------------------------------------
# Every algorithm with state beyond the model: stopped at step 10 (last checkpoint: step 8), resumed.

ALGORITHMS = {
    'remixmatch': ('remixmatch.ReMixMatch', dict(K=1, uratio=1)),  # distribution history, rotation head
    'mean_teacher': ('mean_teacher.MeanTeacher', dict(uratio=1, warmup_kimg=0.125)),
    'cadr_cta': ('fixmatch.FixMatch', dict(CAP=True, CAI=True, CADR=True, augment='d.d.cta')),  # p_hat, CTAugment
    'mnar': ('fixmatch.FixMatch', dict(mnar_estimate='moment')),  # p_hat -> phi estimates
    'mixmatch': ('mixmatch.MixMatch', dict(uratio=1, nu=2, warmup_kimg=0.125)),
    'uda': ('uda.UDA', dict()),
    'ict': ('ict.ICT', dict(uratio=1, warmup_kimg=0.125)),
    'vat': ('vat.VAT', dict(uratio=1, warmup_kimg=0.125)),
    'flexmatch': ('flexmatch.FlexMatch', dict()),  # per-image selections, class rates
    'freematch': ('freematch.FreeMatch', dict()),  # time_p, p_model, label_hist
    'softmatch': ('softmatch.SoftMatch', dict()),  # p_model (first batch, then EMA), mu, var
    'adamatch': ('adamatch.AdaMatch', dict()),  # p_target, p_model
    'simmatch': ('simmatch.SimMatch', dict(start_kimg=0.0625)),  # memory bank, alignment queue, head
    'dash': ('dash.Dash', dict(warmup_kimg=0.125, gamma_kimg=0.0625)),  # rho_init from the warm-up (ends at 8)
    # pseudo_orig, pseudo_refine: refinements at steps 4, 7, 10, 13 (around the stop at 10 and the resume from 8)
    'darp': ('fixmatch.FixMatch', dict(darp=True, darp_warmup_kimg=0.0625, darp_every=3)),
    'abc': ('fixmatch.FixMatch', dict(abc=True)),  # auxiliary head (EMA too), stateless Bernoulli draws
    'flexmatch_abc_darp': ('flexmatch.FlexMatch', dict(abc=True, darp=True, darp_warmup_kimg=0.0625, darp_every=3)),
    # issue 22's fine-tuning: torch's AdamW, per-layer learning rates, a warm-up of 8 steps (ends at the resume)
    'finetune': ('fixmatch.FixMatch', dict(optimizer='adamw', lr=0.002, wd=0.05, layer_decay=0.5,
                                           lr_warmup_kimg=0.125)),
    # queue (4 per class: wraps), pushed, pl_dist and pl_window: DASO from step 4, windows closing after steps 2, 5,
    # 8, 11, 14 (the resume from 8 starts a new one)
    'daso': ('fixmatch.FixMatch', dict(daso=True, daso_warmup_kimg=0.0625, daso_every=3, daso_queue=4)),
    'flexmatch_daso': ('flexmatch.FlexMatch', dict(daso=True, daso_warmup_kimg=0.0625, daso_every=3, daso_queue=4,
                                                   CAI=True)),
}



def train_again_until_killed(trainer, initial, stop, monkeypatch):
    """Trains `trainer` again from its `initial` checkpoint (its run's tf/ and stats/ deleted) and stops it like a
    kill (KeyboardInterrupt) after the training call that reaches step `stop`."""
    for folder in ('tf', 'stats'):
        shutil.rmtree(os.path.join(trainer.run_dir, folder))
    trainer.checkpoints.checkpoint.read(initial).assert_existing_objects_matched()
    trainer.checkpoints.latest = None
    check = train.Trainer.check_finite

    def stop_there(self):
        check(self)
        if int(self.step.numpy()) >= stop:
            raise KeyboardInterrupt
    monkeypatch.setattr(train.Trainer, 'check_finite', stop_there)
    with pytest.raises(KeyboardInterrupt):
        trainer.train()
    monkeypatch.setattr(train.Trainer, 'check_finite', check)

def algorithm_class(path):
    module, name = path.split('.')
    try:
        return getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError) as e:
        pytest.skip(f'{path} is not available ({e})')


@pytest.mark.parametrize('case', sorted(ALGORITHMS))
def test_stopped_and_resumed_run_equals_straight_run(case, tiny_data, tmp_path, monkeypatch, op_determinism):
    """One Trainer (one compilation): a straight run; then, from the same initial state in a fresh run
    directory, a run stopped at step 10 and resumed from its checkpoint of step 8. A variable missing
    from the checkpoint keeps its value of the earlier run through the reset and the resume, and shows
    as a difference."""
    path, overrides = ALGORITHMS[case]
    cls = algorithm_class(path)
    values = {**SHORT, 'train_dir': str(tmp_path / 'runs'), **overrides}
    values = {k: v for k, v in values.items() if k in cls.all_params()}
    trainer = train.Trainer(cls, settings_lib.resolve(cls.all_params(), values))
    initial = trainer.checkpoints.checkpoint.write(str(tmp_path / 'initial' / 'ckpt'))
    straight = trainer.train()
    assert straight['step'] == 16
    expected, expected_live = trained_state(trainer.run_dir), live_state(trainer)

    train_again_until_killed(trainer, initial, 10, monkeypatch)
    assert trained_state(trainer.run_dir)['step/.ATTRIBUTES/VARIABLE_VALUE'] == 8
    restored = []
    monkeypatch.setattr(trainer, 'restore', lambda: restored.append(train.Trainer.restore(trainer)) or restored[-1])
    resumed = trainer.train()
    assert restored == [8] and resumed['step'] == 16
    assert_same_bits(expected, trained_state(trainer.run_dir))
    live = live_state(trainer)
    assert len(live) == len(expected_live) > len(trainer.model.variables)
    different = [k for k, (a, b) in enumerate(zip(expected_live, live)) if not np.array_equal(a, b)]
    assert not different, f'variables {different} of {len(live)} differ (not in the checkpoint?)'
    assert resumed['accuracy'] == straight['accuracy']


# ---------------------------------------------------------------------------------------------
# Real kills: SIGKILL at a random moment, then during a checkpoint write, then a resume to the end.

KILL_SCRIPT = textwrap.dedent('''
    import os, sys, time
    sys.path.insert(0, {root!r})
    marker = os.environ.get('STALL_SAVE_MARKER')
    if marker:  # stall in the middle of the first checkpoint write (data in ckpt-N_temp/, no index yet)
        from tensorflow.python.checkpoint import functional_saver
        def stalled_merge(*args, **kwargs):
            with open(marker, 'w') as f:
                f.write(str(os.getpid()))
            time.sleep(600)
        functional_saver.gen_io_ops.merge_v2_checkpoints = stalled_merge
    import fixmatch
    from libml import train
    train.main(fixmatch.FixMatch)
''')
# 64 steps, a checkpoint every 16, summaries every 4, one evaluation at the end.
KILL_FLAGS = dict(TINY, dataset=TINY_DATASET, augment='d.d.d', deterministic=True, train_kimg=1, report_kimg=1,
                  save_kimg=0.25)


def start_run(train_dir, env, **extra_env):
    args = [f'--{k}={v}' for k, v in {**KILL_FLAGS, 'train_dir': train_dir}.items()]
    return subprocess.Popen([sys.executable, '-c', KILL_SCRIPT.format(root=ROOT), *args], cwd=ROOT,
                            env=dict(env, **extra_env), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def wait_for(predicate, process, timeout=300):
    deadline = time.time() + timeout
    while not predicate():
        assert process.poll() is None, process.communicate()[1][-3000:]
        assert time.time() < deadline, 'timed out'
        time.sleep(0.02)


def finish(process, timeout=600):
    out, err = process.communicate(timeout=timeout)
    assert process.returncode == 0, err[-3000:]
    return err


def test_sigkilled_run_resumes_to_the_same_bits(tiny_data, tmp_path):
    from tensorboard.backend.event_processing import event_accumulator
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL='3', TQDM_DISABLE='1')
    finish(start_run(str(tmp_path / 'straight'), env))
    expected = trained_state(find_run_dir(tmp_path / 'straight'))

    train_dir = str(tmp_path / 'killed')
    delay = random.Random().uniform(0, 1.5)
    victim = start_run(train_dir, env)
    wait_for(lambda: glob.glob(os.path.join(train_dir, '*', '*', 'tf', 'ckpt-16.index')), victim)
    time.sleep(delay)  # a random moment after the first checkpoint: training, evaluating or saving
    victim.kill()
    victim.wait()
    assert victim.returncode == -signal.SIGKILL, f'finished before the kill ({delay:.2f} s after ckpt-16)'
    run_dir = find_run_dir(train_dir)

    marker = str(tmp_path / 'stalled')
    victim = start_run(train_dir, env, STALL_SAVE_MARKER=marker)
    wait_for(lambda: os.path.exists(marker), victim)
    victim.kill()  # during its first checkpoint write: the data is in ckpt-N_temp/
    victim.wait()
    temp = glob.glob(os.path.join(run_dir, 'tf', 'ckpt-*_temp'))
    assert temp and os.listdir(temp[0]), 'the kill did not happen during a checkpoint write'

    err = finish(start_run(train_dir, env))
    assert 'Removed the leftovers of an interrupted save' in err, err[-3000:]
    assert not glob.glob(os.path.join(run_dir, 'tf', '*_temp')) and not glob.glob(os.path.join(run_dir, '**', '.*.tmp'))
    assert_same_bits(expected, trained_state(run_dir))
    with open(os.path.join(run_dir, 'stats', 'epochs.jsonl')) as f:
        assert [json.loads(line)['step'] for line in f] == [64]
    events = event_accumulator.EventAccumulator(os.path.join(run_dir, 'tf'), purge_orphaned_data=False,
                                                size_guidance={event_accumulator.TENSORS: 0}).Reload()
    for tag in ('losses/xe', 'monitors/lr'):
        assert [e.step for e in events.Tensors(tag)] == list(range(4, 65, 4)), tag
