"""Fake trainers for loss tests: an algorithm built on fixed settings, data and model, without
the training loop."""
import types

import numpy as np
import tensorflow as tf

from libml import debias
from libml import settings as settings_lib


def fake_trainer(cls, model=None, nclass=3, labeled_labels=(0, 1, 2), n_total=100, label_probs=None, **settings):
    """A trainer namespace for `cls`: resolved settings, a fake data description (labeled classes,
    n_total training images), `model`, kimg_to_steps and the label-bias state (built)."""
    settings = settings_lib.resolve(cls.all_params(), settings)
    labeled = types.SimpleNamespace(labels=np.asarray(labeled_labels, np.int64))
    data = types.SimpleNamespace(nclass=nclass, labeled=labeled, unlabeled=[0] * (n_total - 1), valid=[0],
                                 label_meta={'label_probs': label_probs})
    kimg_to_steps = lambda kimg: int(round(kimg * 1024 / settings.batch))  # noqa: E731
    bias = debias.LabelBias(settings, labeled.labels, n_total, nclass, n_unlabeled=n_total - 1,
                            kimg_to_steps=kimg_to_steps)
    bias.build()
    return types.SimpleNamespace(settings=settings, model=model, data=data, bias=bias, ema=None,
                                 kimg_to_steps=kimg_to_steps)


class TableModel:
    """Image i, a (1,) vector holding the number i, has logits table[i]."""

    def __init__(self, table):
        self.table = tf.constant(table, tf.float32)
        self.trainable_variables, self.non_trainable_variables = [], []

    def __call__(self, images, training=False):
        return tf.gather(self.table, tf.cast(images[:, 0], tf.int32))


def rows(*indexes):
    """Images for TableModel: one (1,) row per index."""
    return tf.constant([[float(i)] for i in indexes])
