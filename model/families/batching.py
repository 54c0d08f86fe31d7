"""Batching: GPU batch size g and number of GPU batches N as exact integer decisions.

Every quantity is divided by the block size ``b = g*N`` (docs/model.md section 4.1), so
the model needs three reciprocals and a few products, made exact with bits:

    per_block       u = 1/b            (weights terms, capacities)
    per_microbatch  v = 1/N = g*u      (working buffers: g/b = 1/N)
    fraction_per_microbatch[k,d] = p[k,d] / N
    efficiency_times_group[i] = eff(g) * sum of p[k,d] over group i   (CPU attention rate depends on g)

``N = sum_k 2^k z_k`` and ``g = sum_j 2^j y_j`` with binary z, y; the identities
``N*v = 1``, ``N*q = p`` and ``g*u = v`` become sums of bit-times-variable products,
each linearized exactly by McCormick inequalities (all variables lie in [0, 1]).
``eff(g)`` takes a one-hot choice over the values of g where it varies plus one
bucket where it is flat. With the batch sizes fixed (``data.fixed_batch``) the same
names hold constants and linear expressions, and the model is an LP.
"""

from __future__ import annotations

import pyomo.environ as pyo

from ..terms import SEQ_KINDS
from .linearize import mccormick

# Up to this many candidate GPU batch sizes, g is a one-hot choice (tight); above, bits: with more
# values the one-hot's large LP and strong branching cost HiGHS more than its tightness saves
# (docs/model.md section 5.2.3: 80 reference scenarios 12.1 -> 9.4 s of HiGHS at 32 instead of 256).
ONE_HOT_MAX_VALUES = 32
# The other solvers keep the one-hot up to 256 values: CBC, given bits for a100_16g's 38 values
# together with the kind shares below, pruned its optimum and called 27.8518 tokens/s optimal
# (the optimum: 27.8717).
ONE_HOT_MAX_VALUES_OTHER_SOLVERS = 256


def tuned_for_highs(data) -> bool:
    """Whether ``data`` is solved by HiGHS (the default), for which the g encoding and the kind-share
    cuts were measured. With CBC the kind shares made its bound wrong (mixtral-8x22b: 'optimal' with
    a 1% gap; a100_16g with bits: a worse policy), so the other solvers get the formulation without
    them, which they solved right before."""
    return data.scenario is None or data.scenario.solver.key == "highs"


def one_hot_limit(data) -> int:
    """How many candidate values of g the one-hot encoding takes for ``data``'s solver."""
    return ONE_HOT_MAX_VALUES if tuned_for_highs(data) else ONE_HOT_MAX_VALUES_OTHER_SOLVERS


def add(m, data) -> None:
    m.batching = blk = pyo.Block(doc="GPU batch size, number of GPU batches, and the reciprocals of both")
    acc = data.accounting
    micro = sorted({key for q in _quantities(acc) for key, c in q.microbatch.coef.items()
                    if c != 0.0 and acc.allowed[key]})
    cpu_attn = sorted({key for q in _quantities(acc) for key, c in q.cpu_attention.coef.items()
                       if c != 0.0 and acc.allowed[key]})
    blk.MICRO_FRACTIONS = pyo.Set(initialize=micro, dimen=2, ordered=True,
                                  doc="(kind, device) fractions that appear in per-micro-batch terms")
    blk.CPU_ATTENTION_FRACTIONS = pyo.Set(initialize=cpu_attn, dimen=2, ordered=True,
                                          doc="(kind, device) fractions attended on the CPU")
    groups = _attention_groups(acc, cpu_attn)
    blk.ATTENTION_GROUPS = pyo.Set(initialize=range(len(groups)), ordered=True,
                                   doc="Groups of CPU-attended fractions of one kind with the same coefficients")
    blk.attention_members = dict(enumerate(groups))   # group -> its (kind, device) fractions
    if data.fixed_batch is not None:
        _add_fixed(m, blk, data)
    else:
        _add_exact(m, blk, data)

    @blk.Constraint(doc="Weights fractions sum to one, divided by b")
    def weights_fractions_sum_to_one(blk):
        """sum_d p[weights, d] / b = 1/b = u"""
        if data.fixed_batch is not None:
            return sum(m.placement.weights_fraction[d] for d in m.DEVICES) == 1
        return sum(m.placement.weights_per_seq[d] for d in m.DEVICES) == blk.per_block


