"""Shared fixtures: the repository root on sys.path and the reference scenario."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

from model import load_scenario  # noqa: E402


@pytest.fixture(scope="session")
def t4():
    """The reference scenario: T4 constants, flexllmgen accounting, s=512, n=32, 16/200/1500 GiB."""
    return load_scenario(ROOT / "scenarios" / "t4_reference.yaml")


def t4_with(s, n, gpu, cpu, disk, alpha=None, **more):
    """The reference scenario with workload, memory (GiB) and alpha overrides."""
    ov = {"workload.prompt_len": s, "workload.gen_len": n,
          "hardware.memory_gib": {"gpu": gpu, "cpu": cpu, "disk": disk}}
    if alpha is not None:
        ov["hardware.alpha"] = {"gpu": alpha, "cpu": alpha, "disk": alpha}
    ov.update(more)
    return load_scenario(ROOT / "scenarios" / "t4_reference.yaml", ov)


def run_cli(*args, timeout: float = 300) -> subprocess.CompletedProcess:
    """``python -m runners.solve ARGS`` in a subprocess, from the repository root, as a user runs it."""
    env = dict(os.environ)
    env["PYTHONPATH"] = str(ROOT) + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    return subprocess.run([sys.executable, "-m", "runners.solve", *map(str, args)], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=timeout)


def describe(proc: subprocess.CompletedProcess) -> str:
    """Exit status, and the tails of stdout and stderr, for assertion messages."""
    return (f"exit status {proc.returncode}\n--- stdout ---\n{proc.stdout[-3000:]}"
            f"\n--- stderr ---\n{proc.stderr[-3000:]}")
