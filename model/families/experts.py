"""Experts: pinning on the GPU, computing on the CPU, and expected expert traffic (model.experts).

Adds the per-(layer, expert) decisions and contributes the terms they change to the cost
family's ledger (:func:`model.families.cost.contribute`), in named steps: decisions,
expected traffic, savings of streamed experts, CPU experts' moved share, contributions.
Per sequence (everything divided by
``b``), with ``omega_d = p[weights, d] / b`` and ``u = 1/b``:

    kept[G,e]       = pin[G,e] + cpu[G,e]                     (binary; at most one role)
    kappa[G,e,d]    = kept * omega_d                          (McCormick, exact: kept is binary)
    pinned_u[G,e]   = pin * u,   cpu_u[G,e] = cpu * u         (idem)

A quantity with per-block weights coefficients ``o_d`` (see :mod:`model.experts`)
changes by, for each expert ``e`` of the group with share ``f = scale * W_e``,

    - f sum_d o_d kappa[G,e,d] + f o_gpu pinned_u + f o_cpu cpu_u [where the CPU expert moves]

With ``expert_traffic: expected`` a one-hot ``beta_k`` picks the block size among the
sizes where ``mu_e(b) = 1 - r_e^b`` (``r_e = 1 - q_e``) still differs from 1, and one
bucket for the rest; ``u = sum_k beta_k / k + u_flat`` ties it to ``u = 1/b``. With
``zeta[k,d] = beta_k * omega_d`` (McCormick), a streamed expert's saving in a phase
with ``t`` tokens per sequence is

    S[G,e,d] = sum_k r_e^(k t) zeta[k,d]          (= r_e^(b t) omega_d, exact at every b)
    sigma    = (1 - kept) * S                     (McCormick)
    time    -= f sum_d o_d sigma

A CPU expert adds, per decode step and sequence, ``cpu * (q F / R_gemm - GPU saving)
+ rho * F (1/R_gemv - 1/R_gemm)`` with ``rho = cpu * mu(b)/b`` and ``mu(b)/b = u -
sum_k r^k y_k`` (``y_k = beta_k / k``), and its tokens' hidden states to the CPU and back.
With ``b`` fixed (the LP re-solve path) the same terms use the constants ``r^(b t)``
and ``mu(b)/b``.
"""

from __future__ import annotations

from dataclasses import dataclass, field as dc_field

import pyomo.environ as pyo

from ..experts import (attached, cpu_expert_seconds, exact_block_sizes,
                       hidden_transfer_seconds, kept_home, moved_probability)
from .cost import MIB_PER_GIB, US_PER_S, contribute
from .linearize import mccormick

# Coefficients r^(k t) of the savings and r^k of the moved share below this are dropped (mu taken as 1,
# as beyond the one-hot's sizes): a relative error below 1e-7 of one expert's traffic, under the gap.
# Entries between HiGHS's drop threshold (1e-9) and 1e-7 made its branch-and-bound wrong: with b in
# [10, 12] (g = 2, N in 5..6) it called N = 5 optimal although N = 6 is 8% better, and the same MILP
# with the entries dropped, or with N = 6 fixed, solved right (tests/test_block_ranges.py).
SMALL = 1e-7
# The McCormick bound of a saving S is raised to at least this (any bound >= max S keeps the envelope
# exact): HiGHS drops matrix entries below 1e-9, and a bound r^(k t) / k of order 1e-10 (small blocks'
# last sizes, or b >= 12 with a rare expert) lost "sigma >= S - s_hi * kept" its kept term, forcing
# sigma >= S: a CPU or pinned expert then forbade weights on its device and the MILP came out infeasible
# at a fitting (g, N) (tests/test_block_ranges.py found it with b restricted to 12).
BOUND_FLOOR = 1e-6


