"""Each constraint family on a tiny instance: its rows against hand formulas, and each
linearization exact at integer points.

The instance is tests/experts_tiny.py (flexllmgen accounting, h1 = 256, h2 = 512, 3 experts,
3 layers, s = 128, n = 64). Hand numbers follow the reference formulas (docs/model.md section
3.2), written out here independently of model/accounting/flexllmgen.py.
"""

from __future__ import annotations

import itertools
from pathlib import Path

import pyomo.environ as pyo
import pytest

from experts_tiny import MIB, tiny
from model import evaluate_policy, fastlp, load_scenario
from model.build import build_model
from model.evaluation import at_point, fixed_model
from model.families import FAMILIES, FAMILY_NAMES, batching
from model.limits import describe, limits
from model.optimize import model_data
from model.terms import fractions_from_percent

GIB = 2**30
SCENARIOS = Path(__file__).resolve().parents[1] / "scenarios"
h1, h2, nh, kv, E, l, s, n = 256, 512, 4, 2 * 64, 3, 3, 128, 64
WI = 4 * h1**2 + 2 * h1 * kv + 2 * (h1 * E + E * 3 * h1 * h2) + 2 * h1      # bytes per layer
PCT = (20, 50, 100, 0, 100, 0)     # weights 20/50/30 GPU/CPU/disk; cache and activations on the GPU
G, NB = 2, 3
B = G * NB
BIG = {"gpu": 64 * MIB * 100, "cpu": 64 * MIB * 100, "disk": 64 * MIB * 100}


def _sc(**ov):
    return tiny(**{"hardware__memory_gib": BIG, "experts__routing_probabilities": None, **ov})


def _fixed(sc):
    data, _b = model_data(sc)
    m, bad = at_point(data, G, NB, fractions_from_percent(PCT))
    return data, m, bad


def test_every_family_adds_one_named_block():
    m = build_model(model_data(_sc())[0])
    assert [f.__name__.rsplit(".", 1)[1] for f in FAMILIES] == list(FAMILY_NAMES)
    for name in FAMILY_NAMES:
        blk = getattr(m, name)
        assert isinstance(blk, pyo.Block) and blk.doc, name


def test_placement_rows():
    _data, m, _bad = _fixed(_sc())
    for k in ("cache", "activations"):
        row = m.placement.fractions_sum_to_one[k]
        assert pyo.value(row.body) == pytest.approx(1.0) and pyo.value(row.lower) == pyo.value(row.upper) == 1


def test_cost_ledger_rows_by_hand():
    """decode ctog = (wi (wc + wn) + 2 h1 b (hc + hn)) / ctog_bdw per layer and step; per sequence in us."""
    _data, m, _bad = _fixed(_sc())
    ctog_s = (WI * 0.8 + 0) / GIB / 1.0
    assert pyo.value(m.cost.layer_time_per_seq_us["layers", "decode", "ctog"]) == pytest.approx(1e6 * ctog_s / B,
                                                                                                 rel=1e-12)
    # decode dtoc = wi wn / (0.95 dtoc_bdw) (+ cache and activations on disk: none)
    dtoc_s = WI * 0.3 / GIB / (0.95 * 0.5)
    assert pyo.value(m.cost.layer_time_per_seq_us["layers", "decode", "dtoc"]) == pytest.approx(1e6 * dtoc_s / B,
                                                                                                 rel=1e-12)


def test_capacity_rows_by_hand():
    """GPU prefill: home wi l wg + 2 s h1 b hg + 4 (s+n) kv b l cg, working 2 wi (1-wg) + attention and
    expert intermediates per micro-batch (docs/model.md 3.2.6)."""
    sc = _sc()
    ev = evaluate_policy(sc, G, NB, PCT).evaluation
    home = WI * l * 0.2 + 2 * s * h1 * B + 4 * (s + n) * kv * B * l
    work = 2 * WI * 0.8 + G * (8 * s * h1 + 2 * s * h1 + 2 * nh * s**2 + 2 * s * h1 + 4 * s * h1) \
        + G * s * E + E * (2 * G * s * h1 + 2 * G * s * h2)
    assert ev.peak_memory_gib["gpu", "prefill"] == pytest.approx((home + work) / GIB, rel=1e-12)
    assert ev.peak_memory_gib["disk", None] == pytest.approx(WI * l * 0.3 / GIB, rel=1e-12)
    # a capacity below that peak: the evaluator names the limit, with the row's own numbers
    tight = evaluate_policy(_sc(hardware__memory_gib={**BIG, "gpu": (home + work) / GIB * 0.99}), G, NB, PCT)
    assert tight.status == "infeasible" and tight.infeasible_reasons[0].startswith("GPU memory (prefill): needs")


