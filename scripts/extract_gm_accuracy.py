#!/usr/bin/env python
"""Writes RUN_DIR/stats/gm_accuracy.json: the median of the last 1, 10, 20 and 50 geometric means of
the per-class EMA test accuracies (CADR's metric; a class at 0% counts as 1/(100 K)), in percent.

  python scripts/extract_gm_accuracy.py experiments/cifar10_LT_20.1@20-1/FixMatch [RUN_DIR ...]
"""
import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from libml import stats  # noqa: E402
from libml import utils  # noqa: E402


def main(argv):
    if len(argv) < 2:
        raise utils.UserError('usage: extract_gm_accuracy.py RUN_DIR [RUN_DIR ...]')
    for run_dir in argv[1:]:
        print(run_dir, json.dumps(stats.summarize(run_dir, 'gm_accuracy', 'gm_accuracy.json'), sort_keys=True))


if __name__ == '__main__':
    utils.run(main)
