#!/usr/bin/env python
"""Evaluates the EMA weights of a run's newest checkpoint on a test set, prints every metric and
writes them as JSON.

  python scripts/evaluate.py --run_dir=experiments/fashion_mnist.1@40-1/FixMatch_local
  python scripts/evaluate.py --run_dir=RUN --dataset=fashion_mnist      # another dataset's test set

Metrics (percent unless stated): accuracy, balanced_accuracy (mean per-class accuracy),
worst_class_accuracy, gm_accuracy (geometric mean of per-class accuracies, CADR), cross_entropy
(nats), ece (expected calibration error, 15 bins), per_class, confusion (rows = true class).
Written to RUN_DIR/stats/evaluation_<dataset>.json, floats rounded to 4 decimals, with the checkpoint
file evaluated (`checkpoint`), its training step (`step`) and thousands of labeled images (`kimg`).
Any --arch: the model is rebuilt from args.json (arch, input_size; libml/backbones.py) with no weights downloaded or
read, the checkpoint gives them; arch=model (Algorithm.run(model=...)) from the run directory's model.keras.
"""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from libml import utils  # noqa: E402

utils.quiet_tensorflow()
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402
from absl import flags  # noqa: E402

from libml import data  # noqa: E402
from libml import metrics  # noqa: E402
from libml import state  # noqa: E402

FLAGS = flags.FLAGS


def define_flags():
    """Flags of the command line (defined only when run as a script, so the module imports cleanly)."""
    flags.DEFINE_string('run_dir', None, 'Run directory (holding args.json, tf/ and stats/).')
    flags.DEFINE_string('dataset', None, 'Dataset whose test set to evaluate on (default: the run\'s own).')
    flags.DEFINE_integer('batch', 500, 'Images per evaluation batch.')


DIGITS = 4  # decimals of the floats written


def checkpoint_step(path):
    """Training step stored in checkpoint `path` (the `step` variable), or None when it has none."""
    reader = tf.train.load_checkpoint(path)
    key = 'step/.ATTRIBUTES/VARIABLE_VALUE'
    return int(reader.get_tensor(key)) if reader.has_tensor(key) else None


def evaluate(run_dir, dataset=None, batch=500):
    """Metrics dict of the run's EMA model on the test set of `dataset` (default: the run's), with the
    checkpoint file (`checkpoint`), its step and kimg."""
    saved, info, model, checkpoint = state.load_ema_model(run_dir)
    dataset = dataset or saved['dataset']
    test_info, test = data.load_test_set(dataset)
    if test_info.nclass != info.nclass or tuple(test_info.shape) != tuple(info.shape):
        raise utils.UserError(f'{dataset} has {test_info.nclass} classes of {test_info.shape} images but the run was '
                              f'trained on {info.nclass} classes of {info.shape}; pick a matching --dataset')
    predict = tf.function(lambda x: model(x, training=False))
    images = tf.data.Dataset.from_tensor_slices(test.images).batch(batch)
    logits = np.concatenate([predict(data.to_unit_range(tf.cast(x, tf.float32) / 255)).numpy() for x in images])
    result = metrics.classification_metrics(logits, test.labels, info.nclass)
    step = checkpoint_step(checkpoint)
    kimg = None if step is None else step * saved['batch'] / 1024
    result.update(dataset=dataset, images=int(len(test)), checkpoint=os.path.abspath(checkpoint), step=step,
                  kimg=kimg)
    return result


def main(argv):
    if len(argv) > 1 or not FLAGS.run_dir:
        raise utils.UserError('usage: evaluate.py --run_dir=RUN_DIR [--dataset=NAME]')
    result = evaluate(FLAGS.run_dir, FLAGS.dataset, FLAGS.batch)
    where = '' if result['step'] is None else f' (step {result["step"]}, kimg {result["kimg"]:g})'
    print(f'checkpoint {utils.shell_path(result["checkpoint"])}{where} on the {result["images"]} test images of '
          f'{result["dataset"]}')
    for name in ('accuracy', 'balanced_accuracy', 'worst_class_accuracy', 'gm_accuracy', 'cross_entropy', 'ece'):
        print(f'{name:22s} {result[name]:8.3f}')
    print('per_class              ' + ' '.join('-' if a is None else f'{a:.1f}' for a in result['per_class']))
    path = os.path.join(FLAGS.run_dir, 'stats', f'evaluation_{result["dataset"]}.json')
    utils.write_json(path, utils.round_floats(result, DIGITS))
    print(f'wrote {path}')


if __name__ == '__main__':
    define_flags()
    utils.run(main)
