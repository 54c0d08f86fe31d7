"""Issue 13: the default gap makes HiGHS's answer optimal to 1e-6; the --reference161 benchmark's inputs.

Timings are never asserted here (shared, noisy machines); ``python -m runners.bench --reference161``
reports them.
"""

from __future__ import annotations

import subprocess
import sys

import pytest

import reference_lp as ref
from conftest import ROOT, t4_with
from model import InputError, optimize, override
from model.scenario import DEFAULT_MIP_GAP
from runners.bench_speed import COLUMNS, parse_variant, reference_rows


def test_default_gap_is_per_solver(t4):
    assert t4.solver.mip_gap is None            # the shipped scenario leaves it to the default
    assert t4.solver.gap == 1e-6 == DEFAULT_MIP_GAP["highs"]
    assert override(t4, {"solver.name": "cbc"}).solver.gap == 1e-4
    assert override(t4, {"solver.mip_gap": 1e-3}).solver.gap == 1e-3


def test_default_answer_is_optimal_to_1e6():
    """s=128, n=64, 12/96/6 GiB, alpha 0.9: exhaustive enumeration (tests/test_enumeration.py) puts
    the optimum at g=3, N=157; scipy's LP there (tests/reference_lp.py) gives its throughput. The
    default HiGHS answer must be within 1e-6 of it (the old 1e-4 gap allowed 1e-4 below)."""
    res = optimize(t4_with(128, 64, 12, 96, 6, alpha=0.9))
    best = ref.solve_fixed_lp(128, 64, 3, 157, (12, 96, 6), {"gpu": 0.9, "cpu": 0.9, "disk": 0.9})["throughput"]
    assert res.throughput_tokens_per_s <= best * (1 + 1e-7)
    assert res.throughput_tokens_per_s >= best * (1 - 1e-6)
    assert res.solve.gap is not None and res.solve.gap <= 1e-6


def test_reference_csv_has_the_161_scenarios():
    rows = reference_rows()
    assert len(rows) == 161
    assert len({rid for rid, _ in rows}) == 161
    assert all(set(sets) == {key for key, _ in COLUMNS.values()} for _, sets in rows)
    # the original script's README example is row 0
    assert rows[0][1]["workload.prompt_len"] == 512 and rows[0][1]["hardware.memory_gib.gpu"] == 16.0


def test_reference_csv_bad_value_names_line_and_column(tmp_path):
    path = tmp_path / "bad.csv"
    path.write_text("id,prompt_len,gen_len,gpu_gib,cpu_gib,disk_gib,alpha_gpu,alpha_cpu,alpha_disk\n"
                    "0,512,x,16,200,1500,0.8,0.9,0.8\n")
    with pytest.raises(InputError) as exc:
        reference_rows(path)
    assert "line 2" in exc.value.field and "gen_len" in exc.value.field and exc.value.value == "x"
    path.write_text("id,prompt_len\n0,512\n")
    with pytest.raises(InputError, match="missing column gen_len"):
        reference_rows(path)


def test_parse_variant():
    assert parse_variant("base") == ("base", {})
    assert parse_variant("old:solver.mip_gap=0.0001,solver.options.mip_heuristic_run_rens=true") == (
        "old", {"solver.mip_gap": 1e-4, "solver.options.mip_heuristic_run_rens": True})
    with pytest.raises(InputError):
        parse_variant("old:solver.mip_gap")
    with pytest.raises(InputError):
        parse_variant(":a=1")
    with pytest.raises(InputError):
        parse_variant("x:a=[1")


def test_bench_bad_variant_is_one_line_exit_2():
    out = subprocess.run([sys.executable, "-m", "runners.bench", "--reference161", "--limit", "1",
                          "--variant", "x:nokey"], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert out.returncode == 2
    assert len(out.stderr.strip().splitlines()) == 1 and "--variant" in out.stderr


def test_bench_seeds_solve_each_scenario_per_seed(tmp_path):
    """--seeds 2 writes one CSV row per scenario and seed (HiGHS random_seed 0 and 1), the same answer under
    both for a scenario HiGHS solves to the gap; --seeds 0 is bad input (one line, exit 2)."""
    from runners.bench_speed import reference161

    out = tmp_path / "answers.csv"
    assert reference161([], limit=2, csv_out=str(out), progress=False, seeds=2) == 0
    import csv
    rows = list(csv.DictReader(out.open()))
    assert [(r["id"], r["seed"]) for r in rows] == [("0", "0"), ("0", "1"), ("1", "0"), ("1", "1")]
    for rid in ("0", "1"):
        tputs = [float(r["tokens_per_s"]) for r in rows if r["id"] == rid]
        assert tputs[0] == pytest.approx(tputs[1], rel=2e-6)
    bad = subprocess.run([sys.executable, "-m", "runners.bench", "--reference161", "--seeds", "0"], cwd=ROOT,
                         capture_output=True, text=True, timeout=120)
    assert bad.returncode == 2
    assert len(bad.stderr.strip().splitlines()) == 1 and "--seeds" in bad.stderr


def test_tolerance_slip_is_certified_not_rejected():
    """Reference row 70 (s=128, n=32, 12/200/1500 GiB): at gap 1e-6 HiGHS's objective at its (g, N) is
    about 2e-6 below the exact LP there (its 1e-9 tolerances times the binary expansions'
    coefficients; it raised "the MILP's policy was not feasible" before). The run must certify the
    policy by re-solving (a note says so; where the solver's point is clean there is none), not fail;
    the reported throughput is scipy's LP (tests/reference_lp.py) at the chosen (g, N)."""
    res = optimize(t4_with(128, 32, 12, 200, 1500))
    assert res.status == "optimal"
    want = ref.solve_fixed_lp(128, 32, res.gpu_batch_size, res.num_gpu_batches, (12, 200, 1500),
                              ref.DEFAULT_ALPHA)["throughput"]
    assert res.throughput_tokens_per_s == pytest.approx(want, rel=1e-7)


def test_default_expert_run_includes_the_memory_bound_host(monkeypatch):
    """Issue 13 measures the expert table's default run, which must include the memory-bound T4 host
    (100 GiB CPU, no disk, prompt 4096, generation 256: README's second expert table); a run naming
    its own scenarios or overrides does not get it added."""
    from runners import bench

    calls = []
    monkeypatch.setattr(bench, "experts_table", lambda *a, **k: calls.append(a) or 0)
    assert bench.main(["--experts"]) == 0
    extra = calls[-1][5]
    assert [(label, path.name, sets, lens) for label, path, sets, lens in extra] == [
        ("t4_host100_4k", "t4_reference.yaml",
         {"hardware.memory_gib.cpu": 100, "hardware.memory_gib.disk": 0, "workload.prompt_len": 4096}, (256,))]
    assert bench.main(["--experts", str(ROOT / "scenarios" / "t4_reference.yaml")]) == 0
    assert calls[-1][5] == []
    assert bench.main(["--experts", "--set", "hardware.memory_gib.cpu=50"]) == 0
    assert calls[-1][5] == []
