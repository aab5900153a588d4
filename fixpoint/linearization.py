"""Matrix-free products with J = ∂f/∂z at a fixed point, on flat ``(B, n)`` matrices."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

import torch
from torch import Tensor
from torch.func import jvp as func_jvp
from torch.func import vjp as func_vjp

from fixpoint.matvecs import record

if TYPE_CHECKING:
    from fixpoint.solvers.base import Precision

__all__ = ["Linearization"]


def _grad(out: Tensor, inp: Tensor, cotangent: Tensor, create_graph: bool = False) -> Tensor:
    (res,) = torch.autograd.grad(
        out, inp, cotangent, retain_graph=True, create_graph=create_graph, allow_unused=True
    )
    return torch.zeros_like(inp) if res is None else res


class Linearization:
    """``vjp(v) = Jᵀv`` and ``jvp(v) = Jv`` row by row, each product counted per sample.

    Vector–Jacobian products are backward passes through the graph of ``fn``. Jacobian–vector
    products use forward-mode AD (``torch.func.jvp``) where ``f`` supports it, else double
    backward through the graph; if neither works the error says which estimators need neither.

    Parameters
    ----------
    fn
        ``z ↦ f(z)`` on flat matrices, with every argument other than ``z`` held constant.
    z
        The point (the fixed point), ``(B, n)``.
    graph
        Optionally ``(fz, z_in)``: an autograd graph of ``fz = fn(z_in)`` built in the forward
        pass. Without it, the first product builds one (one evaluation of ``fn``).
    precision
        The autocast state ``fn`` was evaluated under in the forward pass; re-evaluations use it.
    functional
        Take every product from ``torch.func`` (``vjp``/``jvp``) instead of autograd graphs, as
        needed under ``torch.func`` transforms.
    """

    def __init__(
        self,
        fn: Callable[[Tensor], Tensor],
        z: Tensor,
        graph: tuple[Tensor, Tensor] | None = None,
        *,
        precision: Precision | None = None,
        functional: bool = False,
    ) -> None:
        self._fn = fn
        self.z = z
        self.graph = graph
        self.precision = precision
        self.functional = functional
        self._pullback: Callable[[Tensor], tuple[Tensor, ...]] | None = None
        self._transpose: tuple[Tensor, Tensor] | None = None
        self._jvp_mode: str | None = None
        self._forward_error: BaseException | None = None

    def fn(self, v: Tensor) -> Tensor:
        """``f`` at ``v`` under the forward pass's autocast state."""
        if self.precision is None:
            return self._fn(v)
        with self.precision.caller():
            return self._fn(v)

    def _ensure_graph(self) -> tuple[Tensor, Tensor]:
        if self.graph is None:
            z_in = self.z.detach().requires_grad_()
            with torch.enable_grad():
                self.graph = (self.fn(z_in), z_in)
        return self.graph

    def vjp(self, v: Tensor) -> Tensor:
        record("vjp", v.shape[0])
        if self.functional:
            if self._pullback is None:
                _, self._pullback = func_vjp(self.fn, self.z)
            return self._pullback(v)[0]
        fz, z_in = self._ensure_graph()
        return _grad(fz, z_in, v)

    def jvp(self, v: Tensor) -> Tensor:
        record("jvp", v.shape[0])
        if self._jvp_mode != "double-backward":
            try:
                out = func_jvp(self.fn, (self.z,), (v,))[1]
            except (RuntimeError, NotImplementedError) as error:
                if self._jvp_mode == "forward" or self.functional:
                    raise
                self._forward_error = error
            else:
                self._jvp_mode = "forward"
                return out
        try:
            # Jv = ∂(Jᵀu)/∂u applied to v: the transpose of the (linear) vjp map.
            if self._transpose is None:
                fz, z_in = self._ensure_graph()
                u = torch.zeros_like(fz, requires_grad=True)
                with torch.enable_grad():
                    self._transpose = (_grad(fz, z_in, u, create_graph=True), u)
            ju, u = self._transpose
            # Not allow_unused: a Jᵀu that requires grad but does not reach u is a graph
            # that cannot be differentiated twice (e.g. once_differentiable), not J = 0.
            out = (
                torch.autograd.grad(ju, u, v, retain_graph=True)[0]
                if ju.requires_grad
                else torch.zeros_like(v)
            )
        except (RuntimeError, NotImplementedError) as error:
            raise RuntimeError(
                "this estimator needs Jacobian-vector products Jv of f, but f supports neither "
                f"forward-mode AD ({self._forward_error}) nor double backward ({error}). Use an "
                "estimator that needs only vector-Jacobian products: fp.JFB(), fp.Neumann(k), "
                "fp.Phantom(k), fp.Implicit(solver), or fp.CG(symmetric=True) if J is symmetric"
            ) from error
        self._jvp_mode = "double-backward"
        return out
