#!/usr/bin/env python
"""Turns the runs under some folders into a markdown table: mean +- std over seeds.

  python scripts/aggregate_accuracy.py experiments/paper_tables/cadr [--out=table.md]

A run is a folder holding args.json and stats/epochs.jsonl. Runs are grouped by dataset (the split
seed removed: cifar10_LT_20.1@20-1 and .2@20-1 are the same setting) and by run name (algorithm and
its non-default settings). Each cell is the mean +- standard deviation over the seeds of the
median of the last 20 epochs (the papers' metric) of: EMA test accuracy, balanced accuracy (the mean of the
per-class accuracies), geometric mean of the per-class accuracies, worst-class accuracy and test
cross-entropy (libml/metrics.py). A metric a run did not record (an older run) shows as n/a.
"""
import collections
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import numpy as np  # noqa: E402
from absl import flags  # noqa: E402

from libml import stats  # noqa: E402
from libml import utils  # noqa: E402

FLAGS = flags.FLAGS
COLUMNS = (('accuracy', 'accuracy %'), ('balanced_accuracy', 'balanced accuracy %'), ('gm_accuracy', 'GM accuracy %'),
           ('worst_class_accuracy', 'worst class %'), ('cross_entropy', 'test CE'))


def define_flags():
    flags.DEFINE_string('out', None, 'Markdown file to write (default: print only).')


def find_runs(folders):
    """Run directories (holding args.json and stats/epochs.jsonl) under the folders; not the folders inside a
    run directory (the earlier generations of a --crest run, <run>/crest/gen_<g>/)."""
    for folder in folders:
        for root, dirs, files in os.walk(folder):
            if 'args.json' in files:
                dirs[:] = []
                if os.path.exists(stats.epochs_path(root)):
                    yield root


def setting_of(run_dir):
    """(dataset without its split seed, run name): cifar10_LT_20.3@20-1 -> cifar10_LT_20@20-1."""
    dataset = os.path.basename(os.path.dirname(run_dir))
    target, _, rest = dataset.partition('.')
    return f'{target}@{rest.partition("@")[2]}', os.path.basename(run_dir)


def run_summary(run_dir):
    """{metric: median of the last 20 epochs, None when the run's epochs lack it} of one run."""
    epochs = stats.read_epochs(run_dir)
    recorded = lambda metric: all(metric in e.get('ema/test', {}) for e in epochs)  # noqa: E731
    return {metric: stats.last_medians(stats.metric_values(epochs, metric))['last20'] if recorded(metric) else None
            for metric, _ in COLUMNS}


def cell(values):
    """(mean, std, seeds) of one metric over the seeds; (None, None, seeds) when a run lacks it."""
    if any(v is None for v in values):
        return None, None, len(values)
    return float(np.mean(values)), float(np.std(values)), len(values)


def aggregate(folders):
    """{(dataset, run name): {metric: (mean, std, seeds)}}."""
    groups = collections.defaultdict(list)
    for run_dir in sorted(find_runs(folders)):
        groups[setting_of(run_dir)].append(run_summary(run_dir))
    return {key: {m: cell([r[m] for r in runs]) for m, _ in COLUMNS} for key, runs in sorted(groups.items())}


def markdown(table):
    lines = ['| dataset | run | seeds | ' + ' | '.join(title for _, title in COLUMNS) + ' |',
             '|---|---|---|' + '---|' * len(COLUMNS)]
    for (dataset, run), cells in table.items():
        seeds = next(iter(cells.values()))[2]
        values = ' | '.join('n/a' if mean is None else f'{mean:.2f} +- {std:.2f}' for mean, std, _ in cells.values())
        lines.append(f'| {dataset} | {run} | {seeds} | {values} |')
    return '\n'.join(lines) + '\n'


def main(argv):
    if len(argv) < 2:
        raise utils.UserError('usage: aggregate_accuracy.py FOLDER [FOLDER ...] [--out=FILE.md]')
    table = aggregate(argv[1:])
    if not table:
        raise utils.UserError(f'no runs (folders with args.json and stats/epochs.jsonl) under {", ".join(argv[1:])}')
    text = markdown(table)
    print(text, end='')
    if FLAGS.out:
        with utils.atomic_write(FLAGS.out) as tmp:
            with open(tmp, 'w') as f:
                f.write(text)


if __name__ == '__main__':
    define_flags()
    utils.run(main)
