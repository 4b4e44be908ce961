"""The split rule is the original FixMatch's: checked against an independent re-implementation written here
with plain loops and the legacy global RNG (np.random.seed + np.random.shuffle), as the original scripts ran it."""
import json
import os
import shlex
import subprocess
import sys

import numpy as np
import pytest

from libml import data
from libml import records
from libml import splits
from libml import utils
from tests.test_splits import write_toy

SVHN_TRAIN = np.array([4948, 13861, 10585, 8497, 7458, 6882, 5727, 5595, 5045, 4659])  # SVHN train, digits 0..9


def shuffled(counts, seed=3):
    """Labels with counts[k] records of class k, in a random record order."""
    labels = np.repeat(np.arange(len(counts)), counts)
    return labels[np.random.RandomState(seed).permutation(len(labels))]


BALANCED = shuffled([60] * 10)
SVHN_LIKE = shuffled(np.round(SVHN_TRAIN / 40).astype(int))  # 124, 347, 265, ... : imbalanced like SVHN
STL_TRAIN = shuffled([50] * 10)
STL_LIKE = np.concatenate([STL_TRAIN, np.full(300, -1)])  # train images, then the unlabeled ones (label -1)


def original_class_lists(labels, nclass, seed):
    """class_id as the original built it: positions per class, then np.random.seed(seed) and one
    np.random.shuffle per class in class order (seed 0: no shuffle). The global RNG state is restored."""
    class_id = [[] for _ in range(nclass)]
    for position, label in enumerate(labels):
        class_id[label].append(position)
    class_id = [np.array(positions, dtype=np.int64) for positions in class_id]
    if seed:
        saved = np.random.get_state()
        np.random.seed(seed)
        for k in range(nclass):
            np.random.shuffle(class_id[k])
        np.random.set_state(saved)
    return class_id


def original_split(labels, nclass, seed, size, stl=False):
    """Sorted positions chosen by the original create_split.py (run on labeled training records only)."""
    counts = np.zeros(nclass)
    for label in labels:
        counts[label] += 1
    stats = counts / counts.max()
    if stl:
        stats[:] = 1  # the original's STL-10 special case
    class_id = original_class_lists(labels, nclass, seed)
    npos = np.zeros(nclass, np.int64)
    chosen = []
    for _ in range(size):
        c = np.argmax(stats - npos / max(npos.max(), 1))
        chosen.append(int(class_id[c][npos[c]]))
        npos[c] += 1
    return sorted(chosen)


def original_unlabeled(labels, nclass, stl=False):
    """Positions in the order the original create_unlabeled.py wrote them. It labeled the STL-10 unlabeled images 0
    (replayed here) and forced train_stats to ones for STL-10."""
    ids = [0 if label < 0 else int(label) for label in labels]
    counts = np.zeros(nclass)
    for label in ids:
        counts[label] += 1
    stats = np.ones(nclass) if stl else counts / counts.max()
    queues = [[] for _ in range(nclass)]
    npos = np.zeros(nclass, np.int64)
    written = []
    for position, label in enumerate(ids):
        queues[label].append(position)
        while True:
            c = np.argmax(stats - npos / max(npos.max(), 1))
            if not queues[c]:
                break
            written.append(queues[c].pop(0))
            npos[c] += 1
    for queue in queues:
        written.extend(queue)
    return written


def test_randomstate_draws_what_the_global_seed_drew():
    for seed in (1, 2, 12345):
        ours = splits.class_positions(SVHN_LIKE, 10, seed)
        for mine, theirs in zip(ours, original_class_lists(SVHN_LIKE, 10, seed)):
            assert mine.dtype == np.int64 and np.array_equal(mine, theirs)
    unshuffled = splits.class_positions(SVHN_LIKE, 10, 0)
    assert all(np.array_equal(p, np.flatnonzero(SVHN_LIKE == k)) for k, p in enumerate(unshuffled))


@pytest.mark.parametrize('seed', [0, 1, 2, 5])
@pytest.mark.parametrize('labels,sizes', [(BALANCED, (10, 40, 43, 250)), (SVHN_LIKE, (10, 40, 250, 1000))],
                         ids=['balanced', 'svhn_like'])
