#!/usr/bin/env python
"""Converts datasets to PNG TFRecord files and a description JSON in $ML_DATA.

For a dataset NAME it writes $ML_DATA/NAME-train.tfrecord, NAME-test.tfrecord (plus svhn-extra.tfrecord and
stl10-unlabeled.tfrecord) and NAME.json. The same input always gives byte-identical files.

  python scripts/create_datasets.py                                  # every built-in dataset
  python scripts/create_datasets.py --datasets=cifar10,fashion_mnist
  python scripts/create_datasets.py --name=flowers --from_dir=~/flowers   # flowers/<class>/*.png [+ flowers/test/]
  python scripts/create_datasets.py --name=mine --from_npz=mine.npz --noflip --pad=2
  python scripts/create_datasets.py --tfds=eurosat                       # any TFDS image classification dataset
  python scripts/create_datasets.py --tfds=mnist --name=tfds_mnist --noflip

Built-in datasets come from --source_dir, system copies (Fashion-MNIST: the dataset-fashion-mnist package) or
are downloaded to --download_dir (see libml/registry.py). TensorFlow Datasets are prepared by TFDS in --tfds_dir
(see libml/tfds_data.py).
"""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from libml import utils  # noqa: E402

utils.quiet_tensorflow()

from absl import flags  # noqa: E402

from libml import registry  # noqa: E402
from libml import tfds_data  # noqa: E402
from libml import user_data  # noqa: E402

FLAGS = flags.FLAGS
flags.DEFINE_list('datasets', list(registry.BUILTIN),
                  'Built-in datasets to convert, comma-separated, among: ' + ', '.join(registry.BUILTIN) + '. '
                  'With --from_dir/--from_npz/--tfds, built-in datasets are converted only when this flag is given.')
flags.DEFINE_string('source_dir', None, 'Folder holding already downloaded original files (e.g. '
                    'cifar-10-binary.tar.gz, train_32x32.mat, stl10_binary.tar.gz, *-idx3-ubyte.gz), directly or in '
                    'a sub-folder cifar10/, cifar100/, svhn/, stl10/, mnist/ or fashion_mnist/; looked up before '
                    'any download.')
flags.DEFINE_string('download_dir', None, 'Folder where missing original files are downloaded, one sub-folder per '
                    'dataset. Default: $ML_DATA/downloads.')
flags.DEFINE_string('name', None, 'Name of a user dataset to create with --from_dir, --from_npz or --tfds (letters, '
                    'digits, underscores; not a built-in name). Default with --tfds: the TFDS name, "/" as "_".')
flags.DEFINE_string('tfds', None, 'A TensorFlow Datasets image classification dataset to convert, e.g. eurosat, '
                    'cifar10_1, or oxford_iiit_pet:4.0.0 (its train and test splits, image and label features, class '
                    'names); without a test split 10% of each class (seed 0) is held out. Needs tensorflow-datasets.')
flags.DEFINE_string('tfds_dir', None, 'TFDS data folder where --tfds datasets are downloaded and prepared. Default: '
                    'TFDS\'s own ($TFDS_DATA_DIR, else ~/tensorflow_datasets).')
flags.DEFINE_string('from_dir', None, 'User dataset from a folder of class sub-folders of images (PNG, JPEG, GIF, '
                    'BMP; all of one shape); an optional test/ sub-folder with the same class sub-folders is the test '
                    'set, otherwise 10% of each class (seed 0) is held out as the test set.')
flags.DEFINE_string('from_npz', None, 'User dataset from an .npz file with arrays x (uint8 (N,H,W) or (N,H,W,C)), '
                    'y (integer labels 0..K-1) and optionally x_test, y_test; without them 10% of each class '
                    '(seed 0) is held out as the test set.')
flags.DEFINE_bool('flip', True, 'User or TFDS dataset: whether weak augmentation mirrors images left-right '
                  '(--noflip for digits, text, ...).')
flags.DEFINE_integer('pad', None, 'User or TFDS dataset: reflect-padding in pixels before the random crop of weak '
                     'augmentation. Default: the image width / 8, rounded (4 for 32 px).', lower_bound=0)

def main(argv):
    if len(argv) > 1:
        raise utils.UserError(f'unexpected arguments {" ".join(argv[1:])}; see --help')
    user = bool(FLAGS.from_dir or FLAGS.from_npz)
    if FLAGS.tfds and user:
        raise utils.UserError('give one of --tfds, --from_dir and --from_npz per command')
    if (FLAGS.name or FLAGS['flip'].present or FLAGS['pad'].present) and not (user or FLAGS.tfds):
        raise utils.UserError('--name, --flip and --pad describe a user dataset (or a TFDS one): add --from_dir=DIR, '
                              '--from_npz=FILE or --tfds=NAME')
    if FLAGS.tfds_dir and not FLAGS.tfds:
        raise utils.UserError('--tfds_dir is where --tfds datasets are prepared: add --tfds=NAME')
    if user and not FLAGS.name:
        raise utils.UserError('a user dataset needs a name: add --name=NAME')
    builtins = FLAGS.datasets if (FLAGS['datasets'].present or not (user or FLAGS.tfds)) else []
    for name in builtins:
        registry.get_spec(name)
    if user:
        user_data.check_user_name(FLAGS.name)
    if FLAGS.tfds:
        tfds_data.check_name(FLAGS.name or tfds_data.default_name(FLAGS.tfds), FLAGS.tfds)
        tfds_data.import_tfds()
    for name in builtins:
        registry.convert(name, source_dir=FLAGS.source_dir, download_dir=FLAGS.download_dir)
    if user:
        user_data.convert_user(FLAGS.name, FLAGS.from_dir, FLAGS.from_npz, FLAGS.flip, FLAGS.pad)
    if FLAGS.tfds:
        info = tfds_data.convert_tfds(FLAGS.tfds, FLAGS.name, FLAGS.flip, FLAGS.pad, data_dir=FLAGS.tfds_dir)
        print(f'wrote {info.name}: {info.nclass} classes of {info.shape} images ({info.sizes}); train on it with '
              f'e.g. --dataset={info.name}.1@{4 * info.nclass}-1')


if __name__ == '__main__':
    utils.run(main)
