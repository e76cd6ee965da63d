"""Conservative Q-learning (Kumar et al. 2020, CORL's SAC-based variant and defaults).

Critic loss per member i: TD error to r + γ(1−d) min_j Q̄_j(s', a'), a'~π(s') (no entropy
backup), plus cql_alpha · E_s[logsumexp_a Q_i(s, a) − Q_i(s, a_data)]. The logsumexp is
estimated from N uniform actions and N policy samples at s and at s' (importance-weighted by
their densities). The actor and α are SAC's, with target entropy −|A|.
"""

from __future__ import annotations

import math
from collections.abc import Hashable

import torch
from torch import nn

from distributed_o2o.algorithms.base import Batch
from distributed_o2o.algorithms.networks import CriticEnsemble, frozen_copy, polyak_update
from distributed_o2o.algorithms.offline.bc import Pretrainer
from distributed_o2o.algorithms.optim import adam, frozen, optimizer_params, optimizer_step
from distributed_o2o.algorithms.policies import TanhGaussianPolicy


def cql_penalty(q_data: torch.Tensor, q_ood: torch.Tensor, log_density: torch.Tensor | None) -> torch.Tensor:
    """Per critic: mean over states of logsumexp_m Q(s, a_m) − Q(s, a_data).

    q_data (K, B); q_ood (K, B, M) at the sampled actions; log_density (B, M) of those samples
    for importance sampling, or None to take the plain logsumexp over samples and a_data.
    Returns (K,). Positive where a critic rates unseen actions above the dataset's.
    """
    if log_density is None:
        logits = torch.cat([q_ood, q_data.unsqueeze(-1)], dim=-1)
    else:
        logits = q_ood - log_density
    return (torch.logsumexp(logits, dim=-1) - q_data).mean(dim=-1)


