"""Objective: minimize generation time per sequence; throughput = n / that time.

    t = T / b = l * T_prefill / b + (n - 1) * l * T_decode / b
"""

from __future__ import annotations

import pyomo.environ as pyo


def add(m, data) -> None:
    m.objective = blk = pyo.Block(doc="Time per generated sequence")
    l, n = data.accounting.num_layers, data.accounting.gen_len
    blk.time_per_seq_s = pyo.Expression(
        expr=l * m.timing.prefill_layer_s + (n - 1) * l * m.timing.decode_layer_s,
        doc="Seconds per sequence: l*T_prefill/b + (n-1)*l*T_decode/b")
    blk.minimize_time_per_seq = pyo.Objective(expr=blk.time_per_seq_s, sense=pyo.minimize,
                                              doc="Minimize time per sequence (maximize throughput)")
