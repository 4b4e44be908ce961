#!/usr/bin/env python
"""The full FixMatch training step with other model sources against WRN-28-2, at the same batch, in one run.

  python bench/archs.py                                  # WRN-28-2, keras:ResNet50V2, a ViT-Ti/4; batch 64, uratio 7
  python bench/archs.py --batch=16 --steps=2 --repeats=1    # a 2-core CPU (the ViT's step is seconds there)

Every model trains the same step (input pipeline, weak + strong augmentation in the step, one forward
of labeled + weak + strong, backward, SGD update, EMA, CTAugment) on the same images (--dataset, by
default Fashion-MNIST 28 x 28 x 1). The foreign models resize the images inside the model to
--input_size (32 by default) and repeat the one channel to three (libml/backbones.py); WRN-28-2 trains at
the dataset's size. The ViT is a KerasHub ViTBackbone built from its configuration (no download): ViT-Ti
(12 blocks, width 192, 3 heads, MLP 768) with 4 x 4 patches, saved as a preset folder and trained as
--arch=hub:<folder>, the way a user's local preset is. The last line prints each model's images/s as a
ratio of the first one's (WRN-28-2), measured in the same process.
"""
import os
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import train_step  # noqa: E402  (its flags: --steps, --repeats, --steps_per_call, and bench/common.py's)
from libml import utils  # noqa: E402

import common  # noqa: E402
from absl import flags  # noqa: E402

flags.DEFINE_list('archs', ['wrn', 'keras:ResNet50V2', 'vit_ti4'], 'Models to time: any --arch value, or vit_ti4 '
                  '(the ViT-Ti/4 built here); the first is the baseline.')
flags.DEFINE_integer('input_size', 32, 'Image size of the keras: and hub: models (resized inside the model).')
FLAGS = flags.FLAGS

VIT_TI4 = dict(patch_size=4, num_layers=12, num_heads=3, hidden_dim=192, mlp_dim=768)


def save_vit(folder, size):
    """A ViT-Ti/4 for size x size RGB images, random weights, saved as a KerasHub preset folder."""
    import keras_hub
    backbone = keras_hub.models.ViTBackbone(image_shape=(size, size, 3), **VIT_TI4)
    backbone.save_to_preset(folder)
    return folder


def arch_settings(arch, folder):
    """The training settings of one timed model."""
    if arch == 'vit_ti4':
        return dict(arch='hub:' + save_vit(os.path.join(folder, 'vit_ti4'), FLAGS.input_size), input_size=0)
    if arch.startswith(('keras:', 'hub:')):
        return dict(arch=arch, input_size=FLAGS.input_size)
    return dict(arch=arch)


def main(argv):
    del argv
    per_step = common.images_per_step()
    rows = []
    for arch in FLAGS.archs:
        with tempfile.TemporaryDirectory() as train_dir:
            trainer = common.fixmatch_trainer(train_dir, steps_per_call=FLAGS.steps_per_call,
                                              **arch_settings(arch, train_dir))
            seconds, first = train_step.full_step_seconds(trainer)
            rows.append((arch, trainer.model.count_params() / 1e6, seconds, first))
    print(f'full FixMatch step, {per_step} images/step (batch {FLAGS.batch}, uratio {FLAGS.uratio}), {os.cpu_count()} '
          f'CPUs')
    print(f'{"model":24s} {"M params":>9s} {"images/s":>10s} {"ms/step":>9s} {"first call s":>13s}')
    for arch, params, seconds, first in rows:
        print(f'{arch:24s} {params:9.2f} {per_step / seconds:10.1f} {1000 * seconds:9.1f} {first:13.1f}')
    base = rows[0]
    print(f'images/s vs {base[0]}: ' + ', '.join(f'{arch} {base[2] / seconds:.2f}x' for arch, _, seconds, _ in rows))


if __name__ == '__main__':
    utils.run(main)
