"""``fp.fixed_point``: a fixed point that gradients flow through, by any estimator."""

from __future__ import annotations

import dataclasses
import warnings
from collections.abc import Callable
from typing import Any

import torch
import torch.utils._pytree as pytree
from torch import Tensor, nn

from fixpoint._checks import require_instance
from fixpoint._transforms import active_transforms, refuse_vmap
from fixpoint._tree import FlatMap, Layout
from fixpoint.estimators.base import ConvergenceWarning, Estimate, Estimator
from fixpoint.estimators.implicit import Implicit
from fixpoint.linearization import Linearization
from fixpoint.matvecs import count_matvecs
from fixpoint.solution import BackwardInfo, Status
from fixpoint.solve import check_inputs, unflatten_solution
from fixpoint.solvers.anderson import Anderson
from fixpoint.solvers.base import Precision, Solver

__all__ = ["fixed_point"]


def fixed_point(
    f: Callable[..., Any],
    z0: Any,
    *args: Any,
    solver: Solver = Anderson(),
    estimator: Estimator = Implicit(),
    batched: bool = False,
    return_solution: bool = False,
    skip_converged: bool = False,
) -> Any:
    r"""The fixed point ``z* = f(z*, *args)``, differentiable with respect to ``args`` and ``f``'s
    parameters.

    The forward solve runs without an autograd graph. Then ``f`` is applied once more at
    :math:`z^*` with the graph on, and the result is returned with the value of :math:`z^*`. In
    the backward pass the incoming gradient :math:`g = \partial L/\partial z^*` is replaced by
    :math:`w = \text{estimator}(g)` before it flows into that application of ``f``, so

    .. math:: \frac{\mathrm{d}L}{\mathrm{d}\theta} = w^\top \frac{\partial f}{\partial \theta}
              (z^*, \theta), \qquad w \approx (I - J^\top)^{-1} g,
              \quad J = \frac{\partial f}{\partial z}(z^*, \theta),

    for every tensor :math:`\theta` that ``f`` uses and that requires grad: tensors in ``args``
    (pytrees of tensors too) and parameters of modules ``f`` closes over. Memory does not grow
    with the number of solver iterations. If the forward solve does not converge for some
    sample, a :class:`~fixpoint.ConvergenceWarning` says so (the value is then the best iterate).

    Parameters
    ----------
    f
        The map, called as ``f(z, *args)``; returns the structure, shapes and dtype of ``z``.
    z0
        Starting point: a tensor or a pytree of tensors (no gradient flows to it).
    *args
        Inputs of ``f``; gradients flow to those that require grad.
    solver
        The forward solver (default :class:`~fixpoint.Anderson`).
    estimator
        How to compute :math:`w` (default :class:`~fixpoint.Implicit`, the implicit-function-
        theorem gradient up to tolerance). :class:`~fixpoint.JFB` is the cheapest.
    batched
        Leading dimension of ``z0`` is a batch of independent problems (see
        :func:`fixpoint.solve`); the estimator then works per sample too.
    skip_converged
        With ``batched=True``, evaluate ``f`` only on samples still iterating in the forward
        solve (see :func:`fixpoint.solve`).
    return_solution
        Also return the forward :class:`~fixpoint.Solution`; its ``backward`` field
        (:class:`~fixpoint.BackwardInfo`) is filled when gradients flow back.

    Returns
    -------
    z, or (z, Solution)
        ``z`` has the structure of ``z0`` and the value of ``Solution.value``.

    Examples
    --------
    >>> import torch, fixpoint as fp
    >>> theta = torch.tensor(0.5, dtype=torch.float64, requires_grad=True)
    >>> z = fp.fixed_point(lambda z, t: t * z + 1.0, torch.zeros((), dtype=torch.float64), theta,
    ...                    solver=fp.Anderson(atol=1e-12, rtol=0))   # z* = 1 / (1 − θ)
    >>> z.backward()
    >>> round(theta.grad.item(), 6)                                  # dz*/dθ = 1 / (1 − θ)²
    4.0
    """
    check_inputs(f, solver, batched, skip_converged)
    require_instance(estimator, Estimator, "estimator", "fp.JFB()")
    refuse_vmap("fp.fixed_point")
    layout = Layout.of(z0, batched)
    fn = FlatMap(f, layout, args)
    with torch.no_grad():
        flat = solver.iterate(
            fn, layout.flatten(z0).detach(), rows=fn.rows if skip_converged else None
        )
    info = BackwardInfo(estimator=repr(estimator))
    sol = dataclasses.replace(unflatten_solution(flat, layout), backward=info)
    _warn_unconverged(flat.status)

    z = sol.value
    if not torch.is_grad_enabled() or not _may_need_grad(f, args):
        return (z, sol) if return_solution else z
    z_star = flat.value.detach()
    precision = Precision.capture(layout.device)
    constant_map = FlatMap(f, layout, pytree.tree_map(_detach, args))
    batched_pullback = layout.batch is not None
    if active_transforms():
        # Under torch.func.grad/vjp the products come from torch.func, not from a graph.
        fz = fn(z_star)
        linearization = Linearization(constant_map, z_star, precision=precision, functional=True)
        pullback = _Pullback(estimator, linearization, info, batched_pullback, precision)
        z = layout.unflatten(_ImplicitGradient.apply(fz, z_star, pullback))
    else:
        z_in = z_star.clone().requires_grad_(estimator.uses_vjp)
        fz = fn(z_in)
        if _reaches_leaf_other_than(fz, z_in):
            linearization = Linearization(
                constant_map,
                z_star,
                graph=(fz, z_in) if estimator.uses_vjp else None,
                precision=precision,
            )
            pullback = _Pullback(estimator, linearization, info, batched_pullback, precision)
            z = layout.unflatten(_ImplicitGradient.apply(fz, z_star, pullback))
    return (z, sol) if return_solution else z


