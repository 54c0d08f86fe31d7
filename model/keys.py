"""Scenario keys that a constraint family declares for itself.

A family module may define ``KEYS = [Key(...), ...]``. Each key becomes an ordinary field of
its scenario section (validated by :mod:`model.schema` like every other field, listed in the
README's format, echoed in the JSON under ``family_settings``), and, when it names a ``flag``,
a command-line flag of ``runners.solve``. A new family therefore needs no edit in
``model/scenario.py``, ``model/build.py``'s data or the runners: its module and one
registration line in :data:`model.families.FAMILIES`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class Key:
    """One scenario field declared by a family.

    ``path`` is ``section.name`` (e.g. ``workload.max_block_time_s``); ``type`` a Python type the
    schema knows (``float``, ``int``, ``bool``, ``str``, ``X | None``, ``Literal[...]``); ``rule`` the
    range metadata of :func:`model.schema.rule`; ``flag`` (e.g. ``--max-block-time``) adds a
    command-line flag that sets it; ``choices`` restricts a string flag.
    """

    path: str
    type: Any
    default: Any = None
    rule: dict = field(default_factory=dict)
    doc: str = ""
    flag: str | None = None
    metavar: str | None = None
    choices: tuple | None = None

    @property
    def section(self) -> str:
        return self.path.split(".", 1)[0]

    @property
    def name(self) -> str:
        return self.path.split(".", 1)[1]


def family_keys() -> list[Key]:
    """Every key declared by the registered families, in family order."""
    from .families import FAMILIES

    return [k for fam in FAMILIES for k in getattr(fam, "KEYS", ())]
