"""Figures for TensorBoard (tf.summary.image) and the dataset inspection, drawn with matplotlib (Agg, no display).

Every figure function returns a uint8 RGB image batch (1, H, W, 3); `*_figure_object` variants return the
matplotlib Figure itself (for tests and notebooks). Any number of classes K: names, tick labels and cell
counts are readable up to about 20 classes; beyond that tick labels shrink, and beyond 30 (confusion) or
40 (bars) the per-cell numbers and names are left out, but the figure is still drawn (K = 100 works).
"""
import re
from typing import Optional, Sequence

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

DPI = 100
ANNOTATE_CELLS_UP_TO = 30   # classes: counts written in the confusion cells
NAME_TICKS_UP_TO = 40       # classes: class names as tick labels (else indices every few classes)


def safe_tag(name: str) -> str:
    """A class name as one TensorBoard tag component: runs of characters other than letters, digits, '_', '-'
    and '.' become '_' ('T-shirt/top' -> 'T-shirt_top', 'aquarium fish' -> 'aquarium_fish'); never empty."""
    return re.sub(r'[^\w.\-]+', '_', str(name)).strip('_') or '_'


def to_image(figure: Figure) -> np.ndarray:
    """Renders a matplotlib Figure to uint8 RGB pixels (1, H, W, 3)."""
    canvas = FigureCanvasAgg(figure)
    canvas.draw()
    return np.asarray(canvas.buffer_rgba())[None, :, :, :3].copy()


def _names(class_names: Optional[Sequence[str]], nclass: int) -> list:
    names = [str(n) for n in class_names] if class_names is not None else [str(k) for k in range(nclass)]
    if len(names) != nclass:
        raise ValueError(f'{len(names)} class names for {nclass} classes')
    return names


def _tick_font(nclass: int) -> float:
    """Tick label size in points: 9 up to 20 classes, smaller up to NAME_TICKS_UP_TO, 8 for index ticks."""
    if nclass > NAME_TICKS_UP_TO:
        return 8
    return 9 if nclass <= 20 else max(5, 9 - (nclass - 20) / 5)


def _ticks(nclass: int, names: list):
    """(tick positions, tick labels): every class up to NAME_TICKS_UP_TO, else every few indices."""
    if nclass <= NAME_TICKS_UP_TO:
        return list(range(nclass)), names
    step = int(np.ceil(nclass / 20))
    positions = list(range(0, nclass, step))
    return positions, [str(k) for k in positions]


def confusion_figure_object(confusion, class_names: Optional[Sequence[str]] = None,
                            title: str = 'confusion matrix (rows: true class, colour: row fraction)') -> Figure:
    """Figure of a confusion matrix (K, K) of counts, rows = true class, columns = predicted class. Each cell's
    colour is its row fraction count / row total (0 for an empty row), its text the count (up to 30 classes)."""
    counts = np.asarray(confusion, np.int64)
    if counts.ndim != 2 or counts.shape[0] != counts.shape[1]:
        raise ValueError(f'confusion must be (K, K), got {counts.shape}')
    nclass = len(counts)
    names = _names(class_names, nclass)
    rates = counts / np.maximum(counts.sum(axis=1, keepdims=True), 1)
    side = min(12.0, max(4.5, 2.5 + 0.42 * nclass))
    figure = Figure(figsize=(side + 1.2, side), dpi=DPI)
    axes = figure.add_subplot()
    shown = axes.imshow(rates, cmap='Blues', vmin=0, vmax=1, interpolation='nearest')
    figure.colorbar(shown, ax=axes, fraction=0.046, pad=0.04)
    positions, labels = _ticks(nclass, names)
    font = _tick_font(nclass)
    axes.set_xticks(positions, labels, rotation=90 if nclass > 5 else 0, fontsize=font)
    axes.set_yticks(positions, labels, fontsize=font)
    axes.set_xlabel('predicted class')
    axes.set_ylabel('true class')
    axes.set_title(title, fontsize=10)
    if nclass <= ANNOTATE_CELLS_UP_TO:
        cell_font = 9 if nclass <= 12 else 7 if nclass <= 20 else 5
        for i in range(nclass):
            for j in range(nclass):
                axes.text(j, i, str(counts[i, j]), ha='center', va='center', fontsize=cell_font,
                          color='white' if rates[i, j] > 0.5 else 'black')
    figure.tight_layout()
    return figure


