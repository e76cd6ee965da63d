"""Implicit Q-learning (Kostrikov et al. 2021, CORL defaults): the one IQL update, offline and online.

Per batch: V regresses on min_j Q̄_j(s, a) with an expectile loss; Q regresses on
r + γ(1−d)V(s'); the policy maximises exp(β(Q̄ − V))-weighted log π(a|s) of the batch actions.
`IQLUpdate` holds the networks, target and optimisers; `IQLPretrainer` runs it on D_off and
`IQLFinetune` (algorithms/iql_online.py) keeps running it on D_off ∪ D_on.
"""

from __future__ import annotations

from collections.abc import Hashable, Sequence

import torch
from torch import nn

from distributed_o2o.algorithms.base import Batch
from distributed_o2o.algorithms.capturable import Capturable
from distributed_o2o.algorithms.networks import CriticEnsemble, ValueNetwork, frozen_copy, polyak_update
from distributed_o2o.algorithms.offline.bc import Pretrainer
from distributed_o2o.algorithms.optim import CosineLR, adam, optimizer_step, to_floats
from distributed_o2o.algorithms.policies import GaussianPolicy


def expectile_loss(diff: torch.Tensor, expectile: float) -> torch.Tensor:
    """mean |τ − 1[diff < 0]|·diff²: errors with target above the estimate weigh τ, below 1 − τ."""
    weight = torch.where(diff > 0, expectile, 1.0 - expectile)
    return (weight * diff.pow(2)).mean()


def advantage_weights(advantage: torch.Tensor, beta: float, clip: float) -> torch.Tensor:
    """exp(β·A), capped at `clip` (exp may overflow to inf; the cap still applies)."""
    return torch.exp(beta * advantage).clamp(max=clip)


def iql_networks(obs_dim: int, act_dim: int, hidden: Sequence[int], policy: GaussianPolicy | None = None,
                 critic: CriticEnsemble | None = None, value: ValueNetwork | None = None
                 ) -> tuple[GaussianPolicy, CriticEnsemble, ValueNetwork]:
    """The given networks, with fresh ones (twin critic without LayerNorm, as CORL) for those missing.

    A fresh critic or value network copies the policy's observation normaliser.
    """
    policy = policy if policy is not None else GaussianPolicy(obs_dim, act_dim, hidden)
    if critic is None:
        critic = CriticEnsemble(obs_dim, act_dim, num_critics=2, hidden=hidden, layer_norm=False)
        critic.normalizer.load_state_dict(policy.normalizer.state_dict())
    if value is None:
        value = ValueNetwork(obs_dim, hidden)
        value.normalizer.load_state_dict(policy.normalizer.state_dict())
    return policy, critic, value


