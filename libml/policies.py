"""RandAugment and AutoAugment as in the reference (FixMatch's third_party/auto_augment), as engine programs.

Both act on the reference's RGBA image (libml.augment, alpha=True): pixels uncovered by a warp, and
AutoAugment's Cutout, end grey unless a later RGB op (autocontrast, equalize, invert, posterize,
solarize) resets their alpha. An op's level l maps to its parameter as in the reference (PARAMETER_MAX 10):
  Rotate int(30 l / 10) degrees; ShearX/Y 0.3 l / 10; TranslateX/Y int(10 l / 10) pixels (each signed
  with probability 1/2); Color, Contrast, Brightness, Sharpness factor 1.8 l / 10 + 0.1; Solarize
  threshold 256 - int(256 l / 10); Posterize 4 - int(4 l / 10) bits; Cutout (AutoAugment) side
  int(20 l / 10), centre uniform, RGB 127 and alpha 0; AutoContrast, Equalize, Invert, Identity: no level.
RandAugment (`ra`, `rac`, `racM`): `nops` ops drawn uniformly with replacement from RA_OPS, each applied with
probability 1/2 at its own level m = randint(1, M) (1..M-1, M = 10 by default); `rN_M_C`: N ops, each
always applied, at level M. AutoAugment (`aa`, `aac`): one sub-policy of the table per image (uniform),
each of its two (op, probability, level) applied with its probability. The tables are data
(libml/autoaugment_policies.json): group 'svhn' for datasets svhn and svhn_noextra, 'cifar10' for all
others (the reference used cifar10's table for cifar10 and cifar100).
"""
import functools
import json
import os

import numpy as np
import tensorflow as tf

from libml import augment
from libml import geometry

RA_OPS = ('Identity', 'AutoContrast', 'Equalize', 'Rotate', 'Solarize', 'Color', 'Contrast', 'Brightness',
          'Sharpness', 'ShearX', 'TranslateX', 'TranslateY', 'Posterize', 'ShearY')
NAMES = RA_OPS + ('Invert', 'Cutout')
ENGINE_OP = {'Identity': 'identity', 'AutoContrast': 'autocontrast', 'Equalize': 'equalize', 'Invert': 'invert',
             'Rotate': 'rotate', 'Solarize': 'solarize', 'Color': 'color', 'Contrast': 'contrast',
             'Brightness': 'brightness', 'Sharpness': 'sharpness', 'ShearX': 'shear_x', 'ShearY': 'shear_y',
             'TranslateX': 'translate_x', 'TranslateY': 'translate_y', 'Posterize': 'posterize', 'Cutout': 'cutout'}
SIGNED = ('Rotate', 'ShearX', 'ShearY', 'TranslateX', 'TranslateY')
MAX_LEVEL = 15  # rN_M_C accepts M up to 15, as the reference's flag list
POLICY_FILE = os.path.join(os.path.dirname(os.path.abspath(__file__)), 'autoaugment_policies.json')


def level_value(name: str, level: int) -> float:
    """The reference's parameter of op `name` at integer level `level` (Python float arithmetic)."""
    if name in ('Identity',):
        return 0.0
    if name in ('AutoContrast', 'Equalize', 'Invert'):
        return 1.0  # engine blend weight: the op itself
    if name == 'Rotate':
        return float(int(level * 30 / 10))
    if name == 'Solarize':
        return float(256 - int(level * 256 / 10))
    if name in ('Color', 'Contrast', 'Brightness', 'Sharpness'):
        return float(level) * 1.8 / 10 + 0.1
    if name in ('ShearX', 'ShearY'):
        return float(level) * 0.3 / 10
    if name in ('TranslateX', 'TranslateY'):
        return float(int(level * 10 / 10))
    if name == 'Posterize':
        return float(4 - int(level * 4 / 10))
    if name == 'Cutout':
        return float(int(level * 20 / 10))
    raise ValueError(name)


VALUES = np.array([[level_value(name, level) for level in range(MAX_LEVEL + 1)] for name in NAMES])
ENGINE_IDS = np.array([augment.OPS.index(ENGINE_OP[name]) for name in NAMES], np.int32)
SIGN_OF = np.array([name in SIGNED for name in NAMES])


