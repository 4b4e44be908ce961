"""The data layer: names, finding and creating files, bad input, validation, training streams."""
import logging
import os

import numpy as np
import pytest
import tensorflow as tf

from libml import data
from libml import targets
from libml import records
from libml import utils


def identity_view(images, seed):
    return images


def write_indexed(root, name='idx', per_class=(20, 20, 20, 20), test=12):
    """A dataset whose training image i carries its index: pixel (0,0) = i % 256, (0,1) = i // 256,
    the rest = 10 * label."""
    labels = np.repeat(np.arange(len(per_class)), per_class)
    labels = labels[np.random.default_rng(0).permutation(len(labels))]
    images = np.broadcast_to((labels * 10).astype(np.uint8)[:, None, None, None], (len(labels), 4, 4, 1)).copy()
    images[:, 0, 0, 0] = np.arange(len(labels)) % 256
    images[:, 0, 1, 0] = np.arange(len(labels)) // 256
    os.makedirs(root, exist_ok=True)
    records.write_records(records.record_path(name, 'train', root), images, labels)
    test_labels = np.arange(test) % len(per_class)
    records.write_records(records.record_path(name, 'test', root),
                          (np.full((test, 4, 4, 1), 255) * (test_labels[:, None, None, None] % 2)).astype(np.uint8),
                          test_labels)
    records.DatasetInfo(name, (4, 4, 1), len(per_class), [], True, 1, dict(train=len(labels), test=test)).save(root)
    return images, labels


def indices_of(batch_images):
    """Original index encoded in pixels of images scaled to [-1, 1]."""
    levels = np.round((np.asarray(batch_images) + 1) / 2 * 255).astype(np.int64)
    return levels[:, 0, 0, 0] + 256 * levels[:, 0, 1, 0]


@pytest.fixture
def root():
    path = utils.ml_data()
    write_indexed(path)
    return path


def test_parse_name():
    assert targets.parse_name('cifar10.1@40-1') == targets.SplitName('cifar10', 1, 40, 1)
    assert targets.parse_name('cifar10_LT_20.3@20-5000') == targets.SplitName('cifar10_LT_20', 3, 20, 5000)
    assert str(targets.parse_name('fashion_mnist.2@250')) == 'fashion_mnist.2@250-1'
    for bad in ('cifar10', 'cifar10.1', 'cifar10@40', 'cifar10.a@40-1', '', 'c.1@40-1-2'):
        with pytest.raises(utils.UserError, match=r'malformed dataset name.*target\.seed@size-valid.*cifar10'):
            targets.parse_name(bad)


def test_unknown_dataset_lists_known_ones(root):
    with pytest.raises(utils.UserError, match=r"unknown dataset 'nosuch'.*cifar10.*idx"):
        data.load('nosuch.1@40-1')


def test_missing_download_prints_the_commands(root):
    with pytest.raises(utils.UserError) as err:
        data.load('cifar10.1@40-1')
    message = str(err.value)
    assert '\n' not in message
    assert 'python scripts/create_datasets.py --datasets=cifar10' in message
    assert 'create_unlabeled.py' in message and 'SSL2/cifar10' in message
    assert 'create_split.py --seed=1 --size=40' in message


def test_missing_splits_are_created_with_a_log_line(root, caplog):
    with caplog.at_level(logging.INFO, logger='absl'):
        ssl = data.load('idx_LT_4.2@8-3')
    assert 'create_split.py --seed=2 --size=8 --lamda=4' in caplog.text
    assert os.path.exists(os.path.join(root, 'SSL2', 'idx_LT_4.2@8-label.tfrecord'))
    assert np.bincount(ssl.labeled.labels).tolist() == [8, 6, 4, 2]
    assert len(ssl.unlabeled) == 80 - 3 and len(ssl.valid) == 3 and len(ssl.test) == 12


def test_validation_never_overlaps_labels_and_leaves_the_unlabeled_stream(root):
    ssl = data.load('idx.1@40-6')
    labeled = set(ssl.label_meta['indexes'])
    labeled_from_pixels = set(indices_of(tf.cast(ssl.labeled.images, tf.float32) / 255 * 2 - 1))
    assert labeled == labeled_from_pixels
    valid = set(indices_of(tf.cast(ssl.valid.images, tf.float32) / 255 * 2 - 1))
    unlabeled = set(indices_of(tf.cast(ssl.unlabeled.images, tf.float32) / 255 * 2 - 1))
    assert len(valid) == 6 and not valid & labeled and not valid & unlabeled
    assert unlabeled | valid == set(range(80))
    # the validation images are the first unlabeled records outside the labeled split
    order = [i for i in ssl.unlabel_meta['indexes'] if i not in labeled]
    assert valid == set(order[:6])


