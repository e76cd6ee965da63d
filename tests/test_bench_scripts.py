"""The benchmarks still run against the code they measure: each imports, and the learner
benchmark's CPU variants produce their figures. (An API a benchmark used was once removed as
dead code and the benchmark broke unseen.) Nothing here is timed."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

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


def test_the_pretraining_comparison_evaluates_every_seed_at_each_step(tmp_path):
    from distributed_o2o.data import collect_dataset, write_dataset

    rng = np.random.default_rng(0)
    data = collect_dataset("Pendulum-v1", lambda obs: rng.uniform(-1, 1, size=(obs.shape[0], 1)), 300, progress=False)
    path = write_dataset(tmp_path / "pendulum.hdf5", data, env_id="Pendulum-v1", behavior_policy="random", seed=0)
    done = _python("pretrain_eager_vs_graphed.py", "--dataset", str(path), "--env", "Pendulum-v1", "--algo", "bc",
                   "--steps", "20", "--eval-every", "10", "--eval-episodes", "1", "--seeds", "0,1", "--backends", "eager",
                   "--set", "hidden=[16,16]", "--set", "device=cpu", "--out", str(tmp_path / "runs"))
    assert done.returncode == 0, done.stderr[-2000:]
    eager = json.loads(done.stdout)["backends"]["eager"]
    assert sorted(eager["scores"]) == ["10", "20"] and set(eager["steps_per_s"]) == {"0", "1"}
    for point in eager["scores"].values():  # Pendulum has no references: returns, which are negative
        assert len(point["seeds"]) == 2 and max(point["seeds"]) < 0 and point["mean"] == pytest.approx(np.mean(point["seeds"]))
