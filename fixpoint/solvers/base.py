"""The abstract forward solver and the one loop that drives every solver.

A solver only says how to take a step; :meth:`Solver.iterate` owns stopping, per-sample masks,
best-iterate tracking, non-finite and divergence checks, traces and statistics.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
import torch.utils._pytree as pytree
from torch import Tensor
from torch._C import _functorch

from fixpoint._validation import choice, count, optional_callable, real, store
from fixpoint.solution import (
    CONVERGED,
    DIVERGED,
    MAX_ITER,
    NONFINITE,
    RUNNING,
    Solution,
)

__all__ = ["FlatMap", "Solver", "row_norm"]

FlatMap = Callable[[Tensor], Tensor]
"""A map of ``(B, n)`` matrices: row ``b`` is sample ``b``'s state."""


def row_norm(x: Tensor) -> Tensor:
    """Euclidean norm of each row of ``x`` (``(B, n) -> (B,)``), in at least float32.

    Never overflows or underflows on its own: the plain sum of squares overflows once
    ``‖x‖`` passes about the square root of the dtype's largest number (``1e19`` in float32)
    and drops entries below the square root of its smallest (``1e-154`` in float64), so rows at
    risk (an infinite, NaN or tiny plain norm) are computed again with the row divided by its
    largest entry. On the CPU that second pass runs only when some row needs it; elsewhere, and
    under torch.func transforms, it always runs (no host synchronisation).
    """
    low = x.dtype in (torch.float16, torch.bfloat16)
    r = torch.linalg.vector_norm(x, dim=1, dtype=torch.float32 if low else None)
    info = torch.finfo(r.dtype)
    at_risk = ~(r >= (info.tiny / info.eps) ** 0.5) | ~(r < info.max)
    if x.device.type == "cpu" and not _functorch.is_functorch_wrapped_tensor(x):
        if not bool(at_risk.any()):
            return r
    return torch.where(at_risk, _scaled_row_norm(x.float() if low else x), r)


def _scaled_row_norm(x: Tensor) -> Tensor:
    scale = torch.linalg.vector_norm(x, ord=math.inf, dim=1, keepdim=True)
    scale = torch.where((scale > 0) & torch.isfinite(scale), scale, 1.0)
    return torch.linalg.vector_norm(x / scale, dim=1) * scale[:, 0]


