"""NumPy in and out of :func:`fixpoint.solve`: scipy-style problems on the torch solvers.

With a NumPy ``z0`` (an array, a NumPy scalar, or a pytree of arrays) the call is a *NumPy
solve*: ``z0`` is copied into a CPU tensor of its own dtype, the solver iterates on tensors,
``f`` is called with NumPy copies of the iterate and its output is copied back into a tensor of
``z0``'s dtype; the solution's ``value`` (and ``iterates``) come back as NumPy arrays. The
statistics stay tensors, which :class:`~fixpoint.Solution` needs for ``status`` and its repr.

With a tensor ``z0`` nothing changes: ``f`` is called as given (a NumPy output is then the
solve's usual "f must return a tensor" error).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.utils._pytree as pytree
from torch import Tensor

from fixpoint._registry import suggest
from fixpoint._transforms import transforms_active
from fixpoint.solution import Solution
from fixpoint.solvers.base import Solver

__all__ = ["Interop"]

_FLOATS = {np.dtype(np.float16), np.dtype(np.float32), np.dtype(np.float64)}
_NUMPY_OF = {torch.float16: np.float16, torch.float32: np.float32, torch.float64: np.float64}


def _is_numpy(x: Any) -> bool:
    return isinstance(x, (np.ndarray, np.generic))


def _native(dtype: np.dtype) -> np.dtype:
    return dtype.newbyteorder("=")


def _to_tensor(out: Any, dtype: torch.dtype, device: torch.device) -> Tensor:
    """A fresh tensor of ``dtype`` with the values of ``out`` (an array, a NumPy or Python
    number, or a nested list of them); raise a ``TypeError`` for non-real values."""
    arr = np.asarray(out)
    if arr.dtype.kind not in "biuf":
        raise TypeError(
            f"f returned {type(out).__name__} of dtype {arr.dtype}, where the state is "
            f"{str(dtype).removeprefix('torch.')}: f must return real numbers"
        )
    # A copy: f may hand back a buffer it reuses, or its input; the solver keeps what it gets.
    # bfloat16 and other dtypes NumPy lacks go through float32.
    copy = arr.astype(_NUMPY_OF.get(dtype, np.float32), order="C", copy=True)
    return torch.from_numpy(copy).to(dtype=dtype, device=device)


@dataclass(frozen=True)
class Interop:
    """How one :func:`fixpoint.solve` call moves between NumPy and torch.

    ``numpy``: whether ``z0`` was NumPy. ``z0`` and ``args`` are what the solve runs on (``z0``
    as tensors in a NumPy solve; NumPy arrays of ``args`` as tensors only with
    ``skip_converged``, so that they are sliced with the samples, at the flat positions
    ``restore``). ``dtypes`` and ``scalars``: per leaf of ``z0``, its NumPy dtype and whether
    it was a NumPy scalar. ``dtype`` and ``device``: the tensor state's, for ``f``'s outputs.
    """

    numpy: bool
    z0: Any
    args: tuple[Any, ...]
    spec: pytree.TreeSpec | None = None
    dtypes: tuple[np.dtype, ...] = ()
    scalars: tuple[bool, ...] = ()
    restore: tuple[int, ...] = ()
    dtype: torch.dtype | None = None
    device: torch.device | None = None

    @classmethod
    def of(cls, z0: Any, args: tuple[Any, ...], solver: Solver, *, skip_converged: bool) -> Interop:
        """Read ``z0``; for NumPy, check the call can be one and convert ``z0`` (and ``args``)."""
        leaves, spec = pytree.tree_flatten(z0)
        if not any(map(_is_numpy, leaves)):
            return cls(False, z0, args)  # a tensor solve: fp.solve's own checks apply
        if not all(map(_is_numpy, leaves)):
            others = sorted({type(leaf).__name__ for leaf in leaves if not _is_numpy(leaf)})
            raise TypeError(
                f"z0 mixes NumPy arrays with {', '.join(others)}: give every leaf as a NumPy "
                "array (a NumPy solve, value returned as NumPy) or every leaf as a tensor"
            )
        if transforms_active():
            raise RuntimeError(
                "fp.solve: a NumPy z0 under a torch.func transform (vmap, grad, jvp, ...): a "
                "NumPy function cannot see batched or differentiated tensors. Give z0 as a "
                "tensor and write f with torch operations"
            )
        if solver.differentiates_map:
            raise TypeError(
                f"fp.solve: {type(solver).__name__} takes Jacobian-vector products of f, and "
                "autograd cannot differentiate a NumPy function. With a NumPy z0 use a solver "
                f"that needs evaluations of f only: {suggest('solver', differentiates_map=False)}"
            )
        arrays = [np.asarray(leaf) for leaf in leaves]
        for i, arr in enumerate(arrays):
            if _native(arr.dtype) not in _FLOATS:
                where = "" if spec.is_leaf() else f" (leaf {i})"
                raise TypeError(
                    f"z0{where} must be a float16, float32 or float64 array, got {arr.dtype}; "
                    "e.g. pass z0.astype(np.float64)"
                )
        # Copies: the solve never writes into the caller's array, and sees no odd strides.
        tensors = [
            torch.from_numpy(np.array(a, dtype=_native(a.dtype), order="C", copy=True))
            for a in arrays
        ]
        restore: list[int] = []
        if skip_converged:
            flat, args_spec = pytree.tree_flatten(args)
            for i, a in enumerate(flat):
                if isinstance(a, np.ndarray) and a.dtype.kind in "biufc":
                    flat[i] = torch.from_numpy(
                        np.array(a, dtype=_native(a.dtype), order="C", copy=True)
                    )
                    restore.append(i)
            args = pytree.tree_unflatten(flat, args_spec)
        return cls(
            True,
            pytree.tree_unflatten(tensors, spec),
            args,
            spec=spec,
            dtypes=tuple(_native(a.dtype) for a in arrays),
            scalars=tuple(isinstance(leaf, np.generic) for leaf in leaves),
            restore=tuple(restore),
            dtype=tensors[0].dtype,
            device=tensors[0].device,
        )

    def wrap(self, f: Callable[..., Any], has_aux: bool) -> Callable[..., Any]:
        """``f`` as a map of tensors: NumPy copies in (a NumPy solve), tensors out."""
        if not self.numpy:
            return f  # a tensor solve: f as given, nothing added to each evaluation

        def numpy_f(z: Any, *args: Any) -> Any:
            z = pytree.tree_map(lambda t: t.detach().cpu().numpy().copy(), z)
            if self.restore:
                flat, spec = pytree.tree_flatten(args)
                for i in self.restore:
                    flat[i] = flat[i].detach().cpu().numpy()
                args = pytree.tree_unflatten(flat, spec)
            out = f(z, *args)
            if has_aux:
                if isinstance(out, tuple) and len(out) == 2:
                    return self._state(out[0]), out[1]
                return out  # the solve's own check says what is wrong
            return self._state(out)

        return numpy_f

    def _state(self, out: Any) -> Any:
        """``f``'s output in a NumPy solve, as tensors of the state's dtype."""
        assert self.spec is not None and self.dtype is not None and self.device is not None
        dtype, device = self.dtype, self.device
        if self.spec.is_leaf():  # like scipy: anything np.asarray reads (lists, numbers)
            return out if isinstance(out, Tensor) else _to_tensor(out, dtype, device)
        leaves, spec = pytree.tree_flatten(out)
        if spec != self.spec:
            return out  # the solve's own check names the difference of structure
        return pytree.tree_unflatten(
            [t if isinstance(t, Tensor) else _to_tensor(t, dtype, device) for t in leaves], spec
        )

    def value(self, tree: Any) -> Any:
        """A state of the solve (tensors) as the caller gave ``z0``: NumPy in a NumPy solve."""
        if not self.numpy:
            return tree
        leaves, spec = pytree.tree_flatten(tree)
        arrays = []
        for t, dtype, scalar in zip(leaves, self.dtypes, self.scalars, strict=True):
            arr = t.detach().cpu().numpy().astype(dtype, copy=False)
            arrays.append(arr[()] if scalar else arr)
        return pytree.tree_unflatten(arrays, spec)

    def solution(self, sol: Solution) -> Solution:
        """``sol`` with its ``value`` (and kept ``iterates``) as the caller gave ``z0``."""
        if not self.numpy:
            return sol
        changes: dict[str, Any] = {"value": self.value(sol.value)}
        iterates = getattr(sol, "iterates", None)
        if iterates is not None:
            changes["iterates"] = tuple(self.value(v) for v in iterates)
        return dataclasses.replace(sol, **changes)
