"""Labeled and unlabeled splits: which training records each one holds, and in what order.

Counting functions are pure numpy on label arrays; `create_unlabeled` and `create_split`
read record files, select, and write `$ML_DATA/SSL2/<target>...` with a JSON sidecar.

Per-class label counts (K classes, class 0 is the head class):
  balanced:             n_k = size // K, the remainder going one each to the first classes.
  CADR long tail:       n_k = ceil(size * lamda^(-k/(K-1)))         (size = head count N_max)
  imbalanced (gamma):   n_k = floor(size * gamma^(-k/(K-1)))        (head N_1 = size, tail N_1/gamma)
  self-masked MNAR:     each image of class k is labeled with probability phi_k.

Original indices count records across the input files in order (file 1 first).
"""
import math
import os

import numpy as np

from libml import records
from libml import utils

EPS = 1e-9  # guards ceil/floor against float error, e.g. 20 * 20**-1 = 1.0000000000000002


def class_sizes(labels, nclass):
    """Number of records of each class 0..nclass-1 (label -1 = unlabeled is not counted)."""
    return np.bincount(labels[labels >= 0], minlength=nclass)[:nclass]


def balanced_counts(size, nclass):
    counts = np.full(nclass, size // nclass, np.int64)
    counts[:size % nclass] += 1
    return counts


def long_tail_counts(size, lamda, nclass):
    """CADR protocol: n_k = ceil(size * lamda^(-k/(K-1))). CIFAR-10 20/20 -> [20,15,11,8,6,4,3,2,2,1]."""
    k = np.arange(nclass)
    return np.array([math.ceil(size * lamda ** (-i / max(nclass - 1, 1)) - EPS) for i in k], np.int64)


def imbalanced_counts(size, gamma, nclass):
    """Geometric profile from size (head) down to size/gamma (tail), floored."""
    k = np.arange(nclass)
    return np.array([math.floor(size * gamma ** (-i / max(nclass - 1, 1)) + EPS) for i in k], np.int64)


def check_counts(counts, available, what):
    """UserError if some class is asked for more records than it has, or for none at all."""
    short = np.flatnonzero(counts > available)
    if short.size:
        k = int(short[0])
        raise utils.UserError(f'{what} asks for {counts[k]} images of class {k} but the data has only '
                              f'{available[k]}; use a smaller --size')


def pick_per_class(labels, counts, seed):
    """Original indices: counts[k] records of each class k, the first ones (seed 0) or a seeded draw.

    Returns the chosen indices sorted ascending.
    """
    rng = np.random.default_rng(seed) if seed else None
    chosen = []
    for k, n in enumerate(counts):
        pool = np.flatnonzero(labels == k)
        if rng is not None:
            pool = rng.permutation(pool)
        chosen.append(pool[:n])
    return np.sort(np.concatenate(chosen)) if chosen else np.zeros([0], np.int64)


def pick_mnar(labels, class_probs, seed):
    """Self-masked MNAR: record i of class y is labeled iff u_i < phi_y, u_i ~ U(0,1) seeded."""
    u = np.random.default_rng(seed).random(len(labels))
    phi = np.asarray(class_probs, np.float64)
    labeled = (labels >= 0) & (u < phi[np.clip(labels, 0, None)])
    return np.flatnonzero(labeled)


def prefix_order(labels):
    """Order of records such that every prefix follows the class distribution.

    The j-th record (in original order) of a group of n records gets the key (j + 0.5) / n;
    sorting by (key, group) interleaves the groups proportionally, so any prefix of length t
    holds t * n_k / N +- 1 records of group k. Label -1 (no label) is a group of its own.
    """
    keys = np.zeros(len(labels), np.float64)
    for group in np.unique(labels):
        where = np.flatnonzero(labels == group)
        keys[where] = (np.arange(len(where)) + 0.5) / len(where)
    return np.lexsort((np.arange(len(labels)), labels, keys))


def tail_profile(sizes, gamma, inverse):
    """Per-class counts of a long-tailed set cut from class pools `sizes` (head = class 0,
    or class K-1 when inverse), n_k = floor(N_head * gamma^(-r/(K-1))), r the rank from the head."""
    nclass = len(sizes)
    counts = imbalanced_counts(int(sizes.max()), gamma, nclass)
    return counts[::-1].copy() if inverse else counts


def parse_class_probs(text, nclass):
    """'0.5,0.2,...' -> array of K probabilities in [0, 1]."""
    try:
        probs = np.array([float(p) for p in text.split(',')], np.float64)
    except ValueError:
        raise utils.UserError(f'--class_probs={text!r} is not a comma-separated list of numbers') from None
    if len(probs) != nclass or np.any(probs < 0) or np.any(probs > 1):
        raise utils.UserError(f'--class_probs needs {nclass} probabilities in [0, 1] (one per class), got {text!r}')
    return probs


# ---------------------------------------------------------------------------------------------
# Files

def base_name(path):
    """'$ML_DATA/cifar10-train.tfrecord' -> 'cifar10' (the dataset a record file belongs to)."""
    name = os.path.basename(path)
    for split in ('train', 'test', 'extra', 'unlabeled'):
        suffix = f'-{split}.tfrecord'
        if name.endswith(suffix):
            return name[:-len(suffix)]
    return name.rsplit('.', 1)[0]


def split_of(path):
    """'$ML_DATA/cifar10-train.tfrecord' -> 'train'."""
    return os.path.basename(path)[len(base_name(path)) + 1:-len('.tfrecord')]


def read_sources(files):
    """(serialized records, labels, nclass, base dataset name) of the input record files.

    When the dataset's JSON is beside the files, their record counts are checked against it."""
    base = base_name(files[0])
    fix = f'{utils.script("create_datasets.py")} --datasets={base}'
    serialized = records.read_serialized(files, fix=fix)
    if not serialized:
        raise utils.UserError(f'no records in {", ".join(files)}; recreate them with: {fix}')
    labels = records.parse_labels(serialized)
    root = os.path.dirname(os.path.abspath(files[0]))
    info = records.DatasetInfo.load(base, root) if os.path.exists(records.DatasetInfo.path(base, root)) else None
    nclass = info.nclass if info else int(labels.max()) + 1
    expected = [info.sizes.get(split_of(f)) for f in files] if info else [None]
    if None not in expected and sum(expected) != len(serialized):
        raise records.corrupt_file_error(', '.join(files), f'{len(serialized)} records instead of {sum(expected)}', fix)
    bad = labels[(labels < -1) | (labels >= nclass)]
    if bad.size:
        raise utils.UserError(f'label {bad[0]} out of range [0, {nclass}) in {", ".join(files)}; '
                              f'recreate the files with: {fix}')
    return serialized, labels, nclass, base


def unlabeled_paths(target):
    return f'{target}-unlabel.tfrecord', f'{target}-unlabel.json'


def split_paths(target, seed, size):
    stem = f'{target}.{seed}@{size}-label'
    return f'{stem}.tfrecord', f'{stem}.json'


def create_unlabeled(target, files, gamma=0.0, inverse=False, seed=0):
    """Writes `<target>-unlabel.tfrecord` + `.json` from the training record files.

    All records by default (labeled ones included), or a long-tailed subset (ratio gamma,
    head class 0, or class K-1 with `inverse`). Written in `prefix_order`. Returns the JSON dict.
    """
    if inverse and not gamma:
        raise utils.UserError('--inverse needs --gamma (the imbalance ratio of the inverse long tail)')
    serialized, labels, nclass, base = read_sources(files)
    keep = np.arange(len(labels))
    if gamma:
        if gamma < 1:
            raise utils.UserError(f'--gamma={gamma} must be >= 1 (head count / tail count)')
        counts = tail_profile(class_sizes(labels, nclass), gamma, inverse)
        check_counts(counts, class_sizes(labels, nclass), 'the long-tailed unlabeled set')
        keep = np.sort(np.concatenate([pick_per_class(labels, counts, seed), np.flatnonzero(labels < 0)]))
    order = keep[prefix_order(labels[keep])]
    meta = dict(base=base, sources=[os.path.basename(f) for f in files], nclass=nclass,
                distribution=class_sizes(labels[order], nclass).tolist(),
                unlabeled_images=int(np.sum(labels[order] < 0)), indexes=order.tolist(),
                args=dict(gamma=gamma, inverse=bool(inverse), seed=seed))
    record_path, json_path = unlabeled_paths(target)
    records.write_serialized(record_path, [serialized[i] for i in order])
    utils.write_json(json_path, meta)
    return meta


def labeled_counts(labels, nclass, size, lamda=0.0, gamma=0.0):
    """Per-class counts of a labeled split (see module docstring)."""
    if lamda and gamma:
        raise utils.UserError('--lamda and --gamma are two different long-tail protocols; give one')
    if lamda:
        if lamda < 1:
            raise utils.UserError(f'--lamda={lamda} must be >= 1 (head count / tail count)')
        counts = long_tail_counts(size, lamda, nclass)
    elif gamma:
        if gamma < 1:
            raise utils.UserError(f'--gamma={gamma} must be >= 1 (head count / tail count)')
        counts = imbalanced_counts(size, gamma, nclass)
        if counts.min() < 1:
            raise utils.UserError(f'--size={size} with --gamma={gamma} leaves a class with no label; '
                                  f'use --size >= {math.ceil(gamma)}')
    else:
        if size < nclass:
            raise utils.UserError(f'--size={size} is smaller than the {nclass} classes; a balanced split '
                                  f'needs at least one label per class')
        counts = balanced_counts(size, nclass)
    check_counts(counts, class_sizes(labels, nclass), 'the labeled split')
    return counts


def create_split(target, files, seed, size=0, lamda=0.0, gamma=0.0, class_probs=None):
    """Writes `<target>.<seed>@<size>-label.tfrecord` + `.json`; returns (size, JSON dict).

    With `class_probs` (self-masked MNAR) the size is the number of images drawn, and `size`
    must be 0. The JSON holds the per-class counts, the chosen original indices and the true
    per-class labeling probabilities phi_k = n_k / N_k (or the given class_probs).
    """
    serialized, labels, nclass, base = read_sources(files)
    sizes = class_sizes(labels, nclass)
    if class_probs is not None:
        if size or lamda or gamma:
            raise utils.UserError('--class_probs draws the labeled images at random: give no --size, '
                                  '--lamda or --gamma with it')
        probs = parse_class_probs(class_probs, nclass) if isinstance(class_probs, str) \
            else np.asarray(class_probs, np.float64)
        chosen = pick_mnar(labels, probs, seed)
        size = len(chosen)
        label_probs = probs.tolist()
    else:
        if size <= 0:
            raise utils.UserError('--size must be a positive number of labels')
        counts = labeled_counts(labels, nclass, size, lamda, gamma)
        chosen = pick_per_class(labels, counts, seed)
        label_probs = (counts / np.maximum(sizes, 1)).tolist()
    if not len(chosen):
        raise utils.UserError('the labeled split would be empty; raise --class_probs')
    meta = dict(base=base, sources=[os.path.basename(f) for f in files], nclass=nclass,
                distribution=class_sizes(labels[chosen], nclass).tolist(), label_probs=label_probs,
                indexes=chosen.tolist(), args=dict(seed=seed, size=size, lamda=lamda, gamma=gamma,
                                                   class_probs=None if class_probs is None else label_probs))
    record_path, json_path = split_paths(target, seed, size)
    records.write_serialized(record_path, [serialized[i] for i in chosen])
    utils.write_json(json_path, meta)
    return size, meta
