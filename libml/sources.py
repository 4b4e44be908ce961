"""Readers and downloaders of the original dataset files; every reader returns plain numpy arrays.

Images are uint8 arrays (N, H, W, C) in pixels; labels are int64 arrays (N,) with classes in [0, nclass),
or -1 for an image that has no label (the STL-10 unlabeled split).

Built-in datasets (`BUILTIN`) are read from, in order: `source_dir` (the original file names, directly in it or in
`source_dir/<folder>/`; IDX files may also be un-gzipped), the system copies (Fashion-MNIST from the Debian/Ubuntu
package dataset-fashion-mnist), then `<download_dir>/<folder>/` (default `$ML_DATA/downloads/<folder>/`), where the
files are downloaded from their original hosts when missing and checked against their MD5 checksum. Local copies
(source_dir, system) are trusted; the readers still check their format.

User datasets come from a folder of class sub-folders of images (`load_from_dir`) or an .npz file
(`load_from_npz`). Without a test set of their own, `holdout_split` sets aside a deterministic 10% of each class.
"""
import collections
import contextlib
import dataclasses
import functools
import gzip
import io
import os
import re
import struct
import tarfile
import zipfile
import zlib

import numpy as np
import scipy.io
import tensorflow as tf
from absl import logging

from libml import records
from libml import utils
from libml.utils import UserError

FASHION_MNIST_SYSTEM_DIR = '/usr/share/datasets/fashion-mnist'
IMAGE_EXTENSIONS = ('.bmp', '.gif', '.jpeg', '.jpg', '.png')
HOLDOUT_FRACTION = 0.1
HOLDOUT_SEED = 0

CIFAR10_CLASSES = ('airplane', 'automobile', 'bird', 'cat', 'deer', 'dog', 'frog', 'horse', 'ship', 'truck')
CIFAR100_CLASSES = (
    'apple', 'aquarium_fish', 'baby', 'bear', 'beaver', 'bed', 'bee', 'beetle', 'bicycle', 'bottle',
    'bowl', 'boy', 'bridge', 'bus', 'butterfly', 'camel', 'can', 'castle', 'caterpillar', 'cattle',
    'chair', 'chimpanzee', 'clock', 'cloud', 'cockroach', 'couch', 'crab', 'crocodile', 'cup', 'dinosaur',
    'dolphin', 'elephant', 'flatfish', 'forest', 'fox', 'girl', 'hamster', 'house', 'kangaroo', 'keyboard',
    'lamp', 'lawn_mower', 'leopard', 'lion', 'lizard', 'lobster', 'man', 'maple_tree', 'motorcycle', 'mountain',
    'mouse', 'mushroom', 'oak_tree', 'orange', 'orchid', 'otter', 'palm_tree', 'pear', 'pickup_truck', 'pine_tree',
    'plain', 'plate', 'poppy', 'porcupine', 'possum', 'rabbit', 'raccoon', 'ray', 'road', 'rocket',
    'rose', 'sea', 'seal', 'shark', 'shrew', 'skunk', 'skyscraper', 'snail', 'snake', 'spider',
    'squirrel', 'streetcar', 'sunflower', 'sweet_pepper', 'table', 'tank', 'telephone', 'television', 'tiger',
    'tractor', 'train', 'trout', 'tulip', 'turtle', 'wardrobe', 'whale', 'willow_tree', 'wolf', 'woman', 'worm')
STL10_CLASSES = ('airplane', 'bird', 'car', 'cat', 'deer', 'dog', 'horse', 'monkey', 'ship', 'truck')
DIGIT_CLASSES = tuple(str(k) for k in range(10))
FASHION_MNIST_CLASSES = ('T-shirt/top', 'Trouser', 'Pullover', 'Dress', 'Coat',
                         'Sandal', 'Shirt', 'Sneaker', 'Bag', 'Ankle boot')


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
# Checks shared by the readers.

