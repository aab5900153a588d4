"""The result of a forward solve: the fixed point and honest statistics about how it was found."""

from __future__ import annotations

import enum
from dataclasses import dataclass
from functools import cached_property
from typing import Any

import torch
from torch import Tensor

__all__ = ["BackwardInfo", "ConvergenceError", "Solution", "Status"]


class Status(str, enum.Enum):
    """Why a solve (or one sample of a batched solve) stopped.

    A ``str`` enum: ``sol.status == "converged"`` and ``sol.status == fp.Status.CONVERGED``
    both work.

    Examples
    --------
    >>> import torch, fixpoint as fp
    >>> sol = fp.solve(lambda z: 2 * z + 1, torch.zeros(2), solver=fp.Picard())
    >>> sol.status, sol.status == "diverged"
    (Status.DIVERGED, True)
    >>> sol.status.explanation.split(":")[0]
    'the residual grew by more than the `divergence` factor'
    """

    CONVERGED = "converged"
    """The residual reached ``atol + rtol * ‖z‖₂``."""
    MAX_ITER = "max_iter"
    """``max_iter`` steps were taken without reaching the tolerance."""
    NONFINITE = "nonfinite"
    """``f`` returned, or the solver produced, an infinite or NaN value."""
    DIVERGED = "diverged"
    """The residual grew past ``divergence`` times the lowest residual reached."""

    @property
    def explanation(self) -> str:
        """A sentence on the likely cause and what to try."""
        return _EXPLANATIONS[self]

    @property
    def code(self) -> int:
        """The integer of this status in :attr:`Solution.status_code` (1 to 4)."""
        return _ORDER.index(self) + 1

    @classmethod
    def from_code(cls, code: int) -> Status:
        """The status whose :attr:`code` is ``code``.

        >>> import fixpoint as fp
        >>> fp.Status.from_code(fp.Status.DIVERGED.code)
        Status.DIVERGED
        """
        if not 1 <= int(code) <= len(_ORDER):
            raise ValueError(f"no status has code {code!r}; codes are 1 to {len(_ORDER)}")
        return _ORDER[int(code) - 1]

    def __str__(self) -> str:
        return self.value

    def __repr__(self) -> str:
        return f"Status.{self.name}"


_EXPLANATIONS = {
    Status.CONVERGED: "the residual reached the tolerance",
    Status.MAX_ITER: (
        "the tolerance was not reached in max_iter steps: raise max_iter, loosen atol/rtol, or use "
        "an accelerated solver (Anderson, Broyden) if the map contracts slowly"
    ),
    Status.NONFINITE: (
        "a NaN or infinite value appeared: check f at the returned (best finite) iterate, lower "
        "Anderson's beta / use damping, or start closer to the solution"
    ),
    Status.DIVERGED: (
        "the residual grew by more than the `divergence` factor: the map is probably not a "
        "contraction here; damp it (Picard damping, Anderson beta) or check its Lipschitz constant"
    ),
}

# Integer codes of the solver loop and of Solution.status_code; 0 is a sample still running.
_ORDER = (Status.CONVERGED, Status.MAX_ITER, Status.NONFINITE, Status.DIVERGED)
RUNNING = 0
CONVERGED, MAX_ITER, NONFINITE, DIVERGED = (s.code for s in _ORDER)


def status_from_codes(codes: Tensor) -> Status | tuple[Status, ...]:
    """The :class:`Status` of each code: one status for a 0-d tensor, else a tuple."""
    values = statuses_from_codes(codes)
    return values[0] if codes.dim() == 0 else values


def statuses_from_codes(codes: Tensor) -> tuple[Status, ...]:
    """The :class:`Status` of each code of ``codes``, flattened: always a tuple."""
    return tuple(_ORDER[c - 1] for c in codes.reshape(-1).tolist())


def _is_vmapped(t: Tensor) -> bool:
    return torch._C._functorch.is_batchedtensor(t)


