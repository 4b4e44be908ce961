"""Settings shared by the training benchmarks: the flags of the measured FixMatch step and a
trainer factory. Defaults are the paper's step: WRN-28-2, 64 labeled + 448 weak + 448 strong images."""
import fixmatch
from absl import flags
from libml import settings
from libml import train

flags.DEFINE_string('dataset', 'fashion_mnist.1@40-1', 'Training data (converted automatically when offline).')
flags.DEFINE_integer('filters', 32, 'WRN width (32 = WRN-28-2).')
flags.DEFINE_integer('repeat', 4, 'Blocks per WRN stage (4 = WRN-28).')
flags.DEFINE_integer('batch', 64, 'Labeled images per step (global, over all replicas).')
flags.DEFINE_integer('uratio', 7, 'Unlabeled images per labeled image.')
flags.DEFINE_string('augment', 'd.d.cta', 'Views: labeled.weak.strong.')
FLAGS = flags.FLAGS


def images_per_step():
    return FLAGS.batch * (1 + 2 * FLAGS.uratio)


def fixmatch_trainer(train_dir, **overrides):
    """A FixMatch Trainer with the benchmark's flags plus `overrides` (any training setting)."""
    values = dict(dataset=FLAGS.dataset, train_dir=train_dir, batch=FLAGS.batch, uratio=FLAGS.uratio,
                  augment=FLAGS.augment, **overrides)
    if values.get('arch', 'wrn') == 'wrn':  # --filters and --repeat shape the WRN only (refused for other models)
        values.update(filters=FLAGS.filters, repeat=FLAGS.repeat)
    return train.Trainer(fixmatch.FixMatch, settings.resolve(fixmatch.FixMatch.all_params(), values))
