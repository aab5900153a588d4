"""The abstract forward solver and the one loop that drives every solver.

A solver only says how to take a step; :meth:`Solver.iterate` owns stopping, per-sample masks,
best-iterate tracking, non-finite and divergence checks, traces and statistics.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from fixpoint.solution import (
    CONVERGED,
    DIVERGED,
    MAX_ITER,
    NONFINITE,
    RUNNING,
    Solution,
    status_from_codes,
)

__all__ = ["FlatMap", "Solver", "row_norm"]

FlatMap = Callable[[Tensor], Tensor]
"""A map of ``(B, n)`` matrices: row ``b`` is sample ``b``'s state."""


def row_norm(x: Tensor) -> Tensor:
    """Euclidean norm of each row of ``x`` (``(B, n) -> (B,)``), in at least float32."""
    if x.dtype in (torch.float16, torch.bfloat16):
        return torch.linalg.vector_norm(x, dim=1, dtype=torch.float32)
    return torch.linalg.vector_norm(x, dim=1)


@dataclass(frozen=True, kw_only=True)
class Solver(ABC):
    """Base class of forward solvers for ``z = f(z)``.

    Parameters
    ----------
    atol, rtol
        A sample has converged when ``‖f(z) − z‖₂ ≤ atol + rtol·‖z‖₂``.
    max_iter
        Maximum number of solver steps (≥ 1).
    divergence
        A sample stops with status ``diverged`` when its residual exceeds ``divergence`` times the
        lowest residual it has reached (``math.inf`` turns the check off).

    Subclasses implement :meth:`init` and :meth:`step` on flat ``(B, n)`` matrices.
    """

    atol: float = 1e-6
    rtol: float = 1e-5
    max_iter: int = 100
    divergence: float = 1e4

    def __post_init__(self) -> None:
        for name in ("atol", "rtol"):
            value = getattr(self, name)
            if not (isinstance(value, (int, float)) and value >= 0 and math.isfinite(value)):
                raise ValueError(
                    f"{type(self).__name__}: {name} must be a finite number ≥ 0, got {value!r}"
                )
        if (
            isinstance(self.max_iter, bool)
            or not isinstance(self.max_iter, int)
            or self.max_iter < 1
        ):
            raise ValueError(
                f"{type(self).__name__}: max_iter must be an integer ≥ 1, got {self.max_iter!r}"
            )
        if not (isinstance(self.divergence, (int, float)) and self.divergence > 1):
            raise ValueError(
                f"{type(self).__name__}: divergence must be > 1 (math.inf disables "
                f"the check), got {self.divergence!r}"
            )

    @abstractmethod
    def init(self, fn: FlatMap, z: Tensor, fz: Tensor) -> Any:
        """Return the solver's state before its first step, given ``z0`` and ``f(z0)``."""

    @abstractmethod
    def step(self, fn: FlatMap, z: Tensor, fz: Tensor, state: Any) -> tuple[Tensor, Tensor, Any]:
        """Take one step from ``z`` (with ``fz = f(z)``): return ``(z_next, f(z_next), state)``.

        ``fn`` may be called as often as the step needs (a line search, say); every call is
        counted in ``fevals``.
        """

    def iterate(
        self, fn: FlatMap, z0: Tensor, *, rows: Callable[[Tensor, Tensor], Tensor] | None = None
    ) -> Solution:
        """Solve ``z = fn(z)`` for a flat ``(B, n)`` start ``z0``; every row is its own problem.

        Returns a :class:`Solution` whose ``value`` is ``(B, n)`` and whose statistics have shape
        ``(B,)``. This is the entry point for code that already works on flat matrices (the
        estimators); users call :func:`fixpoint.solve`.

        If ``rows`` is given, ``rows(z[index], index)`` must equal ``fn(z)[index]``; the loop then
        evaluates only the rows still iterating and copies the others' last values (their
        results are discarded anyway), so stopped samples cost nothing.
        """
        calls = 0
        running: Tensor | None = None  # indices of the rows still iterating, when some stopped

        def counted(z: Tensor) -> Tensor:
            nonlocal calls
            calls += 1
            if running is None or rows is None:
                return fn(z)
            return fz.index_copy(0, running, rows(z.index_select(0, running), running))

        batch = z0.shape[0]
        device = z0.device
        z = z0
        fz = counted(z)
        r = row_norm(fz - z)
        finite = torch.isfinite(r)
        best_z, best_r = z, torch.where(finite, r, math.inf)
        tol = self.atol + self.rtol * row_norm(z)
        codes = torch.full((batch,), RUNNING, dtype=torch.int8, device=device)
        codes = torch.where(finite, codes, NONFINITE)
        codes = torch.where(finite & (r <= tol), CONVERGED, codes)
        iterations = torch.zeros(batch, dtype=torch.int64, device=device)
        fevals = torch.ones(batch, dtype=torch.int64, device=device)
        trace = [r]
        state: Any = None

        for k in range(self.max_iter):
            active = codes == RUNNING
            n_active = int(active.sum())
            if n_active == 0:
                break
            if rows is not None and n_active < batch:
                running = active.nonzero()[:, 0]
            if k == 0:
                state = self.init(counted, z, fz)
            before = calls
            z_new, fz_new, state = self.step(counted, z, fz, state)
            r_new = row_norm(fz_new - z_new)
            fevals += active * (calls - before)
            iterations += active
            mask = active[:, None]
            z = torch.where(mask, z_new, z)
            fz = torch.where(mask, fz_new, fz)
            r = torch.where(active, r_new, r)
            finite = torch.isfinite(r_new)
            improved = active & (r_new < best_r)
            best_z = torch.where(improved[:, None], z_new, best_z)
            best_r = torch.where(improved, r_new, best_r)
            tol = self.atol + self.rtol * row_norm(z_new)
            codes = torch.where(active & ~finite, NONFINITE, codes)
            codes = torch.where(active & finite & (r_new <= tol), CONVERGED, codes)
            codes = torch.where(
                active & finite & (r_new > self.divergence * best_r), DIVERGED, codes
            )
            trace.append(r)

        codes = torch.where(codes == RUNNING, MAX_ITER, codes)
        return Solution(
            value=best_z,
            residual=best_r,
            converged=codes == CONVERGED,
            iterations=iterations,
            fevals=fevals,
            trace=torch.stack(trace),
            status=status_from_codes(codes, batched=True),
        )