@dataclass
class _Ctx:
    """What the steps share: the model, the data, and the expressions each step defines."""

    m: object
    blk: object
    data: object
    groups: list
    wdev: list
    u_hi: float
    fixed_b: int | None
    pin: dict = dc_field(default_factory=dict)         # (group, expert) -> binary (or 0)
    cpu: dict = dc_field(default_factory=dict)
    pinned_u: dict = dc_field(default_factory=dict)    # pin * u
    cpu_u: dict = dc_field(default_factory=dict)       # cpu * u
    saving: dict = dc_field(default_factory=dict)      # (group, expert, device, phase) -> (S, upper bound of S)
    mu_per_seq: dict = dc_field(default_factory=dict)  # (group, expert) -> (mu(b)/b, upper bound)
    sigma: dict = dc_field(default_factory=dict)       # (group, expert, device, phase) -> saved share per seq
    rho: dict = dc_field(default_factory=dict)         # (group, expert) -> cpu * mu(b)/b


def add(m, data) -> None:
    m.experts = blk = pyo.Block(doc="Expert-aware decisions: pinned on the GPU, computed on the CPU, expected traffic")
    acc, setup = data.accounting, data.experts
    groups = list(acc.expert_groups)
    if setup is None or not setup.active or data.expert_decision is not None or not groups:
        return
    blk.EXPERT_GROUPS = pyo.Set(initialize=[eg.name for eg in groups], ordered=True,
                                doc="Layer groups of MoE layers (one per layer when decisions are per layer)")
    blk.GROUP_EXPERTS = pyo.Set(initialize=[(eg.name, e) for eg in groups for e in range(len(eg.routing))],
                                dimen=2, ordered=True, doc="(layer group, expert)")
    wdev = [d for d in m.DEVICES if acc.allowed[("weights", d)]]
    blk.WEIGHT_DEVICES = pyo.Set(initialize=wdev, within=m.DEVICES, ordered=True, doc="Devices that may hold weights")
    fixed_b = None if data.fixed_batch is None else data.fixed_batch[0] * data.fixed_batch[1]
    ctx = _Ctx(m=m, blk=blk, data=data, groups=groups, wdev=wdev, u_hi=1.0 / data.b_min,
               fixed_b=fixed_b)
    _decisions(ctx)
    if setup.traffic == "expected":
        _expected_traffic(ctx)
    _streamed_savings(ctx)
    if setup.cpu:
        _cpu_moved_share(ctx)
    _contributions(ctx)


