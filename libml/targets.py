"""Training dataset names and the files behind them.

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
  <base>_IMB_<gamma>_U<M1>_<gamma_u>   the imbalanced SSL protocol (USB): labels floor(size*gamma^(-k/(K-1)))
          (size = N1), unlabeled floor(M1*|gamma_u|^(-k/(K-1))), reversed for gamma_u < 0, the labeled
          images left out of the unlabeled set, e.g. cifar10_IMB_100_U3000_-100.1@1500-1.
Any other target (e.g. MNAR splits) is made by hand with scripts/create_split.py.
"""
import dataclasses
import os
import re

from absl import logging

from libml import records
from libml import splits
from libml import utils

NAME_RE = re.compile(r'^(?P<target>[A-Za-z0-9][A-Za-z0-9_\-]*?)\.(?P<seed>\d+)@(?P<size>\d+)(?:-(?P<valid>\d+))?$')
RECIPE_RE = re.compile(r'^(?P<base>.+?)_(?P<kind>LT|IMB|INV)_(?P<ratio>\d+(?:\.\d+)?)'
                       r'(?:_U(?P<usize>\d+)_(?P<uratio>-?\d+(?:\.\d+)?))?$')


def number(value: float) -> str:
    """100.0 -> '100', 1.5 -> '1.5' (the ratios as target names write them)."""
    return f'{value:g}'


def imbalanced_target(base: str, gamma: float, usize: int, ugamma: float) -> str:
    """The target of the imbalanced SSL protocol: labels with ratio gamma (head count = the name's size),
    unlabeled head count usize with ratio ugamma (negative: reverse class order), disjoint."""
    return f'{base}_IMB_{number(gamma)}_U{int(usize)}_{number(ugamma)}'


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
    if match and match['usize'] and match['kind'] != 'IMB':
        match = None  # _U<M1>_<gamma_u> belongs to _IMB_ targets only
    if match and (match['base'] in registry.BUILTIN or os.path.exists(records.DatasetInfo.path(match['base'], root))):
        ratio = float(match['ratio'])
        if match['kind'] == 'LT':
            return Recipe(match['base'], {}, dict(lamda=ratio))
        if match['usize']:
            return Recipe(match['base'], dict(size=int(match['usize']), gamma=float(match['uratio'])),
                          dict(gamma=ratio, disjoint=True))
        return Recipe(match['base'], dict(gamma=ratio, inverse=match['kind'] == 'INV'), dict(gamma=ratio))
    if target in registry.BUILTIN or os.path.exists(records.DatasetInfo.path(target, root)):
        return Recipe(target, {}, {})
    if os.path.exists(meta_path):
        meta = utils.read_json(meta_path, 'unlabeled-set description')
        return Recipe(meta['base'], {}, {}, known=False)
    raise utils.UserError(f'unknown dataset {target!r}; known: {", ".join(known_targets(root))} (plus '
                          f'<name>_LT_<lamda>, <name>_IMB_<gamma>, <name>_INV_<gamma>, '
                          f'<name>_IMB_<gamma>_U<M1>_<gamma_u>); convert your own with '
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