def check_labels(labels, low, high, where):
    """Raises UserError unless every label is in [low, high)."""
    labels = np.asarray(labels)
    bad = labels[(labels < low) | (labels >= high)]
    if bad.size:
        raise UserError(f'label {bad[0]} out of range [{low}, {high}) in {where}')


def check_same_count(images, labels, where):
    if len(images) != len(labels):
        raise UserError(f'{len(images)} images but {len(labels)} labels in {where}; '
                        f'the files do not belong together or one is truncated: replace them')


def corrupt_error(where, err):
    detail = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
    return UserError(f'cannot read {where} ({detail}): it is truncated or corrupt; delete it and get it again')


def read_bytes(path):
    """The content of `path`, gunzipped when it starts with the gzip magic number."""
    try:
        with open(path, 'rb') as f:
            data = f.read()
        return gzip.decompress(data) if data[:2] == b'\x1f\x8b' else data
    except FileNotFoundError:
        raise UserError(f'missing file {path}') from None
    except (OSError, EOFError, zlib.error) as e:
        raise corrupt_error(path, e) from None


# ---------------------------------------------------------------------------------------------------------------------
# Readers of the original formats.

IDX_TYPES = {0x08: np.dtype('u1'), 0x09: np.dtype('i1'), 0x0B: np.dtype('>i2'), 0x0C: np.dtype('>i4'),
             0x0D: np.dtype('>f4'), 0x0E: np.dtype('>f8')}


def read_idx(path):
    """The array stored in an IDX file (gzipped or raw), in native byte order.

    Format: bytes 0, 0, a type code (0x08 uint8, 0x09 int8, 0x0B int16, 0x0C int32, 0x0D float32, 0x0E float64),
    the number of dimensions D, then D big-endian uint32 sizes, then the values, big-endian, row-major.
    """
    data = read_bytes(path)
    if len(data) < 4 or data[0] or data[1] or data[2] not in IDX_TYPES or not data[3]:
        raise UserError(f'{path} is not an IDX file (magic number {data[:4].hex() or "missing"}); '
                        f'delete it and get the original file again')
    header = 4 + 4 * data[3]
    if len(data) < header:
        raise UserError(f'{path} is truncated (header cut short); delete it and get it again')
    shape = struct.unpack(f'>{data[3]}I', data[4:header])
    dtype = IDX_TYPES[data[2]]
    expected = header + int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    if len(data) != expected:
        raise UserError(f'{path} is truncated or corrupt: {len(data)} bytes where its header {shape} needs '
                        f'{expected}; delete it and get it again')
    return np.frombuffer(data, dtype, offset=header).reshape(shape).astype(dtype.newbyteorder('='))


def parse_cifar_records(data, label_bytes, where):
    """Images (N, 32, 32, 3) and int64 labels (N,) of CIFAR binary records.

    A record is `label_bytes` label bytes (the last one is kept: CIFAR-100's fine label after its coarse one), then
    3072 pixel bytes: the 32x32 red plane, then green, then blue, each row-major.
    """
    size = label_bytes + 32 * 32 * 3
    if len(data) % size:
        raise UserError(f'{where} is truncated or corrupt: {len(data)} bytes is not a whole number of {size}-byte '
                        f'records; delete the archive and get it again')
    rows = np.frombuffer(data, np.uint8).reshape(-1, size)
    images = rows[:, label_bytes:].reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1)
    return np.ascontiguousarray(images), rows[:, label_bytes - 1].astype(np.int64)


def read_tar_members(archive, basenames):
    """{basename: bytes} of the regular files of a (compressed) tar archive whose base name is in `basenames`.

    One sequential pass over the archive; members absent from it are absent from the result.
    """
    found = {}
    try:
        with tarfile.open(archive, 'r:*') as tar:
            for member in tar:
                base = os.path.basename(member.name)
                if member.isfile() and base in basenames:
                    found[base] = tar.extractfile(member).read()
    except FileNotFoundError:
        raise UserError(f'missing file {archive}') from None
    except (tarfile.TarError, OSError, EOFError, zlib.error) as e:
        raise corrupt_error(archive, e) from None
    return found


