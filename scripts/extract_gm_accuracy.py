#!/usr/bin/env python
"""Writes RUN_DIR/stats/gm_accuracy.json: the median of the last 1, 10, 20 and 50 geometric means of
the per-class EMA test accuracies (CADR's metric; a class at 0% counts as 1/(100 K)), in percent.

  python scripts/extract_gm_accuracy.py experiments/cifar10_LT_20.1@20-1/FixMatch [RUN_DIR ...]
"""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from libml import stats  # noqa: E402
from libml import utils  # noqa: E402

if __name__ == '__main__':
    utils.run(stats.summary_main('gm_accuracy', 'gm_accuracy.json'))
