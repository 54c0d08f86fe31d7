"""The one McCormick helper every family uses for a product of a binary and a bounded variable.

For ``w = z * x`` with ``z`` binary and ``0 <= x <= U`` (and ``x <= U_z`` whenever ``z = 1``):

    w <= U_z * z          (z = 0 forces w = 0)
    w <= x                (z = 1: w <= x)
    w >= x - U * (1 - z)  (z = 1: w >= x, so w = x; z = 0: vacuous since x <= U)
    w >= 0                (the variable's bound)

exact at every integer ``z`` (docs/model.md section 6.6); the relaxation is the convex hull of
the two cases when ``U_z = U``. ``binary`` may be any expression that takes only the values 0
and 1 at integer points (e.g. ``pin + cpu`` with ``pin + cpu <= 1``).
"""

from __future__ import annotations

import pyomo.environ as pyo


def mccormick(blk, name: str, index, binary, value, hi: float, hi_when_set=None) -> None:
    """Add ``{name}_below_bit``, ``{name}_below_value`` and ``{name}_above`` for ``blk.<name>[i] = binary(i) * value(i)``.

    ``index`` is a Pyomo Set or a list of keys (a Set ``{NAME}_INDEX`` is made for a list);
    ``hi`` bounds ``value(i)``; ``hi_when_set(i)`` (default ``hi``) bounds it when the binary is 1.
    """
    w = getattr(blk, name)
    if not isinstance(index, pyo.Set):
        keys = list(index)
        dimen = len(keys[0]) if keys and isinstance(keys[0], tuple) else 1
        index = pyo.Set(initialize=keys, dimen=dimen, ordered=True, doc=f"index of {name}")
        blk.add_component(f"{name.upper()}_INDEX", index)
    upper = hi_when_set or (lambda i: hi)

    def key(i):
        return i[0] if len(i) == 1 else i

    def below_bit(b, *i):
        """w <= U_z z"""
        return w[key(i)] <= upper(key(i)) * binary(key(i))

    def below_value(b, *i):
        """w <= x"""
        return w[key(i)] <= value(key(i))

    def above(b, *i):
        """w >= x - U (1 - z)"""
        return w[key(i)] >= value(key(i)) - hi * (1 - binary(key(i)))

    blk.add_component(f"{name}_below_bit", pyo.Constraint(index, rule=below_bit, doc=f"{name} <= U * binary"))
    blk.add_component(f"{name}_below_value", pyo.Constraint(index, rule=below_value, doc=f"{name} <= value"))
    blk.add_component(f"{name}_above", pyo.Constraint(index, rule=above, doc=f"{name} >= value - U (1 - binary)"))
