"""The trained state of a run: model, step counter, optimizer, EMA of the weights, and the EMA
model used for every evaluation.

  optimizer  SGD, Nesterov momentum 0.9, weight decay as an L2 term wd * sum(w^2)/2 of the loss
             on conv and dense kernels; or Adam then decoupled decay w <- w (1 - lr * wd);
  schedule   lr(t) = lr * cos(7 pi/16 * t/T) (cosine), lr (constant) or lr + (lr_end - lr) t/T (linear),
             t/T the fraction of training done;
  EMA        w_ema <- decay * w_ema + (1 - decay) * w after every step; evaluation uses the EMA
             weights (batch-norm moving statistics are shared with the raw model).
"""
import math
import os
from typing import Callable, Sequence

import keras
import tensorflow as tf
from absl import logging

from libml import checkpoints
from libml import models
from libml import records
from libml import targets
from libml import utils


class EMA(tf.Module):
    """Exponential moving average of variables: avg <- decay * avg + (1 - decay) * value."""

    def __init__(self, variables: Sequence[tf.Variable], decay: float):
        super().__init__(name='ema')
        self.decay = decay
        self.averages = [tf.Variable(v.value, trainable=False, name=v.path.replace('/', '_'),
                                     aggregation=tf.VariableAggregation.ONLY_FIRST_REPLICA) for v in variables]

    def update(self, variables: Sequence[tf.Variable]) -> None:
        for average, value in zip(self.averages, variables):
            average.assign(self.decay * average + (1 - self.decay) * value.value)


def cosine_lr(lr: float, progress: tf.Tensor) -> tf.Tensor:
    """lr * cos(7 pi/16 * progress), progress = fraction of training done, clipped to [0, 1]."""
    return lr * tf.cos(7 * math.pi / 16 * tf.clip_by_value(progress, 0., 1.))


def scheduled_lr(schedule: str, lr: float, progress: tf.Tensor, lr_end: float = 0.) -> tf.Tensor:
    """Learning rate after a fraction `progress` of training: cosine, constant or linear from lr to
    lr_end, lr + (lr_end - lr) * t/T (the reference's ab_fixmatch_linearlr)."""
    if schedule == 'cosine':
        return cosine_lr(lr, progress)
    if schedule == 'linear':
        return lr + (lr_end - lr) * tf.clip_by_value(progress, 0., 1.)
    return lr * tf.ones_like(progress)


class AdamW(keras.optimizers.AdamW):
    """Adam (epsilon 1e-8 as TF1's AdamOptimizer), then decoupled weight decay AFTER the Adam step:
    w <- w * (1 - lr * weight_decay) on the decayed variables, as the reference's post-step assign
    (Keras's AdamW decays before the step: w (1 - lr wd) - update instead of (w - update)(1 - lr wd))."""

    def _apply_weight_decay(self, variables):
        del variables  # applied after the Adam step instead

    def _backend_update_step(self, grads, trainable_variables, learning_rate):
        super()._backend_update_step(grads, trainable_variables, learning_rate)
        super()._apply_weight_decay(trainable_variables)


def make_optimizer(settings, learning_rate: Callable, variables: Sequence[tf.Variable],
                   decay_variables: Sequence[tf.Variable]) -> keras.optimizers.Optimizer:
    """SGD (momentum --momentum, default 0.9, Nesterov unless --nonesterov; weight decay is an L2 term
    of the loss) or Adam with decoupled decay w <- w (1 - lr wd) after each step on `decay_variables`
    only. Built on `variables` so a checkpoint can restore its slots."""
    if settings.optimizer == 'adam':
        optimizer = AdamW(learning_rate=learning_rate, weight_decay=settings.wd, epsilon=1e-8)
        decayed = {id(v) for v in decay_variables}
        optimizer.exclude_from_weight_decay(var_list=[v for v in variables if id(v) not in decayed])
    else:
        optimizer = keras.optimizers.SGD(learning_rate=learning_rate, momentum=settings.get('momentum', 0.9),
                                         nesterov=settings.get('nesterov', True))
    if settings.precision == 'mixed_float16':  # dynamic loss scaling; steps with inf/NaN gradients are skipped
        optimizer = keras.optimizers.LossScaleOptimizer(optimizer)
    optimizer.build(variables)
    return optimizer


