"""Every option of every solver and estimator, at asymmetric values, against an independent
reference (tests/reference.py: plain NumPy, written from the docstrings' formulas).

The forward solvers are compared iterate by iterate: the library's map is wrapped so that it
records every point it is evaluated at, which for Picard, Anderson and full-step Broyden is
exactly the sequence of iterates ``z_0, z_1, …`` (Newton–Krylov's Jacobian–vector products are
left out). The tolerances are 0, so every solve runs its ``max_iter`` steps.
"""

from __future__ import annotations

import dataclasses
import math
import warnings

import numpy as np
import pytest
import torch
from torch._C import _functorch

import fixpoint as fp
from tests import reference as ref

DT = torch.float64


# --------------------------------------------------------------------------- problems


def torch_map(a: np.ndarray, b: np.ndarray, scale: float | list[float] = 1.0):
    """The same map on ``(B, n)`` rows (row ``i`` scaled by ``scale[i]``)."""
    at, bt = torch.tensor(a, dtype=DT), torch.tensor(b, dtype=DT)
    s = torch.tensor(scale, dtype=DT).reshape(-1, 1)
    return lambda z: s * (torch.tanh(z / s) @ at.T + bt)


def run_recorded(solver: fp.Solver, fn, z0: torch.Tensor):
    """``solver.iterate`` with every (non-JVP) evaluation point of ``fn`` recorded."""
    points: list[torch.Tensor] = []

    def recorded(z: torch.Tensor) -> torch.Tensor:
        if not _functorch.is_functorch_wrapped_tensor(z):
            points.append(z.detach().clone())
        return fn(z)

    sol = solver.iterate(recorded, z0)
    return sol, points


def assert_iterates(points: list[torch.Tensor], expected: list[np.ndarray], row: int = 0) -> None:
    assert len(points) == len(expected)
    for k, (got, want) in enumerate(zip(points, expected, strict=True)):
        np.testing.assert_allclose(
            got[row].numpy(), want, rtol=1e-9, atol=1e-11, err_msg=f"iterate {k}"
        )


NONSTOP = dict(atol=0.0, rtol=0.0)  # only max_iter stops


# --------------------------------------------------------------------------- Picard


@pytest.mark.parametrize("damping", [0.2, 0.7, 1.0])
def test_picard_damping_matches_relaxed_iteration(damping):
    a, b = ref.tanh_problem(4, seed=0, radius=0.9)
    steps = 6
    expected = ref.picard(ref.tanh_map(a, b), np.zeros(4), damping, steps)
    solver = fp.Picard(damping=damping, max_iter=steps, **NONSTOP)
    sol, points = run_recorded(solver, torch_map(a, b), torch.zeros(1, 4, dtype=DT))
    assert_iterates(points, expected)
    assert int(sol.iterations[0]) == steps and int(sol.fevals[0]) == steps + 1


def test_picard_damping_changes_the_iterates():
    """The reference is sensitive to the option: 0.2 and 0.8 = 1 − 0.2 differ at step 1."""
    a, b = ref.tanh_problem(4, seed=0, radius=0.9)
    low = ref.picard(ref.tanh_map(a, b), np.zeros(4), 0.2, 2)
    high = ref.picard(ref.tanh_map(a, b), np.zeros(4), 0.8, 2)
    assert np.abs(low[1] - high[1]).max() > 0.1


# --------------------------------------------------------------------------- Anderson


@pytest.mark.parametrize(
    ("m", "beta", "lam"),
    [(2, 0.7, 0.05), (3, 1.4, 0.0), (1, 1.0, 0.3), (2, 1.0, 1e-2), (4, 0.3, 1e-3)],
)
def test_anderson_matches_reference_mixing(m, beta, lam):
    """Seven steps: the circular history of ``m`` differences wraps around."""
    a, b = ref.tanh_problem(5, seed=1, radius=0.95)
    steps = 7
    expected = ref.anderson(ref.tanh_map(a, b), np.zeros(5), m, beta, lam, steps)
    solver = fp.Anderson(m=m, beta=beta, lam=lam, max_iter=steps, **NONSTOP)
    sol, points = run_recorded(solver, torch_map(a, b), torch.zeros(1, 5, dtype=DT))
    assert_iterates(points, expected)
    assert int(sol.fevals[0]) == steps + 1


