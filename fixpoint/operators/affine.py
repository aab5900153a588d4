"""The affine map z ↦ A z + b, with its closed-form fixed point."""

from __future__ import annotations

import torch
from torch import Tensor, nn

__all__ = ["Affine"]


class Affine(nn.Module):
    r"""The affine map :math:`f(z) = A z + b` on the last dimension of ``z``.

    It is a contraction exactly when :math:`\|A\|_2 < 1`, with factor :math:`\|A\|_2`, and then its
    unique fixed point is :math:`z^* = (I - A)^{-1} b`. Calling ``f(z)`` uses the stored bias;
    ``f(z, b)`` uses ``b`` instead, so the bias can be passed through the ``args`` of
    :func:`fixpoint.solve` (batched as ``(B, n)``).

    Parameters
    ----------
    weight
        The matrix :math:`A`, shape ``(n, n)``.
    bias
        The vector :math:`b`, shape ``(n,)`` or ``(B, n)``.
    learnable
        Register ``weight`` and ``bias`` as ``nn.Parameter`` (else as buffers).

    Examples
    --------
    >>> import torch, fixpoint as fp
    >>> f = fp.operators.Affine(torch.tensor([[0.5, 0.0], [0.0, 0.25]]), torch.tensor([1.0, 3.0]))
    >>> f.fixed_point()
    tensor([2., 4.])
    >>> f.lipschitz()
    tensor(0.5000)
    """

    weight: Tensor
    bias: Tensor

    def __init__(self, weight: Tensor, bias: Tensor, *, learnable: bool = False) -> None:
        super().__init__()
        if weight.dim() != 2 or weight.shape[0] != weight.shape[1]:
            raise ValueError(
                f"Affine: weight must be a square matrix, got shape {tuple(weight.shape)}"
            )
        if bias.shape[-1] != weight.shape[0]:
            raise ValueError(
                f"Affine: bias has {bias.shape[-1]} entries in its last dimension, "
                f"weight is {tuple(weight.shape)}"
            )
        if learnable:
            self.weight = nn.Parameter(weight)
            self.bias = nn.Parameter(bias)
        else:
            self.register_buffer("weight", weight)
            self.register_buffer("bias", bias)

    def forward(self, z: Tensor, bias: Tensor | None = None) -> Tensor:
        return z @ self.weight.mT + (self.bias if bias is None else bias)

    def fixed_point(self, bias: Tensor | None = None) -> Tensor:
        """The solution :math:`(I - A)^{-1} b` by a dense solve (batched over ``b``)."""
        b = self.bias if bias is None else bias
        eye = torch.eye(self.weight.shape[0], dtype=self.weight.dtype, device=self.weight.device)
        return torch.linalg.solve(eye - self.weight, b[..., None])[..., 0]

    def lipschitz(self) -> Tensor:
        """The exact Lipschitz constant :math:`\\|A\\|_2`."""
        return torch.linalg.matrix_norm(self.weight, ord=2)
