"""O2TD3: the O2O-RL / OCR-CFT recipe (ALGORITHMS.md, seed 001) on TD3.

A. Re-evaluation: fresh critics learn the value of the frozen π_off on D_off (TD3 target).
B. Value alignment: targets frozen at their post-A values; the critic is calibrated so that
   actions away from π_off(s) are never valued above it, while π_θ (a copy of π_off) is
   trained against it.
Hand-over: π_ref = the better of π_off and aligned π_θ; online starts from aligned π_θ with
   targets copied from the aligned networks.
C. Constrained fine-tuning: TD3 with a per-sample divergence penalty λ·D in the critic target
   and the actor loss; λ adapts so that D tracks the annealed threshold ε_t.

A and B are update phases ("reevaluate", "align") of `update_tensors`, like stage C's, so
the graphed learner runs all three.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Hashable

import torch

from distributed_o2o.algorithms.base import Batch, OfflineStage
from distributed_o2o.algorithms.capturable import PhaseCycle, phase_stage
from distributed_o2o.algorithms.networks import CriticEnsemble, frozen_copy
from distributed_o2o.algorithms.o2o import LagrangeMultiplier, ReferencePolicy
from distributed_o2o.algorithms.optim import optimizer_step
from distributed_o2o.algorithms.policies import Policy
from distributed_o2o.algorithms.td3 import TD3, ensemble_mse


def action_divergence(reference: torch.Tensor, action: torch.Tensor) -> torch.Tensor:
    """D = (π_ref(s) − π_θ(s))², averaged over action dimensions: one value per sample, (B,)."""
    return (reference - action).pow(2).mean(dim=-1)


def alignment_distance(noisy_action: torch.Tensor, offline_action: torch.Tensor, delta_max: float) -> torch.Tensor:
    """δ = min(‖ã − π_off(s)‖ / √|A|, δ_max), (B,)."""
    act_dim = offline_action.shape[-1]
    return (torch.linalg.vector_norm(noisy_action - offline_action, dim=-1) / math.sqrt(act_dim)).clamp(max=delta_max)


def alignment_target(q_star: torch.Tensor, target_q_noisy: torch.Tensor, delta: torch.Tensor, beta: float) -> torch.Tensor:
    """T_i = min(T, Q̄_i(s, ã)) with T = q*(1+βδ²) if q* < 0 else q*/(1+βδ²).

    q_star, delta: (B,); target_q_noisy: (K, B) -> (K, B). Either branch gives T ≤ q*: a
    deviation from π_off is valued at most as much as π_off's own action, and less the
    further it goes.
    """
    scale = 1.0 + beta * delta.pow(2)
    shrunk = torch.where(q_star < 0, q_star * scale, q_star / scale)
    return torch.minimum(shrunk, target_q_noisy)


class O2TD3(TD3):
    """Needs an `O2TD3Config`. The offline critic is never inherited: `critic` is ignored."""

    name = "o2td3"
    compiled = (*TD3.compiled, "reevaluation_target", "alignment_critic_loss", "q1_actor_loss")

    def __init__(self, config, obs_dim: int, act_dim: int, device: torch.device,
                 policy: Policy | None = None, critic: CriticEnsemble | None = None):
        super().__init__(config, obs_dim, act_dim, device, policy, critic=None)
        self.policy_offline = frozen_copy(self.policy)
        self.reference = ReferencePolicy(self.policy)
        self.reference.attach(self.policy)  # replaced at the hand-over
        self.lagrange = LagrangeMultiplier(config.constraint, device)

    # -- offline stages
    def offline_stages(self) -> list[OfflineStage]:
        return [phase_stage(self, "reevaluate", self.config.reevaluate_steps),
                phase_stage(self, "align", self.config.align_steps)]

    def reevaluation_target(self, batch: Batch) -> torch.Tensor:
        """Stage A: y = r + γ(1−d) min_j Q̄_j(s', clip(π_off(s') + clip(ε, ±c), ±1))."""
        return self.td_target(batch, self.policy_offline)

    def reevaluation_step(self, batch: Batch) -> dict[str, torch.Tensor]:
        """Stage A on a batch of D_off: a critic step toward π_off's value, then the critic's Polyak."""
        metrics = self.critic_step(batch, self.reevaluation_target(batch))
        self.update_targets(actor=False)
        return metrics

    def alignment_critic_loss(self, obs: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Q_i(s, ã) toward the aligned target T_i, Q_i(s, π_off(s)) toward q* (both summed over i)."""
        batch_size = obs.shape[0]
        with torch.no_grad():
            offline_action = self.policy_offline.mode(obs)
            noisy_action = self.smoothed_action(self.policy, obs)
            both_obs, both_actions = torch.cat([obs, obs]), torch.cat([offline_action, noisy_action])
            target_offline, target_noisy = self.critic_target(both_obs, both_actions).split(batch_size, dim=1)
            q_star = target_offline.min(dim=0).values
            delta = alignment_distance(noisy_action, offline_action, self.config.align_delta_max)
            target = alignment_target(q_star, target_noisy, delta, self.config.align_beta)
        q_offline, q_noisy = self.critic(both_obs, both_actions).split(batch_size, dim=1)
        critic_loss = ensemble_mse(q_noisy, target) + ensemble_mse(q_offline, q_star)
        return critic_loss, {"critic_loss": critic_loss.detach(), "q_star": q_star.mean(), "distance": delta.mean()}

    def alignment_step(self, batch: Batch) -> dict[str, torch.Tensor]:
        """Stage B on a batch of D_off: one critic and one (unconstrained) actor step; the
        targets stay at their post-A values."""
        critic_loss, metrics = self.alignment_critic_loss(batch.obs)
        optimizer_step(self.critic_opt, critic_loss, self.critic.parameters())
        actor_loss, actor_metrics = self.q1_actor_loss(batch.obs)
        optimizer_step(self.actor_opt, actor_loss, self.policy.parameters())
        return {"critic_loss": metrics["critic_loss"], **actor_metrics, "q_star": metrics["q_star"],
                "distance": metrics["distance"]}

    def update_tensors(self, batch: Batch, phase: Hashable) -> dict[str, torch.Tensor]:
        """The step of `phase`: A ("reevaluate"), B ("align") or, for the phases of the policy delay, C."""
        if phase == "reevaluate":
            return self.reevaluation_step(batch)
        if phase == "align":
            return self.alignment_step(batch)
        return super().update_tensors(batch, phase)

    def handover(self, evaluate: Callable[[Policy], float]) -> dict[str, float]:
        """π_ref = the better of π_off and aligned π_θ (π_off on a tie); online starts from π_θ."""
        score_offline, score_aligned = evaluate(self.policy_offline), evaluate(self.policy)
        self.reference.offer(self.policy_offline.state_dict(), score_offline)
        reference_aligned = self.reference.offer(self.policy.state_dict(), score_aligned)
        self.policy_target.load_state_dict(self.policy.state_dict())
        self.critic_target.load_state_dict(self.critic.state_dict())
        return {"score_offline": float(score_offline), "score_aligned": float(score_aligned),
                "reference_is_aligned": float(reference_aligned)}

    # -- stage C
    def updates_due(self, env_step: int) -> int:
        return 0 if env_step < self.config.learning_starts else self.config.utd

    def offline_ratio(self, env_step: int) -> float:
        return self.config.offline_ratio

    @torch.no_grad()
    def target_penalty(self, next_obs: torch.Tensor) -> torch.Tensor:
        """λ·D(s') per sample, D between π_ref and the current π_θ on the next states."""
        return self.lagrange.value * action_divergence(self.reference.policy.mode(next_obs), self.policy.mode(next_obs))

    def prepare(self, env_step: int) -> Hashable | PhaseCycle:
        self.lagrange.write_threshold(env_step)
        return super().prepare(env_step)

    def actor_loss(self, obs: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """The constrained fine-tuning loss −Q_1(s,π_θ(s))/mean|Q_1| + λ·mean D, plus λ's loss on
        this batch's per-sample D (λ and π_θ step in one backward, as in the SAC family)."""
        action, q1 = self.policy_q1(obs)
        with torch.no_grad():
            reference_action = self.reference.policy.mode(obs)
        divergence = action_divergence(reference_action, action)
        lam = self.lagrange.value
        loss = -q1.mean() / q1.abs().mean().detach() + lam * divergence.mean()
        return loss + self.lagrange.loss(divergence), {"actor_loss": loss.detach(), "lambda": lam,
                                                       "divergence": divergence.detach().mean(),
                                                       "threshold": self.lagrange.threshold}

    def actor_optimizers(self) -> list[torch.optim.Optimizer]:
        return [*super().actor_optimizers(), self.lagrange.optimizer]

    def on_evaluation(self, score: float, env_step: int, scored: dict[str, torch.Tensor]) -> None:
        self.reference.offer(scored, score)

    def state_dict(self) -> dict:
        return {**super().state_dict(),
                "policy_offline": self.policy_offline.state_dict(),
                "reference": self.reference.state_dict(),
                "multiplier": self.lagrange.state_dict(),
                "multiplier_opt": self.lagrange.optimizer.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        super().load_state_dict(state)
        self.policy_offline.load_state_dict(state["policy_offline"])
        self.reference.load_state_dict(state["reference"])
        self.lagrange.load_state_dict(state["multiplier"])
        self.lagrange.optimizer.load_state_dict(state["multiplier_opt"])
