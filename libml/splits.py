"""Labeled and unlabeled splits: which training records each one holds, and in what order.

The rules are those of the original FixMatch scripts (split rule `SPLIT_RULE`, stored in both JSON sidecars).
Positions count records across the input files in order (file 1 first). K classes, class 0 first.
  class_id[k]   the positions of the records of class k, in record order (int64). Seed S != 0 shuffles them,
                for k = 0..K-1 in order, with np.random.RandomState(S).shuffle: the draws of the original's
                np.random.seed(S); np.random.shuffle(...). Seed 0 keeps record order.
  train_stats   counts / max(counts) (float64) of the labeled records (label -1 is not counted).
  greedy        npos = 0; repeatedly c = argmax(train_stats - npos / max(max(npos), 1)), npos[c] += 1
                (ties go to the lowest class).
Labeled split: class k gives the first n_k of class_id[k], where n_k is, per protocol,
  default:              how often the greedy picks class k in `size` steps (size/K each on balanced data,
                        the class frequencies on imbalanced data such as SVHN);
  CADR long tail:       ceil(size * lamda^(-k/(K-1)))          (size = head count N_max);
  imbalanced (gamma):   floor(size * gamma^(-k/(K-1)))         (head N_1 = size, tail N_1/gamma);
                        with `disjoint`, class_id[k] first loses the records of the target's unlabeled set
                        (the imbalanced SSL protocol: unlabeled set without the labeled images);
except for
  official folds:       STL-10 with size = the fold size (1000): the labeled set is fold `seed` (0-based line
                        of the archive's fold_indices.txt);
  self-masked MNAR:     record i of class y is labeled iff u_i < phi_y, u = default_rng(seed).random(N).
Unlabeled file (`unlabeled_order`): the original's per-class queues, see there. A long-tailed unlabeled set
(gamma_u, head count M_1 = size, or the largest class) keeps the first floor(M_1 |gamma_u|^(-k/(K-1))) of
class_id[k] (gamma_u < 0: in reverse class order, class K-1 is the head).
"""
import math
import os

import numpy as np

from libml import records
from libml import utils

SPLIT_RULE = 2  # 1 (no field): the earlier rules of this port (default_rng draws, balanced counts, prefix order)
EPS = 1e-9  # guards ceil/floor against float error, e.g. 20 * 20**-1 = 1.0000000000000002
STL10_FOLD_SIZE = 1000


def class_sizes(labels: np.ndarray, nclass: int) -> np.ndarray:
    """Number of records of each class 0..nclass-1 (label -1 = unlabeled is not counted)."""
    return np.bincount(labels[labels >= 0], minlength=nclass)[:nclass]


def train_stats(counts) -> np.ndarray:
    """counts / max(counts), float64 (zeros when every count is 0)."""
    counts = np.asarray(counts, np.float64)
    return counts / max(counts.max(initial=0), 1)


def class_positions(labels: np.ndarray, nclass: int, seed: int) -> list:
    """class_id: for each class k, the int64 positions of its records, shuffled when seed != 0 (module docstring)."""
    positions = [np.flatnonzero(labels == k).astype(np.int64) for k in range(nclass)]
    if seed:
        rng = np.random.RandomState(seed)
        for pool in positions:
            rng.shuffle(pool)
    return positions


def greedy_classes(stats, steps: int, available=None) -> np.ndarray:
    """The classes c_1..c_steps of the greedy c = argmax(stats - npos / max(max(npos), 1)); npos[c] += 1.

    With `available` (records per class) it stops before the first pick of a class that has none left."""
    stats = np.asarray(stats, np.float64)
    npos = np.zeros(len(stats), np.int64)
    out = np.empty(steps, np.int64)
    top = 1  # max(max(npos), 1)
    for t in range(steps):
        c = int(np.argmax(stats - npos / top))
        if available is not None and npos[c] >= available[c]:
            return out[:t]
        out[t] = c
        npos[c] += 1
        top = max(top, int(npos[c]))
    return out


