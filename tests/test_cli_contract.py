"""The command-line, JSON and report contract of ``python -m runners.solve`` (docs/model.md section 13).

Each command runs once, in a subprocess, from a module-scoped fixture that starts
them all together; the tests read the stored outputs.

Reference numbers for scenarios/t4_reference.yaml (from the issue):

* the global optimum is about 11.1348 generated tokens/s, at g = 30, N = 63;
* the original script evaluates ``--gpu-batch-size 32 --num-gpu-batches 58
  --percent 0 63 1 99 0 100`` at 11.117593 tokens/s, prefill 2931.9874 s,
  decode 2410.1761 s, peak GPU 12.7484 / 6.6391, CPU 179.2493 / 177.3691 and
  disk 31.9133 GiB;
* the original README's example ``--gpu-batch-size 16 --num-gpu-batches 2
  --percent 20 80 0 100 0 100`` does not fit in GPU memory.
"""

from __future__ import annotations

import json
import math
import os
import re
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from conftest import describe, run_cli
import yaml

REPO = Path(__file__).resolve().parents[1]
REFERENCE = REPO / "scenarios" / "t4_reference.yaml"

DEVICES = ("gpu", "cpu", "disk")
KINDS = ("weights", "cache", "activations")
COMPONENTS = ("ctog", "gtoc", "dtoc", "ctod", "comp")
PHASES = ("prefill", "decode")
DESIGN_FLAGS = ("--prompt-len", "--gen-len", "--gpu-mem", "--cpu-mem", "--nvme-mem",
                "--gpu-batch-size", "--num-gpu-batches", "--percent",
                "--alpha-g", "--alpha-c", "--alpha-n", "--compress-w", "--solver", "--json")

OPTIMUM_TOKENS_PER_S = 11.1348
OPTIMUM_CEILING = 11.1349           # the global optimum: anything above is a wrong model
EVAL_FLAGS = ("--gpu-batch-size", "32", "--num-gpu-batches", "58", "--percent", "0", "63", "1", "99", "0", "100")
README_FLAGS = ("--gpu-batch-size", "16", "--num-gpu-batches", "2", "--percent", "20", "80", "0", "100", "0", "100")

COMMANDS = {
    "optimal_json": (REFERENCE, "--json"),
    "optimal_text": (REFERENCE,),
    "overrides": (REFERENCE, "--gpu-mem", "24", "--cpu-mem", "100", "--nvme-mem", "0", "--json"),
    "evaluate": (REFERENCE, *EVAL_FLAGS, "--json"),
    "readme_example": (REFERENCE, *README_FLAGS),
    "no_room_for_weights": (REFERENCE, "--cpu-mem", "10", "--nvme-mem", "0"),
    "large_gpu": (REFERENCE, "--gpu-mem", "80", "--json"),
    "help": ("--help",),
}


@pytest.fixture(scope="module")
def runs() -> dict[str, subprocess.CompletedProcess]:
    with ThreadPoolExecutor(max_workers=len(COMMANDS)) as pool:
        futures = {name: pool.submit(run_cli, *args) for name, args in COMMANDS.items()}
        return {name: f.result() for name, f in futures.items()}


def json_of(proc: subprocess.CompletedProcess, code: int = 0) -> dict:
    assert "Traceback" not in proc.stdout + proc.stderr, describe(proc)
    assert proc.returncode == code, describe(proc)
    out = json.loads(proc.stdout)
    assert isinstance(out, dict)
    return out


@pytest.fixture(scope="module")
def scenario() -> dict:
    with open(REFERENCE, encoding="utf-8") as f:
        return yaml.safe_load(f)


@pytest.fixture(scope="module")
def optimal(runs) -> dict:
    return json_of(runs["optimal_json"])


@pytest.fixture(scope="module")
def evaluated(runs) -> dict:
    return json_of(runs["evaluate"])


def is_number(x) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


def is_int(x) -> bool:
    return isinstance(x, int) and not isinstance(x, bool)


