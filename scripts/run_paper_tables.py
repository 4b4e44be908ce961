#!/usr/bin/env python
"""Runs the experiments of the CADR and DeFixMatch tables for one dataset, then aggregates them.

  python scripts/run_paper_tables.py cifar10 --seeds=1,2,3,4,5                 # the papers' settings
  python scripts/run_paper_tables.py fashion_mnist --seeds=1,2 --extra='--local --train_kimg=6'
  python scripts/run_paper_tables.py cifar100 --tables=cadr --dry_run          # print the commands only

cadr        CADR protocol (Hu et al., ICLR 2022): every long-tailed labeled setting (N_max, lamda)
            (CIFAR-100: (50,50), (100,50), (200,50); other datasets: (20,20), (50,50), (100,100))
            with FixMatch, +CAP, +CAI, and +CAP+CAI+CADR, 2^13 kimg by default (CIFAR-100: filters 128
            with wd 0.0015 for the CADR variants).
defixmatch  DeFixMatch table (Schmutz et al., ICLR 2023): 4000 labels (CIFAR-100: 10000), supervised
            term on a weak and a strong view; complete case (wu=0), FixMatch (wu=0.5) and DeFixMatch
            (wu=0.5, debiased).
Runs that already finished are skipped (a run resumes from its checkpoint). The tables are written
by scripts/aggregate_accuracy.py to <train_dir>/<table>.md.
"""
import os
import shlex
import subprocess
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from libml import utils  # noqa: E402
from absl import flags  # noqa: E402

FLAGS = flags.FLAGS
TABLES = ('cadr', 'defixmatch')
CADR_VARIANTS = (('FixMatch', ''), ('+CAP', '--CAP'), ('+CAI', '--CAI'), ('+CAP+CAI+CADR', '--CAP --CAI --CADR'))
DEFIXMATCH_VARIANTS = (('complete case', '--sup_strong --wu=0'), ('FixMatch', '--sup_strong --wu=0.5'),
                       ('DeFixMatch', '--sup_strong --wu=0.5 --debiased'))


def define_flags():
    flags.DEFINE_list('seeds', ['1'], 'Split seeds (one run per seed and setting).')
    flags.DEFINE_list('tables', list(TABLES), 'Tables to run: ' + ', '.join(TABLES))
    flags.DEFINE_string('train_dir', './experiments/paper_tables', 'Folder of the runs and of the tables.')
    flags.DEFINE_string('extra', '', 'Extra flags for every run, e.g. "--local --train_kimg=6".')
    flags.DEFINE_bool('dry_run', False, 'Print the commands without running them.')


def long_tail_settings(dataset):
    """(N_max, lamda) of the CADR protocol."""
    if dataset == 'cifar100':
        return ((50, 50), (100, 50), (200, 50))
    return ((20, 20), (50, 50), (100, 100))


def cadr_commands(dataset, seeds, train_dir, extra):
    paper = '--train_kimg=8192' + (' --filters=128' if dataset == 'cifar100' else '')
    for size, lamda in long_tail_settings(dataset):
        for seed in seeds:
            for _, variant in CADR_VARIANTS:
                wd = ' --wd=0.0015' if dataset == 'cifar100' and 'CADR' in variant else ''
                yield (f'python fixmatch.py --dataset={dataset}_LT_{lamda}.{seed}@{size}-1 {paper}{wd} {variant} '
                       f'--nobaseline --train_dir={train_dir}/cadr {extra}')


def defixmatch_commands(dataset, seeds, train_dir, extra):
    size = 10000 if dataset == 'cifar100' else 4000
    paper = ' --filters=128' if dataset == 'cifar100' else ''
    for seed in seeds:
        for _, variant in DEFIXMATCH_VARIANTS:
            yield (f'python fixmatch.py --dataset={dataset}.{seed}@{size}-1{paper} {variant} '
                   f'--nobaseline --train_dir={train_dir}/defixmatch {extra}')


def run(command, dry_run):
    command = ' '.join(command.split())
    print(command, flush=True)
    if not dry_run:
        subprocess.run(shlex.split(command), cwd=utils.project_root(), check=True)


def main(argv):
    if len(argv) != 2:
        raise utils.UserError('usage: run_paper_tables.py DATASET [--seeds=1,2,3] [--tables=cadr,defixmatch]')
    dataset = argv[1]
    unknown = sorted(set(FLAGS.tables) - set(TABLES))
    if unknown:
        raise utils.UserError(f'unknown table(s) {", ".join(unknown)}; choose among {", ".join(TABLES)}')
    train_dir = os.path.abspath(FLAGS.train_dir)
    makers = dict(cadr=cadr_commands, defixmatch=defixmatch_commands)
    try:
        for table in FLAGS.tables:
            for command in makers[table](dataset, FLAGS.seeds, train_dir, FLAGS.extra):
                run(command, FLAGS.dry_run)
            run(f'python scripts/aggregate_accuracy.py --out={train_dir}/{table}.md {train_dir}/{table}',
                FLAGS.dry_run)
    except subprocess.CalledProcessError as e:
        raise utils.UserError(f'a run failed (exit status {e.returncode}): {" ".join(e.cmd)}') from None


if __name__ == '__main__':
    define_flags()
    utils.run(main)
