"""Training data: dataset names, their files, decoded images in memory, and tf.data streams.

A training dataset is named `target.seed@size-valid`, e.g. `cifar10.1@40-1` or
`cifar10_LT_20.1@20-1`:
  target  files $ML_DATA/SSL2/<target>-unlabel.tfrecord and <target>.<seed>@<size>-label.tfrecord,
          made from the records of the base dataset ($ML_DATA/<base>-train.tfrecord, ...);
  valid   number of validation images: the first records of the unlabeled file that are not
          in the labeled split; they are removed from the unlabeled stream.
Target names that say how to make them (created automatically when the base dataset's
records are on disk, or converted offline, e.g. fashion_mnist):
  <base>              balanced labels, unlabeled = every training image;
  <base>_LT_<lamda>   CADR: labels ceil(size*lamda^(-k/(K-1))) (size = head count), unlabeled balanced;
  <base>_IMB_<gamma>  labels floor(size*gamma^(-k/(K-1))) and a long-tailed unlabeled set, ratio gamma;
  <base>_INV_<gamma>  the same labels, unlabeled long tail in reverse class order.
Any other target (e.g. MNAR splits) is made by hand with scripts/create_split.py.

Images are kept decoded (uint8) in memory when they fit; a training step draws its batch
by index from a seeded per-epoch permutation of the step number, so a stream restarted
at step t yields exactly what an uninterrupted one would. Pixels are scaled to [-1, 1].
"""
import dataclasses
import os
import re

import numpy as np
import tensorflow as tf
from absl import logging

from libml import records
from libml import splits
from libml import utils

AUTOTUNE = tf.data.AUTOTUNE
NAME_RE = re.compile(r'^(?P<target>[A-Za-z0-9][A-Za-z0-9_\-]*?)\.(?P<seed>\d+)@(?P<size>\d+)(?:-(?P<valid>\d+))?$')
RECIPE_RE = re.compile(r'^(?P<base>.+?)_(?P<kind>LT|IMB|INV)_(?P<ratio>\d+(?:\.\d+)?)$')
SHUFFLE_SALT = 498247692  # first word of the index-shuffle key; the stream id and seed follow
LABELED_STREAM, UNLABELED_STREAM = 1, 2
SHUFFLE_BUFFER = 10000  # records, when unlabeled images are streamed from disk


@dataclasses.dataclass(frozen=True)
class SplitName:
    """A parsed `target.seed@size-valid` name."""
    target: str
    seed: int
    size: int
    valid: int

    def __str__(self):
        return f'{self.target}.{self.seed}@{self.size}-{self.valid}'


def parse_name(name):
    """'cifar10.1@40-1' -> SplitName('cifar10', 1, 40, 1); `-valid` defaults to 1."""
    match = NAME_RE.match(name or '')
    if not match:
        raise utils.UserError(f'malformed dataset name {name!r}: expected target.seed@size-valid, e.g. '
                              f'cifar10.1@40-1 or cifar10_LT_20.1@20-1 (known targets: '
                              f'{", ".join(known_targets())})')
    valid = match['valid']
    return SplitName(match['target'], int(match['seed']), int(match['size']), 1 if valid is None else int(valid))


def ssl2(root=None):
    return os.path.join(root or utils.ml_data(), 'SSL2')


def known_targets(root=None):
    """Built-in datasets, converted ones ($ML_DATA/*.json) and existing targets in $ML_DATA/SSL2."""
    from libml import registry
    root = root or utils.ml_data()
    names = set(registry.BUILTIN)
    if os.path.isdir(root):
        names |= {f[:-5] for f in os.listdir(root) if f.endswith('.json')}
    if os.path.isdir(ssl2(root)):
        names |= {f[:-len('-unlabel.json')] for f in os.listdir(ssl2(root)) if f.endswith('-unlabel.json')}
    return sorted(names)


# ---------------------------------------------------------------------------------------------
# Finding and creating the files of a name.

@dataclasses.dataclass
class Recipe:
    """How to (re)create the files of a target from its base dataset's training records."""
    base: str
    unlabeled: dict  # keyword arguments of splits.create_unlabeled
    split: dict      # keyword arguments of splits.create_split, besides seed and size
    known: bool = True  # False when the target's name does not say how it was made


