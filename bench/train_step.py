#!/usr/bin/env python
"""Images/s of the full FixMatch training step against the bare model step, in the same run.

  full: the real training call: input pipeline (sampling, weak + strong augmentation, CTAugment
        probe), forward of labeled + weak + strong in one pass, backward, SGD update, EMA update,
        CTAugment rate update;
  bare: forward + backward + SGD update of the same model on one fixed batch of the same size.
Images per step = batch * (1 + 2 * uratio) (960 for the paper's 64 + 448 + 448).

  python bench/train_step.py                      # WRN-28-2, batch 64, uratio 7 (paper step)
  python bench/train_step.py --filters=16 --batch=32 --repeat=2   # the --local model
The last line prints the ratio full / bare (goal: >= 0.9).
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

import fixmatch  # noqa: E402
from libml import settings  # noqa: E402
from libml import train  # noqa: E402

flags.DEFINE_string('dataset', 'fashion_mnist.1@40-1', 'Training data (converted automatically when offline).')
flags.DEFINE_integer('filters', 32, 'WRN width (32 = WRN-28-2).')
flags.DEFINE_integer('repeat', 4, 'Blocks per WRN stage (4 = WRN-28).')
flags.DEFINE_integer('batch', 64, 'Labeled images per step.')
flags.DEFINE_integer('uratio', 7, 'Unlabeled images per labeled image.')
flags.DEFINE_string('augment', 'd.d.cta', 'Views: labeled.weak.strong.')
flags.DEFINE_integer('steps', 6, 'Timed steps per measurement.')
flags.DEFINE_integer('repeats', 2, 'Measurements of each kind (alternating); the best one counts.')
flags.DEFINE_integer('steps_per_call', 1, 'Training steps per compiled call.')
FLAGS = flags.FLAGS


def make_trainer(train_dir):
    values = dict(dataset=FLAGS.dataset, train_dir=train_dir, filters=FLAGS.filters, repeat=FLAGS.repeat,
                  batch=FLAGS.batch, uratio=FLAGS.uratio, augment=FLAGS.augment, steps_per_call=FLAGS.steps_per_call)
    return train.Trainer(fixmatch.FixMatch, settings.resolve(fixmatch.FixMatch.all_params(), values))


def bare_step_fn(trainer, images, labels):
    """forward + backward + SGD update on a fixed batch (cross-entropy on the labeled part)."""
    model, optimizer = trainer.model, trainer.optimizer

    @tf.function
    def step():
        with tf.GradientTape() as tape:
            logits = model(images, training=True)
            loss = tf.reduce_mean(tf.nn.sparse_softmax_cross_entropy_with_logits(labels, logits[:len(labels)]))
        variables = model.trainable_variables
        optimizer.apply_gradients(zip(tape.gradient(loss, variables), variables))
        return loss
    return step


def timed(fn, steps):
    """Seconds per step of fn(steps) (fn returns something to wait on)."""
    start = time.perf_counter()
    result = fn(steps)
    tf.nest.map_structure(lambda t: t.numpy(), result)
    return (time.perf_counter() - start) / steps


def main(argv):
    del argv
    with tempfile.TemporaryDirectory() as train_dir:
        trainer = make_trainer(train_dir)
        iterator = iter(trainer.train_dataset(0))
        calls = max(1, FLAGS.steps // FLAGS.steps_per_call)

        def full(steps):
            for _ in range(calls):
                out = trainer.train_call(iterator, tf.constant(FLAGS.steps_per_call, tf.int64))
            return out

        batch = next(iter(trainer.data.train_stream(FLAGS.batch, FLAGS.uratio, trainer.labeled_views,
                                                    trainer.unlabeled_views, end_step=1)))
        images = tf.concat([batch['x'], batch['u_weak'], batch['u_strong']], 0)
        labels = tf.cast(batch['label'], tf.int32)
        bare_step = bare_step_fn(trainer, images, labels)

        def bare(steps):
            for _ in range(steps):
                out = bare_step()
            return out

        per_step = images.shape[0]
        full(1), bare(1)  # compile and warm up
        best = {'full': float('inf'), 'bare': float('inf')}
        for _ in range(FLAGS.repeats):
            best['full'] = min(best['full'], timed(full, calls * FLAGS.steps_per_call))
            best['bare'] = min(best['bare'], timed(bare, FLAGS.steps))
    device = (tf.config.list_logical_devices('GPU') or tf.config.list_logical_devices('CPU'))[0].device_type
    print(f'{trainer.model.name} ({trainer.model.count_params() / 1e6:.2f} M parameters), {per_step} images/step, '
          f'augment {FLAGS.augment}, {device}, {os.cpu_count()} CPUs')
    print(f'{"step":40s} {"images/s":>10s} {"ms/step":>9s}')
    for name, label in (('bare', 'bare forward+backward+update'), ('full', 'full FixMatch step (pipeline+aug+EMA)')):
        print(f'{label:40s} {per_step / best[name]:10.1f} {1000 * best[name]:9.1f}')
    print(f'ratio full / bare images/s: {best["bare"] / best["full"]:.3f}')


if __name__ == '__main__':
    utils.run(main)
