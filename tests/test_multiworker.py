"""Two worker processes on loopback under MultiWorkerMirroredStrategy (TF_CONFIG): the same losses
as one device on the same global batch, only the chief writes, and a killed worker's job resumes."""
import json
import os
import socket
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from conftest import ROOT

WORKER = textwrap.dedent('''
    import json, os, sys
    sys.path.insert(0, {root!r})
    import tensorflow as tf
    import fixmatch
    from libml import settings, train
    values = json.loads(sys.argv[1])
    mode = sys.argv[2]
    s = settings.resolve(fixmatch.FixMatch.all_params(), values)
    if mode == 'steps':  # a few steps, print the losses of each and how many images this worker augmented
        from libml import views
        augmented = []
        apply = views.View.apply
        def counting_apply(self, images, params, xla=False):
            augmented.append([self.code, int(images.shape[0])])  # at trace time: rows per step
            return apply(self, images, params, xla)
        views.View.apply = counting_apply
        trainer = train.Trainer(fixmatch.FixMatch, s)
        iterator = iter(trainer.train_dataset(0))
        losses = [{{k: float(v) for k, v in trainer.train_call(iterator, tf.constant(1, tf.int64)).items()}}
                  for _ in range(3)]
        print('LOSSES ' + json.dumps(dict(replicas=trainer.strategy.num_replicas_in_sync, losses=losses,
                                          augmented=augmented)))
    else:  # a whole run; with KILL_AT, the second worker dies at that step
        kill_at = int(os.environ.get('KILL_AT', '-1'))
        check = train.Trainer.check_finite
        def check_and_maybe_die(self):
            check(self)
            if kill_at >= 0 and int(self.step.numpy()) >= kill_at and not self.is_chief:
                os._exit(3)
        train.Trainer.check_finite = check_and_maybe_die
        restore = train.Trainer.restore
        def restore_and_tell(self):
            step = restore(self)
            print('RESTORED ' + str(step), flush=True)
            return step
        train.Trainer.restore = restore_and_tell
        result = fixmatch.FixMatch.run(**values)
        print('RESULT ' + json.dumps(dict(step=result['step'], accuracy=result['accuracy'])))
''')


def free_ports(count):
    sockets = [socket.socket() for _ in range(count)]
    for s in sockets:
        s.bind(('127.0.0.1', 0))
    ports = [s.getsockname()[1] for s in sockets]
    for s in sockets:
        s.close()
    return ports


def launch(values, mode, workers=2, env_extra=None, timeout=420):
    """Runs `workers` processes (one TF_CONFIG worker each, or one plain process when workers == 1);
    returns [(exit status, stdout, stderr)]."""
    script = WORKER.format(root=ROOT)
    ports = free_ports(workers)
    processes = []
    for index in range(workers):
        env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL='3', **(env_extra or {}))
        if workers > 1:
            env['TF_CONFIG'] = json.dumps({'cluster': {'worker': [f'127.0.0.1:{p}' for p in ports]},
                                           'task': {'type': 'worker', 'index': index}})
        processes.append(subprocess.Popen([sys.executable, '-c', script, json.dumps(values), mode], env=env,
                                          stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
    out = []
    for process in processes:
        try:
            stdout, stderr = process.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            stdout, stderr = process.communicate()
        out.append((process.returncode, stdout, stderr))
    return out


def tagged(stdout, tag):
    return json.loads(next(line[len(tag) + 1:] for line in stdout.splitlines() if line.startswith(tag + ' ')))


def settings(tmp_path, **extra):
    return dict(dataset='fashion_mnist.1@40-1', train_dir=str(tmp_path), filters=8, repeat=1, batch=16, uratio=2,
                augment='d.d.rac', sync_bn=True, ema=0.99, bn_momentum=0.99, eval_size=1000, **extra)


def test_two_workers_give_the_same_loss_as_one_device(fashion_mnist, tmp_path):
    single = launch(settings(tmp_path / 'one', train_kimg=1), 'steps', workers=1)
    assert single[0][0] == 0, single[0][2][-3000:]
    workers = launch(settings(tmp_path / 'two', train_kimg=1), 'steps', workers=2)
    for status, _, stderr in workers:
        assert status == 0, stderr[-3000:]
    one = tagged(single[0][1], 'LOSSES')
    two = [tagged(stdout, 'LOSSES') for _, stdout, _ in workers]
    assert one['replicas'] == 1 and two[0]['replicas'] == two[1]['replicas'] == 2
    assert two[0]['losses'] == two[1]['losses']  # both workers report the same global values
    # each worker's pipeline and step augment only its own half of the global batch (16 labeled, 32 unlabeled)
    rows = lambda report: sorted({tuple(entry) for entry in report['augmented']})  # noqa: E731 (traced twice)
    assert rows(one) == [('d', 16), ('d', 32), ('rac', 32)]
    for worker in two:
        assert rows(worker) == [('d', 8), ('d', 16), ('rac', 16)]
    first_one, first_two = one['losses'][0], two[0]['losses'][0]
    for key in ('losses/xe', 'losses/xeu', 'losses/wd', 'monitors/mask'):
        assert first_two[key] == pytest.approx(first_one[key], rel=1e-5, abs=1e-6), key


def test_only_the_chief_writes_and_a_killed_worker_resumes(fashion_mnist, tmp_path):
    values = settings(tmp_path, train_kimg=0.5, report_kimg=0.5, save_kimg=0.25)
    # the second worker dies at step 20 (after the checkpoint of step 16); the chief then fails too
    killed = launch(values, 'run', env_extra={'KILL_AT': '20'}, timeout=300)
    assert killed[1][0] == 3
    assert killed[0][0] != 0
    runs = [os.path.join(root, d) for root, dirs, _ in os.walk(tmp_path) for d in dirs if d.startswith('FixMatch')]
    assert len(runs) == 1
    checkpoints = json.dumps(sorted(os.listdir(os.path.join(runs[0], 'tf'))))
    assert 'ckpt-16.index' in checkpoints and 'ckpt-32' not in checkpoints  # step 32 (the last) never ran
    # both workers restarted: they resume from step 16 and finish
    resumed = launch(values, 'run', timeout=300)
    for status, _, stderr in resumed:
        assert status == 0, stderr[-3000:]
    results = [tagged(stdout, 'RESULT') for _, stdout, _ in resumed]
    assert results[0]['step'] == results[1]['step'] == 32
    assert [tagged(stdout, 'RESTORED') for _, stdout, _ in resumed] == [16, 16]
    # only the chief wrote: one run directory, one stats line, no worker checkpoint folders left
    assert not [d for d in os.listdir(tmp_path) if d.startswith('worker')]
    lines = open(os.path.join(runs[0], 'stats', 'epochs.jsonl')).read().splitlines()
    assert [json.loads(l)['step'] for l in lines] == [32]
    assert np.isfinite(results[0]['accuracy'])