def _decisions(ctx: _Ctx) -> None:
    """Binaries pinned[G,e], on_cpu[G,e] (one role each); kappa = kept * omega; pin * u, cpu * u."""
    m, blk, setup, wdev, u_hi = ctx.m, ctx.blk, ctx.data.experts, ctx.wdev, ctx.u_hi
    GE = blk.GROUP_EXPERTS
    zero = {ge: 0 for ge in GE}
    if setup.pin:
        blk.pinned = pyo.Var(GE, domain=pyo.Binary, doc="1: the expert's weights stay resident on the GPU")
    if setup.cpu:
        blk.on_cpu = pyo.Var(GE, domain=pyo.Binary, doc="1: the expert is computed on the CPU in decode")
    pin = ctx.pin = blk.pinned if setup.pin else zero
    cpu = ctx.cpu = blk.on_cpu if setup.cpu else zero
    ctx.pinned_u, ctx.cpu_u = zero, zero
    if setup.pin and setup.cpu:
        @blk.Constraint(GE, doc="An expert is pinned on the GPU, computed on the CPU, or streamed: one role")
        def one_role_per_expert(blk, grp, e):
            """pin + cpu <= 1"""
            return blk.pinned[grp, e] + blk.on_cpu[grp, e] <= 1

    if not setup.has_decisions:
        return
    omega, u = m.placement.weights_per_seq, m.batching.per_block
    blk.kept_per_seq = pyo.Var(GE, blk.WEIGHT_DEVICES, bounds=(0, u_hi),
                               doc="kappa = kept * p[weights, d] / b: a kept expert's would-be share, per sequence")
    mccormick(blk, "kept_per_seq", [(g, e, d) for (g, e) in GE for d in wdev],
              lambda i: pin[i[0], i[1]] + cpu[i[0], i[1]], lambda i: omega[i[2]], u_hi)

    @blk.Constraint(GE, doc="A kept expert's shares over all devices: sum_d kappa = kept * u <= kept * u_hi")
    def kept_share_within_bound(blk, grp, e):
        """sum_d kappa[G,e,d] <= u_hi kept   (each device's McCormick bound alone allows |devices| times that)"""
        return sum(blk.kept_per_seq[grp, e, d] for d in wdev) <= u_hi * (pin[grp, e] + cpu[grp, e])

    if setup.pin and setup.cpu:
        blk.pinned_per_seq = pyo.Var(GE, bounds=(0, u_hi), doc="pin * u")
        mccormick(blk, "pinned_per_seq", list(GE), lambda i: pin[i], lambda i: u, u_hi)
        ctx.pinned_u = {ge: blk.pinned_per_seq[ge] for ge in GE}
        ctx.cpu_u = {ge: sum(blk.kept_per_seq[ge + (d,)] for d in wdev) - blk.pinned_per_seq[ge] for ge in GE}
    else:
        kept_u = {ge: sum(blk.kept_per_seq[ge + (d,)] for d in wdev) for ge in GE}
        ctx.pinned_u = kept_u if setup.pin else zero
        ctx.cpu_u = kept_u if setup.cpu else zero
    _symmetry_breaking(m, blk, ctx.groups, pin, cpu, setup)


