"""The run directory: <train_dir>/<dataset>/<algorithm and its non-default settings>/ holding
args.json (the settings), lock (the process training in it), tf/ (TensorBoard events and
checkpoints) and stats/ (one JSON line of metrics per epoch). A directory made with other settings
is refused.

Nothing is written before every setting is checked (`check_settings` only reads); `open_run` then
creates the directory, takes the lock and writes args.json. The lock is fcntl.flock on <run>/lock,
held while a process trains: a second process refuses with the first one's id and host; a lock
left by a process that is gone is free again (the kernel drops it) and is taken over.
A full or read-only disk is one UserError naming the folder and the fix (`disk_errors`).
"""
import contextlib
import errno
import fcntl
import glob
import os
import socket
import time

import tensorflow as tf
from absl import logging

from libml import settings as settings_lib
from libml import utils

LOCK_NAME = 'lock'
DISK_ERRNOS = {errno.ENOSPC: 'the disk is full', errno.EDQUOT: 'the disk quota is exceeded',
               errno.EROFS: 'the file system is read-only', errno.EACCES: 'permission denied',
               errno.EPERM: 'permission denied', errno.ENOTDIR: 'a file is where a folder must go',
               errno.EEXIST: 'a file is where a folder must go', errno.EFBIG: 'the file is too large'}
DISK_TEXTS = {'No space left on device': 'the disk is full', 'Disk quota exceeded': 'the disk quota is exceeded',
              'Read-only file system': 'the file system is read-only', 'Permission denied': 'permission denied',
              'Not a directory': 'a file is where a folder must go', 'File too large': 'the file is too large'}


def run_dir(settings, params: dict, algorithm: str, dataset: str) -> str:
    """<train_dir>/<dataset>/<run name>."""
    return os.path.join(os.path.expanduser(settings.train_dir), dataset,
                        settings_lib.run_name(algorithm, params, settings))


def check_settings(path: str, params: dict, settings, algorithm: str) -> None:
    """Refuses to resume a run directory made with other settings (reads only)."""
    args_path = os.path.join(path, 'args.json')
    if os.path.exists(args_path):
        previous = utils.read_json(args_path, 'run settings')
        diffs = settings_lib.identity_differences(params, previous, settings)
        if diffs:
            text = ', '.join(f'{name}: {old!r} -> {new!r}' for name, old, new in diffs)
            raise utils.UserError(f'run directory {path} was made with different settings ({text}); '
                                  f'resume with the same settings or choose another --train_dir')


def disk_error(error: BaseException, path: str):
    """'<path>: <what>; <fix>' when `error` is a full, read-only or unwritable disk, else None."""
    what = None
    if isinstance(error, OSError):
        what = DISK_ERRNOS.get(error.errno)
        path = error.filename or path
    elif isinstance(error, tf.errors.OpError):
        what = next((v for k, v in DISK_TEXTS.items() if k in str(error)), None)
        if what is None and isinstance(error, tf.errors.ResourceExhaustedError) and 'OOM' not in str(error):
            what = 'the disk is full'
    if what is None:
        return None
    fix = 'free some space' if 'full' in what or 'quota' in what or 'large' in what else \
        'move that file away' if 'file is where' in what else 'make it writable'
    return f'{path}: {what}; {fix} or choose another --train_dir, then run again (it resumes)'


@contextlib.contextmanager
def disk_errors(path: str, doing: str = 'write'):
    """Turns a full, read-only or unwritable disk met inside the block into one UserError line
    'cannot <doing> <path>: <what>; <fix>'."""
    try:
        yield
    except (OSError, tf.errors.OpError) as e:
        text = disk_error(e, path)
        if text is None:
            raise
        raise utils.UserError(f'cannot {doing} {text}') from None


