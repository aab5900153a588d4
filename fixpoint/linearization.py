"""Matrix-free products with J = ∂f/∂z at a fixed point, on flat ``(B, n)`` matrices."""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

from fixpoint._registry import suggest
from fixpoint._transforms import jvp as func_jvp
from fixpoint._transforms import samples
from fixpoint._transforms import vjp as func_vjp
from fixpoint.matvecs import record

__all__ = ["Linearization"]


def _grad(out: Tensor, inp: Tensor, cotangent: Tensor, create_graph: bool = False) -> Tensor:
    (res,) = torch.autograd.grad(
        out, inp, cotangent, retain_graph=True, create_graph=create_graph, allow_unused=True
    )
    return torch.zeros_like(inp) if res is None else res


class Linearization:
    """``vjp(v) = Jᵀv`` and ``jvp(v) = Jv`` row by row, each product counted per sample.

    Two modes. With ``functional=False`` vector–Jacobian products are backward passes through
    an autograd graph of ``fn`` (given, or built on the first product), the cheapest form for a
    first-order backward. With ``functional=True`` they come from :func:`torch.func.vjp`, so
    they are themselves differentiable with respect to ``v``, to ``z`` and to whatever ``fn``
    closes over, under every torch.func transform: the form the higher-order and transformed
    derivatives use. Jacobian–vector products use forward-mode AD (:func:`torch.func.jvp`)
    where ``f`` supports it, else the transpose of the (linear) vjp map by one more reverse
    pass; if neither works the error says which estimators need neither.

    Parameters
    ----------
    fn
        ``z ↦ f(z)`` on flat matrices, with every argument other than ``z`` held constant.
    z
        The point (the fixed point), ``(B, n)``.
    graph
        Optionally ``(fz, z_in)``: an autograd graph of ``fz = fn(z_in)`` built in the forward
        pass (graph mode only).
    functional
        Take every product from torch.func, differentiably (see above).
    counted
        Record each product in :func:`fixpoint.count_matvecs` (``False`` for the products of
        a forward solver, which are not products at the fixed point).
    jvp_mode
        ``"forward"`` or ``"transpose"``: how Jacobian–vector products are taken, when a
        previous :class:`Linearization` of the same map found out (its ``jvp_mode``); ``None``
        (default) tries forward mode first.
    """

    def __init__(
        self,
        fn: Callable[[Tensor], Tensor],
        z: Tensor,
        graph: tuple[Tensor, Tensor] | None = None,
        *,
        functional: bool = False,
        counted: bool = True,
        jvp_mode: str | None = None,
    ) -> None:
        self.fn = fn
        self.counted = counted
        self.z = z
        self.graph = graph
        self.functional = functional
        self._pullback: Callable[[Tensor], tuple[Tensor, ...]] | None = None
        self._transpose: tuple[Tensor, Tensor] | None = None
        self._jvp_mode = jvp_mode
        self._forward_error: BaseException | None = None

    def _ensure_graph(self) -> tuple[Tensor, Tensor]:
        if self.graph is None:
            z_in = self.z.detach().requires_grad_()
            with torch.enable_grad():
                self.graph = (self.fn(z_in), z_in)
        return self.graph

    def _functional_pullback(self) -> Callable[[Tensor], tuple[Tensor, ...]]:
        if self._pullback is None:
            _, self._pullback = func_vjp(self.fn, self.z)
        return self._pullback

    @property
    def jvp_mode(self) -> str | None:
        """How Jacobian–vector products are taken (``"forward"``, ``"transpose"``), once known."""
        return self._jvp_mode

    def vjp(self, v: Tensor) -> Tensor:
        if self.counted:
            record("vjp", samples(v))
        if self.functional:
            return self._functional_pullback()(v)[0]
        fz, z_in = self._ensure_graph()
        return _grad(fz, z_in, v)

    def jvp(self, v: Tensor) -> Tensor:
        if self.counted:
            record("jvp", samples(v))
        if self._jvp_mode != "transpose":
            try:
                out = func_jvp(self.fn, (self.z,), (v,))[1]
            except (RuntimeError, NotImplementedError) as error:
                if self._jvp_mode == "forward":
                    raise
                self._forward_error = error
            else:
                self._jvp_mode = "forward"
                return out
        try:
            out = self._transposed_vjp(v)
        except (RuntimeError, NotImplementedError) as error:
            raise RuntimeError(
                "this estimator needs Jacobian-vector products Jv of f, but f supports neither "
                f"forward-mode AD ({self._forward_error}) nor double backward ({error}). Use an "
                "estimator that needs only vector-Jacobian products: "
                f"{suggest('estimator', uses_jvp=False)}"
            ) from error
        self._jvp_mode = "transpose"
        return out

    def _transposed_vjp(self, v: Tensor) -> Tensor:
        """``Jv`` as ``∂(Jᵀu)/∂u`` applied to ``v``: the transpose of the linear vjp map."""
        if self.functional:
            pullback = self._functional_pullback()
            _, transpose = func_vjp(lambda u: pullback(u)[0], torch.zeros_like(self.z))
            return transpose(v)[0]
        if self._transpose is None:
            fz, z_in = self._ensure_graph()
            u = torch.zeros_like(fz, requires_grad=True)
            with torch.enable_grad():
                self._transpose = (_grad(fz, z_in, u, create_graph=True), u)
        ju, u = self._transpose
        # Not allow_unused: a Jᵀu that requires grad but does not reach u is a graph that
        # cannot be differentiated twice (e.g. once_differentiable), not J = 0.
        if not ju.requires_grad:
            return torch.zeros_like(v)
        return torch.autograd.grad(ju, u, v, retain_graph=True)[0]
