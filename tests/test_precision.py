"""Mixed precision: under autocast, f runs in bfloat16 but the solvers' and estimators' own
arithmetic runs in float32, and results keep the input dtype."""

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

import fixpoint as fp
from tests.methods import estimators, solvers

SOLVER_OPS = (
    "bmm",
    "baddbmm",
    "linalg_cholesky_ex",
    "cholesky_solve",
    "linalg_vector_norm",
    "linalg_vecdot",
    "addcmul",
    "addcmul_",
)


class OpDtypes(TorchDispatchMode):
    """Records (op name, output dtype) of every aten op run outside f."""

    def __init__(self):
        super().__init__()
        self.inside_f = 0
        self.seen = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        if not self.inside_f and isinstance(out, torch.Tensor):
            self.seen.append((func._overloadpacket.__name__, out.dtype))
        return out


def operator(recorder):
    torch.manual_seed(0)
    lin = torch.nn.Linear(16, 16)
    with torch.no_grad():
        lin.weight.mul_(0.5 / torch.linalg.matrix_norm(lin.weight, 2))

    def f(z, x):
        recorder.inside_f += 1
        try:
            return torch.tanh(lin(z)) + x
        finally:
            recorder.inside_f -= 1

    return f, lin


@pytest.mark.parametrize("solver", solvers(0.05), ids=lambda s: type(s).__name__)
def test_solver_arithmetic_stays_float32_under_bf16_autocast(solver):
    recorder = OpDtypes()
    f, lin = operator(recorder)
    x = torch.randn(8, 16)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert lin(x).dtype == torch.bfloat16  # autocast is really on for f
        with recorder:
            sol = fp.solve(f, torch.zeros(8, 16), x, solver=solver, batched=True)
    assert sol.value.dtype == torch.float32
    assert all(s == "converged" for s in sol.status)
    solver_ops = [(name, dtype) for name, dtype in recorder.seen if name in SOLVER_OPS]
    assert solver_ops, "the recorder saw the solver's linear algebra"
    assert all(dtype in (torch.float32, torch.bool, torch.int32) for _, dtype in solver_ops)


@pytest.mark.parametrize("estimator", estimators(2e-2), ids=repr)  # bf16 products: noisy
def test_fixed_point_keeps_dtypes_and_estimators_work_in_float32(estimator):
    recorder = OpDtypes()
    f, lin = operator(recorder)
    x = torch.randn(8, 16, requires_grad=True)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        z = fp.fixed_point(
            f,
            torch.zeros(8, 16),
            x,
            solver=fp.Anderson(atol=0.05, rtol=0),
            estimator=estimator,
            batched=True,
        )
        loss = z.square().sum()
        with recorder:
            loss.backward()  # backward inside the autocast block, as many training loops do
    assert z.dtype == torch.float32 and x.grad.dtype == torch.float32
    assert lin.weight.grad.dtype == torch.float32 and torch.isfinite(lin.weight.grad).all()
    estimator_ops = [d for name, d in recorder.seen if name in SOLVER_OPS]
    assert all(d in (torch.float32, torch.bool) for d in estimator_ops)
    # Close to the float32 gradient (bf16 f limits the agreement).
    x32 = x.detach().clone().requires_grad_()
    lin.zero_grad()
    z32 = fp.fixed_point(
        f,
        torch.zeros(8, 16),
        x32,
        solver=fp.Anderson(atol=1e-6, rtol=0),
        estimator=estimator,
        batched=True,
    )
    z32.square().sum().backward()
    cos = torch.nn.functional.cosine_similarity(x.grad.flatten(), x32.grad.flatten(), dim=0)
    assert cos > 0.99


def test_low_precision_state_keeps_its_dtype_with_float32_history():
    problem = fp.testing.h_equation(0.9, n=64, dtype=torch.bfloat16)
    for solver in (fp.Anderson(atol=1e-2, rtol=0), fp.Broyden(atol=1e-2, rtol=0)):
        sol = fp.solve(problem.f, problem.z0, solver=solver)
        assert sol.value.dtype == torch.bfloat16 and sol.status == "converged"
        assert abs(sol.value.float().mean().item() - fp.testing.h_equation_mean(0.9)) < 1e-2
        z = problem.z0.reshape(1, -1)
        state = solver.init(None, z, problem.f(z))
        factors = (
            [state.df, state.dg, state.gram]
            if isinstance(solver, fp.Anderson)
            else [state.memory.s, state.memory.y, state.z_prev, state.g_prev]
        )
        assert all(t.dtype == torch.float32 for t in factors)


def test_dtype_mismatch_outside_autocast_is_still_an_error():
    with pytest.raises(TypeError, match="dtype"):
        fp.solve(lambda z: z.to(torch.bfloat16), torch.zeros(3))
