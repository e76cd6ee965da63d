"""TD3+BC (Fujimoto & Gu 2021, CORL defaults): TD3 whose actor also regresses onto dataset actions."""

from __future__ import annotations

from collections.abc import Hashable

import torch
from torch import nn

from distributed_o2o.algorithms.base import Batch
from distributed_o2o.algorithms.capturable import PhaseCycle
from distributed_o2o.algorithms.networks import CriticEnsemble, frozen_copy, polyak_update
from distributed_o2o.algorithms.offline.bc import Pretrainer
from distributed_o2o.algorithms.optim import adam, optimizer_step
from distributed_o2o.algorithms.policies import DeterministicPolicy
from distributed_o2o.algorithms.policy_delay import CRITIC_ACTOR, policy_delay


def td3bc_actor_loss(q: torch.Tensor, policy_actions: torch.Tensor, data_actions: torch.Tensor,
                     alpha: float) -> tuple[torch.Tensor, torch.Tensor]:
    """-λ·mean Q(s, π(s)) + mean (π(s) − a)², λ = α / mean|Q| (λ is not differentiated).

    Returns (loss, λ). Scaling by mean|Q| makes α independent of the reward scale.
    """
    lam = alpha / q.abs().mean().detach()
    return -lam * q.mean() + (policy_actions - data_actions).pow(2).mean(), lam


class TD3BCPretrainer(Pretrainer):
    compiled = ("critic_loss", "actor_loss")
    compiled_steps = ("update_targets",)

    def __init__(self, config, obs_dim, act_dim, device):
        super().__init__(config, obs_dim, act_dim, device)
        self.policy = DeterministicPolicy(obs_dim, act_dim, config.hidden).to(device)
        self.critic = CriticEnsemble(obs_dim, act_dim, num_critics=2, hidden=config.hidden, layer_norm=False).to(device)
        self.policy_target = frozen_copy(self.policy)
        self.critic_target = frozen_copy(self.critic)
        self.policy_optimizer = adam(self.policy.parameters(), config.lr, device)
        self.critic_optimizer = adam(self.critic.parameters(), config.lr, device)
        self.delay = policy_delay(config.policy_delay)  # the actor step every policy_delay-th step

    def critic_loss(self, batch: Batch) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        c = self.config
        with torch.no_grad():
            noise = (torch.randn_like(batch.actions) * c.policy_noise).clamp(-c.noise_clip, c.noise_clip)
            next_actions = (self.policy_target.mode(batch.next_obs) + noise).clamp(-1.0, 1.0)
            next_q = self.critic_target(batch.next_obs, next_actions).min(dim=0).values
            target = batch.rewards + c.gamma * (1.0 - batch.terminals) * next_q
        q = self.critic(batch.obs, batch.actions)
        loss = (q - target).pow(2).mean(dim=1).sum()  # sum of the critics' MSEs, as in CORL
        return loss, {"critic_loss": loss.detach(), "q_mean": q.detach().mean()}

    def actor_loss(self, batch: Batch) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        pi = self.policy.mode(batch.obs)
        loss, lam = td3bc_actor_loss(self.critic(batch.obs, pi)[0], pi, batch.actions, self.config.td3bc_alpha)
        return loss, {"actor_loss": loss.detach(), "lambda": lam}

    def update_targets(self) -> None:
        polyak_update(self.critic_target, self.critic, self.config.tau)
        polyak_update(self.policy_target, self.policy, self.config.tau)

    def actor_step(self, batch: Batch) -> dict[str, torch.Tensor]:
        loss, metrics = self.actor_loss(batch)
        optimizer_step(self.policy_optimizer, loss, self.policy.parameters())
        self.update_targets()
        return metrics

    def prepare(self, step: int) -> Hashable | PhaseCycle:
        return self.delay

    def update_tensors(self, batch: Batch, phase: Hashable) -> dict[str, torch.Tensor]:
        loss, metrics = self.critic_loss(batch)
        optimizer_step(self.critic_optimizer, loss, self.critic.parameters())
        if phase == CRITIC_ACTOR:
            metrics.update(self.actor_step(batch))
        return metrics

    def optimizers(self) -> list[torch.optim.Optimizer]:
        return [self.critic_optimizer, self.policy_optimizer]

    def modules(self) -> dict[str, nn.Module]:
        return {"policy": self.policy, "critic": self.critic}

    def networks(self) -> list[nn.Module]:
        return [*super().networks(), self.policy_target, self.critic_target]
