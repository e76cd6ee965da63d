"""PORL: policy-only fine-tuning from π_pre alone (no critic, no dataset).

1. Pre-sample, env steps [0, presample_steps): the frozen π_pre acts (a sample; with
   probability ε a uniform action) while fresh critics learn its soft value
   y = r + γ(1−d)[min_j Q̄_j(s',a') − α log π_pre(a'|s')], a' ~ π_pre, with α = alpha_init fixed,
   at `presample_utd` gradient steps per env step. The policy and α do not move. The min is
   over the same `num_min_critics` random members as stage 2, so the critic handed to stage 2
   was trained against the target it will keep seeing (a min over all 10 members would be a
   far more pessimistic value than the one stage 2 bootstraps from).
2. Afterwards: SAC from (π_pre, Q) at `utd`, min over `num_min_critics` random members, α
   auto-tuned from alpha_init. With `constraint` set (not in the specification; off by
   default), O2SAC's stage-C divergence constraint applies from here, π_ref = π_pre at first
   and then the best-evaluated policy (algorithms/o2o.py).

A deterministic π_pre arrives as a TanhGaussian with a state-independent std σ = `init_std`
(0.1, the caller's conversion), so "sample π_pre" covers "add N(0, σ²)" (noise before tanh).
"""

from __future__ import annotations

from collections.abc import Hashable

import torch

from distributed_o2o.algorithms.base import ActingSpec, Batch
from distributed_o2o.algorithms.o2o import ConstrainedFineTuning
from distributed_o2o.algorithms.sac import SACCore, soft_td_target


class PORL(ConstrainedFineTuning, SACCore):
    name = "porl"
    compiled = (*SACCore.compiled, "evaluation_target")

    def __init__(self, config, *args, **kwargs):
        super().__init__(config, *args, **kwargs)
        if config.constraint is not None:
            self.init_constraint(config.constraint, self.device)

    def presampling(self, env_step: int) -> bool:
        return env_step < self.config.presample_steps

    def handover_step(self) -> int:
        return self.config.presample_steps

    def evaluation_target(self, batch: Batch):
        """Soft evaluation target of the frozen π_pre with α = alpha_init."""
        return soft_td_target(batch, self.target_critic, self.policy, self.config.alpha_init, self.config.gamma,
                              self.config.num_min_critics)

    def presample_step(self, batch: Batch) -> dict[str, torch.Tensor]:
        """Stage 1: a critic step toward π_pre's soft value, then Polyak (π_pre and α stay put)."""
        metrics = self.critic_step(batch, self.evaluation_target(batch))
        self.update_target()
        return metrics

    def prepare(self, env_step: int) -> Hashable:
        if self.presampling(env_step):
            return "presample"
        if self.lagrange is not None:
            if not self.constrained():  # the hand-over: π_ref = π_pre (or π̄, which starts as π_pre)
                self.attach_reference(self.policy)
            self.lagrange.write_threshold(env_step)
        return super().prepare(env_step)

    def update_tensors(self, batch: Batch, phase: Hashable) -> dict[str, torch.Tensor]:
        """Stage 1's step in the "presample" phase, stage 2's (SAC) afterwards."""
        if phase == "presample":
            return self.presample_step(batch)
        return super().update_tensors(batch, phase)

    def acting(self, env_step: int) -> ActingSpec:
        if self.presampling(env_step):
            return ActingSpec(epsilon=self.config.presample_epsilon)
        return super().acting(env_step)

    def updates_due(self, env_step: int) -> int:
        due = super().updates_due(env_step)
        return self.config.presample_utd if due and self.presampling(env_step) else due

    def snapshot(self) -> dict:
        state = super().snapshot()
        return state if self.lagrange is None else {**state, **self.constraint_snapshot()}

    def restore(self, state: dict) -> None:
        super().restore(state)
        if self.lagrange is not None:
            self.constraint_restore(state)