def parse_names(text, count):
    """The non-empty stripped lines of `text` when there are exactly `count` of them, else None."""
    names = tuple(line.strip() for line in text.decode('utf-8', 'replace').splitlines() if line.strip())
    return names if len(names) == count else None


CIFAR_LAYOUT = {
    # nclass: (train members, test members, class names member, label bytes per record, known class names)
    10: ([f'data_batch_{i}.bin' for i in range(1, 6)], ['test_batch.bin'], 'batches.meta.txt', 1, CIFAR10_CLASSES),
    100: (['train.bin'], ['test.bin'], 'fine_label_names.txt', 2, CIFAR100_CLASSES),
}


def read_cifar_binary(archive, nclass):
    """({'train': (images, labels), 'test': ...}, class_names) from a CIFAR-10 or CIFAR-100 binary tar.gz archive.

    CIFAR-10 (nclass=10): data_batch_1..5.bin, test_batch.bin, class names in batches.meta.txt.
    CIFAR-100 (nclass=100): train.bin, test.bin with fine labels, class names in fine_label_names.txt.
    Members are matched by base name; class names fall back to the known list when the names file is unusable.
    """
    train_members, test_members, names_member, label_bytes, known_names = CIFAR_LAYOUT[nclass]
    members = read_tar_members(archive, set(train_members + test_members + [names_member]))
    splits = {}
    for split, wanted in (('train', train_members), ('test', test_members)):
        parts = []
        for member in wanted:
            if member not in members:
                raise UserError(f'{archive} has no member {member}: it is not the CIFAR-{nclass} binary archive '
                                f'or it is incomplete; delete it and get it again')
            where = f'{archive}:{member}'
            images, labels = parse_cifar_records(members[member], label_bytes, where)
            check_labels(labels, 0, nclass, where)
            parts.append((images, labels))
        splits[split] = (np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts]))
    names = parse_names(members[names_member], nclass) if names_member in members else None
    return splits, names or known_names


def read_svhn_mat(path):
    """Images (N, 32, 32, 3) and int64 labels (N,) in 0..9 of an SVHN .mat file.

    The file holds X, uint8 (32, 32, 3, N), and y, (N, 1) in 1..10 where 10 stands for the digit 0.
    """
    try:
        mat = scipy.io.loadmat(path, variable_names=['X', 'y'])
    except FileNotFoundError:
        raise UserError(f'missing file {path}') from None
    except (OSError, ValueError, TypeError, EOFError, zlib.error, scipy.io.matlab.MatReadError) as e:
        raise corrupt_error(path, e) from None
    if 'X' not in mat or 'y' not in mat:
        raise UserError(f'{path} lacks the X or y array: it is not an SVHN cropped-digits file; get the original')
    images, raw = mat['X'], mat['y'].reshape(-1)
    if images.dtype != np.uint8 or images.ndim != 4 or images.shape[:3] != (32, 32, 3):
        raise UserError(f'{path}: X is {images.dtype} {images.shape}, expected uint8 (32, 32, 3, N); get the original')
    if images.shape[3] != len(raw):
        raise UserError(f'{path} holds {images.shape[3]} images but {len(raw)} labels; get the original file')
    check_labels(raw, 1, 11, path)
    return np.ascontiguousarray(images.transpose(3, 0, 1, 2)), (raw.astype(np.int64) % 10)


STL_SIDE = 96
STL_IMAGE_BYTES = 3 * STL_SIDE * STL_SIDE


@contextlib.contextmanager
def open_source(source):
    """A binary file object from a path (opened, then closed) or from an already open binary file object."""
    if isinstance(source, (str, os.PathLike)):
        try:
            with open(source, 'rb') as f:
                yield f
        except FileNotFoundError:
            raise UserError(f'missing file {source}') from None
    else:
        yield source


