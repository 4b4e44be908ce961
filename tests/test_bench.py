"""Every benchmark runs end to end at a tiny size and prints its ratio line last (figures untested:
speed goals live in the benchmarks, not in tests); the log filter that keeps their output readable."""
import os
import re
import subprocess
import sys

from conftest import ROOT
from libml import targets

TINY_MODEL = ['--filters=8', '--repeat=1', '--batch=4', '--uratio=1']
BENCHMARKS = {
    'train_step.py': (TINY_MODEL + ['--steps=1', '--repeats=1', '--settings=float32,mixed_bfloat16'],
                      r'^ratio full / bare images/s \(float32\): [0-9.]+; vs float32: float32 1\.00x, mixed_bfloat16 [0-9.]+x$'),
    'scaling.py': (TINY_MODEL + ['--steps=1'], r'^ratio 2 replicas / 1 replica images/s: [0-9.]+$'),
    'input_pipeline.py': (['--batch=4', '--uratio=1', '--steps=2', '--warmup=1', '--repeats=1'],
                          r'^ratio weak-augmented / no-augmentation: [0-9.]+$'),
    'augment.py': (['--batch=4', '--repeats=1', '--sizes=32'],
                   r'^speed-up batched/per-image: RA\+cutout@32px [0-9.]+x, CTA strong@32px [0-9.]+x$'),
    'accuracy.py': (['--algorithms=FullySupervised,FixMatch', '--labels=40', '--train_kimg=0.064', '--out={tmp}/acc.md'],
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


def test_quiet_tensorflow_drops_tensorflow_info_but_keeps_ours_and_warnings():
    import logging
    from libml import utils

    def record(path, level):
        return logging.LogRecord('absl', level, path, 1, 'message', None, None)

    saver = os.path.join('site-packages', 'tensorflow', 'python', 'checkpoint', 'functional_saver.py')
    assert not utils._not_tensorflow_info(record(saver, logging.INFO))
    assert utils._not_tensorflow_info(record(saver, logging.WARNING))
    assert utils._not_tensorflow_info(record(os.path.join(ROOT, 'libml', 'train.py'), logging.INFO))
