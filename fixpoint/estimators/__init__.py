"""Gradient estimators: each maps the incoming gradient g to the vector w pulled back through f."""

from fixpoint.estimators.base import ConvergenceWarning, Estimate, Estimator
from fixpoint.estimators.bicgstab import BiCGStab
from fixpoint.estimators.cg import CG
from fixpoint.estimators.exact import Exact
from fixpoint.estimators.gmres import GMRES
from fixpoint.estimators.implicit import Implicit
from fixpoint.estimators.jfb import JFB
from fixpoint.estimators.neumann import Neumann
from fixpoint.estimators.phantom import Phantom

__all__ = [
    "CG",
    "GMRES",
    "JFB",
    "BiCGStab",
    "ConvergenceWarning",
    "Estimate",
    "Estimator",
    "Exact",
    "Implicit",
    "Neumann",
    "Phantom",
]
