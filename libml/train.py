"""The training loop shared by every algorithm: the `Algorithm` contract, `Trainer` and `main`.

`Trainer.train` reads top to bottom: build (devices, data, run directory, state, views, step),
restore the newest checkpoint, loop (steps, summaries, evaluations, checkpoints), report. The
pieces live in their own modules:
  devices      tf.distribute strategy, which process writes, per-replica input (libml/devices.py)
  state        model, optimizer and schedule, EMA, the EMA model (libml/state.py)
  checkpoints  save / restore with fallback to older checkpoints (libml/checkpoints.py)
  step         the compiled step: views, loss, gradients, update, EMA, CTAugment (libml/step.py)
  report       evaluation, TensorBoard, stats/epochs.jsonl (libml/report.py)
  debias       label-bias corrections any algorithm can take (libml/debias.py)
  crest        CReST generations: `train_generations` runs one Trainer per generation (libml/crest.py)
  rundir       the run directory and its settings (libml/rundir.py)
The schedule is counted in thousands of labeled images (kimg): train_kimg, report_kimg (one
"epoch": evaluate + log), save_kimg (checkpoint).
"""
import os
import sys

import keras
import tensorflow as tf
from absl import flags
from absl import logging

import cta
from libml import abc_head
from libml import backbones
from libml import checkpoints
from libml import crest
from libml import data
from libml import daso as daso_lib
from libml import debias
from libml import devices
from libml import finetune
from libml import keys
from libml import models
from libml import params as params_lib
from libml import report
from libml import rundir
from libml import settings as settings_lib
from libml import state as state_lib
from libml import stats
from libml import step as step_lib
from libml import utils
from libml import views


class TrainingDiverged(utils.UserError):
    """The loss became NaN or infinite."""


