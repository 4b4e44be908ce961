"""Evaluation and reporting: metrics of the raw and EMA models on the labeled, validation and test
images, TensorBoard summaries, and stats/epochs.jsonl (one JSON line per evaluation).

TensorBoard keeps the original scalar names (`accuracy` = EMA test accuracy, `accuracy/valid`,
`accuracy/train_labeled`, `accuracy/raw/...`, the losses and monitors of the step) plus the test
metrics, per-class accuracies, the confusion matrix, a grid of the views and CTAugment's rates.
"""
import time

import numpy as np
import tensorflow as tf
from absl import logging

from libml import keys
from libml import metrics
from libml import stats

EVAL_SPLITS = ('train_labeled', 'valid', 'test')
TEST_METRICS = ('balanced_accuracy', 'worst_class_accuracy', 'gm_accuracy', 'cross_entropy', 'ece')


def confusion_image(confusion, size: int = 256) -> np.ndarray:
    """(1, H, W, 1) image of a confusion matrix (rows = true class), each row divided by its count;
    cells are enlarged to about `size` pixels in all."""
    counts = np.asarray(confusion, np.float32)
    rates = counts / np.maximum(counts.sum(axis=1, keepdims=True), 1)
    scale = max(1, size // len(rates))
    return np.kron(rates, np.ones((scale, scale), np.float32))[None, :, :, None]


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

    def logits(self, split: str, ema: bool):
        predict = self.predict_ema if ema and self.trainer.ema else self.predict_raw
        outputs, labels = [], []
        for x, y in self.data.eval_dataset(split, self.trainer.settings.eval_batch):
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
        epochs = [s for s in epochs if s['step'] < step] + [line]
        stats.write_epochs(t.run_dir, epochs)
        scalars = {'accuracy': ema['test']['accuracy'], 'accuracy/train_labeled': ema['train_labeled']['accuracy']}
        if 'valid' in ema:
            scalars['accuracy/valid'] = ema['valid']['accuracy']
        for split, m in raw.items():
            scalars[f'accuracy/raw/{split}'] = m['accuracy']
        for k, (name, acc) in enumerate(zip(self.data.info.class_names, ema['test']['per_class'])):
            if acc is not None:
                scalars[f'per_class/test/{k:03d}_{name}'] = acc
        for name in TEST_METRICS:
            scalars[f'metrics/test/{name}'] = ema['test'][name]
        scalars.update(t.algorithm.report_scalars())
        self.write_scalars(scalars, step)
        self.write_views(step)
        with self.writer.as_default(step=step):
            tf.summary.image('confusion/test', confusion_image(ema['test']['confusion']))
        if t.cta:
            with self.writer.as_default(step=step):
                tf.summary.image('cta/rates', t.cta.rates_image())
                tf.summary.text('cta/rates', t.cta.rates_table())
        logging.info('kimg %-6g accuracy train/valid/test  EMA %s  raw %s', kimg,
                     '/'.join(f'{m["accuracy"]:.2f}' for m in ema.values()),
                     '/'.join(f'{m["accuracy"]:.2f}' for m in raw.values()))
        return epochs

    def write_scalars(self, scalars: dict, step: int) -> None:
        with self.writer.as_default(step=step):
            for name, value in scalars.items():
                tf.summary.scalar(name, value)

    def write_views(self, step: int) -> None:
        """TensorBoard image: one row per view (labeled, weak, strong ...) of the batch of `step`."""
        t = self.trainer
        stream = self.data.train_stream(t.settings.batch, t.settings.get('uratio', 0), t.labeled_views,
                                        t.unlabeled_views, seed=t.settings.seed, start_step=step, end_step=step + 1)
        batch = next(iter(stream))
        names = [v for v in (*t.labeled_views, *t.unlabeled_views) if batch[v].shape.rank == 4]
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
