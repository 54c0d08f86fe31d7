"""Cost: every time and memory quantity, per sequence: the accounting's terms plus every
contribution that an earlier family made (the ledger).

Units inside the model are chosen so that coefficients stay far from solver
tolerances: per-sequence times in microseconds (a decode step's hidden-state
transfer is ~0.6 us per sequence and layer, which in seconds sits at the 1e-7 level
where glpsol's tolerances accept violating it) and per-sequence memory in MiB.

A quantity ``Q = W*block + b*sequence + g*microbatch + b*eff(g)*cpu_attention``
(see :mod:`model.terms`) divided by ``b`` is linear in the model's variables:

    Q / b = W * sum_d c_d p[weights,d]/b + sequence(p)
            + microbatch(p / N) + cpu_attention(eff(g) p) + sum_f f(g)

and every ledger entry is (docs/model.md sections 5.4 and 5.9.1)

    layer_time_per_seq_us[G, phase, c] = 1e6 * time[G, phase, c] / b + sum of contributions
    <dev>_home_per_seq_mib[phase]      = 1024 * home[dev, phase] / b  + sum of contributions
    <dev>_working_per_seq_mib[phase, G] = 1024 * working[dev, phase, G] / b + sum of contributions
    disk_memory_per_seq_mib            = 1024 * home[disk] / b        + sum of contributions

A family that changes a term (the expert family: a pinned expert leaves the streamed
weights) does not edit these expressions: it calls :func:`contribute` with a named
expression of its own block, before this family runs.
"""

from __future__ import annotations

import pyomo.environ as pyo

from ..limits import registry
from ..terms import Affine, Quantity
from .batching import cpu_attention_expr, value_at_batch_size

US_PER_S = 1e6      # model time unit: microseconds
MIB_PER_GIB = 1024  # model memory unit: MiB


def per_sequence(m, q: Quantity):
    """The Pyomo expression of ``q / b``."""
    pl, bt = m.placement, m.batching
    expr = q.const * bt.per_block if q.const else 0
    expr += sum(c * pl.weights_per_seq[d] for d, c in q.block.items() if c)
    expr += _affine(q.sequence, 1.0, lambda k, d: pl.fraction[k, d], m)
    expr += _affine(q.microbatch, bt.per_microbatch, lambda k, d: bt.fraction_per_microbatch[k, d], m)
    expr += cpu_attention_expr(m, q.cpu_attention)
    for f in q.per_batch_size:
        expr += value_at_batch_size(m, f)
    return expr


def _affine(a: Affine, unit, var, m):
    allowed = m.placement_allowed
    expr = a.const * unit if a.const else 0
    for (k, d), c in a.coef.items():
        if c and allowed[k, d]:
            expr += c * var(k, d)
    return expr


def contribute(m, key: tuple, expr) -> None:
    """Add ``expr`` (model units: us or MiB per sequence) to a ledger entry.

    ``key`` is ``("time", group, phase, component)``, ``("home", device, phase)``,
    ``("working", device, phase, group)`` or ``("disk",)``. Call before the cost family runs.
    """
    if hasattr(m, "cost"):
        raise RuntimeError("contribute() after the cost family built the ledger: register the family before cost")
    registry(m)["ledger"].setdefault(key, []).append(expr)


def _extra(m, key):
    return sum(registry(m)["ledger"].get(key, []))


def add(m, data) -> None:
    m.cost = blk = pyo.Block(doc="Per-sequence times (us) and memory (MiB): the accounting plus contributions")
    acc = data.accounting
    groups = {g.name: g for g in acc.groups}

    @blk.Expression(m.LAYER_GROUPS, m.PHASES, m.COMPONENTS,
                    doc="Microseconds per layer of a group divided by b, per phase and component")
    def layer_time_per_seq_us(blk, grp, ph, c):
        """1e6 time[grp, ph, c] / b + contributions"""
        return US_PER_S * per_sequence(m, groups[grp].time[ph, c]) + _extra(m, ("time", grp, ph, c))

    for dev, label in (("gpu", "GPU"), ("cpu", "CPU")):
        blk.add_component(f"{dev}_home_per_seq_mib", pyo.Expression(
            m.PHASES, rule=lambda b, ph, dev=dev: MIB_PER_GIB * per_sequence(m, acc.memory[dev, ph].home)
            + _extra(m, ("home", dev, ph)),
            doc=f"{label} home memory (resident weights, KV cache, activations) divided by b, MiB"))
        blk.add_component(f"{dev}_working_per_seq_mib", pyo.Expression(
            m.PHASES, m.LAYER_GROUPS,
            rule=lambda b, ph, grp, dev=dev: MIB_PER_GIB * per_sequence(m, acc.memory[dev, ph].working[grp])
            + _extra(m, ("working", dev, ph, grp)),
            doc=f"{label} working buffers while a layer of the group runs, divided by b, MiB"))
    blk.disk_memory_per_seq_mib = pyo.Expression(
        expr=MIB_PER_GIB * per_sequence(m, acc.memory["disk", None].home) + _extra(m, ("disk",)),
        doc="Disk memory divided by b, MiB")