@dataclass(frozen=True, kw_only=True)
class Solver(ABC):
    r"""Base class of forward solvers for :math:`z = f(z)`.

    Subclasses implement :meth:`init` and :meth:`step` on flat ``(B, n)`` matrices (row ``b``
    is sample ``b``); :meth:`iterate` owns the loop: stopping, per-sample masks, best-iterate
    tracking, non-finite and divergence checks, traces and statistics. A sample has converged
    when :math:`\|f(z) - z\| \le \mathrm{atol} + \mathrm{rtol}\,s`, where the scale
    :math:`s` is :math:`\|z\|` (``relative_to="state"``, the default) or the sample's initial
    residual :math:`\|f(z_0) - z_0\|` (``relative_to="initial"``, Kelley's rule), and the norm
    is the 2-norm of each sample unless ``norm`` says otherwise.

    Which to use: the default asks for a residual small next to the solution, and its ``atol``
    is a floor for solutions near zero; but a solution whose entries are all small (a
    probability vector over many states, ‖z‖ ≈ 0.01) then stops at ``atol``, far from
    ``rtol``. ``relative_to="initial"`` (with ``atol=0``) asks for the residual to fall by the
    factor ``rtol``, whatever the scale of ``z``; it cannot be met from a start that is already
    a fixed point up to rounding (use ``atol`` for that), and it ties the result to ``z0``.

    Parameters
    ----------
    atol
        Absolute tolerance on the residual, ≥ 0 (default ``1e-6``).
    rtol
        Tolerance relative to the scale ``relative_to`` chooses, ≥ 0 (default ``1e-5``).
    relative_to
        ``"state"`` (``‖z‖₂``, default) or ``"initial"`` (``‖f(z₀) − z₀‖₂``).
    norm
        The norm of the stopping test (and of ``Solution.residual`` and ``trace``), or ``None``
        for the 2-norm of each sample. It is called with a residual (or the state) in the
        structure of ``z``, batch first when batched, and returns one non-negative value per
        sample: shape ``(B,)``, or ``()`` for an unbatched problem (on the flat matrices of
        :meth:`iterate` it gets ``(B, n)``). For instance the JFB paper's largest per-pixel channel
        norm of an image state ``(B, C, H, W)``:
        ``norm=lambda r: torch.linalg.vector_norm(r, dim=1).amax(dim=(1, 2))``.
    max_iter
        Maximum number of solver steps, ≥ 1 (default 100).
    divergence
        A sample stops with status ``diverged`` when its residual exceeds ``divergence`` times the
        lowest residual it has reached (default ``1e4``; ``math.inf`` turns the check off).

    Examples
    --------
    Any solver's loop also runs on flat matrices directly (here two independent rows):

    >>> import torch, fixpoint as fp
    >>> sol = fp.Picard(atol=1e-8, rtol=0).iterate(lambda z: 0.5 * z + 1.0, torch.zeros(2, 3))
    >>> sol.value[:, 0], sol.status
    (tensor([2., 2.]), (Status.CONVERGED, Status.CONVERGED))
    """

    needs_active: ClassVar[bool] = False
    """Set it to ``True`` in a subclass whose :meth:`step` takes ``active=``: a bool ``(B,)``
    tensor of the rows still iterating (a line search then spends no evaluations on the
    others)."""

    differentiates_map: ClassVar[bool] = False
    """``True`` for a solver that takes Jacobian–vector products of the map it solves (Newton–
    Krylov); :class:`~fixpoint.Implicit` refuses such solvers."""

    atol: float = 1e-6
    rtol: float = 1e-5
    max_iter: int = 100
    divergence: float = 1e4
    relative_to: str = "state"
    norm: Callable[[Any], Tensor] | None = None

    def __post_init__(self) -> None:
        owner = type(self).__name__
        store(
            self,
            atol=real(owner, "atol", self.atol, low=0),
            rtol=real(owner, "rtol", self.rtol, low=0),
            max_iter=count(owner, "max_iter", self.max_iter, 1),
            relative_to=choice(owner, "relative_to", self.relative_to, ("state", "initial")),
            norm=optional_callable(owner, "norm", self.norm),
            divergence=real(
                owner,
                "divergence (math.inf disables the check)",
                self.divergence,
                low=1,
                low_open=True,
                finite=False,
            ),
        )

    @abstractmethod
    def init(self, fn: FlatMap, z: Tensor, fz: Tensor) -> Any:
        """Return the solver's state before its first step, given ``z0`` and ``f(z0)``."""

    @abstractmethod
    def step(
        self, fn: FlatMap, z: Tensor, fz: Tensor, g: Tensor, state: Any
    ) -> tuple[Tensor, Tensor, Any]:
        """Take one step from ``z``: return ``(z_next, f(z_next), state)``.

        ``fz = f(z)`` and ``g = fz − z`` (the residual the loop computed for its stopping test).
        ``fn`` may be called as often as the step needs (a line search, say); every call is
        counted in ``fevals``. Rows the loop has stopped are passed along but their results are
        discarded, so a step never needs to know which rows are still running.
        """

    def iterate(
        self,
        fn: FlatMap,
        z0: Tensor,
        *,
        rows: Callable[[Tensor, Tensor], Tensor] | None = None,
        norm: Callable[[Tensor], Tensor] | None = None,
    ) -> Solution:
        """Solve ``z = fn(z)`` for a flat ``(B, n)`` start ``z0``; every row is its own problem.

        Returns a :class:`Solution` whose ``value`` is ``(B, n)`` and whose statistics have shape
        ``(B,)``. This is the entry point for code that already works on flat matrices (the
        estimators); users call :func:`fixpoint.solve`.

        If ``rows`` is given, ``rows(z, index)`` must equal ``fn(z_full)[index]`` for the rows
        ``index`` of the batch (``z = z_full[index]``). The loop then works on the rows still
        iterating only: once a quarter of its working rows have stopped, it drops them from
        the iterate, the solver state (:meth:`compact`) and the evaluations of ``f``.
        """
        precision = Precision.capture(z0.device)
        if norm is None:
            norm = row_norm if self.norm is None else self.norm
        with precision.solver():
            return self._iterate(fn, z0, rows, precision, norm)

    def _iterate(
        self,
        fn: FlatMap,
        z0: Tensor,
        rows: Callable[[Tensor, Tensor], Tensor] | None,
        precision: Precision,
        norm: Callable[[Tensor], Tensor],
    ) -> Solution:
        calls = 0
        index: Tensor | None = None  # batch rows of the working set; None: all, in order

        def counted(v: Tensor) -> Tensor:
            nonlocal calls
            calls += 1
            with precision.caller():
                out = fn(v) if index is None or rows is None else rows(v, index)
            return out.to(v.dtype)

        batch = z0.shape[0]
        device = z0.device
        z = z0
        fz = counted(z)
        g = fz - z
        r = norm(g)
        finite = torch.isfinite(r)
        best_z, best_r = z, torch.where(finite, r, math.inf)
        codes = torch.full((batch,), RUNNING, dtype=torch.int8, device=device)
        codes = torch.where(finite, codes, NONFINITE)
        # The scale of rtol: ‖f(z₀) − z₀‖ (relative_to="initial"), else computed from z.
        initial = r if self.relative_to == "initial" else None
        codes = torch.where(finite & (r <= self.tolerance(z, initial, norm)), CONVERGED, codes)
        iterations = torch.zeros(batch, dtype=torch.int64, device=device)
        fevals = torch.ones(batch, dtype=torch.int64, device=device)
        trace = Trace(r, capacity=self.max_iter + 1)
        state: Any = None
        # The newest iterate and the rows where it beats best_z; merged at the next host sync,
        # which also tells whether every row improved (then no copy is needed).
        pending: tuple[Tensor, Tensor] | None = None
        # Rows dropped from the working set, written back when the loop ends.
        done = Finished(batch, z0, r) if rows is not None else None

        for k in range(self.max_iter):
            active = codes == RUNNING
            if pending is None:
                n_active = int(active.sum())
            else:
                n_active, all_improved = torch.stack([active.sum(), pending[1].all()]).tolist()
                best_z = _merge(pending, best_z, bool(all_improved))
                pending = None
            if n_active == 0:
                break
            work = active.shape[0]
            if done is not None and n_active <= 0.75 * work:
                keep = active.nonzero()[:, 0]
                done.store(index, best_z, best_r, codes, iterations, fevals, r)
                index = keep if index is None else index.index_select(0, keep)
                z, fz, g, r, best_z, best_r, codes, iterations, fevals, active = (
                    t.index_select(0, keep)
                    for t in (z, fz, g, r, best_z, best_r, codes, iterations, fevals, active)
                )
                if initial is not None:
                    initial = initial.index_select(0, keep)
                if state is not None:
                    state = self.compact(state, keep, work)
                work = n_active
            if k == 0:
                state = self.init(counted, z, fz)
            before = calls
            if self.needs_active:
                z_new, fz_new, state = self.step(counted, z, fz, g, state, active=active)
            else:
                z_new, fz_new, state = self.step(counted, z, fz, g, state)
            g_new = fz_new - z_new
            r_new = norm(g_new)
            fevals += active * (calls - before)
            iterations += active
            if n_active == work:
                z, fz, g, r = z_new, fz_new, g_new, r_new
            else:
                mask = active[:, None]
                z = torch.where(mask, z_new, z)
                fz = torch.where(mask, fz_new, fz)
                g = torch.where(mask, g_new, g)
                r = torch.where(active, r_new, r)
            finite = torch.isfinite(r_new)
            improved = active & (r_new < best_r)
            pending = (z_new, improved)
            best_r = torch.where(improved, r_new, best_r)
            codes = torch.where(active & ~finite, NONFINITE, codes)
            codes = torch.where(
                active & finite & (r_new <= self.tolerance(z_new, initial, norm)),
                CONVERGED,
                codes,
            )
            codes = torch.where(
                active & finite & (r_new > self.divergence * best_r), DIVERGED, codes
            )
            trace.append(r if done is None else done.full_residual(index, r))
        if pending is not None:
            best_z = _merge(pending, best_z, bool(pending[1].all()))
        if done is not None:
            done.store(index, best_z, best_r, codes, iterations, fevals, r)
            best_z, best_r, codes, iterations, fevals = (
                done.best_z,
                done.best_r,
                done.codes,
                done.iterations,
                done.fevals,
            )

        codes = torch.where(codes == RUNNING, MAX_ITER, codes)
        if best_z.untyped_storage().data_ptr() == z0.untyped_storage().data_ptr():
            best_z = best_z.clone()  # the start was returned: never hand back the caller's tensor
        return Solution(
            value=best_z,
            residual=best_r,
            converged=codes == CONVERGED,
            iterations=iterations,
            fevals=fevals,
            trace=trace.tensor(),
            status_code=codes,
        )

    def compact(self, state: Any, index: Tensor, batch: int) -> Any:
        """The solver state restricted to the rows ``index`` of a working set of ``batch`` rows.

        The default selects the rows of every tensor in ``state`` (a dataclass, tuple, list or
        dict) whose leading dimension is ``batch`` and keeps everything else; override it for
        state that is laid out otherwise.
        """

        def select(x: Any) -> Any:
            if isinstance(x, Tensor) and x.dim() > 0 and x.shape[0] == batch:
                return x.index_select(0, index)
            return x

        if dataclasses.is_dataclass(state) and not isinstance(state, type):
            return dataclasses.replace(
                state, **{f.name: select(getattr(state, f.name)) for f in dataclasses.fields(state)}
            )
        return pytree.tree_map(select, state)

    def tolerance(
        self,
        z: Tensor,
        initial: Tensor | None = None,
        norm: Callable[[Tensor], Tensor] = row_norm,
    ) -> Tensor | float:
        """``atol + rtol·s`` per row, ``s`` the scale of ``relative_to``: ``norm(z)``, or
        ``initial`` (each row's initial residual) for ``"initial"``. A number when
        ``rtol = 0``: no pass over ``z``."""
        if self.rtol == 0:
            return self.atol
        if self.relative_to == "initial":
            if initial is None:
                raise ValueError("relative_to='initial' needs the initial residuals")
            return self.atol + self.rtol * initial
        return self.atol + self.rtol * norm(z)


