"""The bad-input contract of ``python -m runners.solve`` (docs/model.md section 13).

Every bad input -- a scenario file that is missing, empty, malformed or
invalid, or a bad command-line flag -- must give

* exit status 2,
* exactly one line on stderr, naming the field (a dotted scenario path such as
  ``hardware.memory_gib.gpu``, or the flag such as ``--gpu-batch-size``) and the
  offending value,
* no Python traceback anywhere in stdout or stderr.

The CLI runs in a subprocess, as a user runs it. Each bad scenario is the
reference scenario (scenarios/t4_reference.yaml) with exactly one thing changed,
written into pytest's ``tmp_path``.
"""

from __future__ import annotations

import copy
import json
import os
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from conftest import describe, run_cli
import yaml

# One worker runs this module: its batch fixture (every case as a subprocess, 24 s here) is then
# paid once, not once per pytest-xdist worker (pyproject.toml: --dist loadgroup).
pytestmark = pytest.mark.xdist_group("bad_input_batch")

REPO = Path(__file__).resolve().parents[1]
REFERENCE = REPO / "scenarios" / "t4_reference.yaml"
DELETE = object()  # sentinel: remove the key instead of setting it


class RawYaml:
    """A value written verbatim into the YAML text (for numbers Python cannot hold, e.g. 1.0e400)."""

    def __init__(self, text: str):
        self.text = text


def assert_bad_input(proc: subprocess.CompletedProcess, *expected: str) -> str:
    """Exit 2, one stderr line that contains every ``expected`` text (case-insensitive), no traceback."""
    assert "Traceback" not in proc.stdout + proc.stderr, describe(proc)
    assert proc.returncode == 2, describe(proc)
    lines = proc.stderr.splitlines()
    assert len(lines) == 1 and lines[0].strip(), f"expected exactly one stderr line\n{describe(proc)}"
    line = lines[0]
    for text in expected:
        assert text.lower() in line.lower(), f"{text!r} not named in the error line: {line!r}"
    return line


def reference_raw() -> dict:
    with open(REFERENCE, encoding="utf-8") as f:
        return yaml.safe_load(f)


def write_variant(tmp_path: Path, dotted: str, value, name: str = "bad.yaml") -> Path:
    """The reference scenario with ``dotted`` set to ``value`` (or deleted), written to tmp_path."""
    raw = copy.deepcopy(reference_raw())
    node = raw
    parts = dotted.split(".")
    for part in parts[:-1]:
        node = node.setdefault(part, {})
    raw_text = None
    if value is DELETE:
        del node[parts[-1]]
    elif isinstance(value, RawYaml):
        node[parts[-1]] = "__RAW_YAML_VALUE__"
        raw_text = value.text
    else:
        node[parts[-1]] = value
    text = yaml.safe_dump(raw, sort_keys=False)
    if raw_text is not None:
        assert text.count("__RAW_YAML_VALUE__") == 1
        text = text.replace("__RAW_YAML_VALUE__", raw_text)
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


def test_reference_scenario_is_valid():
    """The base every bad file is derived from must itself load (guards the tests below)."""
    raw = reference_raw()
    assert isinstance(raw, dict) and "hardware" in raw


# --------------------------------------------------------------------------- the file itself
def test_missing_scenario_file(tmp_path):
    path = tmp_path / "no_such_scenario.yaml"
    assert_bad_input(run_cli(path), str(path))


def test_scenario_path_is_a_directory(tmp_path):
    assert_bad_input(run_cli(tmp_path), str(tmp_path))


def test_empty_file(tmp_path):
    path = tmp_path / "empty.yaml"
    path.write_text("", encoding="utf-8")
    assert_bad_input(run_cli(path), str(path), "empty")


def test_comment_only_file(tmp_path):
    path = tmp_path / "comment.yaml"
    path.write_text("# nothing but a comment\n", encoding="utf-8")
    assert_bad_input(run_cli(path), str(path))


