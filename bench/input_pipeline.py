"""Throughput of the training input: FixMatch's raw input stream, plain and with weak augmentation of
every view as the training step applies it.

Times, in the same run, on the decoded images of a training dataset (Fashion-MNIST by default,
converted automatically):
- none: SSLData.input_stream, the raw uint8 images and labels of each step (gathered by index);
- weak: the same stream followed by the weak view ('d', sample + apply as in libml/step.py) of
  x, u_weak and u_strong (FixMatch's input with weak augmentation on every view);
- as context, reading the base training records and decoding their PNGs (TFRecordDataset + decode).
A step counts batch + 2 * uratio * batch images (64 + 2 * 448 = 960 by default). Each measurement
warms up, then times --steps steps; the two streams alternate for --repeats rounds and the best
round counts (the machine is shared and noisy). The last line is the ratio weak / none in images/s.

    python bench/input_pipeline.py --steps=300 --repeats=3
"""
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from libml import utils  # noqa: E402

utils.quiet_tensorflow()

from absl import flags  # noqa: E402
import tensorflow as tf  # noqa: E402

from libml import data  # noqa: E402
from libml import keys  # noqa: E402
from libml import records  # noqa: E402
from libml import views  # noqa: E402

FLAGS = flags.FLAGS
flags.DEFINE_string('dataset', 'fashion_mnist.1@40-1', 'Training dataset name (created if missing and offline).')
flags.DEFINE_integer('batch', 64, 'Labeled images per step.')
flags.DEFINE_integer('uratio', 7, 'Unlabeled images per labeled image.')
flags.DEFINE_integer('steps', 300, 'Timed steps per measurement.')
flags.DEFINE_integer('warmup', 20, 'Untimed steps before each measurement.')
flags.DEFINE_integer('repeats', 3, 'Rounds of measurements; the best one is reported.')


def weak_views(info):
    """fn(raw element) -> the three weak views of FixMatch's input (x, u_weak, u_strong)."""
    weak = views.make_view('d', info)

    def augment(raw):
        seed = tf.constant([0, 0], tf.int64)
        out = {}
        for name, key in (('x', keys.X_IMAGES), ('u_weak', keys.U_IMAGES), ('u_strong', keys.U_IMAGES)):
            images = tf.cast(raw[key], tf.float32) / 255
            out[name] = weak.apply(images, weak.sample(images.shape[0], seed))
        return out
    return augment


def stream_seconds(ssl, augment, steps, warmup):
    """Seconds that `steps` steps of the input stream (then `augment`, if any) take after `warmup` untimed ones."""
    stream = ssl.input_stream(FLAGS.batch, FLAGS.uratio * FLAGS.batch, seed=0, end_step=warmup + steps)
    if augment is not None:
        stream = stream.map(augment, data.AUTOTUNE)
    batches = iter(stream)
    for _ in range(warmup):
        next(batches)
    start = time.perf_counter()
    for _ in range(steps):
        next(batches)
    return time.perf_counter() - start


def decode_seconds(path, channels, batch=1024):
    """(seconds, images) of one pass over a record file: read, parse and decode every PNG."""
    ds = tf.data.TFRecordDataset(path).map(lambda s: records.parse_image(s, channels)[0], data.AUTOTUNE)
    ds = ds.batch(batch).prefetch(data.AUTOTUNE)
    next(iter(ds.take(1)))  # warm-up: builds the pipeline and the decode function
    start = time.perf_counter()
    images = sum(int(images.shape[0]) for images in ds)
    return time.perf_counter() - start, images


def main(_):
    ssl = data.load(FLAGS.dataset)
    info = ssl.info
    per_step = FLAGS.batch + 2 * FLAGS.uratio * FLAGS.batch
    streams = {'none': None, 'weak': weak_views(info)}
    best = {name: float('inf') for name in streams}
    decode_best, decoded = float('inf'), 0
    train_path = records.record_path(info.name, 'train')
    for _ in range(FLAGS.repeats):
        for name, augment in streams.items():
            best[name] = min(best[name], stream_seconds(ssl, augment, FLAGS.steps, FLAGS.warmup))
        seconds, decoded = decode_seconds(train_path, info.shape[2])
        decode_best = min(decode_best, seconds)
    rate = {name: FLAGS.steps * per_step / seconds for name, seconds in best.items()}

    print(f'{ssl.name}: {"x".join(map(str, info.shape))} images, {FLAGS.batch} labeled + 2 x '
          f'{FLAGS.uratio * FLAGS.batch} unlabeled = {per_step} images/step, {FLAGS.steps} timed steps, '
          f'best of {FLAGS.repeats}, {os.cpu_count()} CPUs visible')
    print(f'{"input":<52} {"images/s":>10} {"ms/step":>8}')
    print(f'{"records + PNG decode (" + os.path.basename(train_path) + ")":<52} {decoded / decode_best:>10.0f} '
          f'{"-":>8}')
    for name, label in (('none', 'input_stream (raw images)'), ('weak', 'input_stream + weak view of x, u_weak, u_strong')):
        print(f'{label:<52} {rate[name]:>10.0f} {1000 * best[name] / FLAGS.steps:>8.2f}')
    print(f'ratio weak-augmented / no-augmentation: {rate["weak"] / rate["none"]:.2f}')


if __name__ == '__main__':
    utils.run(main)