@dataclass(frozen=True)
class Precision:
    """The caller's autocast state, to evaluate ``f`` under it and everything else without it.

    Under ``torch.autocast`` the map ``f`` runs in the low precision the caller asked for, while
    residuals, the solvers' linear algebra and the estimators' inner products run in the state's
    own dtype (float32 or wider): autocast would otherwise put ``bmm`` and friends in bfloat16.
    """

    device_type: str
    enabled: bool
    dtype: torch.dtype

    @classmethod
    def capture(cls, device: torch.device) -> Precision:
        kind = device.type
        if kind not in ("cpu", "cuda", "xpu", "mps", "hpu"):
            return cls(kind, False, torch.float32)
        return cls(kind, torch.is_autocast_enabled(kind), torch.get_autocast_dtype(kind))

    def caller(self) -> contextlib.AbstractContextManager[Any]:
        """Autocast as the caller had it (no change when it was off)."""
        if not self.enabled:
            return contextlib.nullcontext()
        return torch.autocast(self.device_type, dtype=self.dtype)

    def solver(self) -> contextlib.AbstractContextManager[Any]:
        """Autocast off, for the solver's and estimators' own arithmetic."""
        if not self.enabled:
            return contextlib.nullcontext()
        return torch.autocast(self.device_type, enabled=False)


