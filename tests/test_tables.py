"""The experiment runner (dry run) and the aggregation of runs into a markdown table."""
import os
import subprocess
import sys

import numpy as np
import pytest

from conftest import ROOT
from libml import stats
from libml import utils

sys.path.insert(0, os.path.join(ROOT, 'scripts'))
import aggregate_accuracy  # noqa: E402


def fake_run(folder, dataset, name, accuracies, gm=50.0):
    run_dir = os.path.join(folder, dataset, name)
    utils.write_json(os.path.join(run_dir, 'args.json'), {'dataset': dataset})
    stats.write_epochs(run_dir, [{'step': i, 'accuracy': a, 'ema/test': {
        'accuracy': a, 'gm_accuracy': gm, 'worst_class_accuracy': a - 10, 'cross_entropy': 0.5}}
        for i, a in enumerate(accuracies)])


def test_aggregate_mean_and_std_over_seeds(tmp_path):
    fake_run(tmp_path, 'cifar10_LT_20.1@20-1', 'FixMatch', [10, 60, 70, 80])       # last20 median = 65
    fake_run(tmp_path, 'cifar10_LT_20.2@20-1', 'FixMatch', [20, 70, 80, 90])       # 75
    fake_run(tmp_path, 'cifar10_LT_20.1@20-1', 'FixMatch_CAP', [90], gm=40.0)
    table = aggregate_accuracy.aggregate([str(tmp_path)])
    assert list(table) == [('cifar10_LT_20@20-1', 'FixMatch'), ('cifar10_LT_20@20-1', 'FixMatch_CAP')]
    mean, std, seeds = table[('cifar10_LT_20@20-1', 'FixMatch')]['accuracy']
    assert (mean, std, seeds) == (70.0, pytest.approx(np.std([65, 75])), 2)
    assert table[('cifar10_LT_20@20-1', 'FixMatch')]['worst_class_accuracy'][0] == 60.0
    text = aggregate_accuracy.markdown(table)
    assert '| cifar10_LT_20@20-1 | FixMatch | 2 | 70.00 +- 5.00 | 50.00 +- 0.00 | 60.00 +- 5.00 | 0.50 +- 0.00 |' in text
    assert '| cifar10_LT_20@20-1 | FixMatch_CAP | 1 | 90.00 +- 0.00 | 40.00 +- 0.00 |' in text


def test_aggregate_command_line(tmp_path):
    fake_run(tmp_path / 'runs', 'fashion_mnist.1@40-1', 'FixMatch', [50, 60])
    done = subprocess.run([sys.executable, os.path.join(ROOT, 'scripts', 'aggregate_accuracy.py'),
                           str(tmp_path / 'runs'), f'--out={tmp_path / "t.md"}'], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert '55.00 +- 0.00' in open(tmp_path / 't.md').read()
    done = subprocess.run([sys.executable, os.path.join(ROOT, 'scripts', 'aggregate_accuracy.py'), str(tmp_path / 'no')],
                          capture_output=True, text=True)
    assert done.returncode == 2 and 'error: no runs' in done.stderr


def test_runner_dry_run_lists_every_experiment(tmp_path):
    done = subprocess.run([sys.executable, os.path.join(ROOT, 'scripts', 'run_paper_tables.py'), 'cifar10',
                           '--seeds=1,2', '--dry_run', f'--train_dir={tmp_path}', '--extra=--local'],
                          capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    lines = done.stdout.strip().splitlines()
    cadr = [l for l in lines if '/cadr ' in l]
    assert len(cadr) == 3 * 2 * 4  # 3 long-tail settings x 2 seeds x 4 variants
    assert any('--dataset=cifar10_LT_100.2@100-1 --train_kimg=8192 --CAP --CAI --CADR' in l for l in cadr)
    assert all(l.endswith('--local') for l in cadr)
    defix = [l for l in lines if '/defixmatch ' in l]
    assert len(defix) == 2 * 3 and any('cifar10.2@4000-1 --sup_strong --wu=0.5 --debiased' in l for l in defix)
    assert sum('aggregate_accuracy.py' in l for l in lines) == 2
    done = subprocess.run([sys.executable, os.path.join(ROOT, 'scripts', 'run_paper_tables.py'), 'cifar100',
                           '--tables=cadr,nope', '--dry_run'], capture_output=True, text=True)
    assert done.returncode == 2 and 'unknown table' in done.stderr