def _program(names, level, negate, active, centre):
    """Engine program of ops NAMES[names] (N, D) at integer levels (N, D); identity where not `active`."""
    value = tf.gather_nd(tf.constant(VALUES), tf.stack([names, tf.cast(level, tf.int32)], -1))
    signed = tf.gather(tf.constant(SIGN_OF), names) & negate
    return {'op': tf.where(active, tf.gather(tf.constant(ENGINE_IDS), names), 0),
            'value': tf.where(signed, -value, value), 'value2': tf.zeros_like(value), 'centre': centre}


def sample_randaugment(n, seed, nops: int = 2, magnitude: int = 10, fixed: bool = False) -> dict:
    """RandAugment draws: 'ra_ops' (n, nops) indexes RA_OPS; 'level' (n, nops) = randint(1, magnitude)
    (or `magnitude` when `fixed`); 'active' (n, nops) with p = 1/2 (always when `fixed`); 'negate'."""
    op_seed, level_seed, active_seed, sign_seed = augment.split_seed(seed, 4)
    shape = [n, nops]
    ops = augment.uniform(op_seed, shape, tf.int32, 0, len(RA_OPS))
    if fixed:
        level = tf.fill(shape, magnitude)
        active = tf.fill(shape, True)
    else:
        level = augment.uniform(level_seed, shape, tf.int32, 1, magnitude)
        active = augment.uniform(active_seed, shape) < 0.5
    return {'ra_ops': ops, 'level': level, 'active': active, 'negate': augment.uniform(sign_seed, shape) < 0.5}


def randaugment_program(params: dict, height: int, width: int) -> dict:
    names = tf.gather(tf.constant([NAMES.index(name) for name in RA_OPS], tf.int32), params['ra_ops'])
    centre = tf.zeros(tf.concat([tf.shape(names), [2]], 0), tf.int32)
    return _program(names, params['level'], params['negate'], params['active'], centre)


@functools.lru_cache(maxsize=None)
def policy_table(group: str) -> tuple:
    """(names (P, 2) int32 into NAMES, probabilities (P, 2) float64, levels (P, 2) int32) of a group."""
    with open(POLICY_FILE) as f:
        table = json.load(f)[group]
    names = np.array([[NAMES.index(op) for op, _, _ in sub] for sub in table], np.int32)
    probabilities = np.array([[p for _, p, _ in sub] for sub in table], np.float64)
    levels = np.array([[level for _, _, level in sub] for sub in table], np.int32)
    return names, probabilities, levels


def policy_group(dataset_name: str) -> str:
    """AutoAugment table of a dataset: 'svhn' for svhn and svhn_noextra, else 'cifar10'."""
    return 'svhn' if dataset_name in ('svhn', 'svhn_noextra') else 'cifar10'


def aa_ops(group: str) -> tuple:
    """Engine op names an AutoAugment group can use."""
    return tuple(sorted({ENGINE_OP[NAMES[i]] for i in policy_table(group)[0].ravel()}))


def sample_autoaugment(n, seed, group: str = 'cifar10') -> dict:
    """AutoAugment draws: 'policy' (n,) uniform sub-policy index; 'active' (n, 2) with each op's probability;
    'negate' (n, 2); 'centre' (n, 2, 2) uniform fractions (Cutout centres)."""
    names, probabilities, _ = policy_table(group)
    policy_seed, active_seed, sign_seed, centre_seed = augment.split_seed(seed, 4)
    policy = augment.uniform(policy_seed, [n], tf.int32, 0, len(names))
    active = augment.uniform(active_seed, [n, 2]) < tf.gather(tf.constant(probabilities), policy)
    return {'policy': policy, 'active': active, 'negate': augment.uniform(sign_seed, [n, 2]) < 0.5,
            'centre': augment.uniform(centre_seed, [n, 2, 2])}


def autoaugment_program(params: dict, height: int, width: int, group: str = 'cifar10') -> dict:
    names, _, levels = policy_table(group)
    policy = params['policy']
    centre = tf.stack([geometry.centre_pixels(params['centre'][:, k], height, width) for k in range(2)], 1)
    return _program(tf.gather(tf.constant(names), policy), tf.gather(tf.constant(levels), policy),
                    params['negate'], params['active'], centre)
