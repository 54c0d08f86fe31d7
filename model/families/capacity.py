"""Capacity: home + working memory within alpha * capacity, per device and phase.

Divided by the block size b, ``mem(b, g, p) <= alpha_d * C_d`` reads
``mem / b <= alpha_d * C_d * u`` with ``u = 1/b``.
"""

from __future__ import annotations

import pyomo.environ as pyo


def add(m, data) -> None:
    m.capacity = blk = pyo.Block(doc="Memory capacity per device and phase")
    blk.capacity_gib = pyo.Param(m.DEVICES, initialize=data.capacity_gib, doc="Capacity C_d in GiB")
    blk.alpha = pyo.Param(m.DEVICES, initialize=data.alpha, doc="Usable share alpha_d of the capacity")
    u, cost = m.batching.per_block, m.cost

    @blk.Constraint(m.PHASES, doc="GPU home + working memory within alpha_gpu * C_gpu")
    def gpu_memory_within_capacity(blk, ph):
        """gpu_mem[ph] / b <= alpha_gpu C_gpu u"""
        return cost.gpu_memory_per_seq_gib[ph] <= blk.alpha["gpu"] * blk.capacity_gib["gpu"] * u

    @blk.Constraint(m.PHASES, doc="CPU home + working memory within alpha_cpu * C_cpu")
    def cpu_memory_within_capacity(blk, ph):
        """cpu_mem[ph] / b <= alpha_cpu C_cpu u"""
        return cost.cpu_memory_per_seq_gib[ph] <= blk.alpha["cpu"] * blk.capacity_gib["cpu"] * u

    @blk.Constraint(doc="Disk memory within alpha_disk * C_disk")
    def disk_memory_within_capacity(blk):
        """disk_mem / b <= alpha_disk C_disk u"""
        return cost.disk_memory_per_seq_gib <= blk.alpha["disk"] * blk.capacity_gib["disk"] * u
