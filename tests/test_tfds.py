"""libml/tfds_data.py and create_datasets.py --tfds, offline: a small TFDS builder defined here and
tfds.testing.mock_data."""
import os
import subprocess
import sys

import numpy as np
import pytest

tfds = pytest.importorskip('tensorflow_datasets')

from conftest import ROOT  # noqa: E402
from libml import data  # noqa: E402
from libml import records  # noqa: E402
from libml import tfds_data  # noqa: E402
from libml import user_data  # noqa: E402
from libml import utils  # noqa: E402

CLASSES = ['T-shirt/top', 'bird', 'ship']
SCRIPT = os.path.join(ROOT, 'scripts', 'create_datasets.py')


def tiny_image(index):
    """8x6x1 image whose pixel (0, 0) holds `index`, the rest 7 * (index % 3)."""
    image = np.full((8, 6, 1), 7 * (index % 3), np.uint8)
    image[0, 0, 0] = index
    return image


class TinyTfdsForTest(tfds.core.GeneratorBasedBuilder):
    """24 training and 9 test images of 3 classes (label = index % 3); test images start at index 100."""
    VERSION = tfds.core.Version('1.0.0')

    def _info(self):
        return tfds.core.DatasetInfo(builder=self, features=tfds.features.FeaturesDict({
            'image': tfds.features.Image(shape=(8, 6, 1)), 'label': tfds.features.ClassLabel(names=CLASSES),
            'note': tfds.features.Text()}), supervised_keys=('image', 'label'))

    def _split_generators(self, dl_manager):
        return {'train': self._generate_examples(range(24)), 'test': self._generate_examples(range(100, 109))}

    def _generate_examples(self, indices):
        for i in indices:
            yield i, {'image': tiny_image(i), 'label': i % 3, 'note': f'image {i}'}


class TinyTrainOnlyForTest(TinyTfdsForTest):
    """Only a train split of 30 images (10 per class)."""

    def _split_generators(self, dl_manager):
        return {'train': self._generate_examples(range(30))}


def read_records(name, split):
    serialized = records.read_serialized([records.record_path(name, split)])
    pairs = [records.parse_image(s, 1) for s in serialized]
    return np.stack([p[0].numpy() for p in pairs]), np.array([int(p[1]) for p in pairs])


def tfds_split(builder, split):
    examples = list(builder.as_dataset(split=split, shuffle_files=False).as_numpy_iterator())
    return np.stack([e['image'] for e in examples]), np.array([e['label'] for e in examples])


def test_converts_train_and_test_with_class_names(tmp_path):
    info = tfds_data.convert_tfds('tiny_tfds_for_test', name='tiny', data_dir=str(tmp_path / 'tfds'))
    assert info.name == 'tiny' and info.shape == (8, 6, 1) and info.nclass == 3 and info.class_names == CLASSES
    assert info.sizes == {'train': 24, 'test': 9} and info.flip and info.pad == 1  # 6 px / 8, rounded
    assert records.DatasetInfo.load('tiny') == info
    builder = tfds.builder('tiny_tfds_for_test', data_dir=str(tmp_path / 'tfds'))
    for split, first in (('train', 0), ('test', 100)):
        images, labels = read_records('tiny', split)
        expected_images, expected_labels = tfds_split(builder, split)
        np.testing.assert_array_equal(images, expected_images)  # TFDS's own order, pixels unchanged
        np.testing.assert_array_equal(labels, expected_labels)
        indices = images[:, 0, 0, 0].astype(int)
        assert sorted(indices) == list(range(first, first + len(indices)))
        np.testing.assert_array_equal(labels, indices % 3)
        np.testing.assert_array_equal(images, np.stack([tiny_image(i) for i in indices]))


def test_converted_dataset_trains_by_name(tmp_path):
    tfds_data.convert_tfds('tiny_tfds_for_test', name='tiny', data_dir=str(tmp_path / 'tfds'))
    ssl = data.load('tiny.1@6-2')  # creates the unlabeled set and the labeled split, as for any dataset
    assert ssl.nclass == 3 and tuple(ssl.info.shape) == (8, 6, 1)
    assert len(ssl.labeled) == 6 and sorted(np.bincount(np.asarray(ssl.labeled.labels))) == [2, 2, 2]
    assert len(ssl.valid) == 2 and len(ssl.test) == 9


