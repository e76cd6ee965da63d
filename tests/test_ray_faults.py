"""Faults in the Ray mode: a rollout actor killed mid-run, a dead learner, a lost rollout node.

Each test starts its own Ray (a local instance, or a `ray.cluster_utils.Cluster` of several
nodes) and kills actors from a thread while the run goes on.
"""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import ray
from conftest import latest_save
from ray.cluster_utils import Cluster

from distributed_o2o.cli.main import main
from distributed_o2o.config import finetune_config
from distributed_o2o.runtime.finetune import run_finetune
from distributed_o2o.runtime.ray_cluster import run_id
from distributed_o2o.runtime.resume_state import ResumeStore

ENV = "Pendulum-v1"
SMALL = {"env": ENV, "hidden": [32, 32], "batch_size": 64, "eval_episodes": 2, "log_every": 200,
         "random_start_steps": 200, "learning_starts": 600, "runtime": {"num_rollout_workers": 2}}

pytestmark = pytest.mark.slow


def _evaluations(out: Path) -> list[int]:
    file = out / "metrics.jsonl"
    return [json.loads(line)["env_steps"] for line in file.read_text().splitlines()] if file.exists() else []


def _in_background(action, until: float = 180.0) -> threading.Thread:
    """Run `action()` repeatedly from a thread until it returns True."""
    def loop() -> None:
        deadline = time.time() + until
        while time.time() < deadline and not action():
            time.sleep(0.05)

    thread = threading.Thread(target=loop, daemon=True)
    thread.start()
    return thread


def _saved_step(out: Path) -> int:
    """The env step of the resume state on disk (-1: none yet)."""
    saves = ResumeStore(out / "resume").saves()
    return json.loads((saves[0] / "manifest.json").read_text())["env_steps"] if saves else -1


def _actor(out: Path, role: str):
    return ray.get_actor(f"o2o/{run_id(out)}/{role}", namespace="o2o")


def _kill_after(out: Path, role: str, saved_step: int, stored: int = 0, no_restart: bool = False) -> threading.Thread:
    """Kill the run's actor `role` (e.g. rollout-0) once the resume state of `saved_step` is on
    disk and the replay holds more than `stored` transitions."""
    def kill() -> bool:
        if _saved_step(out) < saved_step or ray.get(_actor(out, "replay-0").size.remote()) <= stored:
            return False
        ray.kill(_actor(out, role), no_restart=no_restart)
        return True

    return _in_background(kill)


def _assert_nothing_lost(out: Path, env_steps: int) -> None:
    """Every counted env step is in the saved replay, once."""
    saved = np.load(latest_save(out) / "replay.npz")
    assert int(saved["inserted"]) == env_steps == len(saved["rewards"])


@pytest.fixture(scope="class")
def one_node():
    ray.init(num_cpus=2, include_dashboard=False)
    yield
    ray.shutdown()


@pytest.mark.usefixtures("one_node")
class TestOneNode:
    def test_a_killed_rollout_actor_restarts_and_no_stored_transition_is_lost(self, tmp_path):
        out = tmp_path / "run"
        config = finetune_config("sac", None, {**SMALL, "online_steps": 1600, "eval_every": 800})
        killer = _kill_after(out, "rollout-0", saved_step=0, stored=0)  # while the workers are collecting
        summary = run_finetune(config, out, mode="ray", progress=False)
        killer.join(timeout=1)
        assert summary["rollout_failures"] >= 1
        assert summary["env_steps"] == 1600 and _evaluations(out) == [0, 800, 1600]
        assert summary["updates"] == 1600 - 600 + 1  # one per env step from learning_starts on, none lost
        _assert_nothing_lost(out, 1600)

    def test_a_dead_learner_ends_the_run_with_one_line_and_resume_continues(self, tmp_path, capsys):
        out = tmp_path / "run"
        args = ["finetune", "--algo", "sac", "--out", str(out), "--online-steps", "1600", "--quiet", "--mode", "ray",
                "--num-rollout-workers", "2", *[f"--set={k}={v}" for k, v in SMALL.items() if k != "runtime"],
                "--set", "eval_every=800"]
        killer = _kill_after(out, "learner-0", saved_step=800, no_restart=True)
        assert main(args) == 1
        killer.join(timeout=1)
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and "Traceback" not in err
        assert f"learner actor o2o/{run_id(out)}/learner-0 died" in err and f"--resume {out}" in err
        assert "env step 800" in err  # the checkpoint the resume starts from
        assert main(["finetune", "--resume", str(out), "--quiet", "--mode", "ray"]) == 0
        assert _evaluations(out) == [0, 800, 1600]
        summary = json.loads((out / "summary.json").read_text())
        assert summary["env_steps"] == 1600 and summary["updates"] == 1600 - 600 + 1
        _assert_nothing_lost(out, 1600)