def confusion_figure(confusion, class_names: Optional[Sequence[str]] = None, **kwargs) -> np.ndarray:
    """uint8 RGB image (1, H, W, 3) of `confusion_figure_object`, for tf.summary.image."""
    return to_image(confusion_figure_object(confusion, class_names, **kwargs))


def per_class_figure_object(accuracies: Sequence[Optional[float]], class_names: Optional[Sequence[str]] = None,
                            title: str = 'test accuracy per class (%)') -> Figure:
    """Bar chart of per-class accuracies in percent (None: a class with no test image, no bar), with the
    balanced accuracy (mean over classes with images) as a dashed line; values on the bars up to 20 classes."""
    values = [None if a is None else float(a) for a in accuracies]
    nclass = len(values)
    names = _names(class_names, nclass)
    heights = np.array([0.0 if v is None else v for v in values])
    width = min(16.0, max(5.0, 1.5 + 0.38 * nclass))
    figure = Figure(figsize=(width, 4.2), dpi=DPI)
    axes = figure.add_subplot()
    bars = axes.bar(np.arange(nclass), heights, color='tab:blue', width=0.8)
    known = [v for v in values if v is not None]
    if known:
        mean = float(np.mean(known))
        axes.axhline(mean, color='tab:orange', linestyle='--', linewidth=1)
        title = f'{title}; dashed: balanced accuracy {mean:.2f}%'
    if nclass <= 20:
        for bar, v in zip(bars, values):
            axes.text(bar.get_x() + bar.get_width() / 2, bar.get_height() + 1, 'n/a' if v is None else f'{v:.1f}',
                      ha='center', va='bottom', fontsize=7)
    positions, labels = _ticks(nclass, names)
    axes.set_xticks(positions, labels, rotation=90 if nclass > 5 else 0, fontsize=_tick_font(nclass))
    axes.set_xlim(-0.6, nclass - 0.4)
    axes.set_ylim(0, 109)
    axes.set_ylabel('accuracy (%)')
    axes.set_title(title, fontsize=10)
    figure.tight_layout()
    return figure


def per_class_figure(accuracies: Sequence[Optional[float]], class_names: Optional[Sequence[str]] = None,
                     **kwargs) -> np.ndarray:
    """uint8 RGB image (1, H, W, 3) of `per_class_figure_object`, for tf.summary.image."""
    return to_image(per_class_figure_object(accuracies, class_names, **kwargs))


def labelled_grid_object(grid: np.ndarray, row_names: Sequence[str], tile_height: int, title: str = '') -> Figure:
    """Figure of an image grid (rows * tile_height, W, C) uint8 at its own pixel size, each row labelled with
    its name on the left (inspect_dataset.py's samples: one row per class)."""
    grid = np.asarray(grid)
    rows = grid.shape[0] // tile_height
    if rows != len(row_names):
        raise ValueError(f'{len(row_names)} row names for {rows} rows')
    scale = max(1, int(np.ceil(24 / tile_height)))  # tiles at least 24 pixels high, so names fit beside them
    pixels = np.kron(grid, np.ones((scale, scale, 1), grid.dtype)) if scale > 1 else grid
    height, width = pixels.shape[:2]
    label_width = 0.12 + 0.075 * max(len(n) for n in row_names) if row_names else 0.5
    top = 0.4 if title else 0.1
    fig_width = max(width / DPI + label_width + 0.1, 0.085 * len(title) + 0.3)
    figure = Figure(figsize=(fig_width, height / DPI + top + 0.1), dpi=DPI)
    axes = figure.add_axes([label_width / figure.get_figwidth(), 0.1 / figure.get_figheight(),
                            width / DPI / figure.get_figwidth(), height / DPI / figure.get_figheight()])
    axes.imshow(pixels[..., 0] if pixels.shape[-1] == 1 else pixels, cmap='gray' if pixels.shape[-1] == 1 else None,
                vmin=0, vmax=255, interpolation='nearest')
    axes.set_xticks([])
    axes.set_yticks([(r + 0.5) * tile_height * scale - 0.5 for r in range(rows)], list(row_names), fontsize=9)
    axes.tick_params(axis='y', length=0)
    if title:
        figure.suptitle(title, x=0.1 / fig_width, y=1 - 0.08 / figure.get_figheight(), ha='left', va='top',
                        fontsize=10)
    return figure


def labelled_grid(grid: np.ndarray, row_names: Sequence[str], tile_height: int, title: str = '') -> np.ndarray:
    """uint8 RGB image (1, H, W, 3) of `labelled_grid_object`."""
    return to_image(labelled_grid_object(grid, row_names, tile_height, title))
