"""Forward solvers: each finds ``z`` with ``z = f(z)``; the base class owns the loop."""

from fixpoint.solvers.anderson import Anderson
from fixpoint.solvers.base import Solver
from fixpoint.solvers.broyden import Broyden
from fixpoint.solvers.newton_krylov import NewtonKrylov
from fixpoint.solvers.picard import Picard

__all__ = ["Anderson", "Broyden", "NewtonKrylov", "Picard", "Solver"]
