"""Population runs end to end (`o2o finetune --seeds`): one sub-run per seed, each written as a
separate run with that seed writes it, the agents independent of each other."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import yaml
from conftest import assert_validated_deployment, latest_save

from distributed_o2o.api import evaluate
from distributed_o2o.cli.main import main
from distributed_o2o.config import finetune_config
from distributed_o2o.errors import UserError
from distributed_o2o.report.build import build_report
from distributed_o2o.runtime.finetune import resume_finetune, run_finetune
from distributed_o2o.runtime.graphed import GraphedUpdater
from distributed_o2o.runtime.population import PopulationLearner, PopulationReplay

ENV = "Pendulum-v1"
TINY = {"env": ENV, "hidden": [16, 16], "online_steps": 200, "eval_every": 100, "eval_episodes": 1, "batch_size": 16,
        "random_start_steps": 50, "learning_starts": 50, "runtime": {"device": "cpu"}, "log_every": 50}
VOLATILE = ("wall_time_s", "updates_per_s")


def sac(**fields):
    return finetune_config("sac", None, {**TINY, **fields})


def metrics(run_dir) -> list[dict]:
    return [{k: v for k, v in json.loads(line).items() if k not in VOLATILE}
            for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


@pytest.fixture(scope="module")
def populations(tmp_path_factory):
    """Two K=2 populations that share seed 1: {seeds: run directory}."""
    root = tmp_path_factory.mktemp("populations")
    runs = {}
    for seeds in ((0, 1), (5, 1)):
        out = root / "-".join(map(str, seeds))
        summary = run_finetune(sac(), out, progress=False, seeds=list(seeds))
        assert [run["seed"] for run in summary["runs"]] == list(seeds)
        runs[seeds] = out
    return runs


def test_a_population_writes_one_sub_run_per_seed_as_a_separate_run_would(populations, tmp_path):
    out = populations[(0, 1)]
    assert sorted(p.name for p in out.iterdir()) == ["population.yaml", "resume", "seed_0", "seed_1", "summary.json"]
    single = tmp_path / "single"
    run_finetune(sac(seed=1, online_steps=0), single, progress=False)  # its initial evaluation only
    sub = out / "seed_1"
    config = yaml.safe_load((sub / "config.yaml").read_text())
    assert config == {**yaml.safe_load((single / "config.yaml").read_text()), "online_steps": 200}
    assert config["seed"] == 1
    # Built and evaluated as the separate run: the same networks score the same on the same episodes.
    assert metrics(sub)[0] == metrics(single)[0]
    assert [m["env_steps"] for m in metrics(sub)] == [0, 100, 200]
    summary = json.loads((sub / "summary.json").read_text())
    # The time breakdown is the population's, in its own summary.json (test_time_breakdown.py).
    assert summary.keys() | {"time_breakdown_s"} == json.loads((single / "summary.json").read_text()).keys()
    assert summary["seed"] == 1 and summary["env_steps"] == 200
    assert evaluate(summary["best_checkpoint"], episodes=1)["env"] == ENV  # `o2o eval` reads its checkpoints


def test_an_agent_does_not_depend_on_the_other_agents(populations):
    # Seed 1 beside seed 0 and beside seed 5: the same evaluations, to the last digit.
    assert metrics(populations[(0, 1)] / "seed_1") == metrics(populations[(5, 1)] / "seed_1")
    # ... while the other agent's differ (the comparison can fail).
    assert metrics(populations[(0, 1)] / "seed_0") != metrics(populations[(5, 1)] / "seed_5")


def test_report_counts_a_population_as_its_seeds_runs(populations):
    groups = build_report([populations[(0, 1)]], reps=100)["groups"]
    assert [(g["method"], g["n_runs"], g["seeds"]) for g in groups] == [("sac", 2, [0, 1])]


@pytest.mark.parametrize("args, message", [
    (["--seeds", "0,1", "--seed", "3"], "--seeds and --seed both given"),
    (["--seeds", "0,x"], "not a comma-separated list of integers"),
    (["--seeds", "1,1"], "give distinct non-negative seeds"),
    (["--seeds", "0,1", "--algo", "o2td3"], "'o2td3' cannot train several seeds in one learner; populations support sac"),
    (["--seeds", "0,1", "--algo", "o2ppo"], "'o2ppo' cannot train several seeds in one learner"),
    # 2 x 10^11 transitions of Pendulum: terabytes, refused before anything is built.
    (["--seeds", "0,1", "--set", "replay_capacity=100000000000"], "a population of 2 needs about 9685.8 GiB of replay memory"),
])
def test_bad_population_input_is_one_line_and_exit_2(args, message, tmp_path, capsys):
    argv = ["finetune", "--algo", "sac", "--env", ENV, "--mode", "local", "--out", str(tmp_path / "run"), *args]
    if argv.count("--algo") == 2:
        argv[1:3] = []
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1


def test_a_failed_population_resumes_every_agent_from_its_last_save(tmp_path, monkeypatch):
    out = tmp_path / "population"
    original = PopulationLearner.update

    def failing_update(self, batches, env_step):
        if env_step > 150:
            raise RuntimeError("injected failure")
        return original(self, batches, env_step)

    monkeypatch.setattr(PopulationLearner, "update", failing_update)
    with pytest.raises(RuntimeError, match="injected"):
        run_finetune(sac(online_steps=300), out, progress=False, seeds=[0, 1])
    monkeypatch.undo()
    assert [m["env_steps"] for m in metrics(out / "seed_1")] == [0, 100]
    summary = resume_finetune(out, progress=False)
    for seed, run in zip((0, 1), summary["runs"], strict=True):
        lines = metrics(out / f"seed_{seed}")
        assert [m["env_steps"] for m in lines] == [0, 100, 200, 300]
        # Each agent's own records came back: its initial evaluation, its evaluation env steps.
        assert run["env_steps"] == 300 and run["initial"] == json.loads((out / f"seed_{seed}" / "metrics.jsonl")
                                                                      .read_text().splitlines()[0])
        assert run["eval_env_steps"] == lines[-1]["eval_env_steps"] == 4 * lines[0]["eval_env_steps"]
    saved = np.load(latest_save(out) / "replay.npz")
    assert int(saved["inserted"]) == 300 and len(saved["agent0_rewards"]) == len(saved["agent1_rewards"]) == 300
    assert not np.array_equal(saved["agent0_observations"], saved["agent1_observations"])  # each agent's own envs
    with pytest.raises(UserError, match=r"'batch_size' cannot change \(16 in .*population.yaml, 64 given\)"):
        resume_finetune(out, progress=False, changes={"batch_size": 64})


def rows(n: int, start: int) -> dict:
    """Transitions whose reward is their id (start, start + 1, ...)."""
    ids = np.arange(start, start + n, dtype=np.float32)
    obs = np.random.default_rng(start).normal(size=(n, 3)).astype(np.float32)
    return {"observations": obs, "actions": np.zeros((n, 1), np.float32), "rewards": ids, "next_observations": obs,
            "terminals": np.zeros(n, np.float32), "timeouts": np.zeros(n, np.float32)}


def population_with_shards(seeds=(0, 1)):
    """A population learner on two shards, agent k's rows with ids from 1000 k on."""
    learner = PopulationLearner(sac(learning_starts=0, random_start_steps=0), 3, 1, seeds=list(seeds))
    shards = [PopulationReplay(3, 1, 64, None, [seed + j for seed in seeds]) for j in range(2)]
    learner.attach_replay(shards)
    for j, shard in enumerate(shards):
        for k, service in enumerate(shard.services):
            service.add(rows(10 + 10 * j, 1000 * k + 100 * j))
    return learner, shards


