"""The RLlib/Tune front door: registered names, builder config, train() iterations, checkpoints."""

from __future__ import annotations

import numpy as np
import pytest

from distributed_o2o.errors import UserError


@pytest.fixture(scope="module")
def bc_policy(tmp_path_factory):
    from distributed_o2o.algorithms.offline import run_pretraining
    from distributed_o2o.config import PretrainConfig
    from distributed_o2o.data import collect_dataset

    rng = np.random.default_rng(0)
    data = collect_dataset("Pendulum-v1", lambda obs: rng.uniform(-1, 1, (len(obs), 1)), 500, seed=0, num_envs=2, progress=False)
    config = PretrainConfig(algo="bc", steps=50, hidden=[32, 32], batch_size=64, log_every=50, seed=0)
    return str(run_pretraining(config, data, tmp_path_factory.mktemp("bc"), progress=False))


def _porl_config(policy: str):
    from ray.tune.registry import get_trainable_cls

    import distributed_o2o.rllib  # noqa: F401  (registers the names)

    return (get_trainable_cls("PORL").get_default_config()
            .environment("Pendulum-v1")
            .env_runners(num_env_runners=1, num_envs_per_env_runner=2)
            .training(iteration_env_steps=200, policy=policy, presample_steps=100, utd=1, num_critics=2, hidden=[32, 32],
                      batch_size=32, eval_episodes=1, eval_every=100_000, log_every=100, replay_capacity=5000))


def test_names_are_registered_with_tune():
    from ray.tune.registry import get_trainable_cls

    import distributed_o2o.rllib as rl

    for name in ("PORL", "O2SAC", "O2TD3", "O2PPO"):
        cls = get_trainable_cls(name)
        assert cls is rl.ALGORITHMS[name]
        assert cls.get_default_config().ALGO == name.lower()


def test_unknown_or_invalid_training_keys_raise():
    from distributed_o2o.rllib import O2TD3Config, PORLConfig

    with pytest.raises(UserError, match="unknown config key 'foo'"):
        PORLConfig().training(foo=1)
    with pytest.raises(UserError, match="batch_size"):
        PORLConfig().training(batch_size=0)
    with pytest.raises(UserError, match="presample_steps"):
        O2TD3Config().training(presample_steps=10)  # a PORL field, not O2TD3's
    with pytest.raises(UserError, match="iteration_env_steps"):
        PORLConfig().training(iteration_env_steps=0)


def test_builder_maps_to_the_project_config():
    from distributed_o2o.rllib import O2SACConfig

    config = (O2SACConfig().environment("Pendulum-v1", env_config={"g": 9.0})
              .env_runners(num_env_runners=3, num_envs_per_env_runner=4).debugging(seed=7)
              .training(utd=2, constraint={"eps_end": 0.5}))
    project = config.finetune_config(1234)
    assert (project.algo, project.env, project.env_kwargs) == ("o2sac", "Pendulum-v1", {"g": 9.0})
    assert (project.runtime.num_rollout_workers, project.runtime.envs_per_worker, project.seed) == (3, 4, 7)
    assert (project.online_steps, project.utd, project.constraint.eps_end) == (1234, 2, 0.5)
    # RLlib's default of 0 env runners samples in the main process: one rollout worker.
    assert O2SACConfig().environment("Pendulum-v1").finetune_config(10).runtime.num_rollout_workers == 1


def test_porl_trains_two_iterations_and_round_trips_a_checkpoint(bc_policy, tmp_path):
    from ray.rllib.algorithms.algorithm import Algorithm

    from distributed_o2o.rllib import PORL

    algo = _porl_config(bc_policy).build_algo()
    assert isinstance(algo, PORL)
    try:
        first = algo.train()
        second = algo.train()
        for result in (first, second):
            assert np.isfinite(result["env_runners"]["episode_return_mean"])
            assert "normalized_score" in result
        assert first["num_env_steps_sampled_lifetime"] == 200
        assert second["num_env_steps_sampled_lifetime"] == 400
        assert second["env_runners"]["num_env_steps_sampled_lifetime"] == 400
        assert second["num_updates_lifetime"] > first["num_updates_lifetime"] > 0
        checkpoint = algo.save(str(tmp_path / "ckpt")).checkpoint.path  # Trainable.save -> save_to_path
    finally:
        algo.stop()

    restored = Algorithm.from_checkpoint(checkpoint)
    try:
        assert isinstance(restored, PORL)
        assert restored.config.iteration_env_steps == 200
        assert (restored.env_steps, restored.updates) == (400, second["num_updates_lifetime"])
        assert restored.training_iteration == 2
        third = restored.train()  # continues the copied run: its replay and learner state
        assert third["num_env_steps_sampled_lifetime"] == 600 and third["training_iteration"] == 3
        assert third["num_updates_lifetime"] > second["num_updates_lifetime"]
        for name in ("compute_single_action", "evaluate", "get_module"):
            with pytest.raises(UserError, match=rf"PORL.{name}\(\) is not supported: .*`o2o eval --policy <checkpoint>`.*load_policy"):
                getattr(restored, name)()
    finally:
        restored.stop()