def _expected_traffic(ctx: _Ctx) -> None:
    """Savings S[G,e,d,phase] = r^(b t) omega_d and mu(b)/b, exact at every integer b.

    With b fixed these are constants times omega; otherwise a one-hot beta_k over the block
    sizes where some expert's mu(b) still differs from 1, with omega split over the choices
    (the convex hull of each choice), and one shared variable per distinct q.
    """
    m, blk, data = ctx.m, ctx.blk, ctx.data
    acc, setup = data.accounting, data.experts
    wdev, u_hi, GE = ctx.wdev, ctx.u_hi, blk.GROUP_EXPERTS
    omega, u = m.placement.weights_per_seq, m.batching.per_block
    by_name = {eg.name: eg for eg in ctx.groups}
    tokens = {"prefill": acc.prompt_len, "decode": 1}
    saving, mu_per_seq = ctx.saving, ctx.mu_per_seq
    if ctx.fixed_b is not None:
        for (grp, e) in GE:
            q = by_name[grp].routing[e]
            for ph, t in tokens.items():
                r_bt = 1.0 - moved_probability(q, ctx.fixed_b * t)
                if r_bt > SMALL:
                    for d in wdev:
                        saving[grp, e, d, ph] = (r_bt * omega[d], r_bt * u_hi)
            mu_per_seq[grp, e] = (moved_probability(q, ctx.fixed_b) / ctx.fixed_b, u_hi)
        return
    b_lo, b_hi = data.b_min, min(data.b_hi, data.g_hi * data.N_hi)
    sizes, flat, _capped = exact_block_sizes(acc, b_lo, b_hi)
    if sizes:
        blk.BLOCK_SIZES = pyo.Set(initialize=sizes, ordered=True,
                                  doc="Block sizes b at which some expert's mu(b) = 1 - (1-q)^b is not yet 1")
        blk.block_size_is = pyo.Var(blk.BLOCK_SIZES, domain=pyo.Binary, doc="beta_k: 1 when b = k")
        top = sizes[-1]
        if flat:
            blk.block_size_beyond = pyo.Var(domain=pyo.Binary, doc="1 when b > max(BLOCK_SIZES)")
            blk.per_block_beyond = pyo.Var(bounds=(0, 1.0 / (top + 1)), doc="u when b > max(BLOCK_SIZES), else 0")
            beyond, u_beyond = blk.block_size_beyond, blk.per_block_beyond
            blk.per_block_beyond_in_range = pyo.ConstraintList(doc="u_flat within [1/b_hi, 1/(top+1)] when chosen")
            blk.per_block_beyond_in_range.add(u_beyond <= beyond / (top + 1))
            blk.per_block_beyond_in_range.add(u_beyond >= beyond / b_hi)
        else:
            beyond, u_beyond = 0, 0

        @blk.Constraint(doc="N <= b: the block-size choice caps the number of GPU batches")
        def batches_within_block_size(blk):
            """N <= sum_k k beta_k + N_hi beta_flat   (valid: N <= g N = b)"""
            return (m.batching.num_gpu_batches
                    <= sum(k * blk.block_size_is[k] for k in sizes) + data.N_hi * beyond)

        @blk.Constraint(doc="g <= b: the block-size choice caps the GPU batch size")
        def batch_size_within_block_size(blk):
            """g <= sum_k k beta_k + g_hi beta_flat   (valid: g <= g N = b)"""
            return (m.batching.gpu_batch_size
                    <= sum(k * blk.block_size_is[k] for k in sizes) + data.g_hi * beyond)

        @blk.Constraint(doc="Exactly one block-size choice")
        def one_block_size(blk):
            """sum_k beta_k + beta_flat = 1"""
            return sum(blk.block_size_is[k] for k in blk.BLOCK_SIZES) + beyond == 1

        @blk.Constraint(doc="The block-size choice matches u = 1/b")
        def block_size_matches_reciprocal(blk):
            """u = sum_k beta_k / k + u_flat"""
            return u == sum(blk.block_size_is[k] / k for k in blk.BLOCK_SIZES) + u_beyond

        blk.BLOCK_DEVICES = pyo.Set(initialize=[(k, d) for k in sizes for d in wdev], dimen=2, ordered=True,
                                    doc="(block size, weights device)")
        # zeta[k, d] = beta_k * omega_d, as a disaggregation of omega over the block-size choices
        # (the convex hull of each choice: tighter than McCormick products with the bound 1/b_lo)
        blk.weights_at_block_size = pyo.Var(blk.BLOCK_DEVICES, within=pyo.NonNegativeReals,
                                            doc="zeta = beta_k * p[weights, d] / b")
        zeta = blk.weights_at_block_size
        if flat:
            blk.weights_beyond = pyo.Var(blk.WEIGHT_DEVICES, bounds=(0, 1.0 / (top + 1)),
                                         doc="p[weights, d] / b when b > max(BLOCK_SIZES), else 0")

        @blk.Constraint(wdev, doc="The weights fraction per sequence, split over the block-size choices")
        def weights_split_over_block_sizes(blk, d):
            """omega_d = sum_k zeta[k, d] + zeta_flat[d]"""
            return omega[d] == sum(zeta[k, d] for k in sizes) + (blk.weights_beyond[d] if flat else 0)

        @blk.Constraint(blk.BLOCK_SIZES, doc="Within a block-size choice the weights fractions sum to one")
        def weights_at_block_size_sum(blk, k):
            """sum_d zeta[k, d] = beta_k / k   (sum_d omega_d = u = 1/k when b = k)"""
            return sum(zeta[k, d] for d in wdev) == blk.block_size_is[k] / k

        if flat:
            @blk.Constraint(doc="Beyond the one-hot's sizes the weights fractions sum to one")
            def weights_beyond_sum(blk):
                """sum_d zeta_flat[d] = u_flat"""
                return sum(blk.weights_beyond[d] for d in wdev) == u_beyond

    for (grp, e) in GE:
        q = by_name[grp].routing[e]
        if q <= 0.0:   # never routed: never moves, never computed (exact at every b)
            for ph in tokens:
                for d in wdev:
                    saving[grp, e, d, ph] = (omega[d], u_hi)
            mu_per_seq[grp, e] = (0, 0.0)
            continue
        if not sizes or q >= 1.0:
            mu_per_seq[grp, e] = (u, u_hi)
            continue
        for ph, t in tokens.items():
            coef = {k: (1.0 - q) ** (k * t) for k in sizes}
            coef = {k: c for k, c in coef.items() if c > SMALL}
            if coef:
                bound = max(c / k for k, c in coef.items())
                for d in wdev:
                    saving[grp, e, d, ph] = (_shared_saving(blk, q, d, ph, coef, zeta), bound)
        if setup.cpu:
            mu_per_seq[grp, e] = (_shared_moved(blk, q, u, sizes), u_hi)