def agent_of(ids: np.ndarray) -> np.ndarray:
    return ids.astype(np.int64) // 1000


def test_each_agent_validates_its_own_deployment(tmp_path):
    """A population with a validated deployment: each seed's sub-run follows the rule on its own
    candidate's scores (π's mode, `online_return_mean`), as a separate run would."""
    out = tmp_path / "pop"
    run_finetune(sac(online_steps=500, validated_deployment=True), out, progress=False, seeds=[0, 1])
    for seed in (0, 1):
        run = out / f"seed_{seed}"
        lines = metrics(run)
        assert all("online_return_mean" in m for m in lines)
        assert_validated_deployment(run, lines, "online_policy", "online_return_mean")


def test_an_agent_samples_only_its_own_transitions_on_either_learner_path():
    learner, shards = population_with_shards()
    batches = learner._sample(3, [(6, 0), (10, 0)])  # the eager path's pull: (count, batch, agent)
    assert batches["rewards"].shape == (3, 16, 2)
    assert (agent_of(batches["rewards"]) == np.arange(2)).all()
    version, metrics = learner.update_from_replay(2, 10_000, [10, 20])
    assert version == 2 and len(metrics) == 2 and all("critic_loss" in m for m in metrics)

    # What `graphed_updater` builds on CUDA (agent k's rows in ring k), here running eagerly.
    learner.graphed = GraphedUpdater(learner.population, 3, 1, capacity=64, device=torch.device("cpu"), compile=False)
    version, metrics = learner.update_from_replay(2, 10_000, [10, 20])
    assert version == 4 and metrics == [{}, {}]  # a graphed call's metrics come back later
    assert all("critic_loss" in m for m in learner.settle_updates())
    replay = learner.graphed.replay
    for k in range(2):
        ring = replay.storage[replay.num_offline + 64 * k:][:replay.counts[k], 3 + 1]
        assert sorted(ring.long().tolist()) == [*range(1000 * k, 1000 * k + 10), *range(1000 * k + 100, 1000 * k + 120)]
    assert (agent_of(replay.sample(16, 0).rewards.numpy()) == np.arange(2)[:, None]).all()


def test_the_api_refuses_seeds_beside_a_seed_as_the_cli_does(tmp_path):
    from distributed_o2o.api import finetune

    with pytest.raises(UserError, match="--seeds and --seed both given"):
        finetune("sac", out=tmp_path / "run", mode="local", seeds=[0, 1], seed=3, **TINY)
    assert not (tmp_path / "run").exists()


def test_a_diverged_agent_stops_the_run_naming_its_seed():
    from distributed_o2o.runtime.learner import LearnerDiverged

    learner, _ = population_with_shards(seeds=(3, 4))
    with pytest.raises(LearnerDiverged, match=r"critic_loss \(seed 4\) became non-finite"):
        learner._finite([{"critic_loss": 1.0}, {"critic_loss": float("nan")}], "env step 7")
