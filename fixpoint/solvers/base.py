"""The abstract forward solver and the one loop that drives every solver.

A solver only says how to take a step; :meth:`Solver.iterate` owns stopping, per-sample masks,
best-iterate tracking, non-finite and divergence checks, traces and statistics.
"""

from __future__ import annotations

import dataclasses
import math
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar, Generic, Protocol, TypeGuard, TypeVar

import torch
import torch.utils._pytree as pytree
from torch import Tensor

from fixpoint._norms import row_norm
from fixpoint._precision import Precision
from fixpoint._registry import register
from fixpoint._validation import choice, count, optional_callable, real, store
from fixpoint.solution import (
    CONVERGED,
    DIVERGED,
    MAX_ITER,
    NONFINITE,
    RUNNING,
    Solution,
)

__all__ = ["FlatMap", "Solver", "row_norm"]  # row_norm: re-exported from fixpoint._norms

FlatMap = Callable[[Tensor], Tensor]
"""A map of ``(B, n)`` matrices: row ``b`` is sample ``b``'s state."""

StateT = TypeVar("StateT")
"""The type of a solver's state (what :meth:`Solver.init` returns and :meth:`Solver.step`
passes on)."""


@dataclass(frozen=True, kw_only=True)
class Solver(ABC, Generic[StateT]):
    r"""Base class of forward solvers for :math:`z = f(z)`.

    Subclasses implement :meth:`init` and :meth:`step` on flat ``(B, n)`` matrices (row ``b``
    is sample ``b``); :meth:`iterate` owns the loop: stopping, per-sample masks, best-iterate
    tracking, non-finite and divergence checks, traces and statistics. A sample has converged
    when :math:`\|f(z) - z\| \le \mathrm{atol} + \mathrm{rtol}\,s`, where the scale
    :math:`s` is :math:`\|z\|` (``relative_to="state"``, the default) or the sample's initial
    residual :math:`\|f(z_0) - z_0\|` (``relative_to="initial"``, Kelley's rule), and the norm
    is the 2-norm of each sample unless ``norm`` says otherwise.

    The class is generic in the type of the solver's state, ``Solver[StateT]`` (the library's
    solvers subclass ``Solver[AndersonState]`` and so on); a subclass may also leave it out,
    ``class MySolver(fp.Solver)``, and its state is then untyped.

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
    others). The loop passes ``active`` to such a solver only. Declared
    ``*, active: Tensor | None = None`` (``None``: every row), such a step keeps the signature
    of :meth:`Solver.step` that it overrides."""

    differentiates_map: ClassVar[bool] = False
    """``True`` for a solver that takes Jacobian–vector products of the map it solves (Newton–
    Krylov); :class:`~fixpoint.Implicit` refuses such solvers."""

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        register("solver", cls)

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
    def init(self, fn: FlatMap, z: Tensor, fz: Tensor) -> StateT:
        """Return the solver's state before its first step, given ``z0`` and ``f(z0)``."""

    @abstractmethod
    def step(
        self, fn: FlatMap, z: Tensor, fz: Tensor, g: Tensor, state: StateT
    ) -> tuple[Tensor, Tensor, StateT]:
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
        keep: Sequence[int] = (),
    ) -> Solution:
        """Solve ``z = fn(z)`` for a flat ``(B, n)`` start ``z0``; every row is its own problem.

        Returns a :class:`Solution` whose ``value`` is ``(B, n)`` and whose statistics have shape
        ``(B,)``. This is the entry point for code that already works on flat matrices (the
        estimators); users call :func:`fixpoint.solve`.

        If ``rows`` is given, ``rows(z, index)`` must equal ``fn(z_full)[index]`` for the rows
        ``index`` of the batch (``z = z_full[index]``). The loop then works on the rows still
        iterating only: once a quarter of its working rows have stopped, it drops them from
        the iterate, the solver state (:meth:`compact`) and the evaluations of ``f``.

        ``keep`` lists steps (``0`` is ``z0``) whose iterates the solution hands back as
        ``iterates``, in that order, without keeping the others; a row that stopped before a
        step contributes the iterate it stopped at.
        """
        precision = Precision.capture(z0.device)
        if norm is None:
            norm = row_norm if self.norm is None else self.norm
        with precision.solver():
            return self._iterate(fn, z0, rows, precision, norm, _Snapshots(keep, z0))

    def _iterate(
        self,
        fn: FlatMap,
        z0: Tensor,
        rows: Callable[[Tensor, Tensor], Tensor] | None,
        precision: Precision,
        norm: Callable[[Tensor], Tensor],
        snapshots: _Snapshots,
    ) -> Solution:
        evaluate = _Evaluations(fn, rows, precision)
        work = self._start(evaluate(z0), z0, norm)
        trace = Trace(work.r, capacity=self.max_iter + 1)
        done = Finished(z0, work.r) if rows is not None else None  # rows dropped from `work`
        held: tuple[StateT] | None = None  # the solver's state, once init has run
        # The newest iterate and the rows where it beats best_z; merged at the next host sync,
        # which also tells whether every row improved (then no copy is needed).
        pending: tuple[Tensor, Tensor] | None = None
        for k in range(self.max_iter):
            active = work.codes == RUNNING
            n_active = work.sync(active, pending)
            pending = None
            if n_active == 0:
                break
            size = active.shape[0]
            if done is not None and n_active <= 0.75 * size:
                keep = active.nonzero()[:, 0]
                done.store(evaluate.index, work)
                evaluate.index = keep if evaluate.index is None else evaluate.index[keep]
                work, active = work.select(keep), active[keep]
                if held is not None and held[0] is not None:
                    held = (self.compact(held[0], keep, size),)
                size = n_active
            if held is None:  # the first step
                held = (self.init(evaluate, work.z, work.fz),)
            before = evaluate.calls
            if _takes_active(self):
                z_new, fz_new, state = self.step(
                    evaluate, work.z, work.fz, work.g, held[0], active=active
                )
            else:
                z_new, fz_new, state = self.step(evaluate, work.z, work.fz, work.g, held[0])
            held = (state,)
            calls = evaluate.calls - before
            moved = None if n_active == size else active  # None: every row moves
            pending = self._advance(work, active, moved, z_new, fz_new, calls, norm)
            trace.append(work.r if done is None else done.full_residual(evaluate.index, work.r))
            snapshots.record(k + 1, work, done, evaluate.index)
        work.sync(None, pending)
        return self._finish(work, done, evaluate.index, z0, trace, snapshots)

    def _start(self, fz: Tensor, z0: Tensor, norm: Callable[[Tensor], Tensor]) -> _Rows:
        """The loop's rows at ``z0``: a start that is non-finite or already within tolerance
        is settled before any step."""
        g = fz - z0
        r = norm(g)
        finite = torch.isfinite(r)
        # The scale of rtol: ‖f(z₀) − z₀‖ (relative_to="initial"), else computed from z.
        initial = r if self.relative_to == "initial" else None
        codes = torch.full(r.shape, RUNNING, dtype=torch.int8, device=r.device)
        codes = torch.where(finite, codes, NONFINITE)
        codes = torch.where(finite & (r <= self.tolerance(z0, initial, norm)), CONVERGED, codes)
        zeros = torch.zeros(r.shape, dtype=torch.int64, device=r.device)
        return _Rows(
            z0, fz, g, r, z0, torch.where(finite, r, math.inf), codes, zeros, zeros + 1, initial
        )

    def _advance(
        self,
        work: _Rows,
        active: Tensor,
        moved: Tensor | None,
        z_new: Tensor,
        fz_new: Tensor,
        calls: int,
        norm: Callable[[Tensor], Tensor],
    ) -> tuple[Tensor, Tensor]:
        """Move the ``active`` rows to the step's result and classify them; returns the
        pending best-iterate update ``(z_new, improved)``."""
        g_new = fz_new - z_new
        r_new = norm(g_new)
        work.fevals += active * calls
        work.iterations += active
        work.move(moved, z_new, fz_new, g_new, r_new)
        improved = active & (r_new < work.best_r)
        work.best_r = torch.where(improved, r_new, work.best_r)
        work.codes = self._classify(work, active, z_new, r_new, norm)
        return z_new, improved

    def _classify(
        self, work: _Rows, active: Tensor, z: Tensor, r: Tensor, norm: Callable[[Tensor], Tensor]
    ) -> Tensor:
        """The status of each active row after a step to ``z`` with residual ``r``."""
        finite = torch.isfinite(r)
        codes = torch.where(active & ~finite, NONFINITE, work.codes)
        reached = r <= self.tolerance(z, work.initial, norm)
        codes = torch.where(active & finite & reached, CONVERGED, codes)
        grew = r > self.divergence * work.best_r
        return torch.where(active & finite & grew, DIVERGED, codes)

    @staticmethod
    def _finish(
        work: _Rows,
        done: Finished | None,
        index: Tensor | None,
        z0: Tensor,
        trace: Trace,
        snapshots: _Snapshots,
    ) -> Solution:
        if done is not None:
            done.store(index, work)
            work = done.rows
        codes = torch.where(work.codes == RUNNING, MAX_ITER, work.codes)
        best_z = work.best_z
        if best_z.untyped_storage().data_ptr() == z0.untyped_storage().data_ptr():
            best_z = best_z.clone()  # the start was returned: never hand back the caller's tensor
        return Solution(
            value=best_z,
            residual=work.best_r,
            converged=codes == CONVERGED,
            iterations=work.iterations,
            fevals=work.fevals,
            trace=trace.tensor(),
            status_code=codes,
            iterates=snapshots.finish(work.z),
        )

    def compact(self, state: StateT, index: Tensor, batch: int) -> StateT:
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


