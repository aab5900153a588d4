"""Variational (locked) dropout for the latent state of an implicit layer.

Ordinary dropout draws a new mask at every call. Inside the cell ``f`` of a
:class:`~fixpoint.nn.DEQ` that is wrong: ``f`` is evaluated many times per forward pass (by the
solver, once more at :math:`z^*` for the gradient, by estimators that take Jacobian-vector
products during the backward pass), and with a new mask each time the solver would chase a
different map at every step, and the gradient would belong to yet another one.
:class:`VariationalDropout` draws one mask and keeps it until it is reset, so that ``f`` stays
one fixed map while it is iterated and differentiated.
"""

from __future__ import annotations

import contextlib
import numbers
from collections.abc import Iterator, Sequence

import torch
from torch import Tensor, nn
from torch._C import _functorch

from fixpoint._validation import real

__all__ = ["VariationalDropout", "reset_dropout"]


class VariationalDropout(nn.Module):
    r"""Dropout with one mask per sample, kept fixed until :meth:`reset`.

    In training mode the first call after a reset draws a Bernoulli mask shaped like its input
    (with the ``shared_dims`` of size one), keeps an element with probability :math:`1 - p` and
    scales it by :math:`1/(1 - p)` (inverted dropout, so the expectation is the input); every
    later call multiplies by the same mask. Call :func:`reset_dropout` on the model once per
    training step, before its forward pass, so that each step draws new masks. In eval mode (or
    with ``p = 0``) the layer is the identity.

    Put it inside the cell of a :class:`~fixpoint.nn.DEQ`: the solver's iterations, the
    evaluation at :math:`z^*` that the gradient goes through, and the estimator's products in
    the backward pass then all see the same map :math:`f(z, x) = g(m \odot h(z, x))`.

    Parameters
    ----------
    p
        Probability that an element is zeroed, in :math:`[0, 1]`.
    shared_dims
        Dimensions of the input along which the mask is shared (it has size one there): e.g.
        ``(-2, -1)`` drops whole channels of ``(batch, channels, height, width)`` feature maps,
        like :class:`torch.nn.Dropout2d`. By default every element has its own mask entry.

    Attributes
    ----------
    mask
        The current mask (``None`` until drawn): zeros and :math:`1/(1 - p)`, shaped like the
        input with ``shared_dims`` of size one. It is not a buffer (it is not saved in the
        ``state_dict`` nor broadcast by DDP, and each process draws its own).

    Notes
    -----
    The mask fixes the shape of the input (outside ``shared_dims``), the batch size included:
    a call with another shape raises an error instead of broadcasting. Reset the layer when the
    batch changes. This makes the layer incompatible with ``skip_converged=True`` of
    :class:`~fixpoint.nn.DEQ` and :func:`fixpoint.solve`, which evaluate ``f`` on the samples
    still iterating only, a subset of rows that the layer cannot map to its mask: the first
    compacted evaluation raises.

    Under :func:`torch.func.functional_call`, ``grad``, ``jvp`` and the like, the mask is an
    ordinary constant tensor. Under :func:`torch.func.vmap` the vmapped copies share one mask
    (the input's shape there is the shape of one copy); it can be drawn inside the ``vmap`` only
    with ``randomness="same"``, otherwise draw it before with :meth:`reset` (or put the samples
    in the batch dimension instead, to give each its own mask).

    Examples
    --------
    >>> import torch
    >>> from fixpoint.dropout import VariationalDropout, reset_dropout
    >>> _ = torch.manual_seed(0)
    >>> drop = VariationalDropout(0.5)
    >>> h = torch.ones(2, 6)
    >>> torch.equal(drop(h), drop(h))          # the same mask at every call
    True
    >>> sorted(drop(h).unique().tolist())      # dropped, or kept and scaled by 1 / (1 - p)
    [0.0, 2.0]
    >>> reset_dropout(drop)                    # the next call draws a new mask
    1
    >>> drop.eval()(h).equal(h)                # identity in eval mode
    True
    """

    mask: Tensor | None

    def __init__(self, p: float = 0.5, *, shared_dims: int | Sequence[int] = ()) -> None:
        super().__init__()
        self.p = real("VariationalDropout", "p", p, low=0.0, high=1.0)
        self.shared_dims = _dims(shared_dims)
        self.mask = None

    def reset(self, like: Tensor | None = None) -> None:
        """Forget the mask, so that the next training-mode call draws a new one.

        With ``like``, draw the new mask now for an input with ``like``'s shape, dtype and
        device (its values are not used), e.g. before a :func:`torch.func.vmap`.
        """
        self.mask = None if like is None else self._draw(like)

    def forward(self, x: Tensor) -> Tensor:
        if not self.training or self.p == 0.0:
            return x
        if self.mask is None:
            self.mask = self._draw(x)
        return x * self._mask_for(x, self.mask)

    def _draw(self, like: Tensor) -> Tensor:
        shape = list(like.shape)
        for dim in self._resolve(like.dim()):
            shape[dim] = 1
        randomness = _vmap_randomness()
        if randomness is not None and randomness != "same":
            raise RuntimeError(
                "VariationalDropout: cannot draw its mask under torch.func.vmap with "
                f"randomness={randomness!r}: one mask is kept on the module, so the vmapped "
                "copies would have to share it. Draw it before the transform with "
                "drop.reset(like) for an input of one copy's shape (the copies then share it), "
                "use vmap(..., randomness='same'), or put the samples in the batch dimension "
                "instead of vmapping over them to give each its own mask"
            )
        with _plain_tensors():  # the mask outlives the call: no transform may wrap it
            keep = torch.empty(shape, dtype=like.dtype, device=like.device)
            if self.p == 1.0:
                return keep.zero_()
            return keep.bernoulli_(1.0 - self.p).mul_(1.0 / (1.0 - self.p))

    def _mask_for(self, x: Tensor, mask: Tensor) -> Tensor:
        expected = list(x.shape)
        for dim in self._resolve(x.dim()):
            expected[dim] = 1
        if list(mask.shape) != expected:
            raise RuntimeError(
                f"VariationalDropout: the mask was drawn for inputs of shape {tuple(mask.shape)} "
                f"(shared dims of size 1) but the input has shape {tuple(x.shape)}. Call "
                "fp.nn.reset_dropout(model) (or drop.reset()) when the batch changes, e.g. at "
                "each training step. Within one solve the shape changes when the samples that "
                "have converged are dropped (skip_converged=True), which variational dropout "
                "does not support: use skip_converged=False"
            )
        if mask.device != x.device:
            raise RuntimeError(
                f"VariationalDropout: the mask is on {mask.device} but the input on {x.device}; "
                "call fp.nn.reset_dropout(model) after moving the model"
            )
        return mask if mask.dtype == x.dtype else mask.to(x.dtype)  # e.g. under autocast

    def _resolve(self, ndim: int) -> list[int]:
        resolved = []
        for dim in self.shared_dims:
            if not -ndim <= dim < ndim:
                raise ValueError(
                    f"VariationalDropout: shared dim {dim} is out of range for an input with "
                    f"{ndim} dimensions"
                )
            resolved.append(dim % ndim)
        return resolved

    def extra_repr(self) -> str:
        shared = f", shared_dims={self.shared_dims}" if self.shared_dims else ""
        return f"p={self.p:g}{shared}"


