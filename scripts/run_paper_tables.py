#!/usr/bin/env python
"""Runs the experiments of the CADR, DeFixMatch and class-imbalanced tables for one dataset, then aggregates them.

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
imbalanced  USB's classic_cv_imb protocol (targets <base>_IMB_<gamma>_U<M1>_<gamma_u>): N1 = 1500 labels at
            gamma 100 with M1 = 3000 unlabeled at gamma_u = 100 (same profile) and -100 (reversed), and gamma =
            gamma_u = 150 (CIFAR-100: N1 150, M1 300, gammas 10, -10 and 15); WRN-28-2, batch 64, uratio 2,
            constant lr 0.03, 256 x 1024 steps (train_kimg 16384). Variants: supervised (fully_supervised.py on the
            labeled split), FixMatch, +DARP, +CReST (6 generations of 4096 kimg: train_kimg 24576), +CReST+, +ABC,
            +DASO (CIFAR-100 reversed: --daso_T_dist=0.3, USB's config), +CADR. The paper command of one cell (CIFAR-10, gamma 100,
            reversed unlabeled set, +DASO, seed 1):
              python fixmatch.py --dataset=cifar10_IMB_100_U3000_-100.1@1500-1 --lr=0.03 --lr_schedule=constant \
                --train_kimg=16384 --uratio=2 --daso --nobaseline --train_dir=./experiments/paper_tables/imbalanced
            The CPU budget on Fashion-MNIST (same protocol, the --local model and schedule):
              python scripts/run_paper_tables.py fashion_mnist --tables=imbalanced --seeds=1 \
                --extra='--local --train_kimg=16'
Runs that already finished are skipped (a run resumes from its checkpoint). The tables are written
by scripts/aggregate_accuracy.py to <train_dir>/<table>.md (accuracy, balanced accuracy, GM accuracy,
worst-class accuracy, test cross-entropy).
"""
import os
import shlex
import subprocess
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from libml import utils  # noqa: E402
from absl import flags  # noqa: E402

FLAGS = flags.FLAGS
TABLES = ('cadr', 'defixmatch', 'imbalanced')
CADR_VARIANTS = (('FixMatch', ''), ('+CAP', '--CAP'), ('+CAI', '--CAI'), ('+CAP+CAI+CADR', '--CAP --CAI --CADR'))
DEFIXMATCH_VARIANTS = (('complete case', '--sup_strong --wu=0'), ('FixMatch', '--sup_strong --wu=0.5'),
                       ('DeFixMatch', '--sup_strong --wu=0.5 --debiased'))
# USB's fixmatch_crest configs: 6 generations of num_train_iter = 65,536 steps of 64 each (6 x 4096 kimg); the later
# --train_kimg overrides the table's 16384 (--train_kimg is split over the generations here)
CREST = '--crest=6 --train_kimg=24576'
IMBALANCED_VARIANTS = (('supervised', 'fully_supervised.py', ''), ('FixMatch', 'fixmatch.py', ''),
                       ('+DARP', 'fixmatch.py', '--darp'), ('+CReST', 'fixmatch.py', CREST),
                       ('+CReST+', 'fixmatch.py', CREST + ' --crest_plus'), ('+ABC', 'fixmatch.py', '--abc'),
                       ('+DASO', 'fixmatch.py', '--daso'), ('+CADR', 'fixmatch.py', '--CAP --CAI --CADR'))
IMBALANCED_SCHEDULE = '--lr=0.03 --lr_schedule=constant --train_kimg=16384'  # 256 x 1024 steps of 64


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


def imbalanced_settings(dataset):
    """(N1, M1, ((gamma, gamma_u), ...)) of USB's classic_cv_imb protocol."""
    if dataset == 'cifar100':
        return 150, 300, ((10, 10), (10, -10), (15, 15))
    return 1500, 3000, ((100, 100), (100, -100), (150, 150))


def imbalanced_commands(dataset, seeds, train_dir, extra):
    labeled, unlabeled, settings = imbalanced_settings(dataset)
    for gamma, ugamma in settings:
        target = f'{dataset}_IMB_{gamma}_U{unlabeled}_{ugamma}'
        for seed in seeds:
            for _, script, variant in IMBALANCED_VARIANTS:
                uratio = '' if script == 'fully_supervised.py' else ' --uratio=2'  # no unlabeled images
                if variant == '--daso' and dataset == 'cifar100' and ugamma < 0:
                    variant += ' --daso_T_dist=0.3'  # USB's config of the reversed CIFAR-100 setting
                yield (f'python {script} --dataset={target}.{seed}@{labeled}-1 {IMBALANCED_SCHEDULE}{uratio} '
                       f'{variant} --nobaseline --train_dir={train_dir}/imbalanced {extra}')


def run(command, dry_run):
    command = ' '.join(command.split())
    print(command, flush=True)
    if not dry_run:
        subprocess.run(shlex.split(command), cwd=utils.project_root(), check=True)


def main(argv):
    if len(argv) != 2:
        raise utils.UserError('usage: run_paper_tables.py DATASET [--seeds=1,2,3] [--tables=cadr,defixmatch,imbalanced]')
    dataset = argv[1]
    unknown = sorted(set(FLAGS.tables) - set(TABLES))
    if unknown:
        raise utils.UserError(f'unknown table(s) {", ".join(unknown)}; choose among {", ".join(TABLES)}')
    train_dir = os.path.abspath(FLAGS.train_dir)
    makers = dict(cadr=cadr_commands, defixmatch=defixmatch_commands, imbalanced=imbalanced_commands)
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