def test_malformed_yaml_unbalanced_bracket(tmp_path):
    text = REFERENCE.read_text(encoding="utf-8")
    good = "memory_gib: {gpu: 16, cpu: 200, disk: 1500}"
    assert good in text
    path = tmp_path / "unbalanced.yaml"
    path.write_text(text.replace(good, "memory_gib: {gpu: 16, cpu: [200, disk: 1500}"), encoding="utf-8")
    assert_bad_input(run_cli(path), str(path), "yaml")


def test_malformed_yaml_tab_indentation(tmp_path):
    text = REFERENCE.read_text(encoding="utf-8")
    assert "\n  prompt_len: 512" in text
    path = tmp_path / "tabs.yaml"
    path.write_text(text.replace("  prompt_len: 512", "\tprompt_len: 512"), encoding="utf-8")
    assert_bad_input(run_cli(path), str(path))


def test_not_utf8(tmp_path):
    path = tmp_path / "binary.yaml"
    path.write_bytes(b"\xff\xfe\x00name: \x80\x81\n")
    assert_bad_input(run_cli(path), str(path))


def test_top_level_list_instead_of_mapping(tmp_path):
    path = tmp_path / "list.yaml"
    path.write_text(yaml.safe_dump(list(reference_raw())), encoding="utf-8")  # the section names, as a list
    line = assert_bad_input(run_cli(path), "scenario")
    assert "mapping" in line.lower() or "'hardware'" in line


def test_top_level_scalar_instead_of_mapping(tmp_path):
    path = tmp_path / "scalar.yaml"
    path.write_text('"t4_reference"\n', encoding="utf-8")
    assert_bad_input(run_cli(path), "scenario", "t4_reference")


