"""Counting the Jacobian–vector products that gradient estimators make."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

__all__ = ["MatvecCount", "count_matvecs"]


@dataclass(eq=False)
class MatvecCount:
    """Jacobian products counted per sample: a product on a batch of ``B`` samples adds ``B``.

    Attributes
    ----------
    vjp
        Products :math:`v \\mapsto J^\\top v`.
    jvp
        Products :math:`v \\mapsto J v`.

    Examples
    --------
    >>> import fixpoint as fp
    >>> with fp.count_matvecs() as count:
    ...     pass
    >>> count
    MatvecCount(vjp=0, jvp=0)
    """

    vjp: int = 0
    jvp: int = 0

    @property
    def total(self) -> int:
        """``vjp + jvp``."""
        return self.vjp + self.jvp


_active = threading.local()


def _counters() -> list[MatvecCount]:
    if not hasattr(_active, "stack"):
        _active.stack = []
    return _active.stack


def record(kind: str, samples: int) -> None:
    """Add ``samples`` products of ``kind`` (``"vjp"`` or ``"jvp"``) to every open counter."""
    for counter in _counters():
        setattr(counter, kind, getattr(counter, kind) + samples)


@contextmanager
def count_matvecs() -> Iterator[MatvecCount]:
    """Count the Jacobian–vector products that gradient estimators make inside the block.

    This is the "# of J mat-vecs" column of the JFB paper's Table 2: products with
    :math:`J = \\partial f/\\partial z` at the fixed point, made while computing the vector ``w``
    that is pulled back through :math:`\\partial f/\\partial\\theta` (that last pull-back is not a
    product with :math:`J` and is not counted). Blocks may be nested; each counts everything
    inside it. Counting is per thread.

    Examples
    --------
    >>> import torch, fixpoint as fp
    >>> theta = torch.tensor([1.0, 2.0], requires_grad=True)
    >>> z = fp.fixed_point(lambda z, t: 0.5 * torch.tanh(z) + t, torch.zeros(2), theta,
    ...                    estimator=fp.Neumann(k=3))
    >>> with fp.count_matvecs() as count:
    ...     z.sum().backward()
    >>> count.vjp, count.jvp
    (3, 0)
    """
    counter = MatvecCount()
    stack = _counters()
    stack.append(counter)
    try:
        yield counter
    finally:
        del stack[next(i for i, c in enumerate(stack) if c is counter)]
