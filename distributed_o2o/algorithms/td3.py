"""TD3 (Fujimoto et al. 2018) with a LayerNorm critic ensemble: the core of O2TD3.

Deterministic actor, K critics in one batched call (min over all K), Polyak targets for both
actor and critic, target policy smoothing, and actor + target updates every `policy_delay`
critic steps (`policy_delay.py`: the position in that cycle is part of the update's phase).
Subclasses change the method through hooks and keep the rest: `target_penalty` (subtracted
from the bootstrapped value), `actor_loss` and the `actor_optimizers` its backward steps.
The update is `Capturable` (algorithms/capturable.py): the graphed learner runs it on CUDA.
"""

from __future__ import annotations

from collections.abc import Hashable

import torch
from torch import nn

from distributed_o2o.algorithms.base import ActingSpec, Algorithm, Batch
from distributed_o2o.algorithms.capturable import Capturable, PhaseCycle, next_phase
from distributed_o2o.algorithms.networks import CriticEnsemble, frozen_copy, polyak_update
from distributed_o2o.algorithms.optim import adam, optimizer_params, optimizer_step, to_floats
from distributed_o2o.algorithms.policies import DeterministicPolicy, Policy
from distributed_o2o.algorithms.policy_delay import CRITIC_ACTOR, policy_delay