def _quantities(acc):
    return acc.time_quantities() + acc.memory_quantities()


def _add_fixed(m, blk, data) -> None:
    g, N = data.fixed_batch
    b = g * N
    blk.gpu_batch_size = pyo.Param(initialize=g, doc="GPU batch size g (fixed)")
    blk.num_gpu_batches = pyo.Param(initialize=N, doc="Number of GPU batches N (fixed)")
    blk.per_block = pyo.Param(initialize=1.0 / b, doc="u = 1/b (fixed)")
    blk.per_microbatch = pyo.Param(initialize=1.0 / N, doc="v = 1/N (fixed)")
    blk.efficiency = pyo.Param(initialize=data.accounting.efficiency(g), doc="eff(g) (fixed)")
    blk.g_choice = {g: 1.0}  # value_at_batch_size(f) = f(g)
    frac = m.placement.fraction

    @blk.Expression(blk.MICRO_FRACTIONS, doc="p[k, d] / N")
    def fraction_per_microbatch(blk, k, d):
        return frac[k, d] / N

    @blk.Expression(blk.ATTENTION_GROUPS, doc="eff(g) * sum of the group's p[k, d]")
    def efficiency_times_group(blk, i):
        return blk.efficiency * sum(frac[kd] for kd in blk.attention_members[i])


