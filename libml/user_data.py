"""User datasets: a folder of class sub-folders of images, or an .npz file, converted to record files.

Without a test set of their own, `holdout_split` sets aside a deterministic 10% of each class.
"""
import collections
import re
import os
import zipfile
import zlib

import numpy as np
import tensorflow as tf

from libml import records
from libml import registry
from libml import utils
from libml.readers import check_labels
from libml.utils import UserError

IMAGE_EXTENSIONS = ('.bmp', '.gif', '.jpeg', '.jpg', '.png')
HOLDOUT_FRACTION = 0.1
HOLDOUT_SEED = 0

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


def check_user_name(name):
    if not name or not USER_NAME.fullmatch(name):
        raise utils.UserError(f'bad dataset name {name!r}: use letters, digits and underscores only, '
                              f'e.g. --name=my_data')
    if name in registry.BUILTIN:
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
    return records.write_dataset(name, splits, class_names, flip, records.default_pad(width) if pad is None else pad,
                                 root)
