"""Operators: building blocks that pose problems as contractions, and checks of contraction."""

from fixpoint.operators.affine import Affine
from fixpoint.operators.lipschitz import lipschitz
from fixpoint.operators.proximal import ProximalGradient, lasso, soft_threshold
from fixpoint.operators.relaxed import Relaxed

__all__ = ["Affine", "ProximalGradient", "Relaxed", "lasso", "lipschitz", "soft_threshold"]
