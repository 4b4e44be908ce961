"""The --augment=L.W.S grammar: which augmentation each view of a training step gets.

L is the labeled view, W the weak and S the strong unlabeled views; each is a code of VIEW_CODES.
A view is fn(images in [0, 1], seed) -> images in [0, 1], built from the batched ops of libml.augment
and cta.
"""
import tensorflow as tf

from libml import augment
from libml.settings import Param
from libml.utils import UserError

VIEW_CODES = {'d': 'default weak: flip + pad-and-crop', 'x': 'none', 'ra': 'weak + RandAugment',
              'rac': 'weak + RandAugment + cutout', 'cta': 'weak + CTAugment + cutout'}


def _view_codes_text():
    return ', '.join(f'{code} ({meaning})' for code, meaning in VIEW_CODES.items())


def augment_param(default, views):
    """The --augment setting of an algorithm: `views` says what its L.W.S views are for; the codes
    come from VIEW_CODES, the table the parser checks against."""
    return Param(default, f'{views}; codes {_view_codes_text()}.')


def _augment_error(spec):
    return UserError(f'bad --augment={spec!r}: expected L.W.S (labeled.weak.strong views), each one of '
                     f'{_view_codes_text()}; e.g. --augment=d.d.rac')


def parse_augment(spec):
    """'L.W.S' -> (labeled, weak, strong) view codes, each in VIEW_CODES; else UserError."""
    parts = str(spec).split('.')
    if len(parts) != 3 or any(part not in VIEW_CODES for part in parts):
        raise _augment_error(spec)
    return tuple(parts)


def view_fn(code, flip, pad, cta=None):
    """fn(images, seed) -> images for one view code: 'x' identity; 'd' weak(flip, pad); 'ra'/'rac'
    weak then RandAugment (without/with cutout); 'cta' weak then cta.strong (policy + full cutout)."""
    if code not in VIEW_CODES:
        raise _augment_error(code)
    if code == 'cta' and cta is None:
        raise ValueError("view 'cta' needs a CTAugment object")

    def make_view(images, seed):
        if code == 'x':
            return tf.identity(images)
        weak_seed, strong_seed = augment.split_seed(seed, 2)
        images = augment.weak(images, weak_seed, flip=flip, pad=pad)
        if code == 'd':
            return images
        if code in ('ra', 'rac'):
            return augment.randaugment(images, strong_seed, with_cutout=(code == 'rac'))
        return cta.strong(images, strong_seed)

    return make_view
