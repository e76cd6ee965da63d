"""The benchmarks still run against the code they measure: each imports, and the learner
benchmark's CPU variants produce their figures. (An API a benchmark used was once removed as
dead code and the benchmark broke unseen.) Nothing here is timed."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

BENCH = Path(__file__).resolve().parents[1] / "bench"


def _python(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, *args], cwd=BENCH, capture_output=True, text=True, timeout=300)


def test_every_benchmark_imports():
    modules = sorted(path.stem for path in BENCH.glob("*.py"))
    assert "graphed_learner" in modules and "vs_rllib" in modules
    done = _python("-c", f"import importlib\nfor m in {modules!r}: importlib.import_module(m)")
    assert done.returncode == 0, done.stderr[-2000:]


def test_the_learner_benchmark_measures_its_cpu_variants():
    done = _python("graphed_learner.py", "--device", "cpu", "--settings", "sac2", "--variants", "eager,population_eager",
                   "--eager-updates", "3", "--population", "2", "--threads", "1")
    assert done.returncode == 0, done.stderr[-2000:]
    figures = json.loads(done.stdout)["settings"]["sac2"]
    assert not [key for key in figures if key.endswith("_error")], figures
    assert figures["eager"] > 0 and figures["population_eager_agent_updates_per_s"] > 0
