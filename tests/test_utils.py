"""libml/utils.py: file permissions, round_floats, the quiet TensorFlow start, short log lines, progress bars."""
import io
import logging as python_logging
import math
import os
import stat
import subprocess
import sys
import textwrap

import numpy as np
import pytest
from absl import logging

from conftest import ROOT
from libml import utils

# Lines TensorFlow 2.21 printed at `import tensorflow` and its first device query on this CPU machine.
STARTUP = [
    'WARNING: All log messages before absl::InitializeLog() is called are written to STDERR',
    'I0000 00:00:1796117914.855977    6062 cudart_stub.cc:31] Could not find cuda drivers on your machine, GPU will '
    'not be used.',
    'I0000 00:00:1796117914.937234    6062 cpu_feature_guard.cc:227] This TensorFlow binary is optimized to use '
    'available CPU instructions in performance-critical operations.',
    'To enable the following instructions: AVX2 FMA, in other operations, rebuild TensorFlow with the appropriate '
    'compiler flags.',
    'E0000 00:00:1796117920.793722    6062 cuda_platform.cc:52] failed call to cuInit: INTERNAL: CUDA error: Failed '
    'call to cuInit: UNKNOWN ERROR (303)',
    'I1201 09:29:10.123456  123 cpu_feature_guard.cc:210] oneDNN custom operations are on. You may see slightly '
    'different numerical results due to floating-point round-off errors from different computation orders. To turn '
    'them off, set the environment variable `TF_ENABLE_ONEDNN_OPTS=0`.',
]
REAL = [
    'E0000 00:00:1796117920.793722    6062 cuda_platform.cc:52] failed call to cuInit: CUDA_ERROR_NO_DEVICE (100)',
    'E1201 09:29:10.000001    77 op_kernel.cc:1830] OP_REQUIRES failed: out of memory',
    'Traceback (most recent call last):',
    'I0000 00:00:1796117914.855977    6062 cudart_stub.cc:31] Could not find cuda drivers on your machine, GPU will '
    'not be used. And something else.',
]


def python(code, env=None, cwd=None):
    return subprocess.run([sys.executable, '-c', textwrap.dedent(code)], capture_output=True, text=True,
                          env=env, cwd=cwd, timeout=120)


def clean_env(**extra):
    env = {k: v for k, v in os.environ.items() if k != 'TF_CPP_MIN_LOG_LEVEL'}
    env.update({'PYTHONPATH': ROOT, **extra})
    return env


# ---- files

@pytest.mark.parametrize('umask, mode', [(0o022, 0o644), (0o027, 0o640), (0o002, 0o664)])
def test_written_files_follow_the_umask(tmp_path, umask, mode):
    previous = os.umask(umask)
    try:
        assert utils.current_umask() == umask and utils.file_mode() == mode
        utils.write_json(str(tmp_path / 'a.json'), {'x': 1})
        with utils.atomic_write(str(tmp_path / 'b.bin')) as tmp:
            with open(tmp, 'wb') as f:
                f.write(b'data')
        made = tmp_path / 'made'  # a plain open() for comparison
        made.write_bytes(b'')
    finally:
        os.umask(previous)
    for name in ('a.json', 'b.bin', 'made'):
        assert stat.S_IMODE(os.stat(tmp_path / name).st_mode) == mode, name
    assert (tmp_path / 'b.bin').read_bytes() == b'data'


def test_atomic_write_leaves_nothing_on_failure(tmp_path):
    with pytest.raises(RuntimeError):
        with utils.atomic_write(str(tmp_path / 'x')) as tmp:
            open(tmp, 'w').write('half')
            raise RuntimeError
    assert os.listdir(tmp_path) == []


def test_round_floats():
    value = {'a': 1.234567, 'b': [0.1 + 0.2, None, 3, True, 'x'], 'c': (2.0000001, {'d': -1.23456789}),
             'e': float('nan'), 'f': np.float32(0.123456), 'g': np.array([1.23456, 2.5]), 'h': np.int64(7)}
    out = utils.round_floats(value, 4)
    assert out['a'] == 1.2346 and out['b'] == [0.3, None, 3, True, 'x']
    assert out['c'] == [2.0, {'d': -1.2346}] and math.isnan(out['e'])
    assert out['f'] == 0.1235 and out['g'] == [1.2346, 2.5] and out['h'] == 7 and type(out['h']) is int
    assert utils.round_floats(2.71828, 2) == 2.72 and utils.round_floats([1.5], 0) == [2.0]


def test_script_names_the_console_command_when_installed(monkeypatch, tmp_path):
    assert utils.script('create_split.py').startswith('python ') and utils.script('create_split.py').endswith(
        os.path.join('scripts', 'create_split.py'))
    monkeypatch.setattr(utils, 'project_root', lambda: str(tmp_path))
    assert utils.script('create_split.py') == 'fixmatch-create-split'


# ---- quiet start