def test_labeled_split_is_the_original(labels, sizes, seed):
    for size in sizes:
        chosen = splits.choose_labeled(labels, 10, seed, size)
        assert chosen.tolist() == original_split(labels, 10, seed, size), size
        assert len(chosen) == size


def test_labeled_counts_follow_the_frequencies_on_imbalanced_data():
    counts = np.bincount(SVHN_LIKE[splits.choose_labeled(SVHN_LIKE, 10, 1, 1000)], minlength=10)
    expected = 1000 * np.bincount(SVHN_LIKE) / len(SVHN_LIKE)
    assert np.all(np.abs(counts - expected) <= 1), (counts, expected)
    assert np.bincount(BALANCED[splits.choose_labeled(BALANCED, 10, 1, 250)]).tolist() == [25] * 10


@pytest.mark.parametrize('seed', [0, 1, 3])
def test_stl_like_split_ignores_the_unlabeled_images(seed):
    for size in (10, 40, 250):
        assert splits.choose_labeled(STL_LIKE, 10, seed, size).tolist() == \
            original_split(STL_TRAIN, 10, seed, size, stl=True)


@pytest.mark.parametrize('labels,stl', [(BALANCED, False), (SVHN_LIKE, False), (STL_LIKE, True),
                                        (STL_LIKE[np.random.RandomState(5).permutation(len(STL_LIKE))], True),
                                        (shuffled([9, 1, 30, 4]), False)],
                         ids=['balanced', 'svhn_like', 'stl_like', 'stl_like_mixed', 'skewed'])
def test_unlabeled_order_is_the_original(labels, stl):
    nclass = int(labels.max()) + 1
    order = splits.unlabeled_order(labels, nclass)
    assert order.tolist() == original_unlabeled(labels, nclass, stl=stl)
    assert sorted(order.tolist()) == list(range(len(labels)))


def test_long_tail_takes_the_first_of_the_same_shuffle():
    labels = shuffled([30] * 10, seed=4)
    for seed in (0, 1, 2):
        chosen = splits.choose_labeled(labels, 10, seed, 20, lamda=20)
        assert np.bincount(labels[chosen], minlength=10).tolist() == [20, 15, 11, 8, 6, 4, 3, 2, 2, 1]
        class_id = original_class_lists(labels, 10, seed)
        expected = sorted(int(i) for k, n in enumerate([20, 15, 11, 8, 6, 4, 3, 2, 2, 1]) for i in class_id[k][:n])
        assert chosen.tolist() == expected
    # the balanced split of the same seed starts each class with the same images
    balanced = set(splits.choose_labeled(labels, 10, 1, 10).tolist())
    assert balanced <= set(splits.choose_labeled(labels, 10, 1, 20, lamda=20).tolist())


def test_files_hold_records_in_original_order_and_sorted_json(tmp_path):
    root = str(tmp_path / 'data')
    _, labels = write_toy(root, per_class=(40, 20, 10, 30))
    files = [records.record_path('toy', 'train', root)]
    target = os.path.join(root, 'SSL2', 'toy')
    size, meta = splits.create_split(target, files, seed=3, size=20)
    expected = original_split(labels, 4, 3, 20)
    assert meta['indexes'] == expected and meta['split_rule'] == splits.SPLIT_RULE and meta['fold'] is None
    assert meta['distribution'] == [8, 4, 2, 6]  # 20 labels in proportion to 40:20:10:30
    written = records.parse_labels(records.read_serialized([target + '.3@20-label.tfrecord']))
    assert written.tolist() == labels[expected].tolist()  # record order = original order = sorted positions
    unlabel = splits.create_unlabeled(target, files)
    assert unlabel['indexes'] == original_unlabeled(labels, 4) and unlabel['split_rule'] == splits.SPLIT_RULE
    written = records.parse_labels(records.read_serialized([target + '-unlabel.tfrecord']))
    assert written.tolist() == labels[unlabel['indexes']].tolist()


