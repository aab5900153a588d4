"""Operator norms of linear layers, and projecting layers onto a Lipschitz bound.

To keep a learned map γ-contractive, compose 1-Lipschitz activations with linear layers whose
*operator* norm is at most 1 and scale by γ. For a convolution the operator norm (the largest
singular value of the map on images of a given size) differs from the norm of its reshaped weight
matrix that ``torch.nn.utils.parametrizations.spectral_norm`` uses, so it is computed here by
power iteration on the layer itself.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from fixpoint._transforms import vjp
from fixpoint._validation import count, real

__all__ = ["clip_operator_norm_", "operator_norm"]

Layer = nn.Linear | nn.Conv1d | nn.Conv2d | nn.Conv3d
_VECTOR = "_fp_power_vector"


def _linear_part(layer: Layer) -> Callable[[Tensor], Tensor]:
    """The layer without its bias: the linear map whose norm bounds its Lipschitz constant."""
    if isinstance(layer, nn.Linear):
        return lambda x: F.linear(x, layer.weight)
    if isinstance(layer, (nn.Conv1d, nn.Conv2d, nn.Conv3d)):
        if layer.padding_mode != "zeros":
            raise ValueError(
                f"operator_norm: only zero padding is linear, got padding_mode="
                f"{layer.padding_mode!r}"
            )
        conv = {1: F.conv1d, 2: F.conv2d, 3: F.conv3d}[layer.weight.dim() - 2]
        return lambda x: conv(
            x, layer.weight, None, layer.stride, layer.padding, layer.dilation, layer.groups
        )
    raise TypeError(
        f"operator_norm: expected nn.Linear or nn.Conv1d/2d/3d, got {type(layer).__name__}"
    )


def operator_norm(
    layer: Layer,
    input_shape: Sequence[int],
    *,
    iters: int = 50,
    generator: torch.Generator | None = None,
) -> Tensor:
    r"""The operator norm :math:`\|A\|_2` of a linear or convolutional layer's linear part.

    Power iteration on :math:`A^\top A` for inputs of shape ``input_shape`` (without the batch
    dimension), warm-started from the vector the previous call on this layer ended with (kept
    on the layer as a non-persistent buffer, so it follows ``.to()``). The returned value is
    :math:`\|A v\|` for the final unit vector :math:`v`: a lower bound that converges to
    :math:`\|A\|_2`.

    Parameters
    ----------
    layer
        ``nn.Linear`` or ``nn.Conv1d/2d/3d`` (zero padding). The bias does not count.
    input_shape
        Shape of one input, e.g. ``(channels, height, width)``.
    iters
        Power iterations, ≥ 1.
    generator
        Random generator for the first start vector.

    Examples
    --------
    >>> import torch, fixpoint as fp
    >>> conv = torch.nn.Conv2d(1, 1, 3, padding=1, bias=False)
    >>> with torch.no_grad():
    ...     _ = conv.weight.fill_(1.0)           # the 3×3 box sum: norm → 9 on large images
    >>> round(fp.operators.operator_norm(conv, (1, 32, 32), iters=200).item(), 1)
    8.9
    """
    iters = count("operator_norm", "iters", iters, 1)
    apply = _linear_part(layer)
    weight = layer.weight
    shape = (1, *input_shape)
    v = getattr(layer, _VECTOR, None)
    if v is None or v.shape != torch.Size(shape):
        v = torch.randn(shape, generator=generator, dtype=weight.dtype, device="cpu")
        v = v.to(weight.device)
    v = v / torch.linalg.vector_norm(v)
    with torch.no_grad():
        av, pullback = vjp(apply, v)
        for _ in range(iters):
            (w,) = pullback(av)
            v = w / torch.linalg.vector_norm(w).clamp_min(1e-30)
            av, pullback = vjp(apply, v)
    layer.register_buffer(_VECTOR, v.detach().clone(), persistent=False)
    return torch.linalg.vector_norm(av)


def clip_operator_norm_(
    layer: Layer, input_shape: Sequence[int], bound: float = 1.0, *, iters: int = 3
) -> Tensor:
    r"""Scale ``layer``'s weight (and bias) in place so that its operator norm is at most ``bound``.

    A projection for projected training: call it after every optimiser step (and once after
    construction, with more ``iters``) to keep, e.g., the latent map of an implicit network a
    contraction. Because the power vector is warm-started, a few iterations per step track the
    norm as the weights change. The bias is scaled with the weight so the layer stays
    :math:`\alpha(Wx + b)`, like the JFB paper's normalisation.

    Parameters
    ----------
    layer
        ``nn.Linear`` or ``nn.Conv1d/2d/3d`` (zero padding).
    input_shape
        Shape of one input, without the batch dimension.
    bound
        The largest operator norm allowed, > 0 (default 1).
    iters
        Power iterations for the norm (default 3; warm-started, see :func:`operator_norm`).

    Returns
    -------
    Tensor
        The operator norm measured before clipping.

    Examples
    --------
    >>> import torch, fixpoint as fp
    >>> layer = torch.nn.Linear(4, 4)
    >>> with torch.no_grad():
    ...     _ = layer.weight.mul_(10.0)
    >>> _ = fp.operators.clip_operator_norm_(layer, (4,), iters=100)
    >>> bool(torch.linalg.matrix_norm(layer.weight, 2) <= 1.0 + 1e-5)
    True
    """
    bound = real("clip_operator_norm_", "bound", bound, low=0, low_open=True)
    sigma = operator_norm(layer, input_shape, iters=iters)
    if sigma > bound:
        with torch.no_grad():
            scale = bound / sigma
            layer.weight.mul_(scale)
            if layer.bias is not None:
                layer.bias.mul_(scale)
    return sigma
