"""Small shared helpers: data root, user-facing errors, atomic file writes, downloads, console output.

Everything that writes a file the user keeps goes through `atomic_write`: the data is
written under a temporary name in the same folder and renamed over the target only
once complete, so a killed process never leaves a half-written file behind. Written
files get the permissions of the user's umask, like any file the user creates.

Console: `quiet_tensorflow` (before importing tensorflow) drops TensorFlow's known
start-up lines; `use_short_logs` (done by `run`) gives log lines a short `HH:MM:SS`
prefix and prints them above an active progress bar (`progress`).
"""
import contextlib
import hashlib
import json
import logging as python_logging
import math
import os
import re
import shutil
import sys
import tempfile
import time
import urllib.request
from typing import Callable, Optional

from absl import app
from absl import flags
from absl import logging


class UserError(Exception):
    """Bad input from the user. The message is one line: what is wrong and how to fix it."""


def ml_data():
    """The data root: $ML_DATA, or ./data when unset."""
    return os.path.abspath(os.environ.get('ML_DATA') or 'data')


def project_root():
    """Folder holding libml/, the entry scripts and scripts/."""
    return os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def shell_path(path):
    """`path` relative to the current folder when inside it, else absolute (for printed commands)."""
    path = os.path.abspath(path)
    rel = os.path.relpath(path)
    return rel if not rel.startswith('..') else path


def script(name):
    """How to call scripts/<name> from the current folder; its console command when installed with pip."""
    path = os.path.join(project_root(), 'scripts', name)
    if os.path.isfile(path):
        return 'python ' + shell_path(path)
    return 'fixmatch-' + os.path.splitext(name)[0].replace('_', '-')


def current_umask() -> int:
    """The process umask (read from /proc on Linux, so no thread ever sees it changed)."""
    try:
        with open('/proc/self/status') as f:
            for line in f:
                if line.startswith('Umask:'):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    mask = os.umask(0o22)
    os.umask(mask)
    return mask


def file_mode() -> int:
    """Permission bits of a new regular file: 0o666 minus the umask (0o644 under the usual 022)."""
    return 0o666 & ~current_umask()


@contextlib.contextmanager
def atomic_write(path):
    """Yields a temporary path beside `path`; renames it to `path` if the block succeeds.

    The temporary file exists (empty) with the permissions of the umask (mkstemp's own are 0600).
    On any exception the temporary file is removed and `path` is left untouched.
    """
    folder = os.path.dirname(os.path.abspath(path)) or '.'
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix='.' + os.path.basename(path) + '.', suffix='.tmp', dir=folder)
    try:
        os.fchmod(fd, file_mode())
    finally:
        os.close(fd)
    try:
        yield tmp
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.remove(tmp)
        raise


def write_json(path, obj):
    """Writes `obj` as JSON (sorted keys, stable bytes for the same content) atomically."""
    with atomic_write(path) as tmp:
        with open(tmp, 'w') as f:
            json.dump(obj, f, indent=1, sort_keys=True)
            f.write('\n')


