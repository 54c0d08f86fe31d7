"""Shared fixtures: the repository root on sys.path and the reference scenario."""

from __future__ import annotations

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
