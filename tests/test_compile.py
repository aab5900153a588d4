"""A torch.compile'd operator works with every solver and estimator, with eager results."""

import pytest
import torch

import fixpoint as fp

pytest.importorskip("torch._inductor")


class Operator(torch.nn.Module):
    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.lin = torch.nn.Linear(8, 8)
        with torch.no_grad():
            self.lin.weight.mul_(0.6 / torch.linalg.matrix_norm(self.lin.weight, 2))

    def forward(self, z, x):
        return torch.tanh(self.lin(z)) + x


@pytest.fixture(scope="module")
def operators():
    eager = Operator()
    try:
        compiled = torch.compile(eager)
        compiled(torch.zeros(4, 8), torch.zeros(4, 8))
    except Exception as error:  # no working C++ toolchain for inductor
        pytest.skip(f"torch.compile unavailable: {error}")
    return eager, compiled


@pytest.mark.parametrize(
    "solver",
    [fp.Picard(atol=1e-6, rtol=0), fp.Anderson(atol=1e-6, rtol=0), fp.Broyden(atol=1e-6, rtol=0)],
    ids=lambda s: type(s).__name__,
)
@pytest.mark.parametrize(
    "estimator",
    [
        fp.JFB(),
        fp.Neumann(k=3),
        fp.CG(atol=1e-7, rtol=0),
        fp.Implicit(),
        fp.Phantom(k=3),
        fp.Exact(),
    ],
    ids=repr,
)
def test_compiled_operator_matches_eager(operators, solver, estimator):
    eager, compiled = operators
    x = torch.randn(4, 8)
    results = []
    for op in (eager, compiled):
        eager.zero_grad()
        xx = x.clone().requires_grad_()
        z = fp.fixed_point(
            op, torch.zeros(4, 8), xx, solver=solver, estimator=estimator, batched=True
        )
        z.square().sum().backward()
        results.append((z.detach(), xx.grad, eager.lin.weight.grad.clone()))
    for a, b in zip(*results, strict=True):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)
