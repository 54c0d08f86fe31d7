"""Output formats of ``python -m runners.solve``: --format text|json|yaml, --json, --flexllmgen.

* ``--format yaml`` is the ``--json`` object as YAML (same keys, same order, same values);
* ``--json`` and ``--format json`` are the same;
* ``--flexllmgen`` prints exactly one line: a FlexLLMGen command line whose policy flags are
  the JSON's ``flexllmgen.flags``, with the model id from the scenario;
* bad or conflicting output flags are bad input: exit 2, one line on stderr, no traceback.

The CLI runs in subprocesses, as a user runs it (a module-scoped batch, run concurrently);
the exact YAML/JSON equivalence is also checked in-process on one Result.
"""

from __future__ import annotations

import json
import math
import os
import shlex
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import yaml

from runners import solve

# One pytest-xdist worker runs this module (its module fixture runs the CLI in every format): paid once, not per worker.
pytestmark = pytest.mark.xdist_group("test_output_formats")

REPO = Path(__file__).resolve().parents[1]
T4 = REPO / "scenarios" / "t4_reference.yaml"
MIXTRAL = REPO / "scenarios" / "mixtral-8x7b.yaml"
EVAL = ("--gpu-batch-size", "30", "--num-gpu-batches", "63", "--percent", "0", "100", "1", "71", "5", "95")
# keys whose values are wall-clock times: they differ between two runs of the same input
TIMING_KEYS = {"seconds", "build_seconds", "resolve_seconds", "total_seconds"}


def run_cli(*args, timeout: float = 120) -> subprocess.CompletedProcess:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(REPO) + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    return subprocess.run([sys.executable, "-m", "runners.solve", *map(str, args)], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=timeout)


def describe(proc) -> str:
    return f"exit status {proc.returncode}\n--- stdout ---\n{proc.stdout[-3000:]}\n--- stderr ---\n{proc.stderr[-3000:]}"


def assert_one_error_line(proc, code: int, *expected: str) -> str:
    assert "Traceback" not in proc.stdout + proc.stderr, describe(proc)
    assert proc.returncode == code, describe(proc)
    lines = proc.stderr.splitlines()
    assert len(lines) == 1 and lines[0].strip(), describe(proc)
    for text in expected:
        assert text.lower() in lines[0].lower(), (text, lines[0])
    return lines[0]


def same(a, b, path="", rel=1e-12):
    """Equal structures: same keys in the same order, same types of containers, floats within ``rel``."""
    if isinstance(a, dict):
        assert isinstance(b, dict) and list(a) == list(b), (path, list(a), b)
        for k in a:
            if k in TIMING_KEYS:
                continue
            same(a[k], b[k], f"{path}.{k}", rel)
    elif isinstance(a, list):
        assert isinstance(b, list) and len(a) == len(b), (path, a, b)
        for i, (x, y) in enumerate(zip(a, b)):
            same(x, y, f"{path}[{i}]", rel)
    elif isinstance(a, float) or isinstance(b, float):
        assert isinstance(a, (int, float)) and isinstance(b, (int, float)), (path, a, b)
        assert (math.isnan(a) and math.isnan(b)) or a == pytest.approx(b, rel=rel, abs=1e-300), (path, a, b)
    else:
        assert a == b and type(a) is type(b), (path, a, b)


JOBS = {
    "t4 json": (T4, "--json"),
    "t4 format json": (T4, "--format", "json"),
    "t4 format yaml": (T4, "--format", "yaml"),
    "t4 flexllmgen": (T4, "--flexllmgen"),
    "t4 compressed json": (T4, "--compress-w", "--json"),
    # the fork's flex_moe cannot load compressed MoE weights: another module is named
    "t4 compressed flexllmgen": (T4, "--compress-w", "--flexllmgen", "--flexllmgen-module", "my_flex.moe_entry"),
    "mixtral json": (MIXTRAL, "--json"),
    "mixtral flexllmgen": (MIXTRAL, "--flexllmgen", "--flexllmgen-module", "my_flex.moe_entry",
                           "--flexllmgen-path", "/data/weights dir"),
    "eval json": (T4, *EVAL, "--json"),
    "eval yaml": (T4, *EVAL, "--format", "yaml"),
    "eval flexllmgen": (T4, *EVAL, "--flexllmgen"),
    "eval fractional flexllmgen": (T4, "--gpu-batch-size", "30", "--num-gpu-batches", "63",
                                   "--percent", "0", "100", "1", "70.5", "5", "95", "--flexllmgen"),
    "infeasible yaml": (T4, "--cpu-mem", "10", "--nvme-mem", "0", "--format", "yaml"),
    "infeasible flexllmgen": (T4, "--cpu-mem", "10", "--nvme-mem", "0", "--flexllmgen"),
    "bad format": (T4, "--format", "xml"),
    "json and yaml": (T4, "--json", "--format", "yaml"),
    "flexllmgen and json": (T4, "--flexllmgen", "--json"),
    "flexllmgen and format": (T4, "--flexllmgen", "--format", "text"),
    "flexllmgen empty model": (T4, "--flexllmgen", "--flexllmgen-model", " "),
    "text": (T4, *EVAL),
    "format text": (T4, *EVAL, "--format", "text"),
}


