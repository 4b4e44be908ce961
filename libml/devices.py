"""Devices: the tf.distribute strategy of a run, which process writes, and how each replica gets
its part of a global batch.

  MultiWorkerMirroredStrategy  when TF_CONFIG names several tasks (one process per host, started
                               with its own TF_CONFIG; only the chief writes);
  MirroredStrategy             when several GPUs are visible (or logical CPUs are configured);
  the default strategy         otherwise.
"""
import json
import os

import tensorflow as tf

STRATEGIES = {}  # one strategy per device set and process: new ones would reuse collective keys


def make_strategy(devicenum: int = 0) -> tf.distribute.Strategy:
    """The strategy for the visible devices; devicenum caps the local devices (0 = all)."""
    cluster = json.loads(os.environ.get('TF_CONFIG') or '{}').get('cluster', {})
    if sum(len(tasks) for tasks in cluster.values()) > 1:
        key = ('multi-worker',)
        if key not in STRATEGIES:
            STRATEGIES[key] = tf.distribute.MultiWorkerMirroredStrategy()
        return STRATEGIES[key]
    devices = tf.config.list_logical_devices('GPU') or tf.config.list_logical_devices('CPU')
    if devicenum:
        devices = devices[:devicenum]
    if len(devices) < 2:
        return tf.distribute.get_strategy()
    key = tuple(d.name for d in devices)
    if key not in STRATEGIES:
        STRATEGIES[key] = tf.distribute.MirroredStrategy(list(key))
    return STRATEGIES[key]


def global_rows(values: tf.Tensor) -> tf.Tensor:
    """Every replica's rows of `values` (n, ...) in replica order (replicas * n, ...), the trailing
    shape kept static (all_gather under MirroredStrategy loses it); `values` itself on one device."""
    gathered = tf.distribute.get_replica_context().all_gather(values, 0)
    return tf.reshape(gathered, [-1, *values.shape[1:]])


def is_chief(strategy: tf.distribute.Strategy) -> bool:
    """Whether this process writes checkpoints, summaries and statistics: the only process, the
    'chief' task, or worker 0 of a cluster without a chief."""
    resolver = getattr(strategy, 'cluster_resolver', None)
    if resolver is None or not resolver.task_type:
        return True
    if resolver.task_type == 'chief':
        return True
    return resolver.task_type == 'worker' and resolver.task_id == 0 and 'chief' not in resolver.cluster_spec().as_dict()

