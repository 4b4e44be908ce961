#!/usr/bin/env python
"""Images/s of the full FixMatch training step on 1 and on 2 replicas, in the same run.

On a machine with two or more GPUs the replicas are GPUs; without, the CPU is split into two
logical devices (the same cores shared: this measures the MirroredStrategy overhead, not a
speed-up). The global batch is the same in both cases, so each of the 2 replicas computes half.

  python bench/scaling.py                          # WRN-28-2, 64 + 448 + 448 images per step
  python bench/scaling.py --filters=16 --repeat=2 --batch=32
The last line prints the ratio 2 replicas / 1 replica.
"""
import os
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from libml import utils  # noqa: E402

utils.quiet_tensorflow()
import tensorflow as tf  # noqa: E402
from absl import flags  # noqa: E402

flags.DEFINE_string('dataset', 'fashion_mnist.1@40-1', 'Training data (converted automatically when offline).')
flags.DEFINE_integer('filters', 32, 'WRN width (32 = WRN-28-2).')
flags.DEFINE_integer('repeat', 4, 'Blocks per WRN stage (4 = WRN-28).')
flags.DEFINE_integer('batch', 64, 'Labeled images per step (global, over the replicas).')
flags.DEFINE_integer('uratio', 7, 'Unlabeled images per labeled image.')
flags.DEFINE_string('augment', 'd.d.cta', 'Views: labeled.weak.strong.')
flags.DEFINE_integer('steps', 5, 'Timed steps per measurement.')
FLAGS = flags.FLAGS


def split_cpu_if_needed():
    """Two logical CPUs when fewer than two GPUs are visible (must run before TensorFlow starts)."""
    if len(tf.config.list_physical_devices('GPU')) < 2:
        cpu = tf.config.list_physical_devices('CPU')[0]
        tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)


def images_per_second(devices):
    import fixmatch
    from libml import settings, train
    with tempfile.TemporaryDirectory() as train_dir:
        values = dict(dataset=FLAGS.dataset, train_dir=train_dir, filters=FLAGS.filters, repeat=FLAGS.repeat,
                      batch=FLAGS.batch, uratio=FLAGS.uratio, augment=FLAGS.augment, devicenum=devices)
        trainer = train.Trainer(fixmatch.FixMatch, settings.resolve(fixmatch.FixMatch.all_params(), values))
        iterator = iter(trainer.train_dataset(0))
        one = tf.constant(1, tf.int64)
        float(trainer.train_call(iterator, one)['losses/xe'])  # compile and warm up
        start = time.perf_counter()
        for _ in range(FLAGS.steps):
            logs = trainer.train_call(iterator, one)
        float(logs['losses/xe'])
        seconds = (time.perf_counter() - start) / FLAGS.steps
        kind = trainer.strategy.extended.worker_devices
    return FLAGS.batch * (1 + 2 * FLAGS.uratio) / seconds, kind


def main(argv):
    del argv
    split_cpu_if_needed()
    one, devices_one = images_per_second(1)
    two, devices_two = images_per_second(2)
    print(f'{"replicas":10s} {"images/s":>10s}  devices')
    print(f'{1:<10d} {one:10.1f}  {", ".join(devices_one)}')
    print(f'{2:<10d} {two:10.1f}  {", ".join(devices_two)}')
    print(f'ratio 2 replicas / 1 replica images/s: {two / one:.3f}')


if __name__ == '__main__':
    utils.run(main)
