"""Operators: building blocks that pose problems as contractions, and checks of contraction."""

from fixpoint.operators.affine import Affine
from fixpoint.operators.lipschitz import lipschitz
from fixpoint.operators.normalization import clip_operator_norm_, operator_norm
from fixpoint.operators.proximal import ProximalGradient, lasso, soft_threshold
from fixpoint.operators.relaxed import Relaxed
from fixpoint.operators.spectral import spectral_radius

__all__ = [
    "Affine",
    "ProximalGradient",
    "Relaxed",
    "clip_operator_norm_",
    "lasso",
    "lipschitz",
    "operator_norm",
    "soft_threshold",
    "spectral_radius",
]
