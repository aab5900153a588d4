"""Which torch.func transforms are active around a call."""

from __future__ import annotations

import torch


def active_transforms() -> list[str]:
    """Names of the torch.func transforms wrapping the current call, outermost first."""
    stack = torch._C._functorch.get_interpreter_stack() or []
    return [interpreter.key().name.lower() for interpreter in stack]


def refuse_vmap(name: str) -> None:
    """Raise a clear error when called under ``torch.func.vmap``."""
    if "vmap" in active_transforms():
        raise RuntimeError(
            f"{name} cannot run under torch.func.vmap: the solver stops on data-dependent "
            "tests, which vmap cannot batch. Solve a batch of independent problems with "
            "batched=True instead (the leading dimension of z0 and of batched arguments is the "
            "batch; stopping, statistics and gradients are per sample)."
        )