# --------------------------------------------------------------------------- one field changed
# (dotted path, new value, texts the error line must contain)
FIELD_CASES = [
    # unknown keys
    ("colour", "blue", ["colour", "blue"]),
    ("hardware.bandwidth_gib_per_s.foo", 3.5, ["hardware.bandwidth_gib_per_s.foo", "3.5"]),
    # wrong types
    ("workload.prompt_len", "abc", ["workload.prompt_len", "abc"]),
    ("workload.prompt_len", 1.5, ["workload.prompt_len", "1.5"]),
    ("workload.gen_len", True, ["workload.gen_len", "true"]),
    ("hardware.memory_gib.gpu", True, ["hardware.memory_gib.gpu", "true"]),
    ("hardware.memory_gib.cpu", "12abc", ["hardware.memory_gib.cpu", "12abc"]),
    ("model.accounting", "nosuch", ["model.accounting", "nosuch"]),
    ("name", "", ["name", "''"]),
    ("hardware", 5, ["hardware", "5"]),
    ("hardware.memory_gib", 16, ["hardware.memory_gib", "16"]),
    ("model", [1], ["model", "[1]"]),
    ("solver.options", {"foo": [1]}, ["solver.options.foo", "[1]"]),
    # memory
    ("hardware.memory_gib.cpu", -1, ["hardware.memory_gib.cpu", "-1"]),
    ("hardware.memory_gib.disk", -0.5, ["hardware.memory_gib.disk", "-0.5"]),
    ("hardware.memory_gib.gpu", 0, ["hardware.memory_gib.gpu", "0"]),
    # bandwidths, FLOP rates, alphas
    ("hardware.bandwidth_gib_per_s.cpu_to_gpu", 0, ["hardware.bandwidth_gib_per_s.cpu_to_gpu", "0"]),
    ("hardware.bandwidth_gib_per_s.disk_to_cpu", -0.473, ["hardware.bandwidth_gib_per_s.disk_to_cpu", "-0.473"]),
    ("hardware.tflops.gpu_matmul_prefill", 0, ["hardware.tflops.gpu_matmul_prefill", "0"]),
    ("hardware.alpha.gpu", 0, ["hardware.alpha.gpu", "0"]),
    ("hardware.alpha.cpu", -0.9, ["hardware.alpha.cpu", "-0.9"]),
    # inf / nan / overflowing numbers
    ("hardware.memory_gib.gpu", float("inf"), ["hardware.memory_gib.gpu", "inf"]),
    ("hardware.memory_gib.cpu", float("nan"), ["hardware.memory_gib.cpu", "nan"]),
    ("hardware.memory_gib.disk", float("-inf"), ["hardware.memory_gib.disk", "inf"]),
    ("hardware.bandwidth_gib_per_s.cpu_to_gpu", float("inf"), ["hardware.bandwidth_gib_per_s.cpu_to_gpu", "inf"]),
    ("hardware.tflops.cpu", float("nan"), ["hardware.tflops.cpu", "nan"]),
    ("hardware.memory_gib.gpu", RawYaml("1.0e400"), ["hardware.memory_gib.gpu", "inf"]),
    ("hardware.memory_gib.cpu", RawYaml("1e400"), ["hardware.memory_gib.cpu", "inf"]),
    ("workload.prompt_len", RawYaml(".inf"), ["workload.prompt_len", "inf"]),
    # model cross-checks
    ("model.routing_probabilities", [0.5, 0.5, 0.5, 0.5], ["model.routing_probabilities", "0.5"]),
    ("model.routing_probabilities", [1.5, 0.5, 0, 0, 0, 0, 0, 0], ["model.routing_probabilities", "1.5"]),
    ("model.routing_probabilities", [0.1] * 8, ["model.routing_probabilities", "0.1"]),
    ("model.num_experts_per_token", 9, ["model.num_experts_per_token", "9"]),
    ("model.num_key_value_heads", 64, ["model.num_key_value_heads", "64"]),
    # expert-aware policies
    ("experts.expert_traffic", "some", ["experts.expert_traffic", "some"]),
    ("experts.pin_experts", "yes", ["experts.pin_experts", "yes"]),
    ("experts.colour", 1, ["experts.colour", "1"]),
    ("experts.routing_probabilities", [[0.25] * 8] * 3, ["experts.routing_probabilities", "3 rows", "32"]),
    ("experts.routing_probabilities", [[0.5] * 8] * 32, ["experts.routing_probabilities[0]", "0.5"]),
    ("experts.routing_probabilities", [[0.25] * 7] * 32, ["experts.routing_probabilities[0]", "0.25"]),
    ("experts.routing_probabilities", [[-0.25] * 8] * 32, ["experts.routing_probabilities[0][0]", "-0.25"]),
    ("experts.routing_trace", "nosuch.jsonl", ["experts.routing_trace", "nosuch.jsonl"]),
    ("hardware.tflops.cpu_gemv", 0, ["hardware.tflops.cpu_gemv", "0"]),
    ("hardware.tflops.cpu_gemm", -1, ["hardware.tflops.cpu_gemm", "-1"]),
    # missing required parts
    ("hardware", DELETE, ["hardware"]),
    ("hardware.memory_gib", DELETE, ["hardware.memory_gib"]),
    ("hardware.bandwidth_gib_per_s", DELETE, ["hardware.bandwidth_gib_per_s"]),
    ("hardware.memory_gib.gpu", DELETE, ["hardware.memory_gib.gpu"]),
    # policy / search / solver sections in the file
    ("policy.percent", [1, 2, 3], ["policy.percent"]),
    ("policy.percent", [0, 100, 0, 100, 30, 30], ["policy.percent", "30"]),
    ("policy.gpu_batch_size", 0, ["policy.gpu_batch_size", "0"]),
    ("search.max_gpu_batch_size", 0, ["search.max_gpu_batch_size", "0"]),
    ("solver.name", "nosuch", ["solver.name", "nosuch"]),
    ("solver.mip_gap", 1.5, ["solver.mip_gap", "1.5"]),
]


def _case_id(case) -> str:
    dotted, value, _ = case
    shown = "DELETE" if value is DELETE else (value.text if isinstance(value, RawYaml) else repr(value))
    return f"{dotted}={shown}"