def weight_l2(variables: Sequence[tf.Variable]) -> tf.Tensor:
    """sum(w^2) / 2 over the given variables (tf.nn.l2_loss summed)."""
    return tf.add_n([tf.nn.l2_loss(v) for v in variables])


def create_model(settings, info: records.DatasetInfo, archive: bytes = None) -> keras.Model:
    """The run's classifier for the dataset described by `info` (--arch, --weights, --input_size; libml/backbones.py
    for the sources other than the built-ins). `archive`: the bytes of the run's model.keras (--arch=model)."""
    return models.create_model(settings['arch'], info.nclass, info.shape, filters=settings['filters'],
                               scales=settings['scales'], repeat=settings['repeat'],
                               bn_momentum=settings['bn_momentum'], sync_bn=settings.get('sync_bn', False),
                               fused_bn=settings.get('fused_bn', True), weights=settings.get('weights', 'none'),
                               input_size=settings.get('input_size', 0), archive=archive)


def run_model_archive(run_dir: str, arch: str):
    """The bytes of <run_dir>/model.keras for --arch=model (written by Algorithm.run(model=...)), else None."""
    from libml import backbones
    path = os.path.join(run_dir, backbones.MODEL_FILE)
    if arch != backbones.MODEL or not os.path.exists(path):
        return None
    with open(path, 'rb') as f:
        return f.read()


def classify(model: keras.Model, ema: 'EMA | None', images: tf.Tensor, training: bool = False) -> tf.Tensor:
    """Logits of the EMA weights (raw weights without EMA), in inference mode by default; never
    updates the batch-norm statistics."""
    if not training and not ema:
        return model(images, training=False)
    weights = ema.averages[:len(model.trainable_variables)] if ema else model.trainable_variables
    return model.stateless_call(weights, model.non_trainable_variables, images, training=training)[0]


def load_ema_model(run_dir: str):
    """(settings dict, DatasetInfo, Keras model holding the EMA weights, checkpoint prefix) of the run's
    newest readable checkpoint (found by its index file, every tensor read first, as a resume does: an
    unreadable one is skipped with a warning). The raw weights are used when the run has no EMA (--ema=0). A run
    with --abc gives the model whose output is its auxiliary head's logits (libml/abc_head.py)."""
    saved = utils.read_json(os.path.join(run_dir, 'args.json'), 'run settings (args.json of a run directory)')
    info = records.DatasetInfo.load(targets.recipe_for(targets.parse_name(saved['dataset']).target).base)
    # plain Keras layers (exportable); the weights come from the checkpoint: nothing is downloaded or read
    model = create_model(dict(saved, sync_bn=False, fused_bn=False, weights='none'), info,
                         archive=run_model_archive(run_dir, saved['arch']))
    head = None
    if saved.get('abc'):  # --abc: the auxiliary head classifies (libml/abc_head.py)
        from libml import abc_head
        head = abc_head.make_head(info.nclass, models.features_output(model).shape[-1])
    trained = model.trainable_variables + (head.trainable_variables if head else [])
    ema = EMA(trained, saved['ema']) if saved['ema'] else None
    tf_dir = os.path.join(run_dir, 'tf')
    found = checkpoints.find(tf_dir)
    if not found:
        raise utils.UserError(f'no checkpoint in {tf_dir}; train the run first (its command is in args.json)')

    def unreadable(prefix, error):
        logging.warning(f'skipping checkpoint {prefix}: cannot read it ({checkpoints.reason(error)})')

    for _, prefix in checkpoints.readable(found, unreadable):
        checkpoint = tf.train.Checkpoint(model=model, **({'ema': ema} if ema else {}),
                                         **({'algorithm': {'abc_head': head}} if head else {}))
        checkpoint.restore(prefix).expect_partial().assert_existing_objects_matched()
        if ema:
            for variable, average in zip(trained, ema.averages):
                variable.assign(average)
        if head:
            from libml import abc_head
            return saved, info, abc_head.with_head(model, head), prefix
        return saved, info, model, prefix
    raise utils.UserError(f'no readable checkpoint in {tf_dir} (all {len(found)} are damaged); train the run '
                          f'again (its command is in args.json)')