@pytest.fixture(scope="module")
def out(tmp_path_factory) -> dict:
    """Every job above once, a few subprocesses at a time (each pays Pyomo's import)."""
    root = tmp_path_factory.mktemp("formats")
    # an architecture that is not Mixtral-8x7B's, without a model id: --flexllmgen needs --flexllmgen-model
    other = root / "sixteen_layers.yaml"
    other.write_text(T4.read_text().replace("num_layers: 32", "num_layers: 16"))
    jobs = dict(JOBS)
    jobs["unknown model flexllmgen"] = (other, *EVAL, "--flexllmgen")
    jobs["unknown model flexllmgen with id"] = (other, *EVAL, "--flexllmgen", "--flexllmgen-model", "org/model-16l")
    with ThreadPoolExecutor(max_workers=min(8, 2 * (os.cpu_count() or 1))) as pool:
        futures = {key: pool.submit(run_cli, *args) for key, args in jobs.items()}
        return {key: f.result() for key, f in futures.items()}


def ok(proc) -> str:
    assert "Traceback" not in proc.stdout + proc.stderr, describe(proc)
    assert proc.returncode == 0 and proc.stderr == "", describe(proc)
    return proc.stdout


# --------------------------------------------------------------------------- json / yaml
def test_json_and_format_json_agree(out):
    a, b = json.loads(ok(out["t4 json"])), json.loads(ok(out["t4 format json"]))
    same(a, b)
    assert a["status"] == "optimal"


def test_yaml_is_the_json_object(out):
    """Solved policy: the YAML parses to the --json object (apart from solve times)."""
    a, b = yaml.safe_load(ok(out["t4 format yaml"])), json.loads(ok(out["t4 json"]))
    same(a, b, rel=1e-9)


def test_yaml_is_the_json_object_for_an_evaluated_policy(out):
    a, b = yaml.safe_load(ok(out["eval yaml"])), json.loads(ok(out["eval json"]))
    same(a, b)
    assert a["status"] == "evaluated"


def test_yaml_round_trips_exactly_in_process(capsys, t4):
    """The same Result printed both ways: identical objects, floats bit for bit."""
    from model import optimize
    from model.report import to_json

    obj = to_json(optimize(t4))
    solve.emit(obj, "json")
    as_json = json.loads(capsys.readouterr().out)
    solve.emit(obj, "yaml")
    text = capsys.readouterr().out
    as_yaml = yaml.safe_load(text)
    assert as_yaml == as_json
    assert list(as_yaml) == list(obj)  # the JSON's key order, not sorted
    same(as_yaml, as_json, rel=0.0)


def test_infeasible_yaml_is_a_status_object(out):
    proc = out["infeasible yaml"]
    assert proc.returncode == 1 and "Traceback" not in proc.stderr, describe(proc)
    doc = yaml.safe_load(proc.stdout)
    assert doc["status"] == "infeasible" and doc["infeasible"]
    assert all(line.startswith("infeasible: ") for line in proc.stderr.splitlines())


def test_format_text_is_the_default(out):
    def without_times(text: str) -> list[str]:  # the Solver line holds this run's wall-clock time
        return [line for line in text.splitlines() if not line.startswith("Solver")]

    assert without_times(ok(out["text"])) == without_times(ok(out["format text"]))
    assert ok(out["text"]).startswith("Scenario  t4_reference")


# --------------------------------------------------------------------------- --flexllmgen
def flexllmgen_line(proc) -> list[str]:
    text = ok(proc)
    lines = text.splitlines()
    assert len(lines) == 1 and text.endswith("\n"), describe(proc)
    return shlex.split(lines[0])


def option(argv: list[str], name: str, count: int = 1) -> list[str]:
    assert argv.count(name) == 1, (name, argv)
    i = argv.index(name)
    return argv[i + 1: i + 1 + count]


