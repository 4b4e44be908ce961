"""Evaluation and reporting: metrics of the raw and EMA models on the labeled, validation and test
images, TensorBoard summaries, and stats/epochs.jsonl (one JSON line per evaluation).

TensorBoard keeps the original scalar names (`accuracy` = EMA test accuracy, `accuracy/valid`,
`accuracy/train_labeled`, `accuracy/raw/...`, the losses and monitors of the step) plus the test
metrics, per-class accuracies (scalars and a bar chart), the confusion matrix (a figure with class
names and counts), a grid of the views, CTAugment's rates (an image and a text table, each under its
own tag) and the run's settings in the HParams dashboard. Every tag holds one summary type.
"""
import time

import numpy as np
import tensorflow as tf
from absl import logging

from libml import figures
from libml import keys
from libml import metrics
from libml import stats
from libml import utils

STATS_DIGITS = 4  # decimals of the floats in stats/epochs.jsonl

EVAL_SPLITS = ('train_labeled', 'valid', 'test')
TEST_METRICS = ('balanced_accuracy', 'worst_class_accuracy', 'gm_accuracy', 'cross_entropy', 'ece')


def image_grid(rows, columns: int = 8) -> tf.Tensor:
    """One image (1, rows*H, columns*W, C) in [0, 1] from a list of image batches in [-1, 1]."""
    lines = [tf.concat(tf.unstack(r[:columns]), axis=1) for r in rows]
    return (tf.concat(lines, axis=0)[None] + 1) / 2


def postfix(logs: dict, epochs: list) -> dict:
    """The progress bar's short fields: the step's main losses and the last test accuracy."""
    out = {short: f'{logs[k]:.3f}' for k, short in keys.SHORT_NAMES.items() if k in logs}
    if epochs:
        out['acc'] = f'{epochs[-1]["accuracy"]:.2f}'
    return out


class Reporter:
    """Evaluates a Trainer's models and writes what TensorBoard and stats/ show."""

    def __init__(self, trainer):
        self.trainer = trainer
        self.data = trainer.data
        self.writer = trainer.writer
        model = trainer.model
        self.predict_raw = tf.function(lambda x: model(x, training=False))
        self.predict_ema = tf.function(trainer.classify_ema)
        if getattr(trainer, 'abc', None) is not None:  # --abc: the auxiliary head's logits
            averages = {id(v): a for v, a in zip(trainer.trainable, trainer.ema.averages)} if trainer.ema else None
            self.predict_raw = tf.function(lambda x: trainer.abc.classify(x))
            self.predict_ema = tf.function(lambda x: trainer.abc.classify(x, averages))

    def logits(self, split: str, ema: bool):
        predict = self.predict_ema if ema and self.trainer.ema else self.predict_raw
        outputs, labels = [], []
        for x, y in self.data.eval_dataset(split, self.trainer.settings.eval_batch,
                                                  self.trainer.settings.eval_size):
            outputs.append(predict(x).numpy())
            labels.append(y.numpy())
        return np.concatenate(outputs), np.concatenate(labels)

    def evaluate(self) -> dict:
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

    def report(self, step: int, epochs: list) -> list:
        """Evaluates, writes TensorBoard summaries and a stats line, prints the accuracies; returns
        the epochs list with this evaluation's line last."""
        t = self.trainer
        result = self.evaluate()
        kimg = step * t.settings.batch / 1024
        ema, raw = result['ema'], result['raw']
        line = dict(step=step, kimg=kimg, accuracy=ema['test']['accuracy'], time=time.time())
        for kind, per_split in result.items():
            for split, m in per_split.items():
                line[f'{kind}/{split}'] = {k: v for k, v in m.items() if k != 'confusion'}
        line['ema/test']['confusion'] = ema['test']['confusion']
        line = utils.round_floats(line, STATS_DIGITS)
        epochs = [s for s in epochs if s['step'] < step] + [line]
        stats.write_epochs(t.run_dir, epochs)
        scalars = {'accuracy': ema['test']['accuracy'], 'accuracy/train_labeled': ema['train_labeled']['accuracy']}
        if 'valid' in ema:
            scalars['accuracy/valid'] = ema['valid']['accuracy']
        for split, m in raw.items():
            scalars[f'accuracy/raw/{split}'] = m['accuracy']
        class_names = self.data.info.class_names
        for k, (name, acc) in enumerate(zip(class_names, ema['test']['per_class'])):
            if acc is not None:
                scalars[f'per_class/test/{k:03d}_{figures.safe_tag(name)}'] = acc
        for name in TEST_METRICS:
            scalars[f'metrics/test/{name}'] = ema['test'][name]
        scalars.update(t.algorithm.report_scalars())
        self.write_scalars(scalars, step)
        self.write_views(step)
        with self.writer.as_default(step=step):
            tf.summary.image('confusion/test', figures.confusion_figure(ema['test']['confusion'], class_names))
            tf.summary.image('per_class_chart/test', figures.per_class_figure(ema['test']['per_class'], class_names))
            if t.cta:
                tf.summary.image('cta/rates_image', t.cta.rates_image())
                tf.summary.text('cta/rates_table', t.cta.rates_table())
        logging.info('kimg %-6g accuracy train/valid/test  EMA %s  raw %s', kimg,
                     '/'.join(f'{m["accuracy"]:.2f}' for m in ema.values()),
                     '/'.join(f'{m["accuracy"]:.2f}' for m in raw.values()))
        return epochs

    def write_hparams(self, settings, params: dict, run_name: str) -> None:
        """The run's identity settings in TensorBoard's HParams dashboard (its metrics are the scalars:
        accuracy, metrics/test/..., next to every other run's)."""
        from tensorboard.plugins.hparams import api as hp
        values = {name: settings[name] for name, p in params.items()
                  if p.identity and isinstance(settings.get(name), (bool, int, float, str))}
        values['dataset'] = str(self.data.name)
        with self.writer.as_default(step=0):
            hp.hparams(values, trial_id=run_name)

    def write_scalars(self, scalars: dict, step: int) -> None:
        with self.writer.as_default(step=step):
            for name, value in scalars.items():
                tf.summary.scalar(name, value)

    def write_views(self, step: int) -> None:
        """TensorBoard image: one row per view (labeled, weak, strong ...) of the batch of `step`."""
        t = self.trainer
        raw = next(iter(t.input_stream(step, step + 1)))
        batch = t.step_fn.views(raw, tf.constant(step, tf.int64), replicas=1)
        names = [name for name, _, _ in t.view_plan] + ([keys.PROBE] if t.cta else [])
        with self.writer.as_default(step=step):
            tf.summary.image('views/' + '_'.join(names), image_grid([batch[v] for v in names]))


def results(run_dir: str, step: int, epochs: list) -> dict:
    """Final metrics: the last EMA test accuracy and the medians of the last 1/10/20/50 epochs."""
    accuracies = stats.metric_values(epochs, 'accuracy')
    out = dict(run_dir=run_dir, step=step, accuracy=accuracies[-1] if accuracies else None,
               **stats.last_medians(accuracies))
    if epochs:
        out['final'] = epochs[-1]
    return out
