"""The training loop shared by every algorithm.

An algorithm (one entry script each) subclasses `Algorithm`: it declares its settings, the
augmented views it needs and its loss. Everything else lives here:

  model      one Keras model; every step sends the labeled + unlabeled views of a replica
             through ONE forward pass in training mode, so batch-norm statistics cover all of it;
  optimizer  SGD, Nesterov momentum 0.9, lr(t) = lr * cos(7 pi/16 * t/T), t/T the fraction of
             training done; loss += wd * sum(w^2)/2 over conv and dense kernels;
  EMA        w_ema <- decay * w_ema + (1 - decay) * w after every step; every evaluation uses the
             EMA weights (batch-norm moving statistics are shared with the raw model);
  schedule   counted in thousands of labeled images (kimg): train_kimg, report_kimg (one
             "epoch": evaluate + log), save_kimg (checkpoint);
  state      checkpoints of weights, EMA, optimizer, step and every algorithm variable through
             tf.train.CheckpointManager (TF writes the data files then renames the index into
             place: a killed run resumes from its last complete checkpoint). Batches and
             augmentations are a function of (seed, step), so a resumed run sees exactly what an
             uninterrupted one would;
  devices    a tf.distribute strategy: MultiWorkerMirroredStrategy when TF_CONFIG names several
             hosts (only the chief writes), MirroredStrategy when several GPUs are visible (or logical
             CPUs are configured), the default strategy otherwise. Each replica gets its slice of
             every part of the global batch (labeled, weak, strong);
  speed      --precision (mixed float16 / bfloat16), --xla (the forward/backward of each replica),
             --steps_per_call; --deterministic for bit-identical runs.

Run directory: <train_dir>/<dataset>/<algorithm and its non-default settings>/ with args.json,
tf/ (TensorBoard events and checkpoints) and stats/ (one JSON line of metrics per epoch).
"""
import json
import math
import os
import tempfile
import time

import numpy as np
import tensorflow as tf
import keras
from absl import flags
from absl import logging

import cta
from libml import augment
from libml import views
from libml import data
from libml import metrics
from libml import models
from libml import records
from libml import settings as settings_lib
from libml import stats
from libml import utils
from libml.settings import Param

COMMON_PARAMS = dict(
    dataset=Param('cifar10.3@250-1', 'Training data: target.seed@size-valid, e.g. cifar10.1@40-1, '
                  'cifar10_LT_20.1@20-1, fashion_mnist.1@40-1.', identity=False),
    train_dir=Param('./experiments', 'Folder of the runs: <train_dir>/<dataset>/<algorithm_settings>/.',
                    identity=False),
    local=Param(False, 'One switch for a small run on a CPU: a narrow, shallow WRN and a short schedule '
                '(the paper settings stay the defaults).'),
    arch=Param('wrn', 'Model architecture.', choices=('wrn', 'resnet18', 'cnn13')),
    filters=Param(32, 'WRN width: stage s has filters << s channels (32 = WRN-28-2, 128 = WRN-28-8).', local=16),
    scales=Param(0, 'WRN stages; 0 = ceil(log2(image width)) - 2 (3 at 32 px, 5 at 96 px).'),
    repeat=Param(4, 'Residual blocks per WRN stage (4 = WRN-28).', local=2),
    bn_momentum=Param(0.999, 'Decay of the batch-norm moving statistics used at evaluation.', local=0.99),
    sync_bn=Param(False, 'Batch-norm statistics over the whole global batch (all replicas) instead of per replica.'),
    batch=Param(64, 'Labeled images per step, over all devices.', local=32),
    lr=Param(0.03, 'Learning rate at the start (see --lr_schedule).'),
    lr_schedule=Param('cosine', 'Learning rate after a fraction t/T of training: cosine lr*cos(7 pi/16 t/T), '
                      'constant lr, linear lr*(1 - t/T).', choices=('cosine', 'constant', 'linear')),
    optimizer=Param('sgd', 'sgd: SGD with Nesterov momentum 0.9 and L2 weight decay in the loss; adam: Adam with '
                    'decoupled weight decay w <- w - lr*wd*w on the kernels.', choices=('sgd', 'adam')),
    wd=Param(5e-4, 'Weight decay on conv and dense kernels: sgd adds wd * sum(w^2)/2 to the loss, adam decays '
             'w by lr*wd*w each step.'),
    ema=Param(0.999, 'Decay of the moving average of the weights used for evaluation (0 = evaluate raw weights).',
              local=0.99),
    seed=Param(0, 'Seed of weight initialisation, batch sampling and augmentation.'),
    train_kimg=Param(float(1 << 16), 'Training length in thousands of labeled images (1<<16 kimg = 2^20 steps of 64).',
                     local=30.),
    report_kimg=Param(64., 'Evaluate, log and print every this many kimg (64 kimg = 1024 steps of 64: one epoch).',
                      identity=False, local=2.),
    save_kimg=Param(64., 'Save a checkpoint every this many kimg.', identity=False, local=2.),
    keep_ckpt=Param(10, 'Number of checkpoints kept.', identity=False),
    devicenum=Param(0, 'Number of devices to train on (0 = all visible GPUs; one CPU without GPU).',
                    identity=False),
    steps_per_call=Param(1, 'Training steps run per compiled call (more helps small models).', identity=False),
    eval_batch=Param(500, 'Images per evaluation batch.', identity=False),
    precision=Param('float32', 'Compute precision: mixed_float16 or mixed_bfloat16 run the layers in 16 bits, with '
                    'float32 variables, logits, softmax and losses (float16 with dynamic loss scaling).',
                    choices=('float32', 'mixed_float16', 'mixed_bfloat16')),
    xla=Param(False, 'Compile each replica\'s forward and backward pass with XLA (augmentation stays outside: its '
              'geometric ops have no XLA kernel).', identity=False),
    deterministic=Param(False, 'Deterministic ops, and CTAugment strong views made in the training step from the '
                        'current rates (not ahead in the input pipeline): the same run gives the same weights.',
                        identity=False),
    cta_depth=Param(2, 'CTAugment: operations per policy.'),
    cta_th=Param(0.8, 'CTAugment: bins whose normalised rate is below this threshold are never sampled.'),
    cta_decay=Param(0.99, 'CTAugment: rate update rate[bin] = decay*rate[bin] + (1-decay)*proximity.'),
)
DEBIASED = Param(False, 'DeSSL (Schmutz et al., ICLR 2023): also compute the unlabeled term(s) on the labeled images '
                 '(as if unlabeled) and subtract them (lambda = --wu); unbiased under labels missing at random.')
