"""scipy's test problems for ``scipy.optimize.nonlin``, posed as fixed points."""

from __future__ import annotations

import torch
from torch import Tensor
from torch.func import jacrev

from fixpoint.testing.problems import Problem

__all__ = ["scipy_nonlin_problems"]


def _diagonal_cubic(x: Tensor) -> Tensor:  # scipy's F
    d = torch.tensor([3.0, 2.0, 1.5, 1.0, 0.5], dtype=x.dtype, device=x.device)
    return -d * x - 0.01 * (x @ x) * x


def _identity(x: Tensor) -> Tensor:  # F2 and F2_lucky
    return x


def _tridiagonal(x: Tensor) -> Tensor:  # F3
    a = torch.tensor([[-2.0, 1, 0], [1, -2, 1], [0, 1, -2]], dtype=x.dtype, device=x.device)
    return a @ x - torch.tensor([1.0, 2.0, 3.0], dtype=x.dtype, device=x.device)


def _powell_badly_scaled(x: Tensor) -> Tensor:  # F4_powell
    a = 1e4
    return torch.stack([a * x[0] * x[1] - 1, torch.exp(-x[0]) + torch.exp(-x[1]) - (1 + 1 / a)])


def _pressure_network(x: Tensor) -> Tensor:  # F5: four equal pipes, total flow 4
    pressure = 0.5 * x**2
    return torch.cat([pressure[1:] - pressure[0], (x.sum() - 4)[None]])


def _preconditioned(x: Tensor) -> Tensor:  # F6
    j0 = torch.tensor([[-4.256, 14.7], [0.8394989, 0.59964207]], dtype=x.dtype, device=x.device)
    v = torch.stack([(x[0] + 3) * (x[1] ** 5 - 7) + 18, torch.sin(x[1] * torch.exp(x[0]) - 1)])
    return -torch.linalg.solve(j0, v)


_SYSTEMS = {
    "F": (_diagonal_cubic, [1.0, 1, 1, 1, 1]),
    "F2": (_identity, [1.0, 2, 3, 4, 5, 6]),
    "F2_lucky": (_identity, [0.0] * 6),
    "F3": (_tridiagonal, [1.0, 2, 3]),
    "F4_powell": (_powell_badly_scaled, [-1.0, -2]),
    "F5": (_pressure_network, [2.0, 0, 2, 0]),
    "F6": (_preconditioned, [-0.5, 1.4]),
}


def _as_fixed_point(system):
    def f(z: Tensor) -> Tensor:
        return z + system(z)

    return f


def scipy_nonlin_problems(
    *, dtype: torch.dtype = torch.float64, device: torch.device | str | None = None
) -> dict[str, Problem]:
    r"""The seven test problems of scipy's ``scipy.optimize.nonlin`` tests, as fixed points.

    scipy poses each as a root of :math:`F`; here it is the fixed point of :math:`f(z) = z +
    F(z)`, so that the fixed-point residual :math:`f(z) - z` is :math:`F(z)`, started where
    scipy starts (``xin``). Keys are scipy's names:

    ``F``
        :math:`F(x) = -Dx - 0.01\,(x^\top x)\,x`, :math:`D = \mathrm{diag}(3, 2, 1.5, 1, 0.5)`.
    ``F2``, ``F2_lucky``
        :math:`F(x) = x` in six dimensions, from :math:`(1, \dots, 6)` and from the root.
    ``F3``
        A tridiagonal linear system in three dimensions.
    ``F4_powell``
        Powell's badly scaled system, :math:`(10^4 x_1 x_2 - 1,\; e^{-x_1} + e^{-x_2} - 1 -
        10^{-4})`, from :math:`(-1, -2)`: its Jacobian's scales differ by :math:`10^4`.
    ``F5``
        The pressure network of four equal pipes (scipy's ``pressure_network`` with
        :math:`k = 0.5`, :math:`Q = 4`); the root is all ones.
    ``F6``
        A two-dimensional system preconditioned by a fixed matrix.

    scipy's tests require of ``broyden1``, ``broyden2``, ``anderson`` and ``newton_krylov``
    that each brings :math:`\max_i |F_i|` below ``1e-2`` within 200 iterations on every
    problem. Few of the maps :math:`f` contract: a fixed-point iteration fails on most.

    Parameters
    ----------
    dtype, device
        Of the starting points (default float64 on the CPU).

    Returns
    -------
    dict[str, Problem]
        Each with ``f``, ``z0``, a dense ``jacobian_fn`` (by :func:`torch.func.jacrev`) and
        ``name``.

    Examples
    --------
    >>> import torch, fixpoint as fp
    >>> powell = fp.testing.scipy_nonlin_problems()["F4_powell"]
    >>> sol = fp.solve(powell.f, powell.z0, solver=fp.Broyden(atol=1e-9, rtol=0))
    >>> sol.status, bool((powell.f(sol.value) - sol.value).abs().max() < 1e-9)
    (Status.CONVERGED, True)
    """
    problems = {}
    for name, (system, start) in _SYSTEMS.items():
        f = _as_fixed_point(system)
        problems[name] = Problem(
            f=f,
            z0=torch.tensor(start, dtype=dtype, device=device),
            jacobian_fn=jacrev(f),
            name=name,
        )
    return problems
