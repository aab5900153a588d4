"""Independent reference implementations (plain NumPy, float64) for the option and stopping tests.

Each function follows the formula of the library's docstrings, written out directly (dense
matrices, explicit histories, least squares over an explicit Krylov basis), so that a bug in
the library's batched, in-place, recurrence-based implementation shows up as a difference.
Nothing here imports :mod:`fixpoint`.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

Map = Callable[[np.ndarray], np.ndarray]

SUFFICIENT = 1e-4  # the sufficient-decrease constant of the line search docstring


def norm(x: np.ndarray) -> float:
    return float(np.linalg.norm(x))


class Recorder:
    """Wraps ``f`` and records every point it is evaluated at, in order."""

    def __init__(self, f: Map) -> None:
        self.f = f
        self.points: list[np.ndarray] = []

    def __call__(self, z: np.ndarray) -> np.ndarray:
        self.points.append(np.array(z, dtype=np.float64))
        return self.f(z)


# --------------------------------------------------------------------------- problems


def tanh_problem(n: int, seed: int, radius: float) -> tuple[np.ndarray, np.ndarray]:
    """``A``, ``b`` of ``f(z) = A tanh(z) + b`` with ``‖A‖₂ = radius`` (a contraction below 1)."""
    rng = np.random.default_rng(seed)
    a = rng.standard_normal((n, n))
    a *= radius / np.linalg.norm(a, 2)
    return a, rng.standard_normal(n)


def tanh_map(a: np.ndarray, b: np.ndarray, scale: float = 1.0) -> Map:
    """``z ↦ s·(A tanh(z/s) + b)``."""
    return lambda z: scale * (a @ np.tanh(z / scale) + b)


def tanh_jacobian(a: np.ndarray) -> Callable[[np.ndarray], np.ndarray]:
    return lambda z: a * (1 - np.tanh(z) ** 2)[None, :]


def jacobian(n: int, seed: int, radius: float, symmetric: bool = False) -> np.ndarray:
    """A random ``J`` with ``‖J‖₂ = radius`` (symmetric on request)."""
    rng = np.random.default_rng(seed)
    j = rng.standard_normal((n, n))
    if symmetric:
        j = j + j.T
    return j * radius / np.linalg.norm(j, 2)


def g_vector(n: int, seed: int) -> np.ndarray:
    return 3.0 * np.random.default_rng(seed + 100).standard_normal(n)


# --------------------------------------------------------------------------- forward solvers


def picard(f: Map, z0: np.ndarray, damping: float, steps: int) -> list[np.ndarray]:
    """``z_{k+1} = (1 − α) z_k + α f(z_k)``: the iterates ``z_0 … z_steps``."""
    zs = [np.array(z0, dtype=np.float64)]
    for _ in range(steps):
        z = zs[-1]
        zs.append((1 - damping) * z + damping * f(z))
    return zs


def anderson(
    f: Map, z0: np.ndarray, m: int, beta: float, lam: float, steps: int
) -> list[np.ndarray]:
    """Type-II Anderson mixing, straight from the docstring.

    ``z_{k+1} = z_k + β g_k − (ΔZ + βΔG) γ``, ``γ = argmin ‖g_k − ΔGγ‖² + λ d̄ ‖γ‖²`` with
    ``d̄`` the mean of the diagonal of ``ΔGᵀΔG``; ΔZ, ΔG hold the last ``m`` differences.
    """
    zs = [np.array(z0, dtype=np.float64)]
    gs = [f(zs[0]) - zs[0]]
    for k in range(steps):
        z, g = zs[-1], gs[-1]
        z_next = z + beta * g
        h = min(k, m)
        if h > 0:
            dz = np.stack([zs[i + 1] - zs[i] for i in range(k - h, k)], axis=1)
            dg = np.stack([gs[i + 1] - gs[i] for i in range(k - h, k)], axis=1)
            gram = dg.T @ dg
            dbar = np.mean(np.diag(gram))
            gamma = np.linalg.solve(gram + lam * dbar * np.eye(h), dg.T @ g)
            z_next = z_next - (dz + beta * dg) @ gamma
        zs.append(z_next)
        gs.append(f(z_next) - z_next)
    return zs


def broyden_inverse(pairs: list[tuple[np.ndarray, np.ndarray]], n: int) -> np.ndarray:
    """Good Broyden's inverse Jacobian: ``H_0 = −I`` updated by the pairs, oldest first,
    ``H ← H + (s − Hy) sᵀH / (sᵀHy)``."""
    h = -np.eye(n)
    for s, y in pairs:
        hy = h @ y
        h = h + np.outer(s - hy, s @ h) / (s @ hy)
    return h


def line_search(
    g: Map,
    z: np.ndarray,
    d: np.ndarray,
    r: float,
    recent: list[float],
    max_backtracks: int,
) -> tuple[np.ndarray, float, bool]:
    """The non-monotone safeguarded backtracking of the Broyden docstring.

    λ passes when ``‖g(z + λd)‖ ≤ (1 − 10⁻⁴λ) max(recent ∪ {r})``; otherwise the next λ
    minimises the parabola through ``‖g(z)‖²`` (slope ``−2‖g(z)‖²``) and the current trial,
    kept in ``[0.1, 0.5]`` times the current λ. Returns the best point seen, its residual
    norm, and whether a trial passed.
    """
    reference = max(max(recent), r)
    lam = 1.0
    z_try = z + d
    r_try = norm(g(z_try))
    best_z, best_r = z_try, r_try
    if r_try <= (1 - SUFFICIENT) * reference:
        return best_z, best_r, True
    r_now = r_try
    for _ in range(max_backtracks):
        curvature = (r_now**2 - r**2 + 2 * r**2 * lam) / lam**2
        if np.isfinite(r_now) and curvature > 0:
            lam = min(max(r**2 / curvature, 0.1 * lam), 0.5 * lam)
        else:
            lam = 0.1 * lam
        z_try = z + lam * d
        r_try = norm(g(z_try))
        if r_try < best_r:
            best_z, best_r = z_try, r_try
        if r_try <= (1 - SUFFICIENT * lam) * reference:
            return best_z, best_r, True
        r_now = r_try
    return best_z, best_r, False


def broyden(
    f: Map,
    z0: np.ndarray,
    memory: int,
    steps: int,
    *,
    line_search_on: bool = False,
    nonmonotone: int = 5,
    max_backtracks: int = 10,
) -> list[np.ndarray]:
    """Limited-memory good Broyden on ``g(z) = f(z) − z``: ``z_+ = z − λ H g``, ``H`` rebuilt
    from ``−I`` with the last ``memory`` secant pairs (all pairs cleared after a failed line
    search). Returns the iterates."""
    n = len(z0)
    g = lambda z: f(z) - z  # noqa: E731
    zs = [np.array(z0, dtype=np.float64)]
    gs = [g(zs[0])]
    pairs: list[tuple[np.ndarray, np.ndarray]] = []
    recent = [norm(gs[0])] * nonmonotone
    for k in range(steps):
        z, gz = zs[-1], gs[-1]
        if k > 0:
            pairs.append((z - zs[-2], gz - gs[-2]))
        h = broyden_inverse(pairs[-memory:], n)
        d = -h @ gz
        if line_search_on:
            z_next, r_next, passed = line_search(g, z, d, norm(gz), recent, max_backtracks)
            recent = [*recent[1:], r_next]
            if not passed:
                pairs = []
        else:
            z_next = z + d
        zs.append(z_next)
        gs.append(g(z_next))
    return zs


def krylov_min_residual(a: np.ndarray, r0: np.ndarray, k: int) -> np.ndarray:
    """The ``d`` in ``K_k(A, r0)`` that minimises ``‖r0 − A d‖`` (explicit basis, lstsq)."""
    basis = [r0 / norm(r0)]
    for _ in range(k - 1):
        v = a @ basis[-1]
        basis.append(v / norm(v))
    kmat = np.stack(basis, axis=1)
    y, *_ = np.linalg.lstsq(a @ kmat, r0, rcond=None)
    return kmat @ y


def newton_krylov(
    f: Map,
    jac: Callable[[np.ndarray], np.ndarray],
    z0: np.ndarray,
    steps: int,
    *,
    eta: float | None = None,
    eta_max: float = 0.9,
    inner_max_iter: int = 30,
    atol: float = 0.0,
    rtol: float = 0.0,
    relative_to: str = "state",
    gamma: float = 0.9,
    line_search_on: bool = False,
    nonmonotone: int = 5,
    max_backtracks: int = 10,
) -> list[np.ndarray]:
    """Inexact Newton: GMRES (minimal residual over an explicit Krylov basis) on
    ``(I − J) d = g`` to ``‖g − (I − J)d‖ ≤ η‖g‖``, η by Eisenstat–Walker's second rule
    (``γ = 0.9``, capped at ``eta_max``) kept at or above ``0.5·(atol + rtol·s)/‖g‖``; full
    steps, or the line search of :func:`line_search`."""
    n = len(z0)
    zs = [np.array(z0, dtype=np.float64)]
    r_first = norm(f(zs[0]) - zs[0])
    recent = [r_first] * nonmonotone
    eta_prev, r_prev = None, None
    for _ in range(steps):
        z = zs[-1]
        g = f(z) - z
        r = norm(g)
        if eta is not None:
            e = eta
        else:
            if eta_prev is None:
                e = eta_max
            else:
                e = gamma * (r / r_prev) ** 2
                if gamma * eta_prev**2 > 0.1:
                    e = max(e, gamma * eta_prev**2)
                e = min(e, eta_max)
            scale = r_first if relative_to == "initial" else norm(z)
            e = min(max(e, 0.5 * (atol + rtol * scale) / r), eta_max)
        a = np.eye(n) - jac(z)
        for k in range(1, inner_max_iter + 1):
            d = krylov_min_residual(a, g, k)
            if norm(g - a @ d) <= e * r:
                break
        if line_search_on:
            z_next, r_next, _ = line_search(lambda x: f(x) - x, z, d, r, recent, max_backtracks)
            recent = [*recent[1:], r_next]
            zs.append(z_next)
        else:
            zs.append(z + d)
        eta_prev, r_prev = e, r
    return zs


# --------------------------------------------------------------------------- linear solvers


def cg_iterates(a: np.ndarray, b: np.ndarray, x0: np.ndarray, steps: int) -> list[np.ndarray]:
    """CG's iterates as Galerkin projections: ``x_k ∈ x_0 + K_k(A, r_0)`` with
    ``r_k ⟂ K_k`` (explicit orthonormal basis)."""
    r0 = b - a @ x0
    xs = [np.array(x0, dtype=np.float64)]
    q, _ = np.linalg.qr(np.stack([np.linalg.matrix_power(a, i) @ r0 for i in range(steps)], 1))
    for k in range(1, steps + 1):
        v = q[:, :k]
        y = np.linalg.solve(v.T @ a @ v, v.T @ r0)
        xs.append(x0 + v @ y)
    return xs


def cgls_iterates(a: np.ndarray, b: np.ndarray, x0: np.ndarray, steps: int) -> list[np.ndarray]:
    """CGLS's iterates: ``x_k ∈ x_0 + K_k(AᵀA, Aᵀr_0)`` minimising ``‖b − Ax‖``."""
    r0 = b - a @ x0
    s0 = a.T @ r0
    ata = a.T @ a
    cols = [s0]
    for _ in range(steps - 1):
        cols.append(ata @ cols[-1])
    q, _ = np.linalg.qr(np.stack(cols, 1))
    xs = [np.array(x0, dtype=np.float64)]
    for k in range(1, steps + 1):
        v = q[:, :k]
        y, *_ = np.linalg.lstsq(a @ v, r0, rcond=None)
        xs.append(x0 + v @ y)
    return xs


