"""examples/demo.py (the in-process worker demo) and benchmarks/run.py (`make bench`) keep working."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

pytestmark = pytest.mark.timeout(120)


def run(args: list[str], cwd: Path, timeout: float) -> subprocess.CompletedProcess[str]:
    """Run a command with this interpreter, capturing its output."""
    env = {**os.environ, "COLUMNS": "160"}
    env.pop("CONVEYOR_URL", None)
    return subprocess.run(
        [sys.executable, *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout,
        stdin=subprocess.DEVNULL,
    )


def test_demo_runs_every_kind_of_job_and_ends_as_expected(tmp_path: Path) -> None:
    """The SQLite demo ends by itself, exit 0, every job as expected, and leaves no file behind."""
    done = run([str(ROOT / "examples" / "demo.py")], cwd=tmp_path, timeout=90)
    output = done.stdout + done.stderr
    assert done.returncode == 0, output
    assert "every job ended as expected" in output, output
    assert "lane match:7: goals stored in order [12, 31, 58, 77]" in output, output
    assert list(tmp_path.iterdir()) == []


def test_benchmark_runner_measures_every_figure_on_a_small_run(tmp_path: Path) -> None:
    """A small benchmark run reports every figure for both SQLite targets without saving a file."""
    before = sorted((ROOT / "benchmarks" / "results").glob("*.json"))
    done = run(
        [str(ROOT / "benchmarks" / "run.py"), "--targets", "sqlite-full,sqlite-normal", "--no-save",
         "--repeat", "1", "--jobs", "500", "--samples", "20", "--single", "100"],
        cwd=tmp_path, timeout=110,
    )
    output = done.stdout + done.stderr
    assert done.returncode == 0, output
    for figure in ("enqueue, one call per job", "enqueue_many", "drain 500 no-op jobs",
                   "pickup latency p50", "pickup latency p99"):
        assert output.count(figure) == 2, f"{figure!r} not reported for both targets:\n{output}"
    assert sorted((ROOT / "benchmarks" / "results").glob("*.json")) == before