def ensemble_mse(q_values: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Σ_i mean_b (Q_i − target)²: q_values (K, B); target (B,) shared or (K, B) per member."""
    return (q_values - target).pow(2).mean(dim=-1).sum()


class TD3(Capturable, Algorithm):
    """The TD3 learner. Needs a `TD3Config`; subclasses add the acting schedule and stages."""

    policy_family = "deterministic"
    compiled = ("bootstrap_target", "critic_loss", "actor_loss")
    compiled_steps = ("update_targets",)

    def __init__(self, config, obs_dim: int, act_dim: int, device: torch.device,
                 policy: Policy | None = None, critic: CriticEnsemble | None = None):
        super().__init__(config, obs_dim, act_dim, device, policy, critic)
        if policy is None:
            policy = DeterministicPolicy(obs_dim, act_dim, config.hidden)
        if critic is None:
            critic = CriticEnsemble(obs_dim, act_dim, config.num_critics, config.hidden, config.critic_layer_norm)
            critic.normalizer.load_state_dict(policy.normalizer.state_dict())
        self.policy = policy.to(device)
        self.critic = critic.to(device)
        self.policy_target = frozen_copy(self.policy)
        self.critic_target = frozen_copy(self.critic)
        self.actor_opt = adam(self.policy.parameters(), config.actor_lr, device)
        self.critic_opt = adam(self.critic.parameters(), config.critic_lr, device)
        self.delay = policy_delay(config.policy_delay)

    # -- hooks
    def target_penalty(self, next_obs: torch.Tensor) -> torch.Tensor | None:
        """Per-sample amount subtracted from min_j Q̄_j(s', ã') in the critic target (none in TD3)."""
        return None

    def actor_loss(self, obs: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """−E Q_1(s, π(s)); returns the loss and metric tensors."""
        return self.q1_actor_loss(obs)

    def actor_optimizers(self) -> list[torch.optim.Optimizer]:
        """What the actor loss's backward steps (a subclass adds its multiplier's)."""
        return [self.actor_opt]

    # -- shared pieces
    def q1_actor_loss(self, obs: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """−E Q_1(s, π(s)): TD3's actor loss (O2TD3's in stage B)."""
        loss = -self.policy_q1(obs)[1].mean()
        return loss, {"actor_loss": loss.detach()}

    def policy_q1(self, obs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """π(s) and Q_1(s, π(s)), differentiable in the policy: what every actor loss maximises."""
        action = self.policy.mode(obs)
        return action, self.critic(obs, action)[0]

    @torch.no_grad()
    def smoothed_action(self, policy: Policy, obs: torch.Tensor) -> torch.Tensor:
        """clip(π(s) + clip(N(0, target_noise²), ±noise_clip), ±1): target policy smoothing."""
        action = policy.mode(obs)
        noise = (torch.randn_like(action) * self.config.target_noise).clamp(-self.config.noise_clip, self.config.noise_clip)
        return (action + noise).clamp(-1.0, 1.0)

    @torch.no_grad()
    def td_target(self, batch: Batch, next_policy: Policy, penalty: torch.Tensor | None = None) -> torch.Tensor:
        """y = r + γ(1 − terminal)[min_j Q̄_j(s', ã') − penalty], ã' the smoothed action of `next_policy`.

        Only termination zeroes the bootstrap; a truncated transition keeps it.
        """
        next_q = self.critic_target(batch.next_obs, self.smoothed_action(next_policy, batch.next_obs)).min(dim=0).values
        if penalty is not None:
            next_q = next_q - penalty
        return batch.rewards + self.config.gamma * (1.0 - batch.terminals) * next_q

    def bootstrap_target(self, batch: Batch) -> torch.Tensor:
        """The online critic target: smoothing on the target actor, minus the subclass's penalty."""
        return self.td_target(batch, self.policy_target, self.target_penalty(batch.next_obs))

    def critic_loss(self, batch: Batch, target: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        q_values = self.critic(batch.obs, batch.actions)
        loss = ensemble_mse(q_values, target)
        return loss, {"critic_loss": loss.detach(), "q_mean": q_values.detach().mean()}

    def critic_step(self, batch: Batch, target: torch.Tensor) -> dict[str, torch.Tensor]:
        loss, metrics = self.critic_loss(batch, target)
        optimizer_step(self.critic_opt, loss, self.critic.parameters())
        return metrics

    def actor_step(self, obs: torch.Tensor) -> dict[str, torch.Tensor]:
        """The delayed step: the actor (and what `actor_optimizers` adds), then both targets."""
        loss, metrics = self.actor_loss(obs)
        optimizers = self.actor_optimizers()
        optimizer_step(optimizers, loss, optimizer_params(optimizers))
        self.update_targets()
        return metrics

    def update_targets(self, critic: bool = True, actor: bool = True) -> None:
        if critic:
            polyak_update(self.critic_target, self.critic, self.config.tau)
        if actor:
            polyak_update(self.policy_target, self.policy, self.config.tau)

    # -- the Algorithm interface
    def acting(self, env_step: int) -> ActingSpec:
        return ActingSpec(deterministic=True, gaussian_sigma=self.config.explore_sigma)

    def acting_policy(self) -> Policy:
        return self.policy

    def prepare(self, env_step: int) -> Hashable | PhaseCycle:
        """The updates' phases: the policy delay's cycle."""
        return self.delay

    def update_tensors(self, batch: Batch, phase: Hashable) -> dict[str, torch.Tensor]:
        """A critic step, then in the phase CRITIC_ACTOR the actor step (policy_delay.py)."""
        metrics = self.critic_step(batch, self.bootstrap_target(batch))
        if phase == CRITIC_ACTOR:
            metrics.update(self.actor_step(batch.obs))
        return metrics

    def update(self, batch: Batch, env_step: int) -> dict[str, float]:
        return to_floats(self.update_tensors(batch, next_phase(self.prepare(env_step))))

    def optimizers(self) -> list[torch.optim.Optimizer]:
        return [self.critic_opt, *self.actor_optimizers()]

    def modules(self) -> dict[str, nn.Module]:
        return {"policy": self.policy, "critic": self.critic}

    def state_dict(self) -> dict:
        return {
            "policy": self.policy.state_dict(),
            "critic": self.critic.state_dict(),
            "policy_target": self.policy_target.state_dict(),
            "critic_target": self.critic_target.state_dict(),
            "actor_opt": self.actor_opt.state_dict(),
            "critic_opt": self.critic_opt.state_dict(),
            "critic_updates": self.delay.count,
        }

    def load_state_dict(self, state: dict) -> None:
        for name in ("policy", "critic", "policy_target", "critic_target", "actor_opt", "critic_opt"):
            getattr(self, name).load_state_dict(state[name])
        self.delay.count = int(state["critic_updates"])
