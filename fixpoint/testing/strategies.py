"""Hypothesis strategies that draw contractive fixed-point problems with a known factor γ.

Every strategy takes either plain values or strategies for its options, and draws the random
matrices from a seed (so failures shrink to a seed and print it).
"""

from __future__ import annotations

from typing import Any

import torch
from hypothesis import strategies as st
from torch import Tensor

from fixpoint.testing.problems import Problem

__all__ = ["affine_contractions", "contractions", "dtypes", "tanh_contractions"]

dtypes = st.sampled_from([torch.float32, torch.float64])
"""float32 or float64."""


def _strategy(value: Any) -> st.SearchStrategy[Any]:
    return value if isinstance(value, st.SearchStrategy) else st.just(value)


def _matrix_with_norm(n: int, gamma: float, gen: torch.Generator) -> Tensor:
    """A random ``(n, n)`` float64 matrix whose spectral norm is exactly ``gamma``."""
    q1, _ = torch.linalg.qr(torch.randn(n, n, generator=gen, dtype=torch.float64))
    q2, _ = torch.linalg.qr(torch.randn(n, n, generator=gen, dtype=torch.float64))
    s = torch.rand(n, generator=gen, dtype=torch.float64)
    s[0] = 1.0
    return gamma * (q1 * s) @ q2.T


def _draw_options(
    draw: st.DrawFn, n: Any, gamma: Any, batch: Any, dtype: Any
) -> tuple[int, float, int | None, torch.dtype, int, torch.Generator]:
    """Draw the options (values or strategies) and a seeded generator for the matrices."""
    n_, gamma_ = draw(_strategy(n)), draw(_strategy(gamma))
    batch_, dtype_ = draw(_strategy(batch)), draw(_strategy(dtype))
    seed = draw(st.integers(0, 2**31 - 1))
    return n_, gamma_, batch_, dtype_, seed, torch.Generator().manual_seed(seed)


def _lead(batch: int | None) -> tuple[int, ...]:
    return () if batch is None else (batch,)


@st.composite
def affine_contractions(
    draw: st.DrawFn,
    n: int | st.SearchStrategy[int] = st.integers(1, 12),
    gamma: float | st.SearchStrategy[float] = st.floats(0.0, 0.95),
    batch: int | st.SearchStrategy[int | None] | None = None,
    dtype: torch.dtype | st.SearchStrategy[torch.dtype] = torch.float64,
) -> Problem:
    r"""Affine maps :math:`f(z, b) = A z + b` with :math:`\|A\|_2 = \gamma` exactly.

    The bias ``b`` is the problem's argument (shape ``(n,)`` or ``(B, n)``); the fixed point
    :math:`(I - A)^{-1} b` is known in closed form and the Jacobian is ``A``.

    Parameters
    ----------
    n
        State dimension: a number or a strategy (default 1 to 12).
    gamma
        Contraction factor γ: a number or a strategy (default 0 to 0.95).
    batch
        ``None`` (unbatched), a batch size, or a strategy of either.
    dtype
        ``torch.float32``/``torch.float64`` or a strategy (see :data:`dtypes`).

    Examples
    --------
    >>> from hypothesis import given
    >>> import fixpoint as fp
    >>> @given(fp.testing.affine_contractions(gamma=0.5))
    ... def test(problem):
    ...     sol = fp.solve(problem.f, problem.z0, *problem.args,
    ...                    solver=fp.Anderson(atol=1e-10, rtol=0))
    ...     assert (sol.value - problem.reference()).abs().max() < 1e-8
    >>> test()
    """
    n_, gamma_, batch_, dtype_, seed, gen = _draw_options(draw, n, gamma, batch, dtype)
    a64 = _matrix_with_norm(n_, gamma_, gen)
    b64 = torch.randn(*_lead(batch_), n_, generator=gen, dtype=torch.float64)
    weight = a64.to(dtype_)
    z0 = torch.randn(*_lead(batch_), n_, generator=gen, dtype=torch.float64).to(dtype_)

    def f(z: Tensor, b: Tensor) -> Tensor:
        return z @ weight.to(z.dtype).mT + b

    def jacobian(z: Tensor, b: Tensor) -> Tensor:
        return weight.to(z.dtype).expand(*z.shape[:-1], n_, n_)

    def solution(b: Tensor) -> Tensor:
        eye = torch.eye(n_, dtype=torch.float64)
        z = torch.linalg.solve(eye - a64, b.detach().to(torch.float64)[..., None])[..., 0]
        return z.to(b.dtype)

    name = f"affine(n={n_}, gamma={gamma_:.4g}, batch={batch_}, {dtype_}, seed={seed})"
    return Problem(
        f=f,
        z0=z0,
        args=(b64.to(dtype_),),
        gamma=gamma_,
        batched=batch_ is not None,
        jacobian_fn=jacobian,
        solution_fn=solution,
        name=name,
    )


