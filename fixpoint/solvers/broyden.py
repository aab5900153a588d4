"""Limited-memory "good" Broyden method on the residual ``g(z) = f(z) − z``, globalised."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import Tensor

from fixpoint._norms import row_norm
from fixpoint._validation import count, flag, store
from fixpoint.solvers._line_search import step_along
from fixpoint.solvers.base import FlatMap, Solver

__all__ = ["Broyden", "BroydenMemory", "BroydenState"]


@dataclass
class BroydenMemory:
    r"""The inverse Jacobian of the good Broyden method from its last ``m`` secant pairs.

    Starting from :math:`H_0 = -I`, ``k`` good Broyden updates
    :math:`H_+ = H + (s - Hy)\,s^\top H / (s^\top H y)` with steps :math:`s_i` and residual
    changes :math:`y_i` give (Byrd, Nocedal and Schnabel's compact form)

    .. math:: H = -I + (S + Y)\,(S^\top Y + L)^{-1} S^\top,

    where the columns of :math:`S, Y` are the pairs in order and :math:`L` is the strictly lower
    triangle of :math:`S^\top S` (:math:`L_{ij} = s_i^\top s_j` for :math:`i` newer than
    :math:`j`). Keeping the last ``m`` pairs in this form is exactly Broyden's method from
    :math:`-I` with those pairs: dropping the oldest pair leaves a consistent matrix, unlike a
    product form whose later terms were computed with the dropped ones. The small matrices
    :math:`S^\top Y` and :math:`S^\top S` are kept up to date (:math:`O(mn)` per pair) and
    :math:`H x` costs :math:`O(mn)`.

    Rows (samples) are independent: each has its own pairs, ``age`` (insertion order; ``-1``
    marks an empty slot) and restarts.

    Examples
    --------
    The secant condition :math:`H y = s` holds for the newest pair:

    >>> import torch
    >>> from fixpoint.solvers.broyden import BroydenMemory
    >>> memory = BroydenMemory.empty(1, 3, 2, torch.float64)
    >>> s = torch.tensor([[1.0, 0.0]], dtype=torch.float64)
    >>> y = torch.tensor([[-0.5, 0.2]], dtype=torch.float64)
    >>> memory.add(s, y, rows=torch.tensor([True]))          # the rows that took the pair
    tensor([True])
    >>> memory.apply(y)
    tensor([[1., 0.]], dtype=torch.float64)
    """

    s: Tensor
    y: Tensor
    sy: Tensor
    ss: Tensor
    age: Tensor
    added: int = 0
    limit: int = 0

    @classmethod
    def empty(
        cls, batch: int, memory: int, n: int, dtype: torch.dtype, device=None
    ) -> BroydenMemory:
        """No pairs: :math:`H = -I` for each of ``batch`` rows, room for ``memory`` pairs.

        The storage grows with the pairs added (doubling, up to ``memory``), so that the
        products, which read all of it, cost what the pairs in use cost.
        """
        first = min(memory, 4)
        zeros = dict(dtype=dtype, device=device)
        return cls(
            s=torch.zeros(batch, first, n, **zeros),
            y=torch.zeros(batch, first, n, **zeros),
            sy=torch.zeros(batch, first, first, **zeros),
            ss=torch.zeros(batch, first, first, **zeros),
            age=torch.full((batch, first), -1, dtype=torch.int64, device=device),
            limit=memory,
        )

    def _grow(self) -> None:
        """Room for one more pair in every row (until ``limit``): slots fill in order, so after
        ``added`` additions a row uses at most that many."""
        size = self.age.shape[1]
        if self.added < size or size >= self.limit:
            return
        more = min(self.limit, 2 * size) - size
        batch, _, n = self.s.shape
        pad = self.s.new_zeros(batch, more, n)
        self.s, self.y = torch.cat([self.s, pad], 1), torch.cat([self.y, pad], 1)
        self.sy = torch.nn.functional.pad(self.sy, (0, more, 0, more))
        self.ss = torch.nn.functional.pad(self.ss, (0, more, 0, more))
        self.age = torch.nn.functional.pad(self.age, (0, more), value=-1)

    def _coefficients(self, sx: Tensor) -> tuple[Tensor, Tensor]:
        """:math:`c = (S^\\top Y + L)^{-1} S^\\top x` from ``sx`` (``(B, m)``), and which rows
        could solve (in float64: the small matrix can be ill-conditioned in float32)."""
        valid = self.age >= 0
        newer = self.age[:, :, None] > self.age[:, None, :]
        middle = self.sy + torch.where(newer, self.ss, 0.0)
        both = valid[:, :, None] & valid[:, None, :]
        eye = torch.eye(middle.shape[-1], dtype=torch.float64, device=middle.device)
        middle = torch.where(both, middle.double(), eye)
        rhs = torch.where(valid, sx.double(), 0.0)
        c, info = torch.linalg.solve_ex(middle, rhs)
        ok = (info == 0) & torch.isfinite(c).all(1)
        return torch.where(ok[:, None] & valid, c, 0.0).to(sx.dtype), ok

    def apply(self, x: Tensor) -> Tensor:
        """:math:`H x` for each row (``(B, n)``); a row whose small system is singular gets
        :math:`-x` (and should be :meth:`clear`-ed)."""
        return self._apply(x)[0]

    def _apply(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        sx = torch.bmm(self.s, x[:, :, None])[:, :, 0]
        c, ok = self._coefficients(sx)
        c = c[:, None]
        hx = torch.baddbmm(torch.bmm(c, self.y), c, self.s)[:, 0] - x
        return hx, ok, sx

    def add(self, s: Tensor, y: Tensor, rows: Tensor) -> Tensor:
        """Add the pair ``(s, y)`` to the ``rows`` (bool ``(B,)``) where the update is defined.

        The update is skipped where :math:`|s^\\top H y|` is tiny next to
        :math:`\\|s\\|\\,\\|Hy\\|` (the rank-one term would blow up) or anything is not finite.
        Returns the rows that took the pair. A full row drops its oldest pair.
        """
        hy, ok, _ = self._apply(y)
        self._grow()
        denominator = (s * hy).sum(1)
        eps = torch.finfo(s.dtype).eps ** 0.5
        # Non-finite s or y make a norm or the denominator non-finite, and fail the test.
        scale = row_norm(s) * row_norm(hy)
        rows = rows & ok & (denominator.abs() > eps * scale) & torch.isfinite(scale * denominator)
        slot = self.age.argmin(1)  # an empty slot (age −1) if any, else the oldest pair
        batch = torch.arange(s.shape[0], device=s.device)
        at = rows[:, None] & (torch.arange(self.age.shape[1], device=s.device) == slot[:, None])
        # In place, one vector per row (a row that skips rewrites its slot's old pair).
        self.s[batch, slot] = torch.where(rows[:, None], s, self.s[batch, slot])
        self.y[batch, slot] = torch.where(rows[:, None], y, self.y[batch, slot])
        self.age = torch.where(at, self.added, self.age)
        self.added += 1
        # The new row and column of SᵀY and SᵀS (the slot's old values are overwritten).
        s_y = torch.bmm(self.y, s[:, :, None])[:, :, 0]  # s_newᵀ y_j
        y_s = torch.bmm(self.s, y[:, :, None])[:, :, 0]  # s_jᵀ y_new
        s_s = torch.bmm(self.s, s[:, :, None])[:, :, 0]
        self.sy = torch.where(at[:, :, None], s_y[:, None, :], self.sy)
        self.sy = torch.where(at[:, None, :], y_s[:, :, None], self.sy)
        self.ss = torch.where(at[:, :, None], s_s[:, None, :], self.ss)
        self.ss = torch.where(at[:, None, :], s_s[:, :, None], self.ss)
        return rows

    def clear(self, rows: Tensor) -> None:
        """Forget every pair of the ``rows`` (bool ``(B,)``): :math:`H = -I` there."""
        self.age = torch.where(rows[:, None], -1, self.age)

    def dense(self) -> Tensor:
        """:math:`H` as a ``(B, n, n)`` matrix (for tests and small problems)."""
        batch, _, n = self.s.shape
        eye = torch.eye(n, dtype=self.s.dtype, device=self.s.device).expand(batch, n, n)
        return torch.stack([self.apply(eye[:, :, j]) for j in range(n)], dim=2)


@dataclass
class BroydenState:
    """The inverse-Jacobian memory, the previous iterate and residual, recent residual norms."""

    memory: BroydenMemory
    z_prev: Tensor
    g_prev: Tensor
    recent: Tensor


@dataclass(frozen=True)
class Broyden(Solver[BroydenState]):
    r"""Limited-memory good Broyden method for the root of :math:`g(z) = f(z) - z`, globalised.

    Keeps :math:`H \approx (\partial g/\partial z)^{-1}` as Broyden's update of :math:`-I` by the
    last ``memory`` secant pairs (:class:`BroydenMemory`) and steps
    :math:`z_+ = z - \lambda H g(z)`; the first step, with :math:`H = -I`, is a Picard step.
    On a linear map with enough memory it finds the fixed point in at most :math:`2n` steps
    (Gay's theorem).

    The step length comes from a non-monotone line search (Grippo, Lampariello and Lucidi's
    rule): :math:`\lambda = 1` is taken when
    :math:`\|g(z_+)\| \le (1 - 10^{-4}\lambda) \max_{j < w} \|g(z_{k-j})\|`, the largest of the
    last :math:`w` = ``nonmonotone`` residuals, so the residual may rise for a few steps, as a
    quasi-Newton method's does, without the search cutting the step; otherwise :math:`\lambda`
    is shortened by a safeguarded parabola, each trial one evaluation of ``f``. A step costs
    nothing extra while it is accepted at :math:`\lambda = 1`, which is the rule on the maps
    DEQs use. Where no trial passes in ``max_backtracks`` evaluations, the best is taken and
    that sample's memory is cleared (a restart from :math:`-I`). A sample whose small system
    becomes singular restarts too.

    Parameters
    ----------
    memory
        Number of secant pairs kept, ≥ 1 (storage: two vectors of the state's size each).
    line_search
        Globalise by the line search above (default ``True``); ``False`` always takes
        :math:`\lambda = 1`.
    nonmonotone
        How many recent residuals the acceptance compares with, ≥ 1 (1: Armijo's monotone
        rule; default 5).
    max_backtracks
        Most evaluations of ``f`` per line search, ≥ 1 (default 10).
    atol, rtol, max_iter, divergence, relative_to, norm
        See :class:`~fixpoint.Solver`.

    Examples
    --------
    >>> import torch, fixpoint as fp
    >>> sol = fp.solve(lambda z: torch.cos(z) / 2 + 0.1 * z, torch.zeros(4, dtype=torch.float64),
    ...                solver=fp.Broyden(atol=1e-12, rtol=0))
    >>> bool(sol.converged), int(sol.iterations) < 10
    (True, True)

    A map that does not contract (a rotation about a centre): Picard circles, Broyden solves it.

    >>> c, s = torch.cos(torch.tensor(2.0)), torch.sin(torch.tensor(2.0))
    >>> rotate = torch.stack([torch.stack([c, -s]), torch.stack([s, c])]).double()
    >>> f = lambda z: 1.0 + (z - 1.0) @ rotate.T
    >>> fp.solve(f, torch.zeros(2, dtype=torch.float64), solver=fp.Broyden()).status
    Status.CONVERGED
    """

    needs_active: ClassVar[bool] = True

    memory: int = 20
    line_search: bool = True
    nonmonotone: int = 5
    max_backtracks: int = 10

    def __post_init__(self) -> None:
        super().__post_init__()
        store(
            self,
            memory=count("Broyden", "memory", self.memory, 1),
            line_search=flag("Broyden", "line_search", self.line_search),
            nonmonotone=count("Broyden", "nonmonotone", self.nonmonotone, 1),
            max_backtracks=count("Broyden", "max_backtracks", self.max_backtracks, 1),
        )

    def init(self, fn: FlatMap, z: Tensor, fz: Tensor) -> BroydenState:
        batch, n = z.shape
        work = torch.promote_types(z.dtype, torch.float32)  # the memory in ≥ float32
        g = (fz - z).to(work)
        recent = row_norm(g)[:, None].expand(batch, self.nonmonotone).clone()
        return BroydenState(
            memory=BroydenMemory.empty(batch, self.memory, n, work, z.device),
            z_prev=z.to(work),
            g_prev=g,
            recent=recent,
        )

    def step(
        self,
        fn: FlatMap,
        z: Tensor,
        fz: Tensor,
        g: Tensor,
        state: BroydenState,
        *,
        active: Tensor | None = None,
    ) -> tuple[Tensor, Tensor, BroydenState]:
        if active is None:  # called outside the loop: every row
            active = torch.ones(z.shape[0], dtype=torch.bool, device=z.device)
        memory = state.memory
        dtype = z.dtype
        z, g = z.to(memory.s.dtype), g.to(memory.s.dtype)
        s = z - state.z_prev
        moved = active & (row_norm(s) > 0)
        if bool(moved.any()):
            memory.add(s, g - state.g_prev, moved)
        state.z_prev, state.g_prev = z, g
        hg, ok, _ = memory._apply(g)
        memory.clear(~ok)
        r = row_norm(g)
        z_next, fz_next, state.recent, passed = step_along(
            fn,
            z,
            -hg,
            r,
            state.recent,
            dtype=dtype,
            active=active,
            line_search=self.line_search,
            max_backtracks=self.max_backtracks,
        )
        memory.clear(active & ~passed & torch.isfinite(r))
        return z_next, fz_next, state

    def compact(self, state: BroydenState, index: Tensor, batch: int) -> BroydenState:
        memory = state.memory
        pick = lambda t: t.index_select(0, index)  # noqa: E731
        return BroydenState(
            memory=BroydenMemory(
                pick(memory.s),
                pick(memory.y),
                pick(memory.sy),
                pick(memory.ss),
                pick(memory.age),
                memory.added,
                memory.limit,
            ),
            z_prev=pick(state.z_prev),
            g_prev=pick(state.g_prev),
            recent=pick(state.recent),
        )
