"""CTAugment: learned augmentation magnitudes (batched TensorFlow ops)."""
from cta.ctaugment import CTAugment, OPS, OP_NAMES, Policy, proximity

__all__ = ['CTAugment', 'OPS', 'OP_NAMES', 'Policy', 'proximity']
