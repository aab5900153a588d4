"""The abstract gradient estimator: one method that maps ``(g, vjp, jvp)`` to ``w``."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass
from typing import ClassVar, NamedTuple

from torch import Tensor

__all__ = ["ConvergenceWarning", "Estimate", "Estimator", "MatVec"]

MatVec = Callable[[Tensor], Tensor]
"""A product ``(B, n) -> (B, n)`` with the per-sample Jacobian (``vjp``: Jᵀv, ``jvp``: Jv)."""


class ConvergenceWarning(UserWarning):
    """An iterative gradient estimator stopped before reaching its tolerance."""


class Estimate(NamedTuple):
    """What an iterative estimator may return instead of a bare ``w``.

    ``converged`` and ``residual`` (``‖g − (I − Jᵀ) w‖₂`` where the estimator knows it) have
    shape ``(B,)``; ``iterations`` counts the estimator's own steps.
    """

    w: Tensor
    converged: Tensor | None = None
    residual: Tensor | None = None
    iterations: int | None = None


@dataclass(frozen=True)
class Estimator(ABC):
    r"""Base class of gradient estimators.

    At a fixed point :math:`z^* = f(z^*, \theta)` with :math:`J = \partial f/\partial z(z^*)` and
    incoming gradient :math:`g = \partial L/\partial z^*`, the exact gradient is
    :math:`\mathrm{d}L/\mathrm{d}\theta = w^\top \partial f/\partial\theta` with
    :math:`w = (I - J^\top)^{-1} g`. An estimator produces :math:`w` (or an approximation of it)
    from :math:`g` and matrix-free products with :math:`J`.

    Subclasses implement :meth:`__call__` on flat ``(B, n)`` matrices: row ``b`` is sample
    ``b`` (``B = 1`` for an unbatched problem), and ``vjp``/``jvp`` act row by row. The library
    counts every product (:func:`fixpoint.count_matvecs`).

    Class attributes
    ----------------
    uses_vjp
        Whether :meth:`__call__` may call ``vjp``. When ``False`` the forward pass does not keep
        the graph of ``f`` with respect to ``z`` (JFB). It is only an optimisation: a product
        asked for anyway is still computed, by recomputing ``f``.
    """

    uses_vjp: ClassVar[bool] = True

    @abstractmethod
    def __call__(self, g: Tensor, vjp: MatVec, jvp: MatVec) -> Tensor | Estimate:
        """Return ``w`` (shape of ``g``), or an :class:`Estimate` with diagnostics."""

    @property
    def name(self) -> str:
        return repr(self)
