"""libml/figures.py: confusion matrix and per-class accuracy figures, labelled grids, TensorBoard tags."""
import numpy as np
import pytest

from libml import figures

NAMES = ['T-shirt/top', 'Trouser', 'Pullover', 'Dress']
CONFUSION = np.array([[5, 1, 0, 0], [2, 2, 0, 0], [0, 0, 0, 0], [1, 0, 3, 6]])


def texts(axes):
    return [t.get_text() for t in axes.texts]


def test_confusion_figure_content():
    figure = figures.confusion_figure_object(CONFUSION, NAMES)
    axes = figure.axes[0]
    # colours: each row divided by its count, an empty row stays 0
    expected = np.array([[5 / 6, 1 / 6, 0, 0], [0.5, 0.5, 0, 0], [0, 0, 0, 0], [0.1, 0, 0.3, 0.6]])
    np.testing.assert_allclose(axes.images[0].get_array(), expected)
    assert axes.images[0].get_clim() == (0, 1)
    assert [t.get_text() for t in axes.get_xticklabels()] == NAMES
    assert [t.get_text() for t in axes.get_yticklabels()] == NAMES
    assert texts(axes) == [str(c) for c in CONFUSION.ravel()]  # counts, row by row
    assert axes.get_xlabel() == 'predicted class' and axes.get_ylabel() == 'true class'


def test_confusion_image_shape_and_names_drawn():
    image = figures.confusion_figure(CONFUSION, NAMES)
    assert image.dtype == np.uint8 and image.ndim == 4 and image.shape[0] == 1 and image.shape[-1] == 3
    assert image.shape[1] >= 300 and image.shape[2] >= 300
    again = figures.confusion_figure(CONFUSION, NAMES)
    np.testing.assert_array_equal(image, again)  # deterministic
    other_names = figures.confusion_figure(CONFUSION, ['Sandal', 'Shirt', 'Sneaker', 'Bag'])
    indices = figures.confusion_figure(CONFUSION)
    assert image.shape == other_names.shape and np.any(image != other_names)
    assert np.any(image != indices)


def test_figures_for_many_classes():
    rng = np.random.RandomState(0)
    counts = rng.randint(0, 4, (100, 100)) + np.diag(rng.randint(10, 50, 100))
    figure = figures.confusion_figure_object(counts)
    axes = figure.axes[0]
    assert texts(axes) == []  # no per-cell numbers at 100 classes
    assert [t.get_text() for t in axes.get_xticklabels()][:3] == ['0', '5', '10']
    image = figures.confusion_figure(counts, [f'class {k}' for k in range(100)])
    assert image.shape[0] == 1 and image.shape[-1] == 3 and image.shape[1] <= 1300
    bars = figures.per_class_figure(list(rng.rand(100) * 100), [f'class {k}' for k in range(100)])
    assert bars.shape[0] == 1 and bars.shape[-1] == 3
    twenty = figures.confusion_figure_object(counts[:20, :20], [f'c{k}' for k in range(20)]).axes[0]
    assert len(texts(twenty)) == 400 and [t.get_text() for t in twenty.get_yticklabels()][-1] == 'c19'


def test_per_class_figure():
    accuracies = [90.0, 45.5, None, 100.0]
    figure = figures.per_class_figure_object(accuracies, NAMES)
    axes = figure.axes[0]
    heights = [bar.get_height() for bar in axes.patches]
    assert heights == [90.0, 45.5, 0.0, 100.0]
    assert [t.get_text() for t in axes.get_xticklabels()] == NAMES
    assert texts(axes) == ['90.0', '45.5', 'n/a', '100.0']
    mean = np.mean([90.0, 45.5, 100.0])
    assert axes.lines[0].get_ydata()[0] == pytest.approx(mean)  # the balanced-accuracy line
    assert f'{mean:.2f}%' in axes.get_title()
    image = figures.per_class_figure(accuracies, NAMES)
    assert image.dtype == np.uint8 and image.shape[0] == 1 and image.shape[-1] == 3
    assert np.any(image != figures.per_class_figure(accuracies))
    with pytest.raises(ValueError, match='3 class names for 4 classes'):
        figures.per_class_figure(accuracies, NAMES[:3])


def test_labelled_grid():
    grid = np.zeros((3 * 8, 5 * 8, 1), np.uint8)
    grid[8:16] = 255  # the second row white
    figure = figures.labelled_grid_object(grid, ['a', 'bb', 'unlabeled'], 8, 'title')
    axes = figure.axes[0]
    assert [t.get_text() for t in axes.get_yticklabels()] == ['a', 'bb', 'unlabeled']
    shown = axes.images[0].get_array()
    assert shown.shape == (3 * 24, 5 * 24)  # tiles enlarged to 24 pixels
    assert np.all(shown[24:48] == 255) and np.all(shown[:24] == 0)
    image = figures.labelled_grid(grid, ['a', 'bb', 'unlabeled'], 8)
    assert image.dtype == np.uint8 and image.shape[0] == 1 and image.shape[-1] == 3
    with pytest.raises(ValueError, match='2 row names for 3 rows'):
        figures.labelled_grid(grid, ['a', 'b'], 8)


def test_safe_tag():
    assert figures.safe_tag('T-shirt/top') == 'T-shirt_top'
    assert figures.safe_tag('aquarium fish') == 'aquarium_fish'
    assert figures.safe_tag('a//b c') == 'a_b_c'
    assert figures.safe_tag('/') == '_' and figures.safe_tag('') == '_'
    assert figures.safe_tag(3) == '3' and figures.safe_tag('maple_tree.v2') == 'maple_tree.v2'
    assert all('/' not in figures.safe_tag(n) for n in NAMES)