class IQLUpdate(Capturable):
    """IQL's networks, Polyak target critic and optimisers, and one gradient step (`Capturable`).

    `config` supplies gamma, tau, lr, iql_expectile, iql_beta, iql_adv_clip (PretrainConfig and
    IQLFinetuneConfig both do). `schedule_steps`: cosine-anneal the actor LR over that many steps.
    """

    compiled = ("value_loss", "critic_loss", "actor_loss")
    compiled_steps = ("update_target",)

    def __init__(self, config, policy: GaussianPolicy, critic: CriticEnsemble, value: ValueNetwork,
                 schedule_steps: int | None = None):
        self.config, self.policy, self.critic, self.value = config, policy, critic, value
        device = next(policy.parameters()).device
        self.critic_target = frozen_copy(critic)
        self.policy_optimizer = adam(policy.parameters(), config.lr, device)
        self.critic_optimizer = adam(critic.parameters(), config.lr, device)
        self.value_optimizer = adam(value.parameters(), config.lr, device)
        self.policy_schedule = CosineLR(self.policy_optimizer, schedule_steps, device) if schedule_steps else None

    def value_loss(self, batch: Batch) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """The expectile loss of V(s) toward min_j Q̄_j(s, a); also the advantage and V(s') (both
        from V before its step)."""
        with torch.no_grad():
            target_q = self.critic_target(batch.obs, batch.actions).min(dim=0).values
            next_v = self.value(batch.next_obs)
        advantage = target_q - self.value(batch.obs)
        return expectile_loss(advantage, self.config.iql_expectile), advantage.detach(), next_v

    def critic_loss(self, batch: Batch, next_v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        q = self.critic(batch.obs, batch.actions)
        target = batch.rewards + self.config.gamma * (1.0 - batch.terminals) * next_v
        return (q - target).pow(2).mean(), q.detach().mean()  # mean over critics of their MSEs, as in CORL

    def actor_loss(self, batch: Batch, advantage: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        weights = advantage_weights(advantage, self.config.iql_beta, self.config.iql_adv_clip)
        return -(weights * self.policy.log_prob(batch.obs, batch.actions)).mean(), weights.mean()

    def update_target(self) -> None:
        polyak_update(self.critic_target, self.critic, self.config.tau)

    def update_tensors(self, batch: Batch, phase: Hashable) -> dict[str, torch.Tensor]:
        value_loss, advantage, next_v = self.value_loss(batch)
        optimizer_step(self.value_optimizer, value_loss, self.value.parameters())
        critic_loss, q_mean = self.critic_loss(batch, next_v)
        optimizer_step(self.critic_optimizer, critic_loss, self.critic.parameters())
        actor_loss, weight_mean = self.actor_loss(batch, advantage)
        optimizer_step(self.policy_optimizer, actor_loss, self.policy.parameters())
        if self.policy_schedule is not None:
            self.policy_schedule.step()
        self.update_target()
        return {"value_loss": value_loss.detach(), "critic_loss": critic_loss.detach(), "actor_loss": actor_loss.detach(),
                "q_mean": q_mean, "adv_weight_mean": weight_mean}

    def step(self, batch: Batch) -> dict[str, float]:
        return to_floats(self.update_tensors(batch, self.prepare(0)))

    def optimizers(self) -> list[torch.optim.Optimizer]:
        return [self.value_optimizer, self.critic_optimizer, self.policy_optimizer]

    def modules(self) -> dict[str, nn.Module]:
        return {"policy": self.policy, "critic": self.critic, "value": self.value}

    def state_dict(self) -> dict:
        state = {name: module.state_dict() for name, module in self.modules().items()}
        state |= {
            "critic_target": self.critic_target.state_dict(),
            "policy_optimizer": self.policy_optimizer.state_dict(),
            "critic_optimizer": self.critic_optimizer.state_dict(),
            "value_optimizer": self.value_optimizer.state_dict(),
        }
        if self.policy_schedule is not None:
            state["policy_schedule"] = self.policy_schedule.state_dict()
        return state

    def load_state_dict(self, state: dict) -> None:
        for name, module in self.modules().items():
            module.load_state_dict(state[name])
        self.critic_target.load_state_dict(state["critic_target"])
        self.policy_optimizer.load_state_dict(state["policy_optimizer"])
        self.critic_optimizer.load_state_dict(state["critic_optimizer"])
        self.value_optimizer.load_state_dict(state["value_optimizer"])
        if self.policy_schedule is not None:
            self.policy_schedule.load_state_dict(state["policy_schedule"])


class IQLPretrainer(Pretrainer):
    def __init__(self, config, obs_dim, act_dim, device):
        super().__init__(config, obs_dim, act_dim, device)
        networks = [net.to(device) for net in iql_networks(obs_dim, act_dim, config.hidden)]
        schedule_steps = config.steps if config.iql_cosine_actor_schedule else None
        self.update = IQLUpdate(config, *networks, schedule_steps=schedule_steps)

    def update_tensors(self, batch: Batch, phase: Hashable) -> dict[str, torch.Tensor]:
        return self.update.update_tensors(batch, phase)

    def optimizers(self) -> list[torch.optim.Optimizer]:
        return self.update.optimizers()

    def compile_losses(self) -> None:
        self.update.compile_losses()

    def modules(self) -> dict[str, nn.Module]:
        return self.update.modules()

    def networks(self) -> list[nn.Module]:
        return [*super().networks(), self.update.critic_target]
