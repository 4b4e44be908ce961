"""Checkpoints of a run: everything trained (weights, EMA, optimizer, step, CTAugment rates, every
algorithm variable) in <run>/tf/ckpt-<step>.{index,data-*}, plus TensorFlow's `checkpoint` state
file listing them (read by tf.train.latest_checkpoint, scripts/evaluate.py and TensorBoard).

Resume guarantees:
  * A checkpoint is the pair ckpt-N.index + ckpt-N.data-*. TensorFlow writes the data in
    ckpt-N_temp/, then moves it into place and writes the index; only then is the state file
    updated. The checkpoints on disk are found by their index files, so a lost or corrupt state
    file loses nothing (it is rewritten).
  * `restore` first reads every tensor of the newest checkpoint (checksums included) and only then
    assigns it to the variables; on ANY failure it logs one line naming the checkpoint and why,
    moves it to tf/unreadable/ and tries the next older one. A restore that failed after assigning
    (a checkpoint of another model) is never trained from: it ends in a UserError.
  * Leftovers of a killed save (ckpt-N_temp/, a data file without index, the state file's
    temporary copy) are removed at start; a failed save removes its partial files and keeps the
    previous checkpoints.
"""
import glob
import os
import re
import tempfile
from typing import Callable, Iterator

import tensorflow as tf
from absl import logging

from libml import rundir
from libml import utils

NAME = 'ckpt'
STATE_FILE = 'checkpoint'
UNREADABLE = 'unreadable'
INDEX_RE = re.compile(rf'^{NAME}-(\d+)\.index$')


def reason(error: BaseException) -> str:
    """'<type>: <first line>' of an exception, without TensorFlow's op text (utils.one_line)."""
    text = utils.one_line((str(error).strip().splitlines() or [''])[0])
    return f'{type(error).__name__}: {text}' if text else type(error).__name__


def find(directory: str) -> list:
    """[(step, prefix)] of the checkpoints in `directory` (those with an index file), newest first."""
    found = []
    for name in os.listdir(directory) if os.path.isdir(directory) else []:
        match = INDEX_RE.match(name)
        if match:
            found.append((int(match.group(1)), os.path.join(directory, name[:-len('.index')])))
    return sorted(found, reverse=True)


def files_of(prefix: str) -> list:
    """The files of one checkpoint: index first (so a half-deleted checkpoint is never a candidate)."""
    return [prefix + '.index'] + sorted(glob.glob(glob.escape(prefix) + '.data-*'))


def remove_checkpoint(prefix: str) -> None:
    """Deletes a checkpoint's files and its temporary folder, if any."""
    for path in files_of(prefix):
        if os.path.exists(path):
            os.remove(path)
    utils.remove_tree(prefix + '_temp')


def remove_leftovers(directory: str) -> list:
    """Removes what a killed save leaves: ckpt-N_temp/ folders, data files without an index, temporary
    copies of the state file. Returns the removed names."""
    removed = []
    if not os.path.isdir(directory):
        return removed
    indexed = {prefix for _, prefix in find(directory)}
    for name in sorted(os.listdir(directory)):
        path = os.path.join(directory, name)
        orphan_data = re.match(rf'^({NAME}-\d+)\.data-\d+-of-\d+$', name)
        if (name.startswith(NAME + '-') and name.endswith('_temp') and os.path.isdir(path)) or \
                (orphan_data and os.path.join(directory, orphan_data.group(1)) not in indexed) or \
                (name.startswith(STATE_FILE + '.tmp') and os.path.isfile(path)):
            utils.remove_tree(path) if os.path.isdir(path) else os.remove(path)
            removed.append(name)
    return removed


def read_all(prefix: str) -> None:
    """Reads every tensor of a checkpoint (TensorFlow verifies each one's checksum); raises on any
    problem (missing or truncated file, bad index, checksum mismatch)."""
    reader = tf.train.load_checkpoint(prefix)
    for name in reader.get_variable_to_shape_map():
        reader.get_tensor(name)


def readable(found: list, skip: Callable[[str, BaseException], None]) -> Iterator[tuple]:
    """(step, prefix) of the checkpoints `found` (by `find`, newest first) whose every tensor reads
    (`read_all`), in that order; `skip(prefix, error)` is called for each one that cannot be read."""
    for number, prefix in found:
        try:
            read_all(prefix)
        except Exception as e:  # noqa: BLE001 (any unreadable checkpoint: the caller falls back to an older one)
            skip(prefix, e)
            continue
        yield number, prefix


def write_state(directory: str, prefixes: list) -> None:
    """TensorFlow's `checkpoint` state file (text protobuf), oldest first, the last one the latest;
    paths relative to `directory`."""
    names = [os.path.basename(p) for p in prefixes]
    lines = ([f'model_checkpoint_path: "{names[-1]}"'] if names else []) + \
        [f'all_model_checkpoint_paths: "{n}"' for n in names]
    with utils.atomic_write(os.path.join(directory, STATE_FILE)) as tmp:
        with open(tmp, 'w') as f:
            f.write('\n'.join(lines) + '\n')


