"""The O2O constraint of stage C, shared by O2SAC, O2TD3, O2PPO and PORL's optional constraint.

- `ReferencePolicy`: π_ref, which follows the best evaluation (or is the Polyak average π̄).
- `LagrangeMultiplier`: λ = exp(ℓ) and the threshold schedule ε_t. ε_t anneals linearly from
  ε0 to ε_end over T_ε env steps; λ is learned by Adam on λ·mean(|w − 1[u>0]|·u), u = ε_t − D:
  a violated sample (u < 0) weighs w (0.7), slack (u > 0) weighs 1 − w (0.3), so λ rises while
  the divergence exceeds the threshold and falls while it is below. Each family adds λ's loss
  to its actor loss (one backward; λ enters the actor loss detached, D enters λ's detached).
- `ConstrainedFineTuning`: the SAC family's stage C on top of both (a mixin of `SACCore`).
"""

from __future__ import annotations

import math

import torch
from torch import nn

from distributed_o2o.algorithms.networks import frozen_copy
from distributed_o2o.algorithms.optim import adam
from distributed_o2o.algorithms.policies import Policy


def divergence_threshold(env_step: int, eps_start: float, eps_end: float, anneal_steps: int) -> float:
    if anneal_steps <= 0:
        return eps_end
    return min(eps_end, eps_start + (eps_end - eps_start) * env_step / anneal_steps)


class ReferencePolicy:
    """π_ref and the best evaluation score so far.

    With `average` unset π_ref is a frozen copy that follows the best-scoring policy: `offer`
    replaces it when a score strictly beats the best so far (the hand-over offers π_off, then
    the aligned π_θ; each evaluation offers the deployed policy). With `average` (π̄, a live
    Polyak average its owner updates) π_ref is π̄ itself. Before `attach` there is no π_ref
    (`policy` is None) but scores still count: they are the starting policy's.
    """

    def __init__(self, like: Policy, average: Policy | None = None):
        self.average = average
        self.best_copy = frozen_copy(like)  # written in place, so a captured update keeps reading its tensors
        self.policy: Policy | None = None
        self.best_score = -math.inf

    @property
    def attached(self) -> bool:
        return self.policy is not None

    def attach(self, policy: Policy) -> None:
        """π_ref exists from now on: π̄, or a copy of `policy`."""
        if self.average is not None:
            self.policy = self.average
        else:
            self.best_copy.load_state_dict(policy.state_dict())
            self.policy = self.best_copy

    def offer(self, weights: dict[str, torch.Tensor], score: float) -> bool:
        """Record `score`; True when it replaced π_ref with the policy of `weights` (its state dict)."""
        if score <= self.best_score:
            return False
        self.best_score = float(score)
        if self.policy is not self.best_copy:  # no π_ref yet, or π̄
            return False
        self.best_copy.load_state_dict(weights)
        return True

    def state_dict(self) -> dict:
        """The copy's weights (None while there is none in use: π̄ is saved by its owner)."""
        return {"policy": self.best_copy.state_dict() if self.policy is self.best_copy else None, "best_score": self.best_score}

    def load_state_dict(self, state: dict, attached: bool = True) -> None:
        self.best_score = float(state["best_score"])
        if not attached:
            self.policy = None
        elif state["policy"] is None:
            self.policy = self.average
        else:
            self.best_copy.load_state_dict(state["policy"])
            self.policy = self.best_copy


class LagrangeMultiplier(nn.Module):
    """λ with its own Adam (fused and capturable on CUDA, as the other optimisers) and ε_t,
    a device scalar written by `write_threshold` so that a captured update reads the current one."""

    def __init__(self, constraint, device: torch.device):
        """`constraint`: a ConstraintConfig (ε schedule, λ init and learning rate, w)."""
        super().__init__()
        self.constraint = constraint
        self.log_lambda = nn.Parameter(torch.tensor(math.log(constraint.lambda_init), device=device))
        self.optimizer = adam([self.log_lambda], constraint.lambda_lr, device)
        self.threshold = torch.zeros((), device=device)

    @property
    def value(self) -> torch.Tensor:
        """λ, detached: the weight of the penalty in actor and critic losses."""
        return self.log_lambda.exp().detach()

    def write_threshold(self, env_step: int) -> float:
        """ε_t into `threshold`; returns it."""
        c = self.constraint
        threshold = divergence_threshold(env_step, c.eps_start, c.eps_end, c.eps_anneal_steps)
        self.threshold.fill_(threshold)
        return threshold

    def loss(self, divergence: torch.Tensor) -> torch.Tensor:
        u = self.threshold - divergence.detach()
        weight = torch.abs(self.constraint.violation_weight - (u > 0).float())
        return self.log_lambda.exp() * (weight * u).mean()


