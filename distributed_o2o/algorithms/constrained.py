"""Constrained SAC fine-tuning (O2O stage C), shared by O2SAC and PORL's optional hand-over
constraint: the critic target and the actor loss carry λ·(log π_θ − log π_ref), λ a Lagrange
multiplier holding the divergence near ε_t; π_ref follows the best evaluation.

Mixed in before `SACCore`, whose hooks (`penalty`, `constraint_loss`, ...) it fills. Until
`set_reference` is called there is no π_ref and the losses are SAC's own.
"""

from __future__ import annotations

import math

import torch

from distributed_o2o.algorithms.constraint import LagrangeMultiplier, divergence_threshold
from distributed_o2o.algorithms.networks import frozen_copy
from distributed_o2o.algorithms.policies import Policy
from distributed_o2o.algorithms.optim import adam


class ConstrainedFineTuning:
    # Until `init_constraint`: no constraint at all (a method where it is optional, as PORL).
    lagrange: LagrangeMultiplier | None = None
    policy_ref: Policy | None = None
    best_score = -math.inf

    def init_constraint(self, constraint, device: torch.device) -> None:
        """`constraint`: a ConstraintConfig (ε schedule, λ init and learning rate)."""
        self.constraint = constraint
        self.lagrange = LagrangeMultiplier(constraint.lambda_init, constraint.lambda_lr, constraint.violation_weight).to(device)
        # λ steps inside the update (see `constraint_loss`) with the same Adam as the other
        # parameters (fused and capturable on CUDA).
        self.lagrange.optimizer = adam(self.lagrange.parameters(), constraint.lambda_lr, device)
        # ε_t, written by `write_threshold` so a captured update reads the current threshold.
        self.threshold = torch.zeros((), device=device)

    def write_threshold(self, env_step: int) -> None:
        c = self.constraint
        self.threshold.fill_(divergence_threshold(env_step, c.eps_start, c.eps_end, c.eps_anneal_steps))

    def divergence(self, obs: torch.Tensor, actions: torch.Tensor, log_prob: torch.Tensor) -> torch.Tensor:
        """D = log π_θ(a|s) − log π_ref(a|s), a ~ π_θ, log π_ref clamped below at `log_ref_min`."""
        return log_prob - self.policy_ref.log_prob(obs, actions).clamp(min=self.config.log_ref_min)

    def penalty(self, obs: torch.Tensor, actions: torch.Tensor, log_prob: torch.Tensor) -> torch.Tensor | None:
        return None if self.policy_ref is None else self.lagrange.value * self.divergence(obs, actions, log_prob)

    def constraint_loss(self, obs: torch.Tensor, actions: torch.Tensor,
                        log_prob: torch.Tensor) -> tuple[torch.Tensor | None, dict[str, torch.Tensor]]:
        if self.policy_ref is None:
            return None, {}
        with torch.no_grad():
            divergence = self.divergence(obs, actions, log_prob)
        return self.lagrange.loss(divergence, self.threshold), {"divergence": divergence.mean(), "threshold": self.threshold}

    def constraint_optimizers(self) -> list[torch.optim.Optimizer]:
        # Listed from the start (not only once π_ref exists): a captured update needs every
        # optimiser's state prepared before the first capture.
        return [] if self.lagrange is None else [self.lagrange.optimizer]

    def constraint_metrics(self) -> dict[str, torch.Tensor]:
        return {} if self.policy_ref is None else {"lambda": self.lagrange.value}

    def attach_reference(self, policy: Policy) -> None:
        """π_ref at the hand-over: `policy` (then the best-evaluated policy), or with reference
        "average" π̄, restarted from `policy`."""
        if self.policy_average is not None:
            self.policy_average.load_state_dict(policy.state_dict())
        if self.constraint.reference == "average":
            self.policy_ref = self.policy_average
        else:
            self.set_reference(policy)

    def set_reference(self, policy: Policy) -> None:
        """π_ref <- a frozen copy of `policy`, written in place once it exists (a captured
        update keeps reading the same tensors)."""
        if self.policy_ref is None:
            self.policy_ref = frozen_copy(policy)
        else:
            self.policy_ref.load_state_dict(policy.state_dict())

    def on_evaluation(self, score: float, env_step: int) -> None:
        """With reference "best", π_ref follows the best-scoring (deployed) policy; scores from
        before there is a π_ref count too (they are the starting policy's)."""
        if score > self.best_score:
            self.best_score = score
            if self.policy_ref is not None and self.constraint.reference == "best":
                self.set_reference(self.deployed_policy())

    def constraint_snapshot(self) -> dict:
        own_ref = self.policy_ref is not None and self.policy_ref is not self.policy_average  # π̄ is saved with SAC's state
        return {
            "reference_attached": self.policy_ref is not None,
            "policy_ref": self.policy_ref.state_dict() if own_ref else None,
            "lagrange": self.lagrange.state_dict(),
            "lagrange_optimizer": self.lagrange.optimizer.state_dict(),
            "best_score": self.best_score,
        }

    def constraint_restore(self, state: dict) -> None:
        if not state["reference_attached"]:
            self.policy_ref = None
        elif self.constraint.reference == "average":  # π̄ itself, restored with the SAC state
            self.policy_ref = self.policy_average
        else:
            if self.policy_ref is None:
                self.policy_ref = frozen_copy(self.policy)
            self.policy_ref.load_state_dict(state["policy_ref"])
        self.lagrange.load_state_dict(state["lagrange"])
        self.lagrange.optimizer.load_state_dict(state["lagrange_optimizer"])
        self.best_score = float(state["best_score"])
