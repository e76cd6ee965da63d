import math
from collections import Counter

import pytest
import torch

from distributed_o2o.algorithms.networks import CriticEnsemble, random_members
from distributed_o2o.algorithms.policies import FAMILIES, build_policy, convert_policy
from distributed_o2o.evaluation import evaluate_policy


@pytest.mark.parametrize("target", sorted(FAMILIES))
@pytest.mark.parametrize("source", sorted(FAMILIES))
def test_conversion_keeps_the_mode(source, target):
    torch.manual_seed(0)
    policy = build_policy({"family": source, "obs_dim": 4, "act_dim": 2, "hidden": [16]})
    converted = convert_policy(policy, target)
    obs = torch.randn(32, 4)
    torch.testing.assert_close(converted.mode(obs), policy.mode(obs))
    if converted.stochastic:
        action, log_prob = converted.sample(obs)
        assert action.abs().max() <= 1.0 + 1e-6 or target == "gaussian"
        torch.testing.assert_close(converted.log_prob(obs, action), log_prob, atol=2e-3, rtol=1e-3)


def test_deterministic_to_tanh_gaussian_uses_sigma0():
    policy = build_policy({"family": "deterministic", "obs_dim": 3, "act_dim": 2, "hidden": [8]})
    converted = convert_policy(policy, "tanh_gaussian", init_std=0.1)
    _, log_std = converted.mean_and_log_std(torch.zeros(1, 3))
    torch.testing.assert_close(log_std.exp(), torch.full((1, 2), 0.1))
    assert converted.log_std_param.requires_grad


@pytest.mark.parametrize("target", ["tanh_gaussian", "gaussian"])
def test_conversion_keeps_the_evaluation_score(target):
    """A converted policy's deterministic score equals the source's (same actions, same seeds)."""
    torch.manual_seed(1)
    source = build_policy({"family": "deterministic", "obs_dim": 3, "act_dim": 1, "hidden": [32]})
    before = evaluate_policy(source, "Pendulum-v1", episodes=3, seed=5)
    after = evaluate_policy(convert_policy(source, target), "Pendulum-v1", episodes=3, seed=5)
    assert after.return_mean == pytest.approx(before.return_mean, rel=1e-4)


@pytest.mark.parametrize("num_min", [2, 3])
def test_random_critic_members_are_distinct_and_every_subset_is_equally_likely(num_min):
    torch.manual_seed(0)
    draws = 6000
    subsets = Counter(tuple(sorted(random_members(5, num_min, torch.device("cpu")).tolist())) for _ in range(draws))
    assert all(len(set(subset)) == num_min for subset in subsets)
    assert len(subsets) == math.comb(5, num_min)  # every subset drawn
    expected = draws / math.comb(5, num_min)
    assert all(abs(count - expected) < 5 * math.sqrt(expected) for count in subsets.values())


def test_the_compiled_readout_of_a_critic_computes_its_matrix_product_and_gradients(monkeypatch):
    # Under torch.compile a one-output layer is a sum of products (EnsembleLinear); here that path
    # runs eagerly (is_compiling patched) against the `bmm` one, values and every gradient.
    torch.manual_seed(0)
    critic = CriticEnsemble(3, 2, num_critics=4, hidden=[8, 8])
    obs, act, members = torch.randn(6, 3), torch.randn(6, 2), torch.tensor([3, 1])
    results = []
    for compiling in (False, True):
        monkeypatch.setattr(torch.compiler, "is_compiling", lambda compiling=compiling: compiling)
        q, q_members = critic(obs, act), critic(obs, act, members)
        results.append((q, q_members, torch.autograd.grad((q.sum() + q_members.pow(2).sum()), list(critic.parameters()))))
    (q, q_members, grads), (q_sum, q_members_sum, grads_sum) = results
    torch.testing.assert_close(q_sum, q)
    torch.testing.assert_close(q_members_sum, q_members)
    for g, g_sum in zip(grads, grads_sum, strict=True):
        torch.testing.assert_close(g_sum, g)


def test_ensemble_members_are_independent_and_batched():
    torch.manual_seed(0)
    critic = CriticEnsemble(3, 2, num_critics=5, hidden=[8, 8])
    q = critic(torch.randn(6, 3), torch.randn(6, 2))
    assert q.shape == (5, 6)
    assert len(torch.unique(q[:, 0])) == 5
    obs, act = torch.randn(6, 3), torch.randn(6, 2)
    q = critic(obs, act)
    assert torch.equal(critic.min_q(obs, act, 5), q.min(0).values)
    # A min over 2 random members evaluates only those two, and equals the min of their rows.
    members = torch.tensor([3, 1])
    torch.testing.assert_close(critic(obs, act, members), q[members])
    subsampled = critic.min_q(obs, act, 2)
    assert (subsampled >= q.min(0).values).all()
    assert any(torch.allclose(subsampled, q[[i, j]].min(0).values) for i in range(5) for j in range(5) if i != j)
