#!/usr/bin/env python
"""Exports the EMA weights of a run's newest checkpoint as a model that classifies raw images.

  python scripts/export.py --run_dir=experiments/fashion_mnist.1@40-1/FixMatch_local [--out=DIR]

Writes DIR/model.keras (Keras 3) and DIR/saved_model/ (TensorFlow SavedModel, `serve` endpoint):
input uint8 images (N, H, W, C), output class probabilities (N, K). DIR defaults to RUN_DIR/export.
  model = keras.models.load_model('DIR/model.keras'); probs = model.predict(uint8_images)
  served = tf.saved_model.load('DIR/saved_model'); probs = served.serve(uint8_images)
"""
import os
import shutil
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from libml import utils  # noqa: E402

utils.quiet_tensorflow()
import keras  # noqa: E402
from absl import flags  # noqa: E402

from libml import train  # noqa: E402

FLAGS = flags.FLAGS


def define_flags():
    """Flags of the command line (defined only when run as a script, so the module imports cleanly)."""
    flags.DEFINE_string('run_dir', None, 'Run directory (holding args.json, tf/ and stats/).')
    flags.DEFINE_string('out', None, 'Output folder (default: RUN_DIR/export).')


def classifier(model, shape):
    """uint8 (N, H, W, C) -> softmax probabilities (N, K): pixels scaled to [-1, 1] as in training."""
    images = keras.Input(shape=shape, dtype='uint8', name='images')
    pixels = keras.layers.Rescaling(2 / 255, offset=-1, dtype='float32', name='to_unit_range')(images)
    probs = keras.layers.Softmax(dtype='float32', name='probabilities')(model(pixels, training=False))
    return keras.Model(images, probs, name=model.name + '_classifier')


def export(run_dir, out=None):
    """Writes out/model.keras and out/saved_model; returns out. Both are written under temporary
    names and renamed into place."""
    _, info, model = train.load_ema_model(run_dir)
    out = out or os.path.join(run_dir, 'export')
    os.makedirs(out, exist_ok=True)
    exported = classifier(model, info.shape)
    with utils.atomic_write(os.path.join(out, 'model.keras')) as tmp:
        exported.save(tmp + '.keras')
        os.replace(tmp + '.keras', tmp)
    saved_model = os.path.join(out, 'saved_model')
    staging = saved_model + '.tmp'
    shutil.rmtree(staging, ignore_errors=True)
    exported.export(staging, format='tf_saved_model', verbose=False)
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