MNAR_ESTIMATE = Param('none', 'Sportisse et al. (ICML 2023): estimate the per-class labeling probabilities '
                      'phi_k = n_lk / (n p_k) during training (moment) and train on the debiased risk they give.',
                      choices=('none', 'moment'))
CLASS_DISTRIBUTION_MOMENTUM = 0.99  # p_hat <- 0.99 p_hat + 0.01 mean_u softmax(weak view)
MIN_LABELING_PROBABILITY = 1e-3     # guards 1 / phi_k when p_hat_k grows past n_lk / n
EVAL_SPLITS = ('train_labeled', 'valid', 'test')
LOG_NAMES = {'losses/xe': 'xe', 'losses/xeu': 'xeu', 'monitors/mask': 'mask'}


class TrainingDiverged(utils.UserError):
    """The loss became NaN or infinite."""


class Algorithm:
    """One SSL method: its settings (`params`), the views it trains on and its loss.

    A subclass sets `params` and implements `loss`; `views` tells which augmented images each
    step receives (see `views`).
    """
    params = {}

    def __init__(self, trainer):
        self.trainer = trainer
        self.settings = trainer.settings
        self.nclass = trainer.data.nclass
        self.p_hat = None

    @classmethod
    def all_params(cls):
        return {**COMMON_PARAMS, **cls.params}

    @classmethod
    def adapt_data(cls, data, settings):
        """The training data this algorithm uses (e.g. every label for a fully supervised baseline)."""
        del settings
        return data

    @classmethod
    def run(cls, **settings):
        """Trains with these settings (keyword arguments, same names as the flags) and returns
        the run's final metrics. For notebooks: no flag parsing involved."""
        return Trainer(cls, settings_lib.resolve(cls.all_params(), settings)).train()

    def views(self):
        """(labeled views, unlabeled views): dicts of name -> fn(images in [0,1], seed) built from
        --augment=L.W.S: labeled 'x', unlabeled 'u_weak' and 'u_strong'."""
        labeled, weak, strong = views.parse_augment(self.settings.augment)
        make = self.trainer.view_fn
        return {'x': make(labeled)}, {'u_weak': make(weak), 'u_strong': make(strong)}

    def build(self):
        """Creates the algorithm's own state (called inside the strategy scope). Returns a dict
        of trackables (tf.Variable / tf.Module / Keras layers) to checkpoint. Subclasses extend
        super().build()."""
        if not self.tracks_class_distribution():
            return {}
        self.p_hat = tf.Variable(tf.fill([self.nclass], 1.0 / self.nclass), trainable=False, name='p_hat',
                                 aggregation=tf.VariableAggregation.ONLY_FIRST_REPLICA)
        data = self.trainer.data
        self.labeled_counts = tf.constant(np.bincount(data.labeled.labels, minlength=self.nclass), tf.float32)
        self.n_labeled = float(len(data.labeled.labels))
        self.n_total = float(len(data.unlabeled) + len(data.valid))
        return {'p_hat': self.p_hat}

    def tracks_class_distribution(self):
        """Whether the algorithm keeps p_hat, the moving average of the predicted class distribution."""
        return self.settings.get('mnar_estimate', 'none') != 'none'

    def update_class_distribution(self, logits):
        """p_hat <- 0.99 p_hat + 0.01 mean softmax(logits), the mean over the global batch (all replicas).
        Returns the new p_hat."""
        local = tf.reduce_mean(tf.nn.softmax(tf.stop_gradient(logits)), axis=0)
        mean = tf.distribute.get_replica_context().all_reduce('MEAN', local)
        m = CLASS_DISTRIBUTION_MOMENTUM
        self.p_hat.assign(m * self.p_hat + (1 - m) * mean)
        return tf.identity(self.p_hat)

    def labeling_probabilities(self):
        """phi_k = P(labeled | y = k) = n_lk / (n p_hat_k) (moment estimate), clipped to [1e-3, 1]."""
        phi = self.labeled_counts / (self.n_total * tf.maximum(self.p_hat, 1e-12))
        return tf.clip_by_value(phi, MIN_LABELING_PROBABILITY, 1.0)

    def report_scalars(self):
        """Extra TensorBoard scalars written at every evaluation."""
        if self.p_hat is None:
            return {}
        out = {f'class_distribution/{k:03d}': float(v) for k, v in enumerate(self.p_hat.numpy())}
        if self.settings.get('mnar_estimate', 'none') != 'none':
            true = self.trainer.data.label_meta.get('label_probs') or [None] * self.nclass
            for k, (estimate, truth) in enumerate(zip(self.labeling_probabilities().numpy(), true)):
                out[f'mnar/phi_estimate/{k:03d}'] = float(estimate)
                if truth is not None:
                    out[f'mnar/phi_true/{k:03d}'] = float(truth)
        return out

    def supervised_loss(self, per_sample, labels):
        """mean_l H(y, x); with --mnar_estimate: (n_l / n) mean_l[H(y, x) / phi_y]."""
        if self.settings.get('mnar_estimate', 'none') == 'none':
            return tf.reduce_mean(per_sample)
        phi = tf.gather(self.labeling_probabilities(), labels)
        return self.n_labeled / self.n_total * tf.reduce_mean(per_sample / phi)

    def extra_trainable_variables(self):
        """Trainable variables of the algorithm's own layers (e.g. a rotation head), trained and
        averaged by the EMA together with the model's."""
        return []

    def forward(self, *parts, training=True, update_bn=True):
        """Logits of several image batches through ONE forward pass (shared batch-norm statistics).

        update_bn=False runs in training mode without updating the batch-norm moving statistics."""
        images = tf.concat(parts, 0)
        if update_bn or not training:
            logits = self.trainer.model(images, training=training)
        else:
            model = self.trainer.model
            logits = model.stateless_call(model.trainable_variables, model.non_trainable_variables, images,
                                          training=True)[0]
        return tf.split(logits, [tf.shape(p)[0] for p in parts], 0)

    def forward_ema(self, images, training=False):
        """Logits of the EMA weights (a teacher), without updating any statistics."""
        return self.trainer.classify_ema(images, training=training)

    def unlabeled_loss(self, unlabeled_term, labeled_term=None, labels=None):
        """wu * mean_u H(u), minus the same term on the labeled images:
          --debiased (DeSSL, unbiased under MCAR):  - wu * mean_l H(l)
          --mnar_estimate (Sportisse et al.):       - wu * n_l/(n - n_l) * mean_l[H(l) (1 - phi_y)/phi_y]
        unlabeled_term, labeled_term: per-sample H on the unlabeled and on the labeled images; labels:
        the labeled images' classes (for phi_y). Returns (loss, mean_u H)."""
        mean_u = tf.reduce_mean(unlabeled_term)
        loss = self.settings.wu * mean_u
        if self.settings.get('mnar_estimate', 'none') != 'none':
            phi = tf.gather(self.labeling_probabilities(), labels)
            ratio = self.n_labeled / (self.n_total - self.n_labeled)
            loss -= self.settings.wu * ratio * tf.reduce_mean(labeled_term * (1 - phi) / phi)
        elif self.settings.get('debiased'):
            loss -= self.settings.wu * tf.reduce_mean(labeled_term)
        return loss, mean_u

    def loss(self, batch, step):
        """(scalar loss averaged over this replica's batch, dict of scalar logs)."""
        raise NotImplementedError