def test_long_tailed_unlabeled_set_uses_the_same_shuffle(tmp_path):
    root = str(tmp_path / 'data')
    _, labels = write_toy(root, per_class=(40, 40, 40, 40))
    files = [records.record_path('toy', 'train', root)]
    for inverse, counts in ((False, [40, 20, 10, 5]), (True, [5, 10, 20, 40])):
        meta = splits.create_unlabeled(os.path.join(root, 'SSL2', 'imb'), files, gamma=8, inverse=inverse, seed=2)
        class_id = original_class_lists(labels, 4, 2)
        kept = sorted(int(i) for k, n in enumerate(counts) for i in class_id[k][:n])
        assert sorted(meta['indexes']) == kept and meta['distribution'] == counts
        assert meta['indexes'] == [kept[i] for i in original_unlabeled(labels[kept], 4)]


def run_commands(message, root):
    """Runs the command a UserError message ends with (after 'with: ')."""
    command = message.split('with: ', 1)[1]
    argv = shlex.split(command)
    assert argv[0] == 'python'
    done = subprocess.run([sys.executable] + argv[1:], capture_output=True, text=True,
                          env=dict(os.environ, ML_DATA=root, TF_CPP_MIN_LOG_LEVEL='3'))
    assert done.returncode == 0, done.stderr


def strip_rule(path, rule=None):
    meta = json.load(open(path))
    del meta['split_rule']
    if rule is not None:
        meta['split_rule'] = rule
    utils.write_json(path, meta)


def test_splits_of_the_old_rule_are_refused_with_the_command_that_recreates_them():
    root = utils.ml_data()
    write_toy(root, per_class=(20, 20, 20, 20))
    data.load('toy.1@8-1')  # creates both files
    target = os.path.join(root, 'SSL2', 'toy')
    label_json, unlabel_json = target + '.1@8-label.json', target + '-unlabel.json'
    strip_rule(label_json)
    strip_rule(unlabel_json)
    with pytest.raises(utils.UserError) as err:
        data.load('toy.1@8-1')
    message = str(err.value)
    assert '\n' not in message and message.startswith(f'{unlabel_json} was made by an older split rule')
    assert 'recreate it with: python ' in message and 'create_unlabeled.py ' in message
    train = records.record_path('toy', 'train', root)
    assert message.endswith(f'create_unlabeled.py {utils.shell_path(target)} {utils.shell_path(train)}')
    splits.create_unlabeled(target, [train])
    with pytest.raises(utils.UserError) as err:
        data.load('toy.1@8-1', auto_create=True)  # stale files are refused, never recreated silently
    message = str(err.value)
    assert message.startswith(f'{label_json} was made by an older split rule')
    assert 'create_split.py --seed=1 --size=8 ' in message and message.endswith('toy-train.tfrecord')
    run_commands(message, root)
    ssl = data.load('toy.1@8-1')
    assert ssl.label_meta['split_rule'] == splits.SPLIT_RULE and len(ssl.labeled) == 8
    strip_rule(label_json, rule=splits.SPLIT_RULE + 1)
    with pytest.raises(utils.UserError, match=r'made by split rule 3, newer than this code\'s 2; update the code'):
        data.load('toy.1@8-1')


def test_refusal_of_a_hand_made_split_names_its_options():
    root = utils.ml_data()
    write_toy(root, per_class=(100, 100, 100, 100))
    files = [records.record_path('toy', 'train', root)]
    target = os.path.join(root, 'SSL2', 'toy_MNAR')
    splits.create_unlabeled(target, files)
    size, first = splits.create_split(target, files, seed=1, class_probs='0.5,0.25,0.1,0')
    strip_rule(f'{target}.1@{size}-label.json')
    with pytest.raises(utils.UserError) as err:
        data.load(f'toy_MNAR.1@{size}-1')
    message = str(err.value)
    assert f'create_split.py --class_probs=0.5,0.25,0.1,0.0 --seed=1 --size={size} ' in message
    run_commands(message, root)  # --size equal to the drawn count is accepted
    assert json.load(open(f'{target}.1@{size}-label.json'))['indexes'] == first['indexes']
    with pytest.raises(utils.UserError, match=f'draws {size} labels, not --size={size + 1}'):
        splits.create_split(target, files, seed=1, size=size + 1, class_probs='0.5,0.25,0.1,0')
