"""Readers of the original dataset formats, the built-in registry, user datasets and scripts/create_datasets.py.

Every reader is fed small files written here in the real format; Fashion-MNIST is converted for real from the
Debian package files.
"""
import gzip
import io
import json
import os
import struct
import subprocess
import sys
import tarfile

import numpy as np
import pytest
import scipy.io
import tensorflow as tf

from conftest import FASHION_MNIST_DIR, ROOT
from libml import records
from libml import readers
from libml import registry
from libml import user_data
from libml.utils import UserError

sys.path.insert(0, os.path.join(ROOT, 'scripts'))
import create_datasets  # noqa: E402

RNG = np.random.RandomState(1234)


# ---------------------------------------------------------------------------------------------------------------------
# Writers of the original formats (built byte by byte from the format descriptions).

def idx_bytes(array):
    codes = {np.dtype('uint8'): 0x08, np.dtype('int32'): 0x0C}
    header = bytes([0, 0, codes[array.dtype], array.ndim]) + b''.join(struct.pack('>I', d) for d in array.shape)
    return header + array.astype(array.dtype.newbyteorder('>')).tobytes()


def write_file(path, data, gz=False):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, 'wb') as f:
        f.write(gzip.compress(data, mtime=0) if gz else data)
    return str(path)


def write_tar(path, members):
    """A .tar.gz of {member name: bytes}."""
    with tarfile.open(path, 'w:gz') as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return str(path)


def cifar_bytes(images, label_rows):
    """CIFAR binary records: label bytes, then the red, green and blue 32x32 planes, each row by row."""
    out = b''
    for image, label_bytes in zip(images, label_rows):
        out += bytes(label_bytes)
        for channel in range(3):
            out += b''.join(bytes(image[row, :, channel].tolist()) for row in range(32))
    return out


def stl_bytes(images):
    """STL-10 images: for each image, each channel, each column, each row: one byte."""
    out = bytearray()
    for image in images:
        for channel in range(3):
            for column in range(96):
                for row in range(96):
                    out.append(int(image[row, column, channel]))
    return bytes(out)


def random_images(n, h=32, w=32, c=3):
    return RNG.randint(0, 256, size=(n, h, w, c)).astype(np.uint8)


def png(image):
    return tf.io.encode_png(image).numpy()


def read_back(path, channels):
    """(images, labels) decoded from a TFRecord file written by records.write_records."""
    pairs = [records.parse_image(s, channels) for s in records.read_serialized([path])]
    if not pairs:
        return np.zeros([0]), np.zeros([0], np.int64)
    return np.stack([i.numpy() for i, _ in pairs]), np.array([int(l) for _, l in pairs])


# ---------------------------------------------------------------------------------------------------------------------
# IDX.

def test_read_idx_gz_and_raw(tmp_path):
    images = random_images(3, 5, 4, 1)[..., 0]
    labels = np.array([7, -2, 70000], np.int32)
    gz = write_file(tmp_path / 'images.gz', idx_bytes(images), gz=True)
    raw = write_file(tmp_path / 'labels', idx_bytes(labels))
    got = readers.read_idx(gz)
    assert got.shape == (3, 5, 4) and got.dtype == np.uint8
    np.testing.assert_array_equal(got, images)
    np.testing.assert_array_equal(readers.read_idx(raw), labels)  # big-endian int32 read correctly
    assert readers.read_idx(raw).dtype.isnative