class EMA(tf.Module):
    """Exponential moving average of variables: avg <- decay * avg + (1 - decay) * value."""

    def __init__(self, variables, decay):
        super().__init__(name='ema')
        self.decay = decay
        self.averages = [tf.Variable(v.value, trainable=False, name=v.path.replace('/', '_'),
                                     aggregation=tf.VariableAggregation.ONLY_FIRST_REPLICA) for v in variables]

    def update(self, variables):
        for average, value in zip(self.averages, variables):
            average.assign(self.decay * average + (1 - self.decay) * value.value)


def cosine_lr(lr, progress):
    """lr * cos(7 pi/16 * progress), progress = fraction of training done, clipped to [0, 1]."""
    return lr * tf.cos(7 * math.pi / 16 * tf.clip_by_value(progress, 0., 1.))


def scheduled_lr(schedule, lr, progress):
    """Learning rate after a fraction `progress` of training: cosine, constant or linear (to 0)."""
    if schedule == 'cosine':
        return cosine_lr(lr, progress)
    if schedule == 'linear':
        return lr * (1 - tf.clip_by_value(progress, 0., 1.))
    return lr * tf.ones_like(progress)


def make_optimizer(settings, learning_rate, variables, decay_variables):
    """SGD (Nesterov momentum 0.9; weight decay is an L2 term of the loss) or AdamW with decoupled
    decay on `decay_variables` only. Built on `variables` so a checkpoint can restore its slots."""
    if settings.optimizer == 'adam':
        optimizer = keras.optimizers.AdamW(learning_rate=learning_rate, weight_decay=settings.wd)
        decayed = {id(v) for v in decay_variables}
        optimizer.exclude_from_weight_decay(var_list=[v for v in variables if id(v) not in decayed])
    else:
        optimizer = keras.optimizers.SGD(learning_rate=learning_rate, momentum=0.9, nesterov=True)
    if settings.precision == 'mixed_float16':  # dynamic loss scaling; steps with inf/NaN gradients are skipped
        optimizer = keras.optimizers.LossScaleOptimizer(optimizer)
    optimizer.build(variables)
    return optimizer


