"""Latency: every sequence of a block finishes when the block does, so the block time is each
request's latency; ``workload.max_block_time_s`` caps it (docs/model.md section 5.9.2).

    T_block = b * t <= L      per sequence:      t <= L * u,   u = 1/b

with ``t`` the objective's seconds per sequence. The key is this family's own (``KEYS``):
validated like every scenario key, set by ``--max-block-time S``; without it the family adds
nothing. The row is a limit: a fixed policy that breaks it, an infeasible scenario and a binding
cap are named "block latency limit" by the evaluator, the explanation and the report.
"""

from __future__ import annotations

import pyomo.environ as pyo

from ..keys import Key
from ..limits import limit

KEYS = [Key("workload.max_block_time_s", float | None, None, {"gt": 0, "le": 1e9},
            doc="the longest a block may take, seconds: every request's latency (none: no limit)",
            flag="--max-block-time", metavar="S")]


def add(m, data) -> None:
    m.latency = blk = pyo.Block(doc="Block time (each request's latency) within workload.max_block_time_s")
    cap = data.setting("workload.max_block_time_s")
    if cap is None:
        return
    blk.max_block_time_s = pyo.Param(initialize=cap, mutable=True, doc="L: the longest a block may take, seconds")

    @blk.Constraint(doc="Block time within the limit, per sequence: t <= L u")
    def block_time_within_limit(blk):
        """t <= L * u   (T_block = t * b <= L)"""
        return m.objective.time_per_seq_s <= blk.max_block_time_s * m.batching.per_block

    limit(m, family="latency", name="block_time", label="block latency limit", group="block latency limit",
          field="workload.max_block_time_s", unit="s", constraint=blk.block_time_within_limit,
          needed=lambda m: pyo.value(m.objective.time_per_seq_s) / pyo.value(m.batching.per_block),
          allowed=lambda m: pyo.value(blk.max_block_time_s))
