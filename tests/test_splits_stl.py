"""STL-10: the official folds travel from a (small, synthetic) stl10_binary.tar.gz to the labeled split."""
import io
import json
import os
import tarfile

import numpy as np
import pytest

from libml import data
from libml import readers
from libml import records
from libml import registry
from libml import splits
from libml import utils
from tests.test_splits_rule import original_split, original_unlabeled

NTRAIN, NUNLABELED, FOLD = 30, 7, 4  # 3 training images per class; folds of 4 (1000 in the real archive)


def stl_bytes(images):
    """STL-10 *_X.bin layout: per image, the red, green and blue planes, each stored column by column."""
    return np.ascontiguousarray(np.asarray(images, np.uint8).transpose(0, 3, 2, 1)).tobytes()


def write_archive(path, folds_text):
    """A stl10_binary.tar.gz with NTRAIN labeled, NUNLABELED unlabeled and 2 test images; returns train labels."""
    rng = np.random.RandomState(7)
    labels = rng.permutation(np.repeat(np.arange(10), NTRAIN // 10))
    members = {'train_X.bin': stl_bytes(rng.randint(0, 256, (NTRAIN, 96, 96, 3))),
               'train_y.bin': bytes((labels + 1).tolist()),
               'test_X.bin': stl_bytes(rng.randint(0, 256, (2, 96, 96, 3))), 'test_y.bin': bytes([1, 10]),
               'unlabeled_X.bin': stl_bytes(rng.randint(0, 256, (NUNLABELED, 96, 96, 3))),
               'fold_indices.txt': folds_text.encode()}
    with tarfile.open(path, 'w:gz') as tar:
        for name, content in members.items():
            info = tarfile.TarInfo('stl10_binary/' + name)
            info.size = len(content)
            tar.addfile(info, io.BytesIO(content))
    return labels


FOLDS = [np.random.RandomState(s).choice(NTRAIN, FOLD, replace=False).tolist() for s in range(10)]
FOLDS_TEXT = ''.join(' '.join(map(str, fold)) + ' \n' for fold in FOLDS)  # the real file ends lines with a space


@pytest.fixture
def stl_root(tmp_path):
    root = utils.ml_data()
    write_archive(tmp_path / 'stl10_binary.tar.gz', FOLDS_TEXT)
    registry.convert('stl10', root=root, source_dir=str(tmp_path))
    return root


def source_files(root):
    return [records.record_path('stl10', 'train', root), records.record_path('stl10', 'unlabeled', root)]


def test_converter_keeps_the_folds(stl_root):
    info = records.DatasetInfo.load('stl10', stl_root)
    assert info.folds == FOLDS and info.sizes == dict(test=2, train=NTRAIN, unlabeled=NUNLABELED)
    assert json.load(open(records.DatasetInfo.path('stl10', stl_root)))['folds'] == FOLDS


def test_fold_size_gives_the_official_fold(stl_root):
    files = source_files(stl_root)
    labels = records.parse_labels(records.read_serialized(files))
    target = os.path.join(stl_root, 'SSL2', 'stl10')
    for seed in (0, 3, 9):
        size, meta = splits.create_split(target, files, seed=seed, size=FOLD)
        assert meta['indexes'] == sorted(FOLDS[seed]) and meta['fold'] == seed and size == FOLD
        written = records.parse_labels(records.read_serialized([f'{target}.{seed}@{FOLD}-label.tfrecord']))
        assert written.tolist() == labels[sorted(FOLDS[seed])].tolist()
    # any other size: the class rule on the training images, train_stats all ones
    for seed, size in ((0, 10), (2, 10), (5, 20)):
        _, meta = splits.create_split(target, files, seed=seed, size=size)
        assert meta['indexes'] == original_split(labels[:NTRAIN], 10, seed, size, stl=True) and meta['fold'] is None
    with pytest.raises(utils.UserError, match=r'10 official folds of 4 images: use --seed=0\.\.9'):
        splits.create_split(target, files, seed=10, size=FOLD)
    with pytest.raises(utils.UserError, match='give stl10-train.tfrecord first'):
        splits.create_split(target, files[::-1], seed=1, size=FOLD)


def test_unlabeled_order_is_the_originals_with_label_minus_one(stl_root):
    files = source_files(stl_root)
    labels = records.parse_labels(records.read_serialized(files))
    meta = splits.create_unlabeled(os.path.join(stl_root, 'SSL2', 'stl10'), files)
    assert meta['indexes'] == original_unlabeled(labels, 10, stl=True) and meta['unlabeled_images'] == NUNLABELED
    written = records.parse_labels(records.read_serialized([os.path.join(stl_root, 'SSL2', 'stl10-unlabel.tfrecord')]))
    assert written.tolist() == labels[meta['indexes']].tolist() and (written == -1).sum() == NUNLABELED


def test_training_loads_the_fold(stl_root):
    ssl = data.load(f'stl10.4@{FOLD}-2')  # creates the split files from the fold
    labels = records.parse_labels(records.read_serialized(source_files(stl_root)))
    assert ssl.label_meta['indexes'] == sorted(FOLDS[4])
    assert ssl.labeled.labels.tolist() == labels[sorted(FOLDS[4])].tolist()
    # validation: the first labeled records of the unlabeled file outside the fold
    valid = [i for i in ssl.unlabel_meta['indexes'] if labels[i] >= 0 and i not in FOLDS[4]][:2]
    assert ssl.valid.labels.tolist() == labels[valid].tolist() and len(ssl.unlabeled) == NTRAIN + NUNLABELED - 2


def test_old_conversion_without_folds_is_refused_at_1000(stl_root):
    path = records.DatasetInfo.path('stl10', stl_root)
    description = json.load(open(path))
    del description['folds']
    utils.write_json(path, description)
    with pytest.raises(utils.UserError, match=r'stl10\.json has no folds.*create_datasets\.py --datasets=stl10'):
        splits.create_split(os.path.join(stl_root, 'SSL2', 'stl10'), source_files(stl_root), seed=1, size=1000)


@pytest.mark.parametrize('text,message', [('0 1\n2 x\n', 'not lines of image indices'), ('\n', 'is empty'),
                                          ('0 1\n3 30\n', 'fold 1 holds index 30 outside the 30 training images'),
                                          ('4 4\n', 'fold 0 holds a repeated index')])
def test_bad_fold_file(tmp_path, text, message):
    with pytest.raises(utils.UserError, match=message):
        readers.parse_folds(text.encode(), NTRAIN, 'fold_indices.txt')
    write_archive(tmp_path / 'stl10_binary.tar.gz', text)
    with pytest.raises(utils.UserError, match=message):
        registry.load('stl10', source_dir=str(tmp_path))
