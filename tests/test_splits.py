"""Split rules: per-class counts, MNAR draws, files, determinism (exactly the original: test_splits_rule.py)."""
import filecmp
import json
import os
import subprocess
import sys

import numpy as np
import pytest

from conftest import ROOT
from libml import records
from libml import splits
from libml import utils

CIFAR10_POOLS = np.repeat(np.arange(10), 5000)


def write_toy(root, name='toy', per_class=(30, 30, 30, 30), shape=(8, 8, 1), test=10):
    """A small dataset on disk: class k images are filled with level 10*k (+ the index mod 7)."""
    labels = np.repeat(np.arange(len(per_class)), per_class)
    rng = np.random.default_rng(1)
    labels = labels[rng.permutation(len(labels))]
    images = (labels[:, None, None, None] * 10 + np.arange(len(labels))[:, None, None, None] % 7).astype(np.uint8)
    images = np.broadcast_to(images, (len(labels),) + shape).copy()
    os.makedirs(root, exist_ok=True)
    records.write_records(records.record_path(name, 'train', root), images, labels)
    test_labels = np.arange(test) % len(per_class)
    records.write_records(records.record_path(name, 'test', root),
                          np.broadcast_to((test_labels * 10).astype(np.uint8)[:, None, None, None],
                                          (test,) + shape).copy(), test_labels)
    records.DatasetInfo(name, shape, len(per_class), [], True, 2,
                        dict(train=len(labels), test=test)).save(root)
    return images, labels


def test_cadr_long_tail_counts_on_cifar10_pools():
    counts = splits.labeled_counts(CIFAR10_POOLS, 10, 20, lamda=20)
    assert counts.tolist() == [20, 15, 11, 8, 6, 4, 3, 2, 2, 1]
    assert splits.labeled_counts(CIFAR10_POOLS, 10, 50, lamda=50).sum() == 143
    assert splits.labeled_counts(CIFAR10_POOLS, 10, 100, lamda=100).sum() == 250


def test_balanced_counts_are_exact():
    assert splits.labeled_counts(CIFAR10_POOLS, 10, 40).tolist() == [4] * 10
    assert splits.labeled_counts(CIFAR10_POOLS, 10, 4000).tolist() == [400] * 10
    # the greedy on equal class frequencies deals one label per class in turn: the remainder goes to the first ones
    assert splits.labeled_counts(CIFAR10_POOLS, 10, 43).tolist() == [5, 5, 5] + [4] * 7


def test_default_counts_follow_the_class_frequencies():
    # frequencies 1 : 1/2 : 1/4 (400, 200, 100 records): 70 labels -> 40, 20, 10
    labels = np.repeat([0, 1, 2], [400, 200, 100])
    assert splits.labeled_counts(labels, 3, 70).tolist() == [40, 20, 10]
    # by hand, stats [1, .5, .25]: picks 0 (npos 1,0,0: values 0, .5, .25), 1 (-> 0, -.5, .25), 2
    assert splits.greedy_classes([1, .5, .25], 3).tolist() == [0, 1, 2]
    # stops before a class that has no record left
    assert splits.greedy_classes([1, 1], 5, available=[1, 3]).tolist() == [0, 1]


def test_imbalanced_counts_geometric():
    # N_1 = 1500, gamma = 100: head 1500, tail 15, class k = floor(1500 * 100^(-k/9))
    counts = splits.imbalanced_counts(1500, 100, 10)
    assert counts[0] == 1500 and counts[-1] == 15
    assert counts[1] == int(1500 * 100 ** (-1 / 9))
    assert np.all(np.diff(counts) < 0)


def test_mnar_counts_follow_binomial_expectation():
    phi = np.array([0.5, 0.3, 0.2, 0.1, 0.05, 0.02, 0.01, 0.01, 0.005, 0.0])
    chosen = splits.pick_mnar(CIFAR10_POOLS, phi, seed=3)
    counts = np.bincount(CIFAR10_POOLS[chosen], minlength=10)
    mean, std = 5000 * phi, np.sqrt(5000 * phi * (1 - phi))
    assert np.all(np.abs(counts - mean) <= 4 * std + 1e-9), (counts, mean)
    assert counts[-1] == 0
    assert np.array_equal(chosen, splits.pick_mnar(CIFAR10_POOLS, phi, seed=3))
    assert not np.array_equal(chosen, splits.pick_mnar(CIFAR10_POOLS, phi, seed=4))


def test_unlabeled_order_prefixes_follow_distribution():
    labels = np.random.default_rng(0).permutation(np.repeat([0, 1, 2], [600, 300, 100]))
    written = labels[splits.unlabeled_order(labels, 3)]
    fractions = np.array([600, 300, 100]) / 1000
    for t in (10, 50, 123, 600, 1000):
        counts = np.array([np.sum(written[:t] == g) for g in (0, 1, 2)])
        assert np.all(np.abs(counts - t * fractions) <= 1.5), (t, counts)


def test_size_larger_than_a_class_can_give():
    labels = np.repeat(np.arange(4), [30, 30, 30, 5])
    # the greedy follows the frequencies: 95 labels take every record, the 96th is a 31st of class 0
    assert splits.labeled_counts(labels, 4, 95).tolist() == [30, 30, 30, 5]
    with pytest.raises(utils.UserError, match='31 images of class 0 but the data has only 30.*smaller --size'):
        splits.labeled_counts(labels, 4, 96)
    assert splits.labeled_counts(labels, 4, 10, lamda=2).tolist() == [10, 8, 7, 5]
    with pytest.raises(utils.UserError, match='6 images of class 3 but the data has only 5.*smaller --size'):
        splits.labeled_counts(labels, 4, 12, lamda=2)  # ceil(12 * 2^(-k/3)) = 12, 10, 8, 6
    with pytest.raises(utils.UserError, match='40 images of class 0 but the data has only 30'):
        splits.labeled_counts(labels, 4, 40, lamda=2)


