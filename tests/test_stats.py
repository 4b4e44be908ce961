"""Run statistics and the accuracy-extraction scripts."""
import json
import os
import subprocess
import sys

import pytest

from conftest import ROOT
from libml import stats
from libml import utils


def write_run(run_dir, accuracies, gms):
    epochs = [{'step': 64 * (i + 1), 'accuracy': a, 'ema/test': {'accuracy': a, 'gm_accuracy': g}}
              for i, (a, g) in enumerate(zip(accuracies, gms))]
    stats.write_epochs(str(run_dir), epochs)


def test_last_medians_by_hand():
    values = list(range(1, 61))  # 1..60
    assert stats.last_medians(values) == {'last01': 60, 'last10': 55.5, 'last20': 50.5, 'last50': 35.5}
    assert stats.last_medians([3.0, 1.0]) == {'last01': 1.0, 'last10': 2.0, 'last20': 2.0, 'last50': 2.0}


@pytest.mark.parametrize('script, output, values', [
    ('extract_accuracy.py', 'accuracy.json', 'accuracies'),
    ('extract_gm_accuracy.py', 'gm_accuracy.json', 'gms')])
def test_extract_scripts(tmp_path, script, output, values):
    data = dict(accuracies=[10, 20, 30, 40, 50, 60, 70, 80, 90, 95, 91, 92], gms=[1, 2, 3, 4, 5, 6, 7, 8, 9, 9, 9, 10])
    write_run(tmp_path, data['accuracies'], data['gms'])
    done = subprocess.run([sys.executable, os.path.join(ROOT, 'scripts', script), str(tmp_path)],
                          capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    summary = json.load(open(tmp_path / 'stats' / output))
    expected = data[values]
    assert summary['last01'] == expected[-1]
    assert summary['last10'] == pytest.approx(sorted(expected[-10:])[4] / 2 + sorted(expected[-10:])[5] / 2)
    middle = sorted(expected)[5:7]  # 12 epochs: last20 and last50 are the median of all of them
    assert summary['last20'] == summary['last50'] == pytest.approx(sum(middle) / 2)


def test_extract_on_a_folder_that_is_not_a_run(tmp_path):
    done = subprocess.run([sys.executable, os.path.join(ROOT, 'scripts', 'extract_accuracy.py'), str(tmp_path)],
                          capture_output=True, text=True)
    assert done.returncode == 2 and 'error: no statistics in' in done.stderr
    with pytest.raises(utils.UserError, match='args.json'):
        stats.read_epochs(str(tmp_path))