@pytest.mark.parametrize("index", range(len(FIELD_CASES)), ids=[_case_id(c) for c in FIELD_CASES])
def test_bad_scenario_field(batch, index):
    _dotted, _value, expected = FIELD_CASES[index]
    assert_bad_input(batch["field", index], *expected)


# --------------------------------------------------------------------------- bad flags
# (flags after the reference scenario, texts the error line must contain)
FLAG_CASES = [
    (["--percent", "120", "0", "0", "100", "0", "100"], ["--percent", "120"]),
    (["--percent", "-10", "100", "0", "100", "0", "100"], ["--percent", "-10"]),
    (["--percent", "0", "100", "0", "100", "0", "101"], ["--percent", "101"]),
    (["--percent", "60", "50", "0", "100", "0", "100"], ["--percent", "60", "50"]),
    (["--percent", "0", "100", "50", "60", "0", "100"], ["--percent", "50", "60"]),
    (["--percent", "0", "100", "0", "100", "50", "40"], ["--percent", "50", "40"]),
    (["--percent", "0", "100", "0", "100", "0", "0"], ["--percent"]),
    (["--percent", "nan", "0", "0", "100", "0", "100"], ["--percent", "nan"]),
    (["--percent", "1", "2", "3"], ["--percent", "6"]),
    (["--percent", "0", "100", "x", "100", "0", "100"], ["--percent", "x"]),
    (["--gpu-batch-size", "0"], ["--gpu-batch-size", "0"]),
    (["--num-gpu-batches", "-3"], ["--num-gpu-batches", "-3"]),
    (["--gpu-batch-size", "abc"], ["--gpu-batch-size", "abc"]),
    (["--num-gpu-batches", "2.5"], ["--num-gpu-batches", "2.5"]),
    (["--solver", "nosuch"], ["--solver", "nosuch"]),
    (["--gpu-mem", "0"], ["--gpu-mem", "0"]),
    (["--gpu-mem", "-1"], ["--gpu-mem", "-1"]),
    (["--gpu-mem", "inf"], ["--gpu-mem", "inf"]),
    (["--gpu-mem", "nan"], ["--gpu-mem", "nan"]),
    (["--gpu-mem", "1e400"], ["--gpu-mem", "inf"]),
    (["--cpu-mem", "-1"], ["--cpu-mem", "-1"]),
    (["--nvme-mem", "-5"], ["--nvme-mem", "-5"]),
    (["--prompt-len", "0"], ["--prompt-len", "0"]),
    (["--gen-len", "-1"], ["--gen-len", "-1"]),
    (["--alpha-g", "0"], ["--alpha-g", "0"]),
    (["--alpha-c", "11"], ["--alpha-c", "11"]),
    (["--alpha-n", "-0.8"], ["--alpha-n", "-0.8"]),
    (["--mip-gap", "1"], ["--mip-gap", "1"]),
    (["--threads", "0"], ["--threads", "0"]),
    (["--bogus-flag"], ["--bogus-flag"]),
    (["--expert-traffic", "some"], ["--expert-traffic", "some"]),
    (["--routing", "nosuch.jsonl"], ["--routing", "nosuch.jsonl"]),
    (["--routing", "scenarios/t4_reference.yaml"], ["--routing", "t4_reference.yaml"]),
]


@pytest.mark.parametrize("index", range(len(FLAG_CASES)), ids=[" ".join(f) for f, _ in FLAG_CASES])
def test_bad_flag(batch, index):
    assert_bad_input(batch["flag", index], *FLAG_CASES[index][1])


def test_missing_scenario_argument():
    assert_bad_input(run_cli("--json"), "scenario")


def test_bad_input_with_json_flag():
    """--json does not change the bad-input contract; stdout, if anything, is one JSON object."""
    proc = run_cli(REFERENCE, "--json", "--gpu-batch-size", "0")
    assert_bad_input(proc, "--gpu-batch-size", "0")
    if proc.stdout.strip():
        json.loads(proc.stdout)


