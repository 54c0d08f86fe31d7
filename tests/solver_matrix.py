"""The solvers installed here: tests are parameterized over these (the rest are skipped as not installed)."""

from __future__ import annotations

import pytest

from model.solvers import SOLVERS

INSTALLED = [name for name, spec in SOLVERS.items() if spec.available()]


def solver_params():
    """Every known solver as a pytest param; the ones that are not installed are skipped, saying so."""
    return [pytest.param(name, marks=pytest.mark.skipif(name not in INSTALLED, reason=f"{name} is not installed"))
            for name in SOLVERS]
