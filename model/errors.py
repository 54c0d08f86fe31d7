"""Errors that the command line turns into one-line messages and exit codes.

``InputError``   bad input (exit status 2): names the field and the value.
``Infeasible``   the scenario cannot hold any policy (exit status 1): names the
                 resource that cannot hold what.
``SolverError``  the solver failed or its answer did not survive re-checking.
"""

from __future__ import annotations


class InputError(ValueError):
    """A scenario field, flag or file is invalid.

    ``field`` is a dotted path (``hardware.memory_gib.gpu``) or a flag
    (``--gpu-batch-size``); ``value`` is what was given.
    """

    def __init__(self, field: str, value: object, problem: str):
        self.field = field
        self.value = value
        self.problem = problem
        super().__init__(f"{field} = {value!r}: {problem}")


class Infeasible(RuntimeError):
    """No policy fits: ``reasons`` lists what does not fit where, one line each."""

    def __init__(self, reasons: list[str]):
        self.reasons = list(reasons)
        super().__init__("infeasible: " + "; ".join(self.reasons))


class SolverError(RuntimeError):
    """The solver failed, hit a limit without a policy, or disagreed with the re-check."""