def reset_dropout(module: nn.Module) -> int:
    """Reset every :class:`VariationalDropout` in ``module`` (itself included).

    Each one draws a new mask at its next training-mode call. Call it once per training step,
    before the forward pass, and whenever the batch size changes. Returns how many layers were
    reset.
    """
    if not isinstance(module, nn.Module):
        raise TypeError(f"reset_dropout: expected an nn.Module, got {type(module).__name__}")
    layers = [m for m in module.modules() if isinstance(m, VariationalDropout)]
    for layer in layers:
        layer.reset()
    return len(layers)


def _dims(shared_dims: int | Sequence[int]) -> tuple[int, ...]:
    dims = (shared_dims,) if isinstance(shared_dims, numbers.Integral) else shared_dims
    if isinstance(dims, (str, bytes)) or not isinstance(dims, Sequence):
        raise ValueError(
            f"VariationalDropout: shared_dims must be an int or a sequence of ints, got "
            f"{shared_dims!r}"
        )
    if any(isinstance(d, bool) or not isinstance(d, numbers.Integral) for d in dims):
        raise ValueError(
            f"VariationalDropout: shared_dims must be an int or a sequence of ints, got "
            f"{shared_dims!r}"
        )
    out = tuple(int(d) for d in dims)
    if len(set(out)) != len(out):
        raise ValueError(f"VariationalDropout: shared_dims repeats a dimension: {shared_dims!r}")
    return out


def _vmap_randomness() -> str | None:
    """How the :func:`torch.func.vmap` transforms around the call treat randomness.

    ``None`` outside ``vmap``, ``"same"`` when every enclosing ``vmap`` has
    ``randomness="same"``, else the first other setting found.
    """
    stack = _functorch.get_interpreter_stack() or []
    modes = []
    for interpreter in stack:
        if interpreter.key() == _functorch.TransformType.Vmap:
            try:
                from torch._functorch.pyfunctorch import coerce_cinterpreter

                vmap = coerce_cinterpreter(interpreter)
                modes.append(str(vmap.randomness()))  # type: ignore[attr-defined]
            except (ImportError, AttributeError):  # pragma: no cover - other torch releases
                modes.append("unknown")
    if not modes:
        return None
    return next((mode for mode in modes if mode != "same"), "same")


@contextlib.contextmanager
def _plain_tensors() -> Iterator[None]:
    """Create ordinary tensors: outside the torch.func transforms (which would wrap them) and
    outside inference mode (an inference tensor cannot be saved for a later backward)."""
    disable = getattr(torch._C, "_DisableFuncTorch", None)
    with (
        torch.inference_mode(False),
        disable() if disable is not None else contextlib.nullcontext(),
    ):
        yield
