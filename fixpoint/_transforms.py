"""What the torch.func transforms around a call are doing, and the errors that explain them."""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

import torch
import torch.autograd.forward_ad as forward_ad
from torch import Tensor
from torch._C import _functorch

__all__ = [
    "active_transforms",
    "closure_kind",
    "escaped_tensor_error",
    "forward_ad_active",
    "is_transformed",
    "jvp",
    "refuse_forward_over_forward",
    "samples",
    "transforms_active",
    "under_vmap",
    "vjp",
]


def active_transforms() -> list[str]:
    """Names of the torch.func transforms wrapping the current call, outermost first."""
    stack = _functorch.get_interpreter_stack() or []
    return [interpreter.key().name.lower() for interpreter in stack]


def transforms_active() -> bool:
    """Whether any torch.func transform (grad, vjp, jvp, vmap, ...) wraps the current call."""
    return torch._C._are_functorch_transforms_active()


def under_vmap() -> bool:
    return "vmap" in active_transforms()


def forward_ad_active() -> bool:
    """Whether a ``torch.autograd.forward_ad.dual_level`` is open (eager forward mode)."""
    return getattr(forward_ad, "_current_level", -1) >= 0


def refuse_forward_over_forward(name: str) -> None:
    """Raise inside a ``jvp`` rule whose result an outer forward-mode transform would differentiate.

    PyTorch does not propagate an outer forward-mode level through a custom ``jvp`` rule: the
    outer tangent of the rule's result comes back as zero (pytorch/pytorch#197867), which would
    make ``jacfwd(jacfwd(...))`` silently wrong. Reverse-over-forward and forward-over-reverse
    are exact, so the error names them.
    """
    stack = _functorch.get_interpreter_stack() or []
    if not stack:
        return
    level = _functorch.current_level()
    outer = [i for i in stack if i.key() == _functorch.TransformType.Jvp and i.level() < level]
    if outer:
        raise RuntimeError(
            f"{name}: forward-mode over forward-mode differentiation (jacfwd(jacfwd(...)), "
            "jvp of a jvp) through a fixed point is not supported: PyTorch drops the outer "
            "tangent of a custom jvp rule (pytorch/pytorch#197867), so the result would be "
            "wrong. Use a reverse mode for one of the two: torch.func.hessian (forward over "
            "reverse), jacrev(jacfwd(...)), jacfwd(jacrev(...)) or jacrev(jacrev(...))"
        )


def samples(v: Tensor) -> int:
    """How many rows ``v`` stands for: its own rows times the sizes of the vmaps it is under."""
    count = v.shape[0]
    while _functorch.is_functorch_wrapped_tensor(v):
        if _functorch.is_batchedtensor(v):
            v, bdim = _functorch._unwrap_batched(v, _functorch.maybe_get_level(v))
            if bdim is not None:
                count *= v.shape[bdim]
        else:
            v = _functorch.get_unwrapped(v)
    return count


def escaped_tensor_error(name: str, error: BaseException) -> RuntimeError | None:
    """The error to raise instead of torch's when ``f`` closed over a transformed tensor."""
    if "escaped" not in str(error):
        return None
    return RuntimeError(
        f"{name}: f uses a tensor that a torch.func transform (vmap, grad, jvp, ...) is "
        "transforming but that did not come through args. Pass every tensor that is vmapped or "
        "differentiated as an argument, fp.fixed_point(f, z0, x, params) with f(z, x, params), "
        "and modules' parameters with torch.func.functional_call"
    )


def closure_kind(out: Tensor) -> str | None:
    """What ``out`` depends on beyond the (detached) inputs it was computed from.

    ``out`` is ``f`` evaluated on detached inputs. ``"transformed"``: a tensor that a torch.func
    ``grad``/``jvp`` is differentiating (it requires grad, or has a tangent, at some level);
    ``"autograd"``: a tensor that requires grad in plain autograd; ``None``: neither.
    """
    t = out
    while _functorch.is_functorch_wrapped_tensor(t):
        if t.requires_grad:
            return "transformed"
        if not _functorch.is_batchedtensor(t) and forward_ad.unpack_dual(t).tangent is not None:
            return "transformed"
        t = _functorch.get_unwrapped(t)
    return "autograd" if t.requires_grad else None


def is_transformed(t: Tensor) -> bool:
    """Whether ``t`` is a torch.func wrapper (a batched or differentiated tensor)."""
    return _functorch.is_functorch_wrapped_tensor(t)


_FORWARD_MODE = threading.RLock()


def jvp(fn: Callable[..., Any], primals: tuple[Any, ...], tangents: tuple[Any, ...]) -> Any:
    """:func:`torch.func.jvp`, entered by one thread at a time.

    torch.func.jvp keeps its nesting depth in a process-wide counter: a second thread entering
    while a first is inside believes it is nested and opens no dual level of its own, then fails
    ("Trying to create a dual Tensor for forward AD but no level exists"). Serving and data
    loading run backward passes from several threads, so the library's forward-mode products
    take turns (the lock is reentrant: a product inside a product, as in nested fixed points,
    is fine).
    """
    with _FORWARD_MODE:
        return torch.func.jvp(fn, primals, tangents)


def vjp(fn: Callable[..., Any], *primals: Any) -> tuple[Any, Callable[..., tuple[Any, ...]]]:
    """:func:`torch.func.vjp` (without ``has_aux``): ``(fn(*primals), pullback)``.

    torch annotates its result as either this pair or the triple of ``has_aux=True``; this says
    which, so that the pair unpacks as one.
    """
    out = torch.func.vjp(fn, *primals)
    return out[0], out[1]
