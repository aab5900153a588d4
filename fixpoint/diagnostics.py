"""How wrong is an inexact gradient? Compare estimators against a tightly solved reference."""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.utils._pytree as pytree
from torch import Tensor

from fixpoint._norms import row_norm
from fixpoint._tree import Layout
from fixpoint.estimators.base import Estimate, Estimator
from fixpoint.estimators.implicit import Implicit
from fixpoint.linearization import Linearization
from fixpoint.matvecs import count_matvecs
from fixpoint.solvers.anderson import Anderson

__all__ = ["EstimatorComparison", "compare_estimators", "format_comparison"]


@dataclass(frozen=True)
class EstimatorComparison:
    """One estimator's ``w`` against the reference ``w*``, per sample (shape ``(B,)``).

    Attributes
    ----------
    estimator
        The estimator's :attr:`~fixpoint.Estimator.name` (its options that differ from the
        defaults).
    cosine
        Cosine similarity :math:`\\langle w, w^*\\rangle / (\\|w\\|\\|w^*\\|)`.
    relative_error
        :math:`\\|w - w^*\\| / \\|w^*\\|`.
    vjp, jvp
        Jacobian products used, counted per sample.
    seconds
        Wall time of the estimator call.
    """

    estimator: str
    cosine: Tensor
    relative_error: Tensor
    vjp: int
    jvp: int
    seconds: float


def compare_estimators(
    f: Callable[..., Any],
    z: Any,
    *args: Any,
    estimators: Sequence[Estimator],
    g: Any = None,
    batched: bool = False,
    reference: Estimator | None = None,
    generator: torch.Generator | None = None,
) -> list[EstimatorComparison]:
    r"""Compare the ``w`` of several estimators with a tightly solved implicit reference.

    At the point ``z`` (a fixed point of ``f``, e.g. ``fp.solve(...).value``) and for an
    incoming gradient ``g`` (default: standard normal), each estimator's
    :math:`w \approx (I - J^\top)^{-1} g` is compared with the reference :math:`w^*` (default:
    :class:`~fixpoint.Implicit` with Anderson solved to near machine precision). The descent
    property of a gradient estimate depends on the cosine being positive; its accuracy on the
    relative error.

    Parameters
    ----------
    f
        The map, called as ``f(z, *args)``.
    z
        The fixed point (tensor or pytree, ``(B, ...)`` leaves when ``batched``).
    *args
        Extra inputs of ``f``, held constant.
    estimators
        The estimators to compare.
    g
        Incoming gradient with the structure of ``z`` (default: standard normal).
    batched
        Compare per sample (leading dimension of ``z`` is the batch).
    reference
        Estimator giving :math:`w^*` (default: ``Implicit(Anderson(m=10))`` to 100·eps).
    generator
        Random generator for the default ``g``.

    Returns
    -------
    list of EstimatorComparison
        One row per estimator; :func:`format_comparison` prints them as a table.

    Examples
    --------
    >>> import torch, fixpoint as fp
    >>> W = 0.8 * torch.linalg.qr(torch.randn(20, 20, dtype=torch.float64))[0]
    >>> f = lambda z: torch.tanh(W @ z + 1.0)
    >>> z = fp.solve(f, torch.zeros(20, dtype=torch.float64)).value
    >>> rows = fp.compare_estimators(f, z, estimators=[fp.JFB(), fp.Neumann(k=10), fp.Exact()])
    >>> [round(r.cosine.item(), 2) > 0.5 for r in rows], rows[2].relative_error.item() < 1e-10
    ([True, True, True], True)
    """
    layout = Layout.of(z, batched, name="z")
    z_flat = layout.flatten(z).detach()
    constants = pytree.tree_map(lambda a: a.detach() if isinstance(a, Tensor) else a, args)

    def fn(v: Tensor) -> Tensor:
        return layout.flatten(f(layout.unflatten(v), *constants))

    if g is None:
        g_flat = torch.randn(
            z_flat.shape, generator=generator, dtype=z_flat.dtype, device="cpu"
        ).to(z_flat.device)
    else:
        g_flat = layout.flatten(g).detach()
    if reference is None:
        tight = 100 * torch.finfo(z_flat.dtype).eps
        reference = Implicit(Anderson(m=10, atol=0.0, rtol=tight, max_iter=1000))

    def run(estimator: Estimator) -> tuple[Tensor, int, int, float]:
        lin = Linearization(fn, z_flat)
        with torch.no_grad(), count_matvecs() as count:
            start = time.perf_counter()
            result = estimator(g_flat, lin.vjp, lin.jvp)
            seconds = time.perf_counter() - start
        w = result.w if isinstance(result, Estimate) else result
        return w, count.vjp, count.jvp, seconds

    w_ref = run(reference)[0]
    ref_norm = row_norm(w_ref)
    rows = []
    for estimator in estimators:
        w, vjps, jvps, seconds = run(estimator)
        cosine = (w * w_ref).sum(1) / (row_norm(w) * ref_norm)
        error = row_norm(w - w_ref) / ref_norm
        if not batched:
            cosine, error = cosine[0], error[0]
        rows.append(EstimatorComparison(estimator.name, cosine, error, vjps, jvps, seconds))
    return rows


def format_comparison(rows: Sequence[EstimatorComparison]) -> str:
    """A plain-text table of :func:`compare_estimators` rows (means over samples).

    Parameters
    ----------
    rows
        The output of :func:`compare_estimators`.

    Examples
    --------
    >>> import torch, fixpoint as fp
    >>> f = fp.operators.Affine(0.5 * torch.eye(3), torch.ones(3))
    >>> rows = fp.compare_estimators(f, f.fixed_point(), estimators=[fp.JFB(), fp.Neumann(k=4)])
    >>> print(fp.format_comparison(rows).splitlines()[0].split())
    ['estimator', 'cosine', 'rel.', 'error', 'vjp', 'jvp', 'ms']
    """
    width = max([len(r.estimator) for r in rows] + [9])
    lines = [
        f"{'estimator':<{width}}  {'cosine':>8}  {'rel. error':>10}  {'vjp':>6}  "
        f"{'jvp':>6}  {'ms':>8}"
    ]
    for r in rows:
        lines.append(
            f"{r.estimator:<{width}}  {r.cosine.float().mean().item():>8.4f}  "
            f"{r.relative_error.float().mean().item():>10.2e}  {r.vjp:>6}  {r.jvp:>6}  "
            f"{1e3 * r.seconds:>8.2f}"
        )
    return "\n".join(lines)