def _add_exact(m, blk, data) -> None:
    acc = data.accounting
    g_lo, g_hi, N_lo, N_hi = data.g_lo, data.g_hi, data.N_lo, data.N_hi
    frac = m.placement.fraction
    u_hi = 1.0 / (g_lo * N_lo)
    v_hi = 1.0 / N_lo

    blk.N_BITS = pyo.RangeSet(0, N_hi.bit_length() - 1, doc="Bits of the number of GPU batches")
    blk.num_gpu_batches_bit = pyo.Var(blk.N_BITS, domain=pyo.Binary, doc="z_k: bit k of N")
    blk.num_gpu_batches = pyo.Expression(expr=sum(2**k * blk.num_gpu_batches_bit[k] for k in blk.N_BITS),
                                         doc="N = sum_k 2^k z_k")
    blk.num_gpu_batches_in_range = pyo.Constraint(expr=pyo.inequality(N_lo, blk.num_gpu_batches, N_hi),
                                                  doc="N within its search bounds")
    blk.block_size_within_bound = pyo.Constraint(
        expr=blk.num_gpu_batches <= data.b_hi, doc="N <= b_max (b = g*N <= b_max with g >= 1)")

    blk.per_block = pyo.Var(bounds=(1.0 / data.b_hi, 1.0 / data.b_min), doc="u = 1/b, b = g*N")
    blk.per_microbatch = pyo.Var(bounds=(1.0 / N_hi, v_hi), doc="v = 1/N")
    blk.fraction_per_microbatch = pyo.Var(blk.MICRO_FRACTIONS, bounds=(0, v_hi), doc="q[k, d] = p[k, d] / N")

    # --- N * v = 1 ----------------------------------------------------------
    blk.bit_times_per_microbatch = pyo.Var(blk.N_BITS, bounds=(0, v_hi), doc="z_k * v")
    _mccormick(blk, "bit_times_per_microbatch", blk.N_BITS, lambda k: blk.num_gpu_batches_bit[k],
               lambda k: blk.per_microbatch, v_hi, lambda k: min(v_hi, 2.0**-k))

    @blk.Constraint(doc="N * v = 1")
    def batches_times_reciprocal_is_one(blk):
        """sum_k 2^k (z_k v) = 1"""
        return sum(2**k * blk.bit_times_per_microbatch[k] for k in blk.N_BITS) == 1

    # --- N * q[k,d] = p[k,d] -------------------------------------------------
    # With HiGHS, one device of each complete kind needs no bit products: its q follows from the kind's
    # share row sum_d q[k, d] = v (section 5.2.6), exact once the others are (N q = N v - sum N q_other
    # = 1 - sum p_other = p).
    implied = _implied_shares(blk, data) if tuned_for_highs(data) else []
    blk.IMPLIED_SHARES = pyo.Set(initialize=implied, dimen=2, ordered=True,
                                 doc="(kind, device) whose q[k, d] = v - sum of the kind's other q (no bit products)")
    blk.EXPANDED_FRACTIONS = pyo.Set(initialize=[kd for kd in blk.MICRO_FRACTIONS if kd not in implied], dimen=2,
                                     ordered=True, doc="(kind, device) with N * q[k, d] = p[k, d] over the bits of N")
    blk.BIT_FRACTIONS = pyo.Set(initialize=[(k,) + kd for k in blk.N_BITS for kd in blk.EXPANDED_FRACTIONS],
                                dimen=3, ordered=True, doc="(bit, kind, device)")
    blk.bit_times_fraction_per_microbatch = pyo.Var(blk.BIT_FRACTIONS, bounds=(0, v_hi), doc="z_k * q[k, d]")
    _mccormick(blk, "bit_times_fraction_per_microbatch", blk.BIT_FRACTIONS,
               lambda i: blk.num_gpu_batches_bit[i[0]],
               lambda i: blk.fraction_per_microbatch[i[1], i[2]], v_hi, lambda i: min(v_hi, 2.0 ** -i[0]))

    @blk.Constraint(blk.EXPANDED_FRACTIONS, doc="N * q[k, d] = p[k, d]")
    def batches_times_fraction_per_microbatch(blk, k, d):
        """sum_bit 2^bit (z_bit q[k,d]) = p[k, d]"""
        return sum(2**i * blk.bit_times_fraction_per_microbatch[i, k, d] for i in blk.N_BITS) == frac[k, d]

    # --- g * u = v -------------------------------------------------------------
    if g_hi - g_lo + 1 <= one_hot_limit(data):
        _batch_size_one_hot(m, blk, data, u_hi, v_hi)
    else:
        _batch_size_bits(m, blk, data, u_hi)

    # --- valid inequalities (cuts) ----------------------------------------------
    # 1/N is convex: every tangent lies below it, and the chord over [N_lo, N_hi] above it.
    points = sorted({N_lo, N_hi} | {2**k for k in range(N_hi.bit_length()) if N_lo <= 2**k <= N_hi})
    blk.TANGENT_POINTS = pyo.Set(initialize=points, ordered=True, doc="N0 where 1/N is cut by its tangent")

    # Each cut is scaled by N0 (or N_hi) so that its coefficients lie in [1/N0, N0], not [1/N0^2, 1].
    @blk.Constraint(blk.TANGENT_POINTS, doc="v >= tangent of 1/N at N0")
    def reciprocal_above_tangent(blk, n0):
        """N0 v + N / N0 >= 2   (v >= 2/N0 - N/N0^2)"""
        return n0 * blk.per_microbatch + blk.num_gpu_batches / n0 >= 2.0

    if N_hi > N_lo:
        @blk.Constraint(doc="v <= chord of 1/N over [N_lo, N_hi]")
        def reciprocal_below_chord(blk):
            """N_hi v + N / N_lo <= N_hi / N_lo + 1   (v <= 1/N_lo - (N - N_lo) / (N_lo N_hi))"""
            return N_hi * blk.per_microbatch + blk.num_gpu_batches / N_lo <= N_hi / N_lo + 1.0

    @blk.Constraint(doc="u = v/g is at most v/g_lo")
    def per_block_at_most(blk):
        """u <= v / g_lo"""
        return blk.per_block <= blk.per_microbatch / g_lo

    @blk.Constraint(doc="u = v/g is at least v/g_hi")
    def per_block_at_least(blk):
        """u >= v / g_hi"""
        return blk.per_block >= blk.per_microbatch / g_hi

    @blk.Constraint(blk.MICRO_FRACTIONS, doc="q = p/N <= v")
    def fraction_per_microbatch_at_most_reciprocal(blk, k, d):
        """q[k, d] <= v  (since p <= 1)"""
        return blk.fraction_per_microbatch[k, d] <= blk.per_microbatch

    if tuned_for_highs(data):
        _kind_shares(m, blk, data, v_hi)

    # --- eff(g) times fractions ---------------------------------------------------
    if hasattr(blk, "batch_size_is"):
        _efficiency_from_one_hot(m, blk, data)
    else:
        _add_efficiency(m, blk, data)


