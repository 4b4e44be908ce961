#!/usr/bin/env python
"""Writes a labeled split: $ML_DATA/SSL2/<target>.<seed>@<size>-label.tfrecord (+ .json).

  # 40 labels on CIFAR-10 = 4 per class; seed S shuffles each class as np.random.seed(S) did in the original
  # FixMatch (seed 0: the first images of each class, no shuffle). Same images as the original for any S and N.
  python scripts/create_split.py --seed=1 --size=40 $ML_DATA/SSL2/cifar10 $ML_DATA/cifar10-train.tfrecord
  # STL-10 with --size=1000: the labeled set is the official fold S (0..9) of the archive's fold_indices.txt
  python scripts/create_split.py --seed=1 --size=1000 $ML_DATA/SSL2/stl10 $ML_DATA/stl10-train.tfrecord \
      $ML_DATA/stl10-unlabeled.tfrecord
  # CADR long tail: --size is the head-class count N_max, class k gets ceil(N_max * lamda^(-k/(K-1)))
  python scripts/create_split.py --seed=1 --size=20 --lamda=20 $ML_DATA/SSL2/cifar10_LT_20 $ML_DATA/cifar10-train.tfrecord
  # classic imbalanced SSL: head N_1=--size, tail N_1/gamma (pair with create_unlabeled.py --gamma)
  python scripts/create_split.py --seed=1 --size=1500 --gamma=100 $ML_DATA/SSL2/cifar10_IMB_100 $ML_DATA/cifar10-train.tfrecord
  # imbalanced SSL protocol (USB): labels as above, without the images of the target's unlabeled set
  # (made first by create_unlabeled.py --size=M1 --gamma=G_u)
  python scripts/create_split.py --seed=1 --size=1500 --gamma=100 --disjoint $ML_DATA/SSL2/cifar10_IMB_100_U3000_-100 \
      $ML_DATA/cifar10-train.tfrecord
  # self-masked MNAR: each image of class k labeled with probability phi_k; the size is drawn
  python scripts/create_split.py --seed=1 --class_probs=0.1,0.08,0.06,0.05,0.04,0.03,0.02,0.01,0.01,0.01 \
      $ML_DATA/SSL2/cifar10_MNAR $ML_DATA/cifar10-train.tfrecord

Without --lamda/--gamma the per-class counts follow the class frequencies of the training records (the
original's greedy rule: N/K each on balanced data). The label file holds the chosen records in their original
order; the JSON sidecar holds the per-class `distribution`, the chosen original `indexes` (sorted), the
per-class labeling probabilities `label_probs` and `split_rule` (see libml/splits.py). Same arguments give
identical files.
"""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from libml import utils  # noqa: E402

utils.quiet_tensorflow()
from absl import flags  # noqa: E402
from absl import logging  # noqa: E402

from libml import splits  # noqa: E402

flags.DEFINE_integer('seed', 0, 'Random seed of the draw (np.random.seed of the original); 0 takes the first images '
                     'of each class (no shuffle). STL-10 with --size=1000: the official fold 0..9.')
flags.DEFINE_integer('size', 0, 'Number of labels, or the head-class count with --lamda / --gamma; with '
                     '--class_probs, optional (it must equal the number drawn).')
flags.DEFINE_float('lamda', 0, 'CADR long tail: labeled imbalance ratio; class k gets ceil(size*lamda^(-k/(K-1))).')
flags.DEFINE_float('gamma', 0, 'Imbalanced SSL: class k gets floor(size*gamma^(-k/(K-1))) labels.')
flags.DEFINE_string('class_probs', None, 'Self-masked MNAR: comma-separated labeling probability of each class.')
flags.DEFINE_bool('disjoint', False, 'With --lamda/--gamma: leave out the images of TARGET\'s unlabeled set '
                  '(TARGET-unlabel.json, made first).')
FLAGS = flags.FLAGS


def main(argv):
    if len(argv) < 3:
        raise utils.UserError('usage: create_split.py --seed=S --size=N [--lamda=L | --gamma=G [--disjoint] | '
                              '--class_probs=...] TARGET FILE.tfrecord [FILE ...]')
    size, meta = splits.create_split(argv[1], argv[2:], FLAGS.seed, FLAGS.size, FLAGS.lamda, FLAGS.gamma,
                                     FLAGS.class_probs, FLAGS.disjoint)
    name = f'{os.path.basename(argv[1])}.{FLAGS.seed}@{size}'
    logging.info('Wrote %s: %d labels, per class %s', splits.split_paths(argv[1], FLAGS.seed, size)[0],
                 len(meta['indexes']), meta['distribution'])
    print(f'train on it with --dataset={name}-1')


if __name__ == '__main__':
    utils.run(main)