def test_anderson_options_change_the_reference():
    """Each option moves the reference iterates, so a dropped option cannot match it."""
    a, b = ref.tanh_problem(5, seed=1, radius=0.95)
    f = ref.tanh_map(a, b)
    base = ref.anderson(f, np.zeros(5), 2, 0.7, 0.05, 5)[-1]
    for other in [(2, 0.3, 0.05), (2, 1.0, 0.05), (2, 0.7, 0.0), (1, 0.7, 0.05), (3, 0.7, 0.05)]:
        assert np.abs(ref.anderson(f, np.zeros(5), *other, 5)[-1] - base).max() > 1e-6, other


def test_anderson_without_history_is_picard_with_damping_beta():
    a, b = ref.tanh_problem(4, seed=2, radius=0.8)
    expected = ref.picard(ref.tanh_map(a, b), np.zeros(4), 0.3, 5)
    solver = fp.Anderson(m=0, beta=0.3, lam=0.1, max_iter=5, **NONSTOP)
    _, points = run_recorded(solver, torch_map(a, b), torch.zeros(1, 4, dtype=DT))
    assert_iterates(points, expected)


def test_anderson_regularisation_is_relative_to_each_samples_own_scale():
    """``λ`` is scaled by the mean squared norm of each sample's ΔG columns: a sample scaled by
    10³ (map ``s·f(z/s)``) has exactly the scaled iterates, next to an unscaled one."""
    a, b = ref.tanh_problem(4, seed=3, radius=0.9)
    scales = [1.0, 1e3]
    steps = 6
    solver = fp.Anderson(m=3, beta=0.7, lam=0.2, max_iter=steps, **NONSTOP)
    _, points = run_recorded(solver, torch_map(a, b, scales), torch.zeros(2, 4, dtype=DT))
    for row, s in enumerate(scales):
        expected = ref.anderson(ref.tanh_map(a, b, s), np.zeros(4), 3, 0.7, 0.2, steps)
        assert_iterates(points, expected, row=row)


# --------------------------------------------------------------------------- Broyden


@pytest.mark.parametrize("memory", [1, 2, 20])
def test_broyden_full_steps_match_dense_good_broyden(memory):
    """``line_search=False``; the map expands (‖A‖ = 2.5), so some full steps raise the residual
    (a line search would have cut them)."""
    a, b = ref.tanh_problem(4, seed=1, radius=2.5)
    steps = 7
    f = ref.tanh_map(a, b)
    expected = ref.broyden(f, np.zeros(4), memory, steps)
    residuals = [ref.norm(f(z) - z) for z in expected]
    assert any(residuals[k + 1] > residuals[k] for k in range(steps))
    solver = fp.Broyden(memory=memory, line_search=False, max_iter=steps, **NONSTOP)
    sol, points = run_recorded(solver, torch_map(a, b), torch.zeros(1, 4, dtype=DT))
    assert_iterates(points, expected)
    assert int(sol.fevals[0]) == steps + 1


def test_broyden_memory_changes_the_reference():
    a, b = ref.tanh_problem(4, seed=1, radius=2.5)
    f = ref.tanh_map(a, b)
    last = [ref.broyden(f, np.zeros(4), m, 6)[-1] for m in (1, 2, 20)]
    assert np.abs(last[0] - last[1]).max() > 1e-3 and np.abs(last[1] - last[2]).max() > 1e-3


def test_broyden_solves_a_linear_map_in_2n_steps():
    """Gay's theorem: with enough memory, at most 2n steps on a linear map."""
    rng = np.random.default_rng(4)
    n = 3
    a = rng.standard_normal((n, n))
    a *= 1.7 / np.linalg.norm(a, 2)
    b = rng.standard_normal(n)
    at, bt = torch.tensor(a, dtype=DT), torch.tensor(b, dtype=DT)
    solver = fp.Broyden(memory=20, line_search=False, atol=1e-10, rtol=0.0, max_iter=2 * n)
    sol = solver.iterate(lambda z: z @ at.T + bt, torch.zeros(1, n, dtype=DT))
    assert bool(sol.converged[0])
    np.testing.assert_allclose(sol.value[0].numpy(), np.linalg.solve(np.eye(n) - a, b), atol=1e-9)


