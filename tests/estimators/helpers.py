"""Independent answers for gradient tests: dense implicit-function-theorem gradients."""

import torch

import fixpoint as fp

TIGHT = fp.Anderson(atol=1e-13, rtol=0.0, max_iter=500)


def dense_ift_gradient(problem, c, arg_index=0):
    """d⟨c, z*⟩/dθ for θ = problem.args[arg_index] by dense linear algebra (float64).

    ∇θ = (∂f/∂θ)ᵀ (I − Jᵀ)⁻¹ c at z*, with J and ∂f/∂θ from torch.func.jacrev, per sample.
    """
    args = [a.detach().double() for a in problem.args]
    z = problem.reference(*args).double()

    def f_theta(theta, zz, *rest):
        full = list(rest)
        full.insert(arg_index, theta)
        return problem.f(zz, *full)

    others = args[:arg_index] + args[arg_index + 1 :]
    if problem.batched:
        jac_z = torch.func.vmap(torch.func.jacrev(lambda zz, *a: problem.f(zz, *a)))(z, *args)
        jac_t = torch.func.vmap(torch.func.jacrev(f_theta))(args[arg_index], z, *others)
    else:
        jac_z = torch.func.jacrev(lambda zz: problem.f(zz, *args))(z)
        jac_t = torch.func.jacrev(f_theta)(args[arg_index], z, *others)
    n = z.shape[-1]
    eye = torch.eye(n, dtype=torch.float64)
    w = torch.linalg.solve(eye - jac_z.mT, c.double()[..., None])
    return (jac_t.mT @ w)[..., 0]


def library_gradient(problem, c, estimator, solver=TIGHT, arg_index=0):
    """The same gradient through fp.fixed_point and loss.backward()."""
    args = [a.detach().clone().requires_grad_(i == arg_index) for i, a in enumerate(problem.args)]
    z = fp.fixed_point(
        problem.f, problem.z0, *args, solver=solver, estimator=estimator, batched=problem.batched
    )
    (c * z).sum().backward()
    return args[arg_index].grad