def recipe_for(target, root=None):
    """The Recipe of a target: from its unlabeled JSON if it exists, else from its name."""
    from libml import registry
    meta_path = splits.unlabeled_paths(os.path.join(ssl2(root), target))[1]
    match = RECIPE_RE.match(target)
    if match and (match['base'] in registry.BUILTIN or os.path.exists(records.DatasetInfo.path(match['base'], root))):
        ratio = float(match['ratio'])
        if match['kind'] == 'LT':
            return Recipe(match['base'], {}, dict(lamda=ratio))
        return Recipe(match['base'], dict(gamma=ratio, inverse=match['kind'] == 'INV'), dict(gamma=ratio))
    if target in registry.BUILTIN or os.path.exists(records.DatasetInfo.path(target, root)):
        return Recipe(target, {}, {})
    if os.path.exists(meta_path):
        meta = utils.read_json(meta_path, 'unlabeled-set description')
        return Recipe(meta['base'], {}, {}, known=False)
    raise utils.UserError(f'unknown dataset {target!r}; known: {", ".join(known_targets(root))} (plus '
                          f'<name>_LT_<lamda>, <name>_IMB_<gamma>, <name>_INV_<gamma>); convert your own with '
                          f'scripts/create_datasets.py --name=NAME --from_dir=DIR')


def source_files(base, root=None):
    """The record files whose concatenation is the unlabeled pool of `base` (index space of splits)."""
    from libml import registry
    spec = registry.BUILTIN.get(base)
    parts = spec.unlabeled_splits if spec else ('train',)
    return [records.record_path(base, part, root) for part in parts]


def flag_args(args):
    return ' '.join(f'--{k}={v}' if not isinstance(v, bool) else f'--{k}' for k, v in args.items() if v)


def creation_commands(name, recipe, root=None):
    """The shell commands that make every file `name` needs, in order."""
    target = os.path.join(ssl2(root), name.target)
    files = ' '.join(utils.shell_path(f) for f in source_files(recipe.base, root))
    split_args = flag_args(dict(seed=name.seed, size=name.size, **recipe.split))
    return [f'{utils.script("create_datasets.py")} --datasets={recipe.base}',
            f'{utils.script("create_unlabeled.py")} {flag_args(recipe.unlabeled)} {utils.shell_path(target)} {files}'
            .replace('  ', ' '),
            f'{utils.script("create_split.py")} {split_args} {utils.shell_path(target)} {files}']


def ensure_files(name, root=None, auto_create=True):
    """Makes sure the files of `name` exist; creates what is missing when that needs no network.

    Returns the Recipe. Raises UserError with the exact commands when it cannot create them.
    """
    from libml import registry
    root = root or utils.ml_data()
    recipe = recipe_for(name.target, root)
    target = os.path.join(ssl2(root), name.target)
    needed = [source_files(recipe.base, root) + [records.record_path(recipe.base, 'test', root),
                                                 records.DatasetInfo.path(recipe.base, root)],
              list(splits.unlabeled_paths(target)), list(splits.split_paths(target, name.seed, name.size))]
    commands = creation_commands(name, recipe, root)
    missing = [i for i, paths in enumerate(needed) if not all(os.path.exists(p) for p in paths)]
    if not missing:
        return recipe
    can_convert = recipe.base in registry.BUILTIN and registry.available_offline(recipe.base)
    if not auto_create or (0 in missing and not can_convert) or not recipe.known:
        todo = ' && '.join(commands[i] for i in missing)
        what = 'the dataset is not converted yet' if 0 in missing else 'its split files are missing'
        hint = '' if recipe.known else ' (use the options this target was made with)'
        raise utils.UserError(f'{name}: {what}; create it with: {todo}{hint}')
    for step in missing:
        logging.info('Creating missing files of %s, as: %s', name, commands[step])
        if step == 0:
            registry.convert(recipe.base, root=root)
        elif step == 1:
            splits.create_unlabeled(target, source_files(recipe.base, root), **recipe.unlabeled)
        else:
            splits.create_split(target, source_files(recipe.base, root), name.seed, name.size, **recipe.split)
    return recipe


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

    def batches(self, count, seed, start_step):
        """Endless batches (uint8 images (count, H, W, C), int64 labels (count,)), reshuffled every
        pass through a buffer of SHUFFLE_BUFFER records seeded by (seed, start_step): a resumed
        run draws other (equally random) unlabeled batches than an uninterrupted one would."""
        shuffle_seed = (int(seed) * 1000003 + int(start_step)) % (2 ** 31)
        ds = keep_positions(tf.data.TFRecordDataset(self.path), self.positions).repeat()
        ds = ds.shuffle(min(SHUFFLE_BUFFER, len(self)), seed=shuffle_seed)
        ds = ds.map(lambda s: records.parse_image(s, self.channels), AUTOTUNE)
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

    def train_stream(self, batch, uratio, labeled_views, unlabeled_views, seed=0, start_step=0, end_step=None):
        """tf.data stream of global training batches, one element per step from `start_step`.

        Element: dict with, for each labeled view name v, `v` = float32 (batch, H, W, C) in
        [-1, 1] and `label` int64 (batch,); for each unlabeled view name v, `v` = float32
        (uratio * batch, H, W, C) and `u_label` (true labels, -1 if unknown; for monitoring
        only). A view is fn(float images in [0, 1], seed [2]) -> images in [0, 1], or a dict
        with key 'image' and extra tensors (returned as `v_<key>`).
        """
        end = end_step if end_step is not None else np.iinfo(np.int64).max
        steps = tf.data.Dataset.range(start_step, end)
        labeled, unlabeled = self.labeled, self.unlabeled
        ubatch = uratio * batch

        def gather_unlabeled(step):
            u_pos = epoch_shuffle(step, ubatch, len(unlabeled), UNLABELED_STREAM, seed)
            return step, (tf.gather(unlabeled.images, u_pos), tf.gather(unlabeled.labels, u_pos))

        def make(step, unlabeled_batch):
            l_pos = epoch_shuffle(step, batch, len(labeled), LABELED_STREAM, seed)
            out = dict(label=tf.gather(labeled.labels, l_pos), u_label=unlabeled_batch[1])
            step_seed = tf.stack([tf.cast(seed, tf.int64), step])
            views = [(tf.gather(labeled.images, l_pos), labeled_views), (unlabeled_batch[0], unlabeled_views)]
            number = 0
            for images, view_fns in views:
                pixels = tf.cast(images, tf.float32) / 255
                for view, fn in view_fns.items():
                    number += 1
                    out.update(run_view(view, fn, pixels, tf.random.experimental.stateless_fold_in(step_seed, number)))
            return out

        if isinstance(unlabeled, StreamedSubset):
            steps = tf.data.Dataset.zip(steps, unlabeled.batches(ubatch, seed, start_step))
        else:
            steps = steps.map(gather_unlabeled)
        options = tf.data.Options()
        options.deterministic = True
        return steps.map(make, AUTOTUNE).prefetch(AUTOTUNE).with_options(options)

    def with_all_labels(self):
        """This dataset with every labeled training image as the labeled set: the unlabeled pool's
        images that have a label (validation images stay out). For fully supervised baselines."""
        if isinstance(self.unlabeled, StreamedSubset):
            raise utils.UserError(f'{self.name}: training on all labels needs the unlabeled images in memory; '
                                  f'use a machine with more memory')
        return dataclasses.replace(self, labeled=self.unlabeled.take(np.flatnonzero(self.unlabeled.labels >= 0)))

    def eval_dataset(self, split, batch=256):
        """(float32 images in [-1, 1], int64 labels) batches of 'test', 'valid' or 'train_labeled'."""
        subset = dict(test=self.test, valid=self.valid, train_labeled=self.labeled)[split]
        ds = tf.data.Dataset.from_tensor_slices((subset.images, subset.labels)).batch(batch)
        return ds.map(lambda x, y: (to_unit_range(tf.cast(x, tf.float32) / 255), y), AUTOTUNE).prefetch(AUTOTUNE)


