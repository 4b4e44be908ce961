"""The built-in datasets: where their original files come from and how they become record files.

Built-in datasets (`BUILTIN`) are read from, in order: `source_dir` (the original file names, directly in it or in
`source_dir/<folder>/`; IDX files may also be un-gzipped), the system copies (Fashion-MNIST from the Debian/Ubuntu
package dataset-fashion-mnist), then `<download_dir>/<folder>/` (default `$ML_DATA/downloads/<folder>/`), where the
files are downloaded from their original hosts when missing and checked against their MD5 checksum. Local copies
(source_dir, system) are trusted; the readers (libml/readers.py) still check their format.
"""
import dataclasses
import functools
import os
import tarfile
import zlib

import numpy as np

from libml import records
from libml import utils
from libml.readers import (CIFAR10_CLASSES, CIFAR100_CLASSES, DIGIT_CLASSES, FASHION_MNIST_CLASSES, STL10_CLASSES,
                           check_labels, check_same_count, corrupt_error, pad_digits, parse_folds, parse_names,
                           read_cifar_binary, read_idx, read_stl10_images, read_stl10_labels, read_svhn_mat)
from libml.utils import UserError

FASHION_MNIST_SYSTEM_DIR = '/usr/share/datasets/fashion-mnist'

@dataclasses.dataclass(frozen=True)
class Remote:
    """One original file: its name, where to download it and its MD5 checksum (hex)."""
    filename: str
    url: str
    md5: str


@dataclasses.dataclass(frozen=True)
class Spec:
    """A built-in dataset.

    shape: (height, width, channels) of the images as written, in pixels.
    flip / pad: weak augmentation (left-right mirroring; reflect-padding in pixels before the random crop).
    unlabeled_splits: the written splits that together form the unlabeled pool.
    files: the original files; folder: their sub-folder of the download folder (and of source_dir);
    system_dirs: folders holding system-installed copies.
    loader: function {filename: local path} -> (splits, class_names), see `load`.
    """
    name: str
    shape: tuple
    nclass: int
    class_names: tuple
    flip: bool
    pad: int
    unlabeled_splits: tuple
    files: tuple
    folder: str
    loader: object = dataclasses.field(repr=False, compare=False)
    system_dirs: tuple = ()


# ---------------------------------------------------------------------------------------------------------------------
# Loaders of the built-in datasets: {filename: local path} -> (splits, class_names).

def load_cifar(paths, nclass):
    archive = 'cifar-10-binary.tar.gz' if nclass == 10 else 'cifar-100-binary.tar.gz'
    return read_cifar_binary(paths[archive], nclass)


def load_svhn(paths, extra):
    splits = {'train': read_svhn_mat(paths['train_32x32.mat']), 'test': read_svhn_mat(paths['test_32x32.mat'])}
    if extra:
        splits['extra'] = read_svhn_mat(paths['extra_32x32.mat'])
    return splits, DIGIT_CLASSES


STL10_MEMBERS = {'train_X.bin', 'train_y.bin', 'test_X.bin', 'test_y.bin', 'unlabeled_X.bin', 'class_names.txt',
                 'fold_indices.txt'}


def load_stl10(paths):
    """Reads the stl10_binary.tar.gz members in one pass (the big unlabeled_X.bin is never extracted to disk).

    Returns (splits, class_names, folds): folds = the 10 official labeled folds of fold_indices.txt."""
    archive = paths['stl10_binary.tar.gz']
    arrays, names, folds = {}, None, None
    try:
        with tarfile.open(archive, 'r:*') as tar:
            for member in tar:
                base = os.path.basename(member.name)
                if not member.isfile() or base not in STL10_MEMBERS:
                    continue
                f = tar.extractfile(member)
                if base == 'class_names.txt':
                    names = parse_names(f.read(), 10)
                elif base == 'fold_indices.txt':
                    folds = f.read()
                elif base.endswith('_X.bin'):
                    arrays[base] = read_stl10_images(f)
                else:
                    arrays[base] = read_stl10_labels(f)
    except FileNotFoundError:
        raise UserError(f'missing file {archive}') from None
    except (tarfile.TarError, OSError, EOFError, zlib.error) as e:
        raise corrupt_error(archive, e) from None
    found = set(arrays) | ({'fold_indices.txt'} if folds is not None else set())
    missing = sorted(STL10_MEMBERS - found - {'class_names.txt'})
    if missing:
        raise UserError(f'{archive} has no member {missing[0]}: it is incomplete; delete it and get it again')
    splits = {}
    for split in ('train', 'test'):
        images, labels = arrays[f'{split}_X.bin'], arrays[f'{split}_y.bin']
        check_same_count(images, labels, f'{archive}:{split}_y.bin')
        splits[split] = (images, labels)
    splits['unlabeled'] = (arrays['unlabeled_X.bin'], np.full(len(arrays['unlabeled_X.bin']), -1, np.int64))
    folds = parse_folds(folds, len(splits['train'][1]), f'{archive}:fold_indices.txt')
    return splits, names or STL10_CLASSES, folds



