"""Small shared helpers: data root, user-facing errors, atomic file writes, downloads.

Everything that writes a file the user keeps goes through `atomic_write`: the data is
written under a temporary name in the same folder and renamed over the target only
once complete, so a killed process never leaves a half-written file behind.
"""
import contextlib
import hashlib
import json
import logging as python_logging
import os
import shutil
import sys
import tempfile
import urllib.request

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
    """How to call scripts/<name> from the current folder."""
    return 'python ' + shell_path(os.path.join(project_root(), 'scripts', name))


@contextlib.contextmanager
def atomic_write(path):
    """Yields a temporary path beside `path`; renames it to `path` if the block succeeds.

    On any exception the temporary file is removed and `path` is left untouched.
    """
    folder = os.path.dirname(os.path.abspath(path)) or '.'
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix='.' + os.path.basename(path) + '.', suffix='.tmp', dir=folder)
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
    """A tqdm progress bar on stderr (hidden when stderr is not a terminal and TQDM_DISABLE is set)."""
    from tqdm import tqdm
    kwargs.setdefault('dynamic_ncols', True)
    kwargs.setdefault('leave', False)
    return tqdm(iterable, **kwargs)


def quiet_tensorflow():
    """Silences TensorFlow's C++ start-up chatter and its Python INFO lines (e.g. one per checkpoint
    save, some through absl's logger); call before importing tensorflow. Warnings and errors show."""
    os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')
    python_logging.getLogger('tensorflow').setLevel(python_logging.WARNING)
    logging.get_absl_logger().addFilter(_not_tensorflow_info)


def _not_tensorflow_info(record):
    """Logging filter: drops records below WARNING logged from inside the tensorflow package."""
    return record.levelno >= python_logging.WARNING or f'{os.sep}tensorflow{os.sep}' not in record.pathname


def run(main):
    """absl's app.run, with UserError printed as one `error: ...` line and exit status 2."""
    def wrapped(argv):
        try:
            return main(argv)
        except UserError as e:
            print(f'error: {e}', file=sys.stderr)
            sys.exit(2)
    def parse_flags(argv):
        try:
            return flags.FLAGS(argv)
        except flags.Error as e:
            print(f'error: {e}', file=sys.stderr)
            sys.exit(2)
    app.run(wrapped, flags_parser=parse_flags)


def remove_tree(path):
    shutil.rmtree(path, ignore_errors=True)
