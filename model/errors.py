"""Errors that the command line turns into one-line messages and exit codes.

``InputError``   bad input (exit status 2): names the field and the value.
``Infeasible``   the scenario cannot hold any policy (exit status 1): names the
                 resource that cannot hold what.
``SolverError``  the solver failed or its answer did not survive re-checking.
"""

from __future__ import annotations

from typing import Any


def excerpt(value: Any, limit: int = 240, _depth: int = 0) -> str:
    """A bounded, escaped, one-line quote of ``value`` for an error message.

    Containers are summarized without walking them whole; integers too long to print are
    described by their digit count; strings are cut.
    """
    if isinstance(value, bool) or value is None:
        return repr(value)
    if isinstance(value, int):
        try:
            text = repr(value)
        except ValueError:   # more digits than Python prints
            return f"<an integer of more than {4300} digits>"
        return text if len(text) <= limit else f"<an integer of {len(text)} digits>"
    if isinstance(value, float):
        return repr(value)
    if isinstance(value, str):
        text = value[: limit + 1].encode("unicode_escape").decode("ascii")
        return repr(text[:limit]) + ("..." if len(value) > limit or len(text) > limit else "")
    if isinstance(value, (list, tuple)):
        if _depth >= 3:   # nested lists are quoted three levels deep, not to Python's recursion limit
            return f"[... ({len(value)} items)]" if value else "[]"
        head = ", ".join(excerpt(v, 20, _depth + 1) for v in list(value[:4]))
        more = f", ... ({len(value)} items)" if len(value) > 4 else ""
        text = f"[{head}{more}]"
        return text if len(text) <= 2 * limit else f"<a list of {len(value)} items>"
    if isinstance(value, dict):
        keys = list(value.keys())[:4]
        head = ", ".join(f"{excerpt(k, 20)}: ..." for k in keys)
        more = f", ... ({len(value)} keys)" if len(value) > 4 else ""
        return f"{{{head}{more}}}"
    return f"<{type(value).__name__}>"



class InputError(ValueError):
    """A scenario field, flag or file is invalid.

    ``field`` is a dotted path (``hardware.memory_gib.gpu``) or a flag
    (``--gpu-batch-size``); ``value`` is what was given.
    """

    def __init__(self, field: str, value: object, problem: str):
        self.field = field
        self.value = value
        self.problem = problem
        super().__init__(f"{field} = {excerpt(value)}: {problem}")

    @property
    def shown(self) -> str:
        """The value as quoted in messages: bounded, escaped, one line."""
        return excerpt(self.value)


class Infeasible(RuntimeError):
    """No policy fits: ``reasons`` lists what does not fit where, one line each."""

    def __init__(self, reasons: list[str]):
        self.reasons = list(reasons)
        super().__init__("infeasible: " + "; ".join(self.reasons))


class SolverError(RuntimeError):
    """The solver failed, hit a limit without a policy, or disagreed with the re-check."""