class Trace:
    """The residual of every row after every step, in one buffer that doubles when full.

    Not a list of per-step tensors: each would pin a small allocation between the large
    temporaries of its step, and glibc's heap could then not reuse their memory, so a long solve's
    resident memory would grow by about a state per step.
    """

    def __init__(self, r0: Tensor, capacity: int) -> None:
        self.capacity = capacity
        self.buffer = r0.new_empty((min(capacity, 64), r0.shape[0]))
        self.buffer[0] = r0
        self.steps = 1

    def append(self, r: Tensor) -> None:
        if self.steps == self.buffer.shape[0]:
            grown = self.buffer.new_empty((min(2 * self.steps, self.capacity), r.shape[0]))
            grown[: self.steps] = self.buffer
            self.buffer = grown
        self.buffer[self.steps] = r
        self.steps += 1

    def tensor(self) -> Tensor:
        """``(steps, B)``: the residuals so far."""
        return self.buffer[: self.steps].clone()


class Finished:
    """Full-batch results of the rows a compacting loop has dropped from its working set."""

    def __init__(self, batch: int, z0: Tensor, r0: Tensor) -> None:
        self.best_z = z0.clone()
        self.best_r = torch.full_like(r0, math.inf)
        self.codes = torch.zeros(batch, dtype=torch.int8, device=z0.device)
        self.iterations = torch.zeros(batch, dtype=torch.int64, device=z0.device)
        self.fevals = torch.zeros(batch, dtype=torch.int64, device=z0.device)
        self.residual = r0.clone()

    def store(
        self,
        index: Tensor | None,
        best_z: Tensor,
        best_r: Tensor,
        codes: Tensor,
        iterations: Tensor,
        fevals: Tensor,
        r: Tensor,
    ) -> None:
        """Write the working set's rows (``index``; None: all rows) into the full results."""
        for full, part in (
            (self.best_z, best_z),
            (self.best_r, best_r),
            (self.codes, codes),
            (self.iterations, iterations),
            (self.fevals, fevals),
            (self.residual, r),
        ):
            if index is None:
                full.copy_(part)
            else:
                full.index_copy_(0, index, part)

    def full_residual(self, index: Tensor | None, r: Tensor) -> Tensor:
        """The residual of every row: the working rows' current one, the others' last one."""
        if index is None:
            return r
        return self.residual.index_copy(0, index, r)


def _merge(pending: tuple[Tensor, Tensor], best: Tensor, all_improved: bool) -> Tensor:
    candidate, improved = pending
    return candidate if all_improved else torch.where(improved[:, None], candidate, best)
