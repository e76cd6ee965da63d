"""Offline pretrainers (BC, BC-det, TD3+BC, IQL, CQL), `run_pretraining` and `o2o pretrain`."""

from __future__ import annotations

import dataclasses
import json
import math

import numpy as np
import pytest
import torch

from distributed_o2o.algorithms.base import OfflineData
from distributed_o2o.algorithms.networks import CriticEnsemble, ValueNetwork
from distributed_o2o.algorithms.offline import PRETRAINERS, run_pretraining
from distributed_o2o.algorithms.offline.bc import BCPretrainer
from distributed_o2o.algorithms.offline.cql import cql_penalty
from distributed_o2o.algorithms.offline.iql import advantage_weights, expectile_loss
from distributed_o2o.algorithms.offline.td3bc import td3bc_actor_loss
from distributed_o2o.algorithms.offline.train import EVAL_SEED, set_obs_stats
from distributed_o2o.checkpoint import load_checkpoint, load_policy, save_checkpoint
from distributed_o2o.cli.main import main
from distributed_o2o.config import PretrainConfig
from distributed_o2o.data import OfflineDataset, collect_dataset, write_dataset
from distributed_o2o.errors import UserError
from distributed_o2o.evaluation import evaluate_policy
from distributed_o2o.runtime.evaluator import Evaluator
from distributed_o2o.zoo import zoo_entry

FAMILIES = {"bc": "tanh_gaussian", "bc-det": "deterministic", "td3bc": "deterministic", "iql": "gaussian", "cql": "tanh_gaussian"}
MODULES = {"bc": {"policy"}, "bc-det": {"policy"}, "td3bc": {"policy", "critic"}, "iql": {"policy", "critic", "value"},
           "cql": {"policy", "critic"}}
# The loss each method must reduce on the synthetic data (IQL's actor loss is an advantage-weighted
# NLL whose weights grow as V learns, so its critic and value losses are the ones checked).
MAIN_LOSSES = {"bc": ["actor_loss"], "bc-det": ["actor_loss"], "td3bc": ["critic_loss"], "iql": ["critic_loss", "value_loss"],
               "cql": ["critic_loss"]}



def small_config(algo: str, **kwargs) -> PretrainConfig:
    return PretrainConfig(algo=algo, hidden=[64, 64], cql_q_hidden=[64, 64, 64], batch_size=64, device="cpu", **kwargs)


def synthetic_dataset(n: int = 2000, seed: int = 0) -> OfflineDataset:
    """obs_dim 3 (off-centre, unevenly scaled), act_dim 2; actions a smooth function of obs plus noise."""
    rng = np.random.default_rng(seed)
    obs = rng.normal(size=(n, 3)) * [1.0, 5.0, 0.2] + [0.0, 3.0, -1.0]
    unit = (obs - obs.mean(0)) / obs.std(0)
    mean_action = np.tanh(unit @ np.array([[0.8, -0.5], [0.1, 0.3], [-0.6, 0.9]]))
    actions = np.clip(mean_action + 0.1 * rng.normal(size=(n, 2)), -1.0, 1.0)
    rewards = unit[:, 0] - ((actions - mean_action) ** 2).sum(1)
    next_obs = obs + 0.1 * rng.normal(size=obs.shape)
    terminals = rng.random(n) < 0.3
    return OfflineDataset(
        observations=obs.astype(np.float32), actions=actions.astype(np.float32), rewards=rewards.astype(np.float32),
        next_observations=next_obs.astype(np.float32), terminals=terminals, timeouts=np.zeros(n, dtype=bool),
        episode_returns=np.zeros(1), source="synthetic",
    )


def offline_data(dataset: OfflineDataset) -> OfflineData:
    names = ("observations", "actions", "rewards", "next_observations", "terminals", "timeouts")
    return OfflineData({name: getattr(dataset, name) for name in names}, "cpu")