def long_tail_counts(size: int, lamda: float, nclass: int) -> np.ndarray:
    """CADR protocol: n_k = ceil(size * lamda^(-k/(K-1))). CIFAR-10 20/20 -> [20,15,11,8,6,4,3,2,2,1]."""
    k = np.arange(nclass)
    return np.array([math.ceil(size * lamda ** (-i / max(nclass - 1, 1)) - EPS) for i in k], np.int64)


def imbalanced_counts(size: int, gamma: float, nclass: int) -> np.ndarray:
    """Geometric profile from size (head) down to size/gamma (tail), floored."""
    k = np.arange(nclass)
    return np.array([math.floor(size * gamma ** (-i / max(nclass - 1, 1)) + EPS) for i in k], np.int64)


def check_counts(counts: np.ndarray, available: np.ndarray, what: str) -> None:
    """UserError if some class is asked for more records than it has."""
    short = np.flatnonzero(counts > available)
    if short.size:
        k = int(short[0])
        raise utils.UserError(f'{what} asks for {counts[k]} images of class {k} but the data has only '
                              f'{available[k]}; use a smaller --size')


def take_first(positions: list, counts) -> np.ndarray:
    """The first counts[k] positions of each class list positions[k], sorted ascending (int64)."""
    chosen = [pool[:n] for pool, n in zip(positions, counts)]
    return np.sort(np.concatenate(chosen)).astype(np.int64) if chosen else np.zeros([0], np.int64)


def pick_mnar(labels: np.ndarray, class_probs, seed: int) -> np.ndarray:
    """Self-masked MNAR: record i of class y is labeled iff u_i < phi_y, u_i ~ U(0,1) seeded."""
    u = np.random.default_rng(seed).random(len(labels))
    phi = np.asarray(class_probs, np.float64)
    labeled = (labels >= 0) & (u < phi[np.clip(labels, 0, None)])
    return np.flatnonzero(labeled)


def unlabeled_order(labels: np.ndarray, nclass: int) -> np.ndarray:
    """Write order (positions into `labels`) of the original create_unlabeled.py.

    The original appends each record, in order, to the queue of its class; after each one it repeats: c = the
    next greedy class (train_stats of these labels); pop the front of queue c and write it, or stop if it is
    empty; at the end it writes the leftovers of the queues in class order. The greedy classes do not depend on
    the queues, so this is: the t-th greedy class c takes the next record of class c, until the first class that
    has none left; then the rest of each class in order. Label -1 (no label) queues with class 0, where the
    original's label 0 put the STL-10 unlabeled images; they are not counted in train_stats.
    """
    queue = np.maximum(labels, 0)
    pools = [np.flatnonzero(queue == k) for k in range(nclass)]
    sequence = greedy_classes(train_stats(class_sizes(labels, nclass)), len(labels), [len(p) for p in pools])
    order = np.empty(len(labels), np.int64)
    used = []
    for k, pool in enumerate(pools):
        where = np.flatnonzero(sequence == k)
        order[where] = pool[:len(where)]
        used.append(len(where))
    order[len(sequence):] = np.concatenate([pool[n:] for pool, n in zip(pools, used)] + [np.zeros([0], np.int64)])
    return order


def tail_profile(sizes: np.ndarray, gamma: float, inverse: bool, head: int = 0) -> np.ndarray:
    """Per-class counts of a long-tailed set cut from class pools `sizes` (head = class 0,
    or class K-1 when inverse), n_k = floor(N_head * gamma^(-r/(K-1))), r the rank from the head;
    N_head = `head`, or the largest pool when 0."""
    nclass = len(sizes)
    counts = imbalanced_counts(int(head or sizes.max()), gamma, nclass)
    return counts[::-1].copy() if inverse else counts