def gmres(
    a: np.ndarray, b: np.ndarray, x0: np.ndarray, tol: float, max_iter: int, restart: int
) -> tuple[np.ndarray, int]:
    """Restarted GMRES: cycles of at most ``restart`` minimal-residual steps from the current
    ``x``; stops at the first step whose residual is ``≤ tol``. Returns ``x`` and the number of
    steps (products in the Arnoldi loops)."""
    x = np.array(x0, dtype=np.float64)
    used = 0
    if norm(b - a @ x) <= tol:
        return x, 0
    while used < max_iter:
        r = b - a @ x
        for k in range(1, min(restart, max_iter - used) + 1):
            d = krylov_min_residual(a, r, k)
            if norm(r - a @ d) <= tol:
                return x + d, used + k
        x = x + d
        used += k
    return x, used


def bicgstab(
    a: np.ndarray, b: np.ndarray, x0: np.ndarray, tol: float, max_iter: int
) -> tuple[np.ndarray, int, bool]:
    """Van der Vorst's BiCGStab (shadow residual r̂ = r₀), stopping when ``‖s‖ ≤ tol`` half-way
    or ``‖r‖ ≤ tol`` at the end of an iteration. Returns ``x``, the iterations and whether it
    stopped half-way."""
    x = np.array(x0, dtype=np.float64)
    r = b - a @ x
    if norm(r) <= tol:
        return x, 0, False
    shadow = r.copy()
    rho = alpha = omega = 1.0
    p = v = np.zeros_like(r)
    for i in range(1, max_iter + 1):
        rho_new = shadow @ r
        beta = (rho_new / rho) * (alpha / omega)
        p = r + beta * (p - omega * v)
        v = a @ p
        alpha = rho_new / (shadow @ v)
        x = x + alpha * p
        s = r - alpha * v
        if norm(s) <= tol:
            return x, i, True
        t = a @ s
        omega = (t @ s) / (t @ t)
        x = x + omega * s
        r = s - omega * t
        rho = rho_new
        if norm(r) <= tol:
            return x, i, False
    return x, max_iter, False


# --------------------------------------------------------------------------- stopping rules


def first_index(values: list[float], thresholds: list[float]) -> int | None:
    """The first ``k`` with ``values[k] ≤ thresholds[k]``, or ``None``."""
    for k, (v, t) in enumerate(zip(values, thresholds, strict=True)):
        if v <= t:
            return k
    return None


def separated_threshold(ratios: list[float], k: int, margin: float = 1.2) -> float:
    """A constant ``c`` with ``ratios[k] ≤ c/margin`` and ``ratios[j] ≥ c·margin`` for ``j < k``:
    the rule ``ratio ≤ c`` then first holds at ``k``, robustly. Raises if there is none."""
    lo, hi = ratios[k], min(ratios[:k], default=np.inf)
    if not hi > lo * margin**2:
        raise ValueError(f"no separated threshold at {k}: {ratios[: k + 1]}")
    return lo * margin if np.isinf(hi) else float(np.sqrt(lo * hi))