class Algorithm:
    """One SSL method on the shared loop. The contract, everything the loop reads and calls:

    Class attributes
      params       {name: Param}, the method's own settings (flags, keyword arguments, run name,
                   resume check), merged with params.COMMON and debias.PARAMS. The loop reads
                   `uratio` (unlabeled images per labeled one; absent = none), `augment` (L.W.S
                   view codes, libml/views.py) and `wu` (weight of the unlabeled term).
      label_bias   debias.Support: which label-bias corrections the method takes; the others are
                   refused with one line (debias.check).
    Methods
      views()      ({name: code}, {name: code}): the labeled and unlabeled views of a step, each an
                   --augment code; `standard_views` builds the usual ones from --augment.
      build()      {name: trackable} of the method's own state, created in the strategy scope after
                   the model, checkpointed with everything else.
      loss(batch, step) -> (scalar loss of this replica's batch, {log key: scalar}). batch holds
                   keys.LABEL, keys.X_INDEX, keys.U_LABEL, keys.U_INDEX and one float32 image batch in [-1, 1] per
                   view name; step is the int64 step counter. Log keys: libml/keys.py.
      extra_trainable_variables(), report_scalars(), adapt_data(data, settings) (optional).
    Helpers for loss(): forward / forward_views (one batch-norm pass), forward_ema (the teacher),
    self.bias (debias.LabelBias), self.trainer.kimg_to_steps(kimg).
    """
    params = {}
    label_bias = debias.Support()

    def __init__(self, trainer):
        self.trainer = trainer
        self.settings = trainer.settings
        self.nclass = trainer.data.nclass
        self.bias = trainer.bias

    @classmethod
    def all_params(cls) -> dict:
        return {**params_lib.COMMON, **debias.PARAMS, **cls.params}

    @classmethod
    def adapt_data(cls, data, settings):
        """The training data this algorithm uses (e.g. every label for a fully supervised baseline)."""
        del settings
        return data

    @classmethod
    def run(cls, model=None, **settings) -> dict:
        """Trains with these settings (keyword arguments, same names as the flags) and returns
        the run's final metrics. For notebooks: no flag parsing involved; the progress bar is a notebook
        widget there and the epoch lines are printed. `model`: your own classifier, a keras.Model (its
        architecture and starting weights) or a function (nclass, input_shape) -> keras.Model giving logits;
        it is saved as <run_dir>/model.keras and args.json records arch='model' (libml/backbones.py)."""
        utils.use_short_logs(level=logging.INFO)
        if model is not None:
            if settings.get('arch', backbones.MODEL) not in ('wrn', backbones.MODEL):
                raise utils.UserError(f'run() got both model= and arch={settings["arch"]!r}; give one of them')
            settings['arch'] = backbones.MODEL
        return train_with_baseline(cls, settings_lib.resolve(cls.all_params(), settings), model=model)

    def standard_views(self, labeled_strong: bool = False):
        """From --augment=L.W.S: labeled X (L), with `labeled_strong` also X_STRONG (S); unlabeled
        U_WEAK (W) and U_STRONG (S)."""
        labeled, weak, strong = views.parse_augment(self.settings.augment)
        labeled_views = {keys.X: labeled, **({keys.X_STRONG: strong} if labeled_strong else {})}
        return labeled_views, {keys.U_WEAK: weak, keys.U_STRONG: strong}

    def views(self):
        """The standard views, with the labeled strong view when a label-bias correction computes the
        unlabeled term on the labeled images."""
        return self.standard_views(labeled_strong=self.bias.needs_labeled_term)

    def build(self) -> dict:
        return {}

    def extra_trainable_variables(self) -> list:
        """Trainable variables of the algorithm's own layers (e.g. a rotation head), trained and
        averaged by the EMA together with the model's."""
        return []

    def report_scalars(self) -> dict:
        """Extra TensorBoard scalars written at every evaluation."""
        return self.bias.report_scalars(self.trainer.data.label_meta.get('label_probs'))

    def forward(self, *parts, training: bool = True, update_bn: bool = True, features: bool = False):
        """Logits of several image batches through ONE forward pass (shared batch-norm statistics).

        update_bn=False runs in training mode without updating the batch-norm moving statistics.
        features=True (with --abc or --daso; training, update_bn): also the pooled features, (logits list, features
        list)."""
        images = tf.concat(parts, 0)
        sizes = [tf.shape(p)[0] for p in parts]
        features_model = self.features_model()
        if features and features_model is not None:
            logits, pooled = features_model(images, training=training)
            return tf.split(logits, sizes, 0), tf.split(pooled, sizes, 0)
        if update_bn or not training:
            logits = self.trainer.model(images, training=training)
        else:
            model = self.trainer.model
            logits = model.stateless_call(model.trainable_variables, model.non_trainable_variables, images,
                                          training=True)[0]
        logits = tf.split(logits, sizes, 0)
        return (logits, [None] * len(parts)) if features else logits

    def features_model(self):
        """The model that also returns the pooled features (--abc, --daso), None without."""
        for addon in (getattr(self.trainer, 'abc', None), getattr(self.trainer, 'daso', None)):
            if addon is not None:
                return addon.features_model
        return None

    def forward_views(self, batch: dict, *names: str, features: bool = False, **kwargs):
        """{name: logits} of the named views present in `batch`, through ONE forward pass; features=True:
        ({name: logits}, {name: pooled features (None without --abc or --daso)}); --daso reads them."""
        present = [name for name in names if name in batch]
        out = self.forward(*(batch[name] for name in present), features=features, **kwargs)
        if features:
            pooled = dict(zip(present, out[1]))
            if getattr(self.trainer, 'daso', None) is not None:
                self.trainer.daso.observe(pooled)
            return dict(zip(present, out[0])), pooled
        return dict(zip(present, out))

    def balanced_head_loss(self, features: dict, batch: dict, step):
        """--abc: (the ABC head's loss, its logs) on the pooled features of the labeled (keys.X), weak and
        first strong unlabeled views (libml/abc_head.py); (0, {}) without."""
        if getattr(self.trainer, 'abc', None) is None:
            return 0., {}
        return self.trainer.abc.loss(features[keys.X], batch[keys.LABEL], features[keys.U_WEAK],
                                     features[keys.U_STRONG], step)

    def forward_ema(self, images, training: bool = False):
        """Logits of the EMA weights (a teacher), without updating any statistics."""
        return self.trainer.classify_ema(images, training=training)

    def loss(self, batch: dict, step: tf.Tensor):
        """(scalar loss averaged over this replica's batch, dict of scalar logs)."""
        raise NotImplementedError