# ---------------------------------------------------------------- each pretrainer
@pytest.mark.parametrize("algo", sorted(PRETRAINERS))
def test_pretrainer_reduces_its_loss_and_round_trips(algo, tmp_path):
    torch.manual_seed(0)
    dataset = synthetic_dataset()
    pretrainer = PRETRAINERS[algo](small_config(algo), 3, 2, "cpu")
    set_obs_stats(pretrainer.networks(), dataset.observations, 1e-3)
    data = offline_data(dataset)

    history = [pretrainer.step(data.sample(64)) for _ in range(300)]

    assert all(math.isfinite(v) for metrics in history for v in metrics.values())
    for loss in MAIN_LOSSES[algo]:
        first = np.mean([m[loss] for m in history[:20] if loss in m])
        last = np.mean([m[loss] for m in history[-20:] if loss in m])
        assert last < first - 0.5 * abs(first), (loss, first, last)

    modules = pretrainer.modules()
    assert set(modules) == MODULES[algo] and modules["policy"].family == FAMILIES[algo]
    save_checkpoint(tmp_path / "ckpt", modules, env_id=None, algo=algo)
    loaded = load_checkpoint(tmp_path / "ckpt").modules
    assert set(loaded) == set(modules) and loaded["policy"].family == FAMILIES[algo]
    obs = torch.as_tensor(dataset.observations[:50])
    with torch.no_grad():
        torch.testing.assert_close(loaded["policy"].mode(obs), modules["policy"].mode(obs))
        if "critic" in modules:
            assert isinstance(loaded["critic"], CriticEnsemble) and loaded["critic"].num_critics == 2
            torch.testing.assert_close(loaded["critic"](obs, modules["policy"].mode(obs)), modules["critic"](obs, modules["policy"].mode(obs)))
        if "value" in modules:
            assert isinstance(loaded["value"], ValueNetwork)
            torch.testing.assert_close(loaded["value"](obs), modules["value"](obs))


@pytest.mark.parametrize("algo", ["td3bc", "iql", "cql"])
def test_targets_get_the_dataset_statistics_too(algo):
    dataset = synthetic_dataset()
    pretrainer = PRETRAINERS[algo](small_config(algo), 3, 2, "cpu")
    set_obs_stats(pretrainer.networks(), dataset.observations, 1e-3)

    expected_std = torch.as_tensor(dataset.observations.std(0) + 1e-3)
    targets = [net for net in pretrainer.networks() if all(net is not m for m in pretrainer.modules().values())]
    assert targets  # a target network per trained critic (and TD3+BC's policy)
    for net in pretrainer.networks():
        torch.testing.assert_close(net.normalizer.mean, torch.as_tensor(dataset.observations.mean(0)))
        torch.testing.assert_close(net.normalizer.std, expected_std)


def test_the_checkpoint_carries_the_dataset_references_else_the_zoos(tmp_path):
    dataset = synthetic_dataset()
    dataset.env_id, dataset.ref_min_score, dataset.ref_max_score = "Synthetic-v0", -5.0, 50.0
    config = small_config("bc", steps=2)
    extra = load_checkpoint(run_pretraining(config, dataset, tmp_path / "own", progress=False)).metadata["extra"]
    assert (extra["ref_min_score"], extra["ref_max_score"]) == (-5.0, 50.0)

    hopper = dataclasses.replace(synthetic_dataset(), env_id="Hopper-v5")  # widths are not checked here
    extra = load_checkpoint(run_pretraining(config, hopper, tmp_path / "zoo", progress=False)).metadata["extra"]
    entry = zoo_entry("Hopper-v5")
    assert (extra["ref_min_score"], extra["ref_max_score"]) == (entry.ref_min_score, entry.ref_max_score)


def test_run_pretraining_normalises_seeds_and_records(tmp_path):
    dataset = synthetic_dataset()
    dataset.env_id = "Synthetic-v0"
    config = small_config("iql", steps=30, seed=3, dataset="synthetic.hdf5")

    out = run_pretraining(config, dataset, tmp_path / "a", progress=False)
    run_pretraining(config, dataset, tmp_path / "b", progress=False)
    run_pretraining(config.model_copy(update={"seed": 4}), dataset, tmp_path / "c", progress=False)

    assert out == tmp_path / "a"
    ckpt = load_checkpoint(out)
    assert ckpt.metadata["algo"] == "iql" and ckpt.metadata["env_id"] == "Synthetic-v0"
    assert ckpt.metadata["config"]["seed"] == 3
    # No references: the dataset records none and the zoo has no Synthetic-v0 entry.
    extra = ckpt.metadata["extra"]
    assert {key: extra[key] for key in ("steps", "dataset", "ref_min_score", "ref_max_score", "torch_threads")} == {
        "steps": 30, "dataset": "synthetic.hdf5", "ref_min_score": None, "ref_max_score": None, "torch_threads": 1}
    for module in ckpt.modules.values():  # stats of the dataset, in every module
        np.testing.assert_allclose(module.normalizer.mean.numpy(), dataset.observations.mean(0), rtol=1e-5)
        np.testing.assert_allclose(module.normalizer.std.numpy(), dataset.observations.std(0) + 1e-3, rtol=1e-5)
    obs = torch.as_tensor(dataset.observations[:20])
    modes = {name: load_policy(tmp_path / name).mode(obs) for name in "abc"}
    torch.testing.assert_close(modes["a"], modes["b"])  # same seed, same weights
    assert not torch.allclose(modes["a"], modes["c"])