@st.composite
def tanh_contractions(
    draw: st.DrawFn,
    n: int | st.SearchStrategy[int] = st.integers(1, 12),
    gamma: float | st.SearchStrategy[float] = st.floats(0.0, 0.95),
    batch: int | st.SearchStrategy[int | None] | None = None,
    dtype: torch.dtype | st.SearchStrategy[torch.dtype] = torch.float64,
) -> Problem:
    r"""Nonlinear maps :math:`f(z, x) = \gamma \tanh(W z + x)` with :math:`\|W\|_2 = 1`.

    Since :math:`|\tanh'| \le 1`, :math:`f` is γ-Lipschitz in ``z``. The injection ``x`` is the
    problem's argument; the Jacobian is :math:`\gamma\,\mathrm{diag}(1 - \tanh^2(Wz + x))\,W`, and
    :meth:`Problem.reference` finds the fixed point by Newton's method.

    Parameters
    ----------
    n
        State dimension: a number or a strategy (default 1 to 12).
    gamma
        Contraction factor γ: a number or a strategy (default 0 to 0.95).
    batch
        ``None`` (unbatched), a batch size, or a strategy of either.
    dtype
        ``torch.float32``/``torch.float64`` or a strategy (see :data:`dtypes`).

    Examples
    --------
    >>> from hypothesis import given
    >>> import fixpoint as fp
    >>> @given(fp.testing.tanh_contractions(gamma=0.8, batch=3))
    ... def test(problem):
    ...     est = fp.operators.lipschitz(problem.f, problem.z0, *problem.args, batched=True)
    ...     assert (est <= 0.8 + 1e-9).all()
    >>> test()
    """
    n_, gamma_, batch_, dtype_, seed, gen = _draw_options(draw, n, gamma, batch, dtype)
    w64 = _matrix_with_norm(n_, 1.0, gen)
    x64 = 2.0 * torch.randn(*_lead(batch_), n_, generator=gen, dtype=torch.float64)
    weight = w64.to(dtype_)
    z0 = torch.randn(*_lead(batch_), n_, generator=gen, dtype=torch.float64).to(dtype_)

    def f(z: Tensor, x: Tensor) -> Tensor:
        return gamma_ * torch.tanh(z @ weight.to(z.dtype).mT + x)

    def jacobian(z: Tensor, x: Tensor) -> Tensor:
        w = weight.to(z.dtype)
        sech2 = 1.0 - torch.tanh(z @ w.mT + x.to(z.dtype)) ** 2
        return gamma_ * sech2[..., :, None] * w

    name = f"tanh(n={n_}, gamma={gamma_:.4g}, batch={batch_}, {dtype_}, seed={seed})"
    return Problem(
        f=f,
        z0=z0,
        args=(x64.to(dtype_),),
        gamma=gamma_,
        batched=batch_ is not None,
        jacobian_fn=jacobian,
        name=name,
    )


def contractions(
    n: int | st.SearchStrategy[int] = st.integers(1, 12),
    gamma: float | st.SearchStrategy[float] = st.floats(0.0, 0.95),
    batch: int | st.SearchStrategy[int | None] | None = None,
    dtype: torch.dtype | st.SearchStrategy[torch.dtype] = torch.float64,
) -> st.SearchStrategy[Problem]:
    """Affine or nonlinear γ-contractions: :func:`affine_contractions` or :func:`tanh_contractions`.

    Parameters
    ----------
    n
        State dimension: a number or a strategy (default 1 to 12).
    gamma
        Contraction factor γ: a number or a strategy (default 0 to 0.95).
    batch
        ``None`` (unbatched), a batch size, or a strategy of either.
    dtype
        ``torch.float32``/``torch.float64`` or a strategy (see :data:`dtypes`).

    Examples
    --------
    >>> from hypothesis import given
    >>> import fixpoint as fp
    >>> @given(fp.testing.contractions(n=4, gamma=0.5, batch=2))
    ... def test(problem):
    ...     assert problem.z0.shape == (2, 4) and problem.gamma == 0.5
    >>> test()
    """
    return st.one_of(
        affine_contractions(n, gamma, batch, dtype), tanh_contractions(n, gamma, batch, dtype)
    )
