"""Training data in memory and as tf.data streams.

Images are kept decoded (uint8) in memory when they fit; a training step draws its batch
by index from a seeded per-epoch permutation of the step number, so a stream restarted
at step t yields exactly what an uninterrupted one would. Pixels are scaled to [-1, 1].
Dataset names and their files: libml/targets.py.
"""
import dataclasses
import os

import numpy as np
import tensorflow as tf
from absl import logging

from libml import keys
from libml import records
from libml import splits
from libml import targets
from libml import utils
from libml.targets import SplitName, parse_name  # noqa: F401  (the names of a training dataset)

AUTOTUNE = tf.data.AUTOTUNE
SHUFFLE_SALT = 498247692  # first word of the index-shuffle key; the stream id and seed follow
LABELED_STREAM, UNLABELED_STREAM = 1, 2
SHUFFLE_BUFFER = 10000  # records, when unlabeled images are streamed from disk

# ---------------------------------------------------------------------------------------------
# Decoded images.

def available_memory():
    """Bytes of physical memory currently available (a quarter of the total if unknown)."""
    try:
        return os.sysconf('SC_AVPHYS_PAGES') * os.sysconf('SC_PAGE_SIZE')
    except (ValueError, OSError, AttributeError):
        return 4 << 30


def keep_positions(dataset, positions):
    """The records of a TFRecordDataset at the given positions (in file order)."""
    keep = np.zeros(int(max(positions, default=-1)) + 2, bool)  # the last entry stays False
    keep[np.asarray(positions, np.int64)] = True
    keep, last = tf.constant(keep), len(keep) - 1
    return dataset.enumerate().filter(lambda i, _: tf.gather(keep, tf.minimum(i, last))).map(lambda _, record: record)


def file_labels(path, fix, expected=None):
    """int64 labels (N,) of a record file, without decoding its images."""
    if not os.path.exists(path):
        raise records.missing_file_error(path, fix)
    try:
        labels = records.parse_labels_dataset(tf.data.TFRecordDataset(path))
    except (tf.errors.DataLossError, tf.errors.InvalidArgumentError) as e:
        raise records.corrupt_file_error(path, e, fix) from None
    if expected is not None and len(labels) != expected:
        raise records.corrupt_file_error(path, f'{len(labels)} records instead of {expected}', fix)
    return labels


def decode_file(path, channels, fix, expected=None, positions=None):
    """All images (uint8 tf.Tensor (N, H, W, C)) and labels (int64 numpy (N,)) of a record file,
    or only those at `positions`.

    A file cut short (TFRecord readers stop quietly at a partial record) fails the `expected` count."""
    if not os.path.exists(path):
        raise records.missing_file_error(path, fix)
    ds = tf.data.TFRecordDataset(path)
    if positions is not None:
        ds = keep_positions(ds, positions)
    ds = ds.map(lambda s: records.parse_image(s, channels), AUTOTUNE, deterministic=True)
    try:
        with tf.device('/cpu:0'):
            parts = list(ds.batch(4096))
            images = tf.concat([p[0] for p in parts], 0) if parts else None
        labels = np.concatenate([p[1].numpy() for p in parts]) if parts else np.zeros([0], np.int64)
    except (tf.errors.DataLossError, tf.errors.InvalidArgumentError) as e:
        raise records.corrupt_file_error(path, e, fix) from None
    if images is None:
        raise utils.UserError(f'no records in {path}; recreate it with: {fix}')
    if expected is not None and len(labels) != expected:
        raise records.corrupt_file_error(path, f'{len(labels)} records instead of {expected}', fix)
    return images, labels


def check_labels(labels, nclass, path, fix, allow_unlabeled=False):
    low = -1 if allow_unlabeled else 0
    bad = labels[(labels < low) | (labels >= nclass)]
    if bad.size:
        raise utils.UserError(f'label {bad[0]} out of range [0, {nclass}) in {path}; recreate it with: {fix}')


def validation_positions(unlabel_indexes, unlabel_labels, labeled_indexes, valid):
    """Positions in the unlabeled file of the validation images: the first `valid` records
    that have a label and are not in the labeled split."""
    candidates = ~np.isin(unlabel_indexes, labeled_indexes) & (unlabel_labels >= 0)
    positions = np.flatnonzero(candidates)[:valid]
    if len(positions) < valid:
        raise utils.UserError(f'asked for {valid} validation images but only {len(positions)} unlabeled images are '
                              f'outside the labeled split; use a smaller -valid')
    return positions


