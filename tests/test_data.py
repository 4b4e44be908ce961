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


def raw_indices(images):
    """Original index encoded in the pixels of raw uint8 images."""
    images = np.asarray(images).astype(np.int64)
    return images[:, 0, 0, 0] + 256 * images[:, 0, 1, 0]


def test_stream_resumes_exactly_and_covers_each_epoch(root):
    ssl = data.load('idx.1@8-1')
    stream = list(ssl.input_stream(4, 12, seed=5, end_step=6).as_numpy_iterator())
    resumed = list(ssl.input_stream(4, 12, seed=5, start_step=3, end_step=6).as_numpy_iterator())
    assert len(stream) == 6 and len(resumed) == 3
    for a, b in zip(stream[3:], resumed):
        for key in a:
            np.testing.assert_array_equal(a[key], b[key])
    # each pair of labeled batches of 4 is one epoch over the 8 labeled images
    labeled = set(ssl.label_meta['indexes'])
    for epoch in range(3):
        seen = np.concatenate([raw_indices(stream[2 * epoch + i]['x_images']) for i in range(2)])
        assert sorted(seen) == sorted(labeled)
    assert not np.array_equal(raw_indices(stream[0]['x_images']), raw_indices(stream[2]['x_images']))
    first = stream[0]
    assert first['x_images'].shape == (4, 4, 4, 1) and first['u_images'].shape == (12, 4, 4, 1)
    assert first['x_images'].dtype == np.uint8 and first['slot'] == 0
    np.testing.assert_array_equal(first['label'], [ssl.labeled.labels[list(ssl.label_meta['indexes']).index(i)]
                                                   for i in raw_indices(first['x_images'])])
    # u_index: positions in the unlabeled set
    np.testing.assert_array_equal(ssl.unlabeled.images.numpy()[first['u_index']], first['u_images'])
    np.testing.assert_array_equal(ssl.unlabeled.labels[first['u_index']], first['u_label'])
    # the seed changes the order
    other = next(ssl.input_stream(4, 12, seed=6, end_step=1).as_numpy_iterator())
    assert not np.array_equal(raw_indices(other['u_images']), raw_indices(first['u_images']))


@pytest.mark.parametrize('pipelines', [1, 2, 4])
def test_each_pipeline_reads_only_its_replicas_rows(root, pipelines):
    """4 replicas over 1, 2 or 4 input pipelines: every pipeline yields its replicas' slices, in
    replica order, and together they are the single-device global batch."""
    ssl = data.load('idx.1@8-1')
    single = list(ssl.input_stream(8, 16, seed=3, end_step=3).as_numpy_iterator())
    parts = [list(ssl.input_stream(8, 16, seed=3, end_step=3, replicas=4, pipelines=pipelines, pipeline=p)
                  .as_numpy_iterator()) for p in range(pipelines)]
    local = 4 // pipelines
    for step in range(3):
        rows = [parts[p][step * local + r] for p in range(pipelines) for r in range(local)]
        assert [int(e['slot']) for e in rows] == [0, 1, 2, 3]
        for key in ('x_images', 'label', 'u_images', 'u_label', 'u_index'):
            assert rows[0][key].shape[0] == single[step][key].shape[0] // 4  # each replica: a quarter
            np.testing.assert_array_equal(np.concatenate([e[key] for e in rows]), single[step][key])


def test_unlabeled_images_stream_from_disk_when_they_do_not_fit(root):
    in_memory = data.load('idx.1@8-5')
    streamed = data.load('idx.1@8-5', memory_budget=0)
    assert isinstance(streamed.unlabeled, data.StreamedSubset) and len(streamed.unlabeled) == 75
    np.testing.assert_array_equal(streamed.valid.images.numpy(), in_memory.valid.images.numpy())
    np.testing.assert_array_equal(streamed.valid.labels, in_memory.valid.labels)
    valid = set(raw_indices(in_memory.valid.images))
    seen = []
    for batch in streamed.input_stream(4, 20, end_step=30).as_numpy_iterator():
        index = raw_indices(batch['u_images'])
        np.testing.assert_array_equal(batch['u_label'], batch['u_images'][:, 1, 1, 0] // 10)
        np.testing.assert_array_equal(in_memory.unlabeled.images.numpy()[batch['u_index']], batch['u_images'])
        seen.extend(index)
    assert not set(seen) & valid and len(set(seen)) == 75  # 600 draws: every unlabeled image, no validation one
    assert np.bincount(seen).max() <= 9  # 8 passes through the 75 images, reshuffled
    # two pipelines read disjoint halves of the streamed images
    halves = [set(np.concatenate([raw_indices(b['u_images']) for b in streamed.input_stream(
        4, 20, end_step=20, replicas=2, pipelines=2, pipeline=p).as_numpy_iterator()])) for p in range(2)]
    assert not halves[0] & halves[1] and len(halves[0] | halves[1]) == 75


def test_eval_dataset_scaling(root):
    ssl = data.load('idx.1@8-1')
    x, y = next(iter(ssl.eval_dataset('test', batch=5)))
    assert x.shape == (5, 4, 4, 1)
    np.testing.assert_allclose(x.numpy()[:, 0, 0, 0], np.where(y.numpy() % 2, 1.0, -1.0))
    # --eval_size=N: the first N images of the split only, in order (12 test images, labels k % 4)
    limited = [y.numpy() for _, y in ssl.eval_dataset('test', batch=5, limit=7)]
    assert [len(y) for y in limited] == [5, 2] and np.concatenate(limited).tolist() == [0, 1, 2, 3, 0, 1, 2]
    assert sum(len(y) for _, y in ssl.eval_dataset('test', batch=5, limit=0)) == 12


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