def load_idx_digits(paths, class_names):
    """MNIST-style IDX files: 28x28 uint8 images, uint8 labels in 0..9; images padded to 32x32x1."""
    splits = {}
    for split, prefix in (('train', 'train'), ('test', 't10k')):
        image_path, label_path = paths[f'{prefix}-images-idx3-ubyte.gz'], paths[f'{prefix}-labels-idx1-ubyte.gz']
        images, labels = read_idx(image_path), read_idx(label_path)
        if images.dtype != np.uint8 or images.ndim != 3 or images.shape[1:] != (28, 28):
            raise UserError(f'{image_path} holds {images.dtype} {images.shape}, expected uint8 (N, 28, 28); '
                            f'get the original file')
        if labels.ndim != 1:
            raise UserError(f'{label_path} holds an array of shape {labels.shape}, expected (N,); get the original')
        check_same_count(images, labels, label_path)
        check_labels(labels, 0, len(class_names), label_path)
        splits[split] = (pad_digits(images), labels.astype(np.int64))
    return splits, class_names


# ---------------------------------------------------------------------------------------------------------------------
# The registry of built-in datasets.

KRIZ = 'https://www.cs.toronto.edu/~kriz/'
SVHN_URL = 'http://ufldl.stanford.edu/housenumbers/'
STL10_URL = 'http://ai.stanford.edu/~acoates/stl10/'
MNIST_URL = 'https://ossci-datasets.s3.amazonaws.com/mnist/'
FASHION_MNIST_URL = 'http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/'


def idx_files(url, md5s):
    names = ('train-images-idx3-ubyte.gz', 'train-labels-idx1-ubyte.gz',
             't10k-images-idx3-ubyte.gz', 't10k-labels-idx1-ubyte.gz')
    return tuple(Remote(name, url + name, md5) for name, md5 in zip(names, md5s))


CIFAR10_FILES = (Remote('cifar-10-binary.tar.gz', KRIZ + 'cifar-10-binary.tar.gz', 'c32a1d4ab5d03f1284b67883e8d87530'),)
CIFAR100_FILES = (Remote('cifar-100-binary.tar.gz', KRIZ + 'cifar-100-binary.tar.gz',
                         '03b5dce01913d631647c71ecec9e9cb8'),)
SVHN_FILES = (Remote('train_32x32.mat', SVHN_URL + 'train_32x32.mat', 'e26dedcc434d2e4c54c9b2d4a06d8373'),
              Remote('test_32x32.mat', SVHN_URL + 'test_32x32.mat', 'eb5a983be6a315427106f1b164d9cef3'))
SVHN_EXTRA_FILE = Remote('extra_32x32.mat', SVHN_URL + 'extra_32x32.mat', 'a93ce644f1a588dc4d68dda5feec44a7')
STL10_FILES = (Remote('stl10_binary.tar.gz', STL10_URL + 'stl10_binary.tar.gz', '91f7769df0f17e558f3565bffb0c7dfb'),)
MNIST_FILES = idx_files(MNIST_URL, ('f68b3c2dcbeaaa9fbdd348bbdeb94873', 'd53e105ee54ea40749a09fcbcd1e9432',
                                    '9fb629c4189551a2d022fa330f9573f3', 'ec29112dd5afa0611ce80d1b7f02629c'))
# The checksums of the original .gz files. The Debian package's copies hold the same compressed data, but their gzip
# header was normalised (file name dropped, time stamp reset), so their own MD5s differ: putting back the header
# (flag FNAME, the original name and time stamp, 2017-08-31) reproduces these four checksums exactly.
FASHION_MNIST_FILES = idx_files(FASHION_MNIST_URL, (
    '8d4fb7e6c68d591d4c3dfef9ec88bf0d', '25c81989df183df01b3e8a0aad5dffbe',
    'bef4ecab320f06d8554ea6380940ec79', 'bb300cfdad3c16e7a12a480ee83cd310'))

