"""Every benchmark runs end to end at a tiny size and prints its ratio line last (train_step, augment
and scaling through bench/gpu.sh --small; figures untested: speed goals live in the benchmarks, not
in tests); the log filter that keeps their output readable."""
import json
import os
import re
import subprocess
import sys

from conftest import ROOT
from libml import targets

TINY_MODEL = ['--filters=8', '--repeat=1', '--batch=4', '--uratio=1']
BENCHMARKS = {
    'profile_step.py': (TINY_MODEL + ['--steps=1'], r'^top op types, share of op self time: \S+ [0-9]+%'),
    'input_pipeline.py': (['--batch=4', '--uratio=1', '--steps=2', '--warmup=1', '--repeats=1'],
                          r'^ratio weak-augmented / no-augmentation: [0-9.]+$'),
    'archs.py': (TINY_MODEL + ['--steps=1', '--repeats=1', '--archs=wrn,vit_ti4', '--input_size=16'],
                 r'^images/s vs wrn: wrn 1\.00x, vit_ti4 [0-9.]+x$'),
    'accuracy.py': (['--algorithms=FullySupervised,FixMatch', '--labels=40', '--train_kimg=0.064', '--eval_size=500',
                     '--out={tmp}/acc.md'],
                    r'^accuracy / supervised baseline: FixMatch@40 [0-9.]+x$'),
}


def test_every_benchmark_runs_and_ends_with_its_ratio(fashion_mnist, tmp_path):
    targets.ensure_files(targets.parse_name('fashion_mnist.1@40-1'))  # once, before the processes that read it start
    env = dict(os.environ, PYTHONPATH=ROOT)
    running = {name: subprocess.Popen([sys.executable, os.path.join(ROOT, 'bench', name)] +
                                      [a.format(tmp=tmp_path) for a in args],
                                      cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
               for name, (args, _) in BENCHMARKS.items()}
    for name, process in running.items():
        out, err = process.communicate(timeout=600)
        assert process.returncode == 0, f'{name} failed:\n{err[-3000:]}'
        last = out.strip().splitlines()[-1]
        assert re.match(BENCHMARKS[name][1], last), f'{name} last line: {last!r}'
    assert '| FixMatch |' in (tmp_path / 'acc.md').read_text()


def test_gpu_check_runs_small_on_the_cpu_and_writes_its_tables(fashion_mnist, tmp_path):
    """bench/gpu.sh, the one-command accelerator check, at its CPU size: every part runs and lands in
    gpu.json and gpu.md."""
    targets.ensure_files(targets.parse_name('fashion_mnist.1@40-1'))
    env = dict(os.environ, PYTHONPATH=ROOT, PYTHON=sys.executable)
    done = subprocess.run(['bash', os.path.join(ROOT, 'bench', 'gpu.sh'), str(tmp_path / 'gpu'), '--small',
                           '--run_seconds=5'], cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads((tmp_path / 'gpu' / 'gpu.json').read_text())
    assert set(result['train_step']['steps_per_second']) == {'float32', 'mixed_bfloat16'}
    assert result['augment']['images_per_second'] and len(result['scaling']['steps_per_second']) == 2
    assert result['fashion_mnist_run']['accuracy'] is not None
    last_lines = {  # train_step.py, augment.py and scaling.py ran inside it: their logs end with their ratio
        'train_step': r'^ratio full / bare images/s \(float32\): [0-9.]+; vs float32: float32 1\.00x, mixed_bfloat16 [0-9.]+x$',
        'augment': r'^speed-up batched/per-image: .*@32px [0-9.]+x.*@96px [0-9.]+x$',
        'scaling': r'^ratio [0-9]+ replicas / 1 replica images/s: [0-9.]+$'}
    for name, pattern in last_lines.items():
        last = (tmp_path / 'gpu' / f'{name}.log').read_text().strip().splitlines()[-1]
        assert re.match(pattern, last), f'{name} last line: {last!r}'
    table = (tmp_path / 'gpu' / 'gpu.md').read_text()
    assert '| full FixMatch step, float32 |' in table and 'EMA test accuracy' in table
    assert done.stdout.strip().splitlines()[-1].startswith('best full FixMatch step: ')


def test_quiet_tensorflow_drops_tensorflow_info_but_keeps_ours_and_warnings():
    import logging
    from libml import utils

    def record(path, level):
        return logging.LogRecord('absl', level, path, 1, 'message', None, None)

    saver = os.path.join('site-packages', 'tensorflow', 'python', 'checkpoint', 'functional_saver.py')
    assert not utils._not_tensorflow_info(record(saver, logging.INFO))
    assert utils._not_tensorflow_info(record(saver, logging.WARNING))
    assert utils._not_tensorflow_info(record(os.path.join(ROOT, 'libml', 'train.py'), logging.INFO))
