"""Throughput of the batched strong views against a per-image loop of the same ops.

For each image size and view (RandAugment + cutout, CTAugment strong view), times
- batched: one tf.function call on the whole (batch, H, W, C) tensor;
- per image: a tf.function running tf.map_fn over the images, each as a batch of 1 with its own seed.
Prints images/s for both and, as the last line, the speed-up ratios batched / per-image.

    python bench/augment.py --batch=256 --repeats=5 --sizes=32,96
"""
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from libml import utils  # noqa: E402

utils.quiet_tensorflow()

from absl import app, flags  # noqa: E402
import tensorflow as tf  # noqa: E402

from cta import CTAugment  # noqa: E402
from libml import augment  # noqa: E402

FLAGS = flags.FLAGS
flags.DEFINE_integer('batch', 256, 'Images per batch.')
flags.DEFINE_integer('repeats', 5, 'Timed calls per measurement (after one warm-up call).')
flags.DEFINE_list('sizes', ['32', '96'], 'Square image sizes to time (3 channels).')


def per_image(view):
    """view(images, seed) applied image by image (batches of 1, one seed each) with tf.map_fn."""
    def run(images, seed):
        seeds = tf.random.experimental.stateless_split(seed, tf.shape(images)[0])
        return tf.map_fn(lambda args: view(args[0][None], args[1])[0], (images, seeds),
                         fn_output_signature=tf.float32)
    return run


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
    views = {'RA+cutout': lambda x, s: augment.randaugment(x, s, with_cutout=True),
             'CTA strong': cta.strong}
    print(f'batch {FLAGS.batch}, {FLAGS.repeats} repeats, {os.cpu_count()} CPUs visible')
    print(f'{"view":<12} {"size":>9} {"batched img/s":>14} {"per-image img/s":>16} {"ratio":>7}')
    ratios = []
    for size in (int(s) for s in FLAGS.sizes):
        images = tf.random.stateless_uniform([FLAGS.batch, size, size, 3], [size, 1])
        for name, view in views.items():
            batched_fn = tf.function(view, autograph=False)
            single_fn = tf.function(per_image(view), autograph=False)
            batched = images_per_second(batched_fn, images, FLAGS.repeats)
            single = images_per_second(single_fn, images, FLAGS.repeats)
            ratios.append(f'{name}@{size}px {batched / single:.1f}x')
            print(f'{name:<12} {f"{size}x{size}x3":>9} {batched:>14.0f} {single:>16.0f} '
                  f'{batched / single:>6.1f}x', flush=True)
    print('speed-up batched/per-image: ' + ', '.join(ratios))


if __name__ == '__main__':
    app.run(main)