def to_unit_range(pixels01):
    """[0, 1] -> [-1, 1], i.e. x * 2/255 - 1 on 8-bit levels."""
    return pixels01 * 2 - 1


def run_view(view, fn, pixels, seed):
    result = fn(pixels, seed)
    if not isinstance(result, dict):
        return {view: to_unit_range(result)}
    out = {f'{view}_{key}': value for key, value in result.items() if key != 'image'}
    out[view] = to_unit_range(result['image'])
    return out


def epoch_shuffle(step, count, n, stream, seed):
    """Indices in [0, n) of the `count` draws of a step: position p = step*count + j of an
    endless sequence of permutations, one per epoch e = p // n, keyed by (stream, seed, e)."""
    if count == 0:
        return tf.zeros([0], tf.int64)
    positions = tf.cast(step, tf.int64) * count + tf.range(count, dtype=tf.int64)
    epochs = positions // n
    key = tf.stack([tf.fill([count], tf.constant(SHUFFLE_SALT, tf.int64)),
                    tf.fill([count], tf.constant(stream, tf.int64)) * 1000003 + tf.cast(seed, tf.int64),
                    epochs], axis=1)
    return tf.raw_ops.RandomIndexShuffle(index=positions % n, seed=key, max_index=tf.constant(n - 1, tf.int64),
                                         rounds=4)


def load_test_set(name, root=None):
    """(DatasetInfo, Subset of test images) of a dataset ('fashion_mnist') or training name ('fashion_mnist.1@40-1')."""
    target = parse_name(name).target if NAME_RE.match(name) else name
    base = recipe_for(target, root).base
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
    recipe = ensure_files(name, root, auto_create)
    info = records.DatasetInfo.load(recipe.base, root)
    target = os.path.join(ssl2(root), name.target)
    unlabel_path, unlabel_json = splits.unlabeled_paths(target)
    label_path, label_json = splits.split_paths(target, name.seed, name.size)
    unlabel_meta = utils.read_json(unlabel_json, 'unlabeled-set description')
    label_meta = utils.read_json(label_json, 'labeled-split description')
    fixes = creation_commands(name, recipe, root)
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
