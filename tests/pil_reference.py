"""The reference code's image operations written with Pillow (REFERENCE.md section 6), image by image, for
the parity tests: what the TensorFlow ops of libml.augment / libml.geometry / libml.policies / cta must
reproduce. Images here are uint8 numpy arrays (H, W, 3); grey images are given as R = G = B."""
import functools
import math

import numpy as np
from PIL import Image, ImageEnhance, ImageFilter, ImageOps

from libml import readers

FASHION_MNIST = '/usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz'
PIL_METHODS = {'lanczos': Image.LANCZOS, 'bicubic': Image.BICUBIC, 'bilinear': Image.BILINEAR, 'box': Image.BOX,
               'hamming': Image.HAMMING, 'nearest': Image.NEAREST}
METHOD_ORDER = ('lanczos', 'bicubic', 'bilinear', 'box', 'hamming', 'nearest')  # the reference's methods tuple
ENHANCERS = {'brightness': ImageEnhance.Brightness, 'color': ImageEnhance.Color,
             'contrast': ImageEnhance.Contrast, 'sharpness': ImageEnhance.Sharpness}


@functools.lru_cache(maxsize=1)
def fashion_mnist(count=128):
    """The first `count` Fashion-MNIST training images, zero-padded to 32x32 like the dataset, as (N, 32, 32, 3)."""
    images = readers.pad_digits(readers.read_idx(FASHION_MNIST)[:count])
    return np.repeat(images, 3, axis=-1)


def synthetic_rgb(count, height=32, width=32, seed=0):
    """Varied RGB test images: noise, gradients with shapes, low contrast, few levels, saturated areas."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width]
    out = []
    for k in range(count):
        kind = k % 4
        if kind == 0:
            image = rng.integers(0, 256, (height, width, 3))
        elif kind == 1:
            image = np.stack([x * 255 // max(width - 1, 1), y * 255 // max(height - 1, 1), (x + y) * 4 % 256], -1)
            image[(x - width // 3) ** 2 + (y - height // 2) ** 2 < (height // 4) ** 2] = rng.integers(0, 256, 3)
            image = image + rng.integers(-12, 13, image.shape)
        elif kind == 2:
            image = rng.integers(60, 141, (height, width, 3))
        else:
            image = rng.integers(0, 6, (height, width, 3)) * 51
            image[: height // 3] = 255
        out.append(np.clip(image, 0, 255))
    return np.asarray(out, np.uint8)


def cutout(array, centre, side, fill):
    """create_cutout_mask's square: rows and columns [c - side//2, c + side//2) clipped, set to `fill`."""
    array = array.copy()
    if side <= 0:
        return array
    (cy, cx), half = centre, side // 2
    array[max(0, cy - half):cy + half, max(0, cx - half):cx + half] = fill
    return array


def engine_op(image, name, value, value2=0.0, centre=(0, 0)):
    """One engine op (libml.augment parameters) done with Pillow on a PIL RGB image."""
    if name == 'identity':
        return image
    if name in ('autocontrast', 'equalize', 'invert'):
        return Image.blend(image, getattr(ImageOps, name)(image), value)
    if name in ('blur', 'smooth'):
        return Image.blend(image, image.filter(ImageFilter.BLUR if name == 'blur' else ImageFilter.SMOOTH), value)
    if name in ENHANCERS:
        return ENHANCERS[name](image).enhance(value)
    if name == 'posterize':
        return ImageOps.posterize(image, int(value))
    if name == 'solarize':
        return ImageOps.solarize(image, int(value))
    if name == 'rotate':
        return image.rotate(int(value))
    matrices = {'shear_x': (1, value, 0, 0, 1, 0), 'shear_y': (1, 0, 0, value, 1, 0),
                'translate_x': (1, 0, value, 0, 1, 0), 'translate_y': (1, 0, 0, 0, 1, value)}
    if name in matrices:
        return image.transform(image.size, Image.AFFINE, matrices[name])
    if name == 'rescale':
        s = value * 0.25
        w, h = image.size
        method = PIL_METHODS[METHOD_ORDER[int(value2)]]
        return image.crop((s * w, s * h, w * (1 - s), h * (1 - s))).resize(image.size, method)
    if name == 'cutout':
        return Image.fromarray(cutout(np.asarray(image), centre, int(value), 127))
    raise ValueError(name)


# ---- the reference's CTAugment ops (libml/ctaugment.py), translate as a fraction of the size (this port)