class Trainer:
    """Holds the model, optimizer, EMA, data and run directory of one training run."""

    def __init__(self, algorithm_cls, settings, generation: crest.Generation = None, model=None):
        """`generation`: with --crest, the generation this Trainer trains (its folder, labeled set, length).
        `model`: Algorithm.run's model= (a keras.Model or a builder), for --arch=model."""
        self.settings = settings
        self.generation = generation
        self.params = algorithm_cls.all_params()
        debias.check(settings, algorithm_cls.label_bias, algorithm_cls.__name__)
        backbones.check_settings(settings, self.params)
        self.model_source = model
        if settings.deterministic:
            tf.config.experimental.enable_op_determinism()
        self.strategy = devices.make_strategy(settings.devicenum)  # first: multi-worker collectives start early
        self.is_chief = devices.is_chief(self.strategy)
        self.data = algorithm_cls.adapt_data(data.load(settings.dataset), settings)
        self.run_dir = rundir.run_dir(settings, self.params, algorithm_cls.__name__, str(self.data.name))
        if generation:  # --crest: its labeled set (+ the previous selection) and its folder
            self.data = generation.training_data(self.data)
            self.run_dir = generation.run_dir(self.run_dir)
        rundir.check_settings(self.run_dir, self.params, settings, algorithm_cls.__name__)  # reads only
        self.model_archive = self.saved_model_archive = state_lib.run_model_archive(self.run_dir, settings.arch)
        replicas = self.strategy.num_replicas_in_sync
        if settings.batch % replicas:
            raise utils.UserError(f'--batch={settings.batch} does not split evenly over {replicas} devices; '
                                  f'use a multiple of {replicas}')
        generations = generation.count if generation else 1  # --crest: --train_kimg is split over the generations
        self.steps_total = self.kimg_to_steps(settings.train_kimg / generations)
        if self.steps_total < 1:
            split = f' split over --crest={generations} generations' if generation else ''
            raise utils.UserError(f'--train_kimg={settings.train_kimg:g}{split} is less than one step of --batch='
                                  f'{settings.batch} ({settings.batch / 1024:g} kimg); train longer')
        self.steps_report = max(1, self.kimg_to_steps(settings.report_kimg))
        self.step_first_report = self.kimg_to_steps(settings.first_report_kimg)  # 0: none
        self.steps_save = max(1, self.kimg_to_steps(settings.save_kimg))
        self.steps_warmup = self.kimg_to_steps(settings.get('lr_warmup_kimg', 0.))
        if self.steps_warmup >= self.steps_total:
            raise utils.UserError(f'--lr_warmup_kimg={settings.lr_warmup_kimg:g} ({self.steps_warmup} steps) is not '
                                  f'shorter than --train_kimg={settings.train_kimg:g} ({self.steps_total} steps); '
                                  f'use a shorter warm-up')
        keras.utils.set_random_seed(settings.seed)
        keras.mixed_precision.set_global_policy(settings.precision)
        checkpoint = tf.train.Checkpoint(**self.build_state(algorithm_cls))
        self.checkpoint_dir = os.path.join(self.run_dir, 'tf')
        self.checkpoints = checkpoints.Checkpoints(checkpoint, self.checkpoint_dir, settings.keep_ckpt, self.is_chief)
        self.writer = tf.summary.create_noop_writer()  # train() opens the events file after the restore
        self.build_views()
        self.step_fn = step_lib.Step(self)
        self.reporter = report.Reporter(self)
        # Every check passed: only now is the run directory created, locked (chief) and args.json written.
        self.lock = rundir.open_run(self.run_dir, settings, algorithm_cls.__name__, self.is_chief)
        if self.is_chief and self.model_archive is not None and self.saved_model_archive is None:
            with rundir.disk_errors(self.run_dir), \
                    utils.atomic_write(os.path.join(self.run_dir, backbones.MODEL_FILE)) as tmp, open(tmp, 'wb') as f:
                f.write(self.model_archive)

    def build_state(self, algorithm_cls) -> dict:
        """Creates (in the strategy scope) the model, step counters, algorithm, optimizer and EMA;
        returns everything a checkpoint holds, by name."""
        settings = self.settings
        with self.strategy.scope():
            self.cta = None
            if views.uses_cta(settings.get('augment', 'd.d.d')):
                self.cta = cta.CTAugment(settings.cta_depth, settings.cta_th, settings.cta_decay)
            if self.model_source is not None:  # run(model=...): saved, then rebuilt from the file in this scope
                self.model_archive = backbones.archive(self.model_source, self.data.nclass, self.data.info.shape)
                if self.saved_model_archive is not None and \
                        not backbones.same_variables(self.model_archive, self.saved_model_archive):
                    raise utils.UserError(f'run directory {self.run_dir} was made with another model= (its '
                                          f'{backbones.MODEL_FILE} has other variables); choose another --train_dir')
            self.model = state_lib.create_model(settings, self.data.info, archive=self.model_archive)
            self.decay_variables = models.decay_variables(self.model)
            self.step = tf.Variable(0, dtype=tf.int64, trainable=False, name='step',
                                    aggregation=tf.VariableAggregation.ONLY_FIRST_REPLICA)
            self.bad_step = tf.Variable(-1, dtype=tf.int64, trainable=False, name='bad_step',
                                        aggregation=tf.VariableAggregation.ONLY_FIRST_REPLICA)
            self.bias = debias.LabelBias(settings, self.data.labeled.labels,
                                         len(self.data.unlabeled) + len(self.data.valid), self.data.nclass,
                                         n_unlabeled=len(self.data.unlabeled), kimg_to_steps=self.kimg_to_steps,
                                         alignment=self.generation.alignment() if self.generation else None)
            self.abc = abc_head.BalancedHead(settings, self.model, self.data.labeled.labels, self.data.nclass,
                                             self.steps_total) if settings.get('abc') else None
            self.daso = daso_lib.Daso(settings, self.model, self.data.nclass,
                                      daso_lib.warmup_steps(settings, self.kimg_to_steps),
                                      self.ema_averages) if settings.get('daso') else None
            self.bias.daso = self.daso
            self.algorithm = algorithm_cls(self)
            algorithm_state = {**self.bias.build(), **(self.abc.build() if self.abc else {}),
                               **(self.daso.build() if self.daso else {}), **self.algorithm.build()}
            extra = self.algorithm.extra_trainable_variables() + (self.abc.trainable_variables() if self.abc else [])
            self.trainable = self.model.trainable_variables + extra
            layers = [obj for obj in algorithm_state.values() if isinstance(obj, keras.layers.Layer)]
            kernels = models.kernel_ids(*layers)  # the algorithm's own heads: their kernels, by identity
            self.decay_variables += [v for v in extra if id(v) in kernels]
            scales = None
            if settings.get('layer_decay', 1.0) != 1.0:  # lr * layer_decay^(D - depth) (libml/finetune.py)
                scales = finetune.lr_scales(self.model, self.trainable, settings.layer_decay)
                logging.info('--layer_decay=%g: %d depths, learning-rate factors %s', settings.layer_decay,
                             len(set(scales)), ', '.join(f'{f:.3g}' for f in sorted(set(scales))))
            self.optimizer = state_lib.make_optimizer(settings, self.learning_rate, self.trainable,
                                                      self.decay_variables, scales)
            self.ema = state_lib.EMA(self.trainable, settings.ema) if settings.ema else None
        state = dict(model=self.model, optimizer=self.optimizer, step=self.step, algorithm=algorithm_state)
        if self.ema:
            state['ema'] = self.ema
        if self.cta:
            state['cta'] = self.cta
        return state

    def build_views(self) -> None:
        """The algorithm's views: view_plan = [(name, 'x' (labeled) or 'u' (unlabeled), views.View)],
        labeled views first, in the algorithm's order (the order numbers their random streams)."""
        labeled, unlabeled = self.algorithm.views()
        self.view_plan = [(name, source, views.make_view(code, self.data.info, self.cta))
                          for source, named in (('x', labeled), ('u', unlabeled)) for name, code in named.items()]

    def kimg_to_steps(self, kimg: float) -> int:
        """Steps that train on `kimg` thousand (1024) labeled images."""
        return int(round(kimg * 1024 / self.settings.batch))

    def ema_averages(self):
        """{id(trained variable): its EMA average}, None without EMA."""
        return {id(v): a for v, a in zip(self.trainable, self.ema.averages)} if self.ema else None

    def classify_ema(self, images, training: bool = False):
        """Logits of the EMA weights (raw weights when --ema=0); see state.classify."""
        return state_lib.classify(self.model, self.ema, images, training)

    def learning_rate(self):
        """The learning rate of the current step (--lr_schedule, after --lr_warmup_kimg's warm-up)."""
        if self.settings.get('lr_warmup_kimg', 0.) and self.steps_warmup:  # (a warm-up under one step: none)
            return state_lib.warmup_lr(self.settings.lr_schedule, self.settings.lr, self.step, self.steps_total,
                                       self.steps_warmup, self.settings.get('lr_end', 0.))
        progress = tf.cast(self.step, tf.float32) / max(self.steps_total, 1)
        return state_lib.scheduled_lr(self.settings.lr_schedule, self.settings.lr, progress,
                                      self.settings.get('lr_end', 0.))

    def input_stream(self, start_step: int, end_step: int, replicas: int = 1, pipelines: int = 1, pipeline: int = 0):
        """The raw inputs of steps [start_step, end_step) for one input pipeline (data.input_stream)."""
        s = self.settings
        return self.data.input_stream(s.batch, s.get('uratio', 0) * s.batch, seed=s.seed, start_step=start_step,
                                      end_step=end_step, replicas=replicas, pipelines=pipelines, pipeline=pipeline)

    def train_dataset(self, start_step: int):
        """Per-replica raw inputs from `start_step`: each input pipeline (one per worker) reads only the
        rows of its own replicas."""
        def dataset_fn(context):
            return self.input_stream(start_step, self.steps_total, context.num_replicas_in_sync,
                                     context.num_input_pipelines, context.input_pipeline_id)
        return self.strategy.distribute_datasets_from_function(dataset_fn)

    def restore(self) -> int:
        """Restores the newest readable checkpoint; returns its step (0 when none)."""
        return self.checkpoints.restore(self.step)

    def train_call(self, iterator, steps):
        return self.step_fn.train_call(iterator, steps)

    def check_finite(self) -> None:
        bad = int(self.bad_step.numpy())
        if bad >= 0:
            last = self.checkpoints.latest or 'none yet'
            raise TrainingDiverged(f'the loss became NaN or infinite at step {bad}; training stopped. The last good '
                                   f'checkpoint ({last}) is kept; lower --lr or check the data before resuming')

    def train(self) -> dict:
        """Trains to train_kimg (resuming if a checkpoint exists); returns the final metrics. The run
        directory stays locked meanwhile; a full or read-only disk ends it with one UserError line."""
        with rundir.disk_errors(self.run_dir):
            if self.lock:
                self.lock.acquire()
            try:
                return self.train_from(self.open_events(self.restore()))
            finally:
                if self.lock:
                    self.lock.release()

    def open_events(self, start: int) -> int:
        """Drops the TensorBoard events after step `start` (written after the checkpoint resumed from:
        each step shows once) and opens a new events file (chief). Returns `start`."""
        self.writer.close()
        if self.is_chief:
            rundir.drop_events_after(rundir.event_files(self.checkpoint_dir), start)
            self.writer = self.reporter.writer = tf.summary.create_file_writer(self.checkpoint_dir)
        return start

    def train_from(self, start: int) -> dict:
        """The training loop from step `start` (restored) to train_kimg."""
        if self.is_chief and not start:
            self.reporter.write_hparams(self.settings, self.params, os.path.basename(self.run_dir))
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
                early = [self.step_first_report] if step < self.step_first_report else []
                boundary = min(next_multiple(step, self.steps_report), next_multiple(step, self.steps_save), *early,
                               next_multiple(step, summary_every), self.steps_total)
                count = min(self.settings.steps_per_call, boundary - step)
                logs = {k: float(v) for k, v in self.train_call(iterator, tf.constant(count, tf.int64)).items()}
                step += count
                bar.update(count)
                self.check_finite()
                averages = {k: averages.get(k, 0) + v * count for k, v in logs.items()}
                seen += count
                if step % summary_every == 0 or step == self.steps_total:
                    self.reporter.write_scalars({k: v / seen for k, v in averages.items()}, step)
                    averages, seen = {}, 0
                bar.set_postfix(report.postfix(logs, self.epochs), refresh=False)
                if self.is_chief and (step % self.steps_report == 0 or step in (self.steps_total, self.step_first_report)):
                    self.epochs = self.reporter.report(step, self.epochs)
                    bar.set_postfix(report.postfix(logs, self.epochs))
                if step % self.steps_save == 0 or step == self.steps_total:
                    self.checkpoints.save(step)
        finally:
            bar.close()
            self.writer.flush()
        if start >= self.steps_total and not self.epochs and self.is_chief:
            self.epochs = self.reporter.report(step, self.epochs)
        return report.results(self.run_dir, int(self.step.numpy()), self.epochs)