def state_paths(directory: str):
    """The checkpoint names listed in the state file, or None when it is missing or unreadable."""
    try:
        state = tf.train.get_checkpoint_state(directory)
    except Exception:  # noqa: BLE001 (a corrupt state file is rebuilt from the index files)
        return None
    return [os.path.basename(p) for p in state.all_model_checkpoint_paths] if state else None


class Checkpoints:
    """Save and restore of `checkpoint` in `directory`, keeping the newest `keep`. A non-chief worker
    reads the chief's checkpoints and saves (the save is collective) to a temporary folder that is
    then removed; only the chief changes `directory`."""

    def __init__(self, checkpoint: tf.train.Checkpoint, directory: str, keep: int, is_chief: bool = True):
        self.checkpoint = checkpoint
        checkpoint.save_counter  # created now, so in every checkpoint as with Checkpoint.save (restore expects it)
        self.directory = directory
        self.keep = keep
        self.is_chief = is_chief
        self.latest = None  # prefix of the newest good checkpoint of this run

    def restore(self, step: tf.Variable) -> int:
        """Restores the newest readable checkpoint of the run (every worker reads the chief's);
        returns its step (0 when there is none)."""
        if self.is_chief:
            removed = remove_leftovers(self.directory)
            if removed:
                logging.info('Removed the leftovers of an interrupted save in %s: %s', self.directory,
                             ', '.join(removed))
        candidates = find(self.directory)
        listed = state_paths(self.directory)
        if candidates and listed is None:
            logging.warning('The checkpoint state file %s is missing or unreadable; found %s by their index files',
                            os.path.join(self.directory, STATE_FILE), ', '.join(os.path.basename(p) for _, p in
                                                                             candidates))
        failures, mismatched = [], []

        def unreadable(prefix, error):
            failures.append(f'{os.path.basename(prefix)}: {reason(error)}')
            self.set_aside(prefix, reason(error))

        for number, prefix in readable(candidates, unreadable):
            try:
                self.checkpoint.read(prefix).assert_existing_objects_matched()
            except Exception as e:  # noqa: BLE001 (variables may be assigned: only a full restore may follow)
                failures.append(f'{os.path.basename(prefix)}: {reason(e)}')
                mismatched.append(prefix)
                logging.warning('Cannot restore checkpoint %s (%s); trying an older one', prefix, reason(e))
                continue
            for other in mismatched:  # every variable they set was set again by this full restore
                self.set_aside(other, 'does not fit this model')
            self.latest = prefix
            kept = [p for n, p in reversed(candidates) if n <= number]
            if self.is_chief and listed != [os.path.basename(p) for p in kept]:
                write_state(self.directory, kept)
            logging.info('Resumed from %s at step %d', prefix, int(step.numpy()))
            return int(step.numpy())
        if mismatched:
            raise utils.UserError(f'no checkpoint of {self.directory} fits this model ({"; ".join(failures)}); '
                                  f'resume with the code and settings that made it, or move {self.directory} '
                                  f'away to start over')
        if failures:
            logging.warning('No readable checkpoint in %s: training starts from step 0 (the unreadable ones are in '
                            '%s)', self.directory, os.path.join(self.directory, UNREADABLE))
        return 0

    def set_aside(self, prefix: str, why: str) -> None:
        """Logs why a checkpoint cannot be read; the chief moves its files to tf/unreadable/."""
        if not self.is_chief:
            logging.warning('Cannot read checkpoint %s (%s); trying an older one', prefix, why)
            return
        target = os.path.join(self.directory, UNREADABLE)
        logging.warning('Cannot read checkpoint %s (%s); moved to %s/, trying an older one', prefix, why, target)
        with rundir.disk_errors(target):
            os.makedirs(target, exist_ok=True)
            for path in files_of(prefix):
                if os.path.exists(path):
                    os.replace(path, os.path.join(target, os.path.basename(path)))

    def save(self, step: int) -> None:
        """Writes ckpt-<step>, then the state file, then deletes the checkpoints beyond `keep`. A failed
        write removes its partial files (the previous checkpoints stay) and, for a full or read-only
        disk, is a UserError naming the folder."""
        directory = self.directory if self.is_chief else tempfile.mkdtemp(prefix='worker_checkpoint_')
        prefix = os.path.join(directory, f'{NAME}-{step}')
        try:
            self.checkpoint.write(prefix)
        except BaseException as e:
            remove_checkpoint(prefix)
            error = rundir.disk_error(e, directory)
            if error is None:
                raise
            kept = f'the previous checkpoint {os.path.basename(self.latest)} is kept' if self.latest else \
                'no checkpoint was saved yet'
            raise utils.UserError(f'cannot save checkpoint {os.path.basename(prefix)}: {error} ({kept})') from None
        if not self.is_chief:
            utils.remove_tree(directory)
            return
        self.latest = prefix
        with rundir.disk_errors(directory):
            present = [p for _, p in reversed(find(directory))]
            write_state(directory, present[-self.keep:])
            for old in present[:-self.keep]:
                remove_checkpoint(old)
