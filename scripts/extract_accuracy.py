#!/usr/bin/env python
"""Writes RUN_DIR/stats/accuracy.json: the median of the last 1, 10, 20 and 50 EMA test accuracies
(one per epoch, in percent) as last01, last10, last20, last50. The FixMatch paper reports last20.

  python scripts/extract_accuracy.py experiments/fashion_mnist.1@40-1/FixMatch_local [RUN_DIR ...]
"""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from libml import stats  # noqa: E402
from libml import utils  # noqa: E402

if __name__ == '__main__':
    utils.run(stats.summary_main('accuracy', 'accuracy.json'))