BUILTIN = {spec.name: spec for spec in (
    Spec('cifar10', (32, 32, 3), 10, CIFAR10_CLASSES, True, 4, ('train',), CIFAR10_FILES, 'cifar10',
         functools.partial(load_cifar, nclass=10)),
    Spec('cifar100', (32, 32, 3), 100, CIFAR100_CLASSES, True, 4, ('train',), CIFAR100_FILES, 'cifar100',
         functools.partial(load_cifar, nclass=100)),
    Spec('svhn', (32, 32, 3), 10, DIGIT_CLASSES, False, 4, ('train', 'extra'), SVHN_FILES + (SVHN_EXTRA_FILE,),
         'svhn', functools.partial(load_svhn, extra=True)),
    # Same files as svhn (shared download folder), without the extra split.
    Spec('svhn_noextra', (32, 32, 3), 10, DIGIT_CLASSES, False, 4, ('train',), SVHN_FILES, 'svhn',
         functools.partial(load_svhn, extra=False)),
    Spec('stl10', (96, 96, 3), 10, STL10_CLASSES, True, 12, ('train', 'unlabeled'), STL10_FILES, 'stl10',
         load_stl10),
    Spec('mnist', (32, 32, 1), 10, DIGIT_CLASSES, False, 4, ('train',), MNIST_FILES, 'mnist',
         functools.partial(load_idx_digits, class_names=DIGIT_CLASSES)),
    Spec('fashion_mnist', (32, 32, 1), 10, FASHION_MNIST_CLASSES, True, 4, ('train',), FASHION_MNIST_FILES,
         'fashion_mnist', functools.partial(load_idx_digits, class_names=FASHION_MNIST_CLASSES),
         system_dirs=(FASHION_MNIST_SYSTEM_DIR,)),
)}


def get_spec(name):
    """The Spec of a built-in dataset; UserError listing the known names otherwise."""
    if name not in BUILTIN:
        raise UserError(f'unknown dataset {name!r}; known datasets: {", ".join(BUILTIN)} '
                        f'(or convert your own with --name=NAME --from_dir=DIR or --from_npz=FILE)')
    return BUILTIN[name]


def default_download_dir():
    return os.path.join(utils.ml_data(), 'downloads')


def local_copy(remote, spec, source_dir=None):
    """Path of a trusted local copy of `remote` (source_dir, then the system folders), or None.

    In source_dir the file may sit directly or in source_dir/<folder>/; a gzipped file may also be un-gzipped.
    """
    names = [remote.filename] + ([remote.filename[:-3]] if remote.filename.endswith('.gz') else [])
    folders = ([source_dir, os.path.join(source_dir, spec.folder)] if source_dir else []) + list(spec.system_dirs)
    for folder in folders:
        for name in names:
            path = os.path.join(folder, name)
            if os.path.isfile(path):
                return path
    return None


def fetch(remote, spec, source_dir=None, download_dir=None):
    """Local path of `remote`: a local copy, else <download_dir>/<folder>/<filename>, downloaded and checksummed."""
    path = local_copy(remote, spec, source_dir)
    if path:
        return path
    target = os.path.join(download_dir or default_download_dir(), spec.folder, remote.filename)
    return utils.download(remote.url, target, remote.md5)


def available_offline(name, source_dir=None, download_dir=None):
    """True when every file of dataset `name` is already on this machine, so `load` needs no network.

    A file in the download folder counts as present without re-checking its checksum.
    """
    spec = get_spec(name)
    folder = os.path.join(download_dir or default_download_dir(), spec.folder)
    return all(local_copy(r, spec, source_dir) or os.path.isfile(os.path.join(folder, r.filename))
               for r in spec.files)


def load(name, source_dir=None, download_dir=None, with_folds=False):
    """(splits, class_names) of built-in dataset `name`, fetching its files as needed (see the module docstring).

    splits: {'train'|'test'|'extra'|'unlabeled': (uint8 images (N, H, W, C), int64 labels (N,))}.
    with_folds: also return the official labeled folds (lists of training-image indices; STL-10) or None.
    """
    spec = get_spec(name)
    paths = {r.filename: fetch(r, spec, source_dir, download_dir) for r in spec.files}
    splits, class_names, *folds = spec.loader(paths)
    if with_folds:
        return splits, tuple(class_names), (folds[0] if folds else None)
    return splits, tuple(class_names)


def convert(name, root=None, source_dir=None, download_dir=None):
    """Converts built-in dataset `name` into <root or $ML_DATA>; downloads go to download_dir or <root>/downloads."""
    spec = get_spec(name)
    download_dir = download_dir or os.path.join(root or utils.ml_data(), 'downloads')
    splits, class_names, folds = load(name, source_dir=source_dir, download_dir=download_dir, with_folds=True)
    return records.write_dataset(name, splits, class_names, spec.flip, spec.pad, root, folds=folds)