def parse_class_probs(text: str, nclass: int) -> np.ndarray:
    """'0.5,0.2,...' -> array of K probabilities in [0, 1]."""
    try:
        probs = np.array([float(p) for p in text.split(',')], np.float64)
    except ValueError:
        raise utils.UserError(f'--class_probs={text!r} is not a comma-separated list of numbers') from None
    if len(probs) != nclass or np.any(probs < 0) or np.any(probs > 1):
        raise utils.UserError(f'--class_probs needs {nclass} probabilities in [0, 1] (one per class), got {text!r}')
    return probs


def choose_labeled(labels: np.ndarray, nclass: int, seed: int, size: int, lamda: float = 0.0,
                   gamma: float = 0.0, excluded=None) -> np.ndarray:
    """Positions (sorted, int64) of a labeled split by the class rule: class k gives the first n_k of class_id[k]
    (without the `excluded` positions)."""
    positions = class_positions(labels, nclass, seed)
    counts = labeled_counts(labels, nclass, size, lamda, gamma)
    if excluded is not None:
        positions = [pool[~np.isin(pool, excluded)] for pool in positions]
        check_counts(counts, np.array([len(pool) for pool in positions]), 'the labeled split (without the '
                     'unlabeled set\'s images)')
    return take_first(positions, counts)


def labeled_counts(labels: np.ndarray, nclass: int, size: int, lamda: float = 0.0, gamma: float = 0.0) -> np.ndarray:
    """Per-class counts n_k of a labeled split (see module docstring)."""
    if lamda and gamma:
        raise utils.UserError('--lamda and --gamma are two different long-tail protocols; give one')
    sizes = class_sizes(labels, nclass)
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
            raise utils.UserError(f'--size={size} is smaller than the {nclass} classes; a split needs at least '
                                  f'one label per class')
        counts = np.bincount(greedy_classes(train_stats(sizes), size), minlength=nclass).astype(np.int64)
    check_counts(counts, sizes, 'the labeled split')
    return counts


# ---------------------------------------------------------------------------------------------
# Files

def base_name(path: str) -> str:
    """'$ML_DATA/cifar10-train.tfrecord' -> 'cifar10' (the dataset a record file belongs to)."""
    name = os.path.basename(path)
    for split in ('train', 'test', 'extra', 'unlabeled'):
        suffix = f'-{split}.tfrecord'
        if name.endswith(suffix):
            return name[:-len(suffix)]
    return name.rsplit('.', 1)[0]


def split_of(path: str) -> str:
    """'$ML_DATA/cifar10-train.tfrecord' -> 'train'."""
    return os.path.basename(path)[len(base_name(path)) + 1:-len('.tfrecord')]


