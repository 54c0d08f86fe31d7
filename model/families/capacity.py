"""Capacity: home + working memory within alpha * capacity, per device and phase.

Divided by the block size b, ``mem(b, g, p) <= alpha_d * C_d`` reads
``mem / b <= alpha_d * C_d * u`` with ``u = 1/b`` (in MiB inside the model).
"""

from __future__ import annotations

import pyomo.environ as pyo

from .cost import MIB_PER_GIB


def add(m, data) -> None:
    m.capacity = blk = pyo.Block(doc="Memory capacity per device and phase")
    blk.capacity_gib = pyo.Param(m.DEVICES, initialize=data.capacity_gib, doc="Capacity C_d in GiB")
    blk.alpha = pyo.Param(m.DEVICES, initialize=data.alpha, doc="Usable share alpha_d of the capacity")
    u, cost = m.batching.per_block, m.cost
    for dev, label in (("gpu", "GPU"), ("cpu", "CPU")):
        working = getattr(cost, f"{dev}_working_per_seq_mib")
        home = getattr(cost, f"{dev}_home_per_seq_mib")
        peak = pyo.Var(m.PHASES, within=pyo.NonNegativeReals,
                       doc=f"{label} working buffers of the largest layer in flight, divided by b, MiB")
        blk.add_component(f"{dev}_working_peak_per_seq_mib", peak)
        blk.add_component(f"{dev}_working_peak_covers_group", pyo.Constraint(
            m.PHASES, m.LAYER_GROUPS, rule=lambda b, ph, grp, peak=peak, working=working:
            peak[ph] >= working[ph, grp],
            doc=f"{label} working peak >= the buffers of every layer group (one layer runs at a time)"))
        blk.add_component(f"{dev}_memory_within_capacity", pyo.Constraint(
            m.PHASES, rule=lambda b, ph, dev=dev, home=home, peak=peak:
            home[ph] + peak[ph] <= MIB_PER_GIB * b.alpha[dev] * b.capacity_gib[dev] * u,
            doc=f"{label} home + working memory within alpha * capacity: (home + work) / b <= alpha C u"))

    @blk.Constraint(doc="Disk memory within alpha_disk * C_disk")
    def disk_memory_within_capacity(blk):
        """disk_mem / b <= alpha_disk C_disk u"""
        return cost.disk_memory_per_seq_mib <= MIB_PER_GIB * blk.alpha["disk"] * blk.capacity_gib["disk"] * u