# --------------------------------------------------------------------------- huge or tiny finite numbers
# Such inputs must either be solved (exit 0) or rejected as bad input (exit 2, one line naming the
# field) -- never a traceback, a solver crash, or a wrong "infeasible": the reference scenario is
# feasible with 200 GiB of CPU memory, so more CPU memory can only keep it feasible.
ABSURD_CASES = [
    ("hardware.memory_gib.cpu", 1.0e6),    # more CPU memory than the reference can only help
    ("hardware.memory_gib.cpu", 1.0e8),
    ("hardware.memory_gib.cpu", 1.0e15),
    ("hardware.memory_gib.cpu", 1.0e300),
    ("hardware.bandwidth_gib_per_s.disk_to_cpu", 1.0e-300),
]


@pytest.mark.parametrize("index", range(len(ABSURD_CASES)), ids=[f"{d}={v!r}" for d, v in ABSURD_CASES])
def test_absurd_finite_numbers_are_solved_or_rejected(batch, index):
    dotted, _value = ABSURD_CASES[index]
    proc = batch["absurd", index]
    assert "Traceback" not in proc.stdout + proc.stderr, describe(proc)
    assert proc.returncode in (0, 2), describe(proc)
    if proc.returncode == 2:
        assert_bad_input(proc, dotted)


# --------------------------------------------------------------------------- one batch, run concurrently
@pytest.fixture(scope="module")
def batch(tmp_path_factory) -> dict:
    """Run every parametrized case once, a few subprocesses at a time (each pays Pyomo's import)."""
    root = tmp_path_factory.mktemp("bad_scenarios")
    jobs = {}
    for i, (dotted, value, _) in enumerate(FIELD_CASES):
        jobs["field", i] = (write_variant(root, dotted, value, name=f"field_{i}.yaml"),)
    for i, (flags, _) in enumerate(FLAG_CASES):
        jobs["flag", i] = (REFERENCE, *flags)
    for i, (dotted, value) in enumerate(ABSURD_CASES):
        jobs["absurd", i] = (write_variant(root, dotted, value, name=f"absurd_{i}.yaml"), "--json")
    workers = min(8, 2 * (os.cpu_count() or 1))
    with ThreadPoolExecutor(max_workers=workers) as pool:
        futures = {key: pool.submit(run_cli, *args) for key, args in jobs.items()}
        return {key: future.result() for key, future in futures.items()}


def test_duplicate_key_is_rejected(tmp_path):
    """PyYAML keeps the last of two equal keys silently; a scenario must not."""
    text = REFERENCE.read_text().replace("workload:\n  prompt_len: 512", "workload:\n  prompt_len: 512\n  prompt_len: 64")
    path = tmp_path / "dup.yaml"
    path.write_text(text)
    assert_bad_input(run_cli(path), "duplicate key", "prompt_len")


def test_unknown_highs_option_is_rejected(tmp_path):
    path = write_variant(tmp_path, "solver.options", {"nosuch_option": 1})
    assert_bad_input(run_cli(path), "solver.options.nosuch_option", "unknown HiGHS option")


def test_invalid_highs_option_value_is_rejected(tmp_path):
    path = write_variant(tmp_path, "solver.options", {"presolve": "maybe"})
    assert_bad_input(run_cli(path), "solver.options.presolve", "maybe")


def test_largest_allowed_memory_still_solves():
    """100 TiB of CPU memory (the sanity cap) is valid input and gets an answer, with N in the tens of
    thousands: more memory can only keep the reference scenario feasible."""
    proc = run_cli(REFERENCE, "--cpu-mem", "100000", "--json")
    assert proc.returncode == 0, describe(proc)
    out = json.loads(proc.stdout)
    assert out["status"] == "optimal" and out["policy"]["num_gpu_batches"] > 10000


def test_a_few_bytes_of_memory_is_bad_input():
    """A capacity is 0 (absent) or at least 1 MiB: 128 bytes of disk made HiGHS misjudge the MILP."""
    assert_bad_input(run_cli(REFERENCE, "--nvme-mem", "1.192092896e-07"), "--nvme-mem", "1 MiB")