def _streamed_savings(ctx: _Ctx) -> None:
    """sigma = (1 - kept) * S: the share of a streamed expert that does not move (McCormick)."""
    blk, saving, setup, pin, cpu = ctx.blk, ctx.saving, ctx.data.experts, ctx.pin, ctx.cpu
    if not saving:
        return
    keys = sorted(saving, key=str)
    if not setup.has_decisions:
        ctx.sigma = {key: saving[key][0] for key in keys}
        return
    omega = ctx.m.placement.weights_per_seq
    blk.SAVING_INDEX = pyo.Set(initialize=keys, dimen=4, ordered=True, doc="(group, expert, device, phase)")
    blk.streamed_saving = pyo.Var(blk.SAVING_INDEX, within=pyo.NonNegativeReals,
                                  doc="sigma = (1 - kept) * S: weights a streamed expert does not move, per seq")
    blk.streamed_saving_def = pyo.ConstraintList(doc="sigma = (1 - kept) S, linearized (kept binary)")
    for key in keys:
        S, s_hi = saving[key]
        s_hi = max(s_hi, BOUND_FLOOR)
        kept = pin[key[0], key[1]] + cpu[key[0], key[1]]
        sg = blk.streamed_saving[key]
        blk.streamed_saving_def.add(sg <= S)
        blk.streamed_saving_def.add(sg <= s_hi * (1 - kept))
        blk.streamed_saving_def.add(sg >= S - s_hi * kept)
        ctx.sigma[key] = sg
    # kept share + saved share <= the expert's share (kept = 1: sigma = 0; kept = 0: kappa = 0, S <= omega):
    # without it the relaxation keeps and saves the same bytes twice
    blk.kept_or_saved = pyo.ConstraintList(doc="kappa + sigma <= p[weights, d] / b")
    for grp, e, d, ph in keys:
        blk.kept_or_saved.add(blk.kept_per_seq[grp, e, d] + ctx.sigma[grp, e, d, ph] <= omega[d])


def _cpu_moved_share(ctx: _Ctx) -> None:
    """rho = cpu * mu(b)/b: the per-sequence share of a CPU expert's GEMV (McCormick, cpu binary)."""
    blk, u_hi, cpu = ctx.blk, ctx.u_hi, ctx.cpu
    GE, u = blk.GROUP_EXPERTS, ctx.m.batching.per_block
    if not ctx.mu_per_seq:   # every expert counts as moved: rho = cpu * u, already at hand
        ctx.rho = dict(ctx.cpu_u)
        return
    blk.cpu_per_moved = pyo.Var(GE, within=pyo.NonNegativeReals, doc="rho = cpu * mu(b)/b")
    blk.cpu_per_moved_def = pyo.ConstraintList(doc="rho = cpu * mu(b)/b, linearized (cpu binary)")
    for ge in GE:
        nu, nu_hi = ctx.mu_per_seq.get(ge, (u, u_hi))
        r = blk.cpu_per_moved[ge]
        blk.cpu_per_moved_def.add(r >= nu - nu_hi * (1 - cpu[ge]))
        blk.cpu_per_moved_def.add(r <= nu)
        blk.cpu_per_moved_def.add(r <= nu_hi * cpu[ge])
        blk.cpu_per_moved_def.add(r >= ctx.cpu_u[ge] - (u - nu))   # cpu*nu = cpu*u - cpu*(u - nu), 0 <= u - nu
        ctx.rho[ge] = r


