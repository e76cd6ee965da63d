import numpy as np

from distributed_o2o.algorithms.base import ActingSpec
from distributed_o2o.runtime.replay import ReplayService, ReplayTable
from distributed_o2o.runtime.rollout import RolloutWorker


def _chunk(start, n, obs_dim=2, act_dim=1):
    ids = np.arange(start, start + n, dtype=np.float32)
    return {"observations": np.repeat(ids[:, None], obs_dim, 1), "actions": np.zeros((n, act_dim), np.float32),
            "rewards": ids, "next_observations": np.repeat(ids[:, None] + 1, obs_dim, 1),
            "terminals": np.zeros(n, np.float32), "timeouts": np.zeros(n, np.float32),
            "policy_version": np.full(n, 7, np.int32)}


def test_ring_keeps_the_newest_in_order():
    table = ReplayTable(2, 1, capacity=5)
    table.add(_chunk(0, 3))
    table.add(_chunk(3, 4))
    assert len(table) == 5 and table.inserted == 7
    np.testing.assert_array_equal(table.ordered()["rewards"], [2, 3, 4, 5, 6])
    table.add(_chunk(100, 12))
    np.testing.assert_array_equal(table.ordered()["rewards"], [107, 108, 109, 110, 111])


def test_storage_is_columnar_and_compact():
    table = ReplayTable(11, 3, capacity=10_000)
    raw = 10_000 * (11 + 3 + 1 + 11 + 1 + 1 + 1) * 4
    assert table.nbytes() <= 1.2 * raw


def test_batches_mix_online_and_offline_rows_as_asked():
    offline = _chunk(1000, 50)
    replay = ReplayService(2, 1, 100, offline=offline, seed=0)
    replay.add(_chunk(0, 50))
    batches = replay.sample_many(3, 150, 50)
    assert batches["rewards"].shape[:2] == (3, 200)
    assert ((batches["rewards"] >= 1000).sum(axis=1) == 50).all()
    assert (replay.sample_many(2, 64)["rewards"] < 1000).all()


def test_save_and_load_keep_every_transition(tmp_path):
    replay = ReplayService(2, 1, 8, seed=0)
    replay.add(_chunk(0, 11))
    replay.save(tmp_path / "replay.npz", "save-id")
    restored = ReplayService(2, 1, 8, seed=0)
    restored.load(tmp_path / "replay.npz")
    for name, column in replay.online.ordered().items():
        np.testing.assert_array_equal(restored.online.ordered()[name], column)
    assert restored.online.inserted == 11


def test_rollout_records_true_final_observation_and_timeouts():
    worker = RolloutWorker("Pendulum-v1", num_envs=2, seed=3,
                           policy_arch={"family": "tanh_gaussian", "obs_dim": 3, "act_dim": 1, "hidden": [8]})
    fragment = worker.collect(201)
    a = fragment.arrays
    assert a["rewards"].shape == (201, 2)
    assert a["timeouts"][199].all() and not a["timeouts"][:199].any()
    assert not a["terminals"].any()
    # The step after a time limit starts a new episode: its obs is not the previous next_obs.
    assert not np.allclose(a["observations"][200], a["next_observations"][199])
    np.testing.assert_allclose(a["observations"][1:199], a["next_observations"][:198])
    # Each env finished one 200-step episode; its return is the sum of its rewards.
    np.testing.assert_allclose(fragment.episode_returns, a["rewards"][:200].sum(axis=0), rtol=1e-5)


def test_the_runs_of_a_study_start_their_envs_apart():
    """Runs seeded 0 and 1 (a population's neighbours) share no start state among their envs; a
    run's envs start as they did (seeding by seed + i gave them 3 of 4 in common)."""
    arch = {"family": "tanh_gaussian", "obs_dim": 3, "act_dim": 1, "hidden": [8]}

    def starts(seed: int) -> set[tuple[float, ...]]:
        return {tuple(row) for row in RolloutWorker("Pendulum-v1", num_envs=4, seed=seed, policy_arch=arch).obs.tolist()}

    assert len(starts(0)) == 4 and starts(0) == starts(0)
    assert starts(0).isdisjoint(starts(1))


def test_acting_spec_controls_exploration():
    arch = {"family": "tanh_gaussian", "obs_dim": 3, "act_dim": 1, "hidden": [8]}
    worker = RolloutWorker("Pendulum-v1", num_envs=4, seed=0, policy_arch=arch)
    worker.set_weights(0, None, ActingSpec(deterministic=True))
    obs = worker.obs
    deterministic, _ = worker._actions(obs)
    np.testing.assert_allclose(deterministic, worker._actions(obs)[0])
    worker.set_weights(0, None, ActingSpec(deterministic=True, epsilon=1.0))
    assert not np.allclose(worker._actions(obs)[0], deterministic)
    fragment = worker.collect(3)
    assert (fragment.arrays["policy_version"] == -1).all()  # acting weights never broadcast yet
