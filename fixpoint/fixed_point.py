"""``fp.fixed_point``: a fixed point that derivatives of every order and kind flow through."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal, overload

import torch
import torch.autograd.forward_ad as forward_ad
from torch import Tensor, nn
from torch.autograd.graph import Node

from fixpoint._checks import require_instance
from fixpoint._forward import Forward, check_inputs, detach_args, keep_steps
from fixpoint._primitives import ImplicitOp, apply, run_estimator
from fixpoint._problem import FlatProblem
from fixpoint._transforms import (
    active_transforms,
    closure_kind,
    forward_ad_active,
    transforms_active,
)
from fixpoint._validation import flag
from fixpoint.estimators.base import Estimator
from fixpoint.estimators.implicit import Implicit
from fixpoint.linearization import Linearization
from fixpoint.solution import BackwardInfo, Solution
from fixpoint.solvers.anderson import Anderson
from fixpoint.solvers.base import Solver

__all__ = ["fixed_point"]


@overload
def fixed_point(
    f: Any,
    z0: Any,
    *args: Any,
    solver: Solver = ...,
    estimator: Estimator = ...,
    batched: bool = ...,
    return_solution: Literal[False] = ...,
    skip_converged: bool = ...,
    in_dims: tuple[Any, ...] | None = ...,
    has_aux: Literal[False] = ...,
    throw: bool = ...,
    keep_iterates: Sequence[int] = ...,
) -> Any: ...


@overload
def fixed_point(
    f: Any,
    z0: Any,
    *args: Any,
    solver: Solver = ...,
    estimator: Estimator = ...,
    batched: bool = ...,
    return_solution: Literal[True],
    skip_converged: bool = ...,
    in_dims: tuple[Any, ...] | None = ...,
    has_aux: Literal[False] = ...,
    throw: bool = ...,
    keep_iterates: Sequence[int] = ...,
) -> tuple[Any, Solution]: ...


@overload
def fixed_point(
    f: Any,
    z0: Any,
    *args: Any,
    solver: Solver = ...,
    estimator: Estimator = ...,
    batched: bool = ...,
    return_solution: Literal[False] = ...,
    skip_converged: bool = ...,
    in_dims: tuple[Any, ...] | None = ...,
    has_aux: Literal[True],
    throw: bool = ...,
    keep_iterates: Sequence[int] = ...,
) -> tuple[Any, Any]: ...


@overload
def fixed_point(
    f: Any,
    z0: Any,
    *args: Any,
    solver: Solver = ...,
    estimator: Estimator = ...,
    batched: bool = ...,
    return_solution: Literal[True],
    skip_converged: bool = ...,
    in_dims: tuple[Any, ...] | None = ...,
    has_aux: Literal[True],
    throw: bool = ...,
    keep_iterates: Sequence[int] = ...,
) -> tuple[Any, Any, Solution]: ...


def fixed_point(
    f: Any,
    z0: Any,
    *args: Any,
    solver: Solver = Anderson(),
    estimator: Estimator = Implicit(),
    batched: bool = False,
    return_solution: bool = False,
    skip_converged: bool = False,
    in_dims: tuple[Any, ...] | None = None,
    has_aux: bool = False,
    throw: bool = False,
    keep_iterates: Sequence[int] = (),
) -> Any:
    r"""The fixed point ``z* = f(z*, *args)``, differentiable with respect to ``args`` and ``f``'s
    parameters, in every mode and to every order.

    The forward solve runs without an autograd graph. Its derivative is the implicit-function
    theorem's, with the estimator standing in for :math:`(I - J)^{-1}`: in reverse mode the
    incoming gradient :math:`g = \partial L/\partial z^*` becomes :math:`w = M g` and

    .. math:: \frac{\mathrm{d}L}{\mathrm{d}\theta} = w^\top \frac{\partial f}{\partial \theta}
              (z^*, \theta), \qquad w = M g \approx (I - J^\top)^{-1} g,
              \quad J = \frac{\partial f}{\partial z}(z^*, \theta);

    in forward mode a tangent :math:`\dot\theta` gives :math:`\dot z = M^\top
    (\partial f/\partial\theta)\,\dot\theta`, the same linear map. Higher derivatives
    differentiate these rules, with :math:`z^*` differentiated by the same rule again: with an
    exact estimator (:class:`~fixpoint.Implicit`, :class:`~fixpoint.CG`,
    :class:`~fixpoint.Exact`) they are the true derivatives; with an inexact one they are the
    derivatives of that estimator's linearisation (see the torch.func page of the docs).

    Gradients reach every tensor :math:`\theta` that ``f`` uses and that requires grad: tensors
    in ``args`` (pytrees of tensors too) and, for first-order ``backward()``, parameters of
    modules ``f`` closes over. Under torch.func transforms (``grad``, ``vmap``, ``jacrev``,
    ``jacfwd``, ``hessian``, ...) and for higher-order ``backward(create_graph=True)``, the
    tensors that are transformed must come through ``args`` (use
    :func:`torch.func.functional_call` for a module's parameters); a closure is detected and
    refused. Memory does not grow with the number of solver iterations. If the forward solve
    does not converge for some sample, a :class:`~fixpoint.ConvergenceWarning` says so (the value
    is then the best iterate).

    Parameters
    ----------
    f
        The map, called as ``f(z, *args)``; returns the structure, shapes and dtype of ``z``
        (with ``has_aux=True``: a pair ``(z, aux)``).
    z0
        Starting point: a tensor or a pytree of tensors (no gradient flows to it).
    *args
        Inputs of ``f``; gradients flow to those that require grad.
    solver
        The forward solver (default :class:`~fixpoint.Anderson`).
    estimator
        How to compute :math:`w` (default :class:`~fixpoint.Implicit`, the implicit-function-
        theorem gradient up to tolerance). :class:`~fixpoint.JFB` is the cheapest.
    batched
        Leading dimension of ``z0`` is a batch of independent problems (see
        :func:`fixpoint.solve`); the estimator then works per sample too.
    return_solution
        Also return the forward :class:`~fixpoint.Solution`; its ``backward`` field
        (:class:`~fixpoint.BackwardInfo`) is filled when the estimator runs.
    skip_converged, in_dims
        With ``batched=True``, evaluate ``f`` only on samples still iterating in the forward
        solve; ``in_dims`` says which arguments are per-sample (see :func:`fixpoint.solve`).
    has_aux
        ``f`` returns ``(z, aux)``: ``aux`` at the fixed point is returned too, differentiable
        (through ``z*`` and ``args``).
    throw
        Raise :class:`~fixpoint.ConvergenceError` (carrying the forward :class:`Solution`)
        instead of the warning when the forward solve does not converge for some sample.
    keep_iterates
        Steps whose forward iterates ``Solution.iterates`` hands back (constants: no gradient
        flows through them; see :func:`fixpoint.solve`).

    Returns
    -------
    z, (z, aux), (z, Solution) or (z, aux, Solution)
        ``z`` has the structure of ``z0`` and the value of ``Solution.value``.

    Examples
    --------
    >>> import torch, fixpoint as fp
    >>> theta = torch.tensor(0.5, dtype=torch.float64, requires_grad=True)
    >>> z = fp.fixed_point(lambda z, t: t * z + 1.0, torch.zeros((), dtype=torch.float64), theta,
    ...                    solver=fp.Anderson(atol=1e-12, rtol=0))   # z* = 1 / (1 − θ)
    >>> z.backward()
    >>> round(theta.grad.item(), 6)                                  # dz*/dθ = 1 / (1 − θ)²
    4.0

    Second derivatives, here with :func:`torch.func.grad` twice (d²z*/dθ² = 2 / (1 − θ)³):

    >>> d2 = torch.func.grad(torch.func.grad(lambda t: fp.fixed_point(
    ...     lambda z, t: t * z + 1.0, torch.zeros((), dtype=torch.float64), t,
    ...     solver=fp.Anderson(atol=1e-12, rtol=0))))(theta.detach())
    >>> round(d2.item(), 6)
    16.0
    """
    check_inputs(f, solver, batched, skip_converged, owner="fp.fixed_point")
    require_instance(estimator, Estimator, "estimator", "fp.JFB()")
    forward = Forward.prepare(f, z0, args, batched, has_aux)
    info = BackwardInfo(estimator=estimator.name)
    problem = forward.problem(
        solver,
        estimator=estimator,
        info=info,
        skip_converged=skip_converged,
        in_dims=in_dims,
        warn=True,
        throw=flag("fp.fixed_point", "throw", throw),
        keep=keep_steps("fp.fixed_point", keep_iterates),
    )
    outs = forward.solve(problem, z0)
    z_star = outs[0]
    if transforms_active():
        _refuse_closures_under_transforms(problem, z_star, forward.leaves)
        z_flat = apply(ImplicitOp, problem, z_star, None, *forward.leaves)
    else:
        z_flat = _attach_eager(problem, z_star, forward.leaves, f)
    z = forward.layout.unflatten(z_flat)
    aux = forward.aux(z) if has_aux else None
    if not return_solution:
        return (z, aux) if has_aux else z
    sol = forward.solution(outs, aux=aux, backward=info, iterates=problem.kept)
    return (z, aux, sol) if has_aux else (z, sol)


def _attach_eager(
    problem: FlatProblem, z_star: Tensor, leaves: tuple[Tensor, ...], f: Any
) -> Tensor:
    """:class:`ImplicitOp` with the eager fast path: one graph of ``f`` at ``z*``.

    ``f`` is applied once more at :math:`z^*` with the graph on, to everything it uses (closed-
    over parameters included); a first-order backward pushes ``w`` into that graph, and its vjps
    with respect to ``z`` are backward passes through it. Returns ``z_star`` itself when nothing
    ``f`` uses can be differentiated.
    """
    tangents = forward_ad_active()
    if not tangents and not (torch.is_grad_enabled() and _may_need_grad(f, leaves)):
        return z_star
    estimator = problem.estimator
    assert estimator is not None  # fp.fixed_point's problem has one
    z_in = z_star.detach().requires_grad_(estimator.uses_vjp)
    with torch.enable_grad():
        fz = problem.fn(z_in, *leaves)
    has_tangent = tangents and forward_ad.unpack_dual(fz).tangent is not None
    if not has_tangent and not _reaches_leaf(fz, [z_in]):
        return z_star
    constants = detach_args(leaves)
    graph = (fz, z_in) if estimator.uses_vjp else None
    eager = EagerPath(fz, z_in, Linearization(problem.at(constants), z_star, graph=graph))
    problem = dataclasses.replace(problem, eager=eager)
    return apply(ImplicitOp, problem, z_star, fz, *leaves)


@dataclass(eq=False)
class EagerPath:
    """The first-order backward of an eager call: ``w`` pushed into a graph of ``f`` at ``z*``."""

    hook: Tensor
    z_in: Tensor
    linearization: Linearization

    def pullback(self, problem: FlatProblem, g: Tensor) -> Tensor:
        lin = self.linearization
        return run_estimator(problem, g, lin.vjp, lin.jvp)

    def refuse_closures(self, leaves: Sequence[Tensor]) -> None:
        """Raise when ``f`` differentiates tensors that did not come through ``args``.

        A higher-order derivative needs ``z*`` as a function of everything ``f``
        differentiates; that is only known for the tensors that are inputs of the primitive.
        """
        if _reaches_leaf(self.hook, [self.z_in, *leaves]):
            raise RuntimeError(
                "fp.fixed_point: higher-order derivatives (backward with create_graph=True, "
                "torch.autograd.grad of a gradient) need every tensor that f differentiates to "
                "come through args, but f closes over tensors that require grad (e.g. a "
                "module's parameters). Pass them as arguments, e.g. "
                "fp.fixed_point(lambda z, x, p: torch.func.functional_call(layer, p, (z, x)), "
                "z0, x, dict(layer.named_parameters()))"
            )


def _refuse_closures_under_transforms(
    problem: FlatProblem, z_star: Tensor, leaves: tuple[Tensor, ...]
) -> None:
    """Raise when ``f`` uses a tensor that is differentiated but is not one of the leaves.

    Its derivative would silently be missing: under torch.func, only the leaves are inputs of
    the primitive. One evaluation of ``f`` on detached inputs tells.
    """
    transforms = set(active_transforms())
    if not torch.is_grad_enabled() and "jvp" not in transforms:
        return  # no derivative is wanted
    with torch.enable_grad():
        probe = problem.fn(z_star.detach(), *(leaf.detach() for leaf in leaves))
    kind = closure_kind(probe)
    only_vmap = transforms == {"vmap"}
    if kind == "transformed" or (kind == "autograd" and only_vmap):
        what = (
            "a tensor that a torch.func transform is differentiating"
            if kind == "transformed"
            else "tensors that require grad (e.g. a module's parameters), which a later "
            "backward() would miss"
        )
        raise RuntimeError(
            f"fp.fixed_point: f closes over {what}. Under torch.func transforms every tensor "
            "that is differentiated must reach f through args: fp.fixed_point(f, z0, x, params) "
            "with f(z, x, params), and a module's parameters with "
            "torch.func.functional_call(module, params, (z, x)) (fp.nn.DEQ does this itself). "
            "For values only, use fp.solve or torch.no_grad()"
        )


def _may_need_grad(f: Any, leaves: Sequence[Tensor]) -> bool:
    """False only when nothing ``f`` uses can require grad (then no graph is built at all)."""
    if any(leaf.requires_grad for leaf in leaves):
        return True
    if isinstance(f, nn.Module):
        return any(p.requires_grad for p in f.parameters())
    return True


def _reaches_leaf(out: Tensor, stops: Sequence[Tensor]) -> bool:
    """Whether ``out``'s graph reaches a tensor that requires grad other than ``stops``.

    The walk does not go past the ``stops`` (nor into what they were computed from), and ends at
    the first other leaf it finds (usually a parameter right at the top of the graph).
    """
    if out.grad_fn is None:
        return out.requires_grad and not any(out is s for s in stops)
    stop_ids = {id(t) for t in stops}
    stop_nodes = {t.grad_fn for t in stops if t.grad_fn is not None}
    seen: set[Node] = set()
    stack: list[Node | None] = [out.grad_fn]
    while stack:
        node = stack.pop()
        if node is None or node in seen or node in stop_nodes:
            continue
        seen.add(node)
        variable = getattr(node, "variable", None)
        if variable is not None:
            if id(variable) not in stop_ids:
                return True
            continue
        stack.extend(next_node for next_node, _ in node.next_functions)
    return False