def test_read_idx_truncated_or_bad(tmp_path):
    data = idx_bytes(random_images(4, 6, 6, 1)[..., 0])
    with pytest.raises(UserError, match=r'truncated or corrupt: 150 bytes'):
        readers.read_idx(write_file(tmp_path / 'short', data[:-10]))
    full_gz = gzip.compress(data, mtime=0)
    with pytest.raises(UserError, match='truncated or corrupt'):
        readers.read_idx(write_file(tmp_path / 'short.gz', full_gz[:len(full_gz) // 2]))
    with pytest.raises(UserError, match='not an IDX file'):
        readers.read_idx(write_file(tmp_path / 'magic', b'\x01\x02' + data[2:]))
    with pytest.raises(UserError, match='missing file'):
        readers.read_idx(str(tmp_path / 'absent.gz'))


def write_digits(folder, train, test, gz=True):
    """MNIST-style IDX files of train/test (images (N, 28, 28), labels (N,)) in `folder`."""
    for prefix, (images, labels) in (('train', train), ('t10k', test)):
        suffix = '.gz' if gz else ''
        write_file(os.path.join(folder, f'{prefix}-images-idx3-ubyte{suffix}'), idx_bytes(images), gz)
        write_file(os.path.join(folder, f'{prefix}-labels-idx1-ubyte{suffix}'), idx_bytes(labels), gz)


def test_load_mnist_pads_to_32(tmp_path):
    train = (random_images(5, 28, 28, 1)[..., 0], np.array([0, 9, 3, 3, 1], np.uint8))
    test = (random_images(2, 28, 28, 1)[..., 0], np.array([5, 2], np.uint8))
    write_digits(tmp_path / 'src' / 'mnist', train, test, gz=False)  # un-gzipped copies in source_dir/mnist/
    assert not registry.available_offline('mnist')
    assert registry.available_offline('mnist', source_dir=str(tmp_path / 'src'))
    splits, names = registry.load('mnist', source_dir=str(tmp_path / 'src'))
    assert names == tuple('0123456789') and set(splits) == {'train', 'test'}
    images, labels = splits['train']
    assert images.shape == (5, 32, 32, 1) and images.dtype == np.uint8 and labels.dtype == np.int64
    np.testing.assert_array_equal(images[:, 2:30, 2:30, 0], train[0])
    border = np.ones((32, 32), bool)
    border[2:30, 2:30] = False
    assert not images[:, border].any()
    np.testing.assert_array_equal(labels, [0, 9, 3, 3, 1])
    np.testing.assert_array_equal(splits['test'][1], [5, 2])


def test_mnist_label_out_of_range(tmp_path):
    write_digits(tmp_path, (random_images(2, 28, 28, 1)[..., 0], np.array([1, 10], np.uint8)),
                 (random_images(1, 28, 28, 1)[..., 0], np.array([0], np.uint8)))
    with pytest.raises(UserError, match=r'label 10 out of range \[0, 10\) in .*train-labels-idx1-ubyte.gz'):
        registry.load('mnist', source_dir=str(tmp_path))


# ---------------------------------------------------------------------------------------------------------------------
# CIFAR.

def cifar10_archive(path, train, test, names=True):
    members = {f'cifar-10-batches-bin/data_batch_{i + 1}.bin':
               cifar_bytes(train[0][2 * i:2 * i + 2], [[k] for k in train[1][2 * i:2 * i + 2]]) for i in range(5)}
    members['cifar-10-batches-bin/test_batch.bin'] = cifar_bytes(test[0], [[k] for k in test[1]])
    if names:
        members['cifar-10-batches-bin/batches.meta.txt'] = b'\n'.join(f'name{k}'.encode() for k in range(10)) + b'\n\n'
    return write_tar(path, members)


def test_read_cifar10_binary(tmp_path):
    train = (random_images(10), np.array([0, 1, 2, 3, 4, 5, 6, 7, 8, 9]))
    test = (random_images(3), np.array([9, 0, 4]))
    archive = cifar10_archive(tmp_path / 'cifar-10-binary.tar.gz', train, test)
    splits, names = readers.read_cifar_binary(archive, 10)
    assert names == tuple(f'name{k}' for k in range(10))
    for split, (images, labels) in (('train', train), ('test', test)):
        assert splits[split][0].dtype == np.uint8 and splits[split][1].dtype == np.int64
        np.testing.assert_array_equal(splits[split][0], images)
        np.testing.assert_array_equal(splits[split][1], labels)
    # Through the registry, from source_dir, with the known class names when the archive has none.
    src = tmp_path / 'src'
    os.makedirs(src)
    cifar10_archive(src / 'cifar-10-binary.tar.gz', train, test, names=False)
    assert registry.available_offline('cifar10', source_dir=str(src))
    splits, names = registry.load('cifar10', source_dir=str(src))
    assert names == readers.CIFAR10_CLASSES == registry.BUILTIN['cifar10'].class_names
    np.testing.assert_array_equal(splits['test'][0], test[0])


def test_read_cifar100_uses_fine_labels(tmp_path):
    images = random_images(4)
    fine, coarse = [99, 0, 57, 3], [1, 19, 2, 7]
    archive = write_tar(tmp_path / 'c100.tar.gz', {
        'cifar-100-binary/train.bin': cifar_bytes(images[:3], list(zip(coarse[:3], fine[:3]))),
        'cifar-100-binary/test.bin': cifar_bytes(images[3:], list(zip(coarse[3:], fine[3:]))),
        'cifar-100-binary/coarse_label_names.txt': b'\n'.join(b'coarse%d' % k for k in range(20)),
        'cifar-100-binary/fine_label_names.txt': b'\n'.join(b'fine%d' % k for k in range(100)) + b'\n'})
    splits, names = readers.read_cifar_binary(archive, 100)
    assert names == tuple(f'fine{k}' for k in range(100))
    np.testing.assert_array_equal(splits['train'][1], [99, 0, 57])
    np.testing.assert_array_equal(splits['test'][1], [3])
    np.testing.assert_array_equal(splits['train'][0], images[:3])
    np.testing.assert_array_equal(splits['test'][0], images[3:])
    assert len(set(readers.CIFAR100_CLASSES)) == 100


def test_cifar_bad_archives(tmp_path):
    bad_label = cifar10_archive(tmp_path / 'a.tar.gz', (random_images(10), np.arange(10)),
                                (random_images(2), np.array([3, 10])))
    with pytest.raises(UserError, match=r'label 10 out of range \[0, 10\) in .*a.tar.gz:test_batch.bin'):
        readers.read_cifar_binary(bad_label, 10)
    incomplete = write_tar(tmp_path / 'b.tar.gz', {'data_batch_1.bin': cifar_bytes(random_images(1), [[1]])})
    with pytest.raises(UserError, match='has no member data_batch_2.bin'):
        readers.read_cifar_binary(incomplete, 10)
    cut = write_tar(tmp_path / 'c.tar.gz', {'train.bin': b'\x00' * 3075, 'test.bin': b''})
    with pytest.raises(UserError, match='not a whole number of 3074-byte records'):
        readers.read_cifar_binary(cut, 100)


# ---------------------------------------------------------------------------------------------------------------------
# SVHN.

def svhn_mat(path, images, digits):
    """An SVHN .mat: X (32, 32, 3, N), y (N, 1) with 10 for the digit 0."""
    scipy.io.savemat(path, {'X': images.transpose(1, 2, 3, 0), 'y': np.where(digits == 0, 10, digits)[:, None]})
    return str(path)


def test_read_svhn_mat(tmp_path):
    images, digits = random_images(4), np.array([0, 1, 9, 0])
    path = svhn_mat(tmp_path / 'train_32x32.mat', images, digits)
    assert scipy.io.loadmat(path)['y'].ravel().tolist() == [10, 1, 9, 10]
    got, labels = readers.read_svhn_mat(path)
    np.testing.assert_array_equal(got, images)
    np.testing.assert_array_equal(labels, [0, 1, 9, 0])
    assert got.flags['C_CONTIGUOUS'] and labels.dtype == np.int64
    scipy.io.savemat(tmp_path / 'bad.mat', {'X': images.transpose(1, 2, 3, 0), 'y': np.array([[1], [11], [2], [3]])})
    with pytest.raises(UserError, match=r'label 11 out of range \[1, 11\) in .*bad.mat'):
        readers.read_svhn_mat(str(tmp_path / 'bad.mat'))


def test_load_svhn_with_and_without_extra(tmp_path):
    parts = {name: (random_images(n), RNG.randint(0, 10, n)) for name, n in (('train', 3), ('test', 2), ('extra', 4))}
    for name, (images, digits) in parts.items():
        svhn_mat(tmp_path / f'{name}_32x32.mat', images, digits)
    splits, names = registry.load('svhn', source_dir=str(tmp_path))
    assert names == tuple('0123456789') and set(splits) == {'train', 'test', 'extra'}
    for name, (images, digits) in parts.items():
        np.testing.assert_array_equal(splits[name][0], images)
        np.testing.assert_array_equal(splits[name][1], digits)
    splits, _ = registry.load('svhn_noextra', source_dir=str(tmp_path))
    assert set(splits) == {'train', 'test'}
    assert registry.BUILTIN['svhn'].unlabeled_splits == ('train', 'extra')
    assert not registry.BUILTIN['svhn'].flip and not registry.BUILTIN['svhn_noextra'].flip


# ---------------------------------------------------------------------------------------------------------------------
# STL-10.

def test_read_stl10_binary_layout(tmp_path):
    # One bright byte at (channel 2, column 90, row 1): column-major planes put it at 2*9216 + 90*96 + 1.
    raw = bytearray(2 * 27648)
    raw[2 * 9216 + 90 * 96 + 1] = 200
    raw[27648 + 0 * 9216 + 5 * 96 + 70] = 99  # second image, channel 0, column 5, row 70
    images, labels = readers.read_stl10_binary(write_file(tmp_path / 'x.bin', bytes(raw)),
                                               write_file(tmp_path / 'y.bin', bytes([10, 1])))
    assert images.shape == (2, 96, 96, 3) and images.dtype == np.uint8
    assert images[0, 1, 90, 2] == 200 and images[1, 70, 5, 0] == 99 and images.sum() == 299
    np.testing.assert_array_equal(labels, [9, 0])
    # Random images written byte by byte, read in chunks smaller than the file.
    pictures = random_images(3, 96, 96, 3)
    path = write_file(tmp_path / 'u.bin', stl_bytes(pictures))
    np.testing.assert_array_equal(readers.read_stl10_images(path, chunk=2), pictures)
    images, labels = readers.read_stl10_binary(path)
    np.testing.assert_array_equal(images, pictures)
    assert labels.tolist() == [-1, -1, -1]


def test_read_stl10_errors(tmp_path):
    with pytest.raises(UserError, match='not a whole number of 27648-byte images'):
        readers.read_stl10_images(write_file(tmp_path / 'x.bin', b'\x00' * 27647))
    x = write_file(tmp_path / 'x2.bin', b'\x00' * 27648)
    with pytest.raises(UserError, match=r'label 0 out of range \[1, 11\)'):
        readers.read_stl10_binary(x, write_file(tmp_path / 'y0.bin', b'\x00'))
    with pytest.raises(UserError, match='1 images but 2 labels'):
        readers.read_stl10_binary(x, write_file(tmp_path / 'y2.bin', b'\x01\x02'))


def test_load_stl10_archive(tmp_path):
    train, test, unlabeled = random_images(2, 96, 96), random_images(1, 96, 96), random_images(3, 96, 96)
    write_tar(tmp_path / 'stl10_binary.tar.gz', {
        'stl10_binary/class_names.txt': b'\n'.join(c.encode() for c in readers.STL10_CLASSES[::-1]) + b'\n',
        'stl10_binary/test_X.bin': stl_bytes(test), 'stl10_binary/test_y.bin': bytes([4]),
        'stl10_binary/train_X.bin': stl_bytes(train), 'stl10_binary/train_y.bin': bytes([1, 10]),
        'stl10_binary/unlabeled_X.bin': stl_bytes(unlabeled), 'stl10_binary/fold_indices.txt': b'0 1\n'})
    assert registry.available_offline('stl10', source_dir=str(tmp_path))
    splits, names = registry.load('stl10', source_dir=str(tmp_path))
    assert names == readers.STL10_CLASSES[::-1]
    np.testing.assert_array_equal(splits['train'][0], train)
    np.testing.assert_array_equal(splits['train'][1], [0, 9])
    np.testing.assert_array_equal(splits['test'][1], [3])
    np.testing.assert_array_equal(splits['unlabeled'][0], unlabeled)
    assert splits['unlabeled'][1].tolist() == [-1, -1, -1] and splits['unlabeled'][1].dtype == np.int64
    spec = registry.BUILTIN['stl10']
    assert spec.shape == (96, 96, 3) and spec.pad == 12 and spec.unlabeled_splits == ('train', 'unlabeled')


# ---------------------------------------------------------------------------------------------------------------------
# Registry and real Fashion-MNIST.

def test_registry():
    assert list(registry.BUILTIN) == ['cifar10', 'cifar100', 'svhn', 'svhn_noextra', 'stl10', 'mnist', 'fashion_mnist']
    for spec in registry.BUILTIN.values():
        assert len(spec.class_names) == spec.nclass
        assert spec.flip == (spec.name not in ('svhn', 'svhn_noextra', 'mnist'))
        assert spec.pad == (12 if spec.name == 'stl10' else 4)
        for remote in spec.files:
            assert len(remote.md5) == 32 and remote.url.endswith('/' + remote.filename)
    assert registry.BUILTIN['fashion_mnist'].class_names[0] == 'T-shirt/top'
    assert registry.BUILTIN['mnist'].shape == registry.BUILTIN['fashion_mnist'].shape == (32, 32, 1)


def test_unknown_dataset():
    with pytest.raises(UserError, match=r"unknown dataset 'nope'; known datasets: cifar10, cifar100, svhn, "
                                        r"svhn_noextra, stl10, mnist, fashion_mnist"):
        registry.convert('nope')
    with pytest.raises(UserError, match='unknown dataset'):
        registry.available_offline('cifar_10')


def test_fashion_mnist_real_conversion(fashion_mnist):
    """The session fixture ran registry.convert('fashion_mnist') on the Debian package files."""
    assert registry.available_offline('fashion_mnist')
    root = fashion_mnist
    info = records.DatasetInfo.load('fashion_mnist')
    assert not os.path.exists(os.path.join(root, 'downloads', 'fashion_mnist'))  # read from the Debian package
    saved = json.load(open(os.path.join(root, 'fashion_mnist.json')))
    assert saved == {'name': 'fashion_mnist', 'shape': [32, 32, 1], 'nclass': 10, 'flip': True, 'pad': 4,
                     'class_names': list(readers.FASHION_MNIST_CLASSES), 'sizes': {'test': 10000, 'train': 60000}}
    assert records.DatasetInfo.load('fashion_mnist') == info
    originals = {'train': readers.read_idx(os.path.join(FASHION_MNIST_DIR, 'train-images-idx3-ubyte.gz')),
                 'test': readers.read_idx(os.path.join(FASHION_MNIST_DIR, 't10k-images-idx3-ubyte.gz'))}
    for split, count in (('train', 60000), ('test', 10000)):
        serialized = records.read_serialized([records.record_path('fashion_mnist', split)])
        assert len(serialized) == count
        np.testing.assert_array_equal(np.bincount(records.parse_labels(serialized), minlength=10), [count // 10] * 10)
        for index in (0, 1, count - 1):
            image, _ = records.parse_image(serialized[index], 1)
            image = image.numpy()
            assert image.shape == (32, 32, 1)
            np.testing.assert_array_equal(image[2:30, 2:30, 0], originals[split][index])
            assert image.sum() == image[2:30, 2:30].sum() > 0  # the 2 px border is zero


# ---------------------------------------------------------------------------------------------------------------------
# User datasets.

def write_png_folder(folder, classes):
    """folder/<class>/<i>.png for {class: images}; returns {class: images}."""
    for name, images in classes.items():
        os.makedirs(os.path.join(folder, name), exist_ok=True)
        for i, image in enumerate(images):
            write_file(os.path.join(folder, name, f'{i:03d}.png'), png(image))
    return classes


def test_user_dir_with_test_folder(tmp_path):
    train = write_png_folder(tmp_path / 'data', {'zebra': random_images(3, 8, 8), 'ant': random_images(2, 8, 8)})
    test = write_png_folder(tmp_path / 'data' / 'test',
                            {'zebra': random_images(1, 8, 8), 'ant': random_images(2, 8, 8)})
    write_file(tmp_path / 'data' / 'ant' / 'notes.txt', b'not an image')
    info = user_data.convert_user('pets', from_dir=str(tmp_path / 'data'))
    assert info.class_names == ['ant', 'zebra'] and info.nclass == 2 and info.shape == (8, 8, 3)
    assert info.sizes == {'train': 5, 'test': 3} and info.flip and info.pad == 1
    images, labels = read_back(records.record_path('pets', 'train'), 3)
    np.testing.assert_array_equal(images, np.concatenate([train['ant'], train['zebra']]))
    assert labels.tolist() == [0, 0, 1, 1, 1]
    images, labels = read_back(records.record_path('pets', 'test'), 3)
    np.testing.assert_array_equal(images, np.concatenate([test['ant'], test['zebra']]))
    assert labels.tolist() == [0, 0, 1]


def test_user_dir_holdout(tmp_path):
    classes = write_png_folder(tmp_path / 'data', {'a': random_images(20, 4, 6, 1), 'b': random_images(13, 4, 6, 1)})
    splits, names = user_data.load_from_dir(str(tmp_path / 'data'))
    assert names == ('a', 'b')
    assert np.bincount(splits['test'][1]).tolist() == [2, 1] and np.bincount(splits['train'][1]).tolist() == [18, 12]
    everything = np.concatenate([classes['a'], classes['b']])
    train_index, test_index = user_data.holdout_split(np.array([0] * 20 + [1] * 13))
    assert sorted(train_index.tolist() + test_index.tolist()) == list(range(33))
    np.testing.assert_array_equal(splits['test'][0], everything[test_index])
    np.testing.assert_array_equal(splits['train'][0], everything[train_index])
    np.testing.assert_array_equal(user_data.holdout_split(np.array([0] * 20 + [1] * 13))[1], test_index)
    assert test_index.tolist() != [0, 1, 20]  # shuffled, not the first images of each class
    info = user_data.convert_user('gray', from_dir=str(tmp_path / 'data'), flip=False, pad=2)
    assert (info.shape, info.flip, info.pad, info.sizes) == ((4, 6, 1), False, 2, {'train': 30, 'test': 3})
    images, labels = read_back(records.record_path('gray', 'test'), 1)
    np.testing.assert_array_equal(images, everything[test_index])
    assert labels.tolist() == [0, 0, 1]


def test_user_npz(tmp_path):
    x, y = random_images(6, 5, 5, 1)[..., 0], np.array([2, 0, 1, 2, 0, 1], np.int32)
    x_test, y_test = random_images(2, 5, 5, 1)[..., 0], np.array([1, 2])
    np.savez(tmp_path / 'd.npz', x=x, y=y, x_test=x_test, y_test=y_test)
    info = user_data.convert_user('tiny', from_npz=str(tmp_path / 'd.npz'))
    assert info.class_names == ['0', '1', '2'] and info.shape == (5, 5, 1) and info.sizes == {'train': 6, 'test': 2}
    images, labels = read_back(records.record_path('tiny', 'train'), 1)
    np.testing.assert_array_equal(images[..., 0], x)
    assert labels.tolist() == y.tolist()
    images, labels = read_back(records.record_path('tiny', 'test'), 1)
    np.testing.assert_array_equal(images[..., 0], x_test)
    assert labels.tolist() == [1, 2]
    np.savez(tmp_path / 'e.npz', x=random_images(30, 4, 4, 3), y=np.repeat([0, 1, 2], 10))
    splits, names = user_data.load_from_npz(str(tmp_path / 'e.npz'))
    assert names == ('0', '1', '2') and splits['test'][1].tolist() == [0, 1, 2] and len(splits['train'][1]) == 27


def test_conversion_is_deterministic(tmp_path):
    np.savez(tmp_path / 'd.npz', x=random_images(40, 6, 6, 3), y=np.arange(40) % 4)
    for root in ('r1', 'r2'):
        user_data.convert_user('same', from_npz=str(tmp_path / 'd.npz'), root=str(tmp_path / root))
    for name in ('same-train.tfrecord', 'same-test.tfrecord', 'same.json'):
        assert (tmp_path / 'r1' / name).read_bytes() == (tmp_path / 'r2' / name).read_bytes()
    assert sorted(os.listdir(tmp_path / 'r1')) == ['same-test.tfrecord', 'same-train.tfrecord', 'same.json']


def test_user_dir_errors(tmp_path):
    write_png_folder(tmp_path / 'mixed', {'a': random_images(3, 8, 8), 'b': random_images(1, 8, 8)})
    write_file(tmp_path / 'mixed' / 'b' / 'odd.png', png(random_images(1, 9, 8)[0]))
    with pytest.raises(UserError, match=r'image .*b/odd.png has shape \(9, 8, 3\) but the others have '
                                        r'\(8, 8, 3\).*resize'):
        user_data.load_from_dir(str(tmp_path / 'mixed'))
    write_png_folder(tmp_path / 'broken', {'a': random_images(2, 8, 8)})
    write_file(tmp_path / 'broken' / 'a' / 'bad.jpg', b'\xff\xd8garbage')
    with pytest.raises(UserError, match=r'cannot read image .*a/bad.jpg'):
        user_data.load_from_dir(str(tmp_path / 'broken'))
    os.makedirs(tmp_path / 'empty' / 'a')
    with pytest.raises(UserError, match=r'class folder .*empty/a has no images'):
        user_data.load_from_dir(str(tmp_path / 'empty'))
    os.makedirs(tmp_path / 'flat')
    write_file(tmp_path / 'flat' / 'x.png', png(random_images(1, 4, 4)[0]))
    with pytest.raises(UserError, match='no class sub-folders'):
        user_data.load_from_dir(str(tmp_path / 'flat'))
    write_png_folder(tmp_path / 'extra_class', {'a': random_images(1, 4, 4), 'test/c': random_images(1, 4, 4)})
    with pytest.raises(UserError, match=r'test/c is not a training class'):
        user_data.load_from_dir(str(tmp_path / 'extra_class'))


@pytest.mark.parametrize('arrays, message', [
    (dict(x=np.zeros((3, 4, 4), np.uint8), y=np.array([0, -1, 1])), r'label -1 out of range \[0, 2\) in .*\(array y\)'),
    (dict(x=np.zeros((2, 4, 4), np.uint8), y=np.array([0, 1]), x_test=np.zeros((1, 4, 4), np.uint8),
          y_test=np.array([2])), r'label 2 out of range \[0, 2\) in .*\(array y_test\)'),
    (dict(x=np.zeros((3, 4, 4), np.uint8), y=np.array([[0], [1], [1]])),
     r'y in .* has shape \(3, 1\); labels must be 1-D'),
    (dict(x=np.zeros((3, 4, 4), np.uint8), y=np.array([0, 1])), r'y in .* has 2 labels for 3 images'),
    (dict(x=np.zeros((2, 4, 4), np.uint8), y=np.array([0.0, 1.0])), r'y in .* is float64; labels must be integers'),
    (dict(x=np.zeros((2, 4, 4), np.float32), y=np.array([0, 1])), r'x in .* is float32; images must be uint8'),
    (dict(x=np.zeros((2, 4), np.uint8), y=np.array([0, 1])), r'x in .* has shape \(2, 4\)'),
    (dict(images=np.zeros((2, 4, 4), np.uint8), y=np.array([0, 1])), r"has no array 'x' \(found: images, y\)"),
    (dict(x=np.zeros((2, 4, 4), np.uint8), y=np.array([0, 1]), x_test=np.zeros((1, 4, 4), np.uint8)),
     'only one of x_test and y_test'),
    (dict(x=np.zeros((2, 4, 4), np.uint8), y=np.array([0, 1]), x_test=np.zeros((1, 5, 4), np.uint8),
          y_test=np.array([0])), r'x_test in .* has images of shape \(5, 4, 1\) but x has \(4, 4, 1\)'),
])
def test_user_npz_errors(tmp_path, arrays, message):
    np.savez(tmp_path / 'bad.npz', **arrays)
    with pytest.raises(UserError, match=message):
        user_data.load_from_npz(str(tmp_path / 'bad.npz'))


def test_user_name_errors(tmp_path):
    with pytest.raises(UserError, match='is a built-in dataset'):
        user_data.convert_user('cifar10', from_npz=str(tmp_path / 'x.npz'))
    with pytest.raises(UserError, match='bad dataset name'):
        user_data.convert_user('my.data', from_npz=str(tmp_path / 'x.npz'))
    with pytest.raises(UserError, match='exactly one of --from_dir and --from_npz'):
        user_data.convert_user('mine')
    with pytest.raises(UserError, match='cannot read .*not_npz.npz'):
        user_data.load_from_npz(write_file(tmp_path / 'not_npz.npz', b'hello'))


# ---------------------------------------------------------------------------------------------------------------------
# The script, as a user runs it (from the project root, no PYTHONPATH).

def run_script(*args, ml_data):
    env = {k: v for k, v in os.environ.items() if k != 'PYTHONPATH'}
    env['ML_DATA'] = str(ml_data)
    return subprocess.run([sys.executable, 'scripts/create_datasets.py', *args], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=120)


def test_script_help(tmp_path):
    result = run_script('--help', ml_data=tmp_path)
    for flag in ('datasets', 'source_dir', 'download_dir', 'name', 'from_dir', 'from_npz', '[no]flip', 'pad'):
        assert f'--{flag}: ' in result.stdout


def test_script_user_npz(tmp_path):
    np.savez(tmp_path / 'd.npz', x=random_images(10, 16, 16, 3), y=np.arange(10) % 2)
    result = run_script('--name=mine', f'--from_npz={tmp_path / "d.npz"}', '--noflip', ml_data=tmp_path / 'ml')
    assert result.returncode == 0, result.stderr
    info = records.DatasetInfo.load('mine', root=str(tmp_path / 'ml'))
    assert (info.flip, info.pad, info.sizes) == (False, 2, {'train': 10, 'test': 0})
    assert not os.path.exists(tmp_path / 'ml' / 'cifar10.json')  # no built-in conversion unless --datasets is given


@pytest.fixture
def parse_flags():
    """Parses command-line flags for create_datasets.main in this process; resets them afterwards."""
    def parse(*args):
        create_datasets.FLAGS.unparse_flags()
        create_datasets.FLAGS(['create_datasets.py', *args])
    yield parse
    create_datasets.FLAGS.unparse_flags()


@pytest.mark.parametrize('args, message', [
    (['--datasets=cifar10,nope'], "unknown dataset 'nope'; known datasets: cifar10"),
    (['--pad=3'], '--name, --flip and --pad describe a user dataset'),
    (['--from_npz=x.npz'], 'a user dataset needs a name'),
    (['--name=svhn', '--from_dir=somewhere'], 'is a built-in dataset'),
])
def test_script_flag_errors(parse_flags, args, message):
    parse_flags(*args)
    with pytest.raises(UserError, match=message):
        create_datasets.main(['create_datasets.py'])
