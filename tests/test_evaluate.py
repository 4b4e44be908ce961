"""scripts/evaluate.py and scripts/export.py on a short real run."""
import json
import os
import subprocess
import sys

import keras
import numpy as np
import pytest
import tensorflow as tf

from conftest import ROOT, ml_data
from libml import data
from libml import records
from libml import utils
from test_train import run_tiny

sys.path.insert(0, os.path.join(ROOT, 'scripts'))
import evaluate  # noqa: E402
import export  # noqa: E402


@pytest.fixture(scope='module')
def tiny_run(fashion_mnist_root, tmp_path_factory):
    with ml_data(fashion_mnist_root):
        # every test image (not the tests' 1,000): compared with evaluate.py, which reads them all
        yield run_tiny(tmp_path_factory.mktemp('run'), train_kimg=0.25, report_kimg=0.25, save_kimg=0.125, eval_size=0)


def test_evaluate_matches_the_training_evaluation(tiny_run, fashion_mnist):
    result = evaluate.evaluate(tiny_run['run_dir'])
    assert result['checkpoint'] == os.path.join(os.path.abspath(tiny_run['run_dir']), 'tf', f'ckpt-{tiny_run["step"]}')
    assert result['step'] == tiny_run['step'] == 16 and result['kimg'] == 0.25  # 16 steps of 16 labeled images
    final = tiny_run['final']['ema/test']
    assert result['images'] == 10000
    for name in ('accuracy', 'balanced_accuracy', 'worst_class_accuracy', 'gm_accuracy'):
        assert result[name] == pytest.approx(final[name], abs=0.011), name
    assert result['cross_entropy'] == pytest.approx(final['cross_entropy'], rel=1e-3)
    assert len(result['per_class']) == 10 and np.array(result['confusion']).sum() == 10000


def test_evaluate_command_line(tiny_run, fashion_mnist):
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL='3')
    done = subprocess.run([sys.executable, os.path.join(ROOT, 'scripts', 'evaluate.py'),
                           f'--run_dir={tiny_run["run_dir"]}', '--dataset=fashion_mnist'],
                          capture_output=True, text=True, env=env)
    assert done.returncode == 0, done.stderr[-2000:]
    assert 'gm_accuracy' in done.stdout and 'ece' in done.stdout
    assert done.stdout.splitlines()[0].startswith('checkpoint ') and 'ckpt-16 (step 16, kimg 0.25)' in done.stdout
    written = json.load(open(os.path.join(tiny_run['run_dir'], 'stats', 'evaluation_fashion_mnist.json')))
    assert written['accuracy'] == pytest.approx(tiny_run['accuracy'], abs=0.011)
    assert written['step'] == 16 and written['checkpoint'].endswith(os.path.join('tf', 'ckpt-16'))
    floats = [v for v in written.values() if isinstance(v, float)] + [v for v in written['per_class'] if v]
    assert floats and all(round(v, 4) == v for v in floats)  # 4 decimals at most
    assert any(round(v, 2) != v for v in floats)  # ... but not fewer
    done = subprocess.run([sys.executable, os.path.join(ROOT, 'scripts', 'evaluate.py'), f'--run_dir={ROOT}'],
                          capture_output=True, text=True, env=env)
    assert done.returncode == 2 and 'error: ' in done.stderr


def test_evaluate_refuses_a_dataset_of_other_classes(tiny_run, fashion_mnist):
    records.write_records(records.record_path('tiny3', 'train'), np.zeros((6, 32, 32, 1), np.uint8), [0, 1, 2] * 2)
    records.write_records(records.record_path('tiny3', 'test'), np.zeros((3, 32, 32, 1), np.uint8), [0, 1, 2])
    records.DatasetInfo('tiny3', (32, 32, 1), 3, [], True, 4, dict(train=6, test=3)).save()
    with pytest.raises(utils.UserError, match='3 classes .* trained on 10 classes'):
        evaluate.evaluate(tiny_run['run_dir'], 'tiny3')


def test_exported_models_classify_raw_images(tiny_run, fashion_mnist, tmp_path):
    """Fashion-MNIST's raw 28x28 images in, the model's softmax on the zero-padded 32x32 training images out."""
    out = export.export(tiny_run['run_dir'], str(tmp_path / 'export'))
    _, test = data.load_test_set('fashion_mnist')
    padded = np.asarray(test.images[:200])
    assert padded.shape[1:] == (32, 32, 1) and not padded[:, :2].any() and not padded[:, :, -2:].any()
    raw = padded[:, 2:30, 2:30]  # the original IDX pixels
    _, _, model, _ = evaluate.state.load_ema_model(tiny_run['run_dir'])
    expected = tf.nn.softmax(model(padded.astype(np.float32) * 2 / 255 - 1, training=False)).numpy()
    keras_model = keras.models.load_model(os.path.join(out, 'model.keras'))
    assert tuple(keras_model.input_shape) == (None, 28, 28, 1)
    np.testing.assert_allclose(keras_model.predict(raw, verbose=0), expected, atol=1e-5)
    np.testing.assert_allclose(keras_model(raw[..., 0]).numpy(), expected, atol=1e-5)  # called on (N, 28, 28)
    served = tf.saved_model.load(os.path.join(out, 'saved_model'))
    np.testing.assert_allclose(served.serve(tf.constant(raw)).numpy(), expected, atol=1e-5)
    np.testing.assert_allclose(served.serve_hw(tf.constant(raw[..., 0])).numpy(), expected, atol=1e-5)
    assert not [f for f in os.listdir(out) if f.endswith('.tmp')]


def test_raw_shapes():
    from libml import readers
    assert readers.pad_digits(np.ones((1, 28, 28), np.uint8)).shape == (1, 32, 32, 1)
    assert readers.pad_digits.__defaults__[0] == export.DIGIT_BORDER
    for name in ('fashion_mnist', 'mnist'):
        info = records.DatasetInfo(name, (32, 32, 1), 10, [])
        assert export.raw_shape(info) == ((28, 28, 1), (2, 2))
    for name in ('cifar10', 'svhn', 'stl10', 'my_digits'):
        info = records.DatasetInfo(name, (32, 32, 3), 10, [])
        assert export.raw_shape(info) == ((32, 32, 3), (0, 0))


def test_evaluation_skips_a_damaged_newest_checkpoint(tiny_run, fashion_mnist, tmp_path):
    """evaluate/export read checkpoints as a resume does: a truncated newest one is skipped for the older one."""
    import shutil
    copy = str(tmp_path / 'run')
    shutil.copytree(tiny_run['run_dir'], copy)
    tf_dir = os.path.join(copy, 'tf')
    steps = sorted(int(n[len('ckpt-'):-len('.index')]) for n in os.listdir(tf_dir) if n.endswith('.index'))
    assert len(steps) >= 2, steps
    newest = [n for n in os.listdir(tf_dir) if n.startswith(f'ckpt-{steps[-1]}.data-')][0]
    with open(os.path.join(tf_dir, newest), 'r+b') as f:
        f.truncate(os.path.getsize(f.name) // 2)
    result = evaluate.evaluate(copy)
    assert result['step'] == steps[-2] and result['checkpoint'].endswith(f'ckpt-{steps[-2]}')
    for name in os.listdir(tf_dir):
        if name.startswith('ckpt-') and '.data-' in name:
            os.truncate(os.path.join(tf_dir, name), 0)
    with pytest.raises(utils.UserError, match='no readable checkpoint'):
        evaluate.evaluate(copy)
