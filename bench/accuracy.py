#!/usr/bin/env python
"""Every algorithm on Fashion-MNIST with 40 and 250 labels at one fixed budget, same model and seed,
against the supervised baseline (labeled split only) of the same budget. Writes a markdown table.

  python bench/accuracy.py --train_kimg=4 --ema=0.9 --bn_momentum=0.9   # --local model (2-core CPU: 47 min quiet, 52 min shared on 2026-12-07)
  python bench/accuracy.py --train_kimg=1024 --nolocal --out=bench/accuracy_gpu.md   # on a GPU

The budget is the number of labeled images seen (train_kimg thousands), the same for every run;
the wall time of each run is reported too. Accuracy is the EMA test accuracy at the end (%).
The last line prints each algorithm's accuracy as a ratio of the supervised baseline's.
"""
import importlib
import os
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
from libml import utils  # noqa: E402

utils.quiet_tensorflow()
from absl import flags  # noqa: E402
from libml import commands  # noqa: E402

ALGORITHMS = commands.entry_scripts(ROOT)  # every algorithm script: a new method joins without a list to edit
BASELINE = 'FullySupervised'

flags.DEFINE_list('labels', ['40', '250'], 'Labeled split sizes.')
flags.DEFINE_list('algorithms', [c for _, c in ALGORITHMS], 'Algorithms to run (class names).')
flags.DEFINE_float('train_kimg', 8, 'Budget of every run, in thousands of labeled images.')
flags.DEFINE_bool('local', True, 'Use the --local model and settings (WRN-10-1, batch 32).')
flags.DEFINE_float('ema', None, 'Weight-EMA decay of every run (default: the --local or paper value). A budget of a '
                   'few kimg needs 0.9: a slower average is still near its random start at the end.')
flags.DEFINE_float('bn_momentum', None, 'Batch-norm statistics decay of every run (default as --ema).')
flags.DEFINE_integer('seed', 1, 'Split seed and training seed.')
flags.DEFINE_integer('eval_size', 0, 'Evaluate on the first N test images only (0 = all 10,000; a smoke test uses fewer).')
flags.DEFINE_string('out', 'bench/accuracy.md', 'Markdown file to write.')
FLAGS = flags.FLAGS


def algorithm_class(name):
    module = next(m for m, c in ALGORITHMS if c == name)
    return getattr(importlib.import_module(module), name)


def run_one(name, labels, train_dir):
    """(EMA test accuracy %, seconds) of one run."""
    cls = algorithm_class(name)
    decays = {k: getattr(FLAGS, k) for k in ('ema', 'bn_momentum') if getattr(FLAGS, k) is not None}
    start = time.perf_counter()
    result = cls.run(**decays, baseline=False, eval_size=FLAGS.eval_size,
                     dataset=f'fashion_mnist.{FLAGS.seed}@{labels}-1', train_dir=train_dir, local=FLAGS.local,
                     seed=FLAGS.seed, train_kimg=FLAGS.train_kimg, report_kimg=FLAGS.train_kimg,
                     save_kimg=FLAGS.train_kimg)
    return result['accuracy'], time.perf_counter() - start


def table(results, labels):
    head = '| algorithm | ' + ' | '.join(f'{n} labels: accuracy % (vs supervised) | time s' for n in labels) + ' |'
    lines = [head, '|---|' + '---|---|' * len(labels)]
    for name in FLAGS.algorithms:
        cells = []
        for n in labels:
            accuracy, seconds = results[name, n]
            base = results.get((BASELINE, n), (None,))[0]
            delta = f' ({accuracy - base:+.2f})' if base is not None and name != BASELINE else ''
            cells.append(f'{accuracy:.2f}{delta} | {seconds:.0f}')
        lines.append(f'| {name} | ' + ' | '.join(cells) + ' |')
    return '\n'.join(lines) + '\n'


def main(argv):
    del argv
    if BASELINE in FLAGS.algorithms:  # the baseline first, so the table can compare with it
        FLAGS.algorithms = [BASELINE] + [a for a in FLAGS.algorithms if a != BASELINE]
    results = {}
    with tempfile.TemporaryDirectory() as train_dir:
        for name in FLAGS.algorithms:
            for n in FLAGS.labels:
                results[name, n] = run_one(name, n, train_dir)
                print(f'{name} {n} labels: {results[name, n][0]:.2f}% in {results[name, n][1]:.0f} s', flush=True)
    text = (f'Fashion-MNIST, {FLAGS.train_kimg:g} kimg per run, {"--local model (WRN-10-1, batch 32)" if FLAGS.local else "paper model"}, '
            f'seed {FLAGS.seed}, EMA/BN decay {FLAGS.ema or "default"}/{FLAGS.bn_momentum or "default"}; EMA test accuracy at the end of the run.\n\n' + table(results, FLAGS.labels))
    with utils.atomic_write(FLAGS.out) as tmp:
        with open(tmp, 'w') as f:
            f.write(text)
    print(text)
    if BASELINE in FLAGS.algorithms:
        ratios = ', '.join(f'{name}@{n} {results[name, n][0] / results[BASELINE, n][0]:.2f}x'
                           for name in FLAGS.algorithms if name != BASELINE for n in FLAGS.labels)
        print(f'accuracy / supervised baseline: {ratios}')


if __name__ == '__main__':
    utils.run(main)
