"""Ctrl-C and SIGTERM during a solve (issue 15): exit 130 / 143 with one line, no temporary
files left, no solver child left running. HiGHS runs in this process (its interrupt callback
must stop it); CBC runs as a child (it must be killed, and Pyomo's files removed).

The scenario is one that takes minutes to solve (t4_reference with pinned and CPU experts,
expected traffic and the skewed trace), so a signal a few seconds in lands in a solve.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
LONG_SOLVE = ["scenarios/t4_reference.yaml", "--pin-experts", "--cpu-experts", "--expert-traffic", "expected",
              "--routing", "scenarios/traces/mixtral_skewed.jsonl", "--json"]
STOP_WITHIN_S = 30   # from the signal to the exit (a hang bound, not a speed claim)


def _default_signals() -> None:
    # a shell that started us in the background may have set SIGINT to "ignore"; Python keeps that
    signal.signal(signal.SIGINT, signal.SIG_DFL)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)


def _children(pid: int) -> list[int]:
    out = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                stat = Path(f"/proc/{entry}/stat").read_text()
            except OSError:
                continue
            if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
                out.append(int(entry))
    return out


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


@pytest.mark.slow
@pytest.mark.parametrize("solver", ["highs", "cbc"])
@pytest.mark.parametrize("sig, code, line", [(signal.SIGINT, 130, "interrupted"), (signal.SIGTERM, 143, "terminated")],
                         ids=["SIGINT", "SIGTERM"])
def test_signal_during_solve(solver, sig, code, line, tmp_path):
    if solver == "cbc" and shutil.which("cbc") is None:
        pytest.skip("cbc is not installed")
    tmp = tmp_path / "tmp"
    tmp.mkdir()
    env = {**os.environ, "TMPDIR": str(tmp), "PYTHONPATH": str(ROOT)}
    env.pop("MOE_OFFLOAD_DEBUG", None)
    p = subprocess.Popen([sys.executable, "-m", "runners.solve", *LONG_SOLVE, "--solver", solver], cwd=ROOT, env=env,
                         stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, preexec_fn=_default_signals)
    try:
        kids: list[int] = []
        if solver == "cbc":   # wait for a cbc child: the signal must land during its solve
            deadline = time.monotonic() + 120
            while not kids and time.monotonic() < deadline and p.poll() is None:
                kids = _children(p.pid)
                time.sleep(0.1)
            assert kids, "no cbc child appeared"
            time.sleep(0.5)
            assert any(tmp.rglob("*.pyomo.lp")), "CBC's model file is not in the private TMPDIR"
        else:                 # past loading and building: HiGHS is solving the first MILP
            time.sleep(8)
        assert p.poll() is None, "the solve ended before the signal"
        p.send_signal(sig)
        _out, err = p.communicate(timeout=STOP_WITHIN_S)
    finally:
        if p.poll() is None:
            p.kill()
            p.communicate()
    assert p.returncode == code, (p.returncode, err[-2000:])
    assert err.splitlines() == [line], err[-2000:]
    assert list(tmp.rglob("*")) == [], f"left in the temp folder: {list(tmp.rglob('*'))}"
    for kid in kids:
        deadline = time.monotonic() + 5
        while _alive(kid) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert not _alive(kid), f"solver child {kid} still running"


def _descendants(pid: int) -> list[int]:
    out, todo = [], [pid]
    while todo:
        kids = _children(todo.pop())
        out += kids
        todo += kids
    return out


@pytest.mark.slow
@pytest.mark.parametrize("sig, code, line", [(signal.SIGINT, 130, "interrupted"), (signal.SIGTERM, 143, "terminated")],
                         ids=["SIGINT", "SIGTERM"])
def test_signal_during_parallel_sweep(sig, code, line, tmp_path):
    """A sweep with two worker processes, each in a long solve: the signal stops them all."""
    sweep = tmp_path / "w.yaml"
    sweep.write_text(
        f"base: {ROOT / 'scenarios' / 't4_reference.yaml'}\n"
        "vary:\n  - field: workload.gen_len\n    values: [32, 33]\n"
        "overrides: {experts.pin_experts: true, experts.cpu_experts: true, experts.expert_traffic: expected, "
        f"experts.routing_trace: {ROOT / 'scenarios' / 'traces' / 'mixtral_skewed.jsonl'}}}\n")
    tmp = tmp_path / "tmp"
    tmp.mkdir()
    env = {**os.environ, "TMPDIR": str(tmp), "PYTHONPATH": str(ROOT)}
    p = subprocess.Popen([sys.executable, "-m", "runners.sweep", str(sweep), "--jobs", "2", "--no-plot",
                          "--out", str(tmp_path / "out")], cwd=ROOT, env=env, stdout=subprocess.DEVNULL,
                         stderr=subprocess.PIPE, text=True, preexec_fn=_default_signals)
    family: list[int] = []
    try:
        time.sleep(15)   # the forkserver and both workers started, each solving
        family = _descendants(p.pid)
        assert p.poll() is None and len(family) >= 2, family
        p.send_signal(sig)
        _out, err = p.communicate(timeout=STOP_WITHIN_S)
    finally:
        if p.poll() is None:
            p.kill()
        for pid in family:   # workers left behind would hold stderr open (and the machine busy)
            if _alive(pid):
                os.kill(pid, signal.SIGKILL)
        if p.stderr and not p.stderr.closed:
            p.communicate(timeout=STOP_WITHIN_S)
    assert p.returncode == code, (p.returncode, err[-2000:])
    lines = err.splitlines()
    # one line: the front door's word, and the study's note that the finished points are kept
    assert len(lines) == 1 and (lines[0] == line or lines[0].startswith(f"{line}: sweep ")), err[-2000:]
    deadline = time.monotonic() + 10
    while any(_alive(k) for k in family) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not any(_alive(k) for k in family), [k for k in family if _alive(k)]