# --------------------------------------------------------------------------- the JSON object
def check_json_shape(out: dict) -> None:
    """Every key of docs/model.md section 13.2, with its type."""
    assert isinstance(out["status"], str) and out["status"]
    assert is_number(out["throughput_tokens_per_s"]) and out["throughput_tokens_per_s"] > 0

    pol = out["policy"]
    assert is_int(pol["gpu_batch_size"]) and pol["gpu_batch_size"] >= 1
    assert is_int(pol["num_gpu_batches"]) and pol["num_gpu_batches"] >= 1
    assert set(pol["placement"]) == set(KINDS)
    for kind in KINDS:
        fr = pol["placement"][kind]
        assert set(fr) == set(DEVICES), kind
        for d in DEVICES:
            assert is_number(fr[d]) and 0.0 <= fr[d] <= 1.0, (kind, d, fr[d])
        assert abs(sum(fr.values()) - 1.0) <= 1e-9, (kind, fr)

    t = out["time_s"]
    for key in ("prefill_total", "decode_total", "total"):
        assert is_number(t[key]) and t[key] >= 0, key
    assert t["total"] > 0
    assert t["total"] == pytest.approx(t["prefill_total"] + t["decode_total"], rel=1e-12)
    for key in ("prefill_layer", "decode_layer"):
        layer = t[key]
        assert isinstance(layer, dict), key
        assert set(COMPONENTS) <= set(layer), (key, sorted(layer))
        for c, v in layer.items():
            assert isinstance(c, str) and is_number(v) and v >= 0, (key, c, v)

    pk = out["peak_memory_gib"]
    for d in ("gpu", "cpu"):
        assert set(pk[d]) == set(PHASES), d
        for ph in PHASES:
            assert is_number(pk[d][ph]) and pk[d][ph] >= 0, (d, ph)
    assert isinstance(pk["disk"], float) and math.isfinite(pk["disk"]) and pk["disk"] >= 0

    cap = out["capacity_gib"]
    assert set(DEVICES) <= set(cap)
    for d in DEVICES:
        assert is_number(cap[d]) and cap[d] >= 0, d

    assert "name" in out["solver"] and "seconds" in out["solver"]
    assert is_number(out["solver"]["seconds"]) and out["solver"]["seconds"] >= 0


def check_consistency(out: dict, scenario: dict) -> None:
    """Throughput from the times and the block size; peaks within alpha x capacity."""
    pol, t = out["policy"], out["time_s"]
    gen_len = out.get("workload", {}).get("gen_len", scenario["workload"]["gen_len"])
    expect = gen_len * pol["gpu_batch_size"] * pol["num_gpu_batches"] / t["total"]
    assert out["throughput_tokens_per_s"] == pytest.approx(expect, rel=1e-9)

    alpha = scenario["hardware"]["alpha"]
    cap = out["capacity_gib"]
    usable = {d: alpha[d] * cap[d] for d in DEVICES}
    if "usable_gib" in out:
        for d in DEVICES:
            assert out["usable_gib"][d] == pytest.approx(usable[d], rel=1e-12, abs=1e-12), d
    pk = out["peak_memory_gib"]
    for d in ("gpu", "cpu"):
        for ph in PHASES:
            assert pk[d][ph] <= usable[d] * (1 + 1e-7), (d, ph, pk[d][ph], usable[d])
    assert pk["disk"] <= usable["disk"] * (1 + 1e-7) + 1e-12, (pk["disk"], usable["disk"])


def test_optimal_json_has_every_contract_key(optimal):
    check_json_shape(optimal)
    assert optimal["status"] == "optimal"


def test_optimal_json_is_consistent(optimal, scenario):
    check_consistency(optimal, scenario)


def test_optimal_capacity_is_the_scenario_file(optimal):
    assert optimal["capacity_gib"]["gpu"] == 16
    assert optimal["capacity_gib"]["cpu"] == 200
    assert optimal["capacity_gib"]["disk"] == 1500


def test_optimal_solver(optimal):
    assert optimal["solver"]["name"] == "highs"
    assert optimal["solver"]["seconds"] > 0


def test_optimal_throughput_is_the_published_optimum(optimal):
    tp = optimal["throughput_tokens_per_s"]
    assert tp == pytest.approx(OPTIMUM_TOKENS_PER_S, rel=1e-4)
    assert tp <= OPTIMUM_CEILING, f"{tp} exceeds the global optimum: the model is too optimistic"


def test_optimal_policy_is_the_published_one(optimal):
    assert (optimal["policy"]["gpu_batch_size"], optimal["policy"]["num_gpu_batches"]) == (30, 63)


def test_optimal_stdout_is_only_json(runs):
    proc = runs["optimal_json"]
    assert json.loads(proc.stdout) is not None  # nothing but the one object on stdout
    assert proc.stdout.lstrip().startswith("{")


# --------------------------------------------------------------------------- overrides
def test_overrides_change_capacity(runs, scenario):
    out = json_of(runs["overrides"])
    check_json_shape(out)
    assert out["capacity_gib"]["gpu"] == 24
    assert out["capacity_gib"]["cpu"] == 100
    assert out["capacity_gib"]["disk"] == 0
    check_consistency(out, scenario)
    for kind in KINDS:
        assert out["policy"]["placement"][kind]["disk"] <= 1e-9, kind  # no disk to put anything on
    assert out["peak_memory_gib"]["disk"] <= 1e-9


# --------------------------------------------------------------------------- evaluating a fixed policy
def test_evaluate_fixed_policy_shape(evaluated, scenario):
    check_json_shape(evaluated)
    check_consistency(evaluated, scenario)
    assert evaluated["policy"]["gpu_batch_size"] == 32
    assert evaluated["policy"]["num_gpu_batches"] == 58


def test_evaluate_fixed_policy_placement_is_the_percents(evaluated):
    pl = evaluated["policy"]["placement"]
    expect = {"weights": (0.0, 0.63, 0.37), "cache": (0.01, 0.99, 0.0), "activations": (0.0, 1.0, 0.0)}
    for kind, fracs in expect.items():
        for d, f in zip(DEVICES, fracs):
            assert pl[kind][d] == pytest.approx(f, abs=1e-12), (kind, d)


