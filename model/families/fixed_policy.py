"""Fixed policy: the parts of a policy the user pinned (``policy:`` or ``--percent``).

Batch sizes are pinned through the search bounds (``g_lo = g_hi``); this family
pins placement fractions. A weights fraction is pinned in its per-sequence form,
``p[weights, d] / b = value * u``, which stays linear.
"""

from __future__ import annotations

import pyomo.environ as pyo


def add(m, data) -> None:
    m.fixed_policy = blk = pyo.Block(doc="Placement fractions fixed by the user")
    fixed = data.fixed_fractions or {}
    keys = sorted(k for k in fixed if k[0] != "weights")
    wkeys = sorted(k[1] for k in fixed if k[0] == "weights")
    blk.FIXED_FRACTIONS = pyo.Set(initialize=keys, dimen=2, ordered=True, doc="(kind, device) pinned")
    blk.FIXED_WEIGHTS = pyo.Set(initialize=wkeys, within=m.DEVICES, ordered=True, doc="weights devices pinned")
    blk.value = pyo.Param(blk.FIXED_FRACTIONS, initialize={k: fixed[k] for k in keys}, doc="pinned fraction")
    blk.weights_value = pyo.Param(blk.FIXED_WEIGHTS, initialize={d: fixed[("weights", d)] for d in wkeys},
                                  doc="pinned weights fraction")

    @blk.Constraint(blk.FIXED_FRACTIONS, doc="Fraction equals the user's value")
    def fraction_is_fixed(blk, k, d):
        """p[k, d] = value"""
        return m.placement.fraction[k, d] == blk.value[k, d]

    @blk.Constraint(blk.FIXED_WEIGHTS, doc="Weights fraction equals the user's value")
    def weights_fraction_is_fixed(blk, d):
        """p[weights, d] / b = value * u"""
        if data.fixed_batch is not None:
            return m.placement.weights_fraction[d] == blk.weights_value[d]
        return m.placement.weights_per_seq[d] == blk.weights_value[d] * m.batching.per_block
