"""The trained state of a run: model, step counter, optimizer, EMA of the weights, and the EMA
model used for every evaluation.

  optimizer  SGD, Nesterov momentum 0.9, weight decay as an L2 term wd * sum(w^2)/2 of the loss
             on conv and dense kernels; or Adam then decoupled decay w <- w (1 - lr * wd) (adam, the
             reference's); or torch.optim.AdamW (adamw: decay first, then the Adam step); with
             --layer_decay every variable has its own learning rate lr * layer_decay^(D - depth)
             (libml/finetune.py), the decoupled decay included;
  schedule   lr(t) = lr * cos(7 pi/16 * t/T) (cosine), lr (constant) or lr + (lr_end - lr) t/T (linear),
             t/T the fraction of training done; with a warm-up of W steps lr * t/W for t < W, then the
             schedule over the remaining steps, (t - W)/(T - W) (USB's get_cosine_schedule_with_warmup);
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


def warmup_lr(schedule: str, lr: float, step: tf.Tensor, total_steps: int, warmup_steps: int,
              lr_end: float = 0.) -> tf.Tensor:
    """Learning rate at step `step` (counted from 0) of `total_steps` with a linear warm-up of
    `warmup_steps` > 0 steps: lr * step / warmup_steps while step < warmup_steps, then the schedule over
    the rest, scheduled_lr(schedule, lr, (step - warmup_steps) / (total_steps - warmup_steps)). With the
    cosine schedule this is USB's get_cosine_schedule_with_warmup (semilearn/core/utils/build.py):
    lr * max(0, cos(7 pi/16 * (step - W)/(T - W))) after the warm-up (the cosine is positive until T)."""
    step = tf.cast(step, tf.float32)
    warm = lr * (step / float(warmup_steps))
    after = scheduled_lr(schedule, lr, (step - warmup_steps) / float(max(1, total_steps - warmup_steps)), lr_end)
    return tf.where(step < warmup_steps, warm, after)


class _PerVariable:
    """Per-variable settings of an optimizer, by the index of the variable in the list it was built on
    (a plain object: not tracked, nothing added to the checkpoint)."""

    def __init__(self, lr_scales: Sequence[float], decayed: Sequence[bool]):
        self.lr_scales = [float(s) for s in lr_scales]
        self.decayed = [bool(d) for d in decayed]


class LayerScaled:
    """Mixin for a Keras optimizer: the learning rate of variable i is learning_rate * lr_scales[i]
    (--layer_decay), a per-variable learning rate as torch's parameter groups. update_step is Keras's
    per-variable update (called once per variable, per replica's copy under tf.distribute, inside XLA
    with --xla), so the scale is applied where the learning rate is used and the optimizer's variables
    stay those of its base class (checkpoints unchanged)."""
    per_variable = None

    def set_per_variable(self, lr_scales: Sequence[float], decayed: Sequence[bool]) -> None:
        """lr_scales[i] and decayed[i] (decoupled weight decay on it) for the i-th variable of the list
        the optimizer is built on; call before build."""
        self.per_variable = _PerVariable(lr_scales, decayed)

    def lr_scale(self, variable) -> float:
        return self.per_variable.lr_scales[self._get_variable_index(variable)] if self.per_variable else 1.0

    def scaled_lr(self, learning_rate, variable):
        scale = self.lr_scale(variable)
        return learning_rate if scale == 1.0 else learning_rate * scale

    def update_step(self, gradient, variable, learning_rate):
        super().update_step(gradient, variable, self.scaled_lr(learning_rate, variable))


class ScaledSGD(LayerScaled, keras.optimizers.SGD):
    """keras.optimizers.SGD with a learning rate per variable (weight decay stays the loss's L2 term,
    so its gradient wd * w is scaled with the rest, as torch.optim.SGD's weight_decay in a group)."""


class AdamW(LayerScaled, keras.optimizers.AdamW):
    """Adam (epsilon 1e-8 as TF1's AdamOptimizer), then decoupled weight decay AFTER the Adam step:
    w <- w * (1 - lr * weight_decay) on the decayed variables, as the reference's post-step assign
    (Keras's AdamW decays before the step: w (1 - lr wd) - update instead of (w - update)(1 - lr wd)).
    With per-variable learning rates (--layer_decay) the decay uses the variable's own lr * scale."""

    def _apply_weight_decay(self, variables):
        del variables  # applied after the Adam step instead

    def _backend_update_step(self, grads, trainable_variables, learning_rate):
        super()._backend_update_step(grads, trainable_variables, learning_rate)
        if self.per_variable is None:
            super()._apply_weight_decay(trainable_variables)

    def update_step(self, gradient, variable, learning_rate):
        super().update_step(gradient, variable, learning_rate)
        if self.per_variable is not None and self._use_weight_decay(variable):
            lr = tf.cast(self.scaled_lr(learning_rate, variable), variable.dtype)
            variable.assign_sub(variable * tf.cast(self.weight_decay, variable.dtype) * lr)


class TorchAdamW(LayerScaled, keras.optimizers.Adam):
    """torch.optim.AdamW (betas (0.9, 0.999), eps 1e-8, the defaults USB uses), per variable with
    learning rate a = lr * scale and t = the step number from 1:
      w <- w * (1 - a * wd)                      (decoupled decay, BEFORE the Adam step; decayed only)
      m <- b1 m + (1 - b1) g,  v <- b2 v + (1 - b2) g^2
      w <- w - a / (1 - b1^t) * m / (sqrt(v) / sqrt(1 - b2^t) + eps)
    (Keras's Adam adds eps to sqrt(v) before the bias correction: a different eps.) The variables are
    Adam's (iterations, momentums, velocities)."""

    def __init__(self, learning_rate, weight_decay: float, **kwargs):
        super().__init__(learning_rate=learning_rate, beta_1=0.9, beta_2=0.999, epsilon=1e-8, **kwargs)
        self.decoupled_wd = float(weight_decay)

    def update_step(self, gradient, variable, learning_rate):
        dtype = variable.dtype
        index = self._get_variable_index(variable)
        lr = tf.cast(self.scaled_lr(learning_rate, variable), dtype)
        gradient = tf.cast(gradient, dtype)
        if self.decoupled_wd and (self.per_variable is None or self.per_variable.decayed[index]):
            self.assign(variable, variable * (1 - lr * tf.cast(self.decoupled_wd, dtype)))
        m, v = self._momentums[index], self._velocities[index]
        t = tf.cast(self.iterations + 1, dtype)
        b1, b2 = tf.cast(self.beta_1, dtype), tf.cast(self.beta_2, dtype)
        self.assign(m, b1 * m + (1 - b1) * gradient)
        self.assign(v, b2 * v + (1 - b2) * tf.square(gradient))
        denom = tf.sqrt(v) / tf.sqrt(1 - tf.pow(b2, t)) + tf.cast(self.epsilon, dtype)
        self.assign_sub(variable, lr / (1 - tf.pow(b1, t)) * m / denom)


def make_optimizer(settings, learning_rate: Callable, variables: Sequence[tf.Variable],
                   decay_variables: Sequence[tf.Variable],
                   lr_scales: 'Sequence[float] | None' = None) -> keras.optimizers.Optimizer:
    """SGD (momentum --momentum, default 0.9, Nesterov unless --nonesterov; weight decay is an L2 term
    of the loss), Adam with decoupled decay w <- w (1 - lr wd) after each step (adam) or torch's AdamW
    (adamw: the decay before the step), the decay on `decay_variables` only. `lr_scales` (one per
    variable, --layer_decay: libml/finetune.py) multiply the learning rate of each variable, its decay
    included; None: every scale 1 (the plain optimizers, unchanged). Built on `variables` so a checkpoint
    can restore its slots."""
    decayed_ids = {id(v) for v in decay_variables}
    decayed = [id(v) in decayed_ids for v in variables]
    if settings.optimizer == 'adam':
        optimizer = AdamW(learning_rate=learning_rate, weight_decay=settings.wd, epsilon=1e-8)
        optimizer.exclude_from_weight_decay(var_list=[v for v, d in zip(variables, decayed) if not d])
    elif settings.optimizer == 'adamw':
        optimizer = TorchAdamW(learning_rate=learning_rate, weight_decay=settings.wd)
    elif lr_scales is not None:
        optimizer = ScaledSGD(learning_rate=learning_rate, momentum=settings.get('momentum', 0.9),
                              nesterov=settings.get('nesterov', True))
    else:
        optimizer = keras.optimizers.SGD(learning_rate=learning_rate, momentum=settings.get('momentum', 0.9),
                                         nesterov=settings.get('nesterov', True))
    if lr_scales is not None or settings.optimizer == 'adamw':
        optimizer.set_per_variable(lr_scales if lr_scales is not None else [1.0] * len(variables), decayed)
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
