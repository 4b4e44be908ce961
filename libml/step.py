"""The compiled training step.

One step, on every replica: score the CTAugment probe with the EMA model (before this step's
update), apply CTAugment to the views made in the step, compute the loss and its gradients
(loss + wd * sum(w^2)/2 for SGD), apply them, update the EMA; then, across replicas: update the
CTAugment rates from every replica's probes, average the logs, flag a non-finite loss, step += 1.
`train_call(iterator, n)` runs n steps in one tf.function call (--steps_per_call).
"""
import tensorflow as tf

import cta
from libml import augment
from libml import data
from libml import keys
from libml import state as state_lib


class Step:
    """The training step of a Trainer (its model, optimizer, EMA, CTAugment, algorithm, counters)."""

    def __init__(self, trainer):
        self.trainer = trainer
        self.settings = trainer.settings
        self.strategy = trainer.strategy
        self.gradients = tf.function(self._gradients, jit_compile=True) if self.settings.xla else self._gradients
        self.train_call = tf.function(self._train_call)

    def strong_in_step(self, batch: dict) -> dict:
        """The batch with CTAugment applied to the `in_step` views, from the current rates, seeded by
        (seed, step, view, replica)."""
        t = self.trainer
        if not t.step_views:
            return batch
        batch = dict(batch)
        replica = tf.cast(tf.distribute.get_replica_context().replica_id_in_sync_group, tf.int64)
        step_seed = tf.stack([tf.cast(self.settings.seed, tf.int64), t.step])
        for number, name in enumerate(t.step_views):
            seed = tf.random.experimental.stateless_fold_in(step_seed, 1000 + number)
            seed = tf.random.experimental.stateless_fold_in(seed, replica)
            batch[name] = data.to_unit_range(t.cta.strong((batch[name] + 1) / 2, seed))
        return batch

    def _gradients(self, batch: dict):
        """(total loss, L2 term, logs, gradients) of this replica's batch; XLA-compiled with --xla."""
        t = self.trainer
        with tf.GradientTape() as tape:
            loss, logs = t.algorithm.loss(batch, t.step)
            l2 = state_lib.weight_l2(t.decay_variables)
            total = loss + self.settings.wd * l2 if self.settings.optimizer == 'sgd' else loss
            scaled = t.optimizer.scale_loss(total / self.strategy.num_replicas_in_sync)
        return total, l2, logs, tape.gradient(scaled, t.trainable)

    def _replica_step(self, batch: dict):
        t = self.trainer
        probe = ()
        if t.cta:  # score the probe with the EMA model before this step's update
            probs = tf.nn.softmax(t.classify_ema(batch[keys.PROBE]))
            probe = (cta.proximity(probs, batch[keys.LABEL]), batch['probe_ops'], batch['probe_bins'])
        batch = self.strong_in_step(batch)
        total, l2, logs, gradients = self.gradients(batch)
        t.optimizer.apply_gradients(zip(gradients, t.trainable))
        if t.ema:
            t.ema.update(t.trainable)
        logs = {**logs, keys.WD: l2, keys.LR: t.learning_rate()}
        return logs, tf.cast(~tf.math.is_finite(total), tf.float32), probe

    def _one_step(self, iterator):
        t = self.trainer
        batch = next(iterator)
        logs, nonfinite, probe = self.strategy.run(self._replica_step, (batch,))
        if t.cta:  # every replica's probes, in global batch order
            proximity, ops, bins = (self.strategy.gather(v, axis=0) for v in probe)
            t.cta.update(cta.Policy(ops, bins, None, None), proximity)
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


def probe_view(cta_augment: cta.CTAugment, info):
    """CTAugment probe view fn(images in [0, 1], seed): the weak view under a random policy
    (uniform ops and levels), with the policy's ops and bins for the rate update."""
    def probe(images, seed):
        weak_seed, policy_seed = augment.split_seed(seed, 2)
        images = augment.weak(images, weak_seed, flip=info.flip, pad=info.pad)
        policy = cta_augment.random_policy(tf.shape(images)[0], policy_seed)
        return dict(image=cta_augment.apply(images, policy), ops=policy.ops, bins=policy.bins)
    return probe
