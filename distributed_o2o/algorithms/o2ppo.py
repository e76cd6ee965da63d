"""O2PPO: the O2O-RL / OCR-CFT recipe (ALGORITHMS.md, seed 001) on PPO.

A. Re-evaluation: V_ψ regressed on the discounted Monte-Carlo returns of D_off.
   (No alignment stage.)
Hand-over: π_ref = a copy of π_off, which is also where π_θ starts.
C. PPO on rollout fragments, with each advantage shaped toward π_ref by a weight that
   decays linearly to zero at `shaping_end_steps`.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

from distributed_o2o.algorithms.base import ActingSpec, Algorithm, OfflineData, OfflineStage, Rollout
from distributed_o2o.algorithms.networks import ValueNetwork
from distributed_o2o.algorithms.o2o import ReferencePolicy
from distributed_o2o.algorithms.optim import optimizer_step, to_floats
from distributed_o2o.algorithms.policies import GaussianPolicy, Policy


def discounted_returns(rewards: torch.Tensor, terminals: torch.Tensor, timeouts: torch.Tensor, gamma: float) -> torch.Tensor:
    """Monte-Carlo returns of a dataset stored in order, episodes contiguous.

    An episode ends at a terminal OR a timeout, so no return reaches into the next episode.
    The last transition ends an episode too. Computed once, on the host.
    """
    ends = torch.logical_or(terminals.bool(), timeouts.bool()).tolist()
    returns, running = [0.0] * len(ends), 0.0
    for i, (reward, end) in enumerate(zip(reversed(rewards.tolist()), reversed(ends))):
        running = reward + (0.0 if end else gamma * running)
        returns[len(ends) - 1 - i] = running
    return torch.tensor(returns, dtype=torch.float32, device=rewards.device)


def gae(rewards: torch.Tensor, values: torch.Tensor, next_values: torch.Tensor, terminals: torch.Tensor,
        dones: torch.Tensor, gamma: float, lam: float) -> torch.Tensor:
    """GAE(γ, λ) advantages over a (T, N) fragment.

    δ_t = r_t + γ(1 − terminal_t)V(s'_t) − V(s_t): a truncated step still bootstraps from
    V(next_obs). The recursion A_t = δ_t + γλ(1 − done_t)A_{t+1} stops at every episode end.
    """
    deltas = rewards + gamma * (1.0 - terminals) * next_values - values
    carry = 1.0 - dones
    advantages = torch.empty_like(deltas)
    running = torch.zeros_like(deltas[0])
    for t in reversed(range(deltas.shape[0])):
        running = deltas[t] + gamma * lam * carry[t] * running
        advantages[t] = running
    return advantages


def reference_advantage(advantages: torch.Tensor, ref_log_prob: torch.Tensor, ref_entropy: torch.Tensor,
                        act_dim: int, alpha: float) -> torch.Tensor:
    """A_ref = (α/|A|)·σ(A)·[softplus(log π_ref(a|s) + H[π_ref(·|s)] + 4|A|) − 4|A|].

    σ(A) is the standard deviation of the fragment's advantages, as in the O2O code, so A_ref
    is on the scale of A. The bracket is ≈ log π_ref + H (zero on average under π_ref) for
    likely actions and bounded below by −4|A| for unlikely ones.
    """
    offset = 4.0 * act_dim
    bonus = F.softplus(ref_log_prob + ref_entropy + offset) - offset
    return (alpha / act_dim) * advantages.std() * bonus


def shaped_advantage(advantages: torch.Tensor, ref_advantages: torch.Tensor, weight: float) -> torch.Tensor:
    """Â = (A + w·A_ref)/(1 + w)."""
    return (advantages + weight * ref_advantages) / (1.0 + weight)


class O2PPO(Algorithm):
    """Needs an `O2PPOConfig`. The checkpoint's critic (a Q ensemble) is never used: `critic` is ignored."""

    name = "o2ppo"
    policy_family = "gaussian"
    on_policy = True

    def __init__(self, config, obs_dim: int, act_dim: int, device: torch.device,
                 policy: Policy | None = None, critic: nn.Module | None = None):
        super().__init__(config, obs_dim, act_dim, device, policy, critic)
        if policy is None:
            policy = GaussianPolicy(obs_dim, act_dim, config.hidden)
        self.policy = policy.to(device)
        value = ValueNetwork(obs_dim, config.hidden)
        value.normalizer.load_state_dict(policy.normalizer.state_dict())
        self.value = value.to(device)
        self.reference = ReferencePolicy(self.policy)
        self.reference.attach(self.policy)  # π_off; scored at the hand-over
        self.value_opt = torch.optim.Adam(self.value.parameters(), lr=config.value_lr)  # stage A
        self.actor_opt = torch.optim.Adam(self.policy.parameters(), lr=config.actor_lr)
        self.critic_opt = torch.optim.Adam(self.value.parameters(), lr=config.critic_lr)
        self.mc_returns: torch.Tensor | None = None

    @property
    def rollout_steps(self) -> int:
        """Env steps (summed over envs) in one `update_rollout` fragment."""
        return self.config.rollout_steps

    # -- stage A
    def set_offline_data(self, data: OfflineData) -> None:
        super().set_offline_data(data)
        self.mc_returns = discounted_returns(data.rewards, data.terminals, data.timeouts, self.config.gamma)

    def offline_stages(self) -> list[OfflineStage]:
        return [OfflineStage("reevaluate", self.config.reevaluate_steps, self.value_step)]

    def value_step(self) -> dict[str, float]:
        data = self.offline_data
        idx = torch.randint(len(data), (self.config.value_batch_size,), device=data.obs.device, generator=data.generator)
        loss = (self.value(data.obs[idx]) - self.mc_returns[idx]).pow(2).mean()
        optimizer_step(self.value_opt, loss, self.value.parameters())
        return to_floats({"value_loss": loss.detach()})

    def handover(self, evaluate: Callable[[Policy], float]) -> dict[str, float]:
        """π_ref is π_off (π_θ starts there too); its score is the best so far for `on_evaluation`."""
        score = evaluate(self.policy)
        self.reference.offer(self.policy.state_dict(), score)
        return {"score_offline": float(score)}

    # -- stage C
    def acting(self, env_step: int) -> ActingSpec:
        return ActingSpec(deterministic=False, store_raw_actions=True)

    def acting_policy(self) -> Policy:
        return self.policy

    def shaping_weight(self, env_step: int) -> float:
        """w_t = max(0, 1 − t/T_end)."""
        end = self.config.shaping_end_steps
        return max(0.0, 1.0 - env_step / end) if end > 0 else 0.0

    @torch.no_grad()
    def advantages(self, rollout: Rollout, env_step: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Shaped (and, if configured, normalised) advantages and value targets, flattened to (T·N,)."""
        steps, envs = rollout.rewards.shape
        values = self.value(rollout.obs.flatten(0, 1)).view(steps, envs)
        next_values = self.value(rollout.next_obs.flatten(0, 1)).view(steps, envs)
        adv = gae(rollout.rewards, values, next_values, rollout.terminals.float(), rollout.dones.float(),
                  self.config.gamma, self.config.gae_lambda).flatten()
        value_targets = adv + values.flatten()
        weight = self.shaping_weight(env_step)
        if weight > 0:
            obs, actions = rollout.obs.flatten(0, 1), rollout.actions.flatten(0, 1)
            ref = self.reference.policy
            adv_ref = reference_advantage(adv, ref.log_prob(obs, actions), ref.entropy(), self.act_dim, self.config.shaping_alpha)
            adv = shaped_advantage(adv, adv_ref, weight)
        if self.config.normalize_advantages:
            adv = (adv - adv.mean()) / (adv.std() + 1e-8)
        return adv, value_targets

    def update_rollout(self, rollout: Rollout, env_step: int) -> dict[str, float]:
        c = self.config
        adv, value_targets = self.advantages(rollout, env_step)
        obs, actions = rollout.obs.flatten(0, 1), rollout.actions.flatten(0, 1)
        with torch.no_grad():
            # The fragment was collected by the current weights (on-policy), so these are the
            # behaviour log-probs of the stored raw actions.
            old_log_prob = self.policy.log_prob(obs, actions)
        totals = torch.zeros(3, device=obs.device)
        minibatches = 0
        for _ in range(c.epochs):
            for idx in torch.randperm(obs.shape[0], device=obs.device).split(c.minibatch_size):
                ratio = torch.exp(self.policy.log_prob(obs[idx], actions[idx]) - old_log_prob[idx])
                surrogate = torch.minimum(ratio * adv[idx], ratio.clamp(1.0 - c.clip_ratio, 1.0 + c.clip_ratio) * adv[idx])
                entropy = self.policy.entropy()
                actor_loss = -surrogate.mean() - c.entropy_coef * entropy
                self._clipped_step(self.actor_opt, self.policy, actor_loss)
                critic_loss = (self.value(obs[idx]) - value_targets[idx]).pow(2).mean()
                self._clipped_step(self.critic_opt, self.value, critic_loss)
                totals += torch.stack([actor_loss.detach(), critic_loss.detach(), entropy.detach()])
                minibatches += 1
        actor_loss, critic_loss, entropy = (totals / minibatches).tolist()
        return {"actor_loss": actor_loss, "critic_loss": critic_loss, "entropy": entropy,
                "shaping_weight": self.shaping_weight(env_step)}

    def _clipped_step(self, optimizer: torch.optim.Optimizer, module: nn.Module, loss: torch.Tensor) -> None:
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        nn.utils.clip_grad_norm_(module.parameters(), self.config.max_grad_norm)
        optimizer.step()

    def on_evaluation(self, score: float, env_step: int, scored: dict[str, torch.Tensor]) -> None:
        self.reference.offer(scored, score)

    # -- what the runtime saves
    def modules(self) -> dict[str, nn.Module]:
        return {"policy": self.policy, "value": self.value}

    def state_dict(self) -> dict:
        return {"policy": self.policy.state_dict(), "value": self.value.state_dict(),
                "reference": self.reference.state_dict(), "value_opt": self.value_opt.state_dict(),
                "actor_opt": self.actor_opt.state_dict(), "critic_opt": self.critic_opt.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        for name in ("policy", "value", "reference", "value_opt", "actor_opt", "critic_opt"):
            getattr(self, name).load_state_dict(state[name])
