#!/usr/bin/env python
"""Prints the per-class counts of a dataset and writes a PNG grid of sample images per class.

  # a converted dataset: every file it has ($ML_DATA/<name>-train.tfrecord, -test, ...)
  python scripts/inspect_dataset.py fashion_mnist
  # a training name: its labeled split, unlabeled set, validation and test images
  python scripts/inspect_dataset.py --per_class=4 fashion_mnist.1@40-1
  # any record file, e.g. a split written by create_split.py
  python scripts/inspect_dataset.py --out=split.png $ML_DATA/SSL2/fashion_mnist.1@40-label.tfrecord

For each part inspected, a table of class index, class name (when known), count and percent
of the part's images; label -1 is counted on its own row as "unlabeled". The grid shows the
first part (train, the labeled split, or the file): one row per class, labelled with the class
name, holding its first --per_class images in file order, padded with gray, plus a last row of
unlabeled images when the part has any. It is written to $ML_DATA/inspect/<name>_samples.png
(or --out), never to the current folder. Missing split files are not created here: the error
says how to make them.
"""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from libml import utils  # noqa: E402

utils.quiet_tensorflow()
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402
from absl import flags  # noqa: E402

from libml import data  # noqa: E402
from libml import figures  # noqa: E402
from libml import targets  # noqa: E402
from libml import records  # noqa: E402
from libml import registry  # noqa: E402
from libml import splits  # noqa: E402

GRAY = 128  # 8-bit level of the padding tiles
FLAGS = flags.FLAGS


def define_flags():
    """Called only when run as a script, so that tests can import this module next to other scripts."""
    flags.DEFINE_string('out', None, 'PNG file of the sample grid; default $ML_DATA/inspect/<name>_samples.png.')
    flags.DEFINE_integer('per_class', 8, 'Images shown per class (row) in the grid.')


# ---------------------------------------------------------------------------------------------
# Counting and the sample grid: pure functions on label arrays and image tensors.

def class_counts(labels, nclass):
    """(images of each class 0..nclass-1 as int64 (nclass,), number of unlabeled images (label -1))."""
    labels = np.asarray(labels, np.int64)
    bad = labels[(labels < -1) | (labels >= nclass)]
    if bad.size:
        raise utils.UserError(f'label {bad[0]} out of range [-1, {nclass}): the file does not match its dataset '
                              f'description; recreate it')
    return np.bincount(labels[labels >= 0], minlength=nclass).astype(np.int64), int(np.sum(labels == -1))


def count_table(labels, nclass, class_names=None):
    """Lines of the counts table: class index, name, count and percent of all images of `labels`."""
    counts, unlabeled = class_counts(labels, nclass)
    total = max(len(labels), 1)
    names = list(class_names or ['-'] * nclass)
    width = max([len('name'), len('unlabeled')] + [len(n) for n in names])
    lines = [f'{"class":>5}  {"name":<{width}}  {"count":>8}  {"percent":>7}']
    rows = [(str(k), names[k], counts[k]) for k in range(nclass)]
    if unlabeled:
        rows.append(('-1', 'unlabeled', unlabeled))
    rows.append(('', 'total', len(labels)))
    for index, name, count in rows:
        lines.append(f'{index:>5}  {name:<{width}}  {count:>8}  {100 * count / total:>6.2f}%')
    return lines


def sample_indices(labels, nclass, per_class):
    """Positions (rows, per_class) int64 of the first `per_class` images of each class, -1 where a class
    has fewer. Rows are the classes 0..nclass-1, plus one row of unlabeled images (label -1) if any."""
    labels = np.asarray(labels, np.int64)
    row_labels = list(range(nclass)) + ([-1] if np.any(labels == -1) else [])
    index = np.full([len(row_labels), per_class], -1, np.int64)
    for row, label in enumerate(row_labels):
        found = np.flatnonzero(labels == label)[:per_class]
        index[row, :len(found)] = found
    return index