def weight_l2(variables):
    """sum(w^2) / 2 over the given variables (tf.nn.l2_loss summed)."""
    return tf.add_n([tf.nn.l2_loss(v) for v in variables])


STRATEGIES = {}  # one strategy per device set and process: new ones would reuse collective keys


def make_strategy(devicenum=0):
    """MultiWorkerMirroredStrategy when TF_CONFIG names several tasks (one process per host, started
    with its own TF_CONFIG); else MirroredStrategy over the visible GPUs (or configured logical CPUs)
    when there are several; else the default strategy. devicenum caps the local devices (0 = all)."""
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


def is_chief(strategy):
    """Whether this process writes checkpoints, summaries and statistics: the only process, the
    'chief' task, or worker 0 of a cluster without a chief."""
    resolver = getattr(strategy, 'cluster_resolver', None)
    if resolver is None or not resolver.task_type:
        return True
    if resolver.task_type == 'chief':
        return True
    return resolver.task_type == 'worker' and resolver.task_id == 0 and 'chief' not in resolver.cluster_spec().as_dict()


def split_for_replicas(stream, context):
    """Per-replica elements of a stream of global batches: replica r of R gets slice r of every
    tensor's first axis. Yields, for each step, the slices of this input pipeline's replicas."""
    replicas = context.num_replicas_in_sync
    if replicas == 1:
        return stream
    local = replicas // context.num_input_pipelines
    first = context.input_pipeline_id * local

    def split(batch):
        return {k: tf.stack(tf.split(v, replicas)[first:first + local]) for k, v in batch.items()}
    return stream.map(split).unbatch()


