#!/usr/bin/env python
"""Where the time of the training step goes: the TensorFlow profiler over a few steps, its
per-op self time summed by op type, the top types printed as shares of the profiled time.

  python bench/profile_step.py --filters=16 --repeat=2 --batch=32 --uratio=7   # WRN-16-1, 32 + 224 + 224
  python bench/profile_step.py --step=full --xla     # the whole FixMatch step (XLA: one compiled cluster)

--step=bare profiles forward + backward + SGD update of the model on one fixed batch (what a PyTorch
step of the same network does); --step=full the real training call (in-step views, CTAugment probe
and rates, EMA). Without --xla every TensorFlow op shows by type (Conv2DBackpropFilter, ...); with
--xla the compiled cluster is one op. The last line prints the top op types' shares.
"""
import collections
import json
import os
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from libml import utils  # noqa: E402

utils.quiet_tensorflow()
import tensorflow as tf  # noqa: E402
from absl import flags  # noqa: E402
from tensorflow.python.profiler.internal import _pywrap_profiler_plugin as profiler_tools  # noqa: E402

import common  # noqa: E402
import train_step  # noqa: E402  (its flags: --steps, --repeats, --steps_per_call, --json, --settings)

flags.DEFINE_enum('step', 'bare', ['bare', 'full'], 'bare: forward + backward + update; full: the training call.')
flags.DEFINE_bool('xla', False, 'Compile the step with XLA.')
flags.DEFINE_integer('top', 12, 'Op types to print.')
FLAGS = flags.FLAGS


def op_self_times(logdir: str) -> dict:
    """{op type: self time in microseconds} of the host ops in the profile written to `logdir` (the
    profiler's framework_op_stats table)."""
    spaces = [os.path.join(root, name) for root, _, names in os.walk(logdir) for name in names
              if name.endswith('.xplane.pb')]
    data, ok = profiler_tools.xspace_to_tools_data(spaces, 'framework_op_stats', {})
    if not ok or not data:
        raise utils.UserError('the profiler wrote no readable op statistics; is this TensorFlow built with it?')
    table = json.loads(data.decode() if isinstance(data, bytes) else data)[0]  # a Google DataTable
    column = {c['id']: k for k, c in enumerate(table['cols'])}
    totals = collections.Counter()
    for row in table['rows']:
        cells = [c.get('v') if c else None for c in row['c']]
        if cells[column['host_or_device']] == 'Host':
            totals[cells[column['type']]] += float(cells[column['total_self_time']] or 0)
    return totals


def main(argv):
    del argv
    with tempfile.TemporaryDirectory() as train_dir, tempfile.TemporaryDirectory() as logdir:
        trainer = common.fixmatch_trainer(train_dir, xla=FLAGS.xla)
        if FLAGS.step == 'bare':
            raw = next(iter(trainer.input_stream(0, 1)))
            batch = trainer.step_fn.views(raw, tf.constant(0, tf.int64), replicas=1)
            images = tf.concat([batch['x'], batch['u_weak'], batch['u_strong']], 0)
            step = train_step.bare_step_fn(trainer, images, tf.cast(batch['label'], tf.int32))
            if FLAGS.xla:
                step = tf.function(step.python_function, jit_compile=True)

            def run(count):
                for _ in range(count):
                    out = step()
                return out
        else:
            iterator = iter(trainer.train_dataset(0))

            def run(count):
                for _ in range(count):
                    out = trainer.train_call(iterator, tf.constant(1, tf.int64))
                return out
        tf.nest.map_structure(lambda t: t.numpy(), run(2))  # trace, compile, warm up
        tf.profiler.experimental.start(logdir)
        tf.nest.map_structure(lambda t: t.numpy(), run(FLAGS.steps))
        tf.profiler.experimental.stop()
        totals = op_self_times(logdir)
    idle = totals.pop('IDLE', 0.0)  # the profiler's name for time the op threads waited
    whole = sum(totals.values()) or 1.0
    print(f'{FLAGS.step} step, {"XLA" if FLAGS.xla else "TensorFlow ops"}, {common.images_per_step()} images/step, '
          f'{FLAGS.steps} steps profiled, {whole / 1000 / FLAGS.steps:.1f} ms of op self time per step '
          f'(+ {idle / 1000 / FLAGS.steps:.1f} ms idle)')
    print(f'{"op type":36s} {"ms/step":>9s} {"share":>7s}')
    top = totals.most_common(FLAGS.top)
    for name, us in top:
        print(f'{name:36s} {us / 1000 / FLAGS.steps:9.1f} {100 * us / whole:6.1f}%')
    if FLAGS.json:
        utils.write_json(FLAGS.json, dict(step=FLAGS.step, xla=FLAGS.xla, steps=FLAGS.steps,
                                          ms_per_step={k: v / 1000 / FLAGS.steps for k, v in totals.items()}))
    print('top op types, share of op self time: ' + ', '.join(f'{n} {100 * us / whole:.0f}%' for n, us in top[:5]))


if __name__ == '__main__':
    utils.run(main)
