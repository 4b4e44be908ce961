"""The --augment=L.W.S grammar and the views it names: what augmentation each view of a step gets.

L is the labeled view, W the weak and S the strong unlabeled views; each is a view code (VIEW_CODES).
A View splits augmentation into `sample` (the random parameters of n images, from one seed) and `apply`
(deterministic, row by row), so the training step can draw the parameters of the whole global batch and
let each replica apply its own rows: results do not depend on how the batch is split over replicas.

    view = make_view('rac', info)                 # info: records.DatasetInfo (name, shape, flip, pad)
    params = view.sample(n, seed)                 # dict of tensors, first axis n
    images = view.apply(images01, params, xla=False)

Every strong view starts with the dataset's weak view ('d'), as in the reference.
"""
import dataclasses
import re
import types
from typing import Any

import tensorflow as tf

from libml import augment
from libml import geometry
from libml import policies
from libml.settings import Param
from libml.utils import UserError

VIEW_CODES = {
    'x': 'none', 'm': 'mirror only', 'd': 'dataset default weak: flip (if the dataset flips) + pad-and-crop',
    'c': 'weak + 16-px cutout only (ab_fixmatch_onlycutout)',
    'aa': 'weak + AutoAugment', 'aac': 'weak + AutoAugment + 16-px cutout', 'ra': 'weak + RandAugment',
    'rac': 'weak + RandAugment + 16-px cutout', 'racM': 'as rac with magnitude randint(1, M), M = 2..10',
    'rN_M_C': 'weak + N RandAugment ops always applied at magnitude M (1..15) + cutout of C%% (0..100) of the side',
    'cta': 'weak + CTAugment + cutout (FixMatch strong view)', 'ctap': 'weak + CTAugment, no cutout (ReMixMatch)'}
RA_OPS = tuple(policies.ENGINE_OP[name] for name in policies.RA_OPS)
CUTOUT = 16  # side of the rac/aac cutout, in pixels at every image size


def _view_codes_text():
    return ', '.join(f'{code} ({meaning})' for code, meaning in VIEW_CODES.items()).replace('%%', '%')


def augment_param(default: str, views: str) -> Param:
    """The --augment setting of an algorithm: `views` says what its L.W.S views are for; the codes
    come from VIEW_CODES, the grammar the parser checks against (settings.resolve calls parse_augment)."""
    return Param(default, f'{views}; codes {_view_codes_text()}.', check=parse_augment)


def _code_error(spec, what='--augment'):
    return UserError(f'bad {what}={spec!r}: expected L.W.S (labeled.weak.strong views), each one of '
                     f'{_view_codes_text()}; e.g. --augment=d.d.rac')


def parse_code(code: str) -> dict:
    """View code -> dict of View fields (weak, strong, nops, magnitude, fixed, cutout); else UserError."""
    if code in ('x', 'm', 'd'):
        return dict(weak=code)
    if code == 'c':
        return dict(cutout=CUTOUT)
    if code in ('aa', 'aac'):
        return dict(strong='aa', cutout=CUTOUT if code == 'aac' else 0)
    if code in ('cta', 'ctap'):
        return dict(strong='cta', cta_cutout=code == 'cta')
    if code in ('ra', 'rac'):
        return dict(strong='ra', cutout=CUTOUT if code == 'rac' else 0)
    match = re.fullmatch(r'rac([1-9][0-9]?)', code)
    if match and 2 <= int(match.group(1)) <= 10:
        return dict(strong='ra', magnitude=int(match.group(1)), cutout=CUTOUT)
    match = re.fullmatch(r'r([1-9])_([1-9][0-9]?)_(0|[1-9][0-9]?|100)', code)
    if match and int(match.group(2)) <= policies.MAX_LEVEL:
        nops, magnitude, percent = (int(g) for g in match.groups())
        return dict(strong='ra', nops=nops, magnitude=magnitude, fixed=True, cutout_percent=percent)
    raise _code_error(code, 'view code')


def parse_augment(spec: str) -> tuple:
    """'L.W.S' -> (labeled, weak, strong) view codes, each valid for parse_code; else UserError."""
    parts = str(spec).split('.')
    if len(parts) != 3:
        raise _code_error(spec)
    for part in parts:
        try:
            parse_code(part)
        except UserError:
            raise _code_error(spec) from None
    return tuple(parts)


def uses_cta(code: str) -> bool:
    """Whether a view code (or an L.W.S spec) needs a CTAugment object."""
    return any(parse_code(part).get('strong') == 'cta' for part in str(code).split('.'))


