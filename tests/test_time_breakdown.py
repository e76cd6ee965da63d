"""summary.json's `time_breakdown_s`: where a run's wall time went (runtime/timings.py)."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch

from distributed_o2o.algorithms.policies import TanhGaussianPolicy
from distributed_o2o.checkpoint import save_checkpoint
from distributed_o2o.cli.main import main
from distributed_o2o.config import finetune_config
from distributed_o2o.runtime import timings as timings_module
from distributed_o2o.runtime.finetune import run_finetune
from distributed_o2o.runtime.timings import DRIVER_PARTS, Timings

ENV = "Pendulum-v1"
TINY = {"hidden": [16, 16], "online_steps": 200, "eval_every": 100, "eval_episodes": 1, "batch_size": 16,
        "random_start_steps": 50, "learning_starts": 50, "log_every": 50}
# The documented keys (docs/performance.md, "Where a run's time goes").
KEYS = ["imports", "startup", "inputs", "ray_start", "offline_stages", "handover", "online", "waiting", "evaluations", "checkpoints", "resume",
        "shutdown", "other", "learner", "compile", "update_gaps", "presample", "total"]


def check_breakdown(breakdown: dict[str, float]) -> None:
    assert list(breakdown) == KEYS
    assert all(seconds >= 0 for seconds in breakdown.values())
    assert all(breakdown["total"] >= seconds for seconds in breakdown.values())
    # The driver's parts do not overlap: with `other` they make up the total (to their rounding).
    assert sum(breakdown[name] for name in DRIVER_PARTS) == pytest.approx(breakdown["total"], abs=0.01)
    for name in ("startup", "online", "evaluations", "checkpoints", "learner"):
        assert breakdown[name] > 0, name


def test_a_run_records_and_prints_where_its_time_went(tmp_path, capsys):
    out = tmp_path / "run"
    sets = [f"{k}={json.dumps(v)}" for k, v in TINY.items()]
    assert main(["finetune", "--algo", "sac", "--env", ENV, "--out", str(out), "--mode", "local", "--quiet",
                 "--set", "runtime.device=cpu", *(arg for s in sets for arg in ("--set", s))]) == 0
    breakdown = json.loads((out / "summary.json").read_text())["time_breakdown_s"]
    check_breakdown(breakdown)
    assert breakdown["compile"] == 0  # the eager learner compiles nothing
    assert breakdown["imports"] > 0  # from this process's start
    assert breakdown["offline_stages"] < 0.05 and breakdown["handover"] < 0.05  # SAC has neither
    assert breakdown["presample"] == 0  # nor a pre-sample stage
    assert f"total {breakdown['total']:.1f}" in capsys.readouterr().out.splitlines()[-1]


def test_a_population_records_its_breakdown_once_in_its_own_summary(tmp_path):
    out = tmp_path / "population"
    config = finetune_config("sac", None, {"env": ENV, "runtime": {"device": "cpu"}, **TINY})
    summary = run_finetune(config, out, progress=False, seeds=[0, 1])
    written = json.loads((out / "summary.json").read_text())
    assert written == {"seeds": [0, 1], "run_dir": str(out), "time_breakdown_s": summary["time_breakdown_s"]}
    check_breakdown(written["time_breakdown_s"])
    assert written["time_breakdown_s"]["imports"] == 0  # called as a library: from run_finetune's call
    for seed in (0, 1):
        assert "time_breakdown_s" not in json.loads((out / f"seed_{seed}" / "summary.json").read_text())


def test_a_second_counts_in_the_innermost_part_only(monkeypatch):
    clock = iter([0.0, 1.0, 3.0, 6.0, 10.0, 11.0, 20.0])
    monkeypatch.setattr(timings_module.time, "perf_counter", lambda: next(clock))
    timings = Timings(first="startup")  # from 0
    timings.end()  # at 1
    with timings.part("online"):  # from 3 to 11
        with timings.part("waiting"):  # from 6 to 10
            pass
    # online: 3..6 and 10..11; the 2 s between 1 and 3 in no part, nor the 9 after 11.
    assert timings.seconds == {"startup": 1.0, "online": 4.0, "waiting": 4.0}
    assert timings.breakdown()["other"] == 20.0 - 9.0  # its total at 20


def test_the_process_start_is_read_from_proc():
    code = ("import time; time.sleep(0.5); from distributed_o2o.runtime.timings import process_started; "
            "print(time.perf_counter() - process_started())")
    age = float(subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout)
    assert 0.5 <= age < 10


@pytest.mark.skipif(not torch.cuda.is_available(), reason="the graphed path needs CUDA")
def test_the_graphed_learner_counts_its_warm_up_and_captures_as_compile(tmp_path):
    config = finetune_config("sac", None, {"env": ENV, "runtime": {"device": "cuda"}, **TINY})
    breakdown = run_finetune(config, tmp_path / "run", progress=False)["time_breakdown_s"]
    check_breakdown(breakdown)
    assert breakdown["compile"] > breakdown["learner"]  # compilation dominates so short a run


def test_update_gaps_count_the_online_loop_without_an_update_running(tmp_path):
    """In --mode local the learner's update calls and the gaps between them are disjoint parts of
    the online loop: together they fit in it. The updates here are a good part of the loop, so
    counting an update's own time as a gap would push the sum past the loop."""
    heavy = {**TINY, "hidden": [64, 64], "batch_size": 256, "utd": 4, "eval_every": 200}
    config = finetune_config("sac", None, {"env": ENV, "runtime": {"device": "cpu"}, **heavy})
    breakdown = run_finetune(config, tmp_path / "run", mode="local", progress=False)["time_breakdown_s"]
    loop = sum(breakdown[name] for name in ("online", "waiting", "evaluations", "checkpoints", "resume"))
    assert breakdown["learner"] > 0.3 * loop  # the updates are a good part of the loop here
    assert 0 < breakdown["update_gaps"] and breakdown["update_gaps"] + breakdown["learner"] <= loop + 0.05


def test_a_porl_run_times_its_pre_sample_within_its_online_loop(tmp_path):
    policy = save_checkpoint(tmp_path / "bc", {"policy": TanhGaussianPolicy(3, 1, hidden=(16, 16))}, env_id=ENV, algo="bc")
    fields = {**TINY, "policy": str(policy), "presample_steps": 100, "online_steps": 300, "eval_every": 150,
              "runtime": {"device": "cpu"}}
    breakdown = run_finetune(finetune_config("porl", None, {"env": ENV, **fields}), tmp_path / "run", mode="local",
                             progress=False)["time_breakdown_s"]
    check_breakdown(breakdown)
    loop = sum(breakdown[name] for name in ("online", "waiting", "evaluations", "checkpoints", "resume"))
    assert 0 < breakdown["presample"] < loop  # the first 100 of 300 env steps