def _contributions(ctx: _Ctx) -> None:
    """Every changed term, as this block's own Expressions, contributed to the cost ledger.

    For each quantity a group's expert weights appear in (``model.experts.attached``) and each
    expert with share ``f``: ``- f sum_d o_d sigma`` (time; saved by expected traffic),
    ``- f sum_d o_d kappa + f o_gpu pin u + f o_cpu cpu u`` (kept experts leave the pool and
    count on their home device); a CPU expert adds its CPU time to decode compute and its
    tokens' hidden states to decode ctog and gtoc.
    """
    m, blk = ctx.m, ctx.blk
    acc, setup = ctx.data.accounting, ctx.data.experts
    deltas: dict[tuple, object] = {}

    def add(key, expr):
        deltas[key] = deltas.get(key, 0) + expr

    for eg in ctx.groups:
        for it in attached(acc, eg):
            o = dict(it.quantity.block)
            terms = []
            for e, w_e in enumerate(eg.expert_weights_gib):
                f = it.scale_per_gib * w_e
                ge = (eg.name, e)
                if it.kind == "time":
                    terms += [-f * c * ctx.sigma[eg.name, e, d, it.phase] for d, c in o.items()
                              if c and (eg.name, e, d, it.phase) in ctx.sigma]
                if setup.has_decisions:
                    terms += [-f * c * blk.kept_per_seq[ge + (d,)] for d, c in o.items() if c and d in ctx.wdev]
                    if setup.pin and o.get("gpu"):
                        terms.append(f * o["gpu"] * ctx.pinned_u[ge])
                    if setup.cpu and o.get("cpu") and kept_home("cpu", it) == "cpu":
                        terms.append(f * o["cpu"] * ctx.cpu_u[ge])
            if terms:
                add(_ledger_key(eg.name, it), (US_PER_S if it.kind == "time" else MIB_PER_GIB) * sum(terms))
        if setup.cpu:
            d_comp = d_ctog = d_gtoc = 0
            for e, q in enumerate(eg.routing):
                per_moved, per_seq = cpu_expert_seconds(acc, setup, q)
                to_gpu, to_cpu = hidden_transfer_seconds(acc, setup, q)
                c = ctx.cpu[eg.name, e]
                d_comp += per_moved * ctx.rho[eg.name, e] + per_seq * c
                d_ctog += to_gpu * c
                d_gtoc += to_cpu * c
            add(("time", eg.name, "decode", "comp"), US_PER_S * d_comp)
            add(("time", eg.name, "decode", "ctog"), US_PER_S * d_ctog)
            add(("time", eg.name, "decode", "gtoc"), US_PER_S * d_gtoc)
    keys = sorted(deltas, key=str)
    blk.CHANGED_TERMS = pyo.Set(initialize=range(len(keys)), ordered=True,
                                doc="Ledger entries this family changes (their keys: changed_term_key)")
    blk.changed_term_key = {i: k for i, k in enumerate(keys)}
    blk.term_change = pyo.Expression(blk.CHANGED_TERMS, rule=lambda b, i: deltas[keys[i]],
                                     doc="Change to a ledger entry (us or MiB per sequence), see changed_term_key")
    for i, key in enumerate(keys):
        contribute(m, key, blk.term_change[i])


def _ledger_key(group: str, it) -> tuple:
    """The cost ledger entry of an attached quantity."""
    if it.kind == "time":
        return ("time", group, it.phase, it.component)
    if it.device == "disk":
        return ("disk",)
    if it.kind == "home":
        return ("home", it.device, it.phase)
    return ("working", it.device, it.phase, group)