class CountingBC(BCPretrainer):
    """BC whose reported loss is the step number, so each log line's mean is known."""

    def step(self, batch):
        super().step(batch)
        self.count = getattr(self, "count", 0) + 1
        return {"actor_loss": float(self.count), "lr": 3e-4}


def _tensorboard_scalars(path, tag):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(path / "tb"))
    events.Reload()
    return [(event.step, event.value) for event in events.Scalars(tag)]


def test_run_pretraining_logs_its_losses_beside_the_checkpoint(tmp_path, monkeypatch):
    monkeypatch.setitem(PRETRAINERS, "bc", CountingBC)
    config = small_config("bc", steps=25, log_every=10, dataset="synthetic.hdf5")

    out = run_pretraining(config, synthetic_dataset(), tmp_path / "ckpt", progress=False)

    lines = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [line["step"] for line in lines] == [10, 20, 25]
    assert [line["actor_loss"] for line in lines] == [5.5, 15.5, 23.0]  # the means since the last line
    assert all(line["lr"] == 3e-4 and line["steps_per_s"] > 0 for line in lines)
    assert 0 < lines[0]["wall_time_s"] <= lines[1]["wall_time_s"] <= lines[2]["wall_time_s"]
    assert _tensorboard_scalars(out, "pretrain/actor_loss") == [(10, 5.5), (20, 15.5), (25, 23.0)]
    assert [step for step, _ in _tensorboard_scalars(out, "pretrain/steps_per_s")] == [10, 20, 25]
    extra = load_checkpoint(out).metadata["extra"]
    assert extra["steps"] == 25 and extra["dataset"] == "synthetic.hdf5" and extra["final_losses"] == {"actor_loss": 23.0}
    assert extra["wall_time_s"] >= lines[-1]["wall_time_s"]

    run_pretraining(config.model_copy(update={"steps": 10}), synthetic_dataset(), out, progress=False)
    # Pretrained again into the same directory: the new checkpoint's records only.
    assert [json.loads(line)["step"] for line in (out / "metrics.jsonl").read_text().splitlines()] == [10]
    assert len(list((out / "tb").iterdir())) == 1 and _tensorboard_scalars(out, "pretrain/actor_loss") == [(10, 5.5)]


def test_run_pretraining_evaluates_the_current_policy_every_eval_every_steps(tmp_path):
    rng = np.random.default_rng(0)
    dataset = collect_dataset("Pendulum-v1", lambda obs: rng.uniform(-1, 1, size=(obs.shape[0], 1)), 300, progress=False)
    config = small_config("bc", steps=30, log_every=20, eval_every=15, eval_episodes=2)

    out = run_pretraining(config, dataset, tmp_path / "ckpt", progress=False)

    lines = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [line["step"] for line in lines] == [15, 20, 30]
    assert ["eval_return_mean" in line for line in lines] == [True, False, True]
    # The last evaluation is the saved policy's, on the start states of the run's seed and that
    # step; Pendulum has no references.
    saved = load_policy(out)
    final = Evaluator("Pendulum-v1", 2, EVAL_SEED + config.seed).evaluate(saved.arch(), saved.state_dict(), env_step=30)
    assert lines[-1]["eval_return_mean"] == pytest.approx(final["return_mean"])
    assert lines[-1]["eval_return_std"] == pytest.approx(final["return_std"]) and "eval_normalized_score" not in lines[-1]
    assert lines[0]["eval_return_mean"] != lines[-1]["eval_return_mean"] and lines[0]["eval_s"] > 0


