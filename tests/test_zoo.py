"""The shipped zoo, `o2o zoo build` and `o2o data make`."""

from __future__ import annotations

import json
from importlib import metadata

import numpy as np
import pytest

from distributed_o2o.checkpoint import load_policy
from distributed_o2o.cli.main import main
from distributed_o2o.data import load_dataset
from distributed_o2o.data.make import make_dataset
from distributed_o2o.evaluation import evaluate_policy
from distributed_o2o.zoo import POLICY_QUALITIES, zoo_entry, zoo_envs
from distributed_o2o.zoo.build import EVAL_SEED, build_zoo_entry

ZOO_ENVS = ["HalfCheetah-v5", "Hopper-v5", "Walker2d-v5"]


def test_zoo_covers_the_three_envs_with_references_from_its_own_policies():
    assert zoo_envs() == ZOO_ENVS
    for env_id in ZOO_ENVS:
        entry = zoo_entry(env_id)
        policies = entry.info["policies"]
        assert entry.ref_min_score == policies["random"]["return_mean"]
        assert entry.ref_max_score == policies["expert"]["return_mean"]
        assert policies["random"]["return_mean"] < policies["medium"]["return_mean"] < policies["expert"]["return_mean"]
        assert all(policies[q]["episodes"] == 100 for q in POLICY_QUALITIES)
        # The references hold for the simulator they were measured with: the one pyproject pins.
        assert entry.info["mujoco_version"] == metadata.version("mujoco")
    assert zoo_entry("hopper-medium-v2").env_id == "Hopper-v5"  # D4RL names resolve


@pytest.mark.parametrize("env_id", ZOO_ENVS)
def test_zoo_policies_evaluate_to_their_recorded_returns(env_id):
    """A few episodes, loose tolerance: a third of the random-to-expert range (medium policies vary a lot)."""
    entry = zoo_entry(env_id)
    tolerance = (entry.ref_max_score - entry.ref_min_score) / 3
    for quality in POLICY_QUALITIES:
        recorded = entry.info["policies"][quality]["return_mean"]
        result = evaluate_policy(load_policy(entry.policy_dir(quality), env_id), env_id, 3, seed=EVAL_SEED, num_envs=3)
        assert abs(result.return_mean - recorded) < tolerance, (quality, result.return_mean, recorded)


def test_zoo_refuses_an_env_it_does_not_cover():
    assert main(["data", "make", "--env", "Pendulum-v1", "--quality", "medium", "--out", "/tmp/never.hdf5"]) == 2


@pytest.mark.parametrize("quality", ["random", "medium", "expert", "medium-expert"])
def test_data_make_is_deterministic_per_seed(quality):
    first = make_dataset("Hopper-v5", quality, 600, seed=5, progress=False)
    again = make_dataset("Hopper-v5", quality, 600, seed=5, progress=False)
    other = make_dataset("Hopper-v5", quality, 600, seed=6, progress=False)
    assert len(first) == 600
    for name in ("observations", "actions", "rewards", "terminals", "timeouts"):
        assert np.array_equal(getattr(first, name), getattr(again, name))
    assert not np.array_equal(first.actions, other.actions)
    assert first.ref_max_score == zoo_entry("Hopper-v5").ref_max_score


def test_medium_replay_restores_contiguous_episodes():
    data = make_dataset("Hopper-v5", "medium-replay", progress=False)
    info = zoo_entry("Hopper-v5").info["medium_replay"]
    assert len(data) == info["transitions"] and data.num_episodes == info["episodes"]
    ends = data.terminals | data.timeouts
    inside = ~ends[:-1]  # within an episode the next row starts where this one ended
    assert np.array_equal(data.next_observations[:-1][inside], data.observations[1:][inside])
    assert ends[-1]
    cut = make_dataset("Hopper-v5", "medium-replay", steps=5000, progress=False)
    assert len(cut) <= 5000 and (cut.terminals | cut.timeouts)[-1]


def test_data_make_cli_writes_a_dataset_that_loads_with_the_zoo_references(tmp_path):
    out = tmp_path / "walker-expert.hdf5"
    assert main(["data", "make", "--env", "Walker2d-v5", "--quality", "expert", "--steps", "400", "--out", str(out)]) == 0
    data = load_dataset(str(out), "Walker2d-v5")
    assert len(data) == 400
    assert data.ref_min_score == zoo_entry("Walker2d-v5").ref_min_score


def test_zoo_build_from_a_sac_run(tmp_path):
    """A short SAC run on Pendulum becomes a zoo entry, and `data make` builds datasets from it."""
    out = tmp_path / "run"
    assert main(["finetune", "--algo", "sac", "--env", "Pendulum-v1", "--mode", "local", "--out", str(out), "--quiet",
                 "--online-steps", "3000", "--num-rollout-workers", "2", "--envs-per-worker", "2",
                 "--set", "eval_every=500", "--set", "eval_episodes=2", "--set", "random_start_steps=500",
                 "--set", "learning_starts=500", "--set", "hidden=[32,32]", "--set", "resume_every=1500"]) == 0
    entry = build_zoo_entry(out, tmp_path / "zoo", episodes=4, max_replay_transitions=1000, log=lambda _: None)
    policies = entry["policies"]
    assert entry["ref_min_score"] == policies["random"]["return_mean"] and policies["random"]["env_steps"] == 0
    assert entry["ref_max_score"] == policies["expert"]["return_mean"]
    third = entry["ref_min_score"] + (entry["ref_max_score"] - entry["ref_min_score"]) / 3
    assert policies["medium"]["training_eval_return"] >= third
    replay = entry["medium_replay"]
    assert replay["full_transitions"] == policies["medium"]["env_steps"]
    assert replay["subsampled"] == (replay["full_transitions"] > 1000) and replay["transitions"] <= 1000
    saved = json.loads((tmp_path / "zoo" / "Pendulum-v1" / "zoo.json").read_text())
    assert saved["policies"]["expert"]["env_steps"] == policies["expert"]["env_steps"]
    assert saved["mujoco_version"] == metadata.version("mujoco")

    data = make_dataset("Pendulum-v1", "medium-replay", progress=False, zoo_root=tmp_path / "zoo")
    assert len(data) == replay["transitions"]
    assert data.num_episodes == replay["episodes"]  # 200-step episodes, whole or cut at the medium point
    medium = make_dataset("Pendulum-v1", "medium", 400, seed=0, progress=False, zoo_root=tmp_path / "zoo")
    assert len(medium) == 400


def test_zoo_build_refuses_a_directory_that_is_not_a_run(tmp_path):
    assert main(["zoo", "build", "--run", str(tmp_path)]) == 2