def _shared_saving(blk, q: float, d: str, ph: str, coef: dict, zeta):
    """S(q) = sum_k r^(k t) zeta[k, d]: one variable per distinct routing probability, device and
    phase, defined once (experts with the same q share it: far fewer nonzeros than one sum each)."""
    if not hasattr(blk, "unmoved_def"):
        blk.unmoved_index = {}
        blk.unmoved_per_seq = pyo.VarList(within=pyo.NonNegativeReals,
                                          doc="S = r^(b t) p[weights, d] / b for one q, d and phase")
        blk.unmoved_def = pyo.ConstraintList(doc="S(q) = sum_k (1 - q)^(k t) zeta[k, d]")
    key = (q, d, ph)
    if key not in blk.unmoved_index:
        v = blk.unmoved_per_seq.add()
        blk.unmoved_def.add(v == sum(c * zeta[k, d] for k, c in coef.items()))
        blk.unmoved_index[key] = v
    return blk.unmoved_index[key]


def _shared_moved(blk, q: float, u, sizes):
    """mu(b)/b = u - sum_k ((1 - q)^k / k) beta_k: one variable per distinct routing probability."""
    if not hasattr(blk, "moved_def"):
        blk.moved_index = {}
        blk.moved_per_seq = pyo.VarList(within=pyo.NonNegativeReals, doc="mu(b)/b = (1 - (1 - q)^b) / b for one q")
        blk.moved_def = pyo.ConstraintList(doc="mu(b)/b = u - sum_k (1 - q)^k y_k")
        # y_k = beta_k / k: the moved share's coefficients are then (1 - q)^k, relative errors, instead of
        # (1 - q)^k / k, which fell below the solvers' drop threshold at large k
        blk.per_block_at_size = pyo.Var(blk.BLOCK_SIZES, within=pyo.NonNegativeReals, doc="y_k = beta_k / k")
        blk.per_block_at_size_def = pyo.Constraint(
            blk.BLOCK_SIZES, rule=lambda b, k: b.per_block_at_size[k] == b.block_size_is[k] / k,
            doc="y_k = beta_k / k")
    if q not in blk.moved_index:
        v = blk.moved_per_seq.add()
        blk.moved_def.add(v == u - sum(c * blk.per_block_at_size[k] for k in sizes if (c := (1.0 - q) ** k) > SMALL))
        blk.moved_index[q] = v
    return blk.moved_index[q]


def _symmetry_breaking(m, blk, groups, pin, cpu, setup) -> None:
    """Identical experts of a layer: pinned first, then CPU, then streamed; identical layers: more pins first.

    Valid because permuting identical experts (same routing probability and weights) or
    identical layers (same routing row, same coefficients) maps a policy to one of equal
    throughput and memory.
    """
    blk.symmetry = pyo.ConstraintList(doc="Symmetry breaking among identical experts and identical layers")
    for eg in groups:
        classes = {}
        for e, key in enumerate(zip(eg.routing, eg.expert_weights_gib)):
            classes.setdefault(key, []).append(e)
        for members in classes.values():
            for a, b in zip(members, members[1:]):
                ga, gb = (eg.name, a), (eg.name, b)
                if setup.pin:
                    blk.symmetry.add(pin[ga] >= pin[gb])
                blk.symmetry.add(pin[ga] + cpu[ga] >= pin[gb] + cpu[gb])
    first = pin if setup.pin else cpu
    for ga, gb in zip(groups, groups[1:]):
        if (ga.routing == gb.routing and ga.expert_weights_gib == gb.expert_weights_gib
                and _same_layer(ga.name, gb.name)):
            blk.symmetry.add(sum(first[ga.name, e] for e in range(len(ga.routing)))
                             >= sum(first[gb.name, e] for e in range(len(gb.routing))))


def _same_layer(a: str, b: str) -> bool:
    """Whether two layer groups have the same cost coefficients (split copies of one group)."""
    return a.rsplit(".", 1)[0] == b.rsplit(".", 1)[0]
