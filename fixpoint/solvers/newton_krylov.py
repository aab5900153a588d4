"""Inexact Newton on ``g(z) = f(z) − z``: GMRES on Jacobian–vector products, globalised."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import Tensor

from fixpoint._norms import row_norm
from fixpoint._registry import suggest
from fixpoint._validation import count, flag, real, store
from fixpoint.linalg import gmres
from fixpoint.linearization import Linearization
from fixpoint.solvers._line_search import step_along
from fixpoint.solvers.base import FlatMap, Solver

__all__ = ["NewtonKrylov", "NewtonKrylovState"]

_GAMMA = 0.9  # Eisenstat–Walker's γ, as in Kelley's nsoli


@dataclass
class NewtonKrylovState:
    """Per-row forcing term and last residual norm, the initial residual norm, the recent
    residual norms of the line search, and how ``f``'s Jacobian–vector products are taken
    (found at the first step)."""

    eta: Tensor
    residual: Tensor | None
    initial: Tensor
    recent: Tensor
    jvp_mode: str | None = None


@dataclass(frozen=True)
class NewtonKrylov(Solver[NewtonKrylovState]):
    r"""Inexact Newton–Krylov method for the root of :math:`g(z) = f(z) - z`.

    Each step solves the Newton equation :math:`(I - J)\,d = g(z)`, :math:`J = \partial f/\partial
    z`, by GMRES on Jacobian–vector products (forward-mode AD; double backward where ``f`` has
    no forward mode) until :math:`\|g - (I - J)d\| \le \eta\,\|g\|`, then takes
    :math:`z_+ = z + \lambda d` with a line search. The forcing term :math:`\eta` follows
    Eisenstat and Walker's second rule as in Kelley's ``nsoli``:
    :math:`\eta_k = \min(\eta_{\max}, \max(\gamma\|g_k\|^2/\|g_{k-1}\|^2, \gamma\eta_{k-1}^2))`
    (the second term only while :math:`\gamma\eta_{k-1}^2 > 0.1`), :math:`\gamma = 0.9`, kept
    above half the stopping tolerance over :math:`\|g_k\|` so that the last steps do not solve
    more exactly than the tolerance asks; loose solves far from the root, tight ones near it,
    and superlinear convergence. Every row has its own :math:`\eta`, GMRES stopping and step.

    It needs no contraction: it is the solver for maps that barely contract or expand
    (:math:`\rho(J)` near or above 1, e.g. Chandrasekhar's H-equation as :math:`c \to 1`),
    where a handful of Newton steps replace hundreds of Picard or many Anderson steps. Each
    step costs up to ``inner_max_iter`` Jacobian–vector products (each one evaluation of ``f``
    in forward mode, counted in ``fevals``; where ``f`` has no forward mode, one backward pass
    of a double-backward graph, not counted) and keeps up to ``inner_max_iter + 1`` vectors per
    sample. On cheap, strongly contracting maps Anderson is faster. In a batch, GMRES and the
    line search run until the last sample is done and every batched evaluation counts in the
    ``fevals`` of each sample still running, so a sample's count can exceed that of solving it
    alone.

    The line search is :class:`~fixpoint.Broyden`'s: :math:`\lambda = 1` is accepted when
    :math:`\|g(z + \lambda d)\| \le (1 - 10^{-4}\lambda)\max_{j < w}\|g(z_{k-j})\|` over the
    last :math:`w` = ``nonmonotone`` residuals, else :math:`\lambda` is shortened by a
    safeguarded parabola (at most ``max_backtracks`` evaluations). The monotone rule
    (``nonmonotone=1``, Armijo's, as in Kelley's ``nsoli``) can creep along a curved valley
    with tiny steps where the full Newton steps, which the non-monotone rule lets through,
    reach the root (Powell's badly scaled system).

    It is a forward solver only: the adjoint equation of :class:`~fixpoint.Implicit` is linear,
    Newton–Krylov on it would be one GMRES solve on products with :math:`J^\top`, so
    ``fp.Implicit(fp.NewtonKrylov())`` raises a ``TypeError`` that points to
    :class:`~fixpoint.GMRES`, the estimator that does that solve.

    Parameters
    ----------
    inner_max_iter
        GMRES iterations (Jacobian–vector products) per Newton step, ≥ 1.
    eta
        A constant forcing term in (0, 1), or ``None`` (default) for the adaptive rule above.
    eta_max
        The largest forcing term of the adaptive rule, in (0, 1) (default 0.9).
    line_search
        Globalise by the line search (default ``True``); without it every step is the full
        Newton step.
    nonmonotone
        How many recent residuals the acceptance compares with, ≥ 1 (default 5).
    max_backtracks
        Most line-search evaluations per step, ≥ 1.
    atol, rtol, max_iter, divergence, relative_to, norm
        See :class:`~fixpoint.Solver`; ``max_iter`` counts Newton steps.

    Examples
    --------
    Chandrasekhar's H-equation near its singular limit, in a handful of Newton steps:

    >>> import torch, fixpoint as fp
    >>> problem = fp.testing.h_equation(0.9999, n=100)
    >>> sol = fp.solve(problem.f, problem.z0, solver=fp.NewtonKrylov(atol=1e-9, rtol=0))
    >>> sol.status, int(sol.iterations) <= 12
    (Status.CONVERGED, True)
    """

    needs_active: ClassVar[bool] = True
    differentiates_map: ClassVar[bool] = True

    inner_max_iter: int = 30
    eta: float | None = None
    eta_max: float = 0.9
    line_search: bool = True
    nonmonotone: int = 5
    max_backtracks: int = 10

    def __post_init__(self) -> None:
        super().__post_init__()
        owner = "NewtonKrylov"
        store(
            self,
            inner_max_iter=count(owner, "inner_max_iter", self.inner_max_iter, 1),
            eta=None
            if self.eta is None
            else real(owner, "eta", self.eta, low=0, high=1, low_open=True, high_open=True),
            eta_max=real(
                owner, "eta_max", self.eta_max, low=0, high=1, low_open=True, high_open=True
            ),
            line_search=flag(owner, "line_search", self.line_search),
            max_backtracks=count(owner, "max_backtracks", self.max_backtracks, 1),
            nonmonotone=count(owner, "nonmonotone", self.nonmonotone, 1),
        )

    def init(self, fn: FlatMap, z: Tensor, fz: Tensor) -> NewtonKrylovState:
        r = row_norm(fz - z)
        first = self.eta_max if self.eta is None else self.eta
        recent = r[:, None].expand(r.shape[0], self.nonmonotone).clone()
        return NewtonKrylovState(
            eta=torch.full_like(r, first), residual=None, initial=r, recent=recent
        )

    def step(
        self,
        fn: FlatMap,
        z: Tensor,
        fz: Tensor,
        g: Tensor,
        state: NewtonKrylovState,
        *,
        active: Tensor | None = None,
    ) -> tuple[Tensor, Tensor, NewtonKrylovState]:
        if active is None:  # called outside the loop: every row
            active = torch.ones(z.shape[0], dtype=torch.bool, device=z.device)
        r = row_norm(g)
        eta = self._forcing(z, r, state)
        lin = Linearization(fn, z, counted=False, jvp_mode=state.jvp_mode)

        def newton_matrix(v: Tensor) -> Tensor:  # (I − J) v
            try:
                return v - lin.jvp(v)
            except RuntimeError as error:
                if "Jacobian-vector products" not in str(error):
                    raise
                raise RuntimeError(
                    "fp.NewtonKrylov needs Jacobian-vector products of f, and f supports "
                    "neither forward-mode AD nor double backward. Use a solver that needs "
                    f"evaluations of f only: {suggest('solver', differentiates_map=False)}"
                ) from error

        inner = gmres(
            newton_matrix,
            torch.where(active[:, None], g, 0.0),
            atol=0.0,
            rtol=eta,
            max_iter=self.inner_max_iter,
            restart=self.inner_max_iter,
            true_residual=False,
        )
        z_next, fz_next, state.recent, _ = step_along(
            fn,
            z,
            inner.x,
            r,
            state.recent,
            dtype=z.dtype,
            active=active,
            line_search=self.line_search,
            max_backtracks=self.max_backtracks,
        )
        state.eta, state.residual, state.jvp_mode = eta, r, lin.jvp_mode
        return z_next, fz_next, state

    def _forcing(self, z: Tensor, r: Tensor, state: NewtonKrylovState) -> Tensor:
        if self.eta is not None:
            return state.eta
        eta = state.eta
        if state.residual is not None:
            ratio = torch.where(state.residual > 0, r / state.residual, 0.0)
            candidate = _GAMMA * ratio.square()
            previous = _GAMMA * eta.square()
            eta = torch.where(previous > 0.1, torch.maximum(candidate, previous), candidate)
            eta = eta.clamp(max=self.eta_max)
        # No more accuracy than the stop needs: ‖g − (I − J)d‖ ≈ half the tolerance.
        scale = state.initial if self.relative_to == "initial" else row_norm(z)
        stop = self.atol + self.rtol * scale
        floor = torch.where(r > 0, 0.5 * stop / torch.where(r > 0, r, 1.0), self.eta_max)
        return torch.maximum(eta, floor).clamp(max=self.eta_max)