def test_run_pretraining_refuses_evaluations_without_the_datasets_env_before_training(tmp_path):
    with pytest.raises(UserError, match="eval_every needs the env the dataset is for: pass --env"):
        run_pretraining(small_config("bc", steps=5, eval_every=5), synthetic_dataset(), tmp_path / "x", progress=False)
    assert not (tmp_path / "x").exists()


def test_run_pretraining_refuses_a_fine_tuning_run_directory(tmp_path):
    (tmp_path / "config.yaml").write_text("algo: porl\n")
    (tmp_path / "metrics.jsonl").write_text('{"env_steps": 0}\n')

    with pytest.raises(UserError, match="is a fine-tuning run directory .* pass another --out"):
        run_pretraining(small_config("bc", steps=5), synthetic_dataset(), tmp_path, progress=False)
    assert (tmp_path / "metrics.jsonl").read_text() == '{"env_steps": 0}\n' and not (tmp_path / "metadata.json").exists()


def test_run_pretraining_without_normalisation_keeps_identity(tmp_path):
    out = run_pretraining(small_config("bc-det", steps=5, normalize_obs=False), synthetic_dataset(), tmp_path, progress=False)
    policy = load_policy(out)
    assert torch.equal(policy.normalizer.mean, torch.zeros(3)) and torch.equal(policy.normalizer.std, torch.ones(3))


# ---------------------------------------------------------------- losses by hand
def test_td3bc_actor_loss_scales_q_by_alpha_over_mean_abs_q():
    q = torch.tensor([1.0, -3.0], requires_grad=True)
    pi = torch.tensor([[0.5], [0.0]])
    actions = torch.tensor([[0.0], [1.0]])

    loss, lam = td3bc_actor_loss(q, pi, actions, alpha=2.5)

    # λ = 2.5 / mean(|1|, |-3|) = 1.25; −λ·mean(q) = 1.25; MSE = (0.25 + 1) / 2 = 0.625.
    assert lam.item() == pytest.approx(1.25) and loss.item() == pytest.approx(1.875)
    loss.backward()
    torch.testing.assert_close(q.grad, torch.tensor([-0.625, -0.625]))  # λ is a constant, not differentiated


def test_iql_expectile_loss_weighs_positive_errors_0_7_and_negative_0_3():
    assert expectile_loss(torch.tensor([2.0]), 0.7).item() == pytest.approx(0.7 * 4)
    assert expectile_loss(torch.tensor([-2.0]), 0.7).item() == pytest.approx(0.3 * 4)
    assert expectile_loss(torch.tensor([2.0, -1.0]), 0.7).item() == pytest.approx((0.7 * 4 + 0.3 * 1) / 2)

    # Minimising it over v for targets {0, 1} gives their 0.7-expectile: 0.7(1 − v) = 0.3v, v = 0.7.
    v = torch.zeros((), requires_grad=True)
    optimizer = torch.optim.SGD([v], lr=0.5)
    for _ in range(200):
        optimizer.zero_grad()
        expectile_loss(torch.tensor([0.0, 1.0]) - v, 0.7).backward()
        optimizer.step()
    assert v.item() == pytest.approx(0.7, abs=1e-4)


def test_iql_advantage_weights_are_exp_beta_a_clipped_at_100():
    weights = advantage_weights(torch.tensor([-1.0, 0.0, 1.0, 10.0, 1e4]), beta=3.0, clip=100.0)
    torch.testing.assert_close(weights, torch.tensor([math.exp(-3.0), 1.0, math.exp(3.0), 100.0, 100.0]))