def test_evaluate_fixed_policy_matches_the_original_script(evaluated):
    assert evaluated["throughput_tokens_per_s"] == pytest.approx(11.117593, rel=1e-6)
    t = evaluated["time_s"]
    assert t["prefill_total"] == pytest.approx(2931.9874, abs=1e-3)
    assert t["decode_total"] == pytest.approx(2410.1761, abs=1e-3)
    pk = evaluated["peak_memory_gib"]
    assert pk["gpu"]["prefill"] == pytest.approx(12.7484, abs=1e-4)
    assert pk["gpu"]["decode"] == pytest.approx(6.6391, abs=1e-4)
    assert pk["cpu"]["prefill"] == pytest.approx(179.2493, abs=1e-4)
    assert pk["cpu"]["decode"] == pytest.approx(177.3691, abs=1e-4)
    assert pk["disk"] == pytest.approx(31.9133, abs=1e-4)


def test_evaluated_policy_is_not_beyond_the_optimum(evaluated, optimal):
    assert evaluated["throughput_tokens_per_s"] <= optimal["throughput_tokens_per_s"] * (1 + 1e-6)


# --------------------------------------------------------------------------- infeasible
def test_readme_example_does_not_fit_in_gpu_memory(runs):
    proc = runs["readme_example"]
    assert "Traceback" not in proc.stdout + proc.stderr, describe(proc)
    assert proc.returncode == 1, describe(proc)
    assert "GPU memory" in proc.stderr, describe(proc)


def test_no_room_for_the_weights(runs):
    proc = runs["no_room_for_weights"]
    assert "Traceback" not in proc.stdout + proc.stderr, describe(proc)
    assert proc.returncode == 1, describe(proc)
    assert "weights" in proc.stderr and "86.25" in proc.stderr, describe(proc)


# --------------------------------------------------------------------------- a larger GPU
def test_large_gpu_memory_finds_a_policy(runs, scenario):
    """An 80 GiB GPU (an A100/H100) is ordinary input: exit 0 and a policy at least as good as on 16 GiB."""
    out = json_of(runs["large_gpu"])
    check_json_shape(out)
    check_consistency(out, scenario)
    assert out["capacity_gib"]["gpu"] == 80
    assert out["throughput_tokens_per_s"] >= OPTIMUM_TOKENS_PER_S * (1 - 1e-4)


# --------------------------------------------------------------------------- the text report
@pytest.fixture(scope="module")
def report(runs) -> str:
    proc = runs["optimal_text"]
    assert "Traceback" not in proc.stdout + proc.stderr, describe(proc)
    assert proc.returncode == 0, describe(proc)
    return proc.stdout


def test_report_policy_and_throughput(report, optimal):
    g, n = optimal["policy"]["gpu_batch_size"], optimal["policy"]["num_gpu_batches"]
    assert re.search(rf"batch size\D*\b{g}\b", report, re.I), report
    assert re.search(rf"batches\D*\b{n}\b", report, re.I), report
    for kind in KINDS:
        assert kind in report, kind
    assert "tokens/s" in report
    assert f"{optimal['throughput_tokens_per_s']:.4f}" in report


def test_report_per_layer_breakdown(report):
    assert "bottleneck" in report.lower()
    for c in COMPONENTS:
        assert c in report, c
    for ph in PHASES:
        assert re.search(rf"^\s*{ph}\s+[\d.]+", report, re.M), ph


def test_report_peak_memory(report):
    assert re.search(r"peak memory", report, re.I)
    after = report[re.search(r"peak memory", report, re.I).start():]
    for label in ("GPU", "CPU", "disk"):
        assert re.search(rf"^\s*{label}\s+\d+\.\d+", after, re.M), label


def test_report_solver(report):
    line = next((ln for ln in report.splitlines() if "highs" in ln.lower()), None)
    assert line is not None, report
    assert "optimal" in line.lower(), line


def test_report_flexllmgen_line(report, optimal):
    m = re.search(r"--gpu-batch-size (\S+) --num-gpu-batches (\S+) --percent((?: \S+){6})", report)
    assert m, report
    assert m.group(1) == str(optimal["policy"]["gpu_batch_size"])
    assert m.group(2) == str(optimal["policy"]["num_gpu_batches"])
    words = m.group(3).split()
    assert len(words) == 6
    assert all(re.fullmatch(r"\d+", w) for w in words), words
    pct = [int(w) for w in words]
    assert all(0 <= p <= 100 for p in pct), pct
    assert pct[0] + pct[1] <= 100 and pct[2] + pct[3] <= 100, pct
    assert pct[4] + pct[5] == 100, pct


# --------------------------------------------------------------------------- --help
def test_help_lists_every_flag(runs):
    proc = runs["help"]
    assert proc.returncode == 0, describe(proc)
    assert "Traceback" not in proc.stdout + proc.stderr
    for flag in DESIGN_FLAGS:
        assert re.search(rf"(?<![\w-]){re.escape(flag)}(?![\w-])", proc.stdout), flag