class _StepsActive(Protocol[StateT]):
    """A solver whose :meth:`~Solver.step` takes the rows still iterating, ``active=``."""

    def step(
        self, fn: FlatMap, z: Tensor, fz: Tensor, g: Tensor, state: StateT, *, active: Tensor
    ) -> tuple[Tensor, Tensor, StateT]: ...


def _takes_active(solver: Solver[StateT]) -> TypeGuard[_StepsActive[StateT]]:
    """Whether the loop passes ``active=`` to ``solver.step``: its ``needs_active``."""
    return solver.needs_active


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


class _Evaluations:
    """``fn`` as the loop calls it: counted, under the caller's autocast, on the working rows."""

    def __init__(
        self, fn: FlatMap, rows: Callable[[Tensor, Tensor], Tensor] | None, precision: Precision
    ) -> None:
        self.fn, self.rows, self.precision = fn, rows, precision
        self.calls = 0
        self.index: Tensor | None = None  # batch rows of the working set; None: all, in order

    def __call__(self, v: Tensor) -> Tensor:
        self.calls += 1
        with self.precision.caller():
            out = (
                self.fn(v) if self.index is None or self.rows is None else self.rows(v, self.index)
            )
        return out.to(v.dtype)


@dataclass
class _Rows:
    """The loop's per-row tensors: the iterate, ``f`` of it, its residual and norm, the best
    iterate and residual, the status code, the counters, and the scale of ``relative_to``."""

    z: Tensor
    fz: Tensor
    g: Tensor
    r: Tensor
    best_z: Tensor
    best_r: Tensor
    codes: Tensor
    iterations: Tensor
    fevals: Tensor
    initial: Tensor | None

    def select(self, index: Tensor) -> _Rows:
        """These rows, ``index`` of them."""

        def pick(t: Tensor) -> Tensor:
            return t.index_select(0, index)

        return _Rows(
            pick(self.z),
            pick(self.fz),
            pick(self.g),
            pick(self.r),
            pick(self.best_z),
            pick(self.best_r),
            pick(self.codes),
            pick(self.iterations),
            pick(self.fevals),
            None if self.initial is None else pick(self.initial),
        )

    def move(self, active: Tensor | None, z: Tensor, fz: Tensor, g: Tensor, r: Tensor) -> None:
        """The ``active`` rows (``None``: all) take the new iterate."""
        if active is None:
            self.z, self.fz, self.g, self.r = z, fz, g, r
            return
        mask = active[:, None]
        self.z = torch.where(mask, z, self.z)
        self.fz = torch.where(mask, fz, self.fz)
        self.g = torch.where(mask, g, self.g)
        self.r = torch.where(active, r, self.r)

    def sync(self, active: Tensor | None, pending: tuple[Tensor, Tensor] | None) -> int:
        """Merge a pending best-iterate update, in the same host synchronisation that counts
        the ``active`` rows (returned; 0 without ``active``)."""
        if pending is None:
            return 0 if active is None else int(active.sum())
        candidate, improved = pending
        counts = [improved.all()] if active is None else [improved.all(), active.sum()]
        synced = torch.stack(counts).tolist()
        all_improved = bool(synced[0])
        self.best_z = (
            candidate if all_improved else torch.where(improved[:, None], candidate, self.best_z)
        )
        return 0 if active is None else int(synced[1])