def test_cql_penalty_by_hand_and_its_sign():
    q_data = torch.zeros(2, 4, requires_grad=True)
    # Critic 0 rates the 5 sampled actions at +2 (overestimates them), critic 1 at −20.
    q_ood = torch.stack([torch.full((4, 5), 2.0), torch.full((4, 5), -20.0)]).requires_grad_(True)
    log_density = torch.full((4, 5), 2 * math.log(0.5))  # uniform over [-1, 1]^2

    penalty = cql_penalty(q_data, q_ood, log_density)

    # logsumexp over 5 equal values c − log p = c − log p + log 5.
    torch.testing.assert_close(penalty, torch.tensor([2.0, -20.0]) - 2 * math.log(0.5) + math.log(5))
    assert penalty[0] > 0 and penalty[0] > penalty[1]
    penalty.sum().backward()
    assert (q_ood.grad > 0).all() and (q_data.grad < 0).all()  # descent lowers unseen actions, raises data

    plain = cql_penalty(q_data, q_ood, None)  # without importance sampling: logsumexp over samples and a_data
    torch.testing.assert_close(plain, torch.stack([torch.logsumexp(torch.tensor([2.0] * 5 + [0.0]), 0),
                                                   torch.logsumexp(torch.tensor([-20.0] * 5 + [0.0]), 0)]))


def test_cql_samples_of_one_policy_forward_are_those_of_separate_draws():
    # The batched forward must keep the maths: a' ~ π(·|s'), then N uniform actions, N samples at s
    # and N at s' (per state, in that order), the same random numbers as drawing them one by one.
    pretrainer = PRETRAINERS["cql"](small_config("cql", cql_num_actions=4), 3, 2, "cpu")
    obs, next_obs = torch.randn(5, 3), torch.randn(5, 3)
    torch.manual_seed(1)
    next_action, actions, log_density = pretrainer._policy_samples(obs, next_obs)
    torch.manual_seed(1)
    with torch.no_grad():
        expected_next, _ = pretrainer.policy.sample(next_obs)
        uniform = torch.rand(5, 4, 2) * 2 - 1
        at_obs, at_next = (pretrainer.policy.sample(o.unsqueeze(1).expand(-1, 4, -1)) for o in (obs, next_obs))
    torch.testing.assert_close(next_action, expected_next)
    torch.testing.assert_close(actions, torch.cat([uniform, at_obs[0], at_next[0]], dim=1))
    torch.testing.assert_close(log_density, torch.cat([torch.full((5, 4), 2 * math.log(0.5)), at_obs[1], at_next[1]], dim=1))


@pytest.mark.slow
def test_cql_critic_ranks_dataset_actions_above_unseen_ones():
    """All dataset actions are near (0.5, 0.5): the CQL critic learns to rate random actions lower;
    without the penalty (cql_alpha 0) it does not."""
    rng = np.random.default_rng(0)
    n = 1000
    dataset = OfflineDataset(
        observations=rng.normal(size=(n, 3)).astype(np.float32),
        actions=np.clip(0.5 + 0.05 * rng.normal(size=(n, 2)), -1, 1).astype(np.float32),
        rewards=rng.normal(size=n).astype(np.float32), next_observations=rng.normal(size=(n, 3)).astype(np.float32),
        terminals=np.ones(n, dtype=bool), timeouts=np.zeros(n, dtype=bool), episode_returns=np.zeros(1), source="synthetic",
    )
    gaps = {}
    for cql_alpha in (10.0, 0.0):
        torch.manual_seed(0)
        pretrainer = PRETRAINERS["cql"](small_config("cql", cql_alpha=cql_alpha), 3, 2, "cpu")
        data = offline_data(dataset)
        for _ in range(300):
            pretrainer.step(data.sample(64))
        obs = torch.as_tensor(dataset.observations[:256])
        with torch.no_grad():
            q_data = pretrainer.critic(obs, torch.as_tensor(dataset.actions[:256])).mean()
            q_random = pretrainer.critic(obs, torch.rand(256, 2) * 2 - 1).mean()
        gaps[cql_alpha] = (q_data - q_random).item()
    assert gaps[10.0] > 1.0 and abs(gaps[0.0]) < 0.5, gaps


# ---------------------------------------------------------------- learning a behaviour policy
def scripted_pendulum(obs: np.ndarray) -> np.ndarray:
    """A smooth swing-up controller: energy pumping far from the top, PD near it (return ≈ −120)."""
    cos, sin, vel = obs[:, 0], obs[:, 1], obs[:, 2]
    energy = 0.5 * vel**2 + 15.0 * cos  # 15 = upright at rest (θ'' = 15 sin θ + 3u in Pendulum-v1)
    pump = np.tanh(0.1 * vel * (15.0 - energy))
    hold = np.tanh(-3.0 * sin - 0.5 * vel)
    near_top = 1.0 / (1.0 + np.exp(-10.0 * (cos - 0.8)))
    return (near_top * hold + (1.0 - near_top) * pump)[:, None].astype(np.float32)