def sample_grid(images, labels, nclass, per_class):
    """uint8 grid (rows * H, per_class * W, C): row k holds the first images of class k in order, then
    gray (level 128) tiles; a last row of unlabeled images when labels hold -1. images: uint8 (N, H, W, C)."""
    index = sample_indices(labels, nclass, per_class)
    images = tf.convert_to_tensor(images, tf.uint8)
    tiles = tf.gather(images, np.maximum(index, 0))  # (rows, per_class, H, W, C)
    tiles = tf.where(tf.constant(index < 0)[:, :, None, None, None], tf.constant(GRAY, tf.uint8), tiles)
    rows, columns, height, width, channels = tiles.shape
    return tf.reshape(tf.transpose(tiles, [0, 2, 1, 3, 4]), [rows * height, columns * width, channels]).numpy()


def row_names(labels, nclass, class_names=None):
    """Labels of the grid rows of `sample_grid`: '<k> <class name>' ('<k>' for unnamed classes), plus 'unlabeled'."""
    names = [f'{k} {class_names[k]}' if class_names and class_names[k] != str(k) else str(k) for k in range(nclass)]
    return names + (['unlabeled'] if np.any(np.asarray(labels) == -1) else [])


def default_out(title, root=None):
    """$ML_DATA/inspect/<title>_samples.png."""
    return os.path.join(root or utils.ml_data(), 'inspect', f'{os.path.basename(title)}_samples.png')


def write_png(path, grid):
    """Writes a uint8 (H, W, C) image as PNG, atomically."""
    with utils.atomic_write(path) as tmp:
        tf.io.write_file(tmp, tf.io.encode_png(grid))


# ---------------------------------------------------------------------------------------------
# Reading what a name or path refers to. An inspection is a dict: title, nclass, class_names,
# parts [(part name, labels)], samples (uint8 images, labels) of the first part.

def info_for_file(path):
    """The DatasetInfo a record file belongs to, or None: from the split's JSON sidecar (`base`) for
    files in SSL2/, or from <name>.json beside a <name>-<split>.tfrecord file."""
    folder = os.path.dirname(os.path.abspath(path))
    sidecar = path[:-len('.tfrecord')] + '.json' if path.endswith('.tfrecord') else None
    if sidecar and os.path.exists(sidecar):
        base = utils.read_json(sidecar, 'split description').get('base')
        if base and os.path.exists(records.DatasetInfo.path(base, os.path.dirname(folder))):
            return records.DatasetInfo.load(base, os.path.dirname(folder))
    base = splits.base_name(path)
    if os.path.exists(records.DatasetInfo.path(base, folder)):
        return records.DatasetInfo.load(base, folder)
    return None


def fix_for(path):
    """The command that recreates a record file, for error messages."""
    if os.path.basename(os.path.dirname(os.path.abspath(path))) == 'SSL2':
        return 'scripts/create_unlabeled.py or scripts/create_split.py with the options it was made with'
    return f'{utils.script("create_datasets.py")} --datasets={splits.base_name(path)}'


def read_labels(path):
    """(serialized records as a list of bytes, int64 labels (N,)) of a record file."""
    if not os.path.exists(path):
        raise utils.UserError(f'no such record file {path}')
    serialized = records.read_serialized([path], fix_for(path))
    if not serialized:
        raise utils.UserError(f'no records in {path}')
    return serialized, records.parse_labels(serialized)


def decode_images(serialized, channels, path):
    """uint8 images (N, H, W, C) of serialized records; channels 0 keeps each PNG's own."""
    ds = tf.data.Dataset.from_tensor_slices(serialized)
    ds = ds.map(lambda s: records.parse_image(s, channels)[0], data.AUTOTUNE).batch(len(serialized))
    try:
        return next(iter(ds))
    except tf.errors.InvalidArgumentError as e:
        raise records.corrupt_file_error(path, e, fix_for(path)) from None