class _Snapshots:
    """The iterate of every row after chosen steps, and nothing of the steps in between."""

    def __init__(self, steps: Sequence[int], z0: Tensor) -> None:
        self.steps = tuple(int(k) for k in steps)
        if any(k < 0 for k in self.steps):
            raise ValueError(f"keep: steps must be ≥ 0, got {self.steps}")
        self.kept: dict[int, Tensor] = {0: z0.clone()} if 0 in self.steps else {}

    def record(self, step: int, work: _Rows, done: Finished | None, index: Tensor | None) -> None:
        if step in self.steps:
            z = (
                work.z
                if done is None or index is None
                else done.rows.z.index_copy(0, index, work.z)
            )
            self.kept[step] = z.clone()

    def finish(self, last: Tensor) -> tuple[Tensor, ...] | None:
        """The kept iterates in the order asked; steps the solve did not reach get ``last``."""
        if not self.steps:
            return None
        return tuple(self.kept.get(k, last) for k in self.steps)


class Finished:
    """Full-batch results of the rows a compacting loop has dropped from its working set."""

    def __init__(self, z0: Tensor, r0: Tensor) -> None:
        batch = r0.shape[0]
        zeros = torch.zeros(batch, dtype=torch.int64, device=z0.device)
        self.rows = _Rows(
            z0.clone(),
            z0,
            z0,
            r0.clone(),
            z0.clone(),
            torch.full_like(r0, math.inf),
            torch.zeros(batch, dtype=torch.int8, device=z0.device),
            zeros,
            zeros.clone(),
            None,
        )

    def store(self, index: Tensor | None, work: _Rows) -> None:
        """Write the working set's rows (``index``; None: all rows) into the full results."""
        for name in ("z", "best_z", "best_r", "codes", "iterations", "fevals", "r"):
            full, part = getattr(self.rows, name), getattr(work, name)
            if index is None:
                full.copy_(part)
            else:
                full.index_copy_(0, index, part)

    def full_residual(self, index: Tensor | None, r: Tensor) -> Tensor:
        """The residual of every row: the working rows' current one, the others' last one."""
        if index is None:
            return r
        return self.rows.r.index_copy(0, index, r)
