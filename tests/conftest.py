"""Shared test setup: project root on sys.path, quiet TensorFlow, a private $ML_DATA per session."""
import contextlib
import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')
os.environ.setdefault('TQDM_DISABLE', '1')

import pytest  # noqa: E402

FASHION_MNIST_DIR = '/usr/share/datasets/fashion-mnist'


@pytest.fixture(autouse=True)
def _private_ml_data(tmp_path, monkeypatch):
    """Every test gets its own empty $ML_DATA unless it sets one itself."""
    monkeypatch.setenv('ML_DATA', str(tmp_path / 'ml_data'))


@pytest.fixture(scope='session')
def fashion_mnist_root(tmp_path_factory):
    """A data root with Fashion-MNIST converted once per test session (from the Debian package)."""
    from libml import registry
    root = str(tmp_path_factory.mktemp('fashion_mnist_data'))
    registry.convert('fashion_mnist', root=root)
    return root


@contextlib.contextmanager
def ml_data(root):
    """$ML_DATA = root inside the block, for module-scoped fixtures (monkeypatch is per test)."""
    previous = os.environ.get('ML_DATA')
    os.environ['ML_DATA'] = str(root)
    try:
        yield root
    finally:
        os.environ['ML_DATA'] = previous or ''


@pytest.fixture
def fashion_mnist(fashion_mnist_root, monkeypatch):
    """$ML_DATA pointing at the shared converted Fashion-MNIST."""
    monkeypatch.setenv('ML_DATA', fashion_mnist_root)
    return fashion_mnist_root


def run_scripts(commands, train_dir, at_once=2):
    """{(script, arg): (exit status, stdout, stderr)} of `python script arg --train_dir=train_dir` run from
    the project root with $ML_DATA = train_dir, `at_once` processes at a time (2 CPU cores)."""
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL='3', ML_DATA=str(train_dir))
    done = {}
    for start in range(0, len(commands), at_once):
        running = {c: subprocess.Popen([sys.executable, c[0], c[1], f'--train_dir={train_dir}'], cwd=ROOT, env=env,
                                       stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
                   for c in commands[start:start + at_once]}
        done.update({c: (p.wait(timeout=300), *p.communicate()) for c, p in running.items()})
    return done
