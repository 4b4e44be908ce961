#!/usr/bin/env python
"""Exports the EMA weights of a run's newest checkpoint as a model that classifies the dataset's raw images.

  python scripts/export.py --run_dir=experiments/fashion_mnist.1@40-1/FixMatch_local [--out=DIR]

Writes DIR/model.keras (Keras 3) and DIR/saved_model/ (TensorFlow SavedModel). DIR defaults to RUN_DIR/export.
Input: the dataset's raw uint8 images (N, H, W, C) in 0..255, as the original files hold them: for MNIST and
Fashion-MNIST (N, 28, 28, 1) or (N, 28, 28), padded inside the model with a 2-pixel black border to the
32x32 training images, as the converter did; other datasets as converted. Output: class probabilities (N, K).
  model = keras.models.load_model('DIR/model.keras'); probs = model.predict(uint8_images)  # (N, H, W, C)
  probs = model(uint8_images_hw)   # a direct call also takes one-channel images as (N, H, W)
  served = tf.saved_model.load('DIR/saved_model'); probs = served.serve(uint8_images)
  probs = served.serve_hw(uint8_images_hw)   # one-channel datasets: (N, H, W)
Any --arch (libml/backbones.py): the model resizes and scales the images itself, so the export takes the same raw
images; a keras: or hub: model.keras holds the registered layers of libml/backbones.py (import it, and keras_hub for
hub:, before keras.models.load_model).
"""
import os
import shutil
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from libml import utils  # noqa: E402

utils.quiet_tensorflow()
import keras  # noqa: E402
import tensorflow as tf  # noqa: E402
from absl import flags  # noqa: E402

from libml import registry  # noqa: E402
from libml import state  # noqa: E402

DIGIT_BORDER = 2  # pixels of black border the converter adds around 28x28 MNIST / Fashion-MNIST images

FLAGS = flags.FLAGS


def define_flags():
    """Flags of the command line (defined only when run as a script, so the module imports cleanly)."""
    flags.DEFINE_string('run_dir', None, 'Run directory (holding args.json, tf/ and stats/).')
    flags.DEFINE_string('out', None, 'Output folder (default: RUN_DIR/export).')


def raw_shape(info):
    """(height, width, channels) of the dataset's images before conversion, and the (top/bottom, left/right)
    zero padding the converter added to reach info.shape (28x28 digits: 2 pixels each side)."""
    spec = registry.BUILTIN.get(info.name)
    if spec is not None and getattr(spec.loader, 'func', spec.loader) is registry.load_idx_digits:
        height, width, channels = info.shape
        return (height - 2 * DIGIT_BORDER, width - 2 * DIGIT_BORDER, channels), (DIGIT_BORDER, DIGIT_BORDER)
    return tuple(info.shape), (0, 0)


def classifier(model, shape, padding=(0, 0)):
    """uint8 (N, H, W, C) -> softmax probabilities (N, K): images zero-padded by `padding` (pixels at top and
    bottom, left and right) to the training shape, then scaled to [-1, 1] as in training."""
    images = keras.Input(shape=shape, dtype='uint8', name='images')
    pixels = keras.layers.Rescaling(1.0, dtype='float32', name='to_float')(images)
    if any(padding):
        pixels = keras.layers.ZeroPadding2D(padding, dtype='float32', name='pad_to_training_shape')(pixels)
    pixels = keras.layers.Rescaling(2 / 255, offset=-1, dtype='float32', name='to_unit_range')(pixels)
    probs = keras.layers.Softmax(dtype='float32', name='probabilities')(model(pixels, training=False))
    return keras.Model(images, probs, name=model.name + '_classifier')


def write_saved_model(exported, shape, path):
    """SavedModel with `serve` (uint8 (N, H, W, C)) and, for one channel, `serve_hw` (uint8 (N, H, W))."""
    archive = keras.export.ExportArchive()
    archive.track(exported)
    archive.add_endpoint('serve', lambda images: exported(images, training=False),
                         input_signature=[tf.TensorSpec((None, *shape), tf.uint8, name='images')])
    if shape[-1] == 1:
        archive.add_endpoint('serve_hw', lambda images: exported(images[..., None], training=False),
                             input_signature=[tf.TensorSpec((None, *shape[:2]), tf.uint8, name='images')])
    archive.write_out(path, verbose=False)


def export(run_dir, out=None):
    """Writes out/model.keras and out/saved_model; returns out. Both are written under temporary
    names and renamed into place."""
    _, info, model, _ = state.load_ema_model(run_dir)
    out = out or os.path.join(run_dir, 'export')
    os.makedirs(out, exist_ok=True)
    shape, padding = raw_shape(info)
    exported = classifier(model, shape, padding)
    with utils.atomic_write(os.path.join(out, 'model.keras')) as tmp:
        exported.save(tmp + '.keras')
        os.replace(tmp + '.keras', tmp)
    saved_model = os.path.join(out, 'saved_model')
    staging = saved_model + '.tmp'
    shutil.rmtree(staging, ignore_errors=True)
    write_saved_model(exported, shape, staging)
    shutil.rmtree(saved_model, ignore_errors=True)
    os.replace(staging, saved_model)
    return out


def main(argv):
    if len(argv) > 1 or not FLAGS.run_dir:
        raise utils.UserError('usage: export.py --run_dir=RUN_DIR [--out=DIR]')
    print(f'wrote {export(FLAGS.run_dir, FLAGS.out)}')


if __name__ == '__main__':
    define_flags()
    utils.run(main)