BROYDEN_SEARCH = [
    dict(memory=20, nonmonotone=5, max_backtracks=10),  # the defaults
    dict(memory=20, nonmonotone=1, max_backtracks=10),
    dict(memory=20, nonmonotone=3, max_backtracks=10),
    dict(memory=20, nonmonotone=5, max_backtracks=2),
    dict(memory=3, nonmonotone=5, max_backtracks=10),
]


def broyden_search_reference(options, steps):
    a, b = ref.tanh_problem(4, seed=0, radius=4.0)
    f = ref.tanh_map(a, b)
    zs = ref.broyden(
        f,
        np.zeros(4),
        options["memory"],
        steps,
        line_search_on=True,
        nonmonotone=options["nonmonotone"],
        max_backtracks=options["max_backtracks"],
    )
    return a, b, zs, [ref.norm(f(z) - z) for z in zs]


@pytest.mark.parametrize("options", BROYDEN_SEARCH, ids=lambda o: "-".join(map(str, o.values())))
def test_broyden_line_search_matches_reference(options):
    """The non-monotone safeguarded line search, iterate by iterate (through the residual
    trace: the evaluations include rejected trials)."""
    steps = 8
    a, b, zs, residuals = broyden_search_reference(options, steps)
    solver = fp.Broyden(line_search=True, max_iter=steps, **options, **NONSTOP)
    sol = solver.iterate(torch_map(a, b), torch.zeros(1, 4, dtype=DT))
    # rtol 1e-6: on this expanding map (radius 4) eight quasi-Newton steps amplify round-off
    # (the small systems are summed in another order); a wrong rule is off by far more.
    np.testing.assert_allclose(sol.trace[:, 0].numpy(), residuals, rtol=1e-6)
    best = int(np.argmin(residuals))
    np.testing.assert_allclose(sol.value[0].numpy(), zs[best], rtol=1e-6, atol=1e-10)


def test_broyden_line_search_options_change_the_reference():
    """Each variant changes one option of the defaults, and its reference trace differs."""
    base, *others = (broyden_search_reference(o, 8)[3] for o in BROYDEN_SEARCH)
    for i, trace in enumerate(others):
        assert np.abs(np.subtract(trace, base)).max() > 1e-6, BROYDEN_SEARCH[i + 1]


# --------------------------------------------------------------------------- Newton–Krylov

NK_CASES = [
    dict(),
    dict(eta=0.3),
    dict(eta=0.05),
    dict(eta_max=0.4),
    dict(inner_max_iter=2),
    # The floor 0.5·(atol + rtol·s)/‖g‖ binds at the fourth step (and changes it) here:
    dict(atol=0.0, rtol=0.1, relative_to="initial"),
    dict(atol=0.0, rtol=0.15, relative_to="state"),
    dict(atol=0.2, rtol=0.0),
    # ... and passes eta_max = 0.2 at the second step, where eta_max caps it:
    dict(eta_max=0.2, atol=0.5, rtol=0.0),
]


def nk_reference(options, steps):
    a, b = nk_problem()
    tol = dict(atol=0.0, rtol=0.0) | {k: options[k] for k in ("atol", "rtol") if k in options}
    return ref.newton_krylov(
        ref.tanh_map(a, b),
        ref.tanh_jacobian(a),
        np.zeros(6),
        steps,
        eta=options.get("eta"),
        eta_max=options.get("eta_max", 0.9),
        inner_max_iter=options.get("inner_max_iter", 30),
        relative_to=options.get("relative_to", "state"),
        **tol,
    )


def nk_problem():
    """GMRES needs 1, 2, 3 and 4 products in the first four Newton steps."""
    return ref.tanh_problem(6, seed=4, radius=3.0)