def _kind_shares(m, blk, data, v_hi) -> None:
    """Valid equalities that tie the per-micro-batch shares q to v (HiGHS only: :func:`tuned_for_highs`)."""
    acc = data.accounting
    frac = m.placement.fraction

    @blk.Constraint(blk.MICRO_FRACTIONS, doc="q = p v >= v - v_max (1 - p)  (McCormick, p <= 1)")
    def fraction_per_microbatch_at_least(blk, k, d):
        """q[k, d] >= v - v_max (1 - p[k, d])"""
        return blk.fraction_per_microbatch[k, d] >= blk.per_microbatch - v_hi * (1 - frac[k, d])

    # A kind's fractions sum to one, so their shares of 1/N sum to 1/N, and bit by bit too (the
    # products of that equation with v and with z_k v). Equalities where every device the kind may use
    # has a per-micro-batch fraction, "<=" otherwise. Valid at every integer point; they tie q to v in
    # the relaxation (measured: nodes 549 -> 50 on reference scenario 80). The bit rows leave out the
    # implied device (it has no bit products) and are then "<=".
    devices_of, complete_kinds = _micro_kinds(blk, acc)
    blk.MICRO_KINDS = pyo.Set(initialize=sorted(devices_of), ordered=True,
                              doc="Tensor kinds with a per-micro-batch fraction")

    def _kind_sum(total, part, k):
        return total == part if k in complete_kinds else total <= part

    @blk.Constraint(blk.MICRO_KINDS, doc="sum_d q[k, d] = v (<= v when some device of k has no q)")
    def kind_shares_of_reciprocal(blk, k):
        """sum_d q[k, d] = v"""
        return _kind_sum(sum(blk.fraction_per_microbatch[k, d] for d in devices_of[k]), blk.per_microbatch, k)

    @blk.Constraint(blk.N_BITS, blk.MICRO_KINDS, doc="sum_d z_i q[k, d] = z_i v (<= without the implied device)")
    def kind_shares_of_bit_product(blk, i, k):
        """sum_d (z_i q[k, d]) = z_i v, or sum_{d not implied} (z_i q[k, d]) <= z_i v"""
        ds = [d for d in devices_of[k] if (k, d) not in blk.IMPLIED_SHARES]
        total = sum(blk.bit_times_fraction_per_microbatch[i, k, d] for d in ds)
        if len(ds) < len(devices_of[k]):
            return total <= blk.bit_times_per_microbatch[i]
        return _kind_sum(total, blk.bit_times_per_microbatch[i], k)


def _micro_kinds(blk, acc) -> tuple[dict, set]:
    """The devices of each kind with a per-micro-batch fraction, and the kinds for which they are every
    device the kind may use (their shares of v then sum to v exactly)."""
    devices_of: dict[str, list[str]] = {}
    for k, d in blk.MICRO_FRACTIONS:
        devices_of.setdefault(k, []).append(d)
    complete = {k for k, ds in devices_of.items()
                if {d for (kk, d), ok in acc.allowed.items() if kk == k and ok} <= set(ds)}
    return devices_of, complete


def _implied_shares(blk, data) -> list[tuple[str, str]]:
    """The first device of every complete kind with two or more: its N * q = p needs no bit products,
    since the kind's share equality sum_d q[k, d] = v determines its q (docs/model.md section 5.2.2).
    Measured over the 161 reference scenarios (HiGHS): solver sum 18.3 -> 16.3-16.5 s, slowest 0.55 ->
    0.41-0.44 s, answers within the gap."""
    devices_of, complete = _micro_kinds(blk, data.accounting)
    return [(k, devices_of[k][0]) for k in sorted(complete) if len(devices_of[k]) >= 2]