def test_stream_resumes_exactly_and_covers_each_epoch(root):
    ssl = data.load('idx.1@8-1')
    views = {'x': identity_view}, {'u': identity_view}
    stream = list(ssl.train_stream(4, 3, *views, seed=5, end_step=6).as_numpy_iterator())
    resumed = list(ssl.train_stream(4, 3, *views, seed=5, start_step=3, end_step=6).as_numpy_iterator())
    for a, b in zip(stream[3:], resumed):
        for key in a:
            np.testing.assert_array_equal(a[key], b[key])
    # each pair of labeled batches of 4 is one epoch over the 8 labeled images
    labeled = set(ssl.label_meta['indexes'])
    for epoch in range(3):
        seen = np.concatenate([indices_of(stream[2 * epoch + i]['x']) for i in range(2)])
        assert sorted(seen) == sorted(labeled)
    assert not np.array_equal(indices_of(stream[0]['x']), indices_of(stream[2]['x']))
    first = stream[0]
    assert first['x'].shape == (4, 4, 4, 1) and first['u'].shape == (12, 4, 4, 1)
    assert first['x'].dtype == np.float32 and first['x'].min() >= -1 and first['x'].max() <= 1
    np.testing.assert_array_equal(first['label'], [ssl.labeled.labels[list(ssl.label_meta['indexes']).index(i)]
                                                   for i in indices_of(first['x'])])
    # the seed changes the order
    other = next(ssl.train_stream(4, 3, *views, seed=6, end_step=1).as_numpy_iterator())
    assert not np.array_equal(indices_of(other['u']), indices_of(first['u']))


def test_unlabeled_images_stream_from_disk_when_they_do_not_fit(root):
    in_memory = data.load('idx.1@8-5')
    streamed = data.load('idx.1@8-5', memory_budget=0)
    assert isinstance(streamed.unlabeled, data.StreamedSubset) and len(streamed.unlabeled) == 75
    np.testing.assert_array_equal(streamed.valid.images.numpy(), in_memory.valid.images.numpy())
    np.testing.assert_array_equal(streamed.valid.labels, in_memory.valid.labels)
    valid = set(indices_of(tf.cast(in_memory.valid.images, tf.float32) / 255 * 2 - 1))
    seen = []
    for batch in streamed.train_stream(4, 5, {'x': identity_view}, {'u': identity_view}, end_step=30):
        index = indices_of(batch['u'])
        np.testing.assert_array_equal(batch['u_label'], (np.round((batch['u'][:, 1, 1, 0] + 1) / 2 * 255) / 10))
        seen.extend(index)
    assert not set(seen) & valid and len(set(seen)) == 75  # 600 draws: every unlabeled image, no validation one
    assert np.bincount(seen).max() <= 9  # 8 passes through the 75 images, reshuffled


def test_views_receive_distinct_seeds_and_dict_outputs(root):
    ssl = data.load('idx.1@8-1')

    def noise(images, seed):
        return tf.clip_by_value(images + tf.random.stateless_uniform(tf.shape(images), seed) * 0.01, 0, 1)

    def with_extra(images, seed):
        return dict(image=images, flag=tf.ones([tf.shape(images)[0]]))
    batch = next(ssl.train_stream(4, 2, {'x': noise, 'y': with_extra}, {'u1': noise, 'u2': noise},
                                  end_step=1).as_numpy_iterator())
    assert not np.allclose(batch['u1'] - batch['u2'], 0)
    assert batch['y_flag'].shape == (4,) and batch['y'].shape == (4, 4, 4, 1)


def test_eval_dataset_scaling(root):
    ssl = data.load('idx.1@8-1')
    x, y = next(iter(ssl.eval_dataset('test', batch=5)))
    assert x.shape == (5, 4, 4, 1)
    np.testing.assert_allclose(x.numpy()[:, 0, 0, 0], np.where(y.numpy() % 2, 1.0, -1.0))


def test_truncated_record_file(root):
    ssl_path = os.path.join(root, 'SSL2', 'idx')
    data.load('idx.1@8-1')
    label_file = ssl_path + '.1@8-label.tfrecord'
    content = open(label_file, 'rb').read()
    open(label_file, 'wb').write(content[:len(content) // 2])
    with pytest.raises(utils.UserError, match=r'corrupt or truncated record file .*create_split\.py') as err:
        data.load('idx.1@8-1')
    assert '{{' not in str(err.value) and '\n' not in str(err.value)


def test_label_out_of_range(root):
    test_file = records.record_path('idx', 'test', root)
    records.write_records(test_file, np.zeros((12, 4, 4, 1), np.uint8), [0, 1, 9] + [0] * 9)
    with pytest.raises(utils.UserError, match=r'label 9 out of range \[0, 4\)'):
        data.load('idx.1@8-1')


def test_truncated_base_file_is_reported_when_splitting(root):
    train_file = records.record_path('idx', 'train', root)
    content = open(train_file, 'rb').read()
    open(train_file, 'wb').write(content[:len(content) - 10])
    with pytest.raises(utils.UserError, match=r'corrupt or truncated.*idx-train.*truncated record.*create_datasets'):
        data.load('idx.1@8-1')
    assert not os.path.exists(os.path.join(root, 'SSL2', 'idx-unlabel.tfrecord'))


def test_too_many_validation_images(root):
    with pytest.raises(utils.UserError, match='validation images'):
        data.load('idx.1@8-100')
