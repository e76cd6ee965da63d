"""Loss-level tests of O2PPO: Monte-Carlo value targets, GAE, advantage shaping, π_ref, resume."""

from __future__ import annotations

import copy

import numpy as np
import torch

from distributed_o2o.algorithms.base import OfflineData, Rollout
from distributed_o2o.algorithms.o2ppo import O2PPO, discounted_returns, gae, reference_advantage, shaped_advantage
from distributed_o2o.config import O2PPOConfig

OBS_DIM, ACT_DIM = 3, 2
GAMMA = 0.99


def make_algo(seed: int = 0, **overrides) -> O2PPO:
    torch.manual_seed(seed)
    config = O2PPOConfig(hidden=[32, 32], minibatch_size=16, epochs=2, shaping_end_steps=1000, **overrides)
    return O2PPO(config, OBS_DIM, ACT_DIM, torch.device("cpu"))


def random_rollout(steps: int = 8, envs: int = 2, seed: int = 1) -> Rollout:
    g = torch.Generator().manual_seed(seed)
    dones = (torch.rand(steps, envs, generator=g) < 0.2).float()
    return Rollout(obs=torch.randn(steps, envs, OBS_DIM, generator=g),
                   actions=torch.randn(steps, envs, ACT_DIM, generator=g),
                   rewards=torch.randn(steps, envs, generator=g),
                   next_obs=torch.randn(steps, envs, OBS_DIM, generator=g),
                   terminals=dones * (torch.rand(steps, envs, generator=g) < 0.5).float(), dones=dones)


def same_params(a: torch.nn.Module, b: torch.nn.Module) -> bool:
    return all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values()))


def test_mc_returns_split_on_timeouts_and_terminals():
    rewards = torch.tensor([1.0, 1.0, 1.0, 100.0, 100.0, 5.0, 7.0])
    terminals = torch.tensor([0.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0])
    timeouts = torch.tensor([0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0])
    returns = discounted_returns(rewards, terminals, timeouts, GAMMA)
    expected = [1 + GAMMA + GAMMA**2, 1 + GAMMA, 1.0, 100 + GAMMA * 100, 100.0, 5 + GAMMA * 7, 7.0]
    assert torch.allclose(returns, torch.tensor(expected))


def test_offline_data_gives_mc_returns_and_value_regression_fits_them():
    algo = make_algo(value_lr=1e-3, value_batch_size=64)
    rng = np.random.default_rng(0)
    n = 64
    obs = rng.normal(size=(n, OBS_DIM))
    rewards = obs[:, 0]  # returns depend on the state, so V can fit them
    timeouts = np.zeros(n)
    timeouts[31] = 1.0
    algo.set_offline_data(OfflineData({
        "observations": obs, "actions": rng.uniform(-1, 1, (n, ACT_DIM)), "rewards": rewards,
        "next_observations": np.roll(obs, -1, axis=0), "terminals": np.zeros(n), "timeouts": timeouts}, "cpu"))
    data = algo.offline_data
    assert torch.allclose(algo.mc_returns, discounted_returns(data.rewards, data.terminals, data.timeouts, GAMMA))
    assert algo.mc_returns[31] == data.rewards[31]  # the timeout ends the first episode
    (stage,) = algo.offline_stages()
    assert stage.steps == algo.config.reevaluate_steps
    first = stage.step()["value_loss"]
    for _ in range(150):
        last = stage.step()["value_loss"]
    assert last < 0.5 * first


def test_gae_bootstraps_through_truncation_not_termination():
    rewards, values, next_values = torch.ones(1, 2), torch.full((1, 2), 0.5), torch.full((1, 2), 2.0)
    adv = gae(rewards, values, next_values, terminals=torch.tensor([[1.0, 0.0]]), dones=torch.ones(1, 2), gamma=GAMMA, lam=0.95)
    assert torch.allclose(adv, torch.tensor([[1.0 - 0.5, 1.0 + GAMMA * 2.0 - 0.5]]))


def test_gae_recursion_stops_at_episode_ends():
    g = torch.Generator().manual_seed(0)
    rewards, values, next_values = (torch.randn(3, 1, generator=g) for _ in range(3))
    lam = 0.9
    deltas = rewards + GAMMA * next_values - values
    no_end = gae(rewards, values, next_values, torch.zeros(3, 1), torch.zeros(3, 1), GAMMA, lam)
    assert torch.allclose(no_end[0], deltas[0] + GAMMA * lam * deltas[1] + (GAMMA * lam) ** 2 * deltas[2])
    truncated_at_1 = gae(rewards, values, next_values, torch.zeros(3, 1), torch.tensor([[0.0], [1.0], [0.0]]), GAMMA, lam)
    assert torch.allclose(truncated_at_1[0], deltas[0] + GAMMA * lam * deltas[1])
    assert torch.allclose(truncated_at_1[1], deltas[1])  # still bootstrapped from V(next_obs)


