"""scripts/inspect_dataset.py: counts tables, the sample grid, unlabeled records, the command line."""
import importlib.util
import os
import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf

from libml import data
from libml import records
from libml import utils
from tests.test_data import write_indexed

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPT = os.path.join(ROOT, 'scripts', 'inspect_dataset.py')
PER_CLASS = (5, 3, 8, 1)  # training images of each class in the test dataset 'idx'


def load_script():
    spec = importlib.util.spec_from_file_location('inspect_dataset', SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


inspect_dataset = load_script()


def tile(grid, row, column, size):
    return grid[row * size:(row + 1) * size, column * size:(column + 1) * size]


def table_rows(lines):
    """{class index: (count, percent)} of count_table lines, 'total' under key None."""
    rows = {}
    for line in lines[1:]:
        fields = line.split()
        key = None if fields[0] == 'total' else int(fields[0])
        rows[key] = (int(fields[-2]), float(fields[-1].rstrip('%')))
    return rows


def test_counts_of_a_converted_dataset():
    _, labels = write_indexed(utils.ml_data(), per_class=PER_CLASS, test=12)
    found = inspect_dataset.inspect('idx', per_class=2)
    assert found['nclass'] == 4 and found['class_names'] == ['0', '1', '2', '3']
    assert [part.split()[0] for part, _ in found['parts']] == ['train', 'test']
    train, test = (table_rows(inspect_dataset.count_table(part_labels, 4)) for _, part_labels in found['parts'])
    assert train == {0: (5, 29.41), 1: (3, 17.65), 2: (8, 47.06), 3: (1, 5.88), None: (17, 100.0)}
    assert test == {0: (3, 25.0), 1: (3, 25.0), 2: (3, 25.0), 3: (3, 25.0), None: (12, 100.0)}
    counts, unlabeled = inspect_dataset.class_counts(labels, 4)
    assert counts.tolist() == list(PER_CLASS) and unlabeled == 0


def test_grid_rows_hold_the_first_images_of_their_class():
    images, labels = write_indexed(utils.ml_data(), per_class=PER_CLASS)
    grid = inspect_dataset.sample_grid(images, labels, 4, per_class=4)
    assert grid.shape == (4 * 4, 4 * 4, 1) and grid.dtype == np.uint8
    for k, count in enumerate(PER_CLASS):
        first = np.flatnonzero(labels == k)[:4]
        for column in range(4):
            pixels = tile(grid, k, column, 4)
            if column < count:
                assert pixels[0, 0, 0] == first[column]  # write_indexed stores the index in pixel (0, 0)
                assert np.all(pixels[1:] == 10 * k)
            else:
                assert np.all(pixels == inspect_dataset.GRAY)
    # the same grid through the file reader, which decodes only the sampled records
    found = inspect_dataset.inspect('idx', per_class=4)
    assert np.array_equal(inspect_dataset.sample_grid(*found['samples'], 4, 4), grid)


def test_unlabeled_records_of_a_file_get_their_own_row():
    labels = np.array([-1, 0, -1, 2, 0, -1, -1])
    images = np.zeros([7, 2, 3, 3], np.uint8)
    images[:, :, :, 0] = np.arange(7)[:, None, None]  # red = record index
    images[:, :, :, 1] = 200
    path = os.path.join(utils.ml_data(), 'mixed.tfrecord')
    records.write_records(path, images, labels)
    found = inspect_dataset.inspect(path, per_class=3)
    assert found['nclass'] == 3 and found['class_names'] is None
    assert table_rows(inspect_dataset.count_table(found['parts'][0][1], 3)) == {
        0: (2, 28.57), 1: (0, 0.0), 2: (1, 14.29), -1: (4, 57.14), None: (7, 100.0)}
    grid = inspect_dataset.sample_grid(*found['samples'], 3, 3)
    assert grid.shape == (4 * 2, 3 * 3, 3)
    reds = grid[::2, ::3, 0]  # top-left pixel of each tile
    assert reds[0, :2].tolist() == [1, 4] and reds[2, 0] == 3 and reds[3].tolist() == [0, 2, 5]
    assert np.all(grid[2:4] == inspect_dataset.GRAY)  # class 1 has no image
    assert np.all(grid[:2, 6:9] == inspect_dataset.GRAY) and np.all(grid[:2, :6, 1] == 200)


def test_bad_labels_and_training_names():
    with pytest.raises(utils.UserError, match=r'label 4 out of range \[-1, 4\)'):
        inspect_dataset.class_counts(np.array([0, 4]), 4)
    write_indexed(utils.ml_data(), per_class=PER_CLASS)
    with pytest.raises(utils.UserError, match='split files are missing.*create_split.py --seed=1 --size=4'):
        inspect_dataset.inspect('idx.1@4-2', per_class=2)
    data.load('idx.1@4-2')  # creates the split files
    found = inspect_dataset.inspect('idx.1@4-2', per_class=2)
    assert [part for part, _ in found['parts']] == ['labeled', 'unlabeled', 'valid', 'test']
    assert [len(labels) for _, labels in found['parts']] == [4, 15, 2, 12]
    assert inspect_dataset.sample_grid(*found['samples'], 4, 2).shape == (16, 8, 1)


def test_row_names():
    assert inspect_dataset.row_names([0, 1, 2], 3, ['T-shirt/top', 'Trouser', 'Pullover']) == [
        '0 T-shirt/top', '1 Trouser', '2 Pullover']
    assert inspect_dataset.row_names([0, -1], 2, ['0', '1']) == ['0', '1', 'unlabeled']
    assert inspect_dataset.row_names([0, 1], 2) == ['0', '1']
    assert inspect_dataset.default_out('fashion_mnist.1@40-1', '/data') == '/data/inspect/fashion_mnist.1@40-1_samples.png'


def run_script(*args, cwd):
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL='3')
    return subprocess.run([sys.executable, SCRIPT, *args], capture_output=True, text=True, env=env, cwd=cwd)


def test_command_line(tmp_path):
    write_indexed(utils.ml_data(), per_class=PER_CLASS)
    done = run_script('--per_class=3', 'idx', cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert 'idx train' in done.stdout and 'idx test' in done.stdout
    assert any(line.split() == ['2', '2', '8', '47.06%'] for line in done.stdout.splitlines())
    assert not [f for f in os.listdir(tmp_path) if f.endswith('.png')]  # nothing in the current folder
    out = os.path.join(utils.ml_data(), 'inspect', 'idx_samples.png')
    assert os.path.join('inspect', 'idx_samples.png: 4 rows of 3 images') in done.stdout
    figure = tf.io.decode_png(tf.io.read_file(out)).numpy()
    assert figure.shape[2] == 3 and figure.shape[0] > 4 * 4 * 6 and figure.shape[1] > 3 * 4 * 6  # labelled, enlarged
    assert not [f for f in os.listdir(os.path.dirname(out)) if f.endswith('.tmp')]
    done = run_script('--per_class=3', f'--out={tmp_path / "mine.png"}', 'idx', cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert np.array_equal(tf.io.decode_png(tf.io.read_file(str(tmp_path / 'mine.png'))).numpy(), figure)

    failed = run_script('nosuch', cwd=tmp_path)
    assert failed.returncode == 2
    errors = [line for line in failed.stderr.splitlines() if line.startswith('error:')]
    assert len(errors) == 1 and "unknown dataset 'nosuch'" in errors[0] and 'idx' in errors[0]
    assert 'fashion_mnist' in errors[0] and failed.stdout == ''
