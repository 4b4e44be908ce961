"""Readers of the original dataset file formats; every reader returns plain numpy arrays.

Images are uint8 arrays (N, H, W, C) in pixels; labels are int64 arrays (N,) with classes in [0, nclass),
or -1 for an image that has no label (the STL-10 unlabeled split). Formats: IDX (MNIST, Fashion-MNIST), the
CIFAR-10/100 binary archives, SVHN's MATLAB files and STL-10's binary archive. A truncated or corrupt file is a
one-line UserError that says to fetch it again.
"""
import contextlib
import gzip
import io
import os
import struct
import tarfile
import zlib

import numpy as np
import scipy.io

from libml.utils import UserError


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


def parse_folds(data: bytes, count: int, where: str) -> list:
    """Folds of an STL-10 fold_indices.txt: one line per fold of space-separated 0-based indices into the `count`
    training images (10 lines of 1000 in the original archive). Returns a list of lists of ints."""
    try:
        folds = [[int(token) for token in line.split()] for line in data.decode('ascii').splitlines() if line.strip()]
    except (UnicodeDecodeError, ValueError):
        raise UserError(f'{where} is not lines of image indices: it is corrupt; delete the archive and get it '
                        f'again') from None
    if not folds:
        raise UserError(f'{where} is empty; delete the archive and get it again')
    for number, fold in enumerate(folds):
        bad = [i for i in fold if not 0 <= i < count]
        if bad or len(set(fold)) != len(fold):
            what = f'index {bad[0]} outside the {count} training images' if bad else 'a repeated index'
            raise UserError(f'{where}: fold {number} holds {what}; delete the archive and get it again')
    return folds



def pad_digits(images, border=2):
    """(N, 28, 28) uint8 -> (N, 32, 32, 1) with a zero border of `border` pixels on every side."""
    return np.pad(images, ((0, 0), (border, border), (border, border)))[..., None]