def test_without_test_split_ten_percent_of_each_class_is_held_out(tmp_path):
    info = tfds_data.convert_tfds('tiny_train_only_for_test', data_dir=str(tmp_path / 'tfds'))
    assert info.name == 'tiny_train_only_for_test' and info.sizes == {'train': 27, 'test': 3}
    builder = tfds.builder('tiny_train_only_for_test', data_dir=str(tmp_path / 'tfds'))
    all_images, all_labels = tfds_split(builder, 'train')
    train, test = user_data.holdout_split(all_labels)
    for split, positions in (('train', train), ('test', test)):
        images, labels = read_records(info.name, split)
        np.testing.assert_array_equal(images, all_images[positions])
        np.testing.assert_array_equal(labels, all_labels[positions])
    assert sorted(read_records(info.name, 'test')[1]) == [0, 1, 2]


def test_mock_fashion_mnist(tmp_path):
    """tfds.testing.mock_data: random 28x28x1 images with the real dataset's features and class names."""
    with tfds.testing.mock_data(num_examples=12, data_dir=str(tmp_path / 'tfds')):
        info = tfds_data.convert_tfds('fashion_mnist', name='tfds_fashion_mnist', flip=False, pad=3)
        builder = tfds.builder('fashion_mnist')
        expected = {split: tfds_split(builder, split) for split in ('train', 'test')}
    assert info.shape == (28, 28, 1) and info.nclass == 10 and not info.flip and info.pad == 3
    assert info.class_names[0] == 'T-shirt/top' and info.class_names[-1] == 'Ankle boot'
    assert info.sizes == {'train': 12, 'test': 12}
    for split, (images, labels) in expected.items():
        got_images, got_labels = read_records('tfds_fashion_mnist', split)
        np.testing.assert_array_equal(got_images, images)
        np.testing.assert_array_equal(got_labels, labels)


def test_names():
    assert tfds_data.default_name('cifar10_corrupted/brightness_1:3.0.0') == 'cifar10_corrupted_brightness_1'
    assert tfds_data.default_name('eurosat/rgb') == 'eurosat_rgb'
    with pytest.raises(utils.UserError, match='would replace the built-in cifar10.*--name=tfds_cifar10'):
        tfds_data.convert_tfds('cifar10')
    with pytest.raises(utils.UserError, match='bad dataset name'):
        tfds_data.check_name('a-b', 'x')


def test_unknown_name_and_missing_package(monkeypatch):
    with pytest.raises(utils.UserError, match=r"unknown TFDS dataset 'eurosatt'; did you mean eurosat"):
        tfds_data.get_builder('eurosatt')
    monkeypatch.setitem(sys.modules, 'tensorflow_datasets', None)
    with pytest.raises(utils.UserError, match=r'needs the tensorflow-datasets package.*pip install '
                                              r'tensorflow-datasets==4\.9\.10'):
        tfds_data.convert_tfds('eurosat')


def test_images_of_several_shapes_are_refused():
    images = [np.zeros((4, 4, 3), np.uint8), np.zeros((5, 4, 3), np.uint8)]
    with pytest.raises(utils.UserError, match='2 shapes'):
        tfds_data.stack_images(images, 'x', 'train')
    with tfds.testing.mock_data(num_examples=2):
        with pytest.raises(utils.UserError, match=r'tf_flowers has images of varying size'):
            tfds_data.load_tfds('tf_flowers')


def run_script(*args):
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL='3')
    return subprocess.run([sys.executable, SCRIPT, *args], capture_output=True, text=True, env=env, timeout=300)


def test_command_line_error_is_one_line():
    done = run_script('--tfds=nosuch_dataset_xyz')
    assert done.returncode == 2, done.stderr
    errors = [line for line in done.stderr.splitlines() if line.startswith('error:')]
    assert len(errors) == 1 and "unknown TFDS dataset 'nosuch_dataset_xyz'" in errors[0], done.stderr
    assert not os.path.exists(utils.ml_data()) or not os.listdir(utils.ml_data())
