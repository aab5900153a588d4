"""Fixed-point problems with known answers, for tests and benchmarks."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

__all__ = ["Problem", "h_equation", "h_equation_mean"]


@dataclass(frozen=True, eq=False)
class Problem:
    r"""A fixed-point problem :math:`z = f(z, *args)` together with what is known about it.

    Attributes
    ----------
    f
        The map, called as ``f(z, *args)``.
    z0
        A starting point, ``(n,)`` or ``(B, n)`` when batched.
    args
        Extra arguments of ``f`` (tensors: the "parameters" θ of the problem).
    gamma
        A Lipschitz constant of ``f`` in ``z`` (its contraction factor), or ``None``.
    batched
        Whether the leading dimension of ``z0`` is a batch.
    jacobian_fn
        ``(z, *args) ↦ ∂f/∂z`` as a dense ``(n, n)`` (or ``(B, n, n)``) matrix, or ``None``.
    solution_fn
        ``(*args) ↦ z*``, the fixed point in closed form, or ``None``.
    name
        A short description (shown when Hypothesis reports a failing example).

    Examples
    --------
    >>> import torch, fixpoint as fp
    >>> p = fp.testing.Problem(f=lambda z, b: 0.5 * z + b, z0=torch.zeros(2, dtype=torch.float64),
    ...                        args=(torch.ones(2, dtype=torch.float64),), gamma=0.5,
    ...                        jacobian_fn=lambda z, b: 0.5 * torch.eye(2, dtype=z.dtype))
    >>> p.reference()            # by Newton's method with the dense Jacobian
    tensor([2., 2.], dtype=torch.float64)
    """

    f: Callable[..., Tensor]
    z0: Tensor
    args: tuple[Any, ...] = ()
    gamma: float | None = None
    batched: bool = False
    jacobian_fn: Callable[..., Tensor] | None = field(default=None, repr=False)
    solution_fn: Callable[..., Tensor] | None = field(default=None, repr=False)
    name: str = ""

    def __repr__(self) -> str:
        return f"Problem({self.name})"

    @property
    def dtype(self) -> torch.dtype:
        """The dtype of ``z0``."""
        return self.z0.dtype

    def jacobian(self, z: Tensor, *args: Any) -> Tensor:
        """The dense Jacobian ``∂f/∂z`` at ``z`` (for the problem's own ``args`` if none given)."""
        if self.jacobian_fn is None:
            raise ValueError(f"{self.name}: no dense Jacobian is known")
        return self.jacobian_fn(z, *(args or self.args))

    def reference(self, *args: Any, tol: float = 1e-13, max_iter: int = 100) -> Tensor:
        """The fixed point for ``args`` (default: the problem's own), in the problem's dtype.

        From the closed form when known, else by Newton's method with the dense Jacobian in
        float64. Neither uses a solver of the library, so it is an independent answer.
        """
        args = args or self.args
        if self.solution_fn is not None:
            return self.solution_fn(*args)
        if self.jacobian_fn is None:
            raise ValueError(f"{self.name}: neither a closed form nor a Jacobian is known")
        z = self.z0.detach().to(torch.float64)
        args = tuple(a.detach().to(torch.float64) if isinstance(a, Tensor) else a for a in args)
        n = z.shape[-1]
        eye = torch.eye(n, dtype=torch.float64, device=z.device)
        polish = 2  # Newton steps after reaching tol: quadratic convergence gives full precision
        with torch.no_grad():
            for _ in range(max_iter):
                g = self.f(z, *args) - z
                if float(g.abs().max()) <= tol:
                    polish -= 1
                    if polish < 0 or not bool(g.any()):
                        break
                jac = self.jacobian_fn(z, *args).to(torch.float64)
                z = z + torch.linalg.solve(jac - eye, -g[..., None])[..., 0]
            else:
                raise RuntimeError(f"{self.name}: Newton did not reach {tol} in {max_iter} steps")
        return z.to(self.dtype)


def h_equation_mean(c: float) -> float:
    r"""The mean of the discrete H-equation's solution: :math:`2 / (1 + \sqrt{1 - c})`.

    It holds exactly for the midpoint discretisation, by symmetry of the kernel.

    Parameters
    ----------
    c
        The albedo, :math:`0 < c < 1`.

    Examples
    --------
    >>> import fixpoint as fp
    >>> fp.testing.h_equation_mean(0.75)
    1.3333333333333333
    """
    return 2.0 / (1.0 + math.sqrt(1.0 - c))


def h_equation(
    c: float,
    n: int = 512,
    *,
    dtype: torch.dtype = torch.float64,
    device: torch.device | str | None = None,
) -> Problem:
    r"""The Chandrasekhar H-equation, discretised with the midpoint rule on ``n`` nodes.

    .. math:: H_i = \Big(1 - \frac{c}{2n}\sum_{j=1}^{n} \frac{\mu_i H_j}{\mu_i + \mu_j}\Big)^{-1},
              \qquad \mu_i = \frac{i - 1/2}{n},

    started at :math:`H = 1`. For :math:`0 < c < 1` the solution satisfies
    ``mean(H) = h_equation_mean(c)``; the map contracts more slowly as :math:`c \to 1`, which is
    where Picard iteration needs many steps and Anderson or Broyden shine.

    Parameters
    ----------
    c
        The albedo, :math:`0 < c < 1`.
    n
        Number of quadrature nodes (default 512).
    dtype, device
        Of the problem's tensors (default float64 on the CPU).

    Examples
    --------
    >>> import fixpoint as fp
    >>> p = fp.testing.h_equation(0.9, n=64)
    >>> sol = fp.solve(p.f, p.z0, solver=fp.Anderson(atol=1e-12, rtol=0))
    >>> abs(sol.value.mean().item() - fp.testing.h_equation_mean(0.9)) < 1e-10
    True
    """
    if not 0 < c < 1:
        raise ValueError(f"h_equation: c must be in (0, 1), got {c!r}")
    mu = (torch.arange(1, n + 1, dtype=dtype, device=device) - 0.5) / n
    kernel = (c / (2 * n)) * mu[:, None] / (mu[:, None] + mu[None, :])

    def f(h: Tensor) -> Tensor:
        return 1.0 / (1.0 - h @ kernel.to(h.dtype).mT)

    def jacobian(h: Tensor) -> Tensor:
        fh = f(h)
        return (fh**2)[..., :, None] * kernel.to(h.dtype)

    return Problem(
        f=f,
        z0=torch.ones(n, dtype=dtype, device=device),
        jacobian_fn=jacobian,
        name=f"h_equation(c={c}, n={n})",
    )