def confusion_image(confusion, size=256):
    """(1, H, W, 1) image of a confusion matrix (rows = true class), each row divided by its count;
    cells are enlarged to about `size` pixels in all."""
    counts = np.asarray(confusion, np.float32)
    rates = counts / np.maximum(counts.sum(axis=1, keepdims=True), 1)
    scale = max(1, size // len(rates))
    return np.kron(rates, np.ones((scale, scale), np.float32))[None, :, :, None]


def image_grid(rows, columns=8):
    """One image (1, rows*H, columns*W, C) in [0, 1] from a list of image batches in [-1, 1]."""
    lines = [tf.concat(tf.unstack(r[:columns]), axis=1) for r in rows]
    return (tf.concat(lines, axis=0)[None] + 1) / 2


class Trainer:
    """Holds the model, optimizer, EMA, data and run directory of one training run."""

    def __init__(self, algorithm_cls, settings):
        self.settings = settings
        self.params = algorithm_cls.all_params()
        if settings.deterministic:
            tf.config.experimental.enable_op_determinism()
        self.strategy = make_strategy(settings.devicenum)  # first: multi-worker collectives start with the program
        self.is_chief = is_chief(self.strategy)
        self.data = algorithm_cls.adapt_data(data.load(settings.dataset), settings)
        self.run_dir = os.path.join(settings.train_dir, str(self.data.name),
                                    settings_lib.run_name(algorithm_cls.__name__, self.params, settings))
        self.check_settings(algorithm_cls.__name__)
        replicas = self.strategy.num_replicas_in_sync
        if settings.batch % replicas:
            raise utils.UserError(f'--batch={settings.batch} does not split evenly over {replicas} devices; '
                                  f'use a multiple of {replicas}')
        self.steps_total = self.kimg_to_steps(settings.train_kimg)
        self.steps_report = max(1, self.kimg_to_steps(settings.report_kimg))
        self.steps_save = max(1, self.kimg_to_steps(settings.save_kimg))
        keras.utils.set_random_seed(settings.seed)
        keras.mixed_precision.set_global_policy(settings.precision)
        self.cta = None
        if 'cta' in views.parse_augment(settings.get('augment', 'd.d.d')):
            with tf.device('/cpu:0'):  # read by the input pipeline on the CPU, updated by the train step
                self.cta = cta.CTAugment(settings.cta_depth, settings.cta_th, settings.cta_decay)
        self.checkpoint = tf.train.Checkpoint(**self.build_state(algorithm_cls))
        self.checkpoint_dir = os.path.join(self.run_dir, 'tf')
        # every worker saves (the save is collective); only the chief's copy is kept
        save_dir = self.checkpoint_dir if self.is_chief else tempfile.mkdtemp(prefix='worker_checkpoint_')
        self.manager = tf.train.CheckpointManager(self.checkpoint, save_dir, max_to_keep=settings.keep_ckpt,
                                                  checkpoint_name='ckpt')
        self.writer = tf.summary.create_file_writer(self.checkpoint_dir) if self.is_chief \
            else tf.summary.create_noop_writer()
        self.build_views()
        self.train_call = tf.function(self._train_call)
        self.gradients = tf.function(self._gradients, jit_compile=True) if settings.xla else self._gradients
        self.predict_raw = tf.function(lambda x: self.model(x, training=False))
        self.predict_ema = tf.function(self.classify_ema)

    def build_state(self, algorithm_cls):
        """Creates (in the strategy scope) the model, step counters, algorithm, optimizer and EMA;
        returns everything a checkpoint holds, by name."""
        settings = self.settings
        with self.strategy.scope():
            info = self.data.info
            self.model = models.create_model(settings.arch, info.nclass, info.shape, filters=settings.filters,
                                             scales=settings.scales, repeat=settings.repeat,
                                             bn_momentum=settings.bn_momentum, sync_bn=settings.sync_bn)
            self.decay_variables = models.decay_variables(self.model)
            self.step = tf.Variable(0, dtype=tf.int64, trainable=False, name='step',
                                    aggregation=tf.VariableAggregation.ONLY_FIRST_REPLICA)
            self.bad_step = tf.Variable(-1, dtype=tf.int64, trainable=False, name='bad_step',
                                        aggregation=tf.VariableAggregation.ONLY_FIRST_REPLICA)
            self.algorithm = algorithm_cls(self)
            algorithm_state = self.algorithm.build()
            self.trainable = self.model.trainable_variables + self.algorithm.extra_trainable_variables()
            self.decay_variables += [v for v in self.algorithm.extra_trainable_variables() if v.path.endswith('kernel')]
            self.optimizer = make_optimizer(settings, self.learning_rate, self.trainable, self.decay_variables)
            self.ema = EMA(self.trainable, settings.ema) if settings.ema else None
        state = dict(model=self.model, optimizer=self.optimizer, step=self.step, algorithm=algorithm_state)
        if self.ema:
            state['ema'] = self.ema
        if self.cta:
            state['cta'] = self.cta
        return state

    def build_views(self):
        """The algorithm's views, plus CTAugment's probe; views to augment in the step (--deterministic)."""
        self.labeled_views, self.unlabeled_views = self.algorithm.views()
        self.step_views = [name for name, fn in {**self.labeled_views, **self.unlabeled_views}.items()
                           if getattr(fn, 'in_step', False)]
        if self.cta:
            self.labeled_views['probe'] = self.probe_view

    # ---- settings and run directory

    def kimg_to_steps(self, kimg):
        """Steps that train on `kimg` thousand (1024) labeled images."""
        return int(round(kimg * 1024 / self.settings.batch))

    def check_settings(self, algorithm_name):
        """Writes args.json, or refuses to resume a run directory made with other settings."""
        path = os.path.join(self.run_dir, 'args.json')
        saved = dict(self.settings, algorithm=algorithm_name)
        if os.path.exists(path):
            previous = utils.read_json(path, 'run settings')
            diffs = settings_lib.identity_differences(self.params, previous, self.settings)
            if diffs:
                text = ', '.join(f'{name}: {old!r} -> {new!r}' for name, old, new in diffs)
                raise utils.UserError(f'run directory {self.run_dir} was made with different settings ({text}); '
                                      f'resume with the same settings or choose another --train_dir')
        if self.is_chief:
            utils.write_json(path, saved)

    def view_fn(self, code):
        """fn(images in [0, 1], seed) of one --augment code for this dataset. With --deterministic a
        'cta' view is only weakly augmented in the pipeline and marked `in_step`: the training step
        applies CTAugment to it (see strong_in_step)."""
        info = self.data.info
        if code == 'cta' and self.settings.deterministic:
            fn = views.view_fn('d', flip=info.flip, pad=info.pad)
            fn.in_step = True
            return fn
        return views.view_fn(code, flip=info.flip, pad=info.pad, cta=self.cta)

    def strong_in_step(self, batch):
        """The batch with CTAugment applied to the `in_step` views, from the current rates, seeded by
        (seed, step, view, replica)."""
        if not self.step_views:
            return batch
        batch = dict(batch)
        replica = tf.cast(tf.distribute.get_replica_context().replica_id_in_sync_group, tf.int64)
        step_seed = tf.stack([tf.cast(self.settings.seed, tf.int64), self.step])
        for number, name in enumerate(self.step_views):
            seed = tf.random.experimental.stateless_fold_in(step_seed, 1000 + number)
            seed = tf.random.experimental.stateless_fold_in(seed, replica)
            batch[name] = data.to_unit_range(self.cta.strong((batch[name] + 1) / 2, seed))
        return batch

    def probe_view(self, images, seed):
        """CTAugment probe: the weak view under a random policy (uniform ops and levels)."""
        weak_seed, policy_seed = augment.split_seed(seed, 2)
        images = augment.weak(images, weak_seed, flip=self.data.info.flip, pad=self.data.info.pad)
        policy = self.cta.random_policy(tf.shape(images)[0], policy_seed)
        return dict(image=self.cta.apply(images, policy), ops=policy.ops, bins=policy.bins)

    def classify_ema(self, images, training=False):
        """Logits of the EMA weights (raw weights when --ema=0), in inference mode by default; never
        updates the batch-norm statistics."""
        weights = self.ema.averages[:len(self.model.trainable_variables)] if self.ema \
            else self.model.trainable_variables
        if not training and not self.ema:
            return self.model(images, training=False)
        return self.model.stateless_call(weights, self.model.non_trainable_variables, images, training=training)[0]

    def learning_rate(self):
        progress = tf.cast(self.step, tf.float32) / max(self.steps_total, 1)
        return scheduled_lr(self.settings.lr_schedule, self.settings.lr, progress)

    # ---- training

    def _gradients(self, batch):
        """(total loss, L2 term, logs, gradients) of this replica's batch; XLA-compiled with --xla."""
        with tf.GradientTape() as tape:
            loss, logs = self.algorithm.loss(batch, self.step)
            l2 = weight_l2(self.decay_variables)
            total = loss + self.settings.wd * l2 if self.settings.optimizer == 'sgd' else loss
            scaled = self.optimizer.scale_loss(total / self.strategy.num_replicas_in_sync)
        return total, l2, logs, tape.gradient(scaled, self.trainable)

    def _replica_step(self, batch):
        probe = ()
        if self.cta:  # score the probe with the EMA model before this step's update
            probs = tf.nn.softmax(self.classify_ema(batch['probe']))
            probe = (cta.proximity(probs, batch['label']), batch['probe_ops'], batch['probe_bins'])
        batch = self.strong_in_step(batch)
        total, l2, logs, gradients = self.gradients(batch)
        variables = self.trainable
        self.optimizer.apply_gradients(zip(gradients, variables))
        if self.ema:
            self.ema.update(variables)
        logs = {**logs, 'losses/wd': l2, 'monitors/lr': self.learning_rate()}
        return logs, tf.cast(~tf.math.is_finite(total), tf.float32), probe

    def _one_step(self, iterator):
        batch = next(iterator)
        logs, nonfinite, probe = self.strategy.run(self._replica_step, (batch,))
        if self.cta:  # every replica's probes, in global batch order
            proximity, ops, bins = (self.strategy.gather(t, axis=0) for t in probe)
            self.cta.update(cta.Policy(ops, bins, None, None), proximity)
        logs = {k: self.strategy.reduce('MEAN', v, axis=None) for k, v in logs.items()}
        nonfinite = self.strategy.reduce('SUM', nonfinite, axis=None)
        self.bad_step.assign(tf.where((self.bad_step < 0) & (nonfinite > 0), self.step, self.bad_step))
        self.step.assign_add(1)
        return logs

    def _train_call(self, iterator, steps):
        """Runs `steps` (>= 1) training steps; returns the logs of the last one."""
        logs = self._one_step(iterator)
        for _ in tf.range(steps - 1):
            logs = self._one_step(iterator)
        return logs

    def train_dataset(self, start_step):
        def dataset_fn(context):
            stream = self.data.train_stream(self.settings.batch, self.settings.get('uratio', 0), self.labeled_views,
                                            self.unlabeled_views, seed=self.settings.seed, start_step=start_step,
                                            end_step=self.steps_total)
            return split_for_replicas(stream, context)
        return self.strategy.distribute_datasets_from_function(dataset_fn)

    def restore(self):
        """Restores the newest readable checkpoint of the run (every worker reads the chief's);
        returns its step (0 when none)."""
        state = tf.train.get_checkpoint_state(self.checkpoint_dir)
        for path in reversed(state.all_model_checkpoint_paths if state else []):
            try:
                self.checkpoint.restore(path).assert_existing_objects_matched()
            except (tf.errors.OpError, AssertionError, ValueError) as e:
                logging.warning('Cannot read checkpoint %s (%s); trying an older one', path, str(e).splitlines()[0])
                continue
            logging.info('Resumed from %s at step %d', path, int(self.step.numpy()))
            return int(self.step.numpy())
        return 0

    def check_finite(self):
        bad = int(self.bad_step.numpy())
        if bad >= 0:
            last = self.manager.latest_checkpoint or 'none yet'
            raise TrainingDiverged(f'the loss became NaN or infinite at step {bad}; training stopped. The last good '
                                   f'checkpoint ({last}) is kept; lower --lr or check the data before resuming')

    def train(self):
        """Trains to train_kimg (resuming if a checkpoint exists); returns the final metrics."""
        start = self.restore()
        self.epochs = [e for e in stats.read_epochs(self.run_dir) if e['step'] <= start] \
            if os.path.exists(stats.epochs_path(self.run_dir)) else []  # later lines: a run killed before saving
        iterator = iter(self.train_dataset(start))
        step = start
        bar = utils.progress(total=self.steps_total, initial=start, unit='step', desc=self.data.name.target,
                             leave=True, disable=not self.is_chief or None)
        averages, seen = {}, 0
        summary_every = max(1, self.steps_report // 16)
        try:
            while step < self.steps_total:
                boundary = min(self.next_multiple(step, self.steps_report), self.next_multiple(step, self.steps_save),
                               self.next_multiple(step, summary_every), self.steps_total)
                count = min(self.settings.steps_per_call, boundary - step)
                logs = {k: float(v) for k, v in self.train_call(iterator, tf.constant(count, tf.int64)).items()}
                step += count
                bar.update(count)
                self.check_finite()
                averages = {k: averages.get(k, 0) + v * count for k, v in logs.items()}
                seen += count
                if step % summary_every == 0 or step == self.steps_total:
                    self.write_scalars({k: v / seen for k, v in averages.items()}, step)
                    averages, seen = {}, 0
                bar.set_postfix(self.postfix(logs), refresh=False)
                if self.is_chief and (step % self.steps_report == 0 or step == self.steps_total):
                    self.report(step)
                    bar.set_postfix(self.postfix(logs))
                if step % self.steps_save == 0 or step == self.steps_total:
                    self.save(step)
        finally:
            bar.close()
            self.writer.flush()
        if start >= self.steps_total and not self.epochs and self.is_chief:
            self.report(step)
        return self.results()

    def save(self, step):
        """Checkpoint of `step`; a non-chief worker's copy goes to a temporary folder, then away."""
        self.manager.save(checkpoint_number=step)
        if not self.is_chief:
            utils.remove_tree(self.manager.directory)

    @staticmethod
    def next_multiple(step, every):
        return (step // every + 1) * every

    def postfix(self, logs):
        out = {short: f'{logs[k]:.3f}' for k, short in LOG_NAMES.items() if k in logs}
        if self.epochs:
            out['acc'] = f'{self.epochs[-1]["accuracy"]:.2f}'
        return out

    # ---- evaluation and logging

    def logits(self, split, ema):
        predict = self.predict_ema if ema and self.ema else self.predict_raw
        outputs, labels = [], []
        for x, y in self.data.eval_dataset(split, self.settings.eval_batch):
            outputs.append(predict(x).numpy())
            labels.append(y.numpy())
        return np.concatenate(outputs), np.concatenate(labels)

    def evaluate(self):
        """{'ema': {split: metrics}, 'raw': {split: metrics}} on train_labeled, valid and test."""
        out = {}
        for kind in ('ema', 'raw'):
            out[kind] = {}
            for split in EVAL_SPLITS:
                if split == 'valid' and not len(self.data.valid):
                    continue
                logits, labels = self.logits(split, kind == 'ema')
                out[kind][split] = metrics.classification_metrics(logits, labels, self.data.nclass)
        return out

    def report(self, step):
        """Evaluates, writes TensorBoard summaries and a stats line, prints the accuracies."""
        result = self.evaluate()
        kimg = step * self.settings.batch / 1024
        ema, raw = result['ema'], result['raw']
        line = dict(step=step, kimg=kimg, accuracy=ema['test']['accuracy'], time=time.time())
        for kind, per_split in result.items():
            for split, m in per_split.items():
                line[f'{kind}/{split}'] = {k: v for k, v in m.items() if k != 'confusion'}
        line['ema/test']['confusion'] = ema['test']['confusion']
        self.epochs = [s for s in self.epochs if s['step'] < step] + [line]
        stats.write_epochs(self.run_dir, self.epochs)
        scalars = {'accuracy': ema['test']['accuracy'], 'accuracy/train_labeled': ema['train_labeled']['accuracy']}
        if 'valid' in ema:
            scalars['accuracy/valid'] = ema['valid']['accuracy']
        for split, m in raw.items():
            scalars[f'accuracy/raw/{split}'] = m['accuracy']
        for k, (name, acc) in enumerate(zip(self.data.info.class_names, ema['test']['per_class'])):
            if acc is not None:
                scalars[f'per_class/test/{k:03d}_{name}'] = acc
        for name in ('balanced_accuracy', 'worst_class_accuracy', 'gm_accuracy', 'cross_entropy', 'ece'):
            scalars[f'metrics/test/{name}'] = ema['test'][name]
        scalars.update(self.algorithm.report_scalars())
        self.write_scalars(scalars, step)
        self.write_views(step)
        with self.writer.as_default(step=step):
            tf.summary.image('confusion/test', confusion_image(ema['test']['confusion']))
        if self.cta:
            with self.writer.as_default(step=step):
                tf.summary.image('cta/rates', self.cta.rates_image())
                tf.summary.text('cta/rates', self.cta.rates_table())
        logging.info('kimg %-6g accuracy train/valid/test  EMA %s  raw %s', kimg,
                     '/'.join(f'{m["accuracy"]:.2f}' for m in ema.values()),
                     '/'.join(f'{m["accuracy"]:.2f}' for m in raw.values()))

    def write_scalars(self, scalars, step):
        with self.writer.as_default(step=step):
            for name, value in scalars.items():
                tf.summary.scalar(name, value)

    def write_views(self, step):
        """TensorBoard image: one row per view (labeled, weak, strong ...) of the batch of `step`."""
        stream = self.data.train_stream(self.settings.batch, self.settings.get('uratio', 0), self.labeled_views,
                                        self.unlabeled_views, seed=self.settings.seed, start_step=step,
                                        end_step=step + 1)
        batch = next(iter(stream))
        names = [v for v in (*self.labeled_views, *self.unlabeled_views) if batch[v].shape.rank == 4]
        with self.writer.as_default(step=step):
            tf.summary.image('views/' + '_'.join(names), image_grid([batch[v] for v in names]))

    def results(self):
        """Final metrics: the last EMA test accuracy and the medians of the last 1/10/20/50 epochs."""
        accuracies = stats.metric_values(self.epochs, 'accuracy')
        out = dict(run_dir=self.run_dir, step=int(self.step.numpy()), accuracy=accuracies[-1] if accuracies else None,
                   **stats.last_medians(accuracies))
        if self.epochs:
            out['final'] = self.epochs[-1]
        return out


def load_ema_model(run_dir):
    """(settings dict, DatasetInfo, Keras model holding the EMA weights of the run's newest checkpoint).

    The raw weights are used when the run has no EMA (--ema=0)."""
    saved = utils.read_json(os.path.join(run_dir, 'args.json'), 'run settings (args.json of a run directory)')
    info = records.DatasetInfo.load(data.recipe_for(data.parse_name(saved['dataset']).target).base)
    model = models.create_model(saved['arch'], info.nclass, info.shape, filters=saved['filters'],
                                scales=saved['scales'], repeat=saved['repeat'], bn_momentum=saved['bn_momentum'])
    ema = EMA(model.trainable_variables, saved['ema']) if saved['ema'] else None
    latest = tf.train.latest_checkpoint(os.path.join(run_dir, 'tf'))
    if latest is None:
        raise utils.UserError(f'no checkpoint in {run_dir}/tf; train the run first (its command is in args.json)')
    checkpoint = tf.train.Checkpoint(model=model, **({'ema': ema} if ema else {}))
    checkpoint.restore(latest).expect_partial().assert_existing_objects_matched()
    if ema:
        for variable, average in zip(model.trainable_variables, ema.averages):
            variable.assign(average)
    return saved, info, model


def main(algorithm_cls):
    """Command-line entry point of an algorithm script: flags -> training -> printed accuracy."""
    params = algorithm_cls.all_params()
    settings_lib.define_flags(params)

    def run_from_flags(argv):
        if len(argv) > 1:
            raise utils.UserError(f'unexpected arguments {argv[1:]}; settings are flags, e.g. --dataset=...')
        result = Trainer(algorithm_cls, settings_lib.from_flags(params)).train()
        print(f'{algorithm_cls.__name__} on {flags.FLAGS.dataset}: EMA test accuracy {result["accuracy"]:.2f}% '
              f'(median of the last 20 epochs {result["last20"]:.2f}%); run directory {result["run_dir"]}')
    utils.run(run_from_flags)