@pytest.mark.parametrize("json_key, flex_key, model_id, module, path", [
    ("t4 json", "t4 flexllmgen", "mistralai/Mixtral-8x7B-v0.1", "flexgen.flex_moe", "_DUMMY_"),
    ("t4 compressed json", "t4 compressed flexllmgen", "mistralai/Mixtral-8x7B-v0.1", "my_flex.moe_entry",
     "_DUMMY_"),
    ("mixtral json", "mixtral flexllmgen", "mistralai/Mixtral-8x7B-v0.1", "my_flex.moe_entry", "/data/weights dir"),
    ("eval json", "eval flexllmgen", "mistralai/Mixtral-8x7B-v0.1", "flexgen.flex_moe", "_DUMMY_"),
])
def test_flexllmgen_line_matches_the_json_flags(out, json_key, flex_key, model_id, module, path):
    doc = json.loads(ok(out[json_key]))
    argv = flexllmgen_line(out[flex_key])
    assert argv[:3] == ["python", "-m", module]
    assert option(argv, "--model") == [model_id]
    assert option(argv, "--path") == [path]
    assert option(argv, "--prompt-len") == [str(doc["workload"]["prompt_len"])]
    assert option(argv, "--gen-len") == [str(doc["workload"]["gen_len"])]
    flags = shlex.split(doc["flexllmgen"]["flags"])
    policy = [a for a in argv if a not in ("--compress-weight", "--cpu-cache-compute")]
    i = policy.index("--gpu-batch-size")
    assert policy[i:] == flags  # the policy flags, verbatim, at the end
    assert option(argv, "--gpu-batch-size") == [str(doc["flexllmgen"]["gpu_batch_size"])]
    assert option(argv, "--num-gpu-batches") == [str(doc["flexllmgen"]["num_gpu_batches"])]
    assert option(argv, "--percent", 6) == [str(x) for x in doc["flexllmgen"]["percent"]]
    assert ("--compress-weight" in argv) == ("compressed" in json_key)
    # KV cache off the GPU attended on the CPU (policy.attention: cpu): FlexGen's --cpu-cache-compute
    assert ("--cpu-cache-compute" in argv) == (doc["policy"]["attention"] == "cpu"
                                               and doc["flexllmgen"]["percent"][2] < 100)


def test_flexllmgen_line_of_an_evaluated_policy_is_exact(out):
    assert ok(out["eval flexllmgen"]) == (
        "python -m flexgen.flex_moe --model mistralai/Mixtral-8x7B-v0.1 --path _DUMMY_ --prompt-len 512 "
        "--gen-len 32 --gpu-batch-size 30 --num-gpu-batches 63 --percent 0 100 1 71 5 95 --cpu-cache-compute\n")


def test_flexllmgen_model_id_comes_from_hf_config_source():
    """Every shipped hf_config scenario names its model by the config's "_source"."""
    from model import load_scenario

    for path in sorted((REPO / "scenarios").glob("*.yaml")):
        sc = load_scenario(path)
        got = solve.flexllmgen_model_id(sc)
        if sc.model.hf_config is not None:
            assert got == json.loads(Path(sc.model.hf_config).read_text())["_source"], path
        else:
            assert got == "mistralai/Mixtral-8x7B-v0.1", path


def test_flexllmgen_without_integer_percents_exits_1_with_one_line(out):
    assert_one_error_line(out["eval fractional flexllmgen"], 1, "integer")
    assert out["eval fractional flexllmgen"].stdout == ""


def test_flexllmgen_infeasible_exits_1(out):
    proc = out["infeasible flexllmgen"]
    assert proc.returncode == 1 and proc.stdout == "" and "Traceback" not in proc.stderr, describe(proc)
    assert proc.stderr.startswith("infeasible: ")


def test_flexllmgen_needs_a_model_id_for_an_unknown_architecture(out):
    assert_one_error_line(out["unknown model flexllmgen"], 2, "--flexllmgen-model")
    argv = flexllmgen_line(out["unknown model flexllmgen with id"])
    assert option(argv, "--model") == ["org/model-16l"]


# --------------------------------------------------------------------------- bad output flags
@pytest.mark.parametrize("key, expected", [
    ("bad format", ["--format", "xml"]),
    ("json and yaml", ["--json", "--format"]),
    ("flexllmgen and json", ["--flexllmgen", "--json"]),
    ("flexllmgen and format", ["--flexllmgen", "--format"]),
    ("flexllmgen empty model", ["--flexllmgen-model"]),
])
def test_bad_output_flags_exit_2_with_one_line(out, key, expected):
    assert_one_error_line(out[key], 2, *expected)
    assert out[key].stdout == ""