def _batch_size_one_hot(m, blk, data, u_hi, v_hi) -> None:
    """g as a one-hot choice c; u = v/g made exact by splitting v over the choices.

        v = sum_c v_c,  v_c <= x_c / N_lo,  v_c >= x_c / N_max(c),  u = sum_c v_c / c
    Exactly one x_c is 1, so u = v / c. This is the convex hull of each choice, much
    tighter than bits when g has few values.
    """
    g_lo, g_hi = data.g_lo, data.g_hi
    blk.BATCH_SIZES = pyo.RangeSet(g_lo, g_hi, doc="Candidate GPU batch sizes")
    blk.batch_size_is = pyo.Var(blk.BATCH_SIZES, domain=pyo.Binary, doc="x_c: g equals c")
    blk.gpu_batch_size = pyo.Expression(expr=sum(c * blk.batch_size_is[c] for c in blk.BATCH_SIZES),
                                        doc="g = sum_c c x_c")

    @blk.Constraint(doc="Exactly one GPU batch size")
    def one_batch_size(blk):
        """sum_c x_c = 1"""
        return sum(blk.batch_size_is[c] for c in blk.BATCH_SIZES) == 1

    blk.per_microbatch_at = pyo.Var(blk.BATCH_SIZES, bounds=(0, v_hi), doc="v_c = x_c * v")

    @blk.Constraint(blk.BATCH_SIZES, doc="v_c vanishes unless g = c")
    def per_microbatch_only_at_choice(blk, c):
        """v_c <= x_c / N_lo"""
        return blk.per_microbatch_at[c] <= v_hi * blk.batch_size_is[c]

    @blk.Constraint(blk.BATCH_SIZES, doc="With g = c, N <= min(N_hi, b_hi / c)")
    def per_microbatch_at_least_at_choice(blk, c):
        """v_c >= x_c / min(N_hi, floor(b_hi / c))"""
        return blk.per_microbatch_at[c] >= blk.batch_size_is[c] / max(1, min(data.N_hi, data.b_hi // c))

    @blk.Constraint(doc="v splits over the choices")
    def per_microbatch_splits(blk):
        """v = sum_c v_c"""
        return blk.per_microbatch == sum(blk.per_microbatch_at[c] for c in blk.BATCH_SIZES)

    @blk.Constraint(doc="u = v / g")
    def batch_size_times_per_block_is_per_microbatch(blk):
        """u = sum_c v_c / c"""
        return blk.per_block == sum(blk.per_microbatch_at[c] / c for c in blk.BATCH_SIZES)


def _batch_size_bits(m, blk, data, u_hi) -> None:
    """g as bits y_j; g * u = v as sum_j 2^j (y_j u) = v with exact McCormick products."""
    g_lo, g_hi, N_lo = data.g_lo, data.g_hi, data.N_lo
    blk.G_BITS = pyo.RangeSet(0, g_hi.bit_length() - 1, doc="Bits of the GPU batch size")
    blk.gpu_batch_size_bit = pyo.Var(blk.G_BITS, domain=pyo.Binary, doc="y_j: bit j of g")
    blk.gpu_batch_size = pyo.Expression(expr=sum(2**j * blk.gpu_batch_size_bit[j] for j in blk.G_BITS),
                                        doc="g = sum_j 2^j y_j")
    blk.gpu_batch_size_in_range = pyo.Constraint(expr=pyo.inequality(g_lo, blk.gpu_batch_size, g_hi),
                                                 doc="g within its search bounds")
    blk.bit_times_per_block = pyo.Var(blk.G_BITS, bounds=(0, u_hi), doc="y_j * u")
    _mccormick(blk, "bit_times_per_block", blk.G_BITS, lambda j: blk.gpu_batch_size_bit[j],
               lambda j: blk.per_block, u_hi, lambda j: min(u_hi, 2.0**-j / N_lo))

    @blk.Constraint(doc="g * u = v")
    def batch_size_times_per_block_is_per_microbatch(blk):
        """sum_j 2^j (y_j u) = v"""
        return sum(2**j * blk.bit_times_per_block[j] for j in blk.G_BITS) == blk.per_microbatch

    # The McCormick envelope of v = g * u over the whole g (not bit by bit) with u's lower bound
    # 1/b_hi: the bits' own envelopes use u's upper bound 1/b_min (often 1) and let the relaxation
    # take u = v, as if g were 1 for memory while eff(g) saw a large g. Measured (HiGHS alone, 145
    # reference MILPs, 3 seeds): 16.4 -> 13.9 s, slowest model 0.43 -> 0.33 s (docs/model.md 5.2.4).
    # Not with expert decisions: there HiGHS, given these rows, called a worse policy optimal in a
    # restricted range that held a better one (T4, n=32, every feature: 11.1532 for 11.1606 tokens/s).
    if data.has_expert_decisions:
        return
    u_lo = 1.0 / data.b_hi

    @blk.Constraint(doc="v = g u >= g_lo u + u_lo g - g_lo u_lo  ((g - g_lo)(u - u_lo) >= 0)")
    def per_microbatch_above_envelope(blk):
        """v >= g_lo u + u_lo g - g_lo u_lo"""
        return blk.per_microbatch >= g_lo * blk.per_block + u_lo * blk.gpu_batch_size - g_lo * u_lo

    @blk.Constraint(doc="v = g u <= g_hi u + u_lo g - g_hi u_lo  ((g_hi - g)(u - u_lo) >= 0)")
    def per_microbatch_below_envelope(blk):
        """v <= g_hi u + u_lo g - g_hi u_lo"""
        return blk.per_microbatch <= g_hi * blk.per_block + u_lo * blk.gpu_batch_size - g_hi * u_lo


def _efficiency_from_one_hot(m, blk, data) -> None:
    """eff(g) p[k, d] = sum_c eff(c) r[c, k, d], r[c] <= x_c, sum_c r[c] = p[k, d] (g is one-hot)."""
    acc = data.accounting
    frac = m.placement.fraction
    blk.g_choice = {c: blk.batch_size_is[c] for c in blk.BATCH_SIZES}
    if not acc.efficiency_varies(data.g_lo, data.g_hi) or not len(blk.CPU_ATTENTION_FRACTIONS):
        _constant_efficiency(m, blk, data)
        return
    blk.efficiency_value = pyo.Param(blk.BATCH_SIZES, initialize={c: acc.efficiency(c) for c in blk.BATCH_SIZES},
                                     doc="eff(g) for each candidate g")
    blk.efficiency = pyo.Expression(expr=sum(blk.efficiency_value[c] * blk.batch_size_is[c]
                                             for c in blk.BATCH_SIZES), doc="eff(g)")
    _split_fractions(m, blk, blk.BATCH_SIZES, frac, blk.batch_size_is)


def _constant_efficiency(m, blk, data) -> None:
    e = data.accounting.efficiency(data.g_hi)
    frac = m.placement.fraction
    blk.efficiency = pyo.Param(initialize=e, doc="eff(g): constant over the search range")

    @blk.Expression(blk.ATTENTION_GROUPS, doc="eff(g) * sum of the group's p[k, d]")
    def efficiency_times_group(blk, i):
        return e * sum(frac[kd] for kd in blk.attention_members[i])


def _attention_groups(acc, cpu_attn) -> list[tuple[tuple[str, str], ...]]:
    """The CPU-attended fractions grouped by kind and by their coefficients in every quantity.

    Only ``sum_{(k, d) in group} coef * eff(g) * p[k, d]`` enters the model when the members'
    coefficients agree everywhere, so one split of the group's sum over the choices of g serves them
    all (the cache read from CPU memory and from disk is attended at the same rate:
    ``t4_reference`` has one group where it had two fractions)."""
    quantities = _quantities(acc)
    keyed: dict[tuple, list] = {}
    for k, d in cpu_attn:
        key = (k, tuple(q.cpu_attention.coef.get((k, d), 0.0) for q in quantities))
        keyed.setdefault(key, []).append((k, d))
    return [tuple(members) for members in keyed.values()]


def cpu_attention_expr(m, a):
    """``a.const * eff(g) + sum_(k,d) a.coef[k, d] * eff(g) p[k, d]`` over the attention groups (the
    CPU attention part of a quantity per sequence, docs/model.md section 4.1)."""
    bt = m.batching
    expr = a.const * bt.efficiency if a.const else 0
    for i in bt.ATTENTION_GROUPS:
        coefs = {a.coef.get(kd, 0.0) for kd in bt.attention_members[i]}
        if len(coefs) != 1:
            raise RuntimeError(f"attention group {bt.attention_members[i]} has different coefficients: {coefs}")
        c = coefs.pop()
        if c:
            expr += c * bt.efficiency_times_group[i]
    return expr


def _split_fractions(m, blk, choices, frac, chosen) -> None:
    """r[c, i] = x_c * (the group's p) as a split over the one-hot choices (exact, no big-M)."""
    blk.EFFICIENCY_SPLIT = pyo.Set(initialize=[(c, i) for c in choices for i in blk.ATTENTION_GROUPS],
                                   dimen=2, ordered=True, doc="(choice, attention group)")
    blk.fraction_at_choice = pyo.Var(blk.EFFICIENCY_SPLIT, bounds=(0, 1),
                                     doc="the group's sum of p[k, d] if g is choice c, else 0")
    kinds = sorted({blk.attention_members[i][0][0] for i in blk.ATTENTION_GROUPS})
    blk.CHOICE_KINDS = pyo.Set(initialize=[(c, k) for c in choices for k in kinds], dimen=2, ordered=True,
                               doc="(choice, kind) of the split's rows")

    @blk.Constraint(blk.CHOICE_KINDS, doc="A kind's fractions are split only onto the chosen g")
    def fraction_only_at_chosen(blk, c, k):
        """sum_{i of kind k} r[c, i] <= x_c   (a kind's fractions sum to at most one)"""
        return sum(blk.fraction_at_choice[c, i] for i in blk.ATTENTION_GROUPS
                   if blk.attention_members[i][0][0] == k) <= chosen[c]

    @blk.Constraint(blk.ATTENTION_GROUPS, doc="The split adds up to the group's fractions")
    def fraction_split_adds_up(blk, i):
        """sum_c r[c, i] = sum_{(k, d) in group i} p[k, d]"""
        return sum(blk.fraction_at_choice[c, i] for c in choices) == sum(frac[kd] for kd in blk.attention_members[i])

    @blk.Expression(blk.ATTENTION_GROUPS, doc="eff(g) * sum of the group's p[k, d]")
    def efficiency_times_group(blk, i):
        return sum(blk.efficiency_value[c] * blk.fraction_at_choice[c, i] for c in choices)


def _mccormick(blk, name, index, bit, other, other_hi, hi_when_set) -> None:
    """Exact ``w[i] = bit(i) * other(i)`` (the shared helper, :mod:`model.families.linearize`)."""
    mccormick(blk, name, index, bit, other, other_hi, hi_when_set)


def _add_efficiency(m, blk, data) -> None:
    """eff(g) p[k, d] and f(g) terms when g is in bits: a one-hot over the g values where some
    g-dependent term varies, plus one bucket from which all of them are flat."""
    acc = data.accounting
    g_lo, g_hi = data.g_lo, data.g_hi
    if not acc.depends_on_batch_size(g_lo, g_hi):
        _constant_efficiency(m, blk, data)
        blk.g_choice = {g_hi: 1.0}
        return
    flat_from = acc.flat_from(g_lo, g_hi)
    choices = list(range(g_lo, flat_from + 1))  # the last choice stands for flat_from..g_hi
    blk.EFFICIENCY_CHOICES = pyo.Set(initialize=choices, ordered=True,
                                     doc=f"g values where eff(g) varies; {flat_from} stands for {flat_from}..{g_hi}")
    blk.efficiency_value = pyo.Param(blk.EFFICIENCY_CHOICES, initialize={c: acc.efficiency(c) for c in choices},
                                     doc="eff(g) for each choice")
    blk.efficiency_choice = pyo.Var(blk.EFFICIENCY_CHOICES, domain=pyo.Binary, doc="one-hot: g is this choice")
    blk.batch_size_beyond_flat = pyo.Var(bounds=(0, g_hi - flat_from), doc="g - flat_from when g >= flat_from")

    @blk.Constraint(doc="Exactly one efficiency choice")
    def one_efficiency_choice(blk):
        """sum_c x_c = 1"""
        return sum(blk.efficiency_choice[c] for c in blk.EFFICIENCY_CHOICES) == 1

    @blk.Constraint(doc="The one-hot choice agrees with g")
    def efficiency_choice_matches_batch_size(blk):
        """g = sum_c c x_c + extra"""
        return blk.gpu_batch_size == sum(c * blk.efficiency_choice[c] for c in blk.EFFICIENCY_CHOICES) \
            + blk.batch_size_beyond_flat

    @blk.Constraint(doc="Only the flat bucket allows g above its first value")
    def beyond_flat_only_in_flat_bucket(blk):
        """extra <= (g_hi - flat_from) x_flat"""
        return blk.batch_size_beyond_flat <= (g_hi - flat_from) * blk.efficiency_choice[flat_from]

    blk.g_choice = {c: blk.efficiency_choice[c] for c in choices}
    if not acc.efficiency_varies(g_lo, g_hi) or not len(blk.CPU_ATTENTION_FRACTIONS):
        _constant_efficiency(m, blk, data)
        return
    blk.efficiency = pyo.Expression(expr=sum(blk.efficiency_value[c] * blk.efficiency_choice[c]
                                             for c in blk.EFFICIENCY_CHOICES), doc="eff(g)")
    _split_fractions(m, blk, blk.EFFICIENCY_CHOICES, m.placement.fraction, blk.efficiency_choice)




def _differs_from(blk, g: int):
    """An expression that is 0 when the GPU batch size equals ``g`` and >= 1 otherwise."""
    if hasattr(blk, "batch_size_is"):
        return 1 - blk.batch_size_is[g] if g in blk.BATCH_SIZES else 1
    return sum(1 - blk.gpu_batch_size_bit[j] if (g >> j) & 1 else blk.gpu_batch_size_bit[j] for j in blk.G_BITS)


def _cuts(blk):
    if not hasattr(blk, "excluded"):
        blk.excluded = pyo.ConstraintList(doc="Cuts from exact re-checks: (g, N) pairs and ranges that do not fit")
    return blk.excluded


def exclude_batch_sizes(m, g: int, N: int) -> None:
    """Forbid the pair (g, N): at least one bit of its encoding must differ (a no-good cut)."""
    blk = m.batching
    n_bits = sum(1 - blk.num_gpu_batches_bit[k] if (N >> k) & 1 else blk.num_gpu_batches_bit[k]
                 for k in blk.N_BITS)
    _cuts(blk).add(n_bits + _differs_from(blk, g) >= 1)


def forbid_batch_size(m, g: int) -> None:
    """Forbid g (an exact LP showed that nothing fits with g even at the fewest GPU batches)."""
    _cuts(m.batching).add(_differs_from(m.batching, g) >= 1)


def cap_num_batches(m, g: int, n_max: int, n_hi: int) -> None:
    """With GPU batch size g, N <= n_max (an exact LP showed every larger N does not fit)."""
    blk = m.batching
    _cuts(blk).add(blk.num_gpu_batches <= n_max + (n_hi - n_max) * _differs_from(blk, g))


def integer_point(m, g: int, N: int) -> list[tuple[object, int]]:
    """``(variable, value)`` for this family's integer variables at ``g`` and ``N``: the bits of N,
    the one-hot or the bits of g, and the efficiency choice (its last choice stands for every g
    from ``flat_from`` up). With them fixed the MILP's optimum is the exact LP's at ``(g, N)``
    (tests/test_families.py); any other family's integer variables stay free."""
    blk = m.batching
    point = [(blk.num_gpu_batches_bit[k], (N >> k) & 1) for k in blk.N_BITS]
    if hasattr(blk, "batch_size_is"):
        point += [(blk.batch_size_is[c], int(c == g)) for c in blk.BATCH_SIZES]
    else:
        point += [(blk.gpu_batch_size_bit[j], (g >> j) & 1) for j in blk.G_BITS]
    if hasattr(blk, "efficiency_choice"):
        choices = list(blk.EFFICIENCY_CHOICES)
        chosen = min(g, choices[-1])
        point += [(blk.efficiency_choice[c], int(c == chosen)) for c in choices]
    return point


def value_at_batch_size(m, f):
    """The expression of ``f(g)`` for a function of the GPU batch size alone.

    With g one-hot (or one-hot over the values where g-dependent terms vary, the
    last choice standing for a range on which every such term is flat) this is
    ``sum_c f(c) x_c``; with g fixed it is the constant ``f(g)``.
    """
    return sum(f(c) * x for c, x in m.batching.g_choice.items())
