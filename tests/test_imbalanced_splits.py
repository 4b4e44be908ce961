"""The imbalanced SSL protocol (USB's make_imbalance_data): per-class counts, reversed unlabeled tails,
labeled and unlabeled sets disjoint, and the target name that states N1, gamma, M1 and gamma_u."""
import json
import subprocess
import sys

import numpy as np
import pytest

from conftest import ROOT
from libml import data
from libml import splits
from libml import targets
from libml import utils
from test_splits import CIFAR10_POOLS, write_toy


def test_cifar10_counts_follow_the_formula():
    # int(1500 * 100^(-c/9)) and int(3000 * 100^(-c/9)), by hand
    assert splits.labeled_counts(CIFAR10_POOLS, 10, 1500, gamma=100).tolist() == \
        [1500, 899, 539, 323, 193, 116, 69, 41, 25, 15]
    sizes = np.full(10, 5000)
    assert splits.tail_profile(sizes, 100, False, 3000).tolist() == [3000, 1798, 1078, 646, 387, 232, 139, 83, 50, 30]
    # gamma_u = -100: class 9 - c gets int(3000 * 100^(-c/9))
    assert splits.tail_profile(sizes, 100, True, 3000).tolist() == [30, 50, 83, 139, 232, 387, 646, 1078, 1798, 3000]
    assert splits.labeled_counts(CIFAR10_POOLS, 10, 1500, gamma=150).tolist() == \
        [1500, 859, 492, 282, 161, 92, 53, 30, 17, 10]


def test_target_name_round_trips():
    name = targets.imbalanced_target('cifar10', 100, 3000, -100)
    assert name == 'cifar10_IMB_100_U3000_-100'
    split = targets.parse_name(f'{name}.1@1500-1')
    assert (split.target, split.seed, split.size, split.valid) == (name, 1, 1500, 1)
    assert str(split) == f'{name}.1@1500-1'
    recipe = targets.recipe_for(name)
    assert (recipe.base, recipe.unlabeled, recipe.split) == ('cifar10', dict(size=3000, gamma=-100.0),
                                                             dict(gamma=100.0, disjoint=True))
    assert targets.imbalanced_target('cifar10', 150, 4000, 1.5) == 'cifar10_IMB_150_U4000_1.5'
    assert targets.recipe_for('cifar10_IMB_150_U4000_1.5').unlabeled == dict(size=4000, gamma=1.5)
    with pytest.raises(utils.UserError, match='unknown dataset'):
        targets.recipe_for('cifar10_LT_20_U3000_100')  # the unlabeled part belongs to _IMB_ targets


# 10 classes of 30 images. N1 = 10, gamma = 10: int(10 * 10^(-c/9)); M1 = 20, gamma_u = -10: class 9 - c gets
# int(20 * 10^(-c/9)). By hand: 10^(-1/9) = 0.7743, 10^(-2/9) = 0.5995, ... 10^(-8/9) = 0.1292.
TOY_LABELED = [10, 7, 5, 4, 3, 2, 2, 1, 1, 1]
TOY_UNLABELED_REVERSED = [2, 2, 3, 4, 5, 7, 9, 11, 15, 20]


@pytest.mark.parametrize('ugamma, expected', [(-10, TOY_UNLABELED_REVERSED), (10, TOY_UNLABELED_REVERSED[::-1])])
def test_ensure_files_creates_disjoint_imbalanced_sets(tmp_path, ugamma, expected):
    root = str(tmp_path)
    _, labels = write_toy(root, per_class=(30,) * 10)
    name = targets.parse_name(f'{targets.imbalanced_target("toy", 10, 20, ugamma)}.3@10-1')
    targets.ensure_files(name, root=root)
    stem = f'{root}/SSL2/{name.target}'
    with open(f'{stem}-unlabel.json') as f:
        unlabeled = json.load(f)
    with open(f'{stem}.3@10-label.json') as f:
        labeled = json.load(f)
    assert labeled['distribution'] == TOY_LABELED and unlabeled['distribution'] == expected
    assert np.bincount(labels[labeled['indexes']], minlength=10).tolist() == TOY_LABELED
    assert not set(labeled['indexes']) & set(unlabeled['indexes'])  # disjoint
    assert labeled['args']['disjoint'] and unlabeled['args']['size'] == 20
    # what training reads: the labeled split, the unlabeled set less the validation image, none of them shared
    loaded = data.load(str(name), root=root)
    assert len(loaded.labeled) == sum(TOY_LABELED) and len(loaded.unlabeled) + len(loaded.valid) == sum(expected)
    assert np.bincount(loaded.labeled.labels, minlength=10).tolist() == TOY_LABELED


def test_scripts_take_the_protocol_flags(tmp_path):
    root = str(tmp_path)
    write_toy(root, per_class=(30,) * 10)
    target, source = f'{root}/SSL2/toy_x', f'{root}/toy-train.tfrecord'
    run = lambda script, *args: subprocess.run([sys.executable, f'{ROOT}/scripts/{script}', *args, target, source],
                                                capture_output=True, text=True, cwd=ROOT)
    done = run('create_split.py', '--seed=1', '--size=10', '--gamma=10', '--disjoint')
    assert done.returncode == 2 and done.stderr.strip().count('\n') == 0 and 'does not exist' in done.stderr
    assert run('create_unlabeled.py', '--size=20', '--gamma=-10').returncode == 0
    assert run('create_split.py', '--seed=1', '--size=10', '--gamma=10', '--disjoint').returncode == 0
    with open(f'{target}.1@10-label.json') as f, open(f'{target}-unlabel.json') as g:
        chosen, pool = json.load(f), json.load(g)
    assert chosen['distribution'] == TOY_LABELED and pool['distribution'] == TOY_UNLABELED_REVERSED
    assert not set(chosen['indexes']) & set(pool['indexes'])


def test_refusals(tmp_path):
    root = str(tmp_path)
    write_toy(root, per_class=(30,) * 10)
    source = [f'{root}/toy-train.tfrecord']
    with pytest.raises(utils.UserError, match='needs --gamma'):
        splits.create_unlabeled(f'{root}/SSL2/a', source, size=20)
    with pytest.raises(utils.UserError, match='>= 1'):
        splits.create_unlabeled(f'{root}/SSL2/a', source, gamma=-0.5)
    splits.create_unlabeled(f'{root}/SSL2/a', source, gamma=1, size=25)  # 25 of each class: 5 left per class
    with pytest.raises(utils.UserError, match='without the unlabeled set'):
        splits.create_split(f'{root}/SSL2/a', source, 1, 10, gamma=10, disjoint=True)
    with pytest.raises(utils.UserError, match='--disjoint takes'):
        splits.create_split(f'{root}/SSL2/a', source, 1, 10, disjoint=True)