@dataclasses.dataclass
class Subset:
    """Decoded images held in memory: uint8 (N, H, W, C) tf.Tensor and int64 labels (N,)."""
    images: tf.Tensor
    labels: np.ndarray

    def __len__(self):
        return len(self.labels)

    def take(self, positions):
        with tf.device('/cpu:0'):
            return Subset(tf.gather(self.images, positions), self.labels[positions])


@dataclasses.dataclass
class StreamedSubset:
    """Images too many to hold decoded: the records at `positions` of a file, read at every pass."""
    path: str
    positions: np.ndarray
    labels: np.ndarray
    channels: int

    def __len__(self):
        return len(self.labels)

    def batches(self, count: int, seed: int, start_step: int, shards: int = 1, shard: int = 0) -> tf.data.Dataset:
        """Endless batches (uint8 images (count, H, W, C), int64 labels (count,), int64 positions in this
        subset (count,)) of shard `shard` of `shards` (every shards-th image), reshuffled every pass
        through a buffer of SHUFFLE_BUFFER records seeded by (seed, start_step, shard): a resumed run
        draws other (equally random) unlabeled batches than an uninterrupted one would."""
        shuffle_seed = (int(seed) * 1000003 + int(start_step) * 101 + shard) % (2 ** 31)
        ds = keep_positions(tf.data.TFRecordDataset(self.path), self.positions).enumerate().shard(shards, shard)
        ds = ds.repeat().shuffle(min(SHUFFLE_BUFFER, max(1, len(self) // shards)), seed=shuffle_seed)
        ds = ds.map(lambda i, s: (*records.parse_image(s, self.channels), i), AUTOTUNE)
        return ds.batch(count, drop_remainder=True)


@dataclasses.dataclass
class SSLData:
    """A training dataset: labeled, unlabeled (validation removed), valid and test images."""
    name: SplitName
    info: records.DatasetInfo
    labeled: Subset
    unlabeled: Subset
    valid: Subset
    test: Subset
    label_meta: dict
    unlabel_meta: dict

    @property
    def nclass(self):
        return self.info.nclass

    def input_stream(self, batch: int, ubatch: int, seed: int = 0, start_step: int = 0, end_step: int = None,
                     replicas: int = 1, pipelines: int = 1, pipeline: int = 0) -> tf.data.Dataset:
        """tf.data stream of the raw (not augmented) inputs of this input pipeline's replicas, from
        `start_step`: for each step, one element per local replica, in replica order.

        The global batch of step t is `batch` labeled draws and `ubatch` unlabeled draws (positions
        t*count + j of a seeded endless sequence of per-epoch permutations, see epoch_shuffle);
        replica r of `replicas` gets rows [r*count/replicas, (r+1)*count/replicas) of each, and this
        pipeline (number `pipeline` of `pipelines`) reads, decodes and gathers only the rows of its
        replicas r = pipeline*L .. pipeline*L + L-1, L = replicas / pipelines. Element: X_IMAGES uint8
        (b, H, W, C), LABEL int64 (b,), X_INDEX int64 (b,) (positions in the labeled set), U_IMAGES uint8
        (ub, H, W, C), U_LABEL int64 (ub,) (true labels, -1 if unknown; monitoring only), U_INDEX int64
        (ub,) (positions in the unlabeled set) and SLOT int32 = r, with b = batch / replicas, ub = ubatch /
        replicas. Streamed unlabeled images (too many for memory) are sharded over the pipelines and
        shuffled through a buffer instead.
        """
        local = replicas // pipelines
        b, ub = batch // replicas, ubatch // replicas
        end = end_step if end_step is not None else np.iinfo(np.int64).max // max(local, 1)
        labeled, unlabeled = self.labeled, self.unlabeled
        streamed = isinstance(unlabeled, StreamedSubset)

        def make(element, unlabeled_rows=None):
            step, slot = element // local, tf.cast(pipeline * local + element % local, tf.int32)
            l_pos = epoch_shuffle(step, batch, len(labeled), LABELED_STREAM, seed, slot * b, b)
            out = {keys.X_IMAGES: tf.gather(labeled.images, l_pos), keys.LABEL: tf.gather(labeled.labels, l_pos),
                   keys.X_INDEX: tf.cast(l_pos, tf.int64), keys.SLOT: slot}
            if unlabeled_rows is None:
                u_pos = epoch_shuffle(step, ubatch, len(unlabeled), UNLABELED_STREAM, seed, slot * ub, ub)
                unlabeled_rows = tf.gather(unlabeled.images, u_pos), tf.gather(unlabeled.labels, u_pos), u_pos
            out[keys.U_IMAGES], out[keys.U_LABEL], out[keys.U_INDEX] = unlabeled_rows
            return out

        elements = tf.data.Dataset.range(start_step * local, end * local)
        if streamed:
            rows = unlabeled.batches(ub, seed, start_step, pipelines, pipeline)
            stream = tf.data.Dataset.zip(elements, rows).map(make, AUTOTUNE)
        else:
            stream = elements.map(make, AUTOTUNE)
        options = tf.data.Options()
        options.deterministic = True
        return stream.prefetch(AUTOTUNE).with_options(options)

    def with_all_labels(self):
        """This dataset with every labeled training image as the labeled set: the unlabeled pool's
        images that have a label (validation images stay out). For fully supervised baselines."""
        if isinstance(self.unlabeled, StreamedSubset):
            raise utils.UserError(f'{self.name}: training on all labels needs the unlabeled images in memory; '
                                  f'use a machine with more memory')
        return dataclasses.replace(self, labeled=self.unlabeled.take(np.flatnonzero(self.unlabeled.labels >= 0)))

    def with_pseudo_labels(self, positions, labels):
        """This dataset with the unlabeled images at `positions` added to the labeled set, after its own rows,
        with the given labels (CReST's selection, libml/crest.py); they stay in the unlabeled set."""
        positions, labels = np.asarray(positions, np.int64), np.asarray(labels, np.int64)
        if isinstance(self.unlabeled, StreamedSubset):
            raise utils.UserError(f'{self.name}: adding pseudo-labeled images to the labeled set needs the unlabeled '
                                  f'images in memory; use a machine with more memory')
        bad = len(positions) != len(labels) or (len(positions) and (
            positions.min() < 0 or positions.max() >= len(self.unlabeled) or labels.min() < 0
            or labels.max() >= self.nclass))
        if bad:
            raise ValueError(f'{len(positions)} positions in [0, {len(self.unlabeled)}) and {len(labels)} labels in '
                             f'[0, {self.nclass}) expected')
        extra = self.unlabeled.take(positions)
        with tf.device('/cpu:0'):
            images = tf.concat([self.labeled.images, extra.images], 0)
        return dataclasses.replace(self, labeled=Subset(images, np.concatenate([self.labeled.labels, labels])))

    def eval_dataset(self, split, batch=256, limit=0):
        """(float32 images in [-1, 1], int64 labels) batches of 'test', 'valid', 'train_labeled' or 'unlabeled'
        (in its order; held in memory); with `limit` > 0 only its first `limit` images."""
        subset = dict(test=self.test, valid=self.valid, train_labeled=self.labeled, unlabeled=self.unlabeled)[split]
        images, labels = (subset.images[:limit], subset.labels[:limit]) if limit else (subset.images, subset.labels)
        ds = tf.data.Dataset.from_tensor_slices((images, labels)).batch(batch)
        return ds.map(lambda x, y: (to_unit_range(tf.cast(x, tf.float32) / 255), y), AUTOTUNE).prefetch(AUTOTUNE)


def to_unit_range(pixels01):
    """[0, 1] -> [-1, 1], i.e. x * 2/255 - 1 on 8-bit levels."""
    return pixels01 * 2 - 1


def epoch_shuffle(step, count, n, stream, seed, start=0, size=None):
    """Indices in [0, n) of draws [start, start + size) (default: all `count`) of a step: position
    p = step*count + j of an endless sequence of permutations, one per epoch e = p // n, keyed by
    (stream, seed, e)."""
    size = count if size is None else size
    if size == 0:
        return tf.zeros([0], tf.int64)
    positions = (tf.cast(step, tf.int64) * count + tf.cast(start, tf.int64)
                 + tf.range(size, dtype=tf.int64))
    epochs = positions // n
    key = tf.stack([tf.fill([size], tf.constant(SHUFFLE_SALT, tf.int64)),
                    tf.fill([size], tf.constant(stream, tf.int64)) * 1000003 + tf.cast(seed, tf.int64),
                    epochs], axis=1)
    return tf.raw_ops.RandomIndexShuffle(index=positions % n, seed=key, max_index=tf.constant(n - 1, tf.int64),
                                         rounds=4)


def load_test_set(name, root=None):
    """(DatasetInfo, Subset of test images) of a dataset ('fashion_mnist') or training name ('fashion_mnist.1@40-1')."""
    target = parse_name(name).target if targets.NAME_RE.match(name) else name
    base = targets.recipe_for(target, root).base
    info_path = records.DatasetInfo.path(base, root)
    fix = f'{utils.script("create_datasets.py")} --datasets={base}'
    if not os.path.exists(info_path):
        raise records.missing_file_error(info_path, fix)
    info = records.DatasetInfo.load(base, root)
    test = Subset(*decode_file(records.record_path(base, 'test', root), info.shape[2], fix, info.sizes.get('test')))
    check_labels(test.labels, info.nclass, records.record_path(base, 'test', root), fix)
    return info, test


def load(name, root=None, auto_create=True, memory_budget=None):
    """SSLData for a name such as 'fashion_mnist.1@40-1', creating missing split files if it can.

    The unlabeled images are held decoded in memory when they take at most `memory_budget` bytes
    (default: half the free memory), else streamed from their file at every pass."""
    root = root or utils.ml_data()
    name = parse_name(name) if isinstance(name, str) else name
    recipe = targets.ensure_files(name, root, auto_create)
    info = records.DatasetInfo.load(recipe.base, root)
    target = os.path.join(targets.ssl2(root), name.target)
    unlabel_path, unlabel_json = splits.unlabeled_paths(target)
    label_path, label_json = splits.split_paths(target, name.seed, name.size)
    unlabel_meta = utils.read_json(unlabel_json, 'unlabeled-set description')
    label_meta = utils.read_json(label_json, 'labeled-split description')
    fixes = targets.creation_commands(name, recipe, root)
    splits.check_rule_version(unlabel_meta, unlabel_json, fixes[1])
    splits.check_rule_version(label_meta, label_json, fixes[2])
    channels = info.shape[2]

    labeled = Subset(*decode_file(label_path, channels, fixes[2], len(label_meta['indexes'])))
    check_labels(labeled.labels, info.nclass, label_path, fixes[2])
    count = len(unlabel_meta['indexes'])
    in_memory = count * int(np.prod(info.shape)) <= (available_memory() // 2 if memory_budget is None
                                                     else memory_budget)
    if in_memory:
        unlabeled_all = Subset(*decode_file(unlabel_path, channels, fixes[1], count))
        unlabel_labels = unlabeled_all.labels
    else:
        unlabel_labels = file_labels(unlabel_path, fixes[1], count)
        logging.info('The unlabeled images of %s do not fit in memory: streaming them from %s', name, unlabel_path)
    check_labels(unlabel_labels, info.nclass, unlabel_path, fixes[1], allow_unlabeled=True)
    valid_pos = validation_positions(np.asarray(unlabel_meta['indexes']), unlabel_labels,
                                     np.asarray(label_meta['indexes']), name.valid)
    train_pos = np.setdiff1d(np.arange(count), valid_pos)
    if in_memory:
        unlabeled, valid = unlabeled_all.take(train_pos), unlabeled_all.take(valid_pos)
    else:
        unlabeled = StreamedSubset(unlabel_path, train_pos, unlabel_labels[train_pos], channels)
        valid = Subset(*decode_file(unlabel_path, channels, fixes[1], len(valid_pos), valid_pos))
    test_path = records.record_path(recipe.base, 'test', root)
    test = Subset(*decode_file(test_path, channels, fixes[0], info.sizes.get('test')))
    check_labels(test.labels, info.nclass, test_path, fixes[0])
    for subset in (labeled, test):
        if tuple(subset.images.shape[1:]) != info.shape:
            raise utils.UserError(f'images of {name} are {tuple(subset.images.shape[1:])} but {recipe.base}.json '
                                  f'says {info.shape}; recreate the dataset with: {fixes[0]}')
    return SSLData(name, info, labeled, unlabeled, valid, test, label_meta, unlabel_meta)