def inspect_files(title, parts, info, per_class):
    """Inspection of record files [(part name, path)]; decodes only the sampled images of the first."""
    read = [(name, path, *read_labels(path)) for name, path in parts]
    nclass = info.nclass if info else max(int(labels.max()) + 1 for _, _, _, labels in read)
    _, first_path, first_serialized, first_labels = read[0]
    class_counts(first_labels, nclass)  # range check before decoding
    chosen = sample_indices(first_labels, nclass, per_class)
    chosen = np.sort(chosen[chosen >= 0])
    images = decode_images([first_serialized[i] for i in chosen], info.shape[2] if info else 0, first_path)
    return dict(title=title, nclass=nclass, class_names=info.class_names if info else None,
                parts=[(f'{name} ({path})', labels) for name, path, _, labels in read],
                samples=(images, first_labels[chosen]))


def inspect_training(name):
    """Inspection of a training name: labeled split (sampled), unlabeled, valid and test images."""
    ssl = data.load(name, auto_create=False)
    subsets = dict(labeled=ssl.labeled, unlabeled=ssl.unlabeled, valid=ssl.valid, test=ssl.test)
    return dict(title=str(ssl.name), nclass=ssl.nclass, class_names=ssl.info.class_names,
                parts=[(part, subset.labels) for part, subset in subsets.items()],
                samples=(ssl.labeled.images, ssl.labeled.labels))


def inspect(target, per_class, root=None):
    """Inspection of a record file path, a training name (target.seed@size-valid), a converted dataset
    name, or an SSL2 target (its unlabeled file). Unknown names raise UserError listing the known ones."""
    root = root or utils.ml_data()
    if target.endswith('.tfrecord') or os.path.isfile(target):
        title = os.path.basename(target)[:-len('.tfrecord')] if target.endswith('.tfrecord') else target
        return inspect_files(title, [('file', target)], info_for_file(target), per_class)
    if targets.NAME_RE.match(target):
        return inspect_training(target)
    if os.path.exists(records.DatasetInfo.path(target, root)):
        info = records.DatasetInfo.load(target, root)
        parts = sorted(info.sizes or ['train', 'test'], key=lambda part: (part != 'train', part))
        return inspect_files(target, [(part, records.record_path(target, part, root)) for part in parts],
                             info, per_class)
    unlabeled_path = splits.unlabeled_paths(os.path.join(targets.ssl2(root), target))[0]
    if os.path.exists(unlabeled_path):
        return inspect_files(target, [('unlabeled', unlabeled_path)], info_for_file(unlabeled_path), per_class)
    if target in registry.BUILTIN:
        raise utils.UserError(f'{target} is not converted yet; create it with: '
                              f'{utils.script("create_datasets.py")} --datasets={target}')
    raise utils.UserError(f'unknown dataset {target!r}; known: {", ".join(targets.known_targets(root))}; or give a '
                          f'training name such as fashion_mnist.1@40-1, or a .tfrecord file')


def main(argv):
    if len(argv) != 2:
        raise utils.UserError('usage: inspect_dataset.py [--out=PNG] [--per_class=N] NAME_OR_FILE')
    if FLAGS.per_class < 1:
        raise utils.UserError(f'--per_class={FLAGS.per_class} must be at least 1')
    found = inspect(argv[1], FLAGS.per_class)
    for part, labels in found['parts']:
        print(f'{found["title"]} {part}: {len(labels)} images')
        print('\n'.join(count_table(labels, found['nclass'], found['class_names'])))
        print()
    images, labels = found['samples']
    grid = sample_grid(images, labels, found['nclass'], FLAGS.per_class)
    names = row_names(labels, found['nclass'], found['class_names'])
    figure = figures.labelled_grid(grid, names, images.shape[1], f'{found["title"]}: first {FLAGS.per_class} '
                                   f'per class')[0]
    out = FLAGS.out or default_out(found['title'])
    write_png(out, figure)
    print(f'wrote {utils.shell_path(out)}: {len(names)} rows of {FLAGS.per_class} images, '
          f'{figure.shape[1]}x{figure.shape[0]} pixels')


if __name__ == '__main__':
    define_flags()
    utils.run(main)
