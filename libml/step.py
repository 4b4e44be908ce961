"""The compiled training step: augmentation, loss, gradients, update, EMA and CTAugment, on the
accelerator.

One step t, on every replica (its rows of the global batch, raw uint8 images from the input
pipeline):
  views     every view's random parameters are drawn for the WHOLE global batch from
            (seed, t, view number) and the replica applies its own rows (so the result does not
            depend on how the batch is split over replicas or hosts); CTAugment views read the
            rates after step t-1: no lag, the same run gives the same views;
  probe     CTAugment's probe (the labeled view under a random policy) is scored by the EMA model
            before this step's update;
  update    loss + wd * sum(w^2)/2 (SGD) -> gradients -> optimizer -> EMA; the CTAugment rates
            are updated from every replica's probes, in global batch order;
then across replicas: the logs are averaged, a non-finite loss is flagged, step += 1.
`train_call(iterator, n)` runs n steps in one tf.function call (--steps_per_call). With --xla
the whole replica step (views, forward, backward, update, EMA, rates) is ONE XLA program on a
single device; with several replicas the part before the cross-replica gradient sum is.
"""
import tensorflow as tf

import cta
from libml import data
from libml import keys
from libml import state as state_lib

VIEW_SALT, PROBE_SALT = 17, 18  # fold_in salts of the views' and the probe's parameters


def local_rows(params: dict, slot: tf.Tensor, rows: int) -> dict:
    """Rows [slot * rows, (slot + 1) * rows) of every parameter tensor."""
    start = tf.cast(slot, tf.int32) * rows
    return {name: value[start:start + rows] for name, value in params.items()}