def test_known_startup_lines_are_recognised_and_others_are_not():
    for line in STARTUP:
        assert utils.is_startup_line(line), line
    for line in REAL:
        assert not utils.is_startup_line(line), line


def test_training_style_start_prints_nothing(tmp_path):
    """The entry scripts' start: quiet_tensorflow, then tensorflow and keras, the devices, a first op."""
    done = python('''
        from libml import utils
        utils.quiet_tensorflow()
        import tensorflow as tf
        import keras
        tf.config.list_physical_devices('GPU')
        print(float(tf.reduce_sum(tf.ones([3]))))
    ''', env=clean_env(), cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert done.stdout == '3.0\n'
    assert done.stderr == ''


def test_real_errors_during_the_start_still_show(tmp_path):
    """A stand-in tensorflow package writes the known lines and real errors to file descriptor 2 at import."""
    fake = tmp_path / 'fake' / 'tensorflow'
    fake.mkdir(parents=True)
    at_import = ''.join(line + '\n' for line in STARTUP[:2] + REAL[:1] + STARTUP[2:] + REAL[1:2]).encode()
    at_devices = (STARTUP[4] + '\n').encode()
    (fake / '__init__.py').write_text(textwrap.dedent(f'''
        import os, sys, types
        os.write(2, {at_import!r})
        print('python-level warning', file=sys.stderr)
        config = types.SimpleNamespace(list_physical_devices=lambda: os.write(2, {at_devices!r}))
    '''))
    done = python('''
        import sys
        from libml import utils
        utils.quiet_tensorflow()
        import tensorflow
        print('started', file=sys.stderr)
    ''', env=clean_env(PYTHONPATH=f'{tmp_path / "fake"}{os.pathsep}{ROOT}'), cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert done.stderr.splitlines() == [REAL[0], REAL[1], 'python-level warning', 'started']


def test_missing_tensorflow_is_one_line(tmp_path):
    blocker = tmp_path / 'block'
    blocker.mkdir()
    (blocker / 'sitecustomize.py').write_text(textwrap.dedent('''
        import sys
        class NoTensorFlow:
            def find_spec(self, name, path=None, target=None):
                if name.split('.')[0] == 'tensorflow':
                    raise ModuleNotFoundError(f'No module named {name!r}', name=name)
        sys.meta_path.insert(0, NoTensorFlow())
    '''))
    done = python('from libml import utils\nutils.quiet_tensorflow()\n',
                  env=clean_env(PYTHONPATH=f'{blocker}{os.pathsep}{ROOT}'), cwd=tmp_path)
    assert done.returncode == 1
    assert done.stderr.strip().startswith('error: TensorFlow is not installed') and len(done.stderr.splitlines()) == 1


# ---- log lines and progress bars

@pytest.fixture
def restore_logging():
    root = python_logging.getLogger()
    handlers, level = list(root.handlers), logging.get_absl_logger().level
    absl_filters = list(logging.get_absl_handler().filters)
    yield
    root.handlers[:] = handlers
    logging.get_absl_logger().setLevel(level)
    logging.get_absl_handler().filters[:] = absl_filters


def record(level, message):
    return python_logging.LogRecord('absl', level, __file__, 1, message, (), None)


def test_short_format():
    formatter = utils.ShortFormatter()
    line = formatter.format(record(python_logging.INFO, 'kimg 2 accuracy 51.00'))
    assert len(line) == len('09:29:10 ') + len('kimg 2 accuracy 51.00')
    hours, minutes, rest = line.split(':', 2)
    assert hours.isdigit() and minutes.isdigit() and rest[:2].isdigit() and rest[2:] == ' kimg 2 accuracy 51.00'
    assert formatter.format(record(python_logging.WARNING, 'w')).endswith(' warning: w')
    assert formatter.format(record(python_logging.ERROR, 'e')).endswith(' error: e')


def test_log_lines_go_above_the_progress_bar(restore_logging, monkeypatch):
    stream = io.StringIO()
    monkeypatch.setattr(sys, 'stderr', stream)
    utils.use_short_logs(logging.INFO)
    utils.use_short_logs(logging.INFO)  # idempotent
    root = python_logging.getLogger()
    assert sum(isinstance(h, utils.ProgressBarHandler) for h in root.handlers) == 1
    assert logging.get_absl_handler() not in root.handlers
    bar = utils.progress(total=4, file=stream, disable=False, mininterval=0, ascii=True, ncols=60, desc='train')
    bar.update(1)
    logging.info('evaluated %d', 7)
    bar.update(1)
    bar.close()
    text = stream.getvalue()
    at = text.index('evaluated 7')
    assert '1/4' in text[:at] and '2/4' in text[at:]  # drawn before, drawn again after
    assert text[at - len('HH:MM:SS ') - 1] == '\r'  # the bar's line was cleared first
    assert text[at:].startswith('evaluated 7\n')  # a whole line of its own


def test_progress_is_tqdm_auto():
    from tqdm.auto import tqdm
    bar = utils.progress(total=1, disable=True)
    assert isinstance(bar, tqdm)
    bar.close()
