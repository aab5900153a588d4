"""Backward passes from several threads at once: every estimator, the same gradients.

torch.func.jvp keeps its nesting depth in a process-wide counter, so two threads making
forward-mode products at once used to fail ("no level exists"); the library's forward-mode
products now take turns.
"""

import threading

import pytest
import torch

import fixpoint as fp
from tests.methods import estimators

ESTIMATORS = estimators(1e-12)  # every library estimator (tests/methods.py)


@pytest.mark.parametrize("estimator", ESTIMATORS, ids=lambda e: type(e).__name__)
def test_backward_from_several_threads(estimator):
    torch.manual_seed(0)
    layer = torch.nn.Linear(12, 12).double()
    with torch.no_grad():
        layer.weight.mul_(0.6 / torch.linalg.matrix_norm(layer.weight, 2))
    inputs = [torch.randn(3, 12, dtype=torch.float64) for _ in range(4)]

    def gradient(x):
        x = x.clone().requires_grad_()
        z = fp.fixed_point(
            lambda z, x: torch.tanh(layer(z) + x),
            torch.zeros_like(x),
            x,
            estimator=estimator,
            batched=True,
            solver=fp.Anderson(atol=1e-12, rtol=0),
        )
        (grad,) = torch.autograd.grad(z.square().sum(), x)
        return grad

    expected = [gradient(x) for x in inputs]
    results, errors = {}, []

    def work(thread):
        try:
            for _ in range(2):
                for i, x in enumerate(inputs):
                    results[thread, i] = gradient(x)
        except Exception as error:  # reported below, with the thread's failure
            errors.append(error)

    threads = [threading.Thread(target=work, args=(t,)) for t in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    for (_, i), grad in results.items():
        torch.testing.assert_close(grad, expected[i], atol=1e-10, rtol=1e-8)