def read_sources(files: list) -> tuple:
    """(serialized records, labels, nclass, base dataset name, DatasetInfo or None) of the input record files.

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
    return serialized, labels, nclass, base, info


def unlabeled_paths(target: str) -> tuple:
    return f'{target}-unlabel.tfrecord', f'{target}-unlabel.json'


def split_paths(target: str, seed: int, size: int) -> tuple:
    stem = f'{target}.{seed}@{size}-label'
    return f'{stem}.tfrecord', f'{stem}.json'


def create_unlabeled(target: str, files: list, gamma: float = 0.0, inverse: bool = False, seed: int = 0,
                     size: int = 0) -> dict:
    """Writes `<target>-unlabel.tfrecord` + `.json` from the training record files.

    All records by default (labeled ones included), or a long-tailed subset (ratio |gamma|, head class 0, or
    class K-1 with `inverse` or a negative gamma; head count `size`, or the largest class when 0): class k keeps
    the first n_k of its class_id list (shuffled by `seed`) and every record without a label is kept. Written in
    `unlabeled_order`. Returns the JSON dict.
    """
    if (inverse or size) and not gamma:
        raise utils.UserError(f'--{"inverse" if inverse else "size"} needs --gamma (the imbalance ratio of the long-'
                              f'tailed unlabeled set; --gamma=1: size images of every class)')
    if size < 0:
        raise utils.UserError(f'--size={size} must be a positive head-class count (0 = the largest class)')
    serialized, labels, nclass, base, _ = read_sources(files)
    keep = np.arange(len(labels))
    if gamma:
        if abs(gamma) < 1:
            raise utils.UserError(f'--gamma={gamma} must be >= 1 (head count / tail count), or <= -1 for the '
                                  f'reverse class order')
        sizes = class_sizes(labels, nclass)
        counts = tail_profile(sizes, abs(gamma), inverse or gamma < 0, size)
        check_counts(counts, sizes, 'the long-tailed unlabeled set')
        chosen = take_first(class_positions(labels, nclass, seed), counts)
        keep = np.sort(np.concatenate([chosen, np.flatnonzero(labels < 0)]))
    order = keep[unlabeled_order(labels[keep], nclass)]
    meta = dict(base=base, sources=[os.path.basename(f) for f in files], nclass=nclass, split_rule=SPLIT_RULE,
                distribution=class_sizes(labels[order], nclass).tolist(),
                unlabeled_images=int(np.sum(labels[order] < 0)), indexes=order.tolist(),
                args=dict(gamma=gamma, inverse=bool(inverse), seed=seed, size=size))
    record_path, json_path = unlabeled_paths(target)
    records.write_serialized(record_path, [serialized[i] for i in order])
    utils.write_json(json_path, meta)
    return meta


def unlabeled_positions(target: str, files: list) -> np.ndarray:
    """The source positions (int64) of the records of `target`'s unlabeled set, made from the same `files`."""
    json_path = unlabeled_paths(target)[1]
    if not os.path.exists(json_path):
        raise utils.UserError(f'--disjoint excludes the images of {json_path}, which does not exist; create it first '
                              f'with {utils.script("create_unlabeled.py")}')
    meta = utils.read_json(json_path, 'unlabeled-set description')
    if meta.get('sources') != [os.path.basename(f) for f in files]:
        raise utils.UserError(f'{json_path} was made from {meta.get("sources")}, not from the files given here; '
                              f'give the same record files')
    return np.asarray(meta['indexes'], np.int64)


def official_fold(info, base: str, files: list, labels: np.ndarray, seed: int, size: int):
    """Positions of official fold `seed` when the dataset has folds of `size` images (STL-10 @1000), else None."""
    folds = getattr(info, 'folds', None)
    if not folds:
        if base == 'stl10' and size == STL10_FOLD_SIZE:
            raise utils.UserError(f'the STL-10 labeled split of {size} images is an official fold, but '
                                  f'{records.DatasetInfo.path(base, os.path.dirname(os.path.abspath(files[0])))} '
                                  f'has no folds (converted by an older version); convert it again with: '
                                  f'{utils.script("create_datasets.py")} --datasets={base}')
        return None
    if size != len(folds[0]):
        return None
    if not 0 <= seed < len(folds):
        raise utils.UserError(f'{base} has {len(folds)} official folds of {size} images: use --seed=0..'
                              f'{len(folds) - 1} (another --size gives a split by the class rule)')
    if split_of(files[0]) != 'train':
        raise utils.UserError(f'the {base} folds index its training images: give {base}-train.tfrecord first')
    chosen = np.unique(np.asarray(folds[seed], np.int64))  # indices checked when the archive was converted
    if chosen.size and (chosen.max() >= len(labels) or labels[chosen].min() < 0):
        raise utils.UserError(f'fold {seed} of {base} points outside its labeled training images; convert the '
                              f'dataset again with: {utils.script("create_datasets.py")} --datasets={base}')
    return chosen


