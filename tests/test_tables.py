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


def fake_run(folder, dataset, name, accuracies, gm=50.0, balanced=45.0):
    run_dir = os.path.join(folder, dataset, name)
    utils.write_json(os.path.join(run_dir, 'args.json'), {'dataset': dataset})
    stats.write_epochs(run_dir, [{'step': i, 'accuracy': a, 'ema/test': {
        'accuracy': a, 'balanced_accuracy': balanced, 'gm_accuracy': gm, 'worst_class_accuracy': a - 10,
        'cross_entropy': 0.5}} for i, a in enumerate(accuracies)])


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
    assert ('| cifar10_LT_20@20-1 | FixMatch | 2 | 70.00 +- 5.00 | 45.00 +- 0.00 | 50.00 +- 0.00 | 60.00 +- 5.00 | '
            '0.50 +- 0.00 |') in text
    assert '| cifar10_LT_20@20-1 | FixMatch_CAP | 1 | 90.00 +- 0.00 | 45.00 +- 0.00 | 40.00 +- 0.00 |' in text


def test_balanced_gm_and_worst_class_columns_by_hand(tmp_path):
    from libml import metrics
    # 5 test images of 3 classes: class 0 both right, class 1 one of two, class 2 its one wrong
    labels = np.array([0, 0, 1, 1, 2])
    logits = np.eye(3)[[0, 0, 1, 0, 1]]
    m = metrics.classification_metrics(logits, labels, 3)
    assert m['accuracy'] == pytest.approx(60.0)                     # 3 of 5
    assert m['balanced_accuracy'] == pytest.approx(50.0)            # (100 + 50 + 0) / 3
    assert m['worst_class_accuracy'] == 0.0                         # class 2
    assert m['gm_accuracy'] == pytest.approx(100 * (1 * 0.5 / 300) ** (1 / 3))  # 0% counts as 1/(100 K): 11.86
    for seed, epochs in ((1, [m]), (2, [dict(m, accuracy=80.0, balanced_accuracy=70.0, worst_class_accuracy=40.0)])):
        run_dir = os.path.join(tmp_path, f'cifar10_IMB_100_U3000_100.{seed}@1500-1', 'FixMatch_dasoTrue')
        utils.write_json(os.path.join(run_dir, 'args.json'), {})
        stats.write_epochs(run_dir, [{'step': 1, 'accuracy': e['accuracy'], 'ema/test': e} for e in epochs])
    cells = aggregate_accuracy.aggregate([str(tmp_path)])[('cifar10_IMB_100_U3000_100@1500-1', 'FixMatch_dasoTrue')]
    assert cells['accuracy'] == (70.0, 10.0, 2) and cells['balanced_accuracy'] == (60.0, 10.0, 2)
    assert cells['worst_class_accuracy'] == (20.0, 20.0, 2)
    assert cells['gm_accuracy'][0] == pytest.approx(11.856, abs=1e-3)
    text = aggregate_accuracy.markdown({('d', 'r'): cells})
    assert '| d | r | 2 | 70.00 +- 10.00 | 60.00 +- 10.00 | 11.86 +- 0.00 | 20.00 +- 20.00 |' in text


def test_a_metric_an_older_run_lacks_shows_na(tmp_path):
    run_dir = os.path.join(tmp_path, 'cifar10.1@40-1', 'FixMatch')
    utils.write_json(os.path.join(run_dir, 'args.json'), {})
    stats.write_epochs(run_dir, [{'step': 1, 'accuracy': 50.0, 'ema/test': {
        'accuracy': 50.0, 'gm_accuracy': 40.0, 'worst_class_accuracy': 30.0, 'cross_entropy': 1.0}}])
    text = aggregate_accuracy.markdown(aggregate_accuracy.aggregate([str(tmp_path)]))
    assert '| cifar10@40-1 | FixMatch | 1 | 50.00 +- 0.00 | n/a | 40.00 +- 0.00 | 30.00 +- 0.00 | 1.00 +- 0.00 |' in text


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
    imbalanced = [l for l in lines if '/imbalanced ' in l]
    assert len(imbalanced) == 3 * 2 * 8  # 3 (gamma, gamma_u) settings x 2 seeds x 8 variants
    for target in ('cifar10_IMB_100_U3000_100', 'cifar10_IMB_100_U3000_-100', 'cifar10_IMB_150_U3000_150'):
        assert sum(f'--dataset={target}.2@1500-1 ' in l for l in imbalanced) == 8
    paper = '--lr=0.03 --lr_schedule=constant --train_kimg=16384'
    assert all(paper in l and l.endswith('--local') for l in imbalanced)
    assert sum(l.startswith('python fully_supervised.py') and '--uratio' not in l for l in imbalanced) == 6
    variants = [l.split('--uratio=2 ')[1] for l in imbalanced if l.startswith('python fixmatch.py')]
    crest = '--crest=6 --train_kimg=24576 '  # USB: 6 generations of 65,536 steps of 64
    for variant in ('', '--darp ', crest, crest + '--crest_plus ', '--abc ', '--daso ', '--CAP --CAI --CADR '):
        assert sum(rest.startswith(variant + '--nobaseline') for rest in variants) == 6, variant
    assert (f'python fixmatch.py --dataset=cifar10_IMB_100_U3000_-100.1@1500-1 {paper} --uratio=2 --daso --nobaseline '
            f'--train_dir={tmp_path}/imbalanced --local') in imbalanced
    assert sum('aggregate_accuracy.py' in l for l in lines) == 3
    done = subprocess.run([sys.executable, os.path.join(ROOT, 'scripts', 'run_paper_tables.py'), 'cifar100',
                           '--tables=cadr,nope', '--dry_run'], capture_output=True, text=True)
    assert done.returncode == 2 and 'unknown table' in done.stderr
    done = subprocess.run([sys.executable, os.path.join(ROOT, 'scripts', 'run_paper_tables.py'), 'cifar100',
                           '--tables=imbalanced', '--dry_run'], capture_output=True, text=True)
    lines = done.stdout.strip().splitlines()
    assert done.returncode == 0 and len(lines) == 3 * 8 + 1
    assert sum('cifar100_IMB_10_U300_-10.1@150-1' in l and '--daso --daso_T_dist=0.3' in l for l in lines) == 1
    assert sum('--daso_T_dist' in l for l in lines) == 1  # only the reversed setting (USB's configs)