def _warn_unconverged(statuses: tuple[Status, ...]) -> None:
    failed = [s for s in statuses if s != Status.CONVERGED]
    if failed:
        kinds = ", ".join(sorted({s.value for s in failed}))
        warnings.warn(
            f"fp.fixed_point: the forward solve did not converge for {len(failed)} of "
            f"{len(statuses)} samples ({kinds}); the returned value and its gradient are taken "
            f"at the best iterate found. {failed[0].explanation}.",
            ConvergenceWarning,
            stacklevel=3,
        )


def _detach(x: Any) -> Any:
    return x.detach() if isinstance(x, Tensor) else x


def _may_need_grad(f: Any, args: tuple[Any, ...]) -> bool:
    """False only when nothing ``f`` uses can require grad (then no graph is built at all)."""
    if any(isinstance(a, Tensor) and a.requires_grad for a in pytree.tree_leaves(args)):
        return True
    if isinstance(f, nn.Module):
        return any(p.requires_grad for p in f.parameters())
    return True


def _reaches_leaf_other_than(out: Tensor, z_in: Tensor) -> bool:
    """Whether ``out``'s graph reaches a tensor that requires grad other than ``z_in``.

    Stops at the first such leaf (usually a parameter right at the top of the graph).
    """
    if out.grad_fn is None:
        return out.requires_grad
    seen, stack = set(), [out.grad_fn]
    while stack:
        node = stack.pop()
        if node is None or node in seen:
            continue
        seen.add(node)
        variable = getattr(node, "variable", None)
        if variable is not None and variable is not z_in:
            return True
        stack.extend(next_node for next_node, _ in node.next_functions)
    return False


class _Pullback:
    """Maps the incoming gradient ``g`` to ``w`` with the estimator, and records what it did."""

    def __init__(
        self,
        estimator: Estimator,
        linearization: Linearization,
        info: BackwardInfo,
        batched: bool,
        precision: Precision,
    ) -> None:
        self.estimator = estimator
        self.linearization = linearization
        self.info = info
        self.batched = batched
        self.precision = precision

    def __call__(self, g: Tensor) -> Tensor:
        lin = self.linearization
        if not lin.functional and torch.is_grad_enabled() and self.estimator.uses_vjp:
            raise RuntimeError(
                f"fp.fixed_point with {self.estimator!r} does not support higher-order gradients "
                "(backward with create_graph=True); only fp.JFB() does"
            )
        if lin.functional:
            g = g.detach()  # first-order gradients only, also under torch.func transforms
        with count_matvecs() as count, self.precision.solver():
            result = self.estimator(g, lin.vjp, lin.jvp)
        estimate = result if isinstance(result, Estimate) else Estimate(result)
        w = estimate.w
        if not isinstance(w, Tensor) or w.shape != g.shape or w.dtype != g.dtype:
            got = f"{tuple(w.shape)} {w.dtype}" if isinstance(w, Tensor) else type(w).__name__
            raise TypeError(
                f"{self.estimator!r} returned w of {got}; it must match g: "
                f"{tuple(g.shape)} {g.dtype}"
            )

        def per_sample(t: Tensor | None) -> Tensor | None:
            return t if t is None or self.batched else t[0]

        info = self.info
        info.calls += 1
        info.converged = per_sample(estimate.converged)
        info.residual = per_sample(estimate.residual)
        info.iterations = estimate.iterations
        info.vjp, info.jvp = count.vjp, count.jvp
        return w


class _ImplicitGradient(torch.autograd.Function):
    """Forward: the fixed point's value. Backward: the estimator's ``w`` flows into ``f(z*)``.

    Written in the ``setup_context`` style so that ``torch.func.grad``/``vjp`` can trace it.
    """

    @staticmethod
    def forward(fz: Tensor, z_star: Tensor, pullback: _Pullback) -> Tensor:
        return z_star.clone()

    @staticmethod
    def setup_context(ctx: Any, inputs: tuple[Any, ...], output: Tensor) -> None:
        ctx.pullback = inputs[2]

    @staticmethod
    def backward(ctx: Any, g: Tensor) -> tuple[Tensor, None, None]:
        return ctx.pullback(g), None, None
