"""The abstract gradient estimator: one method that maps ``(g, vjp, jvp)`` to ``w``."""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Any, ClassVar, NamedTuple

from torch import Tensor
from torch._C import _functorch

from fixpoint._display import compact
from fixpoint._norms import row_norm
from fixpoint._registry import register
from fixpoint._warnings import warn_user
from fixpoint.linalg import MatVec

__all__ = ["ConvergenceWarning", "Estimate", "Estimator", "MatVec"]


def warn_inexact(converged: Tensor, what: str) -> None:
    """Issue a :class:`ConvergenceWarning` when some sample did not converge.

    ``what`` says what did not converge, e.g. ``"CG did not reach its tolerance (...)"``.
    """
    if not bool(converged.all()):
        bad, total = int((~converged).sum()), converged.numel()
        warn_user(
            f"{what} for {bad} of {total} samples; the gradient is inexact", ConvergenceWarning
        )


def warn_if_series_grows(owner: str, g: Tensor, last: Tensor, products: int) -> None:
    """Warn when a truncated series' last term is no smaller than its first, for some sample.

    For a map that contracts at :math:`z^*`, :math:`\\|(J^\top)^k g\\| \\le \\|J\\|^k \\|g\\|`
    shrinks; a term that has not shrunk after ``products`` products shows that :math:`J` expands
    there, and the truncated series (a polynomial in :math:`J^\top`) can then point anywhere,
    the wrong way included. The terms are at hand, so the check costs two norms. It is skipped
    under torch.func transforms (a warning cannot depend on a vmapped value).
    """
    if (
        products == 0
        or _functorch.is_functorch_wrapped_tensor(g)
        or _functorch.is_functorch_wrapped_tensor(last)
    ):
        return
    growth = row_norm(last) / row_norm(g)
    grew = growth >= 1  # NaN (g = 0) is not growth
    if bool(grew.any()):
        warn_user(
            f"{owner}: the series terms did not shrink over {products} products with Jᵀ for "
            f"{int(grew.sum())} of {grew.numel()} samples (up to {growth[grew].max().item():.3g}× "
            "the first): J = ∂f/∂z expands at z*, and the truncated series can point the wrong "
            "way. Use an exact estimator (fp.CG, fp.Implicit), or make f contract (check it with "
            "fp.operators.spectral_radius)",
            ConvergenceWarning,
        )


class ConvergenceWarning(UserWarning):
    """An iterative solve (forward, or a gradient estimator's) stopped before its tolerance.

    Turn it into an error with ``warnings.simplefilter("error", fp.ConvergenceWarning)``.
    """


class Estimate(NamedTuple):
    r"""What an iterative estimator may return instead of a bare ``w``.

    Attributes
    ----------
    w
        The estimate of :math:`(I - J^\top)^{-1} g`, shape of ``g``.
    converged
        Per-sample bool ``(B,)``, or ``None`` for a direct estimator.
    residual
        Per-sample ``‖g − (I − Jᵀ) w‖₂`` where the estimator knows it, else ``None``.
    iterations
        The estimator's own iterations, or ``None``.

    Examples
    --------
    >>> import torch, fixpoint as fp
    >>> est = fp.CG()(torch.ones(1, 2, dtype=torch.float64), vjp=lambda v: 0.5 * v,
    ...               jvp=lambda v: 0.5 * v)
    >>> est.w, bool(est.converged.all())
    (tensor([[2., 2.]], dtype=torch.float64), True)
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

    Attributes
    ----------
    uses_vjp
        Whether :meth:`__call__` may call ``vjp``. When ``False`` the forward pass does not keep
        the graph of ``f`` with respect to ``z`` (JFB). It is only an optimisation: a product
        asked for anyway is still computed, by recomputing ``f``.
    uses_jvp
        Whether :meth:`__call__` may call ``jvp`` (in a backward pass). Such an estimator needs
        ``f`` to support forward-mode AD or double backward; where ``f`` has neither, the error
        names the library's estimators that declare ``False``.
    solves
        Whether :meth:`__call__` *solves* :math:`(I - J^\top) w = g` to a tolerance with a loop
        that stops on data (like :class:`~fixpoint.CG` and :class:`~fixpoint.Implicit`). The
        library then runs it outside of torch.func transforms, batches it itself under
        ``vmap`` and differentiates it as the inverse it computes. ``False`` (the default)
        means a fixed sequence of products (like :class:`~fixpoint.Neumann`), which is
        evaluated on differentiable products and differentiated through.
    exact
        Whether :math:`w` is the implicit-function-theorem answer :math:`(I - J^\top)^{-1} g`
        up to the estimator's tolerance (or rounding), rather than an approximation by design.
        Every estimator that ``solves`` is exact in this sense.

    Every estimator is one linear map :math:`g \mapsto w = M g`. Forward-mode derivatives
    (``jvp``, ``jacfwd``) call the same :meth:`__call__` with the roles of ``vjp`` and ``jvp``
    swapped, which must give :math:`M^\top u` (true for any estimator that is linear in ``g``
    and built from the products alone, since :math:`(J^\top)^\top = J`); then ``jacfwd``
    equals ``jacrev``.

    Examples
    --------
    A complete estimator: two Neumann terms, written out.

    >>> import torch, fixpoint as fp
    >>> class TwoTerms(fp.Estimator):
    ...     def __call__(self, g, vjp, jvp):
    ...         return g + vjp(g)
    >>> TwoTerms()(torch.ones(1, 2), vjp=lambda v: 0.5 * v, jvp=None)
    tensor([[1.5000, 1.5000]])
    """

    uses_vjp: ClassVar[bool] = True
    uses_jvp: ClassVar[bool] = False
    solves: ClassVar[bool] = False
    exact: ClassVar[bool] = False

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        register("estimator", cls)

    @abstractmethod
    def __call__(self, g: Tensor, vjp: MatVec, jvp: MatVec) -> Tensor | Estimate:
        """Return ``w`` (shape of ``g``), or an :class:`Estimate` with diagnostics."""

    @property
    def name(self) -> str:
        """A label for tables and logs: the class and the options that differ from the defaults.

        >>> import fixpoint as fp
        >>> fp.CG(atol=1e-12).name
        'CG(atol=1e-12)'
        """
        return compact(self)