def test_timing_and_objective_rows_by_hand():
    """prefill = max(ctog + dtoc, gtoc + ctod, comp); decode = ctog + max(...); T = l T_p + (n-1) l T_g."""
    ev = evaluate_policy(_sc(), G, NB, PCT).evaluation
    ctog_p = WI * 0.8 / GIB / 1.0
    dtoc_p = WI * 0.3 / GIB / 0.5
    comp_p = B * (8 * s * h1**2 + 4 * s * h1 * kv + s * h1 * E + E * 4 * s * h1 * h2) / 1e12 \
        + 4 * B * s**2 * h1 / 0.5e12
    t_pre = max(ctog_p + dtoc_p, 0.0, comp_p)
    ctog_g = WI * 0.8 / GIB / 1.0
    dtoc_g = WI * 0.3 / GIB / (0.95 * 0.5)
    comp_g = B * (8 * h1**2 + 4 * h1 * kv + h1 * E + E * 4 * h1 * h2) / 0.5e12 + 4 * B * (s + n / 2) * h1 / 0.1e12
    t_gen = ctog_g + max(0.0, dtoc_g, 0.0, comp_g)
    assert ev.prefill_layer_s == pytest.approx(t_pre, rel=1e-12)
    assert ev.decode_layer_s == pytest.approx(t_gen, rel=1e-12)
    assert ev.total_s == pytest.approx(l * t_pre + (n - 1) * l * t_gen, rel=1e-12)
    assert ev.throughput_tokens_per_s == pytest.approx(n * B / (l * t_pre + (n - 1) * l * t_gen), rel=1e-12)


def test_latency_row_and_limit():
    total = evaluate_policy(_sc(), G, NB, PCT).evaluation.total_s
    ok = evaluate_policy(_sc(workload={"prompt_len": s, "gen_len": n, "max_block_time_s": total * 1.001}), G, NB, PCT)
    assert ok.status == "evaluated"
    bad = evaluate_policy(_sc(workload={"prompt_len": s, "gen_len": n, "max_block_time_s": total * 0.5}), G, NB, PCT)
    assert bad.status == "infeasible"
    assert bad.infeasible_reasons == [f"block latency limit: needs {total:.4f} s > {total * 0.5:.4f} s allowed "
                                      f"(workload.max_block_time_s)"]
    data, _b = model_data(_sc(workload={"prompt_len": s, "gen_len": n, "max_block_time_s": 10.0}))
    m = build_model(data)
    row = m.latency.block_time_within_limit
    assert describe(m, row) == "block latency limit"
    assert [lim.field for lim in limits(m) if lim.family == "latency"] == ["workload.max_block_time_s"]
    # t <= L u: the row's right-hand side is L times the batching family's 1/b
    assert "max_block_time_s" in str(row.expr) and "per_block" in str(row.expr)


def test_batching_linearization_is_exact_at_integer_points():
    """With g's one-hot and N's bits fixed at every integer point, u = 1/(gN), v = 1/N and q = p/N exactly."""
    data, _b = model_data(_sc(search={"max_gpu_batch_size": 3, "max_num_gpu_batches": 7}))
    m = build_model(data)
    bt = m.batching
    for g, N in itertools.product(range(1, 4), range(1, 8)):
        for c in bt.BATCH_SIZES:
            bt.batch_size_is[c].fix(1 if c == g else 0)
        for k in bt.N_BITS:
            bt.num_gpu_batches_bit[k].fix((N >> k) & 1)
        assert fastlp.solve(m) is not None, (g, N)
        assert pyo.value(bt.per_block) == pytest.approx(1 / (g * N), rel=1e-9)
        assert pyo.value(bt.per_microbatch) == pytest.approx(1 / N, rel=1e-9)
        for (k, d) in bt.MICRO_FRACTIONS:
            assert pyo.value(bt.fraction_per_microbatch[k, d]) == pytest.approx(
                pyo.value(m.placement.fraction[k, d]) / N, abs=1e-12)