class RunLock:
    """fcntl.flock on <run>/lock, which holds 'pid host time' of the process training in the run.
    One lock per directory and process (a second Trainer of the same process shares it)."""
    held = {}  # real path -> open lock file of this process

    def __init__(self, directory: str):
        self.path = os.path.join(directory, LOCK_NAME)
        self.key = os.path.realpath(self.path)

    def acquire(self) -> None:
        """Takes the lock; UserError naming the process that holds it."""
        if self.key in RunLock.held:
            return
        with disk_errors(self.path, 'create the lock file'):
            f = open(self.path, 'a+')
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as e:
            f.seek(0)
            holder = f.read().split()
            f.close()
            if e.errno not in (errno.EAGAIN, errno.EACCES, errno.EWOULDBLOCK):
                raise utils.UserError(f'cannot lock {self.path} ({e.strerror}); the file system may not support '
                                      f'locks: choose another --train_dir') from None
            who = f'process {holder[0]} on host {holder[1]}' if len(holder) >= 2 else 'another process'
            raise utils.UserError(f'run directory {os.path.dirname(self.path)} is in use by {who} (see '
                                  f'{self.path}); wait until it ends or stop it, or choose another --train_dir')
        f.seek(0)
        previous = f.read().split()
        if len(previous) >= 2 and (previous[0], previous[1]) != (str(os.getpid()), socket.gethostname()):
            logging.info('Taking over the lock of process %s on host %s, which is gone', previous[0], previous[1])
        with disk_errors(self.path):
            f.seek(0)
            f.truncate()
            f.write(f'{os.getpid()} {socket.gethostname()} {time.strftime("%Y-%m-%dT%H:%M:%S")}\n')
            f.flush()
        RunLock.held[self.key] = f

    def release(self) -> None:
        f = RunLock.held.pop(self.key, None)
        if f is not None:
            f.close()  # drops the flock


def open_run(path: str, settings, algorithm: str, is_chief: bool = True):
    """After every check passed: creates the run directory, locks it and writes args.json (chief
    only; other workers write nothing). Returns the RunLock (None on other workers)."""
    if not is_chief:
        return None
    with disk_errors(path, 'create the run directory'):
        os.makedirs(path, exist_ok=True)
    lock = RunLock(path)
    lock.acquire()
    with disk_errors(path):
        remove_temporary_files(path)
        utils.write_json(os.path.join(path, 'args.json'), dict(settings, algorithm=algorithm))
    return lock


def remove_temporary_files(path: str) -> None:
    """Removes the temporary files of utils.atomic_write (.<name>.*.tmp) a killed process left in the
    run directory, stats/ and tf/."""
    for folder in (path, os.path.join(path, 'stats'), os.path.join(path, 'tf')):
        for tmp in glob.glob(os.path.join(glob.escape(folder), '.*.tmp')):
            if os.path.isfile(tmp):
                os.remove(tmp)


# ---------------------------------------------------------------------------------------------
# TensorBoard events after a resume.

def event_files(directory: str) -> list:
    return sorted(glob.glob(os.path.join(glob.escape(directory), 'events.out.tfevents.*')))


def read_events(path: str) -> list:
    """The serialized Event records of an events file; a truncated last record (a killed writer) ends it."""
    records = []
    try:
        for record in tf.data.TFRecordDataset(path):
            records.append(record.numpy())
    except tf.errors.DataLossError:
        pass
    return records


def drop_events_after(files: list, step: int) -> int:
    """Rewrites (atomically) each events file without the events of steps after `step`, the restored
    checkpoint's: after a resume TensorBoard shows each step once (step 0: the files are removed).
    Returns the number of events dropped."""
    from tensorflow.core.util import event_pb2
    dropped = 0
    for path in files:
        records = read_events(path)
        if step <= 0:  # nothing was kept of that run: its bookkeeping (hparams at step 0) goes too
            os.remove(path)
            dropped += len(records)
            continue
        kept = [r for r in records if event_pb2.Event.FromString(r).step <= step]
        if len(kept) == len(records) and os.path.getsize(path) == sum(len(r) + 16 for r in records):
            continue
        with utils.atomic_write(path) as tmp, tf.io.TFRecordWriter(tmp) as writer:
            for record in kept:
                writer.write(record)
        dropped += len(records) - len(kept)
    if dropped:
        logging.info('Dropped %d TensorBoard events after step %d (written after the checkpoint resumed from)',
                     dropped, step)
    return dropped
