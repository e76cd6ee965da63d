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
from distributed_o2o.algorithms.optim import adam, optimizer_step
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

    def _q_at(self, obs: torch.Tensor, actions: torch.Tensor) -> torch.Tensor:
        """Q of each (s, a_m): obs (B, d_o), actions (B, M, d_a) -> (K, B, M)."""
        batch, samples = actions.shape[:2]
        obs_rep = obs.unsqueeze(1).expand(-1, samples, -1).reshape(batch * samples, -1)
        return self.critic(obs_rep, actions.reshape(batch * samples, -1)).reshape(-1, batch, samples)

    @torch.no_grad()
    def _ood_actions(self, obs: torch.Tensor, next_obs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """N uniform actions, N samples of π(·|s) and N of π(·|s'), with their log-densities: (B, 3N, d_a), (B, 3N)."""
        n, (batch, act_dim) = self.config.cql_num_actions, (obs.shape[0], self.act_dim)
        uniform = torch.rand(batch, n, act_dim, device=obs.device) * 2.0 - 1.0
        uniform_log_density = torch.full((batch, n), act_dim * math.log(0.5), device=obs.device)
        sampled = [self.policy.sample(o.unsqueeze(1).expand(-1, n, -1)) for o in (obs, next_obs)]
        actions = torch.cat([uniform, *(a for a, _ in sampled)], dim=1)
        log_density = torch.cat([uniform_log_density, *(lp for _, lp in sampled)], dim=1)
        return actions, log_density

    def critic_loss(self, batch: Batch) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Σ_i TD error + cql_alpha · penalty_i."""
        c = self.config
        with torch.no_grad():
            next_actions, _ = self.policy.sample(batch.next_obs)
            next_q = self.critic_target(batch.next_obs, next_actions).min(dim=0).values
            target = batch.rewards + c.gamma * (1.0 - batch.terminals) * next_q
            ood_actions, log_density = self._ood_actions(batch.obs, batch.next_obs)
        q = self.critic(batch.obs, batch.actions)
        td_loss = (q - target).pow(2).mean(dim=1)
        penalty = cql_penalty(q, self._q_at(batch.obs, ood_actions), log_density if c.cql_importance_sampling else None)
        loss = (td_loss + c.cql_alpha * penalty).sum()
        return loss, {"critic_loss": loss.detach(), "td_loss": td_loss.detach().sum(), "cql_penalty": penalty.detach().mean(),
                      "q_mean": q.detach().mean()}

    def actor_loss(self, obs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """SAC's actor loss at the current α; also the sample's log-probabilities (detached) and α."""
        actions, log_prob = self.policy.sample(obs)
        alpha = self.log_alpha.exp().detach()
        loss = (alpha * log_prob - self.critic(obs, actions).min(dim=0).values).mean()
        return loss, log_prob.detach(), alpha

    def update_target(self) -> None:
        polyak_update(self.critic_target, self.critic, self.config.tau)

    def update_tensors(self, batch: Batch, phase: Hashable) -> dict[str, torch.Tensor]:
        critic_loss, metrics = self.critic_loss(batch)
        optimizer_step(self.critic_optimizer, critic_loss, self.critic.parameters())
        actor_loss, log_prob, alpha = self.actor_loss(batch.obs)
        optimizer_step(self.policy_optimizer, actor_loss, self.policy.parameters())
        if self.alpha_optimizer is not None:
            alpha_loss = -(self.log_alpha * (log_prob + self.target_entropy)).mean()
            optimizer_step(self.alpha_optimizer, alpha_loss, [self.log_alpha])
        self.update_target()
        return {"critic_loss": metrics["critic_loss"], "td_loss": metrics["td_loss"], "cql_penalty": metrics["cql_penalty"],
                "actor_loss": actor_loss.detach(), "alpha": alpha, "q_mean": metrics["q_mean"]}

    def optimizers(self) -> list[torch.optim.Optimizer]:
        alpha = [] if self.alpha_optimizer is None else [self.alpha_optimizer]
        return [self.critic_optimizer, self.policy_optimizer, *alpha]

    def modules(self) -> dict[str, nn.Module]:
        return {"policy": self.policy, "critic": self.critic}

    def networks(self) -> list[nn.Module]:
        return [*super().networks(), self.critic_target]