@pytest.mark.parametrize(
    "options", NK_CASES, ids=lambda o: ",".join(f"{k}={v}" for k, v in o.items()) or "default"
)
def test_newton_krylov_matches_reference(options):
    """Full Newton steps with GMRES to the forcing term (adaptive, constant, capped, with the
    floor of half the stopping tolerance), from zero; the cases with a tolerance stop at it."""
    a, b = nk_problem()
    steps = 5
    expected = nk_reference(options, steps)
    solver = fp.NewtonKrylov(line_search=False, max_iter=steps, **(NONSTOP | options))
    sol, points = run_recorded(solver, torch_map(a, b), torch.zeros(1, 6, dtype=DT))
    taken = int(sol.iterations[0])
    assert taken >= 2
    assert_iterates(points, expected[: taken + 1])


def test_newton_krylov_options_change_the_reference():
    base, *others = (nk_reference(o, 4) for o in NK_CASES)
    for options, run in zip(NK_CASES[1:], others, strict=True):
        assert max(np.abs(x - y).max() for x, y in zip(run, base, strict=True)) > 1e-8, options


LINE_SEARCH = [
    dict(line_search=False),
    dict(nonmonotone=1, max_backtracks=1),
    dict(nonmonotone=1, max_backtracks=2),
    dict(nonmonotone=1, max_backtracks=10),
    dict(nonmonotone=2, max_backtracks=10),
    dict(nonmonotone=5, max_backtracks=10),
]


def nk_search_reference(options, steps):
    a, b = ref.tanh_problem(6, seed=6, radius=2.0)
    f = ref.tanh_map(a, b)
    zs = ref.newton_krylov(
        f,
        ref.tanh_jacobian(a),
        np.zeros(6),
        steps,
        line_search_on=options.get("line_search", True),
        nonmonotone=options.get("nonmonotone", 5),
        max_backtracks=options.get("max_backtracks", 10),
    )
    return a, b, [ref.norm(f(z) - z) for z in zs]


@pytest.mark.parametrize("options", LINE_SEARCH, ids=lambda o: ",".join(map(str, o.values())))
def test_newton_krylov_line_search_matches_reference(options):
    """Newton's third full step raises the residual tenfold: ``line_search=False`` takes it,
    the searches cut it (each in at most ``max_backtracks`` evaluations)."""
    steps = 4
    a, b, residuals = nk_search_reference(options, steps)
    solver = fp.NewtonKrylov(max_iter=steps, **options, **NONSTOP)
    sol = solver.iterate(torch_map(a, b), torch.zeros(1, 6, dtype=DT))
    np.testing.assert_allclose(sol.trace[:, 0].numpy(), residuals, rtol=1e-8)


def test_newton_krylov_line_search_options_change_the_reference():
    full, nm1_mb1, nm1_mb2, nm1, nm2, nm5 = (nk_search_reference(o, 4)[2] for o in LINE_SEARCH)
    assert max(full) > 10 * full[0]
    for x, y in [(nm1_mb1, nm1_mb2), (nm1_mb2, nm1), (nm1, nm2), (nm2, nm5), (nm1, nm5)]:
        assert np.abs(np.subtract(x, y)).max() > 1e-6


# --------------------------------------------------------------------------- estimators


def products(j: np.ndarray):
    """Row-wise ``vjp(v) = Jᵀv`` and ``jvp(v) = Jv`` for ``(B, n)`` rows, with call counters."""
    jt = torch.tensor(j, dtype=DT)
    calls = {"vjp": 0, "jvp": 0}

    def vjp(v):
        calls["vjp"] += 1
        return v @ jt

    def jvp(v):
        calls["jvp"] += 1
        return v @ jt.T

    return vjp, jvp, calls


def test_jfb_returns_g():
    g = torch.tensor(ref.g_vector(5, 0), dtype=DT)[None]
    assert torch.equal(fp.JFB()(g, vjp=None, jvp=None), g)


