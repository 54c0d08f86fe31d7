"""Accounting modes: how bytes and FLOPs are counted. Each returns a :class:`~model.terms.Accounting`."""

from __future__ import annotations

from ..scenario import Scenario
from ..terms import Accounting
from . import flexllmgen

MODES = {"flexllmgen": flexllmgen.build}


def build_accounting(scenario: Scenario) -> Accounting:
    """The accounting of ``scenario.model.accounting`` for this scenario."""
    return MODES[scenario.model.accounting](scenario)
