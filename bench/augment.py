"""Throughput of the batched strong views against a per-image loop of the same views.

For each image size and view ('rac': weak + RandAugment + cutout; 'cta': weak + CTAugment + cutout, the
FixMatch strong view), times view.sample + view.apply (libml/views.py):
- batched: one tf.function call on the whole (batch, H, W, 3) tensor (the partitioned engine);
- per image: a tf.function running tf.map_fn over the images, each as a batch of 1 with its own seed;
- with --xla, also the XLA path (apply(xla=True) under tf.function(jit_compile=True)).
Prints images/s and, as the last line, the speed-up ratios batched / per-image.

    python bench/augment.py --batch=256 --repeats=5 --sizes=32,96
"""
import os
import sys
import time
import types

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from libml import utils  # noqa: E402

utils.quiet_tensorflow()

from absl import app, flags  # noqa: E402
import tensorflow as tf  # noqa: E402

from cta import CTAugment  # noqa: E402
from libml import views  # noqa: E402

FLAGS = flags.FLAGS
flags.DEFINE_integer('batch', 256, 'Images per batch.')
flags.DEFINE_integer('repeats', 5, 'Timed calls per measurement (after one warm-up call).')
flags.DEFINE_list('sizes', ['32', '96'], 'Square image sizes to time (3 channels).')
flags.DEFINE_string('json', None, 'Also write the batched images/s to this JSON file.')
flags.DEFINE_bool('xla', False, 'Also time the XLA path (jit_compile=True; compiling takes a while).')
VIEWS = {'RA+cutout': 'rac', 'CTA strong': 'cta'}


def batched(view, xla=False):
    def run(images, seed):
        return view.apply(images, view.sample(images.shape[0], seed), xla=xla)
    return tf.function(run, autograph=False, jit_compile=xla)


def per_image(view):
    """The view applied image by image (batches of 1, one seed each) with tf.map_fn."""
    def one(args):
        image, seed = args
        return view.apply(image[None], view.sample(1, seed))[0]

    def run(images, seed):
        seeds = tf.random.experimental.stateless_split(seed, tf.shape(images)[0])
        return tf.map_fn(one, (images, seeds), fn_output_signature=tf.float32)
    return tf.function(run, autograph=False)


def images_per_second(fn, images, repeats):
    """Calls fn once to trace and warm up, then `repeats` times; returns images / second."""
    seed = tf.constant([0, 0], tf.int64)
    fn(images, seed).numpy()
    start = time.perf_counter()
    for repeat in range(repeats):
        fn(images, seed + repeat).numpy()
    return repeats * int(images.shape[0]) / (time.perf_counter() - start)


def main(_):
    cta = CTAugment()
    print(f'batch {FLAGS.batch}, {FLAGS.repeats} repeats, {os.cpu_count()} CPUs visible')
    print(f'{"view":<12} {"size":>9} {"batched img/s":>14} {"per-image img/s":>16} {"ratio":>7}'
          + (f' {"XLA img/s":>10}' if FLAGS.xla else ''))
    ratios, rates, xla_rates = [], {}, {}
    for size in (int(s) for s in FLAGS.sizes):
        info = types.SimpleNamespace(name='cifar10', shape=(size, size, 3), flip=True, pad=4)
        images = tf.round(tf.random.stateless_uniform([FLAGS.batch, size, size, 3], [size, 1]) * 255) / 255
        for name, code in VIEWS.items():
            view = views.make_view(code, info, cta)
            fast = images_per_second(batched(view), images, FLAGS.repeats)
            single = images_per_second(per_image(view), images, FLAGS.repeats)
            ratios.append(f'{name}@{size}px {fast / single:.1f}x')
            rates[f'{name} {size}x{size}x3'] = fast
            xla = ''
            if FLAGS.xla:
                xla_rates[f'{name} {size}x{size}x3'] = images_per_second(batched(view, True), images, FLAGS.repeats)
                xla = f' {xla_rates[f"{name} {size}x{size}x3"]:>10.0f}'
            print(f'{name:<12} {f"{size}x{size}x3":>9} {fast:>14.0f} {single:>16.0f} {fast / single:>6.1f}x{xla}',
                  flush=True)
    if FLAGS.json:
        figures = {'images_per_second': rates, 'batch': FLAGS.batch}
        if FLAGS.xla:
            figures['xla_images_per_second'] = xla_rates
        utils.write_json(FLAGS.json, figures)
    print('speed-up batched/per-image: ' + ', '.join(ratios))


if __name__ == '__main__':
    app.run(main)
