"""TensorFlow Datasets image classification datasets converted to the project's record files.

`convert_tfds('eurosat')` reads the dataset's train and test splits (prepared by TFDS in its data folder, default
~/tensorflow_datasets or $TFDS_DATA_DIR, downloading it there first if needed), takes its image feature and class
label feature (the supervised keys, else the only Image and ClassLabel features), and writes
$ML_DATA/<name>-train.tfrecord, <name>-test.tfrecord and <name>.json with the label feature's class names, as
scripts/create_datasets.py does for the built-in datasets. Without a test split, `user_data.holdout_split`'s 10% of
each class is the test set. Records keep TFDS's order (files read in order, unshuffled), so a conversion is
reproducible. All images must share one shape (H, W, C).

The built-in datasets (libml/registry.py) are read from their original files instead: the labeled splits of the
papers depend on their record order, so a TFDS copy of one of them needs another name (`name=`).
"""
import difflib
import re

import numpy as np

from libml import records
from libml import registry
from libml import user_data
from libml import utils
from libml.utils import UserError

INSTALL = 'pip install tensorflow-datasets==4.9.10 (it is in requirements.txt)'


def import_tfds():
    """The tensorflow_datasets module; UserError with the install command when it is missing."""
    try:
        import tensorflow_datasets as tfds
    except ImportError:
        raise UserError(f'--tfds needs the tensorflow-datasets package; install it with: {INSTALL}') from None
    return tfds


def default_name(tfds_name: str) -> str:
    """Dataset name for TFDS name `tfds_name`: the version (`:1.0.0`) dropped, '/' and other characters that
    are not letters, digits or underscores turned into '_' ('cifar10_corrupted/brightness_1' ->
    'cifar10_corrupted_brightness_1')."""
    base = tfds_name.split(':')[0]
    return re.sub(r'[^A-Za-z0-9_]+', '_', base).strip('_')


def get_builder(tfds_name: str, data_dir=None):
    """The TFDS builder of `tfds_name`; an unknown name is a UserError listing close matches."""
    tfds = import_tfds()
    try:
        return tfds.builder(tfds_name, data_dir=data_dir)
    except tfds.core.registered.DatasetNotFoundError:
        known = tfds.list_builders()
        close = difflib.get_close_matches(tfds_name.split(':')[0].split('/')[0], known, n=3)
        hint = f'did you mean {", ".join(close)}? ' if close else ''
        raise UserError(f'unknown TFDS dataset {tfds_name!r}; {hint}list the names with: python -c "import '
                        f'tensorflow_datasets as tfds; print(tfds.list_builders())"') from None


def image_and_label_keys(builder) -> tuple:
    """(image feature key, label feature key) of an image classification builder; UserError otherwise."""
    tfds = import_tfds()
    features = builder.info.features
    keys = builder.info.supervised_keys
    if isinstance(keys, (tuple, list)) and len(keys) == 2 and all(k in features for k in keys) \
            and isinstance(features[keys[0]], tfds.features.Image) \
            and isinstance(features[keys[1]], tfds.features.ClassLabel):
        return tuple(keys)
    images = [k for k, f in features.items() if isinstance(f, tfds.features.Image)]
    labels = [k for k, f in features.items() if isinstance(f, tfds.features.ClassLabel)]
    if len(images) != 1 or len(labels) != 1:
        raise UserError(f'TFDS dataset {builder.name} is not an image classification dataset with one image and '
                        f'one class label feature (features: {", ".join(features.keys())}); convert it yourself to '
                        f'an .npz and use --from_npz')
    return images[0], labels[0]


def read_split(builder, split, image_key, label_key):
    """(uint8 images (N, H, W, C), int64 labels (N,)) of one split, in TFDS's order."""
    dataset = builder.as_dataset(split=split, shuffle_files=False)
    images, labels = [], []
    for example in utils.progress(dataset.as_numpy_iterator(), desc=f'{builder.name} {split}'):
        images.append(example[image_key])
        labels.append(example[label_key])
    if not images:
        raise UserError(f'TFDS dataset {builder.name} has no examples in its {split} split')
    return stack_images(images, builder.name, split), np.asarray(labels, np.int64)