class Step:
    """The training step of a Trainer (its model, optimizer, EMA, CTAugment, algorithm, counters)."""

    def __init__(self, trainer):
        self.trainer = trainer
        self.settings = trainer.settings
        self.strategy = trainer.strategy
        self.replicas = self.strategy.num_replicas_in_sync
        self.xla = bool(self.settings.xla)
        batch = self.settings.batch
        self.rows = {'x': batch // self.replicas, 'u': self.settings.get('uratio', 0) * batch // self.replicas}
        if self.xla and self.replicas == 1:
            self.replica_step = tf.function(self._replica_step, jit_compile=True)
            self.compute = self._compute
        else:
            self.replica_step = self._replica_step
            self.compute = tf.function(self._compute, jit_compile=True) if self.xla else self._compute
        self.train_call = tf.function(self._train_call)

    # ---- views

    def views(self, raw: dict, step: tf.Tensor, replicas: int = None) -> dict:
        """The batch an algorithm's loss sees: every view of this replica's raw images, float32 in
        [-1, 1], plus the labels, unlabeled positions and, with CTAugment, the probe (PROBE and its
        policy under 'probe_params')."""
        t = self.trainer
        replicas = replicas or self.replicas
        rows_of = {source: rows * self.replicas // replicas for source, rows in self.rows.items()}
        step_seed = tf.stack([tf.cast(self.settings.seed, tf.int64), tf.cast(step, tf.int64)])
        shape = list(t.data.info.shape)
        pixels = {source: tf.ensure_shape(tf.cast(raw[key], tf.float32) / 255, [rows_of[source]] + shape)
                  for source, key in (('x', keys.X_IMAGES), ('u', keys.U_IMAGES))}
        batch = {key: raw[key] for key in (keys.LABEL, keys.X_INDEX, keys.U_LABEL, keys.U_INDEX)}
        weak_labeled = None
        for number, (name, source, view) in enumerate(t.view_plan):
            rows = pixels[source].shape[0]
            seed = tf.random.experimental.stateless_fold_in(step_seed, VIEW_SALT * 1000 + number)
            params = local_rows(view.sample(rows * replicas, seed), raw[keys.SLOT], rows)
            batch[name] = data.to_unit_range(view.apply(pixels[source], params, xla=self.xla))
            if name == keys.X:
                weak_labeled = view.apply_weak(pixels[source], params)
        if t.cta:  # the probe: the labeled view's own weak image under a random policy
            rows = pixels['x'].shape[0]
            seed = tf.random.experimental.stateless_fold_in(step_seed, PROBE_SALT * 1000)
            policy = t.cta.sample_random(rows * replicas, seed)
            images = weak_labeled if weak_labeled is not None else pixels['x']
            batch[keys.PROBE] = data.to_unit_range(
                t.cta.apply(images, local_rows(policy, raw[keys.SLOT], rows), xla=self.xla))
            batch['probe_params'] = policy
        return batch

    # ---- the step

    def _compute(self, raw: dict, step: tf.Tensor):
        """Views, probe proximities, loss and gradients of this replica's rows: (total loss, L2 term,
        logs, gradients, probe proximities (b,) or None)."""
        t = self.trainer
        batch = self.views(raw, step)
        proximity = None
        if t.cta:  # scored by the EMA model before this step's update
            proximity = cta.proximity(tf.nn.softmax(t.classify_ema(batch[keys.PROBE])), batch[keys.LABEL])
        daso = getattr(t, 'daso', None)
        with tf.GradientTape() as tape:
            if daso is not None:  # --daso: the labeled batch's EMA features into the queue, before the loss (USB)
                daso.push(batch[keys.X], batch[keys.LABEL])
            loss, logs = t.algorithm.loss(batch, step)
            if daso is not None:  # its semantic alignment loss, from the features of the method's pass
                align, daso_logs = daso.loss(step)
                loss, logs = loss + align, {**logs, **daso_logs}
            l2 = state_lib.weight_l2(t.decay_variables)
            total = loss + self.settings.wd * l2 if self.settings.optimizer == 'sgd' else loss
            scaled = t.optimizer.scale_loss(total / self.replicas)
        gradients = tape.gradient(scaled, t.trainable)
        probe = (proximity, batch['probe_params']['ops'], batch['probe_params']['bins']) if t.cta else ()
        return total, l2, logs, gradients, probe

    def _replica_step(self, raw: dict, step: tf.Tensor):
        t = self.trainer
        total, l2, logs, gradients, probe = self.compute(raw, step)
        t.optimizer.apply_gradients(zip(gradients, t.trainable))
        if t.ema:
            t.ema.update(t.trainable)
        if t.cta:
            proximity, ops, bins = probe
            t.cta.update(ops, bins, self.global_order(proximity, raw[keys.SLOT]))
        logs = {**logs, keys.WD: l2, keys.LR: t.learning_rate()}
        return logs, tf.cast(~tf.math.is_finite(total), tf.float32)

    def global_order(self, values: tf.Tensor, slot: tf.Tensor) -> tf.Tensor:
        """Every replica's `values` (rows of its slot) concatenated in global batch order."""
        if self.replicas == 1:
            return values
        context = tf.distribute.get_replica_context()
        gathered = context.all_gather(values[None], axis=0)        # (replicas, rows)
        slots = context.all_gather(tf.reshape(slot, [1]), axis=0)  # (replicas,)
        return tf.reshape(tf.gather(gathered, tf.argsort(slots)), [-1])

    def _one_step(self, iterator):
        t = self.trainer
        raw = next(iterator)
        logs, nonfinite = self.strategy.run(self.replica_step, (raw, t.step.read_value()))
        logs = {k: self.strategy.reduce('MEAN', v, axis=None) for k, v in logs.items()}
        nonfinite = self.strategy.reduce('SUM', nonfinite, axis=None)
        t.bad_step.assign(tf.where((t.bad_step < 0) & (nonfinite > 0), t.step, t.bad_step))
        t.step.assign_add(1)
        return logs

    def _train_call(self, iterator, steps):
        """Runs `steps` (>= 1) training steps; returns the logs of the last one."""
        logs = self._one_step(iterator)
        for _ in tf.range(steps - 1):
            logs = self._one_step(iterator)
        return logs
