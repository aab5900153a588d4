"""``fp.nn.DEQ``: the ``nn.Module`` face of implicit (deep equilibrium) layers."""

from __future__ import annotations

import contextlib
import inspect
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import torch
import torch.utils._pytree as pytree
from torch import Tensor, nn
from torch.func import functional_call
from torch.nn.utils import parametrize

from fixpoint._checks import require_instance
from fixpoint._forward import detach_args
from fixpoint._transforms import transforms_active, under_vmap
from fixpoint._validation import count, flag
from fixpoint.dropout import VariationalDropout, reset_dropout
from fixpoint.estimators.base import Estimator
from fixpoint.estimators.jfb import JFB
from fixpoint.fixed_point import fixed_point
from fixpoint.operators.spectral import spectral_radius
from fixpoint.regularization import jacobian_penalty
from fixpoint.solution import Solution
from fixpoint.solvers.anderson import Anderson
from fixpoint.solvers.base import Solver

__all__ = ["DEQ", "VariationalDropout", "reset_dropout"]


class DEQ(nn.Module):
    r"""An implicit layer: ``DEQ(f)(x)`` returns :math:`z^*` with :math:`z^* = f(z^*, x)`.

    Wraps an operator module ``f(z, x)`` with a forward solver, a gradient estimator and a
    starting point. The batch is the leading dimension (``batched=True``), so statistics are
    per sample. Gradients reach ``f``'s parameters and ``x`` (and whatever produced ``x``).

    Under torch.func transforms (``functional_call`` with ``grad``, ``vmap``, ``jacrev``, ...,
    e.g. per-sample gradients or an ensemble from ``stack_module_state``) the parameters and
    buffers of ``f`` are passed to it explicitly, so the transforms act on them; parametrizations
    are then evaluated at each call of ``f`` (use eval mode for ``spectral_norm`` under ``vmap``).

    Parameters
    ----------
    f
        The operator, called as ``f(z, x)``; an ``nn.Module`` (its parameters are registered
        here) or any callable. A map of ``z`` alone (torchdeq's style, a closure over its
        injection) is accepted too: the layer is then called as ``deq(z0)`` with the start.
    solver
        Forward solver in training mode (default ``Anderson()``).
    estimator
        Gradient estimator (default :class:`~fixpoint.JFB`, the JFB paper's training recipe).
    eval_solver
        Forward solver in eval mode (default: ``solver``), e.g. a tighter tolerance for testing.
    z_init
        ``x ↦ z0``; default ``torch.zeros_like(x)``, for latent states shaped like the injection.
    batched
        Whether the leading dimension of ``x`` and ``z`` is a batch of independent samples.
    skip_converged
        Drop stopped samples from the forward solve (see :func:`fixpoint.solve`); for operators
        without batch statistics. The injection ``x`` is sliced with the samples.
    spectral_radius_iters
        If > 0, after each training-mode forward estimate the spectral radius of
        :math:`\partial f/\partial z` at :math:`z^*` per sample with that many vjps
        (:func:`fixpoint.operators.spectral_radius`) and keep it in
        :attr:`last_spectral_radius`. Costs one evaluation of ``f`` plus the vjps.
    throw
        Raise :class:`~fixpoint.ConvergenceError` when the forward solve does not converge for
        some sample (default: warn, and go on from the best iterate).
    jacobian_penalty
        If > 0, after each training-mode forward keep in :attr:`last_jacobian_penalty` the
        Hutchinson estimate of :math:`\|\partial f/\partial z\|_F^2 / n` at :math:`z^*` with
        that many samples (:func:`fixpoint.jacobian_penalty`, per sample when batched),
        differentiable with respect to ``f``'s parameters and ``x``: add a multiple of its mean
        to the loss to keep ``f`` contractive (Bai, Koltun and Kolter, 2021).
    correction_steps
        Forward steps ``k`` whose iterates :math:`z_k` give fixed-point correction terms (Bai et
        al., 2022): after each training-mode forward, :attr:`last_corrections` holds
        :math:`f(z_k, x)` for each, with a gradient through that one application of ``f``
        (JFB-style), for losses on intermediate iterates. Only those iterates are kept.

    Attributes
    ----------
    last_solution
        The :class:`~fixpoint.Solution` of the last forward pass; its ``backward`` field is filled
        by the backward pass (mat-vecs, convergence of iterative estimators). ``None`` after a
        call under :func:`torch.func.vmap`, whose statistics are per-sample tensors that live
        only inside the vmapped function (use :func:`fixpoint.fixed_point` with
        ``return_solution=True`` there).
    last_spectral_radius
        Per-sample estimate of :math:`\rho(\partial f/\partial z)` (see above), or ``None``.

    Examples
    --------
    >>> import torch, fixpoint as fp
    >>> class Layer(torch.nn.Module):
    ...     def __init__(self):
    ...         super().__init__()
    ...         self.linear = torch.nn.utils.parametrizations.spectral_norm(torch.nn.Linear(4, 4))
    ...     def forward(self, z, x):
    ...         return 0.5 * torch.tanh(self.linear(z)) + x
    >>> deq = fp.nn.DEQ(Layer())
    >>> z = deq(torch.randn(8, 4))
    >>> z.shape, deq.last_solution.converged.all().item()
    (torch.Size([8, 4]), True)
    >>> z.square().sum().backward()
    """

    def __init__(
        self,
        f: Callable[..., Any],
        *,
        solver: Solver = Anderson(),
        estimator: Estimator = JFB(),
        eval_solver: Solver | None = None,
        z_init: Callable[[Any], Any] | None = None,
        batched: bool = True,
        spectral_radius_iters: int = 0,
        skip_converged: bool = False,
        throw: bool = False,
        jacobian_penalty: int = 0,
        correction_steps: Sequence[int] = (),
    ) -> None:
        super().__init__()
        if not callable(f):
            raise TypeError(f"DEQ: f must be callable as f(z, x), got {type(f).__name__}")
        require_instance(solver, Solver, "solver", "fp.Anderson()")
        if eval_solver is not None:
            require_instance(eval_solver, Solver, "eval_solver", "fp.Anderson()")
        require_instance(estimator, Estimator, "estimator", "fp.JFB()")
        spectral_radius_iters = count("DEQ", "spectral_radius_iters", spectral_radius_iters, 0)
        batched = flag("DEQ", "batched", batched)
        skip_converged = flag("DEQ", "skip_converged", skip_converged)
        throw = flag("DEQ", "throw", throw)
        jacobian_penalty = count("DEQ", "jacobian_penalty", jacobian_penalty, 0)
        correction_steps = tuple(count("DEQ", "correction_steps", k, 1) for k in correction_steps)
        self.f = f
        self.solver = solver
        self.estimator = estimator
        self.eval_solver = eval_solver
        self.z_init = z_init
        self.batched = batched
        self.spectral_radius_iters = spectral_radius_iters
        self.skip_converged = skip_converged
        self.throw = throw
        self.jacobian_penalty = jacobian_penalty
        self.correction_steps = correction_steps
        self.closure = not _takes_injection(f)
        self.last_solution: Solution | None = None
        self.last_spectral_radius: Tensor | None = None
        self.last_jacobian_penalty: Tensor | None = None
        self.last_corrections: list[Any] = []

    def initial_state(self, x: Any) -> Any:
        """The starting point ``z0`` for the injection ``x``."""
        if self.z_init is not None:
            return self.z_init(x)
        return pytree.tree_map(torch.zeros_like, x)

    def forward(self, x: Any, z0: Any = None) -> Any:
        """Solve ``z = f(z, x)`` from ``z0`` (default :meth:`initial_state`) and return ``z*``.

        A warm start ``z0`` (the previous solution, for a sequence of related inputs) saves
        the iterations it is closer by. For a map ``f(z)`` of ``z`` alone, ``x`` is the start.
        """
        solver = self.solver if self.training or self.eval_solver is None else self.eval_solver
        if self.closure:
            start, x = (x if z0 is None else z0), None
        else:
            start = self.initial_state(x) if z0 is None else z0
        if transforms_active():
            if self.jacobian_penalty or self.correction_steps:
                raise RuntimeError(
                    "fp.nn.DEQ: jacobian_penalty and correction_steps are not supported under "
                    "torch.func transforms (their results are kept on the module)"
                )
            return self._solve_functional(x, start, solver)
        with self._one_operator():
            return self._solve(self.f, x, start, solver)

    def _solve_functional(self, x: Any, start: Any, solver: Solver) -> Any:
        """Under torch.func: ``f``'s parameters and buffers reach it through ``args``.

        They may be the tensors that :func:`torch.func.functional_call` swapped in (being
        differentiated or vmapped, e.g. an ensemble from ``stack_module_state``), which must not
        reach ``f`` as closures.
        """
        if self.spectral_radius_iters > 0:
            raise RuntimeError(
                "fp.nn.DEQ: spectral_radius_iters > 0 is not supported under torch.func "
                "transforms (the estimate is kept on the module); set it to 0 there"
            )
        if not isinstance(self.f, nn.Module):
            return self._solve(self.f, x, start, solver)
        module = self.f
        tensors = {**dict(module.named_parameters()), **dict(module.named_buffers())}
        inputs = (lambda z, x: (z,)) if self.closure else (lambda z, x: (z, x))

        def call(z: Any, x: Any, tensors: dict[str, Tensor]) -> Any:
            return functional_call(module, tensors, inputs(z, x))

        return self._solve(call, x, start, solver, tensors)

    def _solve(self, f: Callable[..., Any], x: Any, start: Any, solver: Solver, *args: Any) -> Any:
        if self.closure and not args:  # f(z): no injection reaches it
            inputs: tuple[Any, ...] = ()
            f = _ignore_injection(f)
        else:
            inputs = (x, *args)
        training = self.training and not under_vmap()
        z, sol = fixed_point(
            f,
            start,
            *inputs,
            in_dims=(0,) + (None,) * (len(inputs) - 1) if self.skip_converged and inputs else None,
            solver=solver,
            estimator=self.estimator,
            batched=self.batched,
            return_solution=True,
            skip_converged=self.skip_converged,
            throw=self.throw,
            keep_iterates=self.correction_steps if training else (),
        )
        self.last_solution = None if under_vmap() else sol
        if training:
            self._training_aids(f, sol, inputs)
        return z

    def _training_aids(self, f: Callable[..., Any], sol: Solution, inputs: tuple[Any, ...]) -> None:
        """The spectral radius, Jacobian penalty and correction terms at this forward's z*."""
        if self.spectral_radius_iters > 0:
            self.last_spectral_radius = spectral_radius(
                f,
                sol.value,
                *detach_args(inputs),
                iters=self.spectral_radius_iters,
                batched=self.batched,
            )
        if self.jacobian_penalty > 0 and torch.is_grad_enabled():  # a loss term: needs a graph
            self.last_jacobian_penalty = jacobian_penalty(
                f, sol.value, *inputs, batched=self.batched, samples=self.jacobian_penalty
            )
        if self.correction_steps:
            self.last_corrections = [
                f(pytree.tree_map(torch.Tensor.detach, zk), *inputs) for zk in sol.iterates or ()
            ]

    @contextlib.contextmanager
    def _one_operator(self) -> Iterator[None]:
        """Evaluate parametrized weights of ``f`` (spectral_norm, weight_norm, ...) once.

        Without this, a parametrization such as ``spectral_norm`` would rerun (and, in training
        mode, advance its power iteration) at every evaluation of ``f``: the solver would chase a
        moving operator and the graph at :math:`z^*` would be another one. The weights are
        computed once, with gradient tracking, and shared by the solve and that graph.
        Evaluations of ``f`` in the backward pass itself (Jacobian–vector products, as
        :class:`~fixpoint.CG` makes) run after this context and recompute the weights.
        """
        modules = (
            [m for m in self.f.modules() if parametrize.is_parametrized(m)]
            if isinstance(self.f, nn.Module)
            else []
        )
        if not modules:
            yield
            return
        with parametrize.cached():
            for module in modules:
                parametrizations = module.parametrizations
                assert isinstance(parametrizations, nn.ModuleDict)  # is_parametrized(module)
                for name in parametrizations:
                    getattr(module, name)
            yield

    def extra_repr(self) -> str:
        parts = [f"solver={self.solver!r}", f"estimator={self.estimator!r}"]
        if self.eval_solver is not None:
            parts.append(f"eval_solver={self.eval_solver!r}")
        return ", ".join(parts)


def _takes_injection(f: Callable[..., Any]) -> bool:
    """Whether ``f`` takes ``(z, x)``; ``False`` for a map of ``z`` alone (torchdeq's style)."""
    target = f.forward if isinstance(f, nn.Module) else f
    try:
        signature = inspect.signature(target)
    except (TypeError, ValueError):  # a builtin without a signature: assume f(z, x)
        return True
    positional = [
        p
        for p in signature.parameters.values()
        if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD, p.VAR_POSITIONAL)
    ]
    return len(positional) >= 2 or any(p.kind == p.VAR_POSITIONAL for p in positional)


def _ignore_injection(f: Callable[..., Any]) -> Callable[..., Any]:
    def closure(z: Any, *_: Any) -> Any:
        return f(z)

    return closure