class ConstrainedFineTuning:
    """The SAC family's stage C: the critic target and the actor loss carry
    λ·(log π_θ − log π_ref), λ holding the divergence near ε_t; π_ref follows the best evaluation.

    Mixed in before `SACCore`, whose hooks (`penalty`, `constraint_loss`, ...) it fills. Until
    π_ref is attached the losses are SAC's own; until `init_constraint` there is no constraint
    at all (a method where it is optional, as PORL).
    """

    lagrange: LagrangeMultiplier | None = None
    reference: ReferencePolicy | None = None

    def init_constraint(self, constraint, device: torch.device) -> None:
        """`constraint`: a ConstraintConfig; reference "average" makes π̄ the reference."""
        self.lagrange = LagrangeMultiplier(constraint, device)
        average = self.policy_average if constraint.reference == "average" else None
        self.reference = ReferencePolicy(self.policy, average)

    def constrained(self) -> bool:
        return self.reference is not None and self.reference.attached

    def divergence(self, obs: torch.Tensor, actions: torch.Tensor, log_prob: torch.Tensor) -> torch.Tensor:
        """D = log π_θ(a|s) − log π_ref(a|s), a ~ π_θ, log π_ref clamped below at `log_ref_min`."""
        return log_prob - self.reference.policy.log_prob(obs, actions).clamp(min=self.config.log_ref_min)

    def penalty(self, obs: torch.Tensor, actions: torch.Tensor, log_prob: torch.Tensor) -> torch.Tensor | None:
        return self.lagrange.value * self.divergence(obs, actions, log_prob) if self.constrained() else None

    def constraint_loss(self, obs: torch.Tensor, actions: torch.Tensor,
                        log_prob: torch.Tensor) -> tuple[torch.Tensor | None, dict[str, torch.Tensor]]:
        if not self.constrained():
            return None, {}
        with torch.no_grad():
            divergence = self.divergence(obs, actions, log_prob)
        return self.lagrange.loss(divergence), {"divergence": divergence.mean(), "threshold": self.lagrange.threshold}

    def learner_modules(self) -> dict[str, nn.Module]:
        if self.lagrange is None:
            return super().learner_modules()
        return {**super().learner_modules(), "policy_ref": self.reference.best_copy, "lagrange": self.lagrange}

    def constraint_optimizers(self) -> list[torch.optim.Optimizer]:
        # Listed from the start (not only once π_ref exists): a captured update needs every
        # optimiser's state prepared before the first capture.
        return [] if self.lagrange is None else [self.lagrange.optimizer]

    def constraint_metrics(self) -> dict[str, torch.Tensor]:
        return {"lambda": self.lagrange.value} if self.constrained() else {}

    def attach_reference(self, policy: Policy) -> None:
        """π_ref at the hand-over: `policy` (then the best-evaluated policy), or with reference
        "average" π̄; π̄ (where kept) restarts from `policy` either way."""
        if self.policy_average is not None:
            self.policy_average.load_state_dict(policy.state_dict())
        self.reference.attach(policy)

    def on_evaluation(self, score: float, env_step: int, scored: dict[str, torch.Tensor]) -> None:
        if self.reference is not None:
            self.reference.offer(scored, score)

    def constraint_snapshot(self) -> dict:
        reference = self.reference.state_dict()
        return {"reference_attached": self.reference.attached, "policy_ref": reference["policy"],
                "best_score": reference["best_score"], "lagrange": self.lagrange.state_dict(),
                "lagrange_optimizer": self.lagrange.optimizer.state_dict()}

    def constraint_restore(self, state: dict) -> None:
        self.reference.load_state_dict({"policy": state["policy_ref"], "best_score": state["best_score"]},
                                       attached=state["reference_attached"])
        self.lagrange.load_state_dict(state["lagrange"])
        self.lagrange.optimizer.load_state_dict(state["lagrange_optimizer"])
