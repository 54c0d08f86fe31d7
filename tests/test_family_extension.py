"""A new constraint family is one module plus one registration line, and every answer honours it.

The test copies the repository, writes a throwaway family (a shared PCIe link: CPU->GPU and
GPU->CPU transfers of a prefill layer share one link, so the layer also covers ctog + gtoc; and a
budget on the decode step's CPU->GPU time, ``hardware.max_decode_ctog_s`` with the flag
``--max-decode-ctog``), adds its name to ``FAMILY_NAMES``, and runs the command line there, as a
researcher would, with no other edit. Then:

* the optimum honours the budget (the reported ctog is within it), and is no better than without;
* a fully fixed policy that breaks the budget exits 1 naming it;
* a budget nothing can meet exits 1 and the explanation names it;
* "Limits" names the shared-link chain when it sets the decode step, and the report's formula
  shows it;
* the MILP equals exhaustive enumeration (the generic enumerator, derived from the same model).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.slow   # a copy of the repository and ~20 solves in subprocesses

FAMILY = textwrap.dedent('''
    """A shared PCIe link and a budget on a decode step's CPU->GPU time (a throwaway test family)."""
    import pyomo.environ as pyo

    from ..keys import Key
    from ..limits import limit
    from .timing import bound_layer_time

    KEYS = [Key("hardware.max_decode_ctog_s", float | None, None, {"gt": 0, "le": 1e6},
                doc="the longest a decode step's CPU->GPU transfer may take per layer, seconds",
                flag="--max-decode-ctog", metavar="S")]


    def add(m, data):
        m.pcie = blk = pyo.Block(doc="One PCIe link for both directions; a CPU->GPU budget per decode step")
        t = m.cost.layer_time_per_seq_us
        bound_layer_time(m, "prefill", "shared_link", "CPU->GPU + GPU->CPU transfer (one link)",
                         lambda grp: t[grp, "prefill", "ctog"] + t[grp, "prefill", "gtoc"], components=("ctog", "gtoc"))
        cap = data.scenario.hardware.max_decode_ctog_s
        if cap is None:
            return
        blk.budget_s = pyo.Param(initialize=cap, doc="budget, seconds per layer and decode step")

        @blk.Constraint(m.LAYER_GROUPS, doc="decode CPU->GPU time within the budget, per sequence")
        def ctog_within_budget(blk, grp):
            return t[grp, "decode", "ctog"] <= 1e6 * blk.budget_s * m.batching.per_block

        for grp in m.LAYER_GROUPS:
            limit(m, family="pcie", name=f"ctog[{grp}]", label="decode CPU->GPU budget", group="decode CPU->GPU budget",
                  field="hardware.max_decode_ctog_s", unit="s", constraint=blk.ctog_within_budget[grp],
                  needed=lambda m, grp=grp: pyo.value(t[grp, "decode", "ctog"]) / pyo.value(m.batching.per_block) / 1e6,
                  allowed=lambda m: cap)