def test_value_targets_bootstrap_through_truncation_not_termination():
    algo = make_algo(normalize_advantages=False)
    obs, next_obs = torch.randn(1, 1, OBS_DIM).expand(1, 2, -1), torch.randn(1, 1, OBS_DIM).expand(1, 2, -1)
    rollout = Rollout(obs=obs, actions=torch.zeros(1, 2, ACT_DIM), rewards=torch.ones(1, 2), next_obs=next_obs,
                      terminals=torch.tensor([[1.0, 0.0]]), dones=torch.ones(1, 2))
    _, value_targets = algo.advantages(rollout, env_step=10_000)
    with torch.no_grad():
        bootstrap = algo.value(next_obs[0, :1])[0]
    assert torch.allclose(value_targets, torch.stack([torch.tensor(1.0), 1.0 + GAMMA * bootstrap]))


def test_shaping_weight_decays_to_zero_and_stays():
    algo = make_algo()
    end = algo.config.shaping_end_steps
    weights = [algo.shaping_weight(t) for t in (0, end // 4, end // 2, end, end + 1, 10 * end)]
    assert weights[:3] == [1.0, 0.75, 0.5] and weights[3:] == [0.0, 0.0, 0.0]
    adv, adv_ref = torch.randn(10), torch.randn(10)
    assert torch.equal(shaped_advantage(adv, adv_ref, 0.0), adv)
    assert torch.allclose(shaped_advantage(adv, adv_ref, 1.0), (adv + adv_ref) / 2)


def test_reference_advantage_favours_actions_likely_under_reference():
    algo = make_algo()
    ref = algo.reference.policy
    obs = torch.randn(2, OBS_DIM)
    with torch.no_grad():
        mean = ref.mode(obs)
        actions = torch.stack([mean[0], mean[1] + 10.0])  # at π_ref's mean / far in its tail
        log_prob, entropy = ref.log_prob(obs, actions), ref.entropy()
    adv = torch.tensor([1.0, -1.0])
    adv_ref = reference_advantage(adv, log_prob, entropy, ACT_DIM, alpha=2.0)
    assert adv_ref[0] > 0 > adv_ref[1]
    assert adv_ref[1] >= -2.0 / ACT_DIM * adv.std() * 4 * ACT_DIM - 1e-5  # the softplus floor
    assert torch.allclose(reference_advantage(3 * adv, log_prob, entropy, ACT_DIM, 2.0), 3 * adv_ref)  # scales with σ(A)
    # Through the algorithm: with equal raw advantages, shaping ranks the likely action higher.
    rollout = Rollout(obs=obs.unsqueeze(1), actions=actions.unsqueeze(1), rewards=torch.zeros(2, 1),
                      next_obs=obs.unsqueeze(1), terminals=torch.zeros(2, 1), dones=torch.ones(2, 1))
    shaped, _ = algo.advantages(rollout, env_step=0)
    unshaped, _ = algo.advantages(rollout, env_step=algo.config.shaping_end_steps)
    assert shaped[0] - shaped[1] > unshaped[0] - unshaped[1]


def test_handover_and_reference_replacement():
    algo = make_algo()
    start = copy.deepcopy(algo.policy)
    result = algo.handover(lambda p: 10.0)
    assert result == {"score_offline": 10.0}
    assert same_params(algo.reference.policy, start)
    algo.update_rollout(random_rollout(), env_step=0)
    assert not same_params(algo.policy, start)
    algo.on_evaluation(5.0, 2048, algo.deployed_policy().state_dict())
    assert same_params(algo.reference.policy, start)
    algo.on_evaluation(15.0, 4096, algo.deployed_policy().state_dict())
    assert same_params(algo.reference.policy, algo.policy)


def test_interface():
    algo = make_algo()
    assert algo.on_policy and algo.rollout_steps == algo.config.rollout_steps
    assert algo.updates_due(10_000) == 0
    spec = algo.acting(0)
    assert not spec.deterministic and spec.store_raw_actions
    assert set(algo.modules()) == {"policy", "value"}


def test_state_dict_round_trip_reproduces_next_update():
    algo = make_algo()
    algo.update_rollout(random_rollout(seed=1), env_step=100)
    algo.on_evaluation(3.0, 100, algo.deployed_policy().state_dict())
    restored = make_algo(seed=9)
    restored.load_state_dict(copy.deepcopy(algo.state_dict()))
    rollout = random_rollout(seed=2)
    torch.manual_seed(7)
    expected = algo.update_rollout(rollout, env_step=200)
    torch.manual_seed(7)
    got = restored.update_rollout(rollout, env_step=200)
    assert got == expected and all(np.isfinite(v) for v in got.values())
    assert same_params(algo.policy, restored.policy) and same_params(algo.value, restored.value)
    assert restored.reference.best_score == 3.0
