"""``fp.solve``: find a fixed point of any map, with no autograd graph."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from fixpoint._forward import Forward, check_inputs, no_grad_aux
from fixpoint._validation import flag
from fixpoint.solution import Solution
from fixpoint.solvers.anderson import Anderson
from fixpoint.solvers.base import Solver

__all__ = ["solve"]


def solve(
    f: Callable[..., Any],
    z0: Any,
    *args: Any,
    solver: Solver = Anderson(),
    batched: bool = False,
    skip_converged: bool = False,
    in_dims: tuple[Any, ...] | None = None,
    has_aux: bool = False,
    throw: bool = False,
) -> Solution:
    r"""Find ``z`` with ``z = f(z, *args)``; no gradient flows through the result.

    Parameters
    ----------
    f
        The map, called as ``f(z, *args)``. It must return the structure, shapes and dtype of
        ``z`` (with ``has_aux=True``: a pair ``(z, aux)``).
    z0
        Starting point: a floating-point tensor or a pytree (tuple/list/dict) of them.
    *args
        Extra inputs of ``f``, passed through unchanged. Under :func:`torch.func.vmap`, every
        tensor that is vmapped must reach ``f`` through ``args`` (not a closure).
    solver
        A forward solver: :class:`~fixpoint.Picard`, :class:`~fixpoint.Anderson` (default) or
        :class:`~fixpoint.Broyden`, or your own :class:`~fixpoint.Solver`.
    batched
        When ``True`` the leading dimension of every tensor of ``z0`` is a batch of independent
        problems: stopping, residuals, iterations and status are per sample, and a sample that
        has converged is no longer changed.
    skip_converged
        With ``batched=True``: once a quarter of the samples still in the solve have stopped,
        drop them from the iterate, the solver's state and the evaluations of ``f``, so a batch
        of mixed difficulty stops paying for its easy samples. Valid when the samples are
        independent (no batch statistics in ``f``). ``in_dims`` says which arguments are sliced
        with the samples. Results and statistics are those of the full-batch solve; at the end
        ``f`` is evaluated once on the whole batch, and a sample reported converged whose
        residual there is not within tolerance (``f`` couples the samples, or ``in_dims`` is
        wrong) raises a ``RuntimeError``. Under ``vmap`` it has no effect.
    in_dims
        With ``skip_converged=True`` and tensors in ``args``: one entry per argument, ``0`` when
        its tensors have the batch as their leading dimension (per-sample inputs, sliced with
        the samples), ``None`` when it is shared (passed whole), or a pytree of those matching
        the argument, as in :func:`torch.func.vmap`.
    has_aux
        ``f`` returns ``(z, aux)``; the solution's ``aux`` is ``aux`` at the returned iterate.
    throw
        Raise :class:`~fixpoint.ConvergenceError` (carrying the :class:`Solution`) when the
        solve does not converge for some sample. By default the solution is returned and its
        ``status`` says why it stopped.

    Returns
    -------
    Solution
        ``value`` with the structure of ``z0``, and statistics of shape ``()`` (or ``(B,)``).
        Under :func:`torch.func.vmap` the statistics are per-sample tensors too and the status
        is read from :attr:`Solution.status_code`.

    Examples
    --------
    >>> import torch, fixpoint as fp
    >>> sol = fp.solve(torch.cos, torch.zeros(()), solver=fp.Anderson(atol=1e-10, rtol=0))
    >>> round(sol.value.item(), 6), sol.status
    (0.739085, Status.CONVERGED)

    A hundred problems under ``vmap`` are one batched solve, each sample with its own stop:

    >>> xs = torch.linspace(0, 1, 100)
    >>> zs = torch.func.vmap(lambda x: fp.solve(lambda z, x: 0.5 * torch.cos(z) + x,
    ...                                         torch.zeros(()), x).value)(xs)
    >>> zs.shape
    torch.Size([100])
    """
    check_inputs(f, solver, batched, skip_converged)
    throw = flag("fp.solve", "throw", throw)
    forward = Forward.prepare(f, z0, args, batched, has_aux)
    problem = forward.problem(solver, skip_converged=skip_converged, in_dims=in_dims, throw=throw)
    outs = forward.solve(problem, z0)
    sol = forward.solution(outs)
    if has_aux:
        return forward.solution(outs, aux=no_grad_aux(forward, sol.value))
    return sol
