"""What the families tell everyone else about their constraints: limits, labels, completion.

A *limit* is a constraint whose bound a scenario value sets (a memory capacity, a latency
limit). A family registers each with :func:`limit`; from then on, without further edits,

* a fixed policy that breaks it is reported by the evaluator in plain words with the amount
  needed and the amount allowed (:func:`violations`),
* the infeasibility explanation relaxes it (through its scenario field) and says by how much
  it is short (``model.optimize``),
* the sensitivity report names it when it binds (:func:`describe`), and prices its field.

A *label* names any other constraint component in plain words (``prefill layer time:
compute``) for the "Limits" line. A family with auxiliary variables may register a
*completion*: how to set them at a fixed policy without a solver (the epigraph of a max is the
max), so that a fully fixed policy is evaluated by the same model at a point.

One tolerance decides "fits" everywhere (:data:`FIT_TOL`): the optimizer's re-check, the
fixed-policy evaluator and the integer percents all call :func:`row_violation`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import pyomo.environ as pyo

# A row fits when it is violated by at most FIT_TOL * max(1, |bound|), in the row's own units
# (per-sequence MiB or microseconds inside the model). 1e-7 is the loosest primal feasibility
# tolerance of a supported solver's LP (CBC's and glpsol's defaults; HiGHS runs at 1e-9), so an
# LP solution any of them returns is judged the same way as the evaluator judges a fixed policy:
# one tolerance, the same verdict (a 12.8 GiB capacity at b = 1,890: 1.3 KiB).
FIT_TOL = 1e-7


@dataclass
class Limit:
    """A constraint bounded by a scenario value.

    ``needed(m)`` and ``allowed(m)`` are in natural units (``unit``: GiB, s) at the model's
    current point (a fixed policy); ``field`` is the dotted scenario field whose increase
    relaxes it; ``group`` names the limits that the field relaxes together (GPU memory in
    prefill and in decode are both relaxed by ``hardware.memory_gib.gpu``).
    """

    family: str
    name: str
    label: str
    group: str
    field: str
    unit: str
    constraint: object
    needed: Callable
    allowed: Callable
    detail: Callable | None = None        # e.g. "weights 21.5630, KV cache + activations 0.0000, ..."
    allowed_text: Callable | None = None  # e.g. "usable 0.8 x 16 = 12.8000 GiB"


# The registry lives in the model's own __dict__, not in a module-level WeakKeyDictionary: its limits,
# ledger and closures refer to the model, so a weak-keyed entry never died and every model ever built
# stayed alive (250,000 objects per expert-aware solve; Python's full collections over that heap made
# the last rows of the expert table 5x slower). As a plain attribute (not a Pyomo component) it is
# invisible to component iteration, so solver writers do not see it, and the model and its registry
# are one cycle that the garbage collector frees together.
_ATTR = "_family_registry"


def registry(m) -> dict:
    """What the families told about model ``m`` (limits, labels, completions, the cost ledger, its
    data), kept on the model as a plain attribute (not a component: no writer walks it)."""
    reg = m.__dict__.get(_ATTR)
    if reg is None:
        reg = {"limits": [], "labels": {}, "completions": [], "ledger": {}, "data": None}
        object.__setattr__(m, _ATTR, reg)
    return reg


def _registry(m, attr: str, factory):
    return registry(m)[attr.lstrip("_")]


def limit(m, **kw) -> Limit:
    """Register a limit on model ``m`` (see :class:`Limit` for the fields)."""
    lim = Limit(**kw)
    _registry(m, "_limits", list).append(lim)
    return lim


def limits(m) -> list[Limit]:
    return list(registry(m)["limits"])


def label(m, component, describe: Callable[..., str]) -> None:
    """Name the rows of ``component`` in plain words: ``describe(*index) -> str``."""
    _registry(m, "_labels", dict)[component.name] = describe


def completion(m, fill: Callable, block=None) -> None:
    """Register ``fill(m)``, which sets the auxiliary variables of ``block`` (a family's Block) at a
    fixed policy."""
    _registry(m, "_completions", list).append(fill)
    if block is not None:
        registry(m).setdefault("completion_blocks", set()).add(block.name)


def describe(m, con) -> str | None:
    """Plain words for one constraint row, or None when no family labelled it."""
    for lim in limits(m):
        if lim.constraint is con:
            return lim.label
    comp = con.parent_component()
    fn = registry(m)["labels"].get(comp.name)
    if fn is None:
        return None
    idx = con.index()
    if idx is None:
        return fn()
    return fn(*idx) if isinstance(idx, tuple) else fn(idx)


def row_violation(con) -> float:
    """How far a row is outside its bounds at the current point, relative to max(1, |bound|)."""
    body = pyo.value(con.body, exception=False)
    if body is None:
        return float("inf")
    worst = 0.0
    if con.has_ub():
        ub = pyo.value(con.upper)
        worst = max(worst, (body - ub) / max(1.0, abs(ub)))
    if con.has_lb():
        lb = pyo.value(con.lower)
        worst = max(worst, (lb - body) / max(1.0, abs(lb)))
    return worst


def fits(con) -> bool:
    return row_violation(con) <= FIT_TOL


def complete(m) -> bool:
    """Set the auxiliary variables of every family at the current point; True when every
    variable of the model then has a value (the point is fully determined)."""
    if any(v.value is None and not _completed_by_someone(m, v) for v in m.component_data_objects(pyo.Var, active=True)):
        return False    # a family's variable nobody can fill (a free decision): the caller solves the LP
    for fill in registry(m)["completions"]:
        fill(m)
    return all(v.value is not None for v in m.component_data_objects(pyo.Var, active=True))


def _completed_by_someone(m, v) -> bool:
    """Whether a registered completion sets ``v`` (its block registered one)."""
    owners = registry(m).setdefault("completion_blocks", set())
    blk = v.parent_block()
    while blk is not None:
        if blk.name in owners:
            return True
        blk = blk.parent_block()
    return False


def violated_rows(m) -> list:
    return [c for c in m.component_data_objects(pyo.Constraint, active=True) if not fits(c)]


def violations(m) -> list[str]:
    """One line per violated limit at the current point (needed vs allowed, in its units)."""
    out = []
    for lim in limits(m):
        if lim.constraint.active and not fits(lim.constraint):
            need, allow = lim.needed(m), lim.allowed(m)
            detail = f" ({lim.detail(m)})" if lim.detail else ""
            allowed = lim.allowed_text(m) if lim.allowed_text else f"{allow:.4f} {lim.unit} allowed ({lim.field})"
            out.append(f"{lim.label}: needs {need:.4f} {lim.unit}{detail} > {allowed}")
    return out