@pytest.mark.parametrize("k", [0, 1, 3, 6])
def test_neumann_is_the_explicit_sum(k):
    j = ref.jacobian(5, seed=0, radius=0.8)
    g = ref.g_vector(5, 0)
    expected = sum(np.linalg.matrix_power(j.T, i) @ g for i in range(k + 1))
    vjp, jvp, calls = products(j)
    w = fp.Neumann(k=k)(torch.tensor(g, dtype=DT)[None], vjp, jvp)
    np.testing.assert_allclose(w[0].numpy(), expected, rtol=1e-12, atol=1e-12)
    assert calls == {"vjp": k, "jvp": 0}


@pytest.mark.parametrize(("k", "damping"), [(1, 0.3), (4, 0.3), (5, 0.8), (3, 1.0), (6, 0.15)])
def test_phantom_matches_its_formula(k, damping):
    """``w = λ Σ_{i<k} ((1 − λ)I + λJᵀ)^i g``."""
    j = ref.jacobian(5, seed=1, radius=0.8)
    g = ref.g_vector(5, 1)
    step = (1 - damping) * np.eye(5) + damping * j.T
    expected = damping * sum(np.linalg.matrix_power(step, i) @ g for i in range(k))
    vjp, jvp, calls = products(j)
    w = fp.Phantom(k=k, damping=damping)(torch.tensor(g, dtype=DT)[None], vjp, jvp)
    np.testing.assert_allclose(w[0].numpy(), expected, rtol=1e-12, atol=1e-12)
    assert calls == {"vjp": k - 1, "jvp": 0}


def test_exact_solves_the_dense_system():
    j = ref.jacobian(5, seed=2, radius=1.6)  # not a contraction: Exact does not care
    g = ref.g_vector(5, 2)
    vjp, jvp, _ = products(j)
    est = fp.Exact()(torch.tensor(g, dtype=DT)[None], vjp, jvp)
    np.testing.assert_allclose(est.w[0].numpy(), np.linalg.solve(np.eye(5) - j.T, g), rtol=1e-10)


@pytest.mark.parametrize("damping", [1.0, 0.3])
def test_implicit_with_picard_is_the_damped_adjoint_iteration(damping):
    """``w ↦ Jᵀw + g`` from ``w₀ = g``; with damping 1 and ``max_iter = k`` it is Neumann(k)."""
    j = ref.jacobian(5, seed=3, radius=0.7)
    g = ref.g_vector(5, 3)
    steps = 5
    expected = ref.picard(lambda w: j.T @ w + g, g, damping, steps)[-1]
    vjp, jvp, calls = products(j)
    solver = fp.Picard(damping=damping, max_iter=steps, **NONSTOP)
    est = fp.Implicit(solver, warn=False)(torch.tensor(g, dtype=DT)[None], vjp, jvp)
    np.testing.assert_allclose(est.w[0].numpy(), expected, rtol=1e-11)
    assert est.iterations == steps and calls["vjp"] == steps + 1
    if damping == 1.0:
        neumann = fp.Neumann(k=steps)(torch.tensor(g, dtype=DT)[None], vjp, jvp)
        torch.testing.assert_close(est.w, neumann)


def test_implicit_passes_its_solvers_options():
    j = ref.jacobian(5, seed=4, radius=0.9)
    g = ref.g_vector(5, 4)
    expected = ref.anderson(lambda w: j.T @ w + g, g, 2, 0.7, 0.05, 4)
    residuals = [ref.norm(j.T @ w + g - w) for w in expected]
    vjp, jvp, _ = products(j)
    solver = fp.Anderson(m=2, beta=0.7, lam=0.05, max_iter=4, **NONSTOP)
    est = fp.Implicit(solver, warn=False)(torch.tensor(g, dtype=DT)[None], vjp, jvp)
    best = int(np.argmin(residuals))
    np.testing.assert_allclose(est.w[0].numpy(), expected[best], rtol=1e-10)


def krylov_system(kind: str):
    """``J``, ``g`` and ``A = I − Jᵀ`` for the Krylov estimators."""
    if kind == "symmetric":
        j = ref.jacobian(8, seed=5, radius=0.9, symmetric=True)
    else:
        j = ref.jacobian(8, seed=6, radius=1.3)
    return j, ref.g_vector(8, 5), np.eye(8) - j.T