def stack_images(images, name, split):
    """Stacks (H, W, C) uint8 images; UserError when they have several shapes."""
    shapes = sorted({image.shape for image in images})
    if len(shapes) > 1:
        raise UserError(f'TFDS dataset {name} ({split}) has images of {len(shapes)} shapes (e.g. {shapes[0]} and '
                        f'{shapes[-1]}); the project needs one shape: resize them and use --from_npz')
    stacked = np.stack(images)
    if stacked.dtype != np.uint8 or stacked.ndim != 4:
        raise UserError(f'TFDS dataset {name} has {stacked.dtype} images of shape {stacked.shape[1:]}; expected '
                        f'uint8 (H, W, C)')
    return stacked


def load_tfds(tfds_name: str, data_dir=None):
    """(splits {'train', 'test'}: (uint8 images (N, H, W, C), int64 labels (N,)), class names) of a TFDS
    image classification dataset, downloaded and prepared by TFDS first if needed."""
    builder = get_builder(tfds_name, data_dir)
    image_key, label_key = image_and_label_keys(builder)
    shape = builder.info.features[image_key].shape
    if shape is not None and any(s is None for s in shape[:2]):
        raise UserError(f'TFDS dataset {builder.name} has images of varying size {shape}; the project needs one '
                        f'shape: resize them and use --from_npz')
    builder.download_and_prepare()
    class_names = tuple(builder.info.features[label_key].names)
    available = set(builder.info.splits)  # empty when TFDS does not know them (tfds.testing.mock_data)
    if available and 'train' not in available:
        raise UserError(f'TFDS dataset {builder.name} has no train split (splits: {", ".join(sorted(available))})')
    train = read_split(builder, 'train', image_key, label_key)
    if available and 'test' not in available:
        return user_data.with_holdout(*train), class_names
    test = read_split(builder, 'test', image_key, label_key)
    if test[0].shape[1:] != train[0].shape[1:]:
        raise UserError(f'TFDS dataset {builder.name}: test images are {test[0].shape[1:]} but train images are '
                        f'{train[0].shape[1:]}')
    return {'train': train, 'test': test}, class_names


def check_name(name: str, tfds_name: str) -> None:
    """UserError for an output name that is not a plain name, or that would replace a built-in dataset."""
    if not name or not user_data.USER_NAME.fullmatch(name):
        raise UserError(f'bad dataset name {name!r} for --tfds={tfds_name}: give --name=NAME with letters, digits '
                        f'and underscores only')
    if name in registry.BUILTIN:
        raise UserError(f'--tfds={tfds_name} would replace the built-in {name}, converted from its original files '
                        f'(the papers\' splits depend on their record order): convert it with --datasets={name}, '
                        f'or give the TFDS copy another name, e.g. --name=tfds_{name}')


def convert_tfds(tfds_name: str, name=None, flip=True, pad=None, data_dir=None, root=None):
    """Converts TFDS dataset `tfds_name` into <root or $ML_DATA>/<name>-{train,test}.tfrecord and <name>.json;
    returns the DatasetInfo. name: default `default_name(tfds_name)`; pad: weak-augmentation reflect padding in
    pixels, default `records.default_pad(width)`; data_dir: TFDS's data folder."""
    name = name or default_name(tfds_name)
    check_name(name, tfds_name)
    splits, class_names = load_tfds(tfds_name, data_dir)
    labels = splits['train'][1]
    if len(labels) and (labels.min() < 0 or labels.max() >= len(class_names)):
        raise UserError(f'TFDS dataset {tfds_name} has labels outside 0..{len(class_names) - 1}')
    width = splits['train'][0].shape[2]
    return records.write_dataset(name, splits, class_names, flip, records.default_pad(width) if pad is None else pad,
                                 root)