@pytest.mark.parametrize("g_encoding", ["one-hot", "bits"])
@pytest.mark.parametrize("scenario", ["t4_reference.yaml", "a100_16g.yaml"])
def test_batching_cuts_keep_every_integer_point(scenario, g_encoding, monkeypatch):
    """The valid inequalities (tangents, chord, kind shares of 1/N bit by bit, the envelope of g*u with
    g in bits) cut off no policy: with (g, N) fixed through the one-hot or the bits, the MILP's optimum
    equals the exact LP at that (g, N), which has no linearization at all. Memory is tight, so
    placements are split."""
    from model import override

    if g_encoding == "bits":
        monkeypatch.setattr(batching, "ONE_HOT_MAX_VALUES", 1)
    sc = override(load_scenario(SCENARIOS / scenario), {"hardware.memory_gib.gpu": 12.0, "hardware.memory_gib.cpu": 64.0,
                                        "search.max_gpu_batch_size": 4, "search.max_num_gpu_batches": 40})
    data, _b = model_data(sc)
    m = build_model(data)
    bt = m.batching
    assert hasattr(bt, "per_microbatch_above_envelope") == (g_encoding == "bits")
    split = 0
    for g, N in itertools.product(range(1, 5), (1, 2, 3, 5, 8, 13, 21, 31, 32, 40)):
        fixed = batching.integer_point(m, g, N)
        for var, value in fixed:
            var.fix(value)
        milp = fastlp.solve(m)
        exact = fastlp.solve(build_model(data.fixed_at(g, N)))
        assert (milp is None) == (exact is None), (g, N)
        if exact is not None:
            assert milp == pytest.approx(exact, rel=1e-9), (g, N)
            used = [d for d in m.DEVICES if pyo.value(m.placement.weights_per_seq[d]) * g * N > 1e-6]
            split += len(used) > 1 or any(1e-6 < pyo.value(m.placement.fraction[k, d]) < 1 - 1e-6
                                          for k, d in m.placement.fraction)
    assert split >= 5   # the instance exercises split placements, not only whole tensors on one device


@pytest.mark.parametrize("g_encoding", ["one-hot", "bits"])
@pytest.mark.parametrize("scenario", ["t4_reference.yaml", "a100_16g.yaml"])
def test_exact_look_up_in_the_compiled_milp_is_the_fixed_lp(scenario, g_encoding, monkeypatch):
    """optimize's exact look-ups (the hint's bound, the N + 1 check) fix the batching family's integer
    variables (batching.integer_point) in the compiled MILP instead of building the fixed model: at
    every (g, N) tried, fitting or not, that value equals the exact LP of the fixed model, for both
    encodings of g and with g on both sides of the efficiency's flat bucket."""
    from pathlib import Path

    from model import load_scenario, override
    from model.families import batching

    monkeypatch.setattr(batching, "ONE_HOT_MAX_VALUES", 256 if g_encoding == "one-hot" else 1)
    path = Path(__file__).resolve().parents[1] / "scenarios" / scenario
    sc = override(load_scenario(path), {"hardware.memory_gib.gpu": 24.0, "hardware.memory_gib.cpu": 64.0,
                                        "search.max_num_gpu_batches": 300})
    data, _b = model_data(sc)
    m = build_model(data)
    assert hasattr(m.batching, "batch_size_is") == (g_encoding == "one-hot")
    # eff(g) of the CPU attention is flat from g = 64 (FlexLLMGen's rate factor), below g_hi
    assert data.accounting.flat_from(data.g_lo, data.g_hi) < data.g_hi
    compiled = fastlp.compile(m)
    fits = 0
    points = list(itertools.product(sorted({1, 2, 3, 7, 16, 63, 64, 65, data.g_hi}), (1, 2, 5, 31, 32, 77, 300)))
    for g, N in points:
        look_up = fastlp.value_at(compiled, batching.integer_point(m, g, N))
        exact = fastlp.solve(build_model(data.fixed_at(g, N)))
        assert (look_up is None) == (exact is None), (g, N)
        if exact is not None:
            fits += 1
            assert look_up == pytest.approx(exact, rel=1e-9), (g, N)
    assert 5 <= fits < len(points)   # both kinds of points were tried