class CQLPretrainer(Pretrainer):
    compiled = ("critic_loss", "actor_loss")
    compiled_steps = ("update_target",)

    def __init__(self, config, obs_dim, act_dim, device):
        super().__init__(config, obs_dim, act_dim, device)
        self.policy = TanhGaussianPolicy(obs_dim, act_dim, config.hidden).to(device)
        self.critic = CriticEnsemble(obs_dim, act_dim, num_critics=2, hidden=config.cql_q_hidden, layer_norm=False).to(device)
        self.critic_target = frozen_copy(self.critic)
        self.policy_optimizer = adam(self.policy.parameters(), config.cql_policy_lr, device)
        self.critic_optimizer = adam(self.critic.parameters(), config.cql_q_lr, device)
        self.log_alpha = torch.zeros((), device=device, requires_grad=config.cql_autotune_alpha)  # α starts at 1
        self.alpha_optimizer = adam([self.log_alpha], config.cql_policy_lr, device) if config.cql_autotune_alpha else None
        self.target_entropy = -float(act_dim)

    @torch.no_grad()
    def _policy_samples(self, obs: torch.Tensor, next_obs: torch.Tensor
                        ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """a' ~ π(·|s') for the TD target; N uniform actions, N samples of π(·|s) and N of π(·|s')
        with their log-densities: (B, d_a), (B, 3N, d_a), (B, 3N).

        One policy forward over [s'; s repeated N times; s' repeated N times]; the random draws
        come in the order (and shapes) of separate samples, so the numbers are those of four calls.
        """
        n, (batch, act_dim) = self.config.cql_num_actions, (obs.shape[0], self.act_dim)
        next_noise = torch.randn(batch, act_dim, device=obs.device)
        uniform = torch.rand(batch, n, act_dim, device=obs.device) * 2.0 - 1.0
        repeated_noise = [torch.randn(batch * n, act_dim, device=obs.device) for _ in range(2)]  # at s, at s'
        repeated = torch.stack([obs, next_obs]).unsqueeze(2).expand(-1, -1, n, -1).reshape(-1, obs.shape[-1])
        actions, log_prob = self.policy.sample(torch.cat([next_obs, repeated]), torch.cat([next_noise, *repeated_noise]))
        # (2, B, N) -> (B, 2N): π(·|s)'s N samples, then π(·|s')'s, per state
        sampled = actions[batch:].reshape(2, batch, n, act_dim).transpose(0, 1).reshape(batch, 2 * n, act_dim)
        sampled_log_prob = log_prob[batch:].reshape(2, batch, n).transpose(0, 1).reshape(batch, 2 * n)
        uniform_log_density = torch.full((batch, n), act_dim * math.log(0.5), device=obs.device)
        return (actions[:batch], torch.cat([uniform, sampled], dim=1),
                torch.cat([uniform_log_density, sampled_log_prob], dim=1))

    def critic_loss(self, batch: Batch) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Σ_i TD error + cql_alpha · penalty_i."""
        c = self.config
        with torch.no_grad():
            next_actions, ood_actions, log_density = self._policy_samples(batch.obs, batch.next_obs)
            next_q = self.critic_target(batch.next_obs, next_actions).min(dim=0).values
            target = batch.rewards + c.gamma * (1.0 - batch.terminals) * next_q
        # One critic forward over the data's actions and every sampled action set: (K, B + B·3N).
        size, samples = batch.obs.shape[0], ood_actions.shape[1]
        obs_rep = batch.obs.unsqueeze(1).expand(-1, samples, -1).reshape(size * samples, -1)
        q_all = self.critic(torch.cat([batch.obs, obs_rep]), torch.cat([batch.actions, ood_actions.reshape(size * samples, -1)]))
        q, q_ood = q_all[:, :size], q_all[:, size:].reshape(-1, size, samples)
        td_loss = (q - target).pow(2).mean(dim=1)
        penalty = cql_penalty(q, q_ood, log_density if c.cql_importance_sampling else None)
        loss = (td_loss + c.cql_alpha * penalty).sum()
        return loss, {"critic_loss": loss.detach(), "td_loss": td_loss.detach().sum(), "cql_penalty": penalty.detach().mean(),
                      "q_mean": q.detach().mean()}

    def actor_loss(self, obs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """SAC's actor loss at the current α, plus α's loss on the same sample where α is tuned, for
        one backward (each sees the other's variable detached, so the gradients are those of two
        steps); also the actor loss alone and α."""
        actions, log_prob = self.policy.sample(obs)
        alpha = self.log_alpha.exp().detach()
        actor_loss = (alpha * log_prob - self.critic(obs, actions).min(dim=0).values).mean()
        loss = actor_loss
        if self.alpha_optimizer is not None:
            loss = loss - (self.log_alpha * (log_prob.detach() + self.target_entropy)).mean()
        return loss, actor_loss.detach(), alpha

    def update_target(self) -> None:
        polyak_update(self.critic_target, self.critic, self.config.tau)

    def update_tensors(self, batch: Batch, phase: Hashable) -> dict[str, torch.Tensor]:
        critic_loss, metrics = self.critic_loss(batch)
        optimizer_step(self.critic_optimizer, critic_loss, self.critic.parameters())
        with frozen(self.critic):
            loss, actor_loss, alpha = self.actor_loss(batch.obs)
        optimizers = self.optimizers()[1:]  # the policy's and α's
        optimizer_step(optimizers, loss, optimizer_params(optimizers))
        self.update_target()
        return {"critic_loss": metrics["critic_loss"], "td_loss": metrics["td_loss"], "cql_penalty": metrics["cql_penalty"],
                "actor_loss": actor_loss, "alpha": alpha, "q_mean": metrics["q_mean"]}

    def optimizers(self) -> list[torch.optim.Optimizer]:
        alpha = [] if self.alpha_optimizer is None else [self.alpha_optimizer]
        return [self.critic_optimizer, self.policy_optimizer, *alpha]

    def modules(self) -> dict[str, nn.Module]:
        return {"policy": self.policy, "critic": self.critic}

    def networks(self) -> list[nn.Module]:
        return [*super().networks(), self.critic_target]