@dataclasses.dataclass(frozen=True)
class View:
    """One view: a weak part (flip, pad) and an optional strong part (RandAugment, AutoAugment, CTAugment),
    then an optional grey cutout (`cutout` pixels, or `cutout_percent` of min(H, W))."""
    code: str
    shape: tuple
    flip: bool = True
    pad: int = 4
    weak: str = 'd'
    strong: str = ''
    nops: int = 2
    magnitude: int = 10
    fixed: bool = False
    cutout: int = 0
    cutout_percent: int = 0
    cta_cutout: bool = False
    group: str = 'cifar10'
    cta: Any = dataclasses.field(default=None, compare=False, repr=False)

    @property
    def cutout_side(self):
        height, width = self.shape[:2]
        return self.cutout or int(0.01 * self.cutout_percent * min(height, width))

    def _weak_args(self):
        if self.weak == 'x':
            return None
        if self.weak == 'm':
            return True, 0
        return self.flip, self.pad

    def sample(self, n: int, seed) -> dict:
        """Random parameters of n images (dict of tensors with first axis n), from `seed` ([2] int) only
        (and, for CTAugment views, the current rates)."""
        weak_seed, strong_seed, cutout_seed = augment.split_seed(tf.cast(seed, tf.int64), 3)
        params = {}
        if self._weak_args():
            params.update(augment.sample_weak(n, weak_seed, *self._weak_args()))
        if self.strong == 'ra':
            params.update(policies.sample_randaugment(n, strong_seed, self.nops, self.magnitude, self.fixed))
        elif self.strong == 'aa':
            params.update(policies.sample_autoaugment(n, strong_seed, self.group))
        elif self.strong == 'cta':
            params.update(self.cta.sample_training(n, strong_seed, cutout=self.cta_cutout))
        if self.cutout_side > 0:
            params['cutout'] = augment.uniform(cutout_seed, [n, 2])
        return params

    def apply_weak(self, images, params: dict) -> tf.Tensor:
        """Only the weak part of the view (the same flip and crop as `apply` with these params): the image
        CTAugment's probe starts from."""
        if not self._weak_args():
            return tf.identity(images)
        return geometry.weak(images, params['flip'], params['offset'], self._weak_args()[1])

    def apply(self, images, params: dict, xla: bool = False) -> tf.Tensor:
        """float32 (n, H, W, C) images in [0, 1] -> the view, same shape; row i uses row i of `params`."""
        height, width = images.shape[1:3]
        if self._weak_args():
            images = geometry.weak(images, params['flip'], params['offset'], self._weak_args()[1])
        if self.strong == 'cta':
            return self.cta.apply(images, params, xla)
        if not self.strong and self.cutout_side > 0:  # 'c': the grey cutout of cutout_numpy alone
            centre = geometry.centre_pixels(params['cutout'], height, width)
            square = geometry.square_mask(height, width, centre, tf.fill(tf.shape(centre)[:1], self.cutout_side))
            return augment.select(square, 0.5, images)
        if not self.strong:
            return tf.identity(images)
        if self.strong == 'ra':
            program, used = policies.randaugment_program(params, height, width), RA_OPS
        else:
            program = policies.autoaugment_program(params, height, width, self.group)
            used = policies.aa_ops(self.group)
        levels = augment.to_levels(images)
        levels, alpha = augment.apply_program(levels, program, used, tf.fill(tf.shape(levels[..., :1]), 255.0), xla)
        grey = alpha == 0.0  # the reference's unwrap: transparent pixels are 0 in [-1, 1]
        if self.cutout_side > 0:  # then cutout_numpy: 0 in [-1, 1] too
            centre = geometry.centre_pixels(params['cutout'], height, width)
            grey |= geometry.square_mask(height, width, centre, tf.fill(tf.shape(centre)[:1], self.cutout_side))
        return augment.from_levels(augment.select(grey, 127.5, levels), xla=xla)


def make_view(code: str, info, cta=None) -> View:
    """The View of a code for a dataset (info: records.DatasetInfo or any object with name, shape, flip, pad).
    CTAugment codes need `cta` (a cta.CTAugment)."""
    fields = parse_code(code)
    if fields.get('strong') == 'cta' and cta is None:
        raise ValueError(f'view {code!r} needs a CTAugment object')
    return View(code=code, shape=tuple(info.shape), flip=bool(info.flip), pad=int(info.pad),
                group=policies.policy_group(getattr(info, 'name', '')), cta=cta, **fields)


def view_fn(code: str, flip: bool, pad: int, cta=None):
    """Old interface: fn(images in [0, 1], seed) -> images of one view code (sample + apply in one call)."""
    parse_code(code)
    if uses_cta(code) and cta is None:
        raise ValueError(f'view {code!r} needs a CTAugment object')

    def run(images, seed):
        info = types.SimpleNamespace(name='', shape=images.shape[1:], flip=flip, pad=pad)
        view = make_view(code, info, cta)
        return view.apply(images, view.sample(tf.shape(images)[0], seed))

    return run