@pytest.mark.parametrize("w0", ["g", "zero"])
@pytest.mark.parametrize("symmetric", [True, False])
def test_cg_iterates_match_reference(symmetric, w0):
    """``symmetric=True``: plain CG on ``(I − Jᵀ)w = g`` (no jvp); default: CGLS. Three
    iterations from ``w0``, compared with the best of the reference iterates."""
    j, g, a = krylov_system("symmetric" if symmetric else "general")
    x0 = g if w0 == "g" else np.zeros_like(g)
    steps = 3
    xs = (ref.cg_iterates if symmetric else ref.cgls_iterates)(a, g, x0, steps)
    residuals = [ref.norm(g - a @ x) for x in xs]
    vjp, jvp, calls = products(j)
    est = fp.CG(symmetric=symmetric, w0=w0, max_iter=steps, warn=False, **NONSTOP)(
        torch.tensor(g, dtype=DT)[None], vjp, jvp
    )
    np.testing.assert_allclose(est.w[0].numpy(), xs[int(np.argmin(residuals))], rtol=1e-9)
    assert est.iterations == steps
    start = 1 if w0 == "g" else 0  # the residual of w0 = g costs one product with A
    if symmetric:
        assert calls == {"vjp": steps + start, "jvp": 0}
    else:
        assert calls == {"vjp": steps + start, "jvp": steps}


def test_cg_symmetric_and_cgls_differ_on_this_system():
    _, g, a = krylov_system("symmetric")
    cg = ref.cg_iterates(a, g, g, 3)[-1]
    cgls = ref.cgls_iterates(a, g, g, 3)[-1]
    assert np.abs(cg - cgls).max() > 1e-3


@pytest.mark.parametrize("w0", ["g", "zero"])
@pytest.mark.parametrize(("restart", "max_iter"), [(2, 5), (3, 7), (20, 4)])
def test_gmres_restart_and_start_match_reference(restart, max_iter, w0):
    j, g, a = krylov_system("general")
    x0 = g if w0 == "g" else np.zeros_like(g)
    expected, used = ref.gmres(a, g, x0, tol=0.0, max_iter=max_iter, restart=restart)
    assert used == max_iter
    vjp, jvp, calls = products(j)
    est = fp.GMRES(restart=restart, w0=w0, max_iter=max_iter, warn=False, **NONSTOP)(
        torch.tensor(g, dtype=DT)[None], vjp, jvp
    )
    np.testing.assert_allclose(est.w[0].numpy(), expected, rtol=1e-9)
    assert est.iterations == max_iter and calls["jvp"] == 0


def test_gmres_restart_changes_the_reference():
    _, g, a = krylov_system("general")
    short = ref.gmres(a, g, g, 0.0, 6, restart=2)[0]
    full = ref.gmres(a, g, g, 0.0, 6, restart=20)[0]
    assert np.abs(short - full).max() > 1e-3


@pytest.mark.parametrize("w0", ["g", "zero"])
@pytest.mark.parametrize("max_iter", [1, 3])
def test_bicgstab_matches_reference(max_iter, w0):
    j, g, a = krylov_system("general")
    x0 = g if w0 == "g" else np.zeros_like(g)
    expected, _, _ = ref.bicgstab(a, g, x0, tol=0.0, max_iter=max_iter)
    vjp, jvp, calls = products(j)
    est = fp.BiCGStab(w0=w0, max_iter=max_iter, warn=False, **NONSTOP)(
        torch.tensor(g, dtype=DT)[None], vjp, jvp
    )
    np.testing.assert_allclose(est.w[0].numpy(), expected, rtol=1e-9)
    assert est.iterations == max_iter and calls["jvp"] == 0


@pytest.mark.parametrize(
    "make",
    [
        lambda warn: fp.CG(max_iter=1, warn=warn),
        lambda warn: fp.CG(max_iter=1, symmetric=True, warn=warn),
        lambda warn: fp.GMRES(max_iter=1, warn=warn),
        lambda warn: fp.BiCGStab(max_iter=1, warn=warn),
        lambda warn: fp.Implicit(fp.Picard(max_iter=1), warn=warn),
    ],
    ids=["CG", "CG-symmetric", "GMRES", "BiCGStab", "Implicit"],
)
def test_warn_option(make):
    j, g, _ = krylov_system("symmetric")
    vjp, jvp, _ = products(j)
    gt = torch.tensor(g, dtype=DT)[None]
    with pytest.warns(fp.ConvergenceWarning):
        est = make(True)(gt, vjp, jvp)
    assert not bool(est.converged[0])
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        make(False)(gt, vjp, jvp)


