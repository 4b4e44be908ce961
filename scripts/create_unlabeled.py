#!/usr/bin/env python
"""Writes the unlabeled set of a target: $ML_DATA/SSL2/<target>-unlabel.tfrecord (+ .json).

  python scripts/create_unlabeled.py $ML_DATA/SSL2/cifar10 $ML_DATA/cifar10-train.tfrecord
  python scripts/create_unlabeled.py $ML_DATA/SSL2/stl10 $ML_DATA/stl10-train.tfrecord $ML_DATA/stl10-unlabeled.tfrecord
  # long-tailed unlabeled set (imbalance ratio 100), or its inverse (head = last class):
  python scripts/create_unlabeled.py --gamma=100 $ML_DATA/SSL2/cifar10_IMB_100 $ML_DATA/cifar10-train.tfrecord
  python scripts/create_unlabeled.py --gamma=100 --inverse $ML_DATA/SSL2/cifar10_INV_100 $ML_DATA/cifar10-train.tfrecord
  # imbalanced SSL protocol (USB): head count M_1 = --size, class c gets floor(M_1 |gamma_u|^(-c/(K-1)));
  # a negative --gamma reverses the class order; pair with create_split.py --disjoint
  python scripts/create_unlabeled.py --size=3000 --gamma=-100 $ML_DATA/SSL2/cifar10_IMB_100_U3000_-100 \
      $ML_DATA/cifar10-train.tfrecord

Holds ALL training records (labeled ones included) unless --gamma, in the order of the original
FixMatch script: every prefix follows the class distribution (libml/splits.py, `unlabeled_order`).
Records without a label (STL-10 unlabeled, label -1) are ordered as the original's label 0 ordered
them. The JSON sidecar has the per-class `distribution`, the original `indexes` in written order
and `split_rule`.
"""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from libml import utils  # noqa: E402

utils.quiet_tensorflow()
from absl import flags  # noqa: E402
from absl import logging  # noqa: E402

from libml import splits  # noqa: E402

flags.DEFINE_float('gamma', 0, 'Imbalance ratio of a long-tailed unlabeled set (head count / tail count); '
                   'negative: the reverse class order (the last class is the head); 0 keeps every record.')
flags.DEFINE_integer('size', 0, 'With --gamma: the head-class count M_1 (0 = the largest class of the records).')
flags.DEFINE_bool('inverse', False, 'With --gamma: long tail in reverse class order (the last class is the head).')
flags.DEFINE_integer('seed', 0, 'With --gamma: which images of a class are kept: the first ones of the class list '
                     'shuffled as create_split.py shuffles it (0 = no shuffle).')
FLAGS = flags.FLAGS


def main(argv):
    if len(argv) < 3:
        raise utils.UserError('usage: create_unlabeled.py [--gamma=G [--inverse] [--size=M1]] TARGET FILE.tfrecord '
                              '[FILE ...]')
    meta = splits.create_unlabeled(argv[1], argv[2:], gamma=FLAGS.gamma, inverse=FLAGS.inverse, seed=FLAGS.seed,
                                     size=FLAGS.size)
    logging.info('Wrote %s-unlabel.tfrecord: %d records, per class %s', argv[1], len(meta['indexes']),
                 meta['distribution'])


if __name__ == '__main__':
    utils.run(main)