def cta_op(image, name, levels, centre):
    """Reference CTAugment op `name` at levels (l, l2) on a PIL RGB image; cutout centre (row, column)."""
    level = levels[0]
    w, h = image.size
    if name in ('autocontrast', 'equalize', 'invert', 'blur', 'smooth'):
        return engine_op(image, name, level)
    if name in ENHANCERS:
        return ENHANCERS[name](image).enhance(0.1 + 1.9 * level)
    if name == 'cutout':
        return Image.fromarray(cutout(np.asarray(image), centre, 1 + int(level * min(w, h) * 0.499), 127))
    if name == 'identity':
        return image
    if name == 'posterize':
        return ImageOps.posterize(image, 1 + int(level * 7.999))
    if name == 'rescale':
        return engine_op(image, 'rescale', level, int(levels[1] * 5.99))
    if name == 'rotate':
        return image.rotate(int(np.round((2 * level - 1) * 45)))
    if name in ('shear_x', 'shear_y'):
        return engine_op(image, name, (2 * level - 1) * 0.3)
    if name == 'solarize':
        return ImageOps.solarize(image, int(level * 255.999))
    if name == 'translate_x':
        return engine_op(image, name, (2 * level - 1) * 0.3 * w)
    if name == 'translate_y':
        return engine_op(image, name, (2 * level - 1) * 0.3 * h)
    raise ValueError(name)


# ---- the reference's RandAugment / AutoAugment ops (third_party/auto_augment/augmentations.py), on RGBA

def _rgb_op(fn):
    return lambda image, level, negate, centre: fn(image.convert('RGB'), level).convert('RGBA')


def _signed(value, negate):
    return -value if negate else value


AA_OPS = {
    'Identity': lambda image, level, negate, centre: image,
    'AutoContrast': _rgb_op(lambda image, level: ImageOps.autocontrast(image)),
    'Equalize': _rgb_op(lambda image, level: ImageOps.equalize(image)),
    'Invert': _rgb_op(lambda image, level: ImageOps.invert(image)),
    'Rotate': lambda image, level, negate, centre: image.rotate(_signed(int(level * 30 / 10), negate)),
    'Posterize': _rgb_op(lambda image, level: ImageOps.posterize(image, 4 - int(level * 4 / 10))),
    'Solarize': _rgb_op(lambda image, level: ImageOps.solarize(image, 256 - int(level * 256 / 10))),
    'ShearX': lambda image, level, negate, centre: image.transform(
        image.size, Image.AFFINE, (1, _signed(float(level) * 0.3 / 10, negate), 0, 0, 1, 0)),
    'ShearY': lambda image, level, negate, centre: image.transform(
        image.size, Image.AFFINE, (1, 0, 0, _signed(float(level) * 0.3 / 10, negate), 1, 0)),
    'TranslateX': lambda image, level, negate, centre: image.transform(
        image.size, Image.AFFINE, (1, 0, _signed(int(level * 10 / 10), negate), 0, 1, 0)),
    'TranslateY': lambda image, level, negate, centre: image.transform(
        image.size, Image.AFFINE, (1, 0, 0, 0, 1, _signed(int(level * 10 / 10), negate))),
    'Cutout': lambda image, level, negate, centre: Image.fromarray(
        cutout(np.asarray(image), centre, int(level * 20 / 10), (127, 127, 127, 0)), 'RGBA'),
}
for _name, _enhancer in (('Color', ImageEnhance.Color), ('Contrast', ImageEnhance.Contrast),
                         ('Brightness', ImageEnhance.Brightness), ('Sharpness', ImageEnhance.Sharpness)):
    AA_OPS[_name] = (lambda enhancer: lambda image, level, negate, centre:
                     enhancer(image).enhance(float(level) * 1.8 / 10 + 0.1))(_enhancer)


def apply_policy(levels, steps):
    """The reference's apply_policy: uint8 (H, W, 3) -> RGBA, each (name, level, negate, centre) applied,
    back to [0, 1] floats with alpha-0 pixels grey (0.5)."""
    image = Image.fromarray(levels).convert('RGBA')
    for name, level, negate, centre in steps:
        image = AA_OPS[name](image, level, negate, centre)
    array = np.asarray(image)
    out = array[..., :3] / 255.0
    out[array[..., 3] == 0] = 0.5
    return out


def rotation_matrix(image_size, degrees):
    """The (a, b, c, d, e, f) that Pillow's rotate passes to Image.transform (captured, not recomputed)."""
    captured = []
    original = Image.Image.transform

    def spy(self, size, method, data=None, *args, **kwargs):
        captured.append(tuple(data))
        return original(self, size, method, data, *args, **kwargs)

    Image.Image.transform = spy
    try:
        Image.new('RGB', image_size).rotate(degrees)
    finally:
        Image.Image.transform = original
    return captured[0] if captured else None


def fixed(v):
    return math.floor(v * 65536.0 + 0.5)