def test_efficiency_split_is_exact_at_integer_points():
    """eff(g) sum p = sum_c eff(c) r[c]: with g fixed, the split puts the whole group on c = g."""
    data, _b = model_data(_sc(search={"max_gpu_batch_size": 8, "max_num_gpu_batches": 2}))
    m = build_model(data)
    bt = m.batching
    acc = data.accounting
    for g in range(1, 9):
        for c in bt.BATCH_SIZES:
            bt.batch_size_is[c].fix(1 if c == g else 0)
        assert fastlp.solve(m) is not None
        for i in bt.ATTENTION_GROUPS:
            p = sum(pyo.value(m.placement.fraction[kd]) for kd in bt.attention_members[i])
            assert pyo.value(bt.efficiency_times_group[i]) == pytest.approx(acc.efficiency(g) * p, abs=1e-12)


def test_cache_on_cpu_and_disk_is_one_attention_group():
    """The reference's CPU attention term is b * eff(g) * 4*(s + n/2)*h1*(cc + cn) / cpu_flops
    (docs/model.md section 3.2.4): the cache on the CPU (cc) and on disk (cn) with one coefficient, so
    t4_reference's two fractions share one split over g; a group keeps only members whose coefficients
    agree in every quantity."""
    data, _b = model_data(load_scenario(SCENARIOS / "t4_reference.yaml"))
    m = build_model(data)
    bt = m.batching
    groups = [set(bt.attention_members[i]) for i in bt.ATTENTION_GROUPS]
    assert {("cache", "cpu"), ("cache", "disk")} in groups
    quantities = data.accounting.time_quantities() + data.accounting.memory_quantities()
    for members in groups:
        for q in quantities:
            assert len({q.cpu_attention.coef.get(kd, 0.0) for kd in members}) == 1
    # one split variable per (choice, group), not per (choice, fraction)
    assert len(bt.fraction_at_choice) == len(bt.EFFICIENCY_CHOICES) * len(groups)


def test_implied_share_is_exact_at_integer_points():
    """With HiGHS one device per complete kind has no bit products (section 5.2.2): its q = v - the kind's
    other shares must still be p/N at every integer (g, N), checked with the MILP's integers fixed."""
    data, _b = model_data(load_scenario(SCENARIOS / "t4_reference.yaml"))
    m = build_model(data)
    bt = m.batching
    assert len(bt.IMPLIED_SHARES) >= 1
    assert not any((i,) + kd in bt.BIT_FRACTIONS for i in bt.N_BITS for kd in bt.IMPLIED_SHARES)
    checked = 0
    for g, N in [(1, 1), (2, 5), (7, 12), (16, 63), (30, 63), (39, 100)]:
        fixed = batching.integer_point(m, g, N)
        for var, value in fixed:
            var.fix(value)
        if fastlp.solve(m) is not None:
            checked += 1
            for kd in bt.IMPLIED_SHARES:
                assert pyo.value(bt.fraction_per_microbatch[kd]) == pytest.approx(
                    pyo.value(m.placement.fraction[kd]) / N, abs=1e-9), (g, N, kd)
        for var, _value in fixed:
            var.unfix()
    assert checked >= 4


def test_fixed_policy_rows():
    data, _b = model_data(_sc(policy={"percent": list(PCT)}))
    m = fixed_model(data, G, NB)
    assert fastlp.solve(m) is not None
    assert pyo.value(m.placement.fraction["cache", "gpu"]) == pytest.approx(1.0)
    assert pyo.value(m.placement.weights_fraction["disk"]) == pytest.approx(0.3)


def test_models_are_freed_after_a_solve():
    """The families' registry (limits, the cost ledger, closures over the model) must not keep a model
    alive once its caller lets go of it. A module-level weak-keyed registry did: its values refer to
    their key, so every model ever built stayed in memory, and a study or the expert table slowed
    down under ever longer garbage collections."""
    import gc

    from model import optimize

    sc = _sc(experts__pin_experts=True, search={"max_gpu_batch_size": 3, "max_num_gpu_batches": 4})

    def models() -> int:
        gc.collect()
        return sum(isinstance(o, pyo.ConcreteModel) for o in gc.get_objects())

    optimize(sc)   # warm: whatever a first solve caches for good
    before = models()
    for _ in range(2):
        optimize(sc)
    assert models() == before
