"""Loss-level tests of the TD3 core and O2TD3 (stages A, B, hand-over, C)."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch

from distributed_o2o.algorithms.base import Batch, OfflineData
from distributed_o2o.algorithms.o2td3 import O2TD3, action_divergence, alignment_distance, alignment_target
from distributed_o2o.config import O2TD3Config

OBS_DIM, ACT_DIM = 3, 2


def make_config(**overrides) -> O2TD3Config:
    return O2TD3Config(hidden=[32, 32], batch_size=16, **overrides)


def make_algo(seed: int = 0, **overrides) -> O2TD3:
    torch.manual_seed(seed)
    algo = O2TD3(make_config(**overrides), OBS_DIM, ACT_DIM, torch.device("cpu"))
    rng = np.random.default_rng(seed)
    n = 64
    algo.set_offline_data(OfflineData({
        "observations": rng.normal(size=(n, OBS_DIM)), "actions": rng.uniform(-1, 1, (n, ACT_DIM)),
        "rewards": rng.normal(size=n), "next_observations": rng.normal(size=(n, OBS_DIM)),
        "terminals": np.zeros(n), "timeouts": np.zeros(n)}, "cpu"))
    return algo


def random_batch(size: int, seed: int = 1, terminals=None) -> Batch:
    g = torch.Generator().manual_seed(seed)
    return Batch(torch.randn(size, OBS_DIM, generator=g), torch.rand(size, ACT_DIM, generator=g) * 2 - 1,
                 torch.randn(size, generator=g), torch.randn(size, OBS_DIM, generator=g),
                 torch.zeros(size) if terminals is None else torch.tensor(terminals, dtype=torch.float32))


def perturb(module: torch.nn.Module, scale: float = 0.5, seed: int = 3) -> None:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.add_(scale * torch.randn(p.shape, generator=g))


def stage_step(algo: O2TD3, name: str) -> dict[str, float]:
    """One eager step of the offline stage `name` (a batch of D_off)."""
    return next(stage for stage in algo.offline_stages() if stage.name == name).step()


def same_params(a: torch.nn.Module, b: torch.nn.Module) -> bool:
    return all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values()))


def terminal_and_truncated_pair() -> Batch:
    """Two copies of one transition: the first terminated, the second truncated (terminal 0)."""
    one = random_batch(1)
    twice = lambda t: torch.cat([t, t])  # noqa: E731
    return Batch(twice(one.obs), twice(one.actions), twice(one.rewards), twice(one.next_obs), torch.tensor([1.0, 0.0]))


@pytest.mark.parametrize("stage", ["reevaluate", "online"])
def test_target_bootstraps_through_truncation_not_termination(stage):
    algo = make_algo()
    perturb(algo.policy)  # π_θ ≠ π_ref so the online penalty is non-zero
    batch = terminal_and_truncated_pair()
    target_fn = algo.reevaluation_target if stage == "reevaluate" else algo.bootstrap_target
    next_policy = algo.policy_offline if stage == "reevaluate" else algo.policy_target
    torch.manual_seed(5)
    target = target_fn(batch)
    torch.manual_seed(5)
    next_action = algo.smoothed_action(next_policy, batch.next_obs)
    with torch.no_grad():
        next_q = algo.critic_target(batch.next_obs, next_action).min(dim=0).values
        if stage == "online":
            next_q -= algo.lagrange.value * action_divergence(algo.reference.policy.mode(batch.next_obs),
                                                                algo.policy.mode(batch.next_obs))
    assert target[0] == batch.rewards[0]
    assert torch.allclose(target[1], batch.rewards[1] + algo.config.gamma * next_q[1])
    assert not torch.isclose(target[1], batch.rewards[1])


def test_online_penalty_is_per_sample():
    algo = make_algo(constraint={"lambda_init": 2.0})
    perturb(algo.policy)
    batch = random_batch(2)
    torch.manual_seed(5)
    penalised = algo.bootstrap_target(batch)
    torch.manual_seed(5)
    plain = algo.td_target(batch, algo.policy_target)
    with torch.no_grad():
        divergence = action_divergence(algo.reference.policy.mode(batch.next_obs), algo.policy.mode(batch.next_obs))
    gap = plain - penalised
    assert torch.allclose(gap, algo.config.gamma * 2.0 * divergence, rtol=1e-4)
    # Different next states, different penalties: a batch-mean scalar would give equal gaps.
    assert abs(float(gap[0] - gap[1])) > 1e-3


def test_alignment_target_branches():
    q_star = torch.tensor([-2.0, 3.0, 0.0, 3.0])
    delta = torch.tensor([0.1, 0.2, 0.2, 0.2])
    target_q_noisy = torch.tensor([[-1.0, 10.0, 1.0, 2.0], [-5.0, 10.0, -1.0, 10.0]])
    target = alignment_target(q_star, target_q_noisy, delta, beta=1.0)
    shrunk = torch.tensor([-2.0 * (1 + 0.1**2), 3.0 / (1 + 0.2**2), 0.0, 3.0 / (1 + 0.2**2)])
    assert torch.allclose(target, torch.minimum(shrunk, target_q_noisy))
    assert (target <= q_star).all() and (target <= target_q_noisy).all()
    assert target[0, 0] < q_star[0] and target[0, 1] < q_star[1]  # both branches shrink away from 0
    assert target[1, 3] == 3.0 / (1 + 0.2**2) and target[0, 3] == 2.0  # each member's own min


def test_alignment_distance_is_normalised_and_capped():
    offline = torch.zeros(2, ACT_DIM)
    noisy = torch.tensor([[0.1, 0.1], [1.0, 1.0]])
    assert torch.allclose(alignment_distance(noisy, offline, 0.2), torch.tensor([0.1, 0.2]))


def test_reevaluation_moves_critic_targets_only():
    algo = make_algo()
    policy, critic_target = copy.deepcopy(algo.policy), copy.deepcopy(algo.critic_target)
    metrics = stage_step(algo, "reevaluate")
    assert set(metrics) == {"critic_loss", "q_mean"}
    assert same_params(algo.policy, policy) and same_params(algo.policy_offline, policy)
    assert not same_params(algo.critic_target, critic_target)


def test_alignment_keeps_targets_and_offline_policy_frozen():
    algo = make_algo()
    for _ in range(3):
        stage_step(algo, "reevaluate")
    frozen = {name: copy.deepcopy(getattr(algo, name)) for name in ("critic_target", "policy_target", "policy_offline")}
    policy, critic = copy.deepcopy(algo.policy), copy.deepcopy(algo.critic)
    for _ in range(3):
        metrics = stage_step(algo, "align")
    assert all(np.isfinite(v) for v in metrics.values())
    assert all(same_params(getattr(algo, name), module) for name, module in frozen.items())
    assert not same_params(algo.policy, policy) and not same_params(algo.critic, critic)


def test_delayed_actor_and_target_updates():
    algo = make_algo(policy_delay=2)
    policy, critic_target = copy.deepcopy(algo.policy), copy.deepcopy(algo.critic_target)
    first = algo.update(random_batch(16), env_step=2000)
    assert "actor_loss" not in first
    assert same_params(algo.policy, policy) and same_params(algo.critic_target, critic_target)
    second = algo.update(random_batch(16, seed=2), env_step=2000)
    assert {"actor_loss", "lambda", "divergence", "threshold"} <= set(second)
    assert not same_params(algo.policy, policy) and not same_params(algo.critic_target, critic_target)


@pytest.mark.parametrize("far_from_reference", [True, False])
def test_lambda_rises_above_threshold_and_falls_below(far_from_reference):
    algo = make_algo(policy_delay=1, constraint={"lambda_lr": 1e-2})
    if far_from_reference:
        perturb(algo.policy, scale=2.0)  # D ≫ ε; otherwise π_θ starts at π_ref and D ≈ 0 < ε
    start = float(algo.lagrange.value)
    for i in range(10):
        metrics = algo.update(random_batch(16, seed=i), env_step=200_000)
        assert (metrics["divergence"] > metrics["threshold"]) == far_from_reference
    assert (float(algo.lagrange.value) > start) == far_from_reference
    assert float(algo.lagrange.value) != start


@pytest.mark.parametrize("aligned_better", [True, False])
def test_handover_picks_the_better_policy(aligned_better):
    algo = make_algo()
    perturb(algo.policy)  # the "aligned" π_θ differs from π_off
    scores = {id(algo.policy): 2.0 if aligned_better else 1.0, id(algo.policy_offline): 1.5}
    result = algo.handover(lambda p: scores[id(p)])
    winner = algo.policy if aligned_better else algo.policy_offline
    assert same_params(algo.reference.policy, winner)
    assert result["reference_is_aligned"] == float(aligned_better)
    assert algo.acting_policy() is algo.policy
    assert same_params(algo.policy_target, algo.policy) and same_params(algo.critic_target, algo.critic)


def test_reference_replaced_only_on_better_evaluation():
    algo = make_algo()
    algo.handover(lambda p: 10.0)
    reference = copy.deepcopy(algo.reference.policy)
    perturb(algo.policy)
    algo.on_evaluation(5.0, 1000, algo.deployed_policy().state_dict())
    assert same_params(algo.reference.policy, reference)
    algo.on_evaluation(15.0, 2000, algo.deployed_policy().state_dict())
    assert same_params(algo.reference.policy, algo.policy)
    perturb(algo.policy, seed=4)  # π_ref is a copy, not an alias
    assert not same_params(algo.reference.policy, algo.policy)


def test_schedule_and_acting():
    algo = make_algo()
    cfg = algo.config
    assert algo.updates_due(cfg.learning_starts - 1) == 0 and algo.updates_due(cfg.learning_starts) == cfg.utd
    assert algo.offline_ratio(0) == cfg.offline_ratio
    spec = algo.acting(0)
    assert spec.deterministic and spec.gaussian_sigma == cfg.explore_sigma and not spec.uniform


def test_state_dict_round_trip_reproduces_next_update():
    algo = make_algo(policy_delay=2)
    perturb(algo.policy)
    stage_step(algo, "reevaluate")
    stage_step(algo, "align")
    for i in range(3):
        algo.update(random_batch(16, seed=i), env_step=5000)
    algo.on_evaluation(3.0, 5000, algo.deployed_policy().state_dict())
    state = copy.deepcopy(algo.state_dict())
    restored = make_algo(seed=9, policy_delay=2)
    restored.load_state_dict(state)
    batch = random_batch(16, seed=42)
    torch.manual_seed(7)
    expected = algo.update(batch, env_step=6000)  # the 4th critic step: an actor step too
    torch.manual_seed(7)
    got = restored.update(batch, env_step=6000)
    assert "lambda" in expected and got == expected
    for key, value in algo.state_dict().items():
        if isinstance(value, dict) and key.endswith(("policy", "critic", "target", "offline")):
            assert all(torch.equal(value[k], restored.state_dict()[key][k]) for k in value)
    assert restored.reference.best_score == 3.0
