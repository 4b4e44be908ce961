"""Checkpoints of a run: everything trained (weights, EMA, optimizer, step, CTAugment rates, every
algorithm variable) through tf.train.CheckpointManager in <run>/tf/.

TensorFlow writes a checkpoint's data files, then renames its index into place: a killed run
resumes from its last complete checkpoint. Restore tries the newest one first and falls back to
older ones when one cannot be read.
"""
import tempfile

import tensorflow as tf
from absl import logging

from libml import utils


class Checkpoints:
    """Save and restore of `checkpoint` in `directory`; a non-chief worker saves to a temporary
    folder (the save is collective) that is then removed."""

    def __init__(self, checkpoint: tf.train.Checkpoint, directory: str, keep: int, is_chief: bool = True):
        self.checkpoint = checkpoint
        self.directory = directory
        self.is_chief = is_chief
        save_dir = directory if is_chief else tempfile.mkdtemp(prefix='worker_checkpoint_')
        self.manager = tf.train.CheckpointManager(checkpoint, save_dir, max_to_keep=keep, checkpoint_name='ckpt')

    @property
    def latest(self) -> str:
        return self.manager.latest_checkpoint

    def restore(self, step: tf.Variable) -> int:
        """Restores the newest readable checkpoint of the run (every worker reads the chief's);
        returns its step (0 when none)."""
        state = tf.train.get_checkpoint_state(self.directory)
        for path in reversed(state.all_model_checkpoint_paths if state else []):
            try:
                self.checkpoint.restore(path).assert_existing_objects_matched()
            except (tf.errors.OpError, AssertionError, ValueError) as e:
                logging.warning('Cannot read checkpoint %s (%s); trying an older one', path, str(e).splitlines()[0])
                continue
            logging.info('Resumed from %s at step %d', path, int(step.numpy()))
            return int(step.numpy())
        return 0

    def save(self, step: int) -> None:
        """Checkpoint of `step`; a non-chief worker's copy goes to a temporary folder, then away."""
        self.manager.save(checkpoint_number=step)
        if not self.is_chief:
            utils.remove_tree(self.manager.directory)
