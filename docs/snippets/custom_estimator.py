"""A new gradient estimator: the Neumann series, summed until its next term is small."""

import warnings
from dataclasses import dataclass

import torch
from torch import Tensor

import fixpoint as fp
from fixpoint.estimators.base import MatVec


@dataclass(frozen=True)
class AdaptiveNeumann(fp.Estimator):
    """w = Σᵢ (Jᵀ)ⁱ g, per sample until ‖(Jᵀ)ⁱ g‖ ≤ rtol·‖g‖, with at most max_iter vjps.
    The residual of w = Σ_{i<k} (Jᵀ)ⁱ g is g − (I − Jᵀ) w = (Jᵀ)ᵏ g, the first term left out:
    the stopping test measures the error of the linear system exactly. It solves the system in
    a loop that stops on data, so it declares solves = True.
    """

    solves = True  # a class variable, not a field
    rtol: float = 1e-6
    max_iter: int = 100

    def __call__(self, g: Tensor, vjp: MatVec, jvp: MatVec) -> fp.Estimate:
        tolerance = self.rtol * torch.linalg.vector_norm(g, dim=1)
        w, term = g, g
        residual = torch.linalg.vector_norm(g, dim=1)
        active = torch.ones_like(residual, dtype=torch.bool)
        for iteration in range(1, self.max_iter + 1):
            term = vjp(term)  # (Jᵀ)^iteration g: the residual of the current w
            residual = torch.where(active, torch.linalg.vector_norm(term, dim=1), residual)
            active = active & (residual > tolerance)
            if iteration == self.max_iter or not bool(active.any()):
                break
            w = w + active[:, None] * term  # stopped samples keep their w
        if bool(active.any()):
            message = f"AdaptiveNeumann: {int(active.sum())} samples did not converge"
            warnings.warn(message, fp.ConvergenceWarning, stacklevel=2)
        return fp.Estimate(w, ~active, residual, iteration)
