"""Cost: every time and memory quantity of the accounting, per sequence.

A quantity ``Q = W*block + b*sequence + g*microbatch + b*eff(g)*cpu_attention``
(see :mod:`model.terms`) divided by ``b`` is linear in the model's variables:

    Q / b = W * sum_d c_d p[weights,d]/b + sequence(p)
            + microbatch(p / N) + cpu_attention(eff(g) p)
"""

from __future__ import annotations

import pyomo.environ as pyo

from ..terms import Affine, Quantity


def per_sequence(m, q: Quantity):
    """The Pyomo expression of ``q / b``."""
    pl, bt = m.placement, m.batching
    expr = q.const * bt.per_block if q.const else 0
    expr += sum(c * pl.weights_per_seq[d] for d, c in q.block.items() if c)
    expr += _affine(q.sequence, 1.0, lambda k, d: pl.fraction[k, d], m)
    expr += _affine(q.microbatch, bt.per_microbatch, lambda k, d: bt.fraction_per_microbatch[k, d], m)
    expr += _affine(q.cpu_attention, bt.efficiency, lambda k, d: bt.efficiency_times_fraction[k, d], m)
    return expr


def _affine(a: Affine, unit, var, m):
    allowed = m.placement_allowed
    expr = a.const * unit if a.const else 0
    for (k, d), c in a.coef.items():
        if c and allowed[k, d]:
            expr += c * var(k, d)
    return expr


def add(m, data) -> None:
    m.cost = blk = pyo.Block(doc="Per-sequence times and memory of the accounting")
    acc = data.accounting
    groups = {g.name: g for g in acc.groups}

    @blk.Expression(m.LAYER_GROUPS, m.PHASES, m.COMPONENTS,
                    doc="Seconds per layer of a group divided by b, per phase and component")
    def layer_time_per_seq_s(blk, grp, ph, c):
        return per_sequence(m, groups[grp].time[ph, c])

    for dev, label in (("gpu", "GPU"), ("cpu", "CPU")):
        blk.add_component(f"{dev}_home_per_seq_gib", pyo.Expression(
            m.PHASES, rule=lambda b, ph, dev=dev: per_sequence(m, acc.memory[dev, ph].home),
            doc=f"{label} home memory (resident weights, KV cache, activations) divided by b, GiB"))
        blk.add_component(f"{dev}_working_per_seq_gib", pyo.Expression(
            m.PHASES, m.LAYER_GROUPS,
            rule=lambda b, ph, grp, dev=dev: per_sequence(m, acc.memory[dev, ph].working[grp]),
            doc=f"{label} working buffers while a layer of the group runs, divided by b, GiB"))
    blk.disk_memory_per_seq_gib = pyo.Expression(expr=per_sequence(m, acc.memory["disk", None].home),
                                                 doc="Disk memory divided by b, GiB")