class ScriptedPolicy:
    def act(self, obs: np.ndarray, deterministic: bool) -> np.ndarray:
        return scripted_pendulum(obs)


@pytest.fixture(scope="module")
def pendulum_data() -> tuple[OfflineDataset, OfflineDataset, float]:
    train = collect_dataset("Pendulum-v1", scripted_pendulum, 4000, seed=0, num_envs=4, progress=False)
    held_out = collect_dataset("Pendulum-v1", scripted_pendulum, 1000, seed=100, num_envs=4, progress=False)
    return train, held_out, evaluate_policy(ScriptedPolicy(), "Pendulum-v1", episodes=5).return_mean


@pytest.mark.slow
@pytest.mark.parametrize("algo", ["bc-det", "bc"])
def test_bc_reproduces_a_scripted_behaviour_policy(algo, pendulum_data, tmp_path):
    train, held_out, scripted_return = pendulum_data
    config = PretrainConfig(algo=algo, steps=2000, seed=0, device="cpu")  # default 2×256 networks, lr 3e-4

    policy = load_policy(run_pretraining(config, train, tmp_path, progress=False), env_id="Pendulum-v1")

    with torch.no_grad():
        actions = policy.mode(torch.as_tensor(held_out.observations)).numpy()
    assert np.abs(actions - held_out.actions).mean() < 0.1
    # Within 50 of the scripted return (≈ −120): every episode swings up as the script's does;
    # one failed swing-up costs several hundred.
    assert evaluate_policy(policy, "Pendulum-v1", episodes=5).return_mean > scripted_return - 50.0


# ---------------------------------------------------------------- CLI
@pytest.fixture
def pendulum_file(tmp_path):
    rng = np.random.default_rng(0)
    dataset = collect_dataset("Pendulum-v1", lambda obs: rng.uniform(-1, 1, size=(obs.shape[0], 1)), 300, progress=False)
    return write_dataset(tmp_path / "pendulum.hdf5", dataset, env_id="Pendulum-v1", behavior_policy="random", seed=0)


def test_cli_pretrain_writes_a_loadable_checkpoint(pendulum_file, tmp_path, capsys):
    config_file = tmp_path / "iql.yaml"
    config_file.write_text("hidden: [16, 16]\nsteps: 7\nbatch_size: 16\n")
    out = tmp_path / "ckpt"

    code = main(["pretrain", "--algo", "iql", "--dataset", str(pendulum_file), "--steps", "50", "--out", str(out),
                 "--config", str(config_file), "--set", "batch_size=32", "--seed", "1"])

    assert code == 0
    stdout = capsys.readouterr().out
    assert stdout.count("\n") == 1 and str(out) in stdout and f"iql for 50 steps on {pendulum_file}" in stdout
    assert (out / "metrics.jsonl").is_file() and list((out / "tb").iterdir())
    ckpt = load_checkpoint(out, env_id="Pendulum-v1")
    assert set(ckpt.modules) == {"policy", "critic", "value"} and ckpt.policy.family == "gaussian"
    config = ckpt.metadata["config"]
    # defaults < YAML file < --set < explicit options
    assert (config["steps"], config["batch_size"], config["hidden"], config["seed"]) == (50, 32, [16, 16], 1)
    assert ckpt.metadata["env_id"] == "Pendulum-v1" and ckpt.metadata["extra"]["dataset"] == str(pendulum_file)
    # The records beside the weights do not disturb what reads the checkpoint.
    assert main(["eval", "--policy", str(out), "--episodes", "1", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["env"] == "Pendulum-v1"


@pytest.mark.parametrize("argv, message", [
    (["--algo", "bc", "--set", "no_such_key=1"], "unknown config key 'no_such_key'"),
    (["--algo", "ppo"], "unknown pretraining algorithm 'ppo'"),
])
def test_cli_pretrain_bad_input_is_one_line(argv, message, pendulum_file, tmp_path, capsys):
    code = main(["pretrain", "--dataset", str(pendulum_file), "--steps", "5", "--out", str(tmp_path / "x"), *argv])

    assert code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and message in err
    assert not (tmp_path / "x").exists()
