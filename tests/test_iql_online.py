"""IQL online fine-tuning: the offline IQL update continued on D_off ∪ D_on."""

from __future__ import annotations

import copy
import math

import pytest
import torch

from distributed_o2o.algorithms.base import Batch
from distributed_o2o.algorithms.iql_online import IQLFinetune
from distributed_o2o.algorithms.offline.iql import IQLPretrainer
from distributed_o2o.algorithms.offline.train import set_obs_stats
from distributed_o2o.config import IQLFinetuneConfig, PretrainConfig, RuntimeConfig

OBS_DIM, ACT_DIM = 3, 2


def synthetic_batch(seed: int, size: int = 64) -> Batch:
    g = torch.Generator().manual_seed(seed)
    obs = torch.randn(size, OBS_DIM, generator=g) * 2.0 + 1.0
    return Batch(obs=obs, actions=torch.rand(size, ACT_DIM, generator=g) * 2 - 1, rewards=obs[:, 0].clone(),
                 next_obs=obs + 0.1 * torch.randn(size, OBS_DIM, generator=g),
                 terminals=(torch.rand(size, generator=g) < 0.2).float())


def config(**kwargs) -> IQLFinetuneConfig:
    return IQLFinetuneConfig(hidden=[32, 32], runtime=RuntimeConfig(device="cpu"), **kwargs)


@pytest.fixture
def pretrained() -> IQLPretrainer:
    """An IQL pretrainer's networks with non-trivial observation statistics."""
    torch.manual_seed(0)
    pretrainer = IQLPretrainer(PretrainConfig(algo="iql", hidden=[32, 32], steps=10), OBS_DIM, ACT_DIM, "cpu")
    set_obs_stats(pretrainer.networks(), (torch.randn(500, OBS_DIM) * 3 + 2).numpy(), 1e-3)
    for seed in range(5):
        pretrainer.step(synthetic_batch(seed))
    return pretrainer


def params(module: torch.nn.Module) -> list[torch.Tensor]:
    return [p.detach().clone() for p in module.parameters()]


def test_updates_change_policy_critic_and_value(pretrained):
    modules = pretrained.modules()
    algo = IQLFinetune(config(), OBS_DIM, ACT_DIM, "cpu", policy=modules["policy"], critic=modules["critic"],
                       value=modules["value"])
    assert algo.modules()["policy"] is modules["policy"] and algo.modules()["value"] is modules["value"]
    before = {name: params(module) for name, module in algo.modules().items()}

    history = [algo.update(synthetic_batch(100 + i), env_step=i) for i in range(3)]

    assert set(history[0]) >= {"critic_loss", "value_loss", "actor_loss", "q_mean"}
    assert all(math.isfinite(v) for metrics in history for v in metrics.values())
    for name, module in algo.modules().items():
        changed = [not torch.equal(a, b) for a, b in zip(before[name], params(module))]
        assert any(changed), name


def test_fresh_value_network_copies_the_policy_normaliser(pretrained):
    modules = pretrained.modules()
    algo = IQLFinetune(config(), OBS_DIM, ACT_DIM, "cpu", policy=modules["policy"], critic=modules["critic"])

    value = algo.modules()["value"]
    assert value is not modules["value"]
    torch.testing.assert_close(value.normalizer.mean, modules["policy"].normalizer.mean)
    torch.testing.assert_close(value.normalizer.std, modules["policy"].normalizer.std)
    assert not torch.equal(value.normalizer.mean, torch.zeros(OBS_DIM))


def test_acting_schedule_and_sampling():
    algo = IQLFinetune(config(utd=3, learning_starts=100), OBS_DIM, ACT_DIM, "cpu")

    assert algo.acting(0).deterministic is False and algo.acting(0).uniform is False
    assert algo.acting_policy().family == "gaussian"
    assert (algo.updates_due(0), algo.updates_due(99), algo.updates_due(100)) == (0, 0, 3)
    assert algo.offline_ratio(0) == algo.offline_ratio(10_000) == 0.5


def test_state_dict_round_trip_reproduces_the_next_update(pretrained):
    modules = pretrained.modules()
    first = IQLFinetune(config(), OBS_DIM, ACT_DIM, "cpu", policy=modules["policy"], critic=modules["critic"],
                        value=modules["value"])
    for i in range(3):  # optimiser moments and the target are now non-trivial
        first.update(synthetic_batch(200 + i), env_step=i)
    state = copy.deepcopy(first.state_dict())
    torch.manual_seed(123)
    second = IQLFinetune(config(), OBS_DIM, ACT_DIM, "cpu")  # different fresh weights
    second.load_state_dict(state)

    batch = synthetic_batch(300)
    metrics_first, metrics_second = first.update(batch, 3), second.update(batch, 3)

    assert metrics_first == metrics_second
    for name, module in first.modules().items():
        for a, b in zip(params(module), params(second.modules()[name])):
            torch.testing.assert_close(a, b, rtol=0, atol=0)
    for a, b in zip(params(first.iql.critic_target), params(second.iql.critic_target)):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