BASELINE_MODULE, BASELINE_CLASS = 'fully_supervised', 'FullySupervised'


def baseline_settings(settings) -> dict:
    """The supervised baseline of a run: every common setting of the run (model, batch, schedule, seed,
    devices), the labeled view of its --augment, one evaluation at the end (no early one)."""
    labeled_view = views.parse_augment(settings.augment)[0] if 'augment' in settings else 'd'
    common = {name: settings[name] for name in params_lib.COMMON if name in settings}
    return dict(common, baseline=False, augment=f'{labeled_view}.d.d', first_report_kimg=0.,
                report_kimg=settings.train_kimg, save_kimg=settings.train_kimg)


def train_generations(algorithm_cls, settings, model=None) -> dict:
    """--crest=G: trains generations g = 0 .. G-1, each a new Trainer on the labeled set plus the selection of
    the previous one (libml/crest.py), starting at the first generation without a selection file (a killed
    run resumes there, from its checkpoint); returns the last generation's final metrics."""
    params, name = algorithm_cls.all_params(), algorithm_cls.__name__
    top = rundir.run_dir(settings, params, name, str(data.parse_name(settings.dataset)))
    rundir.check_settings(top, params, settings, name)  # reads only
    generation = crest.first_generation(top, settings)
    top_lock = None
    try:
        while True:
            trainer = Trainer(algorithm_cls, settings, generation, model=model)
            logging.info('CReST generation %d of %d in %s', generation.index + 1, generation.count, trainer.run_dir)
            if top_lock is None and not generation.last:  # the run directory: args.json, locked while it trains
                top_lock = rundir.open_run(top, settings, name, trainer.is_chief)
            result = trainer.train()
            if generation.last:
                return result
            with rundir.disk_errors(top):
                generation = crest.next_generation(trainer, generation, top)
    finally:
        if top_lock:
            top_lock.release()


