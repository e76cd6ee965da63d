"""O2SAC: the SAC branch of O2O-RL / OCR-CFT (offline π_off + D_off -> online).

A. Re-evaluation (offline): fresh critics learn the soft value of the frozen π_off with a
   fixed α0, no conservatism.
B. Alignment (offline): targets frozen at their post-A values, π_off frozen; the critic is
   calibrated toward `alignment_target` while π_θ (a copy of π_off) is trained against it.
   Hand-over: π_ref = the better-scoring of π_off and aligned π_θ; the critic target is synced
   to the critic; online starts from aligned π_θ.
C. Constrained fine-tuning (online): SAC whose critic target and actor loss carry
   λ·(log π_θ − log π_ref), λ a Lagrange multiplier keeping the divergence near ε_t.
   π_ref follows the best evaluation (algorithms/o2o.py, shared with the other O2O methods).

Every min over critics is over all K members (the spec's min_j).
"""

from __future__ import annotations

from collections.abc import Callable, Hashable

import torch
from torch import nn

from distributed_o2o.algorithms.base import Batch, OfflineStage
from distributed_o2o.algorithms.capturable import phase_stage
from distributed_o2o.algorithms.networks import CriticEnsemble, frozen_copy
from distributed_o2o.algorithms.o2o import ConstrainedFineTuning
from distributed_o2o.algorithms.optim import optimizer_step
from distributed_o2o.algorithms.policies import Policy
from distributed_o2o.algorithms.sac import SACCore, soft_td_target


@torch.no_grad()
def alignment_target(target_critic: CriticEnsemble, policy_off: Policy, obs: torch.Tensor, anchor_actions: torch.Tensor,
                     actions: torch.Tensor, alpha0: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Stage-B targets: (T(s,a), min_j Q̄_j(s,a*)).

    T(s,a) = min{ min_j Q̄_j(s,a*) − α0[log π_off(a*|s) − log π_off(a|s)], min_j Q̄_j(s,a) }:
    an action is never valued above what the anchor a* and π_off's own preference allow.
    """
    batch = obs.shape[0]
    both_obs, both_actions = torch.cat([obs, obs]), torch.cat([anchor_actions, actions])
    q = target_critic(both_obs, both_actions).min(dim=0).values
    log_prob = policy_off.log_prob(both_obs, both_actions)
    q_anchor, q_actions = q[:batch], q[batch:]
    anchored = q_anchor - alpha0 * (log_prob[:batch] - log_prob[batch:])
    return torch.minimum(anchored, q_actions), q_anchor


class O2SAC(ConstrainedFineTuning, SACCore):
    name = "o2sac"
    compiled = (*SACCore.compiled, "reevaluation_target", "alignment_critic_loss")

    def __init__(self, config, obs_dim: int, act_dim: int, device: torch.device,
                 policy: Policy | None = None, critic: CriticEnsemble | None = None):
        # The offline critic is never inherited: stage A builds fresh critics.
        super().__init__(config, obs_dim, act_dim, device, policy, critic=None)
        self.num_min_critics = self.critic.num_critics
        self.policy_off = frozen_copy(self.policy)
        self.init_constraint(config.constraint, device)  # π_ref is set at hand-over

    def initial_alpha(self) -> float:
        return self.config.alpha0

    # ------------------------------------------------------------------ A. re-evaluation
    def reevaluation_target(self, batch: Batch) -> torch.Tensor:
        return soft_td_target(batch, self.target_critic, self.policy_off, self.config.alpha0, self.config.gamma,
                              self.num_min_critics)

    # ------------------------------------------------------------------ B. alignment
    def alignment_critic_loss(self, obs: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Σ_i of both expectations: Q_i(s,a*) toward min_j Q̄_j(s,a*), Q_i(s,a) toward T(s,a)."""
        clip = self.config.align_action_clip
        with torch.no_grad():
            anchor_actions = self.policy_off.mode(obs).clamp(-clip, clip)
            actions = self.policy.explore(obs)
        target, q_anchor = alignment_target(self.target_critic, self.policy_off, obs, anchor_actions, actions,
                                            self.config.alpha0)
        q = self.critic(torch.cat([obs, obs]), torch.cat([anchor_actions, actions]))  # (K, 2B): a* rows, then a
        errors = (q - torch.cat([q_anchor, target])).pow(2)
        loss = errors.view(q.shape[0], 2, -1).mean(dim=-1).sum()
        return loss, {"critic_loss": loss.detach(), "q_mean": q.detach().mean()}

    # ------------------------------------------------------------------ A and B as update phases
    def reevaluation_step(self, batch: Batch) -> dict[str, torch.Tensor]:
        """Stage A on a batch of D_off: a critic step toward π_off's soft value, then Polyak."""
        metrics = self.critic_step(batch, self.reevaluation_target(batch))
        self.update_target()
        return metrics

    def alignment_step(self, batch: Batch) -> dict[str, torch.Tensor]:
        """Stage B on a batch of D_off: a critic step toward the aligned targets and an actor
        step of π_θ at the fixed α0 (α is first tuned online); no Polyak."""
        loss, metrics = self.alignment_critic_loss(batch.obs)
        optimizer_step(self.critic_optimizer, loss, self.critic.parameters())
        return {**metrics, **self.actor_step(batch.obs)}

    def update_tensors(self, batch: Batch, phase: Hashable) -> dict[str, torch.Tensor]:
        """The step of `phase`: A ("reevaluate"), B ("align") or, for the phases of `prepare`, C.
        The offline stages are update phases so that the graphed learner runs them as it runs
        the online updates (through this method)."""
        if phase == "reevaluate":
            return self.reevaluation_step(batch)
        if phase == "align":
            return self.alignment_step(batch)
        return super().update_tensors(batch, phase)

    def offline_stages(self) -> list[OfflineStage]:
        return [phase_stage(self, "reevaluate", self.config.reevaluate_steps),
                phase_stage(self, "align", self.config.align_steps)]

    def handover(self, evaluate: Callable[[Policy], float]) -> dict[str, float]:
        score_offline, score_aligned = float(evaluate(self.policy_off)), float(evaluate(self.policy))
        self.attach_reference(self.policy if score_aligned > score_offline else self.policy_off)
        self.reference.best_score = max(score_offline, score_aligned)
        self.target_critic.load_state_dict(self.critic.state_dict())
        return {"handover_score_offline": score_offline, "handover_score_aligned": score_aligned}

    # ------------------------------------------------------------------ C. constrained fine-tuning
    def prepare(self, env_step: int) -> Hashable:
        if not self.constrained():
            raise RuntimeError("O2SAC.update before handover(): π_ref is chosen at the hand-over")
        self.lagrange.write_threshold(env_step)
        return super().prepare(env_step)

    # ------------------------------------------------------------------ state
    def learner_modules(self) -> dict[str, nn.Module]:
        return {**super().learner_modules(), "policy_off": self.policy_off}

    def snapshot(self) -> dict:
        return {**super().snapshot(), "policy_off": self.policy_off.state_dict(), **self.constraint_snapshot()}

    def restore(self, state: dict) -> None:
        super().restore(state)
        self.policy_off.load_state_dict(state["policy_off"])
        self.constraint_restore(state)
