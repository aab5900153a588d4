"""A new forward solver: fixed-point iteration with momentum (the heavy-ball method)."""

from collections.abc import Callable
from dataclasses import dataclass

from torch import Tensor

import fixpoint as fp


@dataclass(frozen=True)
class HeavyBall(fp.Solver):
    """Relaxed fixed-point steps plus momentum: z ← z + α (f(z) − z) + β (z − z_prev).

    Its state is the previous iterate, a ``(B, n)`` matrix like ``z``.
    """

    alpha: float = 1.0  # relaxation α ∈ (0, 1]
    momentum: float = 0.3  # β ∈ [0, 1)

    def __post_init__(self) -> None:
        super().__post_init__()  # checks atol, rtol, max_iter and divergence
        if not 0 < self.alpha <= 1:
            raise ValueError(f"HeavyBall: alpha must be in (0, 1], got {self.alpha!r}")
        if not 0 <= self.momentum < 1:
            raise ValueError(f"HeavyBall: momentum must be in [0, 1), got {self.momentum!r}")

    def init(self, fn: Callable[[Tensor], Tensor], z: Tensor, fz: Tensor) -> Tensor:
        return z  # no previous iterate yet: the first step is a plain relaxed step

    def step(
        self, fn: Callable[[Tensor], Tensor], z: Tensor, fz: Tensor, g: Tensor, z_prev: Tensor
    ) -> tuple[Tensor, Tensor, Tensor]:
        z_next = z + self.alpha * g + self.momentum * (z - z_prev)
        return z_next, fn(z_next), z