def source_name(source):
    return os.fspath(source) if isinstance(source, (str, os.PathLike)) else getattr(source, 'name', '<stream>')


def read_stl10_images(source, chunk=1000):
    """Images (N, 96, 96, 3) of an STL-10 *_X.bin file (a path or a binary file object).

    The file is N images of 3 channel planes (red, green, blue) of 96x96 uint8, each plane stored column by column
    (column-major). Read `chunk` images at a time into the output, so the file is never held twice in memory.
    """
    name = source_name(source)
    with open_source(source) as f:
        size = f.seek(0, io.SEEK_END)
        f.seek(0)
        if size % STL_IMAGE_BYTES:
            raise UserError(f'{name} is truncated or corrupt: {size} bytes is not a whole number of '
                            f'{STL_IMAGE_BYTES}-byte images; delete it and get it again')
        count = size // STL_IMAGE_BYTES
        images = np.empty((count, STL_SIDE, STL_SIDE, 3), np.uint8)
        for start in range(0, count, chunk):
            n = min(chunk, count - start)
            data = f.read(n * STL_IMAGE_BYTES)
            if len(data) != n * STL_IMAGE_BYTES:
                raise UserError(f'{name} ended early; delete it and get it again')
            # (n, channel, column, row) -> (n, row, column, channel)
            planes = np.frombuffer(data, np.uint8).reshape(n, 3, STL_SIDE, STL_SIDE)
            images[start:start + n] = planes.transpose(0, 3, 2, 1)
    return images


def read_stl10_labels(source):
    """int64 labels (N,) in 0..9 of an STL-10 *_y.bin file (path or binary file object): N bytes in 1..10."""
    with open_source(source) as f:
        raw = np.frombuffer(f.read(), np.uint8)
    check_labels(raw, 1, 11, source_name(source))
    return raw.astype(np.int64) - 1


def read_stl10_binary(images, labels=None):
    """Images (N, 96, 96, 3) and int64 labels (N,) of an STL-10 split (see read_stl10_images/read_stl10_labels).

    images, labels: paths or binary file objects. Without a labels file (the unlabeled split) every label is -1.
    """
    pixels = read_stl10_images(images)
    if labels is None:
        return pixels, np.full(len(pixels), -1, np.int64)
    classes = read_stl10_labels(labels)
    check_same_count(pixels, classes, source_name(labels))
    return pixels, classes


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


STL10_MEMBERS = {'train_X.bin', 'train_y.bin', 'test_X.bin', 'test_y.bin', 'unlabeled_X.bin', 'class_names.txt'}


def load_stl10(paths):
    """Reads the stl10_binary.tar.gz members in one pass (the big unlabeled_X.bin is never extracted to disk)."""
    archive = paths['stl10_binary.tar.gz']
    arrays, names = {}, None
    try:
        with tarfile.open(archive, 'r:*') as tar:
            for member in tar:
                base = os.path.basename(member.name)
                if not member.isfile() or base not in STL10_MEMBERS:
                    continue
                f = tar.extractfile(member)
                if base == 'class_names.txt':
                    names = parse_names(f.read(), 10)
                elif base.endswith('_X.bin'):
                    arrays[base] = read_stl10_images(f)
                else:
                    arrays[base] = read_stl10_labels(f)
    except FileNotFoundError:
        raise UserError(f'missing file {archive}') from None
    except (tarfile.TarError, OSError, EOFError, zlib.error) as e:
        raise corrupt_error(archive, e) from None
    missing = sorted(STL10_MEMBERS - set(arrays) - {'class_names.txt'})
    if missing:
        raise UserError(f'{archive} has no member {missing[0]}: it is incomplete; delete it and get it again')
    splits = {}
    for split in ('train', 'test'):
        images, labels = arrays[f'{split}_X.bin'], arrays[f'{split}_y.bin']
        check_same_count(images, labels, f'{archive}:{split}_y.bin')
        splits[split] = (images, labels)
    splits['unlabeled'] = (arrays['unlabeled_X.bin'], np.full(len(arrays['unlabeled_X.bin']), -1, np.int64))
    return splits, names or STL10_CLASSES