def test_losing_a_rollout_node_moves_its_actors_and_the_run_finishes(tmp_path):
    """The learner (with replay and evaluator) on the head node, which has the `learner`
    resource; rollout actors on two nodes with the `rollout` resource. The node of rollout-0
    is removed mid-run: its actors restart on the other rollout node and the run finishes."""
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1, "resources": {"learner": 1}})
    rollout_nodes = [cluster.add_node(num_cpus=1, resources={"rollout": 2}) for _ in range(2)]
    ray.init(address=cluster.address)
    try:
        out = tmp_path / "run"
        config = finetune_config("sac", None, {**SMALL, "online_steps": 1600, "eval_every": 800})
        placed: dict[str, str] = {}

        def remove_a_rollout_node() -> bool:
            if _saved_step(out) < 0:
                return False
            placed.update({role: _node_of(out, role) for role in ("learner-0", "replay-0", "evaluator-0", "rollout-0")})
            cluster.remove_node(next(n for n in rollout_nodes if n.node_id == placed["rollout-0"]))
            return True

        remover = _in_background(remove_a_rollout_node)
        summary = run_finetune(config, out, mode="ray", progress=False)
        remover.join(timeout=1)
        head = cluster.head_node.node_id
        assert placed["learner-0"] == placed["replay-0"] == placed["evaluator-0"] == head
        assert placed["rollout-0"] in {n.node_id for n in rollout_nodes}
        assert summary["rollout_failures"] >= 1
        assert summary["env_steps"] == 1600 and _evaluations(out) == [0, 800, 1600]
        _assert_nothing_lost(out, 1600)
    finally:
        ray.shutdown()
        cluster.shutdown()


def _node_of(out: Path, role: str) -> str:
    return ray.get(_actor(out, role).__ray_call__.remote(lambda self: ray.get_runtime_context().get_node_id()))


def test_the_job_script_joins_the_cluster_and_places_actors_by_resource(tmp_path):
    """`ray submit`'s view: cluster/o2o_job.py run as its own process on a cluster of a head with
    the `learner` resource and a node with `rollout` slots; the learner, replay and evaluator
    land on the head, the rollout actors on the rollout node."""
    import os
    import subprocess
    import sys

    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1, "resources": {"learner": 1}})
    rollout_node = cluster.add_node(num_cpus=1, resources={"rollout": 2})
    ray.init(address=cluster.address)
    try:
        out = tmp_path / "run"
        roles = ("learner-0", "replay-0", "evaluator-0", "rollout-0", "rollout-1")
        placed: dict[str, str] = {}

        def record_placement() -> bool:
            if _saved_step(out) < 0:
                return False
            placed.update({role: _node_of(out, role) for role in roles})
            return True

        recorder = _in_background(record_placement)
        settings = [part for key, value in SMALL.items() if key not in ("env", "runtime")
                    for part in ("--set", f"{key}={json.dumps(value)}")]
        job = Path(__file__).parents[1] / "cluster" / "o2o_job.py"
        subprocess.run([sys.executable, str(job), "--algo", "sac", "--env", ENV, "--num-rollout-workers", "2",
                        "--online-steps", "1200", "--set", "eval_every=600", *settings, "--quiet", "--out", str(out)],
                       env={**os.environ, "RAY_ADDRESS": cluster.address}, check=True, timeout=300)
        recorder.join(timeout=1)
        head = cluster.head_node.node_id
        assert [placed[role] for role in roles] == [head, head, head, rollout_node.node_id, rollout_node.node_id]
        assert _evaluations(out) == [0, 600, 1200]
        _assert_nothing_lost(out, 1200)
    finally:
        ray.shutdown()
        cluster.shutdown()
