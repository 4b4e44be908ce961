"""The on-disk formats: TFRecord files of PNG images and the dataset description JSON.

A record is a `tf.train.Example` with two features:
  image: bytes, the PNG-encoded uint8 image (H, W, C)
  label: int64, the class in [0, nclass), or -1 for an image with no label (STL-10 unlabeled).

`$ML_DATA/<name>.json` describes a converted dataset (see `DatasetInfo`).
"""
import dataclasses
import os
import re

import numpy as np
import tensorflow as tf
from absl import logging

from libml import utils

AUTOTUNE = tf.data.AUTOTUNE
FEATURES = {'image': tf.io.FixedLenFeature([], tf.string), 'label': tf.io.FixedLenFeature([], tf.int64)}


@dataclasses.dataclass
class DatasetInfo:
    """What training needs to know about a converted dataset.

    shape: (height, width, channels) of every image, in pixels.
    flip: whether weak augmentation mirrors images left-right (not for digits).
    pad: reflect-padding in pixels before the random crop of weak augmentation.
    sizes: number of records in each written file, e.g. {'train': 50000, 'test': 10000}.
    folds: the official labeled folds, lists of 0-based training-image indices (STL-10's fold_indices.txt),
        or None; not written to the JSON when None.
    """
    name: str
    shape: tuple
    nclass: int
    class_names: list
    flip: bool = True
    pad: int = 4
    sizes: dict = dataclasses.field(default_factory=dict)
    folds: list = None

    def __post_init__(self):
        self.shape = tuple(int(s) for s in self.shape)
        if not self.class_names:
            self.class_names = [str(k) for k in range(self.nclass)]

    @staticmethod
    def path(name, root=None):
        return os.path.join(root or utils.ml_data(), f'{name}.json')

    def save(self, root=None):
        fields = dataclasses.asdict(self)
        if fields['folds'] is None:
            del fields['folds']
        utils.write_json(self.path(self.name, root), fields)

    @classmethod
    def load(cls, name, root=None):
        data = utils.read_json(cls.path(name, root), what='dataset description')
        fields = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in fields})


def record_path(name, split, root=None):
    """`$ML_DATA/<name>-<split>.tfrecord`, split in train/test/extra/unlabeled."""
    return os.path.join(root or utils.ml_data(), f'{name}-{split}.tfrecord')


def serialize(png, label):
    """One record's bytes from PNG bytes and an integer label."""
    return tf.train.Example(features=tf.train.Features(feature={
        'image': tf.train.Feature(bytes_list=tf.train.BytesList(value=[png])),
        'label': tf.train.Feature(int64_list=tf.train.Int64List(value=[int(label)]))})).SerializeToString()


def encode_png(images, batch=1024):
    """Yields the PNG bytes of each uint8 image of `images` (N, H, W, C), encoded in parallel."""
    ds = tf.data.Dataset.from_tensor_slices(images).map(tf.io.encode_png, AUTOTUNE, deterministic=True)
    for chunk in ds.batch(batch).as_numpy_iterator():
        yield from chunk


def write_records(path, images, labels, desc=None):
    """Writes images (N, H, W, C) uint8 and labels (N,) int as PNG records, atomically."""
    images = np.asarray(images)
    labels = np.asarray(labels, np.int64)
    if images.dtype != np.uint8 or images.ndim != 4:
        raise ValueError(f'images must be uint8 (N, H, W, C), got {images.dtype} {images.shape}')
    if len(images) != len(labels):
        raise ValueError(f'{len(images)} images but {len(labels)} labels')
    with utils.atomic_write(path) as tmp, tf.io.TFRecordWriter(tmp) as writer:
        pngs = encode_png(images)
        for png, label in utils.progress(zip(pngs, labels), total=len(labels), desc=desc or os.path.basename(path)):
            writer.write(serialize(png, label))


def write_serialized(path, serialized, desc=None):
    """Writes already serialized records (bytes) in the given order, atomically."""
    with utils.atomic_write(path) as tmp, tf.io.TFRecordWriter(tmp) as writer:
        for record in utils.progress(serialized, total=len(serialized), desc=desc or os.path.basename(path)):
            writer.write(record)


def missing_file_error(path, fix):
    return utils.UserError(f'missing {path}; create it with: {fix}')


def corrupt_file_error(path, err, fix):
    """UserError for an unreadable record file; `err` is an exception or a short text."""
    text = re.sub(r'\{\{[^}]*\}\}|\[Op:[^\]]*\]|name:\s*$', '', getattr(err, 'message', None) or str(err))
    detail = (text.strip().splitlines() or [type(err).__name__])[0].strip()
    return utils.UserError(f'corrupt or truncated record file {path} ({detail}); recreate it with: {fix}')


def read_serialized(paths, fix='python scripts/create_datasets.py'):
    """All records of `paths`, in order, as a list of bytes. Bad files raise UserError with `fix`."""
    out = []
    for path in paths:
        if not os.path.exists(path):
            raise missing_file_error(path, fix)
        try:
            for chunk in tf.data.TFRecordDataset(path).batch(4096).as_numpy_iterator():
                out.extend(chunk)
        except (tf.errors.DataLossError, tf.errors.InvalidArgumentError) as e:
            raise corrupt_file_error(path, e, fix) from None
    return out


def parse_labels(serialized):
    """int64 labels of a list of serialized records."""
    if not len(serialized):
        return np.zeros([0], np.int64)
    return parse_labels_dataset(tf.data.Dataset.from_tensor_slices(serialized))


def parse_labels_dataset(dataset, batch=4096):
    """int64 labels (N,) of a dataset of serialized records, parsed in batches."""
    ds = dataset.batch(batch).map(lambda s: tf.io.parse_example(s, {'label': FEATURES['label']})['label'], AUTOTUNE)
    parts = list(ds.as_numpy_iterator())
    return np.concatenate(parts) if parts else np.zeros([0], np.int64)


def parse_image(serialized, channels):
    """Decodes one record into (uint8 image (H, W, C), int64 label)."""
    example = tf.io.parse_single_example(serialized, FEATURES)
    image = tf.io.decode_png(example['image'], channels=channels)
    return image, example['label']


def default_pad(width):
    """Weak-augmentation padding for images `width` pixels wide: width/8 rounded half up (4 at 32 px, 12 at 96)."""
    return int(width / 8 + 0.5)


def write_dataset(name, splits, class_names, flip, pad, root=None, folds=None):
    """Writes <root>/<name>-<split>.tfrecord for each split, then <root>/<name>.json; returns the DatasetInfo.

    folds: official labeled folds (lists of training-image indices) kept in the JSON, or None."""
    for split, (images, labels) in splits.items():
        path = record_path(name, split, root)
        write_records(path, images, labels)
        logging.info('Wrote %d records to %s', len(labels), path)
    info = DatasetInfo(name=name, shape=splits['train'][0].shape[1:], nclass=len(class_names),
                               class_names=list(class_names), flip=bool(flip), pad=int(pad),
                               sizes={split: int(len(labels)) for split, (_, labels) in sorted(splits.items())},
                               folds=None if folds is None else [[int(i) for i in fold] for fold in folds])
    info.save(root)
    logging.info('Wrote %s', DatasetInfo.path(name, root))
    return info