def test_bad_split_arguments():
    with pytest.raises(utils.UserError, match='probabilities in'):
        splits.parse_class_probs('0.5,2', 2)
    with pytest.raises(utils.UserError, match='comma-separated'):
        splits.parse_class_probs('a,b', 2)
    with pytest.raises(utils.UserError, match='one'):
        splits.labeled_counts(CIFAR10_POOLS, 10, 20, lamda=20, gamma=10)
    with pytest.raises(utils.UserError, match='no label'):
        splits.labeled_counts(CIFAR10_POOLS, 10, 20, gamma=100)


def test_files_are_deterministic_and_hold_the_chosen_records(tmp_path):
    root = str(tmp_path / 'data')
    images, labels = write_toy(root)
    files = [records.record_path('toy', 'train', root)]
    target_a, target_b = os.path.join(root, 'SSL2', 'a'), os.path.join(root, 'SSL2', 'b')
    for target in (target_a, target_b):
        splits.create_unlabeled(target, files)
        size, meta = splits.create_split(target, files, seed=2, size=12)
    assert size == 12 and meta['distribution'] == [3, 3, 3, 3]
    for suffix in ('-unlabel.tfrecord', '-unlabel.json', '.2@12-label.tfrecord', '.2@12-label.json'):
        assert filecmp.cmp(target_a + suffix, target_b + suffix, shallow=False), suffix
    # the split file holds exactly the records at the chosen original indices
    written = records.parse_labels(records.read_serialized([target_a + '.2@12-label.tfrecord']))
    assert np.array_equal(written, labels[meta['indexes']])
    unlabel = json.load(open(target_a + '-unlabel.json'))
    assert sorted(unlabel['indexes']) == list(range(len(labels)))
    assert unlabel['distribution'] == [30, 30, 30, 30]
    # another seed draws other images; seed 0 takes the first ones of each class
    _, other = splits.create_split(target_a, files, seed=3, size=12)
    assert other['indexes'] != meta['indexes']
    _, first = splits.create_split(target_a, files, seed=0, size=12)
    assert first['indexes'] == sorted(np.concatenate([np.flatnonzero(labels == k)[:3] for k in range(4)]).tolist())


def test_long_tailed_and_inverse_unlabeled_sets(tmp_path):
    root = str(tmp_path / 'data')
    _, labels = write_toy(root, per_class=(40, 40, 40, 40))
    files = [records.record_path('toy', 'train', root)]
    meta = splits.create_unlabeled(os.path.join(root, 'SSL2', 'imb'), files, gamma=8)
    assert meta['distribution'] == [40, 20, 10, 5]
    meta = splits.create_unlabeled(os.path.join(root, 'SSL2', 'inv'), files, gamma=8, inverse=True)
    assert meta['distribution'] == [5, 10, 20, 40]
    size, meta = splits.create_split(os.path.join(root, 'SSL2', 'imb'), files, seed=1, size=16, gamma=8)
    assert size == 16 and meta['distribution'] == [16, 8, 4, 2]
    size, meta = splits.create_split(os.path.join(root, 'SSL2', 'lt'), files, seed=1, size=8, lamda=8)
    assert meta['distribution'] == [8, 4, 2, 1]
    assert meta['label_probs'] == [8 / 40, 4 / 40, 2 / 40, 1 / 40]


def test_mnar_split_file_records_its_probabilities(tmp_path):
    root = str(tmp_path / 'data')
    write_toy(root, per_class=(100, 100, 100, 100))
    files = [records.record_path('toy', 'train', root)]
    size, meta = splits.create_split(os.path.join(root, 'SSL2', 'mnar'), files, seed=1,
                                     class_probs='0.5,0.25,0.1,0')
    assert size == len(meta['indexes']) == sum(meta['distribution'])
    assert meta['distribution'][3] == 0 and meta['label_probs'] == [0.5, 0.25, 0.1, 0.0]
    assert os.path.exists(os.path.join(root, 'SSL2', f'mnar.1@{size}-label.tfrecord'))


def run_script(script, *args, env_root):
    env = dict(os.environ, ML_DATA=env_root, TF_CPP_MIN_LOG_LEVEL='3')
    return subprocess.run([sys.executable, os.path.join(ROOT, 'scripts', script), *args], capture_output=True,
                          text=True, env=env, cwd=ROOT)


def test_command_lines(tmp_path):
    root = str(tmp_path / 'data')
    write_toy(root)
    train = records.record_path('toy', 'train', root)
    target = os.path.join(root, 'SSL2', 'toy_LT_4')
    done = run_script('create_split.py', '--seed=1', '--size=8', '--lamda=4', target, train, env_root=root)
    assert done.returncode == 0, done.stderr
    assert 'toy_LT_4.1@8-1' in done.stdout
    # ceil(8 * 4^(-k/3)): 8, ceil(5.04) = 6, ceil(3.17) = 4, 2
    assert json.load(open(target + '.1@8-label.json'))['distribution'] == [8, 6, 4, 2]
    done = run_script('create_split.py', '--seed=1', '--size=400', target, train, env_root=root)
    assert done.returncode == 2 and done.stderr.strip().splitlines()[-1].startswith('error: ')
    assert not [f for f in os.listdir(os.path.dirname(target)) if f.endswith('.tmp')]
    done = run_script('create_unlabeled.py', '--help', env_root=root)
    assert '--gamma' in done.stdout and '--inverse' in done.stdout