def train_with_baseline(algorithm_cls, settings, model=None) -> dict:
    """Trains (with --crest, its generations); with --baseline also the supervised baseline of the same budget,
    whose final metrics are returned under 'baseline' (its run directory sits beside the run's). `model`:
    run()'s model= (both runs)."""
    result = train_generations(algorithm_cls, settings, model) if settings.get('crest') else \
        Trainer(algorithm_cls, settings, model=model).train()
    if settings.get('baseline') and algorithm_cls.__name__ != BASELINE_CLASS:
        import importlib
        baseline_cls = getattr(importlib.import_module(BASELINE_MODULE), BASELINE_CLASS)
        logging.info('The supervised baseline: %s on the labeled images alone, same model and budget',
                     BASELINE_CLASS)
        baseline = settings_lib.resolve(baseline_cls.all_params(), baseline_settings(settings))
        result['baseline'] = Trainer(baseline_cls, baseline, model=model).train()
    return result


def result_line(name: str, dataset: str, result: dict) -> str:
    """The line a training command ends with: EMA test accuracy, the median of the last 20 epochs and,
    with --baseline, the supervised baseline's accuracy and the difference."""
    line = (f'{name} on {dataset}: EMA test accuracy {result["accuracy"]:.2f}% (median of the last 20 epochs '
            f'{result["last20"]:.2f}%)')
    if 'baseline' in result:
        base = result['baseline']['accuracy']
        line += (f'; the same model on the labeled images alone: {base:.2f}% ({result["accuracy"] - base:+.2f} points '
                 f'from the unlabeled images)')
    return line + f'; run directory {result["run_dir"]}'


def next_multiple(step: int, every: int) -> int:
    return (step // every + 1) * every


def main(algorithm_cls) -> None:
    """Command-line entry point of an algorithm script: flags -> training -> printed accuracy."""
    params = algorithm_cls.all_params()
    script = os.path.basename(sys.argv[0])
    settings_lib.define_flags(algorithm_cls.params, f'{script}: {algorithm_cls.__name__}\'s own settings')
    settings_lib.define_flags({n: p for n, p in debias.PARAMS.items() if n not in algorithm_cls.params},
                              'label-bias add-ons (libml/debias.py; the algorithm says which it supports)')
    settings_lib.define_flags(params, 'common settings: data, model, schedule, optimisation, devices (libml/params.py)')

    def run_from_flags(argv):
        if len(argv) > 1:
            raise utils.UserError(f'unexpected arguments {argv[1:]}; settings are flags, e.g. --dataset=...')
        result = train_with_baseline(algorithm_cls, settings_lib.from_flags(params))
        print(result_line(algorithm_cls.__name__, flags.FLAGS.dataset, result))
    utils.run(run_from_flags, help_text=lambda: settings_lib.grouped_help(sys.modules['__main__'].__doc__ or ''))