@dataclass(eq=False)
class BackwardInfo:
    """What the gradient estimator did in the last backward pass through a fixed point.

    Filled (and overwritten) each time the estimator runs for :func:`fixpoint.fixed_point`
    (a backward pass, or a forward-mode tangent); ``calls`` says how many times that happened.
    Tensors have shape ``()`` or ``(B,)`` like the :class:`Solution`'s statistics. Under
    :func:`torch.func.vmap` (``jacrev`` too) an iterative estimator solves for all vmapped
    samples at once, and its tensors have one entry per row of that solve; a direct estimator
    run on transformed tensors leaves them ``None``.

    Attributes
    ----------
    estimator
        The estimator's :attr:`~fixpoint.Estimator.name`.
    calls
        Backward passes so far (0 until ``backward()`` runs).
    converged
        Whether the estimator reached its tolerance (``None`` for a direct estimator: JFB,
        Neumann, Phantom).
    residual
        ``‖g − (I − Jᵀ) w‖₂`` where the estimator knows it, else ``None``.
    iterations
        The estimator's own iterations, where it has any.
    vjp, jvp
        Jacobian products of the last backward pass, counted per sample.

    Examples
    --------
    >>> import torch, fixpoint as fp
    >>> x = torch.ones(3, requires_grad=True)
    >>> z, sol = fp.fixed_point(lambda z, x: 0.5 * torch.tanh(z) + x, torch.zeros(3), x,
    ...                         estimator=fp.CG(), return_solution=True)
    >>> z.sum().backward()
    >>> info = sol.backward
    >>> info.calls, bool(info.converged), info.jvp == info.iterations == info.vjp - 1
    (1, True, True)
    """

    estimator: str
    calls: int = 0
    converged: Tensor | None = None
    residual: Tensor | None = None
    iterations: int | None = None
    vjp: int = 0
    jvp: int = 0

    def __repr__(self) -> str:
        parts = [self.estimator, f"calls={self.calls}"]
        if self.converged is not None:
            converged = self.converged.reshape(-1)
            parts.append(f"converged={int(converged.sum())}/{converged.numel()}")
        if self.residual is not None and self.residual.numel():
            parts.append(f"max residual={self.residual.max().item():.3g}")
        if self.iterations is not None:
            parts.append(f"iterations={self.iterations}")
        parts.append(f"vjp={self.vjp}, jvp={self.jvp}")
        return f"BackwardInfo({', '.join(parts)})"