''')


@pytest.fixture(scope="module")
def repo(tmp_path_factory):
    """A copy of the repository with the throwaway family added: one module, one registration line."""
    dst = tmp_path_factory.mktemp("extended") / "repo"
    shutil.copytree(ROOT, dst, ignore=shutil.ignore_patterns(".git", "__pycache__", "*.egg-info", ".hypothesis",
                                                             ".pytest_cache", "sweep_out", "out"))
    (dst / "model" / "families" / "pcie.py").write_text(FAMILY)
    init = dst / "model" / "families" / "__init__.py"
    text = init.read_text()
    line = '    "latency",        # block time (every request\'s latency) <= workload.max_block_time_s\n'
    assert line in text
    init.write_text(text.replace(line, line + '    "pcie",\n'))           # the one registration line
    return dst


def run(repo: Path, *args, timeout: float = 120):
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env["PYTHONPATH"] = str(repo)
    return subprocess.run([sys.executable, "-m", "runners.solve", *map(str, args)], cwd=repo, env=env,
                          capture_output=True, text=True, timeout=timeout)


SCENARIO = "scenarios/t4_reference.yaml"
BUDGET = 0.2    # t4_reference's optimum streams 0.21023 s per layer and decode step; 0.19 s is the least possible


def test_optimum_honours_the_new_family(repo):
    free = run(repo, SCENARIO, "--json")
    capped = run(repo, SCENARIO, "--max-decode-ctog", BUDGET, "--json")
    assert free.returncode == 0 and capped.returncode == 0, capped.stderr
    a, b = json.loads(free.stdout), json.loads(capped.stdout)
    assert b["family_settings"]["hardware.max_decode_ctog_s"] == BUDGET      # echoed as a scenario key
    assert a["time_s"]["decode_layer"]["ctog"] > BUDGET                      # the budget cuts the free optimum
    assert b["time_s"]["decode_layer"]["ctog"] <= BUDGET * (1 + 1e-7)        # and the new optimum honours it
    assert b["throughput_tokens_per_s"] < a["throughput_tokens_per_s"]


def test_fixed_policy_that_breaks_it_exits_1_naming_it(repo):
    # the reference's README policy streams all weights from the CPU: 0.21 s of CPU->GPU per layer and step
    proc = run(repo, SCENARIO, "--gpu-batch-size", 30, "--num-gpu-batches", 63, "--percent", 0, 100, 1, 71, 5, 95,
               "--max-decode-ctog", BUDGET)
    assert proc.returncode == 1, proc.stderr
    assert "decode CPU->GPU budget" in proc.stderr and "Traceback" not in proc.stderr


def test_infeasibility_names_it(repo):
    # 12.8 GiB of GPU memory hold at most ~15% of the 86 GiB of weights: the rest crosses PCIe every step
    proc = run(repo, SCENARIO, "--max-decode-ctog", 0.01)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    first = proc.stderr.strip().splitlines()[0]
    assert first.startswith("infeasible: decode CPU->GPU budget is short"), proc.stderr


def test_limits_and_formula_show_the_new_chain(repo):
    # no disk and a GPU fast enough that prefill is transfer-bound: the shared link (ctog + gtoc, 0.64 + 3.91 s
    # a layer) exceeds each direction alone and the compute (2.96 s), so it sets the prefill layer time
    proc = run(repo, SCENARIO, "--nvme-mem", 0, "--set", "hardware.tflops.gpu_matmul_prefill=500",
               "--set", "hardware.tflops.gpu_bmm_prefill=500")
    assert proc.returncode == 0, proc.stderr
    assert "shared_link" in proc.stdout                           # the report's formula lists the chain
    limits = next(line for line in proc.stdout.splitlines() if line.startswith("Limits"))
    assert "CPU->GPU + GPU->CPU transfer (one link)" in limits


def test_enumeration_covers_the_new_family(repo):
    code = textwrap.dedent(f'''
        from model import load_scenario, optimize
        from model.enumerate import enumerate_policies
        from model.optimize import model_data
        sc = load_scenario("{SCENARIO}", {{"workload.prompt_len": 128, "workload.gen_len": 8,
            "hardware.memory_gib": {{"gpu": 16, "cpu": 100, "disk": 0}}, "hardware.max_decode_ctog_s": 0.2,
            "search.max_gpu_batch_size": 6, "search.max_num_gpu_batches": 40}})
        res = optimize(sc)
        data, _b = model_data(sc)
        e = enumerate_policies(data)
        free = optimize(load_scenario("{SCENARIO}", {{"workload.prompt_len": 128, "workload.gen_len": 8,
            "hardware.memory_gib": {{"gpu": 16, "cpu": 100, "disk": 0}},
            "search.max_gpu_batch_size": 6, "search.max_num_gpu_batches": 40}}), sensitivity=False)
        print(res.throughput_tokens_per_s, e.best_throughput, free.throughput_tokens_per_s)
    ''')
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env["PYTHONPATH"] = str(repo)
    proc = subprocess.run([sys.executable, "-c", code], cwd=repo, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    milp, enum, free = map(float, proc.stdout.split())
    assert milp == pytest.approx(enum, rel=1e-6)
    assert milp < free * (1 - 1e-4)   # the budget binds on this instance (the enumeration covers a live row)