def round_floats(obj, digits: int = 4):
    """`obj` with every float rounded to `digits` decimals, in nested dicts, lists and tuples (tuples become
    lists, as in JSON); ints, bools, strings and None are unchanged; NaN and infinities are kept."""
    if isinstance(obj, float):
        return round(obj, digits) if math.isfinite(obj) else obj
    if isinstance(obj, dict):
        return {k: round_floats(v, digits) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [round_floats(v, digits) for v in obj]
    if hasattr(obj, 'dtype') and hasattr(obj, 'tolist'):  # numpy scalars and arrays
        return round_floats(obj.tolist(), digits)
    return obj


def read_json(path, what='file'):
    """Reads a JSON file; a missing or unparsable file is a UserError naming `what`."""
    try:
        with open(path) as f:
            return json.load(f)
    except FileNotFoundError:
        raise UserError(f'missing {what} {path}') from None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise UserError(f'corrupt {what} {path} ({e}); delete it and create it again') from None


def md5sum(path, chunk=1 << 20):
    digest = hashlib.md5()
    with open(path, 'rb') as f:
        for block in iter(lambda: f.read(chunk), b''):
            digest.update(block)
    return digest.hexdigest()


def download(url, path, md5=None):
    """Downloads `url` to `path` (atomically) unless a file with the right checksum is there.

    Returns `path`. A checksum mismatch after download is a UserError.
    """
    if os.path.exists(path) and (md5 is None or md5sum(path) == md5):
        return path
    logging.info('Downloading %s to %s', url, path)
    try:
        with atomic_write(path) as tmp:
            with urllib.request.urlopen(url, timeout=60) as response, open(tmp, 'wb') as f:
                total = int(response.headers.get('Content-Length') or 0) or None
                with progress(total=total, unit='B', unit_scale=True, desc=os.path.basename(path)) as bar:
                    for block in iter(lambda: response.read(1 << 20), b''):
                        f.write(block)
                        bar.update(len(block))
            if md5 is not None and md5sum(tmp) != md5:
                raise UserError(f'checksum mismatch for {url}: the download is corrupt or the file changed; '
                                f'delete {path} and retry, or place a good copy there')
    except OSError as e:
        raise UserError(f'cannot download {url} ({e}); download it by hand to {path} and run again') from None
    return path


def progress(iterable=None, **kwargs):
    """A tqdm progress bar: a widget in Jupyter (tqdm.auto), else a text bar on stderr. TQDM_DISABLE=1 hides it."""
    from tqdm.auto import tqdm
    kwargs.setdefault('dynamic_ncols', True)
    kwargs.setdefault('leave', False)
    return tqdm(iterable, **kwargs)


# ---------------------------------------------------------------------------------------------------------------------
# Quiet TensorFlow start-up.

GLOG_PREFIX = r'[IWEF]\d{4} \d\d:\d\d:\d+\.\d+\s+\d+ [\w.\-/]+:\d+\] '
# TensorFlow's known start-up lines, each a full-line pattern; everything else written meanwhile is shown.
STARTUP_LINES = tuple(re.compile(pattern) for pattern in (
    r'WARNING: All log messages before absl::InitializeLog\(\) is called are written to STDERR',
    GLOG_PREFIX + r'Could not find cuda drivers on your machine, GPU will not be used\.',
    GLOG_PREFIX + r'This TensorFlow binary is optimized to use available CPU instructions in performance-critical '
                  r'operations\.',
    r'To enable the following instructions: [\w .,]+, in other operations, rebuild TensorFlow with the appropriate '
    r'compiler flags\.',
    GLOG_PREFIX + r'oneDNN custom operations are on\. You may see slightly different numerical results due to '
                  r'floating-point round-off errors from different computation orders\. To turn them off, set the '
                  r'environment variable `TF_ENABLE_ONEDNN_OPTS=0`\.',
    GLOG_PREFIX + r'failed call to cuInit: .*\(303\)',  # CUDA_ERROR_UNKNOWN: no usable GPU, TensorFlow uses the CPU
    GLOG_PREFIX + r'Unable to register cu(DNN|FFT|BLAS) factory: Attempting to register factory for plugin cu\w+ when '
                  r'one has already been registered',
    GLOG_PREFIX + r'TF-TRT Warning: Could not find TensorRT',
    GLOG_PREFIX + r'computation placer already registered\. Please check linkage and avoid linking the same target '
                  r'more than once\.',
))


def is_startup_line(line: str) -> bool:
    """Whether `line` (without its newline) is one of TensorFlow's known, harmless start-up lines."""
    return any(pattern.fullmatch(line) for pattern in STARTUP_LINES)


@contextlib.contextmanager
def filtered_stderr(drop=is_startup_line):
    """Captures file descriptor 2 (C++ and Python writes alike) during the block, then writes back every
    line for which `drop(line)` is false, in order. Used around TensorFlow's import and device set-up."""
    sys.stderr.flush()
    saved = os.dup(2)
    capture = tempfile.TemporaryFile()
    os.dup2(capture.fileno(), 2)
    try:
        yield
    finally:
        with contextlib.suppress(Exception):
            sys.stderr.flush()
        os.dup2(saved, 2)
        os.close(saved)
        capture.seek(0)
        text = capture.read().decode('utf-8', 'replace')
        capture.close()
        kept = [line for line in text.splitlines(keepends=True) if not drop(line.rstrip('\r\n'))]
        if kept:
            sys.stderr.write(''.join(kept))
            sys.stderr.flush()


def quiet_tensorflow():
    """Imports TensorFlow and finds its devices with its known start-up lines dropped (`STARTUP_LINES`:
    the absl pre-init notice, CPU-instruction and oneDNN notices, 'no CUDA driver' and cuInit 303 on a
    machine without GPU); every other line, real errors included, is shown. Sets TF_CPP_MIN_LOG_LEVEL=2
    unless set (C++ INFO and WARNING lines off later on) and drops TensorFlow's Python INFO lines (e.g. one
    per checkpoint save, some through absl's logger). Call before importing tensorflow; runs once."""
    os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')
    python_logging.getLogger('tensorflow').setLevel(python_logging.WARNING)
    absl_logger = logging.get_absl_logger()
    if _not_tensorflow_info not in absl_logger.filters:
        absl_logger.addFilter(_not_tensorflow_info)
    if 'tensorflow' in sys.modules:
        return
    with filtered_stderr():
        try:
            import tensorflow as tf
        except ModuleNotFoundError as e:
            if e.name != 'tensorflow':
                raise
            raise SystemExit(f'error: TensorFlow is not installed for {sys.executable}; install the requirements '
                             f'with scripts/setup.sh (or pip install -r requirements.txt)') from None
        tf.config.list_physical_devices()  # CUDA initialisation: prints the cuInit line


def _not_tensorflow_info(record):
    """Logging filter: drops records below WARNING logged from inside the tensorflow package."""
    return record.levelno >= python_logging.WARNING or f'{os.sep}tensorflow{os.sep}' not in record.pathname


# ---------------------------------------------------------------------------------------------------------------------
# Short log lines printed above the progress bar.

class ShortFormatter(python_logging.Formatter):
    """`HH:MM:SS message`; `HH:MM:SS warning: message` (error:, fatal:) from WARNING on."""

    def format(self, record):
        text = record.getMessage()
        if record.exc_info:
            text += '\n' + self.formatException(record.exc_info)
        level = '' if record.levelno < python_logging.WARNING else {
            python_logging.WARNING: 'warning: ', python_logging.ERROR: 'error: '}.get(record.levelno, 'fatal: ')
        return f'{time.strftime("%H:%M:%S", time.localtime(record.created))} {level}{text}'


class ProgressBarHandler(python_logging.Handler):
    """Logging handler printing each line with tqdm.write to stderr: above an active progress bar, not into it."""

    def emit(self, record):
        try:
            from tqdm.auto import tqdm
            tqdm.write(self.format(record), file=sys.stderr)
        except Exception:  # noqa: BLE001 (logging must never raise)
            self.handleError(record)


def use_short_logs(level=None):
    """Routes absl and Python logging to one `ProgressBarHandler` with `ShortFormatter` on the root logger,
    in place of absl's handler (and its long `I1201 09:29:10.123456 123 file.py:12]` prefix). Idempotent.
    `level` also sets the absl logger's level, for use outside app.run (a notebook): Python's logging.INFO
    or absl's logging.INFO (absl's levels 1..-3 are converted)."""
    root = python_logging.getLogger()
    absl_handler = logging.get_absl_handler()
    root.removeHandler(absl_handler)
    if _absl_handler_off not in absl_handler.filters:  # should app.run add it back later
        absl_handler.addFilter(_absl_handler_off)
    if not any(isinstance(h, ProgressBarHandler) for h in root.handlers):
        handler = ProgressBarHandler()
        handler.setFormatter(ShortFormatter())
        root.addHandler(handler)
    if level is not None:
        logging.get_absl_logger().setLevel(logging.converter.absl_to_standard(level) if level < 10 else level)


def _absl_handler_off(record):
    return False


HELP_ARGS = ('--help', '-help', '-?', '--helpshort', '-h')


def run(main, help_text: Optional[Callable[[], str]] = None):
    """absl's app.run, with short log lines (`use_short_logs`) and UserError printed as one `error: ...` line and
    exit status 2: above any progress bar, without TensorFlow's op text and without traceback; --debug (or
    FIXMATCH_DEBUG=1) prints the traceback too. help_text() replaces absl\'s --help text."""
    if 'debug' not in flags.FLAGS:
        flags.DEFINE_bool('debug', False, 'On an error, also print its Python traceback (same as FIXMATCH_DEBUG=1).')

    def report(error):
        try:
            from tqdm import tqdm
            for bar in list(getattr(tqdm, '_instances', ())):  # a bar left on the line would prefix the message
                bar.close()
        except Exception:  # noqa: BLE001 (the message matters more than the bar)
            pass
        if os.environ.get('FIXMATCH_DEBUG', '') not in ('', '0') or (flags.FLAGS.is_parsed() and flags.FLAGS.debug):
            import traceback
            traceback.print_exception(error)
        print(f'error: {one_line(error)}', file=sys.stderr)
        sys.exit(2)

    def wrapped(argv):
        use_short_logs()
        try:
            return main(argv)
        except UserError as e:
            report(e)

    def parse_flags(argv):
        if help_text and any(arg in HELP_ARGS for arg in argv[1:argv.index('--') if '--' in argv else None]):
            print(help_text())
            sys.exit(0)
        try:
            return flags.FLAGS(argv)
        except flags.Error as e:
            report(e)
    app.run(wrapped, flags_parser=parse_flags)


def one_line(error) -> str:
    """The message of an error on one line, without TensorFlow's '{{function_node ...}}' and '[Op:...]' text."""
    text = re.sub(r'\{\{function_node [^}]*\}\}\s*', '', str(error))
    text = re.sub(r'\s*\[Op:[^\]]*\]( name: [^\s;)]*)?', '', text)
    return '; '.join(line.strip() for line in text.splitlines() if line.strip())


def remove_tree(path):
    shutil.rmtree(path, ignore_errors=True)