def test_importing_the_rllib_front_door_registers_the_names():
    import subprocess
    import sys

    # A Ray session started and ended in between: Tune's registry forgets names then.
    code = ("import distributed_o2o.rllib, ray\nfrom ray.tune.registry import get_trainable_cls\n"
            "ray.init(num_cpus=1, include_dashboard=False)\nray.shutdown()\n"
            "print(*(get_trainable_cls(n).__name__ for n in ('PORL', 'O2SAC', 'O2TD3', 'O2PPO')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.split() == ["PORL", "O2SAC", "O2TD3", "O2PPO"]


@pytest.fixture(scope="module")
def pendulum_dataset(tmp_path_factory):
    from distributed_o2o.data import collect_dataset, write_dataset

    rng = np.random.default_rng(1)
    data = collect_dataset("Pendulum-v1", lambda obs: rng.uniform(-1, 1, (len(obs), 1)), 600, seed=1, num_envs=2, progress=False)
    return str(write_dataset(tmp_path_factory.mktemp("data") / "data.hdf5", data, env_id="Pendulum-v1", behavior_policy="random", seed=1))


SMALL_TRAINING = {
    "O2SAC": dict(reevaluate_steps=30, align_steps=30, utd=1, num_critics=2, learning_starts=10),
    "O2TD3": dict(reevaluate_steps=30, align_steps=30, utd=1, learning_starts=10),
    "O2PPO": dict(reevaluate_steps=30, rollout_steps=50, minibatch_size=25, epochs=1, shaping_end_steps=1000),
}


@pytest.mark.parametrize("name", sorted(SMALL_TRAINING))
def test_offline_to_online_algorithms_train_two_iterations(name, bc_policy, pendulum_dataset):
    from ray.tune.registry import get_trainable_cls

    config = (get_trainable_cls(name).get_default_config().environment("Pendulum-v1")
              .env_runners(num_env_runners=1, num_envs_per_env_runner=2)
              .training(iteration_env_steps=200, policy=bc_policy, dataset=pendulum_dataset, hidden=[32, 32], batch_size=32,
                        eval_episodes=1, eval_every=100_000, log_every=100, **SMALL_TRAINING[name]))
    algo = config.build_algo()
    try:
        first, second = algo.train(), algo.train()
    finally:
        algo.stop()
    assert (first["num_env_steps_sampled_lifetime"], second["num_env_steps_sampled_lifetime"]) == (200, 400)
    assert second["num_updates_lifetime"] > first["num_updates_lifetime"] > 0
    assert np.isfinite(second["env_runners"]["episode_return_mean"])


def test_tune_runs_a_grid_of_two_trials(bc_policy, tmp_path):
    import ray
    from ray import tune

    ray.init(num_cpus=2, include_dashboard=False, logging_level="ERROR")
    try:
        param_space = _porl_config(bc_policy).training(utd=tune.grid_search([1, 2]))
        tuner = tune.Tuner("PORL", param_space=param_space,
                           run_config=tune.RunConfig(storage_path=str(tmp_path), stop={"training_iteration": 1}, verbose=0))
        results = tuner.fit()
    finally:
        ray.shutdown()
    assert len(results) == 2 and not results.errors
    for result in results:
        assert result.metrics["num_env_steps_sampled_lifetime"] == 200
        assert np.isfinite(result.metrics["env_runners"]["episode_return_mean"])
    # The grid reached the project config: after the 100 pre-sample steps (same updates in both
    # trials), UTD 2 ran one more update per env step than UTD 1.
    low, high = sorted(r.metrics["num_updates_lifetime"] for r in results)
    assert 90 <= high - low <= 110


def _saved_rllib_module(config_cls, path):
    import gymnasium as gym

    env = gym.make("Pendulum-v1")
    spec = config_cls().environment("Pendulum-v1").get_rl_module_spec(env=env)
    spec.observation_space, spec.action_space = env.observation_space, env.action_space
    module = spec.build()
    module.save_to_path(str(path))
    return module


@pytest.mark.parametrize("which", ["CQL", "IQL"])
def test_rllib_squashed_gaussian_policies_convert_exactly(which, tmp_path):
    import torch
    from ray.rllib.algorithms.cql import CQLConfig
    from ray.rllib.algorithms.iql import IQLConfig
    from ray.rllib.core.columns import Columns

    from distributed_o2o.checkpoint import load_policy
    from distributed_o2o.cli.main import main

    # Laid out as in an Algorithm checkpoint, which the converter searches.
    module_path = tmp_path / "algo" / "learner_group" / "learner" / "rl_module" / "default_policy"
    module = _saved_rllib_module({"CQL": CQLConfig, "IQL": IQLConfig}[which], module_path)
    assert main(["convert-rllib", "--checkpoint", str(tmp_path / "algo"), "--env", "Pendulum-v1", "--out", str(tmp_path / "pi"),
                 "--trust-pickle"]) == 0
    policy = load_policy(tmp_path / "pi", "Pendulum-v1")
    obs = torch.randn(64, 3)
    with torch.no_grad():
        inputs = module.forward_inference({Columns.OBS: obs})[Columns.ACTION_DIST_INPUTS]
        mean, log_std = policy.mean_and_log_std(obs)
    assert policy.family == "tanh_gaussian" and policy.activation == "tanh"
    assert torch.allclose(policy.mode(obs), torch.tanh(inputs[:, :1]), atol=1e-6)
    assert torch.allclose(mean, inputs[:, :1], atol=1e-6)
    assert torch.allclose(log_std, inputs[:, 1:].clamp(-5, 2), atol=1e-6)
    # A policy for another env's spaces is refused.
    assert main(["convert-rllib", "--checkpoint", str(tmp_path / "algo"), "--env", "Hopper-v5", "--out", str(tmp_path / "x"),
                 "--trust-pickle"]) == 2


def test_convert_reads_a_real_algorithm_checkpoint_by_a_relative_path(tmp_path, monkeypatch):
    """RLlib SAC trained for one iteration and saved with `save_to_path()`: the root holds the
    Algorithm's own class_and_ctor_args.pkl, the module sits under learner_group/."""
    import ray
    import torch
    from ray.rllib.algorithms.sac import SACConfig
    from ray.rllib.core.columns import Columns

    from distributed_o2o.checkpoint import load_policy
    from distributed_o2o.cli.main import main

    ray.init(num_cpus=1, include_dashboard=False, logging_level="ERROR")
    try:
        algo = (SACConfig().environment("Pendulum-v1").env_runners(num_env_runners=0, rollout_fragment_length=50)
                .training(num_steps_sampled_before_learning_starts=50, train_batch_size_per_learner=32,
                          replay_buffer_config={"type": "PrioritizedEpisodeReplayBuffer", "capacity": 1000})
                .reporting(min_sample_timesteps_per_iteration=50).build_algo())
        try:
            assert algo.train()["num_env_steps_sampled_lifetime"] >= 50
            algo.save_to_path(str(tmp_path / "sac"))
            module = algo.get_module()
        finally:
            algo.stop()
    finally:
        ray.shutdown()
    assert (tmp_path / "sac" / "class_and_ctor_args.pkl").is_file() and (tmp_path / "sac" / "rllib_checkpoint.json").is_file()

    monkeypatch.chdir(tmp_path)
    assert main(["convert-rllib", "--checkpoint", "sac", "--env", "Pendulum-v1", "--out", "pi", "--trust-pickle"]) == 0
    policy = load_policy(tmp_path / "pi", "Pendulum-v1")
    obs = torch.randn(64, 3)
    with torch.no_grad():
        inputs = module.forward_inference({Columns.OBS: obs})[Columns.ACTION_DIST_INPUTS]
    assert torch.allclose(policy.mode(obs), torch.tanh(inputs[:, :1]), atol=1e-6)


@pytest.mark.parametrize("which", ["BC", "MARWIL"])
def test_rllib_unsquashed_gaussian_policies_keep_their_clipped_mean_as_mode(which, tmp_path):
    import torch
    from ray.rllib.algorithms.bc import BCConfig
    from ray.rllib.algorithms.marwil import MARWILConfig
    from ray.rllib.core.columns import Columns

    from distributed_o2o.algorithms.policies import convert_policy
    from distributed_o2o.checkpoint import load_policy
    from distributed_o2o.rllib.convert import convert_rllib_policy

    module = _saved_rllib_module({"BC": BCConfig, "MARWIL": MARWILConfig}[which], tmp_path / "m")
    with torch.no_grad():  # a mean that leaves the bounds somewhere, as BC policies' can
        for name, value in module.state_dict().items():
            if name.endswith("mlp.0.bias") and value.shape[0] == 2:
                module.state_dict()[name][0] += 1.0
    module.save_to_path(str(tmp_path / "m"))
    policy = load_policy(convert_rllib_policy(tmp_path / "m", "Pendulum-v1", tmp_path / "pi", trust_pickle=True), "Pendulum-v1")
    obs = torch.randn(256, 3) * 3
    with torch.no_grad():
        mean = module.forward_inference({Columns.OBS: obs})[Columns.ACTION_DIST_INPUTS][:, :1]
        assert (mean.abs() > 1).any() and (mean.abs() < 1).any()
        assert torch.allclose(policy.mode(obs), mean.clamp(-1, 1), atol=1e-5)
        # Cross-family conversion (e.g. to the deterministic family of O2TD3) keeps that mode.
        assert torch.allclose(convert_policy(policy, "deterministic").mode(obs), mean.clamp(-1, 1), atol=1e-5)


def test_ray_mode_runs_the_runtime_as_actors(bc_policy):
    """`.training(mode="ray")`: each train() runs the run's actors on the Ray instance the
    Algorithm lives in (here the test's), named as `o2o finetune --mode ray` names them."""
    import threading

    import ray

    ray.init(num_cpus=2, include_dashboard=False, logging_level="ERROR")
    seen: set[str] = set()
    stop = threading.Event()

    def watch() -> None:
        while not stop.is_set():
            seen.update(a["name"].rsplit("/", 1)[-1] for a in ray.util.list_named_actors(all_namespaces=True)
                        if a["namespace"] == "o2o")
            stop.wait(0.05)

    watcher = threading.Thread(target=watch, daemon=True)
    try:
        algo = _porl_config(bc_policy).training(mode="ray").build_algo()
        watcher.start()
        try:
            first, second = algo.train(), algo.train()
        finally:
            stop.set()
            algo.stop()
    finally:
        ray.shutdown()
    assert {"learner-0", "replay-0", "evaluator-0", "rollout-0"} <= seen
    assert (first["num_env_steps_sampled_lifetime"], second["num_env_steps_sampled_lifetime"]) == (200, 400)
    assert second["num_updates_lifetime"] > first["num_updates_lifetime"] > 0


def test_ray_mode_asks_tune_for_the_actors_resources():
    from distributed_o2o.rllib import PORL, PORLConfig

    local = PORL.default_resource_request(PORLConfig().env_runners(num_env_runners=3))
    ray_mode = PORL.default_resource_request(PORLConfig().env_runners(num_env_runners=3).training(mode="ray"))
    assert local.bundles == [{"CPU": 1}]
    assert ray_mode.bundles == [{"CPU": 1}, {"CPU": 1}] + [{"CPU": 1}] * 3
    with pytest.raises(UserError, match="unknown mode"):
        PORLConfig().training(mode="cluster")


def test_tune_trial_in_ray_mode_places_its_actors_in_the_trial_bundles(bc_policy, tmp_path):
    """Three logical CPUs: the trial's bundle plus one each for its learner and rollout actor."""
    import ray
    from ray import tune

    ray.init(num_cpus=3, include_dashboard=False, logging_level="ERROR")
    try:
        tuner = tune.Tuner("PORL", param_space=_porl_config(bc_policy).training(mode="ray"),
                           run_config=tune.RunConfig(storage_path=str(tmp_path), stop={"training_iteration": 2}, verbose=0))
        results = tuner.fit()
    finally:
        ray.shutdown()
    assert not results.errors
    assert [r.metrics["num_env_steps_sampled_lifetime"] for r in results] == [400]
