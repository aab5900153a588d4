"""Every stopping rule stops at the exact iteration where it first holds, not one step earlier
or later.

The iteration is computed independently: from the reference iterates of tests/reference.py
the residuals (and scales) are known, and the tolerances are *designed* from them so that the
rule first holds at a chosen step with a margin of 5 % either side (robust to round-off), and
so that every plausible misreading of the rule (ignoring ``rtol`` or ``atol``, the wrong scale
for ``rtol``, CGLS stopping on ‖Aᵀr‖, divergence measured against the start) first holds at a
different step. A design that cannot separate them fails loudly.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from functools import cache

import numpy as np
import pytest
import torch

import fixpoint as fp
from fixpoint import linalg
from tests import reference as ref

DT = torch.float64
MARGIN = 1.05


def torch_map(a: np.ndarray, b: np.ndarray):
    at, bt = torch.tensor(a, dtype=DT), torch.tensor(b, dtype=DT)
    return lambda z: torch.tanh(z) @ at.T + bt


def first_stop(ratios: list[float], forced: bool = False) -> int | None:
    """The first ``k`` with ``ratio ≤ 1`` (``k ≥ 1`` when a first step is forced)."""
    for k, q in enumerate(ratios):
        if q <= 1 and not (forced and k == 0):
            return k
    return None


def separated(ratios: list[float], k: int) -> bool:
    """``ratios[k] ≤ 1/MARGIN`` and every earlier one ``≥ MARGIN``: the stop at ``k`` is robust."""
    return ratios[k] * MARGIN <= 1 and all(q >= MARGIN for q in ratios[:k])


# --------------------------------------------------------------------------- forward solvers


@cache
def forward_reference(kind: str, atol: float = 0.0, rtol: float = 0.0, relative_to: str = "state"):
    """``(iterates, residual norms)`` of each solver on ``A tanh(z) + b`` from ``Z0``. Only
    Newton–Krylov depends on the tolerances (its forcing-term floor)."""
    a, b = ref.tanh_problem(4, seed=0, radius=0.9)
    f, z0 = ref.tanh_map(a, b), Z0
    if kind == "Picard":
        zs = ref.picard(f, z0, 0.7, 60)
    elif kind == "Anderson":
        zs = ref.anderson(f, z0, 2, 0.7, 0.05, 25)
    elif kind == "Broyden":
        zs = ref.broyden(f, z0, 3, 15)
    else:
        zs = ref.newton_krylov(
            f, ref.tanh_jacobian(a), z0, 6, atol=atol, rtol=rtol, relative_to=relative_to
        )
    return zs, [ref.norm(f(z) - z) for z in zs]


def forward_start() -> np.ndarray:
    """Far from the fixed point ``z*`` (``‖z*‖ ≈ 1.2``): ``z₀ = 4z*``, so that ``‖z_k‖`` falls from
    4.8 to 1.2 and the initial residual (≈ 3.6) is another scale again."""
    a, b = ref.tanh_problem(4, seed=0, radius=0.9)
    return 4 * ref.picard(ref.tanh_map(a, b), np.zeros(4), 1.0, 400)[-1]


Z0 = forward_start()


def make_solver(kind: str, **options) -> fp.Solver:
    if kind == "Picard":
        return fp.Picard(damping=0.7, **options)
    if kind == "Anderson":
        return fp.Anderson(m=2, beta=0.7, lam=0.05, **options)
    if kind == "Broyden":
        return fp.Broyden(memory=3, line_search=False, **options)
    return fp.NewtonKrylov(line_search=False, **options)


def threshold_ratios(r, s, r0, atol, rtol, relative_to, start=None):
    """``r_k / (atol + rtol·scale_k)``; ``start`` replaces the initial residual (a misreading)."""
    r0 = r0 if start is None else start
    scale = [r0] * len(r) if relative_to == "initial" else s
    thresholds = [atol + rtol * sk for sk in scale]
    return [rk / t if t > 0 else math.inf for rk, t in zip(r, thresholds, strict=True)]


def design(kind: str, rule: str) -> tuple[dict, int]:
    """Tolerances for ``rule`` and the step where the solver must stop (see the module doc)."""
    zs, r = forward_reference(kind)
    s = [ref.norm(z) for z in zs]
    relative_to = "initial" if rule.endswith("initial") else "state"
    other = "state" if relative_to == "initial" else "initial"
    for k in [*range(3, len(r) - 1), 2, 1]:  # a late stop if possible
        scale = r[0] if relative_to == "initial" else s[k]
        if rule == "atol":
            candidates = [dict(atol=1.2 * r[k], rtol=0.0)]
        elif rule.startswith("rtol"):
            candidates = [dict(atol=0.0, rtol=1.2 * r[k] / scale)]
        else:  # both: neither part alone is enough at step k
            candidates = [
                dict(atol=w * 1.2 * r[k], rtol=(1 - w) * 1.2 * r[k] / scale)
                for w in (0.5, 0.3, 0.7, 0.8)
            ]
        for opts in candidates:
            opts["relative_to"] = relative_to
            zs_k, r_k = forward_reference(kind, **opts)  # Newton–Krylov's floor follows the stop
            s_k = [ref.norm(z) for z in zs_k]
            ratios = threshold_ratios(r_k, s_k, r_k[0], **opts)
            if first_stop(ratios) != k or not separated(ratios, k):
                continue
            misreadings = []
            if opts["rtol"] > 0:
                misreadings.append(dict(opts, relative_to=other))
                if relative_to == "state":  # the scale of the start, not of the current iterate
                    misreadings.append(dict(opts, relative_to="initial", start=s_k[0]))
                if opts["atol"] > 0:
                    misreadings += [dict(opts, rtol=0.0), dict(opts, atol=0.0)]
            if all(first_stop(threshold_ratios(r_k, s_k, r_k[0], **m)) != k for m in misreadings):
                return opts, k
    raise AssertionError(f"no separating design for {kind}, {rule}")


SOLVER_KINDS = ["Picard", "Anderson", "Broyden", "NewtonKrylov"]
RULES = ["atol", "rtol-state", "rtol-initial", "both-state", "both-initial"]


@pytest.mark.parametrize("rule", RULES)
@pytest.mark.parametrize("kind", SOLVER_KINDS)
def test_solver_stops_at_the_first_step_that_meets_the_rule(kind, rule):
    opts, k = design(kind, rule)
    zs, r = forward_reference(kind, **opts)
    sol = make_solver(kind, max_iter=50, **opts).iterate(
        torch_map(*ref.tanh_problem(4, seed=0, radius=0.9)), torch.tensor(Z0, dtype=DT)[None]
    )
    assert sol.status == (fp.Status.CONVERGED,)
    assert int(sol.iterations[0]) == k
    np.testing.assert_allclose(sol.trace[:, 0].numpy(), r[: k + 1], rtol=1e-8)
    best = int(np.argmin(r[: k + 1]))
    np.testing.assert_allclose(sol.value[0].numpy(), zs[best], rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(float(sol.residual[0]), r[best], rtol=1e-8)
    if kind != "NewtonKrylov":  # its Jacobian–vector products are evaluations too
        assert int(sol.fevals[0]) == k + 1


def test_solve_at_the_start_takes_no_step():
    """A start that meets the tolerance is returned after one evaluation, unchanged."""
    sol = fp.solve(lambda z: 0.5 * z + 1.0, torch.full((3,), 2.0, dtype=DT), solver=fp.Picard())
    assert sol.status == "converged" and int(sol.iterations) == 0 and int(sol.fevals) == 1


@pytest.mark.parametrize("kind", ["Picard", "Anderson"])
def test_max_iter_is_the_exact_number_of_steps(kind):
    """With the tolerance first met at step k: ``max_iter = k`` converges there,
    ``max_iter = k − 1`` stops one step short with status ``max_iter``."""
    opts, k = design(kind, "atol")
    zs, r = forward_reference(kind)
    f = torch_map(*ref.tanh_problem(4, seed=0, radius=0.9))
    z0 = torch.tensor(Z0, dtype=DT)[None]
    sol = make_solver(kind, max_iter=k, **opts).iterate(f, z0)
    assert sol.status == (fp.Status.CONVERGED,) and int(sol.iterations[0]) == k
    sol = make_solver(kind, max_iter=k - 1, **opts).iterate(f, z0)
    assert sol.status == (fp.Status.MAX_ITER,)
    assert int(sol.iterations[0]) == k - 1 and int(sol.fevals[0]) == k
    assert sol.trace.shape == (k, 1)
    best = int(np.argmin(r[:k]))
    np.testing.assert_allclose(sol.value[0].numpy(), zs[best], rtol=1e-9)


def test_batch_rows_stop_at_their_own_step():
    """Three independent linear contractions (rates 0.3, 0.6, 0.85): each row stops where its
    own residual ``rate^k·|c|`` first meets ``atol``, and then stops changing."""
    rates = np.array([0.3, 0.6, 0.85])
    shift = np.array([1.0, 2.0, 0.5])
    atol = 1e-4
    expected = [
        int(np.ceil(np.log(atol / c) / np.log(q))) for q, c in zip(rates, shift, strict=True)
    ]
    for q, c, k in zip(rates, shift, expected, strict=True):
        assert c * q ** (k - 1) > atol * MARGIN and c * q**k * MARGIN < atol
    rate_t = torch.tensor(rates, dtype=DT)[:, None]
    shift_t = torch.tensor(shift, dtype=DT)[:, None]
    sol = fp.solve(
        lambda z: rate_t * z + shift_t,
        torch.zeros(3, 2, dtype=DT),
        solver=fp.Picard(atol=atol * math.sqrt(2), rtol=0.0, max_iter=100),
        batched=True,
    )
    assert sol.iterations.tolist() == expected
    assert all(s == "converged" for s in sol.status)
    for row, k in enumerate(expected):
        assert torch.all(sol.trace[k:, row] == sol.trace[k, row])


@pytest.mark.parametrize("divergence", [5.5, 20.0, 300.0])
def test_divergence_stops_where_the_residual_passes_the_factor_times_the_best(divergence):
    """Picard on ``diag(0.1, 3)`` from ``b = (1, 10⁻⁴)``: the residual ``(0.1ᵏ, 10⁻⁴·3ᵏ)`` falls
    for three steps, then grows. It stops at the first ``k`` with
    ``r_k > divergence · min_{j≤k} r_j``; measured against ``r_0`` it would stop much later."""
    a = np.diag([0.1, 3.0])
    b = np.array([1.0, 1e-4])
    zs = ref.picard(lambda z: a @ z + b, np.zeros(2), 1.0, 40)
    r = [ref.norm(a @ z + b - z) for z in zs]
    best = np.minimum.accumulate(r)
    k = next(i for i in range(len(r)) if r[i] > divergence * best[i])
    assert r[k] > MARGIN * divergence * best[k] and r[k - 1] * MARGIN < divergence * best[k - 1]
    against_start = next(i for i in range(len(r)) if r[i] > divergence * r[0])
    assert against_start > k + 1
    at, bt = torch.tensor(a, dtype=DT), torch.tensor(b, dtype=DT)
    sol = fp.Picard(atol=0.0, rtol=0.0, max_iter=60, divergence=divergence).iterate(
        lambda z: z @ at.T + bt, torch.zeros(1, 2, dtype=DT)
    )
    assert sol.status == (fp.Status.DIVERGED,) and int(sol.iterations[0]) == k
    lowest = int(np.argmin(r))
    np.testing.assert_allclose(sol.value[0].numpy(), zs[lowest], rtol=1e-12)
    np.testing.assert_allclose(float(sol.residual[0]), r[lowest], rtol=1e-10)


def test_infinite_divergence_disables_the_check():
    a, b = torch.diag(torch.tensor([0.1, 3.0], dtype=DT)), torch.tensor([1.0, 1e-4], dtype=DT)
    sol = fp.Picard(atol=0.0, rtol=0.0, max_iter=25, divergence=math.inf).iterate(
        lambda z: z @ a.T + b, torch.zeros(1, 2, dtype=DT)
    )
    assert sol.status == (fp.Status.MAX_ITER,) and int(sol.iterations[0]) == 25


def test_nonfinite_stops_at_the_first_nonfinite_residual():
    """``z ↦ 1.3z + 1`` from 0, NaN once ``z > 10``: ``z_k = (1.3ᵏ − 1)/0.3`` passes 10 at
    ``k = 6``; the returned iterate is the best finite one (the start)."""

    def f(z):
        return torch.where(z > 10, torch.nan, 1.3 * z + 1)

    sol = fp.Picard(atol=0.0, rtol=0.0, max_iter=50).iterate(f, torch.zeros(1, 3, dtype=DT))
    assert sol.status == (fp.Status.NONFINITE,) and int(sol.iterations[0]) == 6
    assert torch.equal(sol.value, torch.zeros(1, 3, dtype=DT))


@pytest.mark.parametrize("rule", ["atol", "rtol-state"])
def test_custom_norm_decides_the_stop_and_the_scale(rule):
    """``norm`` = the largest entry, on an unbatched ``(2, 3)`` state: the rule is applied to
    that norm of the residual (and of ``z`` for ``rtol``). The 2-norm of the residual, or (for
    ``rtol``) of the state alone, would stop at a different step."""
    rng = np.random.default_rng(11)
    a = rng.standard_normal((6, 6))
    a *= 0.8 / np.linalg.norm(a, 2)
    b = rng.standard_normal(6) * np.array([1, 1, 1, 1, 1, 8.0])
    design = None
    for damping in (0.2, 0.5, 0.7):
        zs = ref.picard(lambda z: a @ np.tanh(z) + b, np.zeros(6), damping, 120)
        res = [a @ np.tanh(z) + b - z for z in zs]
        inf_r = [float(np.abs(x).max()) for x in res]
        two_r = [ref.norm(x) for x in res]
        inf_s = [float(np.abs(z).max()) for z in zs]
        two_s = [ref.norm(z) for z in zs]
        for k in range(2, 40):
            if rule == "atol":
                opts = dict(atol=1.2 * inf_r[k], rtol=0.0)
                ratios = [x / opts["atol"] for x in inf_r]
                wrong = [[x / opts["atol"] for x in two_r]]
            else:
                opts = dict(atol=0.0, rtol=1.2 * inf_r[k] / inf_s[k])
                ratios = threshold_ratios(inf_r, inf_s, None, **opts, relative_to="state")
                wrong = [  # the 2-norm for the residual, or for the scale
                    threshold_ratios(r, z, None, **opts, relative_to="state")
                    for r, z in [(two_r, inf_s), (inf_r, two_s)]
                ]
            if first_stop(ratios) == k and separated(ratios, k):
                if all(first_stop(w) != k for w in wrong):
                    design = damping, opts, k, inf_r
                    break
        if design is not None:
            break
    assert design is not None, "no separating design"
    damping, opts, k, inf_r = design
    at, bt = torch.tensor(a, dtype=DT), torch.tensor(b, dtype=DT)
    seen = []

    def max_entry(x):
        seen.append(tuple(x.shape))
        return x.abs().amax()

    sol = fp.solve(
        lambda z: (at @ torch.tanh(z.reshape(6)) + bt).reshape(2, 3),
        torch.zeros(2, 3, dtype=DT),
        solver=fp.Picard(damping=damping, max_iter=200, norm=max_entry, **opts),
    )
    assert sol.status == "converged" and int(sol.iterations) == k
    np.testing.assert_allclose(sol.trace.numpy(), inf_r[: k + 1], rtol=1e-9)
    assert set(seen) == {(2, 3)}


# --------------------------------------------------------------------------- Krylov solvers


def spd_system():
    j = ref.jacobian(8, seed=5, radius=0.9, symmetric=True)
    return np.eye(8) - j.T, ref.g_vector(8, 5)


def general_system():
    j = ref.jacobian(8, seed=6, radius=1.3)
    return np.eye(8) - j.T, ref.g_vector(8, 5)


def projection_stop(iterates) -> Callable[[np.ndarray, np.ndarray, np.ndarray, float], int | None]:
    """The stop of a Krylov method whose iterates are known: first ``k`` with ``‖b − Ax_k‖ ≤
    tol`` (a first step forced from zero), or None within 8 steps."""

    def stop(a, b, x0, tol):
        xs = iterates(a, b, x0, 8)
        ratios = [ref.norm(b - a @ x) / tol for x in xs]
        return first_stop(ratios, forced=not x0.any())

    return stop


def gmres_stop(restart):
    return lambda a, b, x0, tol: ref.gmres(a, b, x0, tol, 8, restart)[1]


def bicgstab_stop(a, b, x0, tol):
    x, k, _ = ref.bicgstab(a, b, x0, tol, 8)
    return k if ref.norm(b - a @ x) <= tol else None


KRYLOV = {
    "cg": (spd_system, projection_stop(ref.cg_iterates)),
    "cgls": (general_system, projection_stop(ref.cgls_iterates)),
    "gmres": (general_system, gmres_stop(20)),
    "gmres-restart3": (general_system, gmres_stop(3)),
    "bicgstab": (general_system, bicgstab_stop),
}


def krylov_design(name: str, x0: np.ndarray, extra=None) -> tuple[float, int]:
    """A tolerance ``tol`` at which the reference stops at a robust step ``k ≥ 2`` (the same at
    ``tol·1.05`` and ``tol/1.05``), and at a different step with ``tol/2`` (half of a split
    ``atol + rtol·‖b‖``) and with ``tol·‖r_0‖/‖b‖`` (rtol scaled by the start's residual)."""
    system, stop = KRYLOV[name]
    a, b = system()
    r0 = ref.norm(b - a @ x0)
    for c in range(1, 60):
        tol = ref.norm(b) * 10 ** (-c / 6)
        k = stop(a, b, x0, tol)
        if k is None or k < 2:
            continue
        if stop(a, b, x0, tol * MARGIN) != k or stop(a, b, x0, tol / MARGIN) != k:
            continue
        if stop(a, b, x0, tol / 2) == k:
            continue
        if r0 != ref.norm(b) and stop(a, b, x0, tol * r0 / ref.norm(b)) == k:
            continue
        if extra is not None and not extra(a, b, x0, tol, k):
            continue
        return tol, k
    raise AssertionError(f"no separating design for {name}")


def split(rule: str, tol: float, b_norm: float) -> dict:
    if rule == "atol":
        return dict(atol=tol, rtol=0.0)
    if rule == "rtol":
        return dict(atol=0.0, rtol=tol / b_norm)
    return dict(atol=tol / 2, rtol=tol / 2 / b_norm)


def call_linalg(name, a, b, **options):
    at = torch.tensor(a, dtype=DT)
    bt = torch.tensor(b, dtype=DT)[None]
    matvec = lambda v: v @ at.T  # noqa: E731
    if name == "cg":
        return linalg.cg(matvec, bt, max_iter=8, **options)
    if name == "cgls":
        return linalg.cgls(matvec, lambda v: v @ at, bt, max_iter=8, **options)
    if name.startswith("gmres"):
        restart = 3 if name.endswith("3") else 20
        return linalg.gmres(matvec, bt, max_iter=8, restart=restart, **options)
    return linalg.bicgstab(matvec, bt, max_iter=8, **options)


def cgls_normal_residual_stops_elsewhere(a, b, x0, tol, k):
    """The design must tell ‖r‖ from ‖Aᵀr‖: stopping on the latter gives another step."""
    xs = ref.cgls_iterates(a, b, x0, 8)
    normal = [ref.norm(a.T @ (b - a @ x)) / tol for x in xs]
    return first_stop(normal, forced=True) != k


@pytest.mark.parametrize("rule", ["atol", "rtol", "both"])
@pytest.mark.parametrize("name", list(KRYLOV))
def test_krylov_solver_stops_at_the_exact_iteration(name, rule):
    a, b = KRYLOV[name][0]()
    x0 = np.zeros_like(b)
    extra = cgls_normal_residual_stops_elsewhere if name == "cgls" else None
    tol, k = krylov_design(name, x0, extra)
    result = call_linalg(name, a, b, **split(rule, tol, ref.norm(b)))
    assert result.iterations == k and bool(result.converged[0])
    x = result.x[0].numpy()
    assert ref.norm(b - a @ x) <= tol
    if name == "bicgstab":
        expected = ref.bicgstab(a, b, x0, tol, 8)[0]
    elif name.startswith("gmres"):
        expected = ref.gmres(a, b, x0, tol, 8, 3 if name.endswith("3") else 20)[0]
    else:
        iterates = ref.cg_iterates if name == "cg" else ref.cgls_iterates
        expected = iterates(a, b, x0, k)[k]
    np.testing.assert_allclose(x, expected, rtol=1e-8, atol=1e-10)


@pytest.mark.parametrize("name", ["cg", "cgls", "gmres", "bicgstab"])
def test_krylov_max_iter_boundary(name):
    """``max_iter = k`` converges at the designed step, ``max_iter = k − 1`` does not."""
    system, _ = KRYLOV[name]
    a, b = system()
    tol, k = krylov_design(name, np.zeros_like(b))
    at, bt = torch.tensor(a, dtype=DT), torch.tensor(b, dtype=DT)[None]
    matvec = lambda v: v @ at.T  # noqa: E731
    options = dict(atol=tol, rtol=0.0)
    run = {
        "cg": lambda m: linalg.cg(matvec, bt, max_iter=m, **options),
        "cgls": lambda m: linalg.cgls(matvec, lambda v: v @ at, bt, max_iter=m, **options),
        "gmres": lambda m: linalg.gmres(matvec, bt, max_iter=m, **options),
        "bicgstab": lambda m: linalg.bicgstab(matvec, bt, max_iter=m, **options),
    }[name]
    done, short = run(k), run(k - 1)
    assert done.iterations == k and bool(done.converged[0])
    assert short.iterations == k - 1 and not bool(short.converged[0])


def test_cgls_on_a_rectangular_system_stops_on_the_residual():
    """The docstring: CGLS "works for any square or rectangular A". A consistent 3×2 system
    from the default start ``x₀ = 0``: the residual vanishes after two steps."""
    a = np.array([[1.0, 2.0], [0.0, 1.0], [1.0, 1.0]])
    x_true = np.array([1.0, -2.0])
    at = torch.tensor(a, dtype=DT)
    b = torch.tensor(a @ x_true, dtype=DT)[None]
    result = linalg.cgls(lambda v: v @ at.T, lambda v: v @ at, b, atol=1e-10, rtol=0.0, max_iter=10)
    assert result.iterations == 2 and bool(result.converged[0])
    np.testing.assert_allclose(result.x[0].numpy(), x_true, atol=1e-9)


def test_bicgstab_stops_half_way_with_the_half_step_iterate():
    """A tolerance met by ``s = r − αv`` half-way through an iteration: the answer is
    ``x + αp``, without the stabilising step."""
    a, b = general_system()
    x0 = np.zeros_like(b)
    for c in range(1, 60):
        tol = ref.norm(b) * 10 ** (-c / 6)
        x, k, half = ref.bicgstab(a, b, x0, tol, 8)
        robust = all(
            ref.bicgstab(a, b, x0, t, 8)[1:] == (k, True) for t in (tol * MARGIN, tol / MARGIN)
        )
        if half and k >= 2 and robust:
            break
    else:
        raise AssertionError("no half-way stop")
    full = ref.bicgstab(a, b, x0, 0.0, k)[0]
    assert ref.norm(full - x) > 1e-6  # the stabilising step would move it
    result = call_linalg("bicgstab", a, b, atol=tol, rtol=0.0)
    assert result.iterations == k
    np.testing.assert_allclose(result.x[0].numpy(), x, rtol=1e-8)


def test_gmres_per_row_tolerances_stop_each_row_at_its_own_step():
    """``rtol`` as a ``(B,)`` tensor: two copies of one system, two tolerances, two stops; the
    first row keeps the iterate where it stopped while the second goes on."""
    a, b = general_system()
    x0 = np.zeros_like(b)
    tol, k = krylov_design("gmres", x0)
    loose = None
    for candidate in np.geomspace(tol, ref.norm(b), 200)[1:]:
        kk = ref.gmres(a, b, x0, candidate, 8, 20)[1]
        if 1 <= kk < k and all(
            ref.gmres(a, b, x0, t, 8, 20)[1] == kk for t in (candidate * MARGIN, candidate / MARGIN)
        ):
            loose = (candidate, kk)
            break
    assert loose is not None
    at = torch.tensor(a, dtype=DT)
    bt = torch.tensor(b, dtype=DT)[None].repeat(2, 1)
    rtol = torch.tensor([loose[0], tol], dtype=DT) / ref.norm(b)
    result = linalg.gmres(lambda v: v @ at.T, bt, atol=0.0, rtol=rtol, max_iter=8)
    assert result.iterations == k and result.converged.tolist() == [True, True]
    np.testing.assert_allclose(
        result.x[0].numpy(), ref.gmres(a, b, x0, loose[0], 8, 20)[0], rtol=1e-8
    )
    np.testing.assert_allclose(result.x[1].numpy(), ref.gmres(a, b, x0, tol, 8, 20)[0], rtol=1e-8)


# --------------------------------------------------------------------------- estimators


def products(a: np.ndarray):
    """``vjp``/``jvp`` of the ``J`` with ``A = I − Jᵀ``, row-wise."""
    j = (np.eye(len(a)) - a).T
    jt = torch.tensor(j, dtype=DT)
    return (lambda v: v @ jt), (lambda v: v @ jt.T)


ESTIMATORS = {
    "CG-symmetric": ("cg", lambda **o: fp.CG(symmetric=True, **o)),
    "CG": ("cgls", lambda **o: fp.CG(**o)),
    "GMRES": ("gmres", lambda **o: fp.GMRES(**o)),
    "GMRES-restart3": ("gmres-restart3", lambda **o: fp.GMRES(restart=3, **o)),
    "BiCGStab": ("bicgstab", lambda **o: fp.BiCGStab(**o)),
}


@pytest.mark.parametrize("rule", ["atol", "rtol", "both"])
@pytest.mark.parametrize("w0", ["g", "zero"])
@pytest.mark.parametrize("name", list(ESTIMATORS))
def test_krylov_estimator_stops_at_the_exact_iteration(name, w0, rule):
    """``‖g − (I − Jᵀ)w‖ ≤ atol + rtol·‖g‖`` (‖g‖, not the residual of the start ``w0 = g``)."""
    method, make = ESTIMATORS[name]
    a, g = KRYLOV[method][0]()
    x0 = g.copy() if w0 == "g" else np.zeros_like(g)
    extra = cgls_normal_residual_stops_elsewhere if method == "cgls" else None
    tol, k = krylov_design(method, x0, extra)
    vjp, jvp = products(a)
    est = make(w0=w0, max_iter=8, **split(rule, tol, ref.norm(g)))(
        torch.tensor(g, dtype=DT)[None], vjp, jvp
    )
    assert est.iterations == k and bool(est.converged[0])
    assert ref.norm(g - a @ est.w[0].numpy()) <= tol


def implicit_design(kind: str, rule: str):
    """The adjoint iteration ``w ↦ Jᵀw + g`` from ``w₀ = g``: reference iterates, and
    tolerances that stop it at a separated step."""
    j = ref.jacobian(5, seed=3, radius=0.8)
    g = ref.g_vector(5, 3)
    fmap = lambda w: j.T @ w + g  # noqa: E731
    if kind == "Picard":
        ws = ref.picard(fmap, g, 0.7, 60)
    else:
        ws = ref.anderson(fmap, g, 2, 0.7, 0.05, 20)
    r = [ref.norm(fmap(w) - w) for w in ws]
    s = [ref.norm(w) for w in ws]
    for k in range(2, len(r)):
        relative_to = "initial" if rule == "rtol-initial" else "state"
        if rule == "atol":
            opts = dict(atol=1.2 * r[k], rtol=0.0)
        else:
            opts = dict(atol=0.0, rtol=1.2 * r[k] / (r[0] if relative_to == "initial" else s[k]))
        opts["relative_to"] = relative_to
        ratios = threshold_ratios(r, s, r[0], **opts)
        other = dict(opts, relative_to="state" if relative_to == "initial" else "initial")
        if (
            first_stop(ratios) == k
            and separated(ratios, k)
            and (rule == "atol" or first_stop(threshold_ratios(r, s, r[0], **other)) != k)
        ):
            return j, g, ws, r, opts, k
    raise AssertionError("no separating design")


@pytest.mark.parametrize("rule", ["atol", "rtol-state", "rtol-initial"])
@pytest.mark.parametrize("kind", ["Picard", "Anderson"])
def test_implicit_estimator_stops_at_the_exact_iteration(kind, rule):
    j, g, ws, r, opts, k = implicit_design(kind, rule)
    jt = torch.tensor(j, dtype=DT)
    solver = make_solver(kind, max_iter=60, **opts)
    est = fp.Implicit(solver)(torch.tensor(g, dtype=DT)[None], lambda v: v @ jt, None)
    assert est.iterations == k and bool(est.converged[0])
    best = int(np.argmin(r[: k + 1]))
    np.testing.assert_allclose(est.w[0].numpy(), ws[best], rtol=1e-9)