def pad_digits(images, border=2):
    """(N, 28, 28) uint8 -> (N, 32, 32, 1) with a zero border of `border` pixels on every side."""
    return np.pad(images, ((0, 0), (border, border), (border, border)))[..., None]


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


def load(name, source_dir=None, download_dir=None):
    """(splits, class_names) of built-in dataset `name`, fetching its files as needed (see the module docstring).

    splits: {'train'|'test'|'extra'|'unlabeled': (uint8 images (N, H, W, C), int64 labels (N,))}.
    """
    spec = get_spec(name)
    paths = {r.filename: fetch(r, spec, source_dir, download_dir) for r in spec.files}
    splits, class_names = spec.loader(paths)
    return splits, tuple(class_names)


# ---------------------------------------------------------------------------------------------------------------------
# User datasets.

def holdout_split(labels, fraction=HOLDOUT_FRACTION, seed=HOLDOUT_SEED):
    """(train, test) ascending index arrays: floor(fraction * n_k) images of each class k go to the test set.

    Deterministic: the test images of each class, in increasing class order, are the first ones of a permutation of
    that class's indices drawn from one np.random.RandomState(seed).
    """
    rng = np.random.RandomState(seed)
    test = []
    for k in np.unique(labels):
        members = np.flatnonzero(labels == k)
        test.append(rng.permutation(members)[:int(len(members) * fraction)])
    test = np.sort(np.concatenate(test)) if test else np.zeros([0], np.int64)
    train = np.setdiff1d(np.arange(len(labels)), test)
    return train, test


def with_holdout(images, labels):
    """{'train', 'test'} splits of one labeled set, the test split from holdout_split."""
    train, test = holdout_split(labels)
    return {'train': (images[train], labels[train]), 'test': (images[test], labels[test])}


def decode_image_file(path):
    """uint8 (H, W, C) pixels of a PNG, JPEG, GIF (first frame) or BMP file."""
    try:
        with open(path, 'rb') as f:
            data = f.read()
        return tf.io.decode_image(data, expand_animations=False, dtype=tf.uint8).numpy()
    except (OSError, tf.errors.OpError) as e:
        detail = (str(e).strip().splitlines() or [type(e).__name__])[0]
        raise UserError(f'cannot read image {path} ({detail}); replace it with a valid PNG/JPEG/GIF/BMP or '
                        f'delete it') from None


def image_files(folder):
    """Sorted paths of the image files (by extension, hidden files excluded) directly inside `folder`."""
    return [os.path.join(folder, name) for name in sorted(os.listdir(folder))
            if not name.startswith('.') and name.lower().endswith(IMAGE_EXTENSIONS)
            and os.path.isfile(os.path.join(folder, name))]


def class_folders(folder, exclude=()):
    return sorted(name for name in os.listdir(folder)
                  if not name.startswith('.') and name not in exclude and os.path.isdir(os.path.join(folder, name)))


def stack_same_shape(images, files):
    """Stacks images (H, W, C) into (N, H, W, C); UserError naming a file whose shape differs from the usual one."""
    shapes = collections.Counter(image.shape for image in images)
    expected = shapes.most_common(1)[0][0]
    for image, path in zip(images, files):
        if image.shape != expected:
            raise UserError(f'image {path} has shape {image.shape} but the others have {expected} (height, width, '
                            f'channels); resize/convert all images to one shape first')
    return np.stack(images)


