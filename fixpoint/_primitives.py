"""The primitives that make fixed points compose with every torch.func transform.

Three ``autograd.Function`` s, each with ``setup_context`` (so torch.func can trace them):

- :class:`SolveOp` runs the forward solve (data-dependent stopping). Its outputs are constants;
  under ``vmap`` it moves the vmapped dimension into the rows of one batched solve.
- :class:`ImplicitOp` gives the solution its derivative by the implicit function theorem, with
  the estimator's linear map M standing in for (I − J)⁻¹: reverse mode pulls ``w = M g`` back
  through ∂f/∂θ, forward mode returns ``Mᵀ (∂f/∂θ) θ̇`` (the estimator with the roles of
  ``vjp`` and ``jvp`` swapped: one linear map in both modes). Both rules are written in
  differentiable operations at the solution returned by this same primitive, so every higher
  derivative is again taken by the estimator's rule.
- :class:`LinearSolveOp` runs an iterative estimator's linear solve (CG, Implicit: data-dependent
  loops), batches it under ``vmap`` and differentiates it as the inverse it computes.

Direct estimators (JFB, Neumann, Phantom, Exact: fixed sequences of products) need no primitive:
they are evaluated with differentiable, vmappable products and differentiated through.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import Tensor
from torch._functorch.autograd_function import custom_function_call
from torch._functorch.utils import unwrap_dead_wrappers
from torch.func import grad as func_grad

from fixpoint._norms import row_norm
from fixpoint._problem import FlatProblem, rows_first, split_rows
from fixpoint._transforms import (
    escaped_tensor_error,
    forward_ad_active,
    is_transformed,
    refuse_forward_over_forward,
    transforms_active,
)
from fixpoint._transforms import (
    jvp as func_jvp,
)
from fixpoint._transforms import (
    vjp as func_vjp,
)
from fixpoint._warnings import warn_user
from fixpoint.estimators.base import ConvergenceWarning, Estimate, MatVec
from fixpoint.linearization import Linearization
from fixpoint.matvecs import count_matvecs
from fixpoint.solution import CONVERGED, ConvergenceError, Solution, statuses_from_codes

__all__ = [
    "ImplicitOp",
    "LinearSolveOp",
    "SolveOp",
    "adjoint",
    "apply",
    "run_estimator",
    "solve_flat",
]


class SolveOp(torch.autograd.Function):
    """``(z0, *leaves) -> (z*, residual, converged, iterations, fevals, trace, status_code)``.

    The outputs are constants (no derivative flows through a solve by itself: that is
    :class:`ImplicitOp`'s job). Rows are independent problems.
    """

    @staticmethod
    def forward(problem: FlatProblem, z0: Tensor, *leaves: Tensor) -> tuple[Tensor, ...]:
        return solve_flat(problem, z0, tuple(leaf.detach() for leaf in leaves))

    @staticmethod
    def setup_context(ctx: Any, inputs: tuple[Any, ...], output: tuple[Tensor, ...]) -> None:
        ctx.mark_non_differentiable(*output)

    @staticmethod
    def backward(ctx: Any, *grads: Tensor) -> tuple[None, ...]:
        return (None,) * len(ctx.needs_input_grad)

    @staticmethod
    def jvp(ctx: Any, *tangents: Any) -> tuple[None, ...]:
        return (None,) * 7

    @staticmethod
    def vmap(
        info: Any, in_dims: tuple[Any, ...], problem: FlatProblem, z0: Tensor, *leaves: Tensor
    ) -> tuple[tuple[Tensor, ...], tuple[int, ...]]:
        size = info.batch_size
        batched = problem.batch(in_dims[2:], size, info.randomness)
        outs = solve(batched, rows_first(z0, in_dims[1], size), leaves)
        dims = (0, 0, 0, 0, 0, 1, 0)  # the trace is (steps, rows)
        return tuple(split_rows(t, size, d) for t, d in zip(outs, dims, strict=True)), dims


class ImplicitOp(torch.autograd.Function):
    """``z* ↦ z*`` as a function of the leaves, differentiated by the implicit function theorem.

    ``hook`` is an eager-mode optimisation (see :class:`fixpoint.fixed_point`): ``f(z*, ...)``
    with an autograd graph to everything ``f`` uses, closed-over tensors included. A first-order
    backward pushes ``w`` into it; otherwise (higher order, torch.func) the leaves' gradients
    come from the differentiable rule below.
    """

    generate_vmap_rule = True

    @staticmethod
    def forward(
        problem: FlatProblem, z_star: Tensor, hook: Tensor | None, *leaves: Tensor
    ) -> Tensor:
        return z_star.clone()

    @staticmethod
    def setup_context(ctx: Any, inputs: tuple[Any, ...], output: Tensor) -> None:
        problem, z_star, hook, *leaves = inputs
        ctx.problem = problem
        ctx.save_for_backward(output, hook, *leaves)
        ctx.save_for_forward(z_star, hook, *leaves)

    @staticmethod
    def backward(ctx: Any, g: Tensor) -> tuple[Tensor | None, ...]:
        z, hook, *leaves = ctx.saved_tensors
        problem: FlatProblem = ctx.problem
        none = [None] * len(leaves)
        if hook is not None:
            if not torch.is_grad_enabled():
                return None, None, problem.eager.pullback(problem, g), *none
            problem.eager.refuse_closures(leaves)
        wanted = [i for i, need in enumerate(ctx.needs_input_grad[3:]) if need]
        if not wanted:
            return None, None, None, *none
        w = adjoint(problem, g, z, leaves)
        return None, None, None, *_pull_back(problem.fn, z, leaves, wanted, w)

    @staticmethod
    def jvp(
        ctx: Any, _problem: None, _z: Tensor | None, dhook: Tensor | None, *dleaves: Any
    ) -> Tensor:
        refuse_forward_over_forward(_caller(ctx.problem))
        z_star, hook, *leaves = ctx.saved_tensors
        problem: FlatProblem = ctx.problem
        # z* with its own derivative, for the transforms outside this one.
        z = apply(ImplicitOp, problem, z_star, hook, *leaves)
        if dhook is not None:
            u = dhook  # (∂f/∂θ) θ̇ for everything f uses, closed-over tensors included
        else:
            u = _push_forward(problem.fn, z, leaves, dleaves)
        return adjoint(problem, u, z, leaves, transposed=True)


class LinearSolveOp(torch.autograd.Function):
    """``w = M rhs`` for an estimator that solves ``(I − K) w = rhs``, ``K = Jᵀ`` (or ``J``).

    ``transposed=False`` solves the adjoint system :math:`(I - J^\\top) w = g` of the backward;
    ``True`` solves :math:`(I - J) w = u` (forward mode), by the same estimator with the roles
    of ``vjp`` and ``jvp`` swapped. Its derivative is that of the exact inverse:
    :math:`\\mathrm{d}w = (I - K)^{-1}(\\mathrm{d}\\,rhs + \\mathrm{d}K\\,w)`.
    """

    @staticmethod
    def forward(
        problem: FlatProblem, transposed: bool, rhs: Tensor, z: Tensor, *leaves: Tensor
    ) -> Tensor:
        leaves = tuple(leaf.detach() for leaf in leaves)
        lin = Linearization(problem.at(leaves), z.detach())
        vjp, jvp = (lin.jvp, lin.vjp) if transposed else (lin.vjp, lin.jvp)
        return run_estimator(problem, rhs.detach(), vjp, jvp)

    @staticmethod
    def setup_context(ctx: Any, inputs: tuple[Any, ...], output: Tensor) -> None:
        problem, transposed, _, z, *leaves = inputs
        ctx.problem, ctx.transposed = problem, transposed
        ctx.save_for_backward(output, z, *leaves)
        ctx.save_for_forward(output, z, *leaves)

    @staticmethod
    def backward(ctx: Any, u: Tensor) -> tuple[Tensor | None, ...]:
        w, z, *leaves = ctx.saved_tensors
        problem: FlatProblem = ctx.problem
        lam = apply(LinearSolveOp, problem, not ctx.transposed, u, z, *leaves)
        need_z = ctx.needs_input_grad[3]
        wanted = [i for i, need in enumerate(ctx.needs_input_grad[4:]) if need]
        grads: list[Tensor | None] = [None] * (1 + len(leaves))
        if need_z or wanted:
            # d⟨λ, K w⟩ with w, λ fixed; ⟨λ, Jᵀw⟩ = ⟨Jᵀw, λ⟩ and ⟨λ, Jw⟩ = ⟨Jᵀλ, w⟩.
            a, b = (lam, w) if ctx.transposed else (w, lam)

            def pairing(z: Tensor, *chosen: Tensor) -> Tensor:
                _, pullback = func_vjp(problem.at(_with(leaves, wanted, chosen)), z)
                return (pullback(a)[0] * b).sum()

            found = func_grad(pairing, argnums=tuple(range(1 + len(wanted))))(
                z, *(leaves[i] for i in wanted)
            )
            grads[0] = found[0] if need_z else None
            for i, value in zip(wanted, found[1:], strict=True):
                grads[1 + i] = value
        return None, None, lam, *grads

    @staticmethod
    def jvp(
        ctx: Any, _p: None, _t: None, drhs: Tensor | None, dz: Tensor | None, *dleaves: Any
    ) -> Tensor:
        refuse_forward_over_forward(_caller(ctx.problem))
        w, z, *leaves = ctx.saved_tensors
        problem: FlatProblem = ctx.problem
        moving = [i for i, d in enumerate(dleaves) if d is not None]

        def k_times_w(z: Tensor, *chosen: Tensor) -> Tensor:
            fn = problem.at(_with(leaves, moving, chosen))
            if ctx.transposed:
                return func_jvp(fn, (z,), (w,))[1]
            return func_vjp(fn, z)[1](w)[0]

        rhs = drhs
        if dz is not None or moving:
            primals = (z, *(leaves[i] for i in moving))
            tangents = (torch.zeros_like(z) if dz is None else dz, *(dleaves[i] for i in moving))
            dk_w = func_jvp(k_times_w, primals, tangents)[1]
            rhs = dk_w if rhs is None else rhs + dk_w
        if rhs is None:
            return torch.zeros_like(w)
        return apply(LinearSolveOp, problem, ctx.transposed, rhs, z, *leaves)

    @staticmethod
    def vmap(
        info: Any,
        in_dims: tuple[Any, ...],
        problem: FlatProblem,
        transposed: bool,
        rhs: Tensor,
        z: Tensor,
        *leaves: Tensor,
    ) -> tuple[Tensor, int]:
        size = info.batch_size
        batched = problem.batch(in_dims[4:], size, info.randomness)
        w = apply(
            LinearSolveOp,
            batched,
            transposed,
            rows_first(rhs, in_dims[2], size),
            rows_first(z, in_dims[3], size),
            *leaves,
        )
        return split_rows(w, size), 0


def solve_flat(problem: FlatProblem, z0: Tensor, leaves: tuple[Tensor, ...]) -> tuple[Tensor, ...]:
    """The forward solve of :class:`SolveOp`, run directly when no transform is active."""
    fn = problem.at(leaves)

    def checked(z: Tensor) -> Tensor:
        out = fn(z)
        # A solver's own products (Newton–Krylov's jvps) pass transformed z: only a plain z
        # that comes back transformed means f closed over a transformed tensor.
        if is_transformed(out) and not is_transformed(z):
            raise RuntimeError("escaped: f returned a transformed tensor")
        return out

    rows = problem.rows_at(leaves, z0.shape[0])
    try:
        sol = problem.solver.iterate(
            checked, z0.detach(), rows=rows, norm=problem.norm, keep=problem.keep
        )
    except RuntimeError as error:
        clear = escaped_tensor_error(_caller(problem), error)
        if clear is None:
            raise
        raise clear from error
    if rows is not None:
        _verify_converged(problem, sol, fn)
    problem.kept[:] = sol.iterates or ()
    outs = (
        sol.value,
        sol.residual,
        sol.converged,
        sol.iterations,
        sol.fevals,
        sol.trace,
        sol.status_code,
    )
    if problem.throw:
        _raise_unconverged(problem, sol, outs)
    elif problem.warn:
        _warn_unconverged(sol.status_code)
    return outs


def apply(op: type[torch.autograd.Function], *args: Any) -> Any:
    """``op.apply(*args)``, without its per-call signature binding.

    ``Function.apply`` binds the arguments to ``forward``'s signature with :mod:`inspect` at
    every call (to normalise keyword and default arguments, which these primitives do not
    have), which costs as much as a few small operations. The rest is what it does: the
    torch.func dispatch under transforms, the plain autograd path otherwise.
    """
    if transforms_active():
        return custom_function_call(op, *args)
    if any(isinstance(a, Tensor) and is_transformed(a) for a in args):
        # A wrapper of a transform that has ended (a vjp_fn called after its vjp), as
        # Function.apply does.
        args = unwrap_dead_wrappers(args)
    # _C._FunctionBase.apply, the C entry under Function.apply: torch's stub of _FunctionBase
    # leaves apply out (Function wraps it), so mypy finds no "apply" in the superclass.
    return super(torch.autograd.Function, op).apply(*args)  # type: ignore[misc]


def solve(problem: FlatProblem, z0: Tensor, leaves: Sequence[Tensor]) -> tuple[Tensor, ...]:
    """:class:`SolveOp`, run directly when no transform or tangent is about."""
    if transforms_active() or forward_ad_active():
        return apply(SolveOp, problem, z0, *leaves)
    with torch.no_grad():
        return solve_flat(problem, z0, tuple(leaves))


def adjoint(
    problem: FlatProblem,
    g: Tensor,
    z: Tensor,
    leaves: Sequence[Tensor],
    transposed: bool = False,
) -> Tensor:
    """The estimator's ``w ≈ (I − Jᵀ)⁻¹ g`` at ``z`` (``transposed``: ``≈ (I − J)⁻¹ g``).

    Differentiable in ``g``, ``z`` and the leaves, and vmappable: iterative estimators run in
    :class:`LinearSolveOp`, direct ones on differentiable products.
    """
    assert problem.estimator is not None
    if problem.estimator.solves:
        return apply(LinearSolveOp, problem, transposed, g, z, *leaves)
    lin = Linearization(problem.at(leaves), z, functional=True)
    vjp, jvp = (lin.jvp, lin.vjp) if transposed else (lin.vjp, lin.jvp)
    return run_estimator(problem, g, vjp, jvp)


def run_estimator(problem: FlatProblem, g: Tensor, vjp: MatVec, jvp: MatVec) -> Tensor:
    """Call the estimator, check its ``w`` and record what it did in ``problem.info``."""
    estimator = problem.estimator
    assert estimator is not None  # a problem with a backward (fp.fixed_point's)
    with count_matvecs() as count, problem.precision.solver():
        result = estimator(g, vjp, jvp)
    estimate = result if isinstance(result, Estimate) else Estimate(result)
    w = estimate.w
    if not isinstance(w, Tensor) or w.shape != g.shape or w.dtype != g.dtype:
        got = f"{tuple(w.shape)} {w.dtype}" if isinstance(w, Tensor) else type(w).__name__
        raise TypeError(
            f"{estimator!r} returned w of {got}; it must match g: {tuple(g.shape)} {g.dtype}"
        )
    info = problem.info
    if info is not None:
        one = problem.single and not problem.vmapped

        def plain(t: Tensor | None) -> Tensor | None:
            if t is None or is_transformed(t):
                return None
            return t[0] if one else t

        info.calls += 1
        info.converged = plain(estimate.converged)
        info.residual = plain(estimate.residual)
        info.iterations = estimate.iterations
        info.vjp, info.jvp = count.vjp, count.jvp
    return w


def _with(leaves: Sequence[Tensor], index: Sequence[int], chosen: Sequence[Tensor]) -> list[Tensor]:
    """``leaves`` with ``leaves[index[k]]`` replaced by ``chosen[k]``."""
    out = list(leaves)
    for i, t in zip(index, chosen, strict=True):
        out[i] = t
    return out


def _pull_back(
    fn: Callable[..., Tensor], z: Tensor, leaves: Sequence[Tensor], wanted: list[int], w: Tensor
) -> list[Tensor | None]:
    """``wᵀ ∂f/∂leaf`` for the leaves in ``wanted`` (``None`` for the others)."""
    _, pullback = func_vjp(
        lambda *chosen: fn(z, *_with(leaves, wanted, chosen)), *(leaves[i] for i in wanted)
    )
    out: list[Tensor | None] = [None] * len(leaves)
    for i, value in zip(wanted, pullback(w), strict=True):
        out[i] = value
    return out


def _push_forward(
    fn: Callable[..., Tensor], z: Tensor, leaves: Sequence[Tensor], tangents: Sequence[Any]
) -> Tensor:
    """``Σ ∂f/∂leaf · leaf_tangent`` over the leaves that have a tangent."""
    moving = [i for i, t in enumerate(tangents) if t is not None]
    if not moving:
        return torch.zeros_like(z)
    return func_jvp(
        lambda *chosen: fn(z, *_with(leaves, moving, chosen)),
        tuple(leaves[i] for i in moving),
        tuple(tangents[i] for i in moving),
    )[1]


def _verify_converged(problem: FlatProblem, sol: Any, fn: Callable[[Tensor], Tensor]) -> None:
    """After a solve that evaluated ``f`` on some rows only: check it on the whole batch.

    A row reported converged must be within tolerance when ``f`` sees every sample (up to the
    rounding of a different evaluation); otherwise ``f`` is not row-independent or ``in_dims``
    is wrong, and the statuses cannot be trusted.
    """
    z = sol.value
    fz = fn(z)
    norm = row_norm if problem.norm is None else problem.norm
    residual = norm(fz - z)
    rounding = 16 * torch.finfo(residual.dtype).eps * (norm(fz) + norm(z))
    tolerance = problem.solver.tolerance(z, sol.trace[0], norm)
    wrong = sol.converged & ~(residual <= tolerance + rounding)
    if bool(wrong.any()):
        raise RuntimeError(
            f"skip_converged: {int(wrong.sum())} samples were converged when f saw only the "
            "samples still iterating, but not when it sees the whole batch (residual "
            f"{residual[wrong].max().item():.3g}). f must treat the samples independently (no "
            "batch statistics), and in_dims must mark exactly the per-sample arguments"
        )


def _caller(problem: FlatProblem) -> str:
    return "fp.solve" if problem.estimator is None else "fp.fixed_point"


def _raise_unconverged(problem: FlatProblem, sol: Solution, outs: tuple[Tensor, ...]) -> None:
    failed = sol.status_code != CONVERGED
    if bool(failed.any()):
        statuses = statuses_from_codes(sol.status_code[failed])
        kinds = ", ".join(sorted({s.value for s in statuses}))
        residual = float(sol.residual[failed].max())
        which = (
            f"({kinds}, residual {residual:.3g})"
            if failed.numel() == 1
            else f"for {int(failed.sum())} of {failed.numel()} samples ({kinds}, largest "
            f"residual {residual:.3g})"
        )
        error = ConvergenceError(
            f"{_caller(problem)}: the solve did not converge {which}: "
            f"{statuses[0].explanation}. The solution is in this error's .solution",
            sol,
        )
        error.outs = outs  # for the caller to restructure .solution
        raise error


def _warn_unconverged(codes: Tensor) -> None:
    failed = codes != CONVERGED
    if bool(failed.any()):
        statuses = statuses_from_codes(codes[failed])
        kinds = ", ".join(sorted({s.value for s in statuses}))
        warn_user(
            f"fp.fixed_point: the forward solve did not converge for {int(failed.sum())} of "
            f"{codes.numel()} samples ({kinds}); the returned value and its gradient are taken "
            f"at the best iterate found. {statuses[0].explanation}.",
            ConvergenceWarning,
        )
