"""``fp.solve``: find a fixed point of any map, with no autograd graph."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from fixpoint._forward import Forward, check_inputs, keep_steps, no_grad_aux
from fixpoint._numpy import Interop
from fixpoint._validation import flag
from fixpoint.solution import ConvergenceError, Solution
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
    keep_iterates: Sequence[int] = (),
) -> Solution:
    r"""Find ``z`` with ``z = f(z, *args)``; no gradient flows through the result.

    Parameters
    ----------
    f
        The map, called as ``f(z, *args)``. It must return the structure, shapes and dtype of
        ``z`` (with ``has_aux=True``: a pair ``(z, aux)``); for a NumPy ``z0``, NumPy arrays
        (see *NumPy* below).
    z0
        Starting point: a floating-point tensor or a pytree (tuple/list/dict) of them; or, for
        a NumPy function ``f``, a NumPy array (float16, float32 or float64), a NumPy scalar or
        a pytree of arrays: see *NumPy* below.
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
    keep_iterates
        Steps (``0`` is ``z0``) whose iterates the solution hands back as
        :attr:`Solution.iterates`, without keeping the steps in between (for losses on
        intermediate iterates: see :class:`fixpoint.nn.DEQ`'s ``correction_steps``). Not under
        torch.func transforms.

    Returns
    -------
    Solution
        ``value`` with the structure of ``z0``, and statistics of shape ``()`` (or ``(B,)``).
        Under :func:`torch.func.vmap` the statistics are per-sample tensors too and the status
        is read from :attr:`Solution.status_code`.

    Notes
    -----
    **NumPy.** With a NumPy ``z0`` the solve takes and gives NumPy, as
    ``scipy.optimize.fixed_point`` does. ``z0`` is copied (never changed) into a CPU tensor
    of its own dtype, float32 staying float32; the solver iterates on tensors; ``f`` is
    called with a NumPy copy of the iterate (an array of ``z0``'s dtype and shape, batch
    first when batched, or a pytree of them), and what it returns, anything ``np.asarray``
    reads, is copied back and cast to ``z0``'s dtype (real values only). NumPy arrays in
    ``args`` reach ``f`` as given (with ``skip_converged``, sliced with the samples as
    ``in_dims`` says). The solution's ``value`` (and ``iterates``) are NumPy arrays of
    ``z0``'s dtype and structure (a NumPy scalar for a NumPy scalar ``z0``), ``aux`` is what
    ``f`` returned; the statistics (``residual``, ``converged``, ``iterations``, ``fevals``,
    ``trace``, ``status_code``) stay CPU tensors: ``float(sol.residual)``,
    ``bool(sol.converged)``, ``int(sol.iterations)``, ``sol.status`` and
    ``np.asarray(sol.trace)`` give Python and NumPy values. With ``throw=True`` the
    :class:`~fixpoint.ConvergenceError`'s ``solution`` is converted the same way. A solver's
    ``norm`` still receives tensors. Autograd cannot see through a NumPy function, so a solver
    that takes its Jacobian–vector products (:class:`~fixpoint.NewtonKrylov`) raises a
    ``TypeError`` (:class:`~fixpoint.Anderson`, :class:`~fixpoint.Broyden` and
    :class:`~fixpoint.Picard` need evaluations only), and a NumPy ``z0`` under a
    :mod:`torch.func` transform raises a ``RuntimeError``.

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

    A NumPy function and a NumPy start give a NumPy answer, of the start's dtype:

    >>> import numpy as np
    >>> sol = fp.solve(np.cos, np.zeros(3, dtype=np.float32))
    >>> type(sol.value).__name__, sol.value.dtype, bool(sol.converged)
    ('ndarray', dtype('float32'), True)
    """
    check_inputs(f, solver, batched, skip_converged)
    throw = flag("fp.solve", "throw", throw)
    io = Interop.of(z0, args, solver, skip_converged=skip_converged)
    forward = Forward.prepare(io.wrap(f, has_aux), io.z0, io.args, batched, has_aux)
    problem = forward.problem(
        solver,
        skip_converged=skip_converged,
        in_dims=in_dims,
        throw=throw,
        keep=keep_steps("fp.solve", keep_iterates),
    )
    try:
        outs = forward.solve(problem, io.z0)
    except ConvergenceError as error:
        if hasattr(error, "solution"):
            error.solution = io.solution(error.solution)
        raise
    sol = forward.solution(outs, iterates=problem.kept)
    if has_aux:
        aux = no_grad_aux(forward, sol.value)
        sol = forward.solution(outs, aux=aux, iterates=problem.kept)
    return io.solution(sol)