def create_split(target: str, files: list, seed: int, size: int = 0, lamda: float = 0.0, gamma: float = 0.0,
                 class_probs=None, disjoint: bool = False) -> tuple:
    """Writes `<target>.<seed>@<size>-label.tfrecord` (chosen records in record order) + `.json`;
    returns (size, JSON dict).

    With `class_probs` (self-masked MNAR) the size is the number of images drawn; a nonzero `size` must
    equal it. The JSON holds the per-class counts, the chosen positions (sorted) and the per-class
    labeling probabilities phi_k = n_k / N_k (or the given class_probs). `disjoint`: the images of
    `target`'s unlabeled set are left out (each class list loses them before the first n_k are taken).
    """
    serialized, labels, nclass, base, info = read_sources(files)
    sizes = class_sizes(labels, nclass)
    fold = None
    excluded = unlabeled_positions(target, files) if disjoint else None
    if disjoint and (class_probs is not None or not (lamda or gamma)):
        raise utils.UserError('--disjoint takes the labels per class by --lamda or --gamma; give one of them '
                              '(and no --class_probs)')
    if class_probs is not None:
        if lamda or gamma:
            raise utils.UserError('--class_probs draws the labeled images at random: give no --lamda or --gamma '
                                  'with it')
        probs = parse_class_probs(class_probs, nclass) if isinstance(class_probs, str) \
            else np.asarray(class_probs, np.float64)
        chosen = pick_mnar(labels, probs, seed)
        if size and size != len(chosen):
            raise utils.UserError(f'--class_probs with --seed={seed} draws {len(chosen)} labels, not --size={size}: '
                                  f'give --size={len(chosen)} or no --size')
        size = len(chosen)
        label_probs = probs.tolist()
    else:
        if size <= 0:
            raise utils.UserError('--size must be a positive number of labels')
        chosen = None if lamda or gamma else official_fold(info, base, files, labels, seed, size)
        if chosen is not None:
            fold = seed
        else:
            chosen = choose_labeled(labels, nclass, seed, size, lamda, gamma, excluded)
        label_probs = (class_sizes(labels[chosen], nclass) / np.maximum(sizes, 1)).tolist()
    if not len(chosen):
        raise utils.UserError('the labeled split would be empty; raise --class_probs')
    meta = dict(base=base, sources=[os.path.basename(f) for f in files], nclass=nclass, split_rule=SPLIT_RULE,
                distribution=class_sizes(labels[chosen], nclass).tolist(), label_probs=label_probs, fold=fold,
                indexes=chosen.tolist(), args=dict(seed=seed, size=size, lamda=lamda, gamma=gamma, disjoint=disjoint,
                                                   class_probs=None if class_probs is None else label_probs))
    record_path, json_path = split_paths(target, seed, size)
    records.write_serialized(record_path, [serialized[i] for i in chosen])
    utils.write_json(json_path, meta)
    return size, meta


def with_options(command: str, args: dict) -> str:
    """`command` plus the options of a sidecar's `args` that it lacks (e.g. --class_probs of a hand-made split),
    inserted after the script name."""
    extra = [f'--{k}' if v is True else f'--{k}=' + (','.join(map(str, v)) if isinstance(v, list) else str(v))
             for k, v in sorted(args.items()) if v not in (None, False, 0, '', []) and f'--{k}' not in command]
    head, sep, tail = command.partition('.py ')
    return f'{head}{sep}{" ".join(extra)} {tail}' if extra and sep else command


def check_rule_version(meta: dict, json_path: str, fix: str) -> None:
    """UserError unless the sidecar `meta` (read from `json_path`) was made by the current SPLIT_RULE.

    `fix` is the command that recreates the file; options recorded in the sidecar's `args` that it lacks are
    added to it. Files made by the earlier rule (no `split_rule`) hold other images than the original's."""
    rule = meta.get('split_rule')
    if rule == SPLIT_RULE:
        return
    command = with_options(fix, meta.get('args') or {})
    if isinstance(rule, int) and rule > SPLIT_RULE:
        raise utils.UserError(f'{json_path} was made by split rule {rule}, newer than this code\'s {SPLIT_RULE}; '
                              f'update the code or recreate it with: {command}')
    raise utils.UserError(f'{json_path} was made by an older split rule that picks other images than the original '
                          f'FixMatch (no "split_rule": {SPLIT_RULE}); recreate it with: {command}')
