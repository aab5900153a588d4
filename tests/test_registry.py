"""The common test registry is the package: every exported method is registered, tested by the
cross-cutting suites through tests/methods.py, and documented."""

import inspect
from pathlib import Path

import pytest

import fixpoint as fp
from tests.methods import ESTIMATOR_CLASSES, SOLVER_CLASSES, estimators, solvers

DOCS = Path(__file__).resolve().parents[1] / "docs"
EXPORTED = [getattr(fp, name) for name in fp.__all__]


def exported(base: type) -> set[type]:
    return {o for o in EXPORTED if inspect.isclass(o) and issubclass(o, base) and o is not base}


def test_every_exported_method_is_in_the_registry_and_the_other_way_round():
    assert exported(fp.Solver) == set(SOLVER_CLASSES)
    assert exported(fp.Estimator) == set(ESTIMATOR_CLASSES)
    assert len(SOLVER_CLASSES) >= 4 and len(ESTIMATOR_CLASSES) >= 8


def test_every_method_builds_for_the_tests():
    assert [type(s) for s in solvers(1e-8)] == list(SOLVER_CLASSES)
    assert [type(e) for e in estimators(1e-8)] == list(ESTIMATOR_CLASSES)


@pytest.mark.parametrize("cls", [*SOLVER_CLASSES, *ESTIMATOR_CLASSES], ids=lambda c: c.__name__)
def test_every_method_has_an_api_entry(cls):
    pages = "\n".join(p.read_text() for p in (DOCS / "api").glob("*.md"))
    assert f"::: fixpoint.{cls.__name__}\n" in pages


def test_capabilities_are_declared_and_consistent():
    for cls in ESTIMATOR_CLASSES:
        assert isinstance(cls.uses_vjp, bool) and isinstance(cls.uses_jvp, bool)
        assert not cls.solves or cls.exact  # solving to a tolerance is exact up to it
    for cls in SOLVER_CLASSES:
        assert isinstance(cls.needs_active, bool) and isinstance(cls.differentiates_map, bool)


def test_messages_name_the_methods_from_the_registry():
    from fixpoint._registry import suggest

    vjp_only = suggest("estimator", uses_jvp=False)
    assert "fp.GMRES()" in vjp_only and "fp.CG()" not in vjp_only
    assert suggest("solver", differentiates_map=False).count("fp.") == len(SOLVER_CLASSES) - 1