def load_from_dir(path):
    """(splits, class_names) of a folder of class sub-folders of images.

    Layout: path/<class>/<image>; class names are the sorted sub-folder names, class k the k-th. Images (PNG, JPEG,
    GIF, BMP, by extension; other files are ignored) must all share one shape (H, W, C). An optional path/test/<class>/
    holds the test set (its classes must be training classes); without it the test set is `holdout_split`'s 10%.
    """
    if not os.path.isdir(path):
        raise UserError(f'--from_dir {path} is not a folder; give a folder of class sub-folders of images')
    has_test = os.path.isdir(os.path.join(path, 'test'))
    class_names = class_folders(path, exclude=('test',) if has_test else ())
    if not class_names:
        raise UserError(f'{path} has no class sub-folders; put the images of each class in path/<class name>/')
    sets = {'train': path, 'test': os.path.join(path, 'test')} if has_test else {'train': path}
    files, labels = {}, {}
    for split, root in sets.items():
        names = class_names if split == 'train' else class_folders(root)
        unknown = sorted(set(names) - set(class_names))
        if unknown:
            raise UserError(f'{os.path.join(root, unknown[0])} is not a training class (classes: '
                            f'{", ".join(class_names)}); rename or remove it')
        files[split], labels[split] = [], []
        for k, name in enumerate(class_names):
            found = image_files(os.path.join(root, name)) if name in names else []
            if not found and split == 'train':
                raise UserError(f'class folder {os.path.join(root, name)} has no images '
                                f'({"/".join(IMAGE_EXTENSIONS)}); add images or remove the folder')
            files[split] += found
            labels[split] += [k] * len(found)
    all_files = files['train'] + files.get('test', [])
    stacked = stack_same_shape([decode_image_file(f) for f in utils.progress(all_files, desc='decoding')], all_files)
    images = {'train': stacked[:len(files['train'])], 'test': stacked[len(files['train']):]}
    labels = {split: np.asarray(v, np.int64) for split, v in labels.items()}
    if not has_test:
        return with_holdout(images['train'], labels['train']), tuple(class_names)
    return {split: (images[split], labels[split]) for split in sets}, tuple(class_names)


def npz_images(array, key, path):
    if array.dtype != np.uint8:
        raise UserError(f'{key} in {path} is {array.dtype}; images must be uint8 in 0..255: '
                        f'save {key}.astype(np.uint8)')
    if array.ndim == 3:
        array = array[..., None]
    if array.ndim != 4 or array.shape[-1] not in (1, 2, 3, 4) or not len(array):
        raise UserError(f'{key} in {path} has shape {array.shape}; expected (N, H, W) or (N, H, W, C) with N > 0 '
                        f'and C in 1..4')
    return array


def npz_labels(array, key, count, path):
    if array.ndim != 1:
        raise UserError(f'{key} in {path} has shape {array.shape}; labels must be 1-D: save {key}.reshape(-1)')
    if not np.issubdtype(array.dtype, np.integer):
        raise UserError(f'{key} in {path} is {array.dtype}; labels must be integers: save {key}.astype(np.int64)')
    if len(array) != count:
        raise UserError(f'{key} in {path} has {len(array)} labels for {count} images; give one label per image')
    return array.astype(np.int64)