@dataclass(frozen=True, eq=False)
class Solution:
    """The result of :func:`fixpoint.solve`.

    Attributes
    ----------
    value
        The returned iterate, with the structure of ``z0``. It is the iterate with the lowest
        residual seen (for a converged sample, the first that met the tolerance).
    residual
        ``‖f(value) − value‖₂``; shape ``()`` or ``(B,)`` when batched. ``inf`` if no finite
        iterate was ever seen.
    converged
        Bool tensor, shape ``()`` or ``(B,)``.
    iterations
        Solver steps taken (per sample when batched; a sample stops counting when it stops).
    fevals
        Evaluations of ``f`` made on the sample until it stopped, the initial ``f(z0)`` included.
    trace
        Residual norm of the current iterate after every step, starting with ``z0``; shape
        ``(T,)`` or ``(T, B)`` with ``T = max(iterations) + 1``. A stopped sample's entries
        stay at its last residual.
    status_code
        The status as an ``int8`` tensor of the statistics' shape (see :attr:`Status.code`):
        the form of the status that survives :func:`torch.func.vmap`.
    aux
        With ``has_aux=True``: the auxiliary output of ``f`` at the returned iterate.
    backward
        For :func:`fixpoint.fixed_point`: a :class:`BackwardInfo` that the backward pass fills;
        ``None`` for :func:`fixpoint.solve`.
    iterates
        With ``keep_iterates=(k₁, k₂, …)``: the iterates after those steps (``0`` is the
        start), each with the structure of ``z0``; a sample that stopped before step ``k``
        contributes the iterate it stopped at. ``None`` otherwise.

    Examples
    --------
    >>> import torch, fixpoint as fp
    >>> sol = fp.solve(lambda z: 0.5 * z + 1.0, torch.zeros(2, 3), batched=True,
    ...                solver=fp.Anderson(atol=1e-10, rtol=0))
    >>> sol.converged, sol.iterations, sol.trace.shape
    (tensor([True, True]), tensor([3, 3]), torch.Size([4, 2]))
    """

    value: Any
    residual: Tensor
    converged: Tensor
    iterations: Tensor
    fevals: Tensor
    trace: Tensor
    status_code: Tensor
    aux: Any = None
    backward: BackwardInfo | None = None
    iterates: tuple[Any, ...] | None = None

    @cached_property
    def status(self) -> Status | tuple[Status, ...]:
        """A :class:`Status`, or a tuple of them (one per sample) when batched.

        Under :func:`torch.func.vmap` a Python value cannot be per sample: reading ``status``
        there raises, and :attr:`status_code` (or :attr:`converged`) is the per-sample form.
        """
        if _is_vmapped(self.status_code):
            raise RuntimeError(
                "Solution.status is not available under torch.func.vmap: a Python value cannot "
                "differ per vmapped sample. Use sol.status_code (an int8 tensor; "
                "fp.Status.from_code maps a code to its Status) or sol.converged"
            )
        return status_from_codes(self.status_code)

    @property
    def batched(self) -> bool:
        """Whether this is the solution of a batched solve (``status`` is then a tuple)."""
        return self.status_code.dim() > 0

    def __repr__(self) -> str:
        if _is_vmapped(self.status_code):
            return "Solution(under torch.func.vmap: statistics are per-sample tensors)"
        status = self.status
        if isinstance(status, tuple):  # batched
            counts: dict[str, int] = {}
            for s in status:
                counts[s.value] = counts.get(s.value, 0) + 1
            res = self.residual
            finite = res[torch.isfinite(res)]
            worst = f"{finite.max().item():.3g}" if finite.numel() else "inf"
            return (
                f"Solution(batch={len(status)}, status={counts}, max residual={worst}, "
                f"iterations≤{int(self.iterations.max())}, fevals≤{int(self.fevals.max())})"
            )
        return (
            f"Solution(status={status.value}, residual={self.residual.item():.3g}, "
            f"iterations={int(self.iterations)}, fevals={int(self.fevals)})"
        )


class ConvergenceError(RuntimeError):
    """A solve asked to ``throw`` ended without converging (for some sample).

    Raised by :func:`fixpoint.solve`, :func:`fixpoint.fixed_point` and
    :class:`fixpoint.nn.DEQ` with ``throw=True`` instead of warning and returning the best
    iterate. The message says how many samples failed and why.

    Attributes
    ----------
    solution
        The :class:`Solution` of the solve (best iterate, residuals, statuses, trace), with the
        structure of the caller's ``z0``. Under :func:`torch.func.vmap` it is the solve as the
        library ran it: one batched solve whose rows are the vmapped samples (times the batch),
        with ``value`` of shape ``(rows, n)``, the state flattened.

    Examples
    --------
    >>> import torch, fixpoint as fp
    >>> try:
    ...     fp.solve(lambda z: 2 * z + 1, torch.zeros(2), solver=fp.Picard(), throw=True)
    ... except fp.ConvergenceError as error:
    ...     print(error.solution.status)
    diverged
    """

    # The flat solve's outputs, set on the way out of the library's primitive for the caller to
    # restructure .solution, and deleted once it has: not an attribute a user sees.
    outs: tuple[Tensor, ...]

    def __init__(self, message: str, solution: Solution) -> None:
        super().__init__(message)
        self.solution = solution