# --------------------------------------------------------------------------- autocast


class AutocastProbe:
    """A map that records the autocast state at each evaluation, and a norm that records it
    during the solver's own arithmetic."""

    def __init__(self) -> None:
        torch.manual_seed(0)
        self.lin = torch.nn.Linear(6, 6)
        with torch.no_grad():
            self.lin.weight.mul_(0.5 / torch.linalg.matrix_norm(self.lin.weight, 2))
        self.in_f: list[tuple[bool, torch.dtype, torch.dtype]] = []
        self.in_norm: list[bool] = []

    def f(self, z: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        h = self.lin(z)
        self.in_f.append(
            (torch.is_autocast_enabled("cpu"), torch.get_autocast_dtype("cpu"), h.dtype)
        )
        return torch.tanh(h) + x

    def norm(self, r: torch.Tensor) -> torch.Tensor:
        self.in_norm.append(torch.is_autocast_enabled("cpu"))
        assert r.dtype == torch.float32
        return torch.linalg.vector_norm(r, dim=-1)


SOLVERS = [
    fp.Picard(damping=0.7, atol=0.05, rtol=0.0),
    fp.Anderson(m=2, beta=0.7, atol=0.05, rtol=0.0),
    fp.Broyden(memory=3, atol=0.05, rtol=0.0),
    fp.NewtonKrylov(atol=0.05, rtol=0.0),
]


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("solver", SOLVERS, ids=lambda s: type(s).__name__)
def test_f_runs_under_the_callers_autocast_and_the_solver_does_not(solver, dtype):
    probe = AutocastProbe()
    solver = dataclasses.replace(solver, norm=probe.norm)
    x = torch.randn(3, 6)
    with torch.autocast("cpu", dtype=dtype):
        sol = fp.solve(probe.f, torch.zeros(3, 6), x, solver=solver, batched=True)
    assert all(s == "converged" for s in sol.status)
    assert sol.value.dtype == torch.float32
    assert len(probe.in_f) == int(sol.fevals.max()) or type(solver) is fp.NewtonKrylov
    assert probe.in_f and all(on and d == dtype and out == dtype for on, d, out in probe.in_f)
    assert probe.in_norm and not any(probe.in_norm)


def test_without_autocast_f_runs_in_full_precision():
    probe = AutocastProbe()
    fp.solve(probe.f, torch.zeros(3, 6), torch.randn(3, 6), solver=fp.Anderson(), batched=True)
    assert probe.in_f and all(not on and out == torch.float32 for on, _, out in probe.in_f)


class RecordingEstimator(fp.Estimator):
    """JFB that records whether autocast is on while the estimator runs."""

    seen: list[bool]

    def __init__(self) -> None:
        object.__setattr__(self, "seen", [])

    def __call__(self, g, vjp, jvp):
        self.seen.append(torch.is_autocast_enabled("cpu"))
        return g + vjp(g)


def test_fixed_point_evaluates_f_under_autocast_and_estimates_without_it():
    probe = AutocastProbe()
    x = torch.randn(3, 6, requires_grad=True)
    estimator = RecordingEstimator()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        z = fp.fixed_point(
            probe.f,
            torch.zeros(3, 6),
            x,
            solver=fp.Anderson(m=2, beta=0.7, atol=0.05, rtol=0.0, norm=probe.norm),
            estimator=estimator,
            batched=True,
        )
        z.square().sum().backward()
    assert probe.in_f and all(on and d == torch.bfloat16 for on, d, _ in probe.in_f)
    assert probe.in_norm and not any(probe.in_norm)
    assert estimator.seen == [False]
    assert z.dtype == torch.float32 and x.grad.dtype == torch.float32
    assert math.isfinite(float(x.grad.abs().sum()))