def load_from_npz(path):
    """(splits, class_names) of an .npz file (numpy.savez) holding x, y and optionally x_test, y_test.

    x: uint8 (N, H, W) or (N, H, W, C); y: integer (N,) in [0, nclass), nclass = max(y) + 1; class names '0'..
    Without x_test/y_test the test set is `holdout_split`'s 10%.
    """
    try:
        with np.load(path, allow_pickle=False) as data:
            if not isinstance(data, np.lib.npyio.NpzFile):
                raise ValueError('a single array, not an .npz archive')
            arrays = {key: data[key] for key in data.files}
    except FileNotFoundError:
        raise UserError(f'missing file {path}') from None
    except (OSError, ValueError, EOFError, zipfile.BadZipFile, zlib.error) as e:
        raise UserError(f'cannot read {path} ({str(e).splitlines()[0] if str(e) else type(e).__name__}); '
                        f'save it with numpy.savez(path, x=images, y=labels)') from None
    missing = [key for key in ('x', 'y') if key not in arrays]
    if missing:
        raise UserError(f'{path} has no array {missing[0]!r} (found: {", ".join(sorted(arrays)) or "none"}); '
                        f'save it with numpy.savez(path, x=images, y=labels)')
    if ('x_test' in arrays) != ('y_test' in arrays):
        raise UserError(f'{path} has only one of x_test and y_test; give both or neither')
    x = npz_images(arrays['x'], 'x', path)
    y = npz_labels(arrays['y'], 'y', len(x), path)
    nclass = int(y.max()) + 1
    check_labels(y, 0, nclass, f'{path} (array y)')
    class_names = tuple(str(k) for k in range(nclass))
    if 'x_test' not in arrays:
        return with_holdout(x, y), class_names
    x_test = npz_images(arrays['x_test'], 'x_test', path)
    if x_test.shape[1:] != x.shape[1:]:
        raise UserError(f'x_test in {path} has images of shape {x_test.shape[1:]} but x has {x.shape[1:]}; '
                        f'resize them to one shape')
    y_test = npz_labels(arrays['y_test'], 'y_test', len(x_test), path)
    check_labels(y_test, 0, nclass, f'{path} (array y_test)')
    return {'train': (x, y), 'test': (x_test, y_test)}, class_names


# ---------------------------------------------------------------------------------------------
# Conversion to record files (scripts/create_datasets.py)

USER_NAME = re.compile(r'[A-Za-z0-9_]+')


def default_pad(width):
    """Weak-augmentation padding for images `width` pixels wide: width/8 rounded half up (4 at 32 px, 12 at 96)."""
    return int(width / 8 + 0.5)


def write_dataset(name, splits, class_names, flip, pad, root=None):
    """Writes <root>/<name>-<split>.tfrecord for each split, then <root>/<name>.json; returns the DatasetInfo."""
    for split, (images, labels) in splits.items():
        path = records.record_path(name, split, root)
        records.write_records(path, images, labels)
        logging.info('Wrote %d records to %s', len(labels), path)
    info = records.DatasetInfo(name=name, shape=splits['train'][0].shape[1:], nclass=len(class_names),
                               class_names=list(class_names), flip=bool(flip), pad=int(pad),
                               sizes={split: int(len(labels)) for split, (_, labels) in sorted(splits.items())})
    info.save(root)
    logging.info('Wrote %s', records.DatasetInfo.path(name, root))
    return info


def convert(name, root=None, source_dir=None, download_dir=None):
    """Converts built-in dataset `name` into <root or $ML_DATA>; downloads go to download_dir or <root>/downloads."""
    spec = get_spec(name)
    download_dir = download_dir or os.path.join(root or utils.ml_data(), 'downloads')
    splits, class_names = load(name, source_dir=source_dir, download_dir=download_dir)
    return write_dataset(name, splits, class_names, spec.flip, spec.pad, root)


def check_user_name(name):
    if not name or not USER_NAME.fullmatch(name):
        raise utils.UserError(f'bad dataset name {name!r}: use letters, digits and underscores only, '
                              f'e.g. --name=my_data')
    if name in BUILTIN:
        raise utils.UserError(f'--name={name} is a built-in dataset; pick another name for your dataset')


def convert_user(name, from_dir=None, from_npz=None, flip=True, pad=None, root=None):
    """Converts a user dataset (a folder of class sub-folders, or an .npz) into <root or $ML_DATA>.

    pad: reflect-padding of weak augmentation in pixels; None gives default_pad(image width).
    """
    check_user_name(name)
    if bool(from_dir) == bool(from_npz):
        raise utils.UserError(f'dataset {name}: give exactly one of --from_dir and --from_npz')
    splits, class_names = load_from_dir(from_dir) if from_dir else load_from_npz(from_npz)
    width = splits['train'][0].shape[2]
    return write_dataset(name, splits, class_names, flip, default_pad(width) if pad is None else pad, root)
