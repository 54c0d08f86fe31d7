"""Objective: minimize generation time per sequence; throughput = n / that time.

    t = T / b = sum_groups count * (T_prefill / b + (n - 1) * T_decode / b)

split into its prefill and decode parts (the report's "prefill" and "decode" totals).
"""

from __future__ import annotations

import pyomo.environ as pyo

from .cost import US_PER_S


def add(m, data) -> None:
    m.objective = blk = pyo.Block(doc="Time per generated sequence")
    n = data.accounting.gen_len
    tm = m.timing
    blk.prefill_time_per_seq_s = pyo.Expression(
        expr=sum(m.layer_count[grp] * tm.prefill_layer_us[grp] for grp in m.LAYER_GROUPS) / US_PER_S,
        doc="Prefill seconds per sequence: sum_groups count * T_prefill / b")
    blk.decode_time_per_seq_s = pyo.Expression(
        expr=(n - 1) * sum(m.layer_count[grp] * tm.decode_layer_us[grp] for grp in m.LAYER_GROUPS) / US_PER_S,
        doc="Decode seconds per sequence: (n - 1) * sum_groups count * T_decode / b")
    blk.time_per_seq_s = pyo.Expression(expr=blk.prefill_time_per_seq_s + blk.decode_time_per_seq_s,
                                        doc="Seconds per sequence: prefill + decode")
    blk.minimize_time_per_seq = pyo.Objective(expr=blk.time_per_seq_s, sense=pyo.minimize,
                                              doc="Minimize time per sequence (maximize throughput)")
