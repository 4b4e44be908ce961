#!/usr/bin/env python
"""Writes a labeled split: $ML_DATA/SSL2/<target>.<seed>@<size>-label.tfrecord (+ .json).

  # balanced: 40 labels on CIFAR-10 = 4 per class (seed 0 = the first images, no shuffle)
  python scripts/create_split.py --seed=1 --size=40 $ML_DATA/SSL2/cifar10 $ML_DATA/cifar10-train.tfrecord
  # CADR long tail: --size is the head-class count N_max, class k gets ceil(N_max * lamda^(-k/(K-1)))
  python scripts/create_split.py --seed=1 --size=20 --lamda=20 $ML_DATA/SSL2/cifar10_LT_20 $ML_DATA/cifar10-train.tfrecord
  # classic imbalanced SSL: head N_1=--size, tail N_1/gamma (pair with create_unlabeled.py --gamma)
  python scripts/create_split.py --seed=1 --size=1500 --gamma=100 $ML_DATA/SSL2/cifar10_IMB_100 $ML_DATA/cifar10-train.tfrecord
  # self-masked MNAR: each image of class k labeled with probability phi_k; the size is drawn
  python scripts/create_split.py --seed=1 --class_probs=0.1,0.08,0.06,0.05,0.04,0.03,0.02,0.01,0.01,0.01 \
      $ML_DATA/SSL2/cifar10_MNAR $ML_DATA/cifar10-train.tfrecord

The JSON sidecar holds the per-class `distribution`, the chosen original `indexes` and the
true per-class labeling probabilities `label_probs`. Same arguments give identical files.
"""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from libml import utils  # noqa: E402

utils.quiet_tensorflow()
from absl import flags  # noqa: E402
from absl import logging  # noqa: E402

from libml import splits  # noqa: E402

flags.DEFINE_integer('seed', 0, 'Random seed of the draw; 0 takes the first images of each class (no shuffle).')
flags.DEFINE_integer('size', 0, 'Number of labels (balanced), or the head-class count with --lamda / --gamma.')
flags.DEFINE_float('lamda', 0, 'CADR long tail: labeled imbalance ratio; class k gets ceil(size*lamda^(-k/(K-1))).')
flags.DEFINE_float('gamma', 0, 'Imbalanced SSL: class k gets floor(size*gamma^(-k/(K-1))) labels.')
flags.DEFINE_string('class_probs', None, 'Self-masked MNAR: comma-separated labeling probability of each class.')
FLAGS = flags.FLAGS


def main(argv):
    if len(argv) < 3:
        raise utils.UserError('usage: create_split.py --seed=S --size=N [--lamda=L | --gamma=G | --class_probs=...] '
                              'TARGET FILE.tfrecord [FILE ...]')
    size, meta = splits.create_split(argv[1], argv[2:], FLAGS.seed, FLAGS.size, FLAGS.lamda, FLAGS.gamma,
                                     FLAGS.class_probs)
    name = f'{os.path.basename(argv[1])}.{FLAGS.seed}@{size}'
    logging.info('Wrote %s: %d labels, per class %s', splits.split_paths(argv[1], FLAGS.seed, size)[0],
                 len(meta['indexes']), meta['distribution'])
    print(f'train on it with --dataset={name}-1')


if __name__ == '__main__':
    utils.run(main)
