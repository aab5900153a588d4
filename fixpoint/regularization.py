"""Regularisers for training implicit layers: the Jacobian penalty of Bai, Koltun and Kolter."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor

from fixpoint._transforms import vjp
from fixpoint._tree import FlatFunction, Layout
from fixpoint._validation import count, flag

__all__ = ["jacobian_penalty"]


def jacobian_penalty(
    f: Callable[..., Any],
    z: Any,
    *args: Any,
    batched: bool = False,
    samples: int = 1,
    generator: torch.Generator | None = None,
) -> Tensor:
    r"""Hutchinson estimate of :math:`\|\partial f/\partial z\|_F^2 / n` at ``z``, differentiable.

    The Jacobian regulariser of Bai, Koltun and Kolter, "Stabilizing Equilibrium Models by
    Jacobian Regularization" (ICML 2021). With :math:`J = \partial f/\partial z` at ``z`` and
    :math:`n` the size of one sample's state, it returns

    .. math::

        \hat p = \frac{1}{s\,n} \sum_{k=1}^{s} \|\varepsilon_k^\top J\|_2^2,
        \qquad \varepsilon_k \sim \mathcal N(0, I_n),

    an unbiased estimate of :math:`\|J\|_F^2 / n`, since
    :math:`\mathbb E\,\|\varepsilon^\top J\|_2^2 = \operatorname{tr}(J J^\top) = \|J\|_F^2`.
    Each of the :math:`s` = ``samples`` draws costs one vector–Jacobian product
    (:func:`torch.func.vjp`, whose result stays on autograd's graph, as with
    ``create_graph=True``), so that the estimate is differentiable with respect to the
    parameters ``f`` closes over (an ``nn.Module``'s included) and to ``args``: add
    ``λ · penalty.mean()`` to the training loss. Its relative standard deviation is at most
    :math:`\sqrt{2/s}` (:math:`\operatorname{Var} \|\varepsilon^\top J\|^2 = 2\|J J^\top\|_F^2
    \le 2\|J\|_F^4`), reached when one singular value of :math:`J` dominates, and
    :math:`\sqrt{2/(s n)}` when all :math:`n` are equal.

    Since :math:`\rho(J) \le \|J\|_2 \le \|J\|_F`, pushing the penalty down pushes the
    equilibrium towards a contraction: fewer solver iterations, better-conditioned backward
    solves. ``z`` is taken as given (detached): the penalty measures ``f`` at that point, and no
    gradient flows to whatever computed it.

    Parameters
    ----------
    f
        The map, called as ``f(z, *args)``, returning a state of ``z``'s structure.
    z
        The point, typically a fixed point ``z*``: a tensor or a pytree (tuple/list/dict) of
        tensors of one floating dtype; with ``batched``, leading dimension the batch.
    *args
        Extra inputs of ``f`` (the injection of an implicit layer), passed unchanged; gradients
        of the penalty reach them.
    batched
        One estimate per sample: ``n`` is then the size of one sample's state and row ``b`` of
        ``f`` must depend on row ``b`` of ``z`` only (no batch statistics in ``f``).
    samples
        Number of random draws :math:`s` (vjps) averaged, ≥ 1 (default 1, as in the paper).
    generator
        Random generator for the draws; they are made on its device (the CPU for a default
        ``torch.Generator()``) and moved to ``z``'s. Without one, torch's global generator for
        ``z``'s device is used. Under :func:`torch.func.vmap`, which refuses random draws by
        default, pass ``randomness="different"`` (or ``"same"``) to it.

    Returns
    -------
    Tensor
        Shape ``()``, or ``(B,)`` when batched, in ``z``'s dtype; attached to the autograd graph
        of ``f``'s parameters and ``args`` when they require gradients.

    Examples
    --------
    >>> import torch, fixpoint as fp
    >>> W = torch.tensor([[0.3, 0.4], [0.0, 0.5]], requires_grad=True)  # ‖W‖²_F / n = 0.25
    >>> z = torch.zeros(10_000, 2)  # 10,000 samples of one map: the mean averages their draws
    >>> penalty = fp.jacobian_penalty(lambda z: z @ W.T, z, batched=True,
    ...                               generator=torch.Generator().manual_seed(0))
    >>> penalty.shape, round(penalty.mean().item(), 2)
    (torch.Size([10000]), 0.25)
    >>> penalty.mean().backward()  # d(‖W‖²_F / n)/dW = W, up to the sampling error
    >>> torch.allclose(W.grad, W.detach(), atol=0.02)
    True
    """
    samples = count("jacobian_penalty", "samples", samples, 1)
    batched = flag("jacobian_penalty", "batched", batched)
    if generator is not None and not isinstance(generator, torch.Generator):
        raise TypeError(
            f"jacobian_penalty: generator must be a torch.Generator or None, "
            f"got {type(generator).__name__}"
        )
    layout = Layout.of(z, batched, name="z")
    z_flat = layout.flatten(z).detach()
    out, pullback = vjp(FlatFunction(f, layout, args), z_flat)
    work = torch.promote_types(out.dtype, torch.float32)  # sums of squares in ≥ float32
    total = out.new_zeros(out.shape[0], dtype=work)
    for _ in range(samples):
        (row,) = pullback(_normal(out, generator))
        total = total + row.to(work).square().sum(1)
    penalty = (total / (samples * layout.size)).to(out.dtype)
    return penalty if batched else penalty[0]


def _normal(like: Tensor, generator: torch.Generator | None) -> Tensor:
    """Standard normal entries shaped like ``like``, drawn on the generator's device."""
    if generator is None:
        return torch.randn(like.shape, dtype=like.dtype, device=like.device)
    draw = torch.randn(like.shape, generator=generator, dtype=like.dtype, device=generator.device)
    return draw.to(like.device)
