#!/usr/bin/env python
"""Images/s of the full FixMatch training step against the bare model step, in the same run.

  full: the real training call: input pipeline (sampling), in the step weak + strong augmentation and
        the CTAugment probe, forward of labeled + weak + strong in one pass, backward, SGD update,
        EMA update, CTAugment rate update;
  bare: forward + backward + SGD update of the same model on one fixed batch of the same size.
Images per step = batch * (1 + 2 * uratio) (960 for the paper's 64 + 448 + 448).

  python bench/train_step.py                      # WRN-28-2, batch 64, uratio 7 (paper step)
  python bench/train_step.py --filters=16 --batch=32 --repeat=1 --settings=float32+xla   # the --local model
  python bench/train_step.py --settings=float32,float32+xla,mixed_bfloat16,mixed_float16+xla
Each setting (precision, +xla for the XLA-compiled model step) is timed as a full step; the first
one is also timed as a bare step. The last line prints full / bare (goal: >= 0.9) and every
setting's images/s as a ratio of the first setting's.

Start-up, per setting: the seconds from the start of the process to the import of TensorFlow
(imports), to a built trainer (data loading, model, optimizer, run directory), and of the first
training call (graph tracing, XLA compilation, the first step), also as a number of steady steps.
"""
import time

PROCESS_START = time.perf_counter()
import os  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from libml import utils  # noqa: E402

utils.quiet_tensorflow()
import tensorflow as tf  # noqa: E402
from absl import flags  # noqa: E402

IMPORTED = time.perf_counter()

import common  # noqa: E402

flags.DEFINE_integer('steps', 6, 'Timed steps per measurement.')
flags.DEFINE_integer('repeats', 2, 'Measurements of each kind (alternating); the best one counts.')
flags.DEFINE_integer('steps_per_call', 1, 'Training steps per compiled call.')
flags.DEFINE_string('json', None, 'Also write the figures to this JSON file.')
flags.DEFINE_list('settings', ['float32'], 'Settings to time: precision[+xla], precision in float32, mixed_float16, '
                  'mixed_bfloat16; the first is the baseline.')
FLAGS = flags.FLAGS


def make_trainer(train_dir, setting):
    precision, _, xla = setting.partition('+')
    return common.fixmatch_trainer(train_dir, steps_per_call=FLAGS.steps_per_call, precision=precision,
                                   xla=xla == 'xla')


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


def full_step_seconds(trainer):
    """(best seconds per step of the real training call over FLAGS.repeats measurements, seconds of the
    first call: tracing, compilation and one step)."""
    iterator = iter(trainer.train_dataset(0))
    calls = max(1, FLAGS.steps // FLAGS.steps_per_call)

    def full(steps):
        for _ in range(calls):
            out = trainer.train_call(iterator, tf.constant(FLAGS.steps_per_call, tf.int64))
        return out
    start = time.perf_counter()
    full(1)  # trace, compile and warm up
    first = time.perf_counter() - start
    return min(timed(full, calls * FLAGS.steps_per_call) for _ in range(FLAGS.repeats)), first


def bare_step_seconds(trainer):
    """Best seconds per step of forward + backward + update on one fixed batch of the same images."""
    raw = next(iter(trainer.input_stream(0, 1)))
    batch = trainer.step_fn.views(raw, tf.constant(0, tf.int64), replicas=1)
    images = tf.concat([batch['x'], batch['u_weak'], batch['u_strong']], 0)
    bare_step = bare_step_fn(trainer, images, tf.cast(batch['label'], tf.int32))

    def bare(steps):
        for _ in range(steps):
            out = bare_step()
        return out
    bare(1)
    return min(timed(bare, FLAGS.steps) for _ in range(FLAGS.repeats))


def main(argv):
    del argv
    per_step = common.images_per_step()
    seconds, bare, startup = {}, None, {}
    for setting in FLAGS.settings:
        with tempfile.TemporaryDirectory() as train_dir:
            start = time.perf_counter()
            trainer = make_trainer(train_dir, setting)
            built = time.perf_counter() - start
            seconds[setting], first = full_step_seconds(trainer)
            startup[setting] = dict(build_s=built, first_call_s=first)
            if bare is None:
                bare = bare_step_seconds(trainer)
                name = trainer.model.name
                params = trainer.model.count_params() / 1e6
    device = (tf.config.list_logical_devices('GPU') or tf.config.list_logical_devices('CPU'))[0].device_type
    baseline = FLAGS.settings[0]
    print(f'{name} ({params:.2f} M parameters), {per_step} images/step, augment {FLAGS.augment}, {device}, '
          f'{os.cpu_count()} CPUs, {FLAGS.steps_per_call} step(s) per call')
    print(f'{"step":44s} {"images/s":>10s} {"ms/step":>9s}')
    print(f'{"bare forward+backward+update (" + baseline + ")":44s} {per_step / bare:10.1f} {1000 * bare:9.1f}')
    for setting, t in seconds.items():
        print(f'{"full FixMatch step, " + setting:44s} {per_step / t:10.1f} {1000 * t:9.1f}')
    imports = IMPORTED - PROCESS_START
    print(f'start-up: imports {imports:.1f} s; then per setting: build (data, model, run directory) and the first '
          f'call (tracing, compilation, one step)')
    for setting, s in startup.items():
        print(f'  {setting:40s} build {s["build_s"]:5.1f} s, first call {s["first_call_s"]:6.1f} s '
              f'= {s["first_call_s"] / seconds[setting]:.0f} steady steps')
    ratios = ', '.join(f'{setting} {seconds[baseline] / t:.2f}x' for setting, t in seconds.items())
    if FLAGS.json:
        utils.write_json(FLAGS.json, dict(model=name, parameters_m=params, images_per_step=per_step, device=device,
                                          bare_ms=1000 * bare, full_ms={k: 1000 * v for k, v in seconds.items()},
                                          steps_per_second={k: 1 / v for k, v in seconds.items()},
                                          startup=dict(imports_s=imports, **startup)))
    print(f'ratio full / bare images/s ({baseline}): {bare / seconds[baseline]:.3f}; vs {baseline}: {ratios}')


if __name__ == '__main__':
    utils.run(main)
