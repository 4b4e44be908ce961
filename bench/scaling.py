#!/usr/bin/env python
"""Images/s of the full FixMatch training step on 1 replica and on all visible GPUs (2 at least), in the same run.

On a machine with two or more GPUs the replicas are GPUs; without, the CPU is split into two
logical devices (the same cores shared: this measures the MirroredStrategy overhead, not a
speed-up). The global batch is the same in both cases, so each of the 2 replicas computes half.

  python bench/scaling.py                          # WRN-28-2, 64 + 448 + 448 images per step
  python bench/scaling.py --filters=16 --repeat=1 --batch=32
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

import common  # noqa: E402

flags.DEFINE_integer('steps', 5, 'Timed steps per measurement.')
flags.DEFINE_string('json', None, 'Also write the figures to this JSON file.')
FLAGS = flags.FLAGS


def split_cpu_if_needed():
    """Two logical CPUs when fewer than two GPUs are visible (must run before TensorFlow starts)."""
    if len(tf.config.list_physical_devices('GPU')) < 2:
        cpu = tf.config.list_physical_devices('CPU')[0]
        tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)


def images_per_second(devices):
    with tempfile.TemporaryDirectory() as train_dir:
        trainer = common.fixmatch_trainer(train_dir, devicenum=devices)
        iterator = iter(trainer.train_dataset(0))
        one = tf.constant(1, tf.int64)
        float(trainer.train_call(iterator, one)['losses/xe'])  # compile and warm up
        start = time.perf_counter()
        for _ in range(FLAGS.steps):
            logs = trainer.train_call(iterator, one)
        float(logs['losses/xe'])
        seconds = (time.perf_counter() - start) / FLAGS.steps
        strategy = trainer.strategy
        kind = strategy.extended.worker_devices if strategy.num_replicas_in_sync > 1 else ['default device']
    return common.images_per_step() / seconds, kind


def main(argv):
    del argv
    split_cpu_if_needed()
    many = max(2, len(tf.config.list_logical_devices('GPU')))  # all visible GPUs, or 2 logical CPUs
    one, devices_one = images_per_second(1)
    two, devices_two = images_per_second(many)
    print(f'{"replicas":10s} {"images/s":>10s}  devices')
    print(f'{1:<10d} {one:10.1f}  {", ".join(devices_one)}')
    print(f'{many:<10d} {two:10.1f}  {", ".join(devices_two)}')
    if FLAGS.json:
        utils.write_json(FLAGS.json, {'replicas': [1, many], 'images_per_second': [one, two],
                                      'steps_per_second': [one / common.images_per_step(), two / common.images_per_step()],
                                      'devices': [devices_one, devices_two]})
    print(f'ratio {many} replicas / 1 replica images/s: {two / one:.3f}')


if __name__ == '__main__':
    utils.run(main)
